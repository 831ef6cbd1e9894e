"""Numbers that judge samples and compare models, and the one protocol every study scores with.

Text statistics (torch-free), each a function in SAMPLE_METRICS, the registry every table reads:
    distinct_n(samples, n)            unique n-grams / all n-grams, over all samples
    repeated_ngram_rate(samples, n)   share of n-grams that already occurred earlier in the same sample
    unigram_entropy(samples)          entropy (bits) of the pooled token distribution
    top_word_share(texts)             the most frequent word and its share of all words
    text_ends(rows, eos)              where text ends: share of rows holding a </s>, tokens before it
A new statistic is one entry in SAMPLE_METRICS: sample_quality computes it for every row of
evaluate.py, the experiments and report.py's tables.

The evaluation protocol (evaluate.py, the experiments, bench.py):
    reference_row(val, tokenizer, n, scorer)      held-out text of the samples' length, the reference
                                                  (with text_ends of its blocks)
    diffusion_row(model, tokenizer, gc, window, scorer)   one generation setting: samples, numbers,
                                                  its settings (decoding.setting_of) and words (describe);
                                                  with --stop-at-eos each sample cut at its </s>, and text_ends
    ar_row(ar, tokenizer, gc, length, n, scorer)  the AR baseline's own samples with the same sampler
    fastest_alternating(runs, repeats)            wall seconds of several calls timed side by side
    flops(run)                                    floating-point operations of one call
    machine()                                     the facts of the machine the numbers were taken on

Scores that need a model (torch imported inside):
    pseudo_log_likelihood(model, ids, mask_id, where)   mean NLL, one position masked at a time
    causal_token_nll(model, ids)      [B, L] per-token NLL under a causal LM
    score_texts(scorer, tok, texts)   total NLL of strings under any causal LM (generative perplexity)
    sample_quality(tokens, texts, scorer, ...)   the table row of one generation setting
    held_out_likelihood(model, ar, blocks, ...)  the diffusion bound and the AR NLL on the same tokens
    ar_held_out_nll(ar, blocks, protected, ...)  the AR NLL alone (baseline_ar.py's evaluations)
"""

import math
import os
import platform
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from tokens import decode_text


def ngrams(tokens: list, n: int) -> list[tuple]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(samples: list[list], n: int) -> float:
    """Unique n-grams / total n-grams across all samples (0 when there are none)."""
    grams = [g for s in samples for g in ngrams(s, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repeated_ngram_rate(samples: list[list], n: int = 4) -> float:
    """Share of n-grams that repeat an earlier n-gram of the same sample: the 'the the the'
    measure. 0 for text without repetition, near 1 for a loop."""
    repeats = total = 0
    for s in samples:
        seen = set()
        for g in ngrams(s, n):
            repeats += g in seen
            seen.add(g)
            total += 1
    return repeats / total if total else 0.0


def unigram_entropy(samples: list[list]) -> float:
    """Entropy in bits of the pooled unigram distribution of all samples."""
    counts = Counter(t for s in samples for t in s)
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0


def top_word_share(texts: list[str]) -> tuple[str, float]:
    """(the most frequent word, its share of all words) over texts split on white space and
    lower-cased: "the" at 37% is the collapse low-confidence decoding shows."""
    words = [w.lower() for t in texts for w in t.split()]
    if not words:
        return "", 0.0
    word, count = Counter(words).most_common(1)[0]
    return word, count / len(words)


def pseudo_log_likelihood(model, ids, mask_id: int, where=None, batch_size: int = 256) -> float:
    """Mean NLL in nats/token of the tokens at `where` [B, L] (default: every position) when
    each is masked alone and the rest of its row stays visible (Salazar et al., 2020).

    Not a normalised likelihood, and under the model that generated the text it is partly
    self-grading: a sampler that picks the model's favourite tokens scores well here however
    repetitive the text. Read it beside distinct-n and the repeated n-gram rate."""
    import torch
    import torch.nn.functional as F

    from modeling import masked_logits

    ids = ids.cpu()
    where = torch.ones_like(ids, dtype=torch.bool) if where is None else where.cpu()
    rows, cols = where.nonzero(as_tuple=True)  # [N] one masked copy of its row per scored token
    if len(rows) == 0:
        raise ValueError("pseudo_log_likelihood: no position to score")
    device = next(model.parameters()).device
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            r, c = rows[start:start + batch_size], cols[start:start + batch_size]  # [n]
            inputs = ids[r].clone()  # [n, L]
            inputs[torch.arange(len(r)), c] = mask_id
            target = torch.zeros_like(inputs, dtype=torch.bool)  # [n, L]
            target[torch.arange(len(r)), c] = True
            logits = masked_logits(model, inputs.to(device), None, target.to(device))  # [n, V]
            total += F.cross_entropy(logits.float(), ids[r, c].to(device), reduction="sum").item()
    return total / len(rows)


def causal_token_nll(model, ids, attention_mask=None):
    """[B, L] -log p(ids[:, j] | ids[:, <j]) under a causal LM; column 0 (nothing predicts it) is 0."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    am = attention_mask.to(device) if attention_mask is not None else None
    with torch.no_grad():
        logits = model(input_ids=ids.to(device), attention_mask=am).logits.float()  # [B, L, V]
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:].to(device), reduction="none")  # [B, L-1]
    return F.pad(ce, (1, 0)).cpu()  # [B, L]


def score_texts(scorer, scorer_tok, texts: list[str], batch_size: int) -> tuple[float, int]:
    """(total nats, tokens) of texts under a causal LM, each text tokenised by the scorer's own
    tokenizer and scored after its begin-of-text token (so any scorer judges the same strings)."""
    import torch

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


def text_ends(rows: list[list[int]], eos: int) -> dict:
    """Where text ends in rows of generated (or held-out content) tokens: the share of rows that
    hold a </s> (text that ends inside the window), and the tokens before each row's first one."""
    import statistics

    lengths = [row.index(eos) for row in rows if eos in row]
    quartiles = statistics.quantiles(lengths, n=4, method="inclusive") if len(lengths) > 1 else lengths * 3
    return {"rows": len(rows), "ended": len(lengths), "share_ended": len(lengths) / len(rows) if rows else 0.0,
            "median_length": statistics.median(lengths) if lengths else None,
            "quartiles": quartiles, "lengths": lengths}


@dataclass(frozen=True)
class Metric:
    """A statistic of one setting's samples: fn(token lists, texts) -> number, and how tables show it."""
    fn: Callable
    title: str
    fmt: str


SAMPLE_METRICS = {
    "unigram_entropy": Metric(lambda toks, texts: max(0.0, unigram_entropy(toks)), "entropy (bits)", "{:.2f}"),  # not -0.0
    "distinct_1": Metric(lambda toks, texts: distinct_n(toks, 1), "distinct-1", "{:.3f}"),
    "distinct_2": Metric(lambda toks, texts: distinct_n(toks, 2), "distinct-2", "{:.3f}"),
    "repeated_4gram": Metric(lambda toks, texts: repeated_ngram_rate(toks, 4), "rep-4gram", "{:.3f}"),
    "top_word_share": Metric(lambda toks, texts: top_word_share(texts)[1], "top word", "{:.1%}"),
}


def sample_quality(token_lists: list[list[int]], texts: list[str], scorer, seconds: float | None,
                   batch_size: int) -> dict:
    """Every SAMPLE_METRICS statistic, the most frequent word, seconds per sample and, with a
    scorer (model, tokenizer), generative perplexity of one setting's samples."""
    row = {"samples": len(texts), **{name: m.fn(token_lists, texts) for name, m in SAMPLE_METRICS.items()},
           "top_word": top_word_share(texts)[0],
           "seconds_per_sample": None if seconds is None else seconds / len(texts), "gen_ppl": None}
    if scorer is not None:
        nats, count = score_texts(scorer[0], scorer[1], texts, batch_size)
        row["gen_ppl"] = math.exp(min(nats / count, 50)) if count else None  # None: every sample empty
    return row


def reference_blocks(val_blocks, n: int):
    """n held-out blocks spread evenly over the held-out set (it is the tail of a few articles)."""
    import torch

    idx = torch.linspace(0, len(val_blocks) - 1, min(n, len(val_blocks))).round().long()
    return val_blocks[idx]


# the decoding defaults have to write text like text: against held-out text's numbers (the
# experiments that pick defaults, sampler_frontier.py and speed_frontier.py, both judge by it)
QUALITY_FLOOR = {"unigram_entropy": 0.9, "distinct_2": 0.9, "repeated_4gram": 3.0, "top_word_share": 0.12}


def meets_floor(row: dict, ref: dict) -> bool:
    """Entropy and distinct-2 at least 0.9x held-out text's, repeated 4-grams at most 3x, no word above 12%."""
    return (row["unigram_entropy"] >= QUALITY_FLOOR["unigram_entropy"] * ref["unigram_entropy"]
            and row["distinct_2"] >= QUALITY_FLOOR["distinct_2"] * ref["distinct_2"]
            and row["repeated_4gram"] <= QUALITY_FLOOR["repeated_4gram"] * max(ref["repeated_4gram"], 1e-3)
            and row["top_word_share"] <= QUALITY_FLOOR["top_word_share"])


def ppl_at(entropy: float, points: list[tuple[float, float]]) -> float | None:
    """A rule's generative perplexity at `entropy`, from its (entropy, gen ppl) points: log-linear
    between the two nearest points that bracket it; None outside the range it covered."""
    pts = sorted(points)
    for (e0, p0), (e1, p1) in zip(pts, pts[1:]):
        if e0 <= entropy <= e1 and e1 > e0:
            w = (entropy - e0) / (e1 - e0)
            return math.exp((1 - w) * math.log(p0) + w * math.log(p1))
    return None


# ---------------------------------------------------------------------------------------------
# The evaluation protocol: one row per setting, the same numbers everywhere
# ---------------------------------------------------------------------------------------------


def shown(tokenizer, token_lists: list[list[int]], n: int = 4) -> list[str]:
    """The first n samples as a row shows them (tokens.decode_text: no U+FFFD for a character split
    over tokens). The numbers are computed on tokenizer.decode's text, as every evaluation has been:
    a byte the model never completed reaches the scorer as U+FFFD, and costs what that costs."""
    return [decode_text(tokenizer, t) for t in token_lists[:n]]


def reference_row(val_blocks, tokenizer, n: int, scorer, batch_size: int = 64) -> dict:
    """Held-out text as a row: n blocks spread over the held-out set, special tokens dropped."""
    from tokens import banned_ids, bos_eos

    special = set(banned_ids(tokenizer))
    blocks = reference_blocks(val_blocks, n)
    ref = [[t for t in row.tolist() if t not in special] for row in blocks]
    texts = [tokenizer.decode(r) for r in ref]
    return {"name": "held-out text", "model": "reference", "settings": {}, "label": "",
            "texts": shown(tokenizer, ref),
            "ends": text_ends(blocks[:, 1:-1].tolist(), bos_eos(tokenizer)[1]),  # inside the frame
            **sample_quality(ref, texts, scorer, None, batch_size)}


def diffusion_row(model, tokenizer, gc, window: int, scorer, batch_size: int = 64, name: str = "",
                  context=None, keep: int = 4) -> dict:
    """gc.num_samples samples of one setting (seed gc.seed), judged on what they wrote (a prompt, or
    each row's context [B, P], is not scored), with the setting's fields and words beside the
    numbers, and the first `keep` texts."""
    import torch

    from decoding import cut_at_eos, describe, generate, setting_of
    from tokens import token_ids

    t0 = time.time()
    ids, history, n_prompt = generate(model, tokenizer, gc, window, torch.Generator().manual_seed(gc.seed),
                                      context=context)
    seconds = time.time() - t0
    tokens = ids[:, n_prompt:].tolist()
    ends = {}
    if gc.stop_at_eos:  # judged on what generate.py prints: each sample up to its </s>
        eos = token_ids(tokenizer)["eos"]
        ends = {"ends": text_ends(tokens, eos)}
        tokens = [row[n_prompt:] for row in cut_at_eos(ids, eos, n_prompt)]
    texts = [tokenizer.decode(t) for t in tokens]
    return {"name": name, "model": "diffusion", "settings": setting_of(gc), "label": describe(gc),
            "forward_passes": len(history), "texts": shown(tokenizer, tokens, keep), **ends,
            **sample_quality(tokens, texts, scorer, seconds, batch_size)}


def ar_row(ar, tokenizer, gc, length: int, scorer, batch_size: int = 64, name: str = "", context=None) -> dict:
    """gc.num_samples samples of `length` tokens from the AR baseline with gc's sampler, unprompted or
    continuing each row's context [B, P] (not scored)."""
    import torch

    from decoding import SAMPLERS, ar_generate, sampler_setting
    from tokens import banned_ids

    bos = torch.full((gc.num_samples, 1), tokenizer.bos_token_id)
    bos = bos if context is None else torch.cat([bos, context], 1)  # [B, 1 + P]
    t0 = time.time()
    ids = ar_generate(ar, bos, length, gc, banned_ids(tokenizer), torch.Generator().manual_seed(gc.seed))
    seconds = time.time() - t0
    tokens = ids.tolist()
    texts = [tokenizer.decode(t) for t in tokens]
    return {"name": name, "model": "AR", "settings": sampler_setting(gc), "label": SAMPLERS[gc.sampling].text(gc),
            "forward_passes": length, "texts": shown(tokenizer, tokens),
            **sample_quality(tokens, texts, scorer, seconds, batch_size)}


def fastest_alternating(runs: dict, repeats: int, sync=lambda: None) -> dict:
    """{name: fastest wall seconds} of each call in runs ({name: fn}), the calls alternating round
    by round after one warm-up each: on a shared machine a slow round slows every side, so the
    ratios are side by side and the fastest round of each is its own cost. sync: waits for a
    device (CUDA) before each clock reading."""
    best = {name: float("inf") for name in runs}
    for fn in runs.values():
        fn()
    for _ in range(repeats):
        for name, fn in runs.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def flops(run) -> int:
    """Floating-point operations one call of run() performs, as torch.utils.flop_counter counts
    them (matrix products and attention: what a compute-bound machine pays for)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def machine() -> dict:
    """Facts of the machine numbers were taken on, recorded so reports can state them."""
    import torch

    cpu = platform.processor() or platform.machine()
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "device": "cuda" if torch.cuda.is_available() else "cpu", "platform": platform.platform(),
            # OpenMP's spin-waiting threads lose most of their time on an oversubscribed machine
            # (OMP_WAIT_POLICY=PASSIVE avoids it), so figures carry these settings with them
            "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")
                    if k in os.environ}}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def versions() -> dict:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}


def likelihood_summary(nats_per_token: float, tokens: int, n_bytes: int) -> dict:
    return {"nats_per_token": nats_per_token, "perplexity": math.exp(min(nats_per_token, 50)),
            "bits_per_byte": nats_per_token * tokens / math.log(2) / n_bytes}


def held_out_likelihood(model, ar, blocks, tokenizer, prefix: int, draws: int, batch_size: int, g,
                        precision: str = "auto") -> dict:
    """The diffusion model's ELBO bound (diffusion.elbo_estimate) and the AR model's exact NLL
    (ar None = skip) on the same scored positions of blocks [M, L] (diffusion.protected_positions:
    every content token after `prefix`, document-ending </s> included; the frame is conditioned on,
    not scored), with how many of them are </s> (scored_eos). Bits per byte of the scored text too."""
    import torch

    from diffusion import elbo_estimate, protected_positions
    from tokens import bos_eos, never_masked_ids

    bound = elbo_estimate(model, blocks, tokenizer, prefix, draws, batch_size, g, precision, progress=True)
    protected = protected_positions(blocks, never_masked_ids(tokenizer),
                                    torch.full((len(blocks),), prefix, dtype=torch.long))  # [M, L]
    n_tok = int((~protected).sum())
    # bytes of the scored text: a scored </s> (a document's end) adds nats but no bytes
    n_bytes = sum(len(tokenizer.decode(row[~p].tolist(), skip_special_tokens=True).encode("utf-8"))
                  for row, p in zip(blocks, protected))
    ends = int((blocks[~protected] == bos_eos(tokenizer)[1]).sum())  # document ends (and padding) among them
    out = {"blocks": len(blocks), "prefix": prefix, "draws": draws, "scored_tokens": n_tok, "scored_bytes": n_bytes,
           "scored_eos": ends, "diffusion": likelihood_summary(bound["nats_per_token"], n_tok, n_bytes)
           | {"nats_stderr": bound["nats_stderr"]}}
    if ar is not None:
        ar_nll = ar_held_out_nll(ar, blocks, protected, batch_size)
        out["ar"] = likelihood_summary(ar_nll["nats_per_token"], n_tok, n_bytes)
        out["ar_all_tokens_after_bos"] = ar_nll["all_tokens_after_bos"]
    return out


def ar_held_out_nll(ar, blocks, protected, batch_size: int) -> dict:
    """A causal LM's NLL on blocks [M, L]: nats per token over the positions not `protected`
    (the tokens the diffusion bound scores), and over every token after <s> (the usual LM number)."""
    scored, n_scored, all_nats, all_count = 0.0, 0, 0.0, 0
    for i in range(0, len(blocks), batch_size):
        nll = causal_token_nll(ar, blocks[i:i + batch_size])  # [b, L]
        keep = ~protected[i:i + batch_size]  # [b, L]
        scored += float(nll[keep].sum())
        n_scored += int(keep.sum())
        all_nats += float(nll[:, 1:].sum())
        all_count += nll[:, 1:].numel()
    return {"nats_per_token": scored / max(n_scored, 1), "scored_tokens": n_scored,
            "all_tokens_after_bos": {"nats_per_token": all_nats / all_count, "tokens": all_count,
                                     "perplexity": math.exp(all_nats / all_count)}}
