"""Where does each decoding rule sit between dull and noisy? The quality frontier of the sampler.

    python experiments/sampler_frontier.py                       # every rule, T 0.7..1.2, nucleus 0.95
    python experiments/sampler_frontier.py --rules random,random-remdm-conf --temperatures 0.9,1.0,1.1

Each rule (RULES: an order, order noise, ReMDM re-masking) is swept across sampling temperatures;
every setting writes 16 unprompted samples the way evaluate.py does, and each is scored by
generative perplexity under the AR baseline against unigram entropy (the MDLM / ReMDM view: a
rule is better when it reaches the same entropy at a lower perplexity), with distinct-2, the
repeated 4-gram rate and the share of the most frequent word. Held-out text and the AR baseline's
own samples are the reference points.

Writes to --out-dir: sampler_frontier.png (gen ppl vs entropy, one line per rule),
sampler_frontier.csv (every number) and sampler_frontier.json (the settings and the rows), and
prints the table and the setting that meets the quality floor (QUALITY_FLOOR: entropy and
distinct-2 at least 0.9x held-out text's, repeated 4-grams at most 3x, no word above 12%) at
the lowest generative perplexity, with what the seed's rule (random order) reaches at that
entropy.
"""

import os
import sys

import repo_root  # noqa: F401  (first: puts the repo's modules on sys.path)

import dataclasses

from cli import UsageError, cli, parse
from config import GenConfig, Registry, flag, parse_floats, parse_names, save_config, Settings
from metrics import QUALITY_FLOOR, meets_floor, ppl_at
from files import check_outputs, write_figure


class FrontierConfig(Settings):
    checkpoint: str = flag("results/final-model", "the diffusion model (train.py final-model)")
    baseline: str = flag("results/ar-baseline", "the AR baseline: scores every sample (generative perplexity)")
    rules: str = flag("all", "comma-separated names from experiments/sampler_frontier.RULES, or 'all'")
    temperatures: str = flag("0.7,0.8,0.9,1.0,1.2", "each rule is swept across these sampling temperatures")
    sampling: str = flag("nucleus", "the sampler every rule uses (with --k / --p)", choices=Registry("decoding", "SAMPLERS"))
    k: int = flag(50, "top-k size", min=1)
    p: float = flag(0.95, "nucleus mass", above=0, max=1)
    steps: int = flag(10, "denoising steps", min=1)
    num_samples: int = flag(16, "samples per setting (evaluate.py's protocol)", min=1)
    prompt: str = flag("", "continue this text (samples are judged on the continuation); '' = unprompted")
    length: int = flag(0, "tokens to write; 0 = the window", min=0)
    block_size: int = flag(0, ">0: semi-autoregressive blocks, as generate.py --block-size", min=0)
    canvas: str = flag("full", "full | fit, as generate.py --canvas", choices=("full", "fit"))
    seed: int = flag(0, "every setting restarts from this seed", min=0, max=2**32 - 1)
    out_dir: str = flag("results/figures", "sampler_frontier.png / .csv / .json")


# Each rule states every decoding field it decides (RULE_FIELDS): which predictions are committed
# first, the noise on that order, and what may go back; a GenConfig default never fills one in.
RULE_FIELDS = ("order", "order_noise", "remdm", "remdm_eta")


def rule(order: str, order_noise: float = 0.0, remdm: str = "none", remdm_eta: float = 0.0) -> dict:
    return dict(order=order, order_noise=order_noise, remdm=remdm, remdm_eta=remdm_eta)


RULES = {
    "random": rule("random"),  # the seed's rule
    "low-confidence": rule("low-confidence"),
    "confidence-noise": rule("low-confidence", order_noise=4.0),
    "confidence-noise-2": rule("low-confidence", order_noise=2.0),
    "confidence-noise-8": rule("low-confidence", order_noise=8.0),  # the former default, at T 0.9
    "confidence-noise-remdm": rule("low-confidence", order_noise=4.0, remdm="conf-rescale", remdm_eta=0.5),
    "margin": rule("margin"),
    "entropy": rule("entropy"),
    "random-remdm-cap": rule("random", remdm="cap", remdm_eta=0.1),
    "random-remdm-rescale": rule("random", remdm="rescale", remdm_eta=0.5),
    "random-remdm-conf": rule("random", remdm="conf"),  # ReMDM's own conf (eta unused)
    "random-remdm-conf-rescale": rule("random", remdm="conf-rescale", remdm_eta=0.5),
    "confidence-remdm-conf": rule("low-confidence", remdm="conf"),
}


def plot(rows: list[dict], refs: list[dict], chosen: dict | None, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10.5, 6.5))
    colors = plt.get_cmap("tab20").colors
    for i, rule in enumerate(dict.fromkeys(r["rule"] for r in rows)):
        pts = sorted((r["unigram_entropy"], r["gen_ppl"], r["temperature"]) for r in rows if r["rule"] == rule)
        color = "black" if rule == "random" else colors[(2 * i) % 20 + (i >= 10)]
        style = dict(lw=2.8, ls="-") if rule == "random" else dict(lw=1.5, ls="--" if "remdm" in rule else "-")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=4, color=color,
                label=rule + ("  (the seed's rule)" if rule == "random" else ""), **style)
        if rule == "random":  # its temperatures, as a scale for the others
            for e, ppl, t in pts:
                ax.annotate(f"T {t}", (e, ppl), textcoords="offset points", xytext=(6, -10), fontsize=8)
    for ref, marker in zip(refs, ("*", "P", "X")):
        ax.scatter([ref["unigram_entropy"]], [ref["gen_ppl"]], marker=marker, s=160, color="black", zorder=5,
                   label=ref["label"])
    held = refs[0]
    ax.axvline(QUALITY_FLOOR["unigram_entropy"] * held["unigram_entropy"], color="gray", ls=":", lw=1.2,
               label=f"{QUALITY_FLOOR['unigram_entropy']:.0%} of held-out text's entropy")
    if chosen is not None:
        ax.scatter([chosen["unigram_entropy"]], [chosen["gen_ppl"]], s=320, facecolors="none", edgecolors="crimson",
                   lw=2, zorder=6, label=f"lowest gen ppl above the floor: {chosen['rule']}, T {chosen['temperature']}")
    ax.set_yscale("log")
    ax.set(xlabel="unigram entropy of the samples (bits; higher = more varied)",
           ylabel="generative perplexity under the AR baseline (log; lower = more fluent)",
           title="Sampler quality frontier: each line is one decoding rule across temperatures")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    write_figure(fig, path, dpi=110)
    plt.close(fig)


def measure(fc: FrontierConfig, settings_: dict) -> tuple[list[dict], list[dict]]:
    """(reference rows: held-out text and the AR baseline's own samples; one row per setting)."""
    from tqdm import tqdm

    from data import build_datasets
    from metrics import ar_row, diffusion_row, reference_row
    from modeling import load_baseline, load_checkpoint

    model, tokenizer, tcfg = load_checkpoint(fc.checkpoint)
    ar, _ = load_baseline(fc.baseline, tokenizer, fc.checkpoint, tcfg.max_len)
    ar.to(next(model.parameters()).device)
    scorer = (ar, tokenizer)
    _, val = build_datasets(tcfg, tokenizer)
    refs = [{**reference_row(val[:]["input_ids"], tokenizer, fc.num_samples, scorer), "label": "held-out text"}]
    run = dict(num_samples=fc.num_samples, seed=fc.seed, out="")
    for label, over in (("AR baseline, ancestral (T 1.0)", dict(sampling="topk", k=10**9, temperature=1.0)),
                        (f"AR baseline, {fc.sampling} T 0.8", dict(sampling=fc.sampling, k=fc.k, p=fc.p, temperature=0.8))):
        refs.append({**ar_row(ar, tokenizer, GenConfig(**over, **run), tcfg.max_len - 2, scorer), "label": label})
    rows = []
    for (rule, t), gc in tqdm(settings_.items(), desc="settings", leave=False):
        row = diffusion_row(model, tokenizer, gc, tcfg.max_len, scorer, name=rule)
        rows.append({"rule": rule, "temperature": t, "sample": row["texts"][0], **row})
    return refs, rows


def print_table(fc: FrontierConfig, refs: list[dict], rows: list[dict], chosen: dict | None) -> None:
    head = f"{'rule':<24}{'T':>5}{'gen ppl':>9}{'entropy':>9}{'dist-2':>8}{'rep-4':>7}  top word"
    what = f"continuing {fc.prompt!r}" if fc.prompt else "unprompted"
    print(f"{fc.num_samples} samples per setting ({what}, length {fc.length or 'the window'}, {fc.canvas} canvas"
          f"{f', blocks of {fc.block_size}' if fc.block_size else ''}), {fc.sampling}, {fc.steps} steps; "
          f"generative perplexity under the AR baseline")
    print(head)
    for r in refs + rows:
        name = r.get("rule") or r["label"]
        print(f"{name[:24]:<24}{r.get('temperature', ''):>5}{r['gen_ppl']:>9.1f}{r['unigram_entropy']:>9.2f}"
              f"{r['distinct_2']:>8.3f}{r['repeated_4gram']:>7.3f}  {r['top_word']!r} {r['top_word_share']:.0%}")
    if chosen is None:
        print("\nno setting meets the quality floor")
        return
    seed_rule = [(r["unigram_entropy"], r["gen_ppl"]) for r in rows if r["rule"] == "random"]
    at = ppl_at(chosen["unigram_entropy"], seed_rule) if seed_rule else None
    versus = (f"; the seed's rule (random order) reaches {at:.1f} at that entropy" if at is not None
              else "; the seed's rule's sweep does not reach that entropy")
    print(f"\nlowest generative perplexity above the quality floor: {chosen['rule']} at T {chosen['temperature']}: "
          f"{chosen['gen_ppl']:.1f} at {chosen['unigram_entropy']:.2f} bits{versus}")


OUTPUTS = ("sampler_frontier.png", "sampler_frontier.csv", "sampler_frontier.json", "sampler_frontier_config.json")


def write_outputs(fc: FrontierConfig, rules: list[str], refs: list[dict], rows: list[dict], chosen) -> None:
    from files import write_csv, write_json
    from metrics import SAMPLE_METRICS

    paths = {ext: os.path.join(fc.out_dir, f"sampler_frontier.{ext}") for ext in ("png", "csv", "json")}
    plot(rows, refs, chosen, paths["png"])
    keys = ["rule", "temperature", "gen_ppl", *SAMPLE_METRICS, "top_word", "forward_passes", "seconds_per_sample"]
    write_csv(paths["csv"], [keys] + [[r.get(k, r.get("label")) if k == "rule" else r.get(k, "") for k in keys]
                                      for r in refs + rows])
    write_json(paths["json"], {"config": dataclasses.asdict(fc), "rules": {k: RULES[k] for k in rules},
                               "quality_floor": QUALITY_FLOOR, "references": refs, "rows": rows, "chosen": chosen})
    save_config(fc, fc.out_dir, "sampler_frontier_config.json")
    for p in paths.values():
        print(f"wrote {p}")


def rule_configs(fc: FrontierConfig, rules: list[str], temps: list[float]) -> dict:
    """{(rule, temperature): the GenConfig that rule runs}: the frontier's settings, RULES' fields and
    the temperature over the rest of the decoding fields, each stated."""
    shared = dict(sampling=fc.sampling, k=fc.k, p=fc.p, steps=fc.steps, num_samples=fc.num_samples, seed=fc.seed,
                  prompt=fc.prompt, length=fc.length, block_size=fc.block_size, canvas=fc.canvas, out="",
                  schedule="linear", decode="schedule", cache="none", cfg=0.0, stop_at_eos=False, min_length=0)
    return {(rule, t): GenConfig(**{**shared, **RULES[rule], "temperature": t}) for rule in rules for t in temps}


def main(argv=None) -> int:
    fc, _ = parse(FrontierConfig, argv, __doc__)
    rules = list(RULES) if fc.rules == "all" else parse_names(fc.rules, "rules", tuple(RULES))
    temps = parse_floats(fc.temperatures, "temperatures")
    if not temps:
        raise UsageError("--temperatures is empty: give at least one, e.g. 0.9")
    settings_ = rule_configs(fc, rules, temps)  # every setting is checked before any work starts
    check_outputs(fc.out_dir, OUTPUTS, "--out-dir")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    refs, rows = measure(fc, settings_)
    # the setting that meets the quality floor at the lowest generative perplexity, against the seed's rule
    above = [r for r in rows if meets_floor(r, refs[0])]
    chosen = min(above, key=lambda r: r["gen_ppl"]) if above else None
    print_table(fc, refs, rows, chosen)
    write_outputs(fc, rules, refs, rows, chosen)
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
