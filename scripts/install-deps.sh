#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Checks that what a make target needs is present, and installs it on Debian when it is not.
#
#   scripts/install-deps.sh [demo|test|bench|docs|valgrind|fuzz|all]...   (default: test)
#
#   demo      a C++17 compiler, cmake >= 3.21, make, Eigen 3.4, nlohmann-json 3
#   test      demo's, plus clang++ with its sanitizer and libFuzzer runtimes, Catch2 v2,
#             Google Benchmark, OpenBLAS (cblas.h and libopenblas), pkg-config and doxygen
#   bench     demo's, plus Google Benchmark and OpenBLAS
#   docs      doxygen
#   valgrind  demo's, plus valgrind
#   fuzz      demo's, plus clang++ with its sanitizer and libFuzzer runtimes
#
# Everything is checked by finding it, never by package name: `command -v` for programs,
# one throw-away CMake project calling find_package for the libraries (what attend's own
# configure will do), and a tiny clang++ link for the sanitizer runtimes. So the check
# passes on any system where the things are installed, whatever installed them.
# When something is missing: as root with apt-get, `apt-get update` once and install the
# Debian packages; otherwise print what is missing and the command that installs it (apt-get,
# dnf, pacman or brew, whichever is present), and fail. `make <target> SKIP_DEPS=1` skips
# this script.
#
# python3-torch is deliberately not here: only tests/gen_fixtures*.py need PyTorch, to
# regenerate the committed fixtures; building and testing never do.
set -euo pipefail

usage() { echo "usage: $0 [demo|test|bench|docs|valgrind|fuzz|all]..." >&2; exit 2; }

declare -A want=()
(($# == 0)) && set -- test
for mode in "$@"; do
  case "$mode" in
    demo) want[base]=1 ;;
    test) want[base]=1 want[clang]=1 want[sanitizers]=1 want[catch2]=1 want[benchmark]=1
          want[openblas]=1 want[pkgconfig]=1 want[doxygen]=1 ;;
    bench) want[base]=1 want[benchmark]=1 want[openblas]=1 ;;
    docs) want[doxygen]=1 ;;
    valgrind) want[base]=1 want[valgrind]=1 ;;
    fuzz) want[base]=1 want[clang]=1 want[sanitizers]=1 ;;
    all) want=([base]=1 [clang]=1 [sanitizers]=1 [catch2]=1 [benchmark]=1 [openblas]=1
               [pkgconfig]=1 [doxygen]=1 [valgrind]=1) ;;
    *) usage ;;
  esac
done
[[ -n "${want[base]:-}" ]] && want+=([cxx]=1 [cmake]=1 [make]=1 [eigen]=1 [json]=1)

# What each item is called by each package manager ("-": not packaged there).
# clang's sanitizer runtimes: Debian splits them out per clang version (see below).
declare -A apt=([cxx]=g++ [cmake]=cmake [make]=make [eigen]=libeigen3-dev
  [json]=nlohmann-json3-dev [clang]=clang [sanitizers]=libclang-rt-dev [catch2]=catch2
  [benchmark]=libbenchmark-dev [openblas]=libopenblas-dev [pkgconfig]=pkgconf
  [doxygen]=doxygen [valgrind]=valgrind)
declare -A dnf=([cxx]=gcc-c++ [cmake]=cmake [make]=make [eigen]=eigen3-devel
  [json]=json-devel [clang]=clang [sanitizers]=compiler-rt [catch2]=catch2-devel
  [benchmark]=google-benchmark-devel [openblas]=openblas-devel [pkgconfig]=pkgconf-pkg-config
  [doxygen]=doxygen [valgrind]=valgrind)
declare -A pacman=([cxx]=gcc [cmake]=cmake [make]=make [eigen]=eigen [json]=nlohmann-json
  [clang]=clang [sanitizers]=compiler-rt [catch2]=catch2 [benchmark]=benchmark
  [openblas]=openblas [pkgconfig]=pkgconf [doxygen]=doxygen [valgrind]=valgrind)
declare -A brew=([cxx]=- [cmake]=cmake [make]=make [eigen]=eigen [json]=nlohmann-json
  [clang]=llvm [sanitizers]=llvm [catch2]=catch2 [benchmark]=google-benchmark
  [openblas]=openblas [pkgconfig]=pkg-config [doxygen]=doxygen [valgrind]=-)
declare -A label=([cxx]="a C++17 compiler (c++/g++)" [cmake]="cmake >= 3.21" [make]=make
  [eigen]="Eigen 3.4 (CMake package Eigen3)" [json]="nlohmann-json 3 (CMake package nlohmann_json)"
  [clang]=clang++ [sanitizers]="clang++'s ASan/UBSan/TSan and libFuzzer runtimes"
  [catch2]="Catch2 v2.13 (CMake package Catch2)" [benchmark]="Google Benchmark (CMake package benchmark)"
  [openblas]="OpenBLAS (cblas.h and libopenblas)" [pkgconfig]=pkg-config [doxygen]=doxygen
  [valgrind]=valgrind)

scratch="$(mktemp -d "${TMPDIR:-/tmp}/attend-deps.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT

have() { command -v "$1" >/dev/null 2>&1; }

cmake_new_enough() {
  have cmake || return 1
  local v
  v="$(cmake --version | sed -n '1s/.* \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p')"
  [[ -n "$v" ]] && (( ${v%%.*} > 3 || (${v%%.*} == 3 && ${v#*.} >= 21) ))
}

# One CMake configure finds every library asked for; prints "FOUND <item>" per success.
probe_libraries() {
  local items=("$@") dir="$scratch/probe"
  mkdir -p "$dir"
  {
    echo 'cmake_minimum_required(VERSION 3.21)'
    echo 'project(attend_deps_probe LANGUAGES CXX)'
    for i in "${items[@]}"; do
      case "$i" in
        eigen) echo 'find_package(Eigen3 3.4 NO_MODULE QUIET)'
               echo 'if(Eigen3_FOUND)'; echo '  message(STATUS "FOUND eigen")'; echo 'endif()' ;;
        json) echo 'find_package(nlohmann_json 3 QUIET)'
              echo 'if(nlohmann_json_FOUND)'; echo '  message(STATUS "FOUND json")'; echo 'endif()' ;;
        catch2) echo 'find_package(Catch2 2.13 CONFIG QUIET)'
                echo 'if(Catch2_FOUND)'; echo '  message(STATUS "FOUND catch2")'; echo 'endif()' ;;
        benchmark) echo 'find_package(benchmark CONFIG QUIET)'
                   echo 'if(benchmark_FOUND)'; echo '  message(STATUS "FOUND benchmark")'; echo 'endif()' ;;
        openblas) echo 'find_path(PROBE_CBLAS cblas.h PATH_SUFFIXES openblas)'
                  echo 'find_library(PROBE_OPENBLAS NAMES openblas)'
                  echo 'if(PROBE_CBLAS AND PROBE_OPENBLAS)'
                  echo '  message(STATUS "FOUND openblas")'; echo 'endif()' ;;
      esac
    done
  } >"$dir/CMakeLists.txt"
  cmake -S "$dir" -B "$dir/build" 2>/dev/null | sed -n 's/^-- FOUND //p' || true
}

# A program built with each sanitizer set the Makefile uses, and a libFuzzer target.
sanitizers_link() {
  local src="$scratch/san.cpp"
  printf '%s\n' '#include <cstddef>' '#include <cstdint>' \
    'extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t*, std::size_t) { return 0; }' >"$src"
  clang++ -fsanitize=fuzzer,address,undefined "$src" -o "$scratch/fuzz" >/dev/null 2>&1 &&
    printf '%s\n' 'int main() { return 0; }' >"$scratch/tsan.cpp" &&
    clang++ -fsanitize=thread "$scratch/tsan.cpp" -o "$scratch/tsan" >/dev/null 2>&1
}

missing=()
[[ -n "${want[cxx]:-}" ]] && { have c++ || have g++ || have clang++ || missing+=(cxx); }
[[ -n "${want[cmake]:-}" ]] && { cmake_new_enough || missing+=(cmake); }
[[ -n "${want[make]:-}" ]] && { have make || missing+=(make); }
[[ -n "${want[clang]:-}" ]] && { have clang++ || missing+=(clang); }
[[ -n "${want[pkgconfig]:-}" ]] && { have pkg-config || missing+=(pkgconfig); }
[[ -n "${want[doxygen]:-}" ]] && { have doxygen || missing+=(doxygen); }
[[ -n "${want[valgrind]:-}" ]] && { have valgrind || missing+=(valgrind); }
if [[ -n "${want[sanitizers]:-}" ]]; then
  # Without clang++ they cannot be checked; Debian installs them apart from clang.
  { have clang++ && sanitizers_link; } || missing+=(sanitizers)
fi
libraries=()
for i in eigen json catch2 benchmark openblas; do [[ -n "${want[$i]:-}" ]] && libraries+=("$i"); done
if ((${#libraries[@]} > 0)) && cmake_new_enough && { have c++ || have g++ || have clang++; }; then
  found=" $(probe_libraries "${libraries[@]}" | tr '\n' ' ') "
  for i in "${libraries[@]}"; do [[ "$found" == *" $i "* ]] || missing+=("$i"); done
else
  missing+=("${libraries[@]}")  # unknowable without cmake and a compiler: install them
fi

if ((${#missing[@]} == 0)); then
  exit 0
fi

# Debian names the sanitizer runtimes after clang's major version (libclang-rt-14-dev).
clang_major="$(clang++ --version 2>/dev/null | sed -n '1s/.*clang version \([0-9][0-9]*\).*/\1/p')"
apt[sanitizers]="libclang-rt-${clang_major:-14}-dev"

names_for() {  # names_for <assoc array name>: the packages of the missing items there
  local -n map="$1"
  local i out=()
  for i in "${missing[@]}"; do
    [[ "${map[$i]}" != - && " ${out[*]} " != *" ${map[$i]} "* ]] && out+=("${map[$i]}")
  done
  echo "${out[*]}"
}

if have apt-get && ((EUID == 0)); then
  packages="$(names_for apt)"
  # Not needed, but the Makefile uses them when present: ninja (finer parallelism), ccache.
  have ninja || packages+=" ninja-build"
  have ccache || packages+=" ccache"
  echo "install-deps.sh: installing $packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # shellcheck disable=SC2086  # a list of package names
  apt-get install -y -q --no-install-recommends $packages
  exit 0
fi

echo "install-deps.sh: missing:" >&2
for i in "${missing[@]}"; do echo "  - ${label[$i]}" >&2; done
if have apt-get; then
  echo "Install them as root with:  apt-get update && apt-get install -y $(names_for apt)" >&2
elif have dnf; then
  echo "Install them with:  sudo dnf install -y $(names_for dnf)" >&2
elif have pacman; then
  echo "Install them with:  sudo pacman -S --needed $(names_for pacman)" >&2
elif have brew; then
  echo "Install them with:  brew install $(names_for brew)" >&2
else
  echo "Install them with your system's package manager (README.md, \"Other systems\")." >&2
fi
if [[ " ${missing[*]} " == *" catch2 "* ]]; then
  echo "The tests need Catch2 v2 (2.13); where the system ships only v3, build v2.13.10 from" \
       "its sources with CMake and add its prefix to CMAKE_PREFIX_PATH." >&2
fi
echo "(make ... SKIP_DEPS=1 skips this check.)" >&2
exit 1
