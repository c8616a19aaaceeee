// SPDX-License-Identifier: MIT
// libFuzzer target: the conformance runner's case loader, attend::conformance::run_case_bytes.
//
// run_case_bytes must never crash and never throw, whatever the bytes: a malformed case is
// a FAIL, an unknown module or option UNSUPPORTED. A crash, an assertion, an out-of-bounds
// access, undefined behaviour, an escaping exception, a huge allocation or a case that runs
// for seconds is a finding. Build: ATTEND_FUZZ=ON with clang++ (see docs/reliability.md).
#include <cstddef>
#include <cstdint>
#include <vector>

#include "../conformance/runner.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using attend::conformance::CaseResult;
  const CaseResult r =
      attend::conformance::run_case_bytes(std::vector<std::uint8_t>(data, data + size), "fuzz");
  // A verdict is always one of the three, and only PASS may have an empty reason.
  if (r.status != CaseResult::Status::pass && r.detail.empty()) __builtin_trap();
  return 0;
}
