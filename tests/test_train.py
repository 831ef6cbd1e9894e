"""Training: config and flags, data loading, a short run end to end, resume, bad inputs."""

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import runs
import cli
import config
import train
import trainer
from conftest import ROOT, tiny_overrides
from config import TrainConfig, UsageError

# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


def parse(argv):
    """The config train.py would run with (its own parse call)."""
    return cli.parse(TrainConfig, argv, presets=config.train_presets)[0]


def test_every_field_is_a_flag_with_help():
    p = argparse.ArgumentParser()
    cli.add_args(p, TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        action = p._option_string_actions["--" + f.name.replace("_", "-")]
        assert action.help and not action.help.startswith("(default"), f.name


def test_each_flag_and_demo_control_shows_its_own_help():
    """--help and the demo's settings panel show each field's own help (config.flag): no two fields
    share a text, so no field shows another's (a block comment once became --sampling's help)."""
    import types

    import demo

    for cls in (TrainConfig, config.GenConfig):
        p = argparse.ArgumentParser()
        cli.add_args(p, cls)
        helps = {f.name: f.metadata["help"] for f in dataclasses.fields(cls)}
        assert len(set(helps.values())) == len(helps), cls.__name__
        for f in dataclasses.fields(cls):
            assert p._option_string_actions[cli.flag_name(f.name)].help.startswith(helps[f.name])
    record = types.SimpleNamespace(**{kind: lambda *a, **kw: kw for kind in
                                      ("Dropdown", "Checkbox", "Slider", "Number", "Textbox")})
    for f in demo.page_fields():
        assert demo.control(record, f)["info"].startswith(f.metadata["help"]), f.name
    assert config.GenConfig.__dataclass_fields__["sampling"].metadata["help"].startswith("how a token is drawn")


SCRIPTS = ["train.py", "generate.py", "evaluate.py", "report.py", "baseline_ar.py", "bench.py", "demo.py",
           "experiments/masking_viz.py", "experiments/schedule_comparison.py", "experiments/layer_analysis.py",
           "experiments/sampler_frontier.py", "experiments/recipe_probe.py", "experiments/objective_study.py",
           "experiments/text_ends.py", "experiments/fortunes_corpus.py"]


def test_help_and_bad_flags_answer_without_loading_torch():
    """--help and a bad value are answered from the dataclass alone, before torch (seconds to load)
    is imported; registry choices come from the registry's source (config.Registry)."""
    probe = ("import os, runpy, sys; script, flag = sys.argv[1:]; sys.argv = [script, flag]\n"
             "sys.path.insert(0, os.path.dirname(os.path.abspath(script)))  # as `python script` does\n"
             "try:\n    runpy.run_path(script, run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
             "print(code, 'torch' in sys.modules)")
    for script in SCRIPTS:
        for flag, code in (("--help", "0"), ("--no-such-flag", "2")):
            out = subprocess.run([sys.executable, "-c", probe, script, flag], cwd=ROOT, capture_output=True, text=True,
                                 timeout=60)
            assert out.stdout.split()[-2:] == [code, "False"], (script, flag, out.stdout[-300:], out.stderr[-300:])
    listed = subprocess.run([sys.executable, "generate.py", "--help"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "{greedy,topk,nucleus}" in listed and "range (0, 1]" in listed  # choices and ranges from the fields


def test_a_bad_value_names_its_flag_and_range():
    with pytest.raises(UsageError, match=r"--p must be in \(0, 1\], got 1.5"):
        config.GenConfig(p=1.5)
    with pytest.raises(UsageError, match="--steps must be int, got str"):
        config.GenConfig(steps="3")
    with pytest.raises(UsageError, match="--scratch-arch must be one of modernbert, roberta, bert, got 'gpt'"):
        TrainConfig(scratch_arch="gpt")  # an architecture with no builder is refused, not built as BERT
    assert config.GenConfig(temperature=1).temperature == 1.0 and isinstance(config.GenConfig(temperature=1).temperature,
                                                                                float)


def test_presets_and_flags_resolve_in_order():
    assert parse([]).model == "roberta-base" and parse([]).batch_size == 64  # model-size preset
    q = parse(["--quick-test"])
    assert q.model == "scratch" and q.max_steps == config.QUICK_TEST["max_steps"]
    assert parse(["--quick-test", "--max-steps", "7"]).max_steps == 7  # explicit flag wins
    assert parse(["--model", "roberta-large"]).grad_accum == 2
    assert parse(["--per-sample-rate"]).per_sample_rate is True


def test_config_round_trip(tmp_path):
    cfg = parse(["--quick-test", "--prefix-len", "5", "--mask-distribution", "cosine"])
    config.save_config(cfg, str(tmp_path))
    assert config.load_train_config(str(tmp_path)) == cfg


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def test_embedded_corpus_is_real_prose():
    from data import embedded_corpus

    docs = embedded_corpus()
    words = sum(len(d.split()) for d in docs)
    assert len(docs) == 106 and words > 400_000
    assert "Anarchism is a political philosophy" in docs[0]
    assert "'''" not in docs[0] and "==" not in docs[0]


def test_pack_joins_documents_with_separator():
    from data import pack

    assert pack([[1, 2, 3], [4, 5]], 3, 9) == [[1, 2, 3], [9, 4, 5]]  # tail [9] dropped


def test_pad_documents_one_per_block_and_the_held_out_rows():
    from data import held_out_rows, pad_documents

    assert pad_documents([[1, 2, 3], [4, 5, 6, 7, 8, 9], [4, 5, 6, 7, 8]], 5, 9) == [
        [1, 2, 3, 9, 9], [4, 5, 6, 7, 8], [4, 5, 6, 7, 8]]  # padded with </s>; cut to the window; exactly full
    assert held_out_rows(20, 0.1, "packed") == [18, 19]  # the stream's tail
    assert held_out_rows(20, 0.1, "none") == [5, 15]  # documents spread over the corpus


def test_packing_none_makes_one_block_per_document(tiny_model, tmp_path):
    """--packing none: <s> document </s>..., the document cut to the window, padded with </s>; the
    held-out documents come from every folder of a corpus laid out one folder per category."""
    from data import build_datasets

    _, tok, _ = tiny_model
    docs = {"a": [f"The river {i} flows" for i in range(10)], "b": ["word " * 40] + [f"A city of {i}" for i in range(9)]}
    for name, texts in docs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    cfg = TrainConfig(model="scratch", dataset=str(tmp_path), packing="none", max_len=16, val_fraction=0.1,
                      prefix_len=4, cache_dir=str(tmp_path / "cache"))
    train_ds, val_ds = build_datasets(cfg, tok)
    assert len(train_ds) == 18 and len(val_ds) == 2
    eos = tok.eos_token_id
    texts = []
    for block in train_ds[:]["input_ids"].tolist() + val_ds[:]["input_ids"].tolist():
        assert len(block) == 16 and block[0] == tok.bos_token_id and block[-1] == eos
        content = block[1:-1]
        end = content.index(eos) if eos in content else len(content)
        assert set(content[end:]) <= {eos}  # after the document: only </s>
        texts.append(tok.decode(content[:end]))
    long = ("word " * 40).strip()
    assert long not in texts and sum(long.startswith(t) for t in texts) == 1  # cut to the window, no end
    assert sorted(t for t in texts if t in docs["a"] + docs["b"]) == sorted(docs["a"] + docs["b"][1:])
    held = [tok.decode([t for t in b if t not in (eos, tok.bos_token_id)]) for b in val_ds[:]["input_ids"].tolist()]
    assert held == [docs["a"][5], docs["b"][5]]  # one from each folder


def test_local_folder_and_jsonl(tmp_path):
    from data import load_documents

    (tmp_path / "a.txt").write_text("first document " * 20)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jsonl").write_text(json.dumps({"body": "second"}) + "\n\n" + json.dumps({"body": "third"}))
    docs = load_documents(TrainConfig(model="scratch", dataset=str(tmp_path), text_column="body"))
    assert docs == [("first document " * 20).strip(), "second", "third"]
    with pytest.raises(UsageError, match="no 'text' field"):
        load_documents(TrainConfig(model="scratch", dataset=str(tmp_path / "sub" / "b.jsonl")))


def test_training_on_a_folder_of_txt(tmp_path):
    from data import embedded_corpus

    folder = tmp_path / "mydocs"
    folder.mkdir()
    for i, doc in enumerate(embedded_corpus()[:3]):
        (folder / f"doc{i}.txt").write_text(doc)
    out = tmp_path / "out"
    assert train.main(tiny_overrides(str(out), dataset=str(folder), max_steps=2, eval_steps=2)) == 0
    assert (out / "final-model" / "diffusion_config.json").exists()


# ---------------------------------------------------------------------------------------------
# A short run end to end
# ---------------------------------------------------------------------------------------------


def test_run_writes_loadable_checkpoints_logs_and_plot(tiny_run):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    out, final = tiny_run
    for folder in (final, os.path.join(out, "checkpoint-6")):
        AutoModelForMaskedLM.from_pretrained(folder)
        AutoTokenizer.from_pretrained(folder)
        saved = config.load_train_config(folder)
        assert saved.max_len == 32 and saved.prefix_len == TrainConfig.prefix_len
    rows = runs.read_metrics(out)
    evals = [r for r in rows if "eval_elbo_nats" in r]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 6  # baseline at step 0, then every 3 steps
    assert all(f"eval_mask_{lv}" in evals[-1] for lv in [0.1, 0.5, 1.0])
    assert any("train_mask_" in k for r in rows for k in r)
    assert os.path.getsize(os.path.join(out, "loss_by_level.png")) > 10_000
    assert open(os.path.join(out, "loss_by_level.csv")).readline().strip() == "step,split,mask_level,loss"


def test_model_card_numbers_equal_the_log(tiny_run):
    out, final = tiny_run
    card = open(os.path.join(final, "README.md")).read()
    last = [r for r in runs.read_metrics(out) if "eval_elbo_nats" in r][-1]
    assert f"ELBO bound: {last['eval_elbo_nats']:.4f} ± {last['eval_elbo_stderr']:.4f} nats/token" in card
    row = next(line for line in card.splitlines() if line.startswith("| loss"))
    assert row == "| loss (nats/token) | " + " | ".join(f"{last[f'eval_mask_{lv}']:.3f}" for lv in
                                                       [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]) + " |"
    assert f"python generate.py --checkpoint {final}" in card and ".tmp" not in card


def test_one_line_per_logging_interval(tiny_run):
    """Each training log prints one fixed-format line, built from the metrics.jsonl row."""
    row = {"step": 250, "max_steps": 3000, "loss": 6.12345, "learning_rate": 0.001, "steps_per_s": 12.5,
           "tokens_per_s": 12800.0, "eta_s": 220.0, "train_mask_0.1": 5.5, "train_mask_0.5": 6.04, "train_mask_1.0": 7.0}
    assert trainer.log_line(row) == ("step 250/3000 | loss 6.1235 | masked 10%/50%/100% 5.50/6.04/7.00 | lr 1.0e-03 | "
                                     "12.5 it/s | 12,800 tok/s | eta 3m40s")
    out, _ = tiny_run
    progress = open(os.path.join(out, "progress.txt")).read().splitlines()
    assert progress[0].startswith("step 6/6 | loss ") and progress[1].startswith("eval step 6 | held-out ELBO bound")
    rows = [r for r in runs.read_metrics(out) if "loss" in r]
    assert [r["step"] for r in rows] == [2, 4, 6] and all(r["steps_per_s"] > 0 and "eta_s" in r for r in rows)


def test_eta_counts_training_steps_only_and_the_bar_agrees_with_the_log(tmp_path, monkeypatch):
    """A 3,000-step run whose step-0 evaluation takes 100 s and whose steps take 1 s: after step 1
    the ETA is 2,999 s (not 2,999 x 101 s); an evaluation and a save at step 250 do not move it; the
    progress bar and the log line show the same ETA at the same moment."""
    from types import SimpleNamespace

    now = [0.0]
    monkeypatch.setattr(trainer.time, "perf_counter", lambda: now[0])
    state = SimpleNamespace(global_step=0, max_steps=3000, is_world_process_zero=True)
    args = SimpleNamespace(world_size=1)
    clock = trainer.TrainClock()
    bar = trainer.Bar(clock)
    log = trainer.RunLog(str(tmp_path), TrainConfig(batch_size=4, max_len=32), clock, bar=True)
    for cb in (clock, bar):
        cb.on_train_begin(args, state, None)
    now[0] = 100.0  # the step-0 evaluation ends
    clock.on_evaluate(args, state, None)

    def step():
        now[0] += 1.0
        state.global_step += 1
        for cb in (clock, bar):
            cb.on_step_end(args, state, None)

    step()
    assert clock.eta(state) == 2999.0
    for _ in range(249):
        step()
    now[0] += 50.0  # an evaluation and a checkpoint after step 250
    clock.on_evaluate(args, state, None)
    clock.on_save(args, state, None)
    step()
    assert clock.eta(state) == 2749.0
    log.on_log(args, state, None, logs={"loss": 6.0, "learning_rate": 1e-3})
    row = runs.read_metrics(str(tmp_path))[-1]
    assert row["eta_s"] == 2749.0 and row["steps_per_s"] == pytest.approx(251 / 251.0)
    assert bar.bar.postfix == "eta " + trainer.duration(row["eta_s"]) == "eta 45m49s"
    assert trainer.log_line(row).endswith("| eta 45m49s")
    bar.on_train_end(args, state, None)


def test_a_plain_log_has_no_library_bars_either(monkeypatch):
    """--log-format plain (and auto with stdout not a terminal): no bar, and the datasets library's
    tokenising bars are off too, so a log redirected to a file holds the log lines alone."""
    import datasets

    datasets.enable_progress_bars()  # as a fresh process starts (a train.main earlier in this session turns them off)
    try:
        monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
        assert trainer.use_bar("auto") and datasets.is_progress_bar_enabled()
        assert not trainer.use_bar("plain") and not datasets.is_progress_bar_enabled()
        datasets.enable_progress_bars()
        monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
        assert not trainer.use_bar("auto") and not datasets.is_progress_bar_enabled()
    finally:
        datasets.enable_progress_bars()


# ---------------------------------------------------------------------------------------------
# Resume after a kill
# ---------------------------------------------------------------------------------------------


def run_train(args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_killed_run_resumes_from_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    args = tiny_overrides(str(out), max_steps=5000, save_steps=5, eval_steps=10000, logging_steps=5)
    proc = run_train(args)
    deadline = time.time() + 120

    def newest():
        last = runs.last_complete_checkpoint(str(out)) if out.exists() else None
        return int(last.rsplit("-", 1)[1]) if last else 0

    while newest() < 10:  # at least two checkpoints, so the resumed run has history to keep
        assert proc.poll() is None and time.time() < deadline, "training died before its second checkpoint"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "final-model").exists()
    last = int(runs.last_complete_checkpoint(str(out)).rsplit("-", 1)[1])
    resumed = run_train(["--resume", "--output-dir", str(out), "--max-steps", str(last + 5)])
    log, _ = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, log
    # stdout is a pipe, not a terminal: --log-format auto writes the log lines alone, no bar frames
    assert "\r" not in log and "%|" not in log and f"step {last + 5}/{last + 5} | loss" in log
    state = json.load(open(out / "final-model" / ".." / f"checkpoint-{last + 5}" / "trainer_state.json"))
    assert state["global_step"] == last + 5
    assert config.load_train_config(str(out / "final-model")).scratch_hidden == 32  # settings came from the checkpoint
    steps = [r["step"] for r in runs.read_metrics(str(out)) if "loss" in r]
    assert steps[-1] == last + 5 and min(steps) <= last  # one log: before and after the kill


def test_resume_without_checkpoint_is_an_error(tmp_path, capsys):
    assert cli.cli(train.main, ["--resume", "--output-dir", str(tmp_path)]) == 2
    assert "no checkpoint of this run to resume from" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Bad inputs: one line, exit 2, nothing half-written
# ---------------------------------------------------------------------------------------------


def bad(tmp_path, **kw):
    out = tmp_path / "out"
    return out, tiny_overrides(str(out), **kw)


@pytest.mark.parametrize("kw,msg", [
    (dict(dataset="/no/such/folder"), "dataset path not found"),
    (dict(dataset="EMPTY"), "contains no text"),
    (dict(dataset="NOTEXT"), "no 'text' field"),
    (dict(model="no-such-org/no-such-model"), "cannot load hub model"),
    (dict(dataset="no-such-hub-dataset-xyz"), "cannot load hub dataset"),
    (dict(mask_levels="0.5,2"), "--mask-levels"),
    (dict(mask_distribution="gaussian"), "invalid choice"),
    (dict(output_dir="/proc/forbidden"), "not writable"),
])
def test_bad_input_one_line_error(tmp_path, kw, msg, capsys):
    if kw.get("dataset") == "EMPTY":
        (tmp_path / "empty.txt").write_text("  \n")
        kw["dataset"] = str(tmp_path / "empty.txt")
    if kw.get("dataset") == "NOTEXT":
        (tmp_path / "d.jsonl").write_text('{"content": "hello"}\n')
        kw["dataset"] = str(tmp_path / "d.jsonl")
    out, argv = bad(tmp_path, **kw)
    try:
        code = cli.cli(train.main, argv)
    except SystemExit as e:  # argparse rejects bad choices itself, with exit code 2
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and msg in err[-1], err
    if kw.get("output_dir") is None:
        assert not out.exists()  # a run that failed before it began leaves no folder (and no train.lock) behind


@pytest.mark.parametrize("kw,what", [(dict(model="no-such-org/no-such-model"), "hub model"),
                                     (dict(dataset="no-such-org/no-such-dataset"), "hub dataset")])
def test_a_hub_name_out_of_reach_fails_at_once(tmp_path, kw, what):
    """Without HF_HUB_OFFLINE and with the hub out of reach (HF_ENDPOINT on a closed port), a hub
    name is tried once: one error line naming why, none of huggingface_hub's "Retrying" lines, and
    the new output folder is not left behind."""
    env = {k: v for k, v in os.environ.items() if k not in (
        "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", *modeling_proxy_vars())}
    env |= {"HF_ENDPOINT": "http://127.0.0.1:9", "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "new" / "run"
    proc = subprocess.run([sys.executable, "train.py", *tiny_overrides(str(out), **kw)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith(f"error: cannot load {what}") and "127.0.0.1 unreachable" in last
    assert "Retry" not in proc.stderr + proc.stdout and not (tmp_path / "new").exists()


def modeling_proxy_vars():
    import modeling

    return modeling.PROXY_VARS


def test_bad_input_exit_code_from_the_shell(tmp_path):
    proc = run_train(tiny_overrides(str(tmp_path / "o"), dataset=str(tmp_path / "missing.txt")))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2 and out.strip().splitlines()[-1].startswith("error: dataset path not found")


def test_recipe_probe_runs_and_reports(tmp_path, capsys):
    """A probe that trains for (almost) no time reports the untrained model's loss: about ln V."""
    import math

    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    import recipe_probe

    out = tmp_path / "probe.jsonl"
    flags = ["--scratch-layers", "1", "--scratch-hidden", "32", "--scratch-heads", "2", "--scratch-intermediate", "64",
             "--max-len", "32", "--cache-dir", os.path.join(ROOT, ".cache")]
    assert recipe_probe.main(["--seconds", "0.01", *flags, "--out", str(out)]) == 0
    row = json.loads(out.read_text().splitlines()[-1])
    assert row["recipe"]["scratch_hidden"] == 32 and set(row["heldout_loss"]) == {"0.1", "0.5", "1.0"}
    assert all(abs(v - math.log(4096)) < 0.5 for v in row["heldout_loss"].values()), row
    assert cli.cli(recipe_probe.main, ["--seconds", "-1"]) == 2
