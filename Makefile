# SPDX-License-Identifier: MIT
# attend's developer entry points; CMake does the work, this file only names the steps.
#
#   make test          install deps, build and run the whole suite with g++, then clang++
#   make demo          build the examples and run the tour (or every example)
#   make bench         Release build of attend-bench, results in build/bench.json
#   make umbrella      regenerate include/attend/attend.hpp after adding a header
#   make format        clang-format every source in place; make format-check only reports
#   make clean         remove build/

BUILD ?= build
JOBS  ?= 2
CMAKE ?= cmake
CTEST ?= ctest
# Ninja when installed (finer-grained parallelism), else Make; read only for a new build dir.
GENERATOR ?= $(if $(shell command -v ninja 2>/dev/null),Ninja,Unix Makefiles)

EXAMPLES := $(basename $(notdir $(wildcard examples/*.cpp)))
SOURCES   = $(shell find include tests examples bench \( -name '*.hpp' -o -name '*.cpp' \) \
                  -not -path 'tests/data/*')

.PHONY: all deps test test-gcc test-clang demo bench umbrella format format-check clean

all: test

deps:
	bash scripts/install-deps.sh

# CXX and the generator are read only when the build dir is new.
configure = CXX=$(2) $(CMAKE) -S . -B $(BUILD)/$(1) \
  $(if $(wildcard $(BUILD)/$(1)/CMakeCache.txt),,-G "$(GENERATOR)")

# Configure, build everything, run ctest. $(1): build dir name, $(2): compiler,
# $(3): extra ctest arguments.
define build_and_test
	$(call configure,$(1),$(2))
	$(CMAKE) --build $(BUILD)/$(1) -j $(JOBS)
	$(CTEST) --test-dir $(BUILD)/$(1) --output-on-failure -j $(JOBS) $(3)
endef

test: deps
	$(MAKE) --no-print-directory test-gcc
	$(MAKE) --no-print-directory test-clang

test-gcc:
	$(call build_and_test,gcc,g++)

# The g++ pass already compiled every header alone with both compilers and built the
# packaging consumers; the clang++ pass builds and runs everything else.
test-clang:
	$(call build_and_test,clang,clang++,-E '^(header-check|package)\.')

demo: deps
	$(call configure,gcc,g++)
	$(CMAKE) --build $(BUILD)/gcc -j $(JOBS) --target attend-examples
	mkdir -p $(BUILD)/demo
	@cd $(BUILD)/demo && if [ -x ../gcc/bin/tour ]; then ../gcc/bin/tour; else \
	  for example in $(EXAMPLES); do echo "== $$example"; ../gcc/bin/$$example || exit 1; done; fi
	@echo "(files the examples wrote are in $(BUILD)/demo)"

bench: deps
	$(call configure,release,g++) -DCMAKE_BUILD_TYPE=Release \
	  -DATTEND_BUILD_TESTS=OFF -DATTEND_BUILD_EXAMPLES=OFF -DATTEND_NATIVE=ON
	$(CMAKE) --build $(BUILD)/release -j $(JOBS) --target attend-bench
	$(BUILD)/release/bin/attend-bench --benchmark_out=$(BUILD)/bench.json \
	  --benchmark_out_format=json

umbrella:
	bash scripts/gen-umbrella.sh

format:
	clang-format -i --style=file $(SOURCES)

format-check:
	clang-format --dry-run -Werror --style=file $(SOURCES)

clean:
	rm -rf $(BUILD)
