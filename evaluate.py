"""How good is the generator? Likelihood against an autoregressive baseline, and sample quality.

    python baseline_ar.py --checkpoint results/final-model   # once: the AR baseline
    python evaluate.py                                        # results/final-model vs results/ar-baseline
    python report.py                                          # GENERATION_VALIDATION.md from its JSON
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
import platform
import shlex
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: spinning threads crawl on a shared CPU

import torch  # noqa: E402

from config import EvalConfig, GenConfig, TrainConfig, UsageError, cli, parse, parse_names, save_config, train_presets

# Diffusion generation settings, as overrides of config.GenConfig. Every setting fills the whole
# window, unprompted (the usual setup for generative perplexity) unless it names a prompt.
SETTINGS = {
    "defaults": {},  # generate.py's defaults: low-confidence order + annealed noise 8, nucleus 0.95, T 0.9
    "defaults-prompted": dict(prompt="The history of the"),  # scored on the continuation only
    "defaults-32-steps": dict(steps=32),
    "cosine": dict(schedule="cosine"),
    "no-order-noise": dict(order_noise=0.0),
    "seeds-rule": dict(order="random", order_noise=0.0, temperature=0.8),  # random order at its own best point
    "remdm-conf": dict(order="random", order_noise=0.0, temperature=0.8, remdm="conf", remdm_eta=0.5),
    "previous-defaults": dict(sampling="topk", k=50, temperature=0.8, order_noise=0.0),  # before the frontier
    "greedy": dict(sampling="greedy", order_noise=0.0),
    "threshold-0.9": dict(decode="threshold", threshold=0.9, order_noise=0.0),
}
# The AR baseline's own samples: the same samplers (decoding.SAMPLERS), left to right.
AR_SETTINGS = {
    "ar-same-sampler": dict(sampling=GenConfig.sampling, k=GenConfig.k, p=GenConfig.p,
                            temperature=GenConfig.temperature),  # generate.py's default sampler
    "ar-sample": dict(sampling="topk", temperature=1.0, k=10**9),  # plain ancestral sampling
}
# Fields of GenConfig that describe a sampling setting (recorded per row; the report compares them)
SETTING_FIELDS = ("prompt", "schedule", "sampling", "k", "p", "temperature", "order", "order_noise", "remdm",
                  "remdm_eta", "cfg", "canvas", "decode", "threshold", "steps")
SAMPLER_FIELDS = ("sampling", "k", "p", "temperature")  # all an AR row's setting has


def setting_of(gc: GenConfig, fields=SETTING_FIELDS) -> dict:
    return {f: getattr(gc, f) for f in fields}

REPORT_PROMPT = "The history of the"
REPORT_TEMPLATE = "Aristotle was a Greek [MASK:4] and [MASK:6] in the [MASK:3] century."
# (section, caption, GenConfig overrides of generate.py's defaults); two samples each
REPORT_SAMPLES = [
    ("Unprompted", "generate.py defaults", {}),
    ("Unprompted", "cosine schedule, 32 steps", dict(schedule="cosine", steps=32)),
    ("Unprompted", "nucleus (p 0.9), 32 steps", dict(sampling="nucleus", steps=32)),
    ("Unprompted", "greedy", dict(sampling="greedy")),
    ("Unprompted", "threshold decoding: commit every prediction with confidence >= 0.9", dict(decode="threshold")),
    ("Unprompted", "the seed's rule: random order", dict(order="random")),
    ("Prompted", "generate.py defaults", dict(prompt=REPORT_PROMPT)),
    ("Prompted", "cosine schedule, 32 steps", dict(prompt=REPORT_PROMPT, schedule="cosine", steps=32)),
    ("Infill", "generate.py defaults", dict(template=REPORT_TEMPLATE)),
    ("Infill", "greedy", dict(template=REPORT_TEMPLATE, sampling="greedy")),
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
    parts = ["python", "train.py"] + (["--quick-test"] if tcfg.quick_test else ["--model", tcfg.model])
    for f in dataclasses.fields(TrainConfig):
        value = getattr(tcfg, f.name)
        if f.name in ("quick_test", "resume", "model") or value == getattr(base, f.name):
            continue
        flag = f.name.replace("_", "-")
        parts += [f"--{flag}" if value else f"--no-{flag}"] if isinstance(value, bool) else [f"--{flag}", str(value)]
    return shlex.join(parts)


def baseline_command(ar_cfg: dict) -> str:
    """baseline_ar.py with its resolved flags (auto shape written out), which reproduces the run."""
    return shlex.join(["python", "baseline_ar.py"] + [x for k, v in ar_cfg.items()
                                                       for x in (f"--{k.replace('_', '-')}", str(v))])


# ---------------------------------------------------------------------------------------------
# Samples
# ---------------------------------------------------------------------------------------------


def mark_filled(ids: list[int], fixed: list[bool], tokenizer) -> str:
    """Infill output with each filled span in ⟦ ⟧, the template text as written."""
    out, i = [], 0
    while i < len(ids):
        j = i
        while j < len(ids) and fixed[j] == fixed[i]:
            j += 1
        text = tokenizer.decode(ids[i:j])
        out.append(text if fixed[i] else text[:len(text) - len(text.lstrip())] + "⟦" + text.lstrip() + "⟧")
        i = j
    return "".join(out)


def report_samples(model, tokenizer, tcfg, ar, seed: int) -> list[dict]:
    """[{section, caption, settings, texts}] for the report, from decoding.generate and ar_generate."""
    from decoding import ar_generate, banned_ids, generate, parse_template

    out = []
    for section, caption, over in REPORT_SAMPLES:
        gc = GenConfig(**{**over, "num_samples": 2, "seed": seed, "out": ""})
        ids, _, _ = generate(model, tokenizer, gc, tcfg.max_len, torch.Generator().manual_seed(seed))
        if gc.template:
            fixed = parse_template(gc.template, tokenizer)[1]
            texts = [mark_filled(row, fixed, tokenizer) for row in ids.tolist()]
        else:
            texts = [tokenizer.decode(row) for row in ids.tolist()]
        out.append({"section": section, "caption": caption, "settings": setting_of(gc),
                    "prompt": gc.prompt, "template": gc.template, "texts": texts})
    if ar is not None:
        prompt = tokenizer(REPORT_PROMPT, add_special_tokens=False)["input_ids"]
        for caption, start, text in (("unprompted", [], ""), ("prompted", prompt, REPORT_PROMPT)):
            gc = GenConfig(**AR_SETTINGS["ar-same-sampler"])
            first = torch.tensor([[tokenizer.bos_token_id] + start] * 2)  # [2, T0]
            ids = ar_generate(ar, first, tcfg.max_len - 2 - len(start), gc, banned_ids(tokenizer),
                              torch.Generator().manual_seed(seed))
            out.append({"section": "AR baseline", "caption": f"{caption}, left to right",
                        "settings": setting_of(gc, SAMPLER_FIELDS),
                        "prompt": text, "template": "", "texts": [tokenizer.decode(start + row) for row in ids.tolist()]})
    return out


# ---------------------------------------------------------------------------------------------
# The evaluation
# ---------------------------------------------------------------------------------------------


def machine() -> dict:
    """Facts of the machine the numbers were taken on, recorded so the report can state them."""
    cpu = platform.processor() or platform.machine()
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "device": "cuda" if torch.cuda.is_available() else "cpu"}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def evaluate(ec: EvalConfig, names: list[str], command: str) -> dict:
    """Every number, sample and setting of one evaluation, as the JSON report.py reads."""
    import transformers

    from data import build_datasets
    from decoding import ar_generate, banned_ids, generate
    from diffusion import special_token_ids
    from metrics import held_out_likelihood, reference_blocks, sample_quality
    from modeling import load_baseline, load_checkpoint, load_scorer, n_params

    t_start = time.time()
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
    _, val_ds = build_datasets(tcfg, tokenizer)
    val = val_ds[:]["input_ids"]  # [M, L]
    blocks = val[:ec.elbo_blocks] if ec.elbo_blocks else val
    commands = [train_command(tcfg)] + ([baseline_command(ar_cfg)] if ar_cfg else []) + [command, "python report.py"]
    result = {"command": command, "commands": commands,
              "config": dataclasses.asdict(ec) | {"prefix": prefix, "settings": ",".join(names)},
              "checkpoint_config": dataclasses.asdict(tcfg), "baseline_config": ar_cfg,
              "scorer": ec.scorer or ("AR baseline" if ar is not None else None),
              "parameters": {"diffusion": n_params(model), "ar": n_params(ar) if ar is not None else None},
              "default_settings": setting_of(GenConfig()),
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "python": platform.python_version()},
              "machine": machine()}

    # 1. held-out likelihood on the same tokens
    t0 = time.time()
    g = torch.Generator().manual_seed(ec.seed)
    result["held_out"] = held_out_likelihood(model, ar, blocks, tokenizer, prefix, ec.elbo_draws, ec.batch_size, g)
    result["held_out"]["seconds"] = time.time() - t0

    # 2. samples: held-out reference, diffusion settings, AR settings
    length = tcfg.max_len - 2
    special = set(special_token_ids(tokenizer)) | {tokenizer.mask_token_id}
    ref = [[t for t in row.tolist() if t not in special] for row in reference_blocks(val, ec.num_samples)]
    ref_texts = [tokenizer.decode(r) for r in ref]
    rows = [{"name": "held-out text", "model": "reference", "settings": {}, "texts": ref_texts[:4],
             **sample_quality(ref, ref_texts, scorer, None, ec.batch_size)}]
    for name in names:
        gc = GenConfig(**{**SETTINGS[name], "num_samples": ec.num_samples, "seed": ec.seed, "out": ""})
        t0 = time.time()
        ids, history, n_prompt = generate(model, tokenizer, gc, tcfg.max_len, torch.Generator().manual_seed(ec.seed))
        seconds = time.time() - t0
        tokens = ids[:, n_prompt:].tolist()  # a prompted setting is judged on what it wrote
        texts = [tokenizer.decode(t) for t in tokens]
        rows.append({"name": name, "model": "diffusion", "settings": setting_of(gc), "forward_passes": len(history),
                     "texts": texts[:4], **sample_quality(tokens, texts, scorer, seconds, ec.batch_size)})
    if ar is not None:
        bos = torch.full((ec.num_samples, 1), tokenizer.bos_token_id)
        for name, over in AR_SETTINGS.items():
            gc = GenConfig(**over)
            t0 = time.time()
            ids = ar_generate(ar, bos, length, gc, banned_ids(tokenizer), torch.Generator().manual_seed(ec.seed))
            seconds = time.time() - t0
            tokens = ids.tolist()
            texts = [tokenizer.decode(t) for t in tokens]
            rows.append({"name": name, "model": "AR", "settings": setting_of(gc, SAMPLER_FIELDS), "forward_passes": length,
                         "texts": texts[:4], **sample_quality(tokens, texts, scorer, seconds, ec.batch_size)})
    result["samples"] = rows
    result["sample_length"] = length
    result["seconds"] = time.time() - t_start  # the numbers and the table, before the report's samples

    # 3. samples for the report
    result["report_samples"] = report_samples(model, tokenizer, tcfg, ar, ec.seed)
    return result


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ec, _ = parse(EvalConfig, argv, __doc__)
    names = list(SETTINGS) if ec.settings == "all" else parse_names(ec.settings, "settings", tuple(SETTINGS))
    from transformers.utils import logging as hf_logging

    from report import format_table, likelihood_lines, write_json

    hf_logging.disable_progress_bar()
    command = shlex.join(["python", "evaluate.py", *argv])
    result = evaluate(ec, names, command)

    print("\n".join(likelihood_lines(result)))
    print(f"\nsamples: {ec.num_samples} per setting, {result['sample_length']} tokens each, unprompted; "
          f"generative perplexity under {result['scorer'] or '(no scorer: pass --baseline or --scorer)'}")
    print(format_table(result))
    path = os.path.join(ec.out_dir, "evaluation.json")
    write_json(result, path)
    save_config(ec, ec.out_dir, "eval_config.json")
    print(f"wrote {path} ({result['seconds']:.0f}s); render the report with: python report.py --evaluation {path}")
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
