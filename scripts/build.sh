#!/usr/bin/env bash
# Configure and build imp into build/ (Release with debug info, Ninja,
# ccache when installed). Extra arguments go to the build tool, e.g. a target.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build "$@"
