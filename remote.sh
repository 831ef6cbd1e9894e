# shellcheck shell=bash
# The one place where deploy.sh and monitor_training.sh talk to a remote box. Sourced, not run.
#
# Every value that reaches the box goes through remote_bash: the script is read by bash on the
# box from stdin, and each NAME=VALUE is prepended as `NAME=<printf %q of VALUE>`, quoted once,
# here. Nothing is pasted into an ssh command line (the remote login shell never parses a value),
# and names that end up in paths or session names must also pass safe_name.
#
# Settings (environment): SSH_PORT, SSH_KEY, SSH_OPTS (extra ssh flags, split on spaces),
# CONNECT_TIMEOUT seconds [10].

die() { echo "error: $*" >&2; exit 2; }

ssh_cmd=(ssh -o BatchMode=yes -o ConnectTimeout="${CONNECT_TIMEOUT:-10}")
if [[ -n "${SSH_PORT:-}" ]]; then ssh_cmd+=(-p "$SSH_PORT"); fi
if [[ -n "${SSH_KEY:-}" ]]; then ssh_cmd+=(-i "$SSH_KEY"); fi
read -ra _ssh_extra <<< "${SSH_OPTS:-}"
ssh_cmd+=("${_ssh_extra[@]}")

# safe_name WHAT VALUE [path]: letters, digits and . _ - only (with "path": also /, and a leading
# / for an absolute path); not empty, not starting with -, no . or .. component. Else one line, exit 2.
safe_name() {
  local what="$1" value="$2" path="${3:-}" part allowed='^[A-Za-z0-9._-]+$'
  if [[ -n "$path" ]]; then allowed='^/?[A-Za-z0-9._/-]+$'; fi
  [[ -n "$value" && "$value" =~ $allowed && "$value" != -* ]] ||
    die "$what may hold only letters, digits and . _ -${path:+ /} (and must not start with -), got '$value'"
  IFS=/ read -ra _parts <<< "$value"
  for part in "${_parts[@]}"; do
    [[ "$part" != "." && "$part" != ".." ]] || die "$what must not contain a '.' or '..' component, got '$value'"
  done
}

# remote_script SCRIPT [NAME=VALUE ...]: the text bash reads on the box: NAME=<quoted VALUE> lines, then SCRIPT
remote_script() {
  local script="$1" pair
  shift
  for pair in "$@"; do printf '%s=%q\n' "${pair%%=*}" "${pair#*=}"; done
  printf '%s\n' "$script"
}

# remote_bash HOST SCRIPT [NAME=VALUE ...]: run SCRIPT with bash on HOST, the NAMEs set to VALUEs.
remote_bash() {
  local host="$1"
  shift
  remote_script "$@" | "${ssh_cmd[@]}" "$host" bash -s
}

# rsync_e: ssh_cmd as one string for rsync -e (rsync splits it on spaces and honours quotes)
rsync_e="$(printf "'%s' " "${ssh_cmd[@]}")"
rsync_e="${rsync_e% }"
