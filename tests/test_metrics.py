"""Sample-quality metrics on hand-made text whose answers are known."""

import math

import pytest

from metrics import distinct_n, ngrams, repeated_ngram_rate, unigram_entropy


def test_ngrams():
    assert ngrams([1, 2, 3], 2) == [(1, 2), (2, 3)]
    assert ngrams([1, 2], 3) == []


def test_distinct_n_known_answers():
    loop = [[1, 2, 3, 1, 2, 3]]
    assert distinct_n(loop, 1) == pytest.approx(3 / 6)
    assert distinct_n(loop, 2) == pytest.approx(3 / 5)  # (1,2) (2,3) (3,1) (1,2) (2,3)
    assert distinct_n([[1, 2, 3, 4]], 1) == 1.0
    assert distinct_n([[7, 7, 7, 7]], 1) == pytest.approx(1 / 4)
    # pooled over samples: the same sample twice halves distinct-2
    assert distinct_n([[1, 2, 3], [1, 2, 3]], 2) == pytest.approx(2 / 4)
    assert distinct_n([[1]], 2) == 0.0 and distinct_n([], 1) == 0.0


def test_distinct_n_on_words():
    words = "the cat sat on the mat".split()
    assert distinct_n([words], 1) == pytest.approx(5 / 6)
    assert distinct_n([words], 2) == 1.0


def test_repeated_ngram_rate_known_answers():
    assert repeated_ngram_rate([[1, 2, 3, 1, 2, 3]], 2) == pytest.approx(2 / 5)
    assert repeated_ngram_rate([[5] * 10], 4) == pytest.approx(6 / 7)  # 7 four-grams, all but the first repeat
    assert repeated_ngram_rate([[1, 2, 3, 4, 5]], 4) == 0.0
    # repeats count within a sample only: two identical samples repeat nothing
    assert repeated_ngram_rate([[1, 2, 3, 4], [1, 2, 3, 4]], 4) == 0.0
    assert repeated_ngram_rate([[1, 2]], 4) == 0.0


def test_unigram_entropy_known_answers():
    assert unigram_entropy([[1, 2, 3, 4]]) == pytest.approx(2.0)
    assert unigram_entropy([[1, 1, 2, 2]]) == pytest.approx(1.0)
    assert unigram_entropy([[1], [2]]) == pytest.approx(1.0)  # pooled over samples
    assert abs(unigram_entropy([[9, 9, 9]])) == 0.0
    assert unigram_entropy([]) == 0.0
    p = [0.5, 0.25, 0.25]
    assert unigram_entropy([[1, 1, 2, 3]]) == pytest.approx(-sum(q * math.log2(q) for q in p))
