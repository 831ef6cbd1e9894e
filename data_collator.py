"""Variable-rate masking for a HF Trainer: the collator that turns packed blocks into a
denoising batch. The masking itself is diffusion.py's pure functions (sample_rates,
prefix_lengths, protected_positions, mask_tokens); this file only wires them to a DataLoader.

Each batch: draw a prompt length per row (kept visible), draw a masking rate per row (or one per
batch), mask exactly round(rate * n) of the n maskable positions. Training at every rate from
10% to 100% is what turns a masked LM into a denoiser that can start from a fully masked canvas.
"""

import os

import torch

from diffusion import mask_tokens, prefix_lengths, protected_positions, realized_rates, sample_rates
from tokens import NULL_LABEL, never_masked_ids

STATE_FILE = "collator_state.pt"  # saved in every checkpoint (trainer.DiffusionTrainer._save)


class DiffusionCollator:
    """Stacks packed blocks and masks them at a random rate. Returns input_ids, attention_mask,
    labels and mask_rate ([B], the fraction k/n each row actually has masked: per-level
    logging and the 1/t weighting).

    Randomness comes from its own generator seeded with `seed`; inside a DataLoader worker the
    generator is reseeded with seed + worker id (HF run_mlm's rule), so workers never repeat each
    other's masks and a restarted worker replays its own.

    Resuming: `state_before(k)` is the generator as it was before the k-th batch (a few recent
    ones are kept, because the DataLoader collates a batch ahead of the step that uses it);
    each checkpoint holds it (STATE_FILE) and `resume` restores it, so a resumed run
    draws exactly the masks an uninterrupted run would have drawn. Workers cannot hand their
    generators back: a resumed run with workers reseeds them away from the first run's masks."""

    def __init__(self, tokenizer, cfg, seed: int | None = None):
        self.cfg = cfg
        self.mask_id = tokenizer.mask_token_id
        self.pad_id = tokenizer.pad_token_id
        self.never_masked = never_masked_ids(tokenizer)
        # a label-conditioned generator's blocks hold the label token at position 1: the prefix
        # counts text after it, and --label-dropout swaps it for the null label
        self.labelled = cfg.task == "diffusion" and cfg.labels != "none"
        self.null_label = tokenizer.convert_tokens_to_ids(NULL_LABEL) if self.labelled else None
        self.seed = cfg.seed if seed is None else seed
        self.g = torch.Generator().manual_seed(self.seed)
        self._worker = None
        self.calls = 0  # batches collated (in this process), counting those of the run resumed from
        self.resumed_at = 0
        self.recent = {}  # calls -> generator state before that batch (the last few)

    def _generator(self) -> torch.Generator:
        info = torch.utils.data.get_worker_info()
        if info is not None and self._worker != info.id:
            self._worker = info.id
            self.g = torch.Generator().manual_seed(self.seed + info.id + 1_000_003 * self.resumed_at)
        return self.g

    def state_before(self, k: int):
        """The generator state before batch k (0-based), or None if it is no longer known."""
        return self.recent.get(k, self.state_dict() if k == self.calls else None)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "calls": self.calls, "generator": self.g.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.g.set_state(state["generator"])
        self.calls = self.resumed_at = state["calls"]
        self.recent = {}

    def resume(self, checkpoint: str, step: int, cfg) -> None:
        """Continue from `checkpoint` (optimiser step `step`): the saved generator when there is one
        and no workers, else resume_at."""
        state = os.path.join(checkpoint, STATE_FILE)
        if os.path.isfile(state) and cfg.num_workers == 0:
            self.load_state_dict(torch.load(state, weights_only=False))
        else:
            self.resume_at(step * cfg.grad_accum)

    def resume_at(self, calls: int) -> None:
        """No saved state (workers, older checkpoints): at least draw masks apart from the first run's."""
        self.resumed_at = self.calls = calls
        self.g = torch.Generator().manual_seed(self.seed + 1_000_003 * calls)

    def __call__(self, features) -> dict:
        g = self._generator()
        if self._worker is None:  # main process: remember where this batch started
            self.recent[self.calls] = {"seed": self.seed, "calls": self.calls, "generator": g.get_state()}
            self.recent.pop(self.calls - 16, None)
        self.calls += 1
        ids = torch.stack([torch.as_tensor(f["input_ids"]) for f in features])  # [B, L]
        prefix = prefix_lengths(len(ids), self.cfg.prefix_mode, self.cfg.prefix_len, g)  # [B]
        if self.labelled:
            ids = drop_labels(ids, self.cfg.label_dropout, self.null_label, g)
            prefix = torch.where(prefix > 0, prefix + 1, prefix)  # the label token is not text
        protected = protected_positions(ids, self.never_masked, prefix)  # [B, L]
        rates = sample_rates(len(ids), self.cfg, g)  # [B]
        inputs, labels = mask_tokens(ids, rates, protected, self.mask_id, g)
        # the rate each row was masked at, rounded to its whole count k/n: the t of the 1/t weight
        return {"input_ids": inputs, "attention_mask": (ids != self.pad_id).long(),
                "labels": labels, "mask_rate": realized_rates(labels, protected)}


def drop_labels(ids: torch.Tensor, rate: float, null_id: int, g: torch.Generator) -> torch.Tensor:
    """ids [B, L] with the label token (position 1) of each row replaced by the null label with
    probability `rate`: the model also learns p(x) under the null label (classifier-free guidance's
    u, MDLM-style conditioning dropout). The label token is special, so it is never masked and
    never scored either way."""
    drop = torch.rand(len(ids), generator=g) < rate  # [B]
    out = ids.clone()
    out[drop, 1] = null_id
    return out


class ClassifierCollator(DiffusionCollator):
    """The diffusion collator's batch (masked at a random rate, exactly as the generator trains)
    with `labels` the class of each row: a noisy-input classifier p(y | x_t) sees every masking
    rate the denoising loop will show it (train.py --task classify)."""

    def __call__(self, features) -> dict:
        batch = super().__call__(features)
        batch["labels"] = torch.stack([torch.as_tensor(f["label"]) for f in features]).long()  # [B]
        return batch
