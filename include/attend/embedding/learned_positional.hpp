// SPDX-License-Identifier: MIT
// Learned absolute position embeddings: one trained vector per position (BERT, GPT-2).
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/random.hpp"
#include "attend/core/types.hpp"
#include "attend/io/safetensors.hpp"
#include "attend/io/state_dict.hpp"

#include <Eigen/Core>

#include <cstdint>
#include <string>
#include <utility>

namespace attend {

/// A table of `max_len` trained position vectors: `forward(L, p0)` is rows p0 .. p0 + L - 1,
/// added to the token embeddings as the sinusoidal table would be.
///
/// `weight` is [max_len, d_model] (an nn.Embedding(max_len, d_model) indexed by position,
/// GPT-2's `wpe.weight`), initialised N(0, 1) as nn.Embedding, or loaded by name.
/// \note Gehring et al. 2017; Devlin et al. 2019 (BERT); Radford et al. 2019 (GPT-2).
/// \sa sinusoidal_positional_encoding, apply_rotary
template <typename Scalar>
class LearnedPositionalEmbedding {
  static_assert(is_supported_scalar_v<Scalar>,
                "attend::LearnedPositionalEmbedding: Scalar must be float or double");

 public:
  Matrix<Scalar> weight;  // [max_len, d_model]

  /// \throws value_error when max_len or d_model is not positive.
  LearnedPositionalEmbedding(Index max_len, Index d_model, std::uint64_t seed = 0) {
    if (max_len <= 0 || d_model <= 0) {
      throw value_error("LearnedPositionalEmbedding: max_len is " + std::to_string(max_len) +
                        " and d_model is " + std::to_string(d_model) + ", expected both positive");
    }
    weight.resize(max_len, d_model);
    Rng rng(seed);
    fill_normal(weight, rng);
  }

  Index max_len() const noexcept { return weight.rows(); }
  Index d_model() const noexcept { return weight.cols(); }

  /// Loads `prefix + "weight"` [max_len, d_model].
  /// \throws index_error when missing; shape_error on a wrong shape; value_error on NaN/Inf.
  void load_state_dict(const SafeTensors& st, const std::string& prefix = "") {
    weight = load_matrix<Scalar>(st, prefix + "weight", max_len(), d_model());
  }

  /// Positions first_position .. first_position + L - 1.
  /// \returns [L, d_model]
  /// \throws index_error when L or first_position is negative, or a position falls outside
  ///   [0, max_len).
  Matrix<Scalar> forward(Index L, Index first_position = 0) const {
    if (L < 0 || first_position < 0) {
      throw index_error("LearnedPositionalEmbedding::forward: L is " + std::to_string(L) +
                        " and first_position is " + std::to_string(first_position) +
                        ", expected both >= 0");
    }
    // first_position > max_len - L, not first_position + L > max_len: the sum may overflow,
    // so the message prints it as an unsigned sum.
    if (first_position > max_len() - L) {
      throw index_error("LearnedPositionalEmbedding::forward: positions [" +
                        std::to_string(first_position) + ", " +
                        std::to_string(static_cast<unsigned long long>(first_position) +
                                       static_cast<unsigned long long>(L)) +
                        ") are outside [0, " + std::to_string(max_len()) + ") (max_len)");
    }
    return weight.middleRows(first_position, L);
  }
};

}  // namespace attend
