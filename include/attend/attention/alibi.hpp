// SPDX-License-Identifier: MIT
// ALiBi: per-head linear distance penalties added to attention scores, as a Mask.
#pragma once

#include "attend/attention/mask.hpp"
#include "attend/core/errors.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace attend {

/// The ALiBi head slopes: for H a power of two, `m_h = 2^(-8 (h + 1) / H)` (H = 8 gives
/// 1/2, 1/4, ..., 1/256); otherwise the slopes of the largest power of two n < H, followed by
/// every other slope of 2n, as the paper's reference code does.
/// \returns [H] slopes in (0, 1)
/// \throws value_error when num_heads is not positive.
/// \note Press, Smith & Lewis 2022, section 3.
inline std::vector<double> alibi_slopes(Index num_heads) {
  if (num_heads <= 0) {
    throw value_error("alibi_slopes: num_heads is " + std::to_string(num_heads) +
                      ", expected a positive count");
  }
  const auto power_of_two = [](Index n) {
    std::vector<double> s(static_cast<std::size_t>(n));
    for (Index h = 0; h < n; ++h) {
      s[static_cast<std::size_t>(h)] =
          std::pow(2.0, -8.0 * static_cast<double>(h + 1) / static_cast<double>(n));
    }
    return s;
  };
  Index n = 1;
  while (n * 2 <= num_heads) n *= 2;
  std::vector<double> slopes = power_of_two(n);
  if (n < num_heads) {
    const std::vector<double> extra = power_of_two(2 * n);
    for (Index i = 0; i < num_heads - n; ++i)
      slopes.push_back(extra[static_cast<std::size_t>(2 * i)]);
  }
  return slopes;
}

/// ALiBi as an attention mask: the additive bias `-m_h * |(i + offset) - j|` for query i,
/// key j and head h; with `causal`, keys j > i + offset are blocked and the bias is
/// `-m_h * (i + offset - j)` (the paper's decoder setting). Pass it as `attn_mask` of
/// MultiheadAttention (it broadcasts over the batch), combined with others by `&`.
/// \param num_heads H \param L queries \param S keys
/// \param offset absolute position of query 0 minus that of key 0 (the cache length when
///        decoding with a KV cache; 0 otherwise)
/// \returns a Mask with bias [1, H, L, S]
/// \throws value_error when a size is negative or num_heads is not positive.
/// \note Press, Smith & Lewis 2022; the symmetric |i - j| form is the usual encoder variant.
/// \sa alibi_slopes
inline Mask alibi_mask(Index num_heads, Index L, Index S, bool causal = true, Index offset = 0) {
  if (L < 0 || S < 0) {
    throw value_error("alibi_mask: L is " + std::to_string(L) + " and S is " + std::to_string(S) +
                      ", expected both >= 0");
  }
  const std::vector<double> m = alibi_slopes(num_heads);
  Tensor<double> bias({1, num_heads, L, S});  // [1, H, L, S]
  for (Index h = 0; h < num_heads; ++h) {
    for (Index i = 0; i < L; ++i) {
      for (Index j = 0; j < S; ++j) {
        // In double: i + offset may not fit an Index (exact below 2^53).
        const double distance =
            static_cast<double>(i) + static_cast<double>(offset) - static_cast<double>(j);
        bias(Index(0), h, i, j) = causal && distance < 0
                                      ? -std::numeric_limits<double>::infinity()
                                      : -m[static_cast<std::size_t>(h)] * std::abs(distance);
      }
    }
  }
  return Mask::additive(bias);
}

}  // namespace attend
