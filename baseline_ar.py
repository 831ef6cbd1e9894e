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
--output-dir/metrics.jsonl (every --eval-steps of the diffusion run: eval_loss over every token after
<s>, and eval_heldout_nats over the tokens the diffusion bound scores). evaluate.py compares the
two models on the same held-out tokens.
"""

import dataclasses
import math
import os
import shutil
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: spinning threads crawl on a shared CPU

import torch  # noqa: E402

from config import ARConfig, UsageError, cli, format_config, parse, save_config


def ar_trainer(prefix: int, **kw):
    """A HF Trainer whose evaluation scores the held-out set as evaluate.py does: eval_loss over
    every token after <s> (the Trainer's usual number), and eval_heldout_nats over the content
    tokens after `prefix` that the diffusion bound scores (metrics.ar_held_out_nll), so
    metrics.jsonl holds an AR curve to set beside the diffusion run's eval_elbo_nats."""
    from transformers import Trainer

    from diffusion import protected_positions, special_token_ids
    from metrics import ar_held_out_nll

    class ARTrainer(Trainer):
        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            blocks = torch.as_tensor(self.eval_dataset[:]["input_ids"])  # [M, L]
            protected = protected_positions(blocks, special_token_ids(self.processing_class),
                                            torch.full((len(blocks),), prefix, dtype=torch.long))  # [M, L]
            was_training = self.model.training
            self.model.eval()
            nll = ar_held_out_nll(self.model, blocks, protected, self.args.per_device_eval_batch_size)
            self.model.train(was_training)
            metrics = {"eval_loss": nll["all_tokens_after_bos"]["nats_per_token"],
                       "eval_heldout_nats": nll["nats_per_token"],
                       "eval_heldout_ppl": math.exp(min(nll["nats_per_token"], 50))}
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    return ARTrainer(**kw)


def main(argv=None) -> int:
    acfg, _ = parse(ARConfig, argv, __doc__)

    from transformers import DataCollatorForLanguageModeling, TrainingArguments, set_seed
    from transformers.trainer_callback import ProgressCallback
    from transformers.utils import logging as hf_logging

    from data import build_datasets
    from diffusion import bound_prefix
    from modeling import ar_shape, build_ar_model, load_checkpoint, n_params, width_heads_depth
    from trainer import QuietProgress, RunLog, check_writable, speed_arguments

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
        lr_scheduler_type=tcfg.lr_scheduler, logging_steps=tcfg.logging_steps, eval_strategy="steps",
        eval_steps=tcfg.eval_steps, eval_on_start=True, save_strategy="no", seed=tcfg.seed, data_seed=tcfg.seed, report_to="none", **speed_arguments(tcfg),
    )
    trainer = ar_trainer(bound_prefix(tcfg), model=model, args=targs, train_dataset=train_ds, eval_dataset=val_ds,
                         data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),  # labels = input_ids
                         processing_class=tokenizer)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(QuietProgress())
    trainer.add_callback(RunLog(acfg.output_dir, tcfg))
    if os.path.exists(os.path.join(acfg.output_dir, "metrics.jsonl")):
        os.remove(os.path.join(acfg.output_dir, "metrics.jsonl"))  # a fresh run starts a fresh log
    save_config(acfg, acfg.output_dir, "ar_config.json")

    # 4. train, score the held-out blocks, save
    trainer.train()
    loss = trainer.evaluate()["eval_loss"] if trainer.state.global_step % tcfg.eval_steps else \
        next(r for r in reversed(trainer.state.log_history) if "eval_loss" in r)["eval_loss"]
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
