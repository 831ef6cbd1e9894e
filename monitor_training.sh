#!/usr/bin/env bash
# How is a training run doing? What train.py last printed (step, loss per level, speed, ETA, the
# latest held-out evaluation: it keeps them in progress.txt), GPU use, checkpoints, and whether
# the run is running, succeeded, crashed or stopped. It computes nothing itself.
#   ./monitor_training.sh [user@host] [--run NAME | --dir FOLDER] [--follow]
# Local when no host is given. Default run: the newest results/*/ with a train.log, else results/.
# Settings: REMOTE_DIR, SSH_PORT, SSH_KEY, SSH_OPTS, CONNECT_TIMEOUT as for deploy.sh;
# INTERVAL whole seconds between --follow refreshes [10]. Control characters in what the run wrote
# (terminal escapes in progress.txt) are dropped before they reach the terminal.
# The last line is always `status: running | succeeded | crashed (exit N) | stopped | not started`;
# the exit status says the same for scripts that poll: 0 succeeded, 1 crashed or stopped,
# 3 running, 4 not started, 2 bad usage.
set -euo pipefail
# shellcheck source=remote.sh
source "$(dirname "${BASH_SOURCE[0]}")/remote.sh"

host="" RUN="" DIR="" follow=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --follow) follow=1 ;;
    --run) [[ -n "${2:-}" ]] || die "--run needs a run name"; RUN="$2"; shift ;;
    --dir) [[ -n "${2:-}" ]] || die "--dir needs a folder"; DIR="$2"; shift ;;
    -*) die "unknown option '$1' (usage: ./monitor_training.sh [user@host] [--run NAME | --dir FOLDER] [--follow])" ;;
    *) [[ -z "$host" ]] || die "more than one host given ('$host', '$1')"; host="$1" ;;
  esac
  shift
done
if [[ -n "$RUN" ]]; then safe_name "--run" "$RUN"; fi
if [[ -n "$host" ]]; then safe_host "$host"; fi
if [[ "$DIR" == -* ]]; then DIR="./$DIR"; fi  # a folder named -x is never read as an option
INTERVAL="${INTERVAL:-10}"
number INTERVAL "$INTERVAL" 1 86400

report() {  # the run folder's state, read on the machine that holds it (RUN, DIR set by the caller)
  local d="$DIR" f
  if [[ -n "$RUN" ]]; then d="results/$RUN"; fi
  if [[ -z "$d" ]]; then
    d=results
    for f in results/*/train.log; do if [[ -e "$f" && ( "$d" == results || "$f" -nt "$d/train.log" ) ]]; then d="${f%/train.log}"; fi; done
  fi
  echo "run: $d"
  if [[ ! -d "$d" ]]; then echo "status: not started (no folder $d)"; return 4; fi
  if [[ -s "$d/progress.txt" ]]; then
    cat "$d/progress.txt"
    echo "(written $(( $(date +%s) - $(date -r "$d/progress.txt" +%s) )) s ago)"
  else
    echo "no log line yet (train.py writes progress.txt at its first logging step)"
  fi
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=index,name,utilization.gpu,memory.used,memory.total --format=csv,noheader | sed 's/^/gpu /'
  fi
  local ckpts=()
  for f in "$d"/checkpoint-* "$d"/final-model; do if [[ -d "$f" ]]; then ckpts+=("${f##*/}"); fi; done
  echo "checkpoints: ${ckpts[*]:-none yet}"
  if [[ -f "$d/exit_code" ]]; then  # written by deploy.sh's runner when train.py ends
    local code; code="$(head -c 20 "$d/exit_code")"
    if [[ "$code" == 0 ]]; then echo "status: succeeded"; return 0; fi
    tail -n 5 "$d/train.log" 2>/dev/null | sed 's/^/  | /'
    if [[ ! "$code" =~ ^[0-9]+$ ]]; then code="unknown: $d/exit_code is damaged"; fi
    echo "status: crashed (exit $code)"; return 1
  elif [[ -f "$d/pid" ]]; then
    local pid; pid="$(head -c 20 "$d/pid")"
    if [[ "$pid" =~ ^[1-9][0-9]*$ ]] && kill -0 "$pid" 2>/dev/null; then echo "status: running"; return 3; fi
    echo "status: crashed (exit unknown: the process is gone without an exit code - killed, or the box restarted)"; return 1
  elif [[ -f "$d/train.lock" ]] && command -v flock > /dev/null && ! flock -n "$d/train.lock" true; then
    echo "status: running (train.py holds $d/train.lock)"; return 3
  elif [[ -s "$d/progress.txt" ]] && tail -n 1 "$d/progress.txt" | grep -q '^saved .*final-model'; then
    echo "status: succeeded"; return 0
  elif [[ -e "$d/progress.txt" || -e "$d/metrics.jsonl" ]]; then
    echo "status: stopped (ended before saving its final-model: killed or crashed; resume with --resume)"; return 1
  fi
  echo "status: not started"; return 4
}

once() {  # the report, here or over ssh (the box runs this same function)
  if [[ -z "$host" ]]; then report; return; fi
  echo "host: $host"
  local remote_dir="${REMOTE_DIR:-text-diffusion}"
  remote_dir="${remote_dir#\~/}"  # relative to the remote home, as in deploy.sh
  safe_remote_dir "$remote_dir"
  remote_bash "$host" "$(declare -f report)
cd -- \"\$REMOTE_DIR\" 2>/dev/null || { echo \"status: not started (no folder \$REMOTE_DIR)\"; exit 4; }
report" "REMOTE_DIR=$remote_dir" "RUN=$RUN" "DIR=$DIR"
}

rc=0
while :; do
  if ((follow)) && [[ -t 1 ]]; then printf '\033[H\033[2J'; fi
  rc=0; once | printable || rc=$?  # what the run wrote reaches the terminal without its escapes
  if ((rc == 255)); then echo "error: cannot reach $host over ssh" >&2; fi
  if ((!follow || rc != 3)); then break; fi
  sleep "$INTERVAL"
done
exit "$rc"
