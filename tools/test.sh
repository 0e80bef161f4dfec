#!/usr/bin/env bash
# Installs what is missing, builds everything, and runs every test through ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/deps.sh
extra=()
# The gateway test drives the official `openai` npm client: Node.js is needed.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  extra+=(nodejs npm)
fi
# The status page test drives Debian's Chromium through playwright-core.
# The unit test checks tools/modelgated.service with systemd-analyze.
command -v systemd-analyze >/dev/null || extra+=(systemd)
# The metrics test checks the exposition with promtool (Debian's prometheus).
command -v promtool >/dev/null || extra+=(prometheus)
install_missing_packages chromium "${extra[@]}"
npm ci --prefix tests/integration/openai_client --no-audit --no-fund --loglevel=error
npm ci --prefix tests/integration/status_page --no-audit --no-fund --loglevel=error
jobs=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMODELGATE_TESTS=ON
cmake --build build -j"$jobs"
cd build
ctest --output-on-failure -j"$jobs" --timeout 300
