"""Controlled generation, measured: does steering toward a label work, and what does it cost?

    python experiments/control_study.py --docs                     # the committed study (docs/control_study.md)
    python experiments/control_study.py --labels perl,startrek --cfg-weights 0,2 --guide-scales 0,4
    python experiments/control_study.py --render-only              # markdown and figure from the JSON

1. Data: four categories of Debian's fortunes, one folder per label (experiments/fortunes_corpus.py).
2. Four runs in --out-dir (RUNS; a folder that holds a finished model trained with the same
   settings is reused, and its training time is read from its own log):
     cond        train.py --quick-test --labels folders: a label-conditioned generator (label dropout)
     uncond      the plain quick-test recipe on the same text: no labels
     classifier  train.py --task classify from uncond's weights: p(label | text masked at any rate)
     ar          baseline_ar.py on uncond: the AR model that scores generative perplexity
3. The judge (judge.py): bag-of-words logistic regression trained on cond's training split, real
   text only; its accuracy on the held-out split is the ceiling a generator is measured against.
4. For every label and strength, --samples samples (generate.py's decoding defaults, --stop-at-eos,
   one seed per label shared by every strength):
     cond   + --label ℓ --cfg w                     guidance on the label (w = 0: the model alone)
     cond   + --label ℓ + classifier guidance γ     exact (top --guide-k) and first-order
     uncond + classifier guidance γ                 γ = 0: the unguided model (chance)
   scored by judge accuracy (the share judged ℓ), generative perplexity under ar, and word
   entropy (bits, the samples' pooled words) over held-out text of ℓ with as many documents.
5. The rules on the trained models: label dropout's rate and the label never masked, measured with
   cond's collator on its training blocks; exact against first-order scores on held-out canvases.
Writes control_study.json (every command, setting and number), .csv, .md (rendered from the
JSON alone) and .png to --out-dir; --docs also writes docs/control_study.md/.json and
docs/figures/control_study.png.
"""

import os
import sys

from repo_root import ROOT  # first: puts the repo's modules on sys.path

import dataclasses
import json
import math
import shlex
import subprocess
import time

from cli import UsageError, cli, parse
from config import flag, parse_floats, parse_names, Settings

CATEGORIES = "definitions,perl,startrek,literature"  # a bag-of-words judge separates them (the JSON says how well)
DECODING = {"stop_at_eos": True}  # generate.py's defaults otherwise: every setting records its fields


class ControlConfig(Settings):
    data: str = flag("data/fortunes4", "the labelled corpus: one folder per label (made by fortunes_corpus.py if "
                     "missing)")
    categories: str = flag(CATEGORIES, "the fortune categories fortunes_corpus.py arranges into --data")
    labels: str = flag("all", "labels to steer toward (comma-separated), or all")
    cfg_weights: str = flag("0,1,2,4", "label guidance weights w for the conditional model")
    guide_scales: str = flag("0,2,4,8", "classifier guidance scales gamma (0 = unguided)")
    modes: str = flag("exact,taylor", "classifier guidance modes (decoding.GUIDES)")
    guide_k: int = flag(4, "candidates per masked position for exact guidance", min=1)
    restrict_k: int = flag(16, "also steer the unconditional generator with its proposal restricted to its top K "
                           "tokens (--sampling topk --k K), every one rescored (--guide-k K): exact guidance over "
                           "the whole proposal, at each --guide-scales strength (0: that sampler unguided); 0 = "
                           "skip", min=0, max=256)
    samples: int = flag(16, "samples per label and setting", min=2)
    seed: int = flag(0, "sample seed of the first label (label i uses seed + 1000 i)", min=0)
    classifier_steps: int = flag(1000, "optimiser steps of the guidance classifier (from uncond's weights)", min=1)
    out_dir: str = flag("results/control_study", "a folder per run; control_study.json / .csv / .md / .png")
    docs: bool = flag(False, "also write docs/control_study.md, docs/control_study.json, docs/figures/control_study.png")
    render_only: bool = flag(False, "redraw the markdown and figure from --out-dir's control_study.json; run nothing")

    def check(self) -> None:
        for name in ("cfg_weights", "guide_scales"):
            values = parse_floats(getattr(self, name), name.replace("_", "-"))
            if not values or min(values) < 0 or 0 not in values:
                raise UsageError(f"--{name.replace('_', '-')} must be numbers >= 0 including 0 (the unguided point)")
        parse_names(self.modes, "modes", ("exact", "taylor"))


# ---------------------------------------------------------------------------------------------
# The runs: commands, reused when a finished folder was trained with the same settings
# ---------------------------------------------------------------------------------------------


def commands(sc: ControlConfig) -> dict:
    """name -> (script, argv): every command the study's models come from."""
    out = sc.out_dir
    data = ["--quick-test", "--dataset", sc.data, "--packing", "none", "--val-fraction", "0.1"]
    return {
        "data": ("experiments/fortunes_corpus.py", ["--categories", sc.categories, "--out", sc.data]),
        "cond": ("train.py", data + ["--labels", "folders", "--output-dir", f"{out}/cond"]),
        "uncond": ("train.py", data + ["--output-dir", f"{out}/uncond"]),
        "classifier": ("train.py", data + ["--task", "classify", "--labels", "folders", "--model",
                                           f"{out}/uncond/final-model", "--max-steps", str(sc.classifier_steps),
                                           "--learning-rate", "5e-4", "--output-dir", f"{out}/classifier"]),
        "ar": ("baseline_ar.py", ["--checkpoint", f"{out}/uncond/final-model", "--output-dir", f"{out}/ar"]),
    }


def values(argv: list[str]) -> dict:
    """{--flag: its value} of an argv whose flags may stand alone (--quick-test): a flag followed by
    another flag has no value."""
    return {a: b for a, b in zip(argv, argv[1:] + [""]) if a.startswith("--") and not b.startswith("--")}


def finished_with(script: str, argv: list[str]) -> bool:
    """Whether the command's output already holds its result, made with the same settings: the
    corpus folder with exactly its categories; a train.py final-model whose saved config equals the
    one argv resolves to (output folder aside); a baseline of the same checkpoint."""
    from config import TrainConfig, train_presets

    flags = values(argv)
    if script.endswith("fortunes_corpus.py"):
        out, cats = flags["--out"], set(flags["--categories"].split(","))
        return os.path.isdir(out) and set(os.listdir(out)) == cats
    folder = os.path.join(flags["--output-dir"], "final-model")
    if script == "baseline_ar.py":
        saved = os.path.join(folder, "ar_config.json")
        return os.path.isfile(saved) and json.load(open(saved))["checkpoint"] == flags["--checkpoint"]
    saved = os.path.join(folder, "diffusion_config.json")
    if not os.path.isfile(saved):
        return False
    want = dataclasses.asdict(parse(TrainConfig, argv, presets=train_presets)[0])
    have = json.load(open(saved))
    return all(have.get(k) == v for k, v in want.items() if k != "output_dir")


def trained_seconds(folder: str) -> float | None:
    """Wall seconds between a run's first and last log rows (metrics.jsonl), or None."""
    from runs import read_metrics

    times = [r["time"] for r in read_metrics(folder) if "time" in r]
    return round(times[-1] - times[0], 1) if len(times) > 1 else None


def run(name: str, script: str, argv: list[str]) -> dict:
    """Run one command (nice -n 10) unless finished_with says its result is there; the record the
    JSON keeps: the command, whether it was reused, its seconds and the load it ran under."""
    command = shlex.join(["python", script] + argv)
    folder = values(argv).get("--output-dir")
    if finished_with(script, argv):
        return {"command": command, "reused": True, "seconds": trained_seconds(folder) if folder else None}
    log = os.path.join(folder or ROOT, "run.log") if folder else os.devnull
    if folder:
        os.makedirs(folder, exist_ok=True)
    print(f"running: {command}" + (f"  (log: {log})" if folder else ""), flush=True)
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(["nice", "-n", "10", sys.executable, os.path.join(ROOT, script)] + argv, cwd=ROOT,
                              stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise UsageError(f"{command} failed with exit code {proc.returncode}" + (f"; see {log}" if folder else ""))
    return {"command": command, "reused": False, "seconds": round(time.time() - t0, 1),
            "load_average_1min": round(os.getloadavg()[0], 2)}


# ---------------------------------------------------------------------------------------------
# The judge, the reference text, the rules on the trained models
# ---------------------------------------------------------------------------------------------


def split_texts(ds, tokenizer) -> tuple[list[str], list[int]]:
    """(texts, label ids) of a labelled dataset's blocks: every special token dropped."""
    from tokens import banned_ids

    special = set(banned_ids(tokenizer))
    rows = ds[:]
    texts = [tokenizer.decode([t for t in row.tolist() if t not in special]) for row in rows["input_ids"]]
    return texts, rows["label"].tolist()


def spread(items: list, n: int) -> list:
    """n items spread evenly over a list (all of them when it is shorter)."""
    if len(items) <= n:
        return list(items)
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]


def word_entropy(texts: list[str]) -> float:
    """Entropy (bits) of the pooled lower-cased words of texts."""
    from metrics import unigram_entropy

    return max(0.0, unigram_entropy([t.lower().split() for t in texts]))


def references(val: tuple[list[str], list[int]], names: list[str], n: int, scorer) -> dict:
    """Per label: n held-out documents of it (spread over the held-out split), their word entropy
    and their perplexity under the AR scorer: what samples of that label are compared with."""
    from metrics import score_texts

    out = {}
    for y, name in enumerate(names):
        texts = spread([t for t, lab in zip(*val) if lab == y], n)
        nats, count = score_texts(scorer[0], scorer[1], texts, 64)
        out[name] = {"documents": len(texts), "word_entropy": word_entropy(texts),
                     "gen_ppl": math.exp(nats / count), "text": texts[0]}
    return out


def fit_judge(train, val, names: list[str]) -> tuple:
    """(the judge, its record): trained on real training text, scored on held-out real text."""
    import judge as J

    model = J.fit(*train, names)
    pred = model.predict(val[0]).tolist()
    confusion = [[sum(1 for p, y in zip(pred, val[1]) if y == a and p == b) for b in range(len(names))]
                 for a in range(len(names))]
    return model, {"kind": "bag-of-words logistic regression (judge.py): word and word-pair presence",
                   "features": len(model.vocab), "train_documents": len(train[0]),
                   "held_out_documents": len(val[0]), "held_out_accuracy": model.accuracy(*val),
                   "confusion": confusion}


def rules_on_the_trained_models(cond_cfg, cond_tok, train_ds, classifier, uncond, val_ids, k: int) -> dict:
    """Label dropout and the never-masked label, measured with cond's own collator on 50 of its
    training batches; exact against first-order classifier scores on 32 held-out blocks masked at
    50% (uncond's top-k candidates at every masked position)."""
    import torch

    import guidance
    from data_collator import DiffusionCollator
    from diffusion import mask_tokens, protected_positions
    from tokens import NULL_LABEL, never_masked_ids

    collate = DiffusionCollator(cond_tok, cond_cfg, seed=0)
    null, dropped, masked, rows = cond_tok.convert_tokens_to_ids(NULL_LABEL), 0, 0, 0
    for i in range(50):
        batch = collate([train_ds[j] for j in range(i * cond_cfg.batch_size, (i + 1) * cond_cfg.batch_size)])
        dropped += int((batch["input_ids"][:, 1] == null).sum())
        masked += int((batch["input_ids"][:, 1] == cond_tok.mask_token_id).sum() + (batch["labels"][:, 1] != -100).sum())
        rows += len(batch["input_ids"])
    ids = val_ids[:32]  # [32, L] uncond's held-out blocks: the classifier's tokens
    tok = uncond[1]
    protected = protected_positions(ids, never_masked_ids(tok), torch.zeros(len(ids), dtype=torch.long))
    x, _ = mask_tokens(ids, torch.full((len(ids),), 0.5), protected, tok.mask_token_id, torch.Generator().manual_seed(0))
    where = x == tok.mask_token_id
    from modeling import masked_logits

    with torch.no_grad():
        logits = masked_logits(uncond[0], x, None, where).float()  # [N, V]
    agree = []
    for y in range(classifier.config.num_labels):
        exact = guidance.exact_scores(classifier, x, where, logits, y, k)
        taylor = guidance.taylor_scores(classifier, x, where, logits, y, k)
        top = logits.topk(k, -1).indices  # [N, k]
        e, t = exact.gather(1, top), taylor.gather(1, top)  # [N, k]
        e, t = e - e.mean(1, keepdim=True), t - t.mean(1, keepdim=True)  # what reweighting uses: differences
        agree.append({"correlation": float(torch.corrcoef(torch.stack([e.flatten(), t.flatten()]))[0, 1]),
                      "same_best_candidate": float((e.argmax(1) == t.argmax(1)).float().mean())})
    return {"label_dropout": {"configured": cond_cfg.label_dropout, "measured": dropped / rows, "rows": rows,
                              "label_masked_or_scored": masked},
            "exact_vs_taylor": {"blocks": len(ids), "masked_positions": int(where.sum()), "k": k,
                                "by_label": agree}}


# ---------------------------------------------------------------------------------------------
# The grid: every label, generator, guidance kind and strength
# ---------------------------------------------------------------------------------------------


def grid(sc: ControlConfig, classifier: str) -> list[dict]:
    """Every (generator, kind, strength) as the GenConfig fields it sets; the label (and guide label)
    is filled in per label. A strength of 0 appears once per generator: its unguided point."""
    weights = parse_floats(sc.cfg_weights, "cfg-weights")
    scales = [g for g in parse_floats(sc.guide_scales, "guide-scales") if g > 0]
    out = [{"generator": "cond", "kind": "label guidance", "strength": w, "fields": {"cfg": w}} for w in weights]
    out.append({"generator": "uncond", "kind": "unguided", "strength": 0.0, "fields": {}})
    for generator in ("cond", "uncond"):
        for mode in parse_names(sc.modes, "modes", ("exact", "taylor")):
            out += [{"generator": generator, "kind": f"classifier {mode}", "strength": g,
                     "fields": {"guide": classifier, "guide_scale": g, "guide_mode": mode, "guide_k": sc.guide_k}}
                    for g in scales]
    if sc.restrict_k:  # the proposal is the top K, and every token of it is rescored: its own unguided point at 0
        k, kind = sc.restrict_k, restricted_kind(sc.restrict_k)
        out.append({"generator": "uncond", "kind": kind, "strength": 0.0, "fields": {"sampling": "topk", "k": k}})
        out += [{"generator": "uncond", "kind": kind, "strength": g,
                 "fields": {"sampling": "topk", "k": k, "guide": classifier, "guide_scale": g, "guide_mode": "exact",
                            "guide_k": k}} for g in scales]
    return out


def restricted_kind(k: int) -> str:
    return f"classifier exact, top-{k} proposal"


def decoding_used(result: dict) -> str:
    """The decoding setting the unguided unconditional samples ran with, in words (from the JSON),
    so the page says what "the defaults" were when the study ran."""
    row = next((r for r in result["rows"] if r["kind"] == "unguided"), result["rows"][0])
    return row["setting"].split(", label ")[0]


def score_setting(setting: dict, label: str, y: int, seed: int, models: dict, judge, sc: ControlConfig) -> dict:
    """One setting's samples for one label: judge accuracy, generative perplexity, word entropy."""
    from config import GenConfig
    from metrics import diffusion_row

    model, tok, window = models[setting["generator"]]
    fields = dict(setting["fields"], **({"guide_label": label} if "guide" in setting["fields"] else {}))
    gc = GenConfig(label=label if setting["generator"] == "cond" else "", num_samples=sc.samples, seed=seed,
                   out="", **DECODING, **fields)
    row = diffusion_row(model, tok, gc, window, models["scorer"], keep=sc.samples)
    pred = judge.predict(row["texts"]).tolist()
    ends = row.get("ends", {})
    return {"generator": setting["generator"], "kind": setting["kind"], "strength": setting["strength"],
            "label": label, "accuracy": sum(p == y for p in pred) / len(pred),
            "judged": {n: pred.count(i) for i, n in enumerate(judge.names)}, "gen_ppl": row["gen_ppl"],
            "word_entropy": word_entropy(row["texts"]), "unigram_entropy": row["unigram_entropy"],
            "share_ended": ends.get("share_ended"), "median_length": ends.get("median_length"),
            "seconds": round(row["seconds_per_sample"] * len(pred), 2), "settings": row["settings"],
            "setting": row["label"], "texts": row["texts"][:3]}


def aggregate(rows: list[dict], refs: dict) -> list[dict]:
    """One row per (generator, kind, strength) over its labels: mean accuracy, the geometric mean
    of generative perplexity, the mean of word entropy over each label's held-out text's."""
    groups = {}
    for r in rows:
        groups.setdefault((r["generator"], r["kind"], r["strength"]), []).append(r)
    out = []
    for (generator, kind, strength), rs in groups.items():
        ppl = [r["gen_ppl"] for r in rs if r["gen_ppl"]]
        out.append({"generator": generator, "kind": kind, "strength": strength, "labels": len(rs),
                    "accuracy": sum(r["accuracy"] for r in rs) / len(rs),
                    "gen_ppl": math.exp(sum(map(math.log, ppl)) / len(ppl)) if ppl else None,
                    "entropy_ratio": sum(r["word_entropy"] / refs[r["label"]]["word_entropy"] for r in rs) / len(rs),
                    "seconds": round(sum(r["seconds"] for r in rs), 1),
                    "by_label": {r["label"]: r["accuracy"] for r in rs}})
    return out


def unguided(summary: list[dict], generator: str, kind: str = "") -> dict:
    """A generator's point without guidance: cond at w = 0 (its label, nothing more), uncond at gamma = 0;
    for a kind that has a strength-0 row of its own (a restricted proposal: its sampler unguided), that row."""
    own = [r for r in summary if r["generator"] == generator and r["kind"] == kind and r["strength"] == 0]
    if own:
        return own[0]
    kind = "label guidance" if generator == "cond" else "unguided"
    return next(r for r in summary if r["generator"] == generator and r["kind"] == kind and r["strength"] == 0)


def criteria(summary: list[dict]) -> dict:
    """The issue's done-when, from the summary: each with its numbers and met / not met."""
    for r in summary:
        base = unguided(summary, r["generator"], r["kind"])
        r["ppl_ratio"] = r["gen_ppl"] / base["gen_ppl"] if r["gen_ppl"] and base["gen_ppl"] else None
        r["fluent"] = r["ppl_ratio"] is not None and r["ppl_ratio"] <= 1.5 and r["entropy_ratio"] >= 0.85
    guided = [r for r in summary if r["strength"] > 0 and r["fluent"]]
    best = max(guided, key=lambda r: r["accuracy"], default=None)
    uncond = [r for r in summary if r["generator"] == "uncond" and r["strength"] > 0]
    best_uncond = max(uncond, key=lambda r: r["accuracy"], default=None)
    pick = lambda r: None if r is None else {k: r[k] for k in ("generator", "kind", "strength", "accuracy",  # noqa: E731
                                                               "gen_ppl", "ppl_ratio", "entropy_ratio")}
    return {
        "best_fluent_guided": {"target": "accuracy >= 0.85 at perplexity <= 1.5x the unguided model's and word "
                               "entropy >= 0.85x held-out text's", "setting": pick(best),
                               "met": best is not None and best["accuracy"] >= 0.85},
        "conditional_alone": {"target": "the conditional model at w = 0: accuracy >= 0.5",
                              "accuracy": unguided(summary, "cond")["accuracy"],
                              "met": unguided(summary, "cond")["accuracy"] >= 0.5},
        "classifier_on_unconditional": {"target": "from chance to accuracy >= 0.7",
                                        "unguided": unguided(summary, "uncond")["accuracy"], "setting": pick(best_uncond),
                                        "met": best_uncond is not None and best_uncond["accuracy"] >= 0.7},
    }


# ---------------------------------------------------------------------------------------------
# Outputs: JSON, CSV, figure, and the markdown page rendered from the JSON alone
# ---------------------------------------------------------------------------------------------

CSV_FIELDS = ["generator", "kind", "strength", "label", "accuracy", "gen_ppl", "word_entropy", "unigram_entropy",
              "share_ended", "median_length", "seconds"]


def write_outputs(result: dict, sc: ControlConfig) -> None:
    from files import write_atomic, write_json

    os.makedirs(sc.out_dir, exist_ok=True)
    write_json(os.path.join(sc.out_dir, "control_study.json"), result)
    lines = [",".join(CSV_FIELDS)]
    for r in result["rows"] + [dict(s, label="all") for s in result["summary"]]:
        lines.append(",".join("" if r.get(k) is None else str(r[k]) for k in CSV_FIELDS))
    write_atomic(os.path.join(sc.out_dir, "control_study.csv"), "\n".join(lines) + "\n")
    plot(result, os.path.join(sc.out_dir, "control_study.png"))
    write_atomic(os.path.join(sc.out_dir, "control_study.md"), render(result, "control_study.png"))
    print(f"wrote {sc.out_dir}/control_study.json, .csv, .md, .png", flush=True)
    if sc.docs:
        import shutil

        write_json(os.path.join(ROOT, "docs", "control_study.json"), result)
        shutil.copy(os.path.join(sc.out_dir, "control_study.png"), os.path.join(ROOT, "docs", "figures", "control_study.png"))
        write_atomic(os.path.join(ROOT, "docs", "control_study.md"), render(result, "figures/control_study.png"))
        print("wrote docs/control_study.md, docs/control_study.json, docs/figures/control_study.png", flush=True)


CURVES = {("cond", "label guidance"): ("#2563eb", "o"), ("cond", "classifier exact"): ("#16a34a", "s"),
          ("cond", "classifier taylor"): ("#84cc16", "^"), ("uncond", "classifier exact"): ("#dc2626", "s"),
          ("uncond", "classifier taylor"): ("#f97316", "^")}
RESTRICTED_CURVE = ("#7c3aed", "D")  # a restricted proposal's curve (its kind names its K)


def curve(summary: list[dict], generator: str, kind: str) -> list[dict]:
    """One guidance kind's points by strength, starting from its generator's unguided point."""
    points = [r for r in summary if r["generator"] == generator and r["kind"] == kind]
    start = unguided(summary, generator, kind)
    return sorted(points + ([start] if start not in points else []), key=lambda r: r["strength"])


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    summary, ceiling = result["summary"], result["judge"]["held_out_accuracy"]
    curves = dict(CURVES)
    for r in summary:  # a restricted proposal's kind names its K, so it is not among CURVES' keys
        curves.setdefault((r["generator"], r["kind"]), RESTRICTED_CURVE)
    for (generator, kind), (color, marker) in curves.items():
        pts = curve(summary, generator, kind)
        if len(pts) < 2:
            continue
        name = f"{'conditional' if generator == 'cond' else 'unconditional'}: {kind}"
        for ax, key in zip(axes, ("gen_ppl", "entropy_ratio")):
            ax.plot([p[key] for p in pts], [p["accuracy"] for p in pts], marker=marker, color=color, label=name)
            for p in pts:
                ax.annotate(f"{p['strength']:g}", (p[key], p["accuracy"]), textcoords="offset points", xytext=(4, 3),
                            fontsize=7, color=color)
    for ax in axes:
        ax.axhline(1 / len(result["labels"]), color="grey", ls=":", lw=1)
        ax.axhline(ceiling, color="black", ls="--", lw=1)
        ax.axhline(0.85, color="grey", ls="-.", lw=0.8)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.set_ylabel("judge accuracy (share of samples judged as the target label)")
    axes[0].set(xscale="log", xlabel="generative perplexity under the AR baseline (lower = more fluent)",
                title="Control vs fluency (numbers: w or gamma)")
    axes[1].axvline(0.85, color="grey", ls="-.", lw=0.8)
    axes[1].set(xlabel="word entropy / held-out text's (1 = as varied as real text)", title="Control vs variety")
    axes[0].text(axes[0].get_xlim()[0], ceiling, " judge on held-out text", va="bottom", fontsize=7)
    axes[0].text(axes[0].get_xlim()[0], 1 / len(result["labels"]), " chance", va="bottom", fontsize=7)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(result: dict, figure: str) -> str:
    """docs/control_study.md from the JSON alone."""
    return "\n".join(render_head(result, figure) + render_table(result) + render_checks(result)) + "\n"


def render_head(result: dict, figure: str) -> list[str]:
    j, c = result["judge"], result["config"]
    cmds = [r["command"] + (f"   # {r['seconds'] / 60:.0f} min" if r.get("seconds") else "") for r in result["runs"].values()]
    return [
        "# Controlled generation: steering toward a label, and what it costs", "",
        "Rendered from [control_study.json](control_study.json) by `python experiments/control_study.py --docs` "
        "(`--render-only` redraws it). Every number below comes from that JSON.", "",
        f"Data: Debian's fortunes, categories {', '.join(result['labels'])} (one folder per label), one fortune per "
        f"block. Chance is {1 / len(result['labels']):.0%}. Models and commands (a reused run's time is read from its "
        "log):", "", "```bash", *cmds, result["command"], "```", "",
        f"**The judge** never saw generated text: {j['kind']}, {j['features']:,} features, trained on "
        f"{j['train_documents']:,} real documents; on {j['held_out_documents']} held-out real documents it is right "
        f"**{j['held_out_accuracy']:.1%}** of the time: the ceiling for any generator here.", "",
        f"Each setting: {c['samples']} samples per label (generate.py's decoding defaults when the study ran, "
        f"{decoding_used(result)}, with --stop-at-eos; label i "
        f"uses seed {c['seed']} + 1000 i at every strength), scored by the share the judge assigns to the target "
        "label, generative perplexity under the AR baseline trained on the same text, and word entropy of the "
        "pooled samples over that of as many held-out documents of the label. Classifier guidance is exact over "
        f"the top {c['guide_k']} candidates of every masked position, or first-order (taylor)." + (
            f" Rows \"{restricted_kind(c['restrict_k'])}\": the unconditional generator's proposal restricted to its "
            f"top {c['restrict_k']} tokens (`--sampling topk --k {c['restrict_k']} --guide-k {c['restrict_k']}`), so "
            "every token it can draw is rescored and guidance is exact over the whole proposal; strength 0 is that "
            "sampler unguided, the base of those rows' perplexity ratio." if c.get("restrict_k") else ""), "",
        f"![accuracy vs fluency]({figure})", ""]


def render_table(result: dict) -> list[str]:
    labels = result["steered"]
    lines = ["| generator | guidance | strength | accuracy | " + " | ".join(labels) +
             " | gen ppl | x unguided | word entropy / held-out | seconds |",
             "|---|---|---|---|" + "---|" * len(labels) + "---|---|---|---|"]
    for r in result["summary"]:
        gen = "conditional" if r["generator"] == "cond" else "unconditional"
        per = " | ".join(f"{r['by_label'][n]:.0%}" for n in labels)
        ratio = f"{r['ppl_ratio']:.2f}" if r.get("ppl_ratio") is not None else "-"
        ppl = f"{r['gen_ppl']:.1f}" if r["gen_ppl"] else "-"
        lines.append(f"| {gen} | {r['kind']} | {r['strength']:g} | **{r['accuracy']:.0%}** | {per} | {ppl} | {ratio} | "
                     f"{r['entropy_ratio']:.2f} | {r['seconds']:.0f} |")
    refs = result["references"]
    lines += ["", "Held-out text of each label (the entropy reference; its perplexity under the same AR model): " +
              "; ".join(f"{n} {refs[n]['word_entropy']:.2f} bits, ppl {refs[n]['gen_ppl']:.1f}" for n in labels) + ".", ""]
    return lines


def render_checks(result: dict) -> list[str]:
    cr, tm = result["criteria"], result["trained_models"]
    verdict = lambda c: "**met**" if c["met"] else "**not met**"  # noqa: E731
    best, bu = cr["best_fluent_guided"]["setting"], cr["classifier_on_unconditional"]["setting"]
    say = lambda s: "none" if s is None else (  # noqa: E731
        f"{'conditional' if s['generator'] == 'cond' else 'unconditional'}, {s['kind']} {s['strength']:g}: accuracy "
        f"{s['accuracy']:.0%}, perplexity {s['ppl_ratio']:.2f}x its unguided model's, word entropy "
        f"{s['entropy_ratio']:.2f}x held-out")
    ld, ev = tm["label_dropout"], tm["exact_vs_taylor"]
    corr = [a["correlation"] for a in ev["by_label"]]
    same = [a["same_best_candidate"] for a in ev["by_label"]]
    lines = ["## Done when", "",
             f"- Best guided setting that stays fluent (perplexity <= 1.5x, word entropy >= 0.85x) at >= 85%: "
             f"{verdict(cr['best_fluent_guided'])}. {say(best)}.",
             f"- The conditional model alone (w = 0) at >= 50%: {verdict(cr['conditional_alone'])} "
             f"({cr['conditional_alone']['accuracy']:.0%}).",
             f"- Classifier guidance on the unconditional generator from chance to >= 70%: "
             f"{verdict(cr['classifier_on_unconditional'])}: unguided {cr['classifier_on_unconditional']['unguided']:.0%}; "
             f"best {say(bu)}.", "",
             "## The rules on the trained models", "",
             f"- Label dropout: configured {ld['configured']:.0%}, measured {ld['measured']:.1%} of {ld['rows']:,} "
             f"training rows drawn by the conditional run's own collator; the label was masked or scored "
             f"{ld['label_masked_or_scored']} times.",
             f"- Exact against first-order scores on {ev['blocks']} held-out blocks masked at 50% "
             f"({ev['masked_positions']} masked positions, the unconditional model's top {ev['k']} candidates each): "
             f"correlation of the candidates' score differences {min(corr):.2f} to {max(corr):.2f} over the labels; "
             f"the same best candidate {min(same):.0%} to {max(same):.0%} of the time.", "",
             "## Samples (the first of each label at the best fluent setting)", ""]
    if best is not None:
        for r in result["rows"]:
            if all(r[k] == best[k] for k in ("generator", "kind", "strength")):
                lines.append(f"- **{r['label']}** (judged {max(r['judged'], key=r['judged'].get)}): "
                             f"`{r['texts'][0][:160].replace(chr(10), ' ').replace('`', chr(39))}`")
    m = result["machine"]
    lines += ["", f"Measured on {m['cpu']} ({m['cpu_count']} cores, load {m['load_average_1min']}) in "
              f"{result['seconds'] / 60:.0f} min for the grid, shared with other jobs."]
    return lines


# ---------------------------------------------------------------------------------------------
# The study
# ---------------------------------------------------------------------------------------------


def load_models(sc: ControlConfig) -> dict:
    """The two generators (model, tokenizer, window), the classifier with its held-out split, and
    the AR scorer, all on the CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data import build_datasets
    from modeling import load_checkpoint, load_classifier

    models = {}
    for name in ("cond", "uncond"):
        model, tok, cfg = load_checkpoint(os.path.join(sc.out_dir, name, "final-model"), device="cpu")
        models[name] = (model, tok, cfg.max_len)
        models[name + "_cfg"] = cfg
    folder = os.path.join(sc.out_dir, "classifier", "final-model")
    models["classifier"] = load_classifier(folder, models["uncond"][1], device="cpu")[0]
    from config import load_train_config

    ccfg = load_train_config(folder)
    models["classifier_val"] = build_datasets(ccfg, models["uncond"][1])[1][:]["input_ids"]
    final = os.path.join(sc.out_dir, "ar", "final-model")
    models["scorer"] = (AutoModelForCausalLM.from_pretrained(final).eval(), AutoTokenizer.from_pretrained(final))
    return models


def study(sc: ControlConfig, command: str) -> dict:
    from data import build_datasets, label_names
    from metrics import machine, versions

    t0 = time.time()
    records = {name: run(name, script, argv) for name, (script, argv) in commands(sc).items()}
    models = load_models(sc)
    cond_tok, cond_cfg = models["cond"][1], models["cond_cfg"]
    train_ds, val_ds = build_datasets(cond_cfg, cond_tok)
    names = label_names(train_ds)
    train, val = split_texts(train_ds, cond_tok), split_texts(val_ds, cond_tok)
    judge, judge_record = fit_judge(train, val, names)
    refs = references(val, names, sc.samples, models["scorer"])
    labels = names if sc.labels == "all" else parse_names(sc.labels, "labels", tuple(names))
    rows = []
    for setting in grid(sc, os.path.join(sc.out_dir, "classifier", "final-model")):
        for label in labels:
            y = names.index(label)
            rows.append(score_setting(setting, label, y, sc.seed + 1000 * y, models, judge, sc))
            r = rows[-1]
            print(f"{r['generator']:<7}{r['kind']:<20}{r['strength']:>4g}  {label:<12} accuracy {r['accuracy']:.0%}  "
                  f"gen ppl {r['gen_ppl'] or float('nan'):.1f}  word entropy {r['word_entropy']:.2f}  ({r['seconds']:.0f}s)",
                  flush=True)
    summary = aggregate(rows, {n: refs[n] for n in labels})
    checks = rules_on_the_trained_models(cond_cfg, cond_tok, train_ds, models["classifier"],
                                         models["uncond"][:2], models["classifier_val"], sc.guide_k)
    return {"command": command, "config": dataclasses.asdict(sc), "runs": records, "labels": names,
            "steered": labels, "decoding": DECODING, "judge": judge_record, "references": refs,
            "rows": rows, "summary": summary, "criteria": criteria(summary), "trained_models": checks,
            "seconds": round(time.time() - t0, 1), "versions": versions(), "machine": machine()}


def main(argv=None) -> int:
    sc, _ = parse(ControlConfig, argv, __doc__)
    path = os.path.join(sc.out_dir, "control_study.json")
    if sc.render_only:
        if not os.path.isfile(path):
            raise UsageError(f"no {path} to render: run the study first")
        with open(path) as f:
            result = json.load(f)
    else:
        command = shlex.join(["python", "experiments/control_study.py"] + (argv if argv is not None else sys.argv[1:]))
        result = study(sc, command)
    write_outputs(result, sc)
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
