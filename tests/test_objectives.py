"""Training objectives: the rate distributions (support and mean), the antithetic draw, and the
1/t ELBO weighting checked against the NLL bound by enumerating every mask of a tiny sequence.
Also the objective study's pure parts: its objectives are valid train.py settings and its
committed report is the render of its JSON."""

import functools
import itertools
import json
import math
import os
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
from config import TrainConfig, UsageError
from diffusion import (IGNORE, SCHEDULES, elbo_terms, mask_tokens, progress_draws, protected_positions,
                       realized_rates, sample_rates)
from modeling import masked_lm_loss

sys.path.insert(0, os.path.join(ROOT, "experiments"))
import objective_study as OS  # noqa: E402

MASK, PAD, BOS, EOS = 4, 1, 0, 2
SPECIAL = [BOS, PAD, EOS]

# ---------------------------------------------------------------------------------------------
# Rate distributions: support and mean, independent and antithetic draws
# ---------------------------------------------------------------------------------------------

E5 = math.exp(-5.0)
# E[schedule(r)] for r ~ U(0, 1), worked out by hand: linear 1/2, cosine 2/pi, exponential (rate 5)
# ((1 - e^-5)/5 - e^-5) / (1 - e^-5)
SCHEDULE_MEANS = {"linear": 0.5, "cosine": 2 / math.pi, "exponential": ((1 - E5) / 5 - E5) / (1 - E5)}
LEVELS = [round(0.1 * i, 1) for i in range(1, 11)]


def rates(dist, antithetic, n=4096, mask_min=0.05, seed=0):
    cfg = TrainConfig(model="scratch", mask_distribution=dist, mask_min=mask_min, per_sample_rate=True,
                      antithetic=antithetic)
    return sample_rates(n, cfg, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("antithetic", [False, True])
@pytest.mark.parametrize("dist", ["levels"] + list(SCHEDULES))
def test_rate_distribution_support_and_mean(dist, antithetic):
    m = 0.05
    r = rates(dist, antithetic, mask_min=m)
    if dist == "levels":
        assert set(torch.round(r * 10).long().tolist()) == set(range(1, 11))  # exactly the levels, all of them
        assert torch.allclose(r, torch.round(r * 10) / 10)
        mean = sum(LEVELS) / len(LEVELS)  # 0.55
    else:
        assert r.min() > m and r.max() <= 1.0  # (mask_min, 1]
        mean = m + (1 - m) * SCHEDULE_MEANS[dist]
    # independent draws: within ~4 standard errors (sd of a rate <= 0.5); antithetic draws are
    # one per 1/n of progress, so their mean is exact up to O(1/n)
    tol = 4 * 0.5 / math.sqrt(len(r)) if not antithetic else 2.0 / len(r)
    assert abs(float(r.mean()) - mean) < tol, (float(r.mean()), mean)


@pytest.mark.parametrize("n", [1, 7, 16, 64])
def test_antithetic_draw_has_exactly_one_value_per_bin(n):
    for seed in range(5):
        r = progress_draws(n, True, torch.Generator().manual_seed(seed))
        assert sorted((r * n).floor().long().tolist()) == list(range(n))  # one r in each [j/n, (j+1)/n)
        # the linear schedule turns that into one rate in each (j/n, (j+1)/n] of (0, 1]
        t = rates("linear", True, n=n, mask_min=1e-9, seed=seed)
        assert sorted((t * n).ceil().long().tolist()) == list(range(1, n + 1))
    iid = progress_draws(4096, False, torch.Generator().manual_seed(0))
    assert len(set((iid * 64).floor().long()[:64].tolist())) < 64  # independent draws do collide


def test_antithetic_levels_are_balanced_and_batch_means_steady():
    r = rates("levels", True, n=20)
    assert sorted(torch.round(r * 10).long().tolist()) == sorted(list(range(1, 11)) * 2)  # each level twice
    # the point of the draw: the batch mean of the rate varies far less from batch to batch. For a
    # batch of B uniform rates on (m, 1] its sd is (1-m)/sqrt(12 B) independently, and (1-m)/(B sqrt 12)
    # antithetically (the whole batch moves with one u of range 1/B)
    B, m = 16, 0.05
    spread = {a: float(torch.stack([rates("linear", a, n=B, seed=s).mean() for s in range(400)]).std()) for a in (False, True)}
    assert spread[False] == pytest.approx((1 - m) / math.sqrt(12 * B), rel=0.15)
    assert spread[True] == pytest.approx((1 - m) / (B * math.sqrt(12)), rel=0.15)


def test_antithetic_needs_per_sample_rates():
    with pytest.raises(UsageError, match="per-sample-rate"):
        TrainConfig(model="scratch", antithetic=True)


def test_seed_levels_draw_is_unchanged():
    """The default (levels, independent) draws exactly what it drew before the antithetic option:
    the quick test replays bit for bit."""
    cfg = TrainConfig(model="scratch", per_sample_rate=True)
    g = torch.Generator().manual_seed(3)
    expected = torch.tensor(cfg.levels())[torch.randint(10, (16,), generator=torch.Generator().manual_seed(3))]
    assert torch.equal(sample_rates(16, cfg, g), expected)


# ---------------------------------------------------------------------------------------------
# The ELBO weighting against the bound, by brute force
# ---------------------------------------------------------------------------------------------
#
# For a sequence of n maskable tokens let S(M) = sum over i in M of CE_i(M), the model's loss at the
# masked positions M given the rest. The bound that diffusion.elbo_terms estimates is discrete:
#
#     -log p(x) / n  <=  B = (1/n) sum_{k=1..n} l(k),   l(k) = mean over |M| = k of S(M)/k
#
# (the any-order chain rule plus Jensen: the k-th factor is one of k masked tokens predicted).
# elbo_terms draws k ~ U{1..n} and a random M of size k, and returns (n/k) S(M): mean n * B.
#
# MDLM writes the same bound with a continuous time t ~ U(0, 1), every position masked
# independently with probability t (linear schedule), and weight 1/t:
#
#     B = (1/n) int_0^1 (1/t) E_{M ~ Bernoulli(t)^n} [S(M)] dt
#
# because int_0^1 t^(k-1) (1-t)^(n-k) dt = 1 / (k C(n, k)). test_continuous_time_elbo_is_the_bound
# checks that identity numerically, so "1/t weighting" means this and nothing else.
#
# The repo masks an exact count instead (mask_tokens: k = max(1, round(t n))), so the right t for
# the 1/t weight is the realized k/n (diffusion.realized_rates), not the drawn t: with it, a row
# contributes n * S(M)/k, its mean masked loss, and the training loss averaged over k ~ U{1..n}
# and the masks is B exactly (test_elbo_weighted_training_loss_is_the_bound). Weighting by the
# drawn t instead adds a factor k/(t n), which is unbounded as t -> 0 (k stays 1): with
# mask_min -> 0 its expectation diverges. Drawing t ~ U(mask_min, 1] and rounding makes k uniform
# on 2..n-1, with k = 1 getting (1.5/n - mask_min)/(1 - mask_min) and k = n half a share, so the
# expected training loss is B up to those two end terms.

N = 4  # maskable positions of the tiny sequence: 15 non-empty masks


SEQ = torch.tensor([[BOS, 11, 23, 11, 23, EOS]])  # [1, N + 2]: a b a b
PROTECTED = protected_positions(SEQ, SPECIAL, torch.zeros(1, dtype=torch.long))  # [1, N + 2]


@functools.lru_cache(maxsize=None)
def tiny_model():
    """A tiny BERT fitted for a few steps, at random masks, to sequences a b a b of random a, b: a
    masked token is guessable only when its twin is visible, so the loss depends strongly on how
    many tokens are masked (a random init's hardly does)."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64, max_position_embeddings=16))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        ab = torch.randint(5, 40, (32, 2), generator=g)  # [32, 2]
        ids = torch.cat([SEQ[:, :1].repeat(32, 1), ab, ab, SEQ[:, -1:].repeat(32, 1)], 1)  # [32, N + 2]
        inputs, labels = mask_tokens(ids, torch.rand(32, generator=g), PROTECTED.repeat(32, 1), MASK, g)
        masked_lm_loss(model, inputs, None, labels)[0].backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def masked_batch(masks):
    """One row per mask (a tuple of content positions 1..N): (inputs, labels, protected)."""
    ids = SEQ.repeat(len(masks), 1)  # [R, N + 2]
    where = torch.zeros_like(ids, dtype=torch.bool)
    for row, m in enumerate(masks):
        where[row, list(m)] = True
    return ids.masked_fill(where, MASK), ids.masked_fill(~where, IGNORE), PROTECTED.repeat(len(masks), 1)


def subsets(k):
    return list(itertools.combinations(range(1, N + 1), k))


@torch.no_grad()
def masked_sums(model):
    """{mask: S(mask)} for every non-empty mask of the sequence."""
    masks = [m for k in range(1, N + 1) for m in subsets(k)]
    inputs, labels, _ = masked_batch(masks)
    _, ce, rows = masked_lm_loss(model, inputs, None, labels)
    sums = torch.zeros(len(masks), dtype=torch.float64).index_add_(0, rows, ce.double())
    return dict(zip(masks, sums.tolist()))


def discrete_bound(S):
    """B per token, straight from the definition above."""
    return sum(sum(S[m] / k for m in subsets(k)) / math.comb(N, k) for k in range(1, N + 1)) / N


def test_elbo_weighted_training_loss_is_the_bound():
    model = tiny_model()
    S = masked_sums(model)
    B = discrete_bound(S)
    # k ~ U{1..N} and a uniform mask of size k: replicate each mask lcm / C(N, k) times, so every k
    # has the same number of rows (12), and the batch average is the expectation exactly
    lcm = math.lcm(*(math.comb(N, k) for k in range(1, N + 1)))
    masks = [m for k in range(1, N + 1) for m in subsets(k) for _ in range(lcm // math.comb(N, k))]
    inputs, labels, protected = masked_batch(masks)
    t = realized_rates(labels, protected)  # [R] k/N: what DiffusionCollator hands the loss
    with torch.no_grad():
        elbo, _, _ = masked_lm_loss(model, inputs, None, labels, t, "elbo")
        mean, _, _ = masked_lm_loss(model, inputs, None, labels, t, "mean")
    assert float(elbo) == pytest.approx(B, rel=1e-5)
    # the seed's plain mean over tokens weights each k by k: sum_k k l(k) / sum_k k, another quantity
    seed_weighting = sum(sum(S[m] for m in subsets(k)) / math.comb(N, k) for k in range(1, N + 1)) / sum(range(1, N + 1))
    assert float(mean) == pytest.approx(seed_weighting, rel=1e-5)
    assert abs(seed_weighting - B) > 100 * 1e-5 * B  # and the check above can tell them apart


def test_continuous_time_elbo_is_the_bound():
    """MDLM's 1/t-weighted loss over t ~ U(0, 1) with independent masking equals the discrete bound."""
    S = masked_sums(tiny_model())
    nodes, weights = np.polynomial.legendre.leggauss(2 * N)  # exact: the integrand is a polynomial of degree N-1
    total = 0.0
    for x, w in zip(nodes, weights):
        t = (x + 1) / 2  # [-1, 1] -> [0, 1]
        expected_sum = sum(t ** len(m) * (1 - t) ** (N - len(m)) * s for m, s in S.items())  # E_M[S(M)]; S(empty) = 0
        total += w / 2 * expected_sum / t
    assert total / N == pytest.approx(discrete_bound(S), rel=1e-9)


def test_elbo_terms_estimate_the_same_bound():
    """diffusion.elbo_terms (train.py's eval and evaluate.py) is unbiased for n * B: the mean of
    many draws lands within 4 standard errors, and k covers 1..N once per row (stratified)."""
    model = tiny_model()
    B = discrete_bound(masked_sums(model))
    terms = elbo_terms(model, SEQ.repeat(400, 1), PROTECTED.repeat(400, 1), MASK, N, torch.Generator().manual_seed(0))
    mean, se = float(terms.mean()), float(terms.std() / math.sqrt(terms.numel()))
    assert se < 0.02 * N * B
    assert abs(mean - N * B) < 4 * se, (mean, N * B, se)
    assert abs(mean - 1.3 * N * B) > 4 * se  # the test has the power to see a wrong weighting


def test_elbo_weighting_with_rows_of_different_length():
    """Each row adds n_i * (its mean masked loss); the batch divides by sum n_i."""
    model = tiny_model()
    ids = torch.randint(5, 40, (3, 10), generator=torch.Generator().manual_seed(1))
    ids[:, 0], ids[:, -1] = BOS, EOS
    protected = protected_positions(ids, SPECIAL, torch.tensor([0, 3, 5]))  # n = 8, 5, 3
    inputs, labels = mask_tokens(ids, torch.tensor([0.3, 0.55, 1.0]), protected, MASK, torch.Generator())
    t = realized_rates(labels, protected)
    assert torch.allclose(t, torch.tensor([2 / 8, 3 / 5, 3 / 3]))  # round(0.3 * 8) = 2, round(2.75) = 3
    with torch.no_grad():
        loss, ce, rows = masked_lm_loss(model, inputs, None, labels, t, "elbo")
    n = torch.tensor([8.0, 5.0, 3.0])
    row_means = torch.zeros(3).index_add_(0, rows, ce) / torch.bincount(rows, minlength=3)
    assert float(loss) == pytest.approx(float((n * row_means).sum() / n.sum()), rel=1e-6)


def test_weighting_starts_at_its_step():
    """--weighting-start: the plain mean before that optimiser step, --loss-weighting from it on."""
    from types import SimpleNamespace

    from trainer import DiffusionTrainer

    model = tiny_model()
    masks = [(1,), (1, 2, 3, 4)]  # two rows at very different rates: the weightings disagree
    inputs, labels, protected = masked_batch(masks)
    batch = {"input_ids": inputs, "attention_mask": None, "labels": labels,
             "mask_rate": realized_rates(labels, protected)}
    cfg = TrainConfig(model="scratch", loss_weighting="elbo", weighting_start=5, per_sample_rate=True)
    with torch.no_grad():
        mean = masked_lm_loss(model, inputs, None, labels)[0]
        elbo = masked_lm_loss(model, inputs, None, labels, batch["mask_rate"], "elbo")[0]
        assert abs(float(mean - elbo)) > 1e-3
        for step, expected in ((0, mean), (4, mean), (5, elbo), (9, elbo)):
            fake = SimpleNamespace(cfg=cfg, state=SimpleNamespace(global_step=step), levels=[0.25, 1.0],
                                   level_sums={0.25: [0.0, 0], 1.0: [0.0, 0]})
            fake.track_levels = lambda *a, fake=fake: DiffusionTrainer.track_levels(fake, *a)
            assert torch.allclose(DiffusionTrainer.compute_loss(fake, model, batch), expected), step


# ---------------------------------------------------------------------------------------------
# The objective study's pure parts
# ---------------------------------------------------------------------------------------------


def test_every_objective_is_a_valid_distinct_train_config():
    from cli import parse
    from config import train_presets

    seen = set()
    for name, over in OS.OBJECTIVES.items():
        cfg, _ = parse(TrainConfig, ["--quick-test"] + OS.train_flags(over), presets=train_presets)
        assert all(getattr(cfg, k) == v for k, v in over.items()), name
        key = tuple(sorted((k, getattr(cfg, k)) for k in ("mask_distribution", "mask_min", "antithetic",
                                                           "loss_weighting", "weighting_start", "learning_rate",
                                                           "warmup_steps")))
        assert key not in seen, f"{name} repeats another objective"
        seen.add(key)
    assert OS.OBJECTIVES["seed"] == {}  # the seed's recipe is the preset itself


def test_scaled_runs_multiply_steps_and_intervals():
    from config import QUICK_TEST
    from objective_study import StudyConfig

    argv = OS.train_argv("mdlm", 4, StudyConfig(out_dir="/tmp/x"))
    flags = dict(zip(argv[::1], argv[1::1]))
    assert flags["--max-steps"] == str(4 * QUICK_TEST["max_steps"])
    assert flags["--eval-steps"] == str(4 * QUICK_TEST["eval_steps"]) and flags["--output-dir"] == "/tmp/x/mdlm-4x"
    with pytest.raises(UsageError, match="scales"):
        StudyConfig(scales="2,4")


def test_committed_study_is_the_render_of_its_json():
    path = os.path.join(ROOT, "docs", "objective_study.json")
    if not os.path.isfile(path):
        pytest.skip("no committed study")
    with open(path) as f:
        result = json.load(f)
    with open(os.path.join(ROOT, "docs", "objective_study.md")) as f:
        assert f.read() == OS.render(result, "figures/objective_study.png")
    assert os.path.isfile(os.path.join(ROOT, "docs", "figures", "objective_study.png"))


def _scale_row(scale, bound, ar, train_tokens=1_000_000):
    return {"scale": scale, "tokens": scale * 3_000_000, "train_tokens": train_tokens, "ratio": math.exp(bound - ar),
            "bound": {"nats_per_token": bound}, "ar": {"nats_per_token": ar}}


def test_scale_summary_says_when_the_ar_stops_improving():
    """The AR best at 2x and worse at 4x: the page says so, with the passes over its training set
    and the ratio against the AR's best; an AR that keeps improving gets no such sentence."""
    rows = [_scale_row(1, 6.0, 5.0), _scale_row(2, 5.8, 4.9), _scale_row(4, 5.6, 5.1)]
    text = " ".join(OS.scale_summary({"scales": rows}))
    assert "from 2.72x to 1.65x" in text  # e^1.0, e^0.5
    assert "best at 2x (4.900 nats/token)" in text
    assert "training set 12 times" in text  # 12M tokens over a 1M-token training set
    assert "the 4x bound is 2.01x" in text  # e^(5.6 - 4.9)
    improving = [_scale_row(1, 6.0, 5.0), _scale_row(2, 5.8, 4.9), _scale_row(4, 5.6, 4.8)]
    assert "overfits" not in " ".join(OS.scale_summary({"scales": improving}))
    assert OS.scale_summary({"scales": rows[:1]}) == []
