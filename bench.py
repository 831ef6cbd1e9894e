"""Benchmark this repo's training and generation against the reference pipeline and the AR baseline.

    python bench.py                   # GPU if one is visible: roberta-base shape, sequence 256
    python bench.py --device cpu      # quick-test shape and model, plus the quick test's wall time
    python bench.py --small           # tiny shapes, random weights, a smoke test (CI runs it)
    python bench.py --profile         # one generation stage by stage, diffusion and AR
    python bench.py --render docs/bench.json   # README.md's Performance tables from a bench JSON

One run measures, on the same model shape, data and machine:
  1. training tokens/s. This repo: pre-tokenised packed blocks (data.build_datasets), the
     DiffusionCollator, the LM head on masked positions only, fused AdamW, bf16 autocast on CUDA,
     the batch size of the config for that size (trainer.speed_arguments, config.MODEL_PRESETS).
     The reference is the pipeline shape of the original RoBERTa-diffusion code, built here: the
     HF Trainer in fp32 at batch 16, raw text tokenised by the collator on every batch, vocabulary
     logits at every position (the model's own MLM loss).
  2. seconds to write a window's worth of new tokens at generate.py's defaults (config.GenConfig,
     decoding.generate), and the same one token per forward pass, against the AR baseline with
     its KV cache at the same sampler and temperature (decoding.ar_generate: fast_gpt2's step, as
     the diffusion side runs fast_modernbert), at batch 1 and 16, the sides alternating round by
     round (metrics.fastest_alternating); FLOPs per sample beside them; and the same AR through
     transformers' own forward, in the same rounds, to show what per-call machinery alone costs.
     On a CPU with more than one torch thread, the defaults and the AR again on one thread, and
     their ratio with each side at its faster thread count. The trained quick-test model and
     its AR baseline by default (--checkpoint, --baseline); random weights with `none` (times the
     work, not the text).
  3. the quick test's wall time on CPU: `train.py --quick-test` + `generate.py`, as subprocesses
     into a temporary folder.
--profile instead times one generation per batch size by stage: model forward (decoding.predict;
the AR's fast_gpt2.step), sampler (decoding.sample), order and noise (decoding.order_scores), and
the rest of the loop (bookkeeping). Prints a table and writes JSON with the resolved settings,
versions and machine to --out. It asserts nothing about speed: the targets live in the README.
"""

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time

from cli import UsageError, cli, parse  # noqa: E402
from config import MODEL_PRESETS, Registry, TrainConfig, flag, parse_ints, Settings  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))


class BenchConfig(Settings):
    device: str = flag("auto", "auto = cuda if visible, else cpu", choices=("auto", "cpu", "cuda"))
    small: bool = flag(False, "tiny settings a CPU finishes in about half a minute (the CI smoke test)")
    out: str = flag("", "JSON written here; '' = results/bench.json (results/profile.json with --profile)")
    # model shape, shared by both pipelines and by the generation models (defaults: per device)
    arch: str = flag("modernbert", "encoder architecture", choices=Registry("modeling", "SCRATCH_ARCHS"))
    layers: int = flag(2, "transformer layers", min=1)
    hidden: int = flag(128, "hidden size", min=1)
    heads: int = flag(4, "attention heads", min=1)
    intermediate: int = flag(256, "MLP width", min=1)
    vocab: int = flag(0, "model vocabulary; 0 = the corpus tokenizer's (4096)", min=0)
    seq_len: int = flag(64, "training window, <s> and </s> included", min=8)
    # training measurement
    batch_size: int = flag(16, "this repo's batch (the config's for that size)", min=1)
    baseline_batch_size: int = flag(16, "the reference pipeline's batch (the original code's)", min=1)
    warmup: int = flag(10, "untimed steps before the clock starts", min=1, max=10_000)
    steps: int = flag(40, "timed optimiser steps, the same for both pipelines", min=1, max=100_000)
    rounds: int = flag(5, "alternating rounds of both pipelines; the best of each is kept", min=1, max=100)
    num_workers: int = flag(0, "DataLoader workers of this repo's pipeline", min=0)
    compile: bool = flag(False, "torch.compile this repo's encoder")
    # generation measurement: generate.py's defaults (config.GenConfig) against the AR baseline
    checkpoint: str = flag("results/final-model", "the diffusion model whose generation is timed (train.py "
                           "final-model); 'none' = random weights at the shape above (times the work, not the text)")
    baseline: str = flag("results/ar-baseline", "its AR baseline (baseline_ar.py), timed with the same sampler and "
                         "temperature; 'none' = a GPT-2 of the same size with random weights")
    gen_length: int = flag(0, "new tokens per sample; 0 = the window's (62 for the quick test)", min=0)
    gen_batches: str = flag("1,16", "comma-separated batch sizes")
    gen_repeats: int = flag(3, "timed repeats after one warm-up; the fastest is kept", min=1, max=100)
    profile: bool = flag(False, "only time one generation stage by stage (model forward, sampler, order and noise, "
                         "bookkeeping), diffusion at the defaults and the AR at the same sampler")
    render: str = flag("", "measure nothing: write this bench JSON's tables into README.md's Performance section "
                       "(between the markers naming it)")
    skip_quick_test: bool = flag(False, "skip timing train.py --quick-test (--small does)")
    cache_dir: str = flag(".cache", "tokenizer and packed-data cache")
    seed: int = flag(0, "weights, masks and samples", min=0, max=2**32 - 1)

    def batches(self) -> list[int]:
        return parse_ints(self.gen_batches, "gen-batches")

    def check(self) -> None:
        if not self.batches() or min(self.batches()) < 1:
            raise UsageError(f"--gen-batches must be positive integers, got {self.gen_batches!r}")
        if self.hidden % self.heads:
            raise UsageError("--hidden must be divisible by --heads")


# Bench targets: "cpu" is the quick test's model (the field defaults above); "gpu" is the
# reference shape (roberta-base, sequence 256, this repo's roberta-base batch); "small" is CI's.
BENCH_PRESETS = {
    "gpu": dict(arch="roberta", layers=12, hidden=768, heads=12, intermediate=3072, vocab=50265, seq_len=256,
                batch_size=MODEL_PRESETS["roberta-base"]["batch_size"], warmup=5, steps=30, rounds=1,
                num_workers=MODEL_PRESETS["roberta-base"]["num_workers"], checkpoint="none", baseline="none"),
    "small": dict(layers=1, hidden=64, heads=2, intermediate=128, warmup=2, steps=6, rounds=1, gen_length=32,
                  gen_repeats=1, skip_quick_test=True, checkpoint="none", baseline="none"),
}


def bench_presets(flags: dict, cuda: bool) -> dict:
    """defaults (the quick test's shape, for CPU) <- gpu preset on CUDA <- small preset."""
    device = flags.get("device", BenchConfig.device)
    on_gpu = device == "cuda" or (device == "auto" and cuda)
    return {**(BENCH_PRESETS["gpu"] if on_gpu else {}), **(BENCH_PRESETS["small"] if flags.get("small") else {})}


def resolve(argv) -> tuple[BenchConfig, list[str]]:
    """(settings: defaults <- device preset <- --small <- flags, the argv as given)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    bc, _ = parse(BenchConfig, argv, __doc__, presets=lambda flags: bench_presets(flags, cuda_visible()))
    if bc.device == "cuda" and not cuda_visible():
        raise UsageError("--device cuda but no CUDA GPU is visible (use --device cpu)")
    if bc.device == "auto":
        bc = dataclasses.replace(bc, device="cuda" if cuda_visible() else "cpu")
    if not bc.out:
        bc = dataclasses.replace(bc, out=os.path.join("results", "profile.json" if bc.profile else "bench.json"))
    return bc, argv


def check_models(args) -> None:
    """A missing checkpoint or AR baseline is one line before any timing starts."""
    from modeling import check_checkpoint

    if args.checkpoint != "none":
        check_checkpoint(args.checkpoint)
    folders = (args.baseline, os.path.join(args.baseline, "final-model"))
    if args.baseline != "none" and not any(os.path.isfile(os.path.join(f, "ar_config.json")) for f in folders):
        raise UsageError(f"no AR baseline at {args.baseline}; train one with: python baseline_ar.py --checkpoint "
                         f"{args.checkpoint} --output-dir {args.baseline}   (or pass --baseline none)")


def check_sizes(args) -> None:
    """Both measurements fit this machine: one training step of the model, each generation batch
    (generate.py's defaults, and one token per pass)."""
    from config import GenConfig
    from limits import check_generation, check_training, scratch_params

    cfg = repo_config(args, args.seq_len, "unused")
    check_training(cfg, args.vocab, scratch_params(cfg, args.vocab), args.device)
    length = args.gen_length or args.seq_len - 2
    for batch in args.batches():
        gc = GenConfig(length=length, steps=max(GenConfig.steps, length), num_samples=batch, out="")
        check_generation(gc, length + 2, args.vocab, length, length, args.device)


def cuda_visible() -> bool:
    import torch

    return torch.cuda.is_available()


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# Models and data
# ---------------------------------------------------------------------------------------------


def repo_config(args, max_len: int, out_dir: str) -> TrainConfig:
    """This repo's TrainConfig at the benchmark's shape; everything else at its defaults."""
    return TrainConfig(
        model="scratch", dataset="embedded", scratch_arch=args.arch, scratch_layers=args.layers,
        scratch_hidden=args.hidden, scratch_heads=args.heads, scratch_intermediate=args.intermediate,
        max_len=max_len, batch_size=args.batch_size, max_steps=args.warmup + args.steps,
        precision="auto" if args.device == "cuda" else "fp32", num_workers=args.num_workers,
        torch_compile=args.compile, cache_dir=args.cache_dir, output_dir=out_dir, seed=args.seed)


def encoder(cfg: TrainConfig, tokenizer, vocab: int):
    """modeling.build_model's model, its vocabulary widened to `vocab` (roberta-base's 50265 on
    GPU) so the LM head costs what it costs there; the corpus only uses the first 4096 ids."""
    from modeling import build_model

    model = build_model(cfg, tokenizer)
    if vocab > model.config.vocab_size:
        model.resize_token_embeddings(vocab, mean_resizing=False)
    return model


def gpt2_like(model, n_positions: int, tokenizer):
    """GPT-2 of the encoder's size: same depth, width, heads, MLP width and vocabulary."""
    from modeling import build_ar_model

    c = model.config
    return build_ar_model(tokenizer, n_positions, c.hidden_size, c.num_attention_heads, c.num_hidden_layers,
                          c.intermediate_size, seed=0, vocab_size=c.vocab_size)


class TokenizingCollator:
    """The reference collator: raw text in, the tokenizer called on every batch (padding and
    truncation to the window), then the same masking as this repo (DiffusionCollator), so only
    the pipeline shape differs. Returns just what the model's own MLM loss takes."""

    def __init__(self, tokenizer, cfg: TrainConfig):
        from data_collator import DiffusionCollator

        self.tokenizer = tokenizer
        self.max_len = cfg.max_len
        self.masking = DiffusionCollator(tokenizer, cfg)

    def __call__(self, features) -> dict:
        ids = self.tokenizer([f["text"] for f in features], padding="max_length", truncation=True,
                             max_length=self.max_len, return_tensors="pt")["input_ids"]  # [B, L]
        batch = self.masking([{"input_ids": row} for row in ids])
        return {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}


# ---------------------------------------------------------------------------------------------
# 1. Training throughput
# ---------------------------------------------------------------------------------------------


def time_trainer(trainer, args, device, tokens_per_step: int) -> dict:
    from transformers.trainer_callback import PrinterCallback

    from trainer import StepClock

    clock = StepClock(args.warmup, args.warmup + args.steps, lambda: sync(device))
    trainer.remove_callback(PrinterCallback)  # its end-of-training dict is not this table
    trainer.add_callback(clock)
    trainer.train()
    (wall0, cpu0), (wall1, cpu1) = clock.marks[args.warmup], clock.marks[args.warmup + args.steps]
    seconds = wall1 - wall0
    # busy CPU threads of this process over the span: on a shared machine, well under
    # torch's thread count means the neighbours took the cores
    return {"tokens_per_s": args.steps * tokens_per_step / seconds, "step_ms": 1000 * seconds / args.steps,
            "timed_steps": args.steps, "tokens_per_step": tokens_per_step,
            "cpu_threads_busy": (cpu1 - cpu0) / seconds}


def trainer_args(cfg: TrainConfig, args, out_dir: str, batch: int, **over):
    """train.py's TrainingArguments for cfg, timed: no evaluation, saving, logging or warm-up."""
    from trainer import training_arguments

    return training_arguments(cfg, evaluate_first=False, use_cpu=args.device == "cpu", output_dir=out_dir,
                              per_device_train_batch_size=batch, warmup_steps=0, eval_strategy="no",
                              save_strategy="no", logging_strategy="no", disable_tqdm=True, **over)


def train_repo(args, cfg: TrainConfig, tokenizer, train_ds, device) -> dict:
    """This repo's pipeline: DiffusionTrainer with train.py's speed settings."""
    from data_collator import DiffusionCollator
    from modeling import n_params
    from trainer import DiffusionTrainer, speed_arguments

    model = encoder(cfg, tokenizer, args.vocab)
    if cfg.torch_compile:
        from modeling import compile_model

        compile_model(model, cfg.masked_only_head)
    speed = speed_arguments(cfg)
    trainer = DiffusionTrainer(
        model=model, args=trainer_args(cfg, args, cfg.output_dir, cfg.batch_size),
        train_dataset=train_ds, data_collator=DiffusionCollator(tokenizer, cfg), processing_class=tokenizer,
        diffusion_cfg=cfg, tokenizer=tokenizer)
    timing = time_trainer(trainer, args, device, cfg.batch_size * cfg.grad_accum * cfg.max_len)
    return {**timing, "batch_size": cfg.batch_size,
            "precision": "bf16" if speed["bf16"] else "fp16" if speed["fp16"] else "fp32",
            "optim": speed["optim"], "lm_head": "masked positions", "data": "pre-tokenised blocks",
            "num_workers": cfg.num_workers, "torch_compile": cfg.torch_compile, "parameters": n_params(model),
            "attention": model.config._attn_implementation}


def train_reference(args, cfg: TrainConfig, tokenizer, texts, device, out_dir: str) -> dict:
    """The reference pipeline shape: plain Trainer, fp32, raw text tokenised per batch, the
    model's own loss over full-vocabulary logits at every position."""
    from transformers import Trainer

    from modeling import n_params

    model = encoder(cfg, tokenizer, args.vocab)
    trainer = Trainer(model=model, train_dataset=texts, data_collator=TokenizingCollator(tokenizer, cfg),
                      args=trainer_args(cfg, args, out_dir, args.baseline_batch_size, optim="adamw_torch", bf16=False,
                                        fp16=False, dataloader_num_workers=0, dataloader_persistent_workers=False,
                                        dataloader_pin_memory=device.type == "cuda"))
    timing = time_trainer(trainer, args, device, args.baseline_batch_size * cfg.max_len)
    return {**timing, "batch_size": args.baseline_batch_size, "precision": "fp32", "optim": "adamw_torch",
            "lm_head": "every position", "data": "tokenised per batch", "num_workers": 0,
            "torch_compile": False, "parameters": n_params(model), "attention": model.config._attn_implementation}


def bench_training(args, tokenizer, work: str) -> dict:
    """Alternating rounds of both pipelines; each side keeps its best round, since on a shared
    machine a slow round measures the neighbours, not the pipeline."""
    import datasets
    import torch

    from data import build_datasets

    device = torch.device(args.device)
    cfg = repo_config(args, args.seq_len, os.path.join(work, "repo"))
    train_ds, _ = build_datasets(cfg, tokenizer)
    n_texts = min(len(train_ds), (args.warmup + args.steps) * args.baseline_batch_size)
    blocks = train_ds[:n_texts]["input_ids"]  # [n, L]
    texts = datasets.Dataset.from_dict({"text": tokenizer.batch_decode(blocks[:, 1:-1])})
    rounds = {"repo": [], "reference": []}
    for r in range(args.rounds):
        print(f"[1/3] training round {r + 1}/{args.rounds}: this repo (batch {cfg.batch_size}), then the "
              f"reference (batch {args.baseline_batch_size}), {args.warmup}+{args.steps} steps each", flush=True)
        rounds["repo"].append(train_repo(args, cfg, tokenizer, train_ds, device))
        release(device)
        rounds["reference"].append(train_reference(args, cfg, tokenizer, texts, device, os.path.join(work, "ref")))
        release(device)
    best = {side: max(runs, key=lambda x: x["tokens_per_s"]) for side, runs in rounds.items()}
    return {**best, "ratio": best["repo"]["tokens_per_s"] / best["reference"]["tokens_per_s"],
            "rounds_tokens_per_s": {side: [x["tokens_per_s"] for x in runs] for side, runs in rounds.items()}}


def release(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# 2. Generation latency: generate.py's defaults against the AR baseline at the same sampler
# ---------------------------------------------------------------------------------------------


def generation_models(args, tokenizer, device):
    """(diffusion model, its tokenizer, window, AR model, where they came from): the trained
    checkpoint and its AR baseline, or (--checkpoint none / --baseline none) random weights at the
    bench's shape, which time the work but not the text (the nucleus of a random model holds
    most of the vocabulary)."""
    from modeling import load_baseline, load_checkpoint

    if args.checkpoint != "none":
        model, tok, tcfg = load_checkpoint(args.checkpoint, device=str(device))
        window, source = tcfg.max_len, args.checkpoint
    else:
        cfg = repo_config(args, args.seq_len, "unused")
        model, tok, window, source = encoder(cfg, tokenizer, args.vocab).to(device).eval(), tokenizer, args.seq_len, \
            "random weights"
    if args.baseline != "none":
        ar = load_baseline(args.baseline, tok, args.checkpoint, window)[0].to(device)
        ar_source = args.baseline
    else:
        ar, ar_source = gpt2_like(model, window, tok).to(device).eval(), "random weights"
    return model, tok, window, ar, {"diffusion": source, "ar": ar_source}


def gen_settings(args, n: int, batch: int) -> dict:
    """The timed diffusion settings: generate.py's defaults (config.GenConfig), and the same with
    one token per forward pass (steps = new tokens)."""
    from config import GenConfig

    defaults = GenConfig(length=n, num_samples=batch, seed=args.seed, out="")
    return {"defaults": defaults, "defaults_one_token_per_pass": dataclasses.replace(defaults, steps=n)}


def bench_generation(args, tokenizer) -> dict:
    """Seconds for n new tokens (best of --gen-repeats) per batch size: each diffusion setting
    (decoding.generate) and the AR baseline with its KV cache and the defaults' sampler and
    temperature (decoding.ar_generate)."""
    import torch

    from decoding import SAMPLERS, describe, generate, ar_generate
    from metrics import fastest_alternating, flops
    from modeling import n_params
    from tokens import banned_ids

    device = torch.device(args.device)
    model, tok, window, ar, sources = generation_models(args, tokenizer, device)
    n = args.gen_length or window - 2
    if n > window - 2:
        raise UsageError(f"--gen-length {n} does not fit the window of {window} (at most {window - 2})")
    out = {"diffusion_parameters": n_params(model), "ar_parameters": n_params(ar), "window": window,
           "new_tokens": n, "models": sources, "by_batch": {}}

    def diffuse(gc):
        ids, history, _ = generate(model, tok, gc, window, torch.Generator().manual_seed(args.seed))
        assert ids.shape == (gc.num_samples, n)
        return len(history)

    def autoregress(gc, length, fast=True):
        start = torch.full((gc.num_samples, 1), tok.bos_token_id)  # [B, 1]
        ids = ar_generate(ar, start, length, gc, banned_ids(tok), torch.Generator().manual_seed(args.seed), fast)
        assert ids.shape == (gc.num_samples, length)
        return length

    threads = torch.get_num_threads()
    for batch in args.batches():
        print(f"[2/3] generation, {n} new tokens at batch {batch}", flush=True)
        settings = gen_settings(args, n, batch)
        gc = settings["defaults"]
        runs = {name: (lambda c=c: diffuse(c)) for name, c in settings.items()}
        runs["ar_kv_cache"] = lambda: autoregress(gc, n)  # the defaults' sampler and temperature
        runs["ar_transformers"] = lambda: autoregress(gc, n, fast=False)  # the same, through transformers' forward
        best = fastest_alternating(runs, args.gen_repeats, lambda: sync(device))
        row = {name: {"seconds": best[name], "forward_passes": diffuse(c), "label": describe(c)}
               for name, c in settings.items()}
        for side in AR_SIDES:
            row[side] = {"seconds": best[side], "forward_passes": n, "label": SAMPLERS[gc.sampling].text(gc)}
        row["ar_transformers"]["speedup"] = best["ar_transformers"] / best["defaults"]
        row["speedup"] = {name: best["ar_kv_cache"] / best[name] for name in settings}  # AR time / diffusion time
        if device.type == "cpu" and threads > 1:
            row["best_threads"] = at_best_threads(runs, best, threads, args.gen_repeats)
        out["by_batch"][str(batch)] = row
    one = gen_settings(args, n, 1)  # FLOPs per sample: what a compute-bound machine pays
    out["flops_per_sample"] = {**{name: flops(lambda c=c: diffuse(c)) for name, c in one.items()},
                               "ar_kv_cache": flops(lambda: autoregress(one["defaults"], n))}
    return out


AR_SIDES = ("ar_kv_cache", "ar_transformers")  # fast_gpt2's step (what the ratios use); transformers' forward
NOT_DIFFUSION = (*AR_SIDES, "speedup", "best_threads")  # a row's keys that are not diffusion settings


def at_best_threads(runs: dict, best: dict, threads: int, repeats: int) -> dict:
    """The defaults and the AR timed again on one torch thread (alternating, fastest of
    `repeats`), and their ratio with each side at its faster thread count: on a small model a
    second thread can slow a side down (OpenMP's passive waits), and not both sides alike."""
    import torch

    from metrics import fastest_alternating

    torch.set_num_threads(1)
    try:
        one = fastest_alternating({k: runs[k] for k in ("defaults", "ar_kv_cache")}, repeats)
    finally:
        torch.set_num_threads(threads)
    side = {k: min((best[k], threads), (one[k], 1)) for k in one}  # (seconds, threads) of the faster
    return {"one_thread": one, "threads": {k: t for k, (_, t) in side.items()},
            "seconds": {k: s for k, (s, _) in side.items()},
            "speedup": side["ar_kv_cache"][0] / side["defaults"][0]}


# ---------------------------------------------------------------------------------------------
# 2b. --profile: where one generation's time goes, stage by stage
# ---------------------------------------------------------------------------------------------

# stage -> the module-level functions of decoding.py whose calls it times; what no stage claims
# (canvas updates, masks, history) is bookkeeping. The AR's model forward is its model's forward.
PROFILE_STAGES = {"model forward": ("predict",), "sampler": ("sample",), "order and noise": ("order_scores",)}


class StageClock:
    """Seconds per stage while active: each listed function is replaced by a wrapper that adds
    its call's wall time (synchronised on CUDA) to its stage, and put back afterwards."""

    def __init__(self, device):
        self.device, self.seconds, self.saved = device, {}, []

    def time(self, stage: str, owner, name: str) -> None:
        fn = getattr(owner, name)

        def wrapper(*a, **kw):
            sync(self.device)
            t0 = time.perf_counter()
            result = fn(*a, **kw)
            sync(self.device)
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0
            return result

        self.saved.append((owner, name, owner.__dict__.get(name)))
        setattr(owner, name, wrapper)

    def restore(self) -> None:
        for owner, name, old in reversed(self.saved):
            if old is None:
                delattr(owner, name)  # an instance attribute that shadowed the class's method
            else:
                setattr(owner, name, old)
        self.saved = []


def profiled(run, stages: dict, device, repeats: int) -> dict:
    """{stage: ms} of the fastest of `repeats` calls of run(), stages given as
    {stage: [(owner, attribute name), ...]}, plus bookkeeping (the rest) and total."""
    best = None
    for _ in range(repeats):
        clock = StageClock(device)
        for stage, targets in stages.items():
            for owner, name in targets:
                clock.time(stage, owner, name)
        try:
            sync(device)
            t0 = time.perf_counter()
            run()
            sync(device)
            total = time.perf_counter() - t0
        finally:
            clock.restore()
        if best is None or total < best["total"]:
            best = {"total": total, **{s: clock.seconds.get(s, 0.0) for s in stages}}
    best["bookkeeping"] = best["total"] - sum(best[s] for s in stages)
    return {k: 1000 * v for k, v in best.items()}


def bench_profile(args, tokenizer) -> dict:
    """Per batch size, ms per stage of one generation at generate.py's defaults (diffusion) and
    of the AR baseline at the same sampler: model forward, sampler, order and noise, bookkeeping."""
    import torch

    import decoding
    import fast_gpt2
    from decoding import SAMPLERS, describe
    from tokens import banned_ids

    device = torch.device(args.device)
    model, tok, window, ar, sources = generation_models(args, tokenizer, device)
    n = args.gen_length or window - 2
    out = {"new_tokens": n, "window": window, "models": sources, "by_batch": {}}
    diffusion_stages = {stage: [(decoding, f) for f in names] for stage, names in PROFILE_STAGES.items()}
    ar_stages = {"model forward": [(ar, "forward"), (fast_gpt2, "step")], "sampler": [(decoding, "sample")]}
    for batch in args.batches():
        print(f"[profile] {n} new tokens at batch {batch}", flush=True)
        gc = gen_settings(args, n, batch)["defaults"]
        start = torch.full((batch, 1), tok.bos_token_id)  # [B, 1]

        def diffuse():
            return decoding.generate(model, tok, gc, window, torch.Generator().manual_seed(args.seed))

        def autoregress():
            return decoding.ar_generate(ar, start, n, gc, banned_ids(tok), torch.Generator().manual_seed(args.seed))

        diffuse(), autoregress()  # warm-up
        out["by_batch"][str(batch)] = {
            "diffusion": {"label": describe(gc), **profiled(diffuse, diffusion_stages, device, args.gen_repeats)},
            "ar": {"label": SAMPLERS[gc.sampling].text(gc), **profiled(autoregress, ar_stages, device,
                                                                        args.gen_repeats)},
            "samplers": sampler_costs(model, tok, gc, window, batch, device, args.gen_repeats)}
    return out


def sampler_costs(model, tok, gc, window: int, batch: int, device, repeats: int) -> dict:
    """ms of one draw at every position of `batch` fully masked canvases (the first pass's
    [batch x (window - 2), V] logits, the most a pass samples) with gc's nucleus and with top-k at
    the same temperature, alternating: what the sampler costs beside the model, and the two
    samplers side by side."""
    import dataclasses

    import torch

    from decoding import sample
    from metrics import fastest_alternating
    from modeling import masked_logits

    ids = torch.full((batch, window), tok.mask_token_id, device=device)  # [B, L]
    ids[:, 0], ids[:, -1] = tok.bos_token_id, tok.eos_token_id
    with torch.no_grad():
        logits = masked_logits(model, ids, None, ids == tok.mask_token_id).float()  # [N, V]
    runs = {name: (lambda c=dataclasses.replace(gc, sampling=name): sample(logits, torch.Generator(
        device=device).manual_seed(0), c)) for name in ("nucleus", "topk")}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    best = fastest_alternating(runs, max(repeats, 3), sync)
    return {"positions": len(logits), "nucleus_ms": 1000 * best["nucleus"], "topk_ms": 1000 * best["topk"],
            "nucleus_over_topk": best["nucleus"] / best["topk"], "k": gc.k, "p": gc.p}


def profile_table(profile: dict) -> str:
    stages = ("model forward", "sampler", "order and noise", "bookkeeping", "total")
    rows = [f"ms per generation of {profile['new_tokens']} new tokens, by stage "
            f"(diffusion: {profile['models']['diffusion']}; AR: {profile['models']['ar']})",
            f"  {'batch':<7}{'model':<11}" + "".join(f"{s:>17}" for s in stages)]
    for batch, r in profile["by_batch"].items():
        for side in ("diffusion", "ar"):
            rows.append(f"  {batch:<7}{side:<11}" + "".join(
                f"{r[side][s]:>17.1f}" if s in r[side] else f"{'-':>17}" for s in stages))
    first = next(iter(profile["by_batch"].values()))
    rows += [f"  diffusion: {first['diffusion']['label']}", f"  AR: {first['ar']['label']}"]
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------
# 3. The quick test, end to end, on CPU
# ---------------------------------------------------------------------------------------------


def run_logged(cmd: list[str], log: str) -> float:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # the quick test's figure is a CPU figure
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - t0
    if rc:
        with open(log) as f:
            tail = f.read()[-2000:]
        raise RuntimeError(f"{' '.join(cmd)} exited with {rc}:\n{tail}")
    return seconds


def bench_quick_test(work: str) -> dict:
    out = os.path.join(work, "quick-test")
    print(f"[3/3] quick test on CPU: train.py --quick-test --output-dir {out} (minutes)", flush=True)
    train_s = run_logged([sys.executable, "train.py", "--quick-test", "--output-dir", out],
                         os.path.join(work, "quick-test-train.log"))
    gen_s = run_logged([sys.executable, "generate.py", "--checkpoint", os.path.join(out, "final-model"),
                        "--out", os.path.join(work, "generations.jsonl")], os.path.join(work, "quick-test-generate.log"))
    return {"train_s": train_s, "generate_s": gen_s, "total_s": train_s + gen_s,
            "command": "python train.py --quick-test --output-dir DIR && python generate.py --checkpoint DIR/final-model"}


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def table(report: dict) -> str:
    s, t = report["settings"], report["training"]
    rows = [f"training, {s['arch']} {s['layers']}x{s['hidden']}, vocab {s['vocab']}, sequence {s['seq_len']}, "
            f"{report['machine'].get('gpu', report['machine']['cpu'])}",
            f"  {'':<12}{'this repo':>22}{'reference':>22}{'ratio':>9}",
            f"  {'tokens/s':<12}{t['repo']['tokens_per_s']:>22,.0f}{t['reference']['tokens_per_s']:>22,.0f}"
            f"{t['ratio']:>8.2f}x",
            f"  {'ms/step':<12}{t['repo']['step_ms']:>22.1f}{t['reference']['step_ms']:>22.1f}"]
    for key in ("batch_size", "precision", "optim", "lm_head", "data"):
        rows.append(f"  {key:<12}{str(t['repo'][key]):>22}{str(t['reference'][key]):>22}")
    rows += ["", generation_table(report["generation"])]
    q = report["quick_test"]
    rows.append("")
    rows.append("quick test on CPU: skipped" if q is None else
                f"quick test on CPU: train {q['train_s']:.1f}s + generate {q['generate_s']:.1f}s = {q['total_s']:.1f}s")
    return "\n".join(rows)


def generation_table(g: dict) -> str:
    """Seconds for the new tokens per batch: each diffusion setting, the AR baseline, and the
    speed-up (AR seconds / diffusion seconds); each setting named in full below the table."""
    first = next(iter(g["by_batch"].values()))
    names = [k for k in first if k not in NOT_DIFFUSION]
    rows = [f"generation, {g['new_tokens']} new tokens (seconds; forward passes), diffusion "
            f"{g['models']['diffusion']}, AR {g['models']['ar']}; speed-up = AR seconds / diffusion seconds",
            f"  {'batch':<7}" + "".join(f"{n:>30}" for n in names) + f"{'AR + KV cache':>20}"
            + "".join(f"{'speed-up ' + str(i + 1):>13}" for i in range(len(names)))]
    for batch, r in g["by_batch"].items():
        cell = lambda m: f"{r[m]['seconds']:.3f}s; {r[m]['forward_passes']}"  # noqa: E731
        rows.append(f"  {batch:<7}" + "".join(f"{cell(n):>30}" for n in names) + f"{cell('ar_kv_cache'):>20}"
                    + "".join(f"{r['speedup'][n]:>12.2f}x" for n in names))
    rows += [f"  {i + 1}. {n}: {first[n]['label']}" for i, n in enumerate(names)]
    rows.append(f"  AR: decoding.ar_generate, {first['ar_kv_cache']['label']} (fast_gpt2's step)")
    rows += [f"  batch {batch}, the AR through transformers' forward: {r['ar_transformers']['seconds']:.3f}s, "
             f"{r['ar_transformers']['speedup']:.2f}x the defaults' time" for batch, r in g["by_batch"].items()
             if "ar_transformers" in r]
    rows += [f"  batch {batch}, each side at its faster thread count: " + best_threads_text(r["best_threads"])
             for batch, r in g["by_batch"].items() if "best_threads" in r]
    return "\n".join(rows)


def best_threads_text(b: dict) -> str:
    s, t = b["seconds"], b["threads"]
    return (f"defaults {s['defaults']:.3f}s ({t['defaults']} thread{'s' * (t['defaults'] > 1)}), AR "
            f"{s['ar_kv_cache']:.3f}s ({t['ar_kv_cache']} thread{'s' * (t['ar_kv_cache'] > 1)}): "
            f"{b['speedup']:.2f}x")


# ---------------------------------------------------------------------------------------------
# README.md's Performance tables, rendered from a bench JSON (--render)
# ---------------------------------------------------------------------------------------------


def md_training(report: dict) -> list[str]:
    s, t = report["settings"], report["training"]
    return ["| training | this repo | reference | ratio |", "|---|---|---|---|",
            f"| tokens/s, {s['arch']} {s['layers']}x{s['hidden']}, vocab {s['vocab']:,}, sequence {s['seq_len']} | "
            f"{t['repo']['tokens_per_s']:,.0f} (batch {t['repo']['batch_size']}) | "
            f"{t['reference']['tokens_per_s']:,.0f} (batch {t['reference']['batch_size']}) | {t['ratio']:.2f}x |", ""]


def md_generation(g: dict) -> list[str]:
    first = next(iter(g["by_batch"].values()))
    names = [k for k in first if k not in NOT_DIFFUSION]
    rows = [f"| {g['new_tokens']} new tokens | batch | seconds (forward passes) | AR + KV cache, same sampler | "
            f"AR / diffusion | FLOPs per sample |", "|---|---|---|---|---|---|"]
    for name in names:
        for batch, r in g["by_batch"].items():
            fl = g.get("flops_per_sample", {})
            rows.append(f"| {first[name]['label']} | {batch} | {r[name]['seconds']:.3f} ({r[name]['forward_passes']}) | "
                        f"{r['ar_kv_cache']['seconds']:.3f} ({r['ar_kv_cache']['forward_passes']}) | "
                        f"**{r['speedup'][name]:.2f}x** | "
                        f"{fl.get(name, 0) / 1e6:.0f}M vs {fl.get('ar_kv_cache', 0) / 1e6:.0f}M |")
    rows += ["", f"(diffusion: {g['models']['diffusion']}; AR: {g['models']['ar']}, decoding.ar_generate through "
                 f"fast_gpt2's step, {first['ar_kv_cache']['label']}; times alternate between the sides, fastest "
                 f"round of each)", ""]
    if "ar_transformers" in first:
        rows += ["The same AR generation through transformers' own forward and cache (the same tokens; what the AR "
                 "side ran before `fast_gpt2.py`), timed in the same rounds: how much of a ratio is per-call "
                 "machinery rather than decoding:", "",
                 "| batch | AR, fast_gpt2, s | AR, transformers' forward, s | defaults, s | "
                 "transformers' AR / defaults |", "|---|---|---|---|---|"]
        rows += [f"| {batch} | {r['ar_kv_cache']['seconds']:.3f} | {r['ar_transformers']['seconds']:.3f} | "
                 f"{r['defaults']['seconds']:.3f} | {r['ar_transformers']['speedup']:.2f}x |"
                 for batch, r in g["by_batch"].items()]
        rows.append("")
    best = [(batch, r["best_threads"]) for batch, r in g["by_batch"].items() if "best_threads" in r]
    if best:
        rows += ["The defaults and the AR again on one torch thread, and their ratio with each side at its faster "
                 "thread count (a second thread can slow a small model down, and not both sides alike):", "",
                 "| batch | defaults, s: 1 thread / all | AR, s: 1 thread / all | each side at its faster count |",
                 "|---|---|---|---|"]
        rows += [f"| {batch} | {b['one_thread']['defaults']:.3f} / {g['by_batch'][batch]['defaults']['seconds']:.3f} | "
                 f"{b['one_thread']['ar_kv_cache']:.3f} / {g['by_batch'][batch]['ar_kv_cache']['seconds']:.3f} | "
                 f"**{b['speedup']:.2f}x** |" for batch, b in best]
        rows.append("")
    return rows


def md_profile(p: dict) -> list[str]:
    stages = ("model forward", "sampler", "order and noise", "bookkeeping", "total")
    rows = ["| batch | model | " + " | ".join(stages) + " |", "|---" * (len(stages) + 2) + "|"]
    for batch, r in p["by_batch"].items():
        for side in ("diffusion", "ar"):
            rows.append(f"| {batch} | {side} | " + " | ".join(
                f"{r[side][s]:.1f}" if s in r[side] else "-" for s in stages) + " |")
    first = next(iter(p["by_batch"].values()))
    rows += ["", f"(ms per generation of {p['new_tokens']} new tokens; diffusion: {first['diffusion']['label']}; "
                 f"AR: {first['ar']['label']}; models: {p['models']['diffusion']}, {p['models']['ar']})", ""]
    if "samplers" in first:
        rows += ["One draw at every position of fully masked canvases (the first pass's logits), the two samplers "
                 "alternating:", "", "| batch | positions | nucleus p, ms | top-k, ms | nucleus / top-k |",
                 "|---|---|---|---|---|"]
        rows += [f"| {b} | {r['samplers']['positions']} | {r['samplers']['nucleus_ms']:.2f} (p {r['samplers']['p']}) | "
                 f"{r['samplers']['topk_ms']:.2f} (k {r['samplers']['k']}) | {r['samplers']['nucleus_over_topk']:.2f}x |"
                 for b, r in p["by_batch"].items() if "samplers" in r]
        rows.append("")
    return rows


def readme_markdown(report: dict) -> str:
    """The Performance tables of a bench JSON as markdown, with the machine and the command."""
    m, v = report["machine"], report["versions"]
    rows = [f"Measured with `{report['command']}` on {m.get('gpu', m['cpu'])} ({m['cpu_count']} CPUs, "
            f"{m['torch_threads']} torch threads, load average {m.get('load_average_1min')} at the start), "
            f"torch {v['torch']}, transformers {v['transformers']}:", ""]
    if "training" in report:
        rows += md_training(report)
    if "generation" in report:
        rows += md_generation(report["generation"])
    if "profile" in report:
        rows += md_profile(report["profile"])
    q = report.get("quick_test")
    if q:
        rows += [f"The quick test: train {q['train_s']:.0f} s + generate {q['generate_s']:.0f} s = "
                 f"**{q['total_s']:.0f} s**.", ""]
    return "\n".join(rows).rstrip() + "\n"


def render_command(path: str) -> str:
    return f"python bench.py --render {path}"


def load_report(path: str) -> dict:
    import json

    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"--render {path}: not a readable bench JSON ({e})")


def main(argv=None) -> int:
    args, argv = resolve(argv)
    if args.render:
        from report import render_into

        render_into(os.path.join(ROOT, "README.md"), render_command(args.render), readme_markdown(load_report(args.render)))
        print(f"wrote README.md's tables from {args.render}")
        return 0
    from files import check_output, write_json

    check_output(args.out, "--out")  # before minutes of work
    from transformers.utils import logging as hf_logging

    from data import get_tokenizer
    from metrics import machine, versions

    check_models(args)
    hf_logging.set_verbosity_error()  # the Trainer's and generate's advice is noise in a benchmark
    hf_logging.disable_progress_bar()
    tokenizer = get_tokenizer(repo_config(args, args.seq_len, "unused"))
    args = dataclasses.replace(args, vocab=args.vocab or len(tokenizer))
    if args.vocab < len(tokenizer):
        raise UsageError(f"--vocab {args.vocab} is smaller than the tokenizer's {len(tokenizer)} tokens")
    check_sizes(args)
    t0 = time.time()
    report = {"settings": dataclasses.asdict(args), "versions": versions(), "machine": machine(),
              "command": " ".join(["python", "bench.py", *argv])}
    if args.profile:
        report["profile"] = bench_profile(args, tokenizer)
        show = profile_table(report["profile"])
    else:
        work = tempfile.mkdtemp(prefix="bench-")
        try:
            report["training"] = bench_training(args, tokenizer, work)
            report["generation"] = bench_generation(args, tokenizer)
            report["quick_test"] = None if args.skip_quick_test else bench_quick_test(work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        show = table(report)
    report["wall_s"] = time.time() - t0
    print()
    print(show)
    write_json(args.out, report)
    print(f"\nwrote {args.out} ({report['wall_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
