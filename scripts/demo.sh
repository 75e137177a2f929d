#!/usr/bin/env bash
# README command 1: install what is missing, build, and train the default
# config on Fashion-MNIST, then evaluate it. Results land in runs/default;
# an earlier demo run there is replaced (resume one with
# `build/imp train --workdir runs/default --resume`).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/build.sh --target imp_cli
exec build/imp train configs/default.yaml --workdir runs/default --overwrite "$@"
