#!/usr/bin/env bash
# modelgate as an installed library, used by an outside project:
#   1. installs the main project (already configured in BUILD_DIR) into a
#      temporary prefix with `cmake --install`;
#   2. configures and builds tests/embedding against it (find_package(modelgate));
#   3. starts BUILD_DIR/bin/mock-model-server on a free loopback port and runs
#      the program against it: it registers the mock through the registry's
#      typed interface and waits until it is healthy.
# Usage: tests/embedding/run_test.sh BUILD_DIR
# Exits with the program's status (0: "healthy" and a clean shutdown).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ $# -ne 1 ]; then
  echo "usage: $0 BUILD_DIR" >&2
  exit 2
fi
build_dir="$(cd "$1" && pwd)"

tmp="$(mktemp -d)"
mock_pid=""
cleanup() {
  if [ -n "$mock_pid" ] && kill -TERM "$mock_pid" 2>/dev/null; then
    local deadline=$((SECONDS + 10))
    while kill -0 "$mock_pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
      sleep 0.05
    done
    kill -KILL "$mock_pid" 2>/dev/null || true
    wait "$mock_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

# -- 1. build what gets installed (a no-op when up to date), install it -----------
cmake --build "$build_dir" --target modelgate modelgated modelgatectl mock-model-server
cmake --install "$build_dir" --prefix "$tmp/prefix" >"$tmp/install.log"
test -f "$tmp/prefix/include/modelgate/actors/modelgate.hpp"
test -x "$tmp/prefix/bin/modelgated"

# -- 2. the outside project -------------------------------------------------------
launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
fi
cmake -S "$here" -B "$tmp/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_PREFIX_PATH="$tmp/prefix" "${launcher[@]}"
cmake --build "$tmp/build" -j"$(nproc)"

# -- 3. a mock model server, and the program against it -----------------------------
"$build_dir/bin/mock-model-server" --listen 127.0.0.1:0 --control 127.0.0.1:0 \
  >"$tmp/mock.out" 2>"$tmp/mock.err" &
mock_pid=$!
port=""
deadline=$((SECONDS + 10))
while [ -z "$port" ]; do
  port="$(sed -n 's|^mock-model-server listening on http://127\.0\.0\.1:\([0-9]*\)$|\1|p' "$tmp/mock.out")"
  [ -n "$port" ] && break
  if ! kill -0 "$mock_pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
    echo "mock-model-server did not start:" >&2
    cat "$tmp/mock.out" "$tmp/mock.err" >&2
    exit 1
  fi
  sleep 0.05
done
echo "mock-model-server on port $port"

status=0
timeout 60 "$tmp/build/embedding_example" "http://127.0.0.1:$port" >"$tmp/example.out" || status=$?
cat "$tmp/example.out"
if [ "$status" -eq 124 ]; then
  echo "embedding_example did not finish within 60 s" >&2
elif [ "$status" -eq 0 ] && ! grep -qx healthy "$tmp/example.out"; then
  echo "embedding_example exited 0 without printing healthy" >&2
  status=1
fi
exit "$status"
