"""Compare denoising schedules, step counts, samplers and orders on held-out prompts.

    python experiments/schedule_comparison.py --checkpoint results/final-model
    python experiments/schedule_comparison.py --steps 8,32 --samplers topk --orders low-confidence

Every configuration continues the same prompts: the first --prompt-len tokens of --prompts
held-out blocks (spread over the held-out split), filling the rest of the window. Scores:

    metrics.SAMPLE_METRICS   every sample statistic evaluate.py reports (unigram entropy,
                    distinct-1/2, repeated 4-grams, the most frequent word's share), on token ids
    H ratio         unigram entropy of the samples / that of the true held-out continuations of
                    the same prompts (same token count); 1 = as varied as real text
    PLL             pseudo-log-likelihood, nats/token: each generated token masked alone, the rest
                    visible. Under the generating model (the default) this is partly SELF-GRADING:
                    greedy decoding picks the model's favourite tokens and scores well however
                    repetitive; --judge CHECKPOINT scores under another model with the same tokenizer.
    s/sample        wall seconds of denoise() for the batch / prompts (noisy on a shared CPU)

The first row scores the held-out continuations themselves, the reference for every column.

Writes to --out-dir (tag = checkpoint folder name): schedule_comparison_<tag>.csv, the settings
schedule_comparison_<tag>.json, schedule_quality_<tag>.png (each score vs steps, one colour per
schedule, one line style per sampler) and schedule_decoding_order_<tag>.png (the step at which
each position was committed, one panel per schedule).
"""

import os
import sys

import repo_root  # noqa: F401  (first: puts the repo's modules on sys.path)

import math
import time

from cli import UsageError, cli, given, parse
from files import check_outputs, write_csv, write_figure
from limits import check_passes
from config import GenConfig, Registry, check_temperature, flag, parse_ints, parse_names, save_config, Settings


class CompareConfig(Settings):
    checkpoint: str = flag("results/final-model", "train.py checkpoint that generates")
    schedules: str = flag("linear,cosine,exponential", "comma-separated names from diffusion.SCHEDULES")
    steps: str = flag("4,8,16", "comma-separated denoising step counts")
    samplers: str = flag("greedy,topk,nucleus", "comma-separated names from decoding.SAMPLERS")
    orders: str = flag("low-confidence,random", "comma-separated names from decoding.ORDERS")
    prompts: int = flag(16, "held-out blocks to take prompts from (one sample each, one batch)", min=1)
    prompt_len: int = flag(-1, "prompt tokens; -1 = the checkpoint's --prefix-len", min=-1)
    temperature: float = flag(0.9, "sampling temperature of topk and nucleus (0, or 0.001 to 100, as generate.py's)",
                              min=0, max=100)
    k: int = flag(50, "top-k size of topk", min=1)
    p: float = flag(0.95, "nucleus mass of nucleus", above=0, max=1)
    order_noise: float = flag(0.0, "Gumbel noise on the low-confidence/margin/entropy orders' scores, annealed to 0; "
                              "0 = each order exactly as named", min=0)
    judge: str = flag("", "checkpoint that scores PLL; '' = the generating model itself (self-graded)")
    plot_order: str = flag("low-confidence", "order shown in the two figures", choices=Registry("decoding", "ORDERS"))
    heatmap_sampler: str = flag("topk", "sampler shown in the decoding-order heatmap",
                                choices=Registry("decoding", "SAMPLERS"))
    heatmap_steps: int = flag(16, "step count shown in the decoding-order heatmap", min=1)
    seed: int = flag(0, "one generator seeded with this per configuration: same draws for all", min=0, max=2**32 - 1)
    threads: int = flag(1, "torch CPU threads (0 = torch's default); one avoids thread contention on shared cores",
                        min=0)
    out_dir: str = flag("results/figures", "CSV, PNGs and the settings JSON go here")

    def check(self) -> None:
        check_temperature(self.temperature)  # generate.py's rule, even when no chosen sampler reads it


def resolve_grid(cc: CompareConfig) -> dict:
    grid = {"schedules": parse_names(cc.schedules, "schedules", Registry("diffusion", "SCHEDULES")()),
            "steps": list(dict.fromkeys(parse_ints(cc.steps, "steps"))),
            "samplers": parse_names(cc.samplers, "samplers", Registry("decoding", "SAMPLERS")()),
            "orders": parse_names(cc.orders, "orders", Registry("decoding", "ORDERS")())}
    if not grid["steps"] or any(s < 1 for s in grid["steps"]):
        raise UsageError(f"--steps must all be at least 1, got {cc.steps!r}")
    for name, value, key in (("plot-order", cc.plot_order, "orders"),
                             ("heatmap-sampler", cc.heatmap_sampler, "samplers"),
                             ("heatmap-steps", cc.heatmap_steps, "steps")):
        if value not in grid[key]:
            raise UsageError(f"--{name} {value} is not among --{key} ({', '.join(map(str, grid[key]))})")
    return grid


def gen_config(cc: CompareConfig, schedule: str, steps: int, sampler: str, order: str) -> GenConfig:
    """One configuration of the grid, every field its rules read stated (decoding.explicit)."""
    from decoding import decided, explicit

    rule = dict(sampling=sampler, decode="schedule", schedule=schedule, steps=steps, order=order, remdm="none")
    rule |= {f: getattr(cc, f) for f in decided(GenConfig(**rule)) if f not in rule}  # temperature, k, p, order_noise
    return explicit({**rule, "checkpoint": cc.checkpoint, "seed": cc.seed, "out": ""})


# ---------------------------------------------------------------------------------------------
# Prompts and scores
# ---------------------------------------------------------------------------------------------


def prompt_canvas(blocks, plen: int, tokenizer):
    """decoding.Canvas continuing each held-out block's first plen tokens to the window's end."""
    import torch

    from decoding import Canvas
    from tokens import bos_eos

    bos, eos = bos_eos(tokenizer)
    P, L = blocks.shape
    canvas = torch.cat([torch.full((P, 1), bos), blocks[:, 1:1 + plen],
                        torch.full((P, L - 2 - plen), tokenizer.mask_token_id), torch.full((P, 1), eos)], 1)  # [P, L]
    pos = torch.arange(L).expand_as(canvas)  # [P, L]
    return Canvas(canvas, canvas == tokenizer.mask_token_id, (pos >= 1) & (pos <= plen), start=1 + plen)


def score(tokens, plen: int, tokenizer, judge, ref_entropy: float, seconds: float | None = None) -> dict:
    """Every metrics.SAMPLE_METRICS statistic of the generated part of canvases [B, L] (<s> prompt
    generated </s>), its entropy relative to the true continuations', and its PLL under judge."""
    import torch

    from metrics import pseudo_log_likelihood, sample_quality

    samples = tokens[:, 1 + plen:-1].tolist()  # [B, n]
    where = torch.zeros_like(tokens, dtype=torch.bool)  # [B, L]
    where[:, 1 + plen:-1] = True
    row = sample_quality(samples, [tokenizer.decode(x) for x in samples], None, seconds, 64)
    return {**row, "entropy_ratio": row["unigram_entropy"] / ref_entropy if ref_entropy else float("nan"),
            "pll_nats": pseudo_log_likelihood(judge, tokens, tokenizer.mask_token_id, where)}


def commit_steps(history, shape):
    """[B, L] the step at which each position was committed (nan where nothing was generated)."""
    import torch

    order = torch.full(shape, float("nan"))
    for h in history:
        order[h.committed] = float(h.step)
    return order


def left_to_right(order) -> float:
    """Pearson correlation of commit step with position over generated positions:
    +1 = strictly left to right, 0 = no positional order, -1 = right to left."""
    import torch

    rows, cols = (~order.isnan()).nonzero(as_tuple=True)
    x, y = cols.float(), order[rows, cols]
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(torch.corrcoef(torch.stack([x, y]))[0, 1])


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def panels() -> list[tuple[str, str]]:
    """(key, title) of each quality panel: PLL, every metrics.SAMPLE_METRICS statistic, the
    entropy ratio, speed."""
    from metrics import SAMPLE_METRICS

    return ([("pll_nats", "PLL, nats/token (lower = likelier)")]
            + [(k, m.title) for k, m in SAMPLE_METRICS.items()]
            + [("entropy_ratio", "unigram entropy / held-out text's"),
               ("seconds_per_sample", "seconds per sample (shared CPU: noisy)")])


def plot_quality(rows: list[dict], ref: dict, grid: dict, order: str, judge_name: str, judge_short: str,
                 path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    colors = dict(zip(grid["schedules"], plt.get_cmap("tab10").colors))
    styles = dict(zip(grid["samplers"], ["-", "--", ":", "-."] * 3))
    keys = panels()
    cols = 3
    n_rows = math.ceil((len(keys) + 1) / cols)  # the last cell holds the legend
    fig, axes = plt.subplots(n_rows, cols, figsize=(15, 4.25 * n_rows), squeeze=False)
    axes = axes.ravel()
    for ax, (key, label) in zip(axes, keys):
        for sched in grid["schedules"]:
            for sampler in grid["samplers"]:
                pts = sorted((r["steps"], r[key]) for r in rows
                             if r["schedule"] == sched and r["sampler"] == sampler and r["order"] == order)
                ax.plot(*zip(*pts), marker="o", ms=4, color=colors[sched], ls=styles[sampler], lw=1.6)
        if key in ref and key != "seconds_per_sample":
            ax.axhline(ref[key], color="black", lw=1, alpha=0.6)
        ax.set_xscale("log", base=2)
        ax.set_xticks(grid["steps"], [str(s) for s in grid["steps"]])
        ax.minorticks_off()
        ax.set_title(label, fontsize=11)
        ax.set_xlabel("denoising steps")
        ax.grid(alpha=0.3)
    axes[0].set_title(f"PLL, nats/token ({judge_short}; lower = likelier)", fontsize=11)
    for ax in axes[len(keys):]:
        ax.axis("off")
    legend_ax = axes[len(keys)]
    handles = [Line2D([], [], color=colors[s], lw=2.5, label=s) for s in grid["schedules"]]
    first = legend_ax.legend(handles=handles, title="schedule (colour)", loc="upper left", fontsize=11)
    legend_ax.add_artist(first)
    handles = [Line2D([], [], color="gray", ls=styles[s], lw=2, label=s) for s in grid["samplers"]]
    legend_ax.legend(handles=handles, title="sampler (line style)", loc="center left", fontsize=11)
    noise = next((r["order_noise"] for r in rows if r["order"] == order and r["order_noise"]), 0)
    legend_ax.text(0.0, 0.0, f"order: {order}" + (f" + noise {noise:g}" if noise else ", no noise")
                   + f"\nblack line: the held-out continuations\nof the same prompts\n"
                   f"PLL: each token masked alone, scored by\n{judge_name}",
                   transform=legend_ax.transAxes, fontsize=11, va="bottom")
    fig.suptitle("Sample quality vs denoising steps on held-out prompts", fontsize=14)
    fig.tight_layout()
    write_figure(fig, path, dpi=110)
    plt.close(fig)


def plot_orders(orders: dict, plen: int, title: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    fig, axes = plt.subplots(len(orders), 1, figsize=(12, 1.3 + 2.5 * len(orders)), squeeze=False,
                             constrained_layout=True)
    vmax = max(float(torch.nan_to_num(o, nan=0).max()) for o, _ in orders.values())
    cmap = plt.get_cmap("viridis").with_extremes(bad="#d9d9d9")  # grey: prompt and special tokens
    for ax, (sched, (order, r)) in zip(axes[:, 0], orders.items()):
        im = ax.imshow(order[:, 1:-1].numpy(), aspect="auto", cmap=cmap, vmin=1, vmax=vmax,
                       interpolation="nearest")
        ax.set_title(f"{sched}: corr(position, commit step) = {r:+.2f}", fontsize=11)
        ax.set_ylabel("sample")
        ax.axvline(plen - 0.5, color="white", lw=1.5)
    axes[-1, 0].set_xlabel(f"token position after <s> (grey: the {plen}-token prompt)")
    fig.colorbar(im, ax=axes[:, 0].tolist(), label="step that committed the token", fraction=0.03, pad=0.01)
    fig.suptitle(title, fontsize=12)
    write_figure(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def format_table(ref: dict, rows: list[dict], judge_name: str) -> str:
    from metrics import SAMPLE_METRICS

    stats = [(k, m.title, m.fmt) for k, m in SAMPLE_METRICS.items()] + [
        ("entropy_ratio", "H ratio", "{:.3f}"), ("pll_nats", "PLL", "{:.2f}"),
        ("seconds_per_sample", "s/sample", "{:.3f}"), ("forward_passes", "passes", "{}")]
    head = ["schedule", "steps", "sampler", "order"] + [title for _, title, _ in stats]
    cells = [head] + [[str(r["schedule"]), str(r["steps"]), r["sampler"],
                       r["order"] + (f" + noise {r['order_noise']:g}" if r.get("order_noise") else "")]
                      + [fmt.format(r[k]) for k, _, fmt in stats] for r in [ref] + rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = [f"PLL = pseudo-log-likelihood under {judge_name}, nats/token"]
    lines += ["  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
              for row in cells]
    return "\n".join(lines)


def load(cc: CompareConfig):
    """(model, tokenizer, TrainConfig, judge model, judge name, prompt length, prompt blocks [P, L])."""
    from data import build_datasets
    from metrics import reference_blocks
    from modeling import load_checkpoint

    model, tokenizer, cfg = load_checkpoint(cc.checkpoint)
    judge, judge_name = model, "the generating model (self-graded)"
    if cc.judge:
        judge, judge_tok, judge_cfg = load_checkpoint(cc.judge)
        if judge_tok.get_vocab() != tokenizer.get_vocab():
            raise UsageError(f"--judge {cc.judge} has a different tokenizer from {cc.checkpoint}; PLL needs the same")
        if judge_cfg.max_len < cfg.max_len:
            raise UsageError(f"--judge {cc.judge} has a window of {judge_cfg.max_len} < {cfg.max_len}")
        judge_name = os.path.basename(os.path.normpath(cc.judge))
    plen = cfg.prefix_len if cc.prompt_len < 0 else cc.prompt_len
    if not 0 <= plen <= cfg.max_len - 3:
        raise UsageError(f"--prompt-len must be in [0, {cfg.max_len - 3}] for a window of {cfg.max_len}, got {plen}")
    _, val = build_datasets(cfg, tokenizer)
    if cc.prompts > len(val):
        raise UsageError(f"--prompts {cc.prompts}: the held-out split has {len(val)} blocks")
    return model, tokenizer, cfg, judge, judge_name, plen, reference_blocks(val[:]["input_ids"], cc.prompts)


def run_grid(cc: CompareConfig, grid: dict, model, tokenizer, judge, plen: int, blocks, ref_entropy: float):
    """(a row per schedule x sampler x order x steps, {schedule: (commit steps, left-to-right corr)})."""
    import torch
    from tqdm import tqdm

    from decoding import denoise, setting_of
    from tokens import token_ids

    start = prompt_canvas(blocks, plen, tokenizer)
    configs = [(s, n, sm, rm) for s in grid["schedules"] for sm in grid["samplers"] for rm in grid["orders"]
               for n in grid["steps"]]
    rows, orders = [], {}
    for sched, steps, sampler, order in tqdm(configs, desc="configurations", leave=False):
        gc = gen_config(cc, sched, steps, sampler, order)
        t0 = time.perf_counter()
        final, history = denoise(model, start, token_ids(tokenizer), gc, torch.Generator().manual_seed(cc.seed))
        seconds = time.perf_counter() - t0
        rows.append({"kind": "sample", "schedule": sched, "steps": steps, "sampler": sampler, "order": order,
                     "order_noise": setting_of(gc).get("order_noise", 0.0),
                     **score(final, plen, tokenizer, judge, ref_entropy, seconds), "forward_passes": len(history)})
        if (sampler, order, steps) == (cc.heatmap_sampler, cc.plot_order, cc.heatmap_steps):
            commits = commit_steps(history, final.shape)
            orders[sched] = (commits, left_to_right(commits))
    return rows, orders


def main(argv=None) -> int:
    cc, args = parse(CompareConfig, argv, __doc__)
    grid = resolve_grid(cc)
    from decoding import ignored

    check_outputs(cc.out_dir, [os.path.basename(p) for p in output_paths(cc).values()], "--out-dir")
    for steps in grid["steps"]:  # the loop runs every step, even one that commits nothing
        check_passes(f"--steps {steps}", steps)
    configs = [gen_config(cc, sched, steps, sampler, order) for sched in grid["schedules"]  # all valid before any work
               for steps in grid["steps"] for sampler in grid["samplers"] for order in grid["orders"]]
    for line in ignored(configs, given(args, CompareConfig)):  # e.g. --k with no topk in --samplers
        print(f"warning: {line}", file=sys.stderr)
    import torch
    from transformers.utils import logging as hf_logging

    from metrics import unigram_entropy

    hf_logging.disable_progress_bar()
    if cc.threads:
        torch.set_num_threads(cc.threads)
    model, tokenizer, cfg, judge, judge_name, plen, blocks = load(cc)
    # 1. the reference: the true continuations of the same prompts; 2. every configuration continues them
    ref_entropy = unigram_entropy(blocks[:, 1 + plen:-1].tolist())
    ref = {"kind": "held-out", "schedule": "(held-out)", "steps": 0, "sampler": "-", "order": "-",
           **score(blocks, plen, tokenizer, judge, ref_entropy, 0.0), "forward_passes": 0}
    rows, orders = run_grid(cc, grid, model, tokenizer, judge, plen, blocks, ref_entropy)
    # 3. outputs
    print(f"{len(blocks)} held-out prompts of {plen} tokens from {cc.checkpoint}, {cfg.max_len - 2 - plen} tokens "
          f"generated each; held-out continuations: unigram entropy {ref_entropy:.2f} bits")
    print(format_table(ref, rows, judge_name))
    write_outputs(cc, grid, ref, rows, orders, plen, judge_name)
    return 0


def output_paths(cc: CompareConfig) -> dict:
    tag = os.path.basename(os.path.normpath(cc.checkpoint))
    return {k: os.path.join(cc.out_dir, f"{name}_{tag}.{ext}") for k, name, ext in (
        ("csv", "schedule_comparison", "csv"), ("json", "schedule_comparison", "json"),
        ("quality", "schedule_quality", "png"), ("order", "schedule_decoding_order", "png"))}


def write_outputs(cc: CompareConfig, grid: dict, ref: dict, rows: list[dict], orders: dict, plen: int,
                  judge_name: str) -> None:
    tag = os.path.basename(os.path.normpath(cc.checkpoint))
    paths = output_paths(cc)
    columns = list(dict.fromkeys(k for r in [ref] + rows for k in r))
    write_csv(paths["csv"], [columns] + [[round(r[k], 5) if isinstance(r.get(k), float) else r.get(k, "")
                                          for k in columns] for r in [ref] + rows])
    save_config(cc, cc.out_dir, os.path.basename(paths["json"]))
    plot_quality(rows, ref, grid, cc.plot_order, judge_name, f"judge: {judge_name}" if cc.judge else "self-graded",
                 paths["quality"])
    plot_orders(orders, plen, f"Decoding order: {cc.heatmap_sampler}, {cc.plot_order} order, "
                              f"{cc.heatmap_steps} steps ({tag})", paths["order"])
    print("\nper schedule (" + cc.plot_order + " order, mean over samplers and step counts):")
    for sched in grid["schedules"]:
        sel = [r for r in rows if r["schedule"] == sched and r["order"] == cc.plot_order]
        mean = {k: sum(r[k] for r in sel) / len(sel) for k in ("pll_nats", "distinct_2", "repeated_4gram")}
        print(f"  {sched:<12} PLL {mean['pll_nats']:.2f} (held-out {ref['pll_nats']:.2f})  distinct-2 "
              f"{mean['distinct_2']:.3f} (held-out {ref['distinct_2']:.3f})  rep-4 {mean['repeated_4gram']:.3f}  "
              f"order corr(position, step) at {cc.heatmap_steps} steps {orders[sched][1]:+.2f}")
    for key in ("csv", "json", "quality", "order"):
        print(f"wrote {paths[key]}")


if __name__ == "__main__":
    sys.exit(cli(main))
