"""Generate text by iterative unmasking: the reverse process of discrete text diffusion.

    python generate.py                                  # results/final-model, defaults below
    python generate.py --prompt "The history of" --schedule cosine --show-steps
    python generate.py --decode threshold --threshold 0.9
    python generate.py --block-size 32 --length 200     # longer than the window, block by block
    python generate.py --template "The [MASK:4] of France is [MASK:3]."   # infill
    python generate.py --animate results/denoise.gif

Start from `<s> prompt <mask> ... <mask> </s>`; at each step predict every masked position,
keep some predictions and leave the rest masked, until no mask is left.

Pure pieces, each in a dict registry and tested on its own:
    SCHEDULES[name](step, total)      -> fraction of generated positions still masked after `step`
    SAMPLERS[name](logits, g, ...)    -> sampled token ids
    REMASK[name](conf, masked, n, g)  -> which masked positions to commit this step
`denoise()` runs the loop and returns the per-step history that --show-steps, --animate and the
experiments consume; it prints nothing itself.
"""

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass

import torch

from config import UsageError, add_args, cli, given, load_train_config, to_json
from data import bos_eos

# ---------------------------------------------------------------------------------------------
# Schedules: (step, total) -> fraction of the generated positions still masked after `step`
# ---------------------------------------------------------------------------------------------


def linear(step: int, total: int) -> float:
    return 1.0 - step / total


def cosine(step: int, total: int) -> float:
    # MaskGIT: few tokens early when context is thin, many late when it is rich
    return math.cos(0.5 * math.pi * step / total)


def exponential(step: int, total: int, rate: float = 5.0) -> float:
    # many tokens early, a long careful tail
    return (math.exp(-rate * step / total) - math.exp(-rate)) / (1.0 - math.exp(-rate))


SCHEDULES = {"linear": linear, "cosine": cosine, "exponential": exponential}


def mask_counts(schedule: str, n: int, steps: int) -> list[int]:
    """Masks left after each step 0..steps for n generated positions: starts at n, ends at 0,
    never increases. A step whose count does not drop commits nothing and is skipped."""
    f = SCHEDULES[schedule]
    counts = [n] + [round(n * f(s, steps)) for s in range(1, steps)] + [0]
    for i in range(1, len(counts)):
        counts[i] = min(counts[i], counts[i - 1])
    return counts


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
    # distribution for k/V of the sampling work and of the device-to-host copy (the multinomial
    # over [N, V] was most of the generation time)
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
class GenConfig:
    checkpoint: str = "results/final-model"  # folder written by train.py
    prompt: str = ""  # text the generation continues (kept fixed, as the training prefix was)
    template: str = ""  # infill: fixed text with [MASK:n] spans to fill, e.g. "A [MASK:5] is [MASK]."
    length: int = 0  # new tokens to generate; 0 = fill the checkpoint's window after the prompt
    steps: int = 10  # denoising steps (per block with --block-size)
    schedule: str = "linear"  # linear | cosine | exponential: how fast masks are removed
    sampling: str = "topk"  # greedy | topk | nucleus
    k: int = 50  # top-k size
    p: float = 0.9  # nucleus mass
    temperature: float = 0.8  # softmax temperature; 0 = greedy argmax for any sampler
    remask: str = "low-confidence"  # random (the seed's) | low-confidence: which predictions to keep
    decode: str = "schedule"  # schedule (counts from --schedule) | threshold (commit confident ones)
    threshold: float = 0.9  # confidence needed to commit with --decode threshold
    block_size: int = 0  # >0: semi-autoregressive, denoise this many tokens at a time, left to right
    num_samples: int = 1  # samples generated together as one batch
    seed: int = 0  # fixes every sampled token and every random remask
    show_steps: bool = False  # print the canvas after every step, masks drawn as █
    animate: str = ""  # write a GIF of the denoising history to this path
    out: str = "results/generations.jsonl"  # each run appends its config, samples and timing here


GEN_CHOICES = {"schedule": tuple(SCHEDULES), "sampling": tuple(SAMPLERS), "remask": tuple(REMASK),
               "decode": ("schedule", "threshold")}


def validate_gen(gc: GenConfig) -> None:
    for name, options in GEN_CHOICES.items():
        if getattr(gc, name) not in options:
            raise UsageError(f"--{name} must be one of {', '.join(options)}, got {getattr(gc, name)!r}")
    if gc.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {gc.steps}")
    if gc.k < 1:
        raise UsageError(f"--k must be at least 1, got {gc.k}")
    if not 0.0 < gc.p <= 1.0:
        raise UsageError(f"--p must be in (0, 1], got {gc.p}")
    if gc.temperature < 0:
        raise UsageError(f"--temperature must be >= 0 (0 = greedy), got {gc.temperature}")
    if not 0.0 < gc.threshold <= 1.0:
        raise UsageError(f"--threshold must be in (0, 1], got {gc.threshold}")
    if gc.length < 0 or gc.block_size < 0:
        raise UsageError("--length and --block-size must be >= 0")
    if gc.num_samples < 1:
        raise UsageError(f"--num-samples must be at least 1, got {gc.num_samples}")
    if gc.template and gc.prompt:
        raise UsageError("--template and --prompt cannot be combined: put the prompt text in the template")


@dataclass
class Step:
    """One denoising step of one block: the canvas after it, what it committed and how sure."""
    block: int
    step: int
    tokens: torch.Tensor  # [B, L] canvas after this step
    committed: torch.Tensor  # [B, L] bool, positions committed at this step
    confidence: torch.Tensor  # [B, L] probability of the committed token (nan elsewhere)
    masked_left: int  # masks left in row 0 after this step


@torch.no_grad()
def denoise(model, canvas: torch.Tensor, mask_id: int, gc: GenConfig, g: torch.Generator,
            banned: list[int] = (), block: int = 0) -> tuple[torch.Tensor, list[Step]]:
    """Fill every <mask> of canvas [B, L] (every row holds the same number of masks).
    Returns the final canvas and the per-step history."""
    from modeling import autocast, masked_logits

    canvas = canvas.clone()
    masked = canvas == mask_id  # [B, L]
    n = int(masked[0].sum())
    counts = mask_counts(gc.schedule, n, gc.steps)
    device = next(model.parameters()).device
    history = []
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
        history.append(Step(block, step, canvas.clone(), commit,
                            torch.where(commit, conf, torch.full_like(conf, float("nan"))),
                            int(masked[0].sum())))
    return canvas, history


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
    return sorted(set(tokenizer.all_special_ids))


def generate(model, tokenizer, gc: GenConfig, window: int, g: torch.Generator):
    """-> (token ids [B, T] of prompt + generated text, history, number of prompt tokens)."""
    bos, eos = bos_eos(tokenizer)
    B, mask_id, banned = gc.num_samples, tokenizer.mask_token_id, banned_ids(tokenizer)
    if gc.template:
        ids, _ = parse_template(gc.template, tokenizer)
        if len(ids) + 2 > window:
            raise UsageError(f"template is {len(ids)} tokens; the window holds {window - 2}")
        canvas = torch.tensor([[bos] + ids + [eos]] * B)  # [B, L]
        final, history = denoise(model, canvas, mask_id, gc, g, banned)
        return final[:, 1:-1], history, 0
    prompt = tokenizer(gc.prompt, add_special_tokens=False)["input_ids"] if gc.prompt else []
    room = window - 2 - len(prompt)
    if room < 1:
        raise UsageError(f"prompt is {len(prompt)} tokens; the window of {window} holds at most {window - 3}")
    length = gc.length or room
    if not gc.block_size and length > room:
        raise UsageError(f"prompt ({len(prompt)}) + length ({length}) tokens exceed the window of {window - 2}; "
                         f"use --block-size to write longer text block by block")
    block = min(gc.block_size, length) if gc.block_size else length
    if gc.block_size and block > window - 3:
        raise UsageError(f"--block-size {block} must leave room for context in the window of {window - 2}")
    text = torch.tensor([prompt] * B, dtype=torch.long).reshape(B, len(prompt))  # [B, T]
    history, b = [], 0
    while text.shape[1] - len(prompt) < length:
        n = min(block, length - (text.shape[1] - len(prompt)))
        context = text[:, max(0, text.shape[1] - (window - 2 - n)):]  # [B, <= window-2-n]
        canvas = torch.cat([torch.full((B, 1), bos), context, torch.full((B, n), mask_id),
                            torch.full((B, 1), eos)], 1)  # [B, L]
        final, steps = denoise(model, canvas, mask_id, gc, g, banned, block=b)
        text = torch.cat([text, final[:, -1 - n:-1]], 1)
        history += steps
        b += 1
    return text, history, len(prompt)


# ---------------------------------------------------------------------------------------------
# Showing the history
# ---------------------------------------------------------------------------------------------

MASK_GLYPH = "█"


def render(tokens: list[int], tokenizer, mask_id: int, skip: set) -> str:
    """Text of one canvas row with each mask drawn as █ (runs of text decoded together)."""
    out, run = [], []
    for t in tokens:
        if t in skip:
            continue
        if t == mask_id:
            if run:
                out.append(tokenizer.decode(run))
                run = []
            out.append(MASK_GLYPH)
        else:
            run.append(t)
    if run:
        out.append(tokenizer.decode(run))
    return "".join(out)


def format_steps(history: list[Step], tokenizer) -> str:
    skip = set(banned_ids(tokenizer)) - {tokenizer.mask_token_id}
    lines = []
    for h in history:
        text = render(h.tokens[0].tolist(), tokenizer, tokenizer.mask_token_id, skip)
        lines.append(f"[block {h.block} step {h.step:>2}] {h.masked_left:>3} masked | {text}")
    return "\n".join(lines)


def animate(history: list[Step], tokenizer, path: str, prompt_len: int = 0, cols: int = 16) -> None:
    """GIF of row 0's canvas: one frame per step, a grid of token cells (prompt green, masks
    dark, committed this step orange, earlier commits blue)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation, PillowWriter

    mask_id = tokenizer.mask_token_id
    first = history[0]
    L = first.tokens.shape[1]
    rows = math.ceil(L / cols)
    fig, ax = plt.subplots(figsize=(cols * 0.95, rows * 0.42 + 0.9))
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.86)

    def draw(i):
        h = history[i]
        ax.clear()
        ax.set_xlim(0, cols)
        ax.set_ylim(rows, 0)
        ax.axis("off")
        toks = h.tokens[0].tolist()
        fixed0 = (history[0].tokens[0] != mask_id) & ~history[0].committed[0]
        for pos, t in enumerate(toks):
            r, c = divmod(pos, cols)
            if t == mask_id:
                color, label, fg = "#3b3b3b", MASK_GLYPH, "#9a9a9a"
            elif h.committed[0, pos]:
                color, label, fg = "#ff9f43", tokenizer.decode([t]), "black"
            elif fixed0[pos]:
                color, label, fg = "#b8e994", tokenizer.decode([t]), "black"
            else:
                color, label, fg = "#a5c8f0", tokenizer.decode([t]), "black"
            ax.add_patch(plt.Rectangle((c + 0.03, r + 0.06), 0.94, 0.88, color=color))
            ax.text(c + 0.5, r + 0.5, label.strip()[:10] or "␣", ha="center", va="center", fontsize=7, color=fg)
        ax.set_title(f"block {h.block}, step {h.step}: {h.masked_left} masks left   "
                     f"(green: prompt/fixed, orange: committed now, blue: earlier)", fontsize=10)

    anim = FuncAnimation(fig, draw, frames=len(history), interval=700)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    anim.save(path, writer=PillowWriter(fps=1.5))
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Loading a checkpoint
# ---------------------------------------------------------------------------------------------


def load_checkpoint(path: str, device: str | None = None):
    """(model, tokenizer, train_config) from a train.py checkpoint, or a UsageError that says
    how to make one."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from modeling import load_pretrained

    if not os.path.isdir(path):
        raise UsageError(f"no checkpoint at {path}; make one with: python train.py --quick-test")
    missing = [f for f in ("config.json", "diffusion_config.json") if not os.path.isfile(os.path.join(path, f))]
    if not any(f.endswith((".safetensors", ".bin")) for f in os.listdir(path)):
        missing.append("model weights")
    if not any(os.path.isfile(os.path.join(path, f)) for f in ("tokenizer.json", "vocab.json", "vocab.txt")):
        missing.append("tokenizer")
    if missing:
        raise UsageError(f"incomplete checkpoint {path}: missing {', '.join(missing)} "
                         f"(was training interrupted? rerun python train.py --quick-test)")
    cfg = load_train_config(path)
    tokenizer = load_pretrained(AutoTokenizer, path)
    model = load_pretrained(AutoModelForMaskedLM, path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer, cfg


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(parser, GenConfig)
    for name, options in GEN_CHOICES.items():  # show the choices in --help
        parser._option_string_actions["--" + name].choices = options
    gc = GenConfig(**given(parser.parse_args(argv), GenConfig))
    validate_gen(gc)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # quiet by default: no weight-loading bars
    model, tokenizer, tcfg = load_checkpoint(gc.checkpoint)
    g = torch.Generator().manual_seed(gc.seed)

    t0 = time.time()
    ids, history, prompt_len = generate(model, tokenizer, gc, tcfg.max_len, g)
    seconds = time.time() - t0
    texts = [tokenizer.decode(row, skip_special_tokens=True) for row in ids.tolist()]

    if gc.show_steps:
        print(format_steps(history, tokenizer))
        print()
    for i, text in enumerate(texts):
        print(f"--- sample {i + 1}/{len(texts)} ---\n{text}")
    print(f"({len(history)} forward passes, {seconds:.2f}s for {len(texts)} sample(s))")
    if gc.animate:
        animate(history, tokenizer, gc.animate, prompt_len)
        print(f"wrote {gc.animate}")
    if gc.out:
        os.makedirs(os.path.dirname(os.path.abspath(gc.out)), exist_ok=True)
        with open(gc.out, "a") as f:
            f.write(json.dumps({"config": dataclasses.asdict(gc), "window": tcfg.max_len,
                                "samples": texts, "forward_passes": len(history), "seconds": round(seconds, 3)}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
