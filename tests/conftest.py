"""Shared fixtures. Tests run offline on CPU: caches live in the checkout (.cache/, ignored by
git), and the tiny models below are built from configs, never downloaded."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(ROOT, ".cache")
os.environ.setdefault("HF_HOME", os.path.join(CACHE, "hf"))
os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(CACHE, "hf", "datasets"))
os.environ.setdefault("MPLCONFIGDIR", os.path.join(CACHE, "mpl"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the scripts set it: the CI box is shared
sys.path.insert(0, ROOT)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


def tiny_overrides(out_dir: str, **kw) -> list[str]:
    """train.py flags for a seconds-long run on the embedded corpus."""
    flags = {"model": "scratch", "dataset": "embedded", "scratch-layers": 1, "scratch-hidden": 32,
             "scratch-heads": 2, "scratch-intermediate": 64, "max-len": 32, "max-steps": 6,
             "batch-size": 4, "logging-steps": 2, "eval-steps": 3, "save-steps": 3, "eval-batches": 1,
             "learning-rate": 1e-3, "warmup-steps": 1, "output-dir": out_dir, "cache-dir": CACHE}
    flags.update({k.replace("_", "-"): v for k, v in kw.items()})
    return [x for k, v in flags.items() for x in (f"--{k}", str(v))]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished 6-step training run: (output_dir, path of final-model)."""
    import train

    out = str(tmp_path_factory.mktemp("tiny_run"))
    assert train.main(tiny_overrides(out)) == 0
    return out, os.path.join(out, "final-model")


@pytest.fixture(scope="session")
def tiny_model(tiny_run):
    """(model, tokenizer, train_config) loaded from the tiny run's final-model."""
    from modeling import load_checkpoint

    return load_checkpoint(tiny_run[1], device="cpu")


@pytest.fixture(scope="session")
def tiny_baseline(tiny_run, tmp_path_factory):
    """baseline_ar.py's output folder for the tiny run: the AR baseline of the same size."""
    import baseline_ar

    out = str(tmp_path_factory.mktemp("ar"))
    assert baseline_ar.main(["--checkpoint", tiny_run[1], "--output-dir", out]) == 0
    return out


def short_documents(folder) -> str:
    """A corpus of 240 documents of 1 to 6 words (a 12-word vocabulary) as folder/docs.jsonl: every
    one shorter than a 16-token window, so --packing none pads each block with </s>."""
    import json
    import random

    rng = random.Random(0)
    words = "red blue green cat dog bird runs sleeps sings fast slow here".split()
    docs = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 6))) for _ in range(240)]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "docs.jsonl"), "w") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_short_docs(tmp_path_factory):
    """A finished run with --packing none on short_documents (window 16, 40 steps): the path of its
    final-model, a model that has learned where a document ends."""
    import train

    root = tmp_path_factory.mktemp("short_docs")
    data = short_documents(root / "data")
    flags = tiny_overrides(str(root / "run"), dataset=data, packing="none", max_len=16, prefix_len=4, max_steps=40, batch_size=8,
                           learning_rate=3e-3, warmup_steps=5, tokenizer_vocab_size=300, eval_steps=40,
                           save_steps=40, logging_steps=20, cache_dir=str(root / "cache"))
    assert train.main(flags) == 0
    return os.path.join(str(root / "run"), "final-model")
