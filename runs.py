"""A training run owns its output folder, from the lock to the final model. train.py (the
diffusion model) and baseline_ar.py (the AR baseline) both go through this one lifecycle.

    with RunFolder(out, kind) as run:      the folder writable and locked (train.lock, flock) for the
                                           run's life: a second run into it fails at once, naming the
                                           holder; a folder holding the other kind of run, or a saved
                                           model, is refused before anything is loaded
        checkpoint = run.resume_point()    --resume: the newest good checkpoint of this folder's own run
        refuse_changes(saved, flags, fixed)   --resume with a flag that fixes the model or its data: one line
        ... every check (data, model, trainer) ...
        run.start(tokenizer)               a fresh run, only once every check passed: the outputs of the
                                           run that used the folder before move to previous/N (numbered,
                                           never deleted), a new run id in run.json (with the kind of
                                           run and the tokenizer's fingerprint)
        step = run.resume(checkpoint, tokenizer, max_steps)   the same tokenizer, never past the end,
                                           metrics.jsonl trimmed to the step
        trainer.add_callback(...) for run.callbacks(keep)   rotation by step; Ctrl-C and SIGTERM save and stop
        finished = run.train(trainer, checkpoint)   a full disk is one line naming --resume; a checkpoint
                                           already at the last step is loaded, not trained on
        run.save_final(trainer, extra)     final-model written aside, then renamed into place

    class XTrainer(StampsRun, Trainer)     every checkpoint carries run.json before it is complete
    checkpoint_problem / last_complete_checkpoint / rotate_checkpoints   checkpoints judged by content
    process_rank()                         (rank, world size) from torchrun's RANK / WORLD_SIZE, checked

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
from tokens import fingerprint, fingerprint_matches

METRICS = "metrics.jsonl"
PROGRESS = "progress.txt"  # what the last log printed: monitor_training.sh shows it as is
RUN = "run.json"  # run id, kind and tokenizer fingerprint: in the output folder and every checkpoint
LOCK = "train.lock"  # held (flock) by the run writing the folder, for its whole life
PREVIOUS = "previous"  # previous/N: the outputs of each run that used the folder before, numbered
FINAL = "final-model"


def check_writable(folder: str) -> None:
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UsageError(f"output dir {folder} exists and is not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UsageError(f"output dir {folder} is not writable ({e.strerror})")


def process_rank() -> tuple[int, int]:
    """(rank, world size) of this process, from the RANK / WORLD_SIZE / LOCAL_RANK that torchrun and
    accelerate set; anything else is one line (a stray RANK=1 would skip the folder's lock)."""
    def read(name: str, default: int) -> int:
        value = os.environ.get(name, "")
        if value == "":
            return default
        if not value.isdigit():
            raise UsageError(f"{name}={value!r} must be a whole number (torchrun and accelerate set it; unset it "
                             f"to run one process)")
        return int(value)

    world, rank, local = read("WORLD_SIZE", 1), read("RANK", 0), read("LOCAL_RANK", 0)
    if world < 1 or rank >= world or local >= world:
        raise UsageError(f"RANK={rank}, LOCAL_RANK={local} with WORLD_SIZE={world}: each must be below WORLD_SIZE "
                         f"(launch several processes with torchrun or accelerate launch, or unset RANK)")
    return rank, world


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


class StampsRun:
    """Trainer mixin (before Trainer in the bases): a checkpoint gets the run's run.json (a resume
    only trusts its own run's checkpoints) as its weights are saved, before trainer_state.json, the
    last file the Trainer writes and the one that makes a checkpoint resumable. A kill right after a
    checkpoint, before any callback runs, so never leaves a complete checkpoint --resume disowns."""

    def _save(self, output_dir=None, state_dict=None):
        out = output_dir or self.args.output_dir
        super()._save(out, state_dict)
        if os.path.basename(os.path.normpath(out)).startswith("checkpoint-") and os.path.isfile(
                os.path.join(self.args.output_dir, RUN)):
            copy_run(self.args.output_dir, out)


class Rotate(TrainerCallback):
    """After each save, rotation by step (the Trainer's own rotates by folder time and would keep a
    broken newest folder over good older ones)."""

    def __init__(self, keep: int):
        self.keep = keep

    def on_save(self, args, state, control, **kw):
        if state.is_world_process_zero:
            rotate_checkpoints(args.output_dir, self.keep)


def copy_run(src: str, dst: str) -> None:
    with open(os.path.join(src, RUN)) as f:
        write_atomic(os.path.join(dst, RUN), f.read())


class StopOnInterrupt(TrainerCallback):
    """Ctrl-C (SIGINT) or SIGTERM (kill, docker stop, a cluster's preemption) stops at the end of the
    current step and saves a checkpoint there, so the run can continue with --resume; a second
    signal of the same kind acts at once."""

    SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}

    def __init__(self):
        self.requested = None  # the name of the signal that asked to stop
        self.previous = {}
        for sig in self.SIGNALS:
            old = signal.getsignal(sig)
            if old is not signal.SIG_IGN:  # a background job that ignores Ctrl-C keeps ignoring it
                self.previous[sig] = old
                signal.signal(sig, self.request)

    def request(self, signum, frame):
        from tqdm.auto import tqdm

        self.requested = self.requested or self.SIGNALS[signum]
        signal.signal(signum, self.previous[signum])  # the same signal again: the default, at once
        again = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        tqdm.write(f"{self.SIGNALS[signum]}: stopping after this step and saving a checkpoint ({again} again to "
                   f"abort now)", file=sys.stdout)

    def on_step_end(self, args, state, control, **kw):
        if self.requested:
            control.should_save = True
            control.should_training_stop = True
        return control

    def close(self) -> None:
        for sig, old in self.previous.items():
            if signal.getsignal(sig) == self.request:
                signal.signal(sig, old)


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


def refuse_changes(saved: dict, flags: dict, fixed: tuple) -> None:
    """--resume with a flag in `fixed` (it fixes the model's shape or its data) set to another
    value than the run was started with: one line naming each, instead of a state-dict error or a
    silently re-packed dataset."""
    changed = [f"--{k.replace('_', '-')} ({saved[k]} -> {flags[k]})" for k in fixed
               if k in flags and k in saved and flags[k] != saved[k]]
    if changed:
        raise UsageError(f"--resume cannot change {', '.join(changed)}: they fix the model's shape or its data; "
                         f"resume without them, or start a fresh run in another --output-dir")


def refuse_foreign(out: str, kind: str) -> None:
    """A folder holding the other kind of run, or a saved model (a final-model or checkpoint
    folder given as --output-dir), is never written into."""
    run = read_run(out)
    other = run.get("kind", "diffusion" if run else None)
    if other not in (None, kind):
        raise UsageError(f"{out} holds a {other} run; write this {kind} run to another --output-dir")
    if os.path.isfile(os.path.join(out, "config.json")) and any(
            n.endswith((".safetensors", ".bin")) for n in os.listdir(out)):
        raise UsageError(f"{out} is a saved model (config.json and weights), not a run's folder; choose another "
                         f"--output-dir")


class RunFolder:
    """The lifecycle of one run's output folder (module docstring). kind: "diffusion" or "ar"."""

    def __init__(self, out: str, kind: str):
        rank, self.world = process_rank()
        self.out, self.kind, self.is_main = out, kind, rank == 0
        self.lock, self.interrupt, self.began, self.created = None, None, False, None

    def __enter__(self):
        self.created = first_missing(self.out)
        check_writable(self.out)
        refuse_foreign(self.out, self.kind)
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
        """A fresh run, called once every check has passed: the outputs of the run that used the
        folder before move to previous/N, so runs never mix and nothing finished is ever deleted;
        write run.json. Returns the run id."""
        if self.is_main:
            self.move_aside()
        run_id = uuid.uuid4().hex[:12]
        self.began = True
        if self.is_main:
            write_json(os.path.join(self.out, RUN), {
                "run_id": run_id, "kind": self.kind, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "tokenizer_sha1": fingerprint(tokenizer, legacy=True), "tokenizer_fingerprint": fingerprint(tokenizer),
                "vocab_size": len(tokenizer)})
        return run_id

    def move_aside(self) -> None:
        names = [n for n in os.listdir(self.out) if n.startswith("checkpoint-") or n in (
            FINAL, FINAL + ".tmp", FINAL + ".old", METRICS, PROGRESS, RUN, "loss_by_level.csv", "loss_by_level.png",
            "diffusion_config.json", "ar_config.json")]
        if not names:
            return
        prev = os.path.join(self.out, PREVIOUS)
        os.makedirs(prev, exist_ok=True)
        taken = [int(n) for n in os.listdir(prev) if n.isdigit()]
        folder = os.path.join(prev, str(max(taken, default=0) + 1))
        os.makedirs(folder)
        for name in names:
            os.replace(os.path.join(self.out, name), os.path.join(folder, name))
        print(f"moved the outputs of the run that used {self.out} before to {folder}/ (a fresh run never mixes "
              f"with another, and never deletes one; use --resume to continue a run instead)", flush=True)

    def resume(self, checkpoint: str, tokenizer, max_steps: int) -> int:
        """Checks that the tokenizer rebuilt now is the checkpoint's and that the checkpoint is not
        past max_steps, trims metrics.jsonl to the checkpoint's step, and returns that step."""
        self.began = True  # a resumed run's folder held a run before this one
        if not fingerprint_matches(read_run(checkpoint), tokenizer):
            raise UsageError(f"--resume: the tokenizer rebuilt now differs from the one {checkpoint} was trained with "
                             f"(did the corpus or --cache-dir change?)")
        step = refuse_past_end(checkpoint, max_steps)
        if self.is_main:
            path = os.path.join(self.out, METRICS)
            rows = [r for r in read_jsonl(path) if isinstance(r.get("step", 0), int) and r.get("step", 0) <= step]
            write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
        print(f"resuming {checkpoint} at step {step}" + (" (the last step: nothing left to train, saving the "
              "final model)" if step == max_steps else ""), flush=True)
        return step

    def callbacks(self, keep: int) -> list:
        """Rotation by step; Ctrl-C and SIGTERM stop and save (single process: torchrun keeps its default)."""
        if self.world == 1:
            self.interrupt = StopOnInterrupt()
        return [Rotate(keep)] + ([self.interrupt] if self.interrupt else [])

    def interrupted(self) -> str | None:
        return self.interrupt.requested if self.interrupt is not None else None

    def train(self, trainer, checkpoint: str | None) -> bool:
        """trainer.train(), or, when the checkpoint is already at the last step (a run killed while
        saving its final model), its weights loaded without a step more. False if Ctrl-C or SIGTERM
        stopped it (a checkpoint is saved, the line says how to go on); a full disk is one line
        naming --resume."""
        if checkpoint is not None and checkpoint_step(checkpoint) >= trainer.args.max_steps:
            trainer._load_from_checkpoint(checkpoint)
            trainer.state.global_step = trainer.state.max_steps = checkpoint_step(checkpoint)
            return True
        try:
            with self.no_space_is_one_line():
                trainer.train(resume_from_checkpoint=checkpoint)
        except BaseException:
            close_progress(trainer)  # the one-line error starts a line of its own
            raise
        if self.interrupted():
            step = trainer.state.global_step
            print(f"stopped by {self.interrupted()} at step {step}: checkpoint-{step} is saved; continue with: "
                  f"python {os.path.basename(sys.argv[0]) or 'train.py'} --resume --output-dir {self.out}", flush=True)
            return False
        return True

    def save_final(self, trainer, extra=None) -> str:
        """final-model: the model and tokenizer, run.json, whatever extra(folder) writes, saved to
        final-model.tmp and renamed, so a killed save never leaves a half-written final-model."""
        final = os.path.join(self.out, FINAL)
        tmp, old = final + ".tmp", final + ".old"
        with self.no_space_is_one_line():
            shutil.rmtree(tmp, ignore_errors=True)
            trainer.save_model(tmp)
            if trainer.is_world_process_zero():
                copy_run(self.out, tmp)
                if extra is not None:
                    extra(tmp)
                shutil.rmtree(old, ignore_errors=True)
                if os.path.isdir(final):
                    os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
        return final

    def finished(self, line: str) -> None:
        """The last line of progress.txt (the monitor's sign that this run finished), printed too."""
        path = os.path.join(self.out, PROGRESS)
        text = open(path).read() if os.path.isfile(path) else ""
        with self.no_space_is_one_line():
            write_atomic(path, text + line + "\n")
        print(line, flush=True)

    def no_space_is_one_line(self):
        return _NoSpace(self.out)


def close_progress(trainer) -> None:
    """End the Trainer's progress bar, so that what is printed next starts on a line of its own."""
    from transformers.trainer_callback import ProgressCallback

    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, ProgressCallback) and getattr(cb, "training_bar", None) is not None:
            cb.training_bar.close()
        elif hasattr(getattr(cb, "bar", None), "close"):  # trainer.Bar, the repo's own bar
            cb.bar.close()
            cb.bar = None


def checkpoint_step(folder: str) -> int:
    with open(os.path.join(folder, "trainer_state.json")) as f:
        return json.load(f)["global_step"]


def refuse_past_end(checkpoint: str, max_steps: int) -> int:
    """The checkpoint's step, or a UsageError if it is past max_steps (a resume never trains on
    past the configured end, and never shortens a run it cannot undo)."""
    step = checkpoint_step(checkpoint)
    if step > max_steps:
        raise UsageError(f"--resume: {checkpoint} is at step {step}, past --max-steps {max_steps}; resume with "
                         f"--max-steps {step} or more, or start a fresh run in another --output-dir")
    return step


# what torch.save (RuntimeError) and safetensors (SafetensorError) say when a write fails: they are
# not OSErrors, so the words are all there is to go by
SPACE_WORDS = ("No space left", "os error 28", "unexpected pos", "file write failed", "Disk quota", "os error 122")
WRITE_WORDS = ("Read-only file system", "os error 30", "Permission denied", "os error 13", "Input/output error")


def write_failure(e: BaseException, folder: str) -> str | None:
    """"space" when `e` is a full disk, "write" when another failure to write (read-only, no
    permission, I/O), else None."""
    if isinstance(e, OSError):
        return ("space" if e.errno in (errno.ENOSPC, errno.EDQUOT) else
                "write" if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO) else None)
    if not isinstance(e, Exception) or isinstance(e, UsageError):
        return None
    try:
        nearly_full = shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        nearly_full = False
    text = str(e)
    if any(w in text for w in SPACE_WORDS) or (nearly_full and "writ" in text.lower()):
        return "space"
    return "write" if any(w in text for w in WRITE_WORDS) else None


class _NoSpace:
    """A full disk (or a read-only one, a missing permission) inside the block, whether an OSError
    or the RuntimeError torch.save raises, becomes one UsageError naming --resume."""

    def __init__(self, out: str):
        self.out = out

    def __enter__(self):
        return self

    def __exit__(self, typ, e, tb):
        kind = write_failure(e, self.out) if e is not None else None
        if kind is None:
            return False
        last = last_complete_checkpoint(self.out, quiet=True)
        where = getattr(e, "filename", None) or "while saving"
        then = "continue with --resume" + (f" (from {os.path.basename(last)})" if last else "")
        if kind == "space":
            raise UsageError(f"no space left on the device holding {self.out} ({where}); free some space and "
                             f"{then}") from None
        reason = getattr(e, "strerror", None) or str(e).splitlines()[0][:120]
        raise UsageError(f"cannot write in {self.out} ({reason}; {where}); fix that and {then}") from None
