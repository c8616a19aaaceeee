# SPDX-License-Identifier: MIT
# attend's developer entry points; CMake does the work, this file only names the steps.
#
#   make test          install deps, build the API reference (make docs: Doxygen warnings fail
#                      it), build and run the whole suite with g++, then with
#                      clang++ under ASan+UBSan (plus short fuzz runs), then the threaded
#                      tests under TSan (docs/reliability.md)
#   make fuzz          fuzz each libFuzzer target for FUZZ_SECONDS (default 600)
#   make valgrind      the examples and the conformance runner under valgrind memcheck
#   make demo          build and run the tour and a one-minute bottleneck experiment
#   make bench         Release build of attend-bench (and attend-bench-O2), runs it, results in
#                      build/bench.json; FILTER=<regex> runs only the matching benchmarks
#                      (--benchmark_filter), REPS=<n> repeats each n times and adds
#                      mean/median/stddev rows (--benchmark_repetitions), e.g.
#                      make bench FILTER=Fused REPS=3; names say their arguments: BM_SdpaFused/L:1024
#   make docs          API reference from the header comments (Doxygen) into build/docs/html
#   make umbrella      regenerate include/attend/attend.hpp after adding a header
#   make format        clang-format every source in place; make format-check only reports
#   make clean         remove build/
#
# Each target first checks (scripts/install-deps.sh) that what it needs is installed, and
# installs it as root on Debian; SKIP_DEPS=1 skips the check (make demo SKIP_DEPS=1).

BUILD ?= build
JOBS  ?= 2
CMAKE ?= cmake
CTEST ?= ctest
# Ninja when installed (finer-grained parallelism), else Make; read only for a new build dir.
GENERATOR ?= $(if $(shell command -v ninja 2>/dev/null),Ninja,Unix Makefiles)

EXAMPLES := $(basename $(notdir $(wildcard examples/*.cpp)))
SOURCES   = $(shell find include tests examples bench \( -name '*.hpp' -o -name '*.cpp' \) \
                  -not -path 'tests/data/*')

.PHONY: all deps test test-gcc test-clang test-asan test-tsan fuzz valgrind demo bench docs \
        umbrella format format-check clean

all: test

# What the dependency check looks for follows the goals on the command line (demo: compiler,
# cmake, Eigen, nlohmann-json; test: everything; bench: + Google Benchmark, OpenBLAS; ...).
DEPS_FOR ?= $(or $(filter demo test bench docs valgrind fuzz,$(MAKECMDGOALS)),test)
deps:
	$(if $(filter-out 0,$(SKIP_DEPS)),@echo "deps: check skipped (SKIP_DEPS=$(SKIP_DEPS))",bash scripts/install-deps.sh $(DEPS_FOR))

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
	$(MAKE) --no-print-directory docs SKIP_DEPS=1
	$(MAKE) --no-print-directory test-gcc
	$(MAKE) --no-print-directory test-asan
	$(MAKE) --no-print-directory test-tsan

test-gcc:
	$(call build_and_test,gcc,g++)

# The g++ pass already compiled every header alone with both compilers and built the
# packaging consumers; the clang++ pass builds and runs everything else.
test-clang:
	$(call build_and_test,clang,clang++,-E '^(header-check|package)\.')

# --- hardening (docs/reliability.md) --------------------------------------------------

# Sanitizer reports: a stack per UBSan finding; every finding fails the run.
SANITIZER_ENV = ASAN_OPTIONS=detect_leaks=1:strict_string_checks=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
FUZZ_SECONDS ?= 600

# The clang++ pass of `make test`: every program built with clang++ at -Werror, tests and
# examples under AddressSanitizer + UndefinedBehaviorSanitizer (-O1); runs the unit tests,
# the conformance runner, the examples and each fuzz target for 20 s (ATTEND_FUZZ_SECONDS).
test-asan:
	$(call configure,asan,clang++) -DATTEND_SANITIZE=address,undefined -DATTEND_FUZZ=ON
	$(CMAKE) --build $(BUILD)/asan -j $(JOBS) --target attend-tests attend-conformance \
	  attend-examples attend-fuzz-safetensors attend-fuzz-conformance
	$(SANITIZER_ENV) $(CTEST) --test-dir $(BUILD)/asan --output-on-failure -j $(JOBS) \
	  -R '^(unit\.|conformance$$|example\.|fuzz\.)'

# The multi-threaded tests ([threads]) under ThreadSanitizer, in their own small binary.
test-tsan:
	$(call configure,tsan,clang++) -DATTEND_SANITIZE=thread
	$(CMAKE) --build $(BUILD)/tsan -j $(JOBS) --target attend-thread-tests
	$(CTEST) --test-dir $(BUILD)/tsan --output-on-failure -R '^threads\.'

# A longer fuzzing session per target (one process each, -jobs=1), in the asan build.
fuzz: deps
	$(call configure,asan,clang++) -DATTEND_SANITIZE=address,undefined -DATTEND_FUZZ=ON
	$(CMAKE) --build $(BUILD)/asan -j $(JOBS) --target attend-fuzz-safetensors attend-fuzz-conformance
	@for t in safetensors conformance; do echo "== fuzz $$t for $(FUZZ_SECONDS) s"; \
	  $(SANITIZER_ENV) $(BUILD)/asan/bin/attend-fuzz-$$t -max_total_time=$(FUZZ_SECONDS) \
	    -rss_limit_mb=2048 -timeout=10 -jobs=1 -print_final_stats=1 -dict=tests/fuzz/$$t.dict \
	    -artifact_prefix=$(BUILD)/asan/fuzz/$$t/artifacts/ \
	    $(BUILD)/asan/fuzz/$$t/corpus tests/fuzz/$$t || exit 1; done

# Examples and the conformance runner (over tests/data) under memcheck, from the g++ build.
# Not part of `make test`: it takes minutes (docs/reliability.md has the figures).
VALGRIND = valgrind --tool=memcheck --error-exitcode=99 --leak-check=full \
  --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect -q \
  --suppressions=$(CURDIR)/tests/valgrind.supp
valgrind: deps
	$(call configure,gcc,g++)
	$(CMAKE) --build $(BUILD)/gcc -j $(JOBS) --target attend-examples attend-conformance
	mkdir -p $(BUILD)/valgrind
	@cd $(BUILD)/valgrind && for example in $(EXAMPLES); do echo "== valgrind $$example"; \
	  $(VALGRIND) ../gcc/bin/$$example $$(cat $(CURDIR)/examples/$$example.args 2>/dev/null) \
	    > $$example.stdout || exit 1; done
	@echo "== valgrind attend-conformance tests/data"
	@$(VALGRIND) $(BUILD)/gcc/bin/attend-conformance tests/data > $(BUILD)/valgrind/conformance.stdout
	@tail -n 1 $(BUILD)/valgrind/conformance.stdout
	@echo "valgrind: no memcheck errors (outputs in $(BUILD)/valgrind)"

# Builds only the two programs it runs (tour, bottleneck_demo; about 3 minutes in all on 2
# cores from a clean build dir, build included). bottleneck --full is the longer experiment.
demo: deps
	$(call configure,gcc,g++)
	$(CMAKE) --build $(BUILD)/gcc -j $(JOBS) --target tour bottleneck_demo
	mkdir -p $(BUILD)/demo
	@cd $(BUILD)/demo && ../gcc/bin/tour
	@echo; echo "== bottleneck_demo: the context-vector bottleneck, trained here (about a minute;"
	@echo "   docs/bottleneck.md has the longer experiment: bottleneck --full)"
	@cd $(BUILD)/demo && ../gcc/bin/bottleneck_demo
	@echo "(files the examples wrote are in $(BUILD)/demo)"

bench: deps
	$(call configure,release,g++) -DCMAKE_BUILD_TYPE=Release \
	  -DATTEND_BUILD_TESTS=OFF -DATTEND_BUILD_EXAMPLES=OFF -DATTEND_NATIVE=ON
	$(CMAKE) --build $(BUILD)/release -j $(JOBS) --target attend-bench attend-bench-O2
	@echo "note: a '***WARNING*** Library was built as DEBUG' line below comes from how the" \
	  "Google Benchmark library itself was compiled (Debian's libbenchmark keeps its asserts)," \
	  "not from attend: attend-bench is built -O3 -DNDEBUG and the timed loops are its own code."
	$(BUILD)/release/bin/attend-bench --benchmark_out=$(BUILD)/bench.json \
	  --benchmark_out_format=json $(if $(FILTER),'--benchmark_filter=$(FILTER)') \
	  $(if $(REPS),--benchmark_repetitions=$(REPS))

# The API reference: Doxygen over include/ (Doxyfile), warnings are errors; about 2 s, so
# `make test` runs it first.
VERSION = $(shell sed -n 's/^\#define ATTEND_VERSION_STRING "\(.*\)"/\1/p' include/attend/version.hpp)
docs: deps
	mkdir -p $(BUILD)/docs
	( cat Doxyfile; echo "OUTPUT_DIRECTORY = $(BUILD)/docs"; echo "PROJECT_NUMBER = $(VERSION)" ) \
	  | doxygen -
	@echo "API reference: $(BUILD)/docs/html/index.html"

umbrella:
	bash scripts/gen-umbrella.sh

format:
	clang-format -i --style=file $(SOURCES)

format-check:
	clang-format --dry-run -Werror --style=file $(SOURCES)

clean:
	rm -rf $(BUILD)
