"""Which from-scratch recipe leaves the unigram plateau soonest? Train one recipe for a fixed
wall-clock time and report its held-out loss at 10%, 50% and 100% masking.

    python experiments/recipe_probe.py --seconds 40                          # the quick-test preset
    python experiments/recipe_probe.py --seconds 40 --learning-rate 3e-3     # one change on top of it
    python experiments/recipe_probe.py --seconds 40 --scratch-arch roberta --no-per-sample-rate

Every train.py flag is accepted on top of the quick-test preset; the model, data, masking, loss
(modeling.training_loss, the rule train.py trains with, --weighting-start included), learning rate
and weight decay apply. The Trainer's own flags do not (--max-steps, --warmup-steps, --lr-scheduler,
--batch-size's accumulation, logging, evaluation and checkpoints): it is a plain loop (AdamW,
30-step warm-up, clip 1.0) over the repo's own collator and loss, so that only the recipe differs.
Run it once per recipe and compare the lines appended to --out. Results are noisy from seed to
seed: the escape from the plateau is a sudden event.
"""

import json
import sys
import time

import repo_root  # noqa: F401  (first: puts the repo's modules on sys.path)

from cli import add_args, cli, given, parse
from config import QUICK_TEST, TrainConfig, flag, Settings


class ProbeConfig(Settings):
    seconds: float = flag(40.0, "training wall time of the probe", above=0, max=86400)
    out: str = flag("results/recipe_probe.jsonl", "one JSON line per probe is appended here")


def probe(cfg: TrainConfig, seconds: float) -> dict:
    import torch

    from data import build_datasets, get_tokenizer
    from data_collator import DiffusionCollator
    from diffusion import eval_batches, level_losses
    from limits import check_training, scratch_params
    from modeling import build_model, training_loss

    tok = get_tokenizer(cfg)
    train_ds, val_ds = build_datasets(cfg, tok)
    check_training(cfg, len(tok), scratch_params(cfg, len(tok)), blocks=len(train_ds))
    model = build_model(cfg, tok)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    collate = DiffusionCollator(tok, cfg)
    g = torch.Generator().manual_seed(cfg.seed)
    t0, step = time.time(), 0
    while time.time() - t0 < seconds:
        idx = torch.randint(len(train_ds), (cfg.batch_size,), generator=g)  # [B]
        batch = collate([train_ds[int(i)] for i in idx])
        for group in opt.param_groups:
            group["lr"] = cfg.learning_rate * min(1.0, (step + 1) / 30)
        loss, _, _ = training_loss(model, batch, cfg, step)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        step += 1
    losses = level_losses(model, eval_batches(val_ds, 16, 8), tok, cfg, [0.1, 0.5, 1.0], seed=cfg.seed)
    return {"steps": step, "seconds": seconds, "heldout_loss": {str(k): round(v, 3) for k, v in losses.items()}}


def main(argv=None) -> int:
    from files import append_jsonl, check_output

    cfg, args = parse(TrainConfig, argv, __doc__, presets=lambda flags: dict(QUICK_TEST),
                      extra=lambda p: add_args(p, ProbeConfig))
    pc = ProbeConfig(**given(args, ProbeConfig))
    check_output(pc.out, "--out")  # before the probe trains
    row = {"recipe": given(args, TrainConfig), **probe(cfg, pc.seconds)}
    print(json.dumps(row), flush=True)
    append_jsonl(pc.out, row)
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
