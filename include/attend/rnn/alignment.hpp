// SPDX-License-Identifier: MIT
// Alignment models of the RNN encoder-decoder: Bahdanau (additive) and Luong (dot, general,
// concat) attention over encoder states, with key padding masks.
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/finite.hpp"
#include "attend/core/random.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/io/safetensors.hpp"
#include "attend/io/state_dict.hpp"
#include "attend/ops/softmax.hpp"

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>

namespace attend {

/// What an alignment step returns.
template <typename Scalar>
struct AlignmentResult {
  Matrix<Scalar> weights;             // [B, T] alignment a_ij over the T encoder states
  Matrix<Scalar> context;             // [B, Hk] c_i = sum_j a_ij keys_j
  Matrix<Scalar> attentional_hidden;  // [B, Hq] Luong's tanh(Wc [c; q]) or empty
};

/// Luong's score functions (Luong et al. 2015, section 3.1).
enum class LuongScore { dot, general, concat };

namespace detail {

/// Checks query [B, Hq], keys [B, T, Hk] (T >= 1) and key_padding_mask ([B, T] or empty),
/// then that query and keys are finite.
template <typename S>
void check_alignment_args(const MatrixCRef<S>& query, const Tensor<S>& keys, const BoolMatrix& mask,
                          Index Hq, Index Hk, const std::string& who) {
  if (query.cols() != Hq || query.rows() == 0) {
    throw shape_error(who + ": query is " + matrix_shape(query) + ", expected [B, " +
                      std::to_string(Hq) + "] (query_size)");
  }
  const Index B = query.rows();
  if (keys.rank() != 3 || keys.dim(0) != B || keys.dim(1) == 0 || keys.dim(2) != Hk) {
    throw shape_error(who + ": keys is " + shape_string(keys.shape()) + ", expected [" +
                      std::to_string(B) + ", T, " + std::to_string(Hk) + "] (B, T, key_size)");
  }
  if (mask.size() != 0 && (mask.rows() != B || mask.cols() != keys.dim(1))) {
    throw shape_error(who + ": key_padding_mask is " + matrix_shape(mask) + ", expected " +
                      shape_string({B, keys.dim(1)}) + " (B, T)");
  }
  check_finite(query, who, "query");
  check_finite(keys, who, "keys");
}

/// Softmax of one row of scores over keys, masked keys excluded (exactly 0), then the
/// context `weights * keys`. A fully masked row gives zero weights and a zero context.
/// \param scores [1, T] in: scores, out: weights \param keys [T, Hk] \param context [1, Hk]
template <typename S>
void softmax_and_context(MatrixRef<S> scores, const MatrixCRef<S>& keys, const BoolMatrix& mask,
                         Index b, MatrixRef<S> context) {
  if (mask.size() != 0) {
    for (Index j = 0; j < scores.cols(); ++j) {
      if (mask(b, j)) scores(0, j) = -std::numeric_limits<S>::infinity();
    }
  }
  softmax_rows_inplace<S>(scores);
  context.noalias() = scores * keys;
}

/// `weights, context` of additive scores `v . tanh(keys_proj_j + q_proj)`.
/// \param keys_proj [T, A] \param q_proj [1, A] \param scratch [T, A]
template <typename S>
void additive_scores(const MatrixCRef<S>& keys_proj, const MatrixCRef<S>& q_proj,
                     const Vector<S>& v, Matrix<S>& scratch, MatrixRef<S> scores) {
  // The sum first, then tanh on plain storage: tanh of the rowwise-sum expression does
  // not vectorise in Eigen 3.4 (about 11x slower).
  scratch = keys_proj.rowwise() + q_proj.row(0);  // [T, A]
  scratch = scratch.array().tanh();
  scores.noalias() = (scratch * v).transpose();                    // [1, T]
}

}  // namespace detail

/// Bahdanau (additive) alignment: `score_j = v . tanh(W1 keys_j + W2 query)`,
/// `weights = softmax_j(score)` over unmasked keys, `context = sum_j weights_j keys_j`.
///
/// In the decoder of Bahdanau et al. the query is the previous decoder state s_{i-1} and the
/// keys are the encoder states h_j. Parameters (names as docs/fixtures.md): `W1` [A, Hk], `W2`
/// [A, Hq], `v` [A]. `project_keys` computes W1 keys_j once per source sequence, so a
/// decoder pays only for W2 query and the tanh per step.
/// \note Bahdanau, Cho & Bengio 2015, "Neural Machine Translation by Jointly Learning to
///       Align and Translate", appendix A.1.2. A fully masked row gives zeros, not NaN.
/// \sa LuongAttention
template <typename Scalar>
class BahdanauAttention {
  static_assert(is_supported_scalar_v<Scalar>,
                "attend::BahdanauAttention: Scalar must be float or double");

 public:
  Matrix<Scalar> W1;  // [A, Hk]
  Matrix<Scalar> W2;  // [A, Hq]
  Vector<Scalar> v;   // [A]

  /// Parameters U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (nn.Linear's bound) from `seed`.
  /// \throws value_error when a size is not positive.
  BahdanauAttention(Index query_size, Index key_size, Index attention_size,
                    std::uint64_t seed = 0) {
    if (query_size <= 0 || key_size <= 0 || attention_size <= 0) {
      throw value_error("BahdanauAttention: query_size, key_size and attention_size are " +
                        std::to_string(query_size) + ", " + std::to_string(key_size) + " and " +
                        std::to_string(attention_size) + ", expected all positive");
    }
    Rng rng(seed);
    W1.resize(attention_size, key_size);
    W2.resize(attention_size, query_size);
    v.resize(attention_size);
    fill_uniform(W1, 1.0 / std::sqrt(double(key_size)), rng);
    fill_uniform(W2, 1.0 / std::sqrt(double(query_size)), rng);
    fill_uniform(v, 1.0 / std::sqrt(double(attention_size)), rng);
  }

  Index query_size() const noexcept { return W2.cols(); }
  Index key_size() const noexcept { return W1.cols(); }
  Index attention_size() const noexcept { return W1.rows(); }

  /// Loads `prefix + "W1"`, `"W2"`, `"v"` with the current shapes.
  /// \throws index_error, shape_error, value_error as load_matrix. On error nothing changes.
  void load_state_dict(const SafeTensors& st, const std::string& prefix = "") {
    Matrix<Scalar> w1 = load_matrix<Scalar>(st, prefix + "W1", attention_size(), key_size());
    Matrix<Scalar> w2 = load_matrix<Scalar>(st, prefix + "W2", attention_size(), query_size());
    Vector<Scalar> vv = load_vector<Scalar>(st, prefix + "v", attention_size());
    W1 = std::move(w1);
    W2 = std::move(w2);
    v = std::move(vv);
  }

  /// W1 keys_j for every key, computed once per source batch. \param keys [B, T, Hk]
  /// \returns [B, T, A] \throws shape_error when keys is not [B, T, Hk].
  Tensor<Scalar> project_keys(const Tensor<Scalar>& keys) const {
    if (keys.rank() != 3 || keys.dim(2) != key_size()) {
      throw shape_error("BahdanauAttention::project_keys: keys is " +
                        detail::shape_string(keys.shape()) + ", expected [B, T, " +
                        std::to_string(key_size()) + "] (key_size)");
    }
    Tensor<Scalar> out({keys.dim(0), keys.dim(1), attention_size()});
    out.as_matrix().noalias() = keys.as_matrix() * W1.transpose();  // [B*T, A]
    return out;
  }

  /// One alignment step.
  /// \param query [B, Hq] (the decoder state s_{i-1}) \param keys [B, T, Hk]
  /// \param key_padding_mask [B, T], true = masked out; empty = none.
  /// \param projected_keys project_keys(keys) [B, T, A], or empty to compute it here.
  /// \returns weights [B, T], context [B, Hk].
  /// \throws shape_error naming the argument whose shape is wrong; value_error on NaN/Inf
  ///   in query, keys (or projected_keys).
  AlignmentResult<Scalar> forward(const MatrixCRef<Scalar>& query, const Tensor<Scalar>& keys,
                                  const BoolMatrix& key_padding_mask = BoolMatrix(),
                                  const Tensor<Scalar>& projected_keys = Tensor<Scalar>()) const {
    const std::string who = "BahdanauAttention::forward";
    detail::check_alignment_args<Scalar>(query, keys, key_padding_mask, query_size(), key_size(),
                                         who);
    const Index B = query.rows(), T = keys.dim(1), A = attention_size();
    const bool given = projected_keys.size() != 0;
    if (given && projected_keys.shape() != Shape{B, T, A}) {
      throw shape_error(who + ": projected_keys is " +
                        detail::shape_string(projected_keys.shape()) + ", expected " +
                        detail::shape_string(Shape{B, T, A}) + " (B, T, attention_size)");
    }
    if (given) detail::check_finite(projected_keys, who, "projected_keys");
    const Tensor<Scalar> own = given ? Tensor<Scalar>() : project_keys(keys);
    const Tensor<Scalar>& kp = given ? projected_keys : own;
    AlignmentResult<Scalar> r{Matrix<Scalar>(B, T), Matrix<Scalar>(B, key_size()),
                              Matrix<Scalar>()};
    const Matrix<Scalar> q_proj = query * W2.transpose();  // [B, A]
    Matrix<Scalar> scratch(T, A);                          // [T, A]
    for (Index b = 0; b < B; ++b) {
      detail::additive_scores<Scalar>(kp.matrix(b), q_proj.row(b), v, scratch, r.weights.row(b));
      detail::softmax_and_context<Scalar>(r.weights.row(b), keys.matrix(b), key_padding_mask, b,
                                          r.context.row(b));
    }
    return r;
  }
};

/// Luong (multiplicative) alignment with the score functions of Luong et al. 2015:
///
///     dot      score_j = query . keys_j                    (Hq == Hk, no parameters)
///     general  score_j = query . (W keys_j)                W [Hq, Hk]
///     concat   score_j = v . tanh(W [query; keys_j])       W [A, Hq + Hk], v [A]
///
/// then `weights = softmax_j(score)` over unmasked keys, `context = sum_j weights_j keys_j`,
/// and, when `Wc` [Hq, Hk + Hq] is present, the attentional hidden state
/// `tanh(Wc [context; query])` (context first). In Luong's decoder the query is the current
/// state s_i. Names follow docs/fixtures.md.
/// \note Luong, Pham & Manning 2015, "Effective Approaches to Attention-based Neural
///       Machine Translation", section 3. A fully masked row gives zeros, not NaN.
/// \sa BahdanauAttention
template <typename Scalar>
class LuongAttention {
  static_assert(is_supported_scalar_v<Scalar>,
                "attend::LuongAttention: Scalar must be float or double");

 public:
  LuongScore score;
  Matrix<Scalar> W;   // [Hq, Hk] (general), [A, Hq + Hk] (concat), empty (dot)
  Vector<Scalar> v;   // [A] (concat) or empty
  Matrix<Scalar> Wc;  // [Hq, Hk + Hq] or empty (no attentional hidden state)

  /// Parameters U(-1/sqrt(fan_in), 1/sqrt(fan_in)) from `seed`.
  /// \param attention_size A, used by concat only. \param attentional create Wc.
  /// \throws value_error when a needed size is not positive, or dot has Hq != Hk.
  LuongAttention(LuongScore s, Index query_size, Index key_size, Index attention_size = 0,
                 bool attentional = false, std::uint64_t seed = 0)
      : score(s), query_size_(query_size), key_size_(key_size) {
    const std::string who = "LuongAttention";
    if (query_size <= 0 || key_size <= 0 || (s == LuongScore::concat && attention_size <= 0)) {
      throw value_error(who + ": query_size, key_size and attention_size are " +
                        std::to_string(query_size) + ", " + std::to_string(key_size) + " and " +
                        std::to_string(attention_size) +
                        ", expected positive (attention_size: concat only)");
    }
    if (s == LuongScore::dot && query_size != key_size) {
      throw value_error(who + ": score dot needs query_size == key_size, got " +
                        std::to_string(query_size) + " and " + std::to_string(key_size));
    }
    Rng rng(seed);
    if (s == LuongScore::general) {
      W.resize(query_size, key_size);
      fill_uniform(W, 1.0 / std::sqrt(double(key_size)), rng);
    } else if (s == LuongScore::concat) {
      W.resize(attention_size, query_size + key_size);
      v.resize(attention_size);
      fill_uniform(W, 1.0 / std::sqrt(double(query_size + key_size)), rng);
      fill_uniform(v, 1.0 / std::sqrt(double(attention_size)), rng);
    }
    if (attentional) {
      Wc.resize(query_size, key_size + query_size);
      fill_uniform(Wc, 1.0 / std::sqrt(double(key_size + query_size)), rng);
    }
  }

  Index query_size() const noexcept { return query_size_; }
  Index key_size() const noexcept { return key_size_; }
  /// A for concat, 0 otherwise.
  Index attention_size() const noexcept { return score == LuongScore::concat ? W.rows() : 0; }
  bool attentional() const noexcept { return Wc.size() != 0; }

  /// Loads `prefix + "W"` (general, concat), `"v"` (concat) and `"Wc"` (when attentional),
  /// with the current shapes. \throws as load_matrix. On error nothing changes.
  void load_state_dict(const SafeTensors& st, const std::string& prefix = "") {
    LuongAttention m = *this;
    if (score != LuongScore::dot) m.W = load_matrix<Scalar>(st, prefix + "W", W.rows(), W.cols());
    if (score == LuongScore::concat) m.v = load_vector<Scalar>(st, prefix + "v", v.size());
    if (attentional()) m.Wc = load_matrix<Scalar>(st, prefix + "Wc", Wc.rows(), Wc.cols());
    *this = std::move(m);
  }

  /// One alignment step.
  /// \param query [B, Hq] (the decoder state s_i) \param keys [B, T, Hk]
  /// \param key_padding_mask [B, T], true = masked out; empty = none.
  /// \returns weights [B, T], context [B, Hk], attentional_hidden [B, Hq] (empty unless Wc).
  /// \throws shape_error naming the argument whose shape is wrong; value_error on NaN/Inf
  ///   in query or keys.
  AlignmentResult<Scalar> forward(const MatrixCRef<Scalar>& query, const Tensor<Scalar>& keys,
                                  const BoolMatrix& key_padding_mask = BoolMatrix()) const {
    const std::string who = "LuongAttention::forward";
    detail::check_alignment_args<Scalar>(query, keys, key_padding_mask, query_size_, key_size_,
                                         who);
    const Index B = query.rows(), T = keys.dim(1), Hq = query_size_, Hk = key_size_;
    AlignmentResult<Scalar> r{Matrix<Scalar>(B, T), Matrix<Scalar>(B, Hk), Matrix<Scalar>()};
    if (score == LuongScore::concat) {
      // W [q; k_j] = W_q q + W_k k_j: the additive form with W_k keys for all j in one product.
      const Index A = W.rows();
      Matrix<Scalar> keys_proj(T, A), scratch(T, A);                     // [T, A]
      const Matrix<Scalar> q_proj = query * W.leftCols(Hq).transpose();  // [B, A]
      for (Index b = 0; b < B; ++b) {
        keys_proj.noalias() = keys.matrix(b) * W.rightCols(Hk).transpose();
        detail::additive_scores<Scalar>(keys_proj, q_proj.row(b), v, scratch, r.weights.row(b));
      }
    } else {
      // general: query . (W k_j) = (query W) . k_j, one [1, Hk] row per sequence.
      const Matrix<Scalar> qw = score == LuongScore::general ? Matrix<Scalar>(query * W)
                                                             : Matrix<Scalar>(query);  // [B, Hk]
      for (Index b = 0; b < B; ++b) {
        r.weights.row(b).noalias() = qw.row(b) * keys.matrix(b).transpose();  // [1, T]
      }
    }
    for (Index b = 0; b < B; ++b) {
      detail::softmax_and_context<Scalar>(r.weights.row(b), keys.matrix(b), key_padding_mask, b,
                                          r.context.row(b));
    }
    if (attentional()) {
      // tanh(Wc [c; q]) = tanh(c Wc_c^T + q Wc_q^T), context columns first.
      r.attentional_hidden =
          (r.context * Wc.leftCols(Hk).transpose() + query * Wc.rightCols(Hq).transpose())
              .array()
              .tanh();
    }
    return r;
  }

 private:
  Index query_size_;
  Index key_size_;
};

}  // namespace attend
