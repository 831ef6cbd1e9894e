"""experiments/: the pure measures they add (PLL, CKA, ECE, attention entropy, decoding order),
and a small-settings run of each script on the tiny model that checks its files and numbers."""

import csv
import json
import math
import os
import sys
from types import SimpleNamespace

import pytest
import torch

from cli import cli
from decoding import Step
from metrics import pseudo_log_likelihood

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))
import fortunes_corpus as FC  # noqa: E402
import layer_analysis as LA  # noqa: E402
import masking_viz as MV  # noqa: E402
import sampler_frontier as SAF  # noqa: E402
import schedule_comparison as SC  # noqa: E402
import text_ends as TE  # noqa: E402
import speed_frontier as SPF  # noqa: E402
import timings as TM  # noqa: E402

MASK, V = 4, 12

# ---------------------------------------------------------------------------------------------
# Pseudo-log-likelihood with mock models of known behaviour
# ---------------------------------------------------------------------------------------------


class MockLM(torch.nn.Module):
    """A masked LM whose logits are a fixed function of its input (not in modeling.HEADS, so
    masked_logits runs the full forward and picks the rows)."""

    def __init__(self, rule):
        super().__init__()
        self.rule = rule
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # gives the model a device

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.rule(input_ids))


def uniform(ids):
    return torch.zeros(*ids.shape, V)  # [B, L, V]


def copy_own_input(ids):
    return 20.0 * torch.nn.functional.one_hot(ids, V).float()  # predicts what it sees at the position


def copy_left(ids):
    left = torch.cat([ids[:, :1], ids[:, :-1]], 1)  # [B, L]
    return 20.0 * torch.nn.functional.one_hot(left, V).float()


def test_pll_uniform_model_is_log_vocab():
    ids = torch.randint(5, V, (3, 7), generator=torch.Generator().manual_seed(0))
    assert pseudo_log_likelihood(MockLM(uniform), ids, MASK) == pytest.approx(math.log(V), abs=1e-5)


def test_pll_hides_the_scored_position_and_shows_the_rest():
    ids = torch.tensor([[7, 7, 7, 7, 7, 7], [5, 6, 7, 8, 9, 10]])
    # the scored token itself is masked: a model that copies its input sees <mask> and fails
    assert pseudo_log_likelihood(MockLM(copy_own_input), ids, MASK) > 15
    # its neighbours stay visible: copying the left neighbour is perfect on a constant row
    where = torch.zeros_like(ids, dtype=torch.bool)
    where[0, 1:] = True
    assert pseudo_log_likelihood(MockLM(copy_left), ids, MASK, where) < 1e-6
    where = torch.zeros_like(ids, dtype=torch.bool)
    where[1, 1:] = True  # every token differs from its left neighbour
    assert pseudo_log_likelihood(MockLM(copy_left), ids, MASK, where) > 15
    with pytest.raises(ValueError):
        pseudo_log_likelihood(MockLM(uniform), ids, MASK, torch.zeros_like(where))


def test_pll_does_not_depend_on_batching(tiny_model):
    model, tok, cfg = tiny_model
    ids = torch.randint(5, len(tok), (2, cfg.max_len), generator=torch.Generator().manual_seed(1))
    where = torch.rand(ids.shape, generator=torch.Generator().manual_seed(2)) < 0.5
    one = pseudo_log_likelihood(model, ids, tok.mask_token_id, where, batch_size=1)
    many = pseudo_log_likelihood(model, ids, tok.mask_token_id, where, batch_size=1000)
    assert one == pytest.approx(many, rel=1e-4) and 0 < one < 50


# ---------------------------------------------------------------------------------------------
# CKA, calibration, attention entropy, decoding order
# ---------------------------------------------------------------------------------------------


def test_linear_cka():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 8, generator=g)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    assert LA.linear_cka(x, x) == pytest.approx(1.0)
    assert LA.linear_cka(x, 3.0 * x @ q + 5.0) == pytest.approx(1.0)  # rotation, scale, shift
    y = torch.randn(2000, 16, generator=g)
    assert LA.linear_cka(x, y) < 0.1
    assert LA.linear_cka(x, y) == pytest.approx(LA.linear_cka(y, x))


def test_reliability_and_ece():
    g = torch.Generator().manual_seed(0)
    conf = torch.rand(50000, generator=g)
    calibrated = torch.rand(50000, generator=g) < conf  # right with probability = confidence
    ece, table = LA.reliability(conf, calibrated, 10)
    assert ece < 0.02
    assert sum(row[2] for row in table) == 50000 and len(table) == 10
    ece, table = LA.reliability(torch.full((100,), 0.9), torch.zeros(100, dtype=torch.bool), 10)
    assert ece == pytest.approx(0.9)  # always sure, always wrong
    _, table = LA.reliability(torch.ones(4), torch.ones(4, dtype=torch.bool), 10)
    assert table[-1][2] == 4  # confidence 1.0 lands in the top bin


def test_attention_entropy_bounds():
    L = 8
    uniform_rows = torch.full((1, 2, L, L), 1.0 / L)
    one_hot = torch.eye(L).expand(1, 2, L, L)
    assert torch.allclose(LA.attention_entropy(uniform_rows), torch.full((1, 2, L), math.log2(L)))
    assert torch.allclose(LA.attention_entropy(one_hot), torch.zeros(1, 2, L))


def test_commit_steps_and_left_to_right():
    B, L = 2, 6
    history = []
    for s in range(1, 5):  # positions 1..4 committed one per step, left to right
        committed = torch.zeros(B, L, dtype=torch.bool)
        committed[:, s] = True
        history.append(Step(0, s, torch.zeros(B, L, dtype=torch.long), committed, torch.zeros(B, L), 4 - s))
    order = SC.commit_steps(history, (B, L))
    assert order[0].tolist()[1:5] == [1, 2, 3, 4] and order[:, 0].isnan().all() and order[:, 5].isnan().all()
    assert SC.left_to_right(order) == pytest.approx(1.0)
    assert SC.left_to_right(order.flip(1)) == pytest.approx(-1.0)


# ---------------------------------------------------------------------------------------------
# The scripts, small settings on the tiny model
# ---------------------------------------------------------------------------------------------


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_masking_viz(tiny_run, tmp_path, capsys):
    out = tmp_path / "viz"
    assert MV.main(["--checkpoint", tiny_run[1], "--levels", "0.25,0.5,1.0", "--draws", "500",
                    "--steps", "4", "--out-dir", str(out)]) == 0
    text = capsys.readouterr().out
    assert "25% masked" in text and "100% masked" in text and "█" in text
    saved = (out / "masking_levels.txt").read_text()
    assert saved.strip() in text and saved.count("--- ") == 3  # the terminal view, one section per level
    from PIL import Image

    for name in ("masking_schedules.png", "masking_rate_distributions.png"):
        assert min(Image.open(out / name).size) > 300, name
    assert json.loads((out / "masking_viz.json").read_text())["levels"] == "0.25,0.5,1.0"


def test_masking_viz_masks_are_nested(tiny_model):
    _, tok, cfg = tiny_model
    ids = torch.randint(5, len(tok), (cfg.max_len,), generator=torch.Generator().manual_seed(0))
    ids[0], ids[-1] = tok.bos_token_id, tok.eos_token_id
    views = MV.masked_views(ids, [0.2, 0.5, 1.0], 3, tok, seed=0)
    n = cfg.max_len - 2 - 3  # content after the 3-token prompt
    assert [k for _, _, k, _ in views] == [round(0.2 * n), round(0.5 * n), n] and views[0][3] == n
    masks = [inputs == tok.mask_token_id for _, inputs, _, _ in views]
    assert all((a & ~b).sum() == 0 for a, b in zip(masks, masks[1:]))  # hidden at 20% => hidden at 50%
    assert not masks[-1][:4].any()  # <s> and the prompt stay visible at 100%
    assert MV.format_views(views, tok, 40).count("█") == sum(k for _, _, k, _ in views)


def test_schedule_comparison(tiny_run, tmp_path, capsys):
    out = tmp_path / "sched"
    assert SC.main(["--checkpoint", tiny_run[1], "--schedules", "linear,cosine", "--steps", "2,4",
                    "--samplers", "greedy,topk", "--orders", "low-confidence", "--prompts", "3",
                    "--prompt-len", "4", "--heatmap-steps", "4", "--threads", "0", "--out-dir", str(out)]) == 0
    text = capsys.readouterr().out
    assert "(held-out)" in text and "self-graded" in text
    rows = read_csv(out / "schedule_comparison_final-model.csv")
    assert len(rows) == 1 + 2 * 2 * 2 and rows[0]["kind"] == "held-out"
    assert float(rows[0]["entropy_ratio"]) == pytest.approx(1.0)
    from metrics import SAMPLE_METRICS

    assert set(SAMPLE_METRICS) <= set(rows[0])  # every study shows every statistic, under one set of keys
    for r in rows[1:]:
        for key in ("distinct_1", "distinct_2", "repeated_4gram", "top_word_share"):
            assert 0.0 <= float(r[key]) <= 1.0
        assert 0 < float(r["pll_nats"]) < 20 and float(r["entropy_ratio"]) >= 0  # a 6-step model may loop
        assert 1 <= int(r["forward_passes"]) <= int(r["steps"]) and float(r["seconds_per_sample"]) > 0
    for name in ("schedule_quality_final-model.png", "schedule_decoding_order_final-model.png"):
        assert (out / name).stat().st_size > 1000
    assert json.loads((out / "schedule_comparison_final-model.json").read_text())["prompts"] == 3


def test_schedule_comparison_rules_run_as_named():
    """Every configuration states the fields its rules read: the low-confidence rows run without
    order noise unless --order-noise says so (GenConfig's default noise 8 never slips in)."""
    from decoding import decided, setting_of

    gc = SC.gen_config(SC.CompareConfig(), "linear", 8, "greedy", "low-confidence")
    assert setting_of(gc)["order_noise"] == 0.0
    gc = SC.gen_config(SC.CompareConfig(order_noise=3.0, p=0.5), "cosine", 4, "nucleus", "margin")
    assert {f: getattr(gc, f) for f in decided(gc)} == dict(
        steps=4, schedule="cosine", sampling="nucleus", p=0.5, temperature=0.9, order="margin", order_noise=3.0,
        remdm="none", decode="schedule")


def test_fresh_copy_holds_the_tracked_files_as_they_are(tmp_path):
    import subprocess

    repo, copy = tmp_path / "repo", tmp_path / "copy"
    (repo / "sub").mkdir(parents=True)
    (repo / "sub" / "a.py").write_text("committed\n")
    (repo / "gone.txt").write_text("x")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "."], cwd=repo, check=True)
    (repo / "sub" / "a.py").write_text("edited\n")  # a change not yet committed travels
    (repo / "gone.txt").unlink()  # a tracked file deleted in the working tree does not
    (repo / "untracked.txt").write_text("y")  # an untracked file does not
    assert TM.fresh_copy(str(repo), str(copy)) == 1
    assert (copy / "sub" / "a.py").read_text() == "edited\n" and sorted(os.listdir(copy)) == [".git", "sub"]
    tracked = subprocess.run(["git", "ls-files"], cwd=copy, capture_output=True, text=True, check=True).stdout
    assert tracked.split() == ["sub/a.py"]  # a git checkout of its own, as after a clone


def test_timings_runs_each_command_in_order_and_stops_at_a_failure(tmp_path, monkeypatch, capsys):
    """On a fresh copy of this checkout: `python` is this interpreter, nothing untracked came along,
    the first failure stops the run, and the table says so."""
    probe = ("import os, sys; print(os.path.realpath(sys.executable)); "
             "print(os.path.isfile('train.py'), os.path.exists('results/final-model'), os.path.exists('.cache'))")
    monkeypatch.setattr(TM, "COMMANDS", [("probe", f'python -c "{probe}"'), ("fails", "python -c 'exit(3)'"),
                                         ("after", "python -c pass")])
    assert TM.main(["--out-dir", str(tmp_path)]) == 1
    assert "error: python -c 'exit(3)' exited 3" in capsys.readouterr().err
    result = json.loads((tmp_path / "timings.json").read_text())
    probe_row, failed, after = result["rows"]
    assert probe_row["output_tail"] == [os.path.realpath(sys.executable), "True False False"]
    assert probe_row["exit_code"] == 0 and probe_row["seconds"] > 0 and failed["exit_code"] == 3
    assert after["exit_code"] is None and result["machine"]["cpu_count"] == os.cpu_count()
    assert result["nice"] == os.nice(0)
    table = (tmp_path / "timings.md").read_text()
    assert "| `python -c 'exit(3)'` |" in table and "| `python -c pass` | not run (an earlier command failed)" in table
    assert TM.main(["--out-dir", str(tmp_path), "--render-only"]) == 0 and (tmp_path / "timings.md").read_text() == table


def test_layer_analysis(tiny_run, tmp_path, capsys):
    out = tmp_path / "layers"
    assert LA.main(["--checkpoint", tiny_run[1], "--levels", "0.2,0.5,1.0", "--cka-levels", "0.5,1.0",
                    "--batches", "2", "--batch-size", "4", "--threads", "0", "--out-dir", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Logit lens at 50% masking" in text and "ECE" in text
    rows = read_csv(out / "layer_analysis_final-model.csv")

    def values(metric, **where):
        return [r for r in rows if r["metric"] == metric and all(r[k] == str(v) for k, v in where.items())]

    n_layers = 1  # the tiny model
    for t in ("0.2", "0.5", "1.0"):
        lens = values("lens_accuracy", level=t)
        assert len(lens) == n_layers + 1 and all(0 <= float(r["value"]) <= 1 for r in lens)
        # the last layer through the head is the model's own prediction: same CE as train.level_losses
        ce_last = float(values("lens_ce", level=t, layer=n_layers)[0]["value"])
        assert ce_last == pytest.approx(float(values("level_loss", level=t)[0]["value"]), abs=1e-4)
        assert 0 <= float(values("ece", level=t)[0]["value"]) <= 1
        counts = sum(int(r["value"]) for r in values("bin_count", level=t))
        assert counts == int(values("masked_tokens", level=t)[0]["value"]) > 0
        for r in values("attention_entropy_bits", level=t):
            assert 0 <= float(r["value"]) <= math.log2(32) + 1e-6
    for t in ("0.5", "1.0"):
        m = {(int(r["layer"]), int(r["layer2"])): float(r["value"]) for r in values("cka", level=t)}
        assert len(m) == (n_layers + 1) ** 2
        assert all(m[i, i] == pytest.approx(1.0) for i in range(n_layers + 1))
        assert m[0, 1] == pytest.approx(m[1, 0]) and 0 <= m[0, 1] <= 1 + 1e-9
    for name in ("logit_lens", "attention_entropy", "cka", "calibration"):
        assert (out / f"layer_{name}_final-model.png").stat().st_size > 1000


def test_fortunes_corpus_one_folder_per_category(tmp_path, capsys):
    from config import TrainConfig
    from data import load_documents

    src, out = tmp_path / "fortunes", tmp_path / "corpus"
    src.mkdir()
    (src / "alpha").write_text("one\n%\ntwo lines\n\t-- someone  \n%\n\n%\none\n%\n")
    (src / "beta").write_text("one\n%\nthree")  # a repeat of alpha's first; no closing %
    (src / "alpha.dat").write_bytes(b"\x00\x02")  # strfile's index, not a category
    assert FC.main(["--source", str(src), "--categories", "alpha,beta", "--out", str(out)]) == 0
    rows = {c: [json.loads(line) for line in (out / c / f"{c}.jsonl").read_text().splitlines()] for c in ("alpha", "beta")}
    assert rows == {"alpha": [{"text": "one"}, {"text": "two lines\n\t-- someone"}], "beta": [{"text": "three"}]}
    assert "alpha" in capsys.readouterr().out
    assert load_documents(TrainConfig(model="scratch", dataset=str(out))) == ["one", "two lines\n\t-- someone", "three"]
    for argv, message in ((["--categories", "alpha.dat"], "unknown alpha.dat"),
                          (["--categories", "beta"], "already holds alpha"),  # train.py would read it too
                          (["--source", str(tmp_path / "none")], "apt-get install fortunes")):
        assert cli(FC.main, ["--source", str(src), "--out", str(out)] + argv) == 2
        assert message in capsys.readouterr().err


def test_text_ends_on_a_model_of_short_documents(tiny_short_docs, tmp_path, capsys):
    out = tmp_path / "ends"
    assert TE.main(["--checkpoint", tiny_short_docs, "--num-samples", "16", "--out-dir", str(out)]) == 0
    assert "median of the samples that end / held-out median" in capsys.readouterr().out
    result = json.loads((out / "text_ends.json").read_text())
    held, samples = result["held_out"], result["samples"]
    assert held["rows"] == 12 and held["share_ended"] == 1.0  # every held-out document is shorter than the window
    assert samples["rows"] == 16 and samples["share_ended"] >= 0.75 and max(samples["lengths"]) < 14
    assert (out / "text_ends.png").stat().st_size > 1000
# ---------------------------------------------------------------------------------------------
# The frontiers: every setting states what it runs
# ---------------------------------------------------------------------------------------------


def test_sampler_frontier_rules_run_what_their_names_say():
    """Each rule states the fields it depends on (order, order_noise, remdm, remdm_eta), so a
    GenConfig default cannot slip in: a rule named without noise runs without it (the rows once
    named "low-confidence" ran with the default noise 8), one named without ReMDM never re-masks."""
    from decoding import setting_of

    fc = SAF.FrontierConfig()
    for (name, t), gc in SAF.rule_configs(fc, list(SAF.RULES), [0.9]).items():
        assert set(SAF.RULE_FIELDS) <= set(SAF.RULES[name]), name
        s = setting_of(gc)
        assert ("noise" in name) == (s.get("order_noise", 0) > 0), name
        assert ("remdm" in name) == (s["remdm"] != "none"), name
        assert s["order"] == SAF.RULES[name]["order"] and gc.decode == "schedule" and gc.cache == "none"


def test_speed_frontier_settings_state_every_decoding_field():
    SPF.check_base()  # BASE names exactly GenConfig's decoding fields
    for name, fields in SPF.SETTINGS.items():
        assert set(fields) == set(SPF.BASE), name
        SPF.gen_config(fields, 1, 0)  # a valid setting
    assert all(SPF.SETTINGS[f"seed T {t}"]["order"] == "random" and SPF.SETTINGS[f"seed T {t}"]["steps"] == 10
               for t in (0.7, 0.8, 0.9, 1.0))


def test_speed_frontier_runs_and_writes_every_field(tiny_run, tiny_baseline, tmp_path, capsys):
    out = tmp_path / "speed"
    names = ["seed T 0.7", "seed T 1.0", "random nucleus T 0.8 16 steps", "blocks 16 x 4 steps dual cache"]
    assert SPF.main(["--checkpoint", tiny_run[1], "--baseline", tiny_baseline, "--settings", ",".join(names),
                     "--batches", "1,2", "--prompt-len", "4", "--repeats", "1", "--ar-temperatures", "1.0",
                     "--threads", "0", "--out-dir", str(out)]) == 0
    text = capsys.readouterr().out
    assert "held-out text" in text and "AR nucleus T 1.0" in text
    rows = read_csv(out / "speed_frontier.csv")
    assert [r["name"] for r in rows] == names + ["AR nucleus T 1.0"]
    report = json.loads((out / "speed_frontier.json").read_text())
    for r, row in zip(report["rows"], rows):
        assert r["fields"] == SPF.SETTINGS[r["name"]]  # every decoding field, as stated
        assert all(row[k] == str(v) for k, v in r["fields"].items())
        for b in ("1", "2"):  # the speed-up is the AR's time over the setting's, measured side by side
            assert r[b]["speedup"] == pytest.approx(r[b]["ar_s_per_token"] / r[b]["diffusion_s_per_token"])
        assert r["flops_per_token"] > 0 and r["ar_flops_per_token"] > 0
        assert r["unprompted"]["samples"] == r["prompted"]["samples"] == 16 and r["unprompted"]["gen_ppl"] > 1
    seed = {r["name"]: r for r in report["rows"]}
    dual = seed["blocks 16 x 4 steps dual cache"]
    assert dual["unprompted"]["forward_passes"] == 2 * 4  # 30 tokens: blocks of 16 and 14, 4 passes each
    assert (out / "speed_frontier.png").stat().st_size > 1000
    table = SPF.markdown(report)  # README's table (--render): every row, from the JSON alone
    assert all(f"| {name} |" in table or f"| **{name}** |" in table for name in names + ["AR nucleus T 1.0"])


def test_readme_speed_frontier_table_is_the_render_of_its_json():
    from conftest import ROOT
    from report import replace_block

    path = "docs/speed_frontier.json"
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    with open(os.path.join(ROOT, path)) as f:
        report = json.load(f)
    assert replace_block(readme, f"python experiments/speed_frontier.py --render {path}", SPF.markdown(report)) == readme


@pytest.mark.parametrize("script,argv,message", [
    (MV, ["--levels", "0,1.5"], "--levels"),
    (SC, ["--schedules", "zigzag"], "zigzag"),
    (SC, ["--steps", "4,8", "--heatmap-steps", "16"], "--heatmap-steps"),
    (SC, ["--checkpoint", "/nonexistent/ckpt"], "no checkpoint"),
    (LA, ["--bins", "0"], "--bins"),
    (LA, ["--checkpoint", "/nonexistent/ckpt"], "no checkpoint"),
    (TE, ["--checkpoint", "/nonexistent/ckpt"], "no checkpoint"),
    (SPF, ["--settings", "no-such-setting"], "no-such-setting"),
    (SPF, ["--checkpoint", "/nonexistent/ckpt"], "no checkpoint"),
])
def test_bad_input_is_one_line_and_writes_nothing(script, argv, message, tmp_path, capsys):
    out = tmp_path / "never"
    assert cli(script.main, argv + ["--out-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not out.exists()


def test_cka_level_must_be_analysed(tiny_run, tmp_path, capsys):
    out = tmp_path / "never"
    assert cli(LA.main, ["--checkpoint", tiny_run[1], "--levels", "0.5", "--cka-levels", "0.3",
                         "--threads", "0", "--out-dir", str(out)]) == 2
    assert "--cka-levels" in capsys.readouterr().err and not out.exists()
