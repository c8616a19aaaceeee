#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Installs the Debian packages attend's build, tests, examples and benchmarks need.
#
# Idempotent: when everything is installed it only checks and exits. As root it runs
# `apt-get update` once and installs what is missing; otherwise it names the missing
# packages and the command to install them, and fails.
#
# python3-torch is deliberately not here: only tests/gen_fixtures.py needs PyTorch, to
# regenerate the committed fixtures; building and testing never do.
set -euo pipefail

required=(
  g++                 # the primary compiler
  clang               # clang++, the second compiler of `make test` and the header check
  libclang-rt-14-dev  # clang's sanitizer and libFuzzer runtimes (a Recommends of clang-14)
  cmake
  make
  libeigen3-dev       # Eigen 3.4, the library's one core dependency
  nlohmann-json3-dev  # JSON headers for the safetensors reader (io/)
  catch2              # Catch2 v2, the unit tests
  libbenchmark-dev    # Google Benchmark, bench/
  libopenblas-dev     # cblas baseline in bench/, and ATTEND_USE_BLAS
)
optional=(
  ccache              # picked up automatically by CMake when present
  ninja-build         # used by the Makefile when present (else Unix Makefiles)
  valgrind            # `make valgrind` (memcheck of the examples and the conformance runner)
)

is_installed() {
  [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "install-deps.sh: not a Debian-like system (no dpkg-query). Install by hand:" >&2
  echo "  ${required[*]} (optional: ${optional[*]})" >&2
  exit 1
fi

missing_required=()
missing_optional=()
for p in "${required[@]}"; do is_installed "$p" || missing_required+=("$p"); done
for p in "${optional[@]}"; do is_installed "$p" || missing_optional+=("$p"); done

missing=("${missing_required[@]}" "${missing_optional[@]}")
if ((${#missing[@]} == 0)); then
  exit 0
fi

if ((EUID != 0)); then
  if ((${#missing_required[@]} == 0)); then
    echo "install-deps.sh: optional package(s) missing: ${missing_optional[*]} (builds work without)"
    exit 0
  fi
  echo "install-deps.sh: missing Debian package(s): ${missing_required[*]}" >&2
  echo "Install them as root with:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-deps.sh: installing ${missing[*]}"
apt-get update -q
if ((${#missing_required[@]} > 0)); then
  apt-get install -y -q --no-install-recommends "${missing_required[@]}"
fi
if ((${#missing_optional[@]} > 0)); then
  apt-get install -y -q --no-install-recommends "${missing_optional[@]}" ||
    echo "install-deps.sh: could not install optional ${missing_optional[*]}; continuing"
fi
