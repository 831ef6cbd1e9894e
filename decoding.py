"""The reverse process: fill a masked canvas step by step (and, for comparison, left to right).

Pure pieces in dict registries of Rules (the function, the GenConfig fields it reads, its words),
each tested on its own:
    SAMPLERS[name]   (logits [N, V], g, its fields)  -> token ids [N]       --sampling
    ORDERS[name]     (probs, tokens, g)              -> commit-first scores  --order (+ --order-noise)
    DECODES[name]    how many predictions a pass commits                     --decode
    REMDM[name]      sigma: the share of committed tokens sent back          --remdm
    guided(cond, uncond, w)                          -> classifier-free guidance (label and prompt)
    GUIDES[name]     classifier guidance (guidance.py)                       --guide-mode
How many masks each step removes comes from the noise schedule shared with training
(diffusion.SCHEDULES / mask_counts). A new rule is one entry (plus a GenConfig field if it reads
a new one): the flag's choices, setting_of (what evaluations record) and describe (the words
reports print) follow from the registries.

The loop:
    denoise_steps(model, canvas, ...)   yields one Step per forward pass (canvas, commits,
                                        confidence, re-masked positions)
    generation_steps(model, tok, gc, window, g)   builds the canvas (prompt, blocks, template) and
                                        yields Steps whose `text` is the whole output so far
    generate(...)                       runs it to the end: (ids, history, prompt length)
generate.py's --show-steps and --animate (visualize.py), demo.py, evaluate.py, the experiments and
bench.py all consume this one loop; it prints nothing itself.

    ar_steps(model, start, length, gc, banned, g)      the AR baseline, same samplers, KV cache:
                                        yields one token column per forward pass (a GPT-2 through
                                        fast_gpt2's step, as ModernBERT through fast_modernbert)
    ar_generate(...)                    runs it to the end: [B, length]
"""

import functools
import math
import re
from dataclasses import dataclass, fields
from typing import Callable, Iterator

import torch

from cli import UsageError
from diffusion import mask_counts
from guidance import SCORES, Guide
from limits import check_generation
from modeling import at_rows, index_rows
from tokens import bos_eos, encode_text, label_ids, labels_of, token_ids


@dataclass(frozen=True)
class Rule:
    """A registry entry: the function, the GenConfig fields it reads (a sampler gets them as
    keyword arguments), and the words for a setting that uses it (a format string over those
    fields). setting_of and describe derive what a setting is from these, and cli-level checks
    warn about a flag that no chosen rule reads. blind: an order that scores positions without
    looking at the predictions (random), so the loop picks them first and runs the LM head and the
    sampler at those positions only."""
    fn: Callable | None
    reads: tuple = ()
    label: str = ""
    blind: bool = False

    def text(self, gc) -> str:
        return self.label.format(**{f: getattr(gc, f) for f in self.reads})


# ---------------------------------------------------------------------------------------------
# Samplers: (logits [N, V], generator, the fields they read) -> token ids [N]
# Temperature 0 means greedy (argmax) whatever the sampler. Each draws by inverse CDF with one
# uniform per row from `g`, on g's device (a CUDA generator on CUDA: no copy to the host).
# ---------------------------------------------------------------------------------------------


def uniforms(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g, device=g.device)  # [n]


SMALL_DRAW = 1 << 16  # entries of [N, V] up to which the samplers' plain one-pass forms cost less


def inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Column index [N] of each row of weights [N, K] (>= 0, not normalised) at cumulative share u [N]:
    the first column whose running sum exceeds u * the row's total (a zero weight is never chosen).
    Two levels, so no running sum over the whole row (a sequential scan, far slower than a sum):
    sums of blocks of ~sqrt(K) columns, the block where the running block sum first exceeds the
    target, then the running sum inside that block alone."""
    N, K = weights.shape
    if N * K <= SMALL_DRAW:  # small: one scan costs less than the extra steps
        cdf = weights.cumsum(-1)  # [N, K]
        pick = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)  # [N, 1]
        return pick.squeeze(-1).clamp_max(K - 1)
    s = math.isqrt(K)  # columns per block; the last block holds the K % s left over, if any
    sums = weights.unfold(1, s, s).sum(-1)  # [N, K // s], no copy
    if K % s:
        sums = torch.cat([sums, weights[:, K - K % s:].sum(-1, keepdim=True)], 1)  # [N, nb]
    before = sums.cumsum(-1)  # [N, nb] running sum to the end of each block
    target = (u * before[:, -1])[:, None]  # [N, 1]
    b = torch.searchsorted(before, target, right=True).clamp_max(sums.shape[1] - 1)  # [N, 1] the block
    cols = b * s + torch.arange(s, device=weights.device)  # [N, s]
    inside = weights.gather(1, cols.clamp_max(K - 1)) * (cols < K)  # [N, s], 0 past the end
    start = torch.where(b > 0, before.gather(1, (b - 1).clamp_min(0)), 0.0)  # [N, 1] <= target: the weight before b
    j = torch.searchsorted(start + inside.cumsum(-1), target, right=True)  # [N, 1]
    last = torch.where(inside > 0, torch.arange(s, device=weights.device), 0).amax(-1, keepdim=True)  # [N, 1]
    return (b * s + torch.minimum(j, last)).squeeze(-1)  # if rounding leaves the block short: its last token


def greedy(logits, g):
    return logits.argmax(-1)  # [N]


def topk(logits, g, temperature, k):
    """Among the k most probable tokens, softmax at the temperature: one top-k, no vocabulary sort."""
    if temperature == 0:
        return logits.argmax(-1)
    values, index = logits.topk(min(k, logits.shape[-1]), -1)  # [N, k], most probable first
    pick = inverse_cdf(torch.softmax(values.float() / temperature, -1), uniforms(len(values), g))  # [N]
    return index.gather(-1, pick[:, None]).squeeze(-1)  # [N]


NUCLEUS_ROUNDING = 1e-4  # |computed mass above - p| below this: decided by the plain masked sum


def in_nucleus(probs, tokens, p) -> torch.Tensor:
    """[N] bool: whether each row's token lies in its nucleus, the smallest set of most probable
    tokens with mass >= p (with every token tied with its last member): the mass of the tokens
    strictly more probable than it is below p. One pass over [N, V], no sort.

    On more than 65,536 entries the mass is sum(relu(probs - p_token)) + p_token * (how many are
    above): a broadcast subtraction, relu, sign and sums, which run several times faster here than
    a comparison with a per-row threshold and a select (bool tensors are slow on CPU). It equals
    the masked sum, sum(probs where probs > p_token), up to float32 rounding (~1e-7 here); the rows
    whose mass lies within NUCLEUS_ROUNDING of p, where rounding could decide, take the masked sum
    itself, so the decisions are the masked sum's exactly."""
    pt = probs.gather(-1, tokens[:, None])  # [N, 1]
    if probs.numel() <= SMALL_DRAW:  # small: the masked sum itself costs less than the extra steps
        above = torch.where(probs > pt, probs, 0.0).sum(-1)
        return (above < p) | (above == 0)
    gap = (probs - pt).relu_()  # [N, V]: p_j - p_t where p_j > p_t (a - b > 0 exactly when a > b), else 0
    above = gap.sum(-1)  # [N]
    above += pt.squeeze(-1) * gap.sign_().sum(-1)  # + p_t per token above: the mass strictly above the token
    close = ((above - p).abs() < NUCLEUS_ROUNDING).nonzero().squeeze(-1)  # [n], usually empty
    if len(close):
        above[close] = torch.where(probs[close] > pt[close], probs[close], 0.0).sum(-1)
    return (above < p) | (above == 0)  # the most probable token always (p below float32's resolution)


def nucleus_mask_sorted(probs, p) -> torch.Tensor:
    """[N, V] bool: the nucleus by its definition, through a full sort (the reference
    nucleus_sorted uses; the sampler itself never sorts)."""
    sp, order = probs.sort(-1, descending=True)  # [N, V]
    before = sp.cumsum(-1) - sp  # mass ranked above each token
    first_of_tie = torch.ones_like(sp, dtype=torch.bool)
    first_of_tie[:, 1:] = sp[:, 1:] != sp[:, :-1]
    above = torch.where(first_of_tie, before, float("-inf")).cummax(-1).values  # mass strictly above its value
    keep = (above < p) | (above <= 0)  # the most probable token always (p below float32's resolution)
    return torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, keep)


REJECTION_ROUNDS = 16  # then the rows still drawing take one exact draw from their members


def draw_until(probs, g, member, members) -> torch.Tensor:
    """Tokens [N] drawn from probs [N, V] conditioned on member(probs of some rows, their tokens) ->
    bool: one uniform per row, inverse CDF over the vocabulary; the rows whose token is not a member
    draw again (rejection: exactly the distribution restricted to the members, renormalised). A row
    still drawing after REJECTION_ROUNDS (its members hold little mass: a tiny p on a flat
    distribution) draws once from probs restricted to members(probs of those rows) [n, V]: the same
    distribution, bounded work."""
    tokens = inverse_cdf(probs, uniforms(len(probs), g))  # [N]
    todo = (~member(probs, tokens)).nonzero().squeeze(-1)  # [n] rows drawing again
    for _ in range(REJECTION_ROUNDS):  # expected rounds: 1 / (mass of the members)
        if not len(todo):
            return tokens
        rows = probs[todo]  # [n, V]
        again = inverse_cdf(rows, uniforms(len(todo), g))
        tokens[todo] = again
        todo = todo[~member(rows, again)]
    if len(todo):
        rows = probs[todo]
        tokens[todo] = inverse_cdf(rows * members(rows), uniforms(len(todo), g))
    return tokens


def nucleus(logits, g, temperature, p):
    """Nucleus (top-p) sampling, exact and sort-free: draw from the whole tempered distribution and
    keep the draw if it lies in the nucleus (in_nucleus), else draw again. A draw is kept with
    probability = the nucleus's mass >= p, so ~1/p rounds; each round is a pass over [N, V], where
    a sort is O(V log V) (at p 0.95 the quick-test model's nucleus holds half the vocabulary, so
    a top-k prefilter would fall back to the sort on ~99% of rows). nucleus_sorted is the same
    sampler with the nucleus from a full sort: the same generator gives the same tokens."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, -1)  # [N, V]
    return draw_until(probs, g, lambda rows, tok: in_nucleus(rows, tok, p), lambda rows: nucleus_mask_sorted(rows, p))


def nucleus_sorted(logits, g, temperature, p):
    """The reference nucleus sampler: the nucleus mask by a full sort (nucleus_mask_sorted), then
    the same draws as nucleus. Slower; kept to show the fast one is the same sampler."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, -1)  # [N, V]
    return draw_until(probs, g, lambda rows, tok: nucleus_mask_sorted(rows, p).gather(-1, tok[:, None]).squeeze(-1),
                      lambda rows: nucleus_mask_sorted(rows, p))  # the nucleus of each row, from its sort


SAMPLERS = {
    "greedy": Rule(greedy, (), "greedy"),
    "topk": Rule(topk, ("temperature", "k"), "top-k {k}, T {temperature}"),
    "nucleus": Rule(nucleus, ("temperature", "p"), "nucleus p {p}, T {temperature}"),
}


def sample(logits, g, gc):
    """Token ids [N] drawn from logits [N, V] by gc's sampler, with the fields it reads."""
    rule = SAMPLERS[gc.sampling]
    return rule.fn(logits, g, **{f: getattr(gc, f) for f in rule.reads})


class Prediction:
    """One forward pass at the N positions still to fill: logits [N, V] (banned tokens at -inf)
    and the sampled tokens [N]. What orders and decodes read is computed once, on first use, at
    temperature 1 and in float32 over [N, V]: log p(token), the top-1 - top-2 margin, the entropy."""

    def __init__(self, logits: torch.Tensor, tokens: torch.Tensor):
        self.logits, self.tokens = logits, tokens

    @functools.cached_property
    def lse(self) -> torch.Tensor:
        return self.logits.logsumexp(-1)  # [N]

    @functools.cached_property
    def logp(self) -> torch.Tensor:
        return self.logits.gather(-1, self.tokens[:, None]).squeeze(-1) - self.lse  # [N] log p(token)

    @functools.cached_property
    def confidence(self) -> torch.Tensor:
        return self.logp.exp()  # [N]

    @functools.cached_property
    def margin(self) -> torch.Tensor:
        top = (self.logits.topk(2, -1).values - self.lse[:, None]).exp()  # [N, 2]
        return top[:, 0] - top[:, 1]

    @functools.cached_property
    def entropy(self) -> torch.Tensor:
        probs = (self.logits - self.lse[:, None]).exp()  # [N, V]
        return -torch.special.xlogy(probs, probs).sum(-1)  # [N] nats


# ---------------------------------------------------------------------------------------------
# Orders: which masked positions to commit this step. Each scores the N positions still to fill,
#   (Prediction of them (None for a blind order), N, generator) -> score [N] float64, higher =
# committed sooner; the n best of each row are committed, the rest stay masked (the seed's word:
# "re-masked").
# ---------------------------------------------------------------------------------------------


def order_random(pred, n, g):
    """The seed's rule: a uniformly random subset (blind: chosen before predicting)."""
    return torch.rand(n, generator=g, dtype=torch.float64, device=g.device)


def order_confidence(pred, n, g):
    """Most probable prediction first (MaskGIT, LLaDA's low-confidence remasking): log p(token)."""
    return pred.logp.double()


def order_margin(pred, n, g):
    """Largest gap between the two most probable tokens first (Dream's topk_margin)."""
    return pred.margin.double().clamp_min(1e-300).log()


def order_entropy(pred, n, g):
    """Most certain distribution first: negative entropy (Dream's entropy order)."""
    return -pred.entropy.double()


# an order that reads order_noise gets annealed Gumbel noise on its scores (the random one needs none)
ORDERS = {
    "random": Rule(order_random, (), "random order", blind=True),
    "low-confidence": Rule(order_confidence, ("order_noise",), "low-confidence order + Gumbel noise {order_noise}"),
    "margin": Rule(order_margin, ("order_noise",), "margin order + Gumbel noise {order_noise}"),
    "entropy": Rule(order_entropy, ("order_noise",), "entropy order + Gumbel noise {order_noise}"),
}


def gumbel(shape, g: torch.Generator) -> torch.Tensor:
    """Standard Gumbel noise in float64, on g's device: only the N order scores get it (float32
    Gumbel lowers diversity, as LLaDA notes)."""
    u = torch.rand(shape, generator=g, dtype=torch.float64, device=g.device).clamp(1e-300, 1 - 1e-16)
    return -torch.log(-torch.log(u))


def order_noise(tau: float, step: int, steps: int) -> float:
    """MaskGIT's choice temperature at step s of T (1-based): tau * (T - s) / T, so tau(T-1)/T at
    the first step and 0 at the last (maskgit's mask_by_random_topk gets tau * (1 - (i+1)/T))."""
    return tau * (steps - step) / steps


def top_n(scores, allowed, n):
    """[B, L] bool: the n highest scores of each row among `allowed` positions (n an int or [B])."""
    scores = scores.masked_fill(~allowed, float("-inf"))  # [B, L]
    rank = scores.argsort(-1, descending=True).argsort(-1)  # [B, L] 0 = best
    return (rank < (n if isinstance(n, int) else n[:, None])) & allowed


def commit_threshold(conf, masked, threshold):
    """Confidence-aware parallel decoding: every masked position whose confidence >= threshold,
    and always each row's most confident one, so every step makes progress."""
    best = top_n(conf, masked, 1)  # [B, L]
    return ((conf >= threshold) & masked) | best


def commit_factor(conf, masked, factor):
    """Fast-dLLM's factor rule (get_transfer_index_dynamic): with the masked confidences sorted,
    c_1 >= c_2 >= ..., commit the n most confident, n the longest run from the top in which each
    c_r >= 1 - factor / (r + 1) (r >= 2; c_1 always goes). Fast-dLLM also commits the last one when
    only it fails; here it waits for the next step."""
    ranked = conf.masked_fill(~masked, float("-inf")).sort(-1, descending=True).values  # [B, L]
    r = torch.arange(1, conf.shape[1] + 1, device=conf.device)  # [L]
    need = (1 - factor / (r + 1)).masked_fill(r == 1, float("-inf"))  # [L]
    n = (ranked >= need).int().cumprod(-1).sum(-1)  # [B] the run of passes from the top
    return top_n(conf, masked, n)


# How many predictions a forward pass commits: (confidence [B, L], order score [B, L], masks still
# to fill [B, L], the schedule's count per row [B], gc) -> [B, L] bool. "schedule" commits the
# count the noise schedule leaves (diffusion.mask_counts), best order scores first; "threshold" and
# "factor" commit by confidence (the count and the order are not used).
DECODES = {
    "schedule": Rule(lambda conf, score, todo, n, gc: top_n(score, todo, n), ("steps", "schedule", "order", "remdm"),
                     "{schedule}, {steps} steps"),
    "threshold": Rule(lambda conf, score, todo, n, gc: commit_threshold(conf, todo, gc.threshold), ("threshold",),
                      "threshold {threshold}"),
    "factor": Rule(lambda conf, score, todo, n, gc: commit_factor(conf, todo, gc.factor), ("factor",),
                   "Fast-dLLM factor {factor}"),
}


# ---------------------------------------------------------------------------------------------
# Re-masking committed tokens (ReMDM, Wang et al. 2025): each committed token goes back to <mask>
# with its own probability sigma_i, by an independent draw (kuleshov-group/remdm's
# _ddpm_caching_update); the step then commits that many more, so the masks left after it are the
# schedule's. (conf at commit [B, L], committed [B, L], sigma_max, eta) -> sigma [B, L] float64.
# ---------------------------------------------------------------------------------------------


def sigma_cap(conf, committed, sigma_max, eta):
    """ReMDM-cap: sigma = min(eta, sigma_max) for every committed token."""
    return committed * min(eta, sigma_max)


def sigma_rescale(conf, committed, sigma_max, eta):
    """ReMDM-rescale: sigma = eta * sigma_max for every committed token."""
    return committed * (eta * sigma_max)


def sigma_conf(conf, committed, sigma_max, eta):
    """ReMDM-conf (the reference): sigma_i = sigma_max * softmax over the row's committed tokens of
    -(probability when committed): low-confidence tokens go back more often, about sigma_max tokens
    per step in all; eta is not used."""
    weights = torch.softmax((-conf.double()).masked_fill(~committed, float("-inf")), -1)  # [B, L]
    return (weights * sigma_max).nan_to_num(0.0)  # a row with nothing committed: 0


def sigma_conf_rescale(conf, committed, sigma_max, eta):
    """This repo's variant (the former "conf"): rescale's expected count, eta * sigma_max * C for C
    committed tokens, shared out in proportion to exp(-probability when committed)."""
    count = committed.sum(-1, keepdim=True) * (eta * sigma_max)  # [B, 1]
    return (sigma_conf(conf, committed, 1.0, eta) * count).clamp(max=1.0)


REMDM = {
    "none": Rule(None, (), ""),
    "cap": Rule(sigma_cap, ("remdm_eta",), "ReMDM cap eta {remdm_eta}"),
    "rescale": Rule(sigma_rescale, ("remdm_eta",), "ReMDM rescale eta {remdm_eta}"),
    "conf": Rule(sigma_conf, (), "ReMDM conf"),
    "conf-rescale": Rule(sigma_conf_rescale, ("remdm_eta",), "ReMDM conf-rescale eta {remdm_eta}"),
}


def sigma_max(left_before: int, left_after: int, n: int) -> float:
    """The largest re-masking probability that keeps the reverse process valid in a step that
    takes the masks left from left_before to left_after (of n): (1 - alpha_s) / alpha_t, alpha the
    fraction unmasked; 0 before anything is committed."""
    alpha_t, alpha_s = 1 - left_before / n, 1 - left_after / n
    return min(1.0, (1 - alpha_s) / alpha_t) if alpha_t > 0 else 0.0


def remask_draw(strategy: str, eta: float, conf_at_commit, committed, smax: float, cap: int, g):
    """[B, L] bool: committed tokens sent back to <mask>, each with its probability sigma_i
    (REMDM[strategy]) by an independent draw; at most `cap` per row (the masks the schedule leaves
    after the step, so the step can still commit them all), the first in a random order."""
    sigma = REMDM[strategy].fn(conf_at_commit, committed, smax, eta)  # [B, L]
    u = torch.rand(committed.shape, generator=g, dtype=torch.float64, device=g.device)  # [B, L]
    back = (u < sigma) & committed
    return top_n(-u, back, cap)


# ---------------------------------------------------------------------------------------------
# Classifier guidance (guidance.py): how each masked position's candidates are scored
# ---------------------------------------------------------------------------------------------

GUIDES = {
    "exact": Rule(SCORES["exact"], ("guide", "guide_label", "guide_scale", "guide_k"),
                  "classifier guidance to {guide_label} x{guide_scale} (exact, top {guide_k})"),
    "taylor": Rule(SCORES["taylor"], ("guide", "guide_label", "guide_scale"),
                   "classifier guidance to {guide_label} x{guide_scale} (first-order)"),
}


# ---------------------------------------------------------------------------------------------
# What a setting is: the fields its chosen rules read, and the setting in words
# ---------------------------------------------------------------------------------------------

SELECTORS = {"sampling": SAMPLERS, "order": ORDERS, "remdm": REMDM, "decode": DECODES,
             "guide_mode": GUIDES}  # field -> its registry
SWITCHED = {"guide_mode": "guide"}  # a selector that only applies when this field is set


def rule_read() -> set:
    """Every field some rule reads (k, p, order_noise, threshold, steps, ...)."""
    return {f for reg in SELECTORS.values() for rule in reg.values() for f in rule.reads}


def setting_of(gc) -> dict:
    """The fields of gc that decide its output: every decoding field (not a config.flag run field)
    that no rule reads, and the fields of the rules gc chooses, followed from selector to selector
    (decode -> order -> order_noise). A field no chosen rule reads (k under nucleus) is left out."""
    owned = rule_read()
    names = [f.name for f in fields(gc) if not f.metadata.get("run")]
    active = {n for n in names if n not in owned and (n not in SWITCHED or getattr(gc, SWITCHED[n]))}
    todo = [n for n in active if n in SELECTORS]
    while todo:
        for f in SELECTORS[todo[0]][getattr(gc, todo.pop(0))].reads:
            if f not in active:
                active.add(f)
                todo += [f] if f in SELECTORS else []
    return {n: getattr(gc, n) for n in names if n in active}


def decided(gc) -> list[str]:
    """The fields gc's chosen rules decide: the selectors (sampling, decode, and order and remdm
    where decode reaches them) and every field the chosen rules read. Not what is generated
    (prompt, template, length, canvas, blocks, guidance, </s>): those describe the task."""
    owned = rule_read()
    return [f for f in setting_of(gc) if f in SELECTORS or f in owned]


def explicit(rule: dict, left_to_right: bool = False):
    """The GenConfig of a named rule (an experiment's row, a report's sample): `rule` must state
    every field its chosen rules decide (decided; the sampler's alone for a left-to-right AR rule),
    so no GenConfig default -- order noise 8 -- runs unseen under a name like "greedy" or "random
    order". Fields of the task and the run (prompt, num_samples, seed, ...) may be left out. A rule
    that leaves one out is a mistake in the code, not in the input: ValueError."""
    from config import GenConfig

    gc = GenConfig(**rule)
    missing = [f for f in (sampler_setting(gc) if left_to_right else decided(gc)) if f not in rule]
    if missing:
        raise ValueError(f"the rule {rule} does not state {', '.join(missing)}: it would run with GenConfig's "
                         f"default{'s' if len(missing) > 1 else ''} ({', '.join(f'{f}={getattr(gc, f)!r}' for f in missing)})")
    return gc


def readers(field: str) -> str:
    """The choices that read a field, as flags: 'k' -> '--sampling topk', 'order_noise' ->
    '--order low-confidence|margin|entropy with --decode schedule' ('' if no rule reads it)."""
    for selector, registry in SELECTORS.items():
        names = [name for name, rule in registry.items() if field in rule.reads]
        if names:
            above = readers(selector)
            return f"--{selector} {'|'.join(names)}" + (f" with {above}" if above else "")
    return ""


def ignored(gcs: list, given: dict) -> list[str]:
    """One line per decoding field set on the command line (`given`: field -> value) that no rule
    chosen by any of `gcs` reads -- `--k 5` under nucleus sampling, `--remdm-eta` without --remdm:
    the run is the same with or without it. Scripts print each as a warning and go on."""
    read = set().union(*(setting_of(gc) for gc in gcs))
    return [f"--{f.replace('_', '-')} {given[f]} has no effect: only {readers(f)} reads it"
            for f in given if f in rule_read() | set(SELECTORS) and f not in read]


def sampler_setting(gc) -> dict:
    """The sampler part of a setting alone: what an AR row shares with a diffusion row."""
    return {"sampling": gc.sampling, **{f: getattr(gc, f) for f in SAMPLERS[gc.sampling].reads}}


def describe(gc) -> str:
    """A setting in words, from the labels of the rules it chooses (recorded with every result, so
    reports never read a setting's name): 'nucleus p 0.95, T 0.9; linear, 10 steps, low-confidence
    order + Gumbel noise 8.0'."""
    s = setting_of(gc)
    words = SAMPLERS[gc.sampling].text(gc)
    if "decode" not in s:
        return words
    how = [DECODES[gc.decode].text(gc)]
    if "order" in s:
        how.append(ORDERS[gc.order].text(gc) if s.get("order_noise", 0) else f"{gc.order} order")
    if "remdm" in s and gc.remdm != "none":
        how.append(REMDM[gc.remdm].text(gc))
    how += [f"label {gc.label}"] * bool(gc.label) + [f"guidance {gc.cfg}"] * bool(gc.cfg)
    how += [GUIDES[gc.guide_mode].text(gc)] * ("guide_mode" in s) + [f"{gc.canvas} canvas"] * (gc.canvas != "full")
    how += [f"blocks of {gc.block_size}"] * bool(gc.block_size) + [f"{gc.cache} cache"] * (gc.cache != "none")
    how += [f"prompted with \"{gc.prompt}\""] * bool(gc.prompt)
    return f"{words}; {', '.join(how)}"


# ---------------------------------------------------------------------------------------------
# The denoising loop
# ---------------------------------------------------------------------------------------------


@dataclass
class Canvas:
    """What one denoising run starts from: tokens [B, L] (<mask> where text will go), which
    positions to fill (active [B, L]; other masks stay masked, like the future in training's
    blocks), which tokens are the user's condition (fixed [B, L]: prompt or template text, what
    guidance masks), where the generated text starts (for --min-length), and the column of a
    label-conditioned model's label token (0: none; guidance's u reads the null label there)."""
    tokens: torch.Tensor
    active: torch.Tensor
    fixed: torch.Tensor
    start: int
    label: int = 0


@dataclass
class Step:
    """One denoising step of one block: the canvas after it, what it committed and how sure."""
    block: int
    step: int
    tokens: torch.Tensor  # [B, L] canvas after this step
    committed: torch.Tensor  # [B, L] bool, positions committed at this step
    confidence: torch.Tensor  # [B, L] probability of the committed token (nan elsewhere)
    masked_left: int  # masks left to fill in row 0 after this step
    remasked: torch.Tensor | None = None  # [B, L] bool, committed tokens sent back to <mask> (ReMDM)
    text: torch.Tensor | None = None  # [B, T] the whole output so far (set by generation_steps)


def guided(cond: torch.Tensor, uncond: torch.Tensor, w: float) -> torch.Tensor:
    """Classifier-free guidance on logits: u + (w + 1)(c - u); w = 0 is the conditional model."""
    return uncond + (w + 1.0) * (cond - uncond)


def device_generator(g: torch.Generator, device) -> torch.Generator:
    """g itself on the CPU; elsewhere a generator on the device seeded from g, so every draw of a
    run happens where the logits are."""
    if torch.device(device).type == "cpu":
        return g
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    return torch.Generator(device=device).manual_seed(seed)


def unconditional(tokens, canvas: Canvas, ids: dict):
    """Classifier-free guidance's u: the canvas with every condition hidden, the prompt or template
    text masked and a label replaced by the null label (one weight on the joint condition)."""
    uncond = tokens.masked_fill(canvas.fixed.to(tokens.device), ids["mask"])  # [B, L]
    if canvas.label:
        uncond[:, canvas.label] = ids["null_label"]
    return uncond


# the passes of one block that reuse cached keys/values (kvcache.encode): gc.cache -> the span of
# the canvas a pass computes, from the block's first and last active positions (a, b) and length L
CACHE_SPANS = {"prefix": lambda a, b, L: (a, L), "dual": lambda a, b, L: (a, b)}


@dataclass
class Pass:
    """How one denoising run calls the model: its block cache (None: every pass computes the whole
    canvas) and the span its cached passes compute, one cache per input (guidance adds one)."""
    caches: dict
    span: tuple | None = None
    refresh: int = 0  # also rebuild the caches every `refresh` passes (0 = once per block)


def hidden_at(model, tokens, rows, plan: Pass, key: str, k: int):
    """Hidden states [N, H] at the positions rows (a [B, c] index or a [B, L] mask, row-major)
    for pass number k of the block: the whole canvas, or only plan.span over cached keys/values."""
    from kvcache import encode

    span = None if k == 0 or plan.span is None else plan.span
    if span is not None and plan.refresh and k % plan.refresh == 0:
        encode(model, tokens, plan.caches[key])  # rebuild the cache from the canvas as it is now
    a, b = span or (0, tokens.shape[1])
    return encode(model, tokens, plan.caches[key], span, rows[:, a:b] if rows.dtype == torch.bool else rows - a)


def forward_rows(model, tokens, rows, plan: Pass | None, key: str, k: int):
    """Logits [N, V] at the positions rows ([B, c] index or [B, L] mask) of tokens [B, L]: the LM
    head on those rows only where modeling.HEADS knows the model, the full output otherwise."""
    from modeling import HEADS, encoder_hidden, head_logits

    if plan is not None:
        return head_logits(model, hidden_at(model, tokens, rows, plan, key, k))
    if type(model).__name__ not in HEADS:
        logits = model(input_ids=tokens).logits  # [B, L, V]
        if rows.dtype == torch.bool:
            return logits[rows]
        return logits.gather(1, rows[..., None].expand(-1, -1, logits.shape[-1])).flatten(0, 1)
    return head_logits(model, encoder_hidden(model, tokens, rows))  # [N, V]


def predict(model, tokens, rows, canvas: Canvas, ids: dict, gc, eos_ok, plan: Pass | None = None, k: int = 0,
            guide=None):
    """Logits [N, V] (float32, on the model's device) at the N positions still to fill (rows: a
    [B, c] index or a [B, L] mask, row-major), with classifier-free guidance when gc.cfg > 0;
    banned tokens at -inf, </s> only where eos_ok [N]; then classifier guidance (guide: a
    guidance.Guide) on what is left."""
    from modeling import autocast

    with autocast(tokens.device):
        logits = forward_rows(model, tokens, rows, plan, "cond", k).float()  # [N, V]
        if gc.cfg > 0:
            uncond = unconditional(tokens, canvas, ids)
            logits = guided(logits, forward_rows(model, uncond, rows, plan, "uncond", k).float(), gc.cfg)
    logits = logits.index_fill(1, ids["ban"], float("-inf"))  # no <mask>, <s>, <pad>; </s> only with --stop-at-eos
    if gc.stop_at_eos:
        logits[:, ids["eos"]] = torch.where(eos_ok, logits[:, ids["eos"]], float("-inf"))
    else:
        logits[:, ids["eos"]] = float("-inf")
    return logits if guide is None else guide(logits, tokens, as_mask(rows, tokens.shape))


def order_scores(pred: Prediction | None, todo, gc, step: int, g, n: int = 0) -> torch.Tensor:
    """[B, L] float64: gc's order scores of the n positions still to fill (pred: their predictions;
    None for a blind order), plus annealed Gumbel noise when the order reads order_noise; -inf
    elsewhere."""
    rule = ORDERS[gc.order]
    score = rule.fn(pred, len(pred.tokens) if pred is not None else n, g)  # [N]
    if "order_noise" in rule.reads and gc.order_noise > 0:
        score = score + order_noise(gc.order_noise, step, gc.steps) * gumbel(len(score), g)
    return torch.full(todo.shape, float("-inf"), dtype=torch.float64, device=todo.device).masked_scatter(todo, score)


def cache_plan(model, canvas: Canvas, gc, refresh: int) -> Pass | None:
    """The block cache of one run (gc.cache), or None; UsageError for a model it does not know."""
    if gc.cache == "none":
        return None
    from kvcache import BlockCache, supports

    if not supports(model):
        raise UsageError(f"--cache {gc.cache} knows ModernBERT, BERT and RoBERTa; this model is "
                         f"{type(model).__name__} (use --cache none)")
    cols = canvas.active.any(0).nonzero().flatten().tolist()
    span = CACHE_SPANS[gc.cache](cols[0], cols[-1] + 1, canvas.tokens.shape[1])
    return Pass({"cond": BlockCache(), "uncond": BlockCache()}, span, refresh)


@dataclass
class Loop:
    """The state of one denoising run: the canvas, the masks still to fill and the positions being
    generated, each committed token's probability, and where </s> may go."""
    tokens: torch.Tensor  # [B, L]
    todo: torch.Tensor  # [B, L] masks this run still fills
    gen: torch.Tensor  # [B, L] the positions being generated (committed or not)
    conf_at_commit: torch.Tensor  # [B, L] probability of each committed token when committed
    eos_ok: torch.Tensor  # [B, L] where </s> may be written


def start_loop(canvas: Canvas, ids: dict, gc, device) -> Loop:
    tokens = canvas.tokens.to(device)
    todo = canvas.active.to(device) & (tokens == ids["mask"])  # [B, L]
    pos = torch.arange(tokens.shape[1], device=device).expand_as(tokens)  # [B, L]
    eos_ok = gc.stop_at_eos & (pos - canvas.start >= gc.min_length)  # [B, L]
    return Loop(tokens, todo, todo.clone(), torch.full(tokens.shape, float("nan"), device=device), eos_ok)


def scheduled_step(gc, counts: list, step: int, n: int, s: Loop, g):
    """(masks each row holds before this step, commits per row (an int, or [B] with ReMDM), ReMDM's
    re-masks [B, L] or None) of step `step` (0-based) of the schedule; None when the schedule keeps
    every mask (no forward pass)."""
    before, after = counts[step], counts[step + 1]
    if before == after:
        return None
    if REMDM[gc.remdm].fn is None:
        return before, before - after, None
    remask = remask_draw(gc.remdm, gc.remdm_eta, s.conf_at_commit, s.gen & ~s.todo, sigma_max(before, after, n),
                         after, g)  # [B, L]
    return before, before - after + remask.sum(-1), remask


def as_mask(rows, shape):
    """rows (a [B, c] index, ascending, or a [B, L] mask) as a [B, L] mask: the same positions in
    the same row-major order."""
    if rows.dtype == torch.bool:
        return rows
    return torch.zeros(shape, dtype=torch.bool, device=rows.device).scatter(1, rows, True)


def predict_and_choose(model, s: Loop, canvas: Canvas, ids: dict, gc, g, c, n_commit, step: int, plan, k: int,
                       guide=None):
    """One forward pass: (commit [B, L], the canvas with every prediction in place [B, L], their
    confidence [B, L]). A blind order (random) picks the positions first, so the LM head and the
    sampler run there alone; otherwise every position still to fill is predicted, then
    DECODES[gc.decode] chooses. c: masks per row for a scheduled step (None: threshold, factor)."""
    blind = c is not None and ORDERS[gc.order].blind
    if blind:
        commit = top_n(order_scores(None, s.todo, gc, step, g, n=s.todo.shape[0] * c), s.todo, n_commit)  # [B, L]
        where = commit
        rows = index_rows(commit, n_commit) if isinstance(n_commit, int) else commit
    else:
        where = s.todo
        rows = index_rows(s.todo, c) if c else s.todo  # [B, c] or [B, L]
    # predict and draw a token at each chosen position: [N, V] -> [N]
    logits = predict(model, s.tokens, rows, canvas, ids, gc, at_rows(s.eos_ok, rows), plan, k, guide)  # [N, V]
    pred = Prediction(logits, sample(logits, g, gc))
    conf = torch.full(s.tokens.shape, float("-inf"), device=s.tokens.device).masked_scatter(where, pred.confidence)
    proposal = s.tokens.masked_scatter(where, pred.tokens)  # [B, L]
    if not blind:
        score = order_scores(pred, s.todo, gc, step, g) if c is not None else None
        commit = DECODES[gc.decode].fn(conf, score, s.todo, n_commit, gc)  # [B, L]
    return commit, proposal, conf


def denoise_steps(model, canvas: Canvas, ids: dict, gc, g: torch.Generator, block: int = 0,
                  refresh: int = 0, guide=None) -> Iterator[Step]:
    """Fill the active <mask>s of a Canvas (every row holds the same number), yielding one Step
    per forward pass; the last Step's tokens are the filled canvas. gc: a GenConfig; ids:
    tokens.token_ids plus "ban" (with_ban); g: a generator on the model's device
    (device_generator). Scheduled steps know their counts in advance, so on CUDA they never wait
    for the device. With gc.cache, refresh > 0 also rebuilds the cache every `refresh` passes (1:
    every pass, which makes the cached passes exact). guide: classifier guidance (guidance.Guide) or None.
    Runs under torch.inference_mode (no autograd bookkeeping on any op: the same numbers, less
    work per op; the Steps' tensors are then inference tensors, read-only outside it), or under
    no_grad when classifier guidance takes gradients."""
    mode = torch.no_grad() if guide is not None else torch.inference_mode()
    yield from mode(denoising_loop)(model, canvas, ids, gc, g, block, refresh, guide)


def denoising_loop(model, canvas: Canvas, ids: dict, gc, g: torch.Generator, block: int = 0,
                   refresh: int = 0, guide=None) -> Iterator[Step]:
    """denoise_steps' loop, run under the grad mode it picks."""
    device = next(model.parameters()).device
    s = start_loop(canvas, ids, gc, device)
    n = int(canvas.active[0].sum())  # from the CPU canvas: no device round trip
    counts, plan, scheduled = mask_counts(gc.schedule, n, gc.steps), cache_plan(model, canvas, gc, refresh), \
        gc.decode == "schedule"
    step, passes = 0, 0
    while step < gc.steps if scheduled else bool(s.todo.any()):
        # 0. how many masks each row holds and how many to commit (ReMDM: which go back first)
        c, n_commit, remask = scheduled_step(gc, counts, step, n, s, g) or (0, 0, None) if scheduled else \
            (None, None, None)
        step += 1
        if c == 0:  # the schedule keeps every mask this step: no forward pass
            continue
        # 1-2. predict, and choose which predictions to keep (the rest stay masked)
        commit, proposal, conf = predict_and_choose(model, s, canvas, ids, gc, g, c, n_commit, step, plan, passes,
                                                   guide)
        # 3. commit; ReMDM's re-masked tokens go back to <mask> (a new prediction next step)
        remask = torch.zeros_like(commit) if remask is None else remask
        s.tokens = torch.where(commit, proposal, s.tokens).masked_fill(remask, ids["mask"])
        s.conf_at_commit = torch.where(commit, conf, s.conf_at_commit).masked_fill(remask, float("nan"))
        s.todo = (s.todo & ~commit) | remask
        passes += 1
        yield Step(block, step, s.tokens.clone(), commit, torch.where(commit, conf, float("nan")),
                   counts[step] if scheduled else int(s.todo[0].sum()), remask)


def denoise(model, canvas: Canvas, ids: dict, gc, g: torch.Generator, block: int = 0, refresh: int = 0):
    """denoise_steps run to the end: (the filled tokens [B, L], the per-step history). ids may
    omit "ban" and g may be a CPU generator: both are made for the model's device here."""
    device = next(model.parameters()).device
    history = list(denoise_steps(model, canvas, with_ban(ids, device), gc, device_generator(g, device), block,
                                 refresh))
    return (history[-1].tokens if history else canvas.tokens.clone()), history


def with_ban(ids: dict, device) -> dict:
    """ids plus "ban": the ids never sampled (ids["banned"]) as an index tensor on the device."""
    return ids if "ban" in ids else {**ids, "ban": torch.tensor(ids["banned"], dtype=torch.long, device=device)}


# ---------------------------------------------------------------------------------------------
# Canvases: prompt continuation, semi-autoregressive blocks, infill templates
# ---------------------------------------------------------------------------------------------

TEMPLATE_SPAN = re.compile(r"\[MASK(?::(\d+))?\]")


def parse_template(template: str, tokenizer, window: int | None = None) -> tuple[list[int], list[bool]]:
    """'The [MASK:3] of France' -> (token ids with <mask> in the spans, fixed flags).
    `[MASK]` alone is one token; fixed text is tokenised exactly as written (spaces included,
    special-token text kept as text: tokens.encode_text). A span longer than `window` is refused
    before it is built."""
    ids, fixed, pos = [], [], 0
    for m in TEMPLATE_SPAN.finditer(template):
        text = template[pos:m.start()]
        if text:
            piece = encode_text(tokenizer, text)
            ids += piece
            fixed += [True] * len(piece)
        n = int(m.group(1)) if m.group(1) else 1
        if n < 1:
            raise UsageError(f"template span {m.group(0)} must ask for at least one token")
        if window is not None and len(ids) + n + 2 > window:
            raise UsageError(f"template span {m.group(0)} does not fit: the window holds {window - 2} tokens")
        ids += [tokenizer.mask_token_id] * n
        fixed += [False] * n
        pos = m.end()
    tail = template[pos:]
    if tail:
        piece = encode_text(tokenizer, tail)
        ids += piece
        fixed += [True] * len(piece)
    if all(fixed):
        raise UsageError("the template has nothing to fill: mark spans with [MASK] or [MASK:n]")
    return ids, fixed


def window_canvas(context: torch.Tensor, n: int, window: int, ids: dict, bos: int, n_fixed: int, fit: bool,
                  lead: torch.Tensor | None = None) -> Canvas:
    """<s> context <mask>... </s> for B rows of context [B, T]: n masks to fill right after the
    context. "full" (the default) always spans the whole window -- the masks beyond the n stay
    masked, as unseen text does in training's full-window blocks; "fit" stops at </s> right after
    the n masks (an input shorter than any training block). The first n_fixed context tokens are
    the user's condition (for guidance). lead [B, 1]: a label-conditioned model's label token,
    right after <s> as in its training blocks."""
    B, T = context.shape
    a = 0 if lead is None else lead.shape[1]
    tail = n if fit else window - 2 - a - T
    head = [torch.full((B, 1), bos)] + ([lead] if a else [])
    tokens = torch.cat(head + [context, torch.full((B, tail), ids["mask"]), torch.full((B, 1), ids["eos"])], 1)  # [B, L]
    pos = torch.arange(tokens.shape[1]).expand(B, -1)  # [B, L]
    active = (pos > a + T) & (pos <= a + T + n)
    fixed = (pos > a) & (pos <= a + n_fixed)
    return Canvas(tokens, active, fixed, start=1 + a + T, label=1 if a else 0)


def label_lead(gc, tokenizer, B: int) -> torch.Tensor | None:
    """[B, 1] the token a label-conditioned model reads after <s>: --label's, or the null label
    without one (the model unconditional); None for a model trained without labels. An unknown
    label, or --label on such a model, is a UsageError naming what there is."""
    names = labels_of(tokenizer)
    if not names:
        if gc.label:
            raise UsageError(f"--label {gc.label}: this model was trained without labels (train.py --labels "
                             f"folders|column makes one that has them); to steer it, train a classifier and use --guide")
        return None
    if gc.label and gc.label not in names:
        raise UsageError(f"unknown --label {gc.label!r}; this model knows: {', '.join(names)}")
    return torch.full((B, 1), label_ids(tokenizer, names)[gc.label or None])


def label_window(tokenizer, window: int) -> int:
    """The window less the label slot a label-conditioned model's canvas spends: room for text."""
    return window - bool(labels_of(tokenizer))


_CLASSIFIERS = {}  # (folder, its weights' mtime, generator vocabulary) -> (classifier, labels): load once


def load_guide(gc, tokenizer, device, label_column: int) -> Guide | None:
    """gc's classifier guidance (guidance.Guide) or None; the classifier loaded once per process.
    An unknown --guide-label lists the classifier's labels."""
    if not gc.guide:
        return None
    import os

    from modeling import check_checkpoint, load_classifier
    from tokens import fingerprint

    check_checkpoint(gc.guide)
    weights = [os.path.getmtime(os.path.join(gc.guide, f)) for f in sorted(os.listdir(gc.guide))
               if f.endswith((".safetensors", ".bin"))]
    key = (os.path.realpath(gc.guide), tuple(weights), fingerprint(tokenizer), str(device))
    if key not in _CLASSIFIERS:
        _CLASSIFIERS.clear()  # one at a time: a study walks labels with one classifier
        _CLASSIFIERS[key] = load_classifier(gc.guide, tokenizer, device)
    classifier, names = _CLASSIFIERS[key]
    if gc.guide_label not in names:
        raise UsageError(f"unknown --guide-label {gc.guide_label!r}; {gc.guide} knows: {', '.join(names)}")
    return Guide(classifier, names.index(gc.guide_label), gc.guide_scale, gc.guide_mode, gc.guide_k, label_column)


def generation_steps(model, tokenizer, gc, window: int, g: torch.Generator, refresh: int = 0,
                     context: torch.Tensor | None = None) -> Iterator[Step]:
    """Every denoising step of a whole generation (gc: a GenConfig), each Step's `text` [B, T]
    holding the output so far: prompt, finished blocks, and the current block (masks included).
    The last Step's `text` is the result (on the model's device). Bad prompt/length/template:
    UsageError before any step. With --stop-at-eos, block writing stops once every row has
    written </s>. refresh: see denoise_steps. context: [B, P] token ids each row continues (its
    own prompt, e.g. a held-out opening) in place of gc.prompt."""
    bos, eos = bos_eos(tokenizer)
    device = next(model.parameters()).device
    ids, g = with_ban(token_ids(tokenizer), device), device_generator(g, device)
    B = gc.num_samples
    lead = label_lead(gc, tokenizer, B)  # [B, 1] or None
    a = 0 if lead is None else 1  # the label slot after <s>
    guide = load_guide(gc, tokenizer, device, label_column=a)
    if gc.template:
        if gc.stop_at_eos:
            raise UsageError("--stop-at-eos does not apply to --template (the template fixes the length)")
        tmpl, fixed = parse_template(gc.template, tokenizer, window - a)
        if len(tmpl) + 2 + a > window:
            raise UsageError(f"template is {len(tmpl)} tokens; the window holds {window - 2 - a}")
        check_generation(gc, window, len(tokenizer), fixed.count(False), fixed.count(False), model_device(model))
        tokens = torch.cat([torch.full((B, 1), bos)] + ([lead] if a else []) +
                           [torch.tensor([tmpl + [eos]] * B)], 1)  # [B, L]
        fixed_t = torch.tensor([False] * (1 + a) + fixed + [False]).expand(B, -1)
        canvas = Canvas(tokens, tokens == ids["mask"], fixed_t, start=1 + a, label=a)
        for s in denoise_steps(model, canvas, ids, gc, g, refresh=refresh, guide=guide):
            s.text = s.tokens[:, 1 + a:-1]
            yield s
        return
    if context is not None and (gc.prompt or gc.template):
        raise UsageError("give each row's context or a --prompt / --template, not both")
    window -= a  # room for text: the label token takes one place
    prompt = prompt_ids(gc, tokenizer, window) if context is None else context[0].tolist()
    if gc.cfg > 0 and not prompt and not gc.label:
        raise UsageError("--cfg needs something to condition on: a --label, a --prompt or a --template")
    length, block = lengths(gc, len(prompt), window)
    check_generation(gc, window, len(tokenizer), length, block, model_device(model))
    text = (torch.tensor([prompt] * B, dtype=torch.long) if context is None else context).reshape(B, len(prompt))
    text = text.to(device)  # [B, T]
    b = 0
    while text.shape[1] - len(prompt) < length:
        n = min(block, length - (text.shape[1] - len(prompt)))
        cut = max(0, text.shape[1] - (window - 2 - n))  # the context that fits beside n masks
        context = text[:, cut:].cpu()  # [B, <= window-2-n] (canvases are built on the CPU, once per block)
        canvas = window_canvas(context, n, window + a, ids, bos, max(0, len(prompt) - cut), gc.canvas == "fit", lead)
        last = None
        for s in denoise_steps(model, canvas, ids, gc, g, block=b, refresh=refresh, guide=guide):
            s.text = torch.cat([text, s.tokens[:, canvas.start:canvas.start + n]], 1)
            last = s
            yield s
        text = last.text
        b += 1
        if gc.stop_at_eos and (text[:, len(prompt):] == eos).any(1).all():
            break


def prompt_ids(gc, tokenizer, window: int) -> list[int]:
    prompt = encode_text(tokenizer, gc.prompt)
    if window - 2 - len(prompt) < 1:
        raise UsageError(f"prompt is {len(prompt)} tokens; the window of {window} holds at most {window - 3}")
    return prompt


def model_device(model) -> str:
    return next(model.parameters()).device.type


def lengths(gc, n_prompt: int, window: int) -> tuple[int, int]:
    """(tokens to generate, tokens per block) for a prompt of n_prompt tokens, or a UsageError."""
    room = window - 2 - n_prompt
    length = gc.length or room
    if not gc.block_size and length > room:
        raise UsageError(f"prompt ({n_prompt}) + length ({length}) tokens exceed the window of {window - 2}; "
                         f"use --block-size to write longer text block by block")
    block = min(gc.block_size, length) if gc.block_size else length
    if gc.block_size and block > window - 3:
        raise UsageError(f"--block-size {block} must leave room for context in the window of {window - 2}")
    if gc.min_length > length:
        raise UsageError(f"--min-length {gc.min_length} is longer than the {length} tokens to generate")
    return length, block


def generate(model, tokenizer, gc, window: int, g: torch.Generator, refresh: int = 0,
             context: torch.Tensor | None = None):
    """-> (token ids [B, T] of prompt + generated text, history, number of prompt tokens)."""
    history = list(generation_steps(model, tokenizer, gc, window, g, refresh, context))
    n_prompt = 0 if gc.template else len(prompt_ids(gc, tokenizer, window)) if context is None else context.shape[1]
    return history[-1].text, history, n_prompt


def cut_at_eos(ids: torch.Tensor, eos: int, n_prompt: int) -> list[list[int]]:
    """Each row of ids [B, T] up to (not including) its first </s> after the prompt."""
    out = []
    for row in ids.tolist():
        gen = row[n_prompt:]
        out.append(row[:n_prompt] + (gen[:gen.index(eos)] if eos in gen else gen))
    return out


# ---------------------------------------------------------------------------------------------
# Left to right: the AR baseline with the same samplers
# ---------------------------------------------------------------------------------------------


@torch.inference_mode()
def ar_steps(model, start: torch.Tensor, length: int, gc, banned: list[int],
             g: torch.Generator, fast: bool = True) -> Iterator[torch.Tensor]:
    """Yields `length` token columns [B, 1], one per forward pass, sampled left to right after
    start [B, T0] with SAMPLERS[gc.sampling] (the diffusion model's samplers), special tokens
    banned as there, drawn on the model's device. demo.py watches it; ar_generate collects it.
    fast=False runs the model's own forward even where fast_gpt2 applies (bench.py's reference)."""
    device = next(model.parameters()).device
    x, g = start.to(device), device_generator(g, device)
    ban = torch.tensor(banned, dtype=torch.long, device=device)
    next_logits = ar_forward(model, len(x), x.shape[1] + length, fast)
    for _ in range(length):
        logits = next_logits(x).float().index_fill(1, ban, float("-inf"))  # [B, V]
        x = sample(logits, g, gc)[:, None]  # [B, 1]
        yield x


def ar_forward(model, batch: int, positions: int, fast: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function of the next tokens [B, T] (the prompt first, then one column at a time, up to
    `positions` in all) -> logits [B, V] at the last of them, keeping the keys/values of all so
    far: fast_gpt2's step where it applies (transformers' math with less work per call, as the
    diffusion side runs fast_modernbert), else the model's forward with its own cache."""
    import fast_gpt2

    if fast and fast_gpt2.supports(model):
        kv = fast_gpt2.KV(model, batch, positions)
        return lambda x: fast_gpt2.step(model, x, kv)
    cache = None

    def forward(x):
        nonlocal cache
        o = model(input_ids=x, cache=cache, use_cache=True, logits_to_keep=1)
        cache = o.cache
        return o.logits[:, -1]

    return forward


def ar_generate(model, start: torch.Tensor, length: int, gc, banned: list[int],
                g: torch.Generator, fast: bool = True) -> torch.Tensor:
    """[B, length] tokens sampled left to right after start [B, T0]: ar_steps run to the end."""
    return torch.cat(list(ar_steps(model, start, length, gc, banned, g, fast)), 1)  # [B, length]
