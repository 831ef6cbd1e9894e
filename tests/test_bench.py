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
from config import GenConfig, TrainConfig
from decoding import SAMPLERS, describe

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
        # layer 1 attends only within 4 positions either side, as ModernBERT-base's local layers do
        "modernbert-local": lambda: ModernBertConfig(**common, hidden_size=H, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=64,
                                                     max_position_embeddings=L, bos_token_id=0, eos_token_id=2,
                                                     cls_token_id=0, sep_token_id=2, global_attn_every_n_layers=2,
                                                     local_attention=8),
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
# Fast-dLLM's block cache (kvcache.py): exact when rebuilt before every pass
# ---------------------------------------------------------------------------------------------

CACHE_IDS = {"mask": 4, "eos": 2, "banned": [0, PAD, 3, 4]}


def block_canvas(B: int = 3):
    """<s>, 9 context tokens, the 8-token block, 5 masks beyond it (not filled), </s>: L tokens."""
    import decoding

    g = torch.Generator().manual_seed(3)
    tokens = torch.cat([torch.zeros(B, 1, dtype=torch.long), torch.randint(5, V, (B, 9), generator=g),
                        torch.full((B, 13), 4), torch.full((B, 1), 2)], 1)  # [B, L]
    pos = torch.arange(L).expand(B, -1)
    return decoding.Canvas(tokens, (pos >= 10) & (pos < 18), (pos >= 1) & (pos < 10), start=10)


@pytest.mark.parametrize("arch", ["modernbert", "modernbert-local", "bert", "roberta"])
@pytest.mark.parametrize("mode,span", [("prefix", (10, L)), ("dual", (10, 18))])
def test_block_cache_rebuilt_every_pass_gives_the_uncached_tokens(arch, mode, span, monkeypatch):
    """Cached passes compute only their span (checked) with the other positions' keys/values from
    the cache; rebuilt before each pass, they reproduce the uncached run token for token: positions
    (rotary or absolute), the splice and ModernBERT's local attention are right."""
    import decoding
    import kvcache
    from config import GenConfig

    model = tiny_mlm(arch)
    with torch.no_grad():  # peaked attention, so a wrong position or mask shows (random init attends uniformly)
        for name, p in model.named_parameters():
            p.mul_(20 if any(k in name for k in ("Wqkv", "query", "key")) else 1)
    spans = []
    encode = kvcache.encode
    monkeypatch.setattr(kvcache, "encode", lambda m, t, c, s=None, r=None: spans.append(s) or encode(m, t, c, s, r))
    gc = GenConfig(steps=6, sampling="nucleus", temperature=1.0, p=0.95, order="low-confidence", order_noise=2.0)
    plain, plain_hist = decoding.denoise(model, block_canvas(), CACHE_IDS, gc, torch.Generator().manual_seed(0))
    cached, hist = decoding.denoise(model, block_canvas(), CACHE_IDS, GenConfig(**{**gc.__dict__, "cache": mode}),
                                    torch.Generator().manual_seed(0), refresh=1)
    assert torch.equal(plain, cached) and not (cached == 4)[:, 10:18].any()
    assert [h.committed.tolist() for h in hist] == [h.committed.tolist() for h in plain_hist]
    for h, p in zip(hist, plain_hist):  # and the same probabilities, not just the same draws
        assert torch.allclose(h.confidence, p.confidence, rtol=1e-4, atol=1e-6, equal_nan=True)
    assert spans.count(span) == len(hist) - 1 and spans.count(None) == len(hist)  # rebuilt, then the span
    per_block, _ = decoding.denoise(model, block_canvas(), CACHE_IDS, GenConfig(**{**gc.__dict__, "cache": mode}),
                                    torch.Generator().manual_seed(0))
    assert not (per_block == 4)[:, 10:18].any()  # the approximate (Fast-dLLM) run fills the block too


@pytest.mark.parametrize("arch", ["modernbert", "modernbert-local"])
def test_fast_modernbert_gives_transformers_hidden_states(arch):
    """Generation's own ModernBERT forward (fast_modernbert) computes what transformers' does:
    every position, and a spliced span over cached keys/values (which, with nothing changed,
    equals the full pass there); local layers see only their window (L > local_attention)."""
    import fast_modernbert
    from kvcache import BlockCache

    model = tiny_mlm(arch)
    with torch.no_grad():  # peaked attention, so a wrong position, mask or splice shows
        for name, p in model.named_parameters():
            p.mul_(20 if "Wqkv" in name else 1)
    x = torch.randint(5, V, (3, L), generator=torch.Generator().manual_seed(1))
    assert fast_modernbert.supports(model) and not fast_modernbert.supports(tiny_mlm(arch).train())
    with torch.no_grad():
        want = model.model(input_ids=x).last_hidden_state  # [3, L, H]
        cache = BlockCache()
        assert torch.allclose(fast_modernbert.encode(model, x, cache), want, atol=1e-5)
        assert torch.allclose(fast_modernbert.encode(model, x, cache, (10, 18)), want[:, 10:18], atol=1e-5)
        rows = torch.tensor([[0, 5, 9], [2, 3, 20], [1, 7, 23]])  # the last layer's MLP at these rows alone
        assert torch.allclose(fast_modernbert.encode(model, x, rows=rows), want[torch.arange(3)[:, None], rows]
                              .flatten(0, 1), atol=1e-5)
        where = torch.rand(3, L, generator=torch.Generator().manual_seed(2)) < 0.3  # a different count per row
        assert torch.allclose(fast_modernbert.encode(model, x, rows=where), want[where], atol=1e-5)
        tail = where[:, 10:]  # the same rows inside a span over the cache
        assert torch.allclose(fast_modernbert.encode(model, x, cache, (10, L), tail), want[:, 10:][tail], atol=1e-5)
        h = want[where]  # [N, H]: the LM head through its own ops gives the modules' logits
        assert torch.allclose(fast_modernbert.head(model, h), model.decoder(model.head(h)), atol=1e-5)
        model.model.embeddings.tok_embeddings.weight.mul_(2)  # an in-place update shows at once
        model.resize_token_embeddings(V + 8)  # a new embedding: its weights are gathered again
        assert torch.allclose(fast_modernbert.encode(model, x), model.model(input_ids=x).last_hidden_state, atol=1e-5)
        assert fast_modernbert.head(model, h).shape == (len(h), V + 8)


def test_fast_gpt2_gives_transformers_logits_and_tokens(monkeypatch):
    """The AR baseline's own cached step (fast_gpt2) computes what transformers' GPT-2 does: the
    next-token logits after a prompt and after each appended token, and, through ar_generate, the
    same sampled tokens as transformers' forward with its own cache."""
    import fast_gpt2
    from decoding import ar_generate
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=V, n_positions=L, n_embd=H, n_layer=2, n_head=2, n_inner=48, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg).eval()
    assert fast_gpt2.supports(model) and not fast_gpt2.supports(GPT2LMHeadModel(cfg).train())
    scaled = GPT2Config(**{**cfg.to_dict(), "scale_attn_by_inverse_layer_idx": True})  # another attention: not its math
    assert not fast_gpt2.supports(GPT2LMHeadModel(scaled).eval())
    with torch.no_grad():  # peaked attention, so a wrong position, causal mask or cache slot shows
        for name, p in model.named_parameters():
            p.mul_(8 if "c_attn" in name or "wpe" in name else 1)
    x = torch.randint(3, V, (3, L), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(input_ids=x).logits  # [3, L, V]
        kv = fast_gpt2.KV(model, 3)
        got = [fast_gpt2.step(model, x[:, :5], kv)] + [fast_gpt2.step(model, x[:, t:t + 1], kv) for t in range(5, L)]
        assert torch.allclose(torch.stack(got, 1), want[:, 4:], atol=1e-5)
        with pytest.raises(ValueError):  # past the model's positions
            fast_gpt2.step(model, x[:, :1], kv)
        start, gc = x[:, :3], GenConfig(temperature=1.0, p=0.9)
        steps, step = [], fast_gpt2.step
        monkeypatch.setattr(fast_gpt2, "step", lambda *a: steps.append(1) or step(*a))
        tokens = ar_generate(model, start, 12, gc, [0], torch.Generator().manual_seed(4))
        assert torch.equal(tokens, ar_generate(model, start, 12, gc, [0], torch.Generator().manual_seed(4), fast=False))
        assert len(steps) == 12  # one fast step per token, none with fast=False
        model.transformer.wte.weight.mul_(2)  # an in-place update shows at once
        model.resize_token_embeddings(V + 8)  # a new embedding: its weights are gathered again
        kv = fast_gpt2.KV(model, 3, 8)  # room for 8 positions only
        assert torch.allclose(fast_gpt2.step(model, x[:, :7], kv), model(input_ids=x[:, :7]).logits[:, -1], atol=1e-5)
        assert fast_gpt2.step(model, x[:, 7:8], kv).shape == (3, V + 8)
        with pytest.raises(ValueError):
            fast_gpt2.step(model, x[:, 8:9], kv)
        with pytest.raises(ValueError):
            fast_gpt2.KV(model, 3, L + 1)


def test_block_cache_in_block_generation_on_the_trained_model(tiny_model):
    """The same through generation_steps: blocks past the window, sliding context, the tokenizer's
    ids, ModernBERT as train.py builds it."""
    import decoding
    from config import GenConfig

    model, tok, cfg = tiny_model
    gc = GenConfig(length=40, block_size=8, steps=4, num_samples=2, out="")
    want, _, _ = decoding.generate(model, tok, gc, cfg.max_len, torch.Generator().manual_seed(1))
    for mode in ("prefix", "dual"):
        got, _, _ = decoding.generate(model, tok, GenConfig(**{**gc.__dict__, "cache": mode}), cfg.max_len,
                                      torch.Generator().manual_seed(1), refresh=1)
        assert torch.equal(want, got), mode


def test_block_cache_refuses_a_model_it_does_not_know():
    import decoding
    from config import GenConfig

    with pytest.raises(UsageError, match="--cache prefix knows ModernBERT, BERT and RoBERTa"):
        decoding.denoise(tiny_mlm("distilbert"), block_canvas(), CACHE_IDS, GenConfig(cache="prefix"),
                         torch.Generator())


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
    assert set(g["by_batch"]) == {"1", "16"} and g["new_tokens"] == 32 and g["models"]["diffusion"] == "random weights"
    for r in g["by_batch"].values():
        assert r["defaults"]["forward_passes"] == GenConfig().steps  # generate.py's defaults, not bench's own
        assert r["defaults_one_token_per_pass"]["forward_passes"] == g["new_tokens"]
        assert r["ar_kv_cache"]["forward_passes"] == g["new_tokens"]
        assert r["speedup"]["defaults"] == pytest.approx(r["ar_kv_cache"]["seconds"] / r["defaults"]["seconds"])
        assert r["defaults"]["label"] == describe(GenConfig(length=32))  # the settings named in the table
        assert r["ar_kv_cache"]["label"] == SAMPLERS[GenConfig().sampling].text(GenConfig())
        assert r["ar_transformers"]["forward_passes"] == g["new_tokens"]  # the same AR through transformers' forward
        assert r["ar_transformers"]["speedup"] == pytest.approx(r["ar_transformers"]["seconds"]
                                                                 / r["defaults"]["seconds"])
        threads = report["machine"]["torch_threads"]
        if threads > 1:  # each side again on one thread; the ratio takes each side's faster time
            b = r["best_threads"]
            for side in ("defaults", "ar_kv_cache"):
                assert b["seconds"][side] == min(b["one_thread"][side], r[side]["seconds"])
                assert b["threads"][side] == (1 if b["one_thread"][side] <= r[side]["seconds"] else threads)
            assert b["speedup"] == pytest.approx(b["seconds"]["ar_kv_cache"] / b["seconds"]["defaults"])
    assert g["flops_per_sample"]["defaults_one_token_per_pass"] > g["flops_per_sample"]["defaults"] > 0
    readme = tmp_path / "README.md"  # --render writes the tables between the markers naming the command
    command = bench.render_command(str(out))
    readme.write_text(f"# x\n<!-- rendered by: {command} -->\nold\n<!-- end of: {command} -->\ntail\n")
    from report import render_into

    render_into(str(readme), command, bench.readme_markdown(report))
    text = readme.read_text()
    assert "old" not in text and text.endswith(f"<!-- end of: {command} -->\ntail\n")
    assert f"{r['speedup']['defaults']:.2f}x" in text and report["command"] in text
    if "best_threads" in r:
        assert f"**{r['best_threads']['speedup']:.2f}x**" in text
    assert f"| {r['ar_transformers']['seconds']:.3f} | {r['defaults']['seconds']:.3f} | " \
           f"{r['ar_transformers']['speedup']:.2f}x |" in text
    assert not os.path.exists(str(out) + ".tmp")


@pytest.mark.parametrize("argv,msg", [
    (["--gen-batches", "1,x"], "--gen-batches"),
    (["--steps", "0"], "--steps"),
    (["--gen-repeats", "0"], "--gen-repeats"),
    (["--render", "/nonexistent.json"], "--render"),
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


def test_readme_performance_tables_are_the_render_of_their_json():
    """README's Performance tables cannot drift from the committed bench runs: each block is exactly
    `python bench.py --render <json>` of its JSON."""
    import bench
    from report import replace_block

    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    for path in ("docs/bench.json", "docs/profile.json"):
        with open(os.path.join(ROOT, path)) as f:
            report = json.load(f)
        assert replace_block(readme, bench.render_command(path), bench.readme_markdown(report)) == readme, path
