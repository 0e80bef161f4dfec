#!/usr/bin/env bash
# Installs what is missing, builds everything, and runs every test through ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/deps.sh
install_missing_packages
jobs=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMODELGATE_TESTS=ON
cmake --build build -j"$jobs"
cd build
ctest --output-on-failure -j"$jobs" --timeout 300
