"""Look inside the layers of a checkpoint at every masking level.

    python experiments/layer_analysis.py --checkpoint results/checkpoint-3000
    python experiments/layer_analysis.py --checkpoint results/final-model --batches 4

Held-out blocks are masked exactly as train.py's held-out evaluation masks them
(diffusion.level_losses: same batches, same seed per level, same prompt-prefix rule), then:

    logit lens     each layer's hidden state at the masked positions goes through the LM head;
                   accuracy (top-1) and cross-entropy per layer x masking level. Layer 0 is the
                   embedding output. Pre-LayerNorm encoders (ModernBERT) apply `final_norm` to the
                   last layer only, so the lens applies it to every earlier layer too: the head is
                   read the way it was trained to be read.
    attention      entropy (bits) of each head's attention distribution from masked query
                   positions, per layer x masking level (uniform attention over L keys = log2 L).
    CKA            linear CKA between the layers' representations (the lens inputs) over all
                   content positions, at a few masking levels: 1 = same geometry.
    calibration    final-layer confidence (top-1 probability) against accuracy on masked tokens,
                   per masking level: reliability diagram and ECE. Confidence-based remasking and
                   threshold decoding trust this number.

Writes to --out-dir (tag = checkpoint folder name): layer_logit_lens_<tag>.png,
layer_attention_entropy_<tag>.png, layer_cka_<tag>.png, layer_calibration_<tag>.png, every number
in layer_analysis_<tag>.csv (long format), and the settings in layer_analysis_<tag>.json.
"""

import os
import sys

import repo_root  # noqa: F401  (first: puts the repo's modules on sys.path)

import math

import files
from cli import UsageError, cli, parse
from config import flag, parse_rates, save_config, Settings


class LayerConfig(Settings):
    checkpoint: str = flag("results/final-model", "train.py checkpoint (any checkpoint-N or final-model)")
    levels: str = flag("", "comma-separated masking rates; '' = the levels train.py reports losses at")
    batches: int = flag(8, "held-out batches (the first ones, as train.py's evaluation takes them)", min=1)
    batch_size: int = flag(0, "blocks per batch; 0 = the checkpoint's --batch-size", min=0)
    cka_levels: str = flag("0.1,0.5,1.0", "masking rates with a CKA panel each")
    bins: int = flag(10, "equal-width confidence bins for the reliability diagram and ECE", min=1, max=1000)
    seed: int = flag(-1, "masks; -1 = the checkpoint's seed, i.e. the masks of train.py's held-out eval", min=-1, max=2**32 - 1)
    threads: int = flag(1, "torch CPU threads (0 = torch's default); one avoids thread contention on shared cores",
                        min=0)
    out_dir: str = flag("results/figures", "PNGs, CSV and the settings JSON go here")

    def check(self) -> None:
        if self.levels:
            parse_rates(self.levels, "levels")
        parse_rates(self.cka_levels, "cka-levels")


def rates(text: str, flag_: str) -> list[float]:
    return sorted(set(parse_rates(text, flag_)))


# ---------------------------------------------------------------------------------------------
# Pure measures
# ---------------------------------------------------------------------------------------------


def linear_cka(x, y) -> float:
    """Linear CKA (Kornblith et al., 2019) of two representations [N, D1], [N, D2] of the same N
    items: 1 when one is a rotation + isotropic scaling of the other, near 0 when unrelated."""
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    cross = (y.T @ x).pow(2).sum()  # ||Y^T X||_F^2
    norm = (x.T @ x).pow(2).sum().sqrt() * (y.T @ y).pow(2).sum().sqrt()
    return float(cross / norm) if norm > 0 else float("nan")


def reliability(conf, correct, bins: int) -> tuple[float, list[tuple]]:
    """(ECE, [(bin low, bin high, count, mean confidence, accuracy)]) over equal-width bins.
    ECE = sum over bins of (share of tokens) x |accuracy - mean confidence|."""
    conf, correct = conf.double(), correct.double()
    idx = (conf * bins).long().clamp(max=bins - 1)  # [N] confidence 1.0 falls in the top bin
    table, ece = [], 0.0
    for b in range(bins):
        sel = idx == b
        n = int(sel.sum())
        if n:
            mc, acc = float(conf[sel].mean()), float(correct[sel].mean())
            ece += n / len(conf) * abs(acc - mc)
            table.append((b / bins, (b + 1) / bins, n, mc, acc))
        else:
            table.append((b / bins, (b + 1) / bins, 0, float("nan"), float("nan")))
    return ece, table


def attention_entropy(attn):
    """[B, heads, L, L] attention rows -> [B, heads, L] entropy in bits of each query's row."""
    return -(attn * attn.clamp_min(1e-12).log2()).sum(-1)


# ---------------------------------------------------------------------------------------------
# One pass over the held-out batches at every level
# ---------------------------------------------------------------------------------------------


def lens_reader(model):
    """(encoder, head fn, norm applied to intermediate layers) from modeling.HEADS."""
    import torch

    from modeling import HEADS

    name = type(model).__name__
    if name not in HEADS:
        raise UsageError(f"layer_analysis reads the LM head of {', '.join(HEADS)}; {name} is not among them")
    attr, head = HEADS[name]
    encoder = getattr(model, attr)
    # pre-LN encoders normalise only the last layer's output before the head; post-LN ones
    # (RoBERTa, BERT) already end every layer in a LayerNorm
    norm = getattr(encoder, "final_norm", None) or torch.nn.Identity()
    return encoder, head, norm


def analyse_level(model, batches, tokenizer, cfg, level: float, g, keep_reps: bool) -> dict:
    """At one masking level: lens accuracy/CE per layer, attention entropy per layer x head,
    final-layer confidences and correctness, and (keep_reps) every layer's representations."""
    import torch

    with torch.no_grad():
        return analyse(model, batches, tokenizer, cfg, level, g, keep_reps)


def analyse(model, batches, tokenizer, cfg, level: float, g, keep_reps: bool) -> dict:
    import torch
    import torch.nn.functional as F

    from diffusion import mask_tokens, prefix_lengths, protected_positions
    from tokens import never_masked_ids

    encoder, head, norm = lens_reader(model)
    device = next(model.parameters()).device
    special = never_masked_ids(tokenizer)
    n_layers = model.config.num_hidden_layers
    ce_sum, acc_sum = torch.zeros(n_layers + 1), torch.zeros(n_layers + 1)
    ent_sum = torch.zeros(n_layers, model.config.num_attention_heads)
    count, conf, correct, reps = 0, [], [], []
    for ids in batches:
        # 1. mask exactly as diffusion.level_losses does (same calls, same generator order)
        prefix = prefix_lengths(len(ids), cfg.prefix_mode, cfg.prefix_len, g)  # [B]
        inputs, labels = mask_tokens(ids, torch.full((len(ids),), level),
                                     protected_positions(ids, special, prefix), tokenizer.mask_token_id, g)
        where = (labels != -100).to(device)  # [B, L]
        target = labels.to(device)[where]  # [N]
        # 2. one forward pass, every layer's hidden state and attention weights
        o = encoder(input_ids=inputs.to(device), output_hidden_states=True, output_attentions=True)
        if len(o.attentions or ()) != n_layers:
            raise UsageError(f"{type(model).__name__} returned no attention weights; it needs "
                             f"attn_implementation='eager'")
        lens = [norm(h) if l < n_layers else h  # hidden_states[-1] is already normed
                for l, h in enumerate(o.hidden_states)]  # n_layers + 1 of [B, L, H]
        # 3. the LM head on each layer at the masked positions
        for l, h in enumerate(lens):
            logits = head(model, h[where]).float()  # [N, V]
            ce_sum[l] += F.cross_entropy(logits, target, reduction="sum").item()
            acc_sum[l] += (logits.argmax(-1) == target).sum().item()
        c, pred = logits.softmax(-1).max(-1)  # [N], [N] of the final layer
        conf.append(c.cpu())
        correct.append((pred == target).cpu())
        # 4. attention entropy of the masked queries
        for l, attn in enumerate(o.attentions):
            ent = attention_entropy(attn.float()).permute(0, 2, 1)  # [B, L, heads]
            ent_sum[l] += ent[where].sum(0).cpu()  # [heads]
        count += int(where.sum())
        if keep_reps:
            content = ~torch.isin(ids, torch.tensor(special)).to(device)  # [B, L]
            reps.append([h[content].cpu() for h in lens])  # n_layers + 1 of [n, H]
    out = {"acc": (acc_sum / count).tolist(), "ce": (ce_sum / count).tolist(),
           "entropy": (ent_sum / count).tolist(), "count": count,
           "conf": torch.cat(conf), "correct": torch.cat(correct)}
    if keep_reps:
        out["reps"] = [torch.cat([r[l] for r in reps]) for l in range(n_layers + 1)]
    return out


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def layer_names(n_layers: int) -> list[str]:
    return ["embeddings"] + [f"layer {l}" for l in range(1, n_layers + 1)]


def annotated_heatmap(ax, values, xlabels, ylabels, fmt, cmap, vmin=None, vmax=None):
    import numpy as np

    arr = np.array(values, dtype=float)
    im = ax.imshow(arr, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(xlabels)), xlabels)
    ax.set_yticks(range(len(ylabels)), ylabels)
    for r in range(arr.shape[0]):
        for c in range(arr.shape[1]):
            red, green, blue, _ = im.cmap(im.norm(arr[r, c]))
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5  # white text on dark cells
            ax.text(c, r, fmt(arr[r, c]), ha="center", va="center", fontsize=9, color="white" if dark else "black")
    return im


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_lens(res, levels, tag, path):
    plt = _plt()
    n_layers = len(res[levels[0]]["acc"]) - 1
    names = layer_names(n_layers)
    xl = [f"{t:.0%}" for t in levels]
    fig, (a, b) = plt.subplots(1, 2, figsize=(15, 1.6 + 0.75 * (n_layers + 1) + 1.2))
    acc = [[100 * res[t]["acc"][l] for t in levels] for l in range(n_layers + 1)]
    ce = [[res[t]["ce"][l] for t in levels] for l in range(n_layers + 1)]
    im = annotated_heatmap(a, acc, xl, names, lambda v: f"{v:.0f}", "viridis")
    fig.colorbar(im, ax=a, label="top-1 accuracy (%)")
    a.set(title="Accuracy on masked tokens (%)", xlabel="masking level", ylabel="hidden state sent to the LM head")
    im = annotated_heatmap(b, ce, xl, names, lambda v: f"{v:.2f}", "viridis_r")
    fig.colorbar(im, ax=b, label="cross-entropy (nats/token)")
    b.set(title="Cross-entropy on masked tokens (nats/token)", xlabel="masking level")
    fig.suptitle(f"Logit lens ({tag}): each layer through the LM head"
                 " (final_norm applied to every layer)", fontsize=12)
    fig.tight_layout()
    files.write_figure(fig, path, dpi=110)
    plt.close(fig)


def plot_entropy(res, levels, window, tag, path):
    plt = _plt()
    n_layers, n_heads = len(res[levels[0]]["entropy"]), len(res[levels[0]]["entropy"][0])
    fig, (a, b) = plt.subplots(1, 2, figsize=(15, max(4.8, 1.5 + 0.32 * n_layers * n_heads)),
                               gridspec_kw={"width_ratios": [1, 1.3]})
    colors = plt.get_cmap("plasma")
    for l in range(n_layers):
        mean = [sum(res[t]["entropy"][l]) / n_heads for t in levels]
        a.plot(levels, mean, marker="o", color=colors(l / max(n_layers, 1)), label=f"layer {l + 1} (mean of heads)")
    a.axhline(math.log2(window), color="black", ls="--", lw=1, label=f"uniform over {window} positions")
    a.set(title="Attention entropy of masked queries", xlabel="masking level", ylabel="entropy (bits)")
    a.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
    a.grid(alpha=0.3)
    a.legend()
    rows = [[res[t]["entropy"][l][h] for t in levels] for l in range(n_layers) for h in range(n_heads)]
    names = [f"L{l + 1} head {h}" for l in range(n_layers) for h in range(n_heads)]
    im = annotated_heatmap(b, rows, [f"{t:.0%}" for t in levels], names, lambda v: f"{v:.1f}", "viridis")
    fig.colorbar(im, ax=b, label="entropy (bits)")
    b.set(title="Per head (bits)", xlabel="masking level")
    fig.suptitle(f"Attention entropy ({tag}): low = focused on a few positions", fontsize=12)
    fig.tight_layout()
    files.write_figure(fig, path, dpi=110)
    plt.close(fig)


def plot_cka(cka, tag, path):
    plt = _plt()
    levels = sorted(cka)
    n = len(cka[levels[0]])
    names = layer_names(n - 1)
    fig, axes = plt.subplots(1, len(levels), figsize=(2.5 + (1.5 + 0.8 * n) * len(levels), 1.8 + 0.7 * n),
                             squeeze=False, constrained_layout=True)
    for i, (ax, t) in enumerate(zip(axes[0], levels)):
        im = annotated_heatmap(ax, cka[t], names, names if i == 0 else [""] * n, lambda v: f"{v:.2f}", "magma",
                               vmin=0, vmax=1)
        ax.set_title(f"{t:.0%} masked")
        ax.tick_params(axis="x", labelrotation=30)
    fig.colorbar(im, ax=axes[0].tolist(), label="linear CKA")
    fig.suptitle(f"Linear CKA between layers' representations ({tag}), over all content positions",
                 fontsize=12)
    files.write_figure(fig, path, dpi=110)
    plt.close(fig)


MIN_BIN = 20  # reliability-diagram bins with fewer tokens are not drawn (their accuracy is noise)


def plot_calibration(cal, res, levels, tag, path):
    plt = _plt()
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(17, 5.2))
    cmap = plt.get_cmap("viridis")
    a.plot([0, 1], [0, 1], color="gray", ls="--", lw=1, label="perfect calibration")
    for i, t in enumerate(levels):
        pts = [(mc, acc) for _, _, n, mc, acc in cal[t][1] if n >= MIN_BIN]  # a few tokens say nothing
        if pts:
            a.plot(*zip(*pts), marker="o", ms=4, color=cmap(0.9 * i / max(len(levels) - 1, 1)),
                   label=f"{t:.0%} masked")
    a.set(title=f"Reliability diagram (bins with >= {MIN_BIN} tokens)", xlabel="confidence (top-1 probability)",
          ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    a.grid(alpha=0.3)
    a.legend(fontsize=8, ncol=2, loc="lower right")
    x = list(levels)
    b.plot(x, [float(res[t]["conf"].mean()) for t in levels], marker="o", label="mean confidence")
    b.plot(x, [res[t]["acc"][-1] for t in levels], marker="s", label="accuracy")
    b.set(title="Confidence and accuracy by masking level", xlabel="masking level", ylabel="fraction")
    b.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
    b.grid(alpha=0.3)
    b.legend()
    c.bar([f"{t:.0%}" for t in levels], [cal[t][0] for t in levels], color="tab:red")
    c.set(title="Expected calibration error", xlabel="masking level", ylabel="ECE")
    c.grid(alpha=0.3, axis="y")
    fig.suptitle(f"Calibration of the final layer on masked tokens ({tag})", fontsize=12)
    fig.tight_layout()
    files.write_figure(fig, path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# What the figures say, from the numbers
# ---------------------------------------------------------------------------------------------


def findings(res, cal, cka, levels, window) -> list[str]:
    lo, hi = levels[0], levels[-1]
    mid = min(levels, key=lambda t: abs(t - 0.5))
    n_layers = len(res[lo]["acc"]) - 1
    lines = []
    a_lo, a_hi = res[lo]["acc"][-1], res[hi]["acc"][-1]
    trend = "falls" if a_hi < a_lo - 0.005 else "rises" if a_hi > a_lo + 0.005 else "stays flat"
    lines.append(f"Final-layer accuracy on masked tokens goes from {a_lo:.0%} at {lo:.0%} masking to {a_hi:.0%} "
                 f"at {hi:.0%}: it {trend} as context disappears.")
    accs = res[mid]["acc"]
    gains = [accs[l + 1] - accs[l] for l in range(n_layers)]
    best = max(range(n_layers), key=lambda l: gains[l])
    by_layer = ", ".join(f"{name} {a:.0%}" for name, a in zip(layer_names(n_layers), accs))
    lines.append(f"Logit lens at {mid:.0%} masking: {by_layer}; the largest gain is in layer {best + 1} "
                 f"({100 * gains[best]:+.1f} points). The embeddings row is a context-free guess: a masked "
                 f"position's input is the <mask> embedding whatever the text.")
    eces = {t: cal[t][0] for t in levels}
    gaps = {t: float(res[t]["conf"].mean()) - res[t]["acc"][-1] for t in levels}
    over = [f"{t:.0%}" for t in levels if gaps[t] > 0.02]
    under = [f"{t:.0%}" for t in levels if gaps[t] < -0.02]
    worst = max(levels, key=lambda t: eces[t])
    if over or under:
        tilt = (f"over-confident (mean confidence > accuracy by > 2 points) at {', '.join(over) or 'no level'}, "
                f"under-confident at {', '.join(under) or 'no level'}")
    else:
        tilt = "mean confidence is within 2 points of accuracy at every level"
    lines.append(f"Calibration: ECE {min(eces.values()):.3f} to {max(eces.values()):.3f} (worst at {worst:.0%} "
                 f"masking); {tilt}.")
    uniform = math.log2(window)
    for l in range(len(res[lo]["entropy"])):
        e_lo = sum(res[lo]["entropy"][l]) / len(res[lo]["entropy"][l])
        e_hi = sum(res[hi]["entropy"][l]) / len(res[hi]["entropy"][l])
        trend = "spreads out" if e_hi > e_lo + 0.1 else "sharpens" if e_hi < e_lo - 0.1 else "stays about the same"
        lines.append(f"Attention, layer {l + 1}: masked queries' entropy {e_lo:.2f} bits at {lo:.0%} masking, "
                     f"{e_hi:.2f} at {hi:.0%} (uniform = {uniform:.2f}): it {trend} as masking grows.")
    t_lo, t_hi = min(cka), max(cka)
    first_last = {t: cka[t][0][-1] for t in cka}
    adj = {t: min((cka[t][l][l + 1], l) for l in range(n_layers)) for t in cka}
    lines.append(f"CKA embeddings vs last layer: {first_last[t_lo]:.2f} at {t_lo:.0%} masking, "
                 f"{first_last[t_hi]:.2f} at {t_hi:.0%}; the least similar adjacent pair at {t_hi:.0%} is "
                 f"{layer_names(n_layers)[adj[t_hi][1]]} -> layer {adj[t_hi][1] + 1} ({adj[t_hi][0]:.2f}).")
    return lines


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def format_table(res, cal, losses, levels) -> str:
    n_layers = len(res[levels[0]]["acc"]) - 1
    n_ent = len(res[levels[0]]["entropy"])
    head = (f"{'masked':>7}{'tokens':>8}{'CE':>7}" + "".join(f"{'acc ' + n[:5]:>11}" for n in
                                                            ["emb"] + [f"L{l}" for l in range(1, n_layers + 1)])
            + f"{'conf':>7}{'ECE':>7}" + "".join(f"{'H L' + str(l + 1):>7}" for l in range(n_ent)))
    lines = [head, "-" * len(head)]
    for t in levels:
        r = res[t]
        ents = [sum(e) / len(e) for e in r["entropy"]]
        lines.append(f"{t:>7.0%}{r['count']:>8}{losses[t]:>7.3f}" + "".join(f"{a:>11.1%}" for a in r["acc"])
                     + f"{float(r['conf'].mean()):>7.3f}{cal[t][0]:>7.3f}" + "".join(f"{e:>7.2f}" for e in ents))
    return "\n".join(lines)


def write_table(path, res, cal, cka, losses, levels) -> None:
    rows = [["metric", "level", "layer", "layer2", "head", "bin", "value"]]
    for t in levels:
        r = res[t]
        rows.append(["level_loss", t, "", "", "", "", round(losses[t], 6)])
        rows.append(["masked_tokens", t, "", "", "", "", r["count"]])
        for l, (a, c) in enumerate(zip(r["acc"], r["ce"])):
            rows.append(["lens_accuracy", t, l, "", "", "", round(a, 6)])
            rows.append(["lens_ce", t, l, "", "", "", round(c, 6)])
        for l, heads in enumerate(r["entropy"]):
            for h, e in enumerate(heads):
                rows.append(["attention_entropy_bits", t, l + 1, "", h, "", round(e, 6)])
        rows.append(["ece", t, "", "", "", "", round(cal[t][0], 6)])
        rows.append(["mean_confidence", t, "", "", "", "", round(float(r["conf"].mean()), 6)])
        for b, (_, _, n, mc, acc) in enumerate(cal[t][1]):
            rows.append(["bin_count", t, "", "", "", b, n])
            rows.append(["bin_confidence", t, "", "", "", b, round(mc, 6)])
            rows.append(["bin_accuracy", t, "", "", "", b, round(acc, 6)])
    for t, m in cka.items():
        for i, row in enumerate(m):
            for j, v in enumerate(row):
                rows.append(["cka", t, i, j, "", "", round(v, 6)])

    files.write_csv(path, rows)

def output_paths(lc: LayerConfig) -> dict:
    tag = os.path.basename(os.path.normpath(lc.checkpoint))
    return {k: os.path.join(lc.out_dir, f"{name}_{tag}.{ext}") for k, name, ext in (
        ("lens", "layer_logit_lens", "png"), ("entropy", "layer_attention_entropy", "png"),
        ("cka", "layer_cka", "png"), ("calibration", "layer_calibration", "png"),
        ("csv", "layer_analysis", "csv"), ("json", "layer_analysis", "json"))}


def main(argv=None) -> int:
    lc, _ = parse(LayerConfig, argv, __doc__)
    files.check_outputs(lc.out_dir, [os.path.basename(p) for p in output_paths(lc).values()], "--out-dir")
    import torch
    from tqdm import tqdm
    from transformers.utils import logging as hf_logging

    from data import build_datasets
    from diffusion import eval_batches, level_losses, report_levels
    from modeling import load_checkpoint

    hf_logging.disable_progress_bar()
    if lc.threads:
        torch.set_num_threads(lc.threads)
    model, tokenizer, cfg = load_checkpoint(lc.checkpoint)
    lens_reader(model)  # fails early on an unknown architecture
    model.set_attn_implementation("eager")  # sdpa kernels return no attention weights
    levels = rates(lc.levels, "levels") if lc.levels else report_levels(cfg)
    cka_levels = rates(lc.cka_levels, "cka-levels")
    missing = [t for t in cka_levels if t not in levels]
    if missing:
        raise UsageError(f"--cka-levels {', '.join(map(str, missing))} not among the levels analysed ({levels})")
    seed = cfg.seed if lc.seed < 0 else lc.seed
    _, val = build_datasets(cfg, tokenizer)
    size = lc.batch_size or cfg.batch_size
    if size > len(val) or lc.batches > -(-len(val) // size):  # more than the held-out set: say so, never cut quietly
        raise UsageError(f"--batches {lc.batches} x --batch-size {size} is more than the {len(val)} held-out blocks; "
                         f"at most {-(-len(val) // min(size, len(val)))} batches of {min(size, len(val))}")
    batches = eval_batches(val, size, lc.batches)

    # 1. the same masks as train.py's held-out evaluation, one level at a time
    res = {}
    for i, t in enumerate(tqdm(levels, desc="masking levels", leave=False)):
        g = torch.Generator().manual_seed(seed + i)  # level i's masks, as in diffusion.level_losses
        res[t] = analyse_level(model, batches, tokenizer, cfg, t, g, keep_reps=t in cka_levels)
    losses = level_losses(model, batches, tokenizer, cfg, levels, seed=seed)
    drift = max(abs(losses[t] - res[t]["ce"][-1]) for t in levels)
    cal = {t: reliability(res[t]["conf"], res[t]["correct"], lc.bins) for t in levels}
    cka = {t: [[linear_cka(a, b) for b in res[t]["reps"]] for a in res[t]["reps"]] for t in cka_levels}

    # 2. table, findings, files
    print(f"{lc.checkpoint}: {type(model).__name__}, {len(res[levels[0]]['acc']) - 1} layers; "
          f"{sum(len(b) for b in batches)} held-out blocks of {cfg.max_len} tokens, masks seeded as train.py's "
          f"evaluation (seed {seed})")
    write_outputs(lc, res, cal, cka, losses, levels, cfg.max_len, drift)
    return 0


def write_outputs(lc, res, cal, cka, losses, levels, window: int, drift: float) -> None:
    """The table and findings on stdout; figures, CSV and settings in --out-dir."""
    tag = os.path.basename(os.path.normpath(lc.checkpoint))
    print("CE = diffusion.level_losses (final layer, nats/token); acc = logit-lens top-1 accuracy per layer; "
          "conf/ECE = final layer; H = attention entropy of masked queries (bits)")
    print(format_table(res, cal, losses, levels))
    print(f"(final-layer lens CE agrees with diffusion.level_losses to {drift:.1e} nats)")
    print()
    for line in findings(res, cal, cka, levels, window):
        print("- " + line)
    paths = output_paths(lc)
    plot_lens(res, levels, tag, paths["lens"])
    plot_entropy(res, levels, window, tag, paths["entropy"])
    plot_cka(cka, tag, paths["cka"])
    plot_calibration(cal, res, levels, tag, paths["calibration"])
    write_table(paths["csv"], res, cal, cka, losses, levels)
    save_config(lc, lc.out_dir, os.path.basename(paths["json"]))
    print()
    for key in paths:
        print(f"wrote {paths[key]}")


if __name__ == "__main__":
    sys.exit(cli(main))
