// SPDX-License-Identifier: MIT
// Stacked, optionally bidirectional RNN / LSTM / GRU layers with torch.nn.RNN/LSTM/GRU parity.
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/random.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/io/safetensors.hpp"
#include "attend/rnn/cells.hpp"

#include <Eigen/Core>

#include <cstdint>
#include <string>
#include <vector>

namespace attend {

/// Constructor options, named as torch.nn.RNN/LSTM/GRU's arguments.
struct RecurrentOptions {
  Index input_size = 0;        ///< width of the input features (required)
  Index hidden_size = 0;       ///< N, width of h (required)
  Index num_layers = 1;        ///< stacked layers; layer k > 0 reads layer k - 1's output
  bool bias = true;            ///< b_ih and b_hh present
  bool batch_first = false;    ///< input and output [B, T, *] instead of [T, B, *]
  bool bidirectional = false;  ///< D = 2 directions, outputs concatenated [forward, reverse]
  Nonlinearity nonlinearity = Nonlinearity::tanh;  ///< RNN only (ignored by LSTM and GRU)
  /// GRU only (ignored by RNN and LSTM): true is PyTorch's n = tanh(xn + r * (h W_hn^T +
  /// b_hn)), false ONNX's default n = tanh(xn + (r * h) W_hn^T + b_hn); see GRUCell. Copied
  /// into every cell at construction, and the cells' member is what forward reads.
  bool linear_before_reset = true;
};

/// Recurrent state of every layer and direction: `h` [num_layers * D, B, N], and `c`
/// (LSTM only) of the same shape. An empty tensor means zeros.
template <typename Scalar>
struct RecurrentState {
  Tensor<Scalar> h;  // [num_layers * D, B, N] or empty (zeros)
  Tensor<Scalar> c;  // [num_layers * D, B, N] (LSTM) or empty
};

/// What a layer's forward returns, named as PyTorch's outputs.
template <typename Scalar>
struct RecurrentOutput {
  Tensor<Scalar> output;  // [T, B, D * N] ([B, T, D * N] when batch_first); 0 at padded steps
  Tensor<Scalar> h_n;     // [num_layers * D, B, N], also when batch_first
  Tensor<Scalar> c_n;     // [num_layers * D, B, N] (LSTM) or empty
};

/// Caller-owned scratch of `Recurrent::step`; it grows on the first call and is reused, so
/// a streaming caller allocates nothing per frame after the first.
template <typename Scalar>
struct RecurrentWorkspace {
  Matrix<Scalar> xi;        // [B, G * N] input projection of one layer
  Matrix<Scalar> gates;     // [B, G * N]
  Matrix<Scalar> layer_in;  // [B, N] output of the layer below
  Matrix<Scalar> h_new;     // [B, N] new h of a GRU layer with linear_before_reset false
};

/// A stack of recurrent layers over whole sequences, as torch.nn.RNN, nn.LSTM and nn.GRU
/// (use the aliases `RNN<S>`, `LSTM<S>`, `GRU<S>`). Per layer k and direction d the cell
/// `cells[k * D + d]` applies its gate equations (see RNNCell, LSTMCell, GRUCell) at every
/// step; the reverse direction runs from each sequence's last valid step back to step 0,
/// and a layer's output is [h_forward, h_reverse] per step.
///
/// Speed: the input projection `X W_ih^T + b_ih` of all T steps is one matrix product per
/// layer and direction before the time loop; the loop does one `h W_hh^T` product (a GRU
/// with `options.linear_before_reset` false: one for the r, z rows and one on r * h for the
/// n rows) and element-wise gates per step and allocates nothing. forward is const
/// (thread-safe).
///
/// Variable lengths follow pack_padded_sequence / pad_packed_sequence: sequence b has
/// `lengths[b]` valid steps (any order, each in [1, T]); padded steps leave the state
/// unchanged, their output is 0, and h_n / c_n hold the state after the last valid step.
///
/// Streaming: `step` feeds one frame of every sequence and carries (h, c) in a
/// `RecurrentState`; frame-by-frame `step` equals `forward` on the whole sequence (and
/// `forward` with `initial` = the state of the previous chunk continues a stream by chunks).
///
/// State-dict names are PyTorch's: `weight_ih_l{k}`, `weight_hh_l{k}`, `bias_ih_l{k}`,
/// `bias_hh_l{k}`, with suffix `_reverse` for the second direction.
/// \note torch.nn.RNN / LSTM / GRU (eval mode; dropout and proj_size are not supported).
template <typename Scalar, template <typename> class CellType>
class Recurrent {
  static_assert(is_supported_scalar_v<Scalar>, "attend::Recurrent: Scalar must be float or double");

 public:
  using Cell = CellType<Scalar>;

  RecurrentOptions options;
  std::vector<Cell> cells;  // [num_layers * D], cells[k * D + 1] is layer k's reverse direction

  /// Layers initialised as PyTorch does (every parameter U(-1/sqrt(N), 1/sqrt(N))), from one
  /// generator seeded with `seed`, in state-dict order.
  /// \throws value_error when input_size, hidden_size or num_layers is not positive.
  explicit Recurrent(const RecurrentOptions& opts, std::uint64_t seed = 0);

  /// Replaces every parameter with `prefix + "weight_ih_l0"` etc. from a PyTorch state dict.
  /// \throws index_error when one is missing; shape_error on a wrong shape; value_error on
  ///   NaN/Inf. On error nothing is changed.
  void load_state_dict(const SafeTensors& st, const std::string& prefix = "");

  /// "LSTM", "GRU" or "RNN": the class name used in error messages.
  static const char* name() noexcept;
  Index directions() const noexcept { return options.bidirectional ? 2 : 1; }
  /// Gate blocks per cell: 1 (RNN), 4 (LSTM), 3 (GRU).
  static constexpr Index gate_count() noexcept { return Cell::gate_count; }

  /// Zero state for a batch of `batch` sequences: h (and c for the LSTM) [num_layers * D, B, N].
  RecurrentState<Scalar> zero_state(Index batch) const;

  /// Runs the whole stack over whole sequences.
  /// \param input [T, B, input_size] ([B, T, input_size] when batch_first), T, B >= 1.
  /// \param initial h_0 (and c_0) [num_layers * D, B, N]; an empty tensor means zeros.
  /// \param lengths [B] valid steps per sequence, each in [1, T]; empty = all T.
  /// \returns output [T, B, D * N] or [B, T, D * N]; h_n, c_n [num_layers * D, B, N].
  /// \throws shape_error when input, h_0, c_0 or lengths has the wrong shape; value_error
  ///   when a length is outside [1, T], c_0 is given to an RNN/GRU, or input (its steps
  ///   before lengths[b]; padded steps are never read), h_0 or c_0 holds NaN/Inf.
  RecurrentOutput<Scalar> forward(const Tensor<Scalar>& input,
                                  const RecurrentState<Scalar>& initial = {},
                                  const std::vector<Index>& lengths = {}) const;

  /// One streaming step of a unidirectional stack: feeds frame x of every sequence, updates
  /// `state` in place and writes the top layer's new h. No allocation once `output` and
  /// `ws` have their sizes.
  /// \param x [B, input_size] \param state h (and c) [num_layers, B, N], e.g. zero_state(B)
  /// \param output [B, N] written (resized if needed) \param ws reusable scratch
  /// \throws value_error when the stack is bidirectional or x or the state holds NaN/Inf;
  ///   shape_error when x or the state has the wrong shape.
  void step(const MatrixCRef<Scalar>& x, RecurrentState<Scalar>& state, Matrix<Scalar>& output,
            RecurrentWorkspace<Scalar>& ws) const;
  /// As above, allocating its own output and scratch. \returns [B, N]
  Matrix<Scalar> step(const MatrixCRef<Scalar>& x, RecurrentState<Scalar>& state) const {
    RecurrentWorkspace<Scalar> ws;
    Matrix<Scalar> out;
    step(x, state, out, ws);
    return out;
  }

 private:
  void check_state(const RecurrentState<Scalar>& s, Index B, const std::string& who,
                   const char* h_name, const char* c_name) const;
};

/// Elman RNN stack (torch.nn.RNN); `options.nonlinearity` picks tanh or relu.
template <typename Scalar>
using RNN = Recurrent<Scalar, RNNCell>;
/// LSTM stack (torch.nn.LSTM), gate order i, f, g, o.
template <typename Scalar>
using LSTM = Recurrent<Scalar, LSTMCell>;
/// GRU stack (torch.nn.GRU), gate order r, z, n.
template <typename Scalar>
using GRU = Recurrent<Scalar, GRUCell>;

}  // namespace attend

#include "attend/rnn/recurrent_impl.hpp"
