"""Corpus -> tokenizer -> fixed-length blocks (train / validation), cached on disk.

    load_documents(cfg)      list of raw documents (embedded corpus, local files or a hub dataset)
    get_tokenizer(cfg)       a BPE trained on the corpus (tokens.train_tokenizer, cached) for
                             from-scratch models, else the pretrained model's own
    build_datasets(cfg, tok) tokenise once with datasets.map, cut into blocks (PACKINGS), split, cache
                             (checked on load and rebuilt when damaged; one run builds it while others
                             sharing it wait)

Every block is `<s> chunk </s>`, `max_len` tokens: the exact layout generate.py builds for its
canvas (`<s> prompt <mask>... </s>`), so nothing the model sees at generation time is new to it.
The chunk comes from --packing (PACKINGS):
    packed  documents joined by `</s>` into one stream, cut into chunks of `max_len - 2` (long
            documents; no padding)
    none    one document per block, cut to `max_len - 2` tokens and padded with `</s>` (short
            documents; LLaDA pads its SFT answers with EOS the same way)
A `</s>` inside the chunk (a document's end, or padding after it) is masked and scored like any
token, so the model learns where text ends and `generate.py --stop-at-eos` can cut there; the
frame `<s>`/`</s>` is never masked (diffusion.protected_positions).
"""

import bz2
import hashlib
import json
import os
import re

from cli import UsageError
from config import TrainConfig
from files import load_cached, locked, save_cached
from tokens import bos_eos, fingerprint, train_tokenizer

TEXT_SUFFIXES = (".txt", ".jsonl")
CACHE_LOCK = ".lock"  # held while a run reads or builds the cache

# ---------------------------------------------------------------------------------------------
# Documents
# ---------------------------------------------------------------------------------------------


def embedded_corpus() -> list[str]:
    """106 English Wikipedia articles (480k words, CC BY-SA) that ship in the gensim wheel's
    test data, cleaned of wiki markup. Changing the default corpus means changing this function."""
    try:
        import gensim
        from gensim.corpora.wikicorpus import extract_pages, filter_wiki
    except ImportError:
        raise UsageError("the embedded corpus needs gensim: pip install -r requirements.txt")
    path = os.path.join(os.path.dirname(gensim.__file__), "test", "test_data",
                        "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
    if not os.path.isfile(path):
        raise UsageError(f"gensim is installed but its Wikipedia test file is missing: {path}")
    docs = []
    with bz2.BZ2File(path) as f:
        for _title, text, _pageid in extract_pages(f, filter_namespaces=("0",)):
            text = _clean_wiki(filter_wiki(text))
            if text and not text.upper().startswith("#REDIRECT") and len(text.split()) >= 50:
                docs.append(text)
    return docs


def _clean_wiki(text: str) -> str:
    """Drop what filter_wiki leaves behind: bold/italic quotes, headings, empty brackets."""
    text = text.replace("'''", "").replace("''", '"')
    lines = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("=", "{", "|", "!")):  # headings and table debris
            continue
        line = re.sub(r"\(\s*[,;]?\s*\)", "", line)  # "( )" left where templates were
        line = re.sub(r"\s+([,.;:])", r"\1", re.sub(r"\s{2,}", " ", line))
        if len(line.split()) >= 4:  # list stubs and captions are not prose
            lines.append(line)
    return "\n".join(lines)


def _read_file(path: str, text_column: str) -> list[str]:
    try:
        if path.endswith(".jsonl"):
            docs = []
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except (json.JSONDecodeError, RecursionError) as e:
                        raise UsageError(f"{path}:{n}: not valid JSON ({getattr(e, 'msg', 'nested too deep')})")
                    if not isinstance(row, dict) or text_column not in row:
                        keys = ", ".join(row) if isinstance(row, dict) else type(row).__name__
                        raise UsageError(f"{path}:{n}: no '{text_column}' field (has: {keys}); "
                                         f"set --text-column")
                    if not isinstance(row[text_column], str):
                        raise UsageError(f"{path}:{n}: '{text_column}' holds {type(row[text_column]).__name__} "
                                         f"{json.dumps(row[text_column])[:40]}, not text")
                    docs.append(row[text_column])
            return docs
        with open(path, encoding="utf-8") as f:
            return [f.read()]
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text")
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}")


def local_files(path: str) -> list[str]:
    if os.path.isfile(path):
        if not path.endswith(TEXT_SUFFIXES):
            raise UsageError(f"{path}: expected a .txt or .jsonl file")
        return [path]
    files = sorted(os.path.join(root, name) for root, _, names in os.walk(path)
                   for name in names if name.endswith(TEXT_SUFFIXES))
    if not files:
        raise UsageError(f"{path} holds no .txt or .jsonl files")
    return files


def load_documents(cfg: TrainConfig) -> list[str]:
    """Raw documents for cfg.dataset, non-empty, or a UsageError saying what is wrong."""
    if cfg.dataset == "embedded":
        docs = embedded_corpus()
    elif os.path.exists(cfg.dataset):
        docs = [d for p in local_files(cfg.dataset) for d in _read_file(p, cfg.text_column)]
    elif cfg.dataset.startswith((".", "/", "~")) or cfg.dataset.endswith(TEXT_SUFFIXES):
        raise UsageError(f"dataset path not found: {cfg.dataset}")
    else:
        docs = _hub_documents(cfg)
    docs = [d.strip() for d in docs if d and d.strip()]
    if not docs:
        raise UsageError(f"dataset {cfg.dataset!r} contains no text")
    return docs


def _hub_documents(cfg: TrainConfig) -> list[str]:
    from modeling import hub_offline

    offline = hub_offline()  # one attempt: out of reach, the dataset comes from the cache or not at all
    import datasets

    try:
        ds = datasets.load_dataset(cfg.dataset, cfg.dataset_config or None, split="train")
    except Exception as e:  # connection errors come in many types; all mean the same to a user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"cannot load hub dataset {cfg.dataset!r} ({first[:160]}){'; ' + offline if offline else ''}; offline, use "
                         f"--dataset embedded or a local .txt/.jsonl file or folder")
    if cfg.text_column not in ds.column_names:
        raise UsageError(f"hub dataset {cfg.dataset!r} has no column '{cfg.text_column}' "
                         f"(has: {', '.join(ds.column_names)}); set --text-column")
    docs = list(ds[cfg.text_column])
    bad = next((d for d in docs if d is not None and not isinstance(d, str)), None)
    if bad is not None:
        raise UsageError(f"hub dataset {cfg.dataset!r}: column '{cfg.text_column}' holds {type(bad).__name__}, "
                         f"not text; set --text-column")
    return [d for d in docs if d is not None]


def corpus_fingerprint(cfg: TrainConfig) -> str:
    """Changes when the corpus changes: file sizes and mtimes for local data, names otherwise."""
    parts = [cfg.dataset, cfg.dataset_config, cfg.text_column]
    if cfg.dataset != "embedded" and os.path.exists(cfg.dataset):
        for p in local_files(cfg.dataset):
            st = os.stat(p)
            parts.append(f"{os.path.abspath(p)}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# Tokenizer (trained on the corpus for from-scratch models, else the pretrained model's)
# ---------------------------------------------------------------------------------------------


def get_tokenizer(cfg: TrainConfig, docs: list[str] | None = None):
    """The tokenizer for cfg.model: trained on the corpus (cached) for "scratch", else loaded."""
    from transformers import AutoTokenizer

    if cfg.model != "scratch":
        from modeling import load_pretrained

        return load_pretrained(AutoTokenizer, cfg.model)
    folder = os.path.join(cfg.cache_dir, f"tokenizer-{corpus_fingerprint(cfg)}-{cfg.tokenizer_vocab_size}")
    with locked(os.path.join(cfg.cache_dir, CACHE_LOCK)):  # runs sharing a cache build it once, checked on load
        tokenizer = load_cached(folder, AutoTokenizer.from_pretrained)
        if tokenizer is None:
            tokenizer = train_tokenizer(docs if docs is not None else load_documents(cfg), cfg.tokenizer_vocab_size,
                                        folder)
    return tokenizer


# ---------------------------------------------------------------------------------------------
# Tokenise, pack, split
# ---------------------------------------------------------------------------------------------


def pack(token_lists: list[list[int]], block: int, sep_id: int) -> list[list[int]]:
    """Join documents with `sep_id` and cut the stream into full chunks of `block` tokens
    (the ragged tail is dropped, as in HF run_mlm)."""
    stream = []
    for ids in token_lists:
        stream.extend(ids)
        stream.append(sep_id)
    return [stream[i:i + block] for i in range(0, len(stream) - block + 1, block)]


def pad_documents(token_lists: list[list[int]], block: int, sep_id: int) -> list[list[int]]:
    """One chunk of `block` tokens per document: the document cut to `block`, then `sep_id` up to
    `block` (the first one ends the document; a document of `block` tokens or more has no end)."""
    return [ids[:block] + [sep_id] * (block - len(ids[:block])) for ids in token_lists]


# --packing: (token lists, chunk length, </s>) -> chunks, each wrapped as <s> chunk </s>
PACKINGS = {"packed": pack, "none": pad_documents}


def held_out_rows(n: int, val_fraction: float, packing: str) -> list[int]:
    """Which of n blocks are held out: the tail of a packed stream (its neighbours share
    documents with each other, not with the training blocks), or, one document per block, blocks
    spread evenly over the corpus (a corpus in per-category folders would otherwise hold out its
    last category only)."""
    n_val = max(1, int(n * val_fraction))
    if packing == "packed":
        return list(range(n - n_val, n))
    return sorted({int((i + 0.5) * n / n_val) for i in range(n_val)})


def build_datasets(cfg: TrainConfig, tokenizer, docs: list[str] | None = None):
    """(train, validation) `datasets.Dataset`s with one column `input_ids` of length max_len.
    Cached under cfg.cache_dir keyed by corpus, tokenizer, window and packing, so a rerun starts fast."""
    import datasets

    key = hashlib.sha1(json.dumps([corpus_fingerprint(cfg), fingerprint(tokenizer), cfg.max_len, cfg.val_fraction,
                                   cfg.text_column, cfg.packing]).encode()).hexdigest()[:12]
    folder = os.path.join(cfg.cache_dir, f"blocks-{key}")
    with locked(os.path.join(cfg.cache_dir, CACHE_LOCK)):  # runs sharing a cache build it once, checked on load
        dd = load_cached(folder, datasets.load_from_disk)
        if dd is None:
            dd = block_datasets(cfg, tokenizer, docs)
            save_cached(folder, dd.save_to_disk)
    train = dd["train"]
    if cfg.max_train_blocks and len(train) > cfg.max_train_blocks:
        train = train.select(range(cfg.max_train_blocks))
    return train.with_format("torch"), dd["validation"].with_format("torch")


def block_datasets(cfg: TrainConfig, tokenizer, docs: list[str] | None):
    """DatasetDict(train, validation) of `<s> chunk </s>` blocks cut by --packing (PACKINGS); the
    held-out rows are held_out_rows' (the stream's tail when packed, documents spread over the
    corpus when not)."""
    import datasets

    docs = docs if docs is not None else load_documents(cfg)
    bos, eos = bos_eos(tokenizer)
    raw = datasets.Dataset.from_dict({"text": docs})
    tokenised = raw.map(lambda b: {"ids": tokenizer(b["text"], add_special_tokens=False)["input_ids"]},
                        batched=True, remove_columns=["text"], desc="tokenising")
    chunks = PACKINGS[cfg.packing](tokenised["ids"], cfg.max_len - 2, eos)
    blocks = [[bos] + c + [eos] for c in chunks]
    if len(blocks) < 2:
        raise UsageError(f"dataset {cfg.dataset!r} is too small: {len(blocks)} block(s) of "
                         f"{cfg.max_len} tokens; need at least 2 (add text or lower --max-len)")
    val = set(held_out_rows(len(blocks), cfg.val_fraction, cfg.packing))  # text the model never trains on
    return datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"input_ids": [b for i, b in enumerate(blocks) if i not in val]}),
        "validation": datasets.Dataset.from_dict({"input_ids": [b for i, b in enumerate(blocks) if i in val]}),
    })
