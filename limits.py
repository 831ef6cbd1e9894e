"""Bounds that mean something: a size, a count or a product of them that this machine cannot
hold (or that would keep it busy for days) is one line naming the limit, before any work starts.

    free_memory(device)                 bytes free now: MemAvailable on the CPU, the GPU's free memory
    check_fits(what, nbytes, device)    UsageError when `what` needs more than that
    check_passes(what, passes)          UsageError past MAX_FORWARD_PASSES
    check_generation(gc, window, vocab, length, block, device)   a generation's loop and its memory
    check_training(cfg, vocab, params, device)                   one training step's memory

The byte counts are lower bounds (the logits alone, the parameters with their gradients and
AdamW's two moments), so a request is refused only when it cannot fit, never because an estimate
was generous. Torch-free unless asked about a GPU.
"""

import math
import os

from cli import UsageError

MAX_FORWARD_PASSES = 1_000_000  # one request's denoising passes (blocks x steps): hours even for a tiny model
FLOAT = 4  # bytes per float32
SAMPLING_BYTES = 16  # per logit at a sampling step: the logits, their softmax, a sort's values and indices


def human(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1024 or unit == "PB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:.3g} EB"


def free_memory(device: str = "cpu") -> int:
    """Bytes that can still be allocated on `device` ("cpu" or "cuda...")."""
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info()[0]
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(what: str, nbytes: float, device: str = "cpu") -> None:
    free = free_memory(device)
    if nbytes > free:
        where = "the GPU" if str(device).startswith("cuda") else "this machine"
        raise UsageError(f"{what} needs at least {human(nbytes)} of memory; {where} has {human(free)} free")


def check_passes(what: str, passes: float) -> None:
    if passes > MAX_FORWARD_PASSES:
        raise UsageError(f"{what} is {passes:,.0f} denoising steps, more than the {MAX_FORWARD_PASSES:,} one run may "
                         f"take (limits.MAX_FORWARD_PASSES); ask for fewer steps or tokens, or larger blocks")


def check_generation(gc, window: int, vocab: int, length: int, block: int, device: str = "cpu") -> None:
    """A generation of `length` tokens in blocks of `block` (gc: a GenConfig): the loop runs every
    step of every block (a step that commits nothing is skipped, but still counted), each sampling
    step holds logits for every row's open positions, and generate() keeps every step's canvas."""
    blocks = math.ceil(length / block) if block else 0
    check_passes(f"--length {length} in blocks of {block} x --steps {gc.steps}", blocks * gc.steps)
    passes = blocks * min(gc.steps, block) if gc.remdm == "none" else blocks * gc.steps
    rows = gc.num_samples * (2 if gc.cfg > 0 else 1)
    logits = rows * block * vocab * SAMPLING_BYTES
    history = passes * gc.num_samples * (window * 14 + length * 8 / 2)  # canvas, masks, confidence + the text so far
    check_fits(f"--num-samples {gc.num_samples} x {length} tokens (window {window}, vocabulary {vocab:,}, "
               f"{passes:,} steps kept)", logits + history, device)


def scratch_params(cfg, vocab: int) -> int:
    """Parameters of a from-scratch encoder (cfg: a TrainConfig), at least: embeddings and each
    layer's attention and MLP matrices."""
    h, i = cfg.scratch_hidden, cfg.scratch_intermediate
    return vocab * h + cfg.scratch_layers * (4 * h * h + 2 * h * i)


def check_training(cfg, vocab: int, params: int, device: str = "cpu", blocks: int | None = None) -> None:
    """One optimiser step of `params` parameters on cfg's batch (of at most `blocks` training
    blocks): weights, gradients and AdamW's two moments in float32, and the logits of a fully
    masked batch (the highest masking level)."""
    batch = cfg.batch_size if blocks is None else min(cfg.batch_size, blocks)
    weights = 4 * FLOAT * params
    logits = batch * cfg.max_len * vocab * FLOAT
    check_fits(f"training a {params:,}-parameter model on batches of {batch} x {cfg.max_len} tokens "
               f"(vocabulary {vocab:,})", weights + logits, device)
    rows = max(1, 64 // cfg.elbo_draws) * cfg.elbo_draws  # trainer.py's held-out bound: 64 rows a pass, or the draws
    check_fits(f"--elbo-draws {cfg.elbo_draws:,} (the held-out bound's forward pass)",
               weights / 4 + rows * (cfg.max_len - 2) / 2 * vocab * FLOAT, device)
