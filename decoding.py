"""The reverse process: fill a masked canvas step by step (and, for comparison, left to right).

Pure pieces, each in a dict registry and tested on its own:
    SAMPLERS[name](logits, g, temperature, k, p) -> sampled token ids
    REMASK[name](conf, masked, n, g)             -> which masked positions to commit this step
    commit_threshold(conf, masked, threshold)    -> confidence-aware parallel decoding
How many masks each step removes comes from the noise schedule shared with training
(diffusion.SCHEDULES / mask_counts).

The loop:
    denoise_steps(model, canvas, ...)   yields one Step per forward pass (canvas, commits, confidence)
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
from dataclasses import dataclass
from typing import Iterator

import torch

from config import UsageError
from data import bos_eos
from diffusion import mask_counts

# ---------------------------------------------------------------------------------------------
# Samplers: (logits [N, V], generator, temperature, k, p) -> token ids [N]
# Temperature 0 means greedy (argmax) whatever the sampler.
# ---------------------------------------------------------------------------------------------


def greedy(logits, g, temperature=1.0, k=50, p=0.9):
    return logits.argmax(-1)  # [N]


def _draw(logits, g, temperature):
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, -1)  # [N, V]
    return torch.multinomial(probs.cpu(), 1, generator=g).squeeze(-1).to(logits.device)  # [N]


def topk(logits, g, temperature=1.0, k=50, p=0.9):
    k = min(k, logits.shape[-1])
    values, index = logits.topk(k, -1)  # [N, k]
    # draw among the k candidates, not over the vocabulary with -inf elsewhere: the same
    # distribution for k/V of the sampling work and of the device-to-host copy
    return index.gather(-1, _draw(values, g, temperature)[:, None]).squeeze(-1)  # [N]


def nucleus(logits, g, temperature=1.0, p=0.9, k=50):
    """Sample from the smallest set of tokens whose probability (at this temperature) is >= p."""
    scaled = logits.float() / (temperature if temperature > 0 else 1.0)
    probs, order = torch.softmax(scaled, -1).sort(-1, descending=True)  # [N, V]
    before = probs.cumsum(-1) - probs  # mass of the tokens ranked above each one
    drop_sorted = before >= p  # keep a token while the mass above it is still < p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocab order
    return _draw(logits.masked_fill(drop, float("-inf")), g, temperature)


SAMPLERS = {"greedy": greedy, "topk": topk, "nucleus": nucleus}


# ---------------------------------------------------------------------------------------------
# Remasking: which masked positions to commit this step
#   (confidence [B, L], masked [B, L] bool, n_commit, generator) -> commit [B, L] bool
# ---------------------------------------------------------------------------------------------


def remask_random(conf, masked, n_commit, g):
    """The seed's rule: commit a random n_commit of the predictions, re-mask the others."""
    scores = torch.rand(conf.shape, generator=g).to(conf.device)
    return _top_n(scores, masked, n_commit)


def remask_low_confidence(conf, masked, n_commit, g):
    """Commit the n_commit most confident predictions, re-mask the least confident."""
    return _top_n(conf, masked, n_commit)


def _top_n(scores, masked, n):
    scores = scores.masked_fill(~masked, float("-inf"))  # [B, L]
    idx = scores.topk(n, -1).indices  # [B, n]
    return torch.zeros_like(masked).scatter(-1, idx, True) & masked


def commit_threshold(conf, masked, threshold):
    """Confidence-aware parallel decoding: every masked position whose confidence >= threshold,
    and always each row's most confident one, so every step makes progress."""
    best = _top_n(conf, masked, 1) & masked.any(-1, keepdim=True)  # [B, L]
    return ((conf >= threshold) & masked) | best


REMASK = {"random": remask_random, "low-confidence": remask_low_confidence}


# ---------------------------------------------------------------------------------------------
# The denoising loop
# ---------------------------------------------------------------------------------------------


@dataclass
class Step:
    """One denoising step of one block: the canvas after it, what it committed and how sure."""
    block: int
    step: int
    tokens: torch.Tensor  # [B, L] canvas after this step
    committed: torch.Tensor  # [B, L] bool, positions committed at this step
    confidence: torch.Tensor  # [B, L] probability of the committed token (nan elsewhere)
    masked_left: int  # masks left in row 0 after this step
    text: torch.Tensor | None = None  # [B, T] the whole output so far (set by generation_steps)


@torch.no_grad()
def denoise_steps(model, canvas: torch.Tensor, mask_id: int, gc, g: torch.Generator,
                  banned: list[int] = (), block: int = 0) -> Iterator[Step]:
    """Fill every <mask> of canvas [B, L] (every row holds the same number of masks), yielding
    one Step per forward pass; the last Step's tokens are the filled canvas. gc: a GenConfig."""
    from modeling import autocast, masked_logits

    canvas = canvas.clone()
    masked = canvas == mask_id  # [B, L]
    n = int(masked[0].sum())
    counts = mask_counts(gc.schedule, n, gc.steps)
    device = next(model.parameters()).device
    step = 0
    while masked.any():
        if gc.decode == "schedule":
            n_commit = counts[step] - counts[step + 1]
            step += 1
            if n_commit == 0:  # the schedule keeps every mask this step: skip the forward pass
                continue
        else:
            step += 1
        with autocast(device):
            logits = masked_logits(model, canvas.to(device), None, masked.to(device))  # [N, V]
        logits = logits.float()
        if banned:
            logits[:, list(banned)] = float("-inf")  # no <mask>, <s>, </s>, <pad> in the text
        tokens = SAMPLERS[gc.sampling](logits, g, temperature=gc.temperature, k=gc.k, p=gc.p)  # [N]
        conf_n = torch.softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1)  # [N]
        proposal = canvas.clone()
        proposal[masked] = tokens.cpu()
        conf = torch.full(canvas.shape, float("-inf"))
        conf[masked] = conf_n.cpu()
        if gc.decode == "threshold":
            commit = commit_threshold(conf, masked, gc.threshold)
        else:
            commit = REMASK[gc.remask](conf, masked, n_commit, g)
        canvas[commit] = proposal[commit]
        masked &= ~commit
        yield Step(block, step, canvas.clone(), commit,
                   torch.where(commit, conf, torch.full_like(conf, float("nan"))), int(masked[0].sum()))


def denoise(model, canvas: torch.Tensor, mask_id: int, gc, g: torch.Generator,
            banned: list[int] = (), block: int = 0) -> tuple[torch.Tensor, list[Step]]:
    """denoise_steps run to the end: (the filled canvas [B, L], the per-step history)."""
    history = list(denoise_steps(model, canvas, mask_id, gc, g, banned, block))
    return (history[-1].tokens if history else canvas.clone()), history


# ---------------------------------------------------------------------------------------------
# Canvases: prompt continuation, semi-autoregressive blocks, infill templates
# ---------------------------------------------------------------------------------------------

TEMPLATE_SPAN = re.compile(r"\[MASK(?::(\d+))?\]")


def parse_template(template: str, tokenizer) -> tuple[list[int], list[bool]]:
    """'The [MASK:3] of France' -> (token ids with <mask> in the spans, fixed flags).
    `[MASK]` alone is one token; fixed text is tokenised exactly as written (spaces included)."""
    ids, fixed, pos = [], [], 0
    for m in TEMPLATE_SPAN.finditer(template):
        text = template[pos:m.start()]
        if text:
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += piece
            fixed += [True] * len(piece)
        n = int(m.group(1)) if m.group(1) else 1
        if n < 1:
            raise UsageError(f"template span {m.group(0)} must ask for at least one token")
        ids += [tokenizer.mask_token_id] * n
        fixed += [False] * n
        pos = m.end()
    tail = template[pos:]
    if tail:
        piece = tokenizer(tail, add_special_tokens=False)["input_ids"]
        ids += piece
        fixed += [True] * len(piece)
    if all(fixed):
        raise UsageError("the template has nothing to fill: mark spans with [MASK] or [MASK:n]")
    return ids, fixed


def banned_ids(tokenizer) -> list[int]:
    """Token ids never sampled into the text: every special token."""
    return sorted(set(tokenizer.all_special_ids))


def generation_steps(model, tokenizer, gc, window: int, g: torch.Generator) -> Iterator[Step]:
    """Every denoising step of a whole generation (gc: a GenConfig), each Step's `text` [B, T]
    holding the output so far: prompt, finished blocks, and the current block (masks included).
    The last Step's `text` is the result. Bad prompt/length/template: UsageError before any step."""
    bos, eos = bos_eos(tokenizer)
    B, mask_id, banned = gc.num_samples, tokenizer.mask_token_id, banned_ids(tokenizer)
    if gc.template:
        ids, _ = parse_template(gc.template, tokenizer)
        if len(ids) + 2 > window:
            raise UsageError(f"template is {len(ids)} tokens; the window holds {window - 2}")
        canvas = torch.tensor([[bos] + ids + [eos]] * B)  # [B, L]
        for s in denoise_steps(model, canvas, mask_id, gc, g, banned):
            s.text = s.tokens[:, 1:-1]
            yield s
        return
    prompt = prompt_ids(gc, tokenizer, window)
    length, block = lengths(gc, len(prompt), window)
    text = torch.tensor([prompt] * B, dtype=torch.long).reshape(B, len(prompt))  # [B, T]
    b = 0
    while text.shape[1] - len(prompt) < length:
        n = min(block, length - (text.shape[1] - len(prompt)))
        context = text[:, max(0, text.shape[1] - (window - 2 - n)):]  # [B, <= window-2-n]
        canvas = torch.cat([torch.full((B, 1), bos), context, torch.full((B, n), mask_id),
                            torch.full((B, 1), eos)], 1)  # [B, L]
        last = None
        for s in denoise_steps(model, canvas, mask_id, gc, g, banned, block=b):
            s.text = torch.cat([text, s.tokens[:, -1 - n:-1]], 1)
            last = s
            yield s
        text = last.text
        b += 1


def prompt_ids(gc, tokenizer, window: int) -> list[int]:
    prompt = tokenizer(gc.prompt, add_special_tokens=False)["input_ids"] if gc.prompt else []
    if window - 2 - len(prompt) < 1:
        raise UsageError(f"prompt is {len(prompt)} tokens; the window of {window} holds at most {window - 3}")
    return prompt


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
    return length, block


def generate(model, tokenizer, gc, window: int, g: torch.Generator):
    """-> (token ids [B, T] of prompt + generated text, history, number of prompt tokens)."""
    history = list(generation_steps(model, tokenizer, gc, window, g))
    n_prompt = 0 if gc.template else len(prompt_ids(gc, tokenizer, window))
    return history[-1].text, history, n_prompt


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
        x = SAMPLERS[gc.sampling](logits, g, temperature=gc.temperature, k=gc.k, p=gc.p)[:, None]  # [B, 1]
        yield x.cpu()


def ar_generate(model, start: torch.Tensor, length: int, gc, banned: list[int],
                g: torch.Generator) -> torch.Tensor:
    """[B, length] tokens sampled left to right after start [B, T0]: ar_steps run to the end."""
    return torch.cat(list(ar_steps(model, start, length, gc, banned, g)), 1)  # [B, length]
