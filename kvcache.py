"""Fast-dLLM's block cache for bidirectional encoders: a pass computes only some positions of the
canvas, and the keys/values of the others come from the last full pass.

    BlockCache()                         one canvas's keys/values per attention module
    encode(model, tokens, cache, span)   hidden states [B, L', H]: every position (span None; the
                                         pass records every key/value), or positions span = (a, b)
                                         only, attending to the cached keys/values of the rest
    supports(model)                      whether the model's family is one this cache knows

Fast-dLLM (Wu et al. 2025, NVlabs/Fast-dLLM llada/generate.py): at the first step of a block the
whole sequence runs once and its keys/values are kept. "prefix" then runs the block and everything
after it at every step (generate_with_prefix_cache keeps the keys/values before the block); "dual"
runs the block alone (generate_with_dual_cache also keeps those after it). The model is
bidirectional, so the cached keys/values of the finished context were computed while the block was
still masked: stale once the block fills in. That is the approximation, paid for in quality and
measured (experiments/speed_frontier.py); rebuilt before every pass, the cached pass is exact
(tests/test_generate.py checks identical tokens for ModernBERT, BERT and RoBERTa).

It runs through each family's own attention modules: the model's attention implementation is set
to ATTENTION, which is PyTorch SDPA (what the models load with) unless a BlockCache is passed to the
forward; then the module's fresh keys/values are spliced into the cached ones at `span`. Positions
stay right because the positions of the span are passed in: rotary angles (ModernBERT) and
absolute position embeddings (BERT; RoBERTa counting from its padding index + 1). A ModernBERT in
eval mode takes fast_modernbert's forward instead, which makes the same splice layer by layer.
"""

from dataclasses import dataclass, field

import torch

ATTENTION = "diffusion_block_cache"


def arange_positions(model, tokens):
    return torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)  # [B, L]


def roberta_positions(model, tokens):
    """RoBERTa's own numbering: padding_idx + 1 onwards, skipping padding (the canvas has none)."""
    emb = model.base_model.embeddings
    return emb.create_position_ids_from_input_ids(tokens, emb.padding_idx)  # [B, L]


# class name -> (model, tokens [B, L]) -> the position ids [B, L] the model gives the whole canvas
POSITIONS = {
    "ModernBertForMaskedLM": arange_positions,
    "BertForMaskedLM": arange_positions,
    "RobertaForMaskedLM": roberta_positions,
    "XLMRobertaForMaskedLM": roberta_positions,
}


@dataclass
class BlockCache:
    """Keys and values [B, heads, L, d] of every canvas position per attention module (per layer
    index under fast_modernbert), from the last full pass; `span` = the positions the current pass
    computes (None = all of them; read by cached_attention)."""
    kv: dict = field(default_factory=dict)
    span: tuple | None = None


def cached_attention(module, query, key, value, attention_mask, block_cache: BlockCache | None = None, **kwargs):
    """SDPA, with a BlockCache: a full pass records (key, value); a span pass attends its queries
    to the recorded keys/values with its own spliced in at the span."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if block_cache is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    span = block_cache.span
    if span is None:
        block_cache.kv[module] = (key, value)
    else:
        a, b = span
        k0, v0 = block_cache.kv[module]
        key = torch.cat([k0[:, :, :a], key, k0[:, :, b:]], 2)  # [B, h, L, d]
        value = torch.cat([v0[:, :, :a], value, v0[:, :, b:]], 2)  # [B, h, L, d]
    window = getattr(module, "sliding_window", None)  # ModernBERT's local layers: |i - j| < window
    mask = None
    if window is not None:
        L = key.shape[2]
        q = torch.arange(*(span or (0, L)), device=key.device)  # [Lq] absolute positions of the queries
        mask = (q[:, None] - torch.arange(L, device=key.device)[None]).abs() < window  # [Lq, L]
    kwargs.pop("is_causal", None)
    return sdpa_attention_forward(module, query, key, value, mask, is_causal=False, **kwargs)


def register() -> None:
    """ATTENTION as an attention implementation, with SDPA's masks (so it is SDPA without a cache)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, cached_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def supports(model) -> bool:
    from modeling import HEADS

    name = type(model).__name__
    return name in POSITIONS and name in HEADS


def encode(model, tokens, cache: BlockCache, span: tuple | None = None, rows=None):
    """Hidden states [B, L, H] of tokens [B, L] (span None: every position, each attention
    module's keys/values recorded in `cache`) or [B, b - a, H] of positions span = (a, b) alone,
    attending to the keys/values cached for the rest; with rows (a [B, L'] mask or [B, c] index
    into those positions) only the hidden states there, [N, H] row-major."""
    import fast_modernbert
    from modeling import HEADS, at_rows

    if fast_modernbert.supports(model):  # the same splice in its own forward (layer index -> keys/values)
        return fast_modernbert.encode(model, tokens, cache, span, rows)
    if model.config._attn_implementation != ATTENTION:
        register()
        model.config._attn_implementation = ATTENTION  # SDPA whenever no cache is passed
    positions = POSITIONS[type(model).__name__](model, tokens)  # [B, L]
    if span is not None:
        tokens, positions = tokens[:, span[0]:span[1]], positions[:, span[0]:span[1]]
    cache.span = span
    encoder = getattr(model, HEADS[type(model).__name__][0])
    hidden = encoder(input_ids=tokens, position_ids=positions, block_cache=cache).last_hidden_state  # [B, L', H]
    return hidden if rows is None else at_rows(hidden, rows)
