"""report.py: every sentence of the assessment from a hand-written evaluation.json, keyed off the
recorded settings (never the setting names), and the markdown rendered without torch."""

import copy
import json
import os
import subprocess
import sys

import pytest

import cli
import report
from conftest import ROOT

DEFAULT = dict(prompt="", schedule="linear", sampling="topk", k=50, p=0.9, temperature=0.8, order="low-confidence",
               order_noise=0.0, remdm="none", remdm_eta=0.02, cfg=0.0, canvas="full", decode="schedule",
               threshold=0.9, steps=10)


def row(name, model, settings, gen_ppl, entropy, rep=0.01, d2=0.8, seconds=0.01, passes=10):
    label = "; ".join(f"{k} {v}" for k, v in settings.items())  # decoding.describe's words, as recorded
    return {"name": name, "model": model, "settings": settings, "label": label, "gen_ppl": gen_ppl,
            "unigram_entropy": entropy,
            "distinct_1": 0.5, "distinct_2": d2, "repeated_4gram": rep, "seconds_per_sample": seconds,
            "forward_passes": passes, "samples": 16, "texts": ["a b c"]}


def result(**over):
    """A small evaluation: held-out text, the defaults, a greedy twin, a 32-step twin, the seed's
    random order, threshold decoding, and the AR baseline with the defaults' sampler."""
    samples = [
        row("held-out text", "reference", {}, 170.0, 8.4, seconds=None, passes=None),
        row("a", "diffusion", DEFAULT, 66.0, 4.5, rep=0.03, d2=0.33),
        row("b", "diffusion", {**DEFAULT, "sampling": "greedy"}, 20.0, 2.0, rep=0.78, d2=0.01),
        row("c", "diffusion", {**DEFAULT, "steps": 32}, 50.0, 4.0, rep=0.05, d2=0.3, passes=32),
        row("d", "diffusion", {**DEFAULT, "order": "random"}, 210.0, 6.7, rep=0.001, d2=0.79),
        row("e", "diffusion", {**DEFAULT, "decode": "threshold"}, 90.0, 5.0, passes=62),
        row("ar-1", "AR", {k: DEFAULT[k] for k in ("sampling", "k", "temperature")}, 28.0, 7.3, rep=0.0, passes=62),
    ]
    r = {"held_out": {"scored_tokens": 42096, "scored_bytes": 180000, "blocks": 679, "prefix": 0, "draws": 8,
                      "diffusion": {"nats_per_token": 6.086, "nats_stderr": 0.011, "perplexity": 439.8,
                                    "bits_per_byte": 2.517},
                      "ar": {"nats_per_token": 5.053, "perplexity": 156.5, "bits_per_byte": 2.089}},
         "samples": samples, "default_settings": dict(DEFAULT), "scorer": "AR baseline", "sample_length": 62}
    r.update(over)
    return r


def sentences(r):
    return {line.split("**")[1]: line for line in report.assessment(r)}


def test_every_branch_on_a_full_result():
    s = sentences(result())
    assert list(s)[0] == "Verdict."  # the verdict leads
    assert "behind it in likelihood (2.81x perplexity" in s["Verdict."]
    assert "behind it in generative perplexity with the same sampler (2.36x)" in s["Verdict."]  # 66 / 28
    assert "2.8 bits less unigram entropy" in s["Verdict."]  # 7.3 - 4.5
    assert "the bound is 2.81x the AR perplexity, +1.033 nats/token" in s["Likelihood."]
    g = s["Generative perplexity"]
    assert "at generate.py's defaults (a) scores 66.0" in g and "The scorer wrote the AR samples itself" in g
    assert "The lowest diffusion value is 20.0 (b" in g and "Closest to held-out text's entropy is d" in g
    assert "5 of 5 diffusion settings have unigram entropy more than 1 bit below" in g  # all under 7.4
    assert "and 4 of those score a lower generative perplexity than held-out text itself" in g
    assert "lowest repeated 4-gram rate among diffusion settings is 0.001 (d), the highest 0.780 (b)" in s["Repetition."]
    assert "1 greedy settings" in s["Greedy vs sampled."] and "4 sampled settings" in s["Greedy vs sampled."]
    assert "in 1 of 1 pairs" in s["Steps."] and "a -> c: 66.0 -> 50.0" in s["Steps."]
    assert "low-confidence against random: generative perplexity 66.0 vs 210.0" in s["Order"]
    assert "took 62 forward passes" in s["Threshold decoding"] and "saved no forward passes" in s["Threshold decoding"]
    assert "AR 0.0100 (62 forward passes" in s["Speed."]


def test_names_do_not_matter_settings_do():
    r = result()
    renamed = copy.deepcopy(r)
    for i, x in enumerate(renamed["samples"][1:], 1):
        x["name"] = f"setting number {i}"
    assert [line.split("**")[1] for line in report.assessment(renamed)] == list(sentences(r))
    # a pair that differs in steps AND schedule is not a "steps" comparison
    mixed = copy.deepcopy(r)
    mixed["samples"][3]["settings"]["schedule"] = "cosine"
    assert "Steps." not in sentences(mixed)


def test_branches_drop_out_when_their_data_is_missing():
    r = result(scorer=None)
    for x in r["samples"]:
        x["gen_ppl"] = None
    del r["held_out"]["ar"]
    r["samples"] = [x for x in r["samples"] if x["model"] != "AR" and x["settings"].get("sampling") != "greedy"]
    s = sentences(r)
    assert {"Verdict.", "Likelihood.", "Generative perplexity", "Greedy vs sampled.", "Steps.", "Speed."}.isdisjoint(s)
    assert "Repetition." in s and "Order" in s and "Threshold decoding" in s
    assert "generative perplexity" not in s["Order"]  # no scorer: entropy and repetition only


def test_verdict_sides_and_threshold_that_saves_passes():
    r = result()
    r["held_out"]["ar"]["perplexity"] = 430.0  # within 10%: on par
    r["samples"][-1]["unigram_entropy"] = 5.0  # AR entropy only 0.5 bit above: no entropy clause
    r["samples"][5]["forward_passes"] = 20
    s = sentences(r)
    assert "on par with it in likelihood" in s["Verdict."] and "bits less unigram entropy" not in s["Verdict."]
    assert "saved no forward passes" not in s["Threshold decoding"]


def test_known_limits_state_recorded_facts():
    r = result(checkpoint_config={"max_steps": 3000, "batch_size": 16, "grad_accum": 1, "max_len": 64,
                                  "dataset": "embedded", "mask_distribution": "levels", "mask_levels": "0.1,0.5,1.0"},
               parameters={"diffusion": 873216, "ar": 879936}, config={"num_samples": 16},
               machine={"cpu": "Some CPU", "device": "cpu", "torch_threads": 2, "load_average_1min": 1.5})
    text = " ".join(report.known_limits(r))
    assert "873,216 parameters and saw 3,072,000 training tokens (the embedded corpus)" in text
    assert "lowest training rate (0.1)" in text and "on Some CPU (cpu, 2 torch threads, 1-minute load average 1.5" in text
    r["checkpoint_config"]["mask_distribution"] = "linear"
    assert "lowest training rate" not in " ".join(report.known_limits(r))


def test_render_needs_no_torch(tmp_path):
    """report.py renders the committed evaluation JSON in a fresh interpreter without importing torch."""
    src = os.path.join(ROOT, "docs", "evaluation.json")
    code = ("import sys, report; report.main(['--evaluation', sys.argv[1], '--out', sys.argv[2]]); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code, src, str(tmp_path / "r.md")], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-1000:]
    assert (tmp_path / "r.md").read_text().startswith("# Generation validation")


@pytest.mark.parametrize("content,msg", [(None, "no "), ("{not json", "not valid JSON"), ('{"a": 1}', "not an evaluate.py")])
def test_bad_evaluation_file_is_one_line(tmp_path, capsys, content, msg):
    path = tmp_path / "e.json"
    if content is not None:
        path.write_text(content)
    assert cli.cli(report.main, ["--evaluation", str(path), "--out", str(tmp_path / "r.md")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and msg in err and err.count("\n") == 1 and not (tmp_path / "r.md").exists()


def test_committed_report_is_the_render_of_its_json():
    """GENERATION_VALIDATION.md cannot drift from docs/evaluation.json: it is exactly its render."""
    with open(os.path.join(ROOT, "docs", "evaluation.json")) as f:
        r = json.load(f)
    with open(os.path.join(ROOT, "GENERATION_VALIDATION.md"), encoding="utf-8") as f:
        assert f.read() == report.render(r, "docs/evaluation.json")


def test_a_tracked_report_is_replaced_only_when_named(tmp_path, capsys, monkeypatch):
    """The README's `python report.py --evaluation X` writes beside X; where that file is tracked by
    git (the committed GENERATION_VALIDATION.md beside an evaluation.json at the repo root), it is
    refused unless --out names it."""
    monkeypatch.setattr(report, "render", lambda result, path: "# Generation validation\n")  # where, not what
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "evaluation.json").write_text("{}")
    page = tmp_path / "GENERATION_VALIDATION.md"
    page.write_text("committed\n")
    subprocess.run(["git", "add", page.name], cwd=tmp_path, check=True)
    assert cli.cli(report.main, ["--evaluation", str(tmp_path / "evaluation.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {page}" in err and page.read_text() == "committed\n"
    assert report.main(["--evaluation", str(tmp_path / "evaluation.json"), "--out", str(page)]) == 0
    assert page.read_text().startswith("# Generation validation")
    (tmp_path / "eval").mkdir()  # untracked: beside its JSON
    (tmp_path / "eval" / "evaluation.json").write_text("{}")
    assert report.main(["--evaluation", str(tmp_path / "eval" / "evaluation.json")]) == 0
    assert (tmp_path / "eval" / "GENERATION_VALIDATION.md").read_text().startswith("# Generation validation")
    assert report.out_path(report.ReportConfig()) == os.path.join("results", "eval", "GENERATION_VALIDATION.md")
