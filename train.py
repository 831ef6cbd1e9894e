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
import errno
import os
import shutil
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: spinning threads crawl on a shared CPU

import torch  # noqa: E402

from config import (TrainConfig, UsageError, cli, format_config, given, load_train_config, parse,  # noqa: E402
                    save_config, train_presets)


def resume_config(flags: dict) -> tuple[TrainConfig, str]:
    """On --resume: the newest checkpoint of this folder's run that can be resumed from, and its
    saved config with explicit flags on top."""
    from trainer import last_complete_checkpoint, run_id_of

    out = flags.get("output_dir", TrainConfig.output_dir)
    last = last_complete_checkpoint(out, run_id_of(out))
    if last is None:
        raise UsageError(f"--resume: no checkpoint of this run to resume from in {out} (train without --resume first)")
    saved = load_train_config(last)
    flags = {k: v for k, v in flags.items() if k not in ("resume", "quick_test")}
    return TrainConfig(**{**dataclasses.asdict(saved), **flags, "resume": True}), last


def main(argv=None) -> int:
    cfg, args = parse(TrainConfig, argv, __doc__, presets=train_presets)
    from trainer import FolderLock, check_writable

    is_main = int(os.environ.get("RANK", "0")) == 0
    check_writable(cfg.output_dir)
    check_writable(cfg.cache_dir)
    lock = FolderLock(cfg.output_dir) if is_main else None  # a second run into this folder stops here
    try:
        return run(cfg, given(args, TrainConfig), is_main)
    finally:
        if lock is not None:
            lock.release()


def run(cfg: TrainConfig, flags: dict, is_main: bool) -> int:
    checkpoint = None
    if cfg.resume:
        cfg, checkpoint = resume_config(flags)

    from accelerate import PartialState
    from transformers import set_seed
    from transformers.trainer_callback import ProgressCallback
    from transformers.utils import logging as hf_logging

    from data import build_datasets, get_tokenizer, load_documents
    from data_collator import DiffusionCollator
    from modeling import build_model, compile_model, n_params, tokenizer_fingerprint
    from trainer import (COLLATOR_STATE, PROGRESS, RUN, DiffusionTrainer, QuietProgress, Rotate, RunLog,
                         StopOnInterrupt, no_space, read_metrics, start_fresh, training_arguments,
                         truncate_log, write_model_card)

    hf_logging.disable_progress_bar()  # the Trainer's own bar stays; loading/saving bars go
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

    # 2. the run's folder: a fresh run moves another run's outputs aside; a resumed one keeps
    # only its own log rows up to the checkpoint, and checks it rebuilt the same tokenizer
    collator = DiffusionCollator(tokenizer, cfg)
    if is_main and checkpoint is None:
        start_fresh(cfg.output_dir, tokenizer)
        save_config(cfg, cfg.output_dir)
    elif checkpoint is not None:
        import json

        with open(os.path.join(checkpoint, RUN)) as f:
            run = json.load(f)
        if run.get("tokenizer_sha1", tokenizer_fingerprint(tokenizer)) != tokenizer_fingerprint(tokenizer):
            raise UsageError(f"--resume: the tokenizer rebuilt now differs from the one {checkpoint} was trained with "
                             f"(did the corpus or --cache-dir change?)")
        with open(os.path.join(checkpoint, "trainer_state.json")) as f:
            step = json.load(f)["global_step"]
        if is_main:
            truncate_log(cfg.output_dir, step)
        state = os.path.join(checkpoint, COLLATOR_STATE)
        if os.path.isfile(state) and cfg.num_workers == 0:
            collator.load_state_dict(torch.load(state, weights_only=False))
        else:
            collator.resume_at(step * cfg.grad_accum)
        print(f"resuming {checkpoint} at step {step}", flush=True)

    # 3. model
    model = build_model(cfg, tokenizer)
    if is_main:
        print(f"model: {type(model).__name__}, {n_params(model) / 1e6:.2f}M parameters, "
              f"{model.config._attn_implementation} attention", flush=True)
    if cfg.torch_compile:
        compile_model(model, cfg.masked_only_head)

    # 4. trainer: the diffusion loss, per-level evaluation, one log line per interval
    trainer = DiffusionTrainer(
        model=model, args=training_arguments(cfg, evaluate_first=checkpoint is None, use_cpu=cpu_ddp),
        train_dataset=train_ds, eval_dataset=val_ds, data_collator=collator,
        processing_class=tokenizer, diffusion_cfg=cfg, tokenizer=tokenizer)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(QuietProgress())
    trainer.add_callback(RunLog(cfg.output_dir, cfg))
    trainer.add_callback(Rotate(cfg.save_total_limit))
    interrupt = StopOnInterrupt() if int(os.environ.get("WORLD_SIZE", "1")) == 1 else None
    if interrupt is not None:
        trainer.add_callback(interrupt)

    # 5. train (the Trainer evaluates and saves at the last step), then the final model
    final = os.path.join(cfg.output_dir, "final-model")
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
        if interrupt is not None and interrupt.requested:
            print(f"stopped by Ctrl-C at step {trainer.state.global_step}: checkpoint-{trainer.state.global_step} "
                  f"is saved; continue with: python train.py --resume --output-dir {cfg.output_dir}", flush=True)
            return 130
        trainer.save_model(final + ".tmp")
        if trainer.is_world_process_zero():
            write_model_card(final + ".tmp", cfg, read_metrics(cfg.output_dir), n_params(model),
                             type(model).__name__, final)
            shutil.copy(os.path.join(cfg.output_dir, RUN), os.path.join(final + ".tmp", RUN))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(final + ".tmp", final)  # a killed save never leaves a half-written final-model
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise no_space(e, cfg.output_dir)
        raise
    finally:
        if interrupt is not None:
            interrupt.close()
    if trainer.is_world_process_zero():
        line = f"saved {final} at step {trainer.state.global_step} (model card: {final}/README.md)"
        with open(os.path.join(cfg.output_dir, PROGRESS), "a") as f:
            f.write(line + "\n")  # the monitor's sign that this run finished
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
