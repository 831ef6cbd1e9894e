#!/usr/bin/env bash
# Ship this repo to a GPU box over ssh and start a training run there that outlives the session.
#   ./deploy.sh user@host [--dry-run] [-- train.py flags]
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
set -euo pipefail
cd "$(dirname "$0")"

usage="usage: ./deploy.sh user@host [--dry-run] [-- train.py flags]"
die() { echo "error: $*" >&2; exit 2; }
host="${1:-}"
[[ -n "$host" && "$host" != -* ]] || die "no host given; $usage"
shift
dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    *) die "unexpected '$1' (train.py flags go after --); $usage" ;;
  esac
done
for arg in "$@"; do
  [[ "$arg" != --output-dir* ]] || die "deploy.sh sets --output-dir results/<RUN_NAME>; set RUN_NAME instead"
done

REMOTE_DIR="${REMOTE_DIR:-text-diffusion}" PYTHON="${PYTHON:-python3}" VENV="${VENV:-.venv}"
REMOTE_PYTHON="${REMOTE_PYTHON:-}" NPROC="${NPROC:-1}" TORCHRUN_ARGS="${TORCHRUN_ARGS:---standalone}"
RUN_NAME="${RUN_NAME:-$(date +%Y%m%d-%H%M%S)}" DETACH="${DETACH:-}"
SESSION="${SESSION:-train-$RUN_NAME}" REMOTE_DIR="${REMOTE_DIR#\~/}"  # a quoted ~/ would not expand there
[[ "$NPROC" =~ ^[1-9][0-9]*$ ]] || die "NPROC must be a positive integer, got '$NPROC'"
[[ "$RUN_NAME" =~ ^[A-Za-z0-9._-]+$ ]] || die "RUN_NAME may hold only letters, digits and . _ -"
[[ "$DETACH" =~ ^(|tmux|nohup)$ ]] || die "DETACH must be tmux or nohup, got '$DETACH'"

ssh_cmd=(ssh -o BatchMode=yes -o ConnectTimeout="${CONNECT_TIMEOUT:-10}")
if [[ -n "${SSH_PORT:-}" ]]; then ssh_cmd+=(-p "$SSH_PORT"); fi
if [[ -n "${SSH_KEY:-}" ]]; then ssh_cmd+=(-i "$SSH_KEY"); fi
read -ra extra <<< "${SSH_OPTS:-}"
ssh_cmd+=("${extra[@]}")
q() { printf '%q' "$1"; }

# --- the scripts that run on the box ------------------------------------------------------------
py="${REMOTE_PYTHON:-$VENV/bin/python}"
launch=("$py")
if ((NPROC > 1)); then
  read -ra torchrun_args <<< "$TORCHRUN_ARGS"
  launch+=(-m torch.distributed.run "${torchrun_args[@]}" --nproc_per_node "$NPROC")
fi
# A live run is one whose pid file names a live process.
check="command -v rsync > /dev/null || { echo 'rsync is not installed there (apt-get install rsync)'; exit 4; }
mkdir -p $(q "$REMOTE_DIR") && cd $(q "$REMOTE_DIR")
for f in results/*/pid; do if [ -e \"\$f\" ] && kill -0 \"\$(cat \"\$f\")\" 2>/dev/null; then echo \"\${f%/pid}\"; exit 3; fi; done"
setup="# REMOTE_PYTHON is set: no venv, no pip install"
if [[ -z "$REMOTE_PYTHON" ]]; then
  setup="[ -x $(q "$VENV")/bin/python ] || $(q "$PYTHON") -m venv $(q "$VENV")
echo 'pip install -r requirements.txt (minutes on a fresh box)'
$(q "$VENV")/bin/pip install -q --disable-pip-version-check -r requirements.txt"
fi
tmux_cmd="tmux new-session -d -s $(q "$SESSION") \"bash \$PWD/\$run/run.sh\" && echo 'detached: tmux attach -t $SESSION'"
nohup_cmd="{ setsid nohup bash \"\$PWD/\$run/run.sh\" > /dev/null 2>&1 < /dev/null & echo 'detached with setsid nohup'; }"
detach="if command -v tmux > /dev/null; then $tmux_cmd; else $nohup_cmd; fi"
if [[ "$DETACH" == tmux ]]; then detach="$tmux_cmd"; elif [[ "$DETACH" == nohup ]]; then detach="$nohup_cmd"; fi
# The runner outlives ssh: it keeps its pid in the run folder while alive, then the exit code.
# Its trap lets it outlive a signal sent to the whole run (kill -- -PID) to record that, too.
remote="set -euo pipefail
cd $(q "$REMOTE_DIR")
$setup
run=results/$RUN_NAME
mkdir -p \$run && rm -f \$run/exit_code
cat > \$run/run.sh <<'RUNNER'
cd \"\$(dirname \"\$0\")/../..\" && run=results/$RUN_NAME && echo \$\$ > \$run/pid
trap true TERM INT
code=0
$(printf '%q ' "${launch[@]}" train.py "$@")--output-dir \$run >> \$run/train.log 2>&1 || code=\$?
echo \"\$code\" > \$run/exit_code.tmp && mv \$run/exit_code.tmp \$run/exit_code && rm -f \$run/pid
RUNNER
$detach
for _ in \$(seq 100); do [ -e \$run/pid ] || [ -e \$run/exit_code ] && exit 0; sleep 0.1; done
echo \"error: the run did not start; see \$run/train.log\" >&2; exit 1"
ssh_e="$(printf "'%s' " "${ssh_cmd[@]}")"  # rsync splits -e on spaces and honours quotes
rsync_cmd=(rsync -az --exclude=/results/ --exclude=.git/ --exclude=.venv/ --exclude=venv/ --exclude=.cache/
           --exclude=__pycache__/ --exclude=.pytest_cache/ --exclude="/${VENV%/}/" -e "${ssh_e% }"
           ./ "$host:$REMOTE_DIR/")

if ((dry_run)); then
  printf '+ %s bash -s <<\047EOF\047\n%s\nEOF\n' "${ssh_cmd[*]} $host" "$check"
  printf '+ %s\n' "${rsync_cmd[*]}"
  printf '+ %s bash -s <<\047EOF\047\n%s\nEOF\n' "${ssh_cmd[*]} $host" "$remote"
  echo "dry run: nothing was done"
  exit 0
fi

monitor=""  # the monitor command for this box, settings included
for v in REMOTE_DIR SSH_PORT SSH_KEY SSH_OPTS CONNECT_TIMEOUT; do
  if [[ -n "${!v:-}" ]]; then monitor+="$v=$(q "${!v}") "; fi
done
monitor+="./monitor_training.sh $host --run"

# --- 1. reachable and no run live there, 2. ship the code, 3. set up and start ----------------
rc=0
out=$(printf '%s\n' "$check" | "${ssh_cmd[@]}" "$host" bash -s 2>&1) || rc=$?
last="$(printf '%s\n' "$out" | sed '/^Warning: Permanently added/d' | tail -n 1)"
if ((rc == 255)); then
  echo "error: cannot reach $host over ssh: $last" >&2; exit 1
elif ((rc == 3)); then
  echo "error: run ${last#results/} is still live on $host ($REMOTE_DIR/$last); not starting another." \
       "Watch it: $monitor ${last#results/}" >&2; exit 1
elif ((rc != 0)); then
  echo "error: checking $host failed: $last" >&2; exit 1
fi
"${rsync_cmd[@]}" || { echo "error: copying the repo to $host with rsync failed (exit $?)" >&2; exit 1; }
printf '%s\n' "$remote" | "${ssh_cmd[@]}" "$host" bash -s ||
  { echo "error: setting up or starting the run on $host failed (exit $?, its output is above)" >&2; exit 1; }

echo "started run $RUN_NAME on $host; log: $REMOTE_DIR/results/$RUN_NAME/train.log"
echo "monitor: $monitor $RUN_NAME --follow"
