"""Which from-scratch recipe leaves the unigram plateau soonest? Train each for the same
wall-clock seconds and compare held-out loss at 10%, 50% and 100% masking.

    python experiments/recipe_probe.py --seconds 40 \
        --recipe '{"scratch_layers": 2, "scratch_hidden": 128, "scratch_intermediate": 256}' \
        --recipe '{"scratch_layers": 2, "scratch_hidden": 128, "scratch_intermediate": 256, "per_sample_rate": true}'

Each recipe is a JSON dict of TrainConfig fields on top of the quick-test preset (plus "lr").
It is a plain loop (AdamW, 30-step warm-up, clip 1.0) over the repo's own collator and loss,
without the Trainer, so that only the recipe differs. Results are noisy from seed to seed: the
escape from the plateau is a sudden event. Prints one line per recipe and writes JSON.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from config import QUICK_TEST, TrainConfig, UsageError, cli  # noqa: E402


def probe(overrides: dict, seconds: float, seed: int) -> dict:
    from data import build_datasets, get_tokenizer
    from data_collator import DiffusionCollator
    from modeling import build_model, masked_lm_loss
    from train import eval_batches, level_losses

    overrides = dict(overrides)
    lr = overrides.pop("lr", QUICK_TEST["learning_rate"])
    try:
        cfg = TrainConfig(**{**QUICK_TEST, **overrides, "seed": seed})
    except TypeError as e:
        raise UsageError(f"bad recipe {overrides}: {e}")
    tok = get_tokenizer(cfg)
    train_ds, val_ds = build_datasets(cfg, tok)
    model = build_model(cfg, tok)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    collate = DiffusionCollator(tok, cfg)
    g = torch.Generator().manual_seed(seed)
    t0, step = time.time(), 0
    while time.time() - t0 < seconds:
        idx = torch.randint(len(train_ds), (cfg.batch_size,), generator=g)  # [B]
        batch = collate([train_ds[int(i)] for i in idx])
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 30)
        loss, _, _ = masked_lm_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                    batch["mask_rate"], cfg.loss_weighting, cfg.masked_only_head)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        step += 1
    losses = level_losses(model, eval_batches(val_ds, 16, 8), tok, cfg, [0.1, 0.5, 1.0], seed=seed)
    return {"recipe": {**overrides, "lr": lr}, "steps": step, "seconds": seconds,
            "heldout_loss": {str(k): round(v, 3) for k, v in losses.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", action="append", required=True, help="JSON dict of TrainConfig fields (+ lr)")
    p.add_argument("--seconds", type=float, default=40.0, help="training wall time per recipe")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, data order and masks")
    p.add_argument("--out", default="results/recipe_probe.json", help="where the JSON results go")
    args = p.parse_args(argv)
    try:
        recipes = [json.loads(r) for r in args.recipe]
    except json.JSONDecodeError as e:
        raise UsageError(f"--recipe must be a JSON object: {e.msg}")
    rows = []
    for recipe in recipes:
        row = probe(recipe, args.seconds, args.seed)
        print(json.dumps(row), flush=True)
        rows.append(row)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"seconds": args.seconds, "seed": args.seed, "results": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
