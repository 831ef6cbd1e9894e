"""Speed work: the masked-only LM head equals the full head, models use SDPA, compiling keeps the
masked-only head, the top-k sampler keeps its distribution, and `bench.py --small` runs.
No timing asserts: the speed figures live in the README, measured by bench.py."""

import json
import os
import subprocess
import sys

import pytest
import torch

import modeling
from conftest import CACHE, ROOT
from cli import UsageError, cli
from config import TrainConfig

# ---------------------------------------------------------------------------------------------
# Masked-only LM head == full head (fp32)
# ---------------------------------------------------------------------------------------------

V, H, L, PAD = 97, 32, 24, 1


def tiny_config(arch: str):
    from transformers import BertConfig, DistilBertConfig, ModernBertConfig, RobertaConfig

    common = dict(vocab_size=V, pad_token_id=PAD)
    return {
        "roberta": lambda: RobertaConfig(**common, hidden_size=H, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=64, max_position_embeddings=L + PAD + 1),
        "bert": lambda: BertConfig(**common, hidden_size=H, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=L),
        "distilbert": lambda: DistilBertConfig(**common, dim=H, n_layers=2, n_heads=2, hidden_dim=64,
                                               max_position_embeddings=L),
        "modernbert": lambda: ModernBertConfig(**common, hidden_size=H, num_hidden_layers=2, num_attention_heads=2,
                                               intermediate_size=64, max_position_embeddings=L, bos_token_id=0,
                                               eos_token_id=2, cls_token_id=0, sep_token_id=2,
                                               global_attn_every_n_layers=1, local_attention=L),
    }[arch]()


def tiny_mlm(arch: str):
    from transformers import AutoModelForMaskedLM

    torch.manual_seed(0)
    return AutoModelForMaskedLM.from_config(tiny_config(arch), attn_implementation="sdpa").eval()


def masked_batch(seed: int = 0):
    """Ids [4, L] (two rows padded at the end) masked by the repo's own mask_tokens."""
    from diffusion import mask_tokens, protected_positions

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (4, L), generator=g)  # [4, L]
    ids[:, 0], ids[:, -1] = 0, 2
    ids[2:, -5:] = PAD
    attention = (ids != PAD).long()
    protected = protected_positions(ids, [0, PAD, 2], torch.zeros(4, dtype=torch.long))
    inputs, labels = mask_tokens(ids, torch.tensor([0.15, 0.5, 0.8, 1.0]), protected, 4, g)
    return inputs, attention, labels


@pytest.mark.parametrize("arch", ["roberta", "bert", "distilbert", "modernbert"])
def test_masked_only_head_matches_full_head(arch):
    model = tiny_mlm(arch)
    assert type(model).__name__ in modeling.HEADS  # else masked_only would quietly run the full head
    inputs, attention, labels = masked_batch()
    rates = torch.tensor([0.15, 0.5, 0.8, 1.0])
    results = {}
    for masked_only in (True, False):
        if masked_only:  # prove the head path never runs the full forward (and its [B, L, V] logits)
            model.forward = lambda *a, **k: pytest.fail("masked-only path ran the full forward")
        for weighting in ("mean", "elbo"):
            model.zero_grad()
            loss, ce, rows = modeling.masked_lm_loss(model, inputs, attention, labels, rates, weighting, masked_only)
            loss.backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            results[masked_only, weighting] = (loss.detach(), ce.detach(), rows, grads)
        if masked_only:
            del model.forward
    for weighting in ("mean", "elbo"):
        (l1, ce1, r1, g1), (l2, ce2, r2, g2) = results[True, weighting], results[False, weighting]
        assert torch.allclose(l1, l2, rtol=1e-5, atol=1e-6), (arch, weighting, l1, l2)
        assert torch.allclose(ce1, ce2, rtol=1e-5, atol=1e-5) and torch.equal(r1, r2)
        assert g1.keys() == g2.keys() and len(g1) > 0
        for name in g1:
            assert torch.allclose(g1[name], g2[name], rtol=1e-4, atol=1e-6), (arch, weighting, name)


# ---------------------------------------------------------------------------------------------
# SDPA attention, compiling in place
# ---------------------------------------------------------------------------------------------


def corpus_tokenizer():
    from data import get_tokenizer

    return get_tokenizer(TrainConfig(model="scratch", cache_dir=CACHE))


@pytest.mark.parametrize("arch", ["modernbert", "roberta", "bert"])
def test_build_model_uses_sdpa(arch, tmp_path):
    tok = corpus_tokenizer()
    cfg = TrainConfig(model="scratch", scratch_arch=arch, scratch_layers=1, scratch_hidden=32, scratch_heads=2,
                      scratch_intermediate=64, max_len=32, cache_dir=CACHE)
    model = modeling.build_model(cfg, tok)
    assert model.config._attn_implementation == "sdpa"
    model.save_pretrained(tmp_path)  # and the pretrained path, from a local folder (no network)
    loaded = modeling.build_model(TrainConfig(model=str(tmp_path), max_len=32), tok)
    assert loaded.config._attn_implementation == "sdpa"


def test_compile_model_keeps_class_keys_and_masked_head():
    model = tiny_mlm("roberta")
    keys = set(model.state_dict())
    modeling.compile_model(model)  # lazy: nothing is compiled until the first call
    assert type(model).__name__ in modeling.HEADS and set(model.state_dict()) == keys
    assert model.roberta._compiled_call_impl is not None  # the encoder that masked_logits calls
    full = tiny_mlm("bert")
    modeling.compile_model(full, masked_only=False)
    assert full._compiled_call_impl is not None


def test_speed_arguments_follow_the_config():
    import trainer

    args = trainer.speed_arguments(TrainConfig(model="scratch", num_workers=2, precision="fp32"))
    assert args["dataloader_num_workers"] == 2 and args["dataloader_persistent_workers"] is True
    assert args["bf16"] is False and args["fp16"] is False and args["optim"] == "adamw_torch_fused"
    assert args["dataloader_pin_memory"] is torch.cuda.is_available()
    args = trainer.speed_arguments(TrainConfig(model="scratch", fused_adamw=False))
    assert args["dataloader_persistent_workers"] is False and args["optim"] == "adamw_torch"


def test_topk_sampler_keeps_the_topk_distribution():
    import decoding

    logits = torch.randn(30, generator=torch.Generator().manual_seed(0)) * 2  # [V]
    n, k = 40000, 5
    tokens = decoding.topk(logits.expand(n, -1), torch.Generator().manual_seed(1), temperature=0.7, k=k)  # [n]
    top = logits.topk(k)
    want = torch.softmax(top.values / 0.7, -1)  # [k]
    got = torch.stack([(tokens == i).float().mean() for i in top.indices])  # [k]
    assert torch.isin(tokens, top.indices).all()
    assert (got - want).abs().max() < 0.015, (got, want)


# ---------------------------------------------------------------------------------------------
# bench.py
# ---------------------------------------------------------------------------------------------


def test_bench_small_runs_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "bench.py", "--small", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import bench

    report = json.loads(out.read_text())
    assert bench.table(report) in proc.stdout  # the printed table is the JSON's numbers
    s = report["settings"]
    assert s["small"] is True and report["quick_test"] is None  # --small skips the quick test
    assert (s["layers"], s["hidden"], s["steps"]) == (1, 64, 6)  # the small preset over the CPU defaults
    assert report["versions"]["torch"] == torch.__version__ and report["command"] == f"python bench.py --small --out {out}"
    t = report["training"]
    for side, batch in (("repo", s["batch_size"]), ("reference", s["baseline_batch_size"])):
        assert t[side]["timed_steps"] == s["steps"] and t[side]["tokens_per_step"] == batch * s["seq_len"]
    assert t["repo"]["lm_head"] == "masked positions" and t["reference"]["lm_head"] == "every position"
    g = report["generation"]
    assert set(g["by_batch"]) == {"1", "16"}
    for r in g["by_batch"].values():
        assert r["diffusion_schedule"]["forward_passes"] == s["gen_steps"]
        assert 1 <= r["diffusion_threshold"]["forward_passes"] <= g["new_tokens"]
        assert r["autoregressive_kv_cache"]["forward_passes"] == g["new_tokens"]
    assert not os.path.exists(str(out) + ".tmp")


@pytest.mark.parametrize("argv,msg", [
    (["--gen-batches", "1,x"], "--gen-batches"),
    (["--steps", "0"], "--steps"),
    (["--threshold", "1.5"], "--threshold"),
])
def test_bench_bad_input_is_one_line_error(argv, msg, capsys, tmp_path):
    import bench

    assert cli(bench.main, argv + ["--small", "--out", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and msg in err and "\n" not in err
    assert not os.listdir(tmp_path)


def test_bench_cuda_without_gpu_is_an_error(monkeypatch):
    import bench

    monkeypatch.setattr(bench, "cuda_visible", lambda: False)  # a machine without a GPU, on any machine
    with pytest.raises(UsageError, match="no CUDA GPU"):
        bench.resolve(["--device", "cuda"])
