// SPDX-License-Identifier: MIT
// Multi-head attention with torch.nn.MultiheadAttention parity (eval mode).
#pragma once

#include "attend/attention/alibi.hpp"
#include "attend/attention/dispatch.hpp"
#include "attend/attention/fused.hpp"
#include "attend/attention/mask.hpp"
#include "attend/attention/multihead_backward.hpp"
#include "attend/attention/scaled_dot_product.hpp"
#include "attend/core/errors.hpp"
#include "attend/core/random.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/embedding/rotary.hpp"
#include "attend/io/state_dict.hpp"

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>

namespace attend {

/// Positional information applied inside multi-head attention (beyond what the inputs carry).
enum class PositionKind {
  /// None: attention is permutation-equivariant; positions come from the inputs (sinusoidal
  /// or learned embeddings added to the tokens). PyTorch's behaviour, the default.
  none,
  /// Rotary position embedding (RoPE) of every head's projected queries and keys
  /// (apply_rotary): scores depend on positions only through their offset. Su et al. 2021.
  rotary,
  /// ALiBi: the bias `-m_h |i - j|` (positions i of the query, j of the key; slopes m_h of
  /// alibi_slopes) added to head h's scaled scores. Causality is not implied: pass
  /// is_causal or a causal attn_mask for the paper's decoder setting. Press et al. 2022.
  alibi,
};

/// Constructor options, named as torch.nn.MultiheadAttention's arguments; the position
/// options have no PyTorch counterpart.
struct MultiheadAttentionOptions {
  Index embed_dim = 0;       ///< E, the model width (required)
  Index num_heads = 1;       ///< H; must divide embed_dim
  bool bias = true;          ///< in_proj_bias and out_proj.bias present
  Index kdim = 0;            ///< key width; 0 means embed_dim
  Index vdim = 0;            ///< value width; 0 means embed_dim
  bool batch_first = false;  ///< inputs [B, L, E] instead of [L, B, E]
  /// Learned `bias_k`, `bias_v` [1, 1, E], appended to the projected keys and values as one
  /// more key/value (S grows by 1) that every query may attend.
  bool add_bias_kv = false;
  /// A zero key and a zero value appended to every head after bias_k/bias_v (S grows by 1
  /// more), visible to every query.
  bool add_zero_attn = false;
  PositionKind position = PositionKind::none;  ///< rotary or ALiBi positions inside attention
  RotaryLayout rotary_layout = RotaryLayout::interleaved;  ///< rotary: which features pair up
  double rotary_base = 10000.0;                            ///< rotary: base of the angles (> 1)
};

/// Forward arguments, named as torch.nn.MultiheadAttention.forward's.
struct MultiheadAttentionArgs {
  /// Padding keys per sequence, e.g. `Mask::key_padding(padded)` ([B, S], true = padding) or
  /// `Mask::key_padding_lengths(lengths, S)`.
  Mask key_padding_mask;
  /// PyTorch's boolean key_padding_mask as given (true = padding): [B, S] for a batched query,
  /// [S] for an unbatched [L, E] query (the only form PyTorch accepts there). Applies together
  /// with key_padding_mask; the default (rank 0, empty) adds nothing.
  Tensor<bool> key_padding_mask_bool;
  /// Score mask broadcastable to [B, H, L, S]: `Mask::from_torch_mha(bool [L, S] or
  /// [B * H, L, S], H)`, `Mask::from_torch_mha_additive(...)`, `Mask::causal()`, ...
  Mask attn_mask;
  bool need_weights = true;          ///< return attention weights
  bool average_attn_weights = true;  ///< weights [B, L, S] averaged over heads, else [B, H, L, S]
  /// Applies a causal mask (key j hidden from query i when j > i). Unlike PyTorch, where
  /// is_causal is only a hint that attn_mask is causal, here it is the mask itself.
  bool is_causal = false;
  /// Rotary and ALiBi positions: the absolute position of query row 0 (e.g. the number of
  /// tokens decoded before these queries). Ignored when options.position is none.
  Index query_position = 0;
  /// Rotary and ALiBi positions: the absolute position of key row 0. For self-attention
  /// over a shifted window, set it equal to query_position.
  Index key_position = 0;
};

namespace detail {

/// `mask` over keys [0, S) extended to S + extra keys that every query may attend, as
/// F.multi_head_attention_forward pads attn_mask and key_padding_mask with a zero (false)
/// column for bias_k and the zero key. Causal and blocked entries of the S keys become one
/// blocked tensor [B|1, H|1, L|1, S + extra]; biases are copied with 0 in the new columns.
inline Mask append_visible_keys(const Mask& mask, Index L, Index S, Index extra) {
  if (mask.empty()) return mask;
  const Index S_all = S + extra;
  Mask out;
  if (mask.causal_offset() || mask.blocked()) {
    const Shape one{1, 1, 1, 1};
    const Shape& bs = mask.blocked() ? mask.blocked()->shape() : one;
    const Index rows = mask.causal_offset() ? L : bs[2];  // causal masks differ per query
    Tensor<bool> blocked({bs[0], bs[1], rows, S_all}, false);  // the new columns stay false
    for (Index b = 0; b < bs[0]; ++b)
      for (Index h = 0; h < bs[1]; ++h)
        for (Index i = 0; i < rows; ++i)
          for (Index j = 0; j < S; ++j) blocked(b, h, i, j) = mask.is_blocked(b, h, i, j);
    out = Mask::deny(blocked);
  }
  if (mask.bias()) {
    const Tensor<double>& t = *mask.bias();  // [B|1, H|1, L|1, S|1]
    const Shape& ts = t.shape();
    Tensor<double> bias({ts[0], ts[1], ts[2], S_all}, 0.0);  // the new columns add 0
    for (Index b = 0; b < ts[0]; ++b)
      for (Index h = 0; h < ts[1]; ++h)
        for (Index i = 0; i < ts[2]; ++i)
          for (Index j = 0; j < S; ++j) bias(b, h, i, j) = t(b, h, i, ts[3] == 1 ? 0 : j);
    out = out & Mask::additive(bias);
  }
  return out;
}

}  // namespace detail

/// Multi-head attention: `concat_h(softmax(Q_h K_h^T / sqrt(d_k) + mask) V_h) W_o^T + b_o`,
/// with `Q = query W_q^T + b_q`, `K = key W_k^T + b_k`, `V = value W_v^T + b_v`, d_k = E / H.
///
/// Parameters keep PyTorch's state-dict names and layouts: `in_proj_weight` [3E, E] packs
/// W_q, W_k, W_v when kdim == vdim == E; otherwise `q_proj_weight` [E, E], `k_proj_weight`
/// [E, kdim], `v_proj_weight` [E, vdim]; `in_proj_bias` [3E]; `out_proj.weight` [E, E] is
/// `out_proj_weight`, `out_proj.bias` [E] is `out_proj_bias`. Heads are column blocks of
/// the projected `[L, E]` matrices (no reshapes, no copies).
///
/// add_bias_kv appends the learned row `bias_k` [1, 1, E] to K and `bias_v` to V after the
/// projections (and after rotary), add_zero_attn then appends a zero row to both; every
/// query may attend the appended keys: attn_mask, key_padding_mask, is_causal and ALiBi
/// leave them visible (PyTorch pads its masks with a column of zeros / false). The weights
/// then have S + add_bias_kv + add_zero_attn columns, the appended ones last.
///
/// Positions (options.position): `rotary` rotates Q_h and K_h of every head after the
/// projection, query row r at position `query_position + r` and key row r at
/// `key_position + r`; `alibi` adds `-m_h |(query_position + i) - (key_position + j)|` to
/// head h's scaled scores, as `alibi_mask(H, L, S, false, query_position - key_position)`
/// passed in attn_mask would (it is built per call: H * L * S doubles).
/// \note Vaswani et al. 2017, section 3.2.2; torch.nn.MultiheadAttention (eval mode; dropout
///       is not supported) and F.multi_head_attention_forward for add_bias_kv/add_zero_attn.
///       Rotary: Su et al. 2021; ALiBi: Press, Smith & Lewis 2022. The KV-cache functions
///       (kv_cache.hpp) do not apply positions, bias_k/bias_v or the zero key (they refuse).
/// \sa GroupedQueryAttention (which also has rotary), alibi_mask, apply_rotary
template <typename Scalar>
class MultiheadAttention {
  static_assert(is_supported_scalar_v<Scalar>,
                "attend::MultiheadAttention: Scalar must be float or double");

 public:
  MultiheadAttentionOptions options;
  Matrix<Scalar> in_proj_weight;   // [3E, E] (packed) or empty
  Matrix<Scalar> q_proj_weight;    // [E, E] (separate) or empty
  Matrix<Scalar> k_proj_weight;    // [E, kdim] (separate) or empty
  Matrix<Scalar> v_proj_weight;    // [E, vdim] (separate) or empty
  Vector<Scalar> in_proj_bias;     // [3E] or empty when bias is false
  Matrix<Scalar> out_proj_weight;  // [E, E], state-dict name out_proj.weight
  Vector<Scalar> out_proj_bias;    // [E] or empty, state-dict name out_proj.bias
  Tensor<Scalar> bias_k;           // [1, 1, E] when add_bias_kv, else empty
  Tensor<Scalar> bias_v;           // [1, 1, E] when add_bias_kv, else empty

  /// Parameters initialised as PyTorch does (Xavier-uniform projections, zero biases,
  /// out_proj uniform(+-1/sqrt(E)), bias_k and bias_v Xavier-normal: N(0, 1/E) for their
  /// [1, 1, E] shape, fan_in = fan_out = E), from `seed`.
  /// \throws value_error when embed_dim or num_heads is not positive, H does not divide E,
  ///   or rotary positions are asked for with an odd head_dim or a base that is not > 1.
  explicit MultiheadAttention(const MultiheadAttentionOptions& opts, std::uint64_t seed = 0)
      : options(opts) {
    const std::string who = "MultiheadAttention";
    if (options.embed_dim <= 0 || options.num_heads <= 0) {
      throw value_error(who + ": embed_dim is " + std::to_string(options.embed_dim) +
                        " and num_heads is " + std::to_string(options.num_heads) +
                        ", expected both positive");
    }
    if (options.embed_dim % options.num_heads != 0) {
      throw value_error(who + ": embed_dim " + std::to_string(options.embed_dim) +
                        " is not divisible by num_heads " + std::to_string(options.num_heads));
    }
    if (options.kdim < 0 || options.vdim < 0) {
      throw value_error(who + ": kdim and vdim must be non-negative (0 = embed_dim)");
    }
    if (options.position == PositionKind::rotary) {
      const Index dh = options.embed_dim / options.num_heads;
      if (dh % 2 != 0) {
        throw value_error(who + ": head_dim " + std::to_string(dh) +
                          " is odd, expected an even head_dim for rotary");
      }
      if (!(options.rotary_base > 1.0) || !std::isfinite(options.rotary_base)) {
        throw value_error(who + ": rotary_base is " + std::to_string(options.rotary_base) +
                          ", expected a finite value > 1");
      }
    }
    if (options.kdim == 0) options.kdim = options.embed_dim;
    if (options.vdim == 0) options.vdim = options.embed_dim;
    const Index E = options.embed_dim;
    Rng rng(seed);
    if (packed()) {
      in_proj_weight.resize(3 * E, E);
      xavier_uniform(in_proj_weight, rng);
    } else {
      q_proj_weight.resize(E, E);
      k_proj_weight.resize(E, options.kdim);
      v_proj_weight.resize(E, options.vdim);
      xavier_uniform(q_proj_weight, rng);
      xavier_uniform(k_proj_weight, rng);
      xavier_uniform(v_proj_weight, rng);
    }
    out_proj_weight.resize(E, E);
    fill_uniform(out_proj_weight, 1.0 / std::sqrt(static_cast<double>(E)), rng);
    if (options.bias) {
      in_proj_bias = Vector<Scalar>::Zero(3 * E);
      out_proj_bias = Vector<Scalar>::Zero(E);
    }
    if (options.add_bias_kv) {  // torch.nn.init.xavier_normal_: std sqrt(2 / (E + E))
      const double std_dev = 1.0 / std::sqrt(static_cast<double>(E));
      for (Tensor<Scalar>* t : {&bias_k, &bias_v}) {
        *t = Tensor<Scalar>({1, 1, E});
        for (Index i = 0; i < E; ++i) t->flat()[i] = static_cast<Scalar>(std_dev * rng.normal());
      }
    }
  }

  /// Replaces every parameter with the tensors of a PyTorch state dict (`prefix` + name,
  /// e.g. prefix "self_attn." for a transformer layer), checking shapes against the options.
  /// With add_bias_kv, `bias_k` and `bias_v` [1, 1, E] are read too.
  /// \throws index_error when a parameter is missing; shape_error when one has the wrong
  ///   shape; value_error when one holds NaN/Inf. On error nothing is changed.
  void load_state_dict(const SafeTensors& st, const std::string& prefix = "") {
    const Index E = options.embed_dim;
    MultiheadAttention m = *this;  // load into a copy: all or nothing
    if (packed()) {
      m.in_proj_weight = load_matrix<Scalar>(st, prefix + "in_proj_weight", 3 * E, E);
    } else {
      m.q_proj_weight = load_matrix<Scalar>(st, prefix + "q_proj_weight", E, E);
      m.k_proj_weight = load_matrix<Scalar>(st, prefix + "k_proj_weight", E, options.kdim);
      m.v_proj_weight = load_matrix<Scalar>(st, prefix + "v_proj_weight", E, options.vdim);
    }
    m.out_proj_weight = load_matrix<Scalar>(st, prefix + "out_proj.weight", E, E);
    if (options.bias) {
      m.in_proj_bias = load_vector<Scalar>(st, prefix + "in_proj_bias", 3 * E);
      m.out_proj_bias = load_vector<Scalar>(st, prefix + "out_proj.bias", E);
    }
    if (options.add_bias_kv) {
      const auto load_bias = [&](const std::string& name) {
        const char* who = "MultiheadAttention::load_state_dict";
        detail::require_parameter(st, name, Shape{1, 1, E}, who);
        Tensor<Scalar> t = st.get<Scalar>(name);  // [1, 1, E]
        detail::require_finite(t, name, who, st.source());
        return t;
      };
      m.bias_k = load_bias(prefix + "bias_k");
      m.bias_v = load_bias(prefix + "bias_v");
    }
    *this = std::move(m);
  }

  /// True when Q/K/V projections are packed in `in_proj_weight` (kdim == vdim == E).
  bool packed() const noexcept {
    return options.kdim == options.embed_dim && options.vdim == options.embed_dim;
  }
  Index embed_dim() const noexcept { return options.embed_dim; }
  Index num_heads() const noexcept { return options.num_heads; }
  Index head_dim() const noexcept { return options.embed_dim / options.num_heads; }
  /// Keys (and values) appended after the S given ones: add_bias_kv + add_zero_attn.
  Index extra_keys() const noexcept {
    return (options.add_bias_kv ? 1 : 0) + (options.add_zero_attn ? 1 : 0);
  }

  /// Self-attention: key = value = query.
  AttentionResult<Scalar> forward(const Tensor<Scalar>& query,
                                  const MultiheadAttentionArgs& args = {}) const {
    return forward_impl(query, query, query, args, true);
  }

  /// Attention of `query` over `key`/`value`.
  /// \param query [L, B, E] ([B, L, E] when batch_first; [L, E] unbatched)
  /// \param key [S, B, kdim] \param value [S, B, vdim] (same layout rules)
  /// \returns output shaped as query; attn_weights [B, L, S'] when averaged, else
  ///          [B, H, L, S'] ([L, S'] / [H, L, S'] unbatched), empty unless need_weights;
  ///          S' = S + extra_keys() (add_bias_kv, add_zero_attn).
  /// \throws shape_error on a wrong shape (naming the argument; key_padding_mask_bool must be
  ///   [B, S], or [S] with an unbatched query); value_error on NaN/Inf.
  AttentionResult<Scalar> forward(const Tensor<Scalar>& query, const Tensor<Scalar>& key,
                                  const Tensor<Scalar>& value,
                                  const MultiheadAttentionArgs& args = {}) const {
    return forward_impl(query, key, value, args, &query == &key && &key == &value);
  }

  /// Self-attention forward for training: as forward(query, args), always on the reference
  /// path, filling `cache` (if not null) with what backward needs.
  AttentionResult<Scalar> forward(const Tensor<Scalar>& query, const MultiheadAttentionArgs& args,
                                  MultiheadAttentionCache<Scalar>* cache) const {
    return forward_impl(query, query, query, args, true, cache);
  }

  /// Forward for training: as forward(query, key, value, args), always on the reference path
  /// (the backward needs every head's weights), filling `cache` (if not null).
  /// \sa backward
  AttentionResult<Scalar> forward(const Tensor<Scalar>& query, const Tensor<Scalar>& key,
                                  const Tensor<Scalar>& value, const MultiheadAttentionArgs& args,
                                  MultiheadAttentionCache<Scalar>* cache) const {
    return forward_impl(query, key, value, args, &query == &key && &key == &value, cache);
  }

  /// Gradient of the forward that filled `cache` (documented and defined in
  /// multihead_backward_impl.hpp; the cache and gradient structs are in multihead_backward.hpp).
  MultiheadAttentionInputGrads<Scalar> backward(const MultiheadAttentionCache<Scalar>& cache,
                                                const Tensor<Scalar>& d_output,
                                                MultiheadAttentionGrad<Scalar>& grads,
                                                const Tensor<Scalar>* d_attn_weights = nullptr) const;

 private:
  using Mat = Matrix<Scalar>;

  // Copies sequence b of a [T, B, W] / [B, T, W] / [T, W] tensor into a [T, W] matrix.
  Mat sequence(const Tensor<Scalar>& x, Index b) const {
    if (x.rank() == 2) return x.as_matrix();
    if (options.batch_first) return x.matrix(b);
    const Index T = x.dim(0), B = x.dim(1), W = x.dim(2);
    Mat out(T, W);
    for (Index t = 0; t < T; ++t) out.row(t) = ConstMatrixMap<Scalar>(x.data(), T * B, W).row(t * B + b);
    return out;
  }

  // The expected shape of an input with time extent named `t` and width W, as text.
  std::string expected(Index B, const std::string& t, Index W, bool unbatched) const {
    const std::string w = std::to_string(W);
    if (unbatched) return "[" + t + ", " + w + "]";
    const std::string b = std::to_string(B);
    return options.batch_first ? "[" + b + ", " + t + ", " + w + "]"
                               : "[" + t + ", " + b + ", " + w + "]";
  }

  AttentionResult<Scalar> forward_impl(const Tensor<Scalar>& query, const Tensor<Scalar>& key,
                                       const Tensor<Scalar>& value,
                                       const MultiheadAttentionArgs& args, bool self,
                                       MultiheadAttentionCache<Scalar>* cache = nullptr) const {
    const std::string who = "MultiheadAttention::forward";
    const Index E = options.embed_dim, H = options.num_heads, dh = head_dim();
    if (query.rank() != 2 && query.rank() != 3) {
      throw shape_error(who + ": query is " + detail::shape_string(query.shape()) + ", expected " +
                        (options.batch_first ? "[B, L, " : "[L, B, ") + std::to_string(E) +
                        "] or [L, " + std::to_string(E) + "]");
    }
    const bool unbatched = query.rank() == 2;
    const Index B = unbatched ? 1 : (options.batch_first ? query.dim(0) : query.dim(1));
    const Index L = unbatched ? query.dim(0) : (options.batch_first ? query.dim(1) : query.dim(0));
    if (query.dim(-1) != E) {
      throw shape_error(who + ": query is " + detail::shape_string(query.shape()) + ", expected " +
                        expected(B, "L", E, unbatched) + " (embed_dim)");
    }
    const auto seq_len = [&](const Tensor<Scalar>& t) {
      return unbatched ? t.dim(0) : (options.batch_first ? t.dim(1) : t.dim(0));
    };
    const auto batch_of = [&](const Tensor<Scalar>& t) {
      return unbatched ? 1 : (options.batch_first ? t.dim(0) : t.dim(1));
    };
    // The label names what differs: the rank or batch of query, key's S, kdim or vdim.
    const auto mismatch = [&](const Tensor<Scalar>& t, Index want_s, Index width,
                              const char* width_name) {
      if (t.rank() != query.rank()) return std::string("rank of query");
      std::string what;
      const auto add = [&what](const std::string& w) { what += (what.empty() ? "" : ", ") + w; };
      if (batch_of(t) != B) add("B of query");
      if (want_s >= 0 && seq_len(t) != want_s) add("S of key");
      if (t.dim(-1) != width) add(width_name);
      return what;
    };
    if (const std::string what = mismatch(key, -1, options.kdim, "kdim"); !what.empty()) {
      throw shape_error(who + ": key is " + detail::shape_string(key.shape()) + ", expected " +
                        expected(B, "S", options.kdim, unbatched) + " (" + what + ")");
    }
    const Index S = seq_len(key);
    if (const std::string what = mismatch(value, S, options.vdim, "vdim"); !what.empty()) {
      throw shape_error(who + ": value is " + detail::shape_string(value.shape()) + ", expected " +
                        expected(B, std::to_string(S), options.vdim, unbatched) + " (" + what +
                        ")");
    }
    args.key_padding_mask.check(B, 1, 1, S, who, "key_padding_mask");
    args.attn_mask.check(B, H, L, S, who, "attn_mask");
    const std::optional<Mask> padding_bool =
        padding_from_bool(args.key_padding_mask_bool, B, S, unbatched, who);
    if (options.add_bias_kv) {  // public members: a wrong shape would be read out of bounds
      for (const Tensor<Scalar>* t : {&bias_k, &bias_v}) {
        if (t->shape() != Shape{1, 1, E}) {
          throw shape_error(who + ": " + (t == &bias_k ? "bias_k" : "bias_v") + " is " +
                            detail::shape_string(t->shape()) + ", expected [1, 1, " +
                            std::to_string(E) + "] (add_bias_kv)");
        }
      }
    }
    detail::check_finite(query, who, "query");
    if (!self) {
      detail::check_finite(key, who, "key");
      detail::check_finite(value, who, "value");
    }
    if (options.position != PositionKind::none &&
        (args.query_position < 0 || args.key_position < 0)) {
      throw value_error(who + ": query_position is " + std::to_string(args.query_position) +
                        " and key_position is " + std::to_string(args.key_position) +
                        ", expected both >= 0");
    }
    Mask mask = args.key_padding_mask & args.attn_mask;
    if (padding_bool) mask = mask & *padding_bool;
    if (args.is_causal) mask = mask & Mask::causal(0);
    if (options.position == PositionKind::alibi) {
      mask = mask & alibi_mask(H, L, S, false, args.query_position - args.key_position);
    }
    const Index extra = extra_keys();
    const Index S_all = S + extra;  // keys attended: the S given, then bias_k, then the zero key
    if (extra > 0) mask = detail::append_visible_keys(mask, L, S, extra);
    const bool rotary = options.position == PositionKind::rotary;
    // No queries or no keys: nothing to attend, and a head's column block of an empty
    // matrix would offset a null pointer (undefined behaviour). As PyTorch, L = 0 gives an
    // empty output and S = 0 gives zero heads, so each output row is the out_proj bias.
    const bool empty = L == 0 || S_all == 0;

    const Scalar scale = static_cast<Scalar>(1.0 / std::sqrt(static_cast<double>(dh)));
    Shape out_shape = query.shape();
    AttentionResult<Scalar> result{Tensor<Scalar>(out_shape), Tensor<Scalar>()};
    if (args.need_weights) {
      Shape ws = args.average_attn_weights ? Shape{B, L, S_all} : Shape{B, H, L, S_all};
      if (unbatched) ws.erase(ws.begin());
      result.attn_weights = Tensor<Scalar>(ws);
    }
    Mat q(L, E), k(S, E), v(S, E);  // [L, E], [S, E], [S, E] projections of one sequence
    Mat heads(L, E);                 // [L, E] concatenated head outputs
    // The fused path unless the weights are needed (returned or cached for backward) or the
    // reference is forced (ScopedAttentionPath).
    const bool reference = args.need_weights || cache != nullptr || !detail::use_fused_attention();
    Mat w(reference ? L : 0, reference ? S_all : 0);  // [L, S'] one head's weights
    FusedWorkspace<Scalar> fused_ws(dh, dh);  // the fused path's scratch, once per call
    Mat out(L, E);                   // [L, E]
    if (cache) {
      cache->start(query.shape(), key.shape(), value.shape(), self, B, H, L, S, args.need_weights,
                   args.average_attn_weights, args.query_position, args.key_position);
      cache->extra_keys = extra;
    }
    for (Index b = 0; b < B; ++b) {
      project(sequence(query, b), self ? nullptr : &key, self ? nullptr : &value, b, q, k, v);
      for (Index h = 0; rotary && !empty && h < H; ++h) {  // RoPE on each head's Q and K
        detail::rotate_pairs<Scalar>(q.middleCols(h * dh, dh), args.query_position,
                                     options.rotary_layout, options.rotary_base, 1.0);
        if (S == 0) continue;  // only appended keys (no positions): no block of an empty k
        detail::rotate_pairs<Scalar>(k.middleCols(h * dh, dh), args.key_position,
                                     options.rotary_layout, options.rotary_base, 1.0);
      }
      if (extra > 0) append_keys(k, v);  // [S', E]: bias_k / bias_v, then zeros
      Mat avg;
      if (args.need_weights && args.average_attn_weights) avg = Mat::Zero(L, S_all);
      if (empty) heads.setZero();  // [L, E]; attention over no keys is 0
      for (Index h = 0; h < H; ++h) {
        if (empty) {  // no head slices; the [L, S] weights are empty
          if (cache) cache->weights[static_cast<std::size_t>(b * H + h)] = w;
          continue;
        }
        if (!reference) {  // the fast path: fused kernel, no [L, S] buffer
          detail::attention_head_fused<Scalar>(q.middleCols(h * dh, dh), k.middleCols(h * dh, dh),
                                               v.middleCols(h * dh, dh), mask, b, h, scale,
                                               heads.middleCols(h * dh, dh), fused_ws);
          continue;
        }
        detail::attention_head_reference<Scalar>(q.middleCols(h * dh, dh), k.middleCols(h * dh, dh),
                                                 v.middleCols(h * dh, dh), mask, b, h, scale,
                                                 heads.middleCols(h * dh, dh), w);
        if (cache) cache->weights[static_cast<std::size_t>(b * H + h)] = w;
        if (args.need_weights) {
          if (args.average_attn_weights) {
            avg += w;
          } else {
            MatrixMap<Scalar>(result.attn_weights.data() + (b * H + h) * L * S_all, L, S_all) = w;
          }
        }
      }
      if (args.need_weights && args.average_attn_weights) {
        MatrixMap<Scalar>(result.attn_weights.data() + b * L * S_all, L, S_all) = avg / Scalar(H);
      }
      if (cache) {  // what backward needs (training only: copies are fine)
        cache->store(b, sequence(query, b), self ? Mat() : sequence(key, b),
                     self ? Mat() : sequence(value, b), q, k, v, heads);
      }
      out.noalias() = heads * out_proj_weight.transpose();
      if (options.bias) out.rowwise() += out_proj_bias.transpose();
      store(out, b, B, result.output, unbatched);
    }
    return result;
  }

  // Q/K/V projections of sequence b. Self-attention uses one [L, 3E] product.
  void project(const Mat& xq, const Tensor<Scalar>* key, const Tensor<Scalar>* value, Index b,
               Mat& q, Mat& k, Mat& v) const {
    const Index E = options.embed_dim;
    if (packed() && key == nullptr && xq.rows() == 0) {  // no middleCols of a null pointer
      q.resize(0, E);
      k.resize(0, E);
      v.resize(0, E);
    } else if (packed() && key == nullptr) {
      const Mat qkv = xq * in_proj_weight.transpose();  // [L, 3E]
      q = qkv.leftCols(E);
      k = qkv.middleCols(E, E);
      v = qkv.rightCols(E);
    } else if (packed()) {
      q.noalias() = xq * in_proj_weight.topRows(E).transpose();
      k.noalias() = sequence(*key, b) * in_proj_weight.middleRows(E, E).transpose();
      v.noalias() = sequence(*value, b) * in_proj_weight.bottomRows(E).transpose();
    } else {
      q.noalias() = xq * q_proj_weight.transpose();
      k.noalias() = (key ? sequence(*key, b) : xq) * k_proj_weight.transpose();
      v.noalias() = (value ? sequence(*value, b) : xq) * v_proj_weight.transpose();
    }
    if (options.bias) {
      q.rowwise() += in_proj_bias.head(E).transpose();
      k.rowwise() += in_proj_bias.segment(E, E).transpose();
      v.rowwise() += in_proj_bias.tail(E).transpose();
    }
  }

  // forward (F.multi_head_attention_forward): k = cat(k, bias_k), v = cat(v, bias_v) when
  // add_bias_kv; then k = cat(k, 0), v = cat(v, 0) when add_zero_attn. [S, E] -> [S', E].
  void append_keys(Mat& k, Mat& v) const {
    const Index S = k.rows(), E = options.embed_dim;
    k.conservativeResize(S + extra_keys(), E);
    v.conservativeResize(S + extra_keys(), E);
    Index row = S;
    if (options.add_bias_kv) {
      k.row(row) = bias_k.flat().transpose();
      v.row(row) = bias_v.flat().transpose();
      ++row;
    }
    if (options.add_zero_attn) {
      k.row(row).setZero();
      v.row(row).setZero();
    }
  }

  // PyTorch's bool key_padding_mask tensor ([B, S]; [S] unbatched) as a Mask, or nothing when
  // none is given (rank 0).
  static std::optional<Mask> padding_from_bool(const Tensor<bool>& padded, Index B, Index S,
                                               bool unbatched, const std::string& who) {
    if (padded.rank() == 0 && padded.empty()) return std::nullopt;
    const Shape want = unbatched ? Shape{S} : Shape{B, S};
    if (padded.shape() != want) {
      throw shape_error(who + ": key_padding_mask_bool is " + detail::shape_string(padded.shape()) +
                        ", expected " + detail::shape_string(want) +
                        (unbatched ? " ([S]: the query is unbatched)" : " ([B, S])"));
    }
    return Mask::deny(padded.reshaped({B, 1, 1, S}));
  }

  // Writes sequence b's [L, E] output into the [L, B, E] / [B, L, E] / [L, E] result.
  void store(const Mat& out, Index b, Index B, Tensor<Scalar>& dst, bool unbatched) const {
    const Index L = out.rows(), E = out.cols();
    if (unbatched) {
      dst.as_matrix() = out;
    } else if (options.batch_first) {
      dst.matrix(b) = out;
    } else {
      MatrixMap<Scalar> all(dst.data(), L * B, E);
      for (Index t = 0; t < L; ++t) all.row(t * B + b) = out.row(t);
    }
  }
};

}  // namespace attend

#include "attend/attention/multihead_backward_impl.hpp"  // IWYU pragma: keep
