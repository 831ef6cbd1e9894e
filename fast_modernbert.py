"""ModernBERT's encoder for generation, in plain torch ops: the same math as transformers'
eval-mode forward (ModernBertModel with SDPA), with less work per call.

    supports(model)                          a ModernBertForMaskedLM in eval mode with default rotary tables
    encode(model, tokens, cache=None, span=None, rows=None)
                                             hidden states [B, L, H] of tokens [B, L]; with a
                                             kvcache.BlockCache, span = (a, b) computes positions a..b-1
                                             only, attending to the cached keys/values of the rest;
                                             rows: only those positions' [N, H] (the last layer's
                                             MLP runs there alone)

Why: a denoising step runs the whole encoder once, and at the quick-test size (2 layers, 64
positions) transformers' per-call machinery -- building the attention masks, recomputing the
rotary tables, decorators and output capture, module dispatch -- is a large share of each pass.
Here the rotary tables and sliding-window masks are computed once per shape and kept (lru_cache),
each layer is a dozen tensor ops, and the last layer's output projection and MLP run only at the
rows a step reads. tests/test_bench.py checks the hidden states against transformers' forward
(global and local layers, full and spliced passes, selected rows) and that the block cache
through this path reproduces the uncached tokens.

Training, evaluation and every other family keep transformers' forward; decoding.py reaches this
through modeling.encoder_hidden and kvcache.encode.
"""

import functools

import torch
import torch.nn.functional as F

from modeling import at_rows


def supports(model) -> bool:
    """Whether encode() computes this model's forward: a ModernBertForMaskedLM, not training
    (dropout), every layer type on default rotary tables."""
    if type(model).__name__ != "ModernBertForMaskedLM" or model.training:
        return False
    rope = getattr(model.config, "rope_parameters", None) or {}
    return all((rope.get(t) or {}).get("rope_type", "default") == "default" and (rope.get(t) or {}).get("rope_theta")
               for t in set(model.config.layer_types))


@functools.lru_cache(maxsize=64)
def rotary(theta: float, dim: int, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, signed sin) [length, dim] for positions 0..length-1: ModernBertRotaryEmbedding's
    default tables (inverse frequencies theta^(-2i/dim), each angle twice), the sine's first half
    negated for rotate()."""
    inv_freq = (1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))).to(device)  # [dim/2]
    freqs = torch.arange(length, device=device).float()[:, None] * inv_freq  # [length, dim/2]
    angles = torch.cat((freqs, freqs), -1)  # [length, dim]
    sin = angles.sin()
    return angles.cos(), torch.cat((-sin[:, :dim // 2], sin[:, dim // 2:]), -1)  # cos, signed sin (rotate)


@functools.lru_cache(maxsize=64)
def window_mask(a: int, b: int, length: int, half: int, device: torch.device) -> torch.Tensor | None:
    """[b - a, length] bool: query positions a..b-1 may see keys within `half` positions either
    side (ModernBERT's local layers, |i - j| <= local_attention // 2); None when that is all of them."""
    q = torch.arange(a, b, device=device)[:, None]  # [Lq, 1]
    mask = (q - torch.arange(length, device=device)[None]).abs() <= half  # [Lq, L]
    return None if bool(mask.all()) else mask


def rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x [..., L, d] in float32, back in x's dtype: transformers' x cos +
    rotate_half(x) sin, where rotate_half(x) = (-x2, x1) = roll(x, d/2) with the first half's sign
    moved into signed_sin = (-sin1, sin2) (a sign flip is exact: the same numbers)."""
    xf = x.float()
    return (xf * cos + xf.roll(x.shape[-1] // 2, -1) * signed_sin).to(x.dtype)


def encode(model, tokens: torch.Tensor, cache=None, span: tuple | None = None,
           rows: torch.Tensor | None = None) -> torch.Tensor:
    """Hidden states [B, L', H] after the final norm. tokens [B, L] is the whole canvas; span
    None computes every position (and, with a cache, records each layer's keys/values in
    cache.kv), span (a, b) computes a..b-1 only, their keys/values spliced into the cached ones.
    rows (a [B, L'] mask or [B, c] index into the positions computed): only the hidden states
    there, [N, H] row-major -- the last layer needs every position's keys and values but runs its
    output projection and MLP on those rows alone (a denoising step reads a few of 64)."""
    config, body = model.config, model.model
    a, b = span if span is not None else (0, tokens.shape[1])
    L = tokens.shape[1]
    x = tokens[:, a:b]  # [B, Lq]
    B, Lq = x.shape
    heads = config.num_attention_heads
    d = config.hidden_size // heads
    emb = body.embeddings
    h = F.layer_norm(F.embedding(x, emb.tok_embeddings.weight), emb.norm.normalized_shape, emb.norm.weight,
                     emb.norm.bias, emb.norm.eps)  # [B, Lq, H]
    tables = {}
    for i, layer in enumerate(body.layers):
        kind = config.layer_types[i]
        if kind not in tables:
            cos, sin = rotary(float(config.rope_parameters[kind]["rope_theta"]), d, L, tokens.device)
            half = config.sliding_window if kind == "sliding_attention" else None
            tables[kind] = (cos[a:b], sin[a:b], None if half is None else window_mask(a, b, L, half, tokens.device))
        cos, sin, mask = tables[kind]
        attn, mlp = layer.attn, layer.mlp
        y = h if i == 0 else F.layer_norm(h, layer.attn_norm.normalized_shape, layer.attn_norm.weight,
                                          layer.attn_norm.bias, layer.attn_norm.eps)
        qkv = F.linear(y, attn.Wqkv.weight, attn.Wqkv.bias).view(B, Lq, 3, heads, d).permute(2, 0, 3, 1, 4)
        (q, k), v = rotate(qkv[:2], cos, sin), qkv[2]  # [B, h, Lq, d] each
        if cache is not None:
            if span is None:
                cache.kv[i] = (k, v)
            else:
                k0, v0 = cache.kv[i]
                k = torch.cat([k0[:, :, :a], k, k0[:, :, b:]], 2)  # [B, h, L, d]
                v = torch.cat([v0[:, :, :a], v, v0[:, :, b:]], 2)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=d ** -0.5)  # [B, h, Lq, d]
        o = o.transpose(1, 2).reshape(B, Lq, heads * d)  # [B, Lq, H]
        if rows is not None and i == len(body.layers) - 1:
            o, h = at_rows(o, rows), at_rows(h, rows)  # [N, H]: nothing after this mixes positions
        h = h + F.linear(o, attn.Wo.weight, attn.Wo.bias)
        y = F.layer_norm(h, layer.mlp_norm.normalized_shape, layer.mlp_norm.weight, layer.mlp_norm.bias,
                         layer.mlp_norm.eps)
        up, gate = F.linear(y, mlp.Wi.weight, mlp.Wi.bias).chunk(2, -1)
        h = h + F.linear(mlp.act(up) * gate, mlp.Wo.weight, mlp.Wo.bias)
    norm = body.final_norm
    return F.layer_norm(h, norm.normalized_shape, norm.weight, norm.bias, norm.eps)  # [B, Lq, H] or [N, H]
