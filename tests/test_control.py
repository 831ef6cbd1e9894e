"""Controlled generation: labelled data, the label-conditioned model (label token, dropout, never
masked), guidance on labels, classifier guidance (exact and first-order) and their bad inputs.
Mock models and classifiers with known outputs, hand-made labelled folders, and two tiny runs."""

import json
import math
import os

import pytest
import torch

import cli
import decoding as D
import generate as G
import guidance
import train
from conftest import tiny_overrides
from config import GenConfig, TrainConfig, UsageError

# ---------------------------------------------------------------------------------------------
# Hand-made labelled folders
# ---------------------------------------------------------------------------------------------

WORDS = {"cats": "cat meow purr whisker nap milk", "dogs": "dog bark wag bone walk fetch",
         "birds": "bird sing nest wing seed fly"}


def labelled_folder(root, n=30, formats=("txt", "jsonl", "csv", "parquet")) -> str:
    """root/<label>/ for three labels, n short documents each, in every file format: each label
    writes its own six words (so a tiny model can tell them apart)."""
    import csv
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(0)
    for i, (label, words) in enumerate(sorted(WORDS.items())):
        folder = os.path.join(root, label)
        os.makedirs(folder, exist_ok=True)
        docs = [" ".join(rng.choice(words.split()) for _ in range(rng.randint(2, 6))) for _ in range(n)]
        kind = formats[i % len(formats)]
        path = os.path.join(folder, f"docs.{kind}")
        if kind == "txt":
            for j, d in enumerate(docs):
                with open(os.path.join(folder, f"d{j:03d}.txt"), "w") as f:
                    f.write(d)
        elif kind == "jsonl":
            with open(path, "w") as f:
                f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
        elif kind == "csv":
            with open(path, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["text"])
                w.writerows([d] for d in docs)
        else:
            pq.write_table(pa.table({"text": docs}), path)
    return str(root)


def cfg_for(dataset, **kw) -> TrainConfig:
    return TrainConfig(model="scratch", dataset=str(dataset), **kw)


def test_label_folders_read_every_format_in_the_unlabelled_order(tmp_path):
    from data import load_documents, load_labelled

    root = labelled_folder(tmp_path / "d", n=5, formats=("txt", "csv", "parquet"))
    data = load_labelled(cfg_for(root, labels="folders"))
    assert data.names == ["birds", "cats", "dogs"]
    assert data.texts == load_documents(cfg_for(root))  # the same documents, the same order: one tokenizer
    for text, y in zip(data.texts, data.labels):
        assert set(text.split()) <= set(WORDS[data.names[y]].split())
    assert [data.labels.count(y) for y in range(3)] == [5, 5, 5]


def test_label_column_of_jsonl_csv_and_parquet_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data import load_labelled

    (tmp_path / "a.jsonl").write_text('{"text": "one", "topic": 1}\n{"text": "two", "topic": 0}\n')
    (tmp_path / "b.csv").write_text("text,topic\nthree,1\n")
    pq.write_table(pa.table({"text": ["four"], "topic": [0]}), str(tmp_path / "c.parquet"))
    data = load_labelled(cfg_for(tmp_path, labels="column", label_column="topic"))
    assert data.texts == ["one", "two", "three", "four"] and data.names == ["0", "1"]
    assert [data.names[y] for y in data.labels] == ["1", "0", "1", "0"]


def test_label_tokens_keep_every_other_id_and_are_never_masked_nor_sampled(tmp_path):
    from data import get_tokenizer
    from tokens import add_label_tokens, banned_ids, label_ids, labels_of, never_masked_ids, token_ids

    root = labelled_folder(tmp_path / "d", n=8)
    cache = str(tmp_path / "cache")
    plain = get_tokenizer(cfg_for(root, cache_dir=cache, tokenizer_vocab_size=200))
    cond = get_tokenizer(cfg_for(root, cache_dir=cache, tokenizer_vocab_size=200, labels="folders"))
    clf = get_tokenizer(cfg_for(root, cache_dir=cache, tokenizer_vocab_size=200, labels="folders", task="classify"))
    assert clf.get_vocab() == plain.get_vocab() and labels_of(plain) == [] and labels_of(cond) == ["birds", "cats", "dogs"]
    ids = label_ids(cond, labels_of(cond))
    assert sorted(ids.values()) == list(range(len(plain), len(plain) + 4))  # appended after the vocabulary
    assert {t: i for t, i in cond.get_vocab().items() if i < len(plain)} == plain.get_vocab()
    assert set(ids.values()) <= set(never_masked_ids(cond)) & set(banned_ids(cond))
    add_label_tokens(plain, ["owls"])  # the same tokenizer object, grown: what is kept about it follows
    assert labels_of(plain) == ["owls"] and token_ids(plain)["null_label"] == len(plain) - 1


def test_blocks_carry_the_label_token_and_the_split_is_stratified(tmp_path):
    from data import build_datasets, get_tokenizer, label_names
    from tokens import label_ids

    root = labelled_folder(tmp_path / "d", n=40)
    for task, lead in (("diffusion", True), ("classify", False)):
        cfg = cfg_for(root, cache_dir=str(tmp_path / "cache"), tokenizer_vocab_size=200, labels="folders", task=task,
                      packing="none", max_len=16, prefix_len=4, val_fraction=0.1)
        tok = get_tokenizer(cfg)
        train_ds, val_ds = build_datasets(cfg, tok)
        assert label_names(train_ds) == ["birds", "cats", "dogs"]
        assert [int((val_ds[:]["label"] == y).sum()) for y in range(3)] == [4, 4, 4]  # 10% of each label's 40
        assert [int((train_ds[:]["label"] == y).sum()) for y in range(3)] == [36, 36, 36]
        if lead:
            want = torch.tensor([label_ids(tok, label_names(train_ds))[n] for n in ("birds", "cats", "dogs")])
            assert torch.equal(train_ds[:]["input_ids"][:, 1], want[train_ds[:]["label"]])
        else:
            assert train_ds[:]["input_ids"].max() < len(tok)  # the classifier's tokenizer has no label tokens


# ---------------------------------------------------------------------------------------------
# The collator: label dropout, the label never masked
# ---------------------------------------------------------------------------------------------


class LabelTokenizer:
    """The ids the collator reads: <s> 0, <pad> 1, </s> 2, <mask> 4, labels 90..92, null 93."""
    mask_token_id, pad_token_id, all_special_ids = 4, 1, [0, 1, 2, 3, 4, 90, 91, 92, 93]
    bos_token_id, eos_token_id = 0, 2

    def convert_tokens_to_ids(self, token):
        return 93


@pytest.mark.parametrize("dropout", [0.0, 0.1, 0.3])
def test_label_dropout_rate_and_the_label_is_never_masked(dropout):
    from data_collator import DiffusionCollator

    cfg = TrainConfig(model="scratch", labels="folders", label_dropout=dropout, max_len=12, per_sample_rate=True,
                      mask_levels="1.0", prefix_mode="none")
    collate = DiffusionCollator(LabelTokenizer(), cfg, seed=0)
    rows = torch.full((4000, 12), 20)
    rows[:, 0], rows[:, -1] = 0, 2
    rows[:, 1] = 90 + torch.arange(4000) % 3
    batch = collate([{"input_ids": r} for r in rows])
    label = batch["input_ids"][:, 1]
    dropped = float((label == 93).float().mean())
    assert abs(dropped - dropout) < 4 * math.sqrt(dropout * (1 - dropout) / 4000) + 1e-9
    kept = label != 93
    assert torch.equal(label[kept], rows[kept, 1])  # a kept label is the row's own
    assert (batch["labels"][:, 1] == -100).all()  # never scored, at a masking rate of 100%
    assert (batch["input_ids"][:, 2:-1] == 4).all()  # while everything after it is masked


def test_the_prompt_prefix_counts_text_after_the_label():
    from data_collator import DiffusionCollator

    cfg = TrainConfig(model="scratch", labels="folders", label_dropout=0.0, max_len=12, prefix_mode="fixed",
                      prefix_len=3, mask_levels="1.0")
    rows = torch.full((8, 12), 20)
    rows[:, 0], rows[:, 1], rows[:, -1] = 0, 90, 2
    batch = DiffusionCollator(LabelTokenizer(), cfg, seed=0)([{"input_ids": r} for r in rows])
    assert (batch["input_ids"][:, 2:5] == 20).all() and (batch["input_ids"][:, 5:-1] == 4).all()


# ---------------------------------------------------------------------------------------------
# Guidance on labels: u = the null label (and the prompt masked)
# ---------------------------------------------------------------------------------------------

MASK, NULL = 4, 93
IDS = {"mask": MASK, "eos": 2, "banned": [0, 1, 3, 4, 90, 91, 92, 93], "null_label": NULL}


class LabelAware(torch.nn.Module):
    """Logits at every position: token 60 gets 1.5 under label 90 and 0.0 under the null label;
    token 61 gets 2.0 and 2.5; a visible prompt token 50 adds 1.0 to token 62."""

    def __init__(self, V=100):
        super().__init__()
        self.V, self.dummy = V, torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        B, L = input_ids.shape
        logits = torch.full((B, L, self.V), -9.0)
        labelled = (input_ids[:, 1] == 90)[:, None]  # [B, 1]
        logits[:, :, 60] = torch.where(labelled, 1.5, 0.0)
        logits[:, :, 61] = torch.where(labelled, 2.0, 2.5)
        logits[:, :, 62] = torch.where((input_ids == 50).any(1)[:, None], 1.0, 0.0)
        return type("Out", (), {"logits": logits})()


def label_canvas(label=90, prompt=True, L=10):
    tokens = torch.full((1, L), MASK)
    tokens[0, 0], tokens[0, 1], tokens[0, -1] = 0, label, 2
    if prompt:
        tokens[0, 2] = 50
    pos = torch.arange(L)[None]
    return D.Canvas(tokens, tokens == MASK, (pos == 2) & prompt, start=3 if prompt else 2, label=1)


@pytest.mark.parametrize("w", [0.0, 1.0, 3.0])
def test_label_guidance_is_u_plus_w_plus_1_times_c_minus_u(w):
    c = label_canvas()
    todo = c.tokens == MASK
    logits = D.predict(LabelAware(), c.tokens, todo, c, D.with_ban(IDS, "cpu"), GenConfig(cfg=w, label="x"),
                       torch.zeros(int(todo.sum()), dtype=torch.bool))  # no </s> anywhere
    cond = torch.tensor([1.5, 2.0, 1.0])  # tokens 60, 61, 62 with the label and the prompt visible
    uncond = torch.tensor([0.0, 2.5, 0.0])  # the null label, the prompt masked: one weight on both
    assert torch.allclose(logits[:, 60:63], (uncond + (w + 1) * (cond - uncond)).expand(len(logits), 3))
    assert (logits[:, [90, 93]] == float("-inf")).all()  # label tokens are never written


def test_guidance_on_the_label_steers_the_written_tokens():
    c = label_canvas(prompt=False)
    plain, _ = D.denoise(LabelAware(), c, IDS, GenConfig(steps=3, sampling="greedy"), torch.Generator())
    steered, _ = D.denoise(LabelAware(), c, IDS, GenConfig(steps=3, sampling="greedy", cfg=1.0, label="x"),
                           torch.Generator())
    assert (plain[c.active] == 61).all() and (steered[c.active] == 60).all()  # 0 + 2 * 1.5 = 3 > 2.5 + 2 * -0.5


# ---------------------------------------------------------------------------------------------
# Classifier guidance
# ---------------------------------------------------------------------------------------------


class CountClassifier(torch.nn.Module):
    """Two classes; the logit of class 1 is `s` times the count of token 7 in the input: so
    p(1 | x) = sigmoid(s * count) is known for every canvas."""

    def __init__(self, s=0.8, V=20, H=4):
        super().__init__()
        self.s = s
        self.emb = torch.nn.Embedding(V, H)

    def get_input_embeddings(self):
        return self.emb

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None):
        count = (input_ids == 7).sum(1).float()  # [B]
        logits = torch.stack([torch.zeros_like(count), self.s * count], 1)  # [B, 2]
        return type("Out", (), {"logits": logits})()


def test_exact_guidance_reweights_the_top_k_by_the_classifier_to_the_gamma():
    x = torch.tensor([[0, 7, 4, 4, 9, 2], [0, 3, 4, 5, 4, 2]])
    where = x == 4  # [2, 6]: four masked positions
    logits = torch.log_softmax(torch.randn(4, 20, generator=torch.Generator().manual_seed(0)), -1)
    logits[:3, 7] = logits[:3].max(-1).values + 0.5  # token 7 is a top-k candidate at three positions
    logits[3, 7] = logits[3].min() - 1.0  # and not at the fourth: there it is scored as the canvas is
    scores = guidance.exact_scores(CountClassifier(), x, where, logits, 1, k=3)
    top = logits.topk(3, -1).indices
    rows = where.nonzero()[:, 0]
    for n in range(4):
        for v in range(20):
            # the canvas with this candidate filled in; outside the top k, the canvas as it stands
            count = int((x[rows[n]] == 7).sum()) + (v == 7 and v in top[n])
            assert math.isclose(float(scores[n, v]), -math.log1p(math.exp(-0.8 * count)), abs_tol=1e-6)
    gamma = 3.0
    p = torch.softmax(guidance.guided(logits, scores, gamma), -1)
    prior = torch.softmax(logits, -1)
    brute = torch.zeros_like(prior)
    for n in range(4):
        for v in range(20):
            count = int((x[rows[n]] == 7).sum()) + (v == 7 and v in top[n])
            brute[n, v] = prior[n, v] * torch.sigmoid(torch.tensor(0.8 * count)) ** gamma
    assert torch.allclose(p, brute / brute.sum(-1, keepdim=True), atol=1e-6)
    assert torch.equal(guidance.guided(logits, scores, 0.0), logits)  # gamma 0: unguided


def test_the_guide_reads_the_canvas_without_its_label_column():
    seen = []

    class Spy(CountClassifier):
        def forward(self, input_ids=None, **kw):
            seen.append(input_ids.clone())
            return super().forward(input_ids)

    tokens = torch.tensor([[0, 90, 4, 7, 2]])
    todo = tokens == 4
    guide = guidance.Guide(Spy(), y=1, gamma=1.0, mode="exact", k=2, label_column=1)
    guide(torch.zeros(1, 100), tokens, todo)
    assert all(s.shape[1] == 4 and not (s == 90).any() for s in seen)


def tiny_classifier(scale, V=40, L=12, C=3):
    from transformers import ModernBertConfig, ModernBertForSequenceClassification

    torch.manual_seed(0)
    cfg = ModernBertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=L, pad_token_id=0, bos_token_id=1,
                           eos_token_id=2, cls_token_id=1, sep_token_id=2, num_labels=C, initializer_range=scale,
                           global_attn_every_n_layers=1, local_attention=L, embedding_dropout=0.0, mlp_dropout=0.0,
                           attention_dropout=0.0)
    return ModernBertForSequenceClassification(cfg).eval()


def test_exact_and_first_order_guidance_agree_on_a_nearly_linear_classifier():
    """Taylor's estimate of log p(y | x with x_i = v) is exact for a classifier linear in its input
    embeddings; a tiny classifier with small weights is nearly so: the two agree on every
    candidate of every masked position, and the guided proposals are nearly the same."""
    clf = tiny_classifier(0.02)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(5, 40, (3, 12), generator=g)
    x[:, 0], x[:, -1] = 1, 2
    where = torch.zeros(3, 12, dtype=torch.bool)
    where[:, 3:7] = True
    x[where] = 4
    logits = torch.randn(int(where.sum()), 40, generator=g)
    exact = guidance.exact_scores(clf, x, where, logits, 1, k=40)
    taylor = guidance.taylor_scores(clf, x, where, logits, 1, k=40)
    base = guidance.class_log_probs(clf, x, 1)[where.nonzero()[:, 0], None]  # [N, 1] log p(y | x_t)
    change = torch.stack([(exact - base).flatten(), (taylor - base).flatten()])
    assert torch.corrcoef(change)[0, 1] > 0.95
    p_exact, p_taylor = (torch.softmax(guidance.guided(logits, s, 4.0), -1) for s in (exact, taylor))
    assert (p_exact - p_taylor).abs().sum(-1).max() / 2 < 0.01  # total variation
    assert (exact - base).abs().max() > 1e-4  # and the classifier does move: the agreement is not 0 = 0


def test_setting_of_records_guidance_only_when_guiding():
    plain = D.setting_of(GenConfig())
    assert plain["label"] == "" and not {"guide", "guide_mode", "guide_scale", "guide_k"} & set(plain)
    exact = D.setting_of(GenConfig(guide="c", guide_label="perl", guide_scale=2.0))
    assert exact["guide_mode"] == "exact" and exact["guide_k"] == 8 and exact["guide_scale"] == 2.0
    taylor = D.setting_of(GenConfig(guide="c", guide_label="perl", guide_scale=2.0, guide_mode="taylor"))
    assert "guide_k" not in taylor
    assert "classifier guidance to perl x2.0 (first-order)" in D.describe(
        GenConfig(guide="c", guide_label="perl", guide_scale=2.0, guide_mode="taylor"))
    assert "label perl, guidance 2.0" in D.describe(GenConfig(label="perl", cfg=2.0))


@pytest.mark.parametrize("kw,msg", [
    (dict(guide="c"), "go together"), (dict(guide_label="x"), "go together"),
    (dict(guide_scale=1.0), "--guide-scale needs --guide"), (dict(guide_mode="gradient"), "--guide-mode must be"),
])
def test_guidance_flags_that_do_nothing_are_refused(kw, msg):
    with pytest.raises(UsageError, match=msg):
        GenConfig(**kw)


# ---------------------------------------------------------------------------------------------
# Two tiny runs: a label-conditioned generator and a classifier on the same text
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def labelled_runs(tmp_path_factory):
    """(labelled data folder, label-conditioned final-model, classifier final-model), 30 steps each."""
    root = tmp_path_factory.mktemp("labelled")
    data = labelled_folder(root / "data")
    common = dict(dataset=data, packing="none", max_len=16, prefix_len=4, labels="folders", max_steps=30,
                  batch_size=8, learning_rate=3e-3, warmup_steps=3, tokenizer_vocab_size=200, eval_steps=30,
                  save_steps=30, logging_steps=15, cache_dir=str(root / "cache"))
    assert train.main(tiny_overrides(str(root / "gen"), **common)) == 0
    assert train.main(tiny_overrides(str(root / "clf"), task="classify", **common)) == 0
    return data, str(root / "gen" / "final-model"), str(root / "clf" / "final-model")


def test_a_labelled_run_names_its_labels(labelled_runs, tmp_path, capsys):
    _, gen, clf = labelled_runs
    for folder in (gen, clf):
        with open(os.path.join(folder, "config.json")) as f:
            assert json.load(f)["id2label"] == {"0": "birds", "1": "cats", "2": "dogs"}
        assert "`birds`, `cats`, `dogs`" in open(os.path.join(folder, "README.md")).read()
    assert G.main(["--checkpoint", gen, "--label", "cats", "--cfg", "2", "--num-samples", "2", "--steps", "3",
                   "--out", str(tmp_path / "g.jsonl")]) == 0
    row = json.loads((tmp_path / "g.jsonl").read_text())
    assert row["config"]["label"] == "cats" and len(row["samples"]) == 2


def test_classifier_guidance_runs_on_the_tiny_generator_in_both_modes(labelled_runs, tmp_path):
    _, gen, clf = labelled_runs
    from modeling import load_checkpoint

    model, tok, tcfg = load_checkpoint(gen, device="cpu")
    for mode in ("exact", "taylor"):
        gc = GenConfig(guide=clf, guide_label="dogs", guide_scale=4.0, guide_mode=mode, guide_k=3, steps=3,
                       num_samples=2, out="")
        ids, hist, _ = D.generate(model, tok, gc, tcfg.max_len, torch.Generator().manual_seed(0))
        assert ids.shape == (2, tcfg.max_len - 3) and not (ids == tok.mask_token_id).any()


def test_control_bad_inputs_are_one_line(labelled_runs, tiny_run, tmp_path, capsys):
    """Each: one line `error: ...`, exit 2."""
    data, gen, clf = labelled_runs
    cases = [
        (G.main, ["--checkpoint", gen, "--label", "fish"], "unknown --label 'fish'; this model knows: birds, cats, dogs"),
        (G.main, ["--checkpoint", tiny_run[1], "--label", "cats"], "trained without labels"),
        (G.main, ["--checkpoint", gen, "--guide", clf, "--guide-label", "fish", "--guide-scale", "1"],
         "unknown --guide-label 'fish'"),
        (G.main, ["--checkpoint", tiny_run[1], "--guide", clf, "--guide-label", "cats", "--guide-scale", "1"],
         "reads another tokenizer than the generator"),
        (G.main, ["--checkpoint", clf], "is a classifier"),
        (G.main, ["--checkpoint", gen, "--guide", gen, "--guide-label", "cats", "--guide-scale", "1"],
         "not a classifier"),
    ]
    for main, argv, msg in cases:
        assert cli.cli(main, argv + ["--out", ""]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and msg in err[0], (argv, err)


def bad_folder(tmp_path, case) -> tuple[str, dict]:
    root = labelled_folder(tmp_path / "d", n=4, formats=("jsonl",))
    if case == "empty label folder":
        os.makedirs(os.path.join(root, "fish"))
        return root, dict(labels="folders"), "label folder"
    if case == "one label":
        os.makedirs(tmp_path / "one")
        os.rename(os.path.join(root, "cats"), tmp_path / "one" / "cats")
        return str(tmp_path / "one"), dict(labels="folders"), "only the label 'cats'"
    if case == "a single class":
        (tmp_path / "one.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n')
        return str(tmp_path / "one.jsonl"), dict(labels="column"), "only the label 'x'"
    if case == "files outside the label folders":
        (tmp_path / "d" / "loose.txt").write_text("stray")
        return root, dict(labels="folders"), "holds files outside them"
    if case == "no label column":
        return str(tmp_path / "d"), dict(labels="column", label_column="topic"), "no 'topic' field"
    return root, dict(task="classify"), "--task classify needs labelled data"


@pytest.mark.parametrize("case", ["empty label folder", "one label", "a single class", "files outside the label folders",
                                  "no label column", "classify without labels"])
def test_bad_labelled_data_is_one_line_and_writes_nothing(tmp_path, capsys, case):
    data, kw, msg = bad_folder(tmp_path, case)
    out = tmp_path / "out"
    assert cli.cli(train.main, tiny_overrides(str(out), dataset=data, cache_dir=str(tmp_path / "c"), **kw)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0], err
    assert not out.exists() or not any(out.iterdir())  # no lock, no run.json, no checkpoint


def test_the_demo_offers_the_models_labels_and_writes_with_one(labelled_runs):
    import gradio as gr

    import demo
    from modeling import load_checkpoint

    _, gen, clf = labelled_runs
    model, tok, tcfg = load_checkpoint(gen, device="cpu")
    app = demo.build_app(model, tok, tcfg, None, demo.DemoConfig(checkpoint=gen, baseline="none"))
    by_id = {getattr(b, "elem_id", None): b for b in app.blocks.values()}
    assert isinstance(by_id["gc-label"], gr.Dropdown)
    assert [c[1] for c in by_id["gc-label"].choices] == ["", "birds", "cats", "dogs"]
    assert {"gc-guide", "gc-guide_label", "gc-guide_scale", "gc-guide_mode", "gc-guide_k", "gc-cfg"} <= set(by_id)
    gc = GenConfig(label="cats", cfg=1.0, guide=clf, guide_label="cats", guide_scale=2.0, guide_mode="taylor",
                   steps=3, out="")
    race = demo.Race(model, tok, tcfg.max_len, None, gc, ("d", "a"))
    list(race.frames(0))
    assert race.total == tcfg.max_len - 3  # <s>, the label, </s>
    assert len(race.row) == race.total and tok.mask_token_id not in race.row


# ---------------------------------------------------------------------------------------------
# The judge and the study's arithmetic
# ---------------------------------------------------------------------------------------------


def test_the_judge_learns_words_of_real_text_only():
    import judge as J

    pairs = lambda ws: [f"{a} {b}" for a in ws for b in ws if a != b]  # noqa: E731
    texts = pairs(["cat", "meow", "purr"]) + pairs(["dog", "bark", "wag"])
    model = J.fit(texts, [0] * 6 + [1] * 6, ["cats", "dogs"])
    assert model.accuracy(["purr", "a bark", "meow, meow!"], [0, 1, 0]) == 1.0
    assert J.words('Kirk: "Spock!"') == ["kirk", ':', '"', "spock", '!"']
    assert model.predict(["zebra"]).tolist() in ([0], [1])  # unseen words: the prior, not an error


def test_the_study_aggregates_labels_and_checks_the_criteria():
    sys_path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")
    import sys

    sys.path.insert(0, sys_path)
    import control_study as CS

    refs = {"a": {"word_entropy": 4.0}, "b": {"word_entropy": 5.0}}

    def row(gen, kind, s, label, acc, ppl, ent):
        return {"generator": gen, "kind": kind, "strength": s, "label": label, "accuracy": acc, "gen_ppl": ppl,
                "word_entropy": ent, "seconds": 1.0}

    rows = [row("cond", "label guidance", 0, "a", 0.5, 10.0, 4.0), row("cond", "label guidance", 0, "b", 0.25, 40.0, 5.0),
            row("cond", "label guidance", 2, "a", 1.0, 20.0, 3.6), row("cond", "label guidance", 2, "b", 0.75, 40.0, 4.5),
            row("uncond", "unguided", 0, "a", 0.25, 30.0, 4.0), row("uncond", "unguided", 0, "b", 0.25, 30.0, 5.0),
            row("uncond", "classifier exact", 4, "a", 0.75, 90.0, 4.0), row("uncond", "classifier exact", 4, "b", 0.75,
                                                                              90.0, 5.0)]
    summary = CS.aggregate(rows, refs)
    cond0 = CS.unguided(summary, "cond")
    assert cond0["accuracy"] == 0.375 and math.isclose(cond0["gen_ppl"], 20.0)  # geometric mean of 10 and 40
    c = CS.criteria(summary)
    best = c["best_fluent_guided"]["setting"]
    assert best["strength"] == 2 and best["accuracy"] == 0.875 and math.isclose(best["ppl_ratio"], math.sqrt(800) / 20)
    assert math.isclose(best["entropy_ratio"], 0.9) and c["best_fluent_guided"]["met"]
    assert not c["conditional_alone"]["met"]  # 37.5% < 50%
    assert c["classifier_on_unconditional"]["met"] and c["classifier_on_unconditional"]["unguided"] == 0.25
    exact = next(r for r in summary if r["kind"] == "classifier exact")
    assert math.isclose(exact["ppl_ratio"], 3.0) and not exact["fluent"]  # 3x the unguided perplexity is not fluent

    # a restricted proposal's rows: their perplexity ratio is against their own sampler unguided, and its curve
    # starts there; the check on the unconditional generator takes the best of every kind
    kind = CS.restricted_kind(16)
    rows += [row("uncond", kind, 0, "a", 0.25, 10.0, 3.0), row("uncond", kind, 0, "b", 0.25, 10.0, 4.0),
             row("uncond", kind, 8, "a", 1.0, 15.0, 3.0), row("uncond", kind, 8, "b", 0.75, 15.0, 4.0)]
    summary = CS.aggregate(rows, refs)
    c = CS.criteria(summary)
    top = next(r for r in summary if r["kind"] == kind and r["strength"] == 8)
    assert math.isclose(top["ppl_ratio"], 1.5) and c["classifier_on_unconditional"]["setting"]["kind"] == kind
    assert c["classifier_on_unconditional"]["unguided"] == 0.25
    assert [p["strength"] for p in CS.curve(summary, "uncond", kind)] == [0, 8]

    classifier = "results/control_study/classifier/final-model"
    grid = [s for s in CS.grid(CS.ControlConfig(guide_scales="0,8", restrict_k=16), classifier) if s["kind"] == kind]
    assert [(s["strength"], s["fields"]) for s in grid] == [
        (0.0, {"sampling": "topk", "k": 16}),
        (8.0, {"sampling": "topk", "k": 16, "guide": classifier, "guide_scale": 8.0, "guide_mode": "exact",
               "guide_k": 16})]
    assert not any(s["kind"] == kind for s in CS.grid(CS.ControlConfig(restrict_k=0), classifier))


def test_the_committed_control_study_is_the_render_of_its_json():
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))
    import control_study as CS

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "docs", "control_study.json")) as f:
        result = json.load(f)
    with open(os.path.join(root, "docs", "control_study.md")) as f:
        assert f.read() == CS.render(result, "figures/control_study.png")
    assert os.path.isfile(os.path.join(root, "docs", "figures", "control_study.png"))
    assert len(result["labels"]) == 4 and all(r["labels"] == 4 for r in result["summary"])
    assert min(sum(r["judged"].values()) for r in result["rows"]) >= 16  # >= 16 samples per label and setting
