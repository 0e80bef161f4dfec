#!/usr/bin/env bash
# The first run that shows something: `tools/run.sh --demo` starts two mock
# servers and the daemon, registers both, prints what to try; a chat
# completion for the shared model works; and when the script is stopped, the
# daemon and the mocks end with it. Usage: run_demo_test.sh BUILD_DIR
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
build="$(cd "$1" && pwd)"
tmp="$(mktemp -d)"
demo_pid=""
cleanup() {
  if [ -n "$demo_pid" ] && kill -0 "$demo_pid" 2>/dev/null; then
    kill -TERM "$demo_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
  echo "run_demo_test: $*" >&2
  echo "--- demo stdout:" >&2; cat "$tmp/out" >&2 || true
  echo "--- demo stderr:" >&2; tail -n 30 "$tmp/err" >&2 || true
  exit 1
}

MODELGATE_SKIP_SETUP=1 MODELGATE_BUILD_DIR="$build" \
  bash "$root/tools/run.sh" --demo --listen 127.0.0.1:0 --db "$tmp/demo.db" >"$tmp/out" 2>"$tmp/err" &
demo_pid=$!

deadline=$((SECONDS + 30))
until grep -q "Ctrl-C stops the daemon and both mocks" "$tmp/out"; do
  kill -0 "$demo_pid" 2>/dev/null || fail "the demo exited early"
  [ "$SECONDS" -lt "$deadline" ] || fail "no instructions within 30 s"
  sleep 0.05
done
base="$(sed -n 's|^modelgated  \(http://[^ ]*\) .*|\1|p' "$tmp/out")"
[ -n "$base" ] || fail "no daemon URL in the instructions"
grep -q "$base/ui" "$tmp/out" || fail "the status page URL is not shown"
grep -q 'curl -N' "$tmp/out" || fail "no streamed example"
grep -q '"mode":"refuse"' "$tmp/out" || fail "no way to make a mock fail"

servers="$(curl -s --max-time 5 "$base/v1/servers")"
count="$(grep -o '"id":"srv_' <<<"$servers" | wc -l)"
[ "$count" -eq 2 ] || fail "expected 2 registered servers, got $count: $servers"

# The shared model answers once a mock is probed (the demo probes every 2 s).
deadline=$((SECONDS + 15))
until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$base/v1/chat/completions" \
  -H 'Content-Type: application/json' -d '{"model":"shared-model","messages":[]}')" = 200 ]; do
  [ "$SECONDS" -lt "$deadline" ] || fail "shared-model did not answer 200 within 15 s"
  sleep 0.1
done

# Processes of the demo: its children (mocks, daemon).
children="$(pgrep -P "$demo_pid" || true)"
[ -n "$children" ] || fail "the demo has no child processes"
kill -TERM "$demo_pid"
deadline=$((SECONDS + 15))
while kill -0 "$demo_pid" 2>/dev/null; do
  [ "$SECONDS" -lt "$deadline" ] || fail "the demo did not stop within 15 s of SIGTERM"
  sleep 0.05
done
demo_pid=""
for pid in $children; do
  if kill -0 "$pid" 2>/dev/null; then
    fail "process $pid ($(cat /proc/"$pid"/comm 2>/dev/null)) outlived the demo"
  fi
done
if curl -s --max-time 2 "$base/health" >/dev/null; then
  fail "the daemon still answers after the demo stopped"
fi
echo "run_demo_test: OK"
