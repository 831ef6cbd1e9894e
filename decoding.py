"""The reverse process: fill a masked canvas step by step (and, for comparison, left to right).

Pure pieces in dict registries of Rules (the function, the GenConfig fields it reads, its words),
each tested on its own:
    SAMPLERS[name]   (logits [N, V], g, its fields)  -> token ids [N]       --sampling
    ORDERS[name]     (probs, tokens, g)              -> commit-first scores  --order (+ --order-noise)
    DECODES[name]    how many predictions a pass commits                     --decode
    REMDM[name]      sigma: the share of committed tokens sent back          --remdm
    guided(cond, uncond, w)                          -> classifier-free guidance
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
                                        yields one token column per forward pass
    ar_generate(...)                    runs it to the end: [B, length]
"""

import re
from dataclasses import dataclass, fields
from typing import Callable, Iterator

import torch

from cli import UsageError
from diffusion import mask_counts
from limits import check_generation
from tokens import bos_eos, encode_text, token_ids


@dataclass(frozen=True)
class Rule:
    """A registry entry: the function, the GenConfig fields it reads (a sampler gets them as
    keyword arguments), and the words for a setting that uses it (a format string over those
    fields). setting_of and describe derive what a setting is from these, and cli-level checks
    warn about a flag that no chosen rule reads."""
    fn: Callable | None
    reads: tuple = ()
    label: str = ""

    def text(self, gc) -> str:
        return self.label.format(**{f: getattr(gc, f) for f in self.reads})


# ---------------------------------------------------------------------------------------------
# Samplers: (logits [N, V], generator, the fields they read) -> token ids [N]
# Temperature 0 means greedy (argmax) whatever the sampler.
# ---------------------------------------------------------------------------------------------


def greedy(logits, g):
    return logits.argmax(-1)  # [N]


def _draw(logits, g, temperature):
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, -1)  # [N, V]
    return torch.multinomial(probs.cpu(), 1, generator=g).squeeze(-1).to(logits.device)  # [N]


def topk(logits, g, temperature, k):
    k = min(k, logits.shape[-1])
    values, index = logits.topk(k, -1)  # [N, k]
    # draw among the k candidates, not over the vocabulary with -inf elsewhere: the same
    # distribution for k/V of the sampling work and of the device-to-host copy
    return index.gather(-1, _draw(values, g, temperature)[:, None]).squeeze(-1)  # [N]


def nucleus(logits, g, temperature, p):
    """Sample from the smallest set of tokens whose probability (at this temperature) is >= p."""
    scaled = logits.float() / (temperature if temperature > 0 else 1.0)
    probs, order = torch.softmax(scaled, -1).sort(-1, descending=True)  # [N, V]
    before = probs.cumsum(-1) - probs  # mass of the tokens ranked above each one
    drop_sorted = before >= p  # keep a token while the mass above it is still < p
    drop_sorted[..., 0] = False  # and always the most probable one (p below float32's resolution)
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocab order
    return _draw(logits.masked_fill(drop, float("-inf")), g, temperature)


SAMPLERS = {
    "greedy": Rule(greedy, (), "greedy"),
    "topk": Rule(topk, ("temperature", "k"), "top-k {k}, T {temperature}"),
    "nucleus": Rule(nucleus, ("temperature", "p"), "nucleus p {p}, T {temperature}"),
}


def sample(logits, g, gc):
    """Token ids [N] drawn from logits [N, V] by gc's sampler, with the fields it reads."""
    rule = SAMPLERS[gc.sampling]
    return rule.fn(logits, g, **{f: getattr(gc, f) for f in rule.reads})


# ---------------------------------------------------------------------------------------------
# Orders: which masked positions to commit this step. Each scores the sampled predictions,
#   (probs [N, V], tokens [N], generator) -> score [N], higher = committed sooner;
# the n best of each row are committed, the rest stay masked (the seed's word: "re-masked").
# ---------------------------------------------------------------------------------------------


def order_random(probs, tokens, g):
    """The seed's rule: a uniformly random subset."""
    return torch.rand(len(tokens), generator=g, dtype=torch.float64).to(probs.device)


def order_confidence(probs, tokens, g):
    """Most probable prediction first (MaskGIT, LLaDA's low-confidence remasking): log p(token)."""
    return probs.gather(-1, tokens[:, None]).squeeze(-1).double().clamp_min(1e-300).log()


def order_margin(probs, tokens, g):
    """Largest gap between the two most probable tokens first (Dream's topk_margin)."""
    top = probs.topk(2, -1).values.double()  # [N, 2]
    return (top[:, 0] - top[:, 1]).clamp_min(1e-300).log()


def order_entropy(probs, tokens, g):
    """Most certain distribution first: negative entropy (Dream's entropy order)."""
    p = probs.double()
    return (p * p.clamp_min(1e-300).log()).sum(-1)


# an order that reads order_noise gets annealed Gumbel noise on its scores (the random one needs none)
ORDERS = {
    "random": Rule(order_random, (), "random order"),
    "low-confidence": Rule(order_confidence, ("order_noise",), "low-confidence order + Gumbel noise {order_noise}"),
    "margin": Rule(order_margin, ("order_noise",), "margin order + Gumbel noise {order_noise}"),
    "entropy": Rule(order_entropy, ("order_noise",), "entropy order + Gumbel noise {order_noise}"),
}


def gumbel(shape, g: torch.Generator) -> torch.Tensor:
    """Standard Gumbel noise in float64 (low-precision Gumbel lowers diversity, as LLaDA notes)."""
    u = torch.rand(shape, generator=g, dtype=torch.float64).clamp(1e-300, 1 - 1e-16)
    return -torch.log(-torch.log(u))


def order_noise(tau: float, step: int, steps: int) -> float:
    """MaskGIT's choice temperature: tau at the first step, annealed linearly to 0 at the last."""
    return tau * (1.0 - (step - 1) / (steps - 1)) if steps > 1 else 0.0


def top_n(scores, allowed, n):
    """[B, L] bool: the n highest scores of each row among `allowed` positions."""
    scores = scores.masked_fill(~allowed, float("-inf"))  # [B, L]
    idx = scores.topk(n, -1).indices  # [B, n]
    return torch.zeros_like(allowed).scatter(-1, idx, True) & allowed


def commit_threshold(conf, masked, threshold):
    """Confidence-aware parallel decoding: every masked position whose confidence >= threshold,
    and always each row's most confident one, so every step makes progress."""
    best = top_n(conf, masked, 1) & masked.any(-1, keepdim=True)  # [B, L]
    return ((conf >= threshold) & masked) | best


# How many predictions a forward pass commits: (confidence [B, L], order score [B, L], masks still
# to fill [B, L], the schedule's count for this pass, gc) -> [B, L] bool. "schedule" commits the
# count the noise schedule leaves (diffusion.mask_counts), best order scores first; "threshold"
# every confident prediction (the count and the order are not used).
DECODES = {
    "schedule": Rule(lambda conf, score, todo, n, gc: top_n(score, todo, n), ("steps", "schedule", "order", "remdm"),
                     "{schedule}, {steps} steps"),
    "threshold": Rule(lambda conf, score, todo, n, gc: commit_threshold(conf, todo, gc.threshold), ("threshold",),
                      "threshold {threshold}"),
}


# ---------------------------------------------------------------------------------------------
# Re-masking committed tokens (ReMDM, Wang et al. 2025): how many, and which
# ---------------------------------------------------------------------------------------------


def sigma_cap(eta: float, sigma_max: float) -> float:
    return min(eta, sigma_max)


def sigma_rescale(eta: float, sigma_max: float) -> float:
    return eta * sigma_max


# strategy -> sigma(eta, sigma_max): the share of committed tokens sent back in one step; "conf"
# re-masks the rescale count, choosing low-confidence tokens more often (remask_choice)
REMDM = {
    "none": Rule(None, (), ""),
    "cap": Rule(sigma_cap, ("remdm_eta",), "ReMDM cap eta {remdm_eta}"),
    "rescale": Rule(sigma_rescale, ("remdm_eta",), "ReMDM rescale eta {remdm_eta}"),
    "conf": Rule(sigma_rescale, ("remdm_eta",), "ReMDM conf eta {remdm_eta}"),
}


def remdm_sigma(strategy: str, eta: float, left_before: int, left_after: int, n: int) -> float:
    """Probability that a committed token goes back to <mask> in a step that takes the masks left
    from left_before to left_after (of n). alpha = fraction unmasked; the largest sigma that keeps
    the reverse process valid is (1 - alpha_s) / alpha_t. "cap": min(eta, that); "rescale" and
    "conf": eta * that (conf then picks low-confidence tokens more often)."""
    if REMDM[strategy].fn is None or left_before == n:
        return 0.0
    alpha_t, alpha_s = 1 - left_before / n, 1 - left_after / n
    return REMDM[strategy].fn(eta, min(1.0, (1 - alpha_s) / alpha_t))


def remask_choice(strategy: str, conf_at_commit, committed, r: int, g):
    """[B, L] bool: r committed positions per row to send back to <mask>: uniformly at random
    ("cap", "rescale"), or drawn in proportion to exp(-confidence when committed) ("conf", by the
    Gumbel top-k trick)."""
    if strategy == "conf":
        scores = -conf_at_commit.double() + gumbel(committed.shape, g)
    else:
        scores = torch.rand(committed.shape, generator=g, dtype=torch.float64)
    return top_n(scores, committed, r)


# ---------------------------------------------------------------------------------------------
# What a setting is: the fields its chosen rules read, and the setting in words
# ---------------------------------------------------------------------------------------------

SELECTORS = {"sampling": SAMPLERS, "order": ORDERS, "remdm": REMDM, "decode": DECODES}  # field -> its registry


def setting_of(gc) -> dict:
    """The fields of gc that decide its output: every decoding field (not a config.flag run field)
    that no rule reads, and the fields of the rules gc chooses, followed from selector to selector
    (decode -> order -> order_noise). A field no chosen rule reads (k under nucleus) is left out."""
    owned = {f for reg in SELECTORS.values() for rule in reg.values() for f in rule.reads}
    names = [f.name for f in fields(gc) if not f.metadata.get("run")]
    active = {n for n in names if n not in owned}
    todo = [n for n in active if n in SELECTORS]
    while todo:
        for f in SELECTORS[todo[0]][getattr(gc, todo.pop(0))].reads:
            if f not in active:
                active.add(f)
                todo += [f] if f in SELECTORS else []
    return {n: getattr(gc, n) for n in names if n in active}


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
    how += [f"guidance {gc.cfg}"] * bool(gc.cfg) + [f"{gc.canvas} canvas"] * (gc.canvas != "full")
    how += [f"blocks of {gc.block_size}"] * bool(gc.block_size) + [f"prompted with \"{gc.prompt}\""] * bool(gc.prompt)
    return f"{words}; {', '.join(how)}"


# ---------------------------------------------------------------------------------------------
# The denoising loop
# ---------------------------------------------------------------------------------------------


@dataclass
class Canvas:
    """What one denoising run starts from: tokens [B, L] (<mask> where text will go), which
    positions to fill (active [B, L]; other masks stay masked, like the future in training's
    blocks), which tokens are the user's condition (fixed [B, L]: prompt or template text, what
    guidance masks), and where the generated text starts (for --min-length)."""
    tokens: torch.Tensor
    active: torch.Tensor
    fixed: torch.Tensor
    start: int


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


def predict(model, tokens, todo, canvas: Canvas, ids: dict, gc, eos_allowed):
    """Logits [N, V] (on the CPU) at the N positions still to fill, row-major, with classifier-free
    guidance when gc.cfg > 0; special tokens banned, </s> only where eos_allowed [B, L]."""
    from modeling import autocast, masked_logits

    device = next(model.parameters()).device
    with autocast(device):
        logits = masked_logits(model, tokens.to(device), None, todo.to(device)).float()  # [N, V]
        if gc.cfg > 0:
            uncond = tokens.masked_fill(canvas.fixed, ids["mask"])  # the condition hidden
            logits = guided(logits, masked_logits(model, uncond.to(device), None, todo.to(device)).float(), gc.cfg)
    logits = logits.cpu()
    logits[:, ids["banned"]] = float("-inf")  # no <mask>, <s>, <pad>; </s> only with --stop-at-eos
    logits[:, ids["eos"]] = torch.where(eos_allowed[todo], logits[:, ids["eos"]], float("-inf"))
    return logits


def order_scores(probs, pred, todo, gc, step: int, g) -> torch.Tensor:
    """[B, L] float64: gc's order scores of the predictions at the positions still to fill, plus
    annealed Gumbel noise when the order reads order_noise; -inf elsewhere."""
    rule = ORDERS[gc.order]
    score = torch.full(todo.shape, float("-inf"), dtype=torch.float64)  # [B, L]
    score[todo] = rule.fn(probs, pred, g)
    if "order_noise" in rule.reads and gc.order_noise > 0:
        score[todo] += order_noise(gc.order_noise, step, gc.steps) * gumbel(int(todo.sum()), g)
    return score


@torch.no_grad()
def denoise_steps(model, canvas: Canvas, ids: dict, gc, g: torch.Generator, block: int = 0) -> Iterator[Step]:
    """Fill the active <mask>s of a Canvas (every row holds the same number), yielding one Step
    per forward pass; the last Step's tokens are the filled canvas. gc: a GenConfig; ids: the
    tokenizer's mask, eos and banned ids (tokens.token_ids)."""
    tokens, mask_id, scheduled = canvas.tokens.clone(), ids["mask"], gc.decode == "schedule"
    todo = canvas.active & (tokens == mask_id)  # [B, L] masks this run fills
    gen = todo.clone()  # [B, L] the positions being generated (committed or not)
    n = int(todo[0].sum())
    counts = mask_counts(gc.schedule, n, gc.steps)
    conf_at_commit = torch.full(tokens.shape, float("nan"))  # [B, L]
    pos = torch.arange(tokens.shape[1]).expand_as(tokens)  # [B, L]
    eos_allowed = gc.stop_at_eos & (pos - canvas.start >= gc.min_length)  # [B, L]
    step = 0
    while todo.any():
        # 0. how many to commit (and to send back, ReMDM) at this step of the schedule
        r = round(remdm_sigma(gc.remdm, gc.remdm_eta, counts[step], counts[step + 1], n) *
                  int((gen & ~todo)[0].sum())) if scheduled else 0
        n_commit = counts[step] - counts[step + 1] + r if scheduled else 0
        step += 1
        if scheduled and n_commit == 0:  # the schedule keeps every mask this step: skip the forward pass
            continue
        # 1. predict every position still to fill and draw a token for each: [N, V] -> [N]
        logits = predict(model, tokens, todo, canvas, ids, gc, eos_allowed)  # [N, V]
        pred = sample(logits, g, gc)  # [N]
        probs = torch.softmax(logits, -1)  # [N, V]
        conf = torch.full(tokens.shape, float("-inf"))  # [B, L]
        conf[todo] = probs.gather(-1, pred[:, None]).squeeze(-1)
        # 2. which predictions to keep this step (DECODES), the rest stay masked
        score = order_scores(probs, pred, todo, gc, step, g) if scheduled else None
        commit = DECODES[gc.decode].fn(conf, score, todo, n_commit, gc)
        # 3. ReMDM: send r committed tokens back to <mask> (they get a new prediction next step)
        remask = remask_choice(gc.remdm, conf_at_commit, gen & ~todo, r, g) if r else torch.zeros_like(todo)
        proposal = tokens.clone()
        proposal[todo] = pred
        tokens[commit] = proposal[commit]
        conf_at_commit[commit] = conf[commit]
        tokens[remask] = mask_id
        conf_at_commit[remask] = float("nan")
        todo = (todo & ~commit) | remask
        yield Step(block, step, tokens.clone(), commit, torch.where(commit, conf, torch.full_like(conf, float("nan"))),
                   int(todo[0].sum()), remask)


def denoise(model, canvas: Canvas, ids: dict, gc, g: torch.Generator, block: int = 0):
    """denoise_steps run to the end: (the filled tokens [B, L], the per-step history)."""
    history = list(denoise_steps(model, canvas, ids, gc, g, block))
    return (history[-1].tokens if history else canvas.tokens.clone()), history


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


def window_canvas(context: torch.Tensor, n: int, window: int, ids: dict, bos: int, n_fixed: int, fit: bool) -> Canvas:
    """<s> context <mask>... </s> for B rows of context [B, T]: n masks to fill right after the
    context. "full" (the default) always spans the whole window -- the masks beyond the n stay
    masked, as unseen text does in training's full-window blocks; "fit" stops at </s> right after
    the n masks (an input shorter than any training block). The first n_fixed context tokens are
    the user's condition (for guidance)."""
    B, T = context.shape
    tail = n if fit else window - 2 - T
    tokens = torch.cat([torch.full((B, 1), bos), context, torch.full((B, tail), ids["mask"]),
                        torch.full((B, 1), ids["eos"])], 1)  # [B, L]
    pos = torch.arange(tokens.shape[1]).expand(B, -1)  # [B, L]
    active = (pos > T) & (pos <= T + n)
    fixed = (pos >= 1) & (pos <= n_fixed)
    return Canvas(tokens, active, fixed, start=1 + T)


def generation_steps(model, tokenizer, gc, window: int, g: torch.Generator) -> Iterator[Step]:
    """Every denoising step of a whole generation (gc: a GenConfig), each Step's `text` [B, T]
    holding the output so far: prompt, finished blocks, and the current block (masks included).
    The last Step's `text` is the result. Bad prompt/length/template: UsageError before any step.
    With --stop-at-eos, block writing stops once every row has written </s>."""
    bos, eos = bos_eos(tokenizer)
    ids = token_ids(tokenizer)
    B = gc.num_samples
    if gc.template:
        if gc.stop_at_eos:
            raise UsageError("--stop-at-eos does not apply to --template (the template fixes the length)")
        tmpl, fixed = parse_template(gc.template, tokenizer, window)
        if len(tmpl) + 2 > window:
            raise UsageError(f"template is {len(tmpl)} tokens; the window holds {window - 2}")
        check_generation(gc, window, len(tokenizer), fixed.count(False), fixed.count(False), model_device(model))
        tokens = torch.tensor([[bos] + tmpl + [eos]] * B)  # [B, L]
        fixed_t = torch.tensor([False] + fixed + [False]).expand(B, -1)
        canvas = Canvas(tokens, tokens == ids["mask"], fixed_t, start=1)
        for s in denoise_steps(model, canvas, ids, gc, g):
            s.text = s.tokens[:, 1:-1]
            yield s
        return
    prompt = prompt_ids(gc, tokenizer, window)
    if gc.cfg > 0 and not prompt:
        raise UsageError("--cfg needs something to condition on: a --prompt or a --template")
    length, block = lengths(gc, len(prompt), window)
    check_generation(gc, window, len(tokenizer), length, block, model_device(model))
    text = torch.tensor([prompt] * B, dtype=torch.long).reshape(B, len(prompt))  # [B, T]
    b = 0
    while text.shape[1] - len(prompt) < length:
        n = min(block, length - (text.shape[1] - len(prompt)))
        cut = max(0, text.shape[1] - (window - 2 - n))  # the context that fits beside n masks
        context = text[:, cut:]  # [B, <= window-2-n]
        canvas = window_canvas(context, n, window, ids, bos, max(0, len(prompt) - cut), gc.canvas == "fit")
        last = None
        for s in denoise_steps(model, canvas, ids, gc, g, block=b):
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


def generate(model, tokenizer, gc, window: int, g: torch.Generator):
    """-> (token ids [B, T] of prompt + generated text, history, number of prompt tokens)."""
    history = list(generation_steps(model, tokenizer, gc, window, g))
    n_prompt = 0 if gc.template else len(prompt_ids(gc, tokenizer, window))
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


@torch.no_grad()
def ar_steps(model, start: torch.Tensor, length: int, gc, banned: list[int],
             g: torch.Generator) -> Iterator[torch.Tensor]:
    """Yields `length` token columns [B, 1], one per forward pass, sampled left to right after
    start [B, T0] with SAMPLERS[gc.sampling] (the diffusion model's samplers), special tokens
    banned as there. demo.py watches it; ar_generate collects it."""
    device = next(model.parameters()).device
    x, cache = start.to(device), None
    for _ in range(length):
        o = model(input_ids=x, cache=cache, use_cache=True, logits_to_keep=1)
        cache = o.cache
        logits = o.logits[:, -1].float()  # [B, V]
        logits[:, banned] = float("-inf")
        x = sample(logits, g, gc)[:, None]  # [B, 1]
        yield x.cpu()


def ar_generate(model, start: torch.Tensor, length: int, gc, banned: list[int],
                g: torch.Generator) -> torch.Tensor:
    """[B, length] tokens sampled left to right after start [B, T0]: ar_steps run to the end."""
    return torch.cat(list(ar_steps(model, start, length, gc, banned, g)), 1)  # [B, length]
