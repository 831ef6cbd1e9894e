"""Corpus -> tokenizer -> fixed-length blocks (train / validation), cached on disk.

    load_documents(cfg)      list of raw documents (embedded corpus, local files or a hub dataset)
    load_labelled(cfg)       the same documents with their labels (--labels folders | column)
    get_tokenizer(cfg)       a BPE trained on the corpus (tokens.train_tokenizer, cached) for
                             from-scratch models, else the pretrained model's own
    build_datasets(cfg, tok) tokenise once with datasets.map, cut into blocks (PACKINGS), split, cache
                             (checked on load and rebuilt when damaged; one run builds it while others
                             sharing it wait); labelled data adds a `label` column (a ClassLabel naming
                             them), splits each label alike, and a generator's blocks carry the label token

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

Labelled data (--labels): a label-conditioned generator's block is `<s> <label:NAME> chunk </s>`,
the label token never masked (it is special) and, in training, replaced by the null label at
--label-dropout (data_collator); a classifier's block is `<s> chunk </s>` with the label beside it.
Packed text never mixes labels: each label's documents form their own stream.
"""

import bz2
import hashlib
import json
import os
import re
from dataclasses import dataclass

from cli import UsageError
from config import TrainConfig
from files import load_cached, locked, save_cached
from tokens import add_label_tokens, banned_ids, bos_eos, fingerprint, label_ids, train_tokenizer

TEXT_SUFFIXES = (".txt", ".jsonl", ".csv", ".parquet")
TABLE_SUFFIXES = (".jsonl", ".csv", ".parquet")  # one document per row, with columns
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


def _rows(path: str):
    """(row number, row dict) of a .jsonl/.csv/.parquet file, or a UsageError naming the line."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            yield from enumerate(pq.read_table(path).to_pylist(), 1)
        except Exception as e:  # pyarrow's errors for a damaged file come in several types
            raise UsageError(f"{path} is not a readable parquet file ({str(e).splitlines()[0][:120]})")
        return
    with open(path, encoding="utf-8", newline="") as f:
        if path.endswith(".csv"):
            import csv

            yield from enumerate(csv.DictReader(f), 2)  # line 1 holds the column names
            return
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as e:
                raise UsageError(f"{path}:{n}: not valid JSON ({getattr(e, 'msg', 'nested too deep')})")
            if not isinstance(row, dict):
                raise UsageError(f"{path}:{n}: no fields (a {type(row).__name__}, not an object)")
            yield n, row


def _field(path: str, n: int, row: dict, column: str, flag_: str, text: bool):
    """row[column]: text (text=True), or a label (text, a whole number or a bool: named as text)."""
    if column not in row:
        raise UsageError(f"{path}:{n}: no '{column}' field (has: {', '.join(map(str, row))}); set {flag_}")
    value = row[column]
    if text and not isinstance(value, str) or not text and not isinstance(value, (str, int, bool)):
        what = "text" if text else "a label (text or a whole number)"
        raise UsageError(f"{path}:{n}: '{column}' holds {type(value).__name__} {json.dumps(value)[:40]}, not {what}")
    return value if text else str(value)


def _read_file(path: str, text_column: str, label_column: str | None = None) -> list:
    """The documents of one file: a .txt file is one document, a .jsonl/.csv/.parquet file one per
    row (its text_column). With label_column: (text, label) pairs, labels named as text."""
    try:
        if path.endswith(TABLE_SUFFIXES):
            return [_field(path, n, row, text_column, "--text-column", True) if label_column is None else
                    (_field(path, n, row, text_column, "--text-column", True),
                     _field(path, n, row, label_column, "--label-column", False)) for n, row in _rows(path)]
        if label_column is not None:
            raise UsageError(f"{path}: a .txt file has no columns, so no --label-column; use .jsonl/.csv/.parquet "
                             f"rows or --labels folders")
        with open(path, encoding="utf-8") as f:
            return [f.read()]
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text")
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}")


def local_files(path: str) -> list[str]:
    if os.path.isfile(path):
        if not path.endswith(TEXT_SUFFIXES):
            raise UsageError(f"{path}: expected a .txt, .jsonl, .csv or .parquet file")
        return [path]
    files = sorted(os.path.join(root, name) for root, _, names in os.walk(path)
                   for name in names if name.endswith(TEXT_SUFFIXES))
    if not files:
        raise UsageError(f"{path} holds no .txt, .jsonl, .csv or .parquet files")
    return files


def load_documents(cfg: TrainConfig) -> list[str]:
    """Raw documents for cfg.dataset, non-empty, or a UsageError saying what is wrong. Labelled data
    gives the same documents in the same order as unlabelled (so both train one tokenizer)."""
    if cfg.labels != "none":
        return load_labelled(cfg).texts
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


@dataclass
class Labelled:
    """Documents with their labels: texts[i] has label names[labels[i]]; names sorted."""
    texts: list[str]
    labels: list[int]
    names: list[str]


def load_labelled(cfg: TrainConfig) -> Labelled:
    """The documents of cfg.dataset with a label each (--labels folders: the subfolder a file sits
    in; --labels column: --label-column of each row), or a UsageError: a label folder with no text,
    a missing label column, fewer than two labels."""
    if cfg.labels == "folders":
        pairs = _folder_pairs(cfg)
    elif os.path.exists(cfg.dataset):
        pairs = [pair for p in local_files(cfg.dataset) for pair in _read_file(p, cfg.text_column, cfg.label_column)]
    elif cfg.dataset == "embedded" or cfg.dataset.startswith((".", "/", "~")) or cfg.dataset.endswith(TEXT_SUFFIXES):
        raise UsageError(f"--labels column needs a labelled dataset: {cfg.dataset} is "
                         f"{'unlabelled' if cfg.dataset == 'embedded' else 'not found'}")
    else:
        pairs = _hub_pairs(cfg)
    pairs = [(t.strip(), y) for t, y in pairs if t and t.strip()]
    names = sorted({y for _, y in pairs})
    if len(names) < 2:
        raise UsageError(f"{cfg.dataset} has {'only the label ' + repr(names[0]) if names else 'no labelled text'}: "
                         f"a label-conditioned model or a classifier needs at least two labels")
    index = {n: i for i, n in enumerate(names)}
    return Labelled([t for t, _ in pairs], [index[y] for _, y in pairs], names)


def _folder_pairs(cfg: TrainConfig) -> list[tuple[str, str]]:
    """(text, label) for every file under cfg.dataset, in local_files' order (the unlabelled one);
    the label is the name of the subfolder of cfg.dataset the file sits in."""
    root = cfg.dataset
    if not os.path.isdir(root):
        raise UsageError(f"--labels folders needs a folder with one subfolder per label; {root} is "
                         f"{'a file' if os.path.exists(root) else 'not found'}")
    subfolders = sorted(n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n)) and not n.startswith("."))
    loose = [n for n in os.listdir(root) if n.endswith(TEXT_SUFFIXES) and os.path.isfile(os.path.join(root, n))]
    if loose or not subfolders:
        raise UsageError(f"--labels folders: {root} must hold one subfolder per label, "
                         + (f"but holds files outside them ({', '.join(sorted(loose)[:3])})" if loose else "and holds none"))
    pairs = []
    for path in local_files(root):
        label = os.path.relpath(path, root).split(os.sep)[0]
        pairs += [(t, label) for t in _read_file(path, cfg.text_column)]
    empty = [n for n in subfolders if not any(y == n and t.strip() for t, y in pairs)]
    if empty:
        raise UsageError(f"label folder {os.path.join(root, empty[0])} holds no text (.txt/.jsonl/.csv/.parquet "
                         f"with some); remove it or fill it")
    return pairs


def _hub_pairs(cfg: TrainConfig) -> list[tuple[str, str]]:
    ds = _hub_split(cfg)
    if cfg.label_column not in ds.column_names:
        raise UsageError(f"hub dataset {cfg.dataset!r} has no column '{cfg.label_column}' "
                         f"(has: {', '.join(ds.column_names)}); set --label-column")
    feature = ds.features[cfg.label_column]
    named = getattr(feature, "names", None)  # a ClassLabel column holds ids: name them
    labels = [named[y] if named else str(y) for y in ds[cfg.label_column]]
    return list(zip(_hub_texts(cfg, ds), labels))


def _hub_documents(cfg: TrainConfig) -> list[str]:
    return _hub_texts(cfg, _hub_split(cfg))


def _hub_split(cfg: TrainConfig):
    import datasets

    from modeling import hub_offline

    offline = hub_offline()  # one attempt: out of reach, the dataset comes from the cache or not at all

    try:
        ds = datasets.load_dataset(cfg.dataset, cfg.dataset_config or None, split="train")
    except Exception as e:  # connection errors come in many types; all mean the same to a user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"cannot load hub dataset {cfg.dataset!r} ({first[:160]}){'; ' + offline if offline else ''}; "
                         f"offline, use --dataset embedded or a local .txt/.jsonl file or folder")
    return ds


def _hub_texts(cfg: TrainConfig, ds) -> list:
    if cfg.text_column not in ds.column_names:
        raise UsageError(f"hub dataset {cfg.dataset!r} has no column '{cfg.text_column}' "
                         f"(has: {', '.join(ds.column_names)}); set --text-column")
    docs = list(ds[cfg.text_column])
    bad = next((d for d in docs if d is not None and not isinstance(d, str)), None)
    if bad is not None:
        raise UsageError(f"hub dataset {cfg.dataset!r}: column '{cfg.text_column}' holds {type(bad).__name__}, "
                         f"not text; set --text-column")
    return [d if d is not None else "" for d in docs]  # empty documents are dropped by the callers


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

        return with_label_tokens(cfg, load_pretrained(AutoTokenizer, cfg.model))
    folder = os.path.join(cfg.cache_dir, f"tokenizer-{corpus_fingerprint(cfg)}-{cfg.tokenizer_vocab_size}")
    with locked(os.path.join(cfg.cache_dir, CACHE_LOCK)):  # runs sharing a cache build it once, checked on load
        tokenizer = load_cached(folder, AutoTokenizer.from_pretrained)
        if tokenizer is None:
            tokenizer = train_tokenizer(docs if docs is not None else load_documents(cfg), cfg.tokenizer_vocab_size,
                                        folder)
    return with_label_tokens(cfg, tokenizer)


def with_label_tokens(cfg: TrainConfig, tokenizer):
    """A label-conditioned generator's tokenizer: the corpus's (or the pretrained model's), plus one
    token per label and the null label appended after its vocabulary (tokens.add_label_tokens), so
    every other id stays what an unconditional model or a classifier on the same text has."""
    if cfg.task == "diffusion" and cfg.labels != "none":
        add_label_tokens(tokenizer, load_labelled(cfg).names)
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

    labelled = [cfg.labels, cfg.label_column, cfg.task] if cfg.labels != "none" else []  # unlabelled keys unchanged
    key = hashlib.sha1(json.dumps([corpus_fingerprint(cfg), fingerprint(tokenizer), cfg.max_len, cfg.val_fraction,
                                   cfg.text_column, cfg.packing] + labelled).encode()).hexdigest()[:12]
    folder = os.path.join(cfg.cache_dir, f"blocks-{key}")
    with locked(os.path.join(cfg.cache_dir, CACHE_LOCK)):  # runs sharing a cache build it once, checked on load
        dd = load_cached(folder, datasets.load_from_disk)
        if dd is None:
            dd = labelled_blocks(cfg, tokenizer) if labelled else block_datasets(cfg, tokenizer, docs)
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


def labelled_blocks(cfg: TrainConfig, tokenizer):
    """DatasetDict of blocks with a `label` column (a ClassLabel: its names are the labels), each
    label's documents cut into blocks on their own (PACKINGS) and held out alike (held_out_rows per
    label: the split is stratified). A generator's blocks carry the label token after <s>."""
    import datasets

    data = load_labelled(cfg)
    bos, eos = bos_eos(tokenizer)
    lead = label_ids(tokenizer, data.names) if cfg.task == "diffusion" else None
    ids = tokenizer(data.texts, add_special_tokens=False)["input_ids"]
    split = {"train": {"input_ids": [], "label": []}, "validation": {"input_ids": [], "label": []}}
    for y, name in enumerate(data.names):
        chunks = PACKINGS[cfg.packing]([t for t, lab in zip(ids, data.labels) if lab == y],
                                       cfg.max_len - 2 - (lead is not None), eos)
        blocks = [[bos] + ([lead[name]] if lead else []) + c + [eos] for c in chunks]
        if len(blocks) < 2:
            raise UsageError(f"label {name!r} of {cfg.dataset} fills {len(blocks)} block(s) of {cfg.max_len} tokens; "
                             f"each label needs at least 2 (add text or lower --max-len)")
        held = set(held_out_rows(len(blocks), cfg.val_fraction, cfg.packing))
        for i, block in enumerate(blocks):
            part = split["validation" if i in held else "train"]
            part["input_ids"].append(block)
            part["label"].append(y)
    features = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int64")),
                                  "label": datasets.ClassLabel(names=data.names)})
    return datasets.DatasetDict({k: datasets.Dataset.from_dict(v, features=features) for k, v in split.items()})


def label_names(ds) -> list[str]:
    """The label names of a labelled dataset (build_datasets' ClassLabel), [] for unlabelled data."""
    feature = ds.features.get("label")
    return list(feature.names) if feature is not None else []


def label_token_counts(ds, tokenizer) -> dict:
    """{label name: text tokens} of a labelled dataset: every token but the special ones (the frame,
    the label token, </s> padding)."""
    import torch

    if not label_names(ds) or not len(ds):
        return {}
    special = torch.tensor(banned_ids(tokenizer))
    rows = ds[:]
    text = (~torch.isin(torch.as_tensor(rows["input_ids"]), special)).sum(1)  # [M]
    labels = torch.as_tensor(rows["label"])  # [M]
    return {name: int(text[labels == y].sum()) for y, name in enumerate(label_names(ds))}
