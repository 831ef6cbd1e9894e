"""Speed against quality: seconds per new token, generative perplexity and unigram entropy for
decoding settings, beside the AR baseline's own curve at the same samplers.

    python experiments/speed_frontier.py                                  # every setting in SETTINGS
    python experiments/speed_frontier.py --settings "seed T 1.0,random nucleus T 1.0 16 steps" --batches 1
    python experiments/speed_frontier.py --prompt-len 0                   # unprompted samples only

Every setting in SETTINGS names every decoding field (BASE lists them all, so a GenConfig default
never decides a row): steps 4..62, top-k and nucleus, the random order (the seed's rule; its
LM head runs only where it commits), the former default (low-confidence + Gumbel noise 8),
threshold and Fast-dLLM's factor rule, blocks with each cache mode, and 256 tokens in blocks of 16.
For each setting:
  - quality: --num-samples unprompted samples and as many continuations of held-out openings
    (--prompt-len tokens each, one opening per sample), judged as metrics.py's protocol judges
    (generative perplexity under the AR baseline; a sample longer than its window is scored in
    window-sized pieces), against held-out text;
  - speed: wall seconds per new token at each --batches size, alternating with the AR baseline
    at the same sampler and temperature (decoding.ar_generate: GPT-2 through fast_gpt2's step, as
    the diffusion side runs fast_modernbert), fastest of --repeats each, so every speed-up is a
    side-by-side ratio of equally hand-written loops; and the FLOPs one sample costs
    (torch.utils.flop_counter).
The AR baseline is also swept across --ar-temperatures at each sampler: its own quality curve.

Prints the table and the settings that meet the quality floor (metrics.QUALITY_FLOOR, unprompted
and prompted), beat the seed's rule (random order, 10 steps) at equal entropy, and meet the speed
targets (>= 4x the AR at batch 1, >= 1x at batch 16); the lowest generative perplexity among them
is the proposal. Writes speed_frontier.png / .csv / .json to --out-dir.
"""

import os
import sys

import repo_root  # noqa: F401  (first: puts the repo's modules on sys.path)

import csv
import dataclasses
import shlex

from cli import UsageError, cli, parse
from config import GenConfig, flag, parse_floats, parse_ints, parse_names, save_config, Settings
from metrics import QUALITY_FLOOR, meets_floor, ppl_at


class SpeedConfig(Settings):
    checkpoint: str = flag("results/final-model", "the diffusion model (train.py final-model)")
    baseline: str = flag("results/ar-baseline", "the AR baseline: scores every sample and is timed beside it")
    settings: str = flag("all", "comma-separated names from experiments/speed_frontier.SETTINGS, or 'all'")
    batches: str = flag("1,16", "batch sizes timed (seconds per new token at each)")
    num_samples: int = flag(16, "samples per setting, unprompted and prompted (metrics.py's protocol)", min=16)
    prompt_len: int = flag(16, "tokens of each held-out opening the prompted samples continue; 0 = unprompted only",
                           min=0)
    ar_temperatures: str = flag("0.7,0.8,0.9,1.0,1.1,1.2", "the AR baseline's own curve, at each sampler")
    repeats: int = flag(3, "timed repeats per batch size, alternating with the AR; the fastest of each is kept",
                        min=1)
    threads: int = flag(1, "torch CPU threads (0 = torch's default); one avoids thread contention on shared cores",
                        min=0)
    seed: int = flag(0, "every setting restarts from this seed", min=0)
    out_dir: str = flag("results/figures", "speed_frontier.png / .csv / .json")
    render: str = flag("", "measure nothing: write this speed_frontier.json's table into README.md (between the "
                       "markers naming the command)")


# every decoding field, stated: a setting is BASE with its own changes, never a GenConfig default
# (length 0: the window's worth, 62 tokens for the quick test, or what fits after a prompt)
BASE = dict(prompt="", template="", length=0, steps=10, schedule="linear", sampling="nucleus", k=50, p=0.95,
            temperature=0.8, order="random", order_noise=0.0, remdm="none", remdm_eta=0.02, cfg=0.0,
            stop_at_eos=False, min_length=0, canvas="full", decode="schedule", threshold=0.9, factor=1.0,
            block_size=0, cache="none", label="", guide="", guide_label="", guide_scale=0.0, guide_mode="exact",
            guide_k=8)
FORMER_DEFAULT = dict(sampling="nucleus", p=0.95, temperature=0.9, order="low-confidence", order_noise=8.0)


def setting(**change) -> dict:
    unknown = set(change) - set(BASE)
    if unknown:
        raise KeyError(f"not decoding fields: {sorted(unknown)}")
    return {**BASE, **change}


SETTINGS = {
    # the seed's rule (random order, nucleus 0.95, 10 steps) across temperatures: the curve to beat
    **{f"seed T {t}": setting(temperature=t) for t in (0.7, 0.8, 0.9, 1.0)},
    # steps, random order (its LM head and sampler run only where it commits)
    **{f"random nucleus T 0.8 {s} steps": setting(steps=s) for s in (4, 8, 16, 62)},
    **{f"random nucleus T 0.85 {s} steps": setting(temperature=0.85, steps=s) for s in (12, 16, 24)},
    **{f"random nucleus T 0.85 {s} steps ReMDM conf": setting(temperature=0.85, steps=s, remdm="conf")
       for s in (8, 10, 12, 16)},
    "random top-k T 1.0 16 steps": setting(sampling="topk", temperature=1.0, steps=16),
    # the former default: every masked position predicted, low-confidence order with noise
    **{f"former default {s} steps": setting(**FORMER_DEFAULT, steps=s) for s in (10, 62)},
    # committing by confidence: LLaDA / Fast-dLLM's threshold, Fast-dLLM's factor rule
    "threshold 0.9": setting(decode="threshold", threshold=0.9),
    "factor 1.0": setting(decode="factor", factor=1.0),
    # semi-autoregressive blocks with Fast-dLLM's caches, a window's worth and 256 tokens
    **{f"blocks 16 x 4 steps {c} cache": setting(block_size=16, steps=4, cache=c) for c in ("none", "prefix", "dual")},
    **{f"blocks 31 x 8 steps {c} cache T 0.85": setting(temperature=0.85, block_size=31, steps=8, cache=c)
       for c in ("none", "dual")},
    **{f"256 tokens blocks 16 x 8 steps {c} cache": setting(length=256, block_size=16, steps=8, cache=c)
       for c in ("none", "prefix", "dual")},
}
SPEED_TARGETS = {"1": 4.0, "16": 1.0}  # the AR's seconds / diffusion's, at the same sampler and temperature


def check_base() -> None:
    """BASE names exactly the decoding fields of GenConfig (a new field needs a stated value here)."""
    decoding_fields = {f.name for f in dataclasses.fields(GenConfig) if not f.metadata.get("run")}
    if set(BASE) != decoding_fields:
        raise RuntimeError(f"speed_frontier.BASE must state every decoding field: missing "
                           f"{sorted(decoding_fields - set(BASE))}, extra {sorted(set(BASE) - decoding_fields)}")


def gen_config(fields: dict, batch: int, seed: int) -> GenConfig:
    return GenConfig(**fields, num_samples=batch, seed=seed, out="")


# ---------------------------------------------------------------------------------------------
# Measuring: quality (metrics.py's protocol), side-by-side speed, FLOPs
# ---------------------------------------------------------------------------------------------


def quality(tokens: list[list[int]], tok, scorer, window: int) -> dict:
    """metrics.sample_quality of the generated tokens, generative perplexity under the scorer with
    each sample cut into pieces that fit its window (each scored after <s>, as score_texts does)."""
    import math

    from metrics import sample_quality, score_texts

    texts = [tok.decode(t) for t in tokens]
    row = sample_quality(tokens, texts, None, None, 64)
    piece = window - 1
    pieces = [tok.decode(t[i:i + piece]) for t in tokens for i in range(0, len(t), piece)]
    nats, count = score_texts(scorer[0], scorer[1], pieces, 64)
    return {**row, "gen_ppl": math.exp(min(nats / count, 50)), "sample": texts[0]}


def diffusion_quality(model, tok, fields: dict, window: int, scorer, fc: SpeedConfig, context=None) -> dict:
    import torch

    from decoding import generate

    gc = gen_config(fields, fc.num_samples, fc.seed)
    ids, history, n_prompt = generate(model, tok, gc, window, torch.Generator().manual_seed(fc.seed), context=context)
    return {**quality(ids[:, n_prompt:].tolist(), tok, scorer, window), "forward_passes": len(history)}


def ar_quality(ar, tok, fields: dict, n: int, scorer, fc: SpeedConfig, context=None) -> dict:
    import torch

    from decoding import ar_generate
    from tokens import banned_ids

    gc = gen_config(fields, fc.num_samples, fc.seed)
    start = torch.full((fc.num_samples, 1), tok.bos_token_id)
    start = start if context is None else torch.cat([start, context], 1)  # [B, 1 + P]
    ids = ar_generate(ar, start, n, gc, banned_ids(tok), torch.Generator().manual_seed(fc.seed))
    return quality(ids.tolist(), tok, scorer, ar.config.n_positions)


def speed(model, tok, ar, fields: dict, window: int, fc: SpeedConfig) -> dict:
    """Seconds per new token (wall seconds / (batch x new tokens)) of the setting and of the AR at
    the same sampler and temperature, per batch size, alternating; FLOPs per sample of each."""
    import torch

    from decoding import ar_generate, generate
    from metrics import fastest_alternating, flops
    from tokens import banned_ids

    n = new_tokens(fields, window)
    out = {}
    for batch in parse_ints(fc.batches, "batches"):
        gc = gen_config(fields, batch, fc.seed)
        runs = {"diffusion": lambda: generate(model, tok, gc, window, torch.Generator().manual_seed(fc.seed))}
        if fields["cache"] != "none":  # the same setting without the cache, alternating with it
            plain = gen_config({**fields, "cache": "none"}, batch, fc.seed)
            runs["no_cache"] = lambda: generate(model, tok, plain, window, torch.Generator().manual_seed(fc.seed))
        if n <= ar.config.n_positions - 1:
            start = torch.full((batch, 1), tok.bos_token_id)
            runs["ar"] = lambda: ar_generate(ar, start, n, gc, banned_ids(tok), torch.Generator().manual_seed(fc.seed))
        best = fastest_alternating(runs, fc.repeats)
        out[str(batch)] = {f"{side}_s_per_token": s / (batch * n) for side, s in best.items()}
        if "ar" in best:
            out[str(batch)]["speedup"] = best["ar"] / best["diffusion"]
        if "no_cache" in best:
            out[str(batch)]["cache_speedup"] = best["no_cache"] / best["diffusion"]
    one = gen_config(fields, 1, fc.seed)
    out["flops_per_token"] = flops(
        lambda: generate(model, tok, one, window, torch.Generator().manual_seed(fc.seed))) / n
    if n <= ar.config.n_positions - 1:
        start = torch.full((1, 1), tok.bos_token_id)
        out["ar_flops_per_token"] = flops(
            lambda: ar_generate(ar, start, n, one, banned_ids(tok), torch.Generator().manual_seed(fc.seed))) / n
    return out


# ---------------------------------------------------------------------------------------------
# The held-out references, the AR's own curve, every setting
# ---------------------------------------------------------------------------------------------


def new_tokens(fields: dict, window: int, plen: int = 0) -> int:
    """Tokens a setting writes: its length, or (0) what fits in the window after a plen-token prompt."""
    return fields["length"] or window - 2 - plen


def references(val_blocks, tok, scorer, window: int, fc: SpeedConfig):
    """(held-out text as an unprompted row, the true continuations of the openings, the openings [B, P])."""
    from metrics import reference_blocks
    from tokens import banned_ids

    special = set(banned_ids(tok))  # every special token, the label tokens too
    blocks = reference_blocks(val_blocks, fc.num_samples)  # [n, L]
    content = lambda rows: [[t for t in r.tolist() if t not in special] for r in rows]  # noqa: E731
    unprompted = quality(content(blocks), tok, scorer, window)
    if not fc.prompt_len:
        return unprompted, None, None
    openings = blocks[:, 1:1 + fc.prompt_len]  # [n, P]
    return unprompted, quality(content(blocks[:, 1 + fc.prompt_len:]), tok, scorer, window), openings


def measure_setting(name: str, models, window: int, scorer, openings, fc: SpeedConfig) -> dict:
    from decoding import describe

    model, tok, ar = models
    fields = SETTINGS[name]
    row = {"name": name, "fields": fields, "label": describe(gen_config(fields, 1, fc.seed)),
           **speed(model, tok, ar, fields, window, fc),
           "unprompted": diffusion_quality(model, tok, fields, window, scorer, fc)}
    if openings is not None:
        row["prompted"] = diffusion_quality(model, tok, fields, window, scorer, fc, context=openings)
    return row


def measure_ar(names: list[str], models, window: int, scorer, openings, fc: SpeedConfig) -> list[dict]:
    """The AR baseline's own curve: each sampler the settings use, across --ar-temperatures."""
    from decoding import SAMPLERS

    model, tok, ar = models
    rows = []
    for sampling in dict.fromkeys(SETTINGS[n]["sampling"] for n in names):
        for t in parse_floats(fc.ar_temperatures, "ar-temperatures"):
            fields = setting(sampling=sampling, temperature=t)
            row = {"name": f"AR {sampling} T {t}", "fields": fields,
                   "label": SAMPLERS[sampling].text(gen_config(fields, 1, fc.seed)),
                   "unprompted": ar_quality(ar, tok, fields, new_tokens(fields, window), scorer, fc)}
            if openings is not None:
                row["prompted"] = ar_quality(ar, tok, fields, new_tokens(fields, window, fc.prompt_len), scorer, fc,
                                             context=openings)
            rows.append(row)
    return rows


def judge(rows: list[dict], refs: dict) -> None:
    """Adds each setting's checks: the quality floor unprompted and prompted, generative perplexity
    below the seed's rule at the same entropy, and the speed targets."""
    seed = [(r["unprompted"]["unigram_entropy"], r["unprompted"]["gen_ppl"]) for r in rows if r["name"].startswith("seed")]
    for r in rows:
        u = r["unprompted"]
        at = ppl_at(u["unigram_entropy"], seed)
        r["seed_ppl_at_entropy"] = at
        r["checks"] = {
            "floor_unprompted": meets_floor(u, refs["unprompted"]),
            "floor_prompted": "prompted" not in r or meets_floor(r["prompted"], refs["prompted"]),
            "beats_seed": at is not None and u["gen_ppl"] < at,
            **{f"speed_batch_{b}": r.get(b, {}).get("speedup", 0) >= want for b, want in SPEED_TARGETS.items()}}


# ---------------------------------------------------------------------------------------------
# Outputs: table, CSV, JSON, figure
# ---------------------------------------------------------------------------------------------

QUALITY_COLUMNS = ("gen_ppl", "unigram_entropy", "distinct_2", "top_word_share")


def table(rows: list[dict], ar_rows: list[dict], refs: dict, fc: SpeedConfig) -> str:
    batches = [str(b) for b in parse_ints(fc.batches, "batches")]
    head = (f"{'setting':<38}{'passes':>7}" + "".join(f"{'ms/tok b' + b:>11}{'x AR':>7}" for b in batches)
            + f"{'MFLOP/tok':>10}{'gen ppl':>9}{'H bits':>7}{'dist-2':>7}{'top w':>7}"
            + (f"{'| prompted ppl':>14}{'H':>6}{'top w':>7}" if refs["prompted"] else "") + "  checks")
    out = [f"{fc.num_samples} samples per setting; ms per new token = wall ms / (batch x new tokens); x AR = the AR "
           f"baseline's seconds / the setting's at the same sampler and temperature, alternated, fastest of "
           f"{fc.repeats}", head]

    def cells(q):
        return f"{q['gen_ppl']:>9.1f}{q['unigram_entropy']:>7.2f}{q['distinct_2']:>7.3f}{q['top_word_share']:>7.1%}"

    for name, q, qp in [("held-out text", refs["unprompted"], refs["prompted"])]:
        out.append(f"{name:<38}{'':>7}" + " " * 18 * len(batches) + f"{'':>10}" + cells(q)
                   + (f"{qp['gen_ppl']:>14.1f}{qp['unigram_entropy']:>6.2f}{qp['top_word_share']:>7.1%}" if qp else ""))
    for r in rows + ar_rows:
        timing = "".join(f"{1000 * r[b]['diffusion_s_per_token']:>11.2f}{r[b].get('speedup', 0):>7.2f}"
                         if b in r else " " * 18 for b in batches)
        flops = f"{r['flops_per_token'] / 1e6:>10.1f}" if "flops_per_token" in r else " " * 10
        p = r.get("prompted")
        checks = " ".join(k for k, v in r.get("checks", {}).items() if not v)
        out.append(f"{r['name'][:38]:<38}{r['unprompted'].get('forward_passes', ''):>7}{timing}{flops}"
                   + cells(r["unprompted"]) + (f"{p['gen_ppl']:>14.1f}{p['unigram_entropy']:>6.2f}"
                                               f"{p['top_word_share']:>7.1%}" if p else "")
                   + ("  fails: " + checks if checks else "  all pass" if "checks" in r else ""))
    ar_flops = next((r["ar_flops_per_token"] for r in rows if "ar_flops_per_token" in r), None)
    if ar_flops:
        out.append(f"AR baseline: {ar_flops / 1e6:.1f} MFLOP per new token (62 tokens, KV cache)")
    return "\n".join(out)


def flat(r: dict) -> dict:
    """One CSV row: the setting's every decoding field, its times, FLOPs, quality and checks."""
    out = {"name": r["name"], **r["fields"], "described": r["label"]}
    for b in SPEED_TARGETS:
        out |= {f"batch{b}_{k}": v for k, v in r.get(b, {}).items()}
    out |= {k: r[k] for k in ("flops_per_token", "ar_flops_per_token", "seed_ppl_at_entropy") if k in r}
    for kind in ("unprompted", "prompted"):
        out |= {f"{kind}_{k}": v for k, v in r.get(kind, {}).items() if k != "sample"}
    return out | {f"check_{k}": v for k, v in r.get("checks", {}).items()}


def plot(rows: list[dict], ar_rows: list[dict], refs: dict, proposal, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(19, 6.5))
    for ax, b in zip(axes[:2], SPEED_TARGETS):
        for r in rows:
            if b in r:
                x, y = 1000 * r[b]["diffusion_s_per_token"], r["unprompted"]["gen_ppl"]
                ax.scatter([x], [y], s=22, color="crimson" if r is proposal else "tab:blue", zorder=3)
                ax.annotate(r["name"], (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
                if "ar_s_per_token" in r[b]:
                    ax.scatter([1000 * r[b]["ar_s_per_token"]], [r["unprompted"]["gen_ppl"]], s=6, color="tab:orange")
        ax.set(xscale="log", yscale="log", xlabel="ms per new token (wall ms / (batch x tokens))",
               ylabel="generative perplexity (AR baseline scorer)", title=f"batch {b}: speed vs quality "
               f"(orange: the AR at the same sampler, same run)")
        ax.grid(alpha=0.3, which="both")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap on a short log axis
    ax = axes[2]
    for group, color in (("seed", "black"), ("AR nucleus", "tab:orange"), ("AR topk", "tab:brown")):
        pts = sorted((r["unprompted"]["unigram_entropy"], r["unprompted"]["gen_ppl"]) for r in rows + ar_rows
                     if r["name"].startswith(group))
        if pts:
            ax.plot(*zip(*pts), marker="o", color=color, label=group + (" (random order, 10 steps)" if group == "seed"
                                                                         else " across temperatures"))
    for r in rows:
        if not r["name"].startswith("seed"):
            q = r["unprompted"]
            ax.scatter([q["unigram_entropy"]], [q["gen_ppl"]], s=14, color="crimson" if r is proposal else "tab:blue")
            ax.annotate(r["name"], (q["unigram_entropy"], q["gen_ppl"]), fontsize=6, xytext=(3, 2),
                        textcoords="offset points")
    ref = refs["unprompted"]
    ax.axvline(QUALITY_FLOOR["unigram_entropy"] * ref["unigram_entropy"], color="gray", ls=":",
               label="0.9x held-out text's entropy")
    ax.scatter([ref["unigram_entropy"]], [ref["gen_ppl"]], marker="*", s=160, color="black", label="held-out text")
    ax.set(yscale="log", xlabel="unigram entropy (bits)", ylabel="generative perplexity",
           title="quality: every setting against the seed's rule and the AR")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(fc: SpeedConfig, rows: list[dict], ar_rows: list[dict], refs: dict, proposal) -> None:
    from files import write_json
    from metrics import machine, versions

    os.makedirs(fc.out_dir, exist_ok=True)
    paths = {ext: os.path.join(fc.out_dir, f"speed_frontier.{ext}") for ext in ("png", "csv", "json")}
    plot(rows, ar_rows, refs, proposal, paths["png"])
    flats = [flat(r) for r in rows + ar_rows]
    columns = list(dict.fromkeys(k for r in flats for k in r))
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(flats)
    write_json(paths["json"], {"config": dataclasses.asdict(fc), "base": BASE, "speed_targets": SPEED_TARGETS,
                               "quality_floor": QUALITY_FLOOR, "references": refs, "rows": rows, "ar_rows": ar_rows,
                               "proposal": proposal and proposal["name"], "machine": machine(),
                               "versions": versions(), "command": shlex.join(["python", *sys.argv])})
    save_config(fc, fc.out_dir, "speed_frontier_config.json")
    for p in paths.values():
        print(f"wrote {p}")


def speed_cell(t: dict | None) -> str:
    """ms per token, with the AR's time over it and (a cached setting) the uncached time over it."""
    if not t:
        return ""
    ratios = [f"{t[k]:.2f}x {what}" for k, what in (("speedup", "AR"), ("cache_speedup", "no cache")) if k in t]
    return f"{1000 * t['diffusion_s_per_token']:.2f}" + (f" ({', '.join(ratios)})" if ratios else "")


def markdown(report: dict) -> str:
    """README's table of a frontier run: every row, its times and FLOPs beside its quality, and
    the proposal, from the recorded fields alone."""
    refs, rows = report["references"], report["rows"] + report["ar_rows"]
    m = report["machine"]
    cell = lambda q: f"{q['gen_ppl']:.0f} / {q['unigram_entropy']:.2f} / {q['top_word_share']:.1%}"  # noqa: E731
    out = [f"`{report['command']}` on {m['cpu']} ({m['torch_threads']} torch thread(s), load average "
           f"{m['load_average_1min']} at the start), {report['config']['num_samples']} samples per setting; ms per "
           f"new token = wall ms / (batch x tokens), x AR = the AR baseline's time / the setting's at the same "
           f"sampler and temperature, x no cache = the same setting's time without its cache / with it, each pair "
           f"alternated; quality = generative perplexity / unigram entropy (bits) / "
           f"most frequent word.", "",
           "| setting | passes | ms/token, batch 1 (x AR) | batch 16 (x AR) | MFLOP/token (AR's) | unprompted | "
           "prompted | fails |", "|---|---|---|---|---|---|---|---|",
           f"| held-out text | | | | | {cell(refs['unprompted'])} | "
           f"{cell(refs['prompted']) if refs['prompted'] else ''} | |"]
    for r in rows:
        t = [speed_cell(r.get(b)) for b in SPEED_TARGETS]
        fl = (f"{r['flops_per_token'] / 1e6:.1f} ({r['ar_flops_per_token'] / 1e6:.1f})" if "ar_flops_per_token" in r
              else f"{r['flops_per_token'] / 1e6:.1f}" if "flops_per_token" in r else "")
        fails = ", ".join(k for k, v in r.get("checks", {}).items() if not v)
        name = f"**{r['name']}**" if r["name"] == report["proposal"] else r["name"]
        out.append(f"| {name} | {r['unprompted'].get('forward_passes', '')} | {t[0]} | {t[1]} | {fl} | "
                   f"{cell(r['unprompted'])} | {cell(r['prompted']) if 'prompted' in r else ''} | {fails} |")
    out += ["", f"Proposal (passes every quality check; of those, the lowest generative perplexity among the ones "
                f"that meet the speed targets too, else the fastest at batch 1): **{report['proposal'] or 'none'}**."]
    return "\n".join(out) + "\n"


QUALITY_CHECKS = ("floor_unprompted", "floor_prompted", "beats_seed")


def propose(rows: list[dict]):
    """The setting to make the default: among those writing a window's worth that pass every quality
    check, the ones that also meet every speed target if any, and of those the lowest generative
    perplexity; if none meets the speed targets, the quality-passing one fastest at batch 1."""
    good = [r for r in rows if all(r["checks"][c] for c in QUALITY_CHECKS) and not r["fields"]["length"]]
    fast = [r for r in good if all(r["checks"].values())]
    if fast:
        return min(fast, key=lambda r: r["unprompted"]["gen_ppl"])
    return max(good, key=lambda r: r.get("1", {}).get("speedup", 0)) if good else None


def main(argv=None) -> int:
    fc, _ = parse(SpeedConfig, argv, __doc__)
    if fc.render:
        import json

        from report import render_into

        try:
            with open(fc.render) as f:
                report = json.load(f)
        except (OSError, ValueError) as e:
            raise UsageError(f"--render {fc.render}: not a readable speed_frontier.json ({e})")
        render_into(os.path.join(repo_root.ROOT, "README.md"), f"python experiments/speed_frontier.py --render "
                    f"{fc.render}", markdown(report))
        print(f"wrote README.md's speed frontier table from {fc.render}")
        return 0
    check_base()
    names = list(SETTINGS) if fc.settings == "all" else parse_names(fc.settings, "settings", tuple(SETTINGS))
    for name in names:  # every setting is checked before any work starts
        gen_config(SETTINGS[name], 1, fc.seed)
    if not parse_ints(fc.batches, "batches") or min(parse_ints(fc.batches, "batches")) < 1:
        raise UsageError(f"--batches must be positive integers, got {fc.batches!r}")
    import torch
    from tqdm import tqdm
    from transformers.utils import logging as hf_logging

    from data import build_datasets
    from modeling import load_baseline, load_checkpoint

    hf_logging.disable_progress_bar()
    if fc.threads:
        torch.set_num_threads(fc.threads)
    model, tok, tcfg = load_checkpoint(fc.checkpoint)
    ar = load_baseline(fc.baseline, tok, fc.checkpoint, tcfg.max_len)[0].to(model.device)
    window, scorer, models = tcfg.max_len, (ar, tok), (model, tok, ar)
    _, val = build_datasets(tcfg, tok)
    ref_u, ref_p, openings = references(val[:]["input_ids"], tok, scorer, window, fc)
    refs = {"unprompted": ref_u, "prompted": ref_p}
    rows = [measure_setting(n, models, window, scorer, openings, fc) for n in tqdm(names, desc="settings", leave=False)]
    ar_rows = measure_ar(names, models, window, scorer, openings, fc)
    judge(rows, refs)
    proposal = propose(rows)
    print(table(rows, ar_rows, refs, fc))
    print(f"\nproposal: {proposal['name']} ({proposal['label']}); speed targets "
          f"{'met' if all(proposal['checks'].values()) else 'not all met'}" if proposal else
          "\nno setting meets the quality checks")
    write_outputs(fc, rows, ar_rows, refs, proposal)
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
