#!/usr/bin/env bash
# Installs what is missing, builds the daemon, and runs it in the foreground on
# 127.0.0.1:8080 with ./modelgate.db (the repository's folder). Extra
# arguments go to modelgated, e.g. tools/run.sh --log-level debug.
#
# tools/run.sh --demo [ARGS...] shows it working: it starts two
# mock-model-servers on free loopback ports, the daemon on 127.0.0.1:8080
# with ./modelgate-demo.db (deleted first) and a probe every 2 s, registers
# both mocks (one model each, plus one model both serve), and prints what to
# try next. ARGS go to modelgated and replace the demo's --listen, --db or
# --health-interval when they name them. Ctrl-C (or the daemon exiting) ends
# the daemon and the mocks.
set -euo pipefail
cd "$(dirname "$0")/.."

demo=0
if [ "${1:-}" = "--demo" ]; then
  demo=1
  shift
fi

# MODELGATE_BUILD_DIR (default build) and MODELGATE_SKIP_SETUP=1 (no install,
# no build: the binaries are there) serve the demo's own test.
build_dir="${MODELGATE_BUILD_DIR:-build}"
if [ "${MODELGATE_SKIP_SETUP:-0}" != "1" ]; then
  source tools/deps.sh
  install_missing_packages
  cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMODELGATE_TESTS=OFF
  targets=(modelgated modelgatectl)
  if [ "$demo" -eq 1 ]; then
    targets+=(mock-model-server)
  fi
  cmake --build "$build_dir" -j"$(nproc)" --target "${targets[@]}"
fi
bin="$build_dir/bin"
if [ "$demo" -eq 0 ]; then
  exec "$bin/modelgated" "$@"
fi

# -- the demo -------------------------------------------------------------------

demo_tmp="$(mktemp -d)"
daemon_pid=""
mock_pids=()

# Sends SIGTERM to a process of ours and waits (at most 10 s) for it to end,
# then SIGKILL.
stop_process() {
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || return 0
  local deadline=$((SECONDS + 10))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "demo: process $pid did not stop within 10 s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.05
  done
  wait "$pid" 2>/dev/null || true
}

stop_demo() {
  trap - EXIT INT TERM
  if [ -n "$daemon_pid" ]; then
    stop_process "$daemon_pid"
  fi
  local pid
  for pid in "${mock_pids[@]}"; do
    stop_process "$pid"
  done
  rm -rf "$demo_tmp"
}
trap stop_demo EXIT
trap 'echo; exit 130' INT
trap 'exit 143' TERM

# Waits (at most 10 s) until FILE, the stdout of process PID, has a line
# matching the sed pattern PATTERN (with one \(group\)); prints the group.
wait_for_line() {
  local file=$1 pid=$2 pattern=$3 what=$4
  local deadline=$((SECONDS + 10)) value
  while :; do
    value="$(sed -n "s|$pattern|\1|p" "$file" | head -n 1)"
    if [ -n "$value" ]; then
      printf '%s\n' "$value"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "demo: $what exited:" >&2
      cat "$file" "$file.err" >&2 2>/dev/null || true
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "demo: $what did not start within 10 s" >&2
      return 1
    fi
    sleep 0.05
  done
}

# start_mock NAME MODEL...: one mock on a free loopback port; sets
# mock_port and mock_control to its serving and control ports.
start_mock() {
  local name=$1
  shift
  local model_args=() model
  for model in "$@"; do
    model_args+=(--model "$model")
  done
  local out="$demo_tmp/$name.out"
  "$bin/mock-model-server" --listen 127.0.0.1:0 --control 127.0.0.1:0 "${model_args[@]}" \
    >"$out" 2>"$out.err" &
  local pid=$!
  mock_pids+=("$pid")
  mock_control="$(wait_for_line "$out" "$pid" \
    '^mock-model-server control on http://127\.0\.0\.1:\([0-9]*\)$' "mock-model-server $name")"
  mock_port="$(wait_for_line "$out" "$pid" \
    '^mock-model-server listening on http://127\.0\.0\.1:\([0-9]*\)$' "mock-model-server $name")"
}

start_mock mock-a llama-3-8b shared-model
a_port=$mock_port a_control=$mock_control
start_mock mock-b qwen-2.5-7b shared-model
b_port=$mock_port b_control=$mock_control

# The demo's defaults, unless the arguments name the option themselves.
has_option() {
  local name=$1 arg
  shift
  for arg in "$@"; do
    case "$arg" in "$name" | "$name="*) return 0 ;; esac
  done
  return 1
}
daemon_args=()
has_option --listen "$@" || daemon_args+=(--listen 127.0.0.1:8080)
if ! has_option --db "$@"; then
  rm -f modelgate-demo.db modelgate-demo.db-journal modelgate-demo.db-wal modelgate-demo.db-shm
  daemon_args+=(--db modelgate-demo.db)
fi
has_option --health-interval "$@" || daemon_args+=(--health-interval 2)
daemon_args+=("$@")

# The daemon's log goes to the terminal (stderr); its stdout, with the
# address it listens on, to a file read here.
"$bin/modelgated" "${daemon_args[@]}" >"$demo_tmp/daemon.out" &
daemon_pid=$!
base="$(wait_for_line "$demo_tmp/daemon.out" "$daemon_pid" \
  '^modelgate listening on \(http://.*\)$' "modelgated")"

ctl=("$bin/modelgatectl")
ctl_shown="$bin/modelgatectl"
if [ "$base" != "http://127.0.0.1:8080" ]; then
  ctl+=(--url "$base")
  ctl_shown+=" --url $base"
fi
a_id="$("${ctl[@]}" --json register "http://127.0.0.1:$a_port" --name mock-a \
  --model llama-3-8b --model shared-model | sed -n 's|.*"id": *"\(srv_[0-9a-f]*\)".*|\1|p')"
b_id="$("${ctl[@]}" --json register "http://127.0.0.1:$b_port" --name mock-b \
  --model qwen-2.5-7b --model shared-model | sed -n 's|.*"id": *"\(srv_[0-9a-f]*\)".*|\1|p')"
if [ -z "$a_id" ] || [ -z "$b_id" ]; then
  echo "demo: registering the mocks failed" >&2
  exit 1
fi

cat <<EOF

================================ modelgate demo ================================
modelgated  $base   ($bin/modelgated ${daemon_args[*]})
mock-a      http://127.0.0.1:$a_port  $a_id  models llama-3-8b, shared-model
mock-b      http://127.0.0.1:$b_port  $b_id  models qwen-2.5-7b, shared-model

Status page:    $base/ui
The servers:    $ctl_shown list
Models:         curl -s $base/v1/models

A chat completion (shared-model: either mock; -i shows x-modelgate-server):
  curl -si $base/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "shared-model", "messages": [{"role": "user", "content": "Hello"}]}'

A streamed one:
  curl -N $base/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "llama-3-8b", "stream": true, "messages": [{"role": "user", "content": "Hello"}]}'

Make mock-a fail: it turns unhealthy at the next probe and is retired after
3 failed probes in a row; shared-model keeps answering from mock-b:
  curl -X POST http://127.0.0.1:$a_control/control -d '{"mode":"refuse"}'
  $ctl_shown list --all
  $ctl_shown events $a_id
Bring it back:
  curl -X POST http://127.0.0.1:$a_control/control -d '{"mode":"healthy"}'
  $ctl_shown reactivate $a_id
(mock-b's control port: http://127.0.0.1:$b_control/control)

Ctrl-C stops the daemon and both mocks.
================================================================================

EOF

# The daemon runs until Ctrl-C or until it exits; the EXIT trap then ends
# the mocks (and the daemon, when the script was interrupted).
daemon_status=0
wait "$daemon_pid" || daemon_status=$?
daemon_pid=""
exit "$daemon_status"
