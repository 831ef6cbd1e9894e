#!/usr/bin/env bash
# How is a training run doing? Step, speed and ETA, latest loss per masking level (train and
# held-out), the ELBO bound, GPU use, checkpoints, and whether it is running, succeeded or crashed.
#   ./monitor_training.sh [user@host] [--run NAME | --dir FOLDER] [--follow]
# Local when no host is given. Default run: the newest results/*/ with a train.log, else results/.
# Settings: REMOTE_DIR, SSH_PORT, SSH_KEY, SSH_OPTS, CONNECT_TIMEOUT as for deploy.sh;
# INTERVAL seconds between --follow refreshes [10]; PYTHON that reads metrics.jsonl [python3].
# The last line is always `status: running | succeeded | crashed (exit N) | not started | unknown`;
# the exit status says the same for scripts that poll: 0 succeeded, 1 crashed, 3 running,
# 4 not started, 5 unknown (no pid/exit_code file: not started by deploy.sh), 2 bad usage.
set -euo pipefail

die() { echo "error: $*" >&2; exit 2; }
host="" run="" dir="" follow=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --follow) follow=1 ;;
    --run) [[ -n "${2:-}" ]] || die "--run needs a run name"; run="$2"; shift ;;
    --dir) [[ -n "${2:-}" ]] || die "--dir needs a folder"; dir="$2"; shift ;;
    -*) die "unknown option '$1' (usage: ./monitor_training.sh [user@host] [--run NAME | --dir FOLDER] [--follow])" ;;
    *) [[ -z "$host" ]] || die "more than one host given ('$host', '$1')"; host="$1" ;;
  esac
  shift
done
fwd=()
if [[ -n "$run" ]]; then fwd+=(--run "$run"); fi
if [[ -n "$dir" ]]; then fwd+=(--dir "$dir"); fi

report() {  # the run folder's state, read on the machine that holds it
  local d="$dir" f
  if [[ -n "$run" ]]; then d="results/$run"; fi
  if [[ -z "$d" ]]; then
    d=results
    for f in results/*/train.log; do if [[ -e "$f" && ( "$d" == results || "$f" -nt "$d/train.log" ) ]]; then d="${f%/train.log}"; fi; done
  fi
  echo "run: $d"
  if [[ ! -d "$d" ]]; then echo "status: not started (no folder $d)"; return 4; fi
  "${PYTHON:-python3}" - "$d" <<'PY'
import json, os, sys, time
d = sys.argv[1]
path, cfg = os.path.join(d, "metrics.jsonl"), os.path.join(d, "diffusion_config.json")
max_steps = json.load(open(cfg)).get("max_steps") if os.path.isfile(cfg) else None
rows = []
if os.path.isfile(path):
    for line in open(path):
        try:
            rows.append(json.loads(line))
        except ValueError:  # the line being written right now
            pass
if not rows:
    print("no metrics yet (metrics.jsonl gets its first line at the first logging step)")
    sys.exit()
train = [r for r in rows if "loss" in r]
seg = train[-1:]  # rate from the last stretch of one process (a resume restarts the clock)
for r in reversed(train[:-1]):
    if r["time"] >= seg[0]["time"]:
        break
    seg.insert(0, r)
step, line = rows[-1]["step"], f"step {rows[-1]['step']}/{max_steps or '?'}"
if len(seg) > 1:
    rate = (seg[-1]["step"] - seg[0]["step"]) / (seg[-1]["time"] - seg[0]["time"])
    eta = (max_steps - step) / rate if max_steps and rate > 0 and step < max_steps else None
    line += f" | {rate:.2f} steps/s" + (f" | eta {int(eta // 60)}m{int(eta % 60):02d}s" if eta is not None else "")
print(line + f" | last log {time.time() - os.path.getmtime(path):.0f} s ago")
if train:
    print(f"train loss {train[-1]['loss']:.4f} | lr {train[-1].get('learning_rate', 0):.2e}")
latest = {}  # (split, level) -> (step, loss): the newest value of each
for r in rows:
    for k, v in r.items():
        if k.startswith(("train_mask_", "eval_mask_")):
            split, level = k.rsplit("_", 1)
            latest[split.split("_")[0], float(level)] = (r["step"], v)
def cell(split, lv):
    return f"{latest[split, lv][1]:.3f} [{latest[split, lv][0]}]" if (split, lv) in latest else "-"
levels = sorted({lv for _, lv in latest})
if levels:
    print("latest loss per masking level (nats/token, [step]):\n  masked          train       held-out")
for lv in levels:
    print(f"  {lv:>6.0%}   {cell('train', lv):>12}   {cell('eval', lv):>12}")
ev = [r for r in rows if "eval_elbo_nats" in r]
if ev:
    print(f"held-out ELBO bound {ev[-1]['eval_elbo_nats']:.3f} nats/token (perplexity <= {ev[-1]['eval_elbo_ppl']:.1f}) at step {ev[-1]['step']}")
end = [r for r in rows if "train_runtime" in r]
if end:
    print(f"training loop finished: {end[-1]['train_runtime']:.0f} s, {end[-1]['train_steps_per_second']:.2f} steps/s")
PY
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=index,name,utilization.gpu,memory.used,memory.total --format=csv,noheader | sed 's/^/gpu /'
  fi
  local ckpts=()
  for f in "$d"/checkpoint-* "$d"/final-model; do if [[ -d "$f" ]]; then ckpts+=("${f##*/}"); fi; done
  echo "checkpoints: ${ckpts[*]:-none yet}"
  if [[ -f "$d/exit_code" ]]; then
    local code; code="$(cat "$d/exit_code")"
    if [[ "$code" == 0 ]]; then echo "status: succeeded"; return 0; fi
    tail -n 5 "$d/train.log" 2>/dev/null | sed 's/^/  | /'
    echo "status: crashed (exit $code)"; return 1
  elif [[ -f "$d/pid" ]]; then
    if kill -0 "$(cat "$d/pid")" 2>/dev/null; then echo "status: running"; return 3; fi
    echo "status: crashed (exit unknown: the process is gone without an exit code - killed, or the box restarted)"; return 1
  elif [[ -d "$d/final-model" ]]; then
    echo "status: succeeded (final-model saved; no exit_code file: this run was not started by deploy.sh)"; return 0
  elif [[ -e "$d/metrics.jsonl" || -e "$d/train.log" ]]; then
    echo "status: unknown (no pid or exit_code file: not started by deploy.sh, and no final-model yet)"; return 5
  fi
  echo "status: not started"; return 4
}

once() {  # the report, here or over ssh (the box runs this same script, local mode)
  if [[ -z "$host" ]]; then report; return; fi
  echo "host: $host"
  local ssh_cmd=(ssh -o BatchMode=yes -o ConnectTimeout="${CONNECT_TIMEOUT:-10}") extra
  if [[ -n "${SSH_PORT:-}" ]]; then ssh_cmd+=(-p "$SSH_PORT"); fi
  if [[ -n "${SSH_KEY:-}" ]]; then ssh_cmd+=(-i "$SSH_KEY"); fi
  read -ra extra <<< "${SSH_OPTS:-}"
  local remote_dir; remote_dir="${REMOTE_DIR:-text-diffusion}"
  remote_dir="$(printf '%q' "${remote_dir#\~/}")"  # relative to the remote home, as in deploy.sh
  "${ssh_cmd[@]}" "${extra[@]}" "$host" \
    "cd $remote_dir 2>/dev/null || { echo 'status: not started (no folder $remote_dir)'; exit 4; }; bash -s -- ${fwd[*]@Q}" \
    < "${BASH_SOURCE[0]}"
}

rc=0
while :; do
  if ((follow)) && [[ -t 1 ]]; then printf '\033[H\033[2J'; fi
  rc=0; once || rc=$?
  if ((rc == 255)); then echo "error: cannot reach $host over ssh" >&2; fi
  if ((!follow || rc != 3)); then break; fi
  sleep "${INTERVAL:-10}"
done
exit "$rc"
