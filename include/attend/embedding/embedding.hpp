// SPDX-License-Identifier: MIT
// Token embedding lookup with nn.Embedding semantics (padding_idx, pretrained weights).
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/random.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/io/state_dict.hpp"

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace attend {

/// A lookup table of `V` vectors of width `D`: `forward(ids)[t] = weight[ids[t]]`.
///
/// Follows torch.nn.Embedding: `weight` is [V, D] (state-dict name `weight`), initialised
/// N(0, 1); the `padding_idx` row starts at zero and receives no gradient, but the forward
/// returns whatever that row holds. A negative padding_idx counts from the end.
/// `scale_by_sqrt_d` multiplies the output by sqrt(D), as the transformer paper does
/// (section 3.4); it is off by default, as in PyTorch.
template <typename Scalar>
class Embedding {
  static_assert(is_supported_scalar_v<Scalar>, "attend::Embedding: Scalar must be float or double");

 public:
  Matrix<Scalar> weight;               // [V, D]
  std::optional<Index> padding_idx;    // in [0, V) after normalisation
  bool scale_by_sqrt_d = false;

  /// A table of `num_embeddings` x `embedding_dim`, N(0, 1) from `seed`.
  /// \throws value_error when a size is not positive or padding_idx is out of range.
  Embedding(Index num_embeddings, Index embedding_dim, std::optional<Index> padding = std::nullopt,
            std::uint64_t seed = 0) {
    if (num_embeddings <= 0 || embedding_dim <= 0) {
      throw value_error("Embedding: num_embeddings and embedding_dim must be positive, got " +
                        std::to_string(num_embeddings) + " and " + std::to_string(embedding_dim));
    }
    weight.resize(num_embeddings, embedding_dim);
    Rng rng(seed);
    fill_normal(weight, rng);
    padding_idx = normalize_padding(padding, num_embeddings);
    if (padding_idx) weight.row(*padding_idx).setZero();
  }

  /// Wraps pretrained weights `[V, D]` unchanged (torch.nn.Embedding.from_pretrained; the
  /// padding row is not zeroed).
  /// \throws value_error when `w` is empty, holds NaN/Inf, or padding_idx is out of range.
  static Embedding from_pretrained(Matrix<Scalar> w, std::optional<Index> padding = std::nullopt) {
    if (w.rows() == 0 || w.cols() == 0) {
      throw value_error("Embedding::from_pretrained: weight is " + detail::matrix_shape(w) +
                        ", expected [V, D] with V, D > 0");
    }
    if (!w.allFinite()) {
      throw value_error("Embedding::from_pretrained: weight has a non-finite value");
    }
    Embedding e;
    e.padding_idx = normalize_padding(padding, w.rows());
    e.weight = std::move(w);
    return e;
  }

  /// Loads `prefix + "weight"` [V, D] from a PyTorch state dict.
  /// \throws index_error when missing; value_error on NaN/Inf or a bad padding_idx.
  static Embedding from_state_dict(const SafeTensors& st, const std::string& prefix = "",
                                   std::optional<Index> padding = std::nullopt) {
    const std::string name = prefix + "weight";
    if (!st.contains(name)) {
      throw index_error("Embedding::from_state_dict: no parameter named '" + name + "' in " +
                        st.source());
    }
    const Shape& s = st.shape(name);
    if (s.size() != 2) {
      throw shape_error("Embedding::from_state_dict: '" + name + "' in " + st.source() + " is " +
                        detail::shape_string(s) + ", expected [V, D]");
    }
    return from_pretrained(load_matrix<Scalar>(st, name, s[0], s[1]), padding);
  }

  Index num_embeddings() const noexcept { return weight.rows(); }
  Index embedding_dim() const noexcept { return weight.cols(); }

  /// Looks up a sequence of ids. \param ids [L] \returns [L, D]
  /// \throws index_error naming the first id outside [0, V) and its position.
  Matrix<Scalar> forward(const std::vector<std::int64_t>& ids) const {
    Matrix<Scalar> out(static_cast<Index>(ids.size()), embedding_dim());
    gather(ids.data(), static_cast<Index>(ids.size()), out.data());
    return out;
  }

  /// Looks up a tensor of ids of any shape. \param ids [...] \returns [..., D]
  /// \throws index_error naming the first out-of-range id and its flat position.
  Tensor<Scalar> forward(const Tensor<std::int64_t>& ids) const {
    Shape s = ids.shape();
    s.push_back(embedding_dim());
    Tensor<Scalar> out(s);
    gather(ids.data(), ids.size(), out.data());
    return out;
  }

  /// Gradient of forward: `d_weight[ids[t]] += d_out[t]` (times sqrt(D) with
  /// scale_by_sqrt_d) for every position t, repeated ids adding up; the padding_idx row gets
  /// no gradient. Ids are discrete, so there is no input gradient.
  /// \param ids [L] the forward's ids \param d_out [L, D] upstream gradient
  /// \param d_weight [V, D], accumulated (+=); an empty matrix is first set to zeros
  /// \throws shape_error when d_out is not [L, D] or d_weight not [V, D]; index_error on an
  ///   id outside [0, V) (nothing is written then).
  /// \note torch.nn.Embedding's backward (dense, scale_grad_by_freq false).
  void backward(const std::vector<std::int64_t>& ids, const MatrixCRef<Scalar>& d_out,
                Matrix<Scalar>& d_weight) const {
    const Index n = static_cast<Index>(ids.size());
    if (d_out.rows() != n || d_out.cols() != embedding_dim()) {
      throw shape_error("Embedding::backward: d_out is " + detail::matrix_shape(d_out) +
                        ", expected " + detail::shape_string({n, embedding_dim()}) +
                        " ([L, D] for " + std::to_string(n) + " ids)");
    }
    scatter(ids.data(), n, d_out, d_weight);
  }

  /// Gradient of forward for ids of any shape. \param ids [...] \param d_out [..., D]
  /// \param d_weight [V, D] (+=; empty: zeroed first)
  /// \throws shape_error when d_out is not ids' shape plus D or d_weight not [V, D];
  ///   index_error on an id outside [0, V).
  void backward(const Tensor<std::int64_t>& ids, const Tensor<Scalar>& d_out,
                Matrix<Scalar>& d_weight) const {
    Shape want = ids.shape();
    want.push_back(embedding_dim());
    if (d_out.shape() != want) {
      throw shape_error("Embedding::backward: d_out is " + detail::shape_string(d_out.shape()) +
                        ", expected " + detail::shape_string(want));
    }
    scatter(ids.data(), ids.size(), d_out.as_matrix(), d_weight);
  }

 private:
  Embedding() = default;

  static std::optional<Index> normalize_padding(std::optional<Index> p, Index V) {
    if (!p) return std::nullopt;
    const Index q = *p < 0 ? *p + V : *p;
    if (q < 0 || q >= V) {
      throw value_error("Embedding: padding_idx is " + std::to_string(*p) + ", expected in [" +
                        std::to_string(-V) + ", " + std::to_string(V) + ")");
    }
    return q;
  }

  void check_ids(const std::int64_t* ids, Index n, const char* who) const {
    const Index V = num_embeddings();
    for (Index t = 0; t < n; ++t) {  // check everything before writing anything
      if (ids[t] < 0 || ids[t] >= V) {
        throw index_error(std::string(who) + ": token id " + std::to_string(ids[t]) +
                          " at position " + std::to_string(t) + " is out of range [0, " +
                          std::to_string(V) + ")");
      }
    }
  }

  Scalar output_factor() const {
    return scale_by_sqrt_d ? static_cast<Scalar>(std::sqrt(double(embedding_dim()))) : Scalar(1);
  }

  void gather(const std::int64_t* ids, Index n, Scalar* out) const {
    check_ids(ids, n, "Embedding::forward");
    const Scalar factor = output_factor();
    MatrixMap<Scalar> dst(out, n, embedding_dim());
    for (Index t = 0; t < n; ++t) dst.row(t) = weight.row(static_cast<Index>(ids[t])) * factor;
  }

  /// d_weight[ids[t]] += dy[t] * factor, skipping padding_idx. \param dy [n, D]
  void scatter(const std::int64_t* ids, Index n, const MatrixCRef<Scalar>& dy,
               Matrix<Scalar>& d_weight) const {
    if (d_weight.size() == 0) d_weight = Matrix<Scalar>::Zero(num_embeddings(), embedding_dim());
    if (d_weight.rows() != num_embeddings() || d_weight.cols() != embedding_dim()) {
      throw shape_error("Embedding::backward: d_weight is " + detail::matrix_shape(d_weight) +
                        ", expected " + detail::matrix_shape(weight));
    }
    check_ids(ids, n, "Embedding::backward");
    const Scalar factor = output_factor();
    // forward: out[t] = weight[ids[t]] * factor
    for (Index t = 0; t < n; ++t) {
      const Index row = static_cast<Index>(ids[t]);
      if (padding_idx && row == *padding_idx) continue;  // the padding row is not trained
      d_weight.row(row) += dy.row(t) * factor;
    }
  }
};

}  // namespace attend
