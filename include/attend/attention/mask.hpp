// SPDX-License-Identifier: MIT
// One attention-mask type with named constructors and explicit converters from the
// conventions users arrive with (PyTorch MHA, PyTorch SDPA, Keras, additive 0/-inf).
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace attend {

/// An attention mask over scores `[B, H, L, S]` (batch, head, query, key), or over scores
/// of any rank `[..., L, S]`.
///
/// Polarity is fixed inside: a mask *blocks* (query i, key j) pairs or *adds* a bias to
/// their score. Build it with the named constructors, which state the polarity of their
/// argument, and combine masks with `&`. Every stored tensor broadcasts against the scores
/// as in PyTorch (right-aligned; each extent 1 or the full size). Tensors of rank 2 to 4
/// are stored as rank 4 `[B|1, H|1, L|1, S|1]` (leading 1s added); a tensor of higher rank
/// loses its leading 1s down to rank 4 and is kept at the rank that remains, for
/// scaled_dot_product_attention on inputs of rank > 4 (which calls `flatten_leading`).
///
/// A query row whose keys are all blocked gets zero weights and a zero output (PyTorch
/// gives NaN there).
class Mask {
 public:
  /// No masking.
  Mask() = default;

  // ---- named constructors ------------------------------------------------------------

  /// Causal mask: query i may attend key j only when `j <= i + offset`. With a KV cache of
  /// `offset` earlier positions, query i sits at absolute position `offset + i`.
  /// `offset = 0` is PyTorch's `is_causal` (top-left aligned).
  static Mask causal(Index offset = 0) {
    Mask m;
    m.causal_offset_ = offset;
    return m;
  }

  /// Key padding from lengths: in batch b, keys `j >= lengths[b]` are blocked.
  /// \param lengths [B] valid keys per sequence, each in [0, S].
  /// \param S number of keys.
  /// \throws value_error when a length is negative or larger than S.
  static Mask key_padding_lengths(const std::vector<Index>& lengths, Index S) {
    const Index B = static_cast<Index>(lengths.size());
    Tensor<bool> blocked({B, 1, 1, S}, false);
    for (Index b = 0; b < B; ++b) {
      const Index len = lengths[static_cast<std::size_t>(b)];
      if (len < 0 || len > S) {
        throw value_error("Mask::key_padding_lengths: lengths[" + std::to_string(b) + "] is " +
                          std::to_string(len) + ", expected in [0, " + std::to_string(S) + "]");
      }
      for (Index j = len; j < S; ++j) blocked(b, Index(0), Index(0), j) = true;
    }
    Mask m;
    m.blocked_ = std::move(blocked);
    return m;
  }

  /// Key padding from bools. \param padded [B, S], true = padding (blocked).
  /// \throws shape_error when `padded` is not rank 2.
  static Mask key_padding(const Tensor<bool>& padded) {
    if (padded.rank() != 2) {
      throw shape_error("Mask::key_padding: padded is " + detail::shape_string(padded.shape()) +
                        ", expected [B, S]");
    }
    Mask m;
    m.blocked_ = padded.reshaped({padded.dim(0), 1, 1, padded.dim(1)});
    return m;
  }

  /// Deny matrix: true = blocked. \param blocked broadcastable to the scores [..., L, S]
  /// (rank >= 2; [B, H, L, S] for multi-head attention).
  /// \throws shape_error when `blocked` has rank < 2.
  static Mask deny(const Tensor<bool>& blocked) {
    return deny_named(blocked, "Mask::deny", "blocked");
  }
  /// Deny matrix `[L, S]`: true = blocked.
  static Mask deny(const BoolMatrix& blocked) { return deny(Tensor<bool>::from_matrix(blocked)); }

  /// Allow matrix: true = may attend. \param allowed broadcastable to [..., L, S] (rank >= 2).
  static Mask allow(const Tensor<bool>& allowed) {
    return allow_named(allowed, "Mask::allow", "allowed");
  }
  /// Allow matrix `[L, S]`: true = may attend.
  static Mask allow(const BoolMatrix& allowed) { return allow(Tensor<bool>::from_matrix(allowed)); }

  /// Additive float mask, added to the scaled scores; -inf blocks.
  /// \param bias broadcastable to [..., L, S] (rank >= 2); NaN and +inf are not allowed.
  /// \throws value_error on NaN or +inf; shape_error when `bias` has rank < 2.
  template <typename T>
  static Mask additive(const Tensor<T>& bias) {
    static_assert(is_supported_scalar_v<T>, "Mask::additive: bias must be float or double");
    for (Index i = 0; i < bias.size(); ++i) {
      const T v = bias.flat()[i];
      if (std::isnan(v) || v == std::numeric_limits<T>::infinity()) {
        throw value_error(std::string("Mask::additive: bias has ") +
                          (std::isnan(v) ? "NaN" : "+inf") + " at flat index " +
                          std::to_string(i) + "; only finite values and -inf are allowed");
      }
    }
    Tensor<double> b = to_stored(bias.template cast<double>(), "Mask::additive", "bias");
    Mask m;
    // Split: -inf entries become blocked, the rest stays a finite bias.
    Tensor<bool> blocked(b.shape(), false);
    bool any_blocked = false;
    for (Index i = 0; i < b.size(); ++i) {
      if (b.flat()[i] == -std::numeric_limits<double>::infinity()) {
        blocked.flat()[i] = true;
        b.flat()[i] = 0.0;
        any_blocked = true;
      }
    }
    if (any_blocked) m.blocked_ = std::move(blocked);
    m.bias_ = std::move(b);
    return m;
  }
  /// Additive mask `[L, S]`.
  template <typename Derived>
  static Mask additive(const Eigen::MatrixBase<Derived>& bias) {
    return additive(Tensor<typename Derived::Scalar>::from_matrix(bias));
  }

  // ---- converters from other conventions --------------------------------------------

  /// PyTorch `nn.MultiheadAttention` bool `attn_mask` (true = blocked): `[L, S]`, or
  /// `[B * num_heads, L, S]` indexed `b * num_heads + h`.
  static Mask from_torch_mha(const Tensor<bool>& attn_mask, Index num_heads) {
    return deny(split_heads(attn_mask, num_heads, "Mask::from_torch_mha"));
  }
  /// PyTorch `nn.MultiheadAttention` float `attn_mask` (added to the scores).
  template <typename T>
  static Mask from_torch_mha_additive(const Tensor<T>& attn_mask, Index num_heads) {
    return additive(split_heads(attn_mask, num_heads, "Mask::from_torch_mha_additive"));
  }
  /// PyTorch `F.scaled_dot_product_attention` bool `attn_mask` (true = attend), of any rank
  /// >= 2 broadcastable to the attention weights `[..., L, S]`.
  static Mask from_torch_sdpa(const Tensor<bool>& attn_mask) {
    return allow_named(attn_mask, "Mask::from_torch_sdpa", "attn_mask");
  }
  /// Keras attention mask (1 = attend, 0 = blocked); any value other than 0/1 is an error.
  template <typename T>
  static Mask from_keras(const Tensor<T>& mask) {
    to_stored(mask, "Mask::from_keras", "mask");  // rank check before the value scan
    Tensor<bool> allowed(mask.shape(), false);
    for (Index i = 0; i < mask.size(); ++i) {
      const T v = mask.flat()[i];
      if (!(v == T(0) || v == T(1))) {
        throw value_error("Mask::from_keras: mask has value " + std::to_string(double(v)) +
                          " at flat index " + std::to_string(i) + ", expected 0 or 1");
      }
      allowed.flat()[i] = v == T(1);
    }
    return allow_named(allowed, "Mask::from_keras", "mask");
  }
  /// Additive 0/-inf mask (any finite value is added as a bias).
  template <typename T>
  static Mask from_additive(const Tensor<T>& mask) {
    return additive(mask);
  }

  // ---- combination and queries ------------------------------------------------------

  /// Both masks apply: blocked if either blocks; biases add; causal offsets take the minimum.
  /// \throws shape_error when stored tensors do not broadcast against each other.
  friend Mask operator&(const Mask& a, const Mask& b) {
    Mask m = a;
    if (b.causal_offset_) {
      m.causal_offset_ = a.causal_offset_ ? std::min(*a.causal_offset_, *b.causal_offset_)
                                          : *b.causal_offset_;
    }
    if (b.blocked_) {
      m.blocked_ = a.blocked_ ? combine(*a.blocked_, *b.blocked_,
                                        [](bool x, bool y) { return x || y; })
                              : *b.blocked_;
    }
    if (b.bias_) {
      m.bias_ = a.bias_ ? combine(*a.bias_, *b.bias_, [](double x, double y) { return x + y; })
                        : *b.bias_;
    }
    return m;
  }

  bool empty() const noexcept { return !causal_offset_ && !blocked_ && !bias_; }
  const std::optional<Index>& causal_offset() const noexcept { return causal_offset_; }
  /// Blocked entries as a broadcast tensor of rank >= 4 (rank 4 unless built from a
  /// higher-rank tensor), if any.
  const std::optional<Tensor<bool>>& blocked() const noexcept { return blocked_; }
  /// Finite additive biases as a broadcast tensor of rank >= 4, if any.
  const std::optional<Tensor<double>>& bias() const noexcept { return bias_; }

  /// Checks that the mask broadcasts against scores `[B, H, L, S]` (a rank-4 mask: one
  /// built from a tensor of rank > 4 with a leading extent other than 1 never does).
  /// \param who the calling function and \param arg the mask argument, for the message.
  /// \throws shape_error naming both shapes.
  void check(Index B, Index H, Index L, Index S, const std::string& who,
             const std::string& arg) const {
    check(Shape{B, H, L, S}, who, arg);
  }

  /// Checks that the mask broadcasts against scores of any rank >= 2, `[..., L, S]`
  /// (right-aligned as in PyTorch; stored leading extents beyond the scores' rank must be 1).
  /// \param scores the scores' shape in the caller's coordinates
  /// \param who the calling function and \param arg the mask argument, for the message.
  /// \throws shape_error naming both shapes.
  void check(const Shape& scores, const std::string& who, const std::string& arg) const {
    const auto check_one = [&](const Shape& s) {
      if (!broadcasts_to(s, scores)) {
        throw shape_error(who + ": " + arg + " is " + detail::shape_string(s) +
                          ", expected broadcastable to " + detail::shape_string(scores));
      }
    };
    if (blocked_) check_one(blocked_->shape());
    if (bias_) check_one(bias_->shape());
  }

  /// The mask of scores `[d_0, ..., d_{n-1}, L, S]` (any rank n + 2 >= 2) re-expressed over
  /// the rank-4 scores `[B, H, L, S]` obtained by merging the leading dimensions:
  /// `B = d_0 ... d_{n-2}` and `H = d_{n-1}` (rank 3 `[N, L, S]`: B = 1, H = N; rank 2:
  /// B = H = 1). Stored tensors stay broadcast views where the merge allows it (their
  /// batch extents all 1 or all full) and are expanded over the batch dimensions otherwise.
  /// For scores of rank <= 4 this is a copy of the mask.
  /// \param scores the scores' shape \param who,arg the function and argument named by `check`
  /// \returns a mask that passes `check(B, H, L, S)`
  /// \throws shape_error when the mask does not broadcast against `scores`.
  Mask flatten_leading(const Shape& scores, const std::string& who = "Mask::flatten_leading",
                       const std::string& arg = "mask") const {
    check(scores, who, arg);
    Mask m;
    m.causal_offset_ = causal_offset_;
    if (blocked_) m.blocked_ = flatten_tensor(*blocked_, scores);
    if (bias_) m.bias_ = flatten_tensor(*bias_, scores);
    return m;
  }

  /// Whether (b, h, i, j) is blocked (assumes `check` passed).
  bool is_blocked(Index b, Index h, Index i, Index j) const {
    if (causal_offset_ && j - i > clamped_offset()) return true;
    return blocked_ && at(*blocked_, b, h, i, j);
  }

  /// Applies the mask to a tile of scaled scores: `tile(r, c)` is query `row0 + r`, key
  /// `col0 + c` of (batch b, head h). Blocked entries become -inf; biases are added.
  template <typename Scalar>
  void apply(Index b, Index h, Index row0, Index col0, MatrixRef<Scalar> tile) const {
    constexpr Scalar neg_inf = -std::numeric_limits<Scalar>::infinity();
    if (bias_) {
      for (Index r = 0; r < tile.rows(); ++r) {
        for (Index c = 0; c < tile.cols(); ++c) {
          tile(r, c) += static_cast<Scalar>(at(*bias_, b, h, row0 + r, col0 + c));
        }
      }
    }
    if (blocked_) {
      for (Index r = 0; r < tile.rows(); ++r) {
        for (Index c = 0; c < tile.cols(); ++c) {
          if (at(*blocked_, b, h, row0 + r, col0 + c)) tile(r, c) = neg_inf;
        }
      }
    }
    if (causal_offset_) {
      for (Index r = 0; r < tile.rows(); ++r) {
        // keys j > i + offset are in the future of query i (offset clamped: no overflow)
        const Index first_future = row0 + r + clamped_offset() + 1 - col0;
        for (Index c = std::max<Index>(first_future, 0); c < tile.cols(); ++c) tile(r, c) = neg_inf;
      }
    }
  }

 private:
  // Offsets beyond +-2^40 behave like +-2^40 for any realistic L and S; clamping keeps the
  // causal arithmetic i + offset free of overflow.
  Index clamped_offset() const {
    constexpr Index limit = Index(1) << 40;
    return std::clamp<Index>(*causal_offset_, -limit, limit);
  }

  static Mask deny_named(const Tensor<bool>& blocked, const char* who, const char* arg) {
    Mask m;
    m.blocked_ = to_stored(blocked, who, arg);
    return m;
  }

  static Mask allow_named(const Tensor<bool>& allowed, const char* who, const char* arg) {
    Tensor<bool> blocked = allowed;
    blocked.flat() = allowed.flat().unaryExpr([](bool a) { return !a; });
    return deny_named(blocked, who, arg);
  }

  // Whether shape s broadcasts against `to`, right-aligned (s may be longer with leading 1s).
  static bool broadcasts_to(const Shape& s, const Shape& to) {
    const std::size_t n = s.size(), m = to.size();
    for (std::size_t k = 0; k < n; ++k) {
      const Index x = s[n - 1 - k];
      if (k >= m) {
        if (x != 1) return false;
      } else if (x != 1 && x != to[m - 1 - k]) {
        return false;
      }
    }
    return true;
  }

  // Element of the broadcast of t (rank <= to.size()) at the flat row-major index `flat`
  // of shape `to`.
  template <typename T>
  static T broadcast_at(const Tensor<T>& t, const Shape& to, Index flat) {
    const Shape& s = t.shape();
    const std::size_t pad = to.size() - s.size();
    Index src = 0, stride = 1;
    for (std::size_t k = to.size(); k-- > pad;) {
      const Index ext = s[k - pad];
      const Index coord = flat % to[k];
      flat /= to[k];
      if (ext != 1) src += coord * stride;
      stride *= ext;
    }
    return t.data()[src];
  }

  // The broadcast of t materialised as a tensor of shape `to` (rank >= t's rank).
  template <typename T>
  static Tensor<T> expand(const Tensor<T>& t, const Shape& to) {
    Tensor<T> out(to);
    for (Index i = 0; i < out.size(); ++i) out.data()[i] = broadcast_at(t, to, i);
    return out;
  }

  // See flatten_leading: t (checked against scores) as [B|1, H|1, L|1, S|1].
  template <typename T>
  static Tensor<T> flatten_tensor(const Tensor<T>& t, const Shape& scores) {
    const std::size_t r = scores.size();
    if (r <= 4) return t;  // stored rank 4 and checked: leading extents past r are 1
    // check passed, so t.rank() <= r here
    const std::size_t pad = r - static_cast<std::size_t>(t.rank());
    Shape s(pad, Index(1));  // t's shape right-aligned to rank r
    s.insert(s.end(), t.shape().begin(), t.shape().end());
    Index B = 1;
    bool all_one = true, all_full = true;  // over batch dims whose extent is not 1
    for (std::size_t k = 0; k + 3 < r; ++k) {
      B *= scores[k];
      if (scores[k] == 1) continue;
      all_one = all_one && s[k] == 1;
      all_full = all_full && s[k] == scores[k];
    }
    const Index h = s[r - 3], l = s[r - 2], sk = s[r - 1];
    if (all_one) return t.reshaped({1, h, l, sk});
    if (all_full) return t.reshaped({B, h, l, sk});
    // Mixed broadcast over the batch dims: materialise them (not the H, L, S extents).
    Shape to(scores.begin(), scores.end() - 3);
    to.insert(to.end(), {h, l, sk});
    return expand(t, to).reshaped({B, h, l, sk});
  }

  template <typename T>
  static T at(const Tensor<T>& t, Index b, Index h, Index i, Index j) {
    const Shape& s = t.shape();
    return t(s[0] == 1 ? 0 : b, s[1] == 1 ? 0 : h, s[2] == 1 ? 0 : i, s[3] == 1 ? 0 : j);
  }

  // Rank 2-4: padded with leading 1s to rank 4; rank > 4: leading 1s dropped down to 4.
  template <typename T>
  static Tensor<T> to_stored(const Tensor<T>& t, const char* who, const char* arg) {
    if (t.rank() < 2) {
      throw shape_error(std::string(who) + ": " + arg + " is " + detail::shape_string(t.shape()) +
                        ", expected rank >= 2 broadcastable to [..., L, S]");
    }
    Shape s = t.shape();
    if (s.size() < 4) s.insert(s.begin(), 4 - s.size(), Index(1));
    while (s.size() > 4 && s.front() == 1) s.erase(s.begin());
    return t.reshaped(s);
  }

  template <typename T>
  static Tensor<T> split_heads(const Tensor<T>& m, Index num_heads, const char* who) {
    if (m.rank() == 2) return m;
    if (m.rank() != 3 || num_heads <= 0 || m.dim(0) % num_heads != 0) {
      throw shape_error(std::string(who) + ": attn_mask is " + detail::shape_string(m.shape()) +
                        ", expected [L, S] or [B * num_heads, L, S] with num_heads = " +
                        std::to_string(num_heads));
    }
    return m.reshaped({m.dim(0) / num_heads, num_heads, m.dim(1), m.dim(2)});
  }

  template <typename T, typename Op>
  static Tensor<T> combine(const Tensor<T>& a, const Tensor<T>& b, Op op) {
    const std::size_t r = std::max(a.shape().size(), b.shape().size());  // both >= 4
    Shape s(r);
    for (std::size_t k = 0; k < r; ++k) {  // k counts from the right
      const std::size_t ka = a.shape().size(), kb = b.shape().size();
      const Index x = k < ka ? a.shape()[ka - 1 - k] : 1;
      const Index y = k < kb ? b.shape()[kb - 1 - k] : 1;
      if (x != y && x != 1 && y != 1) {
        throw shape_error("Mask::operator&: masks " + detail::shape_string(a.shape()) + " and " +
                          detail::shape_string(b.shape()) + " do not broadcast");
      }
      s[r - 1 - k] = std::max(x, y);
    }
    Tensor<T> out(s);
    for (Index i = 0; i < out.size(); ++i) {
      out.data()[i] = op(broadcast_at(a, s, i), broadcast_at(b, s, i));
    }
    return out;
  }

  std::optional<Index> causal_offset_;
  std::optional<Tensor<bool>> blocked_;  // [B|1, H|1, L|1, S|1] (or [..., L|1, S|1]), true = blocked
  std::optional<Tensor<double>> bias_;   // [B|1, H|1, L|1, S|1] (or higher rank), finite, added
};

}  // namespace attend
