"""The AR baseline's cached step in plain torch ops: the same math as transformers' eval-mode
GPT2LMHeadModel with SDPA and its own KV cache, with less work per call.

    supports(model)              a GPT2LMHeadModel in eval mode with the standard attention
    KV(model, batch, positions)  every layer's keys and values, allocated once (default: the window)
    step(model, tokens, kv)      logits [B, V] of the last of tokens [B, T] (the next token's
                                 distribution), their keys/values appended to kv

Why: the AR baseline writes one token per forward pass, so at the quick-test size (2 layers, width
128) a pass is almost all per-call machinery -- the cache object, mask building, decorators and
output capture, module dispatch -- not arithmetic. fast_modernbert.py removes that machinery from
the diffusion side; the bench and the demo compare the two, so the AR side gets the same
treatment here, or the ratios would measure which side was hand-written. Each op is the one
transformers runs (Conv1D's addmm, the model's own activation, SDPA with the same scale), on a
cache written in place instead of concatenated each step. tests/test_bench.py checks the logits
against transformers' forward and the sampled tokens against its cached generation.

Everything else (training, scoring, any other AR family) keeps transformers' forward;
decoding.ar_steps reaches this when supports(model).
"""

import weakref
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from fast_modernbert import norm_args


def supports(model) -> bool:
    """Whether step() computes this model's forward: a GPT2LMHeadModel, not training (dropout),
    scaled dot-product attention without the per-layer scaling or the upcast reordering options,
    no cross-attention."""
    if type(model).__name__ != "GPT2LMHeadModel" or model.training:
        return False
    c = model.config
    return bool(c.scale_attn_weights and not c.scale_attn_by_inverse_layer_idx and not c.reorder_and_upcast_attn
                and not c.add_cross_attention)


class Block(NamedTuple):
    """One transformer block's tensors (F.layer_norm's arguments as tuples)."""
    ln_1: tuple
    attn: tuple  # (weight [H, 3H], bias) of c_attn (a Conv1D: x @ weight + bias)
    proj: tuple  # (weight, bias) of the attention's c_proj
    ln_2: tuple
    fc: tuple  # (weight, bias) of the MLP's c_fc
    act: Callable  # the model's own activation
    out: tuple  # (weight, bias) of the MLP's c_proj


class Weights(NamedTuple):
    """What step() reads, gathered once per model: the model's own Parameter objects (in-place
    updates and load_state_dict show through), without a module lookup or config read per step."""
    wte: torch.Tensor
    wpe: torch.Tensor
    blocks: tuple  # of Block
    ln_f: tuple
    lm_head: tuple  # (weight, bias)
    heads: int
    dim: int  # per head


def conv1d_args(conv) -> tuple:
    return conv.weight, conv.bias


def conv1d(x: torch.Tensor, args: tuple) -> torch.Tensor:
    """transformers' Conv1D on x [N, in]: the same addmm, [N, out]."""
    weight, bias = args
    return torch.addmm(bias, x, weight)


def gather(model) -> Weights:
    t, heads = model.transformer, model.config.n_head
    blocks = tuple(Block(norm_args(b.ln_1), conv1d_args(b.attn.c_attn), conv1d_args(b.attn.c_proj), norm_args(b.ln_2),
                         conv1d_args(b.mlp.c_fc), b.mlp.act.forward, conv1d_args(b.mlp.c_proj)) for b in t.h)
    return Weights(t.wte.weight, t.wpe.weight, blocks, norm_args(t.ln_f), (model.lm_head.weight, model.lm_head.bias),
                   heads, model.config.n_embd // heads)


GATHERED = weakref.WeakKeyDictionary()  # model -> its Weights


def weights(model) -> Weights:
    """The model's Weights, gathered on first use and again whenever its embedding or block list
    is no longer the one gathered (resize_token_embeddings, a swapped block list)."""
    w = GATHERED.get(model)
    if w is None or w.wte is not model.transformer.wte.weight or len(w.blocks) != len(model.transformer.h):
        w = GATHERED[model] = gather(model)
    return w


class KV:
    """Keys and values of the positions seen so far, in one buffer allocated once for `positions`
    of them (default: the model's whole window): [layers, 2, B, heads, positions, d]; `length`
    of them are filled."""

    def __init__(self, model, batch: int, positions: int = 0):
        w = weights(model)
        positions = positions or len(w.wpe)
        if positions > len(w.wpe):
            raise ValueError(f"{positions} positions do not fit the model's {len(w.wpe)}")
        self.buffer = w.wte.new_empty(len(w.blocks), 2, batch, w.heads, positions, w.dim)
        self.length = 0


def step(model, tokens: torch.Tensor, kv: KV) -> torch.Tensor:
    """Logits [B, V] at the last of tokens [B, T], which continue the kv.length positions already
    in kv (T > 1 only for the first call: the prompt, attended causally); their keys and values
    are written into kv."""
    w = weights(model)
    B, T = tokens.shape
    a, b = kv.length, kv.length + T
    if b > kv.buffer.shape[4] or (a and T > 1):
        raise ValueError(f"positions {a}..{b - 1}: past the {kv.buffer.shape[4]} kv holds, or more than one token "
                         f"after the first call")
    heads, d = w.heads, w.dim
    H = heads * d
    h = F.embedding(tokens, w.wte) + w.wpe[a:b]  # [B, T, H]
    for i, block in enumerate(w.blocks):
        y = F.layer_norm(h, *block.ln_1).view(B * T, H)
        q, k, v = conv1d(y, block.attn).view(B, T, 3, heads, d).permute(2, 0, 3, 1, 4)  # [B, heads, T, d] each
        kv.buffer[i, 0, :, :, a:b] = k  # [B, heads, T, d]
        kv.buffer[i, 1, :, :, a:b] = v
        o = F.scaled_dot_product_attention(q, kv.buffer[i, 0, :, :, :b], kv.buffer[i, 1, :, :, :b],
                                           is_causal=T > 1, scale=d ** -0.5)  # [B, heads, T, d]
        h = h + conv1d(o.transpose(1, 2).reshape(B * T, H), block.proj).view(B, T, H)
        y = F.layer_norm(h, *block.ln_2).view(B * T, H)
        h = h + conv1d(block.act(conv1d(y, block.fc)), block.out).view(B, T, H)
    kv.length = b
    return F.linear(F.layer_norm(h[:, -1], *w.ln_f), *w.lm_head)  # [B, V]
