"""Train a masked LM at every masking rate: discrete text diffusion with a HF Trainer.

    python train.py --quick-test                      # offline, ~2.5 min on 2 CPU cores
    python train.py --model roberta-base --dataset wikitext --dataset-config wikitext-2-raw-v1
    python train.py --dataset path/to/folder_of_txt   # your own text
    python train.py --quick-test --resume             # continue from the newest checkpoint
    accelerate launch --num_processes 2 train.py ...  # several GPUs (or torchrun)

Writes to --output-dir (default results/): checkpoint-N/ and final-model/ (model, tokenizer,
diffusion_config.json, README.md model card), metrics.jsonl (one JSON object per log/eval),
progress.txt (the last log line and evaluation), loss_by_level.csv and loss_by_level.png.

Where things live: every flag is a field of config.TrainConfig; the masking is diffusion.py (via
data_collator.DiffusionCollator); the loss is modeling.masked_lm_loss; the Trainer subclass,
logging and checkpoints are trainer.py. This file reads top to bottom as the run does.
"""

import dataclasses
import os
import shutil
import sys

import torch

from config import (TrainConfig, UsageError, cli, format_config, given, load_train_config, parse, save_config,
                    train_presets)


def resume_config(flags: dict) -> tuple[TrainConfig, str]:
    """On --resume: the newest complete checkpoint and its saved config, with explicit flags on top."""
    from trainer import last_complete_checkpoint

    out = flags.get("output_dir", TrainConfig.output_dir)
    last = last_complete_checkpoint(out)
    if last is None:
        raise UsageError(f"--resume: no checkpoint-N folder in {out} (train without --resume first)")
    saved = load_train_config(last)
    flags = {k: v for k, v in flags.items() if k not in ("resume", "quick_test")}
    return TrainConfig(**{**dataclasses.asdict(saved), **flags, "resume": True}), last


def main(argv=None) -> int:
    cfg, args = parse(TrainConfig, argv, __doc__, presets=train_presets)
    checkpoint = None
    if cfg.resume:
        cfg, checkpoint = resume_config(given(args, TrainConfig))
    from trainer import check_writable

    check_writable(cfg.output_dir)

    from accelerate import PartialState
    from transformers import set_seed
    from transformers.utils import logging as hf_logging

    from data import build_datasets, get_tokenizer, load_documents
    from data_collator import DiffusionCollator
    from modeling import build_model, compile_model, n_params
    from trainer import (DiffusionTrainer, QuietProgress, RunLog, read_metrics, training_arguments,
                         write_model_card)
    from transformers.trainer_callback import ProgressCallback

    hf_logging.disable_progress_bar()  # the Trainer's own bar stays; loading/saving bars go
    is_main = int(os.environ.get("RANK", "0")) == 0
    if is_main:
        print("resolved config:\n" + format_config(cfg), flush=True)
    set_seed(cfg.seed)

    # 1. data: documents -> tokenizer -> packed blocks (all cached after the first run).
    # Under torchrun/accelerate, rank 0 builds the cache while the other ranks wait, then they
    # read it: several ranks writing the same cache folder at once crash on a fresh box.
    # Several processes without CUDA must be told to run on CPU (gloo), else each one trains
    # alone as world size 1 and they overwrite each other's outputs.
    cpu_ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    with PartialState(cpu=cpu_ddp).local_main_process_first():  # per node: each has its own disk
        docs = load_documents(cfg) if cfg.model == "scratch" else None
        tokenizer = get_tokenizer(cfg, docs)
        train_ds, val_ds = build_datasets(cfg, tokenizer, docs)
    if is_main:
        print(f"data: {len(train_ds)} train / {len(val_ds)} held-out blocks of {cfg.max_len} tokens", flush=True)

    # 2. model
    model = build_model(cfg, tokenizer)
    if is_main:
        print(f"model: {type(model).__name__}, {n_params(model) / 1e6:.2f}M parameters, "
              f"{model.config._attn_implementation} attention", flush=True)
    if cfg.torch_compile:
        compile_model(model, cfg.masked_only_head)

    # 3. trainer: the diffusion loss, per-level evaluation, one log line per interval
    trainer = DiffusionTrainer(
        model=model, args=training_arguments(cfg, evaluate_first=checkpoint is None, use_cpu=cpu_ddp),
        train_dataset=train_ds, eval_dataset=val_ds, data_collator=DiffusionCollator(tokenizer, cfg),
        processing_class=tokenizer, diffusion_cfg=cfg, tokenizer=tokenizer)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(QuietProgress())
    trainer.add_callback(RunLog(cfg.output_dir, cfg))
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
        write_model_card(final + ".tmp", cfg, read_metrics(cfg.output_dir), n_params(model), type(model).__name__,
                         final)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(final + ".tmp", final)  # a killed save never leaves a half-written final-model
        print(f"saved {final} (model card: {final}/README.md)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
