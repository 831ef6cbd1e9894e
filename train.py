"""Train a masked LM at every masking rate: discrete text diffusion with a HF Trainer.

    python train.py --quick-test                      # offline, ~2.5 min on 2 CPU cores
    python train.py --model roberta-base --dataset wikitext --dataset-config wikitext-2-raw-v1
    python train.py --dataset path/to/folder_of_txt   # your own text
    python train.py --quick-test --resume             # continue from the newest checkpoint
    accelerate launch --num_processes 2 train.py ...  # several GPUs (or torchrun)

Writes to --output-dir (default results/): checkpoint-N/ and final-model/ (model, tokenizer,
diffusion_config.json), metrics.jsonl (one JSON object per log/eval), loss_by_level.csv and
loss_by_level.png (loss vs step, one curve per masking level).
"""

import argparse
import csv
import dataclasses
import json
import math
import os
import shutil
import sys
import time

import torch

from config import (TrainConfig, UsageError, add_args, cli, format_config, given, load_train_config,
                    resolve_train_config, save_config)
from data_collator import DiffusionCollator, mask_tokens, protected_positions, prefix_lengths
from modeling import autocast, masked_lm_loss


def nearest_level(rate: float, levels: list[float]) -> float:
    return min(levels, key=lambda lv: abs(lv - rate))


def report_levels(cfg: TrainConfig) -> list[float]:
    """Levels that losses are reported at: the training levels, or 0.1..1.0 for continuous rates."""
    return cfg.levels() if cfg.mask_distribution == "levels" else [round(0.1 * i, 1) for i in range(1, 11)]


# ---------------------------------------------------------------------------------------------
# Held-out loss at every masking level, and the ELBO bound
# ---------------------------------------------------------------------------------------------


def eval_batches(val_ds, batch_size: int, n_batches: int):
    """The first n_batches of the held-out set, always the same ones: [b, L] id tensors."""
    n = min(len(val_ds), batch_size * n_batches)
    ids = val_ds[:n]["input_ids"]  # [n, L]
    return [ids[i:i + batch_size] for i in range(0, n, batch_size)]


@torch.no_grad()
def level_losses(model, batches, tokenizer, cfg: TrainConfig, levels: list[float], seed: int = 0) -> dict:
    """Mean CE over masked tokens at each fixed masking rate, with the same masks every call
    (seeded per level) so evaluations are comparable across training."""
    from data_collator import special_token_ids

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    special = special_token_ids(tokenizer)
    out = {}
    for i, level in enumerate(levels):
        g = torch.Generator().manual_seed(seed + i)
        total, count = 0.0, 0
        for ids in batches:
            prefix = prefix_lengths(len(ids), cfg.prefix_mode, cfg.prefix_len, g)
            inputs, labels = mask_tokens(ids, torch.full((len(ids),), level),
                                         protected_positions(ids, special, prefix), tokenizer.mask_token_id, g)
            with autocast(device, cfg.precision):
                _, ce, _ = masked_lm_loss(model, inputs.to(device), None, labels.to(device))
            total += ce.sum().item()
            count += ce.numel()
        out[level] = total / max(count, 1)
    model.train(was_training)
    return out


def elbo_bound(losses: dict) -> float:
    """Nats/token upper bound on NLL: the area under loss-vs-masking-rate (MDLM), integrated
    over t in [0, 1] by the trapezoid rule with loss(0) taken as loss at the lowest level."""
    ts = sorted(losses)
    xs, ys = [0.0] + ts, [losses[ts[0]]] + [losses[t] for t in ts]
    if xs[-1] < 1.0:  # extend flat to t = 1
        xs, ys = xs + [1.0], ys + [ys[-1]]
    return sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(len(xs) - 1))


@torch.no_grad()
def show_predictions(model, ids: torch.Tensor, tokenizer, rates=(0.15, 0.5, 0.9), seed: int = 0) -> str:
    """One held-out sequence masked at a few rates, with the model's argmax fills in [brackets]."""
    from data_collator import special_token_ids

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    protected = protected_positions(ids[None], special_token_ids(tokenizer), torch.zeros(1, dtype=torch.long))
    lines = []
    for rate in rates:
        inputs, labels = mask_tokens(ids[None], torch.tensor([rate]), protected, tokenizer.mask_token_id, g)
        where = labels != -100  # [1, L]
        with autocast(device):
            from modeling import masked_logits
            pred = masked_logits(model, inputs.to(device), None, where.to(device)).argmax(-1).cpu()
        pieces, j = [], 0
        for pos in range(1, ids.shape[0] - 1):
            if where[0, pos]:
                pieces.append("[" + tokenizer.decode([int(pred[j])]).strip() + "]")
                j += 1
            else:
                pieces.append(tokenizer.decode([int(ids[pos])]))
        acc = (pred == labels[where]).float().mean().item()
        text = "".join(p if not p.startswith("[") else " " + p for p in pieces).replace("\n", " ")
        lines.append(f"  {int(rate * 100):>3}% masked, {acc:.0%} of fills right: {text[:300]}")
    model.train(was_training)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Trainer with the diffusion loss and per-level bookkeeping
# ---------------------------------------------------------------------------------------------


def make_trainer_class():
    from transformers import Trainer

    class DiffusionTrainer(Trainer):
        """HF Trainer whose loss is CE at masked positions (LM head on those only), which keeps
        a running training loss per masking level, and whose evaluate() scores every level."""

        def __init__(self, *a, diffusion_cfg: TrainConfig, tokenizer, **kw):
            super().__init__(*a, **kw)
            self.cfg = diffusion_cfg
            self.tok = tokenizer
            self.levels = report_levels(diffusion_cfg)
            self.level_sums = {lv: [0.0, 0] for lv in self.levels}
            self.eval_set = None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            rates = inputs["mask_rate"]  # [B]
            loss, ce, rows = masked_lm_loss(model, inputs["input_ids"], inputs["attention_mask"],
                                            inputs["labels"], rates, self.cfg.loss_weighting,
                                            self.cfg.masked_only_head)
            with torch.no_grad():  # running loss per level, reported at the next log
                for rate, s, n in zip(rates.tolist(),
                                      torch.zeros(len(rates), device=ce.device).index_add_(0, rows, ce.detach()).tolist(),
                                      torch.bincount(rows, minlength=len(rates)).tolist()):
                    acc = self.level_sums[nearest_level(rate, self.levels)]
                    acc[0] += s
                    acc[1] += n
            return (loss, None) if return_outputs else loss

        def log(self, logs, start_time=None):
            if "loss" in logs:  # a training log: attach and reset the per-level averages
                for lv, (s, n) in self.level_sums.items():
                    if n:
                        logs[f"train_mask_{lv}"] = s / n
                self.level_sums = {lv: [0.0, 0] for lv in self.levels}
            super().log(logs, start_time)

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            if self.eval_set is None:
                self.eval_set = eval_batches(self.eval_dataset, self.args.per_device_train_batch_size,
                                             self.cfg.eval_batches)
            model = self.model
            losses = level_losses(model, self.eval_set, self.tok, self.cfg, self.levels, seed=self.cfg.seed)
            bound = elbo_bound(losses)
            metrics = {f"eval_mask_{lv}": v for lv, v in losses.items()}
            metrics.update(eval_elbo_nats=bound, eval_elbo_ppl=math.exp(min(bound, 50)))
            self.log(metrics)
            if self.is_world_process_zero():
                print(show_predictions(model, self.eval_set[0][0], self.tok, seed=self.cfg.seed), flush=True)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

        def _save(self, output_dir=None, state_dict=None):
            super()._save(output_dir, state_dict)
            save_config(self.cfg, output_dir or self.args.output_dir)  # every checkpoint knows its settings

    return DiffusionTrainer


# ---------------------------------------------------------------------------------------------
# Logging: one fixed block per interval, metrics.jsonl, CSV and PNG
# ---------------------------------------------------------------------------------------------


def level_block(prefix: str, values: dict) -> str:
    """`  train mask_0.1: 4.123  (10% masked - easiest)` lines, hardest last."""
    levels = sorted(values)
    lines = []
    for lv in levels:
        tag = " - easiest" if lv == levels[0] else " - hardest" if lv == levels[-1] else ""
        lines.append(f"  {prefix} mask_{lv}: {values[lv]:.3f}  ({lv:.0%} masked{tag})")
    return "\n".join(lines)


def metrics_by_level(logs: dict, prefix: str) -> dict:
    return {float(k[len(prefix):]): v for k, v in logs.items() if k.startswith(prefix)}


def make_log_callback(out_dir: str, max_steps: int):
    from transformers import TrainerCallback

    class DiffusionLog(TrainerCallback):
        def __init__(self):
            self.t0 = time.time()
            self.step0 = None

        def on_log(self, args, state, control, logs=None, **kw):
            if not state.is_world_process_zero or not logs:
                return
            step = state.global_step
            row = {"step": step, "time": round(time.time() - self.t0, 2), **logs}
            with open(os.path.join(out_dir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(row) + "\n")
            if "loss" in logs:
                self.step0 = step if self.step0 is None else self.step0
                rate = (step - self.step0) / max(time.time() - self.t0, 1e-9) if step > self.step0 else 0.0
                eta = (max_steps - step) / rate if rate else float("nan")
                eta_s = f"{int(eta // 60)}m{int(eta % 60):02d}s" if rate else "?"
                print(f"step {step}/{max_steps} | train loss {logs['loss']:.4f} | lr {logs.get('learning_rate', 0):.2e}"
                      f" | {rate:.2f} steps/s | eta {eta_s}", flush=True)
                print(level_block("train", metrics_by_level(logs, "train_mask_")), flush=True)
            if "eval_elbo_nats" in logs:
                print(f"eval step {step} | held-out ELBO bound {logs['eval_elbo_nats']:.3f} nats/token"
                      f" = perplexity <= {logs['eval_elbo_ppl']:.1f}", flush=True)
                print(level_block("eval", metrics_by_level(logs, "eval_mask_")), flush=True)
                write_curves(out_dir)

        def on_train_end(self, args, state, control, **kw):
            if state.is_world_process_zero:
                write_curves(out_dir)

    return DiffusionLog()


def read_metrics(out_dir: str) -> list[dict]:
    path = os.path.join(out_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_curves(out_dir: str) -> None:
    """loss_by_level.csv (step, split, level, loss) and loss_by_level.png from metrics.jsonl."""
    rows = read_metrics(out_dir)
    table = [(r["step"], split, lv, v) for r in rows for split in ("train", "eval")
             for lv, v in metrics_by_level(r, f"{split}_mask_").items()]
    with open(os.path.join(out_dir, "loss_by_level.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "split", "mask_level", "loss"])
        w.writerows(table)
    if table:
        plot_curves(rows, os.path.join(out_dir, "loss_by_level.png"))


def plot_curves(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    levels = sorted({lv for r in rows for lv in metrics_by_level(r, "train_mask_")} |
                    {lv for r in rows for lv in metrics_by_level(r, "eval_mask_")})
    cmap = plt.get_cmap("viridis")
    for ax, split, title in ((axes[0], "train", "Training loss (running mean)"),
                             (axes[1], "eval", "Held-out loss")):
        for i, lv in enumerate(levels):
            pts = [(r["step"], r[f"{split}_mask_{lv}"]) for r in rows if f"{split}_mask_{lv}" in r]
            if pts:
                ax.plot(*zip(*pts), marker="o" if split == "eval" else None, ms=3,
                        color=cmap(i / max(len(levels) - 1, 1)), label=f"{lv:.0%} masked")
        ax.set(title=f"{title} per masking level", xlabel="step", ylabel="cross-entropy (nats/token)")
        ax.grid(alpha=0.3)
    (axes[0] if axes[0].lines else axes[1]).legend(fontsize=7, ncol=2)
    pts = [(r["step"], r["eval_elbo_ppl"]) for r in rows if "eval_elbo_ppl" in r]
    if pts:
        axes[2].plot(*zip(*pts), marker="o", color="crimson")
        axes[2].set_yscale("log")
    axes[2].set(title="Held-out ELBO perplexity bound", xlabel="step", ylabel="perplexity (upper bound)")
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def check_writable(folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, ".write-test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UsageError(f"output dir {folder} is not writable ({e.strerror})")


def last_complete_checkpoint(out: str) -> str | None:
    """The newest checkpoint-N in `out` that was written to the end. The Trainer writes
    trainer_state.json last, so a run killed while saving leaves a newer folder without it;
    resuming from that one would fail or lose the optimiser state."""
    steps = []
    for name in os.listdir(out) if os.path.isdir(out) else []:
        if name.startswith("checkpoint-") and name[len("checkpoint-"):].isdigit():
            steps.append(int(name[len("checkpoint-"):]))
    for step in sorted(steps, reverse=True):
        folder = os.path.join(out, f"checkpoint-{step}")
        if all(os.path.isfile(os.path.join(folder, f)) for f in ("trainer_state.json", "diffusion_config.json")):
            return folder
        print(f"skipping {folder}: written only in part (the run was stopped while saving it)", flush=True)
    return None


def resume_config(args) -> tuple[TrainConfig, str]:
    """On --resume: the newest complete checkpoint and its saved config, with explicit flags on top."""
    out = args.output_dir or TrainConfig.output_dir
    last = last_complete_checkpoint(out)
    if last is None:
        raise UsageError(f"--resume: no checkpoint-N folder in {out} (train without --resume first)")
    saved = load_train_config(last)
    flags = {k: v for k, v in given(args, TrainConfig).items() if k not in ("resume", "quick_test")}
    return TrainConfig(**{**dataclasses.asdict(saved), **flags, "resume": True}), last


def precision_flags(cfg: TrainConfig) -> dict:
    cuda = torch.cuda.is_available()
    p = cfg.precision
    if p == "auto":
        p = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if p in ("bf16", "fp16") and not cuda:
        raise UsageError(f"--precision {p} needs a CUDA GPU; use fp32 or auto on CPU")
    return {"bf16": p == "bf16", "fp16": p == "fp16"}


def speed_arguments(cfg: TrainConfig) -> dict:
    """The TrainingArguments behind the speed fields of TrainConfig (bench.py times the Trainer
    with exactly these). torch_compile is not among them: the Trainer would wrap the model in an
    OptimizedModule that masked_logits cannot see through, silently computing the full LM head;
    main() compiles the encoder in place instead (modeling.compile_model)."""
    cuda = torch.cuda.is_available()
    return {
        # persistent workers keep each worker's mask generator running across epochs (a restarted
        # worker would replay the same masks every epoch) and skip the restart cost
        "dataloader_num_workers": cfg.num_workers, "dataloader_persistent_workers": cfg.num_workers > 0,
        "dataloader_pin_memory": cuda,
        # fused AdamW runs on CPU too, where torch's default is a slow per-tensor loop
        "optim": "adamw_torch_fused" if cfg.fused_adamw else "adamw_torch",
        **precision_flags(cfg),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(parser, TrainConfig)
    args = parser.parse_args(argv)
    checkpoint = None
    if args.resume:
        cfg, checkpoint = resume_config(args)
    else:
        cfg = resolve_train_config(args)
    check_writable(cfg.output_dir)

    from transformers import TrainingArguments, set_seed
    from transformers.trainer_callback import ProgressCallback
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the Trainer's own bar stays; loading/saving bars go
    from data import build_datasets, get_tokenizer, load_documents

    is_main = int(os.environ.get("RANK", "0")) == 0
    if is_main:
        print("resolved config:\n" + format_config(cfg), flush=True)
    set_seed(cfg.seed)

    # 1. data: documents -> tokenizer -> packed blocks (all cached after the first run).
    # Under torchrun/accelerate, rank 0 builds the cache while the other ranks wait, then they
    # read it: several ranks writing the same cache folder at once crash on a fresh box.
    # Several processes without CUDA must be told to run on CPU (gloo), else each one trains
    # alone as world size 1 and they overwrite each other's outputs.
    from accelerate import PartialState

    cpu_ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    with PartialState(cpu=cpu_ddp).local_main_process_first():  # per node: each has its own disk
        docs = None
        if cfg.model == "scratch":
            docs = load_documents(cfg)
        tokenizer = get_tokenizer(cfg, docs)
        train_ds, val_ds = build_datasets(cfg, tokenizer, docs)
    if is_main:
        print(f"data: {len(train_ds)} train / {len(val_ds)} held-out blocks of {cfg.max_len} tokens", flush=True)

    # 2. model
    from modeling import build_model

    model = build_model(cfg, tokenizer)
    if is_main:
        n = sum(p.numel() for p in model.parameters())
        print(f"model: {type(model).__name__}, {n / 1e6:.1f}M parameters, "
              f"{model.config._attn_implementation} attention", flush=True)

    # 3. trainer
    if cfg.torch_compile:
        from modeling import compile_model

        compile_model(model, cfg.masked_only_head)
    targs = TrainingArguments(
        output_dir=cfg.output_dir, max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps, lr_scheduler_type=cfg.lr_scheduler,
        logging_steps=cfg.logging_steps, eval_strategy="steps", eval_steps=cfg.eval_steps,
        eval_on_start=checkpoint is None,  # held-out losses at step 0: the baseline every level falls from
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit,
        seed=cfg.seed, data_seed=cfg.seed, report_to="none", remove_unused_columns=False,
        disable_tqdm=not is_main, use_cpu=cpu_ddp, **speed_arguments(cfg),
    )
    trainer = make_trainer_class()(
        model=model, args=targs, train_dataset=train_ds, eval_dataset=val_ds,
        data_collator=DiffusionCollator(tokenizer, cfg), processing_class=tokenizer,
        diffusion_cfg=cfg, tokenizer=tokenizer)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(_quiet_progress())
    trainer.add_callback(make_log_callback(cfg.output_dir, cfg.max_steps))
    if is_main:
        save_config(cfg, cfg.output_dir)
        if checkpoint is None and os.path.exists(os.path.join(cfg.output_dir, "metrics.jsonl")):
            os.remove(os.path.join(cfg.output_dir, "metrics.jsonl"))  # a fresh run starts a fresh log

    # 4. train, evaluate, save
    trainer.train(resume_from_checkpoint=checkpoint)
    if trainer.state.global_step % cfg.eval_steps:
        trainer.evaluate()
    final = os.path.join(cfg.output_dir, "final-model")
    trainer.save_model(final + ".tmp")
    if trainer.is_world_process_zero():
        shutil.rmtree(final, ignore_errors=True)
        os.replace(final + ".tmp", final)  # a killed save never leaves a half-written final-model
        print(f"saved {final} (load with AutoModelForMaskedLM.from_pretrained)", flush=True)
    return 0


def _quiet_progress():
    from transformers.trainer_callback import ProgressCallback

    class QuietProgress(ProgressCallback):
        """The Trainer's tqdm bar without its dict dump on every log (DiffusionLog prints those)."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            return control

    return QuietProgress


if __name__ == "__main__":
    sys.exit(cli(main))
