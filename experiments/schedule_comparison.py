"""Compare denoising schedules, step counts, samplers and orders on held-out prompts.

    python experiments/schedule_comparison.py --checkpoint results/final-model
    python experiments/schedule_comparison.py --steps 8,32 --samplers topk --orders low-confidence

Every configuration continues the same prompts: the first --prompt-len tokens of --prompts
held-out blocks (spread over the held-out split), filling the rest of the window. Scores:

    distinct-1/2    unique token uni-/bigrams over all samples (BPE tokens); low = repetitive
    rep-4           share of 4-grams that repeat an earlier 4-gram of the same sample
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the repo's modules live one folder up

import csv  # noqa: E402
import time  # noqa: E402

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: spinning threads crawl on a shared CPU

import torch  # noqa: E402

from config import CompareConfig, GenConfig, UsageError, cli, parse, parse_ints, parse_names, save_config  # noqa: E402


def resolve_grid(cc: CompareConfig) -> dict:
    from decoding import ORDERS, SAMPLERS
    from diffusion import SCHEDULES

    grid = {"schedules": parse_names(cc.schedules, "schedules", tuple(SCHEDULES)),
            "steps": list(dict.fromkeys(parse_ints(cc.steps, "steps"))),
            "samplers": parse_names(cc.samplers, "samplers", tuple(SAMPLERS)),
            "orders": parse_names(cc.orders, "orders", tuple(ORDERS))}
    if not grid["steps"] or any(s < 1 for s in grid["steps"]):
        raise UsageError(f"--steps must all be at least 1, got {cc.steps!r}")
    for flag, value, key in (("plot-order", cc.plot_order, "orders"),
                             ("heatmap-sampler", cc.heatmap_sampler, "samplers"),
                             ("heatmap-steps", cc.heatmap_steps, "steps")):
        if value not in grid[key]:
            raise UsageError(f"--{flag} {value} is not among --{key} ({', '.join(map(str, grid[key]))})")
    return grid


def gen_config(cc: CompareConfig, schedule: str, steps: int, sampler: str, order: str) -> GenConfig:
    return GenConfig(checkpoint=cc.checkpoint, steps=steps, schedule=schedule, sampling=sampler, order=order,
                     temperature=cc.temperature, k=cc.k, p=cc.p, seed=cc.seed, out="")


# ---------------------------------------------------------------------------------------------
# Prompts and scores
# ---------------------------------------------------------------------------------------------


def held_out_prompts(val_ids: torch.Tensor, n: int) -> torch.Tensor:
    """n held-out blocks [n, L] spread evenly over the split, so prompts come from many articles."""
    if n > len(val_ids):
        raise UsageError(f"--prompts {n}: the held-out split has {len(val_ids)} blocks")
    idx = torch.linspace(0, len(val_ids) - 1, n).round().long()  # [n]
    return val_ids[idx]


def score(tokens: torch.Tensor, plen: int, judge, mask_id: int, ref_entropy: float) -> dict:
    """Scores of the generated part of canvases [B, L] (<s> prompt generated </s>)."""
    from metrics import distinct_n, pseudo_log_likelihood, repeated_ngram_rate, unigram_entropy

    gen = tokens[:, 1 + plen:-1]  # [B, n]
    samples = gen.tolist()
    where = torch.zeros_like(tokens, dtype=torch.bool)  # [B, L]
    where[:, 1 + plen:-1] = True
    h = abs(unigram_entropy(samples))  # -0.0 when every sample is one repeated token
    return {"distinct_1": distinct_n(samples, 1), "distinct_2": distinct_n(samples, 2),
            "rep_4": repeated_ngram_rate(samples, 4), "entropy_bits": h,
            "entropy_ratio": h / ref_entropy if ref_entropy else float("nan"),
            "pll_nats": pseudo_log_likelihood(judge, tokens, mask_id, where)}


def commit_steps(history, shape) -> torch.Tensor:
    """[B, L] the step at which each position was committed (nan where nothing was generated)."""
    order = torch.full(shape, float("nan"))
    for h in history:
        order[h.committed] = float(h.step)
    return order


def left_to_right(order: torch.Tensor) -> float:
    """Pearson correlation of commit step with position over generated positions:
    +1 = strictly left to right, 0 = no positional order, -1 = right to left."""
    rows, cols = (~order.isnan()).nonzero(as_tuple=True)
    x, y = cols.float(), order[rows, cols]
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(torch.corrcoef(torch.stack([x, y]))[0, 1])


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------

METRICS = [("pll_nats", "PLL, nats/token (lower = likelier)"),
           ("distinct_2", "distinct-2 (higher = more varied)"),
           ("rep_4", "repeated 4-gram rate (lower = less looping)"),
           ("entropy_ratio", "unigram entropy / held-out text's"),
           ("seconds_per_sample", "seconds per sample (shared CPU: noisy)")]


def plot_quality(rows: list[dict], ref: dict, grid: dict, order: str, judge_name: str, judge_short: str,
                 path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    colors = dict(zip(grid["schedules"], plt.get_cmap("tab10").colors))
    styles = dict(zip(grid["samplers"], ["-", "--", ":", "-."] * 3))
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    axes = axes.ravel()
    for ax, (key, label) in zip(axes, METRICS):
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
    legend_ax = axes[-1]
    legend_ax.axis("off")
    handles = [Line2D([], [], color=colors[s], lw=2.5, label=s) for s in grid["schedules"]]
    first = legend_ax.legend(handles=handles, title="schedule (colour)", loc="upper left", fontsize=11)
    legend_ax.add_artist(first)
    handles = [Line2D([], [], color="gray", ls=styles[s], lw=2, label=s) for s in grid["samplers"]]
    legend_ax.legend(handles=handles, title="sampler (line style)", loc="center left", fontsize=11)
    legend_ax.text(0.0, 0.0, f"order: {order}\nblack line: the held-out continuations\nof the same prompts\n"
                   f"PLL: each token masked alone, scored by\n{judge_name}",
                   transform=legend_ax.transAxes, fontsize=11, va="bottom")
    fig.suptitle("Sample quality vs denoising steps on held-out prompts", fontsize=14)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_orders(orders: dict, plen: int, title: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

COLUMNS = ["kind", "schedule", "steps", "sampler", "order", "distinct_1", "distinct_2", "rep_4",
           "entropy_bits", "entropy_ratio", "pll_nats", "seconds_per_sample", "forward_passes"]


def format_table(ref: dict, rows: list[dict], judge_name: str) -> str:
    head = (f"{'schedule':<12}{'steps':>6}  {'sampler':<8}{'order':<15}{'dist-1':>7}{'dist-2':>7}{'rep-4':>7}"
            f"{'H ratio':>8}{'PLL':>7}{'s/sample':>9}{'passes':>7}")
    lines = [f"PLL = pseudo-log-likelihood under {judge_name}, nats/token", head, "-" * len(head)]

    def line(r):
        return (f"{r['schedule']:<12}{r['steps']:>6}  {r['sampler']:<8}{r['order']:<15}{r['distinct_1']:>7.3f}"
                f"{r['distinct_2']:>7.3f}{r['rep_4']:>7.3f}{r['entropy_ratio']:>8.3f}{r['pll_nats']:>7.2f}"
                f"{r['seconds_per_sample']:>9.3f}{r['forward_passes']:>7}")

    lines.append(line(ref))
    for r in rows:
        lines.append(line(r))
    return "\n".join(lines)


def main(argv=None) -> int:
    cc, _ = parse(CompareConfig, argv, __doc__)
    grid = resolve_grid(cc)
    for sched in grid["schedules"]:  # every GenConfig of the grid is valid before any work starts
        for steps in grid["steps"]:
            for sampler in grid["samplers"]:
                for order in grid["orders"]:
                    gen_config(cc, sched, steps, sampler, order)

    from tqdm import tqdm
    from transformers.utils import logging as hf_logging

    from data import bos_eos, build_datasets
    from decoding import Canvas, denoise, token_ids
    from modeling import load_checkpoint
    from metrics import unigram_entropy

    hf_logging.disable_progress_bar()
    if cc.threads:
        torch.set_num_threads(cc.threads)
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
    blocks = held_out_prompts(val[:]["input_ids"], cc.prompts)  # [P, L]
    tag = os.path.basename(os.path.normpath(cc.checkpoint))
    paths = {k: os.path.join(cc.out_dir, f"{name}_{tag}.{ext}") for k, name, ext in (
        ("csv", "schedule_comparison", "csv"), ("json", "schedule_comparison", "json"),
        ("quality", "schedule_quality", "png"), ("order", "schedule_decoding_order", "png"))}

    # 1. the reference: the true continuations of the same prompts
    ids = token_ids(tokenizer)
    mask_id = ids["mask"]
    ref_entropy = unigram_entropy(blocks[:, 1 + plen:-1].tolist())
    ref = {"kind": "held-out", "schedule": "(held-out)", "steps": 0, "sampler": "-", "order": "-",
           **score(blocks, plen, judge, mask_id, ref_entropy), "seconds_per_sample": 0.0, "forward_passes": 0}

    # 2. every configuration continues the same prompts
    bos, eos = bos_eos(tokenizer)
    n_gen = cfg.max_len - 2 - plen
    canvas = torch.cat([torch.full((len(blocks), 1), bos), blocks[:, 1:1 + plen],
                        torch.full((len(blocks), n_gen), mask_id), torch.full((len(blocks), 1), eos)], 1)  # [P, L]
    pos = torch.arange(canvas.shape[1]).expand_as(canvas)  # [P, L]
    start = Canvas(canvas, canvas == mask_id, (pos >= 1) & (pos <= plen), start=1 + plen)
    configs = [(s, n, sm, rm) for s in grid["schedules"] for sm in grid["samplers"] for rm in grid["orders"]
               for n in grid["steps"]]
    rows, orders = [], {}
    for sched, steps, sampler, order in tqdm(configs, desc="configurations", leave=False):
        gc = gen_config(cc, sched, steps, sampler, order)
        g = torch.Generator().manual_seed(cc.seed)
        t0 = time.perf_counter()
        final, history = denoise(model, start, ids, gc, g)
        seconds = time.perf_counter() - t0
        rows.append({"kind": "sample", "schedule": sched, "steps": steps, "sampler": sampler, "order": order,
                     **score(final, plen, judge, mask_id, ref_entropy),
                     "seconds_per_sample": seconds / len(blocks), "forward_passes": len(history)})
        if (sampler, order, steps) == (cc.heatmap_sampler, cc.plot_order, cc.heatmap_steps):
            order = commit_steps(history, final.shape)
            orders[sched] = (order, left_to_right(order))

    # 3. outputs
    print(f"{len(blocks)} held-out prompts of {plen} tokens from {cc.checkpoint}, {n_gen} tokens generated each; "
          f"held-out continuations: unigram entropy {ref_entropy:.2f} bits")
    print(format_table(ref, rows, judge_name))
    os.makedirs(cc.out_dir, exist_ok=True)
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in [ref] + rows:
            w.writerow({k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()})
    save_config(cc, cc.out_dir, os.path.basename(paths["json"]))
    plot_quality(rows, ref, grid, cc.plot_order, judge_name, f"judge: {judge_name}" if cc.judge else "self-graded",
                 paths["quality"])
    plot_orders(orders, plen, f"Decoding order: {cc.heatmap_sampler}, {cc.plot_order} order, "
                              f"{cc.heatmap_steps} steps ({tag})", paths["order"])

    print("\nper schedule (" + cc.plot_order + " order, mean over samplers and step counts):")
    for sched in grid["schedules"]:
        sel = [r for r in rows if r["schedule"] == sched and r["order"] == cc.plot_order]
        mean = {k: sum(r[k] for r in sel) / len(sel) for k in ("pll_nats", "distinct_2", "rep_4")}
        r = orders[sched][1]
        print(f"  {sched:<12} PLL {mean['pll_nats']:.2f} (held-out {ref['pll_nats']:.2f})  distinct-2 "
              f"{mean['distinct_2']:.3f} (held-out {ref['distinct_2']:.3f})  rep-4 {mean['rep_4']:.3f}  "
              f"order corr(position, step) at {cc.heatmap_steps} steps {r:+.2f}")
    for key in ("csv", "json", "quality", "order"):
        print(f"wrote {paths[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
