#!/usr/bin/env bash
# Installs every Debian 12 package that building and testing Breakwater needs.
# Idempotent: packages already present are skipped, and apt runs only when one is missing.
# The CUDA toolkit (nvcc, cuBLAS) is optional and not a Debian package: when
# /usr/local/cuda/bin/nvcc exists the CUDA backend is compiled too.
set -euo pipefail

PACKAGES=(
  # toolchain
  build-essential g++ cmake ninja-build pkg-config git ca-certificates
  clang clang-format clang-tidy libclang-rt-14-dev
  # libraries
  libfmt-dev libspdlog-dev nlohmann-json3-dev libcli11-dev libpcre2-dev
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev
  # fixture scripts and reference checks
  python3 python3-numpy python3-jinja2
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages are installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install-deps: done"
