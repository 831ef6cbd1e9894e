"""Which training objective gives the lowest held-out bound at equal budget, and does the gap to an
autoregressive model of the same size close as the budget grows?

    python experiments/objective_study.py --docs        # the committed study (hours of CPU; each run's time: its page)
    python experiments/objective_study.py --objectives seed,mdlm --scales 1
    python experiments/objective_study.py --render-only                  # markdown and figure from the JSON

1. Each objective in OBJECTIVES (train.py flags on top of --quick-test: same model, data, steps,
   batch and seed) is trained by `python train.py` into --out-dir/<name>-1x.
2. The AR baseline (`python baseline_ar.py`, GPT-2 of the same size, tokenizer, data and token
   budget, the quick test's learning rate) is trained at every budget into --out-dir/ar-<s>x.
3. Every model is scored as evaluate.py scores it: the held-out ELBO bound with its standard error
   and the AR NLL on the same tokens (metrics.held_out_likelihood, diffusion.elbo_estimate), the
   held-out loss per masking rate (diffusion.level_losses, down to one masked token), and
   --num-samples unprompted samples at generate.py's defaults: unigram entropy and generative
   perplexity under the AR baseline of the same budget. The bound-vs-tokens curves come from each
   run's metrics.jsonl (train.py's evaluations; baseline_ar.py's eval_heldout_nats).
4. The best objective (lowest bound at 1x, or --best) is trained at every --scales multiple of the
   budget, so the ratio of perplexities can be read at 1x, 2x, 4x.

A run whose folder holds a finished model trained by the same command is reused, so rerunning with
one more objective trains only that one. Writes objective_study.json (every setting, command,
wall time and number), objective_study.csv, objective_study.md (rendered from the JSON alone) and
objective_study.png to --out-dir; --docs writes the markdown, JSON and figure to docs/ as well.
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

from cli import UsageError, cli, parse, to_argv
from config import QUICK_TEST, flag, parse_ints, parse_names, Settings
from files import check_outputs, write_atomic, write_csv, write_figure, write_json


MAX_SCALE = 64  # 64 x the quick test's 3000 steps: days on a CPU, the most a study here may ask for


class StudyConfig(Settings):
    objectives: str = flag("all", "comma-separated names from experiments/objective_study.py's OBJECTIVES, or 'all'")
    scales: str = flag("1,2,4", "token budgets, as multiples of the quick test's (steps x batch x window)")
    best: str = flag("", "objective trained at every scale; '' = the one with the lowest bound at 1x")
    elbo_draws: int = flag(8, "Monte Carlo draws of (k, mask) per held-out block for each final bound (as "
                           "evaluate.py)", min=2, max=1024)
    num_samples: int = flag(16, "unprompted samples per model at generate.py's defaults (entropy, generative "
                            "perplexity)", min=1)
    seed: int = flag(0, "masks of the final bounds and every sample (evaluate.py's default)", min=0, max=2**32 - 1)
    train_flags: str = flag("", "extra train.py flags for every run, after --quick-test and the objective's")
    out_dir: str = flag("results/objective_study", "a folder per run; objective_study.json / .csv / .md / .png")
    docs: bool = flag(False, "also write docs/objective_study.md, docs/objective_study.json, "
                      "docs/figures/objective_study.png")
    render_only: bool = flag(False, "redraw the markdown and figure from --out-dir's objective_study.json; "
                             "train nothing")

    def scale_list(self) -> list[int]:
        return parse_ints(self.scales, "scales")

    def check(self) -> None:
        scales = self.scale_list()
        if not scales or min(scales) < 1 or 1 not in scales or max(scales) > MAX_SCALE:
            raise UsageError(f"--scales must be integers from 1 to {MAX_SCALE} including 1 (the budget objectives "
                             f"are compared at), got {self.scales!r}")
        try:
            shlex.split(self.train_flags)
        except ValueError as e:
            raise UsageError(f"--train-flags cannot be split into flags ({e})")

# Training objectives, as train.py flags on top of --quick-test. Every one trains the same model on
# the same data for the same steps with the same seed; only how rates are drawn and weighted differs.
OBJECTIVES = {
    # the seed's: levels 0.1..1.0, one per sequence, plain mean over masked tokens
    "seed": {},
    # the same levels, spread evenly over each batch (MDLM's low-discrepancy draw)
    "seed-antithetic": {"antithetic": True},
    # the same levels, each sequence weighted by 1/t: its mean masked-token loss (the bound's integrand)
    "seed-elbo": {"loss_weighting": "elbo"},
    # MDLM: t ~ U(0.001, 1] (so k = 1 .. n masked tokens), antithetic, 1/t weighting
    "mdlm": {"mask_distribution": "linear", "mask_min": 0.001, "antithetic": True, "loss_weighting": "elbo"},
    # MDLM's rates with the seed's weighting
    "linear-mean": {"mask_distribution": "linear", "mask_min": 0.001, "antithetic": True},
    # MDLM with the 1/t weighting switched on at step 1000, once the model is off the unigram plateau
    "mdlm-late-elbo": {"mask_distribution": "linear", "mask_min": 0.001, "antithetic": True, "loss_weighting": "elbo",
                       "weighting_start": 1000},
}
LEVELS = (0.02, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)  # held-out loss per masking rate (2% of 62 = 1 token)
TABLE_LEVELS = (0.02, 0.1, 0.25, 0.5, 0.75, 1.0)  # the ones the table shows
STUDY_FILE = "objective_study"
def train_flags(over: dict) -> list[str]:
    """{"mask_min": 0.001, "antithetic": True} -> ["--mask-min", "0.001", "--antithetic"]."""
    return to_argv(over)


def train_argv(name: str, scale: int, sc: StudyConfig) -> list[str]:
    """train.py's arguments for one objective at one budget: --quick-test, the objective, the
    extra flags, then steps (and evaluation / checkpoint intervals) times the scale."""
    from config import TrainConfig, train_presets

    base = ["--quick-test"] + train_flags(OBJECTIVES[name]) + shlex.split(sc.train_flags)
    cfg, _ = parse(TrainConfig, base, presets=train_presets)
    if scale > 1:
        base += ["--max-steps", str(cfg.max_steps * scale), "--eval-steps", str(cfg.eval_steps * scale),
                 "--save-steps", str(cfg.save_steps * scale), "--logging-steps", str(cfg.logging_steps * scale)]
    return base + ["--output-dir", os.path.join(sc.out_dir, f"{name}-{scale}x")]


def run(script: str, argv: list[str], folder: str, done: str) -> dict:
    """`python script argv`, logged to folder/run.log, unless folder/study_command.txt shows this
    exact command finished there before (and `done` exists). Returns {command, seconds, reused}."""
    command = shlex.join(["python", script] + argv)
    stamp = os.path.join(folder, "study_command.txt")
    if os.path.isfile(stamp) and os.path.exists(done):
        with open(stamp) as f:
            previous = json.load(f)
        if previous["command"] == command:
            return {**previous, "reused": True}
    os.makedirs(folder, exist_ok=True)
    print(f"running: {command}  (log: {os.path.join(folder, 'run.log')})", flush=True)
    t0 = time.time()
    with open(os.path.join(folder, "run.log"), "w") as log:
        proc = subprocess.run([sys.executable, os.path.join(ROOT, script)] + argv, cwd=ROOT, stdout=log,
                              stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise UsageError(f"{command} failed with exit code {proc.returncode}; see {os.path.join(folder, 'run.log')}")
    record = {"command": command, "seconds": round(time.time() - t0, 1),
              "load_average_1min": round(os.getloadavg()[0], 2)}
    write_json(stamp, record)
    return {**record, "reused": False}


def train_objective(name: str, scale: int, sc: StudyConfig) -> tuple[str, dict]:
    argv = train_argv(name, scale, sc)
    folder = argv[-1]
    return folder, run("train.py", argv, folder, os.path.join(folder, "final-model"))


def train_ar(scale: int, checkpoint: str, sc: StudyConfig) -> tuple[str, dict]:
    """The AR baseline at one budget: the budget (steps, batch, window, warm-up, seed) copied from
    `checkpoint`, the learning rate fixed to the quick test's, so every budget's AR is one recipe."""
    folder = os.path.join(sc.out_dir, f"ar-{scale}x")
    argv = ["--checkpoint", checkpoint, "--output-dir", folder, "--learning-rate", str(QUICK_TEST["learning_rate"])]
    return folder, run("baseline_ar.py", argv, folder, os.path.join(folder, "final-model"))


# ---------------------------------------------------------------------------------------------
# Scoring one trained model
# ---------------------------------------------------------------------------------------------


def curve(rows: list[dict], key: str, stderr: str | None, tokens_per_step: int) -> list[dict]:
    """[{step, tokens, nats, stderr}] from a run's metrics.jsonl evaluation rows."""
    return [{"step": r["step"], "tokens": r["step"] * tokens_per_step, "nats": r[key],
             "stderr": r.get(stderr) if stderr else None} for r in rows if key in r]


def score(run_dir: str, ar, ar_tok, sc: StudyConfig) -> dict:
    """Every number of one diffusion run (see the module docstring, step 3)."""
    import torch

    from config import GenConfig
    from data import build_datasets
    from diffusion import bound_prefix, eval_batches, level_losses
    from metrics import diffusion_row, held_out_likelihood
    from modeling import load_checkpoint
    from runs import read_metrics

    model, tok, cfg = load_checkpoint(os.path.join(run_dir, "final-model"), device="cpu")
    if ar_tok.get_vocab() != tok.get_vocab():
        raise UsageError(f"{run_dir} and its AR baseline use different tokenizers")
    train_ds, val_ds = build_datasets(cfg, tok)
    blocks = val_ds[:]["input_ids"]  # [M, L]
    held = held_out_likelihood(model, ar, blocks, tok, bound_prefix(cfg), sc.elbo_draws, 64,
                               torch.Generator().manual_seed(sc.seed))
    levels = level_losses(model, eval_batches(val_ds, cfg.batch_size, cfg.eval_batches), tok, cfg, list(LEVELS),
                          seed=cfg.seed)
    quality = diffusion_row(model, tok, GenConfig(num_samples=sc.num_samples, seed=sc.seed, out=""), cfg.max_len,
                            (ar, ar_tok))
    tokens_per_step = cfg.tokens_per_step()
    return {"train_config": dataclasses.asdict(cfg), "tokens": cfg.max_steps * tokens_per_step,
            "bound": held["diffusion"], "ar": held["ar"], "scored_tokens": held["scored_tokens"],
            "ratio": math.exp(held["diffusion"]["nats_per_token"] - held["ar"]["nats_per_token"]),
            "level_losses": {str(k): v for k, v in levels.items()},
            "train_tokens": len(train_ds) * cfg.max_len,
            "samples": {"settings": quality["settings"], "unigram_entropy": quality["unigram_entropy"],
                        "gen_ppl": quality["gen_ppl"], "distinct_2": quality["distinct_2"], "text": quality["texts"][0]},
            "curve": curve(read_metrics(run_dir), "eval_elbo_nats", "eval_elbo_stderr", tokens_per_step)}


def reference_row(checkpoint: str, ar, ar_tok, sc: StudyConfig) -> dict:
    """Unigram entropy and perplexity under the 1x AR of held-out text of the samples' length."""
    from data import build_datasets
    from metrics import reference_row as held_out_row
    from modeling import load_checkpoint

    _, tok, cfg = load_checkpoint(checkpoint, device="cpu")
    _, val_ds = build_datasets(cfg, tok)
    q = held_out_row(val_ds[:]["input_ids"], tok, sc.num_samples, (ar, ar_tok))
    return {"unigram_entropy": q["unigram_entropy"], "gen_ppl": q["gen_ppl"], "distinct_2": q["distinct_2"]}


def ar_curve(folder: str) -> list[dict]:
    """The AR baseline's held-out NLL on the bound's tokens at each evaluation (baseline_ar.py)."""
    from runs import read_metrics

    with open(os.path.join(folder, "final-model", "source_train_config.json")) as f:
        budget = json.load(f)  # the diffusion run it copied its budget from
    per_step = budget["batch_size"] * budget["grad_accum"] * budget["max_len"]
    return curve(read_metrics(folder), "eval_heldout_nats", None, per_step)


# ---------------------------------------------------------------------------------------------
# The study
# ---------------------------------------------------------------------------------------------


def load_ar(folder: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = os.path.join(folder, "final-model")
    return AutoModelForCausalLM.from_pretrained(final).eval(), AutoTokenizer.from_pretrained(final)


def study(sc: StudyConfig, names: list[str], command: str) -> dict:
    from metrics import machine, versions

    t_start = time.time()
    result = {"command": command, "config": dataclasses.asdict(sc), "objective_flags": {n: OBJECTIVES[n] for n in names},
              "quick_test": QUICK_TEST, "levels": list(LEVELS), "objectives": {}, "scales": [],
              "versions": versions(), "machine": machine()}

    # 1-2. every objective at 1x, and the AR baseline of that budget
    runs = {name: train_objective(name, 1, sc) for name in names}
    ar_dirs = {1: train_ar(1, os.path.join(runs[names[0]][0], "final-model"), sc)}
    ar, ar_tok = load_ar(ar_dirs[1][0])

    # 3. score every objective against it
    for name in names:
        folder, record = runs[name]
        print(f"scoring {name} ...", flush=True)
        result["objectives"][name] = {"flags": OBJECTIVES[name], "run": record, **score(folder, ar, ar_tok, sc)}
    result["reference"] = reference_row(os.path.join(runs[names[0]][0], "final-model"), ar, ar_tok, sc)
    result["ar_runs"] = {"1": {"run": ar_dirs[1][1], "curve": ar_curve(ar_dirs[1][0])}}

    # 4. the best objective at every budget
    best = sc.best or min(names, key=lambda n: result["objectives"][n]["bound"]["nats_per_token"])
    if best not in names:
        raise UsageError(f"--best {best} is not among --objectives {','.join(names)}")
    result["best"] = best
    for scale in sc.scale_list():
        if scale == 1:
            row, record, ar_record, curve_ar = result["objectives"][best], runs[best][1], ar_dirs[1][1], \
                result["ar_runs"]["1"]["curve"]
        else:
            folder, record = train_objective(best, scale, sc)
            ar_folder, ar_record = train_ar(scale, os.path.join(folder, "final-model"), sc)
            ar_s, ar_tok_s = load_ar(ar_folder)
            print(f"scoring {best} at {scale}x ...", flush=True)
            row = score(folder, ar_s, ar_tok_s, sc)
            curve_ar = ar_curve(ar_folder)
        result["scales"].append({"scale": scale, "objective": best, "tokens": row["tokens"], "bound": row["bound"],
                                 "ar": row["ar"], "ratio": row["ratio"], "samples": row["samples"],
                                 "train_tokens": row["train_tokens"],
                                 "level_losses": row["level_losses"], "run": record, "ar_run": ar_record,
                                 "curve": row["curve"], "ar_curve": curve_ar})
    result["seconds"] = round(time.time() - t_start, 1)
    return result


# ---------------------------------------------------------------------------------------------
# Outputs: markdown and CSV from the JSON alone, and the figure
# ---------------------------------------------------------------------------------------------

TARGET_RATIO = 2.0  # issue 14: the best objective's bound within 2x the AR perplexity at the quick-test budget


def fmt_flags(flags: dict) -> str:
    return " ".join(train_flags(flags)) or "(the quick-test preset)"


def bound_cells(o: dict) -> str:
    b = o["bound"]
    return f"{b['nats_per_token']:.3f} ± {b['nats_stderr']:.3f} | {b['perplexity']:.1f} | {o['ratio']:.2f}x"


def sample_cells(o: dict) -> str:
    return f"{o['samples']['unigram_entropy']:.2f} | {o['samples']['gen_ppl']:.1f}"


def objective_table(result: dict) -> list[str]:
    blank = " | ".join("" for _ in TABLE_LEVELS)
    lines = ["| objective | train.py flags on top of --quick-test | bound, nats/token | perplexity <= | ratio to AR | "
             + " | ".join(f"loss at {lv:.0%} masked" for lv in TABLE_LEVELS)
             + " | sample entropy, bits | gen ppl | train s |",
             "|---|---|---|---|---|" + "---|" * len(TABLE_LEVELS) + "---|---|---|"]
    for name, o in result["objectives"].items():
        levels = " | ".join(f"{o['level_losses'][str(lv)]:.3f}" for lv in TABLE_LEVELS)
        lines.append(f"| {name} | `{fmt_flags(o['flags'])}` | {bound_cells(o)} | {levels} | {sample_cells(o)} | "
                     f"{o['run']['seconds']:.0f} |")
    ar, ref = first_row(result)["ar"], result["reference"]
    lines += [f"| AR baseline | `python baseline_ar.py` | {ar['nats_per_token']:.3f} (exact NLL) | "
              f"{ar['perplexity']:.1f} | 1.00x | {blank} | | | {result['ar_runs']['1']['run']['seconds']:.0f} |",
              f"| held-out text | | | | | {blank} | {ref['unigram_entropy']:.2f} | {ref['gen_ppl']:.1f} | |"]
    return lines


def scale_table(result: dict) -> list[str]:
    lines = ["| budget | tokens | bound, nats/token | perplexity <= | ratio to AR | AR nats/token | AR perplexity | "
             "sample entropy, bits | gen ppl | train s (diffusion / AR) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["scales"]:
        lines.append(f"| {r['scale']}x | {r['tokens']:,} | {bound_cells(r)} | {r['ar']['nats_per_token']:.3f} | "
                     f"{r['ar']['perplexity']:.1f} | {sample_cells(r)} | {r['run']['seconds']:.0f} / "
                     f"{r['ar_run']['seconds']:.0f} |")
    return lines


def scale_summary(result: dict) -> list[str]:
    """Sentences on the budgets from recorded numbers: how the ratio moved, and whether the AR
    baseline stopped improving (it sees its small training set many times at the larger budgets)."""
    rows = result["scales"]
    if len(rows) < 2:
        return []
    first, last = rows[0], rows[-1]
    lines = [f"From {first['scale']}x to {last['scale']}x the ratio went from {first['ratio']:.2f}x to "
             f"{last['ratio']:.2f}x; the bound fell by {first['bound']['nats_per_token'] - last['bound']['nats_per_token']:.3f} "
             f"nats/token, the AR's NLL by {first['ar']['nats_per_token'] - last['ar']['nats_per_token']:.3f}."]
    best_ar = min(rows, key=lambda r: r["ar"]["nats_per_token"])
    if best_ar is not last:
        epochs = last["tokens"] / last["train_tokens"]
        vs_best = math.exp(last["bound"]["nats_per_token"] - best_ar["ar"]["nats_per_token"])
        lines.append(f"The AR baseline is best at {best_ar['scale']}x ({best_ar['ar']['nats_per_token']:.3f} nats/token) "
                     f"and worse after it: at {last['scale']}x it sees its {last['train_tokens']:,}-token training set "
                     f"{epochs:.0f} times and overfits, so part of the last ratio's fall is the AR getting worse. Against "
                     f"the AR's best at any budget, the {last['scale']}x bound is {vs_best:.2f}x.")
    return lines


def decoding_flags(settings: dict) -> str:
    """The samples' decoding settings as generate.py flags."""
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items())


def first_row(result: dict) -> dict:
    return next(iter(result["objectives"].values()))


def summary(result: dict) -> list[str]:
    """Sentences from recorded numbers: the best objective, the target, the seed beside it."""
    objs, best_name = result["objectives"], result["best"]
    best, seed = objs[best_name], objs.get("seed")
    verdict = "met" if best["ratio"] <= TARGET_RATIO else "not met"
    lines = [f"Lowest bound at this budget: **{best_name}**, {best['bound']['nats_per_token']:.3f} ± "
             f"{best['bound']['nats_stderr']:.3f} nats/token (perplexity <= {best['bound']['perplexity']:.1f}), "
             f"{best['ratio']:.2f}x the AR baseline's perplexity {best['ar']['perplexity']:.1f}: the issue's target of "
             f"<= {TARGET_RATIO:.1f}x is {verdict}."]
    if seed is not None and best_name != "seed":
        diff = seed["bound"]["nats_per_token"] - best["bound"]["nats_per_token"]
        se = math.hypot(seed["bound"]["nats_stderr"], best["bound"]["nats_stderr"])
        lines.append(f"Against the seed's objective: a bound {diff:.3f} ± {se:.3f} nats/token lower; samples at "
                     f"{best['samples']['unigram_entropy']:.2f} vs {seed['samples']['unigram_entropy']:.2f} bits of "
                     f"unigram entropy, generative perplexity {best['samples']['gen_ppl']:.1f} vs "
                     f"{seed['samples']['gen_ppl']:.1f}.")
    return lines


def command_lines(result: dict) -> list[str]:
    """Every run the study used, once, with the wall seconds it took when it ran."""
    runs = [o["run"] for o in result["objectives"].values()] + [result["ar_runs"]["1"]["run"]]
    runs += [x for r in result["scales"] for x in (r["run"], r["ar_run"])]
    unique = {r["command"]: r for r in runs}
    total = sum(r["seconds"] for r in unique.values())
    return ["```bash"] + [f"{cmd}  # {r['seconds']:.0f} s" for cmd, r in unique.items()] + [
        "```", "", f"{len(unique)} runs, {total:.0f} s ({total / 60:.0f} min) of training wall time in all, on "
        f"{result['machine']['cpu_count']} CPU cores ({result['machine']['device']}) shared with other work; torch "
        f"{result['versions']['torch']}, transformers {result['versions']['transformers']}."]


def render(result: dict, figure: str) -> str:
    """The study as markdown, from its JSON alone (figure: the PNG's path relative to the page)."""
    cfg, first = result["config"], first_row(result)
    tc = first["train_config"]
    lines = [
        "# Training objectives at equal budget, and the gap to an AR model as the budget grows", "",
        f"Rendered by `experiments/objective_study.py` from its JSON; reproduce with `{result['command']}`.", "",
        f"Every objective trains the quick-test model (`python train.py --quick-test`: {tc['max_steps']} steps x "
        f"{tc['batch_size']} x {tc['max_len']} = {first['tokens']:,} tokens, seed {tc['seed']}) with the flags shown; "
        f"the AR baseline is a GPT-2 of the same size, tokenizer, data and budget (`baseline_ar.py`, learning rate "
        f"{result['quick_test']['learning_rate']:g}). Bounds and the AR's exact NLL are on the same "
        f"{first['scored_tokens']:,} held-out tokens ({cfg['elbo_draws']} Monte Carlo draws per block, seed "
        f"{cfg['seed']}, as `evaluate.py`). Held-out loss per masking rate: mean CE over masked tokens (2% of a "
        f"block = 1 token). Samples: {cfg['num_samples']} unprompted, seed {cfg['seed']}, at generate.py's defaults when "
        f"the study ran (`{decoding_flags(first['samples']['settings'])}`), generative perplexity under the AR "
        f"baseline of the same budget.", "",
        f"![bound vs training tokens]({figure})", "",
        "## Objectives at the quick-test budget", "",
        *objective_table(result), "",
        *summary(result), "",
        "## The gap as the budget grows", "",
        f"The best objective at 1x ({result['best']}) and the AR baseline, each trained from scratch at every budget "
        f"(same batch, more steps, learning-rate schedule stretched to the new length).", "",
        *scale_table(result), "",
        *scale_summary(result), "",
        "## Commands", "",
        "Each run, as the study ran it (wall seconds when it ran; a finished run is reused on a rerun).", "",
        *command_lines(result), "",
    ]
    return "\n".join(lines)


CSV_COLUMNS = ["objective", "scale", "tokens", "bound_nats", "bound_stderr", "bound_ppl", "ar_nats", "ar_ppl", "ratio"] \
    + [f"loss_{lv}" for lv in LEVELS] + ["sample_entropy", "gen_ppl", "train_seconds"]


def csv_rows(result: dict) -> list[list]:
    rows = [(name, 1, o) for name, o in result["objectives"].items()]
    rows += [(r["objective"], r["scale"], r) for r in result["scales"] if r["scale"] != 1]
    return [[name, scale, o["tokens"], o["bound"]["nats_per_token"], o["bound"]["nats_stderr"], o["bound"]["perplexity"],
             o["ar"]["nats_per_token"], o["ar"]["perplexity"], o["ratio"]]
            + [o["level_losses"][str(lv)] for lv in LEVELS]
            + [o["samples"]["unigram_entropy"], o["samples"]["gen_ppl"], o["run"]["seconds"]] for name, scale, o in rows]


def plain_log(ax, which: str, ticks) -> None:
    """A log axis labelled with plain numbers at `ticks` (no 10^x, no minor labels)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_locator(NullLocator())


PPL_TICKS = [50, 100, 150, 200, 300, 500, 1000, 2000, 4000]


def plot(result: dict, path: str) -> None:
    """Left: held-out bound vs training tokens per objective at 1x, the AR curve beside it.
    Middle: the final held-out loss per masking rate. Right: the best objective and the AR at every
    budget, bound and NLL vs training tokens, with the ratio of perplexities at the end of each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, mid, right) = plt.subplots(1, 3, figsize=(20, 6.2))
    colors = dict(zip(result["objectives"], plt.get_cmap("tab10").colors))
    ppl = lambda curve: [(p["tokens"] / 1e6, math.exp(p["nats"])) for p in curve if p["step"] > 0]  # noqa: E731
    for name, o in result["objectives"].items():
        left.plot(*zip(*ppl(o["curve"])), marker="o", ms=4, color=colors[name], label=f"{name} (bound)")
        mid.plot([100 * lv for lv in result["levels"]], [o["level_losses"][str(lv)] for lv in result["levels"]],
                 marker="o", ms=4, color=colors[name], label=name)
    ar = ppl(result["ar_runs"]["1"]["curve"])
    if ar:
        left.plot(*zip(*ar), marker="s", ms=4, color="black", ls="--", label="AR baseline (exact NLL)")
    plain_log(left, "y", PPL_TICKS)
    left.set_ylim(80, None)
    draws = first_row(result)["train_config"]["elbo_draws"]
    left.set(title=f"Held-out perplexity during training ({first_row(result)['tokens'] / 1e6:.1f}M-token budget)\n"
                   f"bound: train.py's evaluations, {draws} draws/block; AR: exact NLL, same tokens",
             xlabel="training tokens (millions)", ylabel="perplexity (diffusion: upper bound)")
    left.grid(alpha=0.3)
    left.legend(fontsize=8, loc="lower left", ncol=2)

    mid.axhline(first_row(result)["ar"]["nats_per_token"], color="black", ls="--", lw=1,
                label="AR NLL per token (for scale)")
    mid.set(title="Held-out loss per masking rate, end of training\n"
                  "mean CE over masked tokens (the bound averages it over 1..n masked)", xlabel="tokens masked (%)",
            ylabel="cross-entropy (nats/token)")
    mid.grid(alpha=0.3)
    mid.legend(fontsize=8, loc="lower right")

    scale_colors = plt.get_cmap("viridis")
    for i, r in enumerate(result["scales"]):
        c = scale_colors(i / max(len(result["scales"]) - 1, 1) * 0.85)
        bound, ar = ppl(r["curve"]), ppl(r["ar_curve"])
        right.plot(*zip(*bound), marker="o", ms=3, color=c, label=f"{r['scale']}x {r['objective']} (bound)")
        if ar:
            right.plot(*zip(*ar), marker="s", ms=3, color=c, ls="--", label=f"{r['scale']}x AR")
        right.annotate(f"{r['scale']}x: ratio {r['ratio']:.2f}", (r["tokens"] / 1e6, r["bound"]["perplexity"]),
                       textcoords="offset points", xytext=(-4, 10), ha="right", fontsize=9, color=c)
    plain_log(right, "y", PPL_TICKS)
    plain_log(right, "x", [0.5, 1, 2, 3, 6, 12, 24, 48])
    right.set_ylim(80, None)
    right.set(title="The gap as the budget grows (each budget trained from scratch)\n"
                    f"ratio of perplexities at the end, {result['config']['elbo_draws']} draws/block",
              xlabel="training tokens (millions)", ylabel="perplexity (diffusion: upper bound)")
    right.grid(alpha=0.3)
    right.legend(fontsize=8, loc="lower left", ncol=2)
    for ax in (left, mid, right):
        ax.title.set_fontsize(10.5)
    fig.tight_layout()
    write_figure(fig, path, dpi=110)
    plt.close(fig)


def write_outputs(result: dict, out_dir: str, docs: bool) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    targets = [(out_dir, out_dir, f"{STUDY_FILE}.png")]
    if docs:
        targets.append((os.path.join(ROOT, "docs"), os.path.join(ROOT, "docs", "figures"), f"figures/{STUDY_FILE}.png"))
    for folder, fig_dir, fig_rel in targets:
        os.makedirs(fig_dir, exist_ok=True)
        write_json(os.path.join(folder, f"{STUDY_FILE}.json"), result)
        plot(result, os.path.join(fig_dir, f"{STUDY_FILE}.png"))
        write_atomic(os.path.join(folder, f"{STUDY_FILE}.md"), render(result, fig_rel))
        paths += [os.path.join(folder, f"{STUDY_FILE}.{ext}") for ext in ("json", "md")]
        paths.append(os.path.join(fig_dir, f"{STUDY_FILE}.png"))
    write_csv(os.path.join(out_dir, f"{STUDY_FILE}.csv"), [CSV_COLUMNS] + csv_rows(result))
    return paths + [os.path.join(out_dir, f"{STUDY_FILE}.csv")]


def check_sizes(sc: StudyConfig, names: list[str]) -> None:
    """Before hours of training: the samples and the final bounds of every run fit this machine
    (their window and vocabulary from the runs' train.py flags)."""
    from config import GenConfig, TrainConfig, train_presets
    from limits import check_fits, check_generation

    for name in names:
        cfg, _ = parse(TrainConfig, train_argv(name, 1, sc)[:-2], presets=train_presets)
        vocab, n = cfg.tokenizer_vocab_size, cfg.max_len - 2
        check_generation(GenConfig(num_samples=sc.num_samples, out=""), cfg.max_len, vocab, n, n)
        check_fits(f"--elbo-draws {sc.elbo_draws}", sc.elbo_draws * n / 2 * vocab * 4)


def read_study(path: str) -> dict:
    """A study's JSON, checked by rendering it, or one line saying it is not one."""
    try:
        with open(path) as f:
            result = json.load(f)
        render(result, f"{STUDY_FILE}.png")
        return result
    except (ValueError, UnicodeDecodeError, RecursionError, KeyError, TypeError, IndexError, AttributeError,
            ZeroDivisionError) as e:
        raise UsageError(f"--render-only: {path} is not a study this script wrote ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:100] if str(e) else ''}); run the study again")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    sc, _ = parse(StudyConfig, argv, __doc__)
    check_outputs(sc.out_dir, [f"{STUDY_FILE}.{ext}" for ext in ("json", "md", "png", "csv")], "--out-dir")
    if sc.render_only:
        path = os.path.join(sc.out_dir, f"{STUDY_FILE}.json")
        if not os.path.isfile(path):
            raise UsageError(f"--render-only: no {path}; run the study first")
        result = read_study(path)
    else:
        names = list(OBJECTIVES) if sc.objectives == "all" else parse_names(sc.objectives, "objectives",
                                                                            tuple(OBJECTIVES))
        if sc.best and sc.best not in names:
            raise UsageError(f"--best {sc.best} is not among the objectives ({', '.join(names)})")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        check_sizes(sc, names)
        result = study(sc, names, shlex.join(["python", "experiments/objective_study.py", *argv]))
    for path in write_outputs(result, sc.out_dir, sc.docs):
        print(f"wrote {path}")
    print(render(result, f"{STUDY_FILE}.png"))
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
