"""The diffusion model's training machinery on the HF Trainer: the loss, held-out evaluation at
every masking level, one log line per interval, metrics.jsonl and its plots, the model card.

    DiffusionTrainer     Trainer whose loss is CE at masked positions (modeling.training_loss, the
                         LM head there only), with a running training loss per masking level, a
                         finite-loss guard, and an evaluate() that scores every level and the ELBO
                         bound (diffusion.level_losses / elbo_estimate)
    ClassifierTrainer    the same for a noisy-input classifier (--task classify): CE of the label
                         given text masked at a random rate; evaluate() scores accuracy per level
    TASKS                --task -> (collator, trainer)
    RunLog               callback: one line per logging interval, metrics.jsonl, progress.txt
                         (baseline_ar.py's run uses it too)
    TrainClock           seconds in training steps alone: the ETA and speed of the log line and the bar
    log_callbacks        the clock, the progress bar (a terminal: use_bar) and RunLog in place of the
                         Trainer's printing
    training_arguments   TrainingArguments from a TrainConfig (speed_arguments: the speed part)
    write_curves         loss_by_level.csv / .png from metrics.jsonl
    write_model_card     final-model/README.md from the config and the last evaluation
The run's folder (lock, run id, resume, checkpoints, Ctrl-C, final save) is runs.py.
"""

import math
import os
import sys
import time

import torch
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import ProgressCallback

from cli import Diverged, UsageError
from config import TrainConfig, save_config
from diffusion import (bound_prefix, elbo_estimate, eval_batches, level_losses, nearest_level, report_levels,
                       show_predictions)
from data_collator import STATE_FILE as COLLATOR_STATE
from data_collator import ClassifierCollator, DiffusionCollator
from files import append_jsonl, write_atomic, write_csv, write_figure
from modeling import training_loss
from runs import METRICS, PROGRESS, StampsRun, close_progress, last_complete_checkpoint, process_rank, read_metrics

# ---------------------------------------------------------------------------------------------
# The Trainer
# ---------------------------------------------------------------------------------------------


class DiffusionTrainer(StampsRun, Trainer):
    """HF Trainer whose loss is CE at masked positions (LM head on those only), which keeps a
    running training loss per masking level, and whose evaluate() scores every level."""

    def __init__(self, *a, diffusion_cfg: TrainConfig, tokenizer, **kw):
        super().__init__(*a, **kw)
        self.cfg = diffusion_cfg
        self.tok = tokenizer
        self.levels = report_levels(diffusion_cfg)
        self.level_sums = {lv: [0.0, 0] for lv in self.levels}
        self.eval_set = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        rates = inputs["mask_rate"]  # [B]
        loss, ce, rows = training_loss(model, inputs, self.cfg, self.state.global_step)
        with torch.no_grad():  # running loss per level, reported at the next log
            sums = torch.zeros(len(rates), device=ce.device).index_add_(0, rows, ce.detach())  # [B]
            self.track_levels(loss, rates, sums, torch.bincount(rows, minlength=len(rates)))
        return (loss, None) if return_outputs else loss

    def track_levels(self, loss, rates, sums, counts) -> None:
        """Add each row's loss sum and count [B] to its masking level's running mean; a loss that is
        not a number stops the run (Diverged)."""
        sums = sums.tolist()  # the host reads the values anyway: checking them costs nothing more
        if not all(math.isfinite(x) for x in sums):
            raise Diverged(self.diverged_message(f"the training loss is {loss.item()}"))
        for rate, s, n in zip(rates.tolist(), sums, counts.tolist()):
            acc = self.level_sums[nearest_level(rate, self.levels)]
            acc[0] += s
            acc[1] += n

    def log(self, logs, start_time=None):
        if "loss" in logs:  # a training log: attach and reset the per-level averages
            for lv, (s, n) in self.level_sums.items():
                if n:
                    logs[f"train_mask_{lv}"] = s / n
            self.level_sums = {lv: [0.0, 0] for lv in self.levels}
        super().log(logs, start_time)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        cfg, t0 = self.cfg, time.time()
        if self.eval_set is None:
            self.eval_set = eval_batches(self.eval_dataset, self.args.per_device_train_batch_size, cfg.eval_batches)
            n = len(self.eval_dataset) if not cfg.elbo_blocks else min(cfg.elbo_blocks, len(self.eval_dataset))
            self.elbo_set = self.eval_dataset[:n]["input_ids"]  # [M, L]
        losses = level_losses(self.model, self.eval_set, self.tok, cfg, self.levels, seed=cfg.seed)
        bound = elbo_estimate(self.model, self.elbo_set, self.tok, bound_prefix(cfg), cfg.elbo_draws,
                              batch_size=64, g=torch.Generator().manual_seed(cfg.seed), precision=cfg.precision)
        if not math.isfinite(bound["nats_per_token"]):
            raise Diverged(self.diverged_message(f"the held-out bound is {bound['nats_per_token']}"))
        metrics = {f"eval_mask_{lv}": v for lv, v in losses.items()}
        metrics.update(eval_elbo_nats=bound["nats_per_token"], eval_elbo_stderr=bound["nats_stderr"],
                       eval_elbo_ppl=bound["perplexity"], eval_elbo_blocks=bound["blocks"])
        if self.is_world_process_zero():
            fills = show_predictions(self.model, self.eval_set[0][0], self.tok, seed=cfg.seed)
            metrics["eval_fills"] = [{"rate": f["rate"], "accuracy": round(f["accuracy"], 4), "text": f["text"][:160]}
                                     for f in fills]
        metrics["eval_seconds"] = round(time.time() - t0, 2)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def diverged_message(self, what: str) -> str:
        close_progress(self)  # end the progress bar's line before the error line
        last = last_complete_checkpoint(self.args.output_dir, quiet=True)
        keep = f"{os.path.basename(last)} is the last good checkpoint" if last else "no checkpoint was saved"
        return (f"training diverged at step {self.state.global_step}: {what} (learning rate {self.cfg.learning_rate:g}); "
                f"{keep}, nothing after it was saved; lower --learning-rate (or raise --warmup-steps) and train again")

    def _save(self, output_dir=None, state_dict=None):
        out = output_dir or self.args.output_dir
        super()._save(out, state_dict)
        save_config(self.cfg, out)  # every checkpoint knows its settings
        collator = self.data_collator
        if hasattr(collator, "state_before"):
            # the generator as it was before the first batch after this step: a resumed run's first batch
            state = collator.state_before(self.state.global_step * self.args.gradient_accumulation_steps)
            if state is not None:
                torch.save(state, os.path.join(out, COLLATOR_STATE))

    def _issue_warnings_after_load(self, load_result):
        # tied weights (ModernBERT's decoder = its embeddings) are saved once and re-tied on load:
        # their "missing key" is not a lost weight, so it is not worth a warning
        shared = tied_keys(self.model)
        if load_result.missing_keys and set(load_result.missing_keys) <= shared:
            self.model.tie_weights()
            load_result = type(load_result)([], list(load_result.unexpected_keys))
        super()._issue_warnings_after_load(load_result)


class ClassifierTrainer(DiffusionTrainer):
    """A noisy-input classifier p(y | x_t) (--task classify) on the diffusion trainer's machinery:
    the batch is DiffusionCollator's (masked at a random rate) with the class as `labels`; the loss
    is the cross-entropy of the class, tracked per masking level; evaluate() scores held-out
    accuracy and loss at every level with the same masks each time."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits  # [B, C]
        ce = torch.nn.functional.cross_entropy(logits.float(), inputs["labels"], reduction="none")  # [B]
        loss = ce.mean()
        with torch.no_grad():
            self.track_levels(loss, inputs["mask_rate"], ce.detach(), torch.ones_like(ce, dtype=torch.long))
        return (loss, None) if return_outputs else loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        t0 = time.time()
        if self.eval_set is None:  # spread over the held-out set, which is ordered by label
            n = len(self.eval_dataset)
            idx = torch.linspace(0, n - 1, min(n, 1024)).round().long().tolist()
            self.eval_set = (self.eval_dataset[idx]["input_ids"], self.eval_dataset[idx]["label"])  # [M, L], [M]
        scores = classify_levels(self.model, *self.eval_set, self.tok, self.levels, self.cfg.seed)
        metrics = {f"eval_mask_{lv}": ce for lv, (ce, _) in scores.items()}
        metrics.update({f"eval_acc_{lv}": acc for lv, (_, acc) in scores.items()})
        metrics.update(eval_accuracy=sum(a for _, a in scores.values()) / len(scores), eval_blocks=len(self.eval_set[1]),
                       eval_seconds=round(time.time() - t0, 2))
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


@torch.no_grad()
def classify_levels(model, ids, labels, tokenizer, levels: list[float], seed: int, batch_size: int = 64) -> dict:
    """{level: (mean CE, accuracy)} of a classifier on blocks ids [M, L] with classes labels [M],
    masked at each fixed rate with the same masks every call (seeded per level); no prefix."""
    from diffusion import mask_tokens, protected_positions
    from tokens import never_masked_ids

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    protected = protected_positions(ids, never_masked_ids(tokenizer), torch.zeros(len(ids), dtype=torch.long))
    out = {}
    for i, level in enumerate(levels):
        g = torch.Generator().manual_seed(seed + i)
        inputs, _ = mask_tokens(ids, torch.full((len(ids),), level), protected, tokenizer.mask_token_id, g)  # [M, L]
        logits = torch.cat([model(input_ids=inputs[j:j + batch_size].to(device)).logits.float().cpu()
                            for j in range(0, len(ids), batch_size)])  # [M, C]
        ce = torch.nn.functional.cross_entropy(logits, labels)
        out[level] = (ce.item(), (logits.argmax(-1) == labels).float().mean().item())
    model.train(was_training)
    return out


def tied_keys(model) -> set[str]:
    """State-dict keys that share their tensor with another key (tied weights)."""
    by_ptr = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        by_ptr.setdefault(tensor.data_ptr(), []).append(name)
    return {n for names in by_ptr.values() if len(names) > 1 for n in names}


class StepClock(TrainerCallback):
    """Reads the clock after optimiser steps `first` and `last`, so the timed span holds
    (last - first) whole steps: data loading, collation, forward, backward, optimiser (bench.py).
    sync() waits for the device first."""

    def __init__(self, first: int, last: int, sync):
        self.first, self.last, self.sync, self.marks = first, last, sync, {}

    def on_step_end(self, args, state, control, **kw):
        if state.global_step in (self.first, self.last):
            self.sync()
            self.marks[state.global_step] = (time.perf_counter(), time.process_time())


class TrainClock(TrainerCallback):
    """Seconds spent in training steps alone: each step counts from the end of the step before it
    (or of the evaluation, log line or checkpoint that followed that step) to its own end, so the
    step-0 evaluation, later evaluations and saves are not training time. The log line's speed and
    ETA and the progress bar's ETA all read this one clock, so they agree."""

    def __init__(self):
        self.mark, self.steps, self.seconds, self.logged = None, 0, 0.0, (0, 0.0)

    def on_train_begin(self, args, state, control, **kw):
        self.mark = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        now = time.perf_counter()
        self.steps, self.seconds, self.mark = self.steps + 1, self.seconds + now - self.mark, now

    def on_evaluate(self, args, state, control, **kw):
        self.mark = time.perf_counter()

    on_save = on_log = on_evaluate

    def eta(self, state) -> float:
        """Seconds left at this run's mean training speed (0 before the first step)."""
        return (state.max_steps - state.global_step) * self.seconds / self.steps if self.steps else 0.0

    def since_last_log(self) -> float:
        """Steps per second of training since the previous call (a logging interval)."""
        steps, seconds = self.steps - self.logged[0], self.seconds - self.logged[1]
        self.logged = (self.steps, self.seconds)
        return steps / seconds if seconds > 0 else 0.0


class Bar(TrainerCallback):
    """A tqdm bar over the steps (for a terminal) whose ETA is the clock's, as the log line's is."""

    def __init__(self, clock: TrainClock):
        self.clock, self.bar = clock, None

    def on_train_begin(self, args, state, control, **kw):
        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, dynamic_ncols=True,
                            bar_format="{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")

    def on_step_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.set_postfix_str(f"eta {duration(self.clock.eta(state))}", refresh=False)
            self.bar.update(state.global_step - self.bar.n)

    def on_train_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def use_bar(log_format: str) -> bool:
    """True for a progress bar: --log-format bar, or auto when stdout is a terminal. Otherwise (plain)
    the output is the log lines alone, fit for a file, so this also turns off the datasets library's
    bars (tokenising a new corpus) for the rest of the process."""
    bar = log_format == "bar" or (log_format == "auto" and sys.stdout.isatty())
    if not bar:
        import datasets

        datasets.disable_progress_bars()
    return bar


def log_callbacks(trainer, out_dir: str, cfg: TrainConfig, log_format: str) -> None:
    """Replace the Trainer's printing with this repo's: the clock, the bar (use_bar) and RunLog's
    one-line logs."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)  # the Trainer's dict dump when tqdm is off
    clock = TrainClock()
    bar = use_bar(log_format)
    for callback in [clock] + [Bar(clock)] * bar + [RunLog(out_dir, cfg, clock, bar)]:
        trainer.add_callback(callback)


# ---------------------------------------------------------------------------------------------
# Logging: one line per interval, metrics.jsonl, progress.txt
# ---------------------------------------------------------------------------------------------


def metrics_by_level(logs: dict, prefix: str) -> dict:
    return {float(k[len(prefix):]): v for k, v in logs.items() if k.startswith(prefix)}


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def log_line(row: dict) -> str:
    """`step 250/3000 | loss 6.123 | masked 10%/50%/100% 5.52/6.05/7.03 | lr 1.0e-03 | 12.5 it/s |
    12,800 tok/s | eta 3m00s`: one training log, from a metrics.jsonl row."""
    levels = metrics_by_level(row, "train_mask_")
    parts = [f"step {row['step']}/{row['max_steps']}", f"loss {row['loss']:.4f}"]
    if levels:
        pick = sorted({min(levels), nearest_level(0.5, list(levels)), max(levels)})
        parts.append("masked " + "/".join(f"{lv:.0%}" for lv in pick) + " " +
                     "/".join(f"{levels[lv]:.2f}" for lv in pick))
    parts += [f"lr {row.get('learning_rate', 0):.1e}", f"{row['steps_per_s']:.1f} it/s",
              f"{row['tokens_per_s']:,.0f} tok/s", f"eta {duration(row['eta_s'])}"]
    return " | ".join(parts)


def eval_lines(row: dict) -> list[str]:
    """The full held-out block of an evaluation: the bound, every level, the fills (a classifier's:
    accuracy and loss at every level)."""
    if "eval_accuracy" in row:
        acc, ce = metrics_by_level(row, "eval_acc_"), metrics_by_level(row, "eval_mask_")
        return [f"eval step {row['step']} | held-out accuracy {row['eval_accuracy']:.1%}, the mean over masking "
                f"levels ({row['eval_blocks']} blocks)",
                "  accuracy by masking level: " + "  ".join(f"{lv:.0%} {v:.1%}" for lv, v in sorted(acc.items())),
                "  loss by masking level:     " + "  ".join(f"{lv:.0%} {v:.3f}" for lv, v in sorted(ce.items()))]
    lines = [f"eval step {row['step']} | held-out ELBO bound {row['eval_elbo_nats']:.3f} "
             f"± {row['eval_elbo_stderr']:.3f} nats/token = perplexity <= {row['eval_elbo_ppl']:.1f} "
             f"({row['eval_elbo_blocks']} blocks)"]
    levels = metrics_by_level(row, "eval_mask_")
    lines.append("  held-out loss by masking level: " +
                 "  ".join(f"{lv:.0%} {v:.3f}" for lv, v in sorted(levels.items())))
    for f in row.get("eval_fills", []):
        lines.append(f"  {f['rate']:>4.0%} masked, {f['accuracy']:.0%} of fills right: {f['text']}")
    return lines


class RunLog(TrainerCallback):
    """Appends every log to metrics.jsonl (with speed and ETA, so the monitor computes nothing),
    prints one line per training log and the eval block at each evaluation, keeps progress.txt
    (the last of each) and the loss curves up to date. Rank 0 only."""

    def __init__(self, out_dir: str, cfg: TrainConfig, clock: TrainClock, bar: bool = False):
        self.out_dir, self.cfg, self.clock, self.bar = out_dir, cfg, clock, bar
        self.last = {"train": [], "eval": []}

    def on_log(self, args, state, control, logs=None, **kw):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "time": round(time.time(), 2), "max_steps": state.max_steps, **logs}
        if "loss" in logs:  # speed over this interval's training steps, ETA from the same clock as the bar
            rate = self.clock.since_last_log()
            tokens = self.cfg.tokens_per_step() * args.world_size
            row.update(steps_per_s=round(rate, 3), tokens_per_s=round(rate * tokens, 1),
                       eta_s=round(self.clock.eta(state), 1))
        append_jsonl(os.path.join(self.out_dir, METRICS), row)
        if "loss" in logs:
            self.last["train"] = [log_line(row)]
        elif "eval_elbo_nats" in logs or "eval_accuracy" in logs:
            self.last["eval"] = eval_lines(row)
        else:
            return
        text = "\n".join(self.last["train"] if "loss" in logs else self.last["eval"])
        if self.bar:  # above the progress bar instead of onto its end
            tqdm.write(text, file=sys.stdout)
        else:
            print(text, flush=True)
        write_atomic(os.path.join(self.out_dir, PROGRESS), "\n".join(self.last["train"] + self.last["eval"]) + "\n")
        if "eval_elbo_nats" in logs or "eval_accuracy" in logs:
            write_curves(self.out_dir)

    def on_train_end(self, args, state, control, **kw):
        if state.is_world_process_zero:
            write_curves(self.out_dir)


# ---------------------------------------------------------------------------------------------
# Curves: loss_by_level.csv and loss_by_level.png from metrics.jsonl
# ---------------------------------------------------------------------------------------------


def write_curves(out_dir: str) -> None:
    rows = read_metrics(out_dir)
    table = [(r["step"], split, lv, v) for r in rows for split in ("train", "eval")
             for lv, v in metrics_by_level(r, f"{split}_mask_").items()]
    if not table:  # e.g. the AR baseline's log: no masking levels
        return
    write_csv(os.path.join(out_dir, "loss_by_level.csv"), [["step", "split", "mask_level", "loss"]] + table)
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
    write_figure(fig, path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# TrainingArguments, model card
# ---------------------------------------------------------------------------------------------


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
    train.py compiles the encoder in place instead (modeling.compile_model)."""
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


def training_arguments(cfg: TrainConfig, evaluate_first: bool, use_cpu: bool = False, **over) -> TrainingArguments:
    """The Trainer's settings for a TrainConfig (over: any TrainingArguments to replace)."""
    args = dict(
        output_dir=cfg.output_dir, max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps, lr_scheduler_type=cfg.lr_scheduler,
        logging_steps=cfg.logging_steps, eval_strategy="steps", eval_steps=cfg.eval_steps,
        eval_on_start=evaluate_first,  # held-out losses at step 0: the baseline every level falls from
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=None,  # rotation: Rotate
        logging_nan_inf_filter=False,  # a nan loss is logged as nan (and stops the run), never hidden
        seed=cfg.seed, data_seed=cfg.seed, report_to="none", remove_unused_columns=False,
        disable_tqdm=process_rank()[0] != 0, use_cpu=use_cpu, **speed_arguments(cfg))
    return TrainingArguments(**{**args, **over})


def write_model_card(folder: str, cfg: TrainConfig, rows: list[dict], n_params: int, model_class: str,
                     final: str, labels: list[str] = ()) -> None:
    """folder/README.md: what the model is, how it was trained, its labels (a label-conditioned
    generator's or a classifier's; id2label in config.json), its held-out numbers (the last
    evaluation in metrics.jsonl), and how to load it (from `final`, where folder ends up) and use it."""
    classify = cfg.task == "classify"
    tokens = cfg.token_budget()
    corpus = ("the embedded corpus (106 English Wikipedia articles from the gensim wheel)"
              if cfg.dataset == "embedded" else f"`{cfg.dataset}`" + (f" ({cfg.dataset_config})" if cfg.dataset_config else ""))
    start = f"trained from scratch ({cfg.scratch_arch}, tokenizer trained on the corpus)" if cfg.model == "scratch" \
        else f"fine-tuned from `{cfg.model}`"
    what = (f"a noisy-input classifier p(label | text): trained on text masked at every rate ({cfg.mask_distribution} "
            f"rates) exactly as the generator is, so it can judge a half-written canvas (generate.py --guide)"
            if classify else
            f"trained as a discrete text-diffusion model: masked-LM loss at every masking rate ({cfg.mask_distribution} "
            f"rates, {cfg.loss_weighting} loss, prefix {cfg.prefix_mode} up to {cfg.prefix_len} tokens), so it can "
            f"write text from a fully masked canvas")
    lines = [
        "# Noisy-input classifier" if classify else "# Text-diffusion masked LM", "",
        f"A {model_class} with {n_params:,} parameters, {start}, {what}.", "",
        f"- Data: {corpus}, " + ("packed into" if cfg.packing == "packed" else "one document per block, padded with "
                                  "`</s>`, in") + f" `<s> ... </s>` blocks of {cfg.max_len} tokens.",
        f"- Training: {cfg.max_steps} steps x {cfg.batch_size} x {cfg.grad_accum} x {cfg.max_len} = {tokens:,} tokens, "
        f"learning rate {cfg.learning_rate:g}, seed {cfg.seed}. Every setting is in `diffusion_config.json`.",
    ]
    if labels:
        lines.append(f"- Labels ({cfg.labels}; `id2label` in config.json): {', '.join(f'`{n}`' for n in labels)}"
                     + ("" if classify else f"; each block reads its label token after <s>, replaced by the null "
                        f"label in {cfg.label_dropout:.0%} of training blocks, so the model is also unconditional."))
    lines += card_numbers(rows)
    use = ([f"python generate.py --checkpoint GENERATOR --guide {final} --guide-label {labels[0]} --guide-scale 4"]
           if classify else [f"python generate.py --checkpoint {final} --show-steps"]
           + ([f"python generate.py --checkpoint {final} --label {labels[0]} --cfg 2"] if labels else [])
           + [f"python evaluate.py --checkpoint {final}"])
    loader = "load_classifier" if classify else "load_checkpoint"
    lines += ["", "## Use", "", "```bash", *use, "```", "", "```python", f"from modeling import {loader}",
              f"model, tokenizer, cfg = load_checkpoint({final!r})" if not classify else
              f"model, labels = load_classifier({final!r}, generator_tokenizer)", "```", ""]
    write_atomic(os.path.join(folder, "README.md"), "\n".join(lines))


def card_numbers(rows: list[dict]) -> list[str]:
    """The model card's held-out numbers from the last evaluation in metrics.jsonl: the ELBO bound
    and loss per masking level (a generator), or accuracy and loss per level (a classifier)."""
    last = next((r for r in reversed(rows) if "eval_elbo_nats" in r or "eval_accuracy" in r), None)
    if last is None:
        return []
    levels = metrics_by_level(last, "eval_mask_")
    head = ["", f"## Held-out numbers (step {last['step']}, from metrics.jsonl)", ""]
    unit = "nats" if "eval_accuracy" in last else "nats/token"  # a classifier's loss is per block
    table = ["| masked | " + " | ".join(f"{lv:.0%}" for lv in sorted(levels)) + " |", "|---|" + "---|" * len(levels),
             f"| loss ({unit}) | " + " | ".join(f"{levels[lv]:.3f}" for lv in sorted(levels)) + " |"]
    if "eval_accuracy" in last:
        acc = metrics_by_level(last, "eval_acc_")
        return head + [f"Accuracy {last['eval_accuracy']:.1%}, the mean over masking levels "
                       f"({last['eval_blocks']} held-out blocks).", ""] + table + [
            "| accuracy | " + " | ".join(f"{acc[lv]:.1%}" for lv in sorted(acc)) + " |"]
    return head + [f"ELBO bound: {last['eval_elbo_nats']:.4f} ± {last['eval_elbo_stderr']:.4f} nats/token, "
                   f"perplexity <= {last['eval_elbo_ppl']:.1f} ({last['eval_elbo_blocks']} held-out blocks).", ""] + table


# --task: (collator class, trainer class)
TASKS = {"diffusion": (DiffusionCollator, DiffusionTrainer), "classify": (ClassifierCollator, ClassifierTrainer)}
