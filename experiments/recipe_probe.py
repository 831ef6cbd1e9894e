"""Which from-scratch recipe leaves the unigram plateau soonest? Train one recipe for a fixed
wall-clock time and report its held-out loss at 10%, 50% and 100% masking.

    python experiments/recipe_probe.py --seconds 40                          # the quick-test preset
    python experiments/recipe_probe.py --seconds 40 --learning-rate 3e-3     # one change on top of it
    python experiments/recipe_probe.py --seconds 40 --scratch-arch roberta --no-per-sample-rate

Every train.py flag is accepted and applies on top of the quick-test preset; run it once per
recipe and compare the lines appended to --out. It is a plain loop (AdamW, 30-step warm-up, clip
1.0) over the repo's own collator and loss, without the Trainer, so that only the recipe differs.
Results are noisy from seed to seed: the escape from the plateau is a sudden event.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: spinning threads crawl on a shared CPU

import torch  # noqa: E402

from config import QUICK_TEST, ProbeConfig, TrainConfig, add_args, cli, given, parse  # noqa: E402


def probe(cfg: TrainConfig, seconds: float) -> dict:
    from data import build_datasets, get_tokenizer
    from data_collator import DiffusionCollator
    from diffusion import eval_batches, level_losses
    from modeling import build_model, masked_lm_loss

    tok = get_tokenizer(cfg)
    train_ds, val_ds = build_datasets(cfg, tok)
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
        loss, _, _ = masked_lm_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                    batch["mask_rate"], cfg.loss_weighting, cfg.masked_only_head)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        step += 1
    losses = level_losses(model, eval_batches(val_ds, 16, 8), tok, cfg, [0.1, 0.5, 1.0], seed=cfg.seed)
    return {"steps": step, "seconds": seconds, "heldout_loss": {str(k): round(v, 3) for k, v in losses.items()}}


def main(argv=None) -> int:
    cfg, args = parse(TrainConfig, argv, __doc__, presets=lambda flags: dict(QUICK_TEST),
                      extra=lambda p: add_args(p, ProbeConfig))
    pc = ProbeConfig(**given(args, ProbeConfig))
    row = {"recipe": given(args, TrainConfig), **probe(cfg, pc.seconds)}
    print(json.dumps(row), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(pc.out)), exist_ok=True)
    with open(pc.out, "a") as f:
        f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
