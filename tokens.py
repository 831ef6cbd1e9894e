"""Every tokenizer helper: the ids that open and close a block, the ids that are never masked or
never sampled, a fingerprint that ties a tokenizer to the weights trained with it, and the
byte-level BPE that from-scratch models train on their corpus.

    bos_eos(tok)              (<s>, </s>) ids, or ([CLS], [SEP]) for BERT-style tokenizers
    never_masked_ids(tok)     never masked wherever they stand: every special token but <mask> and </s>
    banned_ids(tok)           never sampled into text: every special token
    token_ids(tok)            what the denoising loop needs: mask, eos, banned (</s> allowed by --stop-at-eos)
    fingerprint(tok)          sha1 of the vocabulary: saved in run.json, checked at every load
    train_tokenizer(docs, vocab_size, folder)   RoBERTa's byte-level BPE trained on docs
"""

import hashlib
import json
import os
import shutil

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's ids 0..4


def bos_eos(tokenizer) -> tuple[int, int]:
    """Ids that open and close a block: <s> </s>, or [CLS] [SEP] for BERT-style tokenizers."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    return bos, eos


def never_masked_ids(tokenizer) -> list[int]:
    """Ids never masked nor scored wherever they stand (<s>, <pad>, <unk>, ...): every special token
    but <mask> and </s>. A </s> inside a block ends a document (or pads one after its end): text the
    model learns to write, so --stop-at-eos can fire (LLaDA trains its EOS the same way). The
    block's closing </s> is protected by its position instead (diffusion.protected_positions)."""
    _, eos = bos_eos(tokenizer)
    return sorted(set(tokenizer.all_special_ids) - {tokenizer.mask_token_id, eos})


def banned_ids(tokenizer) -> list[int]:
    """Token ids never sampled into the text: every special token."""
    return sorted(set(tokenizer.all_special_ids))


def token_ids(tokenizer) -> dict:
    """The ids the denoising loop needs: mask, eos, and those never sampled (</s> is handled by
    --stop-at-eos)."""
    _, eos = bos_eos(tokenizer)
    return {"mask": tokenizer.mask_token_id, "eos": eos, "banned": [t for t in banned_ids(tokenizer) if t != eos]}


def fingerprint(tokenizer) -> str:
    """sha1 of the vocabulary: train.py saves it in run.json, every load checks it."""
    return hashlib.sha1(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()


def train_tokenizer(docs: list[str], vocab_size: int, folder: str):
    """Byte-level BPE (RoBERTa's scheme) trained on `docs`, saved to `folder`, returned as a
    transformers tokenizer that AutoTokenizer.from_pretrained(folder) loads back."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AutoTokenizer, RobertaTokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(docs, vocab_size=vocab_size, min_frequency=2,
                            special_tokens=SPECIAL_TOKENS, show_progress=False)
    tmp = folder + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)  # debris of a killed run
    os.makedirs(tmp)
    bpe.save_model(tmp)
    tok = RobertaTokenizer(vocab=os.path.join(tmp, "vocab.json"), merges=os.path.join(tmp, "merges.txt"))
    tok.save_pretrained(tmp)
    os.replace(tmp, folder)  # whole folder or nothing: a killed run leaves only *.tmp
    return AutoTokenizer.from_pretrained(folder)
