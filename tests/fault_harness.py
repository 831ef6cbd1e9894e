"""Bad inputs and faults against every entry point, each judged (issue 23's second pass).

    python tests/fault_harness.py                     # every case, then the table by class
    python tests/fault_harness.py --only report,seed  # the cases whose class or name holds a word
    python tests/fault_harness.py --jobs 2 --json results/fault_harness.json --list

Every case runs a real command (train.py, generate.py, evaluate.py, report.py, baseline_ar.py,
bench.py, demo.py and its requests, the experiments, deploy.sh and monitor_training.sh against a
throwaway sshd) or a real fault (a full tmpfs, a read-only remount, SIGTERM, SIGKILL, concurrent
writers, damaged caches and checkpoints) and is judged:

    clear       refused with one line `error: ...` (exit 2, 3 or 130), or worked and its result checked
    traceback   a Python traceback anywhere in the output
    hang        still running at its time limit (killed)
    silent      exit 0 where a refusal was due, or a result its check found wrong
    injection   a canary file appeared (a value reached a shell)
    lost        a finished run's files are gone
    unclear     any other exit (no one-line message)

A fresh tiny run, its AR baseline and docs/evaluation.json are the fixtures (built in --work).
Not collected by pytest (no test_ prefix): tests/test_faults.py and tests/test_deploy.py keep one
real case per class in the suite.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import CACHE, ROOT, tiny_overrides  # noqa: E402

PY = sys.executable
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "HF_HOME": os.path.join(CACHE, "hf"), "HF_DATASETS_CACHE": os.path.join(CACHE, "hf", "datasets"),
       "MPLCONFIGDIR": os.path.join(CACHE, "mpl")}
OUTCOMES = ("clear", "traceback", "hang", "silent", "injection", "lost", "unclear")


@dataclass
class Case:
    """One attempt. cmd: argv with {tmp} {run} {final} {ar} {cache} {evaljson} {canary} {port}
    filled in; expect: refuse | ok | either; check(ctx) -> None or (outcome, detail) after the
    command; fn(ctx) -> (outcome, detail) instead of a command (the faults)."""
    cls: str
    name: str
    cmd: list = field(default_factory=list)
    expect: str = "refuse"
    env: dict = field(default_factory=dict)
    setup: Callable | None = None
    check: Callable | None = None
    fn: Callable | None = None
    timeout: float = 240
    kind: str = "input"


def py(script: str, *args) -> list:
    return [PY, os.path.join(ROOT, script), *map(str, args)]


def fill(value: str, names: dict) -> str:
    for k, v in names.items():
        value = value.replace("{" + k + "}", str(v))
    return value


def like_a_terminal() -> None:
    """In the child: Ctrl-C (SIGINT) acts, as in a terminal, even when the harness runs in the
    background (a background job inherits SIGINT ignored, and Python keeps it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


NAMES = {}  # the fixtures' placeholders ({cache}, {final}, ...): every command gets them filled


def run(cmd: list, env: dict, timeout: float, cwd: str = ROOT, stdin=subprocess.DEVNULL):
    """(exit code, stdout, stderr, timed out): the process group is killed at the time limit."""
    proc = subprocess.Popen([fill(a, NAMES) for a in cmd], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors="replace", start_new_session=True, stdin=stdin, preexec_fn=like_a_terminal)
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err, False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return proc.returncode, out, err, True


def last_line(text: str) -> str:
    lines = [ln for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


def judge(case: Case, ctx) -> tuple[str, str]:
    text = ctx.out + ctx.err
    line = last_line(ctx.err) or last_line(ctx.out)
    if os.path.exists(ctx.canary):
        return "injection", "the canary file exists"
    if ctx.timed_out:
        return "hang", f"killed after {case.timeout:.0f}s"
    if "Traceback (most recent call last)" in text:
        return "traceback", text[text.rindex("Traceback"):][-300:].replace("\n", " | ")
    if case.check is not None:
        verdict = case.check(ctx)
        if verdict is not None:
            return verdict
    clear = ctx.rc in (2, 3, 130) and (line.startswith(("error:", "stopped:")) or ": error: " in line)
    if ctx.rc == 0:
        return ("silent", "exit 0 where a refusal was due") if case.expect == "refuse" else ("clear", "worked")
    if clear:
        return ("unclear", f"refused a valid input: {line}") if case.expect == "ok" else ("clear", line)
    return "unclear", f"exit {ctx.rc}: {line[:200]}"


def attempt(case: Case, fx) -> dict:
    tmp = tempfile.mkdtemp(prefix=case.cls + "-", dir=fx.work)
    names = {**fx.names, "tmp": tmp, "canary": os.path.join(tmp, "CANARY")}
    ctx = SimpleNamespace(tmp=tmp, fx=fx, names=names, canary=names["canary"], rc=None, out="", err="",
                          timed_out=False)
    t0 = time.time()
    try:
        if case.setup is not None:
            case.setup(ctx)
        if case.fn is not None:
            outcome, detail = case.fn(ctx)
            if os.path.exists(ctx.canary):
                outcome, detail = "injection", "the canary file exists"
        else:
            env = {**ENV, **{k: fill(v, names) for k, v in case.env.items()}}
            ctx.rc, ctx.out, ctx.err, ctx.timed_out = run([fill(a, names) for a in case.cmd], env, case.timeout)
            outcome, detail = judge(case, ctx)
    except Exception:  # the harness itself failed: say so, never count it as a pass
        import traceback

        outcome, detail = "unclear", "harness: " + traceback.format_exc()[-400:].replace("\n", " | ")
    return {"class": case.cls, "name": case.name, "kind": case.kind, "outcome": outcome, "detail": detail,
            "seconds": round(time.time() - t0, 1)}


# ---------------------------------------------------------------------------------------------
# Fixtures: a tiny finished run, its AR baseline, an evaluation.json, a throwaway sshd
# ---------------------------------------------------------------------------------------------


def tiny(out: str, cache: str = "{cache}", **kw) -> list[str]:
    return tiny_overrides(out, **{"cache_dir": cache, **kw})


def fixtures(work: str, want_box: bool):
    os.makedirs(work, exist_ok=True)
    fx = SimpleNamespace(work=work, cache=os.path.join(work, "cache"), run=os.path.join(work, "run"),
                         ar=os.path.join(work, "ar"), box=None, demo=None, lock=threading.Lock())
    fx.final = os.path.join(fx.run, "final-model")
    fx.evaljson = os.path.join(work, "evaluation.json")
    shutil.copy(os.path.join(ROOT, "docs", "evaluation.json"), fx.evaljson)
    fx.names = {"run": fx.run, "final": fx.final, "ar": fx.ar, "cache": fx.cache, "evaljson": fx.evaljson,
                "work": work}
    NAMES.update(fx.names)
    if not os.path.isdir(fx.final):
        print("fixture: a tiny run", flush=True)
        rc, out, err, _ = run(py("train.py", *tiny(fx.run, fx.cache, max_steps=6, save_steps=3)), ENV, 900)
        assert rc == 0, (out + err)[-3000:]
    if not os.path.isdir(os.path.join(fx.ar, "final-model")):
        print("fixture: its AR baseline", flush=True)
        rc, out, err, _ = run(py("baseline_ar.py", "--checkpoint", fx.final, "--output-dir", fx.ar), ENV, 900)
        assert rc == 0, (out + err)[-3000:]
    if want_box and os.path.exists("/usr/sbin/sshd") and shutil.which("rsync"):
        from test_deploy import sshd_box

        fx.box_cm = sshd_box(Path(tempfile.mkdtemp(prefix="box-", dir=work)))
        fx.box = fx.box_cm.__enter__()
    return fx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# Bad inputs. Each entry point with a valid base command; a case appends its bad flags (the last
# value of a flag wins) or changes the environment.
# ---------------------------------------------------------------------------------------------

OBJECTIVE_FLAGS = ("--max-steps 2 --scratch-layers 1 --scratch-hidden 32 --scratch-heads 2 --scratch-intermediate 64 "
                   "--max-len 32 --batch-size 4 --cache-dir {cache} --eval-steps 2 --save-steps 2 --logging-steps 1")
BASE = {  # script -> (module, config class, a valid command line)
    "train.py": ("config", "TrainConfig", tiny("{tmp}/out")),
    "generate.py": ("config", "GenConfig", ["--checkpoint", "{final}", "--out", "{tmp}/g.jsonl", "--steps", "2"]),
    "evaluate.py": ("evaluate", "EvalConfig", ["--checkpoint", "{final}", "--baseline", "{ar}", "--out-dir", "{tmp}/e",
                                               "--num-samples", "2", "--settings", "defaults", "--elbo-blocks", "4",
                                               "--elbo-draws", "2"]),
    "baseline_ar.py": ("baseline_ar", "ARConfig", ["--checkpoint", "{final}", "--output-dir", "{tmp}/ar"]),
    "bench.py": ("bench", "BenchConfig", ["--small", "--device", "cpu", "--out", "{tmp}/b.json", "--cache-dir", "{cache}"]),
    "demo.py": ("demo", "DemoConfig", ["--checkpoint", "{final}", "--baseline", "{ar}", "--port", "{port}"]),
    "report.py": ("report", "ReportConfig", ["--evaluation", "{evaljson}", "--out", "{tmp}/r.md"]),
    "experiments/sampler_frontier.py": ("sampler_frontier", "FrontierConfig", [
        "--checkpoint", "{final}", "--baseline", "{ar}", "--out-dir", "{tmp}/f", "--num-samples", "1", "--steps", "2",
        "--rules", "random", "--temperatures", "0.9"]),
    "experiments/schedule_comparison.py": ("schedule_comparison", "CompareConfig", [
        "--checkpoint", "{final}", "--out-dir", "{tmp}/s", "--prompts", "2", "--steps", "2", "--schedules", "linear",
        "--samplers", "greedy", "--orders", "random", "--heatmap-steps", "2", "--plot-order", "random",
        "--heatmap-sampler", "greedy"]),
    "experiments/layer_analysis.py": ("layer_analysis", "LayerConfig", ["--checkpoint", "{final}", "--out-dir", "{tmp}/l",
                                                                        "--batches", "1", "--batch-size", "2"]),
    "experiments/masking_viz.py": ("masking_viz", "VizConfig", ["--checkpoint", "{final}", "--out-dir", "{tmp}/m",
                                                                "--draws", "100"]),
    "experiments/objective_study.py": ("objective_study", "StudyConfig", [
        "--out-dir", "{tmp}/o", "--objectives", "seed", "--scales", "1", "--num-samples", "1", "--elbo-draws", "2",
        "--train-flags", OBJECTIVE_FLAGS]),
    "experiments/recipe_probe.py": ("recipe_probe", "ProbeConfig", ["--seconds", "1", "--out", "{tmp}/p.jsonl",
                                                                    "--quick-test", "--cache-dir", "{cache}"]),
}


def cmd(script: str, *args) -> list:
    return py(script, *BASE[script][2], *args)


def config_class(script: str):
    import importlib

    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    module, name = BASE[script][:2]
    return getattr(importlib.import_module(module), name)


def out_of_range(meta: dict, typ) -> list:
    """Values just outside a field's declared range (config.flag's min/max/above/below)."""
    step = 1 if typ is int else 1e-9
    vals = []
    if meta.get("min") is not None:
        vals.append(meta["min"] - step if typ is float and meta["min"] != 0 else meta["min"] - 1)
    if meta.get("above") is not None:
        vals.append(meta["above"])
    if meta.get("max") is not None:
        vals.append(meta["max"] + 1)
    if meta.get("below") is not None:
        vals.append(meta["below"])
    return vals


def range_cases() -> list[Case]:
    """Every declared bound of every entry point's settings, one value past it."""
    import dataclasses

    from cli import field_types, flag_name

    cases = []
    for script in BASE:
        cls = config_class(script)
        types = field_types(cls)
        for f in dataclasses.fields(cls):
            for v in out_of_range(f.metadata, types[f.name]):
                cases.append(Case("range", f"{script} {flag_name(f.name)} {v}", cmd(script, flag_name(f.name), v)))
    return cases


BIG = str(10 ** 12)


def number_cases() -> list[Case]:
    """Values inside the old bounds whose arithmetic is not finite, seeds, wrong types."""
    gen = lambda *a, **kw: Case("finite", " ".join(a), cmd("generate.py", *a), **kw)  # noqa: E731
    out = [gen("--temperature", t) for t in ("1e-39", "1e308", "nan", "inf", "-0.0001")]
    out += [gen("--p", "1e-300", expect="either"), gen("--p", "nan"), gen("--cfg", "1e308", "--prompt", "The"),
            gen("--cfg", "inf", "--prompt", "The"), gen("--order-noise", "1e308", expect="either"),
            gen("--remdm", "cap", "--remdm-eta", "1e-300", expect="either"),
            gen("--threshold", "1e-300", "--decode", "threshold", expect="either"),
            gen("--sampling", "topk", "--k", str(10 ** 30), expect="either")]
    out += [Case("finite", f"train.py --learning-rate {v}", cmd("train.py", "--learning-rate", v), expect="either")
            for v in ("1e308", "nan", "1e-320")]
    out += [Case("finite", f"train.py --mask-min {v}", cmd("train.py", "--mask-min", v, "--mask-distribution", "linear",
                                                          "--max-steps", "2"), expect="either") for v in ("1e-300",)]
    out += [Case("finite", "train.py --weight-decay 1e308", cmd("train.py", "--weight-decay", "1e308"), expect="either"),
            Case("finite", "recipe_probe --seconds 1e308", cmd("experiments/recipe_probe.py", "--seconds", "1e308")),
            Case("finite", "sampler_frontier --temperatures 1e-39,1e308",
                 cmd("experiments/sampler_frontier.py", "--temperatures", "1e-39,1e308")),
            Case("finite", "demo --pause inf", cmd("demo.py", "--pause", "inf")),
            Case("finite", "schedule_comparison --temperature 1e-39",
                 cmd("experiments/schedule_comparison.py", "--temperature", "1e-39"))]
    for script in BASE:
        seed = config_class(script).__dataclass_fields__.get("seed")
        if seed is not None:
            out += [Case("seed", f"{script} --seed {v}", cmd(script, "--seed", v))
                    for v in (str(seed.metadata["min"] - 1), str(2 ** 64))]
    for script, flag_ in (("train.py", "--max-steps"), ("generate.py", "--steps"), ("evaluate.py", "--num-samples"),
                          ("bench.py", "--layers"), ("demo.py", "--port"), ("experiments/masking_viz.py", "--draws")):
        out += [Case("type", f"{script} {flag_} {v!r}", cmd(script, flag_, v)) for v in ("abc", "1.5", "")]
    out += [Case("type", "train.py --learning-rate x", cmd("train.py", "--learning-rate", "x")),
            Case("type", "train.py --resume=yes", cmd("train.py", "--resume=yes")),
            Case("type", "generate.py --sampling bogus", cmd("generate.py", "--sampling", "bogus"))]
    return out


def size_cases() -> list[Case]:
    """Sizes, counts and their products past what a machine holds (or finishes)."""
    sizes = {
        "generate.py": [("--num-samples", BIG), ("--length", BIG, "--block-size", "61"), ("--steps", str(10 ** 9)),
                        ("--template", "a [MASK:3000000000] b"), ("--block-size", BIG, "--length", "8"),
                        ("--length", BIG), ("--steps", str(10 ** 9), "--remdm", "cap", "--block-size", "8",
                                                  "--length", "1024"), ("--min-length", BIG, "--stop-at-eos")],
        "train.py": [("--max-len", "200000"), ("--batch-size", "100000"), ("--scratch-hidden", str(10 ** 9)),
                     ("--scratch-layers", str(10 ** 6)), ("--scratch-intermediate", str(10 ** 10)),
                     ("--num-workers", str(10 ** 6)), ("--elbo-draws", str(10 ** 9)), ("--grad-accum", str(10 ** 9)),
                     ("--prefix-len", str(10 ** 9)), ("--eval-batches", str(10 ** 9)),
                     ("--tokenizer-vocab-size", str(10 ** 9), "--cache-dir", "{tmp}/c")],
        "evaluate.py": [("--num-samples", BIG), ("--batch-size", "100000"), ("--elbo-draws", str(10 ** 9)),
                        ("--elbo-blocks", BIG), ("--prefix", str(10 ** 9))],
        "baseline_ar.py": [("--n-inner", str(10 ** 9)), ("--n-layer", str(10 ** 6)), ("--n-layer", "1", "--n-inner", "1")],
        "bench.py": [("--layers", str(10 ** 6)), ("--hidden", str(10 ** 9)), ("--seq-len", str(10 ** 9)),
                     ("--batch-size", str(10 ** 9)), ("--gen-length", BIG), ("--gen-steps", str(10 ** 9)),
                     ("--gen-batches", str(10 ** 9)), ("--steps", BIG), ("--rounds", str(10 ** 9)),
                     ("--warmup", BIG), ("--gen-repeats", str(10 ** 9)), ("--vocab", str(10 ** 12))],
        "demo.py": [("--max-tokens", BIG), ("--concurrency", str(10 ** 9))],
        "experiments/sampler_frontier.py": [("--num-samples", BIG), ("--steps", str(10 ** 9)),
                                            ("--length", BIG, "--block-size", "8")],
        "experiments/schedule_comparison.py": [("--prompts", str(10 ** 9)), ("--steps", str(10 ** 9),
                                                                              "--heatmap-steps", str(10 ** 9))],
        "experiments/layer_analysis.py": [("--batches", str(10 ** 9)), ("--bins", str(10 ** 9)),
                                          ("--batch-size", str(10 ** 9))],
        "experiments/masking_viz.py": [("--draws", BIG), ("--width", str(10 ** 9)), ("--steps", str(10 ** 9)),
                                       ("--block", str(10 ** 9))],
        "experiments/objective_study.py": [("--num-samples", BIG), ("--elbo-draws", str(10 ** 9)),
                                           ("--scales", "1,1000000")],
    }
    # a size the machine holds may work, but within the time limit: minutes of work is a hang
    # (a training run that evaluates every held-out block is legitimately slower: 600 s)
    return [Case("size", f"{script} {' '.join(a)}", cmd(script, *a), expect="either",
                 timeout=600 if script == "train.py" else 180) for script, rows in sizes.items() for a in rows]


def list_cases() -> list[Case]:
    """Comma-separated lists: empty, unknown, not numbers."""
    rows = [("experiments/sampler_frontier.py", "--temperatures", ["", "a,b", "0.5,,nan", ","]),
            ("experiments/sampler_frontier.py", "--rules", ["", "bogus", ","]),
            ("evaluate.py", "--settings", ["", "bogus", ","]),
            ("bench.py", "--gen-batches", ["", "0", "x", "-1"]),
            ("experiments/schedule_comparison.py", "--schedules", ["", "zigzag"]),
            ("experiments/schedule_comparison.py", "--steps", ["", "0", "x", "2,-1"]),
            ("experiments/schedule_comparison.py", "--samplers", ["bogus"]),
            ("experiments/layer_analysis.py", "--levels", ["x", "2", "0"]),
            ("experiments/layer_analysis.py", "--cka-levels", ["0.35", ""]),
            ("experiments/masking_viz.py", "--levels", ["", "1.5", "nan"]),
            ("experiments/objective_study.py", "--scales", ["", "0", "2", "x"]),
            ("experiments/objective_study.py", "--objectives", ["bogus", ""]),
            ("experiments/objective_study.py", "--best", ["bogus"]),
            ("train.py", "--mask-levels", ["", "0", "1.5", "a", "nan"])]
    return [Case("list", f"{script} {flag_} {v!r}", cmd(script, flag_, v)) for script, flag_, values in rows
            for v in values]


def mkdir(path: str) -> Callable:
    return lambda ctx: os.makedirs(fill(path, ctx.names), exist_ok=True)


def touch(path: str, text: str = "x") -> Callable:
    def make(ctx):
        p = fill(path, ctx.names)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(text)
    return make


def still_a_device(path: str) -> Callable:
    def check(ctx):
        import stat

        if not stat.S_ISCHR(os.stat(path).st_mode):
            return "lost", f"{path} was replaced by a regular file"
    return check


def copy(key: str, to: str = "") -> Callable:
    """Setup: a copy of fixture `key` (run, ar, final) at {tmp}/<to or key>."""
    return lambda ctx: shutil.copytree(ctx.names[key], os.path.join(ctx.tmp, to or key))


def snapshot(folder: str) -> dict:
    return {os.path.relpath(os.path.join(r, n), folder): os.path.getsize(os.path.join(r, n))
            for r, _, names in os.walk(folder) for n in names if n != "train.lock" and not n.startswith(".")}


def kept(key: str) -> Callable:
    """Check: every file of the copied fixture is still there, the same size (somewhere under it:
    a moved-aside run counts as kept)."""
    def check(ctx):
        before, after = snapshot(ctx.names[key]), snapshot(os.path.join(ctx.tmp, key))
        sizes = {}
        for rel, size in after.items():
            sizes.setdefault(rel.split("previous/", 1)[-1].split("/", 1)[-1] if "previous/" in rel else rel, set()).add(size)
        gone = [rel for rel, size in before.items() if size not in sizes.get(rel, set())]
        if gone:
            return "lost", f"{len(gone)} files of the finished run are gone or changed: {gone[:3]}"
    return check


def path_cases() -> list[Case]:
    """Output paths that cannot be written: checked before the work, never replacing a device."""
    outs = [("generate.py", "--out"), ("generate.py", "--animate"), ("report.py", "--out"), ("bench.py", "--out"),
            ("experiments/recipe_probe.py", "--out")]
    cases = [Case("out-path", f"{s} {f} /dev/full", cmd(s, f, "/dev/full"), check=still_a_device("/dev/full"))
             for s, f in outs]
    cases += [Case("out-path", f"{s} {f} <folder>", cmd(s, f, "{tmp}"), timeout=60) for s, f in outs]
    cases += [Case("out-path", f"{s} {f} /proc/x", cmd(s, f, "/proc/nope/x"), timeout=60) for s, f in outs]
    dirs = [("evaluate.py", "--out-dir"), ("train.py", "--output-dir"), ("train.py", "--cache-dir"),
            ("baseline_ar.py", "--output-dir"), ("experiments/sampler_frontier.py", "--out-dir"),
            ("experiments/schedule_comparison.py", "--out-dir"), ("experiments/layer_analysis.py", "--out-dir"),
            ("experiments/masking_viz.py", "--out-dir"), ("experiments/objective_study.py", "--out-dir")]
    cases += [Case("out-path", f"{s} {f} <a file>", cmd(s, f, "{tmp}/file"), setup=touch("{tmp}/file"), timeout=90)
              for s, f in dirs]
    cases += [Case("out-path", f"{s} {f} /proc/x", cmd(s, f, "/proc/nope"), timeout=90) for s, f in dirs]
    cases += [Case("out-path", "evaluate.py evaluation.json is a folder", cmd("evaluate.py"),
                   setup=mkdir("{tmp}/e/evaluation.json"), timeout=90),
              Case("out-path", "sampler_frontier png is a folder", cmd("experiments/sampler_frontier.py"),
                   setup=mkdir("{tmp}/f/sampler_frontier.png"), timeout=120),
              Case("out-path", "train.py --output-dir final-model", cmd("train.py", "--output-dir", "{tmp}/run/final-model"),
                   setup=copy("run"), check=kept("run"), timeout=90),
              Case("out-path", "baseline_ar.py --output-dir the diffusion run", cmd("baseline_ar.py", "--output-dir",
                                                                                 "{tmp}/run"),
                   setup=copy("run"), check=kept("run"), timeout=90),
              Case("out-path", "train.py --output-dir the AR run", cmd("train.py", "--output-dir", "{tmp}/ar"),
                   setup=copy("ar"), check=kept("ar"), timeout=90)]
    return cases


DEEP = "[" * 100000 + "]" * 100000


def damaged(rel: str, text: str | None, key: str = "final") -> Callable:
    """Setup: a copy of fixture `key` at {tmp}/ck with file `rel` replaced by `text` (None: removed)."""
    def make(ctx):
        ck = os.path.join(ctx.tmp, "ck")
        shutil.copytree(ctx.names[key], ck)
        path = os.path.join(ck, rel)
        if text is None:
            os.remove(path)
        else:
            with open(path, "w") as f:
                f.write(text)
    return make


def loader_cases() -> list[Case]:
    ck = ["--checkpoint", "{tmp}/ck"]
    gen = lambda name, rel, text, key="final": Case("loader", f"generate: {name}", cmd("generate.py", *ck),  # noqa: E731
                                                    setup=damaged(rel, text, key))
    cases = [gen("run.json damaged", "run.json", '{"run_id": '), gen("run.json a list", "run.json", "[1, 2]"),
             gen("run.json 100000 deep", "run.json", DEEP), gen("diffusion_config 100000 deep", "diffusion_config.json", DEEP),
             gen("diffusion_config a list", "diffusion_config.json", "[]"), gen("config.json empty", "config.json", ""),
             gen("tokenizer.json broken", "tokenizer.json", "{"), gen("tokenizer_config.json broken",
                                                                      "tokenizer_config.json", "{"),
             gen("weights empty", "model.safetensors", ""), gen("no weights", "model.safetensors", None),
             Case("loader", "generate: missing checkpoint", cmd("generate.py", "--checkpoint", "/nonexistent")),
             Case("loader", "generate: checkpoint is a file", cmd("generate.py", "--checkpoint", "{evaljson}")),
             Case("loader", "generate: empty checkpoint folder", cmd("generate.py", "--checkpoint", "{tmp}"))]
    ev = lambda name, *a, **kw: Case("loader", f"evaluate: {name}", cmd("evaluate.py", *a), timeout=180, **kw)  # noqa: E731
    cases += [ev("masked LM as --scorer", "--scorer", "{final}"), ev("empty --scorer folder", "--scorer", "{tmp}"),
              ev("diffusion run as --baseline", "--baseline", "{run}"), ev("empty --baseline", "--baseline", "{tmp}"),
              ev("damaged ar_config.json", "--baseline", "{tmp}/ck", setup=damaged("final-model/ar_config.json", "{", "ar")),
              ev("baseline with another tokenizer", "--baseline", "{tmp}/ck",
                 setup=damaged("final-model/tokenizer.json", None, "ar"))]
    tr = lambda name, *a, **kw: Case("loader", f"train: {name}", cmd("train.py", *a), timeout=180, **kw)  # noqa: E731
    cases += [tr("empty --model folder", "--model", "{tmp}"), tr("--model a file", "--model", "{evaljson}"),
              tr("causal LM as --model", "--model", "{ar}/final-model"),
              tr("100000-deep JSON line", "--dataset", "{tmp}/d.jsonl", setup=touch("{tmp}/d.jsonl", DEEP + "\n")),
              tr("binary dataset", "--dataset", "{tmp}/d.txt", setup=lambda c: open(f"{c.tmp}/d.txt", "wb").write(
                  bytes(range(256)) * 50)),
              tr("empty dataset", "--dataset", "{tmp}/d.txt", setup=touch("{tmp}/d.txt", "")),
              tr("folder without text", "--dataset", "{tmp}/data", setup=touch("{tmp}/data/x.csv")),
              tr("jsonl row a list", "--dataset", "{tmp}/d.jsonl", setup=touch("{tmp}/d.jsonl", "[1]\n"))]
    cases += [Case("loader", "baseline_ar: AR model as --checkpoint", cmd("baseline_ar.py", "--checkpoint",
                                                                         "{ar}/final-model")),
              Case("loader", "baseline_ar --resume: ar_config.json damaged",
                   cmd("baseline_ar.py", "--resume", "--output-dir", "{tmp}/ck"), setup=damaged("ar_config.json", "[", "ar")),
              Case("loader", "layer_analysis: AR model as --checkpoint", cmd("experiments/layer_analysis.py",
                                                                            "--checkpoint", "{ar}/final-model")),
              Case("loader", "masking_viz: damaged config", cmd("experiments/masking_viz.py", *ck),
                   setup=damaged("diffusion_config.json", '{"max_len": "big"}')),
              Case("loader", "demo: missing checkpoint", cmd("demo.py", "--checkpoint", "/nonexistent")),
              Case("loader", "demo: damaged baseline", cmd("demo.py", "--baseline", "{tmp}/ck"),
                   setup=damaged("final-model/config.json", "{", "ar")),
              Case("loader", "objective_study: unclosed quote", cmd("experiments/objective_study.py", "--train-flags",
                                                                  "--dataset 'x")),
              Case("loader", "objective_study: unknown train flag", cmd("experiments/objective_study.py",
                                                                       "--train-flags", "--bogus 1"), timeout=300),
              Case("loader", "objective_study --render-only: damaged JSON", cmd("experiments/objective_study.py",
                                                                               "--render-only"),
                   setup=touch("{tmp}/o/objective_study.json", '{"runs": [')),
              Case("loader", "objective_study --render-only: wrong shape", cmd("experiments/objective_study.py",
                                                                              "--render-only"),
                   setup=touch("{tmp}/o/objective_study.json", '{"runs": 3}'))]
    return cases + report_cases()


def evaluation_with(change: Callable) -> Callable:
    """Setup: docs/evaluation.json changed by change(dict) at {tmp}/ev.json (written with NaN allowed)."""
    def make(ctx):
        with open(ctx.names["evaljson"]) as f:
            data = json.load(f)
        change(data)
        with open(os.path.join(ctx.tmp, "ev.json"), "w") as f:
            json.dump(data, f)
    return make


def report_cases() -> list[Case]:
    def set_(path, value):
        def change(d):
            for k in path[:-1]:
                d = d[k]
            d[path[-1]] = value
        return change

    rows = [("ar perplexity NaN", set_(["held_out", "ar", "perplexity"], float("nan"))),
            ("ar perplexity Infinity", set_(["held_out", "ar", "perplexity"], float("inf"))),
            ("bound -Infinity", set_(["held_out", "diffusion", "nats_per_token"], float("-inf"))),
            ("ar perplexity 0", set_(["held_out", "ar", "perplexity"], 0)),
            ("negative perplexity", set_(["held_out", "diffusion", "perplexity"], -5.0)),
            ("negative entropy", lambda d: d["samples"][1].update(unigram_entropy=-1.0)),
            ("gen ppl NaN", lambda d: d["samples"][1].update(gen_ppl=float("nan"))),
            ("held_out a string", set_(["held_out"], "x")), ("samples a number", set_(["samples"], 3)),
            ("no samples", set_(["samples"], [])), ("parameters zero", set_(["parameters", "diffusion"], 0)),
            ("machine missing", lambda d: d.pop("machine")), ("sample name a list", lambda d: d["samples"][0].update(
                name=["x"]))]
    cases = [Case("report", f"report.py: {name}", cmd("report.py", "--evaluation", "{tmp}/ev.json"),
                  setup=evaluation_with(change)) for name, change in rows]
    cases.append(Case("report", "report.py: binary", cmd("report.py", "--evaluation", "{tmp}/ev.json"),
                      setup=lambda c: open(f"{c.tmp}/ev.json", "wb").write(b"\xff\xfe\x00{")))
    for name, text in (("100000 deep", DEEP), ("a list", "[]"), ("empty", ""), ("not JSON", "{")):
        cases.append(Case("report", f"report.py: {name}", cmd("report.py", "--evaluation", "{tmp}/ev.json"),
                          setup=touch("{tmp}/ev.json", text)))
    cases.append(Case("report", "report.py: --evaluation a folder", cmd("report.py", "--evaluation", "{tmp}")))
    return cases


def env_cases() -> list[Case]:
    """torchrun's variables set by hand, wrong."""
    rows = [{"RANK": "abc"}, {"WORLD_SIZE": "abc"}, {"RANK": "1"}, {"LOCAL_RANK": "x"}, {"WORLD_SIZE": "0"},
            {"RANK": "-1"}]
    cases = [Case("env", f"{script} {env}", cmd(script), env=env, timeout=180)
             for script in ("train.py", "baseline_ar.py") for env in rows]
    return cases


def shape_cases() -> list[Case]:
    """Shapes that cannot work, and --resume with a flag that fixes the model or its data."""
    cases = [Case("shape", "odd head dimension", cmd("train.py", "--scratch-hidden", "30", "--scratch-heads", "2")),
             Case("shape", "head dimension 1", cmd("train.py", "--scratch-hidden", "2", "--scratch-heads", "2")),
             Case("shape", "hidden not divisible by heads", cmd("train.py", "--scratch-hidden", "33"))]
    for flag_, value in (("--max-len", "64"), ("--scratch-arch", "roberta"), ("--scratch-layers", "2"),
                         ("--scratch-hidden", "64"), ("--tokenizer-vocab-size", "2048"), ("--dataset", "{tmp}/d.txt"),
                         ("--val-fraction", "0.2"), ("--max-steps", "2")):
        cases.append(Case("shape", f"--resume {flag_} {value}", py("train.py", "--resume", "--output-dir", "{tmp}/run",
                                                                    flag_, value),
                          setup=copy("run"), check=kept("run"), timeout=180))
    return cases


def tamper(change: Callable) -> Callable:
    """Setup: a copy of the final model at {tmp}/ck, changed by change(folder)."""
    def make(ctx):
        ck = os.path.join(ctx.tmp, "ck")
        shutil.copytree(ctx.names["final"], ck)
        change(ck)
    return make


def edit_json(rel: str, change: Callable) -> Callable:
    def go(folder):
        path = os.path.join(folder, rel)
        with open(path) as f:
            data = json.load(f)
        change(data)
        with open(path, "w") as f:
            json.dump(data, f)
    return go


def reverse_merges(folder):
    edit_json("tokenizer.json", lambda d: d["model"].update(merges=d["model"]["merges"][::-1]))(folder)
    path = os.path.join(folder, "merges.txt")
    if os.path.exists(path):
        lines = open(path).read().splitlines()
        open(path, "w").write("\n".join(lines[:1] + lines[1:][::-1]) + "\n")


def nan_weight(folder):
    from safetensors.torch import load_file, save_file

    path = os.path.join(folder, "model.safetensors")
    tensors = load_file(path)
    name = next(iter(tensors))
    tensors[name][0] = float("nan")
    save_file(tensors, path, metadata={"format": "pt"})


def swap_two(data: dict) -> None:
    vocab = data["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[300:302]
    vocab[a], vocab[b] = vocab[b], vocab[a]


def tamper_cases() -> list[Case]:
    """Files beside the weights that do not belong to them: each must be refused, never used."""
    rows = [("mask_token <unk> in tokenizer_config.json", edit_json("tokenizer_config.json",
                                                                    lambda d: d.update(mask_token="<unk>"))),
            ("reversed merges", reverse_merges),
            ("two vocabulary entries swapped", edit_json("tokenizer.json", swap_two)),
            ("diffusion_config.json max_len 4096", edit_json("diffusion_config.json", lambda d: d.update(max_len=4096))),
            ("a NaN weight", nan_weight)]
    cases = []
    for name, change in rows:
        cases.append(Case("tamper", f"generate: {name}", cmd("generate.py", "--checkpoint", "{tmp}/ck"),
                          setup=tamper(change)))
        cases.append(Case("tamper", f"evaluate: {name}", cmd("evaluate.py", "--checkpoint", "{tmp}/ck", "--baseline",
                                                             "none"), setup=tamper(change), timeout=180))
    return cases


def keeps_text(text: str) -> Callable:
    """Check: the literal prompt text is in every sample written to {tmp}/g.jsonl."""
    def check(ctx):
        if ctx.rc != 0:
            return None
        rows = [json.loads(ln) for ln in open(os.path.join(ctx.tmp, "g.jsonl"))]
        if not all(text in s for s in rows[-1]["samples"]):
            return "silent", f"{text!r} is not in the output: {rows[-1]['samples'][0][:80]!r}"
    return check


def special_cases() -> list[Case]:
    """Special-token text typed in a prompt or template: kept as the text it is."""
    cases = [Case("special", f"--prompt {p!r}", cmd("generate.py", "--prompt", p), expect="either", check=keeps_text(p))
             for p in ("<mask>", "<s>", "<pad>", "</s>", "<unk>", "a <mask> b <s> c")]
    cases.append(Case("special", "--template with <mask> text", cmd("generate.py", "--template", "x <mask> [MASK:3] y"),
                      expect="either", check=keeps_text("x <mask>")))
    cases.append(Case("special", "--template '<s>[MASK]</s>'", cmd("generate.py", "--template", "<s>[MASK]</s>"),
                      expect="either", check=keeps_text("<s>")))
    cases.append(Case("special", "sampler_frontier --prompt '<mask>'", cmd("experiments/sampler_frontier.py",
                                                                          "--prompt", "<mask> is"), expect="either"))
    return cases


# ---------------------------------------------------------------------------------------------
# demo.py's requests, against one real server
# ---------------------------------------------------------------------------------------------


def demo_server(fx):
    """(gradio client, server log path): demo.py started once, on a free port, no slow motion."""
    if fx.demo is None:
        from gradio_client import Client

        port = free_port()
        log = os.path.join(fx.work, "demo.log")
        proc = subprocess.Popen(py("demo.py", "--checkpoint", fx.final, "--baseline", fx.ar, "--port", port,
                                   "--pause", "0"), cwd=ROOT, env=ENV, stdout=open(log, "w"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        for _ in range(600):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None, open(log).read()[-2000:]
            time.sleep(0.5)
        fx.demo = SimpleNamespace(proc=proc, log=log, client=Client(f"http://127.0.0.1:{port}/", verbose=False))
    return fx.demo


def page_values(**over) -> list:
    import demo

    values = {"mode": "prompt", "prompt": "The history of", "template": "",
              **{f.name: f.default for f in demo.page_fields()}, **over}
    return [values[k] for k in ["mode", "prompt", "template"] + [f.name for f in demo.page_fields()]]


def request(over: dict, expect: str, seconds: float = 60) -> Callable:
    def fn(ctx):
        with ctx.fx.lock:  # one request at a time: the server's log is read around each
            return ask(demo_server(ctx.fx), over, expect, seconds)
    return fn


def ask(d, over: dict, expect: str, seconds: float) -> tuple[str, str]:
    before = open(d.log).read().count("Traceback")
    t0 = time.time()
    try:
        job = d.client.submit(*page_values(**over), api_name="/generate")
        result = job.result(timeout=seconds)
    except Exception as e:
        if "Timeout" in type(e).__name__ or time.time() - t0 >= seconds:
            return "hang", f"no answer in {seconds}s"
        return "unclear", f"the client got {type(e).__name__}: {str(e)[:120]}"
    if open(d.log).read().count("Traceback") > before:
        return "traceback", "the server logged a traceback"
    status = result[3]
    if "message error" in status:
        return ("unclear", f"refused a valid request: {status[:160]}") if expect == "ok" else ("clear", status[:160])
    return ("silent", "generated where a refusal was due") if expect == "refuse" else ("clear", "generated")


def demo_cases() -> list[Case]:
    # (NaN and Infinity cannot be sent at all: JSON has no such numbers; as text they reach the server)
    bad = [dict(k="inf"), dict(p=[0.5]), dict(p="abc"), dict(temperature=1e-39),
           dict(temperature=1e308), dict(cfg=1e308), dict(seed=-1), dict(seed=2 ** 64), dict(steps="abc"),
           dict(steps=1.5), dict(length=None), dict(mode="story"), dict(prompt=123), dict(template=None, mode="template"),
           dict(length=1024, steps=1024, block_size=8, remdm="cap"), dict(length=10 ** 12), dict(order_noise="nan"),
           dict(schedule=["linear"]), dict(stop_at_eos="yes"), dict(mode="template", template="[MASK:3000000000]")]
    cases = [Case("demo-request", f"demo request {over}", fn=request(over, "refuse")) for over in bad]
    cases += [Case("demo-request", "demo request k 1e300 (every token: top-k of more than the vocabulary)",
                   fn=request(dict(k=1e300, length=4), "either")),
              Case("demo-request", "demo request '<mask>' prompt", fn=request(dict(prompt="<mask> is", length=4), "ok")),
              Case("demo-request", "demo request after the bad ones", fn=request(dict(length=6, steps=3), "ok"))]
    return cases


# ---------------------------------------------------------------------------------------------
# deploy.sh and monitor_training.sh: a hostile value in every variable, against a real sshd
# ---------------------------------------------------------------------------------------------

FAST_FAIL = ["--max-steps", "-1"]  # train.py on the box refuses it at once: a deploy that works costs nothing


def deploy(env: dict, args: list = (), host: str | None = None, expect: str = "refuse") -> Callable:
    def fn(ctx):
        box = ctx.fx.box
        if box is None:
            return "unclear", "no sshd here (apt-get install openssh-server rsync)"
        names = {**ctx.names, "py": PY}
        full = {**box.env, "RUN_NAME": "t", "REMOTE_DIR": os.path.join(str(box.dir), os.path.basename(ctx.tmp)),
                "DETACH": "nohup", **{k: fill(v, names) for k, v in env.items()}}
        rc, out, err, timed_out = run(["./deploy.sh", fill(host or box.host, names), "--", *args, *FAST_FAIL],
                                      full, 120)
        time.sleep(3)  # what the deploy started on the box has run by now
        ctx.rc, ctx.out, ctx.err, ctx.timed_out = rc, out, err, timed_out
        return judge(Case("deploy", "", expect=expect), ctx)
    return fn


def deploy_cases() -> list[Case]:
    c = "{canary}"
    hostile = [("REMOTE_DIR", f"x'$(touch {c})'"), ("REMOTE_DIR", "/"), ("REMOTE_DIR", "/usr"), ("REMOTE_DIR", "a b"),
               ("RUN_NAME", f"a$(touch {c})"), ("RUN_NAME", "-x"), ("SESSION", f"s`touch {c}`"),
               ("VENV", f"v'; touch {c}; '"), ("PYTHON", f"python3;touch {c}"),
               ("REMOTE_PYTHON", f"{{py}} -c 'open(\"{c}\", \"w\")'"), ("NPROC", "99999999999999999999"),
               ("NPROC", f"2;touch {c}"), ("NPROC", "0"), ("DETACH", f"tmux;touch {c}"),
               ("SSH_PORT", f"22 -oProxyCommand=touch {c}"), ("SSH_PORT", "abc"),
               ("CONNECT_TIMEOUT", f"5 -oProxyCommand=touch {c}"), ("CONNECT_TIMEOUT", "0")]
    cases = [Case("deploy", f"{k}={v}", fn=deploy({k: v})) for k, v in hostile]
    cases += [Case("deploy", f"host {h}", fn=deploy({}, host=h)) for h in
              (f"-oProxyCommand=touch {c}", f"root@127.0.0.1;touch {c}", "a b")]
    # values that reach the box as plain words: the deploy works, the run there fails on them
    cases += [Case("deploy", "SSH_KEY with quotes, the real key in SSH_OPTS (the issue's injection)",
                   fn=with_key_in_opts({"SSH_KEY": f"/nokey' '-oProxyCommand=touch {c}"})),
              Case("deploy", "TORCHRUN_ARGS with quotes and substitutions",
                   fn=deploy({"NPROC": "2", "TORCHRUN_ARGS": f"--standalone $(touch {c}) '\"`touch {c}`"},
                             expect="either")),
              Case("deploy", "train flag with substitutions", fn=deploy({}, ["--dataset", f"$(touch {c})'`touch {c}`"],
                                                                        expect="either"))]
    return cases + monitor_cases()


def with_key_in_opts(env: dict) -> Callable:
    def fn(ctx):
        box = ctx.fx.box
        if box is None:
            return "unclear", "no sshd here"
        opts = {"SSH_OPTS": f"-i {box.env['SSH_KEY']} {box.env['SSH_OPTS']}"}
        return deploy({**env, **opts}, expect="either")(ctx)
    return fn


def monitor(args: list, env: dict | None = None, setup_files: dict | None = None, never: str = "status: running",
            expect: str = "either") -> Case:
    """monitor_training.sh run in {tmp} (so --dir -x is a relative name) over files written there."""
    def setup(ctx):
        for rel, text in (setup_files or {}).items():
            touch("{tmp}/" + rel, text)(ctx)

    def check(ctx):
        if never in ctx.out or "\x1b" in ctx.out or "\x9b" in ctx.out:
            return "silent", f"printed {never!r} or a terminal escape: {ctx.out[-160:]!r}"
        if ctx.rc in (0, 1, 3, 4) and expect == "either":
            return "clear", last_line(ctx.out)
    script = os.path.join(ROOT, "monitor_training.sh")
    return Case("monitor", f"monitor {' '.join(args)} {env or ''} {sorted(setup_files or {})}",
                ["bash", "-c", 'cd "$1" && shift && exec "$@"', "_", "{tmp}", script, *args], env=env or {},
                setup=setup, check=check, expect=expect, timeout=30)


def monitor_cases() -> list[Case]:
    run_files = {"-x/progress.txt": "step 1/2 | loss 1\n", "-x/train.lock": ""}
    return [monitor(["--follow"], {"INTERVAL": "abc"}, expect="refuse"),
            monitor(["--follow"], {"INTERVAL": "0"}, expect="refuse"),
            monitor(["--follow"], {"INTERVAL": "-1"}, expect="refuse"),
            monitor(["--dir", "-x"], setup_files=run_files),
            monitor(["--dir", "r"], setup_files={"r/pid": "-1", "r/progress.txt": "x\n"}),
            monitor(["--dir", "r"], setup_files={"r/pid": "1 2", "r/progress.txt": "x\n"}),
            monitor(["--dir", "r"], setup_files={"r/pid": "$(touch {canary})"}),
            monitor(["--dir", "r"], setup_files={"r/progress.txt": "step 1 \x1b[2J\x1b]0;owned\x07 \x9b31m\n"}),
            monitor(["--dir", "r"], setup_files={"r/exit_code": "\x1b[2J7", "r/train.log": "\x1b[31mred\n"}),
            monitor(["--run", "../x"], expect="refuse"), monitor(["--run", "-x"], expect="refuse"),
            monitor(["--dir"], expect="refuse"), monitor(["-oProxyCommand=touch {canary}"], expect="refuse")]


# ---------------------------------------------------------------------------------------------
# Faults: a real full disk, a read-only remount, signals, concurrent writers, damaged caches
# ---------------------------------------------------------------------------------------------


def tmpfs(path: str, size: str, fill_it: bool = False) -> bool:
    """Mount a tmpfs of `size` at path (root only); fill_it: leave no byte free. False if not allowed."""
    os.makedirs(path, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], capture_output=True).returncode:
        return False
    if fill_it:
        with open(os.path.join(path, "filler"), "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
    return True


def unmount(path: str) -> None:
    subprocess.run(["umount", "-l", path], capture_output=True)


def on_full_disk(cmd_: list, size: str = "64k", fill_it: bool = True, where: str = "full") -> Callable:
    """A command whose output goes to a tmpfs ({full}) that is (or becomes) full: one line, no traceback."""
    def fn(ctx):
        mnt = os.path.join(ctx.tmp, where)
        if not tmpfs(mnt, size, fill_it):
            return "unclear", "cannot mount a tmpfs here (needs root)"
        try:
            names = {**ctx.names, "full": mnt}
            ctx.rc, ctx.out, ctx.err, ctx.timed_out = run([fill(a, names) for a in cmd_], ENV, 300)
            verdict = judge(Case("disk", ""), ctx)
            return ("clear", verdict[1]) if verdict[0] == "clear" and "space" in verdict[1].lower() else verdict
        finally:
            unmount(mnt)
    return fn


def disk_cases() -> list[Case]:
    rows = [("train: checkpoint on a 1 MB disk", py("train.py", *tiny("{full}/out", max_steps=6, save_steps=2)), "1m", False),
            ("train: full before the first write", py("train.py", *tiny("{full}/out")), "64k", True),
            ("train: cache on a full disk", py("train.py", *tiny("{tmp}/out", cache="{full}/c")), "64k", True),
            ("generate --out", cmd("generate.py", "--out", "{full}/g.jsonl"), "64k", True),
            ("generate --animate", cmd("generate.py", "--animate", "{full}/a.gif"), "64k", True),
            ("evaluate --out-dir", cmd("evaluate.py", "--out-dir", "{full}/e"), "64k", True),
            ("report --out", cmd("report.py", "--out", "{full}/r.md"), "64k", True),
            ("bench --out", cmd("bench.py", "--out", "{full}/b.json"), "64k", True),
            ("baseline_ar --output-dir", cmd("baseline_ar.py", "--output-dir", "{full}/ar"), "1m", False),
            ("sampler_frontier --out-dir", cmd("experiments/sampler_frontier.py", "--out-dir", "{full}/f"), "64k", True),
            ("masking_viz --out-dir", cmd("experiments/masking_viz.py", "--out-dir", "{full}/m"), "64k", True)]
    cases = [Case("disk-full", name, fn=on_full_disk(c, size, full), kind="fault") for name, c, size, full in rows]
    cases.append(Case("read-only", "train: the disk goes read-only mid-run", fn=read_only_mid_run, kind="fault"))
    cases.append(Case("read-only", "report --out on a read-only disk", fn=read_only(cmd("report.py", "--out",
                                                                                        "{ro}/r.md")), kind="fault"))
    cases.append(Case("read-only", "generate --out on a read-only disk", fn=read_only(cmd("generate.py", "--out",
                                                                                          "{ro}/g.jsonl")), kind="fault"))
    return cases


def read_only(cmd_: list) -> Callable:
    def fn(ctx):
        mnt = os.path.join(ctx.tmp, "ro")
        if not tmpfs(mnt, "1m"):
            return "unclear", "cannot mount a tmpfs here"
        subprocess.run(["mount", "-o", "remount,ro", mnt], check=True)
        try:
            ctx.rc, ctx.out, ctx.err, ctx.timed_out = run([fill(a, {**ctx.names, "ro": mnt}) for a in cmd_], ENV, 300)
            return judge(Case("ro", ""), ctx)
        finally:
            unmount(mnt)
    return fn


def read_only_mid_run(ctx):
    mnt = os.path.join(ctx.tmp, "ro")
    if not tmpfs(mnt, "64m"):
        return "unclear", "cannot mount a tmpfs here"
    try:
        out = f"{mnt}/out"
        proc = popen(py("train.py", *tiny(out, max_steps=100000, save_steps=5, logging_steps=1, eval_steps=100000)))
        wait_for(lambda: os.path.exists(f"{out}/metrics.jsonl"), proc, 300)
        # a read-only bind mount over the run's folder: files it opens from now on cannot be written
        # (a plain remount would be refused while the run holds files open for writing)
        subprocess.run(["mount", "--bind", out, out], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", out], check=True)
        try:
            out, _ = proc.communicate(timeout=300)
        finally:
            unmount(f"{mnt}/out")
        ctx.rc, ctx.out, ctx.err = proc.returncode, out, out
        return judge(Case("ro", ""), ctx)
    finally:
        unmount(mnt)


def popen(argv: list):
    return subprocess.Popen([fill(a, NAMES) for a in argv], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", start_new_session=True, preexec_fn=like_a_terminal)


def wait_for(cond: Callable, proc, seconds: float, every: float = 0.1) -> None:
    end = time.time() + seconds
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process ended (exit {proc.returncode}) before the moment came: "
                               f"{(proc.stdout.read() if proc.stdout else '')[-800:]}")
        if time.time() > end:
            raise RuntimeError("the moment never came")
        time.sleep(every)


def rows_of(out: str) -> list[dict]:
    from files import read_jsonl

    return read_jsonl(os.path.join(out, "metrics.jsonl"))


def signal_train(sig: int, script: str = "train.py") -> Callable:
    """SIGTERM / SIGINT a run at its 3rd logged step: exit 130, a checkpoint, and --resume finishes it."""
    def fn(ctx):
        out = os.path.join(ctx.tmp, "out")
        argv = (py("train.py", *tiny(out, max_steps=100000, save_steps=100000, logging_steps=1, eval_steps=100000)) if script == "train.py"
                else py("baseline_ar.py", "--checkpoint", ctx.names["final"], "--output-dir", out))
        proc = popen(argv)
        wait_for(lambda: any("loss" in r and r["step"] >= 3 for r in rows_of(out)), proc, 300)
        os.kill(proc.pid, sig)
        log, _ = proc.communicate(timeout=300)
        if "Traceback" in log:
            return "traceback", log[log.rindex("Traceback"):][-300:]
        from runs import last_complete_checkpoint

        last = last_complete_checkpoint(out, quiet=True)
        if proc.returncode != 130 or last is None:
            return "lost", f"exit {proc.returncode}, checkpoint {last}: {last_line(log)}"
        step = int(last.rsplit("-", 1)[1])
        more = ["--max-steps", str(step + 2)] if script == "train.py" else []
        rc, o, e, _ = run(py(script, "--resume", "--output-dir", out, *more), ENV, 600)
        if rc != 0 or not os.path.isdir(os.path.join(out, "final-model")):
            return "lost", f"--resume after the signal: exit {rc}: {last_line(e or o)}"
        return "clear", f"exit 130 at step {step}, resumed to the end"
    return fn


def signal_after(argv: list, sig: int, seconds: float) -> Callable:
    """A long command sent `sig` after `seconds` (torch imported, the work under way): one line, 130."""
    def fn(ctx):
        proc = popen([fill(a, ctx.names) for a in argv])
        time.sleep(seconds)
        os.kill(proc.pid, sig)
        out, _ = proc.communicate(timeout=120)
        ctx.rc, ctx.out, ctx.err = proc.returncode, out, out
        if proc.returncode == 0:
            return "unclear", "the work ended before the signal: make it longer"
        return judge(Case("signal", ""), ctx)
    return fn


LONG_GENERATION = cmd("generate.py", "--block-size", "8", "--length", "4000", "--steps", "8", "--num-samples", "4")


def kill_during_final_save(ctx):
    """SIGKILL while final-model.tmp is being written, then --resume: no step past the end."""
    out = os.path.join(ctx.tmp, "out")
    proc = popen(py("train.py", *tiny(out, max_steps=6, save_steps=3)))
    try:
        wait_for(lambda: os.path.isdir(os.path.join(out, "final-model.tmp")), proc, 600, every=0.002)
        how = "killed while final-model.tmp was written"
    except RuntimeError:
        how = "missed the moment: final-model removed by hand"  # the save was quicker than the poll
    proc.kill()
    proc.wait()
    if os.path.isdir(os.path.join(out, "final-model")) and how.startswith("missed"):
        shutil.rmtree(os.path.join(out, "final-model"))
    rc, o, e, _ = run(py("train.py", "--resume", "--output-dir", out), ENV, 600)
    steps = [r["step"] for r in rows_of(out) if "loss" in r]
    if rc != 0:
        return "lost", f"{how}; --resume exit {rc}: {last_line(e or o)}"
    if max(steps) != 6 or "step 6 (model card" not in o:
        return "silent", f"{how}; trained to step {max(steps)}"
    return "clear", f"{how}; --resume saved the final model at step 6, no step more"


def ctrl_c_then_fresh(ctx):
    """A finished run A; a fresh run into its folder stopped by Ctrl-C; another fresh run: A is in previous/."""
    copy("run")(ctx)
    out = os.path.join(ctx.tmp, "run")
    proc = popen(py("train.py", *tiny(out, max_steps=100000, save_steps=100000, logging_steps=1, eval_steps=100000)))
    wait_for(lambda: any("loss" in r for r in rows_of(out)), proc, 300)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=300)
    run(py("train.py", *tiny(out, precision="bf16")), ENV, 300)  # fails its checks (no GPU): must move nothing
    run(py("train.py", *tiny(out, max_steps=2)), ENV, 600)
    return kept("run")(ctx) or ("clear", "the finished run is in previous/, with the interrupted one")


def failing_fresh_runs(ctx):
    copy("run")(ctx)
    for _ in range(2):
        run(py("train.py", *tiny(os.path.join(ctx.tmp, "run"), precision="bf16")), ENV, 300)
    return kept("run")(ctx) or ("clear", "two failing fresh runs moved nothing")


def resume_past_end(ctx):
    copy("run")(ctx)
    ctx.rc, ctx.out, ctx.err, ctx.timed_out = run(py("train.py", "--resume", "--output-dir", os.path.join(
        ctx.tmp, "run"), "--max-steps", "2"), ENV, 300)
    return kept("run")(ctx) or judge(Case("resume", ""), ctx)


def kill_and_resume(script: str) -> Callable:
    """SIGKILL (no handler runs) at the first checkpoint, then --resume: every step once."""
    def fn(ctx):
        from runs import last_complete_checkpoint

        out = os.path.join(ctx.tmp, "out")
        argv = (py("train.py", *tiny(out, max_steps=12, save_steps=4)) if script == "train.py"
                else py("baseline_ar.py", "--checkpoint", ctx.names["final"], "--output-dir", out))
        proc = popen(argv)
        wait_for(lambda: last_complete_checkpoint(out, quiet=True) is not None, proc, 600, every=0.05)
        proc.kill()
        proc.wait()
        rc, o, e, _ = run(py(script, "--resume", "--output-dir", out), ENV, 900)
        steps = [r["step"] for r in rows_of(out) if "loss" in r]
        end = 12 if script == "train.py" else 6  # the fixture's run: 6 steps, so its baseline too
        if rc != 0:
            return "lost", f"--resume exit {rc}: {last_line(e or o)}"
        if steps != list(range(2, end + 1, 2)):  # a training log every 2 steps (conftest's tiny flags)
            return "silent", f"steps logged: {steps}"
        return "clear", f"killed, resumed, every logged step once, to step {end}"
    return fn


def damaged_newest(ctx):
    """The newest checkpoint cut short and a torn metrics line: --resume goes back to the good one."""
    copy("run")(ctx)
    out = os.path.join(ctx.tmp, "run")
    shutil.rmtree(os.path.join(out, "final-model"))
    truncate(os.path.join(out, "checkpoint-6", "model.safetensors"), 100)
    with open(os.path.join(out, "metrics.jsonl"), "a") as f:
        f.write('{"step": 7, "loss": 4.')
    rc, o, e, _ = run(py("train.py", "--resume", "--output-dir", out), ENV, 600)
    steps = [r["step"] for r in rows_of(out) if "loss" in r]
    if rc != 0 or "resuming" not in o or "checkpoint-3" not in o:
        return "lost", f"exit {rc}: {last_line(e or o)}"
    return ("clear", "skipped the damaged checkpoint-6, resumed from checkpoint-3") if max(steps) == 6 else (
        "silent", f"steps {steps}")


def full_then_resume(ctx):
    """A disk that fills at a checkpoint: one line; space freed (the tmpfs grown), --resume finishes."""
    mnt = os.path.join(ctx.tmp, "full")
    if not tmpfs(mnt, "1m"):
        return "unclear", "cannot mount a tmpfs here"
    try:
        out = os.path.join(mnt, "out")
        rc, o, e, _ = run(py("train.py", *tiny(out, max_steps=6, save_steps=2)), ENV, 600)
        if rc != 2 or "no space left" not in last_line(e):
            return "unclear", f"exit {rc}: {last_line(e or o)}"
        subprocess.run(["mount", "-o", "remount,size=64m", mnt], check=True)
        rc, o, e, _ = run(py("train.py", "--resume", "--output-dir", out), ENV, 600)
        if rc == 2 and "no checkpoint of this run" in e:  # it filled before the first checkpoint: a fresh run
            rc, o, e, _ = run(py("train.py", *tiny(out, max_steps=6, save_steps=2)), ENV, 600)
        if rc != 0 or "Traceback" in o + e:
            return "lost", f"after freeing space: exit {rc}: {last_line(e or o)}"
        return "clear", "one line on the full disk; finished after space was freed"
    finally:
        unmount(mnt)


def two_baselines(ctx):
    out = os.path.join(ctx.tmp, "ar")
    procs = [popen(py("baseline_ar.py", "--checkpoint", ctx.names["final"], "--output-dir", out)) for _ in range(2)]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    if any("Traceback" in log for log in logs):
        return "traceback", "a traceback"
    if codes != [0, 2] or not any("in use by another training run" in last_line(log) for log in logs):
        return "unclear", f"exit codes {codes}: {[last_line(log) for log in logs]}"
    return "clear", "one trained, the other was refused with one line"


def kill_while_caching(ctx):
    """SIGKILL while a fresh cache is being written, then the same run again: it works."""
    cache, out = os.path.join(ctx.tmp, "cache"), os.path.join(ctx.tmp, "out")
    proc = popen(py("train.py", *tiny(out, cache, max_steps=2)))
    busy = lambda: os.path.isdir(cache) and any(n.endswith(".tmp") for n in os.listdir(cache))  # noqa: E731
    try:
        wait_for(busy, proc, 600, every=0.01)
        how = "killed while the cache was written"
    except RuntimeError:
        how = "missed the moment"
    proc.kill()
    proc.wait()
    ctx.rc, ctx.out, ctx.err, ctx.timed_out = run(py("train.py", *tiny(out, cache, max_steps=2)), ENV, 900)
    verdict = judge(Case("cache", "", expect="ok"), ctx)
    return (verdict[0], f"{how}; {verdict[1]}")


def torn_generations(ctx):
    log = os.path.join(ctx.tmp, "g.jsonl")
    with open(log, "w") as f:
        f.write('{"config": {}, "samples": ["half a rec')
    ctx.rc, ctx.out, ctx.err, ctx.timed_out = run(cmd("generate.py", "--out", log), ENV, 300)
    lines = open(log).read().splitlines()
    if ctx.rc != 0 or len(lines) != 2 or json.loads(lines[1])["config"]["steps"] != 2:
        return "lost", f"exit {ctx.rc}, {len(lines)} lines"
    return "clear", "the torn line was ended, the new record whole"


def signal_cases() -> list[Case]:
    return [Case("signal", "SIGTERM train.py mid-run", fn=signal_train(signal.SIGTERM), kind="fault"),
            Case("signal", "SIGINT train.py mid-run", fn=signal_train(signal.SIGINT), kind="fault"),
            Case("signal", "SIGTERM baseline_ar.py mid-run", fn=signal_train(signal.SIGTERM, "baseline_ar.py"),
                 kind="fault"),
            Case("signal", "SIGTERM generate.py", fn=signal_after(LONG_GENERATION, signal.SIGTERM, 12), kind="fault"),
            Case("signal", "SIGKILL during the final save, then --resume", fn=kill_during_final_save, kind="fault"),
            Case("signal", "SIGKILL train.py at a checkpoint, then --resume", fn=kill_and_resume("train.py")),
            Case("signal", "SIGKILL baseline_ar.py at a checkpoint, then --resume", fn=kill_and_resume("baseline_ar.py")),
            Case("signal", "SIGTERM evaluate.py", fn=signal_after(cmd("evaluate.py", "--num-samples", "64", "--settings",
                                                                     "all", "--elbo-draws", "64"), signal.SIGTERM, 20)),
            Case("lifecycle", "damaged newest checkpoint and a torn log, then --resume", fn=damaged_newest),
            Case("disk-full", "full at a checkpoint, space freed, --resume", fn=full_then_resume),
            Case("concurrency", "two baselines into one folder at once", fn=two_baselines),
            Case("cache", "SIGKILL while the cache is written, then again", fn=kill_while_caching),
            Case("signal", "SIGINT generate.py", fn=signal_after(LONG_GENERATION, signal.SIGINT, 12)),
            Case("lifecycle", "a torn generations.jsonl line", fn=torn_generations),
            Case("lifecycle", "Ctrl-C just after start, then a fresh run", fn=ctrl_c_then_fresh, kind="fault"),
            Case("lifecycle", "two fresh runs that fail their checks", fn=failing_fresh_runs, kind="fault"),
            Case("lifecycle", "--resume --max-steps 2 from checkpoint-6", fn=resume_past_end, kind="fault"),
            Case("lifecycle", "baseline_ar.py with lr 1e30", cmd("baseline_ar.py", "--learning-rate", "1e30"),
                 check=lambda c: ("lost", "a diverged model was saved") if os.path.exists(
                     os.path.join(c.tmp, "ar", "final-model")) else None, kind="fault", timeout=600)]


def cache_damage(change: Callable, name: str) -> Callable:
    """A copy of the fixture's cache, damaged; a short training run on it must rebuild what broke
    and train with the same tokenizer (its fingerprint in run.json)."""
    def fn(ctx):
        cache = os.path.join(ctx.tmp, "cache")
        shutil.copytree(ctx.names["cache"], cache)
        change(cache)
        out = os.path.join(ctx.tmp, "out")
        ctx.rc, ctx.out, ctx.err, ctx.timed_out = run(py("train.py", *tiny(out, cache, max_steps=2)), ENV, 600)
        verdict = judge(Case("cache", "", expect="ok"), ctx)
        if verdict[0] != "clear":
            return verdict
        want = json.load(open(os.path.join(ctx.names["run"], "run.json")))["tokenizer_fingerprint"]
        have = json.load(open(os.path.join(out, "run.json")))["tokenizer_fingerprint"]
        if want != have:
            return "silent", "the rebuilt tokenizer differs from the one the cache held"
        return "clear", f"{name}: " + ("rebuilt" if "rebuilding" in ctx.out else "trained on it unchanged")
    return fn


def under(cache: str, prefix: str) -> str:
    return next(os.path.join(cache, n) for n in sorted(os.listdir(cache)) if n.startswith(prefix))


def arrow_file(cache: str) -> str:
    folder = os.path.join(under(cache, "blocks-"), "train")
    return os.path.join(folder, next(n for n in os.listdir(folder) if n.endswith(".arrow")))


def truncate(path: str, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def cache_cases() -> list[Case]:
    rows = [("truncated arrow", lambda c: truncate(arrow_file(c), 1000)),
            ("broken tokenizer.json", lambda c: open(os.path.join(under(c, "tokenizer-"), "tokenizer.json"), "w").write("{")),
            ("garbage merges.txt", lambda c: open(os.path.join(under(c, "tokenizer-"), "merges.txt"), "w").write("x y\n")),
            ("dataset_dict.json removed", lambda c: os.remove(os.path.join(under(c, "blocks-"), "dataset_dict.json"))),
            ("state.json garbage", lambda c: open(os.path.join(under(c, "blocks-"), "train", "state.json"), "w").write("[")),
            ("empty blocks folder", lambda c: [shutil.rmtree(under(c, "blocks-")), os.makedirs(
                os.path.join(c, "blocks-" + "0" * 12))] and None),
            ("manifest gone, arrow cut", lambda c: [os.remove(os.path.join(under(c, "blocks-"), "cache_manifest.json")),
                                                    truncate(arrow_file(c), 1000)] and None)]
    cases = [Case("cache", f"cache: {name}", fn=cache_damage(change, name), kind="fault") for name, change in rows]
    cases.append(Case("concurrency", "two runs sharing a fresh --cache-dir", fn=shared_fresh_cache, kind="fault"))
    cases.append(Case("concurrency", "2 x 150 write_json to one file, a reader beside", fn=json_writers, kind="fault"))
    cases.append(Case("concurrency", "8 x 60 append_jsonl", fn=jsonl_appenders, kind="fault"))
    cases.append(Case("concurrency", "a second run into a folder in use", fn=second_run, kind="fault"))
    cases.append(Case("concurrency", "20 demo requests at once", fn=many_requests, kind="fault"))
    return cases


def shared_fresh_cache(ctx):
    cache = os.path.join(ctx.tmp, "fresh")
    procs = [popen(py("train.py", *tiny(os.path.join(ctx.tmp, f"o{i}"), cache, max_steps=2))) for i in range(2)]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    bad = [(p.returncode, last_line(log)) for p, log in zip(procs, logs) if p.returncode or "Traceback" in log]
    return ("unclear", f"{bad}") if bad else ("clear", "both trained on one cache built once")


WRITER = """
import json, sys
sys.path.insert(0, {root!r})
from files import write_json
fails = 0
for i in range(150):
    try:
        write_json({path!r}, {{"writer": sys.argv[1], "i": i, "pad": "x" * 5000}})
    except Exception as e:
        fails += 1
print(fails)
"""


def json_writers(ctx):
    path = os.path.join(ctx.tmp, "shared.json")
    code = WRITER.format(root=ROOT, path=path)
    procs = [subprocess.Popen([PY, "-c", code, str(i)], stdout=subprocess.PIPE, text=True) for i in range(2)]
    torn = 0
    while any(p.poll() is None for p in procs):
        try:
            json.load(open(path))
        except FileNotFoundError:
            pass
        except ValueError:
            torn += 1
    fails = [int(p.communicate()[0].strip() or -1) for p in procs]
    leftovers = [n for n in os.listdir(ctx.tmp) if n.endswith(".tmp")]
    if torn or any(fails) or leftovers:
        return "lost", f"torn reads {torn}, failed writes {fails}, temporaries left {leftovers}"
    return "clear", "300 writes, every read whole"


APPENDER = """
import sys
sys.path.insert(0, {root!r})
from files import append_jsonl
for i in range(60):
    append_jsonl({path!r}, {{"writer": int(sys.argv[1]), "i": i, "pad": "y" * 3000}})
"""


def jsonl_appenders(ctx):
    path = os.path.join(ctx.tmp, "log.jsonl")
    procs = [subprocess.Popen([PY, "-c", APPENDER.format(root=ROOT, path=path), str(i)]) for i in range(8)]
    for p in procs:
        p.wait()
    from files import read_jsonl

    rows = read_jsonl(path)
    lines = open(path).read().splitlines()
    if len(rows) != 480 or len(lines) != 480:
        return "lost", f"{len(rows)} rows parse of {len(lines)} lines, want 480"
    return "clear", "480 lines, all whole"


def second_run(ctx):
    out = os.path.join(ctx.tmp, "busy")
    first = popen(py("train.py", *tiny(out, max_steps=100000, save_steps=100000, eval_steps=100000)))
    try:
        wait_for(lambda: os.path.exists(os.path.join(out, "train.lock")) and open(
            os.path.join(out, "train.lock")).read(), first, 300)
        ctx.rc, ctx.out, ctx.err, ctx.timed_out = run(py("train.py", *tiny(out, max_steps=2)), ENV, 300)
        verdict = judge(Case("lock", ""), ctx)
        if first.poll() is not None:
            return "lost", "the first run died"
        return verdict
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


def many_requests(ctx):
    with ctx.fx.lock:
        d = demo_server(ctx.fx)
        jobs = [d.client.submit(*page_values(length=8, steps=2, seed=i), api_name="/generate") for i in range(20)]
        try:
            results = [j.result(timeout=300) for j in jobs]
        except Exception as e:
            return "unclear", f"{type(e).__name__}: {str(e)[:120]}"
    done = sum('data-done="1"' in r[0] for r in results)
    return ("clear", "20 of 20 finished") if done == 20 else ("lost", f"{done} of 20 finished")


# ---------------------------------------------------------------------------------------------
# Running them
# ---------------------------------------------------------------------------------------------


def all_cases() -> list[Case]:
    cases = (range_cases() + number_cases() + size_cases() + list_cases() + path_cases() + loader_cases() +
             env_cases() + shape_cases() + tamper_cases() + special_cases() + demo_cases() + deploy_cases())
    for c in disk_cases() + signal_cases() + cache_cases():
        c.kind = "fault"
        cases.append(c)
    return cases


def table(results: list[dict]) -> str:
    classes = list(dict.fromkeys(r["class"] for r in results))
    head = ["class", "kind", "attempts"] + list(OUTCOMES)
    rows = []
    for cls in classes:
        rs = [r for r in results if r["class"] == cls]
        rows.append([cls, rs[0]["kind"], str(len(rs))] + [str(sum(r["outcome"] == o for r in rs)) for o in OUTCOMES])
    for kind in ("input", "fault"):
        rs = [r for r in results if r["kind"] == kind]
        rows.append([f"all {kind}s", kind, str(len(rs))] + [str(sum(r["outcome"] == o for r in rs)) for o in OUTCOMES])
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "fault_harness"))
    ap.add_argument("--only", default="", help="comma-separated words; a case runs if its class or name holds one")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", default="", help="write every result here")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    args = ap.parse_args()
    cases = all_cases()
    words = [w for w in args.only.split(",") if w]
    if words:
        cases = [c for c in cases if any(w in c.cls or w in c.name for w in words)]
    if args.list:
        for c in cases:
            print(f"{c.cls:14} {c.kind:6} {c.name}")
        print(f"{len(cases)} cases: {sum(c.kind == 'input' for c in cases)} inputs, "
              f"{sum(c.kind == 'fault' for c in cases)} faults")
        return 0
    fx = fixtures(args.work, any(c.cls == "deploy" for c in cases))
    results = []
    try:
        with ThreadPoolExecutor(args.jobs) as pool:
            for r in pool.map(lambda c: attempt(c, fx), cases):
                results.append(r)
                print(f"[{len(results)}/{len(cases)}] {r['outcome']:9} {r['class']:12} {r['name'][:70]}  "
                      f"({r['seconds']}s) {'' if r['outcome'] == 'clear' else r['detail'][:300]}", flush=True)
    finally:
        if fx.demo is not None:
            os.killpg(fx.demo.proc.pid, signal.SIGTERM)
        if fx.box is not None:
            fx.box_cm.__exit__(None, None, None)
    print(table(results))
    if args.json:
        from files import write_json

        write_json(args.json, results)
    return 0 if all(r["outcome"] == "clear" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
