#!/usr/bin/env bash
# Installs what is missing, builds the daemon, and runs it in the foreground on
# 127.0.0.1:8080 with ./modelgate.db (the repository's folder). Extra
# arguments go to modelgated, e.g. tools/run.sh --log-level debug.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/deps.sh
install_missing_packages
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMODELGATE_TESTS=OFF
cmake --build build -j"$(nproc)" --target modelgated modelgatectl
exec build/bin/modelgated "$@"
