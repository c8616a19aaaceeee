// SPDX-License-Identifier: MIT
// Options shared by the transformer encoder and decoder layers, and their feed-forward block.
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/ops/activation.hpp"
#include "attend/ops/linear.hpp"

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>

namespace attend {

/// Constructor options of a transformer layer, named as torch.nn.TransformerEncoderLayer's
/// and torch.nn.TransformerDecoderLayer's arguments. Layers run in evaluation mode (no
/// dropout), so PyTorch's `dropout` argument has no counterpart.
struct TransformerLayerOptions {
  Index d_model = 0;                         ///< model width E (required)
  Index nhead = 0;                           ///< attention heads H (required); divides d_model
  Index dim_feedforward = 2048;              ///< hidden width F of the feed-forward block
  Activation activation = Activation::relu;  ///< "relu" (PyTorch's default) or "gelu"
  double layer_norm_eps = 1e-5;              ///< eps of every LayerNorm of the layer
  bool batch_first = false;                  ///< sequences [B, L, E] instead of [L, B, E]
  bool norm_first = false;                   ///< pre-norm (true) or post-norm (false, the paper)
};

namespace detail {

/// Checks the options at a layer's constructor; `who` is the class name.
inline void check_layer_options(const TransformerLayerOptions& o, const std::string& who) {
  if (o.d_model <= 0 || o.nhead <= 0) {
    throw value_error(who + ": d_model is " + std::to_string(o.d_model) + " and nhead is " +
                      std::to_string(o.nhead) + ", expected both positive");
  }
  if (o.d_model % o.nhead != 0) {
    throw value_error(who + ": d_model " + std::to_string(o.d_model) +
                      " is not divisible by nhead " + std::to_string(o.nhead));
  }
  if (o.dim_feedforward <= 0) {
    throw value_error(who + ": dim_feedforward is " + std::to_string(o.dim_feedforward) +
                      ", expected a positive size");
  }
  if (!(o.layer_norm_eps >= 0.0) || !std::isfinite(o.layer_norm_eps)) {
    std::ostringstream text;
    text << who << ": layer_norm_eps is " << o.layer_norm_eps << ", expected a finite value >= 0";
    throw value_error(text.str());
  }
}

/// A seed for sub-module `k` of a module seeded with `seed` (splitmix64 finaliser), so
/// sub-modules draw independent streams.
inline std::uint64_t derive_seed(std::uint64_t seed, std::uint64_t k) {
  std::uint64_t z = seed + 0x9E3779B97F4A7C15ULL * (k + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

/// `[L, B, E]`, `[B, L, E]` or `[L, E]` spelled for a message, with `t` naming the length.
inline std::string sequence_shape_text(const std::string& t, Index B, Index E, bool batch_first,
                                       bool unbatched) {
  const std::string e = std::to_string(E);
  if (unbatched) return "[" + t + ", " + e + "]";
  const std::string b = B < 0 ? "B" : std::to_string(B);
  return batch_first ? "[" + b + ", " + t + ", " + e + "]" : "[" + t + ", " + b + ", " + e + "]";
}

/// Extents of a sequence argument.
struct SequenceDims {
  Index B = 1;             // batch (1 when unbatched)
  Index L = 0;             // sequence length
  bool unbatched = false;  // given as [L, E]
};

/// Checks that `x` is `[L, B, E]` / `[B, L, E]` (batch_first) or `[L, E]`, E = d_model.
/// \param like if not null, `x` must have the same batch size and rank as this one
/// \param t the name of the length in the message ("L", "S")
/// 	hrows shape_error "<who>: <arg> is [..], expected [..] (d_model)".
template <typename S>
SequenceDims check_sequence(const Tensor<S>& x, Index d_model, bool batch_first,
                            const SequenceDims* like, const std::string& who,
                            const std::string& arg, const std::string& t) {
  SequenceDims d;
  const bool rank_ok = x.rank() == 2 || x.rank() == 3;
  d.unbatched = x.rank() == 2;
  if (rank_ok) {
    d.B = d.unbatched ? 1 : (batch_first ? x.dim(0) : x.dim(1));
    d.L = d.unbatched || !batch_first ? x.dim(0) : x.dim(1);
  }
  const bool ok = rank_ok && x.dim(-1) == d_model &&
                  (!like || (like->unbatched == d.unbatched && like->B == d.B));
  if (!ok) {
    std::string want;
    if (like) {
      want = sequence_shape_text(t, like->B, d_model, batch_first, like->unbatched);
    } else if (rank_ok) {
      want = sequence_shape_text(t, -1, d_model, batch_first, d.unbatched);
    } else {
      want = sequence_shape_text(t, -1, d_model, batch_first, false) + " or " +
             sequence_shape_text(t, -1, d_model, batch_first, true);
    }
    throw shape_error(who + ": " + arg + " is " + shape_string(x.shape()) + ", expected " + want +
                      " (d_model)");
  }
  return d;
}

/// The feed-forward block `linear2(act(linear1(x)))` of every row of `x`, added to `acc`
/// (the residual connection): `acc += act(x W1^T + b1) W2^T + b2`.
/// \param x [R, E], may alias `acc` (it is read into `hidden` before acc changes)
/// \param hidden [R, F] workspace \param acc [R, E] updated
template <typename S>
void add_feed_forward(const MatrixCRef<S>& x, const Linear<S>& linear1, const Linear<S>& linear2,
                      Activation act, MatrixRef<S> hidden, MatrixRef<S> acc) {
  linear_into<S>(x, linear1.weight, linear1.bias, hidden);  // [R, F]
  activation_inplace<S>(hidden, act);
  acc.noalias() += hidden * linear2.weight.transpose();  // [R, E]
  if (linear2.has_bias()) acc.rowwise() += linear2.bias.transpose();
}

}  // namespace detail

}  // namespace attend
