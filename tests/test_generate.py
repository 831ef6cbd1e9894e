"""Generation: schedules, samplers, remasking, the denoising loop (mock model with known logits,
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


def test_registries_are_the_flag_choices():
    import config

    assert tuple(D.SAMPLERS) == config.SAMPLER_NAMES == config.CHOICES["GenConfig"]["sampling"]
    assert tuple(D.REMASK) == config.REMASK_NAMES == config.CHOICES["GenConfig"]["remask"]


def logits_fixture(N=64, V=30, seed=0):
    return torch.randn(N, V, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_argmax_and_temperature_zero_is_greedy():
    lg = logits_fixture()
    g = torch.Generator().manual_seed(0)
    assert torch.equal(D.greedy(lg, g), lg.argmax(-1))
    for name in ("topk", "nucleus"):
        assert torch.equal(D.SAMPLERS[name](lg, g, temperature=0.0, k=5, p=0.5), lg.argmax(-1))


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
    a = D.nucleus(lg, torch.Generator().manual_seed(9), p=0.9)
    b = D.nucleus(lg, torch.Generator().manual_seed(9), p=0.9)
    c = D.nucleus(lg, torch.Generator().manual_seed(10), p=0.9)
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---------------------------------------------------------------------------------------------
# Remasking rules
# ---------------------------------------------------------------------------------------------


def test_low_confidence_keeps_most_confident():
    conf = torch.tensor([[0.9, 0.1, 0.5, 0.7, 0.3]])
    masked = torch.tensor([[True, True, True, False, True]])
    commit = D.remask_low_confidence(conf, masked, 2, torch.Generator())
    assert commit.tolist() == [[True, False, True, False, False]]  # 0.7 is not masked


def test_random_commits_exactly_n_masked():
    masked = torch.rand(4, 50, generator=torch.Generator().manual_seed(0)) < 0.6
    n = int(masked.sum(1).min())
    commit = D.remask_random(torch.rand(4, 50), masked, n // 2, torch.Generator().manual_seed(1))
    assert (commit.sum(1) == n // 2).all() and not (commit & ~masked).any()


def test_threshold_commits_confident_and_at_least_one():
    conf = torch.tensor([[0.95, 0.2, 0.91, 0.3], [0.1, 0.2, 0.3, 0.4]])
    masked = torch.tensor([[True, True, True, False], [True, True, True, True]])
    commit = D.commit_threshold(conf, masked, 0.9)
    assert commit.tolist() == [[True, False, True, False], [False, False, False, True]]


# ---------------------------------------------------------------------------------------------
# The loop, with a mock model whose logits are known
# ---------------------------------------------------------------------------------------------


class MockMLM(torch.nn.Module):
    """Predicts token (position + 10) with a confidence that falls with position, so
    low-confidence remasking must fill left to right."""

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


MASK = 4


def canvas(B=2, L=20, prompt=3):
    c = torch.full((B, L), MASK)
    c[:, 0], c[:, -1] = 0, 2
    c[:, 1:1 + prompt] = torch.tensor([50, 51, 52][:prompt])
    return c


@pytest.mark.parametrize("schedule", sorted(diffusion.SCHEDULES))
@pytest.mark.parametrize("steps", [1, 4, 10, 30])
def test_loop_follows_schedule_counts_and_fills_everything(schedule, steps):
    c = canvas()
    gc = GenConfig(steps=steps, schedule=schedule, sampling="greedy")
    final, hist = D.denoise(MockMLM(), c, MASK, gc, torch.Generator().manual_seed(0))
    n = int((c[0] == MASK).sum())
    counts = diffusion.mask_counts(schedule, n, steps)
    assert [h.masked_left for h in hist] == [x for x, prev in zip(counts[1:], counts) if x < prev]
    assert not (final == MASK).any()  # no mask survives
    keep = c != MASK
    assert torch.equal(final[keep], c[keep])  # prompt and special tokens never change
    expected = (torch.arange(c.shape[1]) + 10).expand_as(c)
    assert torch.equal(final[~keep], expected[~keep])  # greedy = argmax everywhere


def test_low_confidence_fills_left_to_right_and_history_records_commits():
    c = canvas(B=1)
    gc = GenConfig(steps=16, schedule="linear", sampling="greedy", remask="low-confidence")
    _, hist = D.denoise(MockMLM(), c, MASK, gc, torch.Generator())
    order = [h.committed[0].nonzero().flatten().tolist() for h in hist]
    assert [p for step in order for p in step] == list(range(4, 19))
    for h in hist:
        assert (h.confidence[h.committed] > 0).all() and torch.isnan(h.confidence[~h.committed]).all()


def test_threshold_decoding_terminates_with_progress_each_step():
    c = canvas(B=3)
    gc = GenConfig(decode="threshold", threshold=0.999999, sampling="greedy")
    final, hist = D.denoise(MockMLM(), c, MASK, gc, torch.Generator())
    assert not (final == MASK).any()
    assert all(h.committed.sum(1).min() >= 1 for h in hist)
    left = [h.masked_left for h in hist]
    assert all(a > b for a, b in zip(left, left[1:]))
    gc_easy = GenConfig(decode="threshold", threshold=0.5, sampling="greedy")
    _, hist_easy = D.denoise(MockMLM(), c, MASK, gc_easy, torch.Generator())
    assert len(hist_easy) == 1  # all confident: one parallel step


def test_banned_tokens_never_sampled():
    c = canvas(B=1)
    gc = GenConfig(steps=4, sampling="greedy")
    final, _ = D.denoise(MockMLM(), c, MASK, gc, torch.Generator(), banned=list(range(14, 20)))
    assert not torch.isin(final[0, 1:-1], torch.arange(14, 20)).any()


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


@pytest.mark.parametrize("kw", [dict(steps=0), dict(k=0), dict(p=0.0), dict(p=1.5), dict(temperature=-1),
                                dict(schedule="quadratic"), dict(sampling="beam"), dict(threshold=0),
                                dict(num_samples=0), dict(prompt="a", template="b [MASK]")])
def test_bad_generation_flags(kw):
    with pytest.raises(UsageError):
        GenConfig(**kw)


def test_canvas_errors(tiny_model):
    with pytest.raises(UsageError, match="window"):
        run(tiny_model, prompt="word " * 200)
    with pytest.raises(UsageError, match="block-size"):
        run(tiny_model, length=100)
    with pytest.raises(UsageError, match="nothing to fill"):
        run(tiny_model, template="no spans here")


def test_cli_errors_are_one_line(tmp_path, capsys):
    from config import cli

    assert cli(G.main, ["--checkpoint", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "python train.py --quick-test" in err
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    assert cli(G.main, ["--checkpoint", str(tmp_path / "half")]) == 2
    assert "incomplete checkpoint" in capsys.readouterr().err


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
