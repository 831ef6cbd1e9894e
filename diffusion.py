"""The forward process of discrete text diffusion, and the numbers that measure a model of it.

One noise schedule serves training and generation (as in MaskGIT / MDLM):

    SCHEDULES[name](r) -> fraction of positions still masked at progress r in [0, 1]
                          (r = 0: all masked, the start of generation; r = 1: none masked)
    training:   sample_rates draws r ~ U(0, 1) and masks the fraction SCHEDULES[name](r)
                (or a rate from the seed's fixed levels, --mask-distribution levels);
                --antithetic spreads a batch's r evenly over [0, 1) (progress_draws)
    generation: mask_counts leaves round(n * SCHEDULES[name](s / steps)) masks after step s

Masking (pure functions, explicit generators):
    prefix_lengths(n, mode, prefix_len, g)              -> [n] prompt tokens kept visible
    protected_positions(ids, never_masked, prefix)      -> [B, L] bool, never masked nor scored:
                           the frame (<s> first, the closing </s> last), <pad> and the like, the prefix;
                           a </s> inside the block (a document's end, or padding after it) is text
    mask_tokens(ids, rates, protected, mask_id, g)      -> (inputs, labels)
    realized_rates(labels, protected)                   -> [B] k/n actually masked (the 1/t weight's t)

Measuring a model on held-out blocks:
    level_losses(...)      mean CE over masked tokens at fixed masking rates (the training curves)
    elbo_estimate(...)     the NLL upper bound, nats/token with its standard error -- the one
                           estimator train.py's evaluation and evaluate.py both report
"""

import math

import torch

from tokens import decode_text, never_masked_ids, row_texts

IGNORE = -100  # label of positions that carry no loss


# ---------------------------------------------------------------------------------------------
# Noise schedules: progress r in [0, 1] -> fraction still masked (1 at r = 0, 0 at r = 1)
# ---------------------------------------------------------------------------------------------


def linear(r: float) -> float:
    return 1.0 - r


def cosine(r: float) -> float:
    # MaskGIT: few tokens early when context is thin, many late when it is rich
    return math.cos(0.5 * math.pi * r)


def exponential(r: float, rate: float = 5.0) -> float:
    # many tokens early, a long careful tail
    return (math.exp(-rate * r) - math.exp(-rate)) / (1.0 - math.exp(-rate))


SCHEDULES = {"linear": linear, "cosine": cosine, "exponential": exponential}


def mask_counts(schedule: str, n: int, steps: int) -> list[int]:
    """Masks left after each step 0..steps for n generated positions: starts at n, ends at 0,
    never increases. A step whose count does not drop commits nothing and is skipped."""
    f = SCHEDULES[schedule]
    counts = [n] + [round(n * f(s / steps)) for s in range(1, steps)] + [0]
    for i in range(1, len(counts)):
        counts[i] = min(counts[i], counts[i - 1])
    return counts


def progress_draws(n: int, antithetic: bool, g: torch.Generator) -> torch.Tensor:
    """[n] progress values r in [0, 1). Independent uniforms, or MDLM's low-discrepancy draw:
    one u ~ U[0, 1) and r_i = (u + i/n) mod 1, exactly one r in each [j/n, (j+1)/n), so every
    batch covers the whole range of rates evenly (same mean, less variance in the batch loss)."""
    if not antithetic:
        return torch.rand(n, generator=g)  # [n]
    u = torch.rand(1, generator=g)  # [1]
    return (u + torch.arange(n) / n) % 1.0  # [n]


def sample_rates(n: int, cfg, g: torch.Generator) -> torch.Tensor:
    """n training masking rates for cfg (a TrainConfig); all equal (one per batch) unless
    cfg.per_sample_rate. Progress r in [0, 1) (progress_draws: independent, or antithetic with
    cfg.antithetic) picks a level of cfg.levels() ("levels"), or a schedule name maps it to
    mask_min + (1 - mask_min) * schedule(r), a rate in (mask_min, 1] (linear: uniform there)."""
    draws = n if cfg.per_sample_rate else 1
    levels = torch.tensor(cfg.levels())
    if cfg.mask_distribution == "levels" and not cfg.antithetic:  # the seed's draw, kept bit for bit
        rates = levels[torch.randint(len(levels), (draws,), generator=g)]  # [draws]
    else:
        r = progress_draws(draws, cfg.antithetic, g)  # [draws]
        if cfg.mask_distribution == "levels":
            rates = levels[(r * len(levels)).long().clamp(max=len(levels) - 1)]  # [draws]
        else:
            f = SCHEDULES[cfg.mask_distribution]
            rates = torch.tensor([cfg.mask_min + (1.0 - cfg.mask_min) * f(float(x)) for x in r])  # [draws]
    return rates if cfg.per_sample_rate else rates.expand(n).clone()  # [n]


# ---------------------------------------------------------------------------------------------
# Masking
# ---------------------------------------------------------------------------------------------


def prefix_lengths(n: int, mode: str, prefix_len: int, g: torch.Generator) -> torch.Tensor:
    """Per-sequence count of leading content tokens kept visible (the prompt)."""
    if mode == "none" or prefix_len == 0:
        return torch.zeros(n, dtype=torch.long)
    if mode == "fixed":
        return torch.full((n,), prefix_len, dtype=torch.long)
    return torch.randint(prefix_len + 1, (n,), generator=g)  # variable: uniform in [0, prefix_len]


def protected_positions(ids: torch.Tensor, never_masked: list[int], prefix: torch.Tensor) -> torch.Tensor:
    """[B, L] True where a token is never masked, so never predicted nor scored: the block's frame
    (position 0, <s>, and position L-1, the closing </s>: every training block and every generation
    canvas has both), tokens in never_masked (tokens.never_masked_ids: <pad>, <unk>, ...) and the
    prefix. The prefix counts content tokens after the leading <s>, as a prompt does at generation.
    A </s> anywhere else is a document's end (or padding after it): masked and scored like text.
    The collator, level_losses, elbo_estimate, the AR baseline's held-out NLL and the experiments
    all use this one definition."""
    B, L = ids.shape
    special = torch.isin(ids, torch.tensor(never_masked, dtype=ids.dtype, device=ids.device))  # [B, L]
    pos = torch.arange(L, device=ids.device).expand(B, L)  # [B, L]
    frame = (pos == 0) | (pos == L - 1)  # [B, L] <s> ... </s>
    return special | frame | (pos <= prefix.to(ids.device)[:, None])


def mask_tokens(ids: torch.Tensor, rates: torch.Tensor, protected: torch.Tensor, mask_id: int,
                g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask exactly max(1, round(rate * n)) of the n unprotected positions of each row,
    chosen uniformly. Returns (inputs with <mask>, labels = original ids there, -100 elsewhere)."""
    B, L = ids.shape
    n = (~protected).sum(1)  # [B] maskable positions per row
    k = torch.clamp(torch.round(rates.float() * n).long(), min=1)  # [B]
    k = torch.minimum(k, n)  # rows with nothing maskable stay clean
    scores = torch.rand(B, L, generator=g).to(ids.device)  # [B, L]
    scores = scores.masked_fill(protected, 2.0)  # protected positions sort last
    rank = scores.argsort(1).argsort(1)  # [B, L] rank of each position's score in its row
    masked = rank < k[:, None]  # [B, L]
    inputs = ids.masked_fill(masked, mask_id)
    labels = ids.masked_fill(~masked, IGNORE)
    return inputs, labels


def realized_rates(labels: torch.Tensor, protected: torch.Tensor) -> torch.Tensor:
    """[B] the fraction k/n of each row's maskable positions that mask_tokens actually masked
    (the drawn rate rounded to a whole count): the t of the 1/t ELBO weight (0 for a row with
    nothing maskable)."""
    return (labels != IGNORE).sum(1) / (~protected).sum(1).clamp(min=1)  # [B]


# ---------------------------------------------------------------------------------------------
# Held-out measurements
# ---------------------------------------------------------------------------------------------


def report_levels(cfg) -> list[float]:
    """Levels that losses are reported at: the training levels, or 0.1..1.0 for continuous rates."""
    return cfg.levels() if cfg.mask_distribution == "levels" else [round(0.1 * i, 1) for i in range(1, 11)]


def nearest_level(rate: float, levels: list[float]) -> float:
    return min(levels, key=lambda lv: abs(lv - rate))


def eval_batches(val_ds, batch_size: int, n_batches: int) -> list[torch.Tensor]:
    """The first n_batches of the held-out set, always the same ones: [b, L] id tensors."""
    n = min(len(val_ds), batch_size * n_batches)
    ids = val_ds[:n]["input_ids"]  # [n, L]
    return [ids[i:i + batch_size] for i in range(0, n, batch_size)]


def bound_prefix(cfg) -> int:
    """Content tokens the bound conditions on: 0 (every content token scored), in distribution
    for "variable" and "none" prefix training; a model trained with a fixed prefix has never seen
    fewer visible tokens, so it gets its own prefix_len."""
    return cfg.prefix_len if cfg.prefix_mode == "fixed" else 0


@torch.no_grad()
def level_losses(model, batches, tokenizer, cfg, levels: list[float], seed: int = 0) -> dict:
    """Mean CE over masked tokens at each fixed masking rate, with the same masks every call
    (seeded per level) so evaluations are comparable across training."""
    from modeling import autocast, masked_lm_loss

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    special = never_masked_ids(tokenizer)
    out = {}
    for i, level in enumerate(levels):
        g = torch.Generator().manual_seed(seed + i)
        total, count = 0.0, 0
        for ids in batches:
            prefix = prefix_lengths(len(ids), cfg.prefix_mode, cfg.prefix_len, g)
            inputs, labels = mask_tokens(ids, torch.full((len(ids),), level),
                                         protected_positions(ids, special, prefix), tokenizer.mask_token_id, g)
            with autocast(device, cfg.precision):
                _, ce, _ = masked_lm_loss(model, inputs.to(device), None, labels.to(device))
            total += ce.sum().item()
            count += ce.numel()
        out[level] = total / max(count, 1)
    model.train(was_training)
    return out


def stratified_ks(n: torch.Tensor, draws: int, g: torch.Generator) -> torch.Tensor:
    """[B, draws] masked-token counts, each k ~ U{1..n} but stratified: draw r takes u in
    [r/draws, (r+1)/draws), so the k are spread evenly (each 1..n exactly once when draws == n)."""
    u = (torch.arange(draws) + torch.rand(len(n), draws, generator=g)) / draws  # [B, R]
    return torch.minimum((u * n[:, None]).long() + 1, n[:, None])  # [B, R]


@torch.no_grad()
def elbo_terms(model, ids: torch.Tensor, protected: torch.Tensor, mask_id: int, draws: int,
               g: torch.Generator, precision: str = "auto") -> torch.Tensor:
    """[B, draws] one-draw estimates of each row's NLL bound: (n/k) * sum of CE at k masked
    positions, k stratified over U{1..n}, the k positions uniform among the n unprotected ones.

    This is the discrete-time bound of absorbing diffusion (MDLM; the any-order chain rule plus
    Jensen): -log p(x) <= E_{k ~ U{1..n}} [(n/k) * sum over k random masked positions of CE]."""
    from modeling import autocast, masked_lm_loss

    B = len(ids)
    n = (~protected).sum(1)  # [B]
    k = stratified_ks(n, draws, g).reshape(-1)  # [B*R]
    n = n.repeat_interleave(draws)  # [B*R]
    # a rate of k/n makes mask_tokens mask exactly round(k/n * n) = k positions
    inputs, labels = mask_tokens(ids.repeat_interleave(draws, 0), k / n, protected.repeat_interleave(draws, 0),
                                 mask_id, g)  # [B*R, L]
    device = next(model.parameters()).device
    with autocast(device, precision):
        _, ce, rows = masked_lm_loss(model, inputs.to(device), None, labels.to(device))  # [N], [N]
    sums = torch.zeros(B * draws).index_add_(0, rows.cpu(), ce.float().cpu())  # [B*R]
    return (n / k * sums).view(B, draws)  # [B, R]


@torch.no_grad()
def elbo_estimate(model, blocks: torch.Tensor, tokenizer, prefix: int, draws: int, batch_size: int,
                  g: torch.Generator, precision: str = "auto", progress: bool = False) -> dict:
    """The held-out NLL bound over blocks [M, L]: every position protected_positions leaves open is
    scored (content after `prefix`, document-ending </s> included); the frame is conditioned on. Returns nats per scored token with its Monte Carlo
    standard error, perplexity, and the per-block terms' totals (for bits per byte)."""
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    special = never_masked_ids(tokenizer)
    per_batch = max(1, batch_size // draws)
    bound, mc_var, n_tok = [], [], 0
    starts = range(0, len(blocks), per_batch)
    for i in tqdm(starts, desc="held-out ELBO", leave=False, disable=not progress):
        ids = blocks[i:i + per_batch]  # [b, L]
        protected = protected_positions(ids, special, torch.full((len(ids),), prefix, dtype=torch.long))  # [b, L]
        terms = elbo_terms(model, ids, protected, tokenizer.mask_token_id, draws, g, precision)  # [b, R]
        bound.append(terms.mean(1))
        mc_var.append(terms.var(1) / draws)  # conservative: stratification only lowers the variance
        n_tok += int((~protected).sum())
    model.train(was_training)
    bound, mc_var = torch.cat(bound), torch.cat(mc_var)  # [M]
    nats = float(bound.sum()) / n_tok
    return {"nats_per_token": nats, "nats_stderr": math.sqrt(float(mc_var.sum())) / n_tok,
            "perplexity": math.exp(min(nats, 50)), "scored_tokens": n_tok, "blocks": len(blocks),
            "prefix": prefix, "draws": draws}


@torch.no_grad()
def show_predictions(model, ids: torch.Tensor, tokenizer, rates=(0.15, 0.5, 0.9), seed: int = 0) -> list[dict]:
    """One held-out block [L] masked at a few rates, with the model's argmax fill at each mask:
    [{rate, accuracy, text}], text showing each fill in [brackets]."""
    from modeling import autocast, masked_logits

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    protected = protected_positions(ids[None], never_masked_ids(tokenizer), torch.zeros(1, dtype=torch.long))
    out = []
    for rate in rates:
        inputs, labels = mask_tokens(ids[None], torch.tensor([rate]), protected, tokenizer.mask_token_id, g)
        where = labels != IGNORE  # [1, L]
        with autocast(device):
            pred = masked_logits(model, inputs.to(device), None, where.to(device)).argmax(-1).cpu()  # [N]
        row = ids[1:-1].tolist()
        masked = where[0, 1:-1].tolist()
        texts = row_texts(tokenizer, row, masked)  # the text around the fills, decoded run by run
        fills = iter(pred.tolist())
        pieces = [" [" + decode_text(tokenizer, [next(fills)]).strip() + "]" if m else t for m, t in zip(masked, texts)]
        out.append({"rate": rate, "accuracy": (pred == labels[where]).float().mean().item(),
                    "text": "".join(pieces).replace("\n", " ")})
    model.train(was_training)
    return out
