"""What the model sees at each corruption level, and the two knobs that set those levels.

    python experiments/masking_viz.py                                   # no checkpoint needed
    python experiments/masking_viz.py --checkpoint results/final-model  # that run's settings

1. Terminal: one held-out block of the corpus masked at 10%, 20%, ... 100% (masks drawn as █).
   The masks are nested: every token hidden at 30% is also hidden at 40%, as one sentence fades.
2. masking_schedules.png: the noise schedules (diffusion.SCHEDULES), fraction of the canvas still
   masked after each generation step, and how many tokens each step commits.
3. masking_rate_distributions.png: the training masking-rate distributions (the seed's levels, and
   each schedule drawn at uniform progress), and the share of each block's content actually masked
   once the prompt prefix is protected.

Without --checkpoint the quick-test preset's settings are used (window 64, its tokenizer and
held-out split), which are what `python train.py --quick-test` trains with. Everything comes from
the repo's own functions: diffusion.mask_tokens / sample_rates / SCHEDULES / mask_counts (the one
schedule registry training and generation share) and visualize.render. Settings are saved as
masking_viz.json beside the figures.
"""

import os
import sys

import repo_root  # noqa: F401  (first: puts the repo's modules on sys.path)

import dataclasses
import math
import textwrap

from cli import UsageError, cli, parse
from files import check_outputs, write_atomic, write_figure
from limits import check_fits, check_passes
from config import QUICK_TEST, TrainConfig, flag, parse_rates, save_config, Settings


class VizConfig(Settings):
    checkpoint: str = flag("", "train.py checkpoint whose tokenizer and settings to use; '' = quick-test preset")
    levels: str = flag("0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0", "masking rates shown in the terminal")
    block: int = flag(0, "which held-out block to show", min=0)
    prefix: int = flag(0, "leading content tokens kept visible in the terminal view (a prompt)", min=0)
    steps: int = flag(10, "denoising steps for the tokens-per-step panel", min=1)
    draws: int = flag(20000, "masking rates drawn per distribution for the histograms", min=1)
    width: int = flag(100, "terminal line width for the masked text", min=1)
    seed: int = flag(0, "fixes the masks and the drawn rates", min=0, max=2**32 - 1)
    out_dir: str = flag("results/figures", "PNGs and the settings JSON go here")

    def check(self) -> None:
        parse_rates(self.levels, "levels")


def load_setting(vc: VizConfig):
    """(tokenizer, TrainConfig, held-out blocks [N, L]) of the checkpoint or the quick-test preset."""
    from data import build_datasets, get_tokenizer

    if vc.checkpoint:
        from modeling import load_checkpoint

        _, tokenizer, cfg = load_checkpoint(vc.checkpoint, device="cpu")
    else:
        cfg = TrainConfig(**QUICK_TEST)
        tokenizer = get_tokenizer(cfg)  # trained on the corpus once, then cached
    _, val = build_datasets(cfg, tokenizer)
    return tokenizer, cfg, val[:]["input_ids"]  # [N, L]


# ---------------------------------------------------------------------------------------------
# 1. The same block at every masking level
# ---------------------------------------------------------------------------------------------


def masked_views(ids, levels: list[float], prefix: int, tokenizer, seed: int):
    """[(level, masked block [L], masked count, maskable count)] for one block [L]. The generator
    is reseeded per level, so mask_tokens ranks positions identically and the masks are nested."""
    import torch

    from diffusion import mask_tokens, protected_positions
    from tokens import never_masked_ids

    protected = protected_positions(ids[None], never_masked_ids(tokenizer), torch.tensor([prefix]))  # [1, L]
    views = []
    for level in levels:
        g = torch.Generator().manual_seed(seed)
        inputs, labels = mask_tokens(ids[None], torch.tensor([level]), protected, tokenizer.mask_token_id, g)
        views.append((level, inputs[0], int((labels != -100).sum()), int((~protected).sum())))
    return views


def format_views(views, tokenizer, width: int) -> str:
    """Each view as text with every mask drawn as █ (visualize.render), wrapped to width."""
    from tokens import banned_ids
    from visualize import render

    skip = set(banned_ids(tokenizer)) - {tokenizer.mask_token_id}
    lines = []
    for level, inputs, k, n in views:
        text = render(inputs.tolist(), tokenizer, tokenizer.mask_token_id, skip)
        lines.append(f"--- {level:.0%} masked ({k}/{n} tokens hidden) ---")
        lines += textwrap.wrap(text.replace("\n", " "), width=width) or [""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# 2. Generation schedules
# ---------------------------------------------------------------------------------------------


def plot_schedules(n_tokens: int, steps: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffusion import SCHEDULES, mask_counts

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    fine = 200
    x = [s / fine for s in range(fine + 1)]
    colors = dict(zip(SCHEDULES, plt.get_cmap("tab10").colors))
    for name, f in SCHEDULES.items():
        left.plot(x, [f(r) for r in x], color=colors[name], lw=2, label=name)
        counts = mask_counts(name, n_tokens, steps)
        left.plot([s / steps for s in range(steps + 1)], [c / n_tokens for c in counts], "o",
                  color=colors[name], ms=5)
    left.set(title=f"Fraction of the canvas still masked\n(dots: the integer counts of {steps} steps)",
             xlabel="denoising progress (step / total steps)", ylabel="fraction still masked")
    left.grid(alpha=0.3)
    left.legend(title="schedule")

    width = 0.8 / len(SCHEDULES)
    for i, name in enumerate(SCHEDULES):
        counts = mask_counts(name, n_tokens, steps)
        commits = [counts[s - 1] - counts[s] for s in range(1, steps + 1)]
        right.bar([s + (i - (len(SCHEDULES) - 1) / 2) * width for s in range(1, steps + 1)], commits,
                  width=width, color=colors[name], label=name)
    right.set(title=f"Tokens committed per step ({n_tokens} tokens in {steps} steps)",
              xlabel="step", ylabel="tokens committed")
    right.set_xticks(range(1, steps + 1))
    right.yaxis.get_major_locator().set_params(integer=True)
    right.grid(alpha=0.3, axis="y")
    right.legend(title="schedule")
    fig.tight_layout()
    write_figure(fig, path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# 3. Training masking-rate distributions
# ---------------------------------------------------------------------------------------------


def realised_fractions(blocks, cfg: TrainConfig, tokenizer, g):
    """(drawn rates [N], share of each block's content tokens masked [N]) under the training
    recipe of cfg: the rate applies to the positions left after the protected prompt prefix, so
    the share of the whole block is lower than t."""
    import torch

    from diffusion import mask_tokens, prefix_lengths, protected_positions, sample_rates
    from tokens import never_masked_ids

    special = never_masked_ids(tokenizer)
    content = ~protected_positions(blocks, special, torch.zeros(len(blocks), dtype=torch.long))  # [N, L]
    prefix = prefix_lengths(len(blocks), cfg.prefix_mode, cfg.prefix_len, g)  # [N]
    rates = sample_rates(len(blocks), dataclasses.replace(cfg, per_sample_rate=True), g)  # [N]
    _, labels = mask_tokens(blocks, rates, protected_positions(blocks, special, prefix), tokenizer.mask_token_id, g)
    return rates, (labels != -100).sum(1) / content.sum(1)  # [N], [N]


def panel_grid(n: int, cols: int = 3):
    """(rows, cols) of a grid that holds n panels, at most `cols` across."""
    cols = min(cols, n)
    return math.ceil(n / cols), cols


def plot_distributions(cfg: TrainConfig, draws: int, realised, path: str, seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from diffusion import SCHEDULES, sample_rates

    names = ("levels",) + tuple(SCHEDULES)  # one panel per training distribution, then the realised shares
    rows, cols = panel_grid(len(names) + 1)
    fig, axes = plt.subplots(rows, cols, figsize=(16 / 3 * cols, 4.25 * rows), squeeze=False)
    axes = axes.ravel()
    for ax in axes[len(names) + 1:]:
        ax.axis("off")
    bins = [i / 40 for i in range(41)]
    for ax, name in zip(axes, names):
        one = dataclasses.replace(cfg, mask_distribution=name, per_sample_rate=True)
        rates = sample_rates(draws, one, torch.Generator().manual_seed(seed))  # [draws]
        color = "tab:blue" if name == cfg.mask_distribution else "tab:gray"
        values, counts = rates.unique(return_counts=True)
        if len(values) <= 50:  # a discrete set of levels: one bar per level, not histogram bins
            ax.bar(values.numpy(), counts.numpy(), width=0.03, color=color)
        else:
            ax.hist(rates.numpy(), bins=bins, color=color, edgecolor="white")
        used = "  (this run's)" if name == cfg.mask_distribution else ""
        ax.set(title=f"--mask-distribution {name}{used}", xlabel="masking rate t", ylabel="draws",
               xlim=(0, 1.04))
        ax.grid(alpha=0.3, axis="y")
    ax = axes[len(names)]
    n = cfg.max_len - 2  # content tokens in a block: shares are k / n, so bins hold 2 values each
    ax.hist(realised.numpy(), bins=[(k - 0.5) / n for k in range(0, n + 3, 2)], color="tab:orange",
            edgecolor="white")
    ax.axvline(float(realised.mean()), color="black", ls="--", lw=1.2, label=f"mean {float(realised.mean()):.2f}")
    ax.set(title=f"Content actually masked\n({cfg.mask_distribution}, prefix {cfg.prefix_mode} "
                 f"<= {cfg.prefix_len} protected)",
           xlabel="masked tokens / content tokens per block", ylabel="blocks", xlim=(0, 1.02))
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3, axis="y")
    levels = cfg.mask_levels if cfg.mask_distribution == "levels" else f"mask_min {cfg.mask_min}"
    fig.suptitle(f"Training masking rates: {draws} draws per distribution ({levels})", fontsize=12)
    fig.tight_layout()
    write_figure(fig, path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


OUTPUTS = ("masking_levels.txt", "masking_schedules.png", "masking_rate_distributions.png", "masking_viz.json")


def main(argv=None) -> int:
    vc, _ = parse(VizConfig, argv, __doc__)
    levels = parse_rates(vc.levels, "levels")
    check_outputs(vc.out_dir, OUTPUTS, "--out-dir")
    check_passes(f"--steps {vc.steps}", vc.steps)
    check_fits(f"--draws {vc.draws:,}", vc.draws * 8 * 2)  # the drawn rates and their realised fractions
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer, cfg, blocks = load_setting(vc)
    if vc.block >= len(blocks):
        raise UsageError(f"--block {vc.block}: the held-out set has {len(blocks)} blocks")
    if vc.prefix > cfg.max_len - 3:
        raise UsageError(f"--prefix {vc.prefix} leaves nothing to mask in a window of {cfg.max_len}")

    views = masked_views(blocks[vc.block], levels, vc.prefix, tokenizer, vc.seed)
    text = format_views(views, tokenizer, vc.width)
    print(f"held-out block {vc.block} of {len(blocks)} ({cfg.max_len} tokens, {vc.prefix} prompt tokens kept), "
          f"as the model sees it at each masking level:")
    print(text)

    n_gen = cfg.max_len - 2 - cfg.prefix_len  # what a prompted generation fills in this window
    plot_schedules(n_gen, vc.steps, os.path.join(vc.out_dir, "masking_schedules.png"))
    g = torch.Generator().manual_seed(vc.seed)
    repeats = max(1, 5000 // len(blocks))  # enough rows for a smooth histogram on a small split
    drawn = [realised_fractions(blocks, cfg, tokenizer, g) for _ in range(repeats)]
    rates, realised = torch.cat([d[0] for d in drawn]), torch.cat([d[1] for d in drawn])  # [N], [N]
    plot_distributions(cfg, vc.draws, realised, os.path.join(vc.out_dir, "masking_rate_distributions.png"), vc.seed)
    write_atomic(os.path.join(vc.out_dir, "masking_levels.txt"), text + "\n")
    save_config(vc, vc.out_dir, "masking_viz.json")
    print(f"\ntraining recipe ({cfg.mask_distribution} rates, prefix {cfg.prefix_mode} <= {cfg.prefix_len}) "
          f"on {len(realised)} blocks: mean drawn rate {float(rates.mean()):.2f}, mean share of the "
          f"block's content actually masked {float(realised.mean()):.2f}")
    print(f"wrote {', '.join(OUTPUTS)} to {vc.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
