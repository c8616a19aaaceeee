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
    check_range(L, first_position, "LearnedPositionalEmbedding::forward");
    return weight.middleRows(first_position, L);
  }

  /// Gradient of `forward(L, first_position)`: row t of `d_out` is added to row
  /// first_position + t of `d_weight` (accumulated; an empty `d_weight` is zeroed first).
  /// A caller that added the positions to a batch sums its rows' gradients per position
  /// first (the batch shares one table).
  /// \param d_out [L, d_model] gradient of the forward's output
  /// \param first_position as for forward \param d_weight [max_len, d_model] or empty
  /// \throws shape_error when d_out has not d_model columns or d_weight is neither empty
  ///   nor [max_len, d_model]; index_error as forward.
  void backward(const MatrixCRef<Scalar>& d_out, Index first_position,
                Matrix<Scalar>& d_weight) const {
    const std::string who = "LearnedPositionalEmbedding::backward";
    if (d_out.cols() != d_model()) {
      throw shape_error(who + ": d_out is " + detail::matrix_shape(d_out) + ", expected [L, " +
                        std::to_string(d_model()) + "] (d_model)");
    }
    check_range(d_out.rows(), first_position, who);
    if (d_weight.size() != 0 && (d_weight.rows() != max_len() || d_weight.cols() != d_model())) {
      throw shape_error(who + ": d_weight is " + detail::matrix_shape(d_weight) + ", expected [" +
                        std::to_string(max_len()) + ", " + std::to_string(d_model()) +
                        "] (max_len, d_model)");
    }
    if (d_weight.size() == 0) d_weight = Matrix<Scalar>::Zero(max_len(), d_model());
    d_weight.middleRows(first_position, d_out.rows()) += d_out;
  }

 private:
  // Throws index_error unless 0 <= first_position and first_position + L <= max_len.
  void check_range(Index L, Index first_position, const std::string& who) const {
    if (L < 0 || first_position < 0) {
      throw index_error(who + ": L is " + std::to_string(L) + " and first_position is " +
                        std::to_string(first_position) + ", expected both >= 0");
    }
    // first_position > max_len - L, not first_position + L > max_len: the sum may overflow,
    // so the message prints it as an unsigned sum.
    if (first_position > max_len() - L) {
      throw index_error(who + ": positions [" + std::to_string(first_position) + ", " +
                        std::to_string(static_cast<unsigned long long>(first_position) +
                                       static_cast<unsigned long long>(L)) +
                        ") are outside [0, " + std::to_string(max_len()) + ") (max_len)");
    }
  }
};

}  // namespace attend
