"""A training run owns its output folder, from the lock to the final model. train.py (the
diffusion model) and baseline_ar.py (the AR baseline) both go through this one lifecycle.

    with RunFolder(out, kind) as run:      the folder writable and locked (train.lock, flock) for the
                                           run's life: a second run into it fails at once, naming the holder
        checkpoint = run.resume_point()    --resume: the newest good checkpoint of this folder's own run
        run.start(tokenizer)               a fresh run: another run's outputs move to previous/, a new
                                           run id in run.json (with the kind of run and the tokenizer's
                                           fingerprint); a folder holding the other kind of run is refused
        step = run.resume(checkpoint, tokenizer)   the same tokenizer, metrics.jsonl trimmed to the step
        trainer.add_callback(...) for run.callbacks(keep)   rotation by step, Ctrl-C saves and stops
        finished = run.train(trainer, checkpoint)   a full disk is one line naming --resume
        run.save_final(trainer, extra)     final-model written aside, then renamed into place

    checkpoint_problem / last_complete_checkpoint / rotate_checkpoints   checkpoints judged by content

Every file is written whole or not at all (files.write_atomic); a crash never leaves a half
checkpoint that a resume would trust.
"""

import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import sys
import time
import uuid
import zipfile

from transformers import TrainerCallback

from cli import UsageError
from files import read_jsonl, write_atomic, write_json
from tokens import fingerprint

METRICS = "metrics.jsonl"
PROGRESS = "progress.txt"  # what the last log printed: monitor_training.sh shows it as is
RUN = "run.json"  # run id, kind and tokenizer fingerprint: in the output folder and every checkpoint
LOCK = "train.lock"  # held (flock) by the run writing the folder, for its whole life
PREVIOUS = "previous"  # where a fresh run moves the outputs of the run that used the folder before
FINAL = "final-model"


def check_writable(folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, ".write-test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UsageError(f"output dir {folder} is not writable ({e.strerror})")


def read_run(folder: str) -> dict:
    """folder/run.json as a dict ({} when missing or damaged)."""
    try:
        with open(os.path.join(folder, RUN)) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError, RecursionError):
        return {}


def read_metrics(out_dir: str) -> list[dict]:
    """metrics.jsonl's rows; a torn line (a run killed mid-write) is skipped."""
    return read_jsonl(os.path.join(out_dir, METRICS))


# ---------------------------------------------------------------------------------------------
# The lock
# ---------------------------------------------------------------------------------------------


class FolderLock:
    """flock on out/train.lock for the life of the run (released by the OS even on SIGKILL). A
    second run into the same folder fails at once, naming the holder."""

    def __init__(self, out: str):
        self.path = os.path.join(out, LOCK)
        self.new = not os.path.exists(self.path)
        self.f = open(self.path, "a+")
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.f.seek(0)
            holder = self.f.read().strip() or "another process"
            self.f.close()
            raise UsageError(f"{out} is in use by another training run ({holder}); wait for it to finish "
                             f"or choose another --output-dir")
        self.f.seek(0)
        self.f.truncate()
        self.f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        self.f.flush()

    def release(self, remove: bool = False) -> None:
        """Unlock; remove=True deletes a train.lock this run made, while still holding it (a run that
        failed before it began leaves the folder as it found it)."""
        if remove and self.new:
            os.remove(self.path)
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


# ---------------------------------------------------------------------------------------------
# Checkpoints, judged by content
# ---------------------------------------------------------------------------------------------


def checkpoint_steps(out: str) -> list[int]:
    names = os.listdir(out) if os.path.isdir(out) else []
    return sorted(int(n[len("checkpoint-"):]) for n in names if n.startswith("checkpoint-") and n[11:].isdigit())


def checkpoint_problem(folder: str, run_id: str | None = None) -> str | None:
    """Why `folder` cannot be resumed from (None if it can): judged by content, not by which files
    exist. Every JSON parses, the weights load and are finite, the optimiser/scheduler/RNG files
    are whole archives, and the checkpoint belongs to run `run_id` (when given)."""
    import torch
    from safetensors.torch import load_file

    names = sorted({"trainer_state.json", "config.json"} | {n for n in os.listdir(folder) if n.endswith(".json")})
    for name in names:
        try:
            with open(os.path.join(folder, name)) as f:
                json.load(f)
        except (OSError, ValueError, RecursionError) as e:
            return f"{name} is missing or damaged ({type(e).__name__})"
    if run_id is not None and read_run(folder).get("run_id") != run_id:
        return f"it belongs to another run ({read_run(folder).get('run_id') or 'unknown'}), not this folder's run {run_id}"
    try:
        tensors = load_file(os.path.join(folder, "model.safetensors"))
    except Exception as e:  # a truncated file raises safetensors' own error type
        return f"model.safetensors does not load ({type(e).__name__})"
    if not all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point()):
        return "its weights are not finite (saved after training diverged)"
    for name in os.listdir(folder):
        if name.endswith((".pt", ".pth")) and not zipfile.is_zipfile(os.path.join(folder, name)):
            return f"{name} is damaged"
    return None


def last_complete_checkpoint(out: str, run_id: str | None = None, quiet: bool = False) -> str | None:
    """The newest checkpoint-N in `out` that a run can resume from (checkpoint_problem), saying
    why each newer one is skipped: a run killed while saving, a full disk, a diverged run or
    another run's checkpoint never gets resumed from."""
    for step in reversed(checkpoint_steps(out)):
        folder = os.path.join(out, f"checkpoint-{step}")
        problem = checkpoint_problem(folder, run_id)
        if problem is None:
            return folder
        if not quiet:
            print(f"skipping {folder}: {problem}", flush=True)
    return None


def rotate_checkpoints(out: str, keep: int) -> list[str]:
    """Keep the newest `keep` resumable checkpoints (by step, not by folder time); delete older
    ones, and broken ones older than the newest good one. Returns what was deleted."""
    good = [s for s in checkpoint_steps(out) if checkpoint_problem(os.path.join(out, f"checkpoint-{s}")) is None]
    if not good:
        return []
    kept = set(good[-keep:])
    gone = [os.path.join(out, f"checkpoint-{s}") for s in checkpoint_steps(out) if s not in kept and s < good[-1]]
    for folder in gone:
        shutil.rmtree(folder, ignore_errors=True)
    return gone


class Rotate(TrainerCallback):
    """After each save: the run's run.json into the new checkpoint (a resume only trusts its own
    run's checkpoints), then rotation by step (the Trainer's own rotates by folder time and would
    keep a broken newest folder over good older ones)."""

    def __init__(self, keep: int):
        self.keep = keep

    def on_save(self, args, state, control, **kw):
        if state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if os.path.isdir(folder):
                shutil.copy(os.path.join(args.output_dir, RUN), os.path.join(folder, RUN))
            rotate_checkpoints(args.output_dir, self.keep)


class StopOnInterrupt(TrainerCallback):
    """Ctrl-C (SIGINT) stops at the end of the current step and saves a checkpoint there, so the
    run can continue with --resume; a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.requested = False
        self.previous = signal.getsignal(signal.SIGINT)
        if self.previous is not signal.SIG_IGN:  # a background job that ignores Ctrl-C keeps ignoring it
            signal.signal(signal.SIGINT, self.request)

    def request(self, signum, frame):
        from tqdm.auto import tqdm

        self.requested = True
        signal.signal(signal.SIGINT, self.previous)  # the next Ctrl-C is the default: interrupt now
        tqdm.write("Ctrl-C: stopping after this step and saving a checkpoint (Ctrl-C again to abort now)",
                   file=sys.stdout)

    def on_step_end(self, args, state, control, **kw):
        if self.requested:
            control.should_save = True
            control.should_training_stop = True
        return control

    def close(self) -> None:
        if not self.requested and self.previous is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, self.previous)


# ---------------------------------------------------------------------------------------------
# The run's folder, start to finish
# ---------------------------------------------------------------------------------------------


def first_missing(path: str) -> str | None:
    """The highest folder of `path` that does not exist yet (None if path exists)."""
    path, top = os.path.abspath(path), None
    while not os.path.exists(path):
        path, top = os.path.dirname(path), path
    return top


def remove_empty(path: str, top: str) -> None:
    """rmdir path and its parents up to `top`, stopping at the first that is not empty."""
    path = os.path.abspath(path)
    while True:
        try:
            os.rmdir(path)
        except OSError:
            return
        if path == top:
            return
        path = os.path.dirname(path)


class RunFolder:
    """The lifecycle of one run's output folder (module docstring). kind: "diffusion" or "ar"."""

    def __init__(self, out: str, kind: str, is_main: bool = True):
        self.out, self.kind, self.is_main = out, kind, is_main
        self.lock, self.interrupt, self.began, self.created = None, None, False, None

    def __enter__(self):
        self.created = first_missing(self.out)
        check_writable(self.out)
        if self.is_main:
            self.lock = FolderLock(self.out)  # a second run into this folder stops here
        return self

    def __exit__(self, typ, e, tb):
        if self.interrupt is not None:
            self.interrupt.close()
        undo = typ is not None and not self.began  # failed before the run began (bad input, no network, ...)
        if self.lock is not None:
            self.lock.release(remove=undo)
        if undo and self.is_main and self.created:  # and the folders it made, where still empty
            remove_empty(self.out, self.created)

    def resume_point(self) -> str:
        last = last_complete_checkpoint(self.out, read_run(self.out).get("run_id"))
        if last is None:
            raise UsageError(f"--resume: no checkpoint of this run to resume from in {self.out} "
                             f"(train without --resume first)")
        return last

    def start(self, tokenizer) -> str:
        """A fresh run: refuse a folder that holds the other kind of run, move another run's
        outputs to previous/ (replacing what an earlier fresh run moved there), so runs never mix
        and a finished result is never deleted by the next run; write run.json. Returns the run id."""
        other = read_run(self.out).get("kind", "diffusion" if os.path.isfile(os.path.join(self.out, RUN)) else None)
        if other not in (None, self.kind):
            raise UsageError(f"{self.out} holds a {other} run; write this {self.kind} run to another --output-dir")
        if self.is_main:
            self.move_aside()
        run_id = uuid.uuid4().hex[:12]
        self.began = True
        if self.is_main:
            write_json(os.path.join(self.out, RUN), {
                "run_id": run_id, "kind": self.kind, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "tokenizer_sha1": fingerprint(tokenizer), "vocab_size": len(tokenizer)})
        return run_id

    def move_aside(self) -> None:
        names = [n for n in os.listdir(self.out) if n.startswith("checkpoint-") or n in (
            FINAL, FINAL + ".tmp", METRICS, PROGRESS, RUN, "loss_by_level.csv", "loss_by_level.png")]
        if not names:
            return
        prev = os.path.join(self.out, PREVIOUS)
        shutil.rmtree(prev, ignore_errors=True)
        os.makedirs(prev)
        for name in names:
            os.replace(os.path.join(self.out, name), os.path.join(prev, name))
        print(f"moved the previous run's outputs in {self.out} to {prev}/ (a fresh run never mixes with another; "
              f"use --resume to continue a run instead)", flush=True)

    def resume(self, checkpoint: str, tokenizer) -> int:
        """Checks that the tokenizer rebuilt now is the checkpoint's and trims metrics.jsonl to
        the checkpoint's step, which it returns."""
        self.began = True  # a resumed run's folder held a run before this one
        want = read_run(checkpoint).get("tokenizer_sha1")
        if want and want != fingerprint(tokenizer):
            raise UsageError(f"--resume: the tokenizer rebuilt now differs from the one {checkpoint} was trained with "
                             f"(did the corpus or --cache-dir change?)")
        with open(os.path.join(checkpoint, "trainer_state.json")) as f:
            step = json.load(f)["global_step"]
        if self.is_main:
            path = os.path.join(self.out, METRICS)
            rows = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
            write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
        print(f"resuming {checkpoint} at step {step}", flush=True)
        return step

    def callbacks(self, keep: int) -> list:
        """Rotation by step; Ctrl-C stops and saves (single process: torchrun keeps its default)."""
        if int(os.environ.get("WORLD_SIZE", "1")) == 1:
            self.interrupt = StopOnInterrupt()
        return [Rotate(keep)] + ([self.interrupt] if self.interrupt else [])

    def interrupted(self) -> bool:
        return self.interrupt is not None and self.interrupt.requested

    def train(self, trainer, checkpoint: str | None) -> bool:
        """trainer.train(); False if Ctrl-C stopped it (a checkpoint is saved, the line says how to
        go on); a full disk is one line naming --resume."""
        with self.no_space_is_one_line():
            trainer.train(resume_from_checkpoint=checkpoint)
        if self.interrupted():
            step = trainer.state.global_step
            print(f"stopped by Ctrl-C at step {step}: checkpoint-{step} is saved; continue with: "
                  f"python {os.path.basename(sys.argv[0]) or 'train.py'} --resume --output-dir {self.out}", flush=True)
            return False
        return True

    def save_final(self, trainer, extra=None) -> str:
        """final-model: the model and tokenizer, run.json, whatever extra(folder) writes, saved to
        final-model.tmp and renamed, so a killed save never leaves a half-written final-model."""
        final = os.path.join(self.out, FINAL)
        with self.no_space_is_one_line():
            trainer.save_model(final + ".tmp")
            if trainer.is_world_process_zero():
                shutil.copy(os.path.join(self.out, RUN), os.path.join(final + ".tmp", RUN))
                if extra is not None:
                    extra(final + ".tmp")
                shutil.rmtree(final, ignore_errors=True)
                os.replace(final + ".tmp", final)
        return final

    def finished(self, line: str) -> None:
        """The last line of progress.txt (the monitor's sign that this run finished), printed too."""
        with open(os.path.join(self.out, PROGRESS), "a") as f:
            f.write(line + "\n")
        print(line, flush=True)

    def no_space_is_one_line(self):
        return _NoSpace(self.out)


class _NoSpace:
    """A full disk inside the block becomes one UsageError naming --resume."""

    def __init__(self, out: str):
        self.out = out

    def __enter__(self):
        return self

    def __exit__(self, typ, e, tb):
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            last = last_complete_checkpoint(self.out, quiet=True)
            raise UsageError(f"no space left on the device holding {self.out} ({e.filename or 'while saving'}); free "
                             f"some space and continue with --resume" + (f" (from {os.path.basename(last)})" if last else ""))
        return False
