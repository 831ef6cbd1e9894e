"""Sample-quality numbers that do not come from the generator grading itself.

All take token-id lists (one list per sample), so they work for any tokenizer:
    distinct_n(samples, n)            unique n-grams / all n-grams, over all samples
    repeated_ngram_rate(samples, n)   share of n-grams that already occurred earlier in the same sample
    unigram_entropy(samples)          entropy (bits) of the pooled token distribution

and one score that needs a model (token-id tensors in, torch imported only there):
    pseudo_log_likelihood(model, ids, mask_id, where)   mean NLL (nats/token), one position
                                                        masked at a time, the rest visible
"""

import math
from collections import Counter


def ngrams(tokens: list, n: int) -> list[tuple]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(samples: list[list], n: int) -> float:
    """Unique n-grams / total n-grams across all samples (0 when there are none)."""
    grams = [g for s in samples for g in ngrams(s, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repeated_ngram_rate(samples: list[list], n: int = 4) -> float:
    """Share of n-grams that repeat an earlier n-gram of the same sample: the 'the the the'
    measure. 0 for text without repetition, near 1 for a loop."""
    repeats = total = 0
    for s in samples:
        seen = set()
        for g in ngrams(s, n):
            repeats += g in seen
            seen.add(g)
            total += 1
    return repeats / total if total else 0.0


def unigram_entropy(samples: list[list]) -> float:
    """Entropy in bits of the pooled unigram distribution of all samples."""
    counts = Counter(t for s in samples for t in s)
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0


def pseudo_log_likelihood(model, ids, mask_id: int, where=None, batch_size: int = 256) -> float:
    """Mean NLL in nats/token of the tokens at `where` [B, L] (default: every position) when
    each is masked alone and the rest of its row stays visible (Salazar et al., 2020).

    Not a normalised likelihood, and under the model that generated the text it is partly
    self-grading: a sampler that picks the model's favourite tokens scores well here however
    repetitive the text. Read it beside distinct-n and the repeated n-gram rate."""
    import torch
    import torch.nn.functional as F

    from modeling import masked_logits

    ids = ids.cpu()
    where = torch.ones_like(ids, dtype=torch.bool) if where is None else where.cpu()
    rows, cols = where.nonzero(as_tuple=True)  # [N] one masked copy of its row per scored token
    if len(rows) == 0:
        raise ValueError("pseudo_log_likelihood: no position to score")
    device = next(model.parameters()).device
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            r, c = rows[start:start + batch_size], cols[start:start + batch_size]  # [n]
            inputs = ids[r].clone()  # [n, L]
            inputs[torch.arange(len(r)), c] = mask_id
            target = torch.zeros_like(inputs, dtype=torch.bool)  # [n, L]
            target[torch.arange(len(r)), c] = True
            logits = masked_logits(model, inputs.to(device), None, target.to(device))  # [n, V]
            total += F.cross_entropy(logits.float(), ids[r, c].to(device), reduction="sum").item()
    return total / len(rows)
