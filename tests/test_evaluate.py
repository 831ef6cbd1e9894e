"""The ELBO estimator (diffusion.py) against brute force, same-token scoring (metrics.py), the AR
baseline's shape (modeling.py), and evaluate.py / report.py / baseline_ar.py end to end."""

import itertools
import json
import math
import os
import shlex
from types import SimpleNamespace

import pytest
import torch

import cli
import baseline_ar
import evaluate as E
import modeling
import report
from config import UsageError
from diffusion import elbo_terms, protected_positions, stratified_ks
from tokens import never_masked_ids
from metrics import causal_token_nll, held_out_likelihood

# ---------------------------------------------------------------------------------------------
# The ELBO estimator
# ---------------------------------------------------------------------------------------------


def test_stratified_ks_cover_every_k_evenly():
    g = torch.Generator().manual_seed(0)
    n = torch.tensor([4, 7, 1, 62])
    ks = stratified_ks(n, 4, g)  # [4, 4]
    assert ks[0].tolist() == [1, 2, 3, 4]  # draws == n: each k exactly once
    assert ks[2].tolist() == [1, 1, 1, 1]
    assert ((ks >= 1) & (ks <= n[:, None])).all()
    many = stratified_ks(torch.tensor([7]), 7000, g)[0]
    assert torch.bincount(many, minlength=8)[1:].tolist() == [1000] * 7  # uniform on 1..7


class UniformMLM(torch.nn.Module):
    """Same logits everywhere: CE is log V at every masked position whatever the mask."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, **kw):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab) + self.w)


def test_bound_is_exact_for_a_context_free_uniform_model():
    # every draw must give n log V: this checks the n/k weighting and that exactly k are masked
    V, g = 50, torch.Generator().manual_seed(0)
    ids = torch.randint(5, V, (3, 12), generator=g)
    ids[:, 0], ids[:, -1] = 0, 2
    prefix = torch.tensor([0, 3, 9])
    protected = protected_positions(ids, [0, 1, 2], prefix)
    terms = elbo_terms(UniformMLM(V), ids, protected, 4, 6, g)  # [3, 6]
    n = (~protected).sum(1).float()  # [3] = 10, 7, 1
    assert n.tolist() == [10, 7, 1]
    assert torch.allclose(terms, (n * math.log(V))[:, None].expand(3, 6), rtol=1e-5)


def brute_force_bound(model, ids, maskable, mask_id):
    """sum_k (1/k) * mean over every k-subset M of sum_{j in M} CE_j: the exact expectation of
    (n/k) * sum CE with k ~ U{1..n}, written independently of diffusion.py."""
    n, total = len(maskable), 0.0
    with torch.no_grad():
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(maskable, k))
            acc = 0.0
            for M in subsets:
                x = ids.clone()
                x[list(M)] = mask_id
                logp = torch.log_softmax(model(input_ids=x[None]).logits[0].float(), -1)  # [L, V]
                acc -= sum(logp[j, ids[j]].item() for j in M)
            total += acc / len(subsets) / k
    return total


class LeftNeighbourMLM(UniformMLM):
    """Predicts each token to repeat its left neighbour when that one is visible, else uniform:
    its CE depends strongly on how many tokens are masked, so a wrong distribution of k shows."""

    def __init__(self, vocab, mask_id):
        super().__init__(vocab)
        self.mask_id = mask_id

    def forward(self, input_ids, attention_mask=None, **kw):
        left = input_ids[:, :-1]  # [B, L-1]
        hint = torch.nn.functional.one_hot(left, self.vocab) * (left != self.mask_id)[..., None]  # [B, L-1, V]
        logits = torch.zeros(*input_ids.shape, self.vocab)  # [B, L, V]
        logits[:, 1:] = 5.0 * hint
        return SimpleNamespace(logits=logits + self.w)


def test_monte_carlo_bound_matches_brute_force_when_context_matters():
    V, mask_id, n = 20, 4, 5
    ids = torch.tensor([0] + [7] * n + [2])  # <s> a a a a a </s>
    model = LeftNeighbourMLM(V, mask_id)
    exact = brute_force_bound(model, ids, list(range(1, n + 1)), mask_id)
    protected = protected_positions(ids[None], [0, 1, 2], torch.zeros(1, dtype=torch.long))
    terms = elbo_terms(model, ids[None], protected, mask_id, 5000, torch.Generator().manual_seed(0))[0]
    mc, stderr = terms.mean().item(), terms.std().item() / math.sqrt(len(terms))
    assert abs(mc - exact) < 4 * stderr and stderr < 0.02 * exact
    # more than the pseudo-likelihood (each token masked alone): the bound pays for hidden context
    alone = sum(brute_force_bound(model, ids, [j], mask_id) for j in range(1, n + 1))
    assert exact > alone + 1.0


@pytest.mark.parametrize("n", [1, 4])
def test_monte_carlo_bound_matches_brute_force(tiny_model, n):
    model, tok, cfg = tiny_model
    words = tok("The history of art", add_special_tokens=False)["input_ids"][:n]
    ids = torch.tensor([tok.bos_token_id] + words + [tok.eos_token_id])  # [n + 2]
    assert len(words) == n
    exact = brute_force_bound(model, ids, list(range(1, n + 1)), tok.mask_token_id)
    protected = protected_positions(ids[None], never_masked_ids(tok), torch.zeros(1, dtype=torch.long))
    terms = elbo_terms(model, ids[None], protected, tok.mask_token_id, 4000, torch.Generator().manual_seed(0))[0]
    mc, stderr = terms.mean().item(), terms.std().item() / math.sqrt(len(terms))
    if n == 1:  # one token, one mask: no randomness left
        assert mc == pytest.approx(exact, rel=1e-5)
    else:
        assert abs(mc - exact) < 4 * stderr + 1e-4 and stderr < 0.02 * exact


# ---------------------------------------------------------------------------------------------
# Same tokens for both models
# ---------------------------------------------------------------------------------------------


def test_causal_token_nll_matches_the_models_own_loss():
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM, GPT2Config

    model = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    ids = torch.randint(3, 40, (2, 10))
    nll = causal_token_nll(model.eval(), ids)  # [2, 10]
    assert (nll[:, 0] == 0).all()
    assert nll[:, 1:].mean().item() == pytest.approx(model(input_ids=ids, labels=ids).loss.item(), rel=1e-5)


class EosLM(UniformMLM):
    """Causal LM that always bets on </s> (id 2): cheap where </s> comes, dear everywhere else, so
    scoring the wrong positions changes its number."""

    def forward(self, input_ids, attention_mask=None, **kw):
        logits = torch.zeros(*input_ids.shape, self.vocab)  # [B, L, V]
        logits[..., 2] = 5.0
        return SimpleNamespace(logits=logits + self.w)


def test_held_out_scores_the_same_tokens_for_both_models(tiny_model):
    """Both models score the same positions: content after the prefix, a document's </s> included
    (cheap for the AR model that bets on </s>), the frame and <pad> never."""
    model, tok, cfg = tiny_model
    V, (a, b, c), eos, pad = len(tok), tok("The old city", add_special_tokens=False)["input_ids"][:3], 2, 1
    assert tok.eos_token_id == eos and tok.pad_token_id == pad
    blocks = torch.tensor([[0, a, b, c, eos, a, b, eos],  # packed: a document ends at position 4
                           [0, a, b, eos, eos, eos, eos, eos],  # --packing none: ends at 3, padded with </s>
                           [0, a, b, c, a, pad, b, eos]])  # a <pad> is never scored
    out = held_out_likelihood(UniformMLM(V), EosLM(V), blocks, tok, prefix=1, draws=3, batch_size=8,
                              g=torch.Generator().manual_seed(0))
    # scored: positions 2..6 but the <pad>: 5 + 5 + 4 tokens, of which 1 + 4 + 0 are </s>
    assert out["scored_tokens"] == 14 and out["scored_eos"] == 5
    log_z = math.log(V - 1 + math.exp(5.0))
    expected = {"diffusion": math.log(V), "ar": (5 * (log_z - 5.0) + 9 * log_z) / 14}
    for name, nats in expected.items():
        assert out[name]["nats_per_token"] == pytest.approx(nats, rel=1e-5)
        bpb = nats * out["scored_tokens"] / math.log(2) / out["scored_bytes"]
        assert out[name]["bits_per_byte"] == pytest.approx(bpb, rel=1e-5)
    scored_text = [tok.decode([b, c, a, b]), tok.decode([b]), tok.decode([b, c, a, b])]  # </s> adds no bytes
    assert out["scored_bytes"] == sum(len(t.encode("utf-8")) for t in scored_text)
    assert out["diffusion"]["nats_stderr"] == pytest.approx(0.0, abs=1e-5)


# ---------------------------------------------------------------------------------------------
# The AR baseline's shape
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target,d,layers", [(873_216, 128, 2), (146_560, 32, 1), (400_000, 64, 3), (160_000, 32, 6)])
def test_ar_shape_matches_parameter_count(target, d, layers):
    from transformers import GPT2Config, GPT2LMHeadModel

    n_layer, n_inner = modeling.ar_shape(target, 4096, 64, d, layers)
    assert d <= n_inner <= 8 * d
    cfg = GPT2Config(vocab_size=4096, n_positions=64, n_embd=d, n_layer=n_layer, n_head=2, n_inner=n_inner,
                     tie_word_embeddings=True)
    count = modeling.n_params(GPT2LMHeadModel(cfg))
    assert count == modeling.gpt2_param_count(4096, 64, d, n_layer, n_inner)
    assert abs(count / target - 1) <= 0.10


def test_ar_shape_changes_depth_only_when_needed():
    assert modeling.ar_shape(873_216, 4096, 64, 128, 2)[0] == 2
    # 6 layers of width 32 would need an MLP narrower than the width: fewer layers instead
    assert modeling.ar_shape(140_000, 4096, 64, 32, 6)[0] < 6
    with pytest.raises(UsageError):
        modeling.ar_shape(140_000, 4096, 64, 32, 6, fixed_layers=True)


# ---------------------------------------------------------------------------------------------
# End to end on the tiny run
# ---------------------------------------------------------------------------------------------


def test_baseline_trains_and_saves(tiny_baseline, tiny_run):
    final = os.path.join(tiny_baseline, "final-model")
    for f in ("config.json", "model.safetensors", "tokenizer.json", "ar_config.json", "source_train_config.json"):
        assert os.path.isfile(os.path.join(final, f)), f
    with open(os.path.join(final, "ar_config.json")) as f:
        saved = json.load(f)
    assert saved["n_layer"] >= 1 and saved["n_inner"] >= 1 and saved["checkpoint"] == tiny_run[1]
    with open(os.path.join(final, "config.json")) as f:
        gpt = json.load(f)
    assert gpt["n_positions"] == 32 and gpt["tie_word_embeddings"]
    rows = [json.loads(line) for line in open(os.path.join(tiny_baseline, "metrics.jsonl"))]
    assert any("loss" in r for r in rows) and any("eval_loss" in r for r in rows)


def test_every_named_setting_states_what_it_runs():
    """Each setting, AR setting and report sample states every field its rules read (decoding.explicit),
    DEFAULTS are generate.py's defaults, and a name or caption that does not say "defaults" or
    "noise" never runs with order noise (the default noise 8 cannot slip into "greedy")."""
    from decoding import explicit, sampler_setting, setting_of
    from config import GenConfig

    assert setting_of(explicit(E.DEFAULTS)) == setting_of(GenConfig())
    assert E.AR_SETTINGS["ar-same-sampler"] == sampler_setting(explicit(E.DEFAULTS))
    named = [(name, rule) for name, rule in E.SETTINGS.items()] + [(cap, rule) for _, cap, rule in E.REPORT_SAMPLES]
    for name, rule in named:
        noise = setting_of(explicit(rule)).get("order_noise", 0)
        assert noise == 0 or "defaults" in name or "noise" in name, (name, noise)
    for rule in E.AR_SETTINGS.values():
        explicit(rule, left_to_right=True)


def test_evaluate_end_to_end_and_report(tiny_run, tiny_baseline, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["--checkpoint", tiny_run[1], "--baseline", tiny_baseline, "--elbo-blocks", "6", "--elbo-draws", "2",
            "--num-samples", "2", "--settings",
            "defaults,greedy,defaults-32-steps,previous-defaults,no-order-noise,defaults-prompted",
            "--out-dir", str(out)]
    assert E.main(args) == 0
    printed = capsys.readouterr().out
    assert "diffusion ELBO bound" in printed and "AR baseline" in printed and "defaults-32-steps" in printed
    result = json.load(open(out / "evaluation.json"))
    h = result["held_out"]
    from data import build_datasets

    _, tok, cfg = modeling.load_checkpoint(tiny_run[1], device="cpu")
    blocks = build_datasets(cfg, tok)[1][:6]["input_ids"]  # the first 6 held-out blocks, prefix 0
    assert h["blocks"] == 6 and h["prefix"] == 0
    assert h["scored_tokens"] == 6 * (blocks.shape[1] - 2)  # every position inside the frame, any </s> too
    names = [r["name"] for r in result["samples"]]
    assert names == ["held-out text", "defaults", "greedy", "defaults-32-steps", "previous-defaults", "no-order-noise",
                     "defaults-prompted", "ar-same-sampler", "ar-sample"]
    greedy = result["samples"][2]
    assert len(set(greedy["texts"])) == 1  # greedy from an empty canvas: one sample, twice
    assert result["samples"][1]["settings"] == result["default_settings"]  # recorded, so the report can find it
    assert json.load(open(out / "eval_config.json"))["num_samples"] == 2
    hint = printed.split("render the report with: ")[1].split(" (it writes")[0]  # the printed next step, run as is
    assert hint == f"python report.py --evaluation {out / 'evaluation.json'}" == result["commands"][-1]
    assert report.main(shlex.split(hint)[2:]) == 0
    text = (out / "GENERATION_VALIDATION.md").read_text()  # beside its JSON, never the committed page
    prompted = result["samples"][6]  # judged on its continuation only: the prompt is not in its texts
    assert prompted["settings"]["prompt"] == "The history of the"
    assert not any(t.startswith("The history of the") for t in prompted["texts"])
    for part in ("## Commands and config", "python baseline_ar.py", "## Held-out likelihood", "| defaults |",
                 "### Prompted", "### Infill", "⟦", "## Assessment", "## Known limits", "**Repetition.**",
                 "**Order**", "**Steps.**", "**Verdict.**"):
        assert part in text, part


def test_train_eval_and_evaluate_report_one_estimator(tiny_run, tmp_path):
    """train.py's held-out bound and evaluate.py's, on the same blocks with the same draws and
    seed, are the same number: one estimator (diffusion.elbo_estimate) behind both."""
    from trainer import read_metrics

    out, final = tiny_run
    last = [r for r in read_metrics(out) if "eval_elbo_nats" in r][-1]
    cfg = modeling.load_checkpoint(final, device="cpu")[2]
    assert E.main(["--checkpoint", final, "--baseline", "none", "--elbo-blocks", str(last["eval_elbo_blocks"]),
                   "--elbo-draws", str(cfg.elbo_draws), "--seed", str(cfg.seed), "--num-samples", "1",
                   "--settings", "greedy", "--out-dir", str(tmp_path)]) == 0
    d = json.load(open(tmp_path / "evaluation.json"))["held_out"]["diffusion"]
    assert d["nats_per_token"] == pytest.approx(last["eval_elbo_nats"], rel=1e-6)
    assert d["nats_stderr"] == pytest.approx(last["eval_elbo_stderr"], rel=1e-6)


@pytest.mark.parametrize("extra,message", [
    (["--settings", "nope"], "--settings"),
    (["--elbo-draws", "1"], "--elbo-draws"),
    (["--baseline", "/nonexistent/ar"], "no AR baseline"),
    (["--baseline", "none", "--scorer", "no-such-org/no-such-model"], "cannot load"),
    (["--prefix", "40"], "--prefix"),
])
def test_evaluate_errors_are_one_line(tiny_run, tmp_path, capsys, extra, message):
    out = tmp_path / "eval"
    code = cli.cli(E.main, ["--checkpoint", tiny_run[1], "--out-dir", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists()  # nothing half-written


def test_baseline_errors_are_one_line(tmp_path, capsys):
    out = tmp_path / "ar"
    assert cli.cli(baseline_ar.main, ["--checkpoint", str(tmp_path / "missing"), "--output-dir", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: no checkpoint") and not out.exists()
