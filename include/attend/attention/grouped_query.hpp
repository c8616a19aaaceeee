// SPDX-License-Identifier: MIT
// Grouped-query (and multi-query) attention: K/V heads shared by groups of query heads, optional
// RoPE.
#pragma once

#include "attend/attention/kv_cache.hpp"
#include "attend/attention/mask.hpp"
#include "attend/attention/scaled_dot_product.hpp"
#include "attend/core/errors.hpp"
#include "attend/core/random.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/embedding/rotary.hpp"
#include "attend/io/safetensors.hpp"
#include "attend/io/state_dict.hpp"

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <string>
#include <utility>

namespace attend {

/// Constructor options of GroupedQueryAttention.
struct GroupedQueryAttentionOptions {
  Index embed_dim = 0;       ///< E (required)
  Index num_heads = 1;       ///< H query heads; divides E
  Index num_kv_heads = 0;    ///< G key/value heads, dividing H; 0 means H (standard
                             ///< multi-head attention), 1 is multi-query attention
  bool bias = true;          ///< q/k/v/out projection biases present
  bool batch_first = false;  ///< inputs [B, L, E] instead of [L, B, E]
  bool rotary = false;       ///< rotary position embedding on every head's Q and K
  RotaryLayout rotary_layout = RotaryLayout::interleaved;
  double rotary_base = 10000.0;
};

/// Forward arguments.
struct GroupedQueryAttentionArgs {
  Mask key_padding_mask;     ///< [B, S] padding, e.g. Mask::key_padding(bool, true = padding)
  Mask attn_mask;            ///< broadcastable to [B, H, L, S] (causal, ALiBi, additive, ...)
  bool is_causal = false;    ///< adds Mask::causal(): key j hidden from query i when j > i
  Index query_position = 0;  ///< rotary: absolute position of query row 0
  Index key_position = 0;    ///< rotary: absolute position of key row 0
};

/// Grouped-query attention: H query heads share G key/value heads, query head h reading
/// K/V head `h / (H / G)`; equal to multi-head attention whose K and V projections repeat
/// each K/V head H / G times, with G / H of the K/V projection cost and cache.
///
/// `concat_h(softmax(Q_h K_g(h)^T / sqrt(d_k) + mask) V_g(h)) W_o^T + b_o`, d_k = E / H,
/// Q = query W_q^T + b_q [L, E], K = key W_k^T + b_k [S, G d_k], V = value W_v^T + b_v.
/// With `rotary`, Q and K of each head are rotated by their positions first (apply_rotary).
/// Parameter names (state dict): `q_proj.weight` [E, E], `k_proj.weight` [G d_k, E],
/// `v_proj.weight` [G d_k, E], `out_proj.weight` [E, E], and `.bias` for each.
/// \note Ainslie et al. 2023 (GQA); Shazeer 2019 (multi-query attention); RoPE: Su et al. 2021.
/// \sa MultiheadAttention, alibi_mask
template <typename Scalar>
class GroupedQueryAttention {
  static_assert(is_supported_scalar_v<Scalar>,
                "attend::GroupedQueryAttention: Scalar must be float or double");

 public:
  GroupedQueryAttentionOptions options;
  Matrix<Scalar> q_proj_weight;    // [E, E]
  Matrix<Scalar> k_proj_weight;    // [G * d_k, E]
  Matrix<Scalar> v_proj_weight;    // [G * d_k, E]
  Matrix<Scalar> out_proj_weight;  // [E, E]
  Vector<Scalar> q_proj_bias;      // [E] or empty
  Vector<Scalar> k_proj_bias;      // [G * d_k] or empty
  Vector<Scalar> v_proj_bias;      // [G * d_k] or empty
  Vector<Scalar> out_proj_bias;    // [E] or empty

  /// Xavier-uniform projections, out_proj U(+-1/sqrt(E)), zero biases (as
  /// MultiheadAttention), from `seed`.
  /// \throws value_error when E or H is not positive, H does not divide E, G does not divide
  ///   H, or rotary is asked for an odd head_dim.
  explicit GroupedQueryAttention(const GroupedQueryAttentionOptions& opts, std::uint64_t seed = 0)
      : options(opts) {
    const std::string who = "GroupedQueryAttention";
    if (options.num_kv_heads == 0) options.num_kv_heads = options.num_heads;
    const Index E = options.embed_dim, H = options.num_heads, G = options.num_kv_heads;
    if (E <= 0 || H <= 0 || G <= 0) {
      throw value_error(who + ": embed_dim is " + std::to_string(E) + ", num_heads " +
                        std::to_string(H) + " and num_kv_heads " + std::to_string(G) +
                        ", expected all positive");
    }
    if (E % H != 0) {
      throw value_error(who + ": embed_dim " + std::to_string(E) +
                        " is not divisible by num_heads " + std::to_string(H));
    }
    if (H % G != 0) {
      throw value_error(who + ": num_kv_heads " + std::to_string(G) +
                        " does not divide num_heads " + std::to_string(H));
    }
    if (options.rotary && (E / H) % 2 != 0) {
      throw value_error(who + ": head_dim " + std::to_string(E / H) +
                        " is odd, expected an even head_dim for rotary");
    }
    Rng rng(seed);
    q_proj_weight.resize(E, E);
    k_proj_weight.resize(kv_width(), E);
    v_proj_weight.resize(kv_width(), E);
    out_proj_weight.resize(E, E);
    xavier_uniform(q_proj_weight, rng);
    xavier_uniform(k_proj_weight, rng);
    xavier_uniform(v_proj_weight, rng);
    fill_uniform(out_proj_weight, 1.0 / std::sqrt(static_cast<double>(E)), rng);
    if (options.bias) {
      q_proj_bias = out_proj_bias = Vector<Scalar>::Zero(E);
      k_proj_bias = v_proj_bias = Vector<Scalar>::Zero(kv_width());
    }
  }

  Index embed_dim() const noexcept { return options.embed_dim; }
  Index num_heads() const noexcept { return options.num_heads; }
  Index num_kv_heads() const noexcept { return options.num_kv_heads; }
  Index head_dim() const noexcept { return options.embed_dim / options.num_heads; }
  /// G * d_k, the width of the projected keys and values.
  Index kv_width() const noexcept { return options.num_kv_heads * head_dim(); }

  /// Loads `prefix` + "q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight"
  /// and, with bias, the four ".bias" tensors.
  /// \throws index_error when one is missing; shape_error on a wrong shape; value_error on
  ///   NaN/Inf. On error nothing is changed.
  void load_state_dict(const SafeTensors& st, const std::string& prefix = "") {
    const Index E = options.embed_dim, W = kv_width();
    GroupedQueryAttention m = *this;
    m.q_proj_weight = load_matrix<Scalar>(st, prefix + "q_proj.weight", E, E);
    m.k_proj_weight = load_matrix<Scalar>(st, prefix + "k_proj.weight", W, E);
    m.v_proj_weight = load_matrix<Scalar>(st, prefix + "v_proj.weight", W, E);
    m.out_proj_weight = load_matrix<Scalar>(st, prefix + "out_proj.weight", E, E);
    if (options.bias) {
      m.q_proj_bias = load_vector<Scalar>(st, prefix + "q_proj.bias", E);
      m.k_proj_bias = load_vector<Scalar>(st, prefix + "k_proj.bias", W);
      m.v_proj_bias = load_vector<Scalar>(st, prefix + "v_proj.bias", W);
      m.out_proj_bias = load_vector<Scalar>(st, prefix + "out_proj.bias", E);
    }
    *this = std::move(m);
  }

  /// \param query [L, B, E] ([B, L, E] when batch_first; [L, E] unbatched)
  /// \param key, value [S, B, E] in the same layout
  /// \returns shaped as query
  /// \throws shape_error on wrong shapes or masks; value_error on NaN/Inf or a negative
  ///   rotary position.
  Tensor<Scalar> forward(const Tensor<Scalar>& query, const Tensor<Scalar>& key,
                         const Tensor<Scalar>& value,
                         const GroupedQueryAttentionArgs& args = {}) const {
    const std::string who = "GroupedQueryAttention::forward";
    const Index E = options.embed_dim, H = options.num_heads, dh = head_dim();
    const Index group = H / options.num_kv_heads;  // query heads per K/V head
    const bool bf = options.batch_first;
    const detail::StepDims q = detail::check_step_input(query, E, bf, 0, who, "query");
    const detail::StepDims k = detail::check_step_input(key, E, bf, q.B, who, "key");
    const detail::StepDims v = detail::check_step_input(value, E, bf, q.B, who, "value");
    if (k.unbatched != q.unbatched || v.unbatched != q.unbatched || v.T != k.T) {
      throw shape_error(who + ": key is " + detail::shape_string(key.shape()) + " and value " +
                        detail::shape_string(value.shape()) + ", expected the same layout and " +
                        "length as each other, batched as query");
    }
    if (args.query_position < 0 || args.key_position < 0) {
      throw value_error(who + ": query_position and key_position must be >= 0");
    }
    const Index L = q.T, S = k.T;
    args.key_padding_mask.check(q.B, 1, 1, S, who, "key_padding_mask");
    args.attn_mask.check(q.B, H, L, S, who, "attn_mask");
    detail::check_finite(query, who, "query");
    detail::check_finite(key, who, "key");
    detail::check_finite(value, who, "value");
    Mask mask = args.key_padding_mask & args.attn_mask;
    if (args.is_causal) mask = mask & Mask::causal(0);

    const Scalar scale = static_cast<Scalar>(1.0 / std::sqrt(static_cast<double>(dh)));
    Tensor<Scalar> result(query.shape());
    Matrix<Scalar> xq(L, E), xk(S, E), xv(S, E);                    // one sequence's inputs
    Matrix<Scalar> qp(L, E), kp(S, kv_width()), vp(S, kv_width());  // projections
    Matrix<Scalar> heads(L, E), out(L, E), w(L, S);
    // No queries or no keys: no head slices of empty matrices (a non-zero offset from a
    // null pointer); the heads are 0, as MultiheadAttention's.
    const bool empty = L == 0 || S == 0;
    if (empty) heads.setZero();
    for (Index b = 0; b < q.B; ++b) {
      for (Index t = 0; t < L; ++t) xq.row(t) = detail::step_row(query, q, bf, b, t);
      for (Index t = 0; t < S; ++t) xk.row(t) = detail::step_row(key, k, bf, b, t);
      for (Index t = 0; t < S; ++t) xv.row(t) = detail::step_row(value, v, bf, b, t);
      project(xq, q_proj_weight, q_proj_bias, qp);
      project(xk, k_proj_weight, k_proj_bias, kp);
      project(xv, v_proj_weight, v_proj_bias, vp);
      if (options.rotary && !empty) {
        for (Index h = 0; h < H; ++h) {
          detail::rotate_pairs<Scalar>(qp.middleCols(h * dh, dh), args.query_position,
                                       options.rotary_layout, options.rotary_base, 1.0);
        }
        for (Index g = 0; g < options.num_kv_heads; ++g) {
          detail::rotate_pairs<Scalar>(kp.middleCols(g * dh, dh), args.key_position,
                                       options.rotary_layout, options.rotary_base, 1.0);
        }
      }
      for (Index h = 0; !empty && h < H; ++h) {
        const Index g = h / group;
        detail::attention_head_reference<Scalar>(
            qp.middleCols(h * dh, dh), kp.middleCols(g * dh, dh), vp.middleCols(g * dh, dh), mask,
            b, h, scale, heads.middleCols(h * dh, dh), w);
      }
      project(heads, out_proj_weight, out_proj_bias, out);
      for (Index t = 0; t < L; ++t) detail::step_row(result, q, bf, b, t) = out.row(t);
    }
    return result;
  }

 private:
  static void project(const Matrix<Scalar>& x, const Matrix<Scalar>& w, const Vector<Scalar>& bias,
                      Matrix<Scalar>& out) {
    out.noalias() = x * w.transpose();
    if (bias.size() != 0) out.rowwise() += bias.transpose();
  }
};

}  // namespace attend
