#!/usr/bin/env bash
# README command 2: install what is missing, build, and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/build.sh
cd build
# Two jobs: one per core of the reference machine.
ctest --output-on-failure -j "${IMP_TEST_JOBS:-2}"
