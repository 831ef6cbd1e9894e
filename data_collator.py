"""Variable-rate masking: the forward process of discrete text diffusion.

A masking rate t in (0, 1] is drawn, then exactly round(t * n) of the n maskable positions of a
sequence become <mask> (at least one). Training at every t from 10% to 100% is what turns a
masked LM into a denoiser that can start from a fully masked canvas.

Pure functions (called directly by tests, evaluation and the experiments):
    sample_rates(n, cfg, generator)                         -> [n] rates
    prefix_lengths(n, mode, prefix_len, generator)          -> [n] prefix lengths
    protected_positions(ids, special_ids, prefix)           -> [B, L] bool, never masked
    mask_tokens(ids, rates, protected, mask_id, generator)  -> (inputs, labels)

`DiffusionCollator` wires them together for a HF Trainer.
"""

import math

import torch

from config import TrainConfig

IGNORE = -100  # label of positions that carry no loss


# ---------------------------------------------------------------------------------------------
# Masking-rate distributions: (n, cfg, generator) -> [n] rates in (0, 1]
# ---------------------------------------------------------------------------------------------


def rates_levels(n: int, cfg: TrainConfig, g: torch.Generator) -> torch.Tensor:
    levels = torch.tensor(cfg.levels())
    return levels[torch.randint(len(levels), (n,), generator=g)]


def rates_uniform(n: int, cfg: TrainConfig, g: torch.Generator) -> torch.Tensor:
    u = torch.rand(n, generator=g)
    return cfg.mask_min + (1.0 - cfg.mask_min) * (1.0 - u)  # (mask_min, 1]


def rates_cosine(n: int, cfg: TrainConfig, g: torch.Generator) -> torch.Tensor:
    # MaskGIT's cos(pi/2 * u): more weight on heavy masking, the hard end of generation
    u = torch.rand(n, generator=g)
    return cfg.mask_min + (1.0 - cfg.mask_min) * torch.cos(0.5 * math.pi * u)


MASK_DISTRIBUTIONS = {"levels": rates_levels, "uniform": rates_uniform, "cosine": rates_cosine}


def sample_rates(n: int, cfg: TrainConfig, g: torch.Generator) -> torch.Tensor:
    """n masking rates; all equal (one per batch) unless cfg.per_sample_rate."""
    draw = MASK_DISTRIBUTIONS[cfg.mask_distribution]
    if cfg.per_sample_rate:
        return draw(n, cfg, g)  # [n]
    return draw(1, cfg, g).expand(n).clone()  # [n]


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


def protected_positions(ids: torch.Tensor, special_ids: list[int], prefix: torch.Tensor) -> torch.Tensor:
    """[B, L] True where a token must never be masked: special/padding tokens and the prefix.
    The prefix counts content tokens after the leading <s>, as a prompt does at generation."""
    B, L = ids.shape
    special = torch.isin(ids, torch.tensor(special_ids, device=ids.device))  # [B, L]
    pos = torch.arange(L, device=ids.device).expand(B, L)  # [B, L]
    return special | (pos <= prefix.to(ids.device)[:, None])  # position 0 is <s>


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


# ---------------------------------------------------------------------------------------------
# Collator for the HF Trainer
# ---------------------------------------------------------------------------------------------


def special_token_ids(tokenizer) -> list[int]:
    return sorted(set(tokenizer.all_special_ids) - {tokenizer.mask_token_id})


class DiffusionCollator:
    """Stacks packed blocks and masks them at a random rate. Returns input_ids, attention_mask,
    labels and mask_rate ([B], used for per-level logging and 1/t weighting).

    Randomness comes from its own generator seeded with `seed` (+ worker id inside DataLoader
    workers, so workers do not repeat each other's masks)."""

    def __init__(self, tokenizer, cfg: TrainConfig, seed: int | None = None):
        self.cfg = cfg
        self.mask_id = tokenizer.mask_token_id
        self.pad_id = tokenizer.pad_token_id
        self.special_ids = special_token_ids(tokenizer)
        self.seed = cfg.seed if seed is None else seed
        self.g = torch.Generator().manual_seed(self.seed)
        self._worker = None

    def _generator(self) -> torch.Generator:
        info = torch.utils.data.get_worker_info()
        if info is not None and self._worker != info.id:
            self._worker = info.id
            self.g = torch.Generator().manual_seed(self.seed + info.id)
        return self.g

    def __call__(self, features) -> dict:
        g = self._generator()
        ids = torch.stack([torch.as_tensor(f["input_ids"]) for f in features])  # [B, L]
        prefix = prefix_lengths(len(ids), self.cfg.prefix_mode, self.cfg.prefix_len, g)  # [B]
        protected = protected_positions(ids, self.special_ids, prefix)  # [B, L]
        rates = sample_rates(len(ids), self.cfg, g)  # [B]
        inputs, labels = mask_tokens(ids, rates, protected, self.mask_id, g)
        return {"input_ids": inputs, "attention_mask": (ids != self.pad_id).long(),
                "labels": labels, "mask_rate": rates}
