"""The docs stay true to the code: every command they show names a real script and real flags,
and every file, link and function they name exists."""

import functools
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT

DOCS = ["README.md", "LEARNING_GUIDE.md", "PROJECT_SUMMARY.md", "PROJECT_INDEX.md", "DEPLOYMENT.md",
        "GENERATION_VALIDATION.md"]


def read(doc):
    with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
        return f.read()


def shell_lines(doc):
    """Commands in ```bash blocks and indented command lines, joined across trailing backslashes."""
    lines, out = [], []
    for block in re.findall(r"```(?:bash|sh|shell)?\n(.*?)```", read(doc), re.S):
        lines += block.splitlines()
    for raw in lines:
        line = raw.strip()
        if out and out[-1].endswith("\\"):
            out[-1] = out[-1][:-1] + " " + line
        elif line and not line.startswith("#"):
            out.append(line)
    return [line.split(" #")[0].strip() for line in out]


def python_commands(doc):
    """(script, flags) for each `python X.py ...` in the doc's shell blocks."""
    cmds = []
    for line in shell_lines(doc):
        for part in re.split(r"&&|;|\|", line):
            try:
                words = shlex.split(part.strip().replace("<", "").replace(">", ""))
            except ValueError:  # an apostrophe inside prose-like arguments
                words = part.split()
            if len(words) >= 2 and words[0] in ("python", "python3") and words[1].endswith(".py"):
                cmds.append((words[1], [w.split("=")[0] for w in words[2:] if w.startswith("--")]))
            if words and words[0].startswith("./") and words[0].endswith(".sh"):
                cmds.append((words[0][2:], []))
    return cmds


@functools.lru_cache(maxsize=None)
def help_text(script):
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, f"{script} --help failed: {proc.stderr[-500:]}"
    return proc.stdout


def existing_docs():
    return [d for d in DOCS if os.path.exists(os.path.join(ROOT, d))]


@pytest.mark.parametrize("doc", existing_docs())
def test_commands_name_real_scripts_and_flags(doc):
    cmds = python_commands(doc)
    for script, flags in cmds:
        assert os.path.exists(os.path.join(ROOT, script)), f"{doc}: {script} does not exist"
        if not script.endswith(".py"):
            continue
        text = help_text(script)
        for flag in flags:
            assert re.search(rf"{re.escape(flag)}\b", text), f"{doc}: {script} has no flag {flag}"


def test_readme_shows_the_main_commands():
    scripts = {s for s, _ in python_commands("README.md")}
    for needed in ("train.py", "generate.py", "experiments/masking_viz.py", "experiments/schedule_comparison.py",
                   "experiments/layer_analysis.py", "evaluate.py", "bench.py"):
        assert needed in scripts, needed
    assert "python -m pytest -q" in read("README.md")
    assert "python -m pytest -q" in read(".ci/run")


def defined_names():
    names = set()
    for root, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("results", "__pycache__")]
        for f in files:
            if f.endswith(".py"):
                src = open(os.path.join(root, f), encoding="utf-8").read()
                names |= set(re.findall(r"^\s*(?:def|class)\s+(\w+)", src, re.M))
                names |= set(re.findall(r"^(\w+)\s*=", src, re.M))
    return names


@pytest.mark.parametrize("doc", existing_docs())
def test_named_files_links_and_functions_exist(doc):
    text = read(doc)
    for target in re.findall(r"\]\(([^)#\s]+)\)", text):
        if not re.match(r"[a-z]+://", target):
            assert os.path.exists(os.path.join(ROOT, target)), f"{doc}: broken link {target}"
    for path in re.findall(r"`([\w./-]+\.(?:py|sh|md))`", text):
        if "/" in path or os.path.basename(path) == path:
            candidates = [os.path.join(ROOT, path), os.path.join(ROOT, "experiments", path),
                          os.path.join(ROOT, "tests", path)]
            assert any(os.path.exists(c) for c in candidates), f"{doc}: {path} does not exist"
    names = defined_names()
    for name in re.findall(r"`(?:\w+\.)?([A-Za-z_]\w*)\(", text):
        assert name in names, f"{doc}: function {name}() is not defined anywhere"
    for module, name in re.findall(r"`([a-z_]+)\.([A-Za-z_]\w*)", text):
        if name not in ("py", "sh", "md", "json", "jsonl", "csv", "png", "gif", "txt", "log", "lock") and \
                os.path.exists(os.path.join(ROOT, module + ".py")):
            src = read(module + ".py")
            assert re.search(rf"^(?:\s*def|\s*class)\s+{name}\b|^{name}\s*=", src, re.M), \
                f"{doc}: {module}.{name} is not defined in {module}.py"


def test_project_index_lists_every_file_and_is_the_only_file_list():
    """PROJECT_INDEX.md owns the file list: every tracked script, module and shell file is in it,
    and the README and PROJECT_SUMMARY link to it instead of keeping their own list."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    code = [f for f in tracked if f.endswith((".py", ".sh")) and not f.startswith("tests/")]
    index = read("PROJECT_INDEX.md")
    missing = [f for f in code if f not in index]
    assert not missing, f"PROJECT_INDEX.md does not list {missing}"
    for doc in ("README.md", "PROJECT_SUMMARY.md"):
        assert "(PROJECT_INDEX.md)" in read(doc), doc


@functools.lru_cache(maxsize=None)
def code_text() -> str:
    """Every tracked source and shell file but this one, the tracked paths, and every script's
    --help: where a name a doc mentions can exist."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    files = [f for f in tracked if (f.endswith((".py", ".sh")) or f == ".ci/run") and f != "tests/test_docs.py"]
    scripts = [f for f in tracked if f.endswith(".py") and not f.startswith("tests/") and "__main__" in read(f)]
    return "\n".join([read(f) for f in files] + tracked + [help_text(f) for f in scripts])


def looks_like_code(word: str) -> bool:
    """snake_case, CamelCase or CONSTANT_CASE: a word a reader would search the code for."""
    return bool(re.fullmatch(r"[A-Za-z]\w*", word)) and (
        "_" in word.strip("_") or re.fullmatch(r"[A-Z][a-z0-9]+[A-Z]\w*", word) is not None
        or re.fullmatch(r"[A-Z][A-Z0-9]{2,}", word) is not None)


OTHER_PROGRAMS = ("ssh", "rsync", "torchrun", "accelerate", ".venv/bin/accelerate", "pip", "apt-get", "git")
OTHER_FLAGS = {"--mkpath", "--nnodes", "--node_rank", "--master_addr", "--master_port"}  # rsync's and torchrun's
OTHER_NAMES = {"NCCL_DEBUG"}  # NCCL's environment variable


@pytest.mark.parametrize("doc", existing_docs())
def test_every_name_in_code_font_exists_somewhere(doc):
    """A name a doc puts in `code font` (a module constant, tokens.bos_eos, --order-noise) must
    exist in some form: in a source or shell file, among the tracked paths, or among some
    script's flags. Catches docs that keep naming what a refactor removed. Values and metavars
    (`--prompt TEXT`, `X=VALUE`) and other programs' command lines are not names."""
    code = code_text()
    text = re.sub(r"```.*?```", "", read(doc), flags=re.S)  # command blocks: test_commands_name_real_scripts_and_flags
    missing = set()
    for span in re.findall(r"`([^`\n]+)`", text):
        if span.split()[0] in OTHER_PROGRAMS:
            continue
        for flag in set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*", span)) - OTHER_FLAGS:
            if not re.search(rf"--(no-)?{re.escape(flag[2:].removeprefix('no-'))}\b", code):
                missing.add(flag)
        names = re.sub(r"(=|--[\w-]+ )[^\s,;)]*", " ", span)  # drop values and metavars
        names = re.sub(r"(?<![\w-])--[\w-]+", " ", names)  # and the flags checked above
        for word in set(re.findall(r"[A-Za-z_][\w]*", names)) - OTHER_NAMES:
            if looks_like_code(word) and not re.search(rf"\b{re.escape(word)}\b", code):
                missing.add(word)
    assert not missing, f"{doc} names what exists nowhere in the code: {sorted(missing)}"


def test_every_checkpoint_a_doc_names_is_one_the_quick_test_keeps():
    """`results/checkpoint-N` in a doc or a docstring is there after `python train.py --quick-test`:
    a save every save_steps, the newest save_total_limit kept (runs.rotate_checkpoints)."""
    import config

    cfg = config.TrainConfig(**config.train_presets({"quick_test": True}), quick_test=True)
    saved = list(range(cfg.save_steps, cfg.max_steps + 1, cfg.save_steps))
    kept = set(saved[-cfg.save_total_limit:])
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    for path in [p for p in tracked if p.endswith((".md", ".py", ".sh")) and not p.startswith("tests/")]:
        for step in re.findall(r"results/checkpoint-(\d+)", read(path)):
            assert int(step) in kept, f"{path} names results/checkpoint-{step}; a quick test keeps {sorted(kept)}"


def test_the_timing_table_times_the_docs_own_commands():
    """Every command experiments/timings.py times is one README.md (or DEPLOYMENT.md, for its
    tests) shows, word for word, and every doc that states how long something takes links there."""
    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    import timings

    shown = {" ".join(part.split()) for doc in ("README.md", "DEPLOYMENT.md") for line in shell_lines(doc)
             for part in line.split("&&")}
    for name, command in timings.COMMANDS:
        assert command in shown, f"{name}: no doc shows `{command}`"
    for doc in ("README.md", "LEARNING_GUIDE.md", "DEPLOYMENT.md", "PROJECT_SUMMARY.md"):
        assert "docs/timings.md" in read(doc), doc
