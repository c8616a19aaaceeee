// SPDX-License-Identifier: MIT
// Training of the RNN alignments: Bahdanau and Luong forward with a cache, backward, and
// named parameters by their state-dict names.
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/rnn/alignment.hpp"

#include <Eigen/Core>

#include <string>

namespace attend {

/// Parameter gradients of a BahdanauAttention (`d` + the parameter's name).
template <typename Scalar>
struct BahdanauGrad {
  Matrix<Scalar> d_W1;  // [A, Hk]
  Matrix<Scalar> d_W2;  // [A, Hq]
  Vector<Scalar> d_v;   // [A]
};

/// Parameter gradients of a LuongAttention; members of absent parameters stay empty.
template <typename Scalar>
struct LuongGrad {
  Matrix<Scalar> d_W;   // [Hq, Hk] (general), [A, Hq + Hk] (concat), empty (dot)
  Vector<Scalar> d_v;   // [A] (concat)
  Matrix<Scalar> d_Wc;  // [Hq, Hk + Hq] (attentional)
};

/// What the alignment backwards need from a forward (keys are passed again, not copied:
/// a decoder caches one step per output token over the same keys).
template <typename Scalar>
struct AlignmentCache {
  Shape keys_shape;                   // [B, T, Hk] of the forward's keys; empty = no forward
  bool projected_given = false;       // Bahdanau: the forward took projected_keys
  Matrix<Scalar> query;               // [B, Hq]
  BoolMatrix mask;                    // [B, T] or empty
  Matrix<Scalar> weights;             // [B, T]
  Matrix<Scalar> context;             // [B, Hk]
  Matrix<Scalar> attentional_hidden;  // [B, Hq] (Luong with Wc) or empty
  Tensor<Scalar> tanh;                // [B, T, A] tanh of the additive scores (Bahdanau, concat)
  Matrix<Scalar> qw;                  // [B, Hk] query W (Luong general) or empty
};

/// Input gradients of an alignment step (assigned).
template <typename Scalar>
struct AlignmentGrad {
  Matrix<Scalar> d_query;           // [B, Hq]
  Tensor<Scalar> d_keys;            // [B, T, Hk]
  Tensor<Scalar> d_projected_keys;  // [B, T, A] when the forward took projected_keys, else empty
};

/// Visits `W1`, `W2`, `v` (BahdanauAttention::load_state_dict's names).
template <typename Scalar, typename Visit>
void named_parameters(BahdanauAttention<Scalar>& m, BahdanauGrad<Scalar>& g, Visit&& visit,
                      const std::string& prefix = "") {
  visit(prefix + "W1", m.W1, g.d_W1);
  visit(prefix + "W2", m.W2, g.d_W2);
  visit(prefix + "v", m.v, g.d_v);
}

/// Visits `W` (general, concat), `v` (concat), `Wc` (attentional), as load_state_dict.
template <typename Scalar, typename Visit>
void named_parameters(LuongAttention<Scalar>& m, LuongGrad<Scalar>& g, Visit&& visit,
                      const std::string& prefix = "") {
  if (m.score != LuongScore::dot) visit(prefix + "W", m.W, g.d_W);
  if (m.score == LuongScore::concat) visit(prefix + "v", m.v, g.d_v);
  if (m.attentional()) visit(prefix + "Wc", m.Wc, g.d_Wc);
}

namespace detail {

/// Zeroes an empty gradient to `rows x cols`, or checks its shape.
template <typename Plain>
void prepare_alignment_grad(Plain& g, Index rows, Index cols, const std::string& who,
                            const std::string& name) {
  if (g.size() == 0) g = Plain::Zero(rows, cols);
  if (g.rows() != rows || g.cols() != cols) {
    throw shape_error(
        who + ": grads." + name + " is " +
        (Plain::ColsAtCompileTime == 1 ? shape_string({g.size()}) : matrix_shape(g)) +
        ", expected " +
        (Plain::ColsAtCompileTime == 1 ? shape_string({rows}) : shape_string({rows, cols})));
  }
}

/// Backward of `w = softmax(score)`, `ctx = w keys` for one sequence:
/// `dw_j = d_ctx . k_j + d_weights_j`, `d_keys_j += w_j d_ctx`, `dscore = w * (dw - w . dw)`.
/// \param w [1, T] \param keys [T, Hk] \param d_ctx [1, Hk] \param d_w [1, T] or size 0
/// \param d_keys [T, Hk] accumulated \param dscore [1, T] written (0 at masked keys: w = 0)
template <typename S>
void softmax_context_backward(const MatrixCRef<S>& w, const MatrixCRef<S>& keys,
                              const MatrixCRef<S>& d_ctx, const MatrixCRef<S>& d_w,
                              MatrixRef<S> d_keys, MatrixRef<S> dscore) {
  // forward: context = weights * keys
  dscore.noalias() = d_ctx * keys.transpose();  // [1, T]
  if (d_w.size() != 0) dscore += d_w;
  d_keys.noalias() += w.transpose() * d_ctx;  // [T, Hk]
  // forward: weights = softmax(scores) (masked scores -inf, weight 0)
  const S mean = w.cwiseProduct(dscore).sum();
  dscore = w.array() * (dscore.array() - mean);
}

/// Backward of `score_j = v . t_j`, `t_j = tanh(u_j)` for one sequence.
/// \param t [T, A] \param dscore [1, T] \param du [T, A] written \param d_v [A] accumulated
template <typename S>
void additive_backward(const MatrixCRef<S>& t, const MatrixCRef<S>& dscore, const Vector<S>& v,
                       Matrix<S>& du, Vector<S>& d_v) {
  // forward: score = (t v)^T
  d_v.noalias() += t.transpose() * dscore.transpose();  // [A]
  // forward: t = tanh(u): du = dscore_j v (1 - t^2)
  du.noalias() = dscore.transpose() * v.transpose();  // [T, A]
  du.array() *= S(1) - t.array().square();
}

/// Checks the common arguments of the alignment backwards; returns B.
template <typename S>
void check_alignment_backward(const AlignmentCache<S>& cache, const Tensor<S>& keys,
                              const AlignmentResult<S>& d, Index Hq, const std::string& who) {
  if (cache.keys_shape.empty()) {
    throw value_error(who + ": cache is empty, expected one filled by the forward");
  }
  if (keys.shape() != cache.keys_shape) {
    throw shape_error(who + ": keys is " + shape_string(keys.shape()) + ", expected " +
                      shape_string(cache.keys_shape) + " (the forward's keys)");
  }
  const Index B = cache.keys_shape[0], T = cache.keys_shape[1], Hk = cache.keys_shape[2];
  const auto check = [&](const Matrix<S>& m, Index cols, const char* name) {
    if (m.size() != 0 && (m.rows() != B || m.cols() != cols)) {
      throw shape_error(who + ": d_result." + name + " is " + matrix_shape(m) + ", expected " +
                        shape_string({B, cols}) + " or empty");
    }
  };
  check(d.weights, T, "weights");
  check(d.context, Hk, "context");
  check(d.attentional_hidden, Hq, "attentional_hidden");
}

/// Checks that `c` (called `name` in messages) was filled by a forward of a module of these
/// sizes, so that another module's cache is not read out of bounds: query [B, Hq], weights
/// [B, T], context [B, Hk], and when asked tanh [B, T, A] (A > 0), qw [B, Hk], h~ [B, Hq].
template <typename S>
void check_alignment_cache(const AlignmentCache<S>& c, Index Hq, Index Hk, Index A, bool qw,
                           bool attentional, const std::string& who, const std::string& name) {
  const auto fail = [&](const char* member, const std::string& actual, const std::string& want) {
    throw value_error(who + ": " + name + "." + member + " is " + actual + ", expected " + want +
                      " (a cache of this module's forward)");
  };
  if (c.keys_shape.size() != 3 || c.keys_shape[2] != Hk) {
    fail("keys_shape", shape_string(c.keys_shape), "[B, T, " + std::to_string(Hk) + "]");
  }
  const Index B = c.keys_shape[0], T = c.keys_shape[1];
  const auto check = [&](const Matrix<S>& m, const char* member, Index cols) {
    if (m.rows() != B || m.cols() != cols) fail(member, matrix_shape(m), shape_string({B, cols}));
  };
  check(c.query, "query", Hq);
  check(c.weights, "weights", T);
  check(c.context, "context", Hk);
  if (A > 0 && c.tanh.shape() != Shape{B, T, A}) {
    fail("tanh", shape_string(c.tanh.shape()), shape_string({B, T, A}));
  }
  if (qw) check(c.qw, "qw", Hk);
  if (attentional) check(c.attentional_hidden, "attentional_hidden", Hq);
}

template <typename S>
void check_alignment_cache(const BahdanauAttention<S>& m, const AlignmentCache<S>& c,
                           const std::string& who, const std::string& name) {
  check_alignment_cache(c, m.query_size(), m.key_size(), m.attention_size(), false, false, who,
                        name);
}

template <typename S>
void check_alignment_cache(const LuongAttention<S>& m, const AlignmentCache<S>& c,
                           const std::string& who, const std::string& name) {
  check_alignment_cache(c, m.query_size(), m.key_size(),
                        m.score == LuongScore::concat ? m.W.rows() : 0,
                        m.score == LuongScore::general, m.attentional(), who, name);
}

/// Bahdanau backward into caller-owned buffers: `d_query` assigned, `d_keys` accumulated,
/// `d_proj` (when the forward took projected keys) accumulated. No checks.
template <typename S>
void bahdanau_backward_into(const BahdanauAttention<S>& m, const AlignmentCache<S>& c,
                            const Tensor<S>& keys, const AlignmentResult<S>& d, BahdanauGrad<S>& g,
                            Matrix<S>& d_query, Tensor<S>& d_keys, Tensor<S>* d_proj) {
  const Index B = c.query.rows(), T = keys.dim(1), A = m.attention_size();
  const Matrix<S> none(0, 0);
  const Matrix<S> zero_ctx = d.context.size() ? Matrix<S>() : Matrix<S>::Zero(B, keys.dim(2));
  const Matrix<S>& d_ctx = d.context.size() ? d.context : zero_ctx;  // [B, Hk]
  Matrix<S> dscore(1, T), du(T, A);
  Matrix<S> d_qp(B, A);  // [B, A] gradient of W2 query
  for (Index b = 0; b < B; ++b) {
    softmax_context_backward<S>(
        c.weights.row(b), keys.matrix(b), d_ctx.row(b),
        d.weights.size() ? MatrixCRef<S>(d.weights.row(b)) : MatrixCRef<S>(none), d_keys.matrix(b),
        dscore);
    additive_backward<S>(c.tanh.matrix(b), dscore, m.v, du, g.d_v);
    // forward: u_j = W1 k_j + W2 q
    d_qp.row(b) = du.colwise().sum();
    if (d_proj) {
      d_proj->matrix(b) += du;
    } else {
      g.d_W1.noalias() += du.transpose() * keys.matrix(b);  // [A, Hk]
      d_keys.matrix(b).noalias() += du * m.W1;              // [T, Hk]
    }
  }
  g.d_W2.noalias() += d_qp.transpose() * c.query;  // [A, Hq]
  d_query.noalias() = d_qp * m.W2;                 // [B, Hq]
}

/// Luong backward into caller-owned buffers: `d_query` assigned, `d_keys` accumulated.
template <typename S>
void luong_backward_into(const LuongAttention<S>& m, const AlignmentCache<S>& c,
                         const Tensor<S>& keys, const AlignmentResult<S>& d, LuongGrad<S>& g,
                         Matrix<S>& d_query, Tensor<S>& d_keys) {
  const Index B = c.query.rows(), T = keys.dim(1), Hq = m.query_size(), Hk = m.key_size();
  Matrix<S> d_ctx = d.context.size() ? d.context : Matrix<S>(Matrix<S>::Zero(B, Hk));  // [B, Hk]
  d_query.setZero(B, Hq);
  if (m.attentional() && d.attentional_hidden.size() != 0) {
    // forward: h~ = tanh(context Wc_c^T + query Wc_q^T)
    const Matrix<S> dpre =
        d.attentional_hidden.array() * (S(1) - c.attentional_hidden.array().square());  // [B, Hq]
    g.d_Wc.leftCols(Hk).noalias() += dpre.transpose() * c.context;
    g.d_Wc.rightCols(Hq).noalias() += dpre.transpose() * c.query;
    d_ctx.noalias() += dpre * m.Wc.leftCols(Hk);
    d_query.noalias() += dpre * m.Wc.rightCols(Hq);
  }
  const Matrix<S> none(0, 0);
  Matrix<S> dscore(1, T);
  if (m.score == LuongScore::concat) {
    // forward: score_j = v . tanh(Wq q + Wk k_j), Wq = W[:, :Hq], Wk = W[:, Hq:]
    const Index A = m.W.rows();
    Matrix<S> du(T, A), d_qp(B, A);
    for (Index b = 0; b < B; ++b) {
      softmax_context_backward<S>(
          c.weights.row(b), keys.matrix(b), d_ctx.row(b),
          d.weights.size() ? MatrixCRef<S>(d.weights.row(b)) : MatrixCRef<S>(none),
          d_keys.matrix(b), dscore);
      additive_backward<S>(c.tanh.matrix(b), dscore, m.v, du, g.d_v);
      d_qp.row(b) = du.colwise().sum();
      g.d_W.rightCols(Hk).noalias() += du.transpose() * keys.matrix(b);
      d_keys.matrix(b).noalias() += du * m.W.rightCols(Hk);
    }
    g.d_W.leftCols(Hq).noalias() += d_qp.transpose() * c.query;
    d_query.noalias() += d_qp * m.W.leftCols(Hq);
    return;
  }
  // forward: score_j = qw . k_j with qw = query W (general) or query (dot)
  Matrix<S> d_qw(B, Hk);  // [B, Hk]
  const Matrix<S>& qw = m.score == LuongScore::general ? c.qw : c.query;
  for (Index b = 0; b < B; ++b) {
    softmax_context_backward<S>(
        c.weights.row(b), keys.matrix(b), d_ctx.row(b),
        d.weights.size() ? MatrixCRef<S>(d.weights.row(b)) : MatrixCRef<S>(none), d_keys.matrix(b),
        dscore);
    d_qw.row(b).noalias() = dscore * keys.matrix(b);               // [1, Hk]
    d_keys.matrix(b).noalias() += dscore.transpose() * qw.row(b);  // [T, Hk]
  }
  if (m.score == LuongScore::general) {
    g.d_W.noalias() += c.query.transpose() * d_qw;  // [Hq, Hk]
    d_query.noalias() += d_qw * m.W.transpose();
  } else {
    d_query += d_qw;
  }
}

}  // namespace detail

/// BahdanauAttention::forward for training: the same result, and `cache` for the backward.
/// \param m the module \param query [B, Hq] \param keys [B, T, Hk]
/// \param key_padding_mask [B, T], true = masked out; empty = none
/// \param projected_keys m.project_keys(keys) [B, T, A], or empty to compute it here
/// \param cache if not null, receives what bahdanau_backward needs
/// \returns weights [B, T], context [B, Hk]
/// \throws shape_error as BahdanauAttention::forward (same messages).
/// \sa bahdanau_backward
template <typename Scalar>
AlignmentResult<Scalar> bahdanau_forward(
    const BahdanauAttention<Scalar>& m,
    const MatrixCRef<typename Tensor<Scalar>::value_type>& query, const Tensor<Scalar>& keys,
    const BoolMatrix& key_padding_mask = BoolMatrix(),
    const Tensor<Scalar>& projected_keys = Tensor<Scalar>(),
    AlignmentCache<typename Tensor<Scalar>::value_type>* cache = nullptr) {
  const std::string who = "BahdanauAttention::forward";
  detail::check_alignment_args<Scalar>(query, keys, key_padding_mask, m.query_size(), m.key_size(),
                                       who);
  const Index B = query.rows(), T = keys.dim(1), A = m.attention_size();
  const bool given = projected_keys.size() != 0;
  if (given && projected_keys.shape() != Shape{B, T, A}) {
    throw shape_error(who + ": projected_keys is " + detail::shape_string(projected_keys.shape()) +
                      ", expected " + detail::shape_string(Shape{B, T, A}) +
                      " (B, T, attention_size)");
  }
  if (given) detail::check_finite(projected_keys, who, "projected_keys");
  const Tensor<Scalar> own = given ? Tensor<Scalar>() : m.project_keys(keys);
  const Tensor<Scalar>& kp = given ? projected_keys : own;
  AlignmentResult<Scalar> r{Matrix<Scalar>(B, T), Matrix<Scalar>(B, m.key_size()),
                            Matrix<Scalar>()};
  const Matrix<Scalar> q_proj = query * m.W2.transpose();  // [B, A]
  Matrix<Scalar> scratch(T, A);                            // [T, A]
  if (cache) cache->tanh = Tensor<Scalar>({B, T, A});
  for (Index b = 0; b < B; ++b) {
    detail::additive_scores<Scalar>(kp.matrix(b), q_proj.row(b), m.v, scratch, r.weights.row(b));
    if (cache) cache->tanh.matrix(b) = scratch;
    detail::softmax_and_context<Scalar>(r.weights.row(b), keys.matrix(b), key_padding_mask, b,
                                        r.context.row(b));
  }
  if (cache) {
    cache->keys_shape = keys.shape();
    cache->projected_given = given;
    cache->query = query;
    cache->mask = key_padding_mask;
    cache->weights = r.weights;
    cache->context = r.context;
  }
  return r;
}

/// Gradient of bahdanau_forward, in reverse order of its lines:
/// `dscore = w * (dw - w . dw)`, `du_j = dscore_j v * (1 - t_j^2)`, `dv += sum_j dscore_j t_j`,
/// `dW2 += (sum_j du_j) q^T`, `dW1 += du_j k_j^T` (or d_projected_keys = du when the
/// forward took projected keys; the caller then owns the W1 path).
/// \param m the module (unchanged since the forward) \param cache the forward's
/// \param keys [B, T, Hk] the forward's keys
/// \param d_result upstream gradients of the forward's weights [B, T] and context [B, Hk];
///        an empty member means zero
/// \param grads d_W1, d_W2, d_v accumulated (+=); empty members are zeroed first
/// \returns d_query [B, Hq], d_keys [B, T, Hk], d_projected_keys [B, T, A] (or empty), assigned
/// \throws value_error on an empty cache; shape_error when keys, d_result or grads disagree.
/// \note Bahdanau et al. 2015 appendix A.1.2, differentiated; masked keys get no gradient.
template <typename Scalar>
AlignmentGrad<Scalar> bahdanau_backward(const BahdanauAttention<Scalar>& m,
                                        const AlignmentCache<Scalar>& cache,
                                        const Tensor<Scalar>& keys,
                                        const AlignmentResult<Scalar>& d_result,
                                        BahdanauGrad<Scalar>& grads) {
  const std::string who = "bahdanau_backward";
  detail::check_alignment_backward(cache, keys, d_result, m.query_size(), who);
  detail::check_alignment_cache(m, cache, who, "cache");
  const Index A = m.attention_size();
  detail::prepare_alignment_grad(grads.d_W1, A, m.key_size(), who, "d_W1");
  detail::prepare_alignment_grad(grads.d_W2, A, m.query_size(), who, "d_W2");
  detail::prepare_alignment_grad(grads.d_v, A, 1, who, "d_v");
  AlignmentGrad<Scalar> out;
  out.d_keys = Tensor<Scalar>(keys.shape());
  if (cache.projected_given) out.d_projected_keys = Tensor<Scalar>({keys.dim(0), keys.dim(1), A});
  detail::bahdanau_backward_into(m, cache, keys, d_result, grads, out.d_query, out.d_keys,
                                 cache.projected_given ? &out.d_projected_keys : nullptr);
  return out;
}

/// LuongAttention::forward for training: the same result, and `cache` for the backward.
/// \param m the module \param query [B, Hq] \param keys [B, T, Hk]
/// \param key_padding_mask [B, T], true = masked out; empty = none
/// \param cache if not null, receives what luong_backward needs
/// \returns weights [B, T], context [B, Hk], attentional_hidden [B, Hq] (empty unless Wc)
/// \throws shape_error as LuongAttention::forward (same messages).
/// \sa luong_backward
template <typename Scalar>
AlignmentResult<Scalar> luong_forward(
    const LuongAttention<Scalar>& m, const MatrixCRef<typename Tensor<Scalar>::value_type>& query,
    const Tensor<Scalar>& keys, const BoolMatrix& key_padding_mask = BoolMatrix(),
    AlignmentCache<typename Tensor<Scalar>::value_type>* cache = nullptr) {
  const std::string who = "LuongAttention::forward";
  const Index Hq = m.query_size(), Hk = m.key_size();
  detail::check_alignment_args<Scalar>(query, keys, key_padding_mask, Hq, Hk, who);
  const Index B = query.rows(), T = keys.dim(1);
  AlignmentResult<Scalar> r{Matrix<Scalar>(B, T), Matrix<Scalar>(B, Hk), Matrix<Scalar>()};
  AlignmentCache<Scalar> local;
  AlignmentCache<Scalar>& c = cache ? *cache : local;
  c.qw.resize(0, 0);
  c.tanh = Tensor<Scalar>();
  if (m.score == LuongScore::concat) {
    const Index A = m.W.rows();
    Matrix<Scalar> keys_proj(T, A), scratch(T, A);                       // [T, A]
    const Matrix<Scalar> q_proj = query * m.W.leftCols(Hq).transpose();  // [B, A]
    if (cache) c.tanh = Tensor<Scalar>({B, T, A});
    for (Index b = 0; b < B; ++b) {
      keys_proj.noalias() = keys.matrix(b) * m.W.rightCols(Hk).transpose();
      detail::additive_scores<Scalar>(keys_proj, q_proj.row(b), m.v, scratch, r.weights.row(b));
      if (cache) c.tanh.matrix(b) = scratch;
    }
  } else {
    if (m.score == LuongScore::general) c.qw = query * m.W;  // [B, Hk]
    for (Index b = 0; b < B; ++b) {
      if (m.score == LuongScore::general) {
        r.weights.row(b).noalias() = c.qw.row(b) * keys.matrix(b).transpose();  // [1, T]
      } else {
        r.weights.row(b).noalias() = query.row(b) * keys.matrix(b).transpose();
      }
    }
  }
  for (Index b = 0; b < B; ++b) {
    detail::softmax_and_context<Scalar>(r.weights.row(b), keys.matrix(b), key_padding_mask, b,
                                        r.context.row(b));
  }
  if (m.attentional()) {
    // tanh(Wc [c; q]), context columns first, as LuongAttention::forward.
    r.attentional_hidden =
        (r.context * m.Wc.leftCols(Hk).transpose() + query * m.Wc.rightCols(Hq).transpose())
            .array()
            .tanh();
  }
  if (cache) {
    c.keys_shape = keys.shape();
    c.projected_given = false;
    c.query = query;
    c.mask = key_padding_mask;
    c.weights = r.weights;
    c.context = r.context;
    c.attentional_hidden = r.attentional_hidden;
  }
  return r;
}

/// Gradient of luong_forward, in reverse order of its lines: the attentional hidden state
/// `h~ = tanh(Wc [c; q])`, the softmax and context, then the score (dot: `q . k_j`;
/// general: `(q W) . k_j`; concat: `v . tanh(W [q; k_j])`).
/// \param m the module (unchanged since the forward) \param cache the forward's
/// \param keys [B, T, Hk] the forward's keys
/// \param d_result upstream gradients of weights [B, T], context [B, Hk] and
///        attentional_hidden [B, Hq]; an empty member means zero
/// \param grads d_W, d_v, d_Wc (those the module has) accumulated (+=); empty ones zeroed first
/// \returns d_query [B, Hq], d_keys [B, T, Hk] (assigned)
/// \throws value_error on an empty cache; shape_error when keys, d_result or grads disagree.
/// \note Luong et al. 2015 section 3, differentiated; masked keys get no gradient.
template <typename Scalar>
AlignmentGrad<Scalar> luong_backward(const LuongAttention<Scalar>& m,
                                     const AlignmentCache<Scalar>& cache,
                                     const Tensor<Scalar>& keys,
                                     const AlignmentResult<Scalar>& d_result,
                                     LuongGrad<Scalar>& grads) {
  const std::string who = "luong_backward";
  detail::check_alignment_backward(cache, keys, d_result, m.query_size(), who);
  detail::check_alignment_cache(m, cache, who, "cache");
  if (m.score != LuongScore::dot)
    detail::prepare_alignment_grad(grads.d_W, m.W.rows(), m.W.cols(), who, "d_W");
  if (m.score == LuongScore::concat)
    detail::prepare_alignment_grad(grads.d_v, m.v.size(), 1, who, "d_v");
  if (m.attentional())
    detail::prepare_alignment_grad(grads.d_Wc, m.Wc.rows(), m.Wc.cols(), who, "d_Wc");
  AlignmentGrad<Scalar> out;
  out.d_keys = Tensor<Scalar>(keys.shape());
  detail::luong_backward_into(m, cache, keys, d_result, grads, out.d_query, out.d_keys);
  return out;
}

}  // namespace attend
