"""How good is the generator? Likelihood against an autoregressive baseline, and sample quality.

    python baseline_ar.py --checkpoint results/final-model   # once: the AR baseline
    python evaluate.py                                        # results/final-model vs results/ar-baseline
    python report.py                                          # results/eval/GENERATION_VALIDATION.md from its JSON
    python evaluate.py --scorer gpt2-large                    # online: a hub model judges the samples

1. Held-out likelihood, on the same tokens for both models: the diffusion model's ELBO bound
   (diffusion.elbo_estimate, the estimator train.py's evaluation reports too) and the AR model's
   exact NLL (metrics.held_out_likelihood), in nats/token, perplexity and bits per byte.
2. Sample quality for several generation settings (SETTINGS) and the AR model's own samples:
   generative perplexity under a scorer (the AR baseline, or --scorer), unigram entropy,
   distinct-1/2, repeated 4-gram rate (metrics.py), seconds per sample; held-out text of the same
   length is the reference row.
3. Samples for the report: prompted, unprompted and infill (REPORT_SAMPLES).

Prints a table and writes --out-dir/evaluation.json: every number and sample, the resolved
settings of every row, the commands that reproduce the run, versions and machine. report.py turns
that JSON alone into GENERATION_VALIDATION.md.
"""

import dataclasses
import os
import shlex
import sys
import time

from cli import UsageError, cli, parse, to_argv  # noqa: E402
from config import GenConfig, TrainConfig, flag, parse_names, save_config, Settings, train_presets  # noqa: E402


class EvalConfig(Settings):
    checkpoint: str = flag("results/final-model", "the diffusion model (train.py final-model)")
    baseline: str = flag("results/ar-baseline", "baseline_ar.py --output-dir; 'none' = no AR baseline")
    scorer: str = flag("", "causal LM for generative perplexity (hub id or folder); '' = the AR baseline")
    prefix: int = flag(-1, "content tokens conditioned on, not scored; -1 = 0, or prefix_len if trained with a "
                       "fixed prefix", min=-1)
    elbo_blocks: int = flag(0, "held-out blocks scored; 0 = all", min=0)
    elbo_draws: int = flag(8, "Monte Carlo draws of (k, mask) per block (at least 2, for the error bar)", min=2,
                         max=1024)
    settings: str = flag("all", "comma-separated names from evaluate.SETTINGS, or 'all'")
    num_samples: int = flag(16, "samples per generation setting (and held-out blocks in the reference row)", min=1)
    batch_size: int = flag(64, "rows per forward pass", min=1)
    seed: int = flag(0, "masks of the bound and every sample (each setting restarts from this seed)", min=0, max=2**32 - 1)
    out_dir: str = flag("results/eval", "gets evaluation.json and eval_config.json")


# Every named setting states each field its rules read (decoding.explicit refuses one that leaves a
# field to GenConfig's default), so a name never hides a default: "greedy" runs without order noise
# because it says so. DEFAULTS are generate.py's defaults written out; a test keeps them equal to
# GenConfig's, so a setting named "defaults..." is what generate.py runs.
DEFAULTS = dict(sampling="nucleus", p=0.95, temperature=0.85, decode="schedule", schedule="linear", steps=12,
                order="random", remdm="conf")
PREVIOUS = dict(sampling="nucleus", p=0.95, temperature=0.9, decode="schedule", schedule="linear", steps=10,
                order="low-confidence", order_noise=8.0, remdm="none")  # the defaults before the speed frontier
SEEDS_RULE = dict(sampling="nucleus", p=0.95, temperature=0.8, decode="schedule", schedule="linear", steps=10,
                  order="random", remdm="none")  # random order, 10 steps, at its own best temperature
GREEDY = dict(sampling="greedy", decode="schedule", schedule="linear", steps=10, order="low-confidence",
              order_noise=0.0, remdm="none")  # argmax, most confident first: no randomness at all
THRESHOLD = dict(sampling="nucleus", p=0.95, temperature=0.9, decode="threshold", threshold=0.9)

# Diffusion generation settings. Every setting fills the whole window, unprompted (the usual setup
# for generative perplexity) unless it names a prompt.
SETTINGS = {
    "defaults": DEFAULTS,
    "defaults-prompted": dict(DEFAULTS, prompt="The history of the"),  # scored on the continuation only
    "defaults-32-steps": dict(DEFAULTS, steps=32),
    "defaults-cosine": dict(DEFAULTS, schedule="cosine"),
    "seeds-rule": SEEDS_RULE,
    "remdm-conf": dict(SEEDS_RULE, remdm="conf"),
    "previous-defaults": PREVIOUS,
    "no-order-noise": dict(PREVIOUS, order_noise=0.0),
    "greedy": GREEDY,
    "threshold-0.9": THRESHOLD,
}
# The AR baseline's own samples: the same samplers (decoding.SAMPLERS), left to right.
AR_SETTINGS = {
    "ar-same-sampler": dict(sampling="nucleus", p=0.95, temperature=0.85),  # DEFAULTS' sampler (a test checks)
    "ar-sample": dict(sampling="topk", temperature=1.0, k=10**9),  # plain ancestral sampling
}

REPORT_PROMPT = "The history of the"
REPORT_TEMPLATE = "Aristotle was a Greek [MASK:4] and [MASK:6] in the [MASK:3] century."
# (section, caption, the setting and its task); two samples each. The report prints each caption
# beside the setting in words (decoding.describe), so a caption names only what the setting states.
REPORT_SAMPLES = [
    ("Unprompted", "generate.py defaults", DEFAULTS),
    ("Unprompted", "defaults with the cosine schedule, 32 steps", dict(DEFAULTS, schedule="cosine", steps=32)),
    ("Unprompted", "defaults with 32 steps", dict(DEFAULTS, steps=32)),
    ("Unprompted", "greedy", GREEDY),
    ("Unprompted", "threshold decoding: commit every prediction with confidence >= 0.9", THRESHOLD),
    ("Unprompted", "the seed's rule: random order", SEEDS_RULE),
    ("Prompted", "generate.py defaults", dict(DEFAULTS, prompt=REPORT_PROMPT)),
    ("Prompted", "defaults with the cosine schedule, 32 steps",
     dict(DEFAULTS, schedule="cosine", steps=32, prompt=REPORT_PROMPT)),
    ("Infill", "generate.py defaults", dict(DEFAULTS, template=REPORT_TEMPLATE)),
    ("Infill", "greedy", dict(GREEDY, template=REPORT_TEMPLATE)),
]


def resolve_prefix(ec: EvalConfig, tcfg) -> int:
    from diffusion import bound_prefix

    prefix = ec.prefix if ec.prefix >= 0 else bound_prefix(tcfg)
    if prefix > tcfg.max_len - 3:
        raise UsageError(f"--prefix must be at most max_len - 3 = {tcfg.max_len - 3}, got {prefix}")
    return prefix


# ---------------------------------------------------------------------------------------------
# Commands that reproduce the run (recorded in the JSON, shown by the report)
# ---------------------------------------------------------------------------------------------


def train_command(tcfg: TrainConfig) -> str:
    """The train.py command that reproduces a run: its preset plus every field that differs."""
    preset = {"quick_test": True} if tcfg.quick_test else {"model": tcfg.model}
    base = TrainConfig(**{**train_presets(preset), **preset})
    changed = {f.name: getattr(tcfg, f.name) for f in dataclasses.fields(TrainConfig)
               if f.name not in ("quick_test", "resume", "model", "log_format")
               and getattr(tcfg, f.name) != getattr(base, f.name)}
    start = ["--quick-test"] if tcfg.quick_test else ["--model", tcfg.model]
    return shlex.join(["python", "train.py"] + start + to_argv(changed))


def baseline_command(ar_cfg: dict) -> str:
    """baseline_ar.py with its resolved flags (auto shape written out), which reproduces the run."""
    return shlex.join(["python", "baseline_ar.py"] + to_argv({k: v for k, v in ar_cfg.items()
                                                              if k not in ("resume", "log_format")}))


# ---------------------------------------------------------------------------------------------
# Samples
# ---------------------------------------------------------------------------------------------


def mark_filled(ids: list[int], fixed: list[bool], tokenizer) -> str:
    """Infill output with each filled span in ⟦ ⟧, the template text as written."""
    from tokens import decode_text

    out, i = [], 0
    while i < len(ids):
        j = i
        while j < len(ids) and fixed[j] == fixed[i]:
            j += 1
        text = decode_text(tokenizer, ids[i:j])
        out.append(text if fixed[i] else text[:len(text) - len(text.lstrip())] + "⟦" + text.lstrip() + "⟧")
        i = j
    return "".join(out)


def report_samples(model, tokenizer, tcfg, ar, seed: int) -> list[dict]:
    """[{section, caption, settings, label, texts}] for the report, from decoding.generate and ar_generate."""
    import torch

    from decoding import SAMPLERS, ar_generate, describe, explicit, generate, parse_template, sampler_setting, setting_of
    from tokens import banned_ids, decode_text

    out = []
    for section, caption, rule in REPORT_SAMPLES:
        gc = explicit({**rule, "num_samples": 2, "seed": seed, "out": ""})
        ids, _, _ = generate(model, tokenizer, gc, tcfg.max_len, torch.Generator().manual_seed(seed))
        if gc.template:
            fixed = parse_template(gc.template, tokenizer)[1]
            texts = [mark_filled(row, fixed, tokenizer) for row in ids.tolist()]
        else:
            texts = [decode_text(tokenizer, row) for row in ids.tolist()]
        out.append({"section": section, "caption": caption, "settings": setting_of(gc), "label": describe(gc),
                    "prompt": gc.prompt, "template": gc.template, "texts": texts})
    if ar is not None:
        prompt = tokenizer(REPORT_PROMPT, add_special_tokens=False)["input_ids"]
        for caption, start, text in (("unprompted", [], ""), ("prompted", prompt, REPORT_PROMPT)):
            gc = explicit(AR_SETTINGS["ar-same-sampler"], left_to_right=True)
            first = torch.tensor([[tokenizer.bos_token_id] + start] * 2)  # [2, T0]
            ids = ar_generate(ar, first, tcfg.max_len - 2 - len(start), gc, banned_ids(tokenizer),
                              torch.Generator().manual_seed(seed))
            out.append({"section": "AR baseline", "caption": f"{caption}, left to right",
                        "settings": sampler_setting(gc), "label": SAMPLERS[gc.sampling].text(gc),
                        "prompt": text, "template": "", "texts": [decode_text(tokenizer, start + row) for row in ids.tolist()]})
    return out


# ---------------------------------------------------------------------------------------------
# The evaluation
# ---------------------------------------------------------------------------------------------


def load_models(ec: EvalConfig):
    """(diffusion model, tokenizer, its TrainConfig, the prefix, AR baseline or None, its config, scorer
    or None); a bad --prefix is refused before the baseline loads."""
    from modeling import load_baseline, load_checkpoint, load_scorer

    model, tokenizer, tcfg = load_checkpoint(ec.checkpoint)
    prefix = resolve_prefix(ec, tcfg)
    ar, ar_cfg = (None, None) if ec.baseline == "none" else load_baseline(ec.baseline, tokenizer, ec.checkpoint,
                                                                           tcfg.max_len)
    device = next(model.parameters()).device
    if ar is not None:
        ar.to(device)
    scorer = load_scorer(ec.scorer) if ec.scorer else (ar, tokenizer) if ar is not None else None
    if scorer is not None:
        scorer[0].to(device)
    return model, tokenizer, tcfg, prefix, ar, ar_cfg, scorer


def check_sizes(ec: EvalConfig, names: list[str], tcfg, tokenizer, n_blocks: int, device: str) -> None:
    """Before any work: one forward pass of the bound, and every setting's samples, fit this machine."""
    from decoding import lengths, prompt_ids
    from limits import check_fits, check_generation

    rows = min(max(1, ec.batch_size // ec.elbo_draws), n_blocks) * ec.elbo_draws
    check_fits(f"--elbo-draws {ec.elbo_draws} with --batch-size {ec.batch_size} (the bound's forward passes)",
               rows * (tcfg.max_len - 2) / 2 * len(tokenizer) * 4, device)
    for name in names:
        gc = GenConfig(**{**SETTINGS[name], "num_samples": ec.num_samples, "seed": ec.seed, "out": ""})
        length, block = lengths(gc, len(prompt_ids(gc, tokenizer, tcfg.max_len)), tcfg.max_len)
        check_generation(gc, tcfg.max_len, len(tokenizer), length, block, device)


def evaluate(ec: EvalConfig, names: list[str], command: str) -> dict:
    """Every number, sample and setting of one evaluation, as the JSON report.py reads."""
    import torch

    from data import build_datasets
    from decoding import explicit, setting_of
    from metrics import ar_row, diffusion_row, held_out_likelihood, machine, reference_row, versions
    from modeling import n_params

    t_start = time.time()
    model, tokenizer, tcfg, prefix, ar, ar_cfg, scorer = load_models(ec)
    _, val_ds = build_datasets(tcfg, tokenizer)
    val = val_ds[:]["input_ids"]  # [M, L]
    blocks = val[:ec.elbo_blocks] if ec.elbo_blocks else val
    check_sizes(ec, names, tcfg, tokenizer, len(blocks), next(model.parameters()).device.type)
    render = shlex.join(["python", "report.py", "--evaluation", os.path.join(ec.out_dir, "evaluation.json")])
    commands = [train_command(tcfg)] + ([baseline_command(ar_cfg)] if ar_cfg else []) + [command, render]
    result = {"command": command, "commands": commands,
              "config": dataclasses.asdict(ec) | {"prefix": prefix, "settings": ",".join(names)},
              "checkpoint_config": dataclasses.asdict(tcfg), "baseline_config": ar_cfg,
              "scorer": ec.scorer or ("AR baseline" if ar is not None else None),
              "parameters": {"diffusion": n_params(model), "ar": n_params(ar) if ar is not None else None},
              "default_settings": setting_of(GenConfig()), "versions": versions(), "machine": machine()}

    # 1. held-out likelihood on the same tokens
    t0 = time.time()
    g = torch.Generator().manual_seed(ec.seed)
    result["held_out"] = held_out_likelihood(model, ar, blocks, tokenizer, prefix, ec.elbo_draws, ec.batch_size, g)
    result["held_out"]["seconds"] = time.time() - t0

    # 2. samples: held-out reference, diffusion settings, AR settings
    run = dict(num_samples=ec.num_samples, seed=ec.seed, out="")
    rows = [reference_row(val, tokenizer, ec.num_samples, scorer, ec.batch_size)]
    rows += [diffusion_row(model, tokenizer, explicit({**SETTINGS[name], **run}), tcfg.max_len, scorer,
                           ec.batch_size, name) for name in names]
    if ar is not None:
        rows += [ar_row(ar, tokenizer, explicit({**over, **run}, left_to_right=True), tcfg.max_len - 2, scorer,
                        ec.batch_size, name)
                 for name, over in AR_SETTINGS.items()]
    result["samples"] = rows
    result["sample_length"] = tcfg.max_len - 2
    result["seconds"] = time.time() - t_start  # the numbers and the table, before the report's samples

    # 3. samples for the report
    result["report_samples"] = report_samples(model, tokenizer, tcfg, ar, ec.seed)
    return result


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ec, _ = parse(EvalConfig, argv, __doc__)
    names = list(SETTINGS) if ec.settings == "all" else parse_names(ec.settings, "settings", tuple(SETTINGS))
    from files import check_output, write_json

    for name in ("evaluation.json", "eval_config.json"):  # before the work: the results can be written
        check_output(os.path.join(ec.out_dir, name), "--out-dir")
    from transformers.utils import logging as hf_logging

    from report import format_table, likelihood_lines

    hf_logging.disable_progress_bar()
    command = shlex.join(["python", "evaluate.py", *argv])
    result = evaluate(ec, names, command)

    print("\n".join(likelihood_lines(result)))
    print(f"\nsamples: {ec.num_samples} per setting, {result['sample_length']} tokens each, unprompted; "
          f"generative perplexity under {result['scorer'] or '(no scorer: pass --baseline or --scorer)'}")
    print(format_table(result))
    path = os.path.join(ec.out_dir, "evaluation.json")
    write_json(path, result)
    save_config(ec, ec.out_dir, "eval_config.json")
    print(f"wrote {path} ({result['seconds']:.0f}s); render the report with: {result['commands'][-1]} "
          f"(it writes {os.path.join(ec.out_dir, 'GENERATION_VALIDATION.md')})")
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
