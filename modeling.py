"""Models: build or load a masked LM, and run its LM head only where it is needed.

    load_pretrained(cls, name)       from_pretrained with a one-line error when offline / missing
    build_model(cfg, tokenizer)      from-scratch model (cfg.model == "scratch") or a pretrained one
    masked_logits(model, ids, attn, where)   logits [N, V] at the N positions where `where` is True
    masked_lm_loss(model, batch, ...)        per-token CE at masked positions, the training loss
    compile_model(model)                     torch.compile in place, keeping the masked-only head

The vocabulary projection (hidden -> V logits) is the single largest matmul of a small MLM, and
only masked positions carry loss; `masked_logits` runs the encoder on every position but the
head on masked ones alone. It knows the heads of RoBERTa, BERT, DistilBERT and ModernBERT;
any other architecture runs its full forward and the masked rows are picked out afterwards.
"""

import os

import torch
import torch.nn.functional as F

from config import TrainConfig, UsageError


def load_pretrained(cls, name: str, **kwargs):
    """cls.from_pretrained(name) that turns 'no network' / 'no such folder' into a UsageError."""
    try:
        return cls.from_pretrained(name, **kwargs)
    except OSError as e:
        where = "local folder" if os.path.isdir(name) else "hub model"
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        hint = ("" if os.path.isdir(name) else
                "; without network, train from scratch offline with --model scratch (or --quick-test)")
        raise UsageError(f"cannot load {where} {name!r} ({first}){hint}")


def autocast(device, precision: str = "auto"):
    """bf16 autocast on a GPU that has it, unless the run trains in fp32 (or fp16)."""
    if device.type == "cuda" and precision == "fp16":
        return torch.autocast("cuda", dtype=torch.float16)
    if device.type == "cuda" and precision in ("auto", "bf16") and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # shared (tied) tensors count once


def scratch_model_config(cfg: TrainConfig, tokenizer):
    from transformers import BertConfig, ModernBertConfig, RobertaConfig

    common = dict(vocab_size=len(tokenizer), hidden_size=cfg.scratch_hidden,
                  num_hidden_layers=cfg.scratch_layers, num_attention_heads=cfg.scratch_heads,
                  intermediate_size=cfg.scratch_intermediate, pad_token_id=tokenizer.pad_token_id,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if cfg.scratch_arch == "modernbert":
        return ModernBertConfig(**common, max_position_embeddings=cfg.max_len,
                                cls_token_id=tokenizer.bos_token_id, sep_token_id=tokenizer.eos_token_id,
                                global_attn_every_n_layers=1, local_attention=cfg.max_len,
                                embedding_dropout=0.0, mlp_dropout=0.0, attention_dropout=0.0)
    if cfg.scratch_arch == "roberta":  # RoBERTa offsets positions by pad_token_id + 1
        return RobertaConfig(**common, max_position_embeddings=cfg.max_len + tokenizer.pad_token_id + 1)
    return BertConfig(**common, max_position_embeddings=cfg.max_len)


def build_model(cfg: TrainConfig, tokenizer):
    from transformers import AutoModelForMaskedLM

    if cfg.model == "scratch":
        torch.manual_seed(cfg.seed)  # weight init is the one place transformers uses the global RNG
        return AutoModelForMaskedLM.from_config(scratch_model_config(cfg, tokenizer), attn_implementation="sdpa")
    model = load_pretrained(AutoModelForMaskedLM, cfg.model)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and getattr(model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limit -= model.config.pad_token_id + 1
    if limit is not None and cfg.max_len > limit:
        raise UsageError(f"--max-len {cfg.max_len} exceeds {cfg.model}'s {limit} positions")
    return model


# ---------------------------------------------------------------------------------------------
# LM head on selected positions only
# ---------------------------------------------------------------------------------------------

# class name -> (attribute of the encoder, function (model, hidden [N, H]) -> logits [N, V])
HEADS = {
    "RobertaForMaskedLM": ("roberta", lambda m, h: m.lm_head(h)),
    "XLMRobertaForMaskedLM": ("roberta", lambda m, h: m.lm_head(h)),
    "BertForMaskedLM": ("bert", lambda m, h: m.cls(h)),
    "ModernBertForMaskedLM": ("model", lambda m, h: m.decoder(m.head(h))),
    "DistilBertForMaskedLM": ("distilbert", lambda m, h: m.vocab_projector(
        m.vocab_layer_norm(m.activation(m.vocab_transform(h))))),
}


def masked_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  where: torch.Tensor, masked_only: bool = True) -> torch.Tensor:
    """Logits [N, V] at the N positions where `where` [B, L] is True (row-major order)."""
    head = HEADS.get(type(model).__name__) if masked_only else None
    if head is None:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # [B, L, V]
        return logits[where]  # [N, V]
    encoder = getattr(model, head[0])
    hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, L, H]
    return head[1](model, hidden[where])  # [N, V]


def compile_model(model, masked_only: bool = True) -> None:
    """torch.compile, in place, what masked_logits runs: the encoder when the head is known (its
    input is [B, L] every step, while the head's row count changes with every mask), else the
    whole model. In place keeps the class (HEADS finds it), the state-dict keys and
    save_pretrained; a torch.compile wrapper would hide the class and lose the masked-only head."""
    head = HEADS.get(type(model).__name__) if masked_only else None
    (getattr(model, head[0]) if head else model).compile()


def masked_lm_loss(model, input_ids, attention_mask, labels, mask_rate=None, weighting: str = "mean",
                   masked_only: bool = True):
    """(loss, per_token_ce [N], row_of_each [N]) over positions with a label.

    "mean": average CE over masked tokens (the seed's objective).
    "elbo": MDLM's weighting, sum_i (1/t_i) * sum_{masked in i} CE / (number of label-able
            positions) -- in expectation the per-token NLL bound."""
    where = labels != -100  # [B, L]
    logits = masked_logits(model, input_ids, attention_mask, where, masked_only)  # [N, V]
    ce = F.cross_entropy(logits.float(), labels[where], reduction="none")  # [N]
    rows = where.nonzero()[:, 0]  # [N] which sequence each masked token belongs to
    if weighting == "elbo":
        if mask_rate is None:
            raise ValueError("elbo weighting needs mask_rate")
        maskable = torch.round(where.sum(1) / mask_rate.to(ce.device).clamp(min=1e-6))  # [B] ~ n per row
        loss = (ce / mask_rate.to(ce.device)[rows]).sum() / maskable.sum().clamp(min=1)
    else:
        loss = ce.mean()
    return loss, ce, rows
