"""GENERATION_VALIDATION.md from evaluate.py's evaluation.json, and nothing else.

    python report.py                        # results/eval/evaluation.json -> results/eval/GENERATION_VALIDATION.md
    python report.py --evaluation docs/evaluation.json --out GENERATION_VALIDATION.md   # the committed page

The report goes beside its JSON unless --out names another file; a file git tracks (the committed
GENERATION_VALIDATION.md) is overwritten only when --out names it.

No torch, no model: it renders in well under a second, so the report can be re-rendered (and
tested against its JSON) without rerunning the evaluation. Every sentence of the assessment is
computed from recorded fields (each row's settings, the machine, the parameter counts); none
depends on what a setting is called. evaluate.py uses the table functions for its stdout.
"""

import json
import math
import os
import subprocess
import sys

from cli import UsageError, cli, parse
from config import flag, Settings
from files import check_output, write_atomic
from metrics import SAMPLE_METRICS

ENTROPY_SLACK = 1.0  # bits below held-out text's unigram entropy that count as degenerate


class ReportConfig(Settings):
    evaluation: str = flag("results/eval/evaluation.json", "written by evaluate.py")
    out: str = flag("", "the markdown report; '' = GENERATION_VALIDATION.md beside --evaluation (a file git tracks "
                    "is overwritten only when named here)")


def tracked(path: str) -> bool:
    """True if git tracks `path` (False outside a repository, or without git)."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        return subprocess.run(["git", "ls-files", "--error-unmatch", os.path.basename(path)], cwd=folder,
                              capture_output=True).returncode == 0
    except OSError:  # no git, or the folder does not exist yet
        return False


def out_path(rc: ReportConfig) -> str:
    """--out, or GENERATION_VALIDATION.md beside the JSON unless git tracks that file."""
    if rc.out:
        return rc.out
    path = os.path.join(os.path.dirname(rc.evaluation), "GENERATION_VALIDATION.md")
    if tracked(path):
        raise UsageError(f"{path} is a tracked file: to replace it, name it with --out {path}")
    return path


# ---------------------------------------------------------------------------------------------
# Tables (also evaluate.py's stdout)
# ---------------------------------------------------------------------------------------------

# (key, title, format): generative perplexity, every metrics.SAMPLE_METRICS statistic, speed
COLUMNS = (("gen_ppl", "gen ppl", "{:.1f}"), *((k, m.title, m.fmt) for k, m in SAMPLE_METRICS.items()),
           ("seconds_per_sample", "s/sample", "{:.4f}"))


def table_rows(result: dict) -> list[list[str]]:
    rows = []
    for r in result["samples"]:
        cells = [r["name"], r["model"]]
        cells += ["-" if r.get(key) is None else fmt.format(r[key]) for key, _, fmt in COLUMNS]
        rows.append(cells)
    return rows


def format_table(result: dict) -> str:
    head = ["setting", "model"] + [title for _, title, _ in COLUMNS]
    rows = [head] + table_rows(result)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def likelihood_lines(result: dict) -> list[str]:
    h = result["held_out"]
    d = h["diffusion"]
    lines = [f"held-out likelihood: {h['scored_tokens']:,} scored tokens ({h['scored_bytes']:,} bytes) in "
             f"{h['blocks']} blocks, prefix {h['prefix']}, {h['draws']} Monte Carlo draws per block",
             f"  diffusion ELBO bound  {d['nats_per_token']:.4f} +- {d['nats_stderr']:.4f} nats/token  "
             f"perplexity <= {d['perplexity']:.1f}  {d['bits_per_byte']:.3f} bits/byte"]
    if "ar" in h:
        a = h["ar"]
        lines.append(f"  AR baseline           {a['nats_per_token']:.4f} nats/token            "
                     f"perplexity    {a['perplexity']:.1f}  {a['bits_per_byte']:.3f} bits/byte")
        lines.append(f"  gap: bound / AR perplexity = {d['perplexity'] / a['perplexity']:.2f}x "
                     f"({d['nats_per_token'] - a['nats_per_token']:+.3f} nats/token)")
    return lines


def md_table(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
                     ["| " + " | ".join(r) + " |" for r in rows])


# ---------------------------------------------------------------------------------------------
# The assessment: sentences computed from recorded fields
# ---------------------------------------------------------------------------------------------


def differs_only_in(a: dict, b: dict, keys: set) -> bool:
    """True if settings a and b differ in at least one of `keys` and in nothing else."""
    diff = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    return bool(diff) and diff <= keys


def same_sampler(ar_row: dict, row: dict) -> bool:
    """An AR row records only its sampler's fields (decoding.sampler_setting): it shares the
    sampler of a diffusion row whose settings hold the same values."""
    return all(row["settings"].get(k) == v for k, v in ar_row["settings"].items())


def key_rows(result: dict) -> dict:
    """The rows the assessment talks about: reference, diffusion rows, the row at generate.py's
    defaults (found by its recorded settings) and the AR row with the same sampler."""
    rows = result["samples"]
    diff = [r for r in rows if r["model"] == "diffusion"]
    default = next((r for r in diff if r["settings"] == result["default_settings"]), None)
    art = next((r for r in rows if r["model"] == "AR" and default and same_sampler(r, default)), None)
    return {"ref": next(r for r in rows if r["model"] == "reference"), "diff": diff, "default": default, "art": art}


def likelihood_sentence(h: dict) -> str:
    d, a = h["diffusion"], h["ar"]
    return (f"**Likelihood.** On the same {h['scored_tokens']:,} held-out tokens the diffusion model's ELBO "
            f"bound is perplexity <= {d['perplexity']:.1f} ({d['bits_per_byte']:.3f} bits/byte) and the AR "
            f"baseline's perplexity is {a['perplexity']:.1f} ({a['bits_per_byte']:.3f} bits/byte): the bound "
            f"is {d['perplexity'] / a['perplexity']:.2f}x the AR perplexity, "
            f"{d['nats_per_token'] - a['nats_per_token']:+.3f} nats/token (Monte Carlo standard error "
            f"{d['nats_stderr']:.3f}).")


def generative_sentence(result: dict, k: dict) -> str:
    ref, diff, default, art = k["ref"], k["diff"], k["default"], k["art"]
    text = (f"**Generative perplexity** (scorer: {result['scorer']}; held-out text scores {ref['gen_ppl']:.1f}, "
            f"unigram entropy {ref['unigram_entropy']:.2f} bits).")
    if default and art:
        text += (f" With the same sampler ({art['label']}) the diffusion model at generate.py's "
                 f"defaults ({default['name']}) scores {default['gen_ppl']:.1f} "
                 f"({default['unigram_entropy']:.2f} bits) and the AR baseline {art['gen_ppl']:.1f} "
                 f"({art['unigram_entropy']:.2f} bits): {default['gen_ppl'] / art['gen_ppl']:.2f}x the AR samples' "
                 f"generative perplexity.")
        if result["scorer"] == "AR baseline":
            text += " The scorer wrote the AR samples itself, which favours them."
    best = min(diff, key=lambda r: r["gen_ppl"])
    text += f" The lowest diffusion value is {best['gen_ppl']:.1f} ({best['name']}, {best['unigram_entropy']:.2f} bits)."
    near = min(diff, key=lambda r: abs(r["unigram_entropy"] - ref["unigram_entropy"]))
    text += (f" Closest to held-out text's entropy is {near['name']} ({near['unigram_entropy']:.2f} bits, "
             f"generative perplexity {near['gen_ppl']:.1f}).")
    low = [r for r in diff if r["unigram_entropy"] < ref["unigram_entropy"] - ENTROPY_SLACK]
    under = [r for r in low if r["gen_ppl"] < ref["gen_ppl"]]
    if low:
        text += (f" {len(low)} of {len(diff)} diffusion settings have unigram entropy more than "
                 f"{ENTROPY_SLACK:.0f} bit below held-out text's")
        text += (f", and {len(under)} of those score a lower generative perplexity than held-out text itself: "
                 f"they lean on frequent tokens, so a low value there is not better text." if under else ".")
    return text


def repetition_lines(k: dict) -> list[str]:
    ref, diff, art = k["ref"], k["diff"], k["art"]
    rep = sorted(diff, key=lambda r: r["repeated_4gram"])
    text = (f"**Repetition.** The lowest repeated 4-gram rate among diffusion settings is "
            f"{rep[0]['repeated_4gram']:.3f} ({rep[0]['name']}), the highest {rep[-1]['repeated_4gram']:.3f} "
            f"({rep[-1]['name']}); held-out text has {ref['repeated_4gram']:.3f}")
    lines = [text + (f" and the AR baseline's samples with the same sampler {art['repeated_4gram']:.3f}."
                     if art else ".")]
    greedy = [r for r in diff if r["settings"]["sampling"] == "greedy"]
    sampled = [r for r in diff if r["settings"]["sampling"] != "greedy"]
    if greedy and sampled:
        mean = lambda rs, key: sum(r[key] for r in rs) / len(rs)  # noqa: E731
        lines.append(f"**Greedy vs sampled.** {len(greedy)} greedy settings average distinct-2 "
                     f"{mean(greedy, 'distinct_2'):.3f} and repeated 4-grams {mean(greedy, 'repeated_4gram'):.3f}; "
                     f"{len(sampled)} sampled settings {mean(sampled, 'distinct_2'):.3f} and "
                     f"{mean(sampled, 'repeated_4gram'):.3f}.")
    return lines


def pair_lines(k: dict, has_ppl: bool) -> list[str]:
    """Sentences on pairs of settings that differ only in the step count, or only in the order."""
    diff, lines = k["diff"], []
    pairs = [(a, b) for a in diff for b in diff
             if a["settings"].get("steps", 0) < b["settings"].get("steps", 0) and
             differs_only_in(a["settings"], b["settings"], {"steps"})]
    if pairs and has_ppl:
        lower = [a for a, b in pairs if b["gen_ppl"] < a["gen_ppl"]]
        poorer = [a for a, b in pairs if b["unigram_entropy"] < a["unigram_entropy"]]
        lines.append(f"**Steps.** More steps lowered generative perplexity in {len(lower)} of {len(pairs)} pairs of "
                     f"settings that differ only in the step count, and lowered unigram entropy in {len(poorer)} ("
                     + "; ".join(f"{a['name']} -> {b['name']}: {a['gen_ppl']:.1f} -> {b['gen_ppl']:.1f}, "
                                 f"{a['unigram_entropy']:.2f} -> {b['unigram_entropy']:.2f} bits" for a, b in pairs) + ").")
    order = lambda st: st.get("order", "") + (f" + Gumbel noise {st['order_noise']}" if st.get("order_noise") else "")  # noqa: E731
    for a in diff:
        for b in diff:
            if order(a["settings"]) < order(b["settings"]) and \
                    differs_only_in(a["settings"], b["settings"], {"order", "order_noise"}):
                gp = (f"generative perplexity {a['gen_ppl']:.1f} vs {b['gen_ppl']:.1f}, "
                      if a["gen_ppl"] is not None else "")
                lines.append(f"**Order** ({a['label'].split(';')[0]}, {a['settings']['schedule']}, "
                             f"{a['settings']['steps']} steps): {order(a['settings'])} against "
                             f"{order(b['settings'])}: {gp}unigram entropy {a['unigram_entropy']:.2f} vs "
                             f"{b['unigram_entropy']:.2f} bits, repeated 4-grams {a['repeated_4gram']:.3f} vs "
                             f"{b['repeated_4gram']:.3f}.")
    return lines


def speed_lines(k: dict, n: int) -> list[str]:
    default, art, lines = k["default"], k["art"], []
    for t in (r for r in k["diff"] if r["settings"]["decode"] == "threshold"):
        why = (": about one pass per token, so at this model size it saved no forward passes"
               if t["forward_passes"] >= 0.9 * n else "")
        vs = f", vs {default['seconds_per_sample']:.4f} at the defaults" if default else ""
        lines.append(f"**Threshold decoding** ({t['label']}) took {t['forward_passes']} forward passes "
                     f"for the batch of {t['samples']} to write {n} tokens per sample{why} "
                     f"({t['seconds_per_sample']:.4f} s/sample{vs}).")
    if art and default:
        lines.append(f"**Speed.** Seconds per sample: AR {art['seconds_per_sample']:.4f} ({n} forward passes with a "
                     f"KV cache), diffusion at the defaults {default['seconds_per_sample']:.4f} "
                     f"({default['forward_passes']} forward passes); each timed once, so read them to a few tens of "
                     f"percent: the side-by-side ratios are bench.py's (README, Performance).")
    return lines


def verdict(h: dict, k: dict) -> str:
    default, art = k["default"], k["art"]
    lik = h["diffusion"]["perplexity"] / h["ar"]["perplexity"]
    side = lambda x: "behind" if x > 1.1 else "ahead of" if x < 1 / 1.1 else "on par with"  # noqa: E731
    text = (f"**Verdict.** Against an AR model with the same tokenizer, data, parameter count and token budget, "
            f"the diffusion model is {side(lik)} it in likelihood ({lik:.2f}x perplexity, bound vs exact)")
    if default and art and k["ref"]["gen_ppl"] is not None:
        gen = default["gen_ppl"] / art["gen_ppl"]
        text += f" and {side(gen)} it in generative perplexity with the same sampler ({gen:.2f}x)"
        entropy_gap = art["unigram_entropy"] - default["unigram_entropy"]
        if entropy_gap > ENTROPY_SLACK:
            text += f", while its samples have {entropy_gap:.1f} bits less unigram entropy"
    return text + "."


def assessment(result: dict) -> list[str]:
    """The assessment's sentences, each computed from recorded numbers and settings."""
    h, k = result["held_out"], key_rows(result)
    has_ppl = k["ref"]["gen_ppl"] is not None
    lines = [verdict(h, k), likelihood_sentence(h)] if "ar" in h else []
    if has_ppl and k["diff"]:
        lines.append(generative_sentence(result, k))
    if k["diff"]:
        lines += repetition_lines(k)
    return lines + pair_lines(k, has_ppl) + speed_lines(k, result["sample_length"])


def known_limits(result: dict) -> list[str]:
    """Caveats, each stated from recorded fields."""
    t, p, m = result["checkpoint_config"], result["parameters"], result["machine"]
    tokens = t["max_steps"] * t["batch_size"] * t["grad_accum"] * t["max_len"]
    lines = [f"The diffusion model has {p['diffusion']:,} parameters and saw {tokens:,} training tokens "
             f"({'the embedded corpus' if t['dataset'] == 'embedded' else t['dataset']}); absolute numbers at this size "
             f"say little about the method at scale."
             + (" The comparison with the AR baseline (same tokenizer, data, packing, token budget and parameter "
                "count) is the informative part." if p["ar"] else "")]
    lines.append("The diffusion number is an upper bound (ELBO) estimated by Monte Carlo, with the standard error "
                 "shown; the AR number is an exact likelihood. A bound above the AR perplexity does not prove the "
                 "diffusion model is worse by that much.")
    if t["mask_distribution"] == "levels":
        low = min(float(x) for x in t["mask_levels"].split(","))
        lines.append(f"The bound's terms with k = 1 masked token of n use a rate below this model's lowest training "
                     f"rate ({low}), so they are slightly out of distribution.")
    lines.append("Both models are scored on the same tokens: every token inside a block's `<s> ... </s>` frame, a "
                 "document-ending `</s>` inside it included (it is text both models learn); the frame itself is "
                 "conditioned on, not scored.")
    scorer = result["scorer"]
    if scorer:
        lines.append(f"Generative perplexity is judged by {scorer}" +
                     (", trained on the same corpus as the models," if scorer == "AR baseline" else "") +
                     " and it rewards dull text: a low value means little without unigram entropy close to "
                     "held-out text's.")
    load = m.get("load_average_1min")
    lines.append(f"Seconds per sample are for a batch of {result['config']['num_samples']} samples on {m['cpu']} "
                 f"({m['device']}, {m['torch_threads']} torch threads"
                 + (f", 1-minute load average {load} when the evaluation started" if load is not None else "")
                 + "): compare rows of one run, not runs on different machines.")
    return lines


# ---------------------------------------------------------------------------------------------
# The markdown
# ---------------------------------------------------------------------------------------------


def config_part(result: dict, json_path: str) -> list[str]:
    """The page's head: what it is, the commands, the models, the machine, the resolved configs."""
    p, t, v, m = result["parameters"], result["checkpoint_config"], result["versions"], result["machine"]
    tokens = t["max_steps"] * t["batch_size"] * t["grad_accum"] * t["max_len"]
    return [
        "# Generation validation", "",
        f"How good is the generator? Rendered by `report.py` from `{json_path}` (written by `evaluate.py`); every "
        "number and sample below comes from that one evaluation. Regenerate both whenever defaults change "
        "(commands below, in order).", "",
        "## Commands and config", "",
        "```bash\n" + "\n".join(result["commands"]) + "\n```", "",
        f"- Diffusion model: `{t['model']}` ({t['scratch_arch'] if t['model'] == 'scratch' else 'pretrained'}), "
        f"{p['diffusion']:,} parameters, window {t['max_len']}, {t['max_steps']} steps x {t['batch_size']} x "
        f"{t['grad_accum']} x {t['max_len']} = {tokens:,} training tokens.",
        (f"- AR baseline: GPT-2 shape, {p['ar']:,} parameters ({p['ar'] / p['diffusion'] - 1:+.1%}), same tokenizer, "
         f"packed blocks, held-out split and token budget." if p["ar"] else "- AR baseline: none (`--baseline none`)."),
        f"- Evaluation (numbers and table): {result['seconds']:.0f} s wall on {m['cpu']} ({m['device']}, "
        f"{m['torch_threads']} torch threads), torch {v['torch']}, transformers {v['transformers']}, "
        f"Python {v['python']}.", "",
        "<details><summary>Resolved configs (evaluation, diffusion checkpoint, AR baseline)</summary>", "",
        "```json\n" + json.dumps({"evaluation": result["config"], "diffusion": result["checkpoint_config"],
                                  "ar_baseline": result["baseline_config"]}, indent=2) + "\n```", "",
        "</details>", ""]


def likelihood_part(h: dict) -> list[str]:
    lik = [["diffusion (ELBO bound)", f"{h['diffusion']['nats_per_token']:.4f} ± {h['diffusion']['nats_stderr']:.4f}",
            f"<= {h['diffusion']['perplexity']:.1f}", f"{h['diffusion']['bits_per_byte']:.3f}"]]
    if "ar" in h:
        lik.append(["AR baseline (exact)", f"{h['ar']['nats_per_token']:.4f}", f"{h['ar']['perplexity']:.1f}",
                    f"{h['ar']['bits_per_byte']:.3f}"])
    parts = [
        "## Held-out likelihood, same tokens for both models", "",
        f"{h['scored_tokens']:,} tokens ({h['scored_bytes']:,} UTF-8 bytes) of {h['blocks']} held-out blocks: every "
        f"token after a prefix of {h['prefix']} up to the block's last, a document-ending `</s>` inside the block "
        f"included ({h.get('scored_eos', 0):,} of them); the block's frame (`<s>` first, `</s>` last) is "
        f"conditioned on, not scored. The diffusion model's bound uses {h['draws']} Monte Carlo draws per "
        f"block of k ~ U{{1..n}} masked tokens (stratified), weighted n/k; the AR model scores each of the same "
        f"tokens from its left context.", "",
        md_table(["model", "nats/token", "perplexity", "bits/byte"], lik), "",
        "How the gap moves with the training objective, and with 2x and 4x the training budget: "
        "[docs/objective_study.md](docs/objective_study.md) (`experiments/objective_study.py`).", ""]
    if "ar_all_tokens_after_bos" in h:
        usual = h["ar_all_tokens_after_bos"]["perplexity"]
        parts += [f"The AR model's usual number, over every token after `<s>` including the `</s>` that always ends a "
                  f"block, is perplexity {usual:.1f} ({'lower' if usual < h['ar']['perplexity'] else 'higher'}); it "
                  f"is not comparable with the bound, which never scores the block's frame.", ""]
    return parts


def samples_part(result: dict) -> list[str]:
    """The quality table with every setting in words, then the report's samples."""
    parts = [
        "## Sample quality", "",
        f"{result['config']['num_samples']} unprompted samples of {result['sample_length']} tokens per setting, "
        f"all settings from seed {result['config']['seed']}; generative perplexity under "
        f"{result['scorer'] or '(no scorer)'}; n-gram statistics on token ids; held-out text of the same length "
        f"is the reference row. Each setting in full:", "",
        md_table(["setting", "model"] + [t for _, t, _ in COLUMNS], table_rows(result)), ""]
    parts += [f"- `{r['name']}`: {r['label']}" for r in result["samples"] if r["settings"]]
    parts += ["", "## Samples", "",
              f"Two samples per setting, seed {result['config']['seed']}; infill spans filled by the model in ⟦ ⟧."]
    section = None
    for s in result["report_samples"]:
        if s["section"] != section:
            parts += ["", f"### {s['section']}"]
            section = s["section"]
        given = f" Template `{s['template']}`." if s["template"] else ""
        same = " (both samples identical)" if len(set(s["texts"])) == 1 and len(s["texts"]) > 1 else ""
        parts += ["", f"*{s['caption']}: {s['label']}.{given}*{same}", "",
                  "```text\n" + "\n".join(x.replace("\n", " ") for x in s["texts"]) + "\n```"]
    return parts


def render(result: dict, json_path: str) -> str:
    parts = config_part(result, json_path) + likelihood_part(result["held_out"]) + samples_part(result)
    parts += ["", "## Assessment", "", "Computed from the recorded numbers and settings by `report.assessment`.", ""]
    parts += [f"- {line}" for line in assessment(result)]
    parts += ["", "## Known limits", ""] + [f"- {line}" for line in known_limits(result)]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------
# Blocks of README.md rendered by a command (bench.py --render, speed_frontier.py --render)
# ---------------------------------------------------------------------------------------------


def replace_block(text: str, command: str, body: str) -> str:
    """text with what stands between `command`'s markers replaced by body: a doc block that a
    command renders from a JSON, re-rendered without touching the prose around it."""
    begin, end = f"<!-- rendered by: {command} -->", f"<!-- end of: {command} -->"
    if begin not in text or end not in text:
        raise UsageError(f"README.md has no block for `{command}`: add the lines {begin} and {end}")
    head, rest = text.split(begin, 1)
    return head + begin + "\n" + body.rstrip() + "\n" + end + rest.split(end, 1)[1]


def render_into(readme: str, command: str, body: str) -> None:
    """Writes body into readme's block for command (replace_block), whole or not at all."""
    with open(readme, encoding="utf-8") as f:
        write_atomic(readme, replace_block(f.read(), command, body))


def not_a_number(text: str):
    raise ValueError(f"{text} is not a number")


def check_numbers(obj, where: str = "") -> None:
    """Every number must be finite, and those a count, a time, a likelihood or a text statistic
    records (NONNEGATIVE) at least 0, perplexities above 0: the report would state them as facts."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            check_numbers(v, f"{where}.{k}" if where else str(k))
            key = str(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and \
                    (v < 0 and (key in NONNEGATIVE or key.startswith("distinct_")) or v <= 0 and "perplexity" in key):
                raise ValueError(f"{where}.{k} is {v}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            check_numbers(v, f"{where}[{i}]")
    elif isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"{where} is {obj}")


NONNEGATIVE = {"nats_per_token", "nats_stderr", "bits_per_byte", "gen_ppl", "unigram_entropy", "repeated_4gram",
               "seconds", "seconds_per_sample", "forward_passes", "samples", "scored_tokens", "scored_bytes",
               "blocks", "draws", "prefix", "diffusion", "ar", "num_samples", "sample_length"}


def main(argv=None) -> int:
    rc, _ = parse(ReportConfig, argv, __doc__)
    out = out_path(rc)
    check_output(out, "--out")  # before reading anything
    try:
        with open(rc.evaluation) as f:
            result = json.load(f, parse_constant=not_a_number)
    except FileNotFoundError:
        raise UsageError(f"no {rc.evaluation}; make it with: python evaluate.py")
    except IsADirectoryError:
        raise UsageError(f"--evaluation {rc.evaluation} is a folder; give evaluate.py's evaluation.json")
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise UsageError(f"{rc.evaluation} is not valid JSON ({str(e).splitlines()[0][:120]}); rerun python evaluate.py")
    try:
        check_numbers(result)
    except ValueError as e:
        raise UsageError(f"{rc.evaluation} holds a number the report cannot state ({e}); rerun python evaluate.py")
    try:
        text = render(result, rc.evaluation)
    except (KeyError, TypeError, StopIteration, ValueError, AttributeError, IndexError, ZeroDivisionError) as e:
        raise UsageError(f"{rc.evaluation} is not an evaluate.py result ({type(e).__name__}: {e}); "
                         f"rerun python evaluate.py")
    write_atomic(out, text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
