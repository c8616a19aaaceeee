// SPDX-License-Identifier: MIT
// Which attention implementation runs: the reference or the fused kernel, and which tile
// code (instruction-set variant) the fused kernel uses; process-wide overrides for tests.
#pragma once

#include "attend/attention/fused_avx2.hpp"
#include "attend/core/errors.hpp"

#include <atomic>
#include <string>
#include <vector>

namespace attend {

/// Where the library chooses between implementations of attention (multi-head attention
/// without weights, the transformer layers), which one it takes. `automatic` is the
/// library's choice (the fused kernel wherever no [L, S] weights are needed); `reference`
/// and `fused` force one wherever both are possible (a call that must return the weights
/// or fill a training cache always runs the reference).
enum class AttentionPath { automatic, reference, fused };

/// The tile code of the fused attention kernel. `automatic` takes the fastest variant the
/// CPU runs (AVX2/FMA micro-kernels for float where the CPU has them, else the portable
/// Eigen-packet kernels); the others force one variant. Double always runs `portable`.
enum class FusedKernel { automatic, portable, avx2 };

/// A short name for messages and test output: "automatic", "portable", "avx2".
inline const char* fused_kernel_name(FusedKernel k) noexcept {
  switch (k) {
    case FusedKernel::portable: return "portable";
    case FusedKernel::avx2: return "avx2";
    default: return "automatic";
  }
}

/// A short name: "automatic", "reference", "fused".
inline const char* attention_path_name(AttentionPath p) noexcept {
  switch (p) {
    case AttentionPath::reference: return "reference";
    case AttentionPath::fused: return "fused";
    default: return "automatic";
  }
}

/// True when this build and this CPU can run the variant (`automatic` and `portable`
/// always can).
inline bool fused_kernel_supported(FusedKernel k) noexcept {
  if (k != FusedKernel::avx2) return true;
#if ATTEND_FUSED_AVX2
  return detail::cpu_has_avx2_fma();
#else
  return false;
#endif
}

/// Every explicit variant this build and CPU can run, slowest first ("portable", then
/// "avx2" where supported): what tests and the conformance runner loop over.
inline std::vector<FusedKernel> fused_kernels_supported() {
  std::vector<FusedKernel> out{FusedKernel::portable};
  if (fused_kernel_supported(FusedKernel::avx2)) out.push_back(FusedKernel::avx2);
  return out;
}

namespace detail {
inline std::atomic<AttentionPath>& attention_path_setting() noexcept {
  static std::atomic<AttentionPath> path{AttentionPath::automatic};
  return path;
}
inline std::atomic<FusedKernel>& fused_kernel_setting() noexcept {
  static std::atomic<FusedKernel> kernel{FusedKernel::automatic};
  return kernel;
}
}  // namespace detail

/// The process-wide attention path (default `automatic`).
inline AttentionPath attention_path() noexcept { return detail::attention_path_setting().load(); }

/// Sets the process-wide attention path. Meant for tests and benchmarks: change it while no
/// attention runs on another thread.
inline void set_attention_path(AttentionPath p) noexcept { detail::attention_path_setting() = p; }

/// The process-wide fused-kernel variant (default `automatic`).
inline FusedKernel fused_kernel() noexcept { return detail::fused_kernel_setting().load(); }

/// Forces a fused-kernel variant for the whole process (tests, benchmarks).
/// \throws value_error when the CPU or this build cannot run it.
inline void set_fused_kernel(FusedKernel k) {
  if (!fused_kernel_supported(k)) {
    throw value_error(std::string("set_fused_kernel: kernel is ") + fused_kernel_name(k) +
                      ", which this CPU or build does not support");
  }
  detail::fused_kernel_setting() = k;
}

/// Sets the attention path and fused-kernel variant for a scope and restores the previous
/// ones when it ends (as PyTorch's `sdpa_kernel` context manager).
class ScopedAttentionPath {
 public:
  explicit ScopedAttentionPath(AttentionPath path, FusedKernel kernel = FusedKernel::automatic)
      : path_(attention_path()), kernel_(fused_kernel()) {
    set_fused_kernel(kernel);
    set_attention_path(path);
  }
  ~ScopedAttentionPath() {
    set_attention_path(path_);
    detail::fused_kernel_setting() = kernel_;
  }
  ScopedAttentionPath(const ScopedAttentionPath&) = delete;
  ScopedAttentionPath& operator=(const ScopedAttentionPath&) = delete;

 private:
  AttentionPath path_;
  FusedKernel kernel_;
};

namespace detail {

/// The variant a fused call runs: an explicit `requested` wins, then the process-wide
/// setting, then the CPU's best. Double (`is_float` false) is always portable.
inline FusedKernel resolve_fused_kernel(FusedKernel requested, bool is_float) noexcept {
  if (!is_float) return FusedKernel::portable;
  FusedKernel k = requested != FusedKernel::automatic ? requested : fused_kernel();
  if (k == FusedKernel::automatic) {
    k = fused_kernel_supported(FusedKernel::avx2) ? FusedKernel::avx2 : FusedKernel::portable;
  }
  return k;
}

/// Whether a caller that could take either implementation runs the fused kernel.
inline bool use_fused_attention() noexcept { return attention_path() != AttentionPath::reference; }

}  // namespace detail

}  // namespace attend
