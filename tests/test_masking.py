"""Masking (the forward process): rates, exact counts, what is never masked, reproducibility."""

import dataclasses

import pytest
import torch

import diffusion
import tokens
from config import TrainConfig, UsageError
from data_collator import DiffusionCollator
from diffusion import IGNORE, SCHEDULES, mask_tokens, prefix_lengths, protected_positions, sample_rates

MASK, PAD, BOS, EOS = 4, 1, 0, 2
SPECIAL = [BOS, PAD, EOS]


class FakeTok:
    mask_token_id, pad_token_id, bos_token_id, eos_token_id = MASK, PAD, BOS, EOS
    all_special_ids = [BOS, PAD, EOS, 3, MASK]


def batch(B=8, L=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 500, (B, L), generator=g)
    ids[:, 0], ids[:, -1] = BOS, EOS
    return ids


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5, 0.9, 1.0])
def test_mask_count_is_exact_and_labels_line_up(rate):
    ids = batch()
    protected = protected_positions(ids, SPECIAL, torch.zeros(len(ids), dtype=torch.long))
    inputs, labels = mask_tokens(ids, torch.full((len(ids),), rate), protected, MASK, torch.Generator().manual_seed(1))
    n = (~protected).sum(1)
    masked = inputs == MASK
    assert torch.equal(masked.sum(1), torch.clamp(torch.round(rate * n), min=1).long())
    assert torch.equal(labels[masked], ids[masked])  # labels hold the original token where masked
    assert (labels[~masked] == IGNORE).all()  # and -100 everywhere else
    assert torch.equal(inputs[~masked], ids[~masked])


def test_observed_fraction_tracks_rate_over_many_batches():
    cfg = TrainConfig(model="scratch", per_sample_rate=True, mask_distribution="linear", prefix_mode="none")
    col = DiffusionCollator(FakeTok(), cfg, seed=3)
    rates, fracs = [], []
    for s in range(20):
        out = col([{"input_ids": row} for row in batch(seed=s)])
        rates += out["mask_rate"].tolist()
        fracs += ((out["input_ids"] == MASK).sum(1) / 62).tolist()  # 62 maskable of 64
    for r, f in zip(rates, fracs):
        assert abs(r - f) <= 1 / 62 + 1e-6


def test_prefix_specials_and_padding_never_masked():
    ids = batch(L=32)
    ids[:, -5:-1] = PAD  # some padding
    prefix = torch.tensor([0, 3, 5, 10, 0, 1, 2, 29])
    protected = protected_positions(ids, SPECIAL, prefix)
    inputs, labels = mask_tokens(ids, torch.ones(len(ids)), protected, MASK, torch.Generator().manual_seed(0))
    for i, p in enumerate(prefix.tolist()):
        assert (inputs[i, : p + 1] == ids[i, : p + 1]).all()  # <s> and the prefix survive at rate 1.0
    assert (inputs[:, -5:] == ids[:, -5:]).all()  # padding and </s>
    assert ((inputs == MASK) == ~protected).all()  # rate 1.0 masks everything else


def test_a_document_end_is_masked_and_scored_the_frame_never():
    """A packed block's inner </s> (a document boundary) is text the model learns; its frame
    (<s> first, the closing </s> last) and <pad> are not. At rate 1.0 the collator masks exactly
    the rest, with the original token as label."""
    ids = torch.tensor([[BOS, 7, 8, EOS, 9, PAD, 10, EOS],
                        [BOS, 7, EOS, EOS, EOS, EOS, EOS, EOS]])  # --packing none: a document padded with </s>
    assert tokens.never_masked_ids(FakeTok()) == [BOS, PAD, 3]
    cfg = TrainConfig(model="scratch", mask_levels="1.0", prefix_mode="none")
    out = DiffusionCollator(FakeTok(), cfg, seed=0)([{"input_ids": row} for row in ids])
    scored = out["labels"] != IGNORE
    assert scored.tolist() == [[False, True, True, True, True, False, True, False],
                               [False, True, True, True, True, True, True, False]]
    assert torch.equal(out["labels"][scored], ids[scored])  # the inner </s> is a label like any token
    assert (out["input_ids"][scored] == MASK).all() and torch.equal(out["input_ids"][~scored], ids[~scored])


def test_fully_protected_row_gets_no_mask():
    ids = torch.tensor([[BOS, 7, 8, EOS]])
    protected = protected_positions(ids, SPECIAL, torch.tensor([2]))
    inputs, _ = mask_tokens(ids, torch.tensor([1.0]), protected, MASK, torch.Generator())
    assert torch.equal(inputs, ids)


def test_prefix_modes():
    g = torch.Generator().manual_seed(0)
    assert (prefix_lengths(50, "fixed", 16, g) == 16).all()
    assert (prefix_lengths(50, "none", 16, g) == 0).all()
    v = prefix_lengths(500, "variable", 16, g)
    assert v.min() == 0 and v.max() == 16


@pytest.mark.parametrize("dist", ("levels",) + tuple(SCHEDULES))
def test_rate_distributions_stay_in_range(dist):
    cfg = TrainConfig(model="scratch", mask_distribution=dist, mask_min=0.2, per_sample_rate=True)
    r = sample_rates(2000, cfg, torch.Generator().manual_seed(0))
    assert r.max() <= 1.0
    if dist != "levels":
        assert r.min() >= 0.2 - 1e-6
    else:
        assert set(torch.round(r * 10).long().tolist()) == set(range(1, 11))  # 0.1..1.0, mask_min unused
    if dist == "cosine":  # cos(pi/2 u) puts more mass on heavy masking
        assert (r > 0.6).float().mean() > 0.5
    if dist == "linear":  # uniform on [0.2, 1]: mean 0.6
        assert abs(float(r.mean()) - 0.6) < 0.02


def test_one_schedule_registry_feeds_training_and_generation(monkeypatch):
    """Swap the curve behind a schedule name: the collator's rate draws and generation's per-step
    mask counts both follow it, because both read diffusion.SCHEDULES."""
    monkeypatch.setitem(diffusion.SCHEDULES, "linear", lambda r: 0.5)  # always half masked
    cfg = TrainConfig(model="scratch", mask_distribution="linear", mask_min=0.0001, per_sample_rate=True)
    out = DiffusionCollator(FakeTok(), dataclasses.replace(cfg, prefix_mode="none"), seed=0)(
        [{"input_ids": row} for row in batch()])
    assert torch.allclose(sample_rates(8, cfg, torch.Generator()), torch.full((8,), 0.0001 + 0.9999 * 0.5))
    assert ((out["input_ids"] == MASK).sum(1) == 31).all()  # round(0.50005 * 62)
    assert torch.allclose(out["mask_rate"], torch.full((8,), 31 / 62))  # the collator reports the realized k/n
    assert diffusion.mask_counts("linear", 40, 4) == [40, 20, 20, 20, 0]


def test_dataloader_workers_never_repeat_masks_and_replay_their_own():
    """Two workers draw different masks for identical rows; a restarted loader replays them."""
    cfg = TrainConfig(model="scratch", per_sample_rate=True, prefix_mode="none")
    rows = [{"input_ids": batch(B=1, seed=0)[0]} for _ in range(16)]  # every row the same block

    def masks():
        loader = torch.utils.data.DataLoader(rows, batch_size=4, num_workers=2,
                                             collate_fn=DiffusionCollator(FakeTok(), cfg, seed=7))
        return [b["input_ids"] for b in loader]  # batches alternate worker 0, 1, 0, 1

    first = masks()
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[2], first[3])
    assert all(not torch.equal(a, b) for a in first for b in first if a is not b)
    again = masks()
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_collator_state_resumes_the_mask_stream():
    cfg = TrainConfig(model="scratch", per_sample_rate=True)
    feats = [{"input_ids": row} for row in batch()]
    col = DiffusionCollator(FakeTok(), cfg, seed=5)
    col(feats)
    state = col.state_dict()
    expected = col(feats)["input_ids"]
    fresh = DiffusionCollator(FakeTok(), cfg, seed=5)
    assert not torch.equal(fresh(feats)["input_ids"], expected)  # without the state: the seed's first masks
    fresh.load_state_dict(state)
    assert torch.equal(fresh(feats)["input_ids"], expected)


def test_one_rate_per_batch_by_default():
    cfg = TrainConfig(model="scratch")
    r = sample_rates(16, cfg, torch.Generator().manual_seed(0))
    assert (r == r[0]).all()


def test_collator_is_seeded():
    cfg = TrainConfig(model="scratch", per_sample_rate=True)
    feats = [{"input_ids": row} for row in batch()]
    a = DiffusionCollator(FakeTok(), cfg, seed=5)(feats)
    b = DiffusionCollator(FakeTok(), cfg, seed=5)(feats)
    c = DiffusionCollator(FakeTok(), cfg, seed=6)(feats)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["input_ids"], c["input_ids"])


@pytest.mark.parametrize("bad", [dict(mask_levels="0,0.5"), dict(mask_levels="0.5,1.2"), dict(mask_levels="a,b"),
                                 dict(mask_min=0.0), dict(mask_distribution="zipf"), dict(prefix_len=500),
                                 dict(loss_weighting="sum")])
def test_invalid_rate_settings_raise(bad):
    with pytest.raises(UsageError):
        TrainConfig(**bad)


def test_elbo_weighting_matches_definition():
    """loss = sum_i (1/t_i) sum_masked CE / sum_i n_i, checked against a direct computation."""
    from transformers import BertConfig, BertForMaskedLM

    from modeling import masked_lm_loss

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=32)).eval()
    ids = torch.randint(5, 50, (3, 12))
    ids[:, 0], ids[:, -1] = BOS, EOS
    rates = torch.tensor([0.2, 0.5, 1.0])
    protected = protected_positions(ids, SPECIAL, torch.zeros(3, dtype=torch.long))
    inputs, labels = mask_tokens(ids, rates, protected, MASK, torch.Generator().manual_seed(0))
    loss, ce, rows = masked_lm_loss(model, inputs, None, labels, rates, "elbo")
    logits = model(input_ids=inputs).logits
    expect = 0.0
    for i in range(3):
        m = labels[i] != IGNORE
        expect += torch.nn.functional.cross_entropy(logits[i][m], labels[i][m], reduction="sum") / rates[i]
    assert torch.allclose(loss, expect / 30, atol=1e-5)  # 10 maskable positions per row
    plain, _, _ = masked_lm_loss(model, inputs, None, labels)
    assert torch.allclose(plain, ce.mean())
