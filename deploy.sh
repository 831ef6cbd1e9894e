#!/usr/bin/env bash
# Ship this repo to a GPU box over ssh and start a training run there that outlives the session.
#   ./deploy.sh [--dry-run] user@host [-- train.py flags]
# Settings (environment variables, default in brackets):
#   REMOTE_DIR     repo folder on the box, relative to the remote home [text-diffusion]
#   PYTHON         interpreter that creates the remote venv [python3]
#   VENV           venv folder inside REMOTE_DIR, created once, then reused [.venv]
#   REMOTE_PYTHON  run with this existing python instead: no venv, no pip install [unset]
#   NPROC          processes, one per GPU; >1 launches torchrun [1]
#   TORCHRUN_ARGS  torchrun's own flags; multi-node: see DEPLOYMENT.md [--standalone]
#   RUN_NAME       the run writes to results/RUN_NAME/ [date-time]
#   SESSION        tmux session name [train-RUN_NAME]
#   DETACH         tmux | nohup (setsid nohup) [tmux when the box has it]
#   SSH_PORT, SSH_KEY, SSH_OPTS (extra ssh flags), CONNECT_TIMEOUT seconds [10]
# Only the files git tracks are copied, readable by their owner alone; names that reach the box
# must be plain (letters, digits, . _ - /) and every value is quoted once, in remote.sh.
# shellcheck disable=SC2016  # the remote scripts below are single-quoted on purpose: they expand there
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=remote.sh
source ./remote.sh

usage="usage: ./deploy.sh [--dry-run] user@host [-- train.py flags]"
host="" dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --) shift; break ;;
    -*) die "unknown option '$1' (train.py flags go after --); $usage" ;;
    *) [[ -z "$host" ]] || die "more than one host ('$host', '$1'; train.py flags go after --); $usage"; host="$1" ;;
  esac
  shift
done
[[ -n "$host" ]] || die "no host given; $usage"
safe_host "$host"
resume=0
for arg in "$@"; do
  [[ "$arg" != --output-dir* ]] || die "deploy.sh sets --output-dir results/<RUN_NAME>; set RUN_NAME instead"
  [[ "$arg" != --dry-run ]] || die "--dry-run is deploy.sh's own flag: put it before the host, not after --"
  if [[ "$arg" == --resume ]]; then resume=1; fi
done

REMOTE_DIR="${REMOTE_DIR:-text-diffusion}" PYTHON="${PYTHON:-python3}" VENV="${VENV:-.venv}"
REMOTE_PYTHON="${REMOTE_PYTHON:-}" NPROC="${NPROC:-1}" TORCHRUN_ARGS="${TORCHRUN_ARGS:---standalone}"
RUN_NAME="${RUN_NAME:-$(date +%Y%m%d-%H%M%S)}" DETACH="${DETACH:-}"
SESSION="${SESSION:-train-${RUN_NAME//./_}}" REMOTE_DIR="${REMOTE_DIR#\~/}"  # relative paths start at the remote home
safe_remote_dir "$REMOTE_DIR"
safe_name RUN_NAME "$RUN_NAME"
safe_name SESSION "$SESSION"
[[ "$SESSION" != *.* ]] || die "SESSION must not contain '.' (tmux replaces it), got '$SESSION'"
safe_name VENV "$VENV" path
safe_name PYTHON "$PYTHON" path
if [[ -n "$REMOTE_PYTHON" ]]; then safe_name REMOTE_PYTHON "$REMOTE_PYTHON" path; fi
number NPROC "$NPROC" 1 1024
[[ "$DETACH" =~ ^(|tmux|nohup)$ ]] || die "DETACH must be tmux or nohup, got '$DETACH'"
git rev-parse --is-inside-work-tree > /dev/null 2>&1 || die "deploy.sh ships the files git tracks: run it from a git checkout"

# --- what runs on the box ------------------------------------------------------------------------
py="${REMOTE_PYTHON:-$VENV/bin/python}"
launch=("$py")
if ((NPROC > 1)); then
  read -ra torchrun_args <<< "$TORCHRUN_ARGS"
  launch+=(-m torch.distributed.run "${torchrun_args[@]}" --nproc_per_node "$NPROC")
fi
# The runner outlives ssh: its pid sits in the run folder while alive, then the exit code. Its
# trap lets it outlive a signal sent to the whole run (kill -- -PID) to record that, too.
runner='umask 077
cd "$(dirname "$0")/../.." || exit 1
run="results/$(basename "$(dirname "$0")")"
echo $$ > "$run/pid"
trap true TERM INT
code=0'
runner+=$'\n'"$(printf '%q ' "${launch[@]}" train.py "$@")"'--output-dir "$run" >> "$run/train.log" 2>&1 || code=$?'
runner+=$'\n''echo "$code" > "$run/exit_code.tmp" && mv "$run/exit_code.tmp" "$run/exit_code" && rm -f "$run/pid"'

# 1. reachable, rsync there, no live run, no finished run of this name (unless resuming it)
check='command -v rsync > /dev/null || { echo "rsync is not installed there (apt-get install rsync)"; exit 4; }
umask 077
mkdir -p -- "$REMOTE_DIR" && cd -- "$REMOTE_DIR" || exit 1
for f in results/*/pid; do
  p="$(head -c 20 "$f" 2>/dev/null)"
  if [[ "$p" =~ ^[1-9][0-9]*$ ]] && kill -0 "$p" 2>/dev/null; then echo "${f%/pid}"; exit 3; fi
done
if [ -e "results/$RUN_NAME" ] && [ "$RESUME" != 1 ]; then echo "results/$RUN_NAME"; exit 5; fi'
# 3. set up python and start the run, detached
start='set -euo pipefail
umask 077
cd -- "$REMOTE_DIR"
if [ -z "$REMOTE_PYTHON" ]; then
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  echo "pip install -r requirements.txt (minutes on a fresh box)"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements.txt
fi
run="results/$RUN_NAME"
mkdir -p -- "$run" && rm -f -- "$run/exit_code"
printf "%s\n" "$RUNNER" > "$run/run.sh"
if [ -z "$DETACH" ]; then DETACH=nohup; if command -v tmux > /dev/null; then DETACH=tmux; fi; fi
if [ "$DETACH" = tmux ]; then
  tmux new-session -d -s "$SESSION" bash "$PWD/$run/run.sh" && echo "detached: tmux attach -t $SESSION"
else
  setsid nohup bash "$PWD/$run/run.sh" > /dev/null 2>&1 < /dev/null &
  echo "detached with setsid nohup"
fi
for _ in $(seq 100); do if [ -e "$run/pid" ] || [ -e "$run/exit_code" ]; then exit 0; fi; sleep 0.1; done
echo "error: the run did not start; see $run/train.log" >&2; exit 1'
vars=("REMOTE_DIR=$REMOTE_DIR" "RUN_NAME=$RUN_NAME" "RESUME=$resume")
start_vars=("${vars[@]}" "REMOTE_PYTHON=$REMOTE_PYTHON" "PYTHON=$PYTHON" "VENV=$VENV" "SESSION=$SESSION"
            "DETACH=$DETACH" "RUNNER=$runner")
# 2. ship the files git tracks (never untracked .env, wandb/, results/), owner-only; -s keeps the
# remote path away from the remote shell; -e names ssh_wrapper, so rsync never splits a value
rsync_args=(-az -s --from0 --files-from=- "--chmod=D700,F600")
tracked() { git ls-files -z | while IFS= read -r -d '' f; do if [[ -e "$f" ]]; then printf '%s\0' "$f"; fi; done; }

if ((dry_run)); then
  printf '+ %s bash -s <<EOF\n%sEOF\n' "${ssh_cmd[*]} $host" "$(remote_script "$check" "${vars[@]}")"$'\n'
  printf '+ git ls-files | rsync %s -e (ssh_wrapper: %s) ./ %s   # %s files\n' "${rsync_args[*]}" "${ssh_cmd[*]}" \
    "$host:$REMOTE_DIR/" "$(tracked | tr -cd '\0' | wc -c)"
  printf '+ %s bash -s <<EOF\n%sEOF\n' "${ssh_cmd[*]} $host" "$(remote_script "$start" "${start_vars[@]}")"$'\n'
  echo "dry run: nothing was done"
  exit 0
fi

monitor=""  # the monitor command for this box, settings included
for v in REMOTE_DIR SSH_PORT SSH_KEY SSH_OPTS CONNECT_TIMEOUT; do
  if [[ -n "${!v:-}" ]]; then monitor+="$v=$(printf '%q' "${!v}") "; fi
done
monitor+="./monitor_training.sh $(printf '%q' "$host") --run"

rc=0
out=$(remote_bash "$host" "$check" "${vars[@]}" 2>&1) || rc=$?
last="$(printf '%s\n' "$out" | sed '/^Warning: Permanently added/d' | tail -n 1)"
if ((rc == 255)); then
  echo "error: cannot reach $host over ssh: $last" >&2; exit 1
elif ((rc == 3)); then
  echo "error: run ${last#results/} is still live on $host ($REMOTE_DIR/$last); not starting another." \
       "Watch it: $monitor ${last#results/}" >&2; exit 1
elif ((rc == 5)); then
  echo "error: run $RUN_NAME already exists on $host ($REMOTE_DIR/$last); choose another RUN_NAME," \
       "or continue it with: RUN_NAME=$RUN_NAME ./deploy.sh $host -- <its flags> --resume" >&2; exit 1
elif ((rc != 0)); then
  echo "error: checking $host failed: $last" >&2; exit 1
fi
wrapper="$(ssh_wrapper)"
trap 'rm -f "$wrapper"' EXIT
tracked | rsync "${rsync_args[@]}" -e "$wrapper" ./ "$host:$REMOTE_DIR/" ||
  { echo "error: copying the repo to $host with rsync failed (exit $?)" >&2; exit 1; }
remote_bash "$host" "$start" "${start_vars[@]}" ||
  { echo "error: setting up or starting the run on $host failed (exit $?, its output is above)" >&2; exit 1; }

echo "started run $RUN_NAME on $host; log: $REMOTE_DIR/results/$RUN_NAME/train.log"
echo "monitor: $monitor $RUN_NAME --follow"
