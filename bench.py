"""Benchmark this repo's training and generation against the reference pipeline, side by side.

    python bench.py                   # GPU if one is visible: roberta-base shape, sequence 256
    python bench.py --device cpu      # quick-test shape, plus the quick test's wall time
    python bench.py --small           # tiny shapes, a smoke test (CI runs it)

One run measures, on the same model shape, data and machine:
  1. training tokens/s. This repo: pre-tokenised packed blocks (data.build_datasets), the
     DiffusionCollator, the LM head on masked positions only, fused AdamW, bf16 autocast on CUDA,
     the batch size of the config for that size (trainer.speed_arguments, config.MODEL_PRESETS).
     The reference is the pipeline shape of the original RoBERTa-diffusion code, built here: the HF Trainer in fp32 at batch 16,
     raw text tokenised by the collator on every batch, vocabulary logits at every position
     (the model's own MLM loss).
  2. seconds to write 256 new tokens: 10-step schedule decoding and threshold decoding
     (decoding.generate) vs a GPT-2-shaped model of equal size with its KV cache (HF generate),
     at batch 1 and 16. Weights are random: this times the work, not the text.
  3. the quick test's wall time on CPU: `train.py --quick-test` + `generate.py`, as subprocesses
     into a temporary folder.
Prints a table with ratios (this repo / baseline) and writes JSON with the resolved settings,
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
    out: str = flag("results/bench.json", "JSON written here")
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
    # generation measurement
    gen_length: int = flag(256, "new tokens per sample", min=1)
    gen_steps: int = flag(10, "denoising steps of schedule decoding", min=1)
    gen_batches: str = flag("1,16", "comma-separated batch sizes")
    gen_repeats: int = flag(3, "timed repeats after one warm-up; the fastest is kept", min=1, max=100)
    threshold: float = flag(0.9, "confidence of threshold decoding", above=0, max=1)
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
                num_workers=MODEL_PRESETS["roberta-base"]["num_workers"]),
    "small": dict(layers=1, hidden=64, heads=2, intermediate=128, warmup=2, steps=6, rounds=1, gen_length=32,
                  gen_repeats=1, skip_quick_test=True),
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
    return bc, argv


def check_sizes(args) -> None:
    """Both measurements fit this machine: one training step of the model, each generation batch."""
    from config import GenConfig
    from limits import check_generation, check_training, scratch_params

    cfg = repo_config(args, args.seq_len, "unused")
    check_training(cfg, args.vocab, scratch_params(cfg, args.vocab), args.device)
    for batch in args.batches():
        gc = GenConfig(length=args.gen_length, steps=args.gen_steps, num_samples=batch, out="")
        check_generation(gc, args.gen_length + 2, args.vocab, args.gen_length, args.gen_length, args.device)


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
# 2. Generation latency
# ---------------------------------------------------------------------------------------------


def timed(fn, device, repeats: int) -> tuple[float, object]:
    """(fastest of `repeats` calls in seconds, the last result): on a shared machine the slower
    calls measure the neighbours."""
    times, out = [], None
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times), out


def bench_generation(args, tokenizer) -> dict:
    import torch

    from config import GenConfig
    from decoding import generate
    from modeling import autocast, n_params
    from tokens import bos_eos

    device = torch.device(args.device)
    window = args.gen_length + 2  # <s> + new tokens + </s>
    cfg = repo_config(args, window, "unused")
    diffusion = encoder(cfg, tokenizer, args.vocab).to(device).eval()
    ar = gpt2_like(diffusion, args.gen_length + 1, tokenizer).to(device).eval()
    bos, eos = bos_eos(tokenizer)
    out = {"diffusion_parameters": n_params(diffusion), "ar_parameters": n_params(ar), "window": window,
           "new_tokens": args.gen_length, "by_batch": {}}

    def diffuse(gc):
        g = torch.Generator().manual_seed(args.seed)
        ids, history, _ = generate(diffusion, tokenizer, gc, window, g)
        assert ids.shape == (gc.num_samples, args.gen_length)
        return len(history)

    @torch.no_grad()
    def autoregress(batch, new_tokens):
        torch.manual_seed(args.seed)  # HF generate samples from the global generator
        ids = torch.full((batch, 1), bos, device=device)  # [B, 1]
        with autocast(device):
            seq = ar.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, do_sample=True, top_k=50, use_cache=True,
                              pad_token_id=eos)  # [B, 1 + new_tokens]
        assert seq.shape == (batch, 1 + new_tokens)
        return new_tokens

    for batch in args.batches():
        print(f"[2/3] generation, {args.gen_length} new tokens at batch {batch}", flush=True)
        schedule = GenConfig(length=args.gen_length, steps=args.gen_steps, num_samples=batch, out="")
        threshold = dataclasses.replace(schedule, decode="threshold", threshold=args.threshold)
        diffuse(schedule)  # warm-up: kernels, allocator
        autoregress(batch, 8)
        s_sched, passes_sched = timed(lambda: diffuse(schedule), device, args.gen_repeats)
        # one call: on random weights it makes one pass per new token, which already averages
        s_thr, passes_thr = timed(lambda: diffuse(threshold), device, 1)
        s_ar, passes_ar = timed(lambda: autoregress(batch, args.gen_length), device, args.gen_repeats)
        out["by_batch"][str(batch)] = {
            "diffusion_schedule": {"seconds": s_sched, "forward_passes": passes_sched},
            "diffusion_threshold": {"seconds": s_thr, "forward_passes": passes_thr},
            "autoregressive_kv_cache": {"seconds": s_ar, "forward_passes": passes_ar},
            "speedup_schedule": s_ar / s_sched, "speedup_threshold": s_ar / s_thr,
        }
    return out


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
    g = report["generation"]
    rows += ["", f"generation, {g['new_tokens']} new tokens (seconds; forward passes)   "
                 f"speed-up = autoregressive time / diffusion time",
             f"  {'batch':<7}{'diffusion 10-step':>20}{'threshold':>18}{'AR + KV cache':>18}"
             f"{'speed-up':>10}{'thr. speed-up':>15}"]
    for batch, r in g["by_batch"].items():
        cell = lambda m: f"{r[m]['seconds']:.3f}s; {r[m]['forward_passes']}"  # noqa: E731
        rows.append(f"  {batch:<7}{cell('diffusion_schedule'):>20}{cell('diffusion_threshold'):>18}"
                    f"{cell('autoregressive_kv_cache'):>18}{r['speedup_schedule']:>9.1f}x{r['speedup_threshold']:>14.2f}x")
    q = report["quick_test"]
    rows.append("")
    rows.append("quick test on CPU: skipped" if q is None else
                f"quick test on CPU: train {q['train_s']:.1f}s + generate {q['generate_s']:.1f}s = {q['total_s']:.1f}s")
    return "\n".join(rows)


def main(argv=None) -> int:
    args, argv = resolve(argv)
    from files import check_output, write_json

    check_output(args.out, "--out")  # before minutes of work
    from transformers.utils import logging as hf_logging

    from data import get_tokenizer
    from metrics import machine, versions

    hf_logging.set_verbosity_error()  # the Trainer's and generate's advice is noise in a benchmark
    hf_logging.disable_progress_bar()
    tokenizer = get_tokenizer(repo_config(args, args.seq_len, "unused"))
    args = dataclasses.replace(args, vocab=args.vocab or len(tokenizer))
    if args.vocab < len(tokenizer):
        raise UsageError(f"--vocab {args.vocab} is smaller than the tokenizer's {len(tokenizer)} tokens")
    check_sizes(args)
    t0 = time.time()
    work = tempfile.mkdtemp(prefix="bench-")
    try:
        report = {"settings": dataclasses.asdict(args), "versions": versions(), "machine": machine(),
                  "command": " ".join(["python", "bench.py", *argv])}
        report["training"] = bench_training(args, tokenizer, work)
        report["generation"] = bench_generation(args, tokenizer)
        report["quick_test"] = None if args.skip_quick_test else bench_quick_test(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["wall_s"] = time.time() - t0
    print()
    print(table(report))
    write_json(args.out, report)
    print(f"\nwrote {args.out} ({report['wall_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
