#!/usr/bin/env bash
# Install every Debian package that imp needs to build, test and run its
# default job. Safe to run again: packages already present are skipped.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config
  libtorch-dev libopenblas-dev libgloo-dev libdnnl-dev
  libsentencepiece-dev sentencepiece
  libyaml-cpp-dev nlohmann-json3-dev zlib1g-dev libcli11-dev
  libespeak-ng-dev espeak-ng-data espeak-ng libsoxr-dev libsndfile1-dev
  libopencv-imgcodecs-dev libopencv-imgproc-dev
  libavformat-dev libavcodec-dev libswscale-dev libswresample-dev libavutil-dev
  ffmpeg imagemagick sox libsox-fmt-all webp
  libgtest-dev libgmock-dev
  dataset-fashion-mnist
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages are installed"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -q
"${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
