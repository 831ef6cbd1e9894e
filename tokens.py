"""Every tokenizer helper: the ids that open and close a block, the ids that are never masked or
never sampled, a fingerprint that ties a tokenizer to the weights trained with it, and the
byte-level BPE that from-scratch models train on their corpus.

    bos_eos(tok)              (<s>, </s>) ids, or ([CLS], [SEP]) for BERT-style tokenizers
    never_masked_ids(tok)     never masked wherever they stand: every special token but <mask> and </s>
    banned_ids(tok)           never sampled into text: every special token
    token_ids(tok)            what the denoising loop needs: mask, eos, banned (</s> allowed by --stop-at-eos)
    fingerprint(tok)          sha1 of the vocabulary: saved in run.json, checked at every load
    train_tokenizer(docs, vocab_size, folder)   RoBERTa's byte-level BPE trained on docs
    token_texts(tok, ids)     the text each token adds, a character split over tokens shown once, whole
    row_texts(tok, ids, gaps) each token's text in a row with masks (gaps): runs between them decoded whole
    decode_text(tok, ids)     ids as text, decoded as one byte sequence (no U+FFFD for a split character)
"""

import codecs
import functools
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


# ---------------------------------------------------------------------------------------------
# Text of token ids: a byte-level BPE token can hold part of a UTF-8 character ("é" is two tokens
# when its bytes C3 A9 were never merged), so text is decoded from the bytes of whole runs
# ---------------------------------------------------------------------------------------------


@functools.cache
def byte_alphabet() -> dict[str, int]:
    """Byte-level BPE's alphabet (GPT-2, RoBERTa): the character that stands for each byte in a
    token's string -> the byte. Printable Latin-1 bytes stand for themselves; the other 68 bytes
    (controls, space, ...) take the characters from U+0100 on, in byte order (space is "Ġ")."""
    shown = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    hidden = [b for b in range(256) if b not in shown]
    return {**{chr(b): b for b in shown}, **{chr(256 + i): b for i, b in enumerate(hidden)}}


def is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and type(backend.decoder).__name__ == "ByteLevel"


def token_bytes(token: str) -> bytes:
    """The bytes a byte-level token string stands for (a character outside the alphabet, as in a
    token added by hand, as its own UTF-8)."""
    alphabet = byte_alphabet()
    return b"".join(bytes([alphabet[c]]) if c in alphabet else c.encode() for c in token)


def token_texts(tokenizer, ids) -> list[str]:
    """The text each token of a run adds, so that "".join(...) is the run decoded as one byte
    sequence: a character whose bytes span several tokens appears once, whole, with the token that
    completes it (the tokens before add ""), and bytes that complete no character (a lead byte
    the model followed with something else, or one cut off where the run ends) are dropped, never
    shown as U+FFFD. Other tokenizers (WordPiece, SentencePiece): the growth of the decoded prefix."""
    ids = [int(t) for t in ids]
    if is_byte_level(tokenizer):
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        return [utf8.decode(token_bytes(tok)) for tok in tokenizer.convert_ids_to_tokens(ids)]
    out, before = [], ""
    for i in range(len(ids)):
        text = tokenizer.decode(ids[:i + 1])
        out.append(text[len(before):] if text.startswith(before) else tokenizer.decode(ids[i:i + 1]))
        before = text
    return out


def row_texts(tokenizer, tokens: list[int], gaps: list[bool]) -> list[str]:
    """The text of each token of a canvas row (token_texts): each run of tokens between gaps
    (masks) decoded as one byte sequence, so a character split over tokens shows whole on the token
    that completes it, never as U+FFFD; a gap's text is ""."""
    out, run = [], []
    for t, gap in zip(tokens + [None], gaps + [True]):
        if gap:
            out += token_texts(tokenizer, run) + [""] * (t is not None)
            run = []
        else:
            run.append(t)
    return out


def decode_text(tokenizer, ids, skip_special_tokens: bool = False) -> str:
    """ids as text, decoded as one byte sequence (token_texts): what every script shows as
    generated text."""
    skip = set(tokenizer.all_special_ids) if skip_special_tokens else set()
    return "".join(token_texts(tokenizer, [t for t in ids if int(t) not in skip]))
