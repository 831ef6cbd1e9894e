"""Nothing lost, nothing silently wrong: faults injected into real runs of train.py, generate.py
and evaluate.py (a second run into the same folder, divergence, torn logs, broken and foreign
checkpoints, Ctrl-C and SIGTERM, a real full disk, damaged caches, concurrent writers) and every
bad flag that used to end in a traceback, one case per class. tests/fault_harness.py tries every
entry point with every class (a few hundred inputs); this file keeps one real case of each."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types

import pytest
import torch

import files
import data_collator
import runs
import cli
import config
import generate
import train
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
    assert "moved the outputs of the run that used" in capsys.readouterr().out
    prev = out / runs.PREVIOUS / "1"
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


def test_sigterm_saves_a_checkpoint_and_the_run_resumes(tmp_path):
    """SIGTERM (kill, docker stop, a cluster's preemption) does what Ctrl-C does: the step ends, a
    checkpoint is saved, exit 130, and --resume carries on."""
    out = tmp_path / "int"
    proc = popen(tiny(out, max_steps=100000, save_steps=100000, logging_steps=1))
    deadline = time.time() + 90
    while not any("loss" in r and r["step"] >= 3 for r in runs.read_metrics(str(out))):
        assert proc.poll() is None and time.time() < deadline, "no training step"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, log[-2000:]
    assert "Traceback" not in log and "stopped by SIGTERM at step" in log
    last = runs.last_complete_checkpoint(str(out), quiet=True)
    step = int(last.rsplit("-", 1)[1])
    assert step >= 3
    resumed = subprocess.run([sys.executable, "train.py", "--resume", "--output-dir", str(out), "--max-steps",
                              str(step + 2)], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0 and (out / "final-model").exists(), resumed.stdout[-2000:]


def test_ctrl_c_and_sigterm_both_ask_the_step_to_end_and_save():
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, whoever started pytest
    stop = runs.StopOnInterrupt()
    try:
        for sig, name in ((signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")):
            stop.requested = None
            os.kill(os.getpid(), sig)  # a real signal to this process: the handler runs, nothing dies
            assert stop.requested == name
            control = stop.on_step_end(None, None, types.SimpleNamespace(should_save=False, should_training_stop=False))
            assert control.should_save and control.should_training_stop
            signal.signal(sig, stop.request)  # the first signal restored the default; arm it again for the loop
    finally:
        stop.close()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        signal.signal(signal.SIGINT, before)


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


@pytest.mark.parametrize("script", ["train", "baseline_ar"])
def test_a_kill_right_after_a_checkpoint_leaves_one_resume_trusts(script, tiny_run, tmp_path, monkeypatch):
    """The moment between the Trainer finishing a checkpoint and the callbacks after it: a SIGKILL
    there once left a whole checkpoint without its run.json, which --resume then disowned ("no
    checkpoint of this run"). Here the first callback after the save dies instead."""
    import baseline_ar

    class Killed(Exception):
        pass

    def die(self, args, state, control, **kw):
        raise Killed

    out = tmp_path / script
    argv = tiny(out) if script == "train" else ["--checkpoint", tiny_run[1], "--output-dir", str(out)]
    main = train.main if script == "train" else baseline_ar.main
    with monkeypatch.context() as m:
        m.setattr(runs.Rotate, "on_save", die)
        with pytest.raises(Killed):
            main(argv)
    run_id = runs.read_run(str(out))["run_id"]
    assert runs.last_complete_checkpoint(str(out), run_id, quiet=True) == str(out / "checkpoint-3")
    assert main(["--resume", "--output-dir", str(out)]) == 0
    steps = [r["step"] for r in runs.read_metrics(str(out)) if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 6 and (out / "final-model" / "model.safetensors").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MB filesystem (a tmpfs; mounting needs root): the tiny model's first checkpoint
    (weights and optimiser, about 2 MB) does not fit on it."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root); tests/fault_harness.py --only disk says the same")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_real_full_disk_while_saving_is_one_line_and_the_run_goes_on_once_there_is_space(small_disk, capsys):
    out = small_disk / "out"
    code, err = run_cli(train.main, tiny(out, max_steps=4, save_steps=2), capsys)  # torch.save's RuntimeError, too
    assert code == 2 and err.startswith("error: no space left on the device holding") and "--resume" in err
    assert not (out / "final-model").exists()
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # space freed
    for name in os.listdir(out):  # what the full disk left half-written is never resumed from
        assert not name.startswith("checkpoint-") or runs.checkpoint_problem(str(out / name)) is not None
    assert train.main(tiny(out, max_steps=4, save_steps=2)) == 0 and (out / "final-model").exists()


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
    (dict(num_workers=-1), "--num-workers must be in [0, 128]"),
    (dict(max_train_blocks=-1), "--max-train-blocks must be in [0, inf)"),
    (dict(learning_rate="nan"), "--learning-rate must be a finite number"),
    (dict(learning_rate="inf"), "--learning-rate must be a finite number"),
    (dict(weight_decay="nan"), "--weight-decay must be a finite number"),
    (dict(mask_min="nan"), "--mask-min must be a finite number"),
    (dict(elbo_draws=1), "--elbo-draws must be in [2, 1024]"),
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


# ---------------------------------------------------------------------------------------------
# Second pass (issue 23): a run folder is never emptied early; resume never past the end nor
# with another shape; tokenizer and window checked against the weights; bounds that mean something
# ---------------------------------------------------------------------------------------------


def files_of(folder) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()
            and p.name != "train.lock"}


def test_fresh_runs_that_fail_their_checks_move_nothing_and_previous_keeps_every_run(straight, tmp_path, capsys):
    out = tmp_path / "a"
    shutil.copytree(straight, out)
    before = files_of(out)
    for _ in range(2):  # fails after loading data and building the model: no GPU for bf16
        code, err = run_cli(train.main, tiny(out, precision="bf16"), capsys)
        assert code == 2 and "--precision bf16 needs a CUDA GPU" in err
    assert files_of(out) == before  # nothing moved, nothing deleted
    for n in (1, 2):  # two fresh runs that do start: each earlier run is kept, numbered
        assert train.main(tiny(out, max_steps=2, save_steps=2)) == 0
    prev = out / runs.PREVIOUS
    assert sorted(p.name for p in prev.iterdir()) == ["1", "2"]
    assert {k[len("previous/1/"):]: v for k, v in files_of(out).items() if k.startswith("previous/1/")} == before
    assert (prev / "2" / "final-model" / "model.safetensors").exists()


def test_resume_never_trains_past_the_end(straight, tmp_path, capsys):
    out = tmp_path / "r"
    shutil.copytree(straight, out)
    code, err = run_cli(train.main, ["--resume", "--output-dir", str(out), "--max-steps", "5"], capsys)
    assert code == 2 and "checkpoint-12 is at step 12, past --max-steps 5" in err
    # the state a kill during the final save leaves: checkpoint-12 whole, final-model half-written
    shutil.rmtree(out / "final-model")
    shutil.copytree(out / "checkpoint-12", out / "final-model.tmp")
    os.remove(out / "final-model.tmp" / "model.safetensors")
    rows = len(runs.read_metrics(str(out)))
    assert train.main(["--resume", "--output-dir", str(out)]) == 0
    assert "at step 12 (the last step: nothing left to train" in capsys.readouterr().out
    assert len(runs.read_metrics(str(out))) == rows and max(losses(out)) == 12  # no step 13
    from safetensors.torch import load_file

    a, b = (load_file(str(out / d / "model.safetensors")) for d in ("checkpoint-12", "final-model"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the final model is the last checkpoint's weights


def test_resume_refuses_changed_shape_flags_in_one_line(straight, tmp_path, capsys):
    out = tmp_path / "s"
    shutil.copytree(straight, out)
    code, err = run_cli(train.main, ["--resume", "--output-dir", str(out), "--max-len", "64", "--scratch-layers", "2"],
                        capsys)
    assert code == 2 and err == ("error: --resume cannot change --scratch-layers (1 -> 2), --max-len (32 -> 64): "
                                 "they fix the model's shape or its data; resume without them, or start a fresh run "
                                 "in another --output-dir")


def test_a_folder_of_another_kind_or_a_saved_model_is_refused_before_loading(tiny_run, tiny_baseline, tmp_path,
                                                                              capsys):
    ar = tmp_path / "ar"
    shutil.copytree(tiny_baseline, ar)
    before = files_of(ar)
    code, err = run_cli(train.main, tiny(ar), capsys)
    assert code == 2 and "holds a ar run" in err and files_of(ar) == before
    code, err = run_cli(train.main, tiny(tmp_path / "f", output_dir=tiny_run[1]), capsys)
    assert code == 2 and "is a saved model (config.json and weights), not a run's folder" in err


@pytest.mark.parametrize("env,msg", [({"RANK": "abc"}, "RANK='abc' must be a whole number"),
                                     ({"WORLD_SIZE": "x"}, "WORLD_SIZE='x' must be a whole number"),
                                     ({"RANK": "1"}, "RANK=1, LOCAL_RANK=0 with WORLD_SIZE=1")])
def test_torchrun_variables_set_by_hand_are_one_line(tmp_path, capsys, monkeypatch, env, msg):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    code, err = run_cli(train.main, tiny(tmp_path / "o"), capsys)
    assert code == 2 and msg in err and not (tmp_path / "o").exists()  # RANK=1 alone used to skip the lock


def tamper_mask_token(d):
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps({**cfg, "mask_token": "<unk>"}))


def tamper_merges(d):
    spec = json.loads((d / "tokenizer.json").read_text())
    spec["model"]["merges"] = spec["model"]["merges"][::-1]
    (d / "tokenizer.json").write_text(json.dumps(spec))


def tamper_window(d):
    cfg = json.loads((d / "diffusion_config.json").read_text())
    (d / "diffusion_config.json").write_text(json.dumps({**cfg, "max_len": 4096}))


def tamper_weight(d):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(d / "model.safetensors"))
    next(iter(tensors.values()))[0] = float("nan")
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize("tamper,msg", [
    (tamper_mask_token, "has no mask token of its own"),  # the vocabulary alone is unchanged
    (tamper_merges, "is not the one this model was trained with"),
    (tamper_window, "says max_len 4096, but the model's weights hold 32 positions"),
    (tamper_weight, "are not finite"),
])
def test_files_that_do_not_belong_to_the_weights_are_refused(tiny_run, tmp_path, capsys, tamper, msg):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_run[1], ckpt)
    tamper(ckpt)
    code, err = run_cli(generate.main, ["--checkpoint", str(ckpt), "--out", ""], capsys)
    assert code == 2 and msg in err, err


@pytest.mark.parametrize("argv,msg", [
    (["--temperature", "1e-39"], "--temperature must be 0 (greedy) or at least 0.001"),
    (["--temperature", "1e308"], "--temperature must be in [0, 100]"),
    (["--cfg", "1e308", "--prompt", "The"], "--cfg must be in [0, 100]"),
    (["--seed", str(2 ** 64)], "--seed must be in [0, 9223372036854775807]"),
    (["--num-samples", str(10 ** 12)], "of memory; this machine has"),
    (["--length", str(10 ** 12), "--block-size", "8"], "more than the 1,000,000 one run may take"),
    (["--steps", str(10 ** 9)], "more than the 1,000,000 one run may take"),
    (["--template", "a [MASK:3000000000] b"], "template span [MASK:3000000000] does not fit"),
    (["--out", "/dev/full"], "/dev/full exists and is not a regular file"),
    (["--animate", "/proc/nope/a.gif"], "--animate's folder /proc/nope is not writable"),
])
def test_generation_bounds_are_one_line_before_any_step(tiny_run, tmp_path, capsys, argv, msg):
    code, err = run_cli(generate.main, ["--checkpoint", tiny_run[1], "--out", str(tmp_path / "g.jsonl"), *argv], capsys)
    assert code == 2 and msg in err, err
    assert os.stat("/dev/full").st_mode & 0o170000 == 0o020000  # still the device


def test_nucleus_keeps_the_top_token_when_p_is_below_float_resolution():
    import decoding

    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, -1.0, 0.5]])
    g = torch.Generator().manual_seed(0)
    for _ in range(5):  # p = 1e-300 is 0 in float32: without the rule every token was dropped (nan)
        assert decoding.nucleus(logits, g, temperature=1.0, p=1e-300).tolist() == [1, 0]


@pytest.mark.parametrize("prompt", ["<mask>", "a <s> b </s> <pad>"])
def test_special_token_text_in_a_prompt_stays_text(tiny_run, tmp_path, prompt):
    from tokens import encode_text

    log = tmp_path / "g.jsonl"
    assert generate.main(["--checkpoint", tiny_run[1], "--prompt", prompt, "--steps", "2", "--out", str(log)]) == 0
    sample = json.loads(log.read_text())["samples"][0]
    assert sample.startswith(prompt)  # typed text comes back as typed, never a control token or a hole
    from modeling import load_checkpoint

    tok = load_checkpoint(tiny_run[1], device="cpu")[1]
    assert not set(encode_text(tok, prompt)) & set(tok.all_special_ids)


def test_report_refuses_numbers_that_are_not_numbers(tmp_path, capsys):
    import report

    data = json.loads(open(os.path.join(ROOT, "docs", "evaluation.json")).read())
    data["held_out"]["ar"]["perplexity"] = float("nan")
    (tmp_path / "e.json").write_text(json.dumps(data))  # Python writes NaN, as evaluate.py would have
    code, err = run_cli(report.main, ["--evaluation", str(tmp_path / "e.json"), "--out", str(tmp_path / "r.md")], capsys)
    assert code == 2 and "NaN is not a number" in err and not (tmp_path / "r.md").exists()
    code, err = run_cli(report.main, ["--evaluation", str(tmp_path / "e.json"), "--out", "/dev/full"], capsys)
    assert code == 2 and "/dev/full exists and is not a regular file" in err


def test_a_damaged_cache_is_rebuilt_under_its_lock(tiny_run, tmp_path, capsys):
    """A truncated arrow file and a broken tokenizer.json: both rebuilt, the same tokenizer and blocks."""
    from data import build_datasets, get_tokenizer
    from tokens import fingerprint

    cfg = config.load_train_config(tiny_run[1])
    cache = tmp_path / "cache"
    cfg = config.TrainConfig(**{**dataclasses.asdict(cfg), "cache_dir": str(cache)})
    tok = get_tokenizer(cfg)
    train_ds, _ = build_datasets(cfg, tok)
    want = (fingerprint(tok), train_ds[:5]["input_ids"].tolist(), len(train_ds))
    (next(cache.glob("tokenizer-*")) / "tokenizer.json").write_text("{")
    arrow = next(cache.glob("blocks-*/train/*.arrow"))
    with open(arrow, "r+b") as f:
        f.truncate(1000)
    capsys.readouterr()
    tok = get_tokenizer(cfg)
    train_ds, _ = build_datasets(cfg, tok)
    said = capsys.readouterr().out
    assert said.count("is damaged") == 2 and "rebuilding it" in said
    assert (fingerprint(tok), train_ds[:5]["input_ids"].tolist(), len(train_ds)) == want


CACHE_USER = """
import sys
sys.path.insert(0, {root!r})
from config import TrainConfig
from data import build_datasets, get_tokenizer
cfg = TrainConfig(model="scratch", dataset={data!r}, max_len=32, cache_dir={cache!r}, tokenizer_vocab_size=300)
print(len(build_datasets(cfg, get_tokenizer(cfg))[0]))
"""


def test_two_processes_sharing_a_fresh_cache_both_get_it(tmp_path):
    data = tmp_path / "d.txt"
    data.write_text(" ".join(f"word{i % 97} and more text number {i}." for i in range(4000)))
    code = CACHE_USER.format(root=ROOT, data=str(data), cache=str(tmp_path / "cache"))
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-1500:] for _, e in outs]
    assert outs[0][0] == outs[1][0] and int(outs[0][0]) > 0
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tmp")]


WRITER = """
import sys
sys.path.insert(0, {root!r})
from files import write_json
for i in range(150):
    write_json({path!r}, {{"writer": sys.argv[1], "i": i, "pad": "x" * 4000}})
"""


def test_concurrent_write_json_never_fails_nor_tears(tmp_path):
    path = tmp_path / "shared.json"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER.format(root=ROOT, path=str(path)), str(i)],
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    reads = torn = 0
    while any(p.poll() is None for p in procs):
        try:
            json.loads(path.read_text())
            reads += 1
        except FileNotFoundError:
            pass
        except ValueError:
            torn += 1
    assert [p.wait() for p in procs] == [0, 0], [p.stderr.read()[-800:] for p in procs]
    assert torn == 0 and reads > 0 and os.listdir(tmp_path) == ["shared.json"]
