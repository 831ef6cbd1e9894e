"""Every tokenizer helper: the ids that open and close a block, the ids that are never masked or
never sampled, a fingerprint that ties a tokenizer to the weights trained with it, and the
byte-level BPE that from-scratch models train on their corpus.

    bos_eos(tok)              (<s>, </s>) ids, or ([CLS], [SEP]) for BERT-style tokenizers
    never_masked_ids(tok)     never masked wherever they stand: every special token but <mask> and </s>
    banned_ids(tok)           never sampled into text: every special token
    token_ids(tok)            what the denoising loop needs: mask, eos, banned (</s> allowed by --stop-at-eos)
    fingerprint(tok)          sha1 of the whole tokenizer (vocabulary, merges, pre- and post-processing,
                              special tokens and their ids): saved in run.json, checked at every load
    fingerprint_matches(run, tok)   tok against a run.json (older ones recorded the vocabulary alone)
    encode_text(tok, text)    ids of text typed by a user: special-token text ("<mask>") stays text
    train_tokenizer(docs, vocab_size, folder)   RoBERTa's byte-level BPE trained on docs
    token_texts(tok, ids)     the text each token adds, a character split over tokens shown once, whole
    row_texts(tok, ids, gaps) each token's text in a row with masks (gaps): runs between them decoded whole
    decode_text(tok, ids)     ids as text, decoded as one byte sequence (no U+FFFD for a split character)
    label_token(name) / NULL_LABEL             the token a label-conditioned model reads after <s>
    add_label_tokens(tok, names)               reserve them (special: never masked, never sampled)
    label_ids(tok, names)                      {name: id}, plus None -> the null label's id
    labels_of(tok)                             the labels a tokenizer has tokens for ([] if none)
    vocab_of(tok)                              tok.get_vocab(), built once per tokenizer and size
"""

import codecs
import functools
import hashlib
import json
import os
import weakref

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's ids 0..4
NULL_LABEL = "<no-label>"  # the label a conditional model reads when it is told none (label dropout, guidance's u)


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


_KEPT = weakref.WeakKeyDictionary()  # tokenizer -> (its size, {function: what it returned})


def kept(fn):
    """fn(tokenizer) computed once per tokenizer while its size stays the same (adding tokens
    changes it): reading the vocabulary builds a dict of every token, and every generation asks.
    What it returns is shared: read it, do not change it."""
    @functools.wraps(fn)
    def once(tokenizer):
        size, known = _KEPT.get(tokenizer, (None, None))
        if size != len(tokenizer):
            known = {}
            _KEPT[tokenizer] = (len(tokenizer), known)
        if fn not in known:
            known[fn] = fn(tokenizer)
        return known[fn]
    return once


@kept
def vocab_of(tokenizer) -> dict:
    """tokenizer.get_vocab(), once per tokenizer and size (kept)."""
    return tokenizer.get_vocab()


def token_ids(tokenizer) -> dict:
    """The ids the denoising loop needs: mask, eos, and those never sampled (</s> is handled by
    --stop-at-eos)."""
    _, eos = bos_eos(tokenizer)
    null = vocab_of(tokenizer).get(NULL_LABEL)  # a label-conditioned model's (classifier-free guidance's u)
    return {"mask": tokenizer.mask_token_id, "eos": eos, "banned": [t for t in banned_ids(tokenizer) if t != eos],
            "null_label": null}


def fingerprint(tokenizer, legacy: bool = False) -> str:
    """sha1 of everything that decides which ids a text becomes and what they mean: the backend's
    whole serialisation (vocabulary, merges, normaliser, pre-tokeniser, post-processor, added
    tokens) and which token is <mask>, <s>, ... (tokenizer_config.json). legacy=True: the vocabulary
    alone, what run.json held before (tokenizer_sha1)."""
    if legacy:
        return hashlib.sha1(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)  # set by the last call with truncation= or padding=, not the tokenizer's
        spec.pop("padding", None)
    else:
        ranks = getattr(tokenizer, "bpe_ranks", {})
        spec = {"vocab": sorted(tokenizer.get_vocab().items()), "merges": sorted((v, list(k)) for k, v in ranks.items())}
    special = {name: [str(tok), tokenizer.convert_tokens_to_ids(tok)] for name, tok in tokenizer.special_tokens_map.items()
               if isinstance(tok, str)}
    return hashlib.sha1(json.dumps({"spec": spec, "special": special}, sort_keys=True).encode()).hexdigest()


def fingerprint_matches(run: dict, tokenizer) -> bool:
    """True if `tokenizer` is the one run.json (a dict) recorded: the whole-tokenizer fingerprint,
    or for a run.json written before it existed, the vocabulary's; True when nothing is recorded."""
    if run.get("tokenizer_fingerprint"):
        return run["tokenizer_fingerprint"] == fingerprint(tokenizer)
    return not run.get("tokenizer_sha1") or run["tokenizer_sha1"] == fingerprint(tokenizer, legacy=True)


def encode_text(tokenizer, text: str) -> list[int]:
    """Ids of text a user typed (a prompt, a template's fixed text). Special-token text in it
    ("<mask>", "<s>", "[SEP]") is tokenised as the characters it is, never turned into the control
    token: a typed "<mask>" would otherwise become a hole the model fills, and "<s>" would vanish
    from the output as a special token."""
    if not text:
        return []
    ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    if set(ids) & set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}:  # a tokenizer without split_special_tokens
        from cli import UsageError

        raise UsageError(f"{text[:60]!r} holds the text of a special token ({', '.join(tokenizer.all_special_tokens)}), "
                         f"which this tokenizer cannot keep as plain text; rephrase it")
    return ids


def train_tokenizer(docs: list[str], vocab_size: int, folder: str):
    """Byte-level BPE (RoBERTa's scheme) trained on `docs`, saved to `folder` whole or not at all
    (files.save_cached), returned as a transformers tokenizer that AutoTokenizer.from_pretrained(folder)
    loads back."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AutoTokenizer, RobertaTokenizer

    from files import save_cached

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(docs, vocab_size=vocab_size, min_frequency=2,
                            special_tokens=SPECIAL_TOKENS, show_progress=False)

    def save(tmp):
        bpe.save_model(tmp)
        RobertaTokenizer(vocab=os.path.join(tmp, "vocab.json"), merges=os.path.join(tmp, "merges.txt")).save_pretrained(tmp)

    save_cached(folder, save)
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
# Label tokens: a label-conditioned model reads one right after <s>
# ---------------------------------------------------------------------------------------------


def label_token(name: str) -> str:
    return f"<label:{name}>"


def add_label_tokens(tokenizer, names: list[str]) -> list[int]:
    """Reserve one special token per label and the null label, appended after the vocabulary (so a
    tokenizer trained on the same text keeps every other id: a classifier trained without labels
    reads the conditional model's text). Special, hence never masked, never scored and never sampled
    (never_masked_ids, banned_ids). Returns their ids, the null label's last."""
    new = [label_token(n) for n in names] + [NULL_LABEL]
    tokenizer.add_special_tokens({"additional_special_tokens": new}, replace_extra_special_tokens=False)
    return tokenizer.convert_tokens_to_ids(new)


def label_ids(tokenizer, names: list[str]) -> dict:
    """{name: token id} for a label-conditioned model's labels, and None: the null label's id."""
    ids = {n: tokenizer.convert_tokens_to_ids(label_token(n)) for n in names}
    ids[None] = tokenizer.convert_tokens_to_ids(NULL_LABEL)
    unk = tokenizer.unk_token_id
    missing = [n if n is not None else NULL_LABEL for n, i in ids.items() if i is None or i == unk]
    if missing:
        raise ValueError(f"the tokenizer has no label token for {', '.join(map(str, missing))}")
    return ids


@kept
def labels_of(tokenizer) -> list[str]:
    """The labels a tokenizer has tokens for (a label-conditioned generator's), in id order; []
    for any other tokenizer."""
    vocab = vocab_of(tokenizer)
    names = sorted((i, t[len("<label:"):-1]) for t, i in vocab.items() if t.startswith("<label:") and t.endswith(">"))
    return [n for _, n in names] if NULL_LABEL in vocab else []


def vocab_without_labels(tokenizer) -> dict:
    """The vocabulary minus label tokens: what a classifier and a generator must share."""
    return {t: i for t, i in vocab_of(tokenizer).items() if not (t == NULL_LABEL or t.startswith("<label:"))}
