# shellcheck shell=bash
# The one place where deploy.sh and monitor_training.sh talk to a remote box. Sourced, not run.
#
# One quoting rule: every value stays one word of an argv array (ssh_cmd, rsync_cmd) from here to
# the program that reads it, and no string is ever split again into words, with one exception,
# SSH_OPTS, which is a list of ssh flags by definition (split on whitespace only: no quotes, no
# globs). Where a value has to cross into bash on the box, remote_script writes it as
# `NAME=<printf %q of VALUE>`: %q is bash's own quoting, read back by bash word for word. The
# remote login shell never parses a value (bash -s reads the script from stdin), rsync never
# splits one (its -e names a one-word program, ssh_wrapper), and names that end up in paths or
# session names must also pass safe_name.
#
# Settings (environment): SSH_PORT, SSH_KEY, SSH_OPTS (extra ssh flags, split on whitespace),
# CONNECT_TIMEOUT seconds [10].

die() { echo "error: $*" >&2; exit 2; }

# number WHAT VALUE MIN MAX: a whole number in [MIN, MAX], else one line, exit 2
number() {
  if [[ "$2" =~ ^[0-9]{1,9}$ ]] && ((10#$2 >= $3 && 10#$2 <= $4)); then return 0; fi
  die "$1 must be a whole number from $3 to $4, got '$2'"
}

# printable: drops control characters (terminal escapes, C1 codes) from what a run wrote, keeps tab and newline
printable() { LC_ALL=C tr -d '\000-\010\013-\037\177' | LC_ALL=C sed -e $'s/\xc2[\x80-\x9f]//g'; }

number CONNECT_TIMEOUT "${CONNECT_TIMEOUT:-10}" 1 3600
ssh_cmd=(ssh -o BatchMode=yes -o ConnectTimeout="${CONNECT_TIMEOUT:-10}")
if [[ -n "${SSH_PORT:-}" ]]; then number SSH_PORT "$SSH_PORT" 1 65535; ssh_cmd+=(-p "$SSH_PORT"); fi
if [[ -n "${SSH_KEY:-}" ]]; then ssh_cmd+=(-i "$SSH_KEY"); fi
read -ra _ssh_extra <<< "${SSH_OPTS:-}"
ssh_cmd+=("${_ssh_extra[@]}")

# safe_host HOST: [user@]host as ssh takes it (letters, digits, . _ - @ : %), not an option
safe_host() {
  [[ "$1" =~ ^[A-Za-z0-9._@:%-]+$ && "$1" != -* ]] ||
    die "host must look like user@host (letters, digits and . _ - @ : %), got '$1'"
}

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

# safe_remote_dir VALUE: a safe_name path that is a folder of its own: not /, not a top-level folder
# (/usr, /home): the repo is copied into it and runs write there
safe_remote_dir() {
  safe_name REMOTE_DIR "$1" path
  local parts="${1//\//}"
  [[ -n "$parts" && ( "$1" != /* || "${1#/}" =~ [^/]/+[^/] ) ]] ||
    die "REMOTE_DIR must be a folder of its own (relative to the remote home, or /a/b at least), got '$1'"
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

# ssh_wrapper: the path of a new program (owner-only, removed by the caller) that runs ssh_cmd
# with the arguments rsync gives it. rsync splits its -e string by its own rules, so the string it
# gets is this path alone (mktemp's letters); ssh_cmd is written into the program with printf %q.
ssh_wrapper() {
  local w
  w="$(mktemp /tmp/deploy-ssh.XXXXXXXX)" || die "cannot create a temporary file in /tmp"
  { printf '#!/usr/bin/env bash\nexec'; printf ' %q' "${ssh_cmd[@]}"; printf ' "$@"\n'; } > "$w"
  chmod 700 "$w"
  printf '%s\n' "$w"
}
