"""Generation: schedules, samplers, orders, ReMDM, guidance, the denoising loop (mock model with known logits,
and the tiny trained model), canvases, and the CLI's errors."""

import math

import pytest
import torch

import decoding as D
import diffusion
import generate as G
import visualize
from config import GenConfig, UsageError

# ---------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(diffusion.SCHEDULES))
def test_schedule_boundaries_and_monotone(name):
    f = diffusion.SCHEDULES[name]
    for total in (1, 2, 7, 10, 64):
        vals = [f(s / total) for s in range(total + 1)]
        assert math.isclose(vals[0], 1.0) and math.isclose(vals[-1], 0.0, abs_tol=1e-12)
        assert all(a >= b for a, b in zip(vals, vals[1:]))


@pytest.mark.parametrize("name", sorted(diffusion.SCHEDULES))
@pytest.mark.parametrize("n,steps", [(1, 1), (1, 10), (10, 10), (62, 10), (62, 1), (62, 3), (200, 64), (5, 20)])
def test_mask_counts(name, n, steps):
    counts = diffusion.mask_counts(name, n, steps)
    assert len(counts) == steps + 1 and counts[0] == n and counts[-1] == 0
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    for s in range(1, steps):  # the count follows the schedule wherever it can
        assert counts[s] <= round(n * diffusion.SCHEDULES[name](s / steps))


def test_schedule_shapes_differ():
    n, steps = 100, 10
    lin, cos, exp = (diffusion.mask_counts(s, n, steps) for s in ("linear", "cosine", "exponential"))
    assert lin[1] == 90
    assert cos[1] > lin[1]  # cosine commits few tokens first
    assert exp[1] < lin[1]  # exponential commits many first


# ---------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------


def test_flag_choices_are_the_registries_read_from_source():
    """--help lists a registry's keys without importing decoding (torch): read from the dict
    literal in the source, which must be the dict the loop uses."""
    import config

    for module, name in (("decoding", "SAMPLERS"), ("decoding", "ORDERS"), ("decoding", "REMDM"),
                         ("decoding", "DECODES"), ("diffusion", "SCHEDULES"), ("modeling", "SCRATCH_ARCHS"),
                         ("data", "PACKINGS")):
        live = tuple(getattr(__import__(module), name))
        assert config.source_keys(module, name) == live and config.Registry(module, name)() == live


def test_a_new_sampler_is_one_registry_entry(monkeypatch, tiny_model):
    """A sampler with its own parameter: one Rule naming the GenConfig field it reads. It becomes a
    valid --sampling choice, the loop passes it that field, setting_of records it and describe
    words it; nothing else changes."""
    model, tok, cfg = tiny_model
    seen = []

    def first_choice(logits, g, temperature, k):  # reads temperature and k, as topk does
        seen.append(k)
        return logits.topk(k, -1).indices[:, 0]

    monkeypatch.setitem(D.SAMPLERS, "first-of-k", D.Rule(first_choice, ("temperature", "k"), "first of {k}"))
    gc = GenConfig(sampling="first-of-k", k=3, steps=2, length=6, out="")
    ids, _, _ = D.generate(model, tok, gc, cfg.max_len, torch.Generator().manual_seed(0))
    assert ids.shape == (1, 6) and seen == [3, 3]
    assert D.setting_of(gc)["k"] == 3 and "p" not in D.setting_of(gc)
    assert D.describe(gc).startswith("first of 3; linear, 2 steps")
    with pytest.raises(UsageError, match="--sampling must be one of"):
        GenConfig(sampling="no-such-sampler")


def test_setting_of_keeps_only_the_fields_the_chosen_rules_read():
    base = D.setting_of(GenConfig(order="low-confidence", order_noise=8.0))
    assert base["p"] == 0.95 and "k" not in base and base["order_noise"] == 8.0 and "threshold" not in base
    random = D.setting_of(GenConfig(order="random"))
    assert "order_noise" not in random and "remdm_eta" not in random  # read by no rule chosen
    assert "remdm_eta" not in D.setting_of(GenConfig(remdm="conf")) and D.setting_of(GenConfig(remdm="cap"))["remdm_eta"]
    thr = D.setting_of(GenConfig(decode="threshold", sampling="greedy"))
    assert thr["threshold"] == 0.9 and not {"steps", "order", "order_noise", "temperature", "p", "factor"} & set(thr)
    assert D.setting_of(GenConfig(decode="factor"))["factor"] == 1.0
    assert D.sampler_setting(GenConfig(sampling="topk", k=7, temperature=0.9)) == {"sampling": "topk",
                                                                                  "temperature": 0.9, "k": 7}


def test_explicit_refuses_a_rule_that_leaves_a_field_to_the_default():
    """A rule called "greedy" that does not state order_noise would run with GenConfig's noise 8:
    refused, naming the field and the value it would have had."""
    greedy = dict(sampling="greedy", decode="schedule", schedule="linear", steps=10, order="low-confidence", remdm="none")
    with pytest.raises(ValueError, match=r"does not state order_noise: .*\(order_noise=8.0\)"):
        D.explicit(greedy)
    assert D.setting_of(D.explicit(dict(greedy, order_noise=0.0)))["order_noise"] == 0.0
    assert D.explicit(dict(greedy, order="random")).order == "random"  # the random order reads no noise
    with pytest.raises(ValueError, match="does not state p, temperature"):
        D.explicit(dict(sampling="nucleus", decode="threshold", threshold=0.9))
    with pytest.raises(ValueError, match="does not state temperature"):
        D.explicit(dict(sampling="topk", k=5), left_to_right=True)  # an AR rule: its sampler's fields only
    assert D.explicit(dict(sampling="topk", k=5, temperature=1.0, num_samples=3), left_to_right=True).num_samples == 3


def test_readers_name_the_choices_that_read_a_field():
    assert D.readers("k") == "--sampling topk"
    assert D.readers("temperature") == "--sampling topk|nucleus"
    assert D.readers("order_noise") == "--order low-confidence|margin|entropy with --decode schedule"
    assert D.readers("remdm_eta") == "--remdm cap|rescale|conf-rescale with --decode schedule"
    assert D.readers("prompt") == ""


def generated(capsys, argv) -> tuple[str, str]:
    """(the samples generate.py printed, its stderr), without the timing line."""
    assert G.main(argv) == 0
    out = capsys.readouterr()
    return "\n".join(line for line in out.out.splitlines() if "forward passes" not in line), out.err


@pytest.mark.parametrize("used,unread", [
    ([], ["--k", "5"]),  # nucleus (the default) reads p, not k
    ([], ["--remdm-eta", "0.3"]),
    ([], ["--threshold", "0.5"]),
    (["--order", "random"], ["--order-noise", "3"]),
    (["--decode", "threshold"], ["--steps", "3", "--order", "margin", "--remdm", "cap"]),  # remdm: schedule only
    (["--sampling", "greedy"], ["--temperature", "0.5", "--p", "0.5"]),
])
def test_a_flag_no_chosen_rule_reads_is_a_warning_and_changes_nothing(tiny_run, capsys, used, unread):
    """The rule (README, Generating): a decoding flag that no chosen rule reads is run anyway, with
    one warning line per flag naming what would read it; the text is the same as without it."""
    base = ["--checkpoint", tiny_run[1], "--num-samples", "2", "--length", "12", "--seed", "1", "--out", ""] + used
    plain, err = generated(capsys, base)
    assert err == ""
    with_flag, err = generated(capsys, base + unread)
    assert with_flag == plain
    warned = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert sorted(line.split()[1] for line in warned) == sorted(unread[::2]) and all("has no effect: only --" in w for w in warned)


def test_a_flag_a_chosen_rule_reads_is_no_warning(tiny_run, capsys):
    base = ["--checkpoint", tiny_run[1], "--num-samples", "2", "--length", "12", "--seed", "1", "--out", "",
            "--sampling", "topk", "--temperature", "2"]
    wide, _ = generated(capsys, base + ["--k", "1000"])
    narrow, err = generated(capsys, base + ["--k", "1"])
    assert err == "" and narrow != wide


def logits_fixture(N=64, V=30, seed=0):
    return torch.randn(N, V, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_argmax_and_temperature_zero_is_greedy():
    lg = logits_fixture()
    g = torch.Generator().manual_seed(0)
    assert torch.equal(D.greedy(lg, g), lg.argmax(-1))
    for name in ("topk", "nucleus"):
        assert torch.equal(D.sample(lg, g, GenConfig(sampling=name, temperature=0.0, k=5, p=0.5)), lg.argmax(-1))


def test_topk_never_outside_top_k():
    lg = logits_fixture(N=500)
    g = torch.Generator().manual_seed(1)
    for k in (1, 3, 10):
        tok = D.topk(lg, g, temperature=2.0, k=k)
        top = lg.topk(k, -1).indices
        assert (top == tok[:, None]).any(-1).all()
    assert torch.equal(D.topk(lg, g, temperature=1.0, k=1), lg.argmax(-1))


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 1.0])
def test_nucleus_never_outside_smallest_set(p):
    lg = logits_fixture(N=500, seed=2)
    g = torch.Generator().manual_seed(2)
    tok = D.nucleus(lg, g, temperature=1.0, p=p)
    probs, order = torch.softmax(lg, -1).sort(-1, descending=True)
    size = (probs.cumsum(-1) < p).sum(-1) + 1  # smallest prefix with mass >= p
    rank = (order == tok[:, None]).float().argmax(-1)
    assert (rank < size.clamp(max=lg.shape[-1])).all()


def test_temperature_sharpens():
    lg = logits_fixture(N=2000, V=10, seed=3) / 3
    agree = {}
    for t in (0.2, 1.0, 3.0):
        tok = D.topk(lg, torch.Generator().manual_seed(4), temperature=t, k=10)
        agree[t] = (tok == lg.argmax(-1)).float().mean().item()
    assert agree[0.2] > agree[1.0] > agree[3.0]


def test_samplers_are_seeded():
    lg = logits_fixture()
    a = D.nucleus(lg, torch.Generator().manual_seed(9), temperature=1.0, p=0.9)
    b = D.nucleus(lg, torch.Generator().manual_seed(9), temperature=1.0, p=0.9)
    c = D.nucleus(lg, torch.Generator().manual_seed(10), temperature=1.0, p=0.9)
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---------------------------------------------------------------------------------------------
# Orders, order noise, ReMDM, guidance: pure functions with known answers
# ---------------------------------------------------------------------------------------------


def probs_fixture():
    """Three predictions: confident (0.7/0.2), flat but for a clear top (0.5/0.2), two-way tie (0.45/0.45)."""
    p = torch.tensor([[0.7, 0.2, 0.1, 0.0, 0.0], [0.5, 0.1, 0.1, 0.1, 0.2], [0.45, 0.45, 0.1, 0.0, 0.0]])
    return p, torch.tensor([0, 0, 1])  # the sampled tokens


def prediction(p, tok):
    return D.Prediction(p.log(), tok)  # logits whose softmax is p (a 0 is a banned token: -inf)


def test_orders_rank_predictions_as_defined():
    p, tok = probs_fixture()
    g = torch.Generator().manual_seed(0)
    conf = D.ORDERS["low-confidence"].fn(prediction(p, tok), 3, g)
    assert torch.allclose(conf.exp(), torch.tensor([0.7, 0.5, 0.45], dtype=torch.float64))
    margin = D.ORDERS["margin"].fn(prediction(p, tok), 3, g)
    assert torch.allclose(margin.exp(), torch.tensor([0.5, 0.3, 0.0], dtype=torch.float64), atol=1e-6)
    ent = D.ORDERS["entropy"].fn(prediction(p, tok), 3, g)  # negative entropy: the peaked first row ranks first
    want = -(p * p.clamp_min(1e-30).log()).sum(-1).double()
    assert torch.allclose(-ent, want, atol=1e-6) and ent.argsort(descending=True).tolist() == [0, 2, 1]
    assert conf.argsort(descending=True).tolist() == [0, 1, 2]


def test_top_n_commits_the_best_allowed():
    score = torch.tensor([[0.9, 0.1, 0.5, 0.7, 0.3]], dtype=torch.float64)
    allowed = torch.tensor([[True, True, True, False, True]])
    assert D.top_n(score, allowed, 2).tolist() == [[True, False, True, False, False]]  # 0.7 is not allowed
    two_rows = D.top_n(score.repeat(2, 1), allowed.repeat(2, 1), torch.tensor([1, 3]))  # a count per row
    assert two_rows.tolist() == [[True, False, False, False, False], [True, False, True, False, True]]


def test_order_noise_is_maskgits_annealing_and_gumbel_is_seeded():
    # maskgit's mask_by_random_topk at step i (0-based) of T: tau * (1 - (i + 1) / T)
    assert [D.order_noise(4.0, s, 4) for s in range(1, 5)] == [3.0, 2.0, 1.0, 0.0]
    assert D.order_noise(8.0, 1, 10) == pytest.approx(7.2) and D.order_noise(8.0, 1, 1) == 0.0
    a, b = D.gumbel(1000, torch.Generator().manual_seed(3)), D.gumbel(1000, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.dtype == torch.float64
    assert abs(float(a.mean()) - 0.5772) < 0.1  # the Euler-Mascheroni constant


@pytest.mark.parametrize("before,after,n,want", [
    (30, 20, 60, 2 / 3),  # (1 - alpha_s) / alpha_t = (20/60) / (30/60)
    (30, 5, 60, 1 / 6),
    (10, 9, 60, 0.18),
    (60, 50, 60, 0.0),  # nothing committed yet
    (10, 0, 60, 0.0),  # the last step never re-masks
])
def test_sigma_max(before, after, n, want):
    assert D.sigma_max(before, after, n) == pytest.approx(want)


def test_remdm_sigmas_follow_remdm():
    committed = torch.tensor([[True, True, False, True, True]])
    conf = torch.tensor([[0.99, 0.01, float("nan"), 0.5, 0.99]])
    rule = lambda name, smax=2 / 3, eta=0.5: D.REMDM[name].fn(conf, committed, smax, eta)[0]  # noqa: E731
    assert rule("cap").tolist() == [0.5, 0.5, 0.0, 0.5, 0.5] and rule("cap", eta=0.9)[0] == pytest.approx(2 / 3)
    assert rule("rescale").tolist() == pytest.approx([1 / 3, 1 / 3, 0, 1 / 3, 1 / 3])
    w = torch.tensor([0.99, 0.01, 0.5, 0.99]).neg().exp()
    want = (w / w.sum() * (2 / 3)).tolist()
    got = rule("conf", eta=0.01)  # ReMDM's conf: softmax(-confidence) * sigma_max, eta unused
    assert got[[0, 1, 3, 4]].tolist() == pytest.approx(want) and got[2] == 0 and float(got.sum()) == pytest.approx(2 / 3)
    spread = rule("conf-rescale")  # rescale's expected count (0.5 * 2/3 * 4 committed), spread by exp(-conf)
    assert float(spread.sum()) == pytest.approx(0.5 * 2 / 3 * 4) and spread[1] > spread[3] > spread[0]


def test_remask_draw_is_independent_per_token_and_capped():
    committed = torch.tensor([[True, True, False, True, True]] * 4000)
    conf = torch.tensor([[0.99, 0.01, float("nan"), 0.5, 0.99]] * 4000)
    g = torch.Generator().manual_seed(0)
    back = D.remask_draw("cap", 0.3, conf, committed, 2 / 3, 4, g)  # each committed token w.p. 0.3
    freq = back.float().mean(0)
    assert freq[2] == 0 and all(abs(float(freq[i]) - 0.3) < 0.03 for i in (0, 1, 3, 4))
    counts = back.sum(1)
    assert abs(float((counts == 0).float().mean()) - 0.7 ** 4) < 0.03  # binomial(4, 0.3), not a fixed count
    capped = D.remask_draw("cap", 0.9, conf, committed, 1.0, 1, g)
    assert capped.sum(1).max() == 1 and capped.any(1).float().mean() > 0.95
    conf_back = D.remask_draw("conf", 0.0, conf, committed, 1.0, 4, g).float().mean(0)  # exp(-conf) weights
    assert conf_back[1] > conf_back[3] > conf_back[0] and conf_back[2] == 0


def test_remdm_counts_match_remdms_expectation_at_the_defaults():
    """At the default eta (0.02) on a 62-token canvas with 10 steps, rescale re-masks each committed
    token with probability eta * sigma_max and conf about sigma_max tokens per step: the counts
    over 600 rows match within 4 standard deviations (the former code re-masked round(sigma * C) = 0)."""
    c = canvas(B=600, L=65, prompt=1)  # 62 positions to fill
    n, steps = 62, 10
    counts = diffusion.mask_counts("linear", n, steps)
    for strategy in ("rescale", "conf"):
        gc = GenConfig(steps=steps, sampling="greedy", order="random", remdm=strategy)
        _, hist = D.denoise(MockMLM(), c, IDS, gc, torch.Generator().manual_seed(0))
        assert [h.masked_left for h in hist] == counts[1:]  # the net count per step is still the schedule's
        for s, h in enumerate(hist):
            C = n - counts[s]  # committed before step s + 1
            smax = D.sigma_max(counts[s], counts[s + 1], n)
            sigma = gc.remdm_eta * smax if strategy == "rescale" else smax / max(C, 1)  # per token
            want, sd = 600 * C * sigma, (600 * C * sigma * (1 - sigma)) ** 0.5
            got = int(h.remasked.sum())
            assert abs(got - want) <= 4 * sd + 1, (strategy, s, got, want)
        assert sum(int(h.remasked.sum()) for h in hist) > 0


def test_nucleus_is_the_sorted_nucleus_draw_for_draw():
    """The sort-free nucleus gives the very tokens the full-sort version gives, under the same
    generator and logits, including rows where the draw falls outside the nucleus and is redrawn."""
    lg = torch.randn(3000, 40, generator=torch.Generator().manual_seed(5)) * 2
    lg[:50, :3] = 4.0  # exact ties at the top
    for p, t in ((0.5, 1.0), (0.9, 0.7), (0.95, 1.3), (1.0, 1.0)):
        fast = D.nucleus(lg, torch.Generator().manual_seed(7), temperature=t, p=p)
        ref = D.nucleus_sorted(lg, torch.Generator().manual_seed(7), temperature=t, p=p)
        assert torch.equal(fast, ref), p


def test_nucleus_membership_is_the_masked_sums_even_where_rounding_decides():
    """in_nucleus decides as the plain masked sum does, sum(probs where probs > p_token) < p, also
    when p is exactly a row's mass above its token: there its faster sum differs from the masked
    sum in the last bits, and only the masked sum's answer (not a member: the mass is not below p)
    is the definition."""
    g = torch.Generator().manual_seed(6)
    probs = torch.softmax(torch.randn(400, 3000, generator=g) * 2, -1)
    tokens = torch.multinomial(probs, 1, generator=g).squeeze(-1)
    pt = probs.gather(-1, tokens[:, None])
    above = torch.where(probs > pt, probs, 0.0).sum(-1)  # [N] the definition's mass above each token
    for p in above[:60].tolist() + [0.5, 0.95]:
        assert torch.equal(D.in_nucleus(probs, tokens, p), (above < p) | (above == 0)), p


def test_inverse_cdf_in_two_levels_picks_the_flat_scans_column():
    """The two-level draw (block sums, then a scan inside one block) picks the column a scan of the
    whole row picks, on integer weights whose sums are exact: zero weights (banned tokens) at block
    edges and in the short last block, u at 0 and just below 1. A zero weight is never chosen."""
    g = torch.Generator().manual_seed(4)
    w = torch.randint(0, 4, (200, 1000), generator=g).float()  # 1000 = 32 blocks of 31 + 8 left over
    w[:, ::31] = 0
    w[:, 992:] = 0
    w[:, 991] = 1  # the last nonzero column before the short block
    u = torch.rand(200, generator=g)
    u[:3] = torch.tensor([0.0, 1 - 2 ** -24, 0.5])
    cdf = w.cumsum(-1)  # exact: integers below 2**24
    want = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(-1)
    got = D.inverse_cdf(w, u)
    assert torch.equal(got, want) and (w.gather(1, got[:, None]) > 0).all()


def test_a_nucleus_of_little_mass_ends_in_bounded_rounds():
    """A p below float32's resolution keeps the most probable token (never an empty nucleus, never
    an endless redraw); on a near-flat distribution over 4096 tokens its mass is ~1/4096, so the
    rows that miss it in the rejection rounds take the exact fallback draw: still the argmax, and
    the same tokens in the sort-free and the sorted sampler. A small p on a peaked row still draws
    from its renormalised nucleus."""
    flat = torch.zeros(64, 4096)
    flat[torch.arange(64), torch.arange(64) * 7] = 0.5  # one slightly more probable token per row
    for sampler in (D.nucleus, D.nucleus_sorted):
        tok = sampler(flat, torch.Generator().manual_seed(1), temperature=1.0, p=1e-300)
        assert torch.equal(tok, torch.arange(64) * 7)
    lg = torch.randn(500, 4096, generator=torch.Generator().manual_seed(2)) * 0.1
    fast = D.nucleus(lg, torch.Generator().manual_seed(3), temperature=1.0, p=0.002)  # ~8 of 4096 tokens
    assert torch.equal(fast, D.nucleus_sorted(lg, torch.Generator().manual_seed(3), temperature=1.0, p=0.002))
    keep = D.nucleus_mask_sorted(torch.softmax(lg, -1), 0.002)
    assert keep.gather(-1, fast[:, None]).all()


def test_nucleus_draws_the_renormalised_nucleus():
    logits = torch.log(torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05]))  # nucleus at p 0.8: the first three
    tok = D.nucleus(logits.expand(60000, -1), torch.Generator().manual_seed(0), temperature=1.0, p=0.8)
    freq = torch.bincount(tok, minlength=5).float() / len(tok)
    assert torch.allclose(freq, torch.tensor([0.4, 0.3, 0.15, 0, 0]) / 0.85, atol=0.01) and freq[3:].sum() == 0


def test_factor_rule_commits_the_run_above_fast_dllms_thresholds():
    # factor 1: rank r needs confidence >= 1 - 1/(r+1): rank 2 >= 0.667, rank 3 >= 0.75, rank 4 >= 0.8
    conf = torch.tensor([[0.4, 0.99, 0.7, 0.8, 0.0], [0.5, 0.6, 0.3, 0.2, 0.0], [0.9, 0.95, 0.85, 0.99, 0.0]])
    masked = torch.tensor([[True, True, True, True, False]] * 3)
    commit = D.commit_factor(conf, masked, 1.0)
    assert commit.tolist() == [[False, True, False, True, False],  # 0.99, 0.8 pass; 0.7 < 0.75 stops the run
                               [False, True, False, False, False],  # the most confident always goes
                               [True, True, True, True, False]]
    assert D.commit_factor(conf, masked, 5.0).sum(1).tolist() == [4, 4, 4]  # a large factor commits them all


def test_guidance_arithmetic():
    c, u = torch.tensor([[1.5, 2.0]]), torch.tensor([[0.0, 2.5]])
    assert torch.equal(D.guided(c, u, 0.0), c)
    assert torch.allclose(D.guided(c, u, 1.0), torch.tensor([[3.0, 1.5]]))  # u + 2 (c - u)


def test_threshold_commits_confident_and_at_least_one():
    conf = torch.tensor([[0.95, 0.2, 0.91, 0.3], [0.1, 0.2, 0.3, 0.4]])
    masked = torch.tensor([[True, True, True, False], [True, True, True, True]])
    commit = D.commit_threshold(conf, masked, 0.9)
    assert commit.tolist() == [[True, False, True, False], [False, False, False, True]]


# ---------------------------------------------------------------------------------------------
# The loop, with mock models whose logits are known
# ---------------------------------------------------------------------------------------------


class MockMLM(torch.nn.Module):
    """Predicts token (position + 10) with a confidence that falls with position, so the
    certainty orders must fill left to right."""

    def __init__(self, V=100):
        super().__init__()
        self.V = V
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        B, L = input_ids.shape
        logits = torch.full((B, L, self.V), -5.0)
        for pos in range(L):
            logits[:, pos, (pos + 10) % self.V] = 10.0 - 0.1 * pos
        return type("Out", (), {"logits": logits})()


class PromptAware(MockMLM):
    """Token 61 everywhere unless guided: conditional (token 50, the prompt, visible) 60 -> 1.5,
    61 -> 2.0; unconditional 60 -> 0, 61 -> 2.5. Guided with w = 1: 60 -> 3.0, 61 -> 1.5."""

    def forward(self, input_ids, attention_mask=None):
        B, L = input_ids.shape
        logits = torch.full((B, L, self.V), -9.0)
        seen = (input_ids == 50).any(1)[:, None]  # [B, 1]
        logits[:, :, 60] = torch.where(seen, 1.5, 0.0)
        logits[:, :, 61] = torch.where(seen, 2.0, 2.5)
        return type("Out", (), {"logits": logits})()


class EosAt(MockMLM):
    """Predicts </s> (id 2) with certainty at position `at`, token (position + 10) elsewhere."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def forward(self, input_ids, attention_mask=None):
        logits = super().forward(input_ids).logits
        logits[:, self.at, 2] = 50.0
        return type("Out", (), {"logits": logits})()


MASK = 4
IDS = {"mask": MASK, "eos": 2, "banned": [0, 1, 3, 4]}


def canvas(B=2, L=20, prompt=3):
    c = torch.full((B, L), MASK)
    c[:, 0], c[:, -1] = 0, 2
    c[:, 1:1 + prompt] = torch.tensor([50, 51, 52][:prompt])
    pos = torch.arange(L).expand(B, L)
    return D.Canvas(c, c == MASK, (pos >= 1) & (pos <= prompt), start=1 + prompt)


@pytest.mark.parametrize("schedule", sorted(diffusion.SCHEDULES))
@pytest.mark.parametrize("steps", [1, 4, 10, 30])
def test_loop_follows_schedule_counts_and_fills_everything(schedule, steps):
    c = canvas()
    gc = GenConfig(steps=steps, schedule=schedule, sampling="greedy")
    final, hist = D.denoise(MockMLM(), c, IDS, gc, torch.Generator().manual_seed(0))
    n = int(c.active[0].sum())
    counts = diffusion.mask_counts(schedule, n, steps)
    assert [h.masked_left for h in hist] == [x for x, prev in zip(counts[1:], counts) if x < prev]
    assert not (final == MASK).any()  # no mask survives
    keep = ~c.active
    assert torch.equal(final[keep], c.tokens[keep])  # prompt and special tokens never change
    expected = (torch.arange(c.tokens.shape[1]) + 10).expand_as(c.tokens)
    assert torch.equal(final[c.active], expected[c.active])  # greedy = argmax everywhere


@pytest.mark.parametrize("order", ["low-confidence", "margin", "entropy"])
def test_certainty_orders_fill_left_to_right_and_history_records_commits(order):
    c = canvas(B=1)
    gc = GenConfig(steps=16, schedule="linear", sampling="greedy", order=order, order_noise=0.0, remdm="none")
    _, hist = D.denoise(MockMLM(), c, IDS, gc, torch.Generator())
    committed = [h.committed[0].nonzero().flatten().tolist() for h in hist]
    assert [p for step in committed for p in step] == list(range(4, 19))
    for h in hist:
        assert (h.confidence[h.committed] > 0).all() and torch.isnan(h.confidence[~h.committed]).all()


def test_random_order_commits_the_scheduled_number_anywhere():
    c = canvas(B=4, L=40)
    gc = GenConfig(steps=5, sampling="greedy", order="random", remdm="none")
    _, hist = D.denoise(MockMLM(), c, IDS, gc, torch.Generator().manual_seed(1))
    counts = diffusion.mask_counts("linear", int(c.active[0].sum()), 5)
    assert [int(h.committed[0].sum()) for h in hist] == [a - b for a, b in zip(counts, counts[1:])]
    assert hist[0].committed[0].nonzero().flatten().tolist() != list(range(4, 4 + int(hist[0].committed[0].sum())))


def test_order_noise_changes_the_order_reproducibly():
    c = canvas(B=1)
    runs = []
    for seed in (0, 0, 1):
        gc = GenConfig(steps=15, sampling="greedy", order="low-confidence", order_noise=50.0, remdm="none")
        _, hist = D.denoise(MockMLM(), c, IDS, gc, torch.Generator().manual_seed(seed))
        runs.append([h.committed[0].nonzero().flatten().tolist() for h in hist])
    assert runs[0] == runs[1] != runs[2]
    assert runs[0] != [[p] for p in range(4, 19)]  # large noise: not the confidence order any more


def test_remdm_remasks_committed_tokens_and_still_follows_the_schedule():
    c = canvas(B=3, L=40)
    gc = GenConfig(steps=10, sampling="greedy", order="random", remdm="cap", remdm_eta=0.3)
    final, hist = D.denoise(MockMLM(), c, IDS, gc, torch.Generator().manual_seed(0))
    n = int(c.active[0].sum())
    counts = diffusion.mask_counts("linear", n, 10)
    assert [h.masked_left for h in hist] == counts[1:]  # the net count per step is the schedule's
    assert not (final == MASK).any()
    back = [int(h.remasked[0].sum()) for h in hist]
    assert sum(back) > 0 and back[0] == 0 and back[-1] == 0  # none before anything is committed, none at the end
    before = c.tokens.clone()
    for h in hist:
        assert (before[h.remasked] != MASK).all() and (h.tokens[h.remasked] == MASK).all()
        assert not (h.remasked & ~c.active).any()  # only generated text goes back, never the prompt
        before = h.tokens
    gc_none = GenConfig(steps=10, sampling="greedy", order="random", remdm="none")
    _, plain = D.denoise(MockMLM(), c, IDS, gc_none, torch.Generator().manual_seed(0))
    assert len(plain) == len(hist) and all(not h.remasked.any() for h in plain)


@pytest.mark.parametrize("w,want", [(0.0, 61), (1.0, 60)])
def test_guidance_conditions_on_the_prompt(w, want):
    c = canvas(B=1, prompt=1)  # the prompt is token 50
    gc = GenConfig(steps=4, sampling="greedy", cfg=w, prompt="x")
    final, _ = D.denoise(PromptAware(), c, IDS, gc, torch.Generator())
    assert (final[c.active] == want).all()


def test_eos_is_banned_unless_asked_and_respects_min_length():
    c = canvas(B=1, L=20)
    final, _ = D.denoise(EosAt(8), c, IDS, GenConfig(steps=4, sampling="greedy"), torch.Generator())
    assert not (final[0, 1:-1] == 2).any()  # without --stop-at-eos </s> is never written
    gc = GenConfig(steps=4, sampling="greedy", stop_at_eos=True)
    final, _ = D.denoise(EosAt(8), c, IDS, gc, torch.Generator())
    assert final[0, 8] == 2
    assert D.cut_at_eos(final[:, 1:-1], 2, 3)[0] == final[0, 1:8].tolist()  # prompt + text before </s>
    gc = GenConfig(steps=4, sampling="greedy", stop_at_eos=True, min_length=6)  # position 8 is generated token 4
    final, _ = D.denoise(EosAt(8), c, IDS, gc, torch.Generator())
    assert not (final[0, 1:-1] == 2).any()


def test_generation_never_cuts_inside_the_prompt():
    c = canvas(B=1, L=20)
    c.tokens[0, 2] = 2  # the prompt itself holds a </s> (a user can type one)
    gc = GenConfig(steps=4, sampling="greedy", stop_at_eos=True)
    final, _ = D.denoise(EosAt(8), c, IDS, gc, torch.Generator())
    assert final[0, 2] == 2 and final[0, 8] == 2
    assert D.cut_at_eos(final[:, 1:-1], 2, 3) == [[50, 2, 52, 14, 15, 16, 17]]  # cut at the model's </s>
    assert D.cut_at_eos(torch.tensor([[50, 2, 52, 14, 15]]), 2, 3) == [[50, 2, 52, 14, 15]]  # none written: all kept


def test_canvas_fixes_exactly_what_training_protects():
    """The full canvas leaves open the positions a training block masks and scores: all but the
    frame (<s> first, </s> last) and the prompt, a </s> the model writes inside included."""
    window, n_prompt = 12, 3
    c = D.window_canvas(torch.tensor([[50, 51, 52]]), window - 2 - n_prompt, window, IDS, 0, n_prompt, fit=False)
    block = c.tokens.masked_fill(c.tokens == MASK, 9)  # a text the canvas could end up holding
    block[0, 6] = 2  # ... that ends at position 6, padded with 9s after
    assert torch.equal(~c.active, diffusion.protected_positions(block, [1, 3], torch.tensor([n_prompt])))
    assert (~c.active[0]).nonzero().flatten().tolist() == [0, 1, 2, 3, window - 1]


def test_a_model_trained_on_short_documents_learns_to_end(tiny_short_docs, capsys):
    """--packing none scores the </s> that ends each document and pads its block, so the model
    learns to write it: with --stop-at-eos the samples end inside the window. (While </s> was never
    masked the model never predicted it, and no sample ended.)"""
    assert G.main(["--checkpoint", tiny_short_docs, "--stop-at-eos", "--num-samples", "16", "--out", ""]) == 0
    assert capsys.readouterr().out.count("(cut at </s>: kept") >= 12


def test_banned_tokens_never_sampled():
    c = canvas(B=1)
    final, _ = D.denoise(MockMLM(), c, {**IDS, "banned": list(range(14, 20))}, GenConfig(steps=4, sampling="greedy"),
                         torch.Generator())
    assert not torch.isin(final[0, 1:-1], torch.arange(14, 20)).any()


def test_threshold_decoding_terminates_with_progress_each_step():
    c = canvas(B=3)
    gc = GenConfig(decode="threshold", threshold=0.999999, sampling="greedy")
    final, hist = D.denoise(MockMLM(), c, IDS, gc, torch.Generator())
    assert not (final == MASK).any()
    assert all(h.committed.sum(1).min() >= 1 for h in hist)
    left = [h.masked_left for h in hist]
    assert all(a > b for a, b in zip(left, left[1:]))
    gc_easy = GenConfig(decode="threshold", threshold=0.5, sampling="greedy")
    _, hist_easy = D.denoise(MockMLM(), c, IDS, gc_easy, torch.Generator())
    assert len(hist_easy) == 1  # all confident: one parallel step


# ---------------------------------------------------------------------------------------------
# With the tiny trained model: canvases, blocks, infill, seeds
# ---------------------------------------------------------------------------------------------


def run(tiny_model, **kw):
    model, tok, cfg = tiny_model
    gc = GenConfig(**kw)
    return D.generate(model, tok, gc, cfg.max_len, torch.Generator().manual_seed(gc.seed))


def test_prompt_is_prefix_and_fills_window(tiny_model):
    model, tok, cfg = tiny_model
    ids, hist, plen = run(tiny_model, prompt="The history of", num_samples=2)
    prompt = tok("The history of", add_special_tokens=False)["input_ids"]
    assert plen == len(prompt) and ids.shape == (2, cfg.max_len - 2)
    assert (ids[:, :plen] == torch.tensor(prompt)).all()
    assert not torch.isin(ids, torch.tensor(tok.all_special_ids)).any()
    first = hist[0].tokens[0].tolist()  # canvas layout is exactly training's: <s> prompt ... </s>
    assert first[0] == tok.bos_token_id and first[-1] == tok.eos_token_id


def test_same_seed_same_text_different_seed_differs(tiny_model):
    a, _, _ = run(tiny_model, seed=1, temperature=1.0)
    b, _, _ = run(tiny_model, seed=1, temperature=1.0)
    c, _, _ = run(tiny_model, seed=2, temperature=1.0)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_blocks_write_past_the_window(tiny_model):
    model, tok, cfg = tiny_model
    ids, hist, _ = run(tiny_model, block_size=8, length=70, steps=2, prompt="A")
    assert ids.shape[1] == 1 + 70 > cfg.max_len
    assert {h.block for h in hist} == set(range(9))  # 8+8+...+6


def test_infill_keeps_fixed_text(tiny_model):
    model, tok, cfg = tiny_model
    template = "The city [MASK:3] is on the [MASK] river."
    ids, fixed = D.parse_template(template, tok)
    assert ids.count(tok.mask_token_id) == 4 and fixed.count(False) == 4
    out, _, _ = run(tiny_model, template=template, steps=2)
    keep = torch.tensor(fixed)
    assert torch.equal(out[0][keep], torch.tensor(ids)[keep])
    assert not (out == tok.mask_token_id).any()


@pytest.mark.parametrize("kw,msg", [
    (dict(steps=0), "--steps"), (dict(k=0), "--k"), (dict(p=0.0), "--p"), (dict(p=1.5), "--p"),
    (dict(temperature=-1), "--temperature"), (dict(schedule="quadratic"), "--schedule"), (dict(sampling="beam"), "--sampling"),
    (dict(threshold=0), "--threshold"), (dict(num_samples=0), "--num-samples"),
    (dict(prompt="a", template="b [MASK]"), "cannot be combined"), (dict(order="spiral"), "--order must be one of"),
    (dict(order_noise=-1.0), "--order-noise"), (dict(remdm_eta=-0.1), "--remdm-eta"), (dict(remdm="loop"), "--remdm"),
    (dict(remdm="cap", remdm_eta=0.0), "above 0"),
    (dict(cfg=-1.0), "--cfg"), (dict(cfg=float("nan")), "finite"), (dict(min_length=5), "only applies with --stop-at-eos"),
    (dict(canvas="wide"), "--canvas"),
])
def test_bad_generation_flags(kw, msg):
    with pytest.raises(UsageError, match=msg):
        GenConfig(**kw)


def test_full_window_canvas_and_the_fit_one(tiny_model):
    model, tok, cfg = tiny_model
    _, hist, _ = run(tiny_model, prompt="The history of", length=5, steps=2)
    n_prompt, unused = 3, cfg.max_len - 2 - 3 - 5  # the window's masks beyond the 5 asked for
    assert len(tok("The history of", add_special_tokens=False)["input_ids"]) == n_prompt
    first = hist[0].tokens[0]  # the whole window, after step 1 of 2
    assert len(first) == cfg.max_len
    assert int((first == tok.mask_token_id).sum()) == unused + diffusion.mask_counts("linear", 5, 2)[1]
    assert int((hist[-1].tokens[0] == tok.mask_token_id).sum()) == unused  # never filled: they stay masked
    _, hist, _ = run(tiny_model, prompt="The history of", length=5, steps=2, canvas="fit")
    assert hist[0].tokens.shape[1] == 1 + 3 + 5 + 1


def test_guidance_needs_a_condition(tiny_model):
    with pytest.raises(UsageError, match="needs something to condition on"):
        run(tiny_model, cfg=1.0)
    ids, _, _ = run(tiny_model, cfg=1.0, prompt="The history of", steps=3)  # with a prompt it runs
    assert not (ids == tiny_model[1].mask_token_id).any()


def test_canvas_errors(tiny_model):
    with pytest.raises(UsageError, match="window"):
        run(tiny_model, prompt="word " * 200)
    with pytest.raises(UsageError, match="block-size"):
        run(tiny_model, length=100)
    with pytest.raises(UsageError, match="nothing to fill"):
        run(tiny_model, template="no spans here")


def test_cli_errors_are_one_line(tmp_path, capsys):
    from cli import cli

    assert cli(G.main, ["--checkpoint", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "python train.py --quick-test" in err
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    assert cli(G.main, ["--checkpoint", str(tmp_path / "half")]) == 2
    assert "incomplete checkpoint" in capsys.readouterr().err
    for name in ("checkpoint-3000", "checkpoint-500", "final-model"):  # a run whose older checkpoints rotated away
        (tmp_path / "run" / name).mkdir(parents=True)
        (tmp_path / "run" / name / "diffusion_config.json").write_text("{}")
    assert cli(G.main, ["--checkpoint", str(tmp_path / "run" / "checkpoint-1500")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'run'} holds checkpoint-500, checkpoint-3000, final-model" in err
    assert "train.py" not in err  # the user just trained: the error does not send them back to it


def test_cli_end_to_end_show_steps_and_animation(tiny_run, tmp_path, capsys):
    out = tmp_path / "gen.jsonl"
    gif = tmp_path / "d.gif"
    assert G.main(["--checkpoint", tiny_run[1], "--steps", "5", "--show-steps", "--animate", str(gif),
                   "--out", str(out), "--seed", "3"]) == 0
    text = capsys.readouterr().out
    steps = [line for line in text.splitlines() if line.startswith("[block")]
    assert len(steps) == 5 and visualize.MASK_GLYPH in steps[0] and visualize.MASK_GLYPH not in steps[-1]
    counts = [int(line.split("]")[1].split("masked")[0]) for line in steps]
    assert counts == diffusion.mask_counts("linear", 30, 5)[1:]
    from PIL import Image

    assert Image.open(gif).n_frames == 5
    assert '"samples"' in out.read_text()


# ---------------------------------------------------------------------------------------------
# Text of token ids: a byte-level token can hold part of a character
# ---------------------------------------------------------------------------------------------


def split_character(tok, char="日"):
    """The ids of a character the tiny run's byte-level BPE spells in several tokens."""
    ids = tok(char, add_special_tokens=False)["input_ids"]
    assert len(ids) > 1 and all("\ufffd" in tok.decode([t]) for t in ids)  # each alone is not text
    return ids


def test_a_character_split_over_tokens_shows_whole_on_the_token_that_completes_it(tiny_model):
    from tokens import decode_text, token_texts

    _, tok, _ = tiny_model
    text = "a 日本 café, ¿qué? – fin\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = token_texts(tok, ids)
    assert "".join(pieces) == text == tok.decode(ids) and "\ufffd" not in "".join(pieces)
    day = split_character(tok)
    assert token_texts(tok, day) == [""] * (len(day) - 1) + ["日"]
    stray = day[:1] + tok("P", add_special_tokens=False)["input_ids"]  # a lead byte the model did not complete
    assert tok.decode(stray) == "\ufffdP" and decode_text(tok, stray) == "P"


def test_views_decode_runs_between_masks_and_still_mark_every_token(tiny_model):
    """--show-steps, the GIF and the demo decode each run between masks whole: a character shows
    once its last byte is committed, never as U+FFFD, and each of its tokens keeps its own cell."""
    _, tok, _ = tiny_model
    mask, day = tok.mask_token_id, split_character(tok)
    assert visualize.render(day, tok, mask, set()) == "日"
    assert visualize.render(day[:-1] + [mask], tok, mask, set()) == visualize.MASK_GLYPH  # not complete yet
    assert visualize.render([mask] + day[1:], tok, mask, set()) == visualize.MASK_GLYPH  # its lead byte masked
    page = visualize.canvas_html(day + [mask], ["done"] * len(day) + ["mask"], [0.5] * len(day) + [None], tok)
    assert page.count('class="tok done"') == len(day) and page.count(visualize.PART_GLYPH) == len(day) - 1
    assert "日" in page and "\ufffd" not in page


def test_generated_text_has_no_replacement_character(tiny_model):
    """The tiny model writes stray partial bytes; what generate.py prints (decode_text) holds none."""
    from tokens import decode_text

    model, tok, cfg = tiny_model
    gc = GenConfig(num_samples=16, seed=0, out="")
    ids, history, _ = D.generate(model, tok, gc, cfg.max_len, torch.Generator().manual_seed(0))
    assert any("\ufffd" in tok.decode(row) for row in ids.tolist())  # whole-row decoding shows them
    assert not any("\ufffd" in decode_text(tok, row) for row in ids.tolist())
    assert "\ufffd" not in visualize.format_steps(history, tok)
