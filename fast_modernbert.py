"""ModernBERT's encoder and LM head for generation, in plain torch ops: the same math as
transformers' eval-mode forward (ModernBertModel with SDPA, then decoder(head(.))), with less work
per call.

    supports(model)                          a ModernBertForMaskedLM in eval mode with default rotary tables
    encode(model, tokens, cache=None, span=None, rows=None)
                                             hidden states [B, L, H] of tokens [B, L]; with a
                                             kvcache.BlockCache, span = (a, b) computes positions a..b-1
                                             only, attending to the cached keys/values of the rest;
                                             rows: only those positions' [N, H] (the last layer's
                                             queries, attention and MLP run there alone)
    head(model, hidden)                      logits [N, V] of hidden states [N, H]

Why: a denoising step runs the whole encoder once, and at the quick-test size (2 layers, 64
positions) transformers' per-call machinery -- building the attention masks, recomputing the
rotary tables, decorators and output capture, module dispatch, config reads -- is a large share
of each pass. Here the rotary tables and sliding-window masks are computed once per shape and kept
(lru_cache), the weights are gathered once per model (Weights: the model's own Parameter objects,
read as plain attributes), each layer is a dozen tensor ops, and the last layer computes keys and
values everywhere but queries, attention, output projection and MLP only at the rows a step
reads. tests/test_bench.py checks the hidden states and logits against transformers' modules
(global and local layers, full and spliced passes, selected rows, a ragged mask) and that the
block cache through this path reproduces the uncached tokens.

Training, evaluation and every other family keep transformers' forward; decoding.py reaches this
through modeling.encoder_hidden, modeling.head_logits and kvcache.encode.
"""

import functools
import weakref
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from modeling import index_rows


def supports(model) -> bool:
    """Whether encode() computes this model's forward: a ModernBertForMaskedLM, not training
    (dropout), every layer type on default rotary tables."""
    if type(model).__name__ != "ModernBertForMaskedLM" or model.training:
        return False
    return weights(model).default_rotary


def default_rotary(config) -> bool:
    rope = getattr(config, "rope_parameters", None) or {}
    return all((rope.get(t) or {}).get("rope_type", "default") == "default" and (rope.get(t) or {}).get("rope_theta")
               for t in set(config.layer_types))


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


class Layer(NamedTuple):
    """One encoder layer's tensors and settings (F.layer_norm's arguments as a tuple)."""
    attn_norm: tuple | None  # None: the first layer's attention reads the embeddings as they are
    qkv: tuple  # (weight, bias) of Wqkv
    out: tuple  # (weight, bias) of the attention's Wo
    mlp_norm: tuple
    up: tuple  # (weight, bias) of the MLP's Wi (value and gate)
    act: Callable
    down: tuple  # (weight, bias) of the MLP's Wo
    theta: float  # rotary base
    half: int | None  # local layers: keys within this many positions either side; None = global


class Weights(NamedTuple):
    """What encode() and head() read, gathered once per model: the model's own Parameter objects
    (so in-place updates, .to() and load_state_dict show through), without a module lookup or a
    config read on every pass."""
    embedding: torch.Tensor
    embedding_norm: tuple
    layers: tuple  # of Layer
    final_norm: tuple
    dense: tuple  # the prediction head: (weight, bias) of its dense layer, its activation, its norm
    head_act: Callable
    head_norm: tuple
    decoder: tuple  # (weight, bias): hidden -> vocabulary logits
    heads: int
    dim: int  # per head
    default_rotary: bool  # every layer type on default rotary tables (what encode() computes)


def norm_args(norm) -> tuple:
    return norm.normalized_shape, norm.weight, norm.bias, norm.eps


def linear_args(linear) -> tuple:
    return linear.weight, linear.bias


def gather(model) -> Weights:
    config, body = model.config, model.model
    heads, rope = config.num_attention_heads, getattr(config, "rope_parameters", None) or {}
    layers = tuple(Layer(
        None if i == 0 else norm_args(layer.attn_norm), linear_args(layer.attn.Wqkv), linear_args(layer.attn.Wo),
        norm_args(layer.mlp_norm), linear_args(layer.mlp.Wi), layer.mlp.act.forward, linear_args(layer.mlp.Wo),
        float((rope.get(kind) or {}).get("rope_theta") or 0.0),
        config.sliding_window if kind == "sliding_attention" else None)
        for i, (layer, kind) in enumerate(zip(body.layers, config.layer_types)))
    return Weights(body.embeddings.tok_embeddings.weight, norm_args(body.embeddings.norm), layers,
                   norm_args(body.final_norm), linear_args(model.head.dense), model.head.act.forward,
                   norm_args(model.head.norm), linear_args(model.decoder), heads, config.hidden_size // heads,
                   default_rotary(config))


GATHERED = weakref.WeakKeyDictionary()  # model -> its Weights


def weights(model) -> Weights:
    """The model's Weights, gathered on first use and again whenever its embedding or layer list
    is no longer the one gathered (resize_token_embeddings, a swapped encoder)."""
    w = GATHERED.get(model)
    if w is None or w.embedding is not model.model.embeddings.tok_embeddings.weight \
            or len(w.layers) != len(model.model.layers):
        w = GATHERED[model] = gather(model)
    return w


QUERY_BLOCK = 32  # torch's CPU attention kernel takes queries in blocks of 32 and rounds a
SHORT_TAIL = 4  # block's last 1-3 queries differently from the rest (measured on torch 2.13)


def padded_index(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(index [B, c], keep [B * c] or None): the positions of rows (a [B, c] index, or a [B, L]
    mask: each row's positions ascending, padded with others to the longest row's count), c grown
    by repeating the last position so that no block of queries ends in 1-3 of them (a full pass
    over a window of a multiple of 32 positions has no such tail, so the rows keep its rounding),
    and keep marking the real ones: index.flatten()[keep] is rows' row-major order (None: all of
    them are)."""
    if rows.dtype == torch.bool:
        counts = rows.sum(-1)  # [B]
        c = int(counts.max())
        index = index_rows(rows, c)  # [B, c]: each row's positions first, then others
    else:
        index, counts, c = rows, None, rows.shape[1]
    pad = SHORT_TAIL - c % QUERY_BLOCK if 0 < c % QUERY_BLOCK < SHORT_TAIL else 0
    if pad:
        index = torch.cat([index, index[:, -1:].expand(-1, pad)], 1)  # [B, c + pad]
    if counts is None and not pad:
        return index, None
    real = torch.arange(c + pad, device=rows.device) < (c if counts is None else counts[:, None])
    return index, real.expand(index.shape).flatten()


def encode(model, tokens: torch.Tensor, cache=None, span: tuple | None = None,
           rows: torch.Tensor | None = None) -> torch.Tensor:
    """Hidden states [B, L', H] after the final norm. tokens [B, L] is the whole canvas; span
    None computes every position (and, with a cache, records each layer's keys/values in
    cache.kv), span (a, b) computes a..b-1 only, their keys/values spliced into the cached ones.
    rows (a [B, L'] mask or [B, c] index into the positions computed): only the hidden states
    there, [N, H] row-major -- the last layer needs every position's keys and values but computes
    queries, attention, output projection and MLP at those rows alone (a denoising step reads a
    few of 64)."""
    w = weights(model)
    a, b = span if span is not None else (0, tokens.shape[1])
    L = tokens.shape[1]
    x = tokens[:, a:b]  # [B, Lq]
    B, Lq = x.shape
    heads, d = w.heads, w.dim
    H = heads * d
    h = F.layer_norm(F.embedding(x, w.embedding), *w.embedding_norm)  # [B, Lq, H]
    last = len(w.layers) - 1
    for i, layer in enumerate(w.layers):
        cos, sin = rotary(layer.theta, d, L, tokens.device)
        cos, sin = cos[a:b], sin[a:b]  # [Lq, d]
        mask = None if layer.half is None else window_mask(a, b, L, layer.half, tokens.device)  # [Lq, L]
        y = h if layer.attn_norm is None else F.layer_norm(h, *layer.attn_norm)
        at = rows is not None and i == last  # the last layer's queries, output and MLP at the rows alone
        if at:
            index, keep = padded_index(rows)  # [B, c], [B * c] or None
            c, (weight, bias) = index.shape[1], layer.qkv
            kv = F.linear(y, weight[H:], None if bias is None else bias[H:]).view(B, Lq, 2, heads, d)
            k, v = rotate(kv[:, :, 0].transpose(1, 2), cos, sin), kv[:, :, 1].transpose(1, 2)  # [B, h, Lq, d]
            yq = y.gather(1, index[..., None].expand(-1, -1, H))  # [B, c, H]
            q = F.linear(yq, weight[:H], None if bias is None else bias[:H])
            q = rotate(q.view(B, c, heads, d).transpose(1, 2), cos[index][:, None], sin[index][:, None])  # [B, h, c, d]
            mask = None if mask is None else mask[index][:, None]  # [B, 1, c, L]
        else:
            qkv = F.linear(y, *layer.qkv).view(B, Lq, 3, heads, d).permute(2, 0, 3, 1, 4)
            (q, k), v = rotate(qkv[:2], cos, sin), qkv[2]  # [B, h, Lq, d] each
        if cache is not None:
            if span is None:
                cache.kv[i] = (k, v)
            else:
                k0, v0 = cache.kv[i]
                k = torch.cat([k0[:, :, :a], k, k0[:, :, b:]], 2)  # [B, h, L, d]
                v = torch.cat([v0[:, :, :a], v, v0[:, :, b:]], 2)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=d ** -0.5)  # [B, h, Lq or c, d]
        o = o.transpose(1, 2).reshape(B, -1, H)  # [B, Lq or c, H]
        if at:  # [N, H]: nothing after this mixes positions
            o, h = o.flatten(0, 1), h.gather(1, index[..., None].expand(-1, -1, H)).flatten(0, 1)
            if keep is not None:
                o, h = o[keep], h[keep]
        h = h + F.linear(o, *layer.out)
        up, gate = F.linear(F.layer_norm(h, *layer.mlp_norm), *layer.up).chunk(2, -1)
        h = h + F.linear(layer.act(up) * gate, *layer.down)
    return F.layer_norm(h, *w.final_norm)  # [B, Lq, H] or [N, H]


def head(model, hidden: torch.Tensor) -> torch.Tensor:
    """Logits [..., V] of hidden states [..., H]: ModernBertForMaskedLM's decoder(head(hidden)),
    the same ops without the module calls."""
    w = weights(model)
    return F.linear(F.layer_norm(w.head_act(F.linear(hidden, *w.dense)), *w.head_norm), *w.decoder)
