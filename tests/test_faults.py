"""Nothing lost, nothing silently wrong: faults injected into real runs of train.py, generate.py
and evaluate.py (a second run into the same folder, divergence, torn logs, broken and foreign
checkpoints, Ctrl-C, a full disk) and every bad flag that used to end in a traceback."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import files
import data_collator
import runs
import cli
import config
import generate
import train
import trainer
from conftest import ROOT, tiny_overrides


def tiny(out, **kw):
    """A seconds-long run with a constant learning rate (so a resumed run can match an
    uninterrupted one step for step) and a small held-out bound."""
    return tiny_overrides(str(out), **{"lr_scheduler": "constant", "elbo_blocks": 8, "logging_steps": 1,
                                       "eval_steps": 100, **kw})


def run_cli(main, argv, capsys):
    """(exit code, the error line): the last line of stderr (after the progress bar's carriage
    returns); anything like a traceback before it fails the test."""
    code = cli.cli(main, argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    lines = err.replace("\r", "\n").strip().splitlines()
    return code, lines[-1] if lines else ""


def popen(args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def losses(out) -> dict:
    return {r["step"]: r["loss"] for r in runs.read_metrics(str(out)) if "loss" in r}


# ---------------------------------------------------------------------------------------------
# Resume: the same masks, only this run's checkpoints, only good ones
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """12 uninterrupted steps, checkpoints every 5."""
    out = tmp_path_factory.mktemp("straight")
    assert train.main(tiny(out, max_steps=12, save_steps=5)) == 0
    return out


def test_resume_draws_the_masks_an_uninterrupted_run_draws(straight, tmp_path):
    out = tmp_path / "resumed"
    assert train.main(tiny(out, max_steps=5, save_steps=5)) == 0
    assert (out / "checkpoint-5" / data_collator.STATE_FILE).exists()
    assert train.main(["--resume", "--output-dir", str(out), "--max-steps", "12"]) == 0
    a, b = losses(straight), losses(out)
    assert sorted(b) == list(range(1, 13))  # one row per step: the first leg's rows are not repeated
    for step in range(6, 13):
        assert b[step] == pytest.approx(a[step], abs=1e-6), step


def test_torn_log_and_broken_newest_checkpoint_resume_from_the_last_good_one(straight, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    shutil.rmtree(out / "final-model")
    (out / "checkpoint-12").rename(out / "checkpoint-15")  # a newer checkpoint ...
    (out / "checkpoint-15" / "trainer_state.json").write_text('{"global_step": 1')  # ... written only in part
    with open(out / "checkpoint-10" / "model.safetensors", "r+b") as f:  # and one whose weights were cut short
        f.truncate(100)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 13, "loss": 4.')  # a kill mid-write
    assert runs.last_complete_checkpoint(str(out)) == str(out / "checkpoint-5")
    said = capsys.readouterr().out
    assert "checkpoint-15: trainer_state.json is missing or damaged" in said
    assert "checkpoint-10: model.safetensors does not load" in said
    assert train.main(["--resume", "--output-dir", str(out), "--max-steps", "8"]) == 0
    steps = [r["step"] for r in runs.read_metrics(str(out)) if "loss" in r]
    assert steps == list(range(1, 9))  # rows after the resumed step 5 (and the torn one) were dropped
    assert (out / "final-model" / "model.safetensors").exists()


def test_rotation_keeps_the_newest_good_checkpoints_by_step(straight, tmp_path):
    out = tmp_path / "rot"
    shutil.copytree(straight, out)
    for step in (1, 2, 3):
        shutil.copytree(out / "checkpoint-5", out / f"checkpoint-{step}")
    shutil.copytree(out / "checkpoint-5", out / "checkpoint-20")
    (out / "checkpoint-20" / "config.json").write_text("{")  # the newest is broken
    for i, step in enumerate((12, 10, 5, 3, 2, 1)):  # folder times in the opposite order of steps
        os.utime(out / f"checkpoint-{step}", (1000 + i, 1000 + i))
    gone = runs.rotate_checkpoints(str(out), keep=2)
    left = sorted(p.name for p in out.glob("checkpoint-*"))
    assert left == ["checkpoint-10", "checkpoint-12", "checkpoint-20"] and len(gone) == 4
    assert runs.last_complete_checkpoint(str(out), quiet=True) == str(out / "checkpoint-12")


def test_a_fresh_run_moves_the_previous_one_aside_and_resume_sticks_to_its_own(straight, tmp_path, capsys):
    out = tmp_path / "reuse"
    shutil.copytree(straight, out)
    old = json.loads((out / "run.json").read_text())["run_id"]
    assert train.main(tiny(out, max_steps=3, save_steps=3)) == 0  # the README's quick test, run twice, just works
    assert "moved the previous run's outputs" in capsys.readouterr().out
    prev = out / runs.PREVIOUS
    assert (prev / "final-model" / "model.safetensors").exists() and (prev / "checkpoint-12").exists()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]
    new = json.loads((out / "run.json").read_text())["run_id"]
    assert new != old and json.loads((out / "checkpoint-3" / "run.json").read_text())["run_id"] == new
    shutil.copytree(prev / "checkpoint-12", out / "checkpoint-12")  # another run's newer checkpoint creeps in
    assert runs.last_complete_checkpoint(str(out), new) == str(out / "checkpoint-3")
    assert "belongs to another run" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# One run per folder; divergence; Ctrl-C; a full disk
# ---------------------------------------------------------------------------------------------


def test_a_second_run_into_the_same_folder_refuses_and_names_the_holder(tmp_path):
    out = tmp_path / "busy"
    first = popen(tiny(out, max_steps=100000, save_steps=100000))
    try:
        deadline = time.time() + 60
        while not (out / "train.lock").exists() or not (out / "train.lock").read_text():
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.1)
        second = subprocess.run([sys.executable, "train.py", *tiny(out, max_steps=2)], cwd=ROOT, capture_output=True,
                                text=True, timeout=120)
        assert second.returncode == 2
        line = second.stderr.strip().splitlines()[-1]
        assert line.startswith("error: ") and "in use by another training run (pid " in line
        assert f"pid {first.pid} " in line and first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait()


def test_divergence_stops_the_run_with_one_line_and_keeps_no_nan_model(tmp_path, capsys):
    out = tmp_path / "nan"
    code, err = run_cli(train.main, tiny(out, learning_rate=1e30, max_steps=20, save_steps=1), capsys)
    assert code == cli.EXIT_DIVERGED == 3  # not "bad input" (2): the flags were valid
    assert err.startswith("error: training diverged at step") and "lower --learning-rate" in err
    assert not (out / "final-model").exists()
    last = runs.last_complete_checkpoint(str(out), quiet=True)
    if last is not None:  # whatever may be resumed holds finite weights
        from safetensors.torch import load_file

        assert all(torch.isfinite(t).all() for t in load_file(os.path.join(last, "model.safetensors")).values())


def test_ctrl_c_saves_a_checkpoint_and_the_run_resumes(tmp_path):
    out = tmp_path / "int"
    proc = popen(tiny(out, max_steps=100000, save_steps=100000, logging_steps=1))
    deadline = time.time() + 90
    while not any("loss" in r and r["step"] >= 3 for r in runs.read_metrics(str(out))):
        assert proc.poll() is None and time.time() < deadline, "no training step"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, log[-2000:]
    assert "Traceback" not in log and "stopped by Ctrl-C at step" in log
    last = runs.last_complete_checkpoint(str(out), quiet=True)
    step = int(last.rsplit("-", 1)[1])
    assert step >= 3
    resumed = subprocess.run([sys.executable, "train.py", "--resume", "--output-dir", str(out), "--max-steps",
                              str(step + 2)], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0 and (out / "final-model").exists(), resumed.stdout[-2000:]


# ---------------------------------------------------------------------------------------------
# The AR baseline's run goes through the same lifecycle (runs.RunFolder)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_run(tmp_path_factory):
    """A finished 60-step diffusion run, checkpoints every 10: an AR baseline trains as long."""
    out = tmp_path_factory.mktemp("long")
    assert train.main(tiny(out, max_steps=60, save_steps=10, eval_steps=30)) == 0
    return out


def test_baseline_refuses_a_second_run_and_a_diffusion_runs_folder(long_run, tmp_path, capsys):
    import baseline_ar

    final = str(long_run / "final-model")
    busy = tmp_path / "busy"
    busy.mkdir()
    lock = runs.FolderLock(str(busy))  # another run holds the folder
    try:
        code, err = run_cli(baseline_ar.main, ["--checkpoint", final, "--output-dir", str(busy)], capsys)
    finally:
        lock.release()
    assert code == 2 and "is in use by another training run (pid" in err and not (busy / "final-model").exists()
    before = (long_run / "metrics.jsonl").read_text()
    code, err = run_cli(baseline_ar.main, ["--checkpoint", final, "--output-dir", str(long_run)], capsys)
    assert code == 2 and "holds a diffusion run" in err
    assert (long_run / "metrics.jsonl").read_text() == before and (long_run / "final-model" / "model.safetensors").exists()


def test_baseline_resumes_after_a_kill(long_run, tmp_path):
    out = tmp_path / "ar"
    proc = subprocess.Popen([sys.executable, "baseline_ar.py", "--checkpoint", str(long_run / "final-model"),
                             "--output-dir", str(out)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while runs.last_complete_checkpoint(str(out), quiet=True) is None:
        assert proc.poll() is None and time.time() < deadline, "no checkpoint before the run ended"
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no handler runs, whatever was being written stays as it was
    proc.wait()
    assert not (out / "final-model").exists()
    killed_at = int(runs.last_complete_checkpoint(str(out), quiet=True).rsplit("-", 1)[1])
    assert killed_at < 60
    resumed = subprocess.run([sys.executable, "baseline_ar.py", "--resume", "--output-dir", str(out)], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert f"resuming {out}/checkpoint-" in resumed.stdout and (out / "final-model" / "model.safetensors").exists()
    steps = [r["step"] for r in runs.read_metrics(str(out)) if "loss" in r]
    assert steps == list(range(1, 61))  # every step once: the killed run's rows after its checkpoint were dropped


def test_a_full_disk_while_saving_is_one_line(tmp_path, capsys, monkeypatch):
    def full(self, output_dir=None, state_dict=None):
        raise OSError(errno.ENOSPC, "No space left on device", output_dir)

    monkeypatch.setattr(trainer.DiffusionTrainer, "_save", full)
    code, err = run_cli(train.main, tiny(tmp_path / "full", max_steps=2, save_steps=1), capsys)
    assert code == 2 and "no space left on the device holding" in err
    assert "--resume" in err


# ---------------------------------------------------------------------------------------------
# Foreign, damaged and torn files at load time
# ---------------------------------------------------------------------------------------------


def test_a_foreign_tokenizer_is_refused(tiny_run, tmp_path, capsys):
    from data import train_tokenizer

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_run[1], ckpt)
    other = train_tokenizer(["a completely different corpus of words " * 50, "more of it here " * 30], 300,
                            str(tmp_path / "tok"))
    other.save_pretrained(str(ckpt))  # same special tokens, another vocabulary
    with pytest.raises(config.UsageError, match="not the one this model was trained with"):
        from modeling import load_checkpoint

        load_checkpoint(str(ckpt), device="cpu")
    code, err = run_cli(generate.main, ["--checkpoint", str(ckpt), "--out", ""], capsys)
    assert code == 2 and "not the one this model was trained with" in err


@pytest.mark.parametrize("damage,msg", [
    (lambda d: open(d / "model.safetensors", "r+b").truncate(200), "is damaged"),
    (lambda d: (d / "diffusion_config.json").write_text('{"max_len": 3'), "is not a valid config"),
    (lambda d: (d / "diffusion_config.json").write_text('{"max_len": "big"}'), "diffusion_config.json"),
    (lambda d: (d / "config.json").write_text("{"), "is damaged"),
])
def test_damaged_checkpoints_are_one_line_in_generate_and_evaluate(tiny_run, tmp_path, capsys, damage, msg):
    import evaluate

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_run[1], ckpt)
    damage(ckpt)
    for main, extra in ((generate.main, ["--out", ""]), (evaluate.main, ["--baseline", "none",
                                                                          "--out-dir", str(tmp_path / "e")])):
        code, err = run_cli(main, ["--checkpoint", str(ckpt), *extra], capsys)
        assert code == 2 and err.startswith("error: ") and msg in err, err


def test_a_torn_generations_line_does_not_swallow_the_next_record(tiny_run, tmp_path, capsys):
    log = tmp_path / "gen.jsonl"
    log.write_text('{"config": {}, "samples": ["half a rec')  # the disk filled up mid-line
    assert generate.main(["--checkpoint", tiny_run[1], "--steps", "2", "--out", str(log)]) == 0
    lines = log.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["config"]["steps"] == 2
    assert len(files.read_jsonl(str(log))) == 1


def test_animation_of_several_blocks(tiny_run, tmp_path):
    gif = tmp_path / "blocks.gif"
    assert generate.main(["--checkpoint", tiny_run[1], "--block-size", "8", "--length", "20", "--steps", "2",
                          "--animate", str(gif), "--out", ""]) == 0
    from PIL import Image

    assert Image.open(gif).n_frames == 6  # 3 blocks (8 + 8 + 4 tokens) x 2 steps


# ---------------------------------------------------------------------------------------------
# Bad values: one line, exit 2, no traceback
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw,msg", [
    (dict(warmup_steps=-1), "--warmup-steps must be in [0, inf)"),
    (dict(num_workers=-1), "--num-workers must be in [0, inf)"),
    (dict(max_train_blocks=-1), "--max-train-blocks must be in [0, inf)"),
    (dict(learning_rate="nan"), "--learning-rate must be a finite number"),
    (dict(learning_rate="inf"), "--learning-rate must be a finite number"),
    (dict(weight_decay="nan"), "--weight-decay must be a finite number"),
    (dict(mask_min="nan"), "--mask-min must be a finite number"),
    (dict(elbo_draws=1), "--elbo-draws must be in [2, inf)"),
    (dict(cache_dir="/proc/forbidden"), "not writable"),
])
def test_bad_values_are_one_line(tmp_path, capsys, kw, msg):
    out = tmp_path / "out"
    code, err = run_cli(train.main, tiny_overrides(str(out), **kw), capsys)
    assert code == 2 and err.startswith("error: ") and msg in err, err
    assert not (out / "final-model").exists()


def test_bad_choice_is_argparse_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "train.py", *tiny_overrides(str(tmp_path), lr_scheduler="bogus")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "invalid choice: 'bogus'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("value,kind", [("null", "NoneType"), ("12345", "int"), ('["a", "b"]', "list")])
def test_jsonl_values_that_are_not_text_are_refused(tmp_path, capsys, value, kind):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"text": "fine " * 40}) + "\n" + '{"text": ' + value + "}\n")
    code, err = run_cli(train.main, tiny_overrides(str(tmp_path / "o"), dataset=str(data)), capsys)
    assert code == 2 and f"d.jsonl:2: 'text' holds {kind}" in err and "not text" in err
