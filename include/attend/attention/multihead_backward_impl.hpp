// SPDX-License-Identifier: MIT
// Member definition of MultiheadAttention::backward; include multihead.hpp and
// multihead_backward.hpp (the cache and gradient structs).
#pragma once

#include "attend/attention/multihead.hpp"
#include "attend/core/errors.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/embedding/rotary.hpp"
#include "attend/ops/softmax.hpp"

#include <Eigen/Core>

#include <cmath>
#include <cstddef>
#include <string>

namespace attend {

namespace detail {

/// Zero-fills an empty gradient buffer; throws shape_error naming it when its shape is not
/// that of the parameter.
template <typename Plain>
void prepare_grad(Plain& grad, const Plain& param, const std::string& who,
                  const std::string& name) {
  if (grad.size() == 0) grad = Plain::Zero(param.rows(), param.cols());
  if (grad.rows() != param.rows() || grad.cols() != param.cols()) {
    const bool is_vector = Plain::ColsAtCompileTime == 1;
    throw shape_error(
        who + ": grads." + name + " is " +
        (is_vector ? shape_string({grad.size()}) : matrix_shape(grad)) + ", expected " +
        (is_vector ? shape_string({param.size()}) : matrix_shape(param)));
  }
}

/// Zero-fills an empty tensor gradient (bias_k, bias_v); throws shape_error naming it when
/// its shape is not that of the parameter.
template <typename Scalar>
void prepare_grad(Tensor<Scalar>& grad, const Tensor<Scalar>& param, const std::string& who,
                  const std::string& name) {
  if (grad.size() == 0) grad = Tensor<Scalar>(param.shape());
  if (grad.shape() != param.shape()) {
    throw shape_error(who + ": grads." + name + " is " + shape_string(grad.shape()) +
                      ", expected " + shape_string(param.shape()));
  }
}

}  // namespace detail

/// Gradient of the forward that filled `cache`, for `L = sum(output * d_output)
/// [+ sum(attn_weights * d_attn_weights)]`. Reverse of forward, per sequence b and head h:
/// `d_heads = d_out W_o`, `dV_h = W_h^T d_heads_h`, `dW_h = d_heads_h V_h^T (+ d_attn_weights)`,
/// `dZ_h = scale * W_h * (dW_h - rowsum(W_h * dW_h))`, `dQ_h = dZ_h K_h`, `dK_h = dZ_h^T Q_h`,
/// then through the rotation (rotary) and the projections. With add_bias_kv, `d_bias_k` and
/// `d_bias_v` are the gradients of the appended key/value row (summed over the batch); the
/// zero key of add_zero_attn is a constant and its gradient is dropped. Masked (query, key)
/// pairs have weight 0 and pass no gradient; masks themselves get none.
/// \param cache filled by forward(..., &cache) of this module (parameters unchanged since)
/// \param d_output the upstream gradient, shaped as the forward's query (= output)
/// \param grads parameter gradients, accumulated (+=); empty members are zeroed first
/// \param d_attn_weights optional upstream gradient of attn_weights, shaped as the forward's
///        attn_weights ([B, L, S'] averaged, [B, H, L, S'] per head; no B unbatched; S' = S +
///        extra_keys())
/// \returns d_query, d_key, d_value (assigned); for self-attention (forward without key and
///          value, or with the same tensor object for all three) d_query is the total and
///          d_key, d_value are empty.
/// \throws value_error when the cache was not filled (or by a module with other heads);
///   shape_error when d_output, d_attn_weights or a non-empty gradient has the wrong shape.
/// \note Vaswani et al. 2017, eq. 1 and section 3.2.2 differentiated; llm.c attention_backward.
template <typename Scalar>
MultiheadAttentionInputGrads<Scalar> MultiheadAttention<Scalar>::backward(
    const MultiheadAttentionCache<Scalar>& cache, const Tensor<Scalar>& d_output,
    MultiheadAttentionGrad<Scalar>& grads, const Tensor<Scalar>* d_attn_weights) const {
  const std::string who = "MultiheadAttention::backward";
  const Index E = options.embed_dim, H = options.num_heads, dh = head_dim();
  const Index B = cache.B, L = cache.L, S = cache.S;
  const Index S_all = S + cache.extra_keys;  // with the appended keys (bias_k, zero key)
  if (cache.query_shape.empty()) {
    throw value_error(who + ": cache is empty, expected one filled by forward(..., &cache)");
  }
  if (cache.weights.size() != static_cast<std::size_t>(B * H) ||
      cache.q.size() != static_cast<std::size_t>(B)) {
    throw value_error(who + ": cache holds " + std::to_string(cache.weights.size()) +
                      " head weights, expected " + std::to_string(B * H) +
                      " from forward(..., &cache) of this module");
  }
  // A cache of a module with other widths (same heads) would be multiplied with this
  // module's weights: Eigen asserts, or reads out of bounds without assertions.
  const bool widths_ok = cache.query_shape.back() == E &&
                         (cache.self || (cache.key_shape.back() == options.kdim &&
                                         cache.value_shape.back() == options.vdim));
  if (!widths_ok) {
    throw value_error(who + ": cache.query_shape is " + detail::shape_string(cache.query_shape) +
                      " (key " + detail::shape_string(cache.key_shape) + ", value " +
                      detail::shape_string(cache.value_shape) + "), expected [..., " +
                      std::to_string(E) + "] (embed_dim; key kdim " +
                      std::to_string(options.kdim) + ", value vdim " +
                      std::to_string(options.vdim) + ") from forward(..., &cache) of this module");
  }
  if (cache.extra_keys != extra_keys()) {
    throw value_error(who + ": cache.extra_keys is " + std::to_string(cache.extra_keys) +
                      ", expected " + std::to_string(extra_keys()) +
                      " (add_bias_kv + add_zero_attn) from forward(..., &cache) of this module");
  }
  if (d_output.shape() != cache.query_shape) {
    throw shape_error(who + ": d_output is " + detail::shape_string(d_output.shape()) +
                      ", expected " + detail::shape_string(cache.query_shape) +
                      " (the forward's output)");
  }
  const bool unbatched = cache.query_shape.size() == 2;
  if (d_attn_weights) {
    Shape ws = cache.average_attn_weights ? Shape{B, L, S_all} : Shape{B, H, L, S_all};
    if (unbatched) ws.erase(ws.begin());
    if (d_attn_weights->shape() != ws) {
      throw shape_error(who + ": d_attn_weights is " +
                        detail::shape_string(d_attn_weights->shape()) + ", expected " +
                        detail::shape_string(ws) + " (the forward's attn_weights)");
    }
  }
  if (packed()) {
    detail::prepare_grad(grads.d_in_proj_weight, in_proj_weight, who, "d_in_proj_weight");
  } else {
    detail::prepare_grad(grads.d_q_proj_weight, q_proj_weight, who, "d_q_proj_weight");
    detail::prepare_grad(grads.d_k_proj_weight, k_proj_weight, who, "d_k_proj_weight");
    detail::prepare_grad(grads.d_v_proj_weight, v_proj_weight, who, "d_v_proj_weight");
  }
  detail::prepare_grad(grads.d_out_proj_weight, out_proj_weight, who, "d_out_proj_weight");
  if (options.bias) {
    detail::prepare_grad(grads.d_in_proj_bias, in_proj_bias, who, "d_in_proj_bias");
    detail::prepare_grad(grads.d_out_proj_bias, out_proj_bias, who, "d_out_proj_bias");
  }
  if (options.add_bias_kv) {
    detail::prepare_grad(grads.d_bias_k, bias_k, who, "d_bias_k");
    detail::prepare_grad(grads.d_bias_v, bias_v, who, "d_bias_v");
  }

  const bool self = cache.self;
  MultiheadAttentionInputGrads<Scalar> result;
  result.d_query = Tensor<Scalar>(cache.query_shape);
  if (!self) {
    result.d_key = Tensor<Scalar>(cache.key_shape);
    result.d_value = Tensor<Scalar>(cache.value_shape);
  }
  const Scalar scale = static_cast<Scalar>(1.0 / std::sqrt(static_cast<double>(dh)));
  const bool rotary = options.position == PositionKind::rotary;
  // The projection weights as [E, in] row blocks (packed: W_q, W_k, W_v of in_proj_weight).
  const auto w_in = [&](Index i) -> MatrixCRef<Scalar> {
    if (packed()) return in_proj_weight.middleRows(i * E, E);
    return i == 0 ? q_proj_weight : (i == 1 ? k_proj_weight : v_proj_weight);
  };
  const auto dw_in = [&](Index i) -> MatrixRef<Scalar> {
    if (packed()) return grads.d_in_proj_weight.middleRows(i * E, E);
    return i == 0 ? grads.d_q_proj_weight : (i == 1 ? grads.d_k_proj_weight : grads.d_v_proj_weight);
  };
  Mat d_heads(L, E), dq(L, E), dk(S_all, E), dv(S_all, E);  // [L, E], [L, E], [S', E], [S', E]
  Mat dw(L, S_all);  // [L, S'] one head's weight gradient
  // L = 0 or S = 0: no head slices (a block of an empty matrix offsets a null pointer); as
  // in the forward, the heads are 0, so only the out_proj bias gets a gradient.
  const bool empty = L == 0 || S_all == 0;
  if (empty) {
    dq.setZero();
    dk.setZero();
    dv.setZero();
  }
  for (Index b = 0; b < B; ++b) {
    const auto i = static_cast<std::size_t>(b);
    const Mat d_out = sequence(d_output, b);  // [L, E]
    // forward: out = heads W_o^T + b_o
    grads.d_out_proj_weight.noalias() += d_out.transpose() * cache.heads[i];
    // Sums of zero rows are 0 and are skipped (Eigen's vectorised colwise sum of an empty
    // matrix offsets a null pointer).
    if (options.bias && L > 0) grads.d_out_proj_bias += d_out.colwise().sum().transpose();
    d_heads.noalias() = d_out * out_proj_weight;
    for (Index h = 0; !empty && h < H; ++h) {
      const Mat& w = cache.weights[i * static_cast<std::size_t>(H) + static_cast<std::size_t>(h)];
      const auto cols = [&](const Mat& m) { return m.middleCols(h * dh, dh); };
      // forward: heads_h = W_h V_h
      dv.middleCols(h * dh, dh).noalias() = w.transpose() * cols(d_heads);
      dw.noalias() = cols(d_heads) * cols(cache.v[i]).transpose();
      // forward: attn_weights = W_h (per head) or mean_h W_h (averaged)
      if (d_attn_weights && cache.average_attn_weights) {
        dw += ConstMatrixMap<Scalar>(d_attn_weights->data() + b * L * S_all, L, S_all) /
              Scalar(H);
      } else if (d_attn_weights) {
        dw += ConstMatrixMap<Scalar>(d_attn_weights->data() + (b * H + h) * L * S_all, L, S_all);
      }
      // forward: W_h = softmax(Z_h), Z_h = scale Q_h K_h^T + mask (W = 0 where masked)
      Mat dz = softmax_backward(w, dw);  // [L, S]
      dz *= scale;
      dq.middleCols(h * dh, dh).noalias() = dz * cols(cache.k[i]);
      dk.middleCols(h * dh, dh).noalias() = dz.transpose() * cols(cache.q[i]);
      if (rotary) {  // forward: Q_h, K_h rotated in place; the gradient turns back
        detail::rotate_pairs<Scalar>(dq.middleCols(h * dh, dh), cache.query_position,
                                     options.rotary_layout, options.rotary_base, -1.0);
        // only the S given keys were rotated (the appended rows have no position)
        if (S > 0) {
          detail::rotate_pairs<Scalar>(dk.topRows(S).middleCols(h * dh, dh), cache.key_position,
                                       options.rotary_layout, options.rotary_base, -1.0);
        }
      }
    }
    // forward: k = cat(k, bias_k), v = cat(v, bias_v) (row S); the zero row is a constant
    if (options.add_bias_kv && !empty) {
      grads.d_bias_k.flat() += dk.row(S).transpose();
      grads.d_bias_v.flat() += dv.row(S).transpose();
    }
    // the S given keys and values, [S, E] each
    const MatrixCRef<Scalar> dk_in = dk.topRows(S);
    const MatrixCRef<Scalar> dv_in = dv.topRows(S);
    // forward: Q = x_q W_q^T + b_q, K = x_k W_k^T + b_k, V = x_v W_v^T + b_v
    const Mat& xq = cache.x_query[i];
    const Mat& xk = self ? xq : cache.x_key[i];
    const Mat& xv = self ? xq : cache.x_value[i];
    dw_in(0).noalias() += dq.transpose() * xq;
    dw_in(1).noalias() += dk_in.transpose() * xk;
    dw_in(2).noalias() += dv_in.transpose() * xv;
    if (options.bias && !empty) {
      grads.d_in_proj_bias.head(E) += dq.colwise().sum().transpose();
      if (S > 0) {  // (no colwise sum of zero rows)
        grads.d_in_proj_bias.segment(E, E) += dk_in.colwise().sum().transpose();
        grads.d_in_proj_bias.tail(E) += dv_in.colwise().sum().transpose();
      }
    }
    Mat dxq = dq * w_in(0);     // [L, E]
    Mat dxk = dk_in * w_in(1);  // [S, kdim]
    Mat dxv = dv_in * w_in(2);  // [S, vdim]
    if (self) {
      dxq += dxk + dxv;  // key = value = query: the three paths add up
    } else {
      store(dxk, b, B, result.d_key, unbatched);
      store(dxv, b, B, result.d_value, unbatched);
    }
    store(dxq, b, B, result.d_query, unbatched);
  }
  return result;
}

}  // namespace attend
