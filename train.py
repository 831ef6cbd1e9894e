"""Train a masked LM at every masking rate: discrete text diffusion with a HF Trainer.

    python train.py --quick-test                      # offline, the small CPU preset
    python train.py --model roberta-base --dataset wikitext --dataset-config wikitext-2-raw-v1
    python train.py --dataset path/to/folder_of_txt   # your own text
    python train.py --quick-test --resume             # continue from the newest checkpoint
    python train.py --quick-test --dataset data/fortunes --packing none --labels folders   # label-conditioned
    python train.py --task classify --labels folders --dataset data/fortunes --model results/fortunes/final-model
                                                      # a noisy-input classifier for generate.py --guide
    accelerate launch --num_processes 2 train.py ...  # several GPUs (or torchrun)

Writes to --output-dir (default results/): checkpoint-N/ and final-model/ (model, tokenizer,
diffusion_config.json, README.md model card), metrics.jsonl (one JSON object per log/eval),
progress.txt (the last log line and evaluation), loss_by_level.csv and loss_by_level.png.

Where things live: every flag is a field of config.TrainConfig; the masking is diffusion.py (via
data_collator.DiffusionCollator); the loss is modeling.training_loss; the Trainer subclass and
logging are trainer.py; the run's folder (lock, resume, checkpoints, final save) is runs.py.
This file reads top to bottom as the run does.
"""

import dataclasses
import os
import sys

from cli import UsageError, cli, format_config, given, parse  # noqa: E402
from config import RESUME_FIXED, TrainConfig, load_train_config, save_config, train_presets  # noqa: E402


def main(argv=None) -> int:
    cfg, args = parse(TrainConfig, argv, __doc__, presets=train_presets)
    from runs import RunFolder, check_writable

    check_writable(cfg.cache_dir)
    if cfg.labels != "none" and not cfg.resume:
        from data import load_labelled

        load_labelled(cfg)  # a bad label folder or column is one line before the output folder is touched
    with RunFolder(cfg.output_dir, cfg.task) as run:
        return train(cfg, given(args, TrainConfig), run)


def resumed(cfg: TrainConfig, flags: dict, run) -> tuple[TrainConfig, str | None]:
    """(the config to train with, the checkpoint to resume from or None): with --resume, the saved
    config of this folder's newest good checkpoint with the explicit flags on top, never a changed
    shape flag and never past the end."""
    if not cfg.resume:
        return cfg, None
    from runs import refuse_changes, refuse_past_end

    checkpoint = run.resume_point()
    saved = dataclasses.asdict(load_train_config(checkpoint))
    flags = {k: v for k, v in flags.items() if k not in ("resume", "quick_test")}
    refuse_changes(saved, flags, RESUME_FIXED)
    cfg = TrainConfig(**{**saved, **flags, "resume": True})
    refuse_past_end(checkpoint, cfg.max_steps)
    return cfg, checkpoint


def train(cfg: TrainConfig, flags: dict, run) -> int:
    cfg, checkpoint = resumed(cfg, flags, run)
    from transformers import set_seed
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the Trainer's own bar stays; loading/saving bars go
    if run.is_main:
        print("resolved config:\n" + format_config(cfg), flush=True)
    set_seed(cfg.seed)

    # 1. data: documents -> tokenizer -> blocks (--packing; all cached after the first run)
    from trainer import use_bar

    use_bar(cfg.log_format)  # decided before the data: a plain log has no tokenising bars either
    tokenizer, train_ds, val_ds = load_data(cfg, run.is_main)
    if cfg.batch_size * cfg.grad_accum > len(train_ds):  # the Trainer would quietly take a smaller step
        raise UsageError(f"--batch-size {cfg.batch_size} x --grad-accum {cfg.grad_accum} = "
                         f"{cfg.batch_size * cfg.grad_accum:,} blocks per optimiser step, more than the "
                         f"{len(train_ds):,} training blocks; lower them (or add data)")

    # 2. model and trainer (--task: the diffusion loss with per-level evaluation, or a noisy-input
    # classifier), one log line per interval
    from data import label_names
    from trainer import TASKS

    collator = TASKS[cfg.task][0](tokenizer, cfg)
    labels = label_names(train_ds)
    model = build(cfg, tokenizer, labels, len(train_ds), run.is_main)
    trainer = make_trainer(cfg, model, tokenizer, train_ds, val_ds, collator, run, evaluate_first=checkpoint is None)

    # 3. the run's folder, now that every check has passed: a fresh run moves another run's
    # outputs aside; a resumed one keeps only its own log rows up to the checkpoint, and the masks
    # an uninterrupted run would draw
    if checkpoint is None:
        run.start(tokenizer)
        if run.is_main:
            save_config(cfg, cfg.output_dir)
    else:
        collator.resume(checkpoint, run.resume(checkpoint, tokenizer, cfg.max_steps), cfg)

    # 4. train (the Trainer evaluates and saves at the last step), then the final model
    if not run.train(trainer, checkpoint):
        return 130
    if trainer.is_world_process_zero():
        from modeling import n_params
        from runs import read_metrics
        from trainer import write_model_card

        final = run.save_final(trainer, lambda folder: write_model_card(
            folder, cfg, read_metrics(cfg.output_dir), n_params(model), type(model).__name__,
            os.path.join(cfg.output_dir, "final-model"), labels))
        run.finished(f"saved {final} at step {trainer.state.global_step} (model card: {final}/README.md)")
    return 0


def load_data(cfg: TrainConfig, is_main: bool):
    """(tokenizer, train blocks, held-out blocks). Under torchrun/accelerate, rank 0 of each node
    builds the cache while the others wait, then they read it: several ranks writing one cache
    folder at once crash on a fresh box. Several processes without CUDA must be told to run on
    CPU (gloo), else each trains alone as world size 1 and they overwrite each other's outputs."""
    import torch
    from accelerate import PartialState

    from data import build_datasets, get_tokenizer, label_token_counts, load_documents
    from runs import process_rank

    cpu_ddp = process_rank()[1] > 1 and not torch.cuda.is_available()
    with PartialState(cpu=cpu_ddp).local_main_process_first():
        docs = load_documents(cfg) if cfg.model == "scratch" else None
        tokenizer = get_tokenizer(cfg, docs)
        train_ds, val_ds = build_datasets(cfg, tokenizer, docs)
    if is_main:
        print(f"data: {len(train_ds)} train / {len(val_ds)} held-out blocks of {cfg.max_len} tokens", flush=True)
        counts = label_token_counts(train_ds, tokenizer)
        if counts:
            print("labels (text tokens in training blocks): " + ", ".join(f"{n} {c:,}" for n, c in counts.items()),
                  flush=True)
    return tokenizer, train_ds, val_ds


def build(cfg: TrainConfig, tokenizer, labels: list[str], n_train: int, is_main: bool):
    import torch

    from limits import check_training, scratch_params
    from modeling import build_model, compile_model, n_params

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.model == "scratch":  # before building it: a model that cannot fit is one line, not an allocator error
        check_training(cfg, len(tokenizer), scratch_params(cfg, len(tokenizer)), device, n_train)
    model = build_model(cfg, tokenizer, labels)
    check_training(cfg, model.config.vocab_size, n_params(model), device, n_train)
    if is_main:
        print(f"model: {type(model).__name__}, {n_params(model) / 1e6:.2f}M parameters, "
              f"{model.config._attn_implementation} attention", flush=True)
    if cfg.torch_compile:
        compile_model(model, cfg.masked_only_head)
    return model


def make_trainer(cfg, model, tokenizer, train_ds, val_ds, collator, run, evaluate_first: bool):
    import torch

    from trainer import TASKS, log_callbacks, training_arguments

    cpu_ddp = run.world > 1 and not torch.cuda.is_available()
    trainer = TASKS[cfg.task][1](
        model=model, args=training_arguments(cfg, evaluate_first=evaluate_first, use_cpu=cpu_ddp),
        train_dataset=train_ds, eval_dataset=val_ds, data_collator=collator,
        processing_class=tokenizer, diffusion_cfg=cfg, tokenizer=tokenizer)
    log_callbacks(trainer, cfg.output_dir, cfg, cfg.log_format)
    for callback in run.callbacks(cfg.save_total_limit):
        trainer.add_callback(callback)
    return trainer


if __name__ == "__main__":
    sys.exit(cli(main))
