"""Time the README's own commands on a fresh copy of this repository: the one timing table every
doc links to (docs/timings.md), instead of each doc stating its own seconds.

    python experiments/timings.py                    # every command below, in order -> results/timings.md / .json
    python experiments/timings.py --docs             # the same, also written to docs/timings.md and docs/timings.json
    python experiments/timings.py --only quick-test,generate   # a subset, still in order, still on a fresh copy
    python experiments/timings.py --render-only --docs         # redraw docs/timings.md from docs/timings.json

A fresh copy: the files git tracks, as they are in this working tree, copied to an empty folder --
no results/, no .cache/ (the tokenizer and the packed blocks are built again, as on a new clone).
The commands (COMMANDS, each one the README shows, a test checks) run there one after the other,
as a user who followed the Quick start would type them: `python` is this interpreter (its venv's
bin/ first on PATH), caches inside the copy, HF_HUB_OFFLINE=1 as .ci/run sets it. Later commands
use what earlier ones wrote (generate.py reads the quick test's model). Installing is not timed:
it depends on the network and on pip's cache.

Recorded per command: wall seconds, the CPU seconds it and its children used, the machine's
1-minute load average before and after (another job on the machine shows as load, and as wall
seconds well above CPU seconds / cores), the exit code, the last lines of its output. With them:
the machine (metrics.machine), versions, the commit, the date and the niceness the commands ran at
(`nice -n 10 python experiments/timings.py` leaves the CPU to other jobs first, and says so). The first command that fails
stops the run (what follows needs its output); the table says which, and the exit code is 1.
"""

import os
import sys

import repo_root  # noqa: F401  (first: puts the repo's modules on sys.path)

import json
import resource
import shutil
import subprocess
import tempfile
import time

from cli import UsageError, cli, parse
from config import ROOT, Settings, flag, parse_names
from files import write_atomic, write_json

# (name, the command as the README shows it): run in this order, each after the one before
COMMANDS = [
    ("quick-test", "python train.py --quick-test"),
    ("generate", "python generate.py"),
    ("baseline", "python baseline_ar.py --checkpoint results/final-model"),
    ("evaluate", "python evaluate.py"),
    ("report", "python report.py --evaluation results/eval/evaluation.json"),
    ("masking-viz", "python experiments/masking_viz.py"),
    ("schedule-comparison", "python experiments/schedule_comparison.py --checkpoint results/final-model"),
    ("layer-analysis", "python experiments/layer_analysis.py --checkpoint results/checkpoint-3000"),
    ("sampler-frontier", "python experiments/sampler_frontier.py"),
    ("speed-frontier", "python experiments/speed_frontier.py --out-dir results/speed_frontier"),
    ("bench-small", "python bench.py --small"),
    ("deploy-tests", "python -m pytest -q tests/test_deploy.py"),
    ("tests", "python -m pytest -q"),
]
TAIL = 20  # lines of a command's output kept in the JSON


class TimingConfig(Settings):
    only: str = flag("all", "comma-separated names from COMMANDS (run in COMMANDS' order), or 'all'")
    out_dir: str = flag("results", "gets timings.md and timings.json")
    docs: bool = flag(False, "also write docs/timings.md and docs/timings.json (the table the docs link to)")
    render_only: bool = flag(False, "redraw timings.md from --out-dir's timings.json (with --docs: docs/'s)")
    keep: bool = flag(False, "keep the fresh copy (its path is printed) instead of deleting it")


# ---------------------------------------------------------------------------------------------
# The fresh copy, and one timed command
# ---------------------------------------------------------------------------------------------


def tracked_files(root: str) -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        raise UsageError(f"{root} is not a git checkout: timings.py copies the files git tracks")
    return [p for p in out.decode().split("\0") if p]


def fresh_copy(root: str, dest: str) -> int:
    """The tracked files of root (as in its working tree) copied into dest, committed there as a
    git repository of its own (what a user has after `git clone`: deploy.sh ships the files git
    tracks); returns how many."""
    paths = [p for p in tracked_files(root) if os.path.isfile(os.path.join(root, p))]  # a deleted file is not copied
    for path in paths:
        os.makedirs(os.path.dirname(os.path.join(dest, path)), exist_ok=True)
        shutil.copy2(os.path.join(root, path), os.path.join(dest, path))
    git = ["git", "-c", "user.name=timings", "-c", "user.email=timings@localhost"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "--no-gpg-sign", "-m", "fresh copy"]):
        subprocess.run(git + args, cwd=dest, check=True, capture_output=True)
    return len(paths)


def command_env(copy: str) -> dict:
    """The environment of a user in the Quick start's venv, with the copy's own caches."""
    venv_bin = os.path.dirname(sys.executable)
    cache = os.path.join(copy, ".cache")
    return {**os.environ, "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
            "VIRTUAL_ENV": os.path.dirname(venv_bin), "HF_HOME": os.path.join(cache, "hf"),
            "HF_DATASETS_CACHE": os.path.join(cache, "hf", "datasets"), "MPLCONFIGDIR": os.path.join(cache, "mpl"),
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def timed(name: str, command: str, copy: str, env: dict) -> dict:
    """Run one command in the copy: its row of the table."""
    load_before = os.getloadavg()[0]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(["bash", "-c", command], cwd=copy, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace")
    seconds = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return {"name": name, "command": command, "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 1),
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
            "exit_code": proc.returncode, "output_tail": proc.stdout.splitlines()[-TAIL:]}


def run_all(commands: list[tuple[str, str]], copy: str) -> list[dict]:
    """Each command in order; after the first that fails, the rest are recorded as not run."""
    env, rows = command_env(copy), []
    for name, command in commands:
        if rows and rows[-1].get("exit_code"):
            rows.append({"name": name, "command": command, "exit_code": None})
            continue
        print(f"timing {name}: {command}", flush=True)
        rows.append(timed(name, command, copy, env))
        print(f"  {rows[-1]['seconds']:.1f} s wall, {rows[-1]['cpu_seconds']:.1f} s CPU, "
              f"exit {rows[-1]['exit_code']}", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


def commit_of(root: str) -> str:
    """HEAD's commit, '+ changes' when the tracked files differ from it ('unknown' outside git)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes" if dirty else "")


def render(result: dict) -> str:
    m, v = result["machine"], result["versions"]
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"
    lines = [
        "# Timings", "",
        "How long the README's commands take, measured by `python experiments/timings.py` (its docstring says how) "
        "on a fresh copy of the repository, one after the other, in the order below. This is the one place the "
        "docs take a time from; every other doc links here.", "",
        f"- Machine: {m['cpu']}, {m['cpu_count']} cores{gpu}; {m['platform']}.",
        f"- torch {v['torch']}, transformers {v['transformers']}, Python {v['python']}; commit {result['commit']}; "
        f"{result['date']}.",
        "- Load: the machine's 1-minute load average before and after each command. A load above the core count "
        "means other jobs shared the CPU, and wall seconds then exceed CPU seconds / cores: compare such rows "
        "with care." + (f" The commands ran at nice {result['nice']} (lower priority than the other jobs)."
                        if result.get("nice") else ""), "",
        "| command | seconds | CPU seconds | load before → after | exit |",
        "| --- | ---: | ---: | --- | --- |"]
    for r in result["rows"]:
        if r["exit_code"] is None:
            lines.append(f"| `{r['command']}` | not run (an earlier command failed) | | | |")
            continue
        lines.append(f"| `{r['command']}` | {r['seconds']:.0f} | {r['cpu_seconds']:.0f} | "
                     f"{r['load_before']:.2f} → {r['load_after']:.2f} | {r['exit_code']} |")
    done = [r for r in result["rows"] if r["exit_code"] == 0]
    if result.get("only", "all") != "all":
        lines += ["", f"This run timed only `--only {result['only']}`; `python experiments/timings.py --docs` times "
                      f"every command of its `COMMANDS`, the test suite last."]
    lines += ["", f"Total of the commands that finished: {sum(r['seconds'] for r in done):.0f} s "
                  f"({sum(r['seconds'] for r in done) / 60:.1f} min). Installing is not timed (it depends on the "
                  f"network and pip's cache). Every number, each command's last output lines and the machine "
                  f"are in [timings.json](timings.json).", ""]
    return "\n".join(lines)


def write(result: dict, folders: list[str]) -> None:
    for folder in folders:
        write_json(os.path.join(folder, "timings.json"), result)
        write_atomic(os.path.join(folder, "timings.md"), render(result))
        print(f"wrote {os.path.join(folder, 'timings.md')} and timings.json")


def main(argv=None) -> int:
    tc, _ = parse(TimingConfig, argv, __doc__)
    folders = [tc.out_dir] + [os.path.join(ROOT, "docs")] * tc.docs
    if tc.render_only:
        path = os.path.join(folders[-1], "timings.json")
        try:
            with open(path) as f:
                result = json.load(f)
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read {path} ({e}); make it with: python experiments/timings.py")
        write(result, folders)
        return 0
    names = [n for n, _ in COMMANDS] if tc.only == "all" else parse_names(tc.only, "only", [n for n, _ in COMMANDS])
    commands = [(n, c) for n, c in COMMANDS if n in names]
    from metrics import machine, versions

    copy = tempfile.mkdtemp(prefix="timings-")
    try:
        print(f"fresh copy: {fresh_copy(ROOT, copy)} tracked files in {copy}", flush=True)
        result = {"date": time.strftime("%Y-%m-%d %H:%M"), "commit": commit_of(ROOT), "machine": machine(),
                  "versions": versions(), "nice": os.nice(0), "only": tc.only,
                  "rows": run_all(commands, copy)}
    finally:
        if not tc.keep:
            shutil.rmtree(copy, ignore_errors=True)
    write(result, folders)
    failed = next((r for r in result["rows"] if r["exit_code"]), None)
    if failed:
        print(f"error: {failed['command']} exited {failed['exit_code']}; its last lines:\n  "
              + "\n  ".join(failed["output_tail"]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
