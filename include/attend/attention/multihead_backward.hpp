// SPDX-License-Identifier: MIT
// Multi-head attention for training: the forward's cache, the backward, and the parameter
// gradients by PyTorch state-dict names.
#pragma once

#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"

#include <Eigen/Core>

#include <string>
#include <utility>
#include <vector>

namespace attend {

// multihead.hpp includes this header: the forward fills the cache. The member
// MultiheadAttention::backward(cache, d_output, grads) is declared there and defined in
// multihead_backward_impl.hpp.

template <typename Scalar>
class MultiheadAttention;

/// What MultiheadAttention::backward needs from a forward, filled by
/// `forward(query, [key, value,] args, &cache)` (llm.c caches the attention weights).
/// Per sequence b of the batch (b = 0 for unbatched inputs).
template <typename Scalar>
struct MultiheadAttentionCache {
  Shape query_shape;  // the forward's query shape: d_output and d_query have it
  Shape key_shape;    // the forward's key shape (d_key)
  Shape value_shape;  // the forward's value shape (d_value)
  bool self = false;  // key = value = query: one input gradient, the total through q, k, v
  Index B = 0, L = 0, S = 0;  // S: the given keys, without the appended ones
  Index extra_keys = 0;       // keys appended after the S given: bias_k, then the zero key
  bool need_weights = true;          // the forward returned attn_weights
  bool average_attn_weights = true;  // ... averaged over heads [B, L, S], else [B, H, L, S]
  Index query_position = 0;          // rotary positions of the forward (args)
  Index key_position = 0;
  std::vector<Matrix<Scalar>> x_query;  // [B] of [L, E]: sequence b of query
  std::vector<Matrix<Scalar>> x_key;    // [B] of [S, kdim] (empty when self)
  std::vector<Matrix<Scalar>> x_value;  // [B] of [S, vdim] (empty when self)
  std::vector<Matrix<Scalar>> q;        // [B] of [L, E] projected (and rotated) queries
  // S' = S + extra_keys below: the appended keys and values are the last rows.
  std::vector<Matrix<Scalar>> k;        // [B] of [S', E] projected (and rotated) keys
  std::vector<Matrix<Scalar>> v;        // [B] of [S', E] projected values
  std::vector<Matrix<Scalar>> weights;  // [B * H] of [L, S'], index b * H + h: 0 where masked
  std::vector<Matrix<Scalar>> heads;    // [B] of [L, E] concatenated head outputs

  /// Clears the cache for a forward of `batch` sequences and `heads_count` heads, recording
  /// the forward's shapes and arguments (called by the forward).
  void start(Shape query_s, Shape key_s, Shape value_s, bool self_attention, Index batch,
             Index heads_count, Index query_len, Index key_len, bool with_weights,
             bool averaged, Index first_query_position, Index first_key_position) {
    *this = MultiheadAttentionCache();
    query_shape = std::move(query_s);
    key_shape = std::move(key_s);
    value_shape = std::move(value_s);
    self = self_attention;
    B = batch;
    L = query_len;
    S = key_len;
    need_weights = with_weights;
    average_attn_weights = averaged;
    query_position = first_query_position;
    key_position = first_key_position;
    const auto n = static_cast<std::size_t>(B);
    for (auto* list : {&x_query, &q, &k, &v, &heads}) list->resize(n);
    x_key.resize(self ? 0 : n);
    x_value.resize(self ? 0 : n);
    weights.resize(n * static_cast<std::size_t>(heads_count));
  }

  /// Keeps sequence b's inputs ([L, E], [S, kdim], [S, vdim]; key and value ignored when
  /// self), projections and head outputs (called by the forward; weights are set per head).
  void store(Index b, Matrix<Scalar> xq, Matrix<Scalar> xk, Matrix<Scalar> xv,
             const Matrix<Scalar>& q_b, const Matrix<Scalar>& k_b, const Matrix<Scalar>& v_b,
             const Matrix<Scalar>& heads_b) {
    const auto i = static_cast<std::size_t>(b);
    x_query[i] = std::move(xq);
    if (!self) {
      x_key[i] = std::move(xk);
      x_value[i] = std::move(xv);
    }
    q[i] = q_b;
    k[i] = k_b;
    v[i] = v_b;
    heads[i] = heads_b;
  }
};

/// Parameter gradients of a MultiheadAttention, named `d` + the parameter's member name.
/// Empty members are zero-initialised by the first backward; backward accumulates (+=).
template <typename Scalar>
struct MultiheadAttentionGrad {
  Matrix<Scalar> d_in_proj_weight;   // [3E, E] (packed) or empty
  Matrix<Scalar> d_q_proj_weight;    // [E, E] (separate) or empty
  Matrix<Scalar> d_k_proj_weight;    // [E, kdim] (separate) or empty
  Matrix<Scalar> d_v_proj_weight;    // [E, vdim] (separate) or empty
  Vector<Scalar> d_in_proj_bias;     // [3E] or empty
  Matrix<Scalar> d_out_proj_weight;  // [E, E], state-dict name out_proj.weight
  Vector<Scalar> d_out_proj_bias;    // [E] or empty, state-dict name out_proj.bias
  Tensor<Scalar> d_bias_k;           // [1, 1, E] (add_bias_kv) or empty
  Tensor<Scalar> d_bias_v;           // [1, 1, E] (add_bias_kv) or empty
};

/// Input gradients of a MultiheadAttention (assigned, shaped as the forward's inputs).
template <typename Scalar>
struct MultiheadAttentionInputGrads {
  Tensor<Scalar> d_query;  // query's shape; for self-attention the total through q, k and v
  Tensor<Scalar> d_key;    // key's shape; empty for self-attention
  Tensor<Scalar> d_value;  // value's shape; empty for self-attention
};

/// Visits the parameters of a MultiheadAttention in torch.nn.MultiheadAttention's
/// named_parameters() order: `in_proj_weight` (or `q_proj_weight`, `k_proj_weight`,
/// `v_proj_weight`), `in_proj_bias`, `bias_k`, `bias_v`, `out_proj.weight`, `out_proj.bias`
/// (in_proj_bias and out_proj.bias only when options.bias; bias_k and bias_v, Tensor [1, 1, E]
/// with gradients d_bias_k and d_bias_v, only when options.add_bias_kv).
/// \param prefix prepended to every name, e.g. "self_attn."
template <typename Scalar, typename Visit>
void named_parameters(MultiheadAttention<Scalar>& m, MultiheadAttentionGrad<Scalar>& g,
                      Visit&& visit, const std::string& prefix = "") {
  if (m.packed()) {
    visit(prefix + "in_proj_weight", m.in_proj_weight, g.d_in_proj_weight);
  } else {
    visit(prefix + "q_proj_weight", m.q_proj_weight, g.d_q_proj_weight);
    visit(prefix + "k_proj_weight", m.k_proj_weight, g.d_k_proj_weight);
    visit(prefix + "v_proj_weight", m.v_proj_weight, g.d_v_proj_weight);
  }
  if (m.options.bias) visit(prefix + "in_proj_bias", m.in_proj_bias, g.d_in_proj_bias);
  if (m.options.add_bias_kv) {
    visit(prefix + "bias_k", m.bias_k, g.d_bias_k);
    visit(prefix + "bias_v", m.bias_v, g.d_bias_v);
  }
  visit(prefix + "out_proj.weight", m.out_proj_weight, g.d_out_proj_weight);
  if (m.options.bias) visit(prefix + "out_proj.bias", m.out_proj_bias, g.d_out_proj_bias);
}

}  // namespace attend
