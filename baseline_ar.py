"""Autoregressive baseline for a diffusion run: a GPT-2-shaped causal LM trained the same way.

    python baseline_ar.py --checkpoint results/final-model          # -> results/ar-baseline/final-model
    python baseline_ar.py --checkpoint results/final-model --output-dir /tmp/ar
    python baseline_ar.py --resume --output-dir results/ar-baseline  # continue a run that was stopped

"The same way" is read from the diffusion run's saved diffusion_config.json:
  - the same tokenizer (loaded from the checkpoint) and the same data pipeline (data.build_datasets:
    identical `<s> chunk </s>` blocks of the run's --packing, identical held-out split);
  - the same token budget, max_steps x batch_size x grad_accum x max_len, and the same optimiser
    settings (learning rate, warmup, schedule, weight decay, seed);
  - a parameter count within 10% of the diffusion model: same width and heads, n_inner (and n_layer
    only if no n_inner fits) solved for the count, input and output embeddings tied;
  - the HF Trainer with the standard causal LM loss (labels = input_ids, shifted inside the model).

Its output folder is a run like train.py's (runs.py): locked while it trains, checkpoints every
--save-steps of the diffusion run, --resume continues after a kill, a diffusion run's folder is
refused, a loss that stops being a number ends it (exit 3). Writes --output-dir/final-model
(model, tokenizer, ar_config.json, source_train_config.json) and --output-dir/metrics.jsonl (every
--eval-steps of the diffusion run: eval_loss over every token after <s>, and eval_heldout_nats over
the tokens the diffusion bound scores). evaluate.py compares the two models on the same tokens.
"""

import dataclasses
import math
import os
import sys

from cli import Diverged, UsageError, cli, format_config, given, parse  # noqa: E402
from config import flag, save_config, Settings  # noqa: E402
from files import read_json  # noqa: E402

AR_CONFIG = "ar_config.json"


class ARConfig(Settings):
    checkpoint: str = flag("results/final-model", "the diffusion run (a train.py final-model) to match")
    output_dir: str = flag("results/ar-baseline", "gets final-model/, checkpoints and metrics.jsonl")
    n_layer: int = flag(0, "0 = auto: the diffusion model's depth, changed only if no n_inner fits", min=0)
    n_inner: int = flag(0, "0 = auto: MLP width solved so the parameter count matches", min=0)
    learning_rate: float = flag(0.0, "0 = the diffusion run's learning rate", min=0)
    resume: bool = flag(False, "continue this folder's run from its newest good checkpoint")
    log_format: str = flag("auto", "as train.py's --log-format: bar (a progress bar above the log lines), plain "
                           "(the log lines alone), auto (bar when stdout is a terminal)", choices=("auto", "bar", "plain"))


def ar_trainer(prefix: int, **kw):
    """A HF Trainer whose loss must stay finite and whose evaluation scores the held-out set as
    evaluate.py does: eval_loss over every token after <s> (the Trainer's usual number), and
    eval_heldout_nats over the content tokens after `prefix` that the diffusion bound scores
    (metrics.ar_held_out_nll), so metrics.jsonl holds an AR curve to set beside the bound's."""
    import torch
    from transformers import Trainer

    from diffusion import protected_positions
    from metrics import ar_held_out_nll
    from runs import StampsRun
    from tokens import never_masked_ids

    class ARTrainer(StampsRun, Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss = out[0] if return_outputs else out
            if not math.isfinite(loss.item()):
                raise Diverged(f"the AR baseline diverged at step {self.state.global_step}: the loss is "
                               f"{loss.item()} (learning rate {self.args.learning_rate:g}); lower --learning-rate")
            return out

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            blocks = torch.as_tensor(self.eval_dataset[:]["input_ids"])  # [M, L]
            protected = protected_positions(blocks, never_masked_ids(self.processing_class),
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


def resolve(acfg: ARConfig, flags: dict, run):
    """(ARConfig, diffusion TrainConfig, the diffusion model, its tokenizer, checkpoint to resume or
    None). On --resume the folder's own ar_config.json, with explicit flags on top."""
    from modeling import load_checkpoint

    checkpoint = None
    if acfg.resume:
        from runs import refuse_changes

        checkpoint = run.resume_point()
        saved = read_ar_config(acfg.output_dir)
        flags = {k: v for k, v in flags.items() if k != "resume"}
        refuse_changes(saved, flags, ("checkpoint", "n_layer", "n_inner"))
        acfg = ARConfig(**{**saved, **flags, "resume": True})
    diffusion, tokenizer, tcfg = load_checkpoint(acfg.checkpoint, device="cpu")
    return acfg, tcfg, diffusion, tokenizer, checkpoint


def read_ar_config(folder: str) -> dict:
    """folder/ar_config.json (the resolved ARConfig of the run there), or one line saying why not."""
    path = os.path.join(folder, AR_CONFIG)
    try:
        saved = read_json(path)
        if not set(saved) <= {f.name for f in dataclasses.fields(ARConfig)}:
            raise ValueError("not an ARConfig")
        ARConfig(**saved)
        return saved
    except (OSError, ValueError, UsageError) as e:
        raise UsageError(f"--resume: {path} is missing or damaged ({str(e).splitlines()[0][:100]}); start a fresh "
                         f"baseline in another --output-dir")


def build(acfg: ARConfig, tcfg, diffusion, tokenizer):
    """(the GPT-2 and the resolved ARConfig): same width and heads; n_inner (and maybe n_layer)
    solved for the diffusion model's parameter count."""
    import torch

    from limits import check_training
    from modeling import ar_shape, build_ar_model, gpt2_param_count, n_params, width_heads_depth

    target = n_params(diffusion)
    d, heads, layers = width_heads_depth(diffusion.config)
    n_layer, n_inner = acfg.n_layer or layers, acfg.n_inner
    if not n_inner:
        n_layer, n_inner = ar_shape(target, len(tokenizer), tcfg.max_len, d, n_layer, fixed_layers=bool(acfg.n_layer))
    acfg = dataclasses.replace(acfg, n_layer=n_layer, n_inner=n_inner,
                               learning_rate=acfg.learning_rate or tcfg.learning_rate)
    count = gpt2_param_count(len(tokenizer), tcfg.max_len, d, n_layer, n_inner)  # before building it
    if abs(count / target - 1) <= 0.10:
        check_training(tcfg, len(tokenizer), count, "cuda" if torch.cuda.is_available() else "cpu")
        model = build_ar_model(tokenizer, tcfg.max_len, d, heads, n_layer, n_inner, tcfg.seed)
        count = n_params(model)
    if abs(count / target - 1) > 0.10:
        raise UsageError(f"AR baseline has {count:,} parameters, more than 10% away from the diffusion "
                         f"model's {target:,}; change --n-layer / --n-inner")
    print(f"parameters: diffusion {type(diffusion).__name__} {target:,} | AR GPT-2 {count:,} "
          f"({count / target - 1:+.1%}; n_layer {n_layer}, n_embd {d}, n_head {heads}, n_inner {n_inner})", flush=True)
    return model, acfg


def main(argv=None) -> int:
    acfg, args = parse(ARConfig, argv, __doc__)
    from modeling import check_checkpoint
    from runs import RunFolder

    if not acfg.resume:
        check_checkpoint(acfg.checkpoint)  # before the output folder is made or locked

    with RunFolder(acfg.output_dir, "ar") as run:
        return train(acfg, given(args, ARConfig), run)


def train(acfg: ARConfig, flags: dict, run) -> int:
    from transformers import DataCollatorForLanguageModeling, set_seed
    from transformers.utils import logging as hf_logging

    from data import build_datasets
    from diffusion import bound_prefix
    from trainer import log_callbacks, use_bar, training_arguments

    hf_logging.disable_progress_bar()
    acfg, tcfg, diffusion, tokenizer, checkpoint = resolve(acfg, flags, run)
    use_bar(acfg.log_format)  # decided before the data: a plain log has no tokenising bars either
    train_ds, val_ds = build_datasets(tcfg, tokenizer)  # the diffusion run's pipeline and split, unchanged
    model, acfg = build(acfg, tcfg, diffusion, tokenizer)
    del diffusion
    print("resolved config:\n" + format_config(acfg), flush=True)
    print(f"data: {len(train_ds)} train / {len(val_ds)} held-out blocks of {tcfg.max_len} tokens "
          f"(the diffusion run's pipeline)", flush=True)
    print(f"token budget: {tcfg.max_steps} steps x {tcfg.batch_size} x {tcfg.grad_accum} x {tcfg.max_len} "
          f"= {tcfg.token_budget():,} tokens (same as the diffusion run)", flush=True)
    if tcfg.model != "scratch":
        print(f"note: the diffusion run fine-tuned the pretrained {tcfg.model}; this baseline starts from "
              f"scratch, so the comparison favours the diffusion model", flush=True)

    # the diffusion run's optimisation settings (no masked-LM evaluation: ARTrainer scores the held-out set)
    set_seed(tcfg.seed)
    args = training_arguments(tcfg, evaluate_first=checkpoint is None, output_dir=acfg.output_dir,
                              per_device_eval_batch_size=64, learning_rate=acfg.learning_rate)
    trainer = ar_trainer(bound_prefix(tcfg), model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                         data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),  # labels = input_ids
                         processing_class=tokenizer)
    log_callbacks(trainer, acfg.output_dir, tcfg, acfg.log_format)
    for callback in run.callbacks(tcfg.save_total_limit):
        trainer.add_callback(callback)
    if checkpoint is None:  # every check passed: now the folder becomes this run's
        run.start(tokenizer)
        save_config(acfg, acfg.output_dir, AR_CONFIG)
    else:
        run.resume(checkpoint, tokenizer, tcfg.max_steps)
    if not run.train(trainer, checkpoint):
        return 130
    return finish(acfg, tcfg, trainer, run)


def finish(acfg: ARConfig, tcfg, trainer, run) -> int:
    """The last held-out loss (evaluated now unless the last step already did), then final-model."""
    import torch

    step = trainer.state.global_step
    logged = [r["eval_loss"] for r in trainer.state.log_history if "eval_loss" in r and r.get("step") == step]
    loss = logged[-1] if logged else trainer.evaluate()["eval_loss"]
    print(f"held-out loss {loss:.4f} nats/token over every token after <s> = perplexity "
          f"{torch.tensor(loss).exp().item():.1f} (evaluate.py scores the diffusion model's token set)", flush=True)

    def extra(folder):
        save_config(acfg, folder, AR_CONFIG)
        save_config(tcfg, folder, "source_train_config.json")  # the data pipeline and budget it copied

    final = run.save_final(trainer, extra)
    run.finished(f"saved {final} (load with AutoModelForCausalLM.from_pretrained)")
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
