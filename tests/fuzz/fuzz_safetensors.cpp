// SPDX-License-Identifier: MIT
// libFuzzer target: attend::SafeTensors::parse on arbitrary bytes, then every accessor.
//
// A malformed file must end in format_error, and a parsed file must decode every tensor
// with every reader type its dtype allows (value_error for the others). Anything else (a
// crash, an out-of-bounds read, undefined behaviour, another exception, a huge allocation)
// is a finding. Build: ATTEND_FUZZ=ON with clang++ (see docs/reliability.md).
#include "attend/core/errors.hpp"
#include "attend/io/safetensors.hpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace {

/// Reads tensor `name` as T; a dtype T cannot read is the documented value_error.
template <typename T>
void read_as(const attend::SafeTensors& st, const std::string& name) {
  try {
    const attend::Tensor<T> t = st.get<T>(name);
    if (t.shape() != st.shape(name)) __builtin_trap();  // get must keep the header's shape
  } catch (const attend::value_error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const attend::SafeTensors st =
        attend::SafeTensors::parse(std::vector<std::uint8_t>(data, data + size), "fuzz");
    for (const std::string& name : st.names()) {
      (void)attend::to_string(st.dtype(name));
      read_as<float>(st, name);
      read_as<double>(st, name);
      read_as<std::int64_t>(st, name);
      read_as<bool>(st, name);
    }
    std::size_t chars = 0;
    for (const auto& kv : st.metadata()) chars += kv.first.size() + kv.second.size();
    if (chars > size) __builtin_trap();  // metadata comes from the file
  } catch (const attend::format_error&) {
    // the documented rejection of a malformed file
  }
  return 0;
}
