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
      throw shape_error("Embedding::from_state_dict: '" + name + "' is " + detail::shape_string(s) +
                        ", expected [V, D]");
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

  void gather(const std::int64_t* ids, Index n, Scalar* out) const {
    const Index V = num_embeddings();
    const Index D = embedding_dim();
    for (Index t = 0; t < n; ++t) {  // check everything before writing anything
      if (ids[t] < 0 || ids[t] >= V) {
        throw index_error("Embedding::forward: token id " + std::to_string(ids[t]) +
                          " at position " + std::to_string(t) + " is out of range [0, " +
                          std::to_string(V) + ")");
      }
    }
    const Scalar factor = scale_by_sqrt_d ? static_cast<Scalar>(std::sqrt(double(D))) : Scalar(1);
    MatrixMap<Scalar> dst(out, n, D);
    for (Index t = 0; t < n; ++t) dst.row(t) = weight.row(static_cast<Index>(ids[t])) * factor;
  }
};

}  // namespace attend
