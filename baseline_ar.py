"""Autoregressive baseline for a diffusion run: a GPT-2-shaped causal LM trained the same way.

    python baseline_ar.py --checkpoint results/final-model          # -> results/ar-baseline/final-model
    python baseline_ar.py --checkpoint results/final-model --output-dir /tmp/ar

"The same way" is read from the diffusion run's saved diffusion_config.json:
  - the same tokenizer (loaded from the checkpoint) and the same data pipeline (data.build_datasets:
    identical packed `<s> chunk </s>` blocks, identical held-out tail);
  - the same token budget, max_steps x batch_size x grad_accum x max_len, and the same optimiser
    settings (learning rate, warmup, schedule, weight decay, seed);
  - a parameter count within 10% of the diffusion model: same width and heads, n_inner (and n_layer
    only if no n_inner fits) solved for the count, input and output embeddings tied;
  - the HF Trainer with the standard causal LM loss (labels = input_ids, shifted inside the model).

Writes --output-dir/final-model (model, tokenizer, ar_config.json, source_train_config.json) and
--output-dir/metrics.jsonl. evaluate.py compares the two models on the same held-out tokens.
"""

import argparse
import dataclasses
import json
import os
import shutil
import sys
from dataclasses import dataclass

import torch

from config import UsageError, add_args, cli, format_config, given, save_config
from modeling import n_params


@dataclass
class ARConfig:
    checkpoint: str = "results/final-model"  # the diffusion run (a train.py final-model) to match
    output_dir: str = "results/ar-baseline"  # gets final-model/ and metrics.jsonl
    n_layer: int = 0  # 0 = auto: the diffusion model's depth, changed only if no n_inner fits
    n_inner: int = 0  # 0 = auto: MLP width solved so the parameter count matches
    learning_rate: float = 0.0  # 0 = the diffusion run's learning rate


# ---------------------------------------------------------------------------------------------
# Shape: match the parameter count
# ---------------------------------------------------------------------------------------------


def gpt2_param_count(vocab: int, n_positions: int, n_embd: int, n_layer: int, n_inner: int) -> int:
    """Parameters of GPT2LMHeadModel with tied embeddings (the LM head adds none)."""
    d = n_embd
    # per block: ln_1 + c_attn + attn c_proj + ln_2 = 4d^2 + 9d; c_fc + mlp c_proj = n_inner(2d + 1) + ...
    per_layer = 4 * d * d + 9 * d + n_inner * (2 * d + 1)
    return vocab * d + n_positions * d + n_layer * per_layer + 2 * d  # + ln_f


def ar_shape(target: int, vocab: int, n_positions: int, n_embd: int, n_layer: int,
             fixed_layers: bool = False, multiple: int = 32) -> tuple[int, int]:
    """(n_layer, n_inner) of a GPT-2 whose parameter count is nearest `target`: the given depth
    if an MLP between 1x and 8x the width fits (GPT-2 uses 4x), else the nearest depth that does."""
    depths = [n_layer] if fixed_layers else sorted(range(1, 4 * n_layer + 3), key=lambda L: (abs(L - n_layer), L))
    for L in depths:
        rest = target - gpt2_param_count(vocab, n_positions, n_embd, L, 0)
        inner = round(rest / (L * (2 * n_embd + 1)) / multiple) * multiple
        if n_embd <= inner <= 8 * n_embd:
            return L, inner
    raise UsageError(f"no GPT-2 of width {n_embd} with {'/'.join(map(str, depths[:3]))}... layers has "
                     f"~{target:,} parameters; set --n-layer and --n-inner")


def width_heads_depth(config) -> tuple[int, int, int]:
    """(hidden size, heads, layers) of an encoder config (BERT/RoBERTa/ModernBERT or DistilBERT names)."""
    get = lambda *names: next(getattr(config, n) for n in names if hasattr(config, n))  # noqa: E731
    return get("hidden_size", "dim"), get("num_attention_heads", "n_heads"), get("num_hidden_layers", "n_layers")



def build_ar_model(tokenizer, n_positions: int, n_embd: int, n_head: int, n_layer: int, n_inner: int, seed: int):
    from transformers import AutoModelForCausalLM, GPT2Config

    # no dropout, as the from-scratch diffusion models have none
    cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                     n_head=n_head, n_inner=n_inner, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(seed)  # weight init is the one place transformers uses the global RNG
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    model.loss_type = "ForCausalLM"  # shifted CE, what it falls back to anyway, minus a warning
    return model


# ---------------------------------------------------------------------------------------------
# Logging: the repo's one line per interval, and metrics.jsonl
# ---------------------------------------------------------------------------------------------


def make_log_callback(out_dir: str, max_steps: int):
    from transformers import TrainerCallback

    class ARLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if not state.is_world_process_zero or not logs:
                return
            with open(os.path.join(out_dir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")
            if "loss" in logs:
                print(f"step {state.global_step}/{max_steps} | train loss {logs['loss']:.4f} | "
                      f"lr {logs.get('learning_rate', 0):.2e}", flush=True)

    return ARLog()


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(parser, ARConfig)
    acfg = ARConfig(**given(parser.parse_args(argv), ARConfig))
    if acfg.n_layer < 0 or acfg.n_inner < 0 or acfg.learning_rate < 0:
        raise UsageError("--n-layer, --n-inner and --learning-rate must be >= 0 (0 = auto)")

    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments, set_seed
    from transformers.trainer_callback import ProgressCallback
    from transformers.utils import logging as hf_logging

    from data import build_datasets
    from generate import load_checkpoint
    from train import _quiet_progress, check_writable, speed_arguments

    hf_logging.disable_progress_bar()
    diffusion, tokenizer, tcfg = load_checkpoint(acfg.checkpoint, device="cpu")
    check_writable(acfg.output_dir)

    # 1. data: the diffusion run's pipeline and split, unchanged
    train_ds, val_ds = build_datasets(tcfg, tokenizer)

    # 2. model: same width and heads; n_inner (and maybe n_layer) solved for the parameter count
    target = n_params(diffusion)
    d, heads, layers = width_heads_depth(diffusion.config)
    n_layer, n_inner = acfg.n_layer or layers, acfg.n_inner
    if not n_inner:
        n_layer, n_inner = ar_shape(target, len(tokenizer), tcfg.max_len, d, n_layer, fixed_layers=bool(acfg.n_layer))
    acfg = dataclasses.replace(acfg, n_layer=n_layer, n_inner=n_inner,
                               learning_rate=acfg.learning_rate or tcfg.learning_rate)
    model = build_ar_model(tokenizer, tcfg.max_len, d, heads, n_layer, n_inner, tcfg.seed)
    count = n_params(model)
    if abs(count / target - 1) > 0.10:
        raise UsageError(f"AR baseline has {count:,} parameters, more than 10% away from the diffusion "
                         f"model's {target:,}; change --n-layer / --n-inner")
    budget = tcfg.max_steps * tcfg.batch_size * tcfg.grad_accum * tcfg.max_len
    print("resolved config:\n" + format_config(acfg), flush=True)
    print(f"data: {len(train_ds)} train / {len(val_ds)} held-out blocks of {tcfg.max_len} tokens "
          f"(the diffusion run's pipeline)", flush=True)
    print(f"parameters: diffusion {type(diffusion).__name__} {target:,} | AR GPT-2 {count:,} "
          f"({count / target - 1:+.1%}; n_layer {n_layer}, n_embd {d}, n_head {heads}, n_inner {n_inner})", flush=True)
    print(f"token budget: {tcfg.max_steps} steps x {tcfg.batch_size} x {tcfg.grad_accum} x {tcfg.max_len} "
          f"= {budget:,} tokens (same as the diffusion run)", flush=True)
    if tcfg.model != "scratch":
        print(f"note: the diffusion run fine-tuned the pretrained {tcfg.model}; this baseline starts from "
              f"scratch, so the comparison favours the diffusion model", flush=True)
    del diffusion

    # 3. trainer: the diffusion run's optimisation settings, causal LM loss
    set_seed(tcfg.seed)
    targs = TrainingArguments(
        output_dir=acfg.output_dir, max_steps=tcfg.max_steps, per_device_train_batch_size=tcfg.batch_size,
        per_device_eval_batch_size=64, gradient_accumulation_steps=tcfg.grad_accum,
        learning_rate=acfg.learning_rate, weight_decay=tcfg.weight_decay, warmup_steps=tcfg.warmup_steps,
        lr_scheduler_type=tcfg.lr_scheduler, logging_steps=tcfg.logging_steps, eval_strategy="no",
        save_strategy="no", seed=tcfg.seed, data_seed=tcfg.seed, report_to="none", **speed_arguments(tcfg),
    )
    trainer = Trainer(model=model, args=targs, train_dataset=train_ds, eval_dataset=val_ds,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),  # labels = input_ids
                      processing_class=tokenizer)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(_quiet_progress())
    trainer.add_callback(make_log_callback(acfg.output_dir, tcfg.max_steps))
    if os.path.exists(os.path.join(acfg.output_dir, "metrics.jsonl")):
        os.remove(os.path.join(acfg.output_dir, "metrics.jsonl"))  # a fresh run starts a fresh log
    save_config(acfg, acfg.output_dir, "ar_config.json")

    # 4. train, score the held-out blocks, save
    trainer.train()
    loss = trainer.evaluate()["eval_loss"]
    print(f"held-out loss {loss:.4f} nats/token over every token after <s> = perplexity "
          f"{torch.tensor(loss).exp().item():.1f} (evaluate.py scores the diffusion model's token set)", flush=True)
    final = os.path.join(acfg.output_dir, "final-model")
    trainer.save_model(final + ".tmp")
    save_config(acfg, final + ".tmp", "ar_config.json")
    save_config(tcfg, final + ".tmp", "source_train_config.json")  # the data pipeline and budget it copied
    shutil.rmtree(final, ignore_errors=True)
    os.replace(final + ".tmp", final)  # a killed save never leaves a half-written final-model
    print(f"saved {final} (load with AutoModelForCausalLM.from_pretrained)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
