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
  libfmt-dev libspdlog-dev nlohmann-json3-dev libcli11-dev libpcre2-dev libboost-dev
  libhiredis-dev libsqlite3-dev
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev
  # fixture scripts and reference checks
  python3 python3-numpy python3-jinja2
  # end-to-end tests of the server: curl, and Node.js for the official OpenAI SDK
  curl
  # the response cache and job queue run against a real Redis in tests; Locust load tests
  redis-server python3-locust
)
# Node.js: Debian's nodejs + npm, unless a node is already installed (e.g. from NodeSource).
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then PACKAGES+=(nodejs npm); fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages are installed"
else
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "install-deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The test clients' npm packages (pinned in tests/e2e/package-lock.json), when not yet there.
e2e="$(cd "$(dirname "$0")/.." && pwd)/tests/e2e"
if [ ! -d "$e2e/node_modules/openai" ]; then
  echo "install-deps: npm ci in tests/e2e"
  npm ci --prefix "$e2e" --no-audit --no-fund --loglevel=error
fi
echo "install-deps: done"
