"""Sample-quality numbers that do not come from the generator grading itself.

All take token-id lists (one list per sample), so they work for any tokenizer:
    distinct_n(samples, n)            unique n-grams / all n-grams, over all samples
    repeated_ngram_rate(samples, n)   share of n-grams that already occurred earlier in the same sample
    unigram_entropy(samples)          entropy (bits) of the pooled token distribution
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
