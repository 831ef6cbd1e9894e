"""How good is the generator? Likelihood against an autoregressive baseline, and sample quality.

    python baseline_ar.py --checkpoint results/final-model          # once: the AR baseline
    python evaluate.py                                               # results/final-model vs results/ar-baseline
    python evaluate.py --report GENERATION_VALIDATION.md             # also writes the markdown report
    python evaluate.py --scorer gpt2-large                           # online: a hub model judges the samples

1. Held-out likelihood, on the same tokens for both models. The diffusion model gets the
   discrete-time ELBO bound: for a block with n scored tokens,
       -log p(x) <= E_{k ~ U{1..n}} [ (n / k) * sum of CE over k uniformly chosen masked tokens ]
   (the any-order bound of MDLM / absorbing diffusion), estimated by Monte Carlo with k stratified
   over the draws. Scored = every position that data_collator.protected_positions leaves maskable
   for a prefix of --prefix content tokens: the prefix and special tokens (<s>, and every </s>:
   block end, document separators) are conditioned on and not scored. The AR model scores
   exactly those positions, each from the tokens to its left. Reported in nats/token, perplexity
   and bits per byte of the scored text.
2. Sample quality for several generation settings (SETTINGS) and the AR model's own samples:
   generative perplexity under a scorer (the AR baseline, or --scorer), unigram entropy,
   distinct-1/2, repeated 4-gram rate (metrics.py), seconds per sample; held-out text of the same
   length is the reference row.

Prints a table and writes --out-dir/evaluation.json (numbers, samples, resolved settings).
"""

import argparse
import dataclasses
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass

import torch

from config import UsageError, add_args, cli, given, save_config
from data_collator import mask_tokens, prefix_lengths, protected_positions, special_token_ids
from generate import SAMPLERS, GenConfig, banned_ids, generate
from metrics import distinct_n, repeated_ngram_rate, unigram_entropy
from modeling import n_params


@dataclass
class EvalConfig:
    checkpoint: str = "results/final-model"  # the diffusion model (train.py final-model)
    baseline: str = "results/ar-baseline"  # baseline_ar.py --output-dir; "none" = no AR baseline
    scorer: str = ""  # causal LM for generative perplexity (hub id or folder); "" = the AR baseline
    prefix: int = -1  # content tokens conditioned on, not scored; -1 = 0, or prefix_len if trained with a fixed prefix
    elbo_blocks: int = 0  # held-out blocks scored; 0 = all
    elbo_draws: int = 8  # Monte Carlo draws of (k, mask) per block (at least 2, for the error bar)
    settings: str = "all"  # comma-separated names from SETTINGS, or "all"
    num_samples: int = 16  # samples per generation setting (and held-out blocks in the reference row)
    batch_size: int = 64  # rows per forward pass
    seed: int = 0  # masks of the bound and every sample (each setting restarts from this seed)
    out_dir: str = "results/eval"  # gets evaluation.json and eval_config.json
    report: str = ""  # also write a markdown report here (GENERATION_VALIDATION.md)


# Diffusion generation settings, as overrides of generate.GenConfig. Every setting fills the whole
# window from an empty canvas (unprompted), the usual setup for generative perplexity.
SETTINGS = {
    "linear-topk-10": dict(schedule="linear", sampling="topk", steps=10),
    "cosine-topk-10": dict(schedule="cosine", sampling="topk", steps=10),
    "linear-greedy-10": dict(schedule="linear", sampling="greedy", steps=10),
    "cosine-greedy-10": dict(schedule="cosine", sampling="greedy", steps=10),
    "linear-topk-32": dict(schedule="linear", sampling="topk", steps=32),
    "cosine-topk-32": dict(schedule="cosine", sampling="topk", steps=32),
    "linear-greedy-32": dict(schedule="linear", sampling="greedy", steps=32),
    "cosine-greedy-32": dict(schedule="cosine", sampling="greedy", steps=32),
    "random-remask-topk-10": dict(schedule="linear", sampling="topk", steps=10, remask="random"),
    "threshold-0.9-topk": dict(sampling="topk", decode="threshold", threshold=0.9),
}
# The AR baseline's own samples: the same samplers (generate.SAMPLERS), left to right.
AR_SETTINGS = {
    "ar-topk": dict(sampling="topk", temperature=0.8, k=50),  # generate.py's default sampler
    "ar-sample": dict(sampling="topk", temperature=1.0, k=10**9),  # plain ancestral sampling
}


def validate_eval(ec: EvalConfig) -> list[str]:
    """The setting names to run, or a UsageError."""
    names = list(SETTINGS) if ec.settings == "all" else [s.strip() for s in ec.settings.split(",") if s.strip()]
    unknown = [s for s in names if s not in SETTINGS]
    if unknown or not names:
        raise UsageError(f"--settings: unknown {', '.join(unknown) or '(empty)'}; "
                         f"choose from all, {', '.join(SETTINGS)}")
    if ec.elbo_draws < 2:
        raise UsageError(f"--elbo-draws must be at least 2 (the error bar needs two), got {ec.elbo_draws}")
    for name in ("num_samples", "batch_size"):
        if getattr(ec, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(ec, name)}")
    if ec.elbo_blocks < 0:
        raise UsageError(f"--elbo-blocks must be >= 0 (0 = all), got {ec.elbo_blocks}")
    return names


def resolve_prefix(ec: EvalConfig, tcfg) -> int:
    """-1: score every content token (prefix 0), in distribution for "variable" and "none" prefix
    training; a model trained with a fixed prefix has never seen fewer visible tokens, so it gets
    its own prefix_len."""
    prefix = ec.prefix if ec.prefix >= 0 else (tcfg.prefix_len if tcfg.prefix_mode == "fixed" else 0)
    if prefix > tcfg.max_len - 3:
        raise UsageError(f"--prefix must be at most max_len - 3 = {tcfg.max_len - 3}, got {prefix}")
    return prefix


# ---------------------------------------------------------------------------------------------
# 1. Held-out likelihood: the diffusion ELBO bound and the AR NLL on the same positions
# ---------------------------------------------------------------------------------------------


def stratified_ks(n: torch.Tensor, draws: int, g: torch.Generator) -> torch.Tensor:
    """[B, draws] masked-token counts, each k ~ U{1..n} but stratified: draw r takes u in
    [r/draws, (r+1)/draws), so the k are spread evenly (each 1..n exactly once when draws == n)."""
    u = (torch.arange(draws) + torch.rand(len(n), draws, generator=g)) / draws  # [B, R]
    return torch.minimum((u * n[:, None]).long() + 1, n[:, None])  # [B, R]


@torch.no_grad()
def elbo_terms(model, ids: torch.Tensor, protected: torch.Tensor, mask_id: int, draws: int,
               g: torch.Generator) -> torch.Tensor:
    """[B, draws] one-draw estimates of each row's NLL bound: (n/k) * sum of CE at k masked
    positions, k stratified over U{1..n}, the k positions uniform among the n unprotected ones."""
    from modeling import masked_lm_loss

    B = len(ids)
    n = (~protected).sum(1)  # [B]
    k = stratified_ks(n, draws, g).reshape(-1)  # [B*R]
    n = n.repeat_interleave(draws)  # [B*R]
    # a rate of k/n makes mask_tokens mask exactly round(k/n * n) = k positions
    inputs, labels = mask_tokens(ids.repeat_interleave(draws, 0), k / n, protected.repeat_interleave(draws, 0),
                                 mask_id, g)  # [B*R, L]
    device = next(model.parameters()).device
    _, ce, rows = masked_lm_loss(model, inputs.to(device), None, labels.to(device))  # [N], [N]
    sums = torch.zeros(B * draws).index_add_(0, rows.cpu(), ce.float().cpu())  # [B*R]
    return (n / k * sums).view(B, draws)  # [B, R]


@torch.no_grad()
def causal_token_nll(model, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """[B, L] -log p(ids[:, j] | ids[:, <j]) under a causal LM; column 0 (nothing predicts it) is 0."""
    import torch.nn.functional as F

    device = next(model.parameters()).device
    am = attention_mask.to(device) if attention_mask is not None else None
    logits = model(input_ids=ids.to(device), attention_mask=am).logits.float()  # [B, L, V]
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:].to(device), reduction="none")  # [B, L-1]
    return F.pad(ce, (1, 0)).cpu()  # [B, L]


def held_out_likelihood(model, ar, blocks: torch.Tensor, tokenizer, prefix: int, draws: int,
                        batch_size: int, g: torch.Generator) -> dict:
    """ELBO bound of the diffusion model and NLL of the AR model (None = skip) on the same scored
    positions of blocks [M, L], with bits per byte of the scored text."""
    from tqdm import tqdm

    special = special_token_ids(tokenizer)
    per_batch = max(1, batch_size // draws)
    bound, mc_var, ar_nats, ar_all, n_tok, n_bytes = [], [], 0.0, [0.0, 0], 0, 0
    for i in tqdm(range(0, len(blocks), per_batch), desc="held-out ELBO", leave=False):
        ids = blocks[i:i + per_batch]  # [b, L]
        protected = protected_positions(ids, special, prefix_lengths(len(ids), "fixed", prefix, g))  # [b, L]
        terms = elbo_terms(model, ids, protected, tokenizer.mask_token_id, draws, g)  # [b, R]
        bound.append(terms.mean(1))
        mc_var.append(terms.var(1) / draws)  # conservative: stratification only lowers the variance
        n_tok += int((~protected).sum())
        n_bytes += sum(len(tokenizer.decode(row[~p].tolist()).encode("utf-8")) for row, p in zip(ids, protected))
        if ar is not None:
            nll = causal_token_nll(ar, ids)  # [b, L]
            ar_nats += float(nll[~protected].sum())
            ar_all[0] += float(nll[:, 1:].sum())  # the usual LM number: every token after <s>
            ar_all[1] += nll[:, 1:].numel()
    bound, mc_var = torch.cat(bound), torch.cat(mc_var)  # [M]
    nats = float(bound.sum()) / n_tok
    out = {"blocks": len(blocks), "prefix": prefix, "draws": draws, "scored_tokens": n_tok, "scored_bytes": n_bytes,
           "diffusion": summary(nats, n_tok, n_bytes) | {"nats_stderr": math.sqrt(float(mc_var.sum())) / n_tok}}
    if ar is not None:
        out["ar"] = summary(ar_nats / n_tok, n_tok, n_bytes)
        out["ar_all_tokens_after_bos"] = {"nats_per_token": ar_all[0] / ar_all[1], "tokens": ar_all[1],
                                          "perplexity": math.exp(ar_all[0] / ar_all[1])}
    return out


def summary(nats_per_token: float, tokens: int, n_bytes: int) -> dict:
    return {"nats_per_token": nats_per_token, "perplexity": math.exp(min(nats_per_token, 50)),
            "bits_per_byte": nats_per_token * tokens / math.log(2) / n_bytes}


# ---------------------------------------------------------------------------------------------
# 2. Samples and their quality
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def ar_generate(model, start: torch.Tensor, length: int, gc: GenConfig, banned: list[int],
                g: torch.Generator) -> torch.Tensor:
    """[B, length] tokens sampled left to right after start [B, T0] with SAMPLERS[gc.sampling],
    the same sampler functions the diffusion model uses, special tokens banned as there."""
    device = next(model.parameters()).device
    x, cache, out = start.to(device), None, []
    for _ in range(length):
        o = model(input_ids=x, cache=cache, use_cache=True, logits_to_keep=1)
        cache = o.cache
        logits = o.logits[:, -1].float()  # [B, V]
        logits[:, banned] = float("-inf")
        x = SAMPLERS[gc.sampling](logits, g, temperature=gc.temperature, k=gc.k, p=gc.p)[:, None]  # [B, 1]
        out.append(x.cpu())
    return torch.cat(out, 1)  # [B, length]


@torch.no_grad()
def score_texts(scorer, scorer_tok, texts: list[str], batch_size: int) -> tuple[float, int]:
    """(total nats, tokens) of texts under a causal LM, each text tokenised by the scorer's own
    tokenizer and scored after its begin-of-text token (so any scorer judges the same strings)."""
    bos = scorer_tok.bos_token_id if scorer_tok.bos_token_id is not None else scorer_tok.eos_token_id
    limit = getattr(scorer.config, "n_positions", None) or getattr(scorer.config, "max_position_embeddings", 1024)
    rows = [[bos] + scorer_tok(t, add_special_tokens=False)["input_ids"][:limit - 1] for t in texts]
    nats, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        width = max(len(r) for r in chunk)
        ids = torch.tensor([r + [bos] * (width - len(r)) for r in chunk])  # [b, W] right-padded
        am = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in chunk])  # [b, W]
        nll = causal_token_nll(scorer, ids, am)  # [b, W]
        keep = am.bool()
        keep[:, 0] = False  # the begin-of-text token is given, not scored
        nats += float(nll[keep].sum())
        count += int(keep.sum())
    return nats, count


def quality(token_lists: list[list[int]], texts: list[str], scorer, seconds: float | None, batch_size: int) -> dict:
    row = {"samples": len(texts), "unigram_entropy": max(0.0, unigram_entropy(token_lists)),  # not -0.0
           "distinct_1": distinct_n(token_lists, 1), "distinct_2": distinct_n(token_lists, 2),
           "repeated_4gram": repeated_ngram_rate(token_lists, 4),
           "seconds_per_sample": None if seconds is None else seconds / len(texts), "gen_ppl": None}
    if scorer is not None:
        nats, count = score_texts(scorer[0], scorer[1], texts, batch_size)
        row["gen_ppl"] = math.exp(min(nats / count, 50))
    return row


def reference_blocks(val_blocks: torch.Tensor, n: int) -> torch.Tensor:
    """n held-out blocks spread evenly over the held-out set (it is the tail of a few articles)."""
    idx = torch.linspace(0, len(val_blocks) - 1, min(n, len(val_blocks))).round().long()
    return val_blocks[idx]


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_baseline(path: str, tokenizer, checkpoint: str, window: int):
    """(model, its ar_config.json as a dict) from baseline_ar.py's --output-dir (or its final-model)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modeling import load_pretrained

    folder = os.path.join(path, "final-model") if os.path.isdir(os.path.join(path, "final-model")) else path
    if not os.path.isfile(os.path.join(folder, "ar_config.json")):
        raise UsageError(f"no AR baseline at {path}; train one with: python baseline_ar.py --checkpoint "
                         f"{checkpoint} --output-dir {path}   (or pass --baseline none)")
    if load_pretrained(AutoTokenizer, folder).get_vocab() != tokenizer.get_vocab():
        raise UsageError(f"the AR baseline at {path} uses a different tokenizer than {checkpoint}; "
                         f"retrain it with: python baseline_ar.py --checkpoint {checkpoint} --output-dir {path}")
    model = load_pretrained(AutoModelForCausalLM, folder)
    if model.config.n_positions < window:
        raise UsageError(f"the AR baseline at {path} has {model.config.n_positions} positions; the window is {window}")
    with open(os.path.join(folder, "ar_config.json")) as f:
        return model.eval(), json.load(f)


def load_scorer(name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modeling import load_pretrained

    try:
        return load_pretrained(AutoModelForCausalLM, name).eval(), load_pretrained(AutoTokenizer, name)
    except UsageError as e:  # load_pretrained's hint is about training; say what helps here
        cause = str(e).split("; without network")[0]
        raise UsageError(f"--scorer: {cause}; omit --scorer to judge samples with the AR baseline")



# ---------------------------------------------------------------------------------------------
# Output: table and JSON
# ---------------------------------------------------------------------------------------------

COLUMNS = (("gen_ppl", "gen ppl", "{:.1f}"), ("unigram_entropy", "entropy (bits)", "{:.2f}"),
           ("distinct_1", "distinct-1", "{:.3f}"), ("distinct_2", "distinct-2", "{:.3f}"),
           ("repeated_4gram", "rep-4gram", "{:.3f}"), ("seconds_per_sample", "s/sample", "{:.4f}"))


def table_rows(result: dict) -> list[list[str]]:
    rows = []
    for r in result["samples"]:
        cells = [r["name"], r["model"]]
        cells += ["-" if r[key] is None else fmt.format(r[key]) for key, _, fmt in COLUMNS]
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


def write_json(result: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)  # never a half-written file


# ---------------------------------------------------------------------------------------------
# 3. The markdown report (GENERATION_VALIDATION.md)
# ---------------------------------------------------------------------------------------------

REPORT_PROMPT = "The history of the"
REPORT_TEMPLATE = "Aristotle was a Greek [MASK:4] and [MASK:6] in the [MASK:3] century."
# (section, caption, GenConfig overrides of generate.py's defaults: linear, top-k 50, T 0.8,
# low-confidence remasking, 10 steps); two samples each
REPORT_SAMPLES = [
    ("Unprompted", "generate.py defaults: linear schedule, top-k, 10 steps", {}),
    ("Unprompted", "cosine schedule, top-k, 32 steps", dict(schedule="cosine", steps=32)),
    ("Unprompted", "nucleus (p 0.9), linear, 32 steps", dict(sampling="nucleus", steps=32)),
    ("Unprompted", "greedy, linear, 10 steps", dict(sampling="greedy")),
    ("Unprompted", "threshold decoding: commit every prediction with confidence >= 0.9", dict(decode="threshold")),
    ("Unprompted", "the seed's rule: random remasking, linear, top-k, 10 steps", dict(remask="random")),
    ("Prompted", "linear, top-k, 10 steps", dict(prompt=REPORT_PROMPT)),
    ("Prompted", "cosine, top-k, 32 steps", dict(prompt=REPORT_PROMPT, schedule="cosine", steps=32)),
    ("Infill", "linear, top-k, 10 steps", dict(template=REPORT_TEMPLATE)),
    ("Infill", "greedy, 10 steps", dict(template=REPORT_TEMPLATE, sampling="greedy")),
]
ENTROPY_SLACK = 1.0  # bits below held-out text's unigram entropy that count as degenerate

KNOWN_LIMITS = """\
- The quick-test models are tiny (under a million parameters, about two minutes of CPU training on
  106 Wikipedia articles), so absolute numbers say little about the method at scale; the comparison
  with the AR baseline (same tokenizer, data, packing, token budget and parameter count) is the
  informative part.
- The diffusion number is an upper bound (ELBO) estimated by Monte Carlo, with the standard error
  shown; the AR number is an exact likelihood. A bound above the AR perplexity does not prove the
  diffusion model is worse by that much. Masking 1 of n tokens is a rate below the lowest training
  rate (0.1), so the low-k terms of the bound are slightly out of distribution.
- Special tokens are not scored for either model: the diffusion model sees where document-separating
  `</s>` tokens are, the AR model neither predicts them nor is charged for them.
- Generative perplexity is judged by a scorer trained on the same small corpus (unless `--scorer`
  names a large hub model), and it rewards dull text: a low value means little without unigram
  entropy close to held-out text's. Greedy decoding from an empty canvas gives the same sample every
  time, which distinct-n exposes.
- Seconds per sample are for a batch of samples generated together on a shared 2-core CPU: compare
  rows of one run, not runs on different machines.
"""


def train_command(tcfg) -> str:
    """The train.py command that reproduces a run: its preset plus every field that differs."""
    from config import TrainConfig, resolve_train_config

    preset = {"quick_test": True} if tcfg.quick_test else {"model": tcfg.model}
    base = resolve_train_config(argparse.Namespace(**preset))
    parts = ["python", "train.py"] + (["--quick-test"] if tcfg.quick_test else ["--model", tcfg.model])
    for f in dataclasses.fields(TrainConfig):
        value = getattr(tcfg, f.name)
        if f.name in ("quick_test", "resume", "model") or value == getattr(base, f.name):
            continue
        flag = f.name.replace("_", "-")
        parts += [f"--{flag}" if value else f"--no-{flag}"] if isinstance(value, bool) else [f"--{flag}", str(value)]
    return shlex.join(parts)


def baseline_command(ar_cfg: dict) -> str:
    """baseline_ar.py with its resolved flags (auto shape written out), which reproduces the run."""
    return shlex.join(["python", "baseline_ar.py"] + [x for k, v in ar_cfg.items()
                                                       for x in (f"--{k.replace('_', '-')}", str(v))])


def mark_filled(ids: list[int], fixed: list[bool], tokenizer) -> str:
    """Infill output with each filled span in ⟦ ⟧, the template text as written."""
    out, i = [], 0
    while i < len(ids):
        j = i
        while j < len(ids) and fixed[j] == fixed[i]:
            j += 1
        text = tokenizer.decode(ids[i:j])
        out.append(text if fixed[i] else text[:len(text) - len(text.lstrip())] + "⟦" + text.lstrip() + "⟧")
        i = j
    return "".join(out)


def report_samples(model, tokenizer, tcfg, ar, seed: int) -> list[tuple[str, str, list[str]]]:
    """(section, caption, texts) for the report, from generate.generate and ar_generate."""
    from generate import parse_template

    out = []
    for section, caption, over in REPORT_SAMPLES:
        gc = GenConfig(**{**over, "num_samples": 2, "seed": seed, "out": ""})
        ids, _, plen = generate(model, tokenizer, gc, tcfg.max_len, torch.Generator().manual_seed(seed))
        if gc.template:
            fixed = parse_template(gc.template, tokenizer)[1]
            texts = [mark_filled(row, fixed, tokenizer) for row in ids.tolist()]
        else:
            texts = [tokenizer.decode(row) for row in ids.tolist()]
        out.append((section, caption, texts))
    if ar is not None:
        prompt = tokenizer(REPORT_PROMPT, add_special_tokens=False)["input_ids"]
        for caption, start in (("unprompted", []), ("prompted", prompt)):
            gc = GenConfig(**AR_SETTINGS["ar-topk"])
            first = torch.tensor([[tokenizer.bos_token_id] + start] * 2)  # [2, T0]
            ids = ar_generate(ar, first, tcfg.max_len - 2 - len(start), gc, banned_ids(tokenizer),
                              torch.Generator().manual_seed(seed))
            texts = [tokenizer.decode(start + row) for row in ids.tolist()]
            out.append(("AR baseline", f"{caption}, top-k (k 50, T 0.8), left to right", texts))
    return out


DEFAULT_SETTING = "linear-topk-10"  # generate.py's defaults: the same sampler as ar-topk (top-k 50, T 0.8)


def assessment(result: dict) -> list[str]:
    """Claims computed from the numbers: every comparison below is made here, not written by hand."""
    h, rows = result["held_out"], {r["name"]: r for r in result["samples"]}
    ref, art, base = rows["held-out text"], rows.get("ar-topk"), rows.get(DEFAULT_SETTING)
    diff = [r for r in result["samples"] if r["model"] == "diffusion"]
    d, lines, lik, gen = h["diffusion"], [], None, None
    if "ar" in h:
        a = h["ar"]
        lik = d["perplexity"] / a["perplexity"]
        lines.append(f"**Likelihood.** On the same {h['scored_tokens']:,} held-out tokens the diffusion model's ELBO "
                     f"bound is perplexity <= {d['perplexity']:.1f} ({d['bits_per_byte']:.3f} bits/byte) and the AR "
                     f"baseline's perplexity is {a['perplexity']:.1f} ({a['bits_per_byte']:.3f} bits/byte): the bound "
                     f"is {lik:.2f}x the AR perplexity, {d['nats_per_token'] - a['nats_per_token']:+.3f} nats/token "
                     f"(Monte Carlo standard error {d['nats_stderr']:.3f}).")
    if ref["gen_ppl"] is not None:
        text = (f"**Generative perplexity** (scorer: {result['scorer']}; held-out text scores {ref['gen_ppl']:.1f}, "
                f"unigram entropy {ref['unigram_entropy']:.2f} bits).")
        if base and art:
            gen = base["gen_ppl"] / art["gen_ppl"]
            text += (f" With the same sampler (top-k 50, temperature 0.8) the diffusion model at generate.py's "
                     f"defaults ({DEFAULT_SETTING}) scores {base['gen_ppl']:.1f} ({base['unigram_entropy']:.2f} bits) "
                     f"and the AR "
                     f"baseline {art['gen_ppl']:.1f} ({art['unigram_entropy']:.2f} bits): {gen:.2f}x the AR samples' "
                     f"generative perplexity.")
            if result["scorer"] == "AR baseline":
                text += " The scorer wrote the AR samples itself, which favours them."
        best = min(diff, key=lambda r: r["gen_ppl"])
        text += (f" The lowest diffusion value is {best['gen_ppl']:.1f} ({best['name']}, "
                 f"{best['unigram_entropy']:.2f} bits).")
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
        lines.append(text)
    rep = sorted(diff, key=lambda r: r["repeated_4gram"])
    text = (f"**Repetition.** The lowest repeated 4-gram rate among diffusion settings is "
            f"{rep[0]['repeated_4gram']:.3f} ({rep[0]['name']}), the highest {rep[-1]['repeated_4gram']:.3f} "
            f"({rep[-1]['name']}); held-out text has {ref['repeated_4gram']:.3f}")
    lines.append(text + (f" and the AR baseline's top-k samples {art['repeated_4gram']:.3f}." if art else "."))
    greedy = [r for r in diff if r["settings"].get("sampling") == "greedy"]
    sampled = [r for r in diff if r["settings"].get("sampling") == "topk"]
    if greedy and sampled:
        mean = lambda rs, key: sum(r[key] for r in rs) / len(rs)  # noqa: E731
        lines.append(f"**Greedy vs top-k.** Greedy settings average distinct-2 {mean(greedy, 'distinct_2'):.3f} and "
                     f"repeated 4-grams {mean(greedy, 'repeated_4gram'):.3f}; top-k settings "
                     f"{mean(sampled, 'distinct_2'):.3f} and {mean(sampled, 'repeated_4gram'):.3f}.")
    pairs = [(n, n.replace("-10", "-32")) for n in rows if n.endswith("-10") and n.replace("-10", "-32") in rows]
    if pairs and ref["gen_ppl"] is not None:
        lower = [a for a, b in pairs if rows[b]["gen_ppl"] < rows[a]["gen_ppl"]]
        poorer = [a for a, b in pairs if rows[b]["unigram_entropy"] < rows[a]["unigram_entropy"]]
        lines.append(f"**Steps.** Going from 10 to 32 steps lowered generative perplexity in {len(lower)} of "
                     f"{len(pairs)} schedule/sampler pairs and lowered unigram entropy in {len(poorer)} ("
                     + "; ".join(f"{a.rsplit('-', 1)[0]}: {rows[a]['gen_ppl']:.1f} -> {rows[b]['gen_ppl']:.1f}, "
                                 f"{rows[a]['unigram_entropy']:.2f} -> {rows[b]['unigram_entropy']:.2f} bits"
                                 for a, b in pairs) + ").")
    if "random-remask-topk-10" in rows and base:
        r = rows["random-remask-topk-10"]
        gp = f"generative perplexity {r['gen_ppl']:.1f} vs {base['gen_ppl']:.1f}, " if r["gen_ppl"] is not None else ""
        lines.append(f"**Remasking.** The seed's random remasking against low-confidence remasking (linear, top-k, "
                     f"10 steps): {gp}unigram entropy {r['unigram_entropy']:.2f} vs {base['unigram_entropy']:.2f} "
                     f"bits, "
                     f"repeated 4-grams {r['repeated_4gram']:.3f} vs {base['repeated_4gram']:.3f}.")
    if "threshold-0.9-topk" in rows and base:
        t, n = rows["threshold-0.9-topk"], result["sample_length"]
        why = (": about one pass per token, so at this model size it saved no forward passes"
               if t["forward_passes"] >= 0.9 * n else "")
        lines.append(f"**Threshold decoding** took {t['forward_passes']} forward passes (for the batch of "
                     f"{t['samples']}) to write {n} tokens per sample{why} "
                     f"({t['seconds_per_sample']:.4f} s/sample, vs {base['seconds_per_sample']:.4f} for 10 "
                     f"scheduled steps).")
    if art:
        fast = {r["name"]: r["seconds_per_sample"] for r in diff if r["name"] in (DEFAULT_SETTING, "linear-topk-32")}
        lines.append(f"**Speed.** Seconds per sample: AR {art['seconds_per_sample']:.4f} ({result['sample_length']} "
                     f"forward passes with a KV cache)"
                     + "".join(f", diffusion {k} {v:.4f}" for k, v in fast.items()) + ".")
    if lik is not None:
        side = lambda x: "behind" if x > 1.1 else "ahead of" if x < 1 / 1.1 else "on par with"  # noqa: E731
        verdict = (f"**Verdict.** Against an AR model with the same tokenizer, data, parameter count and token budget, "
                   f"the diffusion model is {side(lik)} it in likelihood ({lik:.2f}x perplexity, bound vs exact)")
        if gen is not None:
            verdict += f" and {side(gen)} it in generative perplexity with the same sampler ({gen:.2f}x)"
            entropy_gap = art["unigram_entropy"] - base["unigram_entropy"]
            if entropy_gap > ENTROPY_SLACK:
                verdict += f", while its samples have {entropy_gap:.1f} bits less unigram entropy"
        lines.insert(0, verdict + ".")
    return lines


def md_table(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
                     ["| " + " | ".join(r) + " |" for r in rows])


def write_report(path: str, result: dict, model, tokenizer, tcfg, ar, seed: int = 0) -> None:
    """GENERATION_VALIDATION.md from one evaluation: commands, config, numbers, samples, assessment."""
    import platform

    import transformers

    h = result["held_out"]
    commands = [train_command(tcfg) + "   # the diffusion checkpoint (its saved config, as flags)"]
    if result["baseline_config"]:
        commands.append(baseline_command(result["baseline_config"]) + "   # the AR baseline")
    json_path = os.path.join(result["config"]["out_dir"], "evaluation.json")
    commands.append(result["command"] + f"   # this report, {json_path} and the table")
    p = result["parameters"]
    lik = [["diffusion (ELBO bound)", f"{h['diffusion']['nats_per_token']:.4f} ± {h['diffusion']['nats_stderr']:.4f}",
            f"<= {h['diffusion']['perplexity']:.1f}", f"{h['diffusion']['bits_per_byte']:.3f}"]]
    if "ar" in h:
        lik.append(["AR baseline (exact)", f"{h['ar']['nats_per_token']:.4f}", f"{h['ar']['perplexity']:.1f}",
                    f"{h['ar']['bits_per_byte']:.3f}"])
    parts = [
        "# Generation validation",
        "",
        "How good is the generator? Written by `evaluate.py --report` from one run; every number and sample "
        f"below comes from that run, and `{json_path}` holds them all. Regenerate it whenever "
        "defaults change (commands below, in order).",
        "",
        "## Commands and config",
        "",
        "```bash\n" + "\n".join(commands) + "\n```",
        "",
        f"- Diffusion model: `{tcfg.model}` ({tcfg.scratch_arch if tcfg.model == 'scratch' else 'pretrained'}), "
        f"{p['diffusion']:,} parameters, window {tcfg.max_len}, {tcfg.max_steps} steps x {tcfg.batch_size} x "
        f"{tcfg.grad_accum} x {tcfg.max_len} = {tcfg.max_steps * tcfg.batch_size * tcfg.grad_accum * tcfg.max_len:,} "
        f"training tokens.",
        (f"- AR baseline: GPT-2 shape, {p['ar']:,} parameters ({p['ar'] / p['diffusion'] - 1:+.1%}), same tokenizer, "
         f"packed blocks, held-out split and token budget." if p["ar"] else "- AR baseline: none (`--baseline none`)."),
        f"- Evaluation (numbers and table, before the samples below): {result['seconds']:.0f} s wall on "
        f"{torch.get_num_threads()} CPU threads (a machine shared with other jobs), torch {torch.__version__}, "
        f"transformers {transformers.__version__}, Python {platform.python_version()}.",
        "",
        "<details><summary>Resolved configs (evaluation, diffusion checkpoint, AR baseline)</summary>",
        "",
        "```json\n" + json.dumps({"evaluation": result["config"], "diffusion": result["checkpoint_config"],
                                  "ar_baseline": result["baseline_config"]}, indent=2) + "\n```",
        "",
        "</details>",
        "",
        "## Held-out likelihood, same tokens for both models",
        "",
        f"{h['scored_tokens']:,} tokens ({h['scored_bytes']:,} UTF-8 bytes) of {h['blocks']} held-out blocks: every "
        f"content token after a prefix of {h['prefix']}; `<s>` and every `</s>` (block end, document separators) "
        f"are conditioned on, not scored. The diffusion model's bound uses {h['draws']} Monte Carlo draws per "
        f"block of k ~ U{{1..n}} masked tokens (stratified), weighted n/k; the AR model scores each of the same "
        f"tokens from its left context.",
        "",
        md_table(["model", "nats/token", "perplexity", "bits/byte"], lik),
        "",
    ]
    if "ar_all_tokens_after_bos" in h:
        usual = h["ar_all_tokens_after_bos"]["perplexity"]
        parts += [f"The AR model's usual number, over every token after `<s>` including the `</s>` that always ends a "
                  f"block, is perplexity {usual:.1f} ({'lower' if usual < h['ar']['perplexity'] else 'higher'}); it "
                  f"is not comparable with the bound, which never scores special tokens.", ""]
    parts += [
        "## Sample quality",
        "",
        f"{result['config']['num_samples']} unprompted samples of {result['sample_length']} tokens per setting, "
        f"all settings from seed {result['config']['seed']}; generative perplexity under "
        f"{result['scorer'] or '(no scorer)'}; n-gram statistics on token ids; held-out text of the same length "
        f"is the reference row.",
        "",
        md_table(["setting", "model"] + [t for _, t, _ in COLUMNS], table_rows(result)),
        "",
        "## Samples",
        "",
        f"Prompt: `{REPORT_PROMPT}`. Infill template: `{REPORT_TEMPLATE}` (filled spans in ⟦ ⟧). "
        f"Two samples per setting, seed {seed}.",
    ]
    section = None
    for sec, caption, texts in report_samples(model, tokenizer, tcfg, ar, seed):
        if sec != section:
            parts += ["", f"### {sec}"]
            section = sec
        same = " (both samples identical)" if len(set(texts)) == 1 and len(texts) > 1 else ""
        parts += ["", f"*{caption}*{same}", "", "```text\n" + "\n".join(t.replace("\n", " ") for t in texts) + "\n```"]
    parts += ["", "## Assessment", "", "Computed from the numbers above by `evaluate.assessment`.", ""]
    parts += [f"- {line}" for line in assessment(result)]
    parts += ["", "## Known limits", "", KNOWN_LIMITS]
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(parts))
    os.replace(path + ".tmp", path)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def evaluate(ec: EvalConfig, names: list[str], command: str) -> tuple[dict, tuple]:
    """(result, (model, tokenizer, train config, AR model)): the numbers, and what the report reuses."""
    from generate import load_checkpoint

    t_start = time.time()
    model, tokenizer, tcfg = load_checkpoint(ec.checkpoint, device="cuda" if torch.cuda.is_available() else "cpu")
    prefix = resolve_prefix(ec, tcfg)
    ar, ar_cfg = None, None
    if ec.baseline != "none":
        ar, ar_cfg = load_baseline(ec.baseline, tokenizer, ec.checkpoint, tcfg.max_len)
    if ar is not None:
        ar.to(next(model.parameters()).device)
    scorer = load_scorer(ec.scorer) if ec.scorer else (ar, tokenizer) if ar is not None else None
    if scorer is not None:
        scorer[0].to(next(model.parameters()).device)
    from data import build_datasets

    _, val_ds = build_datasets(tcfg, tokenizer)
    val = val_ds[:]["input_ids"]  # [M, L]
    blocks = val[:ec.elbo_blocks] if ec.elbo_blocks else val
    result = {"command": command, "config": dataclasses.asdict(ec) | {"prefix": prefix, "settings": ",".join(names)},
              "checkpoint_config": dataclasses.asdict(tcfg), "baseline_config": ar_cfg,
              "scorer": ec.scorer or ("AR baseline" if ar is not None else None),
              "parameters": {"diffusion": n_params(model), "ar": n_params(ar) if ar is not None else None}}

    # 1. held-out likelihood on the same tokens
    t0 = time.time()
    g = torch.Generator().manual_seed(ec.seed)
    result["held_out"] = held_out_likelihood(model, ar, blocks, tokenizer, prefix, ec.elbo_draws, ec.batch_size, g)
    result["held_out"]["seconds"] = time.time() - t0

    # 2. samples: held-out reference, diffusion settings, AR settings
    length = tcfg.max_len - 2
    special = set(special_token_ids(tokenizer)) | {tokenizer.mask_token_id}
    ref = [[t for t in row.tolist() if t not in special] for row in reference_blocks(val, ec.num_samples)]
    ref_texts = [tokenizer.decode(r) for r in ref]
    rows = [{"name": "held-out text", "model": "reference", "settings": {}, "texts": ref_texts[:4],
             **quality(ref, ref_texts, scorer, None, ec.batch_size)}]
    for name in names:
        gc = GenConfig(**{**SETTINGS[name], "num_samples": ec.num_samples, "seed": ec.seed, "out": ""})
        t0 = time.time()
        ids, history, _ = generate(model, tokenizer, gc, tcfg.max_len, torch.Generator().manual_seed(ec.seed))
        seconds = time.time() - t0
        tokens = ids.tolist()
        texts = [tokenizer.decode(t) for t in tokens]
        rows.append({"name": name, "model": "diffusion", "settings": SETTINGS[name], "forward_passes": len(history),
                     "texts": texts[:4], **quality(tokens, texts, scorer, seconds, ec.batch_size)})
    if ar is not None:
        bos = torch.full((ec.num_samples, 1), tokenizer.bos_token_id)
        for name, over in AR_SETTINGS.items():
            gc = GenConfig(**over)
            t0 = time.time()
            ids = ar_generate(ar, bos, length, gc, banned_ids(tokenizer), torch.Generator().manual_seed(ec.seed))
            seconds = time.time() - t0
            tokens = ids.tolist()
            texts = [tokenizer.decode(t) for t in tokens]
            rows.append({"name": name, "model": "AR", "settings": over, "forward_passes": length, "texts": texts[:4],
                         **quality(tokens, texts, scorer, seconds, ec.batch_size)})
    result["samples"] = rows
    result["sample_length"] = length
    result["seconds"] = time.time() - t_start
    return result, (model, tokenizer, tcfg, ar)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(parser, EvalConfig)
    argv = sys.argv[1:] if argv is None else argv
    ec = EvalConfig(**given(parser.parse_args(argv), EvalConfig))
    names = validate_eval(ec)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    command = shlex.join(["python", "evaluate.py", *argv])
    result, loaded = evaluate(ec, names, command)

    print("\n".join(likelihood_lines(result)))
    print(f"\nsamples: {ec.num_samples} per setting, {result['sample_length']} tokens each, unprompted; "
          f"generative perplexity under {result['scorer'] or '(no scorer: pass --baseline or --scorer)'}")
    print(format_table(result))
    path = os.path.join(ec.out_dir, "evaluation.json")
    write_json(result, path)
    save_config(ec, ec.out_dir, "eval_config.json")
    print(f"wrote {path} ({result['seconds']:.0f}s)")
    if ec.report:
        write_report(ec.report, result, *loaded, seed=ec.seed)
        print(f"wrote {ec.report}")
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
