"""deploy.sh and monitor_training.sh against a real ssh server on 127.0.0.1 (no mocks): a tiny
run deployed, watched to success and its checkpoint loaded; a second deploy while it is live;
an unreachable host; a crashed run; --dry-run; a 2-process (gloo) run; shellcheck.

The fixture starts a throwaway sshd (own host key, client key and config in a temp folder) and
stops it, and every run it started, afterwards. .ci/run installs openssh-server, rsync, tmux and
shellcheck, so these tests skip only where those are missing."""

import contextlib
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ROOT, tiny_overrides

SSHD = "/usr/sbin/sshd"
MISSING = [name for name, ok in (("openssh-server", os.path.exists(SSHD)), ("ssh", shutil.which("ssh")),
                                 ("ssh-keygen", shutil.which("ssh-keygen")), ("rsync", shutil.which("rsync")))
           if not ok]


def tiny_flags(**kw) -> list[str]:
    """conftest's seconds-long run cut to 4 steps, minus --output-dir (deploy.sh sets results/<run>)."""
    flags = tiny_overrides("unused", **{"max_steps": 4, "eval_steps": 4, "save_steps": 4, **kw})
    i = flags.index("--output-dir")
    return flags[:i] + flags[i + 2:]


@dataclass
class Box:
    host: str
    env: dict
    dir: Path

    def sh(self, *args, remote: str, timeout: float = 120, **env) -> subprocess.CompletedProcess:
        """Run deploy.sh / monitor_training.sh from the checkout, aimed at folder `remote` on the box."""
        return subprocess.run(args, cwd=ROOT, env={**self.env, "REMOTE_DIR": str(self.dir / remote), **env},
                              capture_output=True, text=True, timeout=timeout)

    def deploy(self, remote: str, train_args: list[str], **env) -> subprocess.CompletedProcess:
        return self.sh("./deploy.sh", self.host, "--", *train_args, remote=remote, **{"RUN_NAME": "t", **env})

    def monitor(self, remote: str) -> subprocess.CompletedProcess:
        return self.sh("./monitor_training.sh", self.host, "--run", "t", remote=remote)

    def wait(self, remote: str, timeout: float = 240) -> subprocess.CompletedProcess:
        """Poll the monitor until the run is no longer running (exit status 3)."""
        end = time.time() + timeout
        while True:
            res = self.monitor(remote)
            if res.returncode != 3 or time.time() > end:
                return res
            time.sleep(2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent():
    """sshd gets SIGTERM when pytest dies, even by a signal that skips the fixture's teardown."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    if MISSING:
        pytest.skip(f"needs {', '.join(MISSING)} (apt-get install openssh-server rsync; .ci/run does this)")
    with sshd_box(tmp_path_factory.mktemp("box")) as b:
        yield b


@contextlib.contextmanager
def sshd_box(d: Path):
    """A throwaway sshd on 127.0.0.1 with its own keys in folder `d` (tests/fault_harness.py uses
    it too); stopped, with every run it started, when the block ends."""
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n"
        f"PidFile {d}/sshd.pid\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        # the offline HF settings and an isolated tmux server reach the remote side through ssh
        "AcceptEnv HF_* TOKENIZERS_PARALLELISM MPLCONFIGDIR TMUX_TMPDIR\n")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation folder
    log = open(d / "sshd.log", "w")
    sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=log, preexec_fn=die_with_parent)
    env = {**os.environ, "SSH_PORT": str(port), "SSH_KEY": str(d / "client_key"), "TMUX_TMPDIR": str(d),
           "SSH_OPTS": f"-o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={d}/known_hosts "
                       "-o SendEnv=HF_* -o SendEnv=TOKENIZERS_PARALLELISM -o SendEnv=MPLCONFIGDIR "
                       "-o SendEnv=TMUX_TMPDIR",
           # the box runs this checkout's venv python: no venv build or pip install in CI
           "REMOTE_PYTHON": sys.executable}
    try:
        for _ in range(100):
            assert sshd.poll() is None, f"sshd exited: {(d / 'sshd.log').read_text()}"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        yield Box(f"{getpass.getuser()}@127.0.0.1", env, d)
    finally:
        for pid_file in d.glob("*/results/*/pid"):  # runs a failed test left behind
            try:
                os.killpg(int(pid_file.read_text()), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass
        if shutil.which("tmux"):
            subprocess.run(["tmux", "kill-server"], env={**os.environ, "TMUX_TMPDIR": str(d)}, capture_output=True)
        sshd.terminate()
        try:
            sshd.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sshd.kill()
        log.close()


@pytest.fixture(scope="module")
def live_run(box):
    """A tiny run deployed to the box (tmux when installed), returned while it is still live."""
    res = box.deploy("ok", tiny_flags())
    assert res.returncode == 0, res.stderr
    assert ("detached: tmux attach -t train-t" in res.stdout) == bool(shutil.which("tmux"))
    return res


def test_second_deploy_refuses_while_a_run_is_live(box, live_run):
    # the run imports torch and transformers for seconds before its first step: still live here
    assert box.monitor("ok").returncode == 3
    t0 = time.time()
    res = box.deploy("ok", tiny_flags(), RUN_NAME="second")
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith("error: run t is still live on")
    assert not (box.dir / "ok" / "results" / "second").exists()  # refused before shipping anything
    assert time.time() - t0 < 15


def test_deploy_monitor_success_and_checkpoint_loads(box, live_run):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    # the monitor command deploy.sh prints works as printed (--follow stops once the run ends)
    printed = [ln for ln in live_run.stdout.splitlines() if ln.startswith("monitor: ")]
    assert len(printed) == 1 and printed[0].endswith(" --follow")
    res = box.wait("ok")
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert out.splitlines()[-1] == "status: succeeded"
    assert "step 4/4 | loss" in out and "held-out ELBO bound" in out and "final-model" in out
    assert "held-out loss by masking level" in out
    again = subprocess.run(["bash", "-c", printed[0][len("monitor: "):]], cwd=ROOT,
                           env={k: v for k, v in os.environ.items() if not k.startswith(("SSH_", "REMOTE_"))},
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stdout.splitlines()[-1] == "status: succeeded", again.stderr
    run = box.dir / "ok" / "results" / "t"
    assert (run / "exit_code").read_text().strip() == "0" and not (run / "pid").exists()
    assert "saved results/t/final-model" in (run / "train.log").read_text()
    assert not (box.dir / "ok" / ".git").exists() and (box.dir / "ok" / "train.py").exists()
    model = AutoModelForMaskedLM.from_pretrained(run / "final-model")
    tok = AutoTokenizer.from_pretrained(run / "final-model")
    assert model.config.num_hidden_layers == 1 and tok.mask_token_id is not None


def offline_box(tmp_path) -> Box:
    """Settings for a box nobody listens for: 127.0.0.1 on a closed port."""
    return Box("root@127.0.0.1", {**os.environ, "SSH_PORT": str(free_port()), "CONNECT_TIMEOUT": "5"}, tmp_path)


@pytest.mark.skipif(not shutil.which("ssh"), reason="needs the ssh client (apt-get install openssh-client)")
def test_unreachable_host_fails_fast_with_one_line(tmp_path):
    t0 = time.time()
    res = offline_box(tmp_path).deploy("never", tiny_flags())
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]  # one line
    assert res.stderr.startswith("error: cannot reach root@127.0.0.1 over ssh: ") and "port" in res.stderr
    assert time.time() - t0 < 10
    assert not (tmp_path / "never").exists()


def test_crashed_run_is_reported_with_its_exit_code(box):
    res = box.deploy("crash", tiny_flags(dataset="/nonexistent"), DETACH="nohup")
    assert res.returncode == 0, res.stderr
    assert "detached with setsid nohup" in res.stdout
    res = box.wait("crash", timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    # train.py turns a bad --dataset into a one-line error and exit code 2
    assert res.stdout.splitlines()[-1] == "status: crashed (exit 2)"
    assert "error: dataset path not found: /nonexistent" in res.stdout


def test_dry_run_prints_the_commands_and_does_nothing(tmp_path):
    # the default path (venv + pip install) is the one printed; the port is closed, too
    res = offline_box(tmp_path).sh("./deploy.sh", "root@127.0.0.1", "--dry-run", "--", "--quick-test",
                                   remote="dry", RUN_NAME="d", REMOTE_PYTHON="")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for expected in ("git ls-files | rsync -az -s --from0 --files-from=- --chmod=D700,F600", '-m venv "$VENV"',
                     '"$VENV/bin/pip" install -q --disable-pip-version-check -r requirements.txt',
                     ".venv/bin/python train.py --quick-test --output-dir", "RUN_NAME=d\n", "VENV=.venv\n",
                     "dry run: nothing was done"):
        assert expected in out
    assert not (tmp_path / "dry").exists()


def test_two_process_cpu_run_over_deploy(box):
    # A fresh cache, so both ranks start with no tokenizer or packed data (the case train.py
    # guards); a small corpus (this repo's Python source) keeps building them quick.
    corpus = box.dir / "corpus.txt"
    corpus.write_text("\n\n".join(p.read_text() for p in sorted(Path(ROOT).glob("*.py"))))
    flags = tiny_flags(dataset=str(corpus), cache_dir=str(box.dir / "ddp-cache"))
    res = box.deploy("ddp", flags, NPROC="2", DETACH="nohup")
    assert res.returncode == 0, res.stderr
    res = box.wait("ddp")
    run = box.dir / "ddp" / "results" / "t"
    assert res.returncode == 0, res.stdout + (run / "train.log").read_text()[-3000:]
    assert (run / "final-model" / "model.safetensors").exists()
    # two processes of batch 4 go through the data twice as fast as one: epoch = step * 4 * 2 / blocks
    log = (run / "train.log").read_text()
    n_train = int(log.split("data: ", 1)[1].split(" train", 1)[0])
    last = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["epoch"] == pytest.approx(last["step"] * 4 * 2 / n_train, rel=0.05)


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="needs shellcheck (apt-get install shellcheck)")
def test_shellcheck_clean():
    res = subprocess.run(["shellcheck", "-x", "deploy.sh", "monitor_training.sh", "remote.sh"], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout


# ---------------------------------------------------------------------------------------------
# Hostile names, untracked files, modes, reruns
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("env", [
    {"REMOTE_DIR": "runs/x`touch CANARY`"},
    {"REMOTE_DIR": "runs/x$(touch CANARY)"},
    {"REMOTE_DIR": "runs/x\t$(touch CANARY)"},
    {"REMOTE_DIR": "runs/x'y"},
    {"REMOTE_DIR": "../../etc"},
    {"SESSION": "x'; touch CANARY; echo '"},
    {"RUN_NAME": "..", "SESSION": "s"},
    {"RUN_NAME": ".", "SESSION": "s"},
    {"RUN_NAME": "a;touch CANARY"},
    {"VENV": ".venv;touch CANARY"},
    {"REMOTE_DIR": "/"},
    {"REMOTE_DIR": "/usr"},
    {"NPROC": "99999999999999999999"},
    {"NPROC": "2;touch CANARY"},
    {"PYTHON": "python3;touch CANARY"},
    {"REMOTE_PYTHON": "python3 -c 'open(\"CANARY\", \"w\")'"},
    {"DETACH": "tmux;touch CANARY"},
    {"SSH_PORT": "22 -oProxyCommand=touch CANARY"},
    {"CONNECT_TIMEOUT": "5 -oProxyCommand=touch CANARY"},
])
def test_hostile_names_are_refused_before_anything_runs(box, env):
    remote = env.get("REMOTE_DIR", "hostile")
    env = {k: v.replace("CANARY", str(box.dir / "canary")) for k, v in env.items()}
    res = subprocess.run(["./deploy.sh", box.host, "--", *tiny_flags()], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env={**box.env, "RUN_NAME": "t", **env,
                                          "REMOTE_DIR": env.get("REMOTE_DIR", str(box.dir / remote))})
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1
    assert not (box.dir / "canary").exists() and not (box.dir / "hostile").exists()
    mon = subprocess.run(["./monitor_training.sh", box.host, "--run", env.get("RUN_NAME", "t")], cwd=ROOT,
                         capture_output=True, text=True, timeout=60,
                         env={**box.env, "REMOTE_DIR": env.get("REMOTE_DIR", str(box.dir / remote))})
    if "REMOTE_DIR" in env or "RUN_NAME" in env:
        assert mon.returncode == 2 and mon.stderr.startswith("error: ")
    assert not (box.dir / "canary").exists()


@pytest.mark.parametrize("remote,env", [
    # the injection: a quote in SSH_KEY once split rsync's -e string into a ProxyCommand
    ("key", {"SSH_KEY": "/nokey' '-oProxyCommand=touch CANARY", "KEY_IN_OPTS": "1"}),
    ("torchrun", {"NPROC": "2", "TORCHRUN_ARGS": "--standalone $(touch CANARY) '\"`touch CANARY`"}),
])
def test_values_with_quotes_reach_ssh_rsync_and_the_box_as_words(box, remote, env):
    canary = box.dir / f"{remote}-canary"
    env = {k: v.replace("CANARY", str(canary)) for k, v in env.items()}
    if env.pop("KEY_IN_OPTS", None):  # the real key still reaches ssh, through SSH_OPTS
        env["SSH_OPTS"] = f"-i {box.env['SSH_KEY']} {box.env['SSH_OPTS']}"
    res = box.deploy(remote, tiny_flags() + ["--max-steps", "-1"], DETACH="nohup", **env)
    assert res.returncode == 0, res.stderr
    res = box.wait(remote, timeout=120)
    assert res.stdout.splitlines()[-1].startswith("status: crashed")  # the run there refused its words
    assert not canary.exists()


def test_monitor_checks_its_inputs_and_prints_no_escapes(tmp_path):
    def monitor(*args, **env):
        return subprocess.run([os.path.join(ROOT, "monitor_training.sh"), *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=30, env={**os.environ, **env})

    for interval in ("abc", "0"):  # was a crash (exit 1) and a busy loop
        res = monitor("--follow", INTERVAL=interval)
        assert res.returncode == 2 and res.stderr.startswith("error: INTERVAL must be a whole number from 1")
    (tmp_path / "-x").mkdir()
    (tmp_path / "-x" / "progress.txt").write_text("step 3/9 | loss 5.1 \x1b[2J\x1b]0;title\x07 \x9b31m\n")
    (tmp_path / "-x" / "train.lock").write_text("")
    res = monitor("--dir", "-x")  # a folder named like an option; its lock is not held
    assert res.returncode == 1 and res.stdout.splitlines()[-1].startswith("status: stopped")
    assert "step 3/9 | loss 5.1" in res.stdout and not any(c in res.stdout for c in "\x1b\x07\x9b")
    (tmp_path / "-x" / "pid").write_text("-1")  # kill -0 -1 succeeds: it once said "running"
    res = monitor("--dir", "-x")
    assert res.returncode == 1 and res.stdout.splitlines()[-1].startswith("status: crashed (exit unknown")


def test_train_flags_reach_the_box_as_plain_words(box):
    canary = box.dir / "flag-canary"
    res = box.deploy("words", tiny_flags() + ["--dataset", f"$(touch {canary})`touch {canary}`"], DETACH="nohup")
    assert res.returncode == 0, res.stderr
    res = box.wait("words", timeout=120)
    assert res.stdout.splitlines()[-1] == "status: crashed (exit 2)"  # train.py was given that odd path, literally
    assert f"$(touch {canary})`touch {canary}`" in res.stdout and not canary.exists()  # in train.py's error line


def test_only_tracked_files_ship_and_only_the_owner_reads_them(box):
    secret = Path(ROOT) / ".env-deploy-test"  # untracked, not ignored: the .env a user keeps beside the repo
    secret.write_text("HF_TOKEN=hf_secret\n")
    try:
        res = box.deploy("modes", tiny_flags(), DETACH="nohup")
        assert res.returncode == 0, res.stderr
        assert box.wait("modes").returncode == 0
    finally:
        secret.unlink()
    there = box.dir / "modes"
    assert (there / "train.py").exists() and not (there / ".env-deploy-test").exists()
    tracked = set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split())
    shipped = {str(p.relative_to(there)) for p in there.rglob("*")  # minus what running there created
               if p.is_file() and "results" not in p.parts and "__pycache__" not in p.parts}
    assert shipped <= tracked
    run = there / "results" / "t"
    for p in [there, there / "train.py", run, run / "train.log", run / "final-model" / "model.safetensors"]:
        assert p.stat().st_mode & 0o077 == 0, f"{p} is readable by others: {oct(p.stat().st_mode)}"


def test_rerunning_a_finished_run_name_is_refused_unless_resuming(box):
    res = box.deploy("again", tiny_flags(), DETACH="nohup")
    assert res.returncode == 0, res.stderr
    assert box.wait("again").returncode == 0
    res = box.deploy("again", tiny_flags(), DETACH="nohup")
    assert res.returncode == 1 and "run t already exists" in res.stderr and "--resume" in res.stderr
    res = box.deploy("again", tiny_flags() + ["--resume", "--max-steps", "6"], DETACH="nohup")
    assert res.returncode == 0, res.stderr
    assert box.wait("again").returncode == 0


def test_flag_order_papercuts(tmp_path):
    box = offline_box(tmp_path)
    res = box.sh("./deploy.sh", "--dry-run", "root@127.0.0.1", remote="dry", RUN_NAME="d")
    assert res.returncode == 0 and "dry run: nothing was done" in res.stdout
    res = box.sh("./deploy.sh", "root@127.0.0.1", "--", "--dry-run", remote="dry", RUN_NAME="d")
    assert res.returncode == 2 and "--dry-run is deploy.sh's own flag" in res.stderr


def test_monitor_reads_a_local_run_without_python(tiny_run, tmp_path):
    """A local run (no deploy.sh): succeeded from progress.txt's last line; stopped when it ended
    without its final-model; running while train.py holds its lock. The monitor computes nothing."""
    out, _ = tiny_run
    res = subprocess.run(["./monitor_training.sh", "--dir", out], cwd=ROOT, capture_output=True, text=True, timeout=30,
                         env={**os.environ, "PATH": "/usr/bin:/bin"})  # no python on PATH
    assert res.returncode == 0 and res.stdout.splitlines()[-1] == "status: succeeded", res.stdout + res.stderr
    assert open(os.path.join(out, "progress.txt")).read().splitlines()[0] in res.stdout
    stopped = tmp_path / "stopped"
    shutil.copytree(out, stopped)
    shutil.rmtree(stopped / "final-model")
    lines = (stopped / "progress.txt").read_text().splitlines()
    (stopped / "progress.txt").write_text("\n".join(lines[:-1]) + "\n")  # no "saved ... final-model" line
    res = subprocess.run(["./monitor_training.sh", "--dir", str(stopped)], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 1 and res.stdout.splitlines()[-1].startswith("status: stopped")
    import runs

    lock = runs.FolderLock(str(stopped))
    try:
        res = subprocess.run(["./monitor_training.sh", "--dir", str(stopped)], cwd=ROOT, capture_output=True, text=True)
        assert res.returncode == 3 and res.stdout.splitlines()[-1].startswith("status: running")
    finally:
        lock.release()
