// SPDX-License-Identifier: MIT
// Tests of rnn/: LSTM and GRU steps by hand, additive attention by hand, streaming equals the
// whole sequence, variable lengths equal running each sequence alone, no allocation in the
// time-loop kernel, state-dict round trips, greedy and beam decoding, argument errors.

// Eigen's run-time allocation check (set_is_malloc_allowed) exists only when this macro is
// defined before Eigen is first included, so it comes first and holds for the whole TU.
#ifndef EIGEN_RUNTIME_NO_MALLOC
#define EIGEN_RUNTIME_NO_MALLOC
#endif

#include "attend/core/errors.hpp"
#include "attend/core/random.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/io/safetensors.hpp"
#include "attend/io/safetensors_writer.hpp"
#include "attend/rnn/alignment.hpp"
#include "attend/rnn/cells.hpp"
#include "attend/rnn/decoding.hpp"
#include "attend/rnn/recurrent.hpp"
#include "attend/rnn/seq2seq.hpp"

#include <Eigen/Core>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "test_util.hpp"

namespace {

using attend::BoolMatrix;
using attend::Index;
using attend::Matrix;
using attend::Shape;
using attend::Tensor;

using attend_test::random_tensor;
using attend_test::require_close;

// ---- tolerances ------------------------------------------------------------------------

/// Hand-computed values are exact or written with 16 digits; the float path rounds ln 3 and
/// each of a handful of exp/tanh/products (~1 ulp each, 6e-8) on O(1) values.
template <typename S>
constexpr double kHandTol = std::is_same_v<S, float> ? 1e-6 : 1e-13;

/// Two computations of the same recurrence that differ only in summation order (a product
/// of B rows instead of T * B rows, one sequence instead of a batch): a few ulps per step
/// on O(1) values, over at most 8 steps and 2 layers of contractive recurrences.
template <typename S>
constexpr double kReorderTol = std::is_same_v<S, float> ? 1e-5 : 1e-13;

/// ln 3: sigmoid(ln 3) = 3/4, sigmoid(-ln 3) = 1/4, tanh(ln 3 / 2) = (3 - 1) / (3 + 1) = 1/2.
constexpr double kLn3 = 1.0986122886681098;

// ---- helpers ---------------------------------------------------------------------------

template <typename S>
Matrix<S> matrix(Index rows, Index cols, std::initializer_list<double> values) {
  REQUIRE(static_cast<Index>(values.size()) == rows * cols);
  Matrix<S> m(rows, cols);
  Index k = 0;
  for (const double v : values) {
    m(k / cols, k % cols) = static_cast<S>(v);
    ++k;
  }
  return m;
}

template <typename S>
attend::Vector<S> vector(std::initializer_list<double> values) {
  attend::Vector<S> v(static_cast<Index>(values.size()));
  Index k = 0;
  for (const double x : values) v(k++) = static_cast<S>(x);
  return v;
}

/// Sequence b of a [T, B, W] (or [B, T, W] when batch_first) tensor, first `len` steps, as
/// a batch of one in the same layout: [len, 1, W] or [1, len, W].
template <typename S>
Tensor<S> one_sequence(const Tensor<S>& x, Index b, Index len, bool batch_first) {
  const Index W = x.dim(2);
  Tensor<S> out(batch_first ? Shape{1, len, W} : Shape{len, 1, W});
  for (Index t = 0; t < len; ++t) {
    for (Index w = 0; w < W; ++w) {
      out.data()[t * W + w] = batch_first ? x(b, t, w) : x(t, b, w);
    }
  }
  return out;
}

/// Slice b of the batch dimension (dim 1) of a [K, B, N] state, as [K, 1, N].
template <typename S>
Tensor<S> state_slice(const Tensor<S>& s, Index b) {
  Tensor<S> out({s.dim(0), 1, s.dim(2)});
  for (Index k = 0; k < s.dim(0); ++k) out.matrix(k).row(0) = s.matrix(k).row(b);
  return out;
}

/// Adds every parameter of a layer to `w` under `prefix` + its PyTorch state-dict name.
template <typename Layer>
void add_layer(attend::SafeTensorsWriter& w, const Layer& layer, const std::string& prefix,
               const std::string& skip = "") {
  using S = typename Layer::Cell::scalar_type;
  const auto add = [&](const std::string& name, const Matrix<S>& m, bool vector) {
    Tensor<S> t = Tensor<S>::from_matrix(m);
    if (vector) t = t.reshaped({m.size()});  // a bias is 1-D [G * N] in PyTorch
    if (name != skip) w.add(prefix + name, t);
  };
  const Index D = layer.directions();
  for (Index k = 0; k < layer.options.num_layers; ++k) {
    for (Index d = 0; d < D; ++d) {
      const auto& cell = layer.cells[static_cast<std::size_t>(k * D + d)];
      const std::string sfx = "_l" + std::to_string(k) + (d ? "_reverse" : "");
      add("weight_ih" + sfx, cell.weight_ih, false);
      add("weight_hh" + sfx, cell.weight_hh, false);
      if (cell.has_bias()) {
        add("bias_ih" + sfx, cell.bias_ih.transpose(), true);
        add("bias_hh" + sfx, cell.bias_hh.transpose(), true);
      }
    }
  }
}

/// Every parameter of a layer under its PyTorch state-dict name, in a safetensors buffer.
template <typename Layer>
attend::SafeTensors layer_state_dict(const Layer& layer, const std::string& skip = "") {
  attend::SafeTensorsWriter w;
  add_layer(w, layer, "", skip);
  return attend::SafeTensors::parse(w.to_bytes());
}

}  // namespace

// ---- hand-computed steps ---------------------------------------------------------------

TEMPLATE_TEST_CASE("cells.hpp: one LSTM step with a 2-unit state by hand", "[rnn]", float, double) {
  using S = TestType;
  // input_size 1, hidden 2; rows of the [8, *] parameters in gate order i0 i1 f0 f1 g0 g1 o0 o1.
  attend::LSTMCell<S> cell(1, 2);
  cell.weight_ih = matrix<S>(8, 1, {0, 1, 1, -1, 0.5, 0, -1, 1});
  cell.weight_hh = matrix<S>(8, 2, {1, 0, 0, 1, 2, 2, -1, 1, 0.5, 0, 1, 1, 0, -2, 3, 1});
  cell.bias_hh = vector<S>({0.5, 1, -1, 0, 0.25, 2, -0.5, 0});
  cell.bias_ih = vector<S>({-1, -0.5, 1, 1, -0.5, -2, -0.5, -1});
  // x = [ln 3], h = [0.5, -0.5], c = [1, -2].
  // h W_hh^T = 0.5 * (W_hh[:, 0] - W_hh[:, 1]) = [0.5, -0.5, 0, -1, 0.25, 0, 1, 1], and
  // b_ih + b_hh = [-0.5, 0.5, 0, 1, -0.25, 0, -1, -1] cancels it exactly, so the
  // pre-activations are W_ih * ln 3 = [0, L, L, -L, L/2, 0, -L, L] (L = ln 3):
  //   i = sigmoid([0, L])  = [1/2, 3/4]     f = sigmoid([L, -L]) = [3/4, 1/4]
  //   g = tanh([L/2, 0])   = [1/2, 0]       o = sigmoid([-L, L]) = [1/4, 3/4]
  //   c' = f * c + i * g = [3/4 * 1 + 1/2 * 1/2, 1/4 * -2 + 3/4 * 0] = [1, -1/2]
  //   h' = o * tanh(c') = [1/4 * tanh(1), 3/4 * tanh(-1/2)]
  //      = [1/4 * 0.7615941559557649, 3/4 * -0.46211715726000974]
  //      = [0.19039853898894122, -0.34658786794500731]
  const attend::CellState<S> state{matrix<S>(1, 2, {0.5, -0.5}), matrix<S>(1, 2, {1, -2})};
  const attend::CellState<S> next = cell.forward(matrix<S>(1, 1, {kLn3}), state);
  require_close(next.c, matrix<S>(1, 2, {1.0, -0.5}), kHandTol<S>);
  require_close(next.h, matrix<S>(1, 2, {0.19039853898894122, -0.34658786794500731}), kHandTol<S>);

  // The same step through a 1-layer LSTM stack (one time step, h_0 and c_0 given).
  attend::RecurrentOptions o;
  o.input_size = 1;
  o.hidden_size = 2;
  attend::LSTM<S> lstm(o);
  lstm.cells[0] = cell;
  attend::RecurrentState<S> initial{Tensor<S>({1, 1, 2}, std::vector<S>{S(0.5), S(-0.5)}),
                                    Tensor<S>({1, 1, 2}, std::vector<S>{S(1), S(-2)})};
  const auto r = lstm.forward(Tensor<S>({1, 1, 1}, std::vector<S>{S(kLn3)}), initial);
  require_close(r.output.as_matrix(), next.h, 0.0);
  require_close(r.h_n.as_matrix(), next.h, 0.0);
  require_close(r.c_n.as_matrix(), next.c, 0.0);
}

TEMPLATE_TEST_CASE("cells.hpp: one GRU step with a 2-unit state by hand", "[rnn]", float, double) {
  using S = TestType;
  // input_size 1, hidden 2; rows of the [6, *] parameters in gate order r0 r1 z0 z1 n0 n1.
  attend::GRUCell<S> cell(1, 2);
  cell.weight_ih = matrix<S>(6, 1, {0, 1, -1, 0, -0.5, 0});
  cell.bias_ih = vector<S>({-1.5, -0.5, -0.25, 2, -0.5, 1.5});
  cell.weight_hh = matrix<S>(6, 2, {2, 0, 0, 1, 1, 1, -2, 2, 1, -1, 0, 2});
  cell.bias_hh = vector<S>({0.5, 1, 0.25, 0, 0, -1});
  // x = [L] (L = ln 3), h = [0.5, -0.5].
  // x W_ih^T + b_ih = [-1.5, L - 0.5, -L - 0.25, 2, -L/2 - 0.5, 1.5]
  // h W_hh^T + b_hh = [1 + 0.5, -0.5 + 1, 0 + 0.25, -2 + 0, 1 + 0, -1 - 1]
  //                 = [1.5, 0.5, 0.25, -2, 1, -2]
  //   r = sigmoid([-1.5 + 1.5, L - 0.5 + 0.5]) = sigmoid([0, L])  = [1/2, 3/4]
  //   z = sigmoid([-L - 0.25 + 0.25, 2 - 2])   = sigmoid([-L, 0]) = [1/4, 1/2]
  //   n = tanh(xn + r * hn) = tanh([-L/2 - 0.5 + 1/2 * 1, 1.5 + 3/4 * -2]) = tanh([-L/2, 0])
  //     = [-1/2, 0]        (r multiplies hn = W_hn h + b_hn, PyTorch's form)
  //   h' = (1 - z) * n + z * h = [3/4 * -1/2 + 1/4 * 1/2, 1/2 * 0 + 1/2 * -1/2] = [-1/4, -1/4]
  const attend::CellState<S> next =
      cell.forward(matrix<S>(1, 1, {kLn3}), {matrix<S>(1, 2, {0.5, -0.5}), Matrix<S>()});
  require_close(next.h, matrix<S>(1, 2, {-0.25, -0.25}), kHandTol<S>);
  CHECK(next.c.size() == 0);
}

TEMPLATE_TEST_CASE("cells.hpp: RNN cell tanh and relu by hand", "[rnn]", float, double) {
  using S = TestType;
  // h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh) with x = [2], h = [1, -1]:
  // W_ih = [0.5, -1]^T, W_hh = [[1, 0], [0.5, 0.5]], b_ih = [0.25, 0], b_hh = [-0.25, 1]
  // pre = [1 + 0.25 + 1 - 0.25, -2 + 0 + 0 + 1] = [2, -1]
  // tanh: [0.9640275800758169, -0.7615941559557649]; relu: [2, 0]
  attend::RNNCell<S> cell(1, 2);
  cell.weight_ih = matrix<S>(2, 1, {0.5, -1});
  cell.weight_hh = matrix<S>(2, 2, {1, 0, 0.5, 0.5});
  cell.bias_ih = vector<S>({0.25, 0});
  cell.bias_hh = vector<S>({-0.25, 1});
  const attend::CellState<S> h{matrix<S>(1, 2, {1, -1}), Matrix<S>()};
  require_close(cell.forward(matrix<S>(1, 1, {2}), h).h,
                matrix<S>(1, 2, {0.9640275800758169, -0.7615941559557649}), kHandTol<S>);
  cell.nonlinearity = attend::Nonlinearity::relu;
  require_close(cell.forward(matrix<S>(1, 1, {2}), h).h, matrix<S>(1, 2, {2, 0}), 0.0);
}

TEMPLATE_TEST_CASE("alignment.hpp: one additive (Bahdanau) step by hand", "[rnn]", float, double) {
  using S = TestType;
  // Hq = 1, Hk = 2, A = 2: W1 = I, W2 = [0.5, -0.5]^T, v = [2L, 1] (L = ln 3), query = [1].
  attend::BahdanauAttention<S> att(1, 2, 2);
  att.W1 = matrix<S>(2, 2, {1, 0, 0, 1});
  att.W2 = matrix<S>(2, 1, {0.5, -0.5});
  att.v = vector<S>({2 * kLn3, 1});
  // keys k0 = [-0.5, 0.5], k1 = [L/2 - 0.5, 0.5], k2 = [5, 5]; W2 q = [0.5, -0.5]:
  //   score_0 = v . tanh([0, 0])            = 0
  //   score_1 = v . tanh([L/2, 0]) = 2L * 1/2 = L
  //   score_2 = v . tanh([5.5, 4.5])        ~ 2L + 1 (the largest)
  // unmasked: weights = softmax([0, L, ~3.2]); with k2 masked: softmax([0, L]) = [1/4, 3/4],
  // context = 1/4 k0 + 3/4 k1 = [-1/8 + 3L/8 - 3/8, 1/8 + 3/8] = [3L/8 - 1/2, 1/2]
  //         = [-0.08802039174945883, 0.5]
  Tensor<S> keys({1, 3, 2});
  keys.matrix(0) = matrix<S>(3, 2, {-0.5, 0.5, kLn3 / 2 - 0.5, 0.5, 5, 5});
  BoolMatrix mask(1, 3);
  mask << false, false, true;
  const attend::AlignmentResult<S> r = att.forward(matrix<S>(1, 1, {1}), keys, mask);
  require_close(r.weights, matrix<S>(1, 3, {0.25, 0.75, 0}), kHandTol<S>);
  CHECK(r.weights(0, 2) == S(0));  // masked: exactly zero
  require_close(r.context, matrix<S>(1, 2, {-0.08802039174945883, 0.5}), kHandTol<S>);
  CHECK(r.attentional_hidden.size() == 0);

  // Precomputed key projections give the same step.
  const attend::AlignmentResult<S> r2 =
      att.forward(matrix<S>(1, 1, {1}), keys, mask, att.project_keys(keys));
  require_close(r2.context, r.context, 0.0);

  // Every key masked: zero weights and a zero context, never NaN.
  mask.setConstant(true);
  const attend::AlignmentResult<S> none = att.forward(matrix<S>(1, 1, {1}), keys, mask);
  require_close(none.weights, Matrix<S>::Zero(1, 3), 0.0);
  require_close(none.context, Matrix<S>::Zero(1, 2), 0.0);
}

TEMPLATE_TEST_CASE("alignment.hpp: Luong dot, general and concat by hand", "[rnn]", float, double) {
  using S = TestType;
  // keys k0 = [1, 0], k1 = [0, 1]; query q = [L, 0] (L = ln 3).
  Tensor<S> keys({1, 2, 2});
  keys.matrix(0) = matrix<S>(2, 2, {1, 0, 0, 1});
  const Matrix<S> q = matrix<S>(1, 2, {kLn3, 0});
  // dot: scores [L, 0] -> weights [3/4, 1/4], context = [3/4, 1/4].
  attend::LuongAttention<S> dot(attend::LuongScore::dot, 2, 2);
  require_close(dot.forward(q, keys).context, matrix<S>(1, 2, {0.75, 0.25}), kHandTol<S>);
  // general with W = [[0, 1], [1, 0]]: W k0 = [0, 1], W k1 = [1, 0]; scores [0, L]
  // -> weights [1/4, 3/4].
  attend::LuongAttention<S> general(attend::LuongScore::general, 2, 2);
  general.W = matrix<S>(2, 2, {0, 1, 1, 0});
  require_close(general.forward(q, keys).weights, matrix<S>(1, 2, {0.25, 0.75}), kHandTol<S>);
  // concat with A = 1, W = [0, 0, 1, -1], v = [2L]: W [q; k] = k[0] - k[1] = [1, -1] for
  // k0, k1, so scores = 2L tanh(+-1) = +-2L t with t = tanh(1) = 0.7615941559557649, and
  // w0 = e^(2Lt) / (e^(2Lt) + e^(-2Lt)) = sigmoid(4Lt) = sigmoid(3.346786794843281)
  //    = 0.9659994575852755; context = w0 k0 + (1 - w0) k1 = [w0, 1 - w0].
  attend::LuongAttention<S> concat(attend::LuongScore::concat, 2, 2, 1, true);
  concat.W = matrix<S>(1, 4, {0, 0, 1, -1});
  concat.v = vector<S>({2 * kLn3});
  // attentional hidden: Wc = [[1, 0, 0, 0], [0, 0, 1, 0]] picks [context_0, q_0] from
  // [context; query]: tanh([w0, L]) = [tanh(0.9659994575852755), (9 - 1) / (9 + 1)]
  //                                  = [0.7469410090424977, 0.8]
  concat.Wc = matrix<S>(2, 4, {1, 0, 0, 0, 0, 0, 1, 0});
  const attend::AlignmentResult<S> r = concat.forward(q, keys);
  const double w0 = 0.9659994575852755;
  require_close(r.weights, matrix<S>(1, 2, {w0, 1 - w0}), kHandTol<S>);
  require_close(r.context, matrix<S>(1, 2, {w0, 1 - w0}), kHandTol<S>);
  require_close(r.attentional_hidden, matrix<S>(1, 2, {0.7469410090424977, 0.8}), kHandTol<S>);
}

// ---- properties --------------------------------------------------------------------------

namespace {

/// Frame-by-frame `step` from zeros equals `forward` on the whole sequence, and `forward`
/// over two chunks (the second started from the first's h_n, c_n) equals it too.
template <typename Layer>
void check_streaming(bool batch_first) {
  using S = typename Layer::Cell::scalar_type;
  attend::RecurrentOptions o;
  o.input_size = 4;
  o.hidden_size = 5;
  o.num_layers = 2;
  o.batch_first = batch_first;
  const Layer layer(o, 17);
  attend::Rng rng(3);
  const Index T = 6, B = 3;
  const Tensor<S> x = random_tensor<S>(batch_first ? Shape{B, T, 4} : Shape{T, B, 4}, rng);
  const attend::RecurrentOutput<S> whole = layer.forward(x);

  attend::RecurrentState<S> state = layer.zero_state(B);
  attend::RecurrentWorkspace<S> ws;
  Matrix<S> frame(B, 4), out;
  for (Index t = 0; t < T; ++t) {
    for (Index b = 0; b < B; ++b) {
      for (Index i = 0; i < 4; ++i) frame(b, i) = batch_first ? x(b, t, i) : x(t, b, i);
    }
    layer.step(frame, state, out, ws);
    Matrix<S> want(B, 5);
    for (Index b = 0; b < B; ++b) {
      for (Index j = 0; j < 5; ++j)
        want(b, j) = batch_first ? whole.output(b, t, j) : whole.output(t, b, j);
    }
    require_close(out, want, kReorderTol<S>);
  }
  require_close(state.h, whole.h_n, kReorderTol<S>);
  if (Layer::Cell::has_cell_state) require_close(state.c, whole.c_n, kReorderTol<S>);

  // Two chunks of 2 and 4 steps (batch-first slices are not contiguous: build them).
  Tensor<S> first(batch_first ? Shape{B, 2, 4} : Shape{2, B, 4});
  Tensor<S> rest(batch_first ? Shape{B, 4, 4} : Shape{4, B, 4});
  for (Index t = 0; t < T; ++t) {
    for (Index b = 0; b < B; ++b) {
      for (Index i = 0; i < 4; ++i) {
        const S v = batch_first ? x(b, t, i) : x(t, b, i);
        if (t < 2) {
          (batch_first ? first(b, t, i) : first(t, b, i)) = v;
        } else {
          (batch_first ? rest(b, t - 2, i) : rest(t - 2, b, i)) = v;
        }
      }
    }
  }
  const auto a = layer.forward(first);
  const auto c = layer.forward(rest, {a.h_n, a.c_n});
  require_close(c.h_n, whole.h_n, kReorderTol<S>);
  if (Layer::Cell::has_cell_state) require_close(c.c_n, whole.c_n, kReorderTol<S>);
}

/// A batch with lengths equals each sequence run alone on its valid steps; padded outputs
/// are exactly zero and padded inputs (NaN here) are never read into the result.
template <typename Layer>
void check_lengths(bool batch_first, bool with_initial) {
  using S = typename Layer::Cell::scalar_type;
  attend::RecurrentOptions o;
  o.input_size = 3;
  o.hidden_size = 4;
  o.num_layers = 2;
  o.batch_first = batch_first;
  o.bidirectional = true;
  const Layer layer(o, 5);
  attend::Rng rng(11);
  const Index T = 6, B = 4, N = 4;
  const std::vector<Index> lengths{4, 6, 1, 3};
  Tensor<S> x = random_tensor<S>(batch_first ? Shape{B, T, 3} : Shape{T, B, 3}, rng);
  for (Index b = 0; b < B; ++b) {  // padding holds NaN: it must never reach the outputs
    for (Index t = lengths[static_cast<std::size_t>(b)]; t < T; ++t) {
      for (Index i = 0; i < 3; ++i) (batch_first ? x(b, t, i) : x(t, b, i)) = std::nan("");
    }
  }
  attend::RecurrentState<S> initial;
  if (with_initial) {
    initial.h = random_tensor<S>({4, B, N}, rng);
    if (Layer::Cell::has_cell_state) initial.c = random_tensor<S>({4, B, N}, rng);
  }
  const attend::RecurrentOutput<S> all = layer.forward(x, initial, lengths);
  for (Index b = 0; b < B; ++b) {
    INFO("sequence " << b);
    const Index len = lengths[static_cast<std::size_t>(b)];
    attend::RecurrentState<S> init_b;
    if (with_initial) {
      init_b.h = state_slice(initial.h, b);
      if (Layer::Cell::has_cell_state) init_b.c = state_slice(initial.c, b);
    }
    const auto alone = layer.forward(one_sequence(x, b, len, batch_first), init_b);
    Matrix<S> got(len, 2 * N);
    for (Index t = 0; t < len; ++t) {
      for (Index j = 0; j < 2 * N; ++j)
        got(t, j) = batch_first ? all.output(b, t, j) : all.output(t, b, j);
    }
    require_close(got, alone.output.as_matrix(), kReorderTol<S>);
    for (Index t = len; t < T; ++t) {
      for (Index j = 0; j < 2 * N; ++j) {
        REQUIRE((batch_first ? all.output(b, t, j) : all.output(t, b, j)) == S(0));
      }
    }
    require_close(state_slice(all.h_n, b), alone.h_n, kReorderTol<S>);
    if (Layer::Cell::has_cell_state)
      require_close(state_slice(all.c_n, b), alone.c_n, kReorderTol<S>);
  }
}

}  // namespace

TEMPLATE_TEST_CASE("recurrent.hpp: streaming step equals the whole sequence", "[rnn]", float,
                   double) {
  using S = TestType;
  for (const bool bf : {false, true}) {
    INFO("batch_first " << bf);
    check_streaming<attend::LSTM<S>>(bf);
    check_streaming<attend::GRU<S>>(bf);
    check_streaming<attend::RNN<S>>(bf);
  }
}

TEMPLATE_TEST_CASE("recurrent.hpp: variable lengths equal running each sequence alone", "[rnn]",
                   float, double) {
  using S = TestType;
  for (const bool bf : {false, true}) {
    for (const bool init : {false, true}) {
      INFO("batch_first " << bf << ", initial states " << init);
      check_lengths<attend::LSTM<S>>(bf, init);
      check_lengths<attend::GRU<S>>(bf, init);
      check_lengths<attend::RNN<S>>(bf, init);
    }
  }
}

TEMPLATE_TEST_CASE("recurrent.hpp: lengths all equal to T give the unpadded result", "[rnn]", float,
                   double) {
  using S = TestType;
  attend::RecurrentOptions o;
  o.input_size = 3;
  o.hidden_size = 2;
  o.bidirectional = true;
  const attend::LSTM<S> lstm(o, 1);
  attend::Rng rng(2);
  const Tensor<S> x = random_tensor<S>({5, 2, 3}, rng);
  const auto a = lstm.forward(x), b = lstm.forward(x, {}, {5, 5});
  require_close(b.output, a.output, 0.0);
  require_close(b.h_n, a.h_n, 0.0);
  require_close(b.c_n, a.c_n, 0.0);
}

TEMPLATE_TEST_CASE("cells.hpp: the time-loop kernel and a warmed step allocate nothing", "[rnn]",
                   float, double) {
  using S = TestType;
#ifdef NDEBUG
  WARN("NDEBUG is defined: Eigen's allocation check is an eigen_assert and is off");
#endif
  // Eigen packs GEMM blocks on the stack up to EIGEN_STACK_ALLOCATION_LIMIT (128 KB) and
  // on the heap beyond; these sizes stay below it.
  const Index B = 8, in = 16, N = 32;
  attend::LSTMCell<S> cell(in, N, true, 3);
  attend::Rng rng(4);
  const Matrix<S> xi = random_tensor<S>({B, 4 * N}, rng).as_matrix();
  Matrix<S> h = random_tensor<S>({B, N}, rng).as_matrix(), c = h, gates(B, 4 * N);
  Eigen::internal::set_is_malloc_allowed(false);
  cell.step_projected(xi, h, c, gates, h, c);
  Eigen::internal::set_is_malloc_allowed(true);
  REQUIRE(h.allFinite());

  attend::RecurrentOptions o;
  o.input_size = in;
  o.hidden_size = N;
  o.num_layers = 2;
  const attend::GRU<S> gru(o, 8);
  attend::RecurrentState<S> state = gru.zero_state(B);
  attend::RecurrentWorkspace<S> ws;
  Matrix<S> out;
  const Matrix<S> x = random_tensor<S>({B, in}, rng).as_matrix();
  gru.step(x, state, out, ws);  // sizes the workspace and the output
  Eigen::internal::set_is_malloc_allowed(false);
  gru.step(x, state, out, ws);
  Eigen::internal::set_is_malloc_allowed(true);
  REQUIRE(out.allFinite());
}

TEMPLATE_TEST_CASE("recurrent.hpp: state-dict round trip with PyTorch names", "[rnn]", float,
                   double) {
  using S = TestType;
  attend::RecurrentOptions o;
  o.input_size = 3;
  o.hidden_size = 2;
  o.num_layers = 2;
  o.bidirectional = true;
  const attend::LSTM<S> source(o, 1);
  attend::LSTM<S> target(o, 2);
  target.load_state_dict(layer_state_dict(source));
  attend::Rng rng(6);
  const Tensor<S> x = random_tensor<S>({4, 2, 3}, rng);
  require_close(target.forward(x).output, source.forward(x).output, 0.0);

  // A missing tensor: index_error naming it, and the layer is unchanged.
  attend::LSTM<S> other(o, 3);
  const auto before = other.forward(x).output;
  REQUIRE_THROWS_AS(other.load_state_dict(layer_state_dict(source, "bias_hh_l1_reverse")),
                    attend::index_error);
  REQUIRE_THROWS_WITH(other.load_state_dict(layer_state_dict(source, "bias_hh_l1_reverse")),
                      "load_vector: no parameter named 'bias_hh_l1_reverse' in <buffer>");
  require_close(other.forward(x).output, before, 0.0);
}

// ---- errors ------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("cells.hpp and recurrent.hpp: bad arguments throw typed errors", "[rnn]", float,
                   double) {
  using S = TestType;
  attend::LSTMCell<S> cell(1, 2);
  const attend::CellState<S> ok{Matrix<S>::Zero(2, 2), Matrix<S>::Zero(2, 2)};
  REQUIRE_THROWS_AS(cell.forward(Matrix<S>::Zero(2, 3), ok), attend::shape_error);
  REQUIRE_THROWS_WITH(cell.forward(Matrix<S>::Zero(2, 3), ok),
                      "LSTMCell::forward: input is [2, 3], expected [B, 1] (input_size)");
  REQUIRE_THROWS_WITH(cell.forward(Matrix<S>::Zero(2, 1), {Matrix<S>::Zero(3, 2), ok.c}),
                      "LSTMCell::forward: hx is [3, 2], expected [2, 2]");
  REQUIRE_THROWS_WITH(cell.forward(Matrix<S>::Zero(2, 1), {ok.h, Matrix<S>::Zero(2, 1)}),
                      "LSTMCell::forward: cx is [2, 1], expected [2, 2]");
  REQUIRE_THROWS_AS(attend::GRUCell<S>(0, 2), attend::value_error);
  REQUIRE_THROWS_WITH(attend::GRUCell<S>(0, 2),
                      "GRUCell: input_size is 0 and hidden_size is 2, expected both positive");

  attend::RecurrentOptions o;
  o.input_size = 4;
  o.hidden_size = 3;
  o.num_layers = 2;
  const attend::LSTM<S> lstm(o);
  const Tensor<S> x({5, 2, 4});
  REQUIRE_THROWS_AS(lstm.forward(Tensor<S>({5, 2, 3})), attend::shape_error);
  REQUIRE_THROWS_WITH(lstm.forward(Tensor<S>({5, 2, 3})),
                      "LSTM::forward: input is [5, 2, 3], expected [T, B, 4] (input_size) with "
                      "B, T >= 1");
  REQUIRE_THROWS_WITH(lstm.forward(Tensor<S>({0, 2, 4})),
                      "LSTM::forward: input is [0, 2, 4], expected [T, B, 4] (input_size) with "
                      "B, T >= 1");
  REQUIRE_THROWS_AS(lstm.forward(x, {Tensor<S>({1, 2, 3}), Tensor<S>()}), attend::shape_error);
  REQUIRE_THROWS_WITH(lstm.forward(x, {Tensor<S>({1, 2, 3}), Tensor<S>()}),
                      "LSTM::forward: h_0 is [1, 2, 3], expected [2, 2, 3] (num_layers * "
                      "directions, B, hidden_size)");
  REQUIRE_THROWS_WITH(lstm.forward(x, {Tensor<S>({2, 2, 3}), Tensor<S>({2, 1, 3})}),
                      "LSTM::forward: c_0 is [2, 1, 3], expected [2, 2, 3] (num_layers * "
                      "directions, B, hidden_size)");
  REQUIRE_THROWS_AS(lstm.forward(x, {}, {5, 0}), attend::value_error);
  REQUIRE_THROWS_WITH(lstm.forward(x, {}, {5, 0}),
                      "LSTM::forward: lengths[1] is 0, expected in [1, 5] (T)");
  REQUIRE_THROWS_WITH(lstm.forward(x, {}, {6, 2}),
                      "LSTM::forward: lengths[0] is 6, expected in [1, 5] (T)");
  REQUIRE_THROWS_AS(lstm.forward(x, {}, {5}), attend::shape_error);
  REQUIRE_THROWS_WITH(lstm.forward(x, {}, {5}),
                      "LSTM::forward: lengths has 1 entries, expected 2 (B)");

  o.bidirectional = true;
  const attend::GRU<S> gru(o);
  REQUIRE_THROWS_AS(gru.forward(x, {Tensor<S>(), Tensor<S>({4, 2, 3})}), attend::value_error);
  REQUIRE_THROWS_WITH(gru.forward(x, {Tensor<S>(), Tensor<S>({4, 2, 3})}),
                      "GRU::forward: c_0 is [4, 2, 3], expected empty (GRU has no cell state)");
  attend::RecurrentState<S> state = gru.zero_state(2);
  REQUIRE_THROWS_AS(gru.step(Matrix<S>::Zero(2, 4), state), attend::value_error);
  REQUIRE_THROWS_WITH(gru.step(Matrix<S>::Zero(2, 4), state),
                      "GRU::step: the stack is bidirectional, expected bidirectional false (the "
                      "reverse direction needs the whole sequence)");
  o.bidirectional = false;
  const attend::RNN<S> rnn(o);
  attend::RecurrentState<S> s2 = rnn.zero_state(2);
  REQUIRE_THROWS_AS(rnn.step(Matrix<S>::Zero(2, 5), s2), attend::shape_error);
  REQUIRE_THROWS_WITH(rnn.step(Matrix<S>::Zero(2, 5), s2),
                      "RNN::step: x is [2, 5], expected [B, 4] (input_size) with B >= 1");
  REQUIRE_THROWS_WITH(rnn.step(Matrix<S>::Zero(3, 4), s2),
                      "RNN::step: state.h is [2, 2, 3], expected [2, 3, 3] (num_layers * "
                      "directions, B, hidden_size)");
  o.num_layers = 0;
  REQUIRE_THROWS_AS(attend::LSTM<S>(o), attend::value_error);
  REQUIRE_THROWS_WITH(attend::LSTM<S>(o),
                      "LSTM: input_size is 4, hidden_size is 3 and num_layers is 0, expected all "
                      "positive");
}

TEMPLATE_TEST_CASE("alignment.hpp: bad arguments throw typed errors", "[rnn]", float, double) {
  using S = TestType;
  const attend::BahdanauAttention<S> att(3, 2, 4);
  const Tensor<S> keys({2, 5, 2});
  REQUIRE_THROWS_AS(att.forward(Matrix<S>::Zero(2, 2), keys), attend::shape_error);
  REQUIRE_THROWS_WITH(att.forward(Matrix<S>::Zero(2, 2), keys),
                      "BahdanauAttention::forward: query is [2, 2], expected [B, 3] (query_size)");
  REQUIRE_THROWS_WITH(att.forward(Matrix<S>::Zero(2, 3), Tensor<S>({3, 5, 2})),
                      "BahdanauAttention::forward: keys is [3, 5, 2], expected [2, T, 2] (B, T, "
                      "key_size)");
  REQUIRE_THROWS_WITH(att.forward(Matrix<S>::Zero(2, 3), keys, BoolMatrix::Zero(2, 4)),
                      "BahdanauAttention::forward: key_padding_mask is [2, 4], expected [2, 5] "
                      "(B, T)");
  REQUIRE_THROWS_WITH(att.forward(Matrix<S>::Zero(2, 3), keys, BoolMatrix(), Tensor<S>({2, 5, 3})),
                      "BahdanauAttention::forward: projected_keys is [2, 5, 3], expected [2, 5, 4] "
                      "(B, T, attention_size)");
  REQUIRE_THROWS_AS(attend::LuongAttention<S>(attend::LuongScore::dot, 3, 2), attend::value_error);
  REQUIRE_THROWS_WITH(attend::LuongAttention<S>(attend::LuongScore::dot, 3, 2),
                      "LuongAttention: score dot needs query_size == key_size, got 3 and 2");
  const attend::LuongAttention<S> luong(attend::LuongScore::general, 3, 2);
  REQUIRE_THROWS_WITH(luong.forward(Matrix<S>::Zero(2, 3), Tensor<S>({2, 5, 3})),
                      "LuongAttention::forward: keys is [2, 5, 3], expected [2, T, 2] (B, T, "
                      "key_size)");
}

// ---- decoding ------------------------------------------------------------------------------

namespace {

/// A bigram table as a step model: the next token's probabilities depend on the last token.
/// Tokens: 0 pad, 1 bos, 2 eos, 3 A, 4 B.
///   after bos: A 0.6, B 0.4        after A: eos 0.4, A 0.3, B 0.3
///   after B:   eos 0.9, A 0.05, B 0.05
/// Greedy takes A (0.6) then eos (0.4): P = 0.24. [B, eos] has P = 0.4 * 0.9 = 0.36.
struct BigramModel {
  using State = std::vector<std::int64_t>;  // tokens fed so far
  Index vocab_size() const { return 5; }
  State initial_state() const { return {}; }
  Matrix<double> step(std::int64_t token, State& state) const {
    static const double table[5][5] = {{0.2, 0.2, 0.2, 0.2, 0.2},
                                       {0.2, 0.2, 0.2, 0.2, 0.2},
                                       {0.2, 0.2, 0.2, 0.2, 0.2},
                                       {0, 0, 0.4, 0.3, 0.3},
                                       {0, 0, 0.9, 0.05, 0.05}};
    static const double after_bos[5] = {0, 0, 0, 0.6, 0.4};
    state.push_back(token);
    Matrix<double> lp(1, 5);
    for (Index v = 0; v < 5; ++v) {
      lp(0, v) = std::log(token == 1 ? after_bos[v] : table[token][v]);  // log 0 = -inf
    }
    return lp;
  }
};

/// Log-probability of `tokens` under `model` by teacher forcing from bos.
template <typename Model>
double rescore(const Model& model, const std::vector<std::int64_t>& tokens, std::int64_t bos) {
  auto state = model.initial_state();
  double total = 0.0;
  std::int64_t last = bos;
  for (const std::int64_t t : tokens) {
    total += static_cast<double>(model.step(last, state)(0, static_cast<Index>(t)));
    last = t;
  }
  return total;
}

}  // namespace

TEST_CASE("decoding.hpp: beam search finds the sequence greedy misses", "[rnn]") {
  const BigramModel model;
  attend::DecodeOptions o;
  o.bos = 1;
  o.eos = 2;
  o.max_length = 5;
  o.length_penalty = 0.0;  // raw log-probabilities
  const auto greedy = attend::greedy_decode(model, o);
  CHECK(greedy.tokens == std::vector<std::int64_t>{3, 2});  // A (0.6), then eos (0.4)
  CHECK(greedy.finished);
  CHECK(greedy.log_prob == Approx(std::log(0.24)).epsilon(1e-12));

  o.beam_width = 2;
  // Step 1: A (ln 0.6), B (ln 0.4). Step 2 candidates: B-eos 0.36, A-eos 0.24, A-A 0.18,
  // A-B 0.18, ...: both eos candidates rank in the top 2 and finish; the search stops.
  const auto beams = attend::beam_search(model, o);
  REQUIRE(beams.size() == 2);
  CHECK(beams[0].tokens == std::vector<std::int64_t>{4, 2});
  CHECK(beams[0].log_prob == Approx(std::log(0.36)).epsilon(1e-12));
  CHECK(beams[1].tokens == std::vector<std::int64_t>{3, 2});
  CHECK(beams[0].finished);
  CHECK(beams[1].finished);

  o.beam_width = 1;  // a beam of one is greedy
  const auto one = attend::beam_search(model, o);
  REQUIRE(one.size() == 1);
  CHECK(one[0].tokens == greedy.tokens);
  CHECK(one[0].log_prob == greedy.log_prob);

  // max_length 1 stops before eos: [A], not finished; length normalization divides by 1.
  o.max_length = 1;
  o.length_penalty = 1.0;
  const auto cut = attend::greedy_decode(model, o);
  CHECK(cut.tokens == std::vector<std::int64_t>{3});
  CHECK_FALSE(cut.finished);
  CHECK(cut.score == Approx(std::log(0.6)).epsilon(1e-12));
  o.beam_width = 2;
  const auto cut_beams = attend::beam_search(model, o);
  REQUIRE(cut_beams.size() == 2);  // no hypothesis finished: the live ones, best first
  CHECK(cut_beams[0].tokens == std::vector<std::int64_t>{3});
  CHECK(cut_beams[1].tokens == std::vector<std::int64_t>{4});
  CHECK_FALSE(cut_beams[0].finished);
}

TEST_CASE("decoding.hpp: bad options throw typed errors", "[rnn]") {
  const BigramModel model;
  attend::DecodeOptions o;
  o.beam_width = 0;
  REQUIRE_THROWS_AS(attend::beam_search(model, o), attend::value_error);
  REQUIRE_THROWS_WITH(attend::beam_search(model, o), "beam_search: beam_width is 0, expected >= 1");
  o.beam_width = 2;
  o.max_length = 0;
  REQUIRE_THROWS_WITH(attend::greedy_decode(model, o),
                      "greedy_decode: max_length is 0, expected >= 1");
  o.max_length = 3;
  o.eos = 5;
  REQUIRE_THROWS_AS(attend::greedy_decode(model, o), attend::index_error);
  REQUIRE_THROWS_WITH(attend::greedy_decode(model, o),
                      "greedy_decode: eos is 5, expected in [0, 5) (vocab_size)");
  o.eos = 2;
  o.bos = -1;
  REQUIRE_THROWS_WITH(attend::beam_search(model, o),
                      "beam_search: bos is -1, expected in [0, 5) (vocab_size)");
}

// ---- seq2seq -------------------------------------------------------------------------------

namespace {

attend::Seq2SeqOptions seq2seq_options(attend::AttentionKind kind, attend::LuongScore score,
                                       bool feeding) {
  attend::Seq2SeqOptions o;
  o.source_vocab = 10;
  o.target_vocab = 8;
  o.embedding_dim = 4;
  o.hidden_size = 5;
  o.num_layers = 2;
  o.attention = kind;
  o.luong_score = score;
  o.attention_size = 6;
  o.input_feeding = feeding;
  return o;
}

}  // namespace

TEMPLATE_TEST_CASE("seq2seq.hpp: decoding is consistent for every decoder variant", "[rnn]", float,
                   double) {
  using S = TestType;
  using attend::AttentionKind;
  using attend::LuongScore;
  const std::vector<attend::Seq2SeqOptions> variants{
      seq2seq_options(AttentionKind::none, LuongScore::general, false),
      seq2seq_options(AttentionKind::bahdanau, LuongScore::general, false),
      seq2seq_options(AttentionKind::luong, LuongScore::dot, false),
      seq2seq_options(AttentionKind::luong, LuongScore::general, true),
      seq2seq_options(AttentionKind::luong, LuongScore::concat, true)};
  const std::vector<std::int64_t> source{3, 7, 1, 9, 4};
  for (std::size_t i = 0; i < variants.size(); ++i) {
    INFO("variant " << i);
    const attend::Seq2Seq<S> model(variants[i], 42 + i);
    const attend::Seq2SeqDecoder<S> dec(model, source);
    attend::DecodeOptions o;
    o.bos = 1;
    o.eos = 2;
    o.max_length = 6;
    o.beam_width = 1;
    const auto greedy = attend::greedy_decode(dec, o);
    const auto one = attend::beam_search(dec, o);
    REQUIRE(one.size() == 1);
    CHECK(one[0].tokens == greedy.tokens);
    CHECK(one[0].log_prob == greedy.log_prob);
    require_close(one[0].state.alignment, greedy.state.alignment, 0.0);
    // Teacher forcing the greedy tokens gives the same log-probability.
    CHECK(rescore(dec, greedy.tokens, o.bos) == Approx(greedy.log_prob).epsilon(1e-12));

    // The alignment matrix: [output steps, input steps], rows on the simplex.
    const Matrix<S>& a = greedy.state.alignment;
    if (variants[i].attention == AttentionKind::none) {
      CHECK(a.rows() == 0);
    } else {
      REQUIRE(a.rows() == static_cast<Index>(greedy.tokens.size()));
      REQUIRE(a.cols() == static_cast<Index>(source.size()));
      CHECK((a.array() >= S(0)).all());
      require_close(a.rowwise().sum(), Matrix<S>::Ones(a.rows(), 1), kHandTol<S>);
    }

    o.beam_width = 3;
    const auto beams = attend::beam_search(dec, o);
    REQUIRE(!beams.empty());
    for (std::size_t b = 0; b < beams.size(); ++b) {
      if (b > 0 && beams[b].finished == beams[b - 1].finished) {
        CHECK(beams[b].score <= beams[b - 1].score);
      }
      // Each hypothesis' log-probability is that of its tokens (its state was not mixed up
      // with another beam's).
      CHECK(rescore(dec, beams[b].tokens, o.bos) == Approx(beams[b].log_prob).epsilon(1e-9));
    }
  }
}

TEMPLATE_TEST_CASE("seq2seq.hpp: the bottleneck decoder starts from the context vector z", "[rnn]",
                   float, double) {
  using S = TestType;
  const attend::Seq2Seq<S> model(
      seq2seq_options(attend::AttentionKind::none, attend::LuongScore::general, false), 5);
  const std::vector<std::int64_t> source{2, 5, 5, 8}, target{1, 6, 3};  // target[0] = bos
  const attend::Seq2SeqMemory<S> memory = model.encode(source);
  // z is the encoder LSTM's final state over the embedded source.
  const Tensor<S> x =
      Tensor<S>::from_matrix(model.source_embedding.forward(source)).reshaped({4, 1, 4});
  const auto enc = model.encoder.forward(x);
  require_close(memory.z.h, enc.h_n, 0.0);
  require_close(memory.z.c, enc.c_n, 0.0);
  // Decoder steps from z equal the decoder LSTM run over the whole target from h_0 = z.
  const Tensor<S> y =
      Tensor<S>::from_matrix(model.target_embedding.forward(target)).reshaped({3, 1, 4});
  const auto dec = model.decoder.forward(y, memory.z);
  const Matrix<S> want = attend::log_softmax(model.out.forward(dec.output.as_matrix()));  // [3, V]
  attend::Seq2SeqState<S> state = model.start(memory);
  for (Index t = 0; t < 3; ++t) {
    require_close(model.step(target[static_cast<std::size_t>(t)], state, memory), want.row(t),
                  kReorderTol<S>);
  }
}

TEMPLATE_TEST_CASE("seq2seq.hpp: state-dict round trip and bad inputs", "[rnn]", float, double) {
  using S = TestType;
  const auto opts =
      seq2seq_options(attend::AttentionKind::bahdanau, attend::LuongScore::general, false);
  const attend::Seq2Seq<S> source_model(opts, 1);
  attend::SafeTensorsWriter w;
  w.add("encoder.embedding.weight", Tensor<S>::from_matrix(source_model.source_embedding.weight));
  add_layer(w, source_model.encoder, "encoder.lstm.");
  w.add("decoder.embedding.weight", Tensor<S>::from_matrix(source_model.target_embedding.weight));
  add_layer(w, source_model.decoder, "decoder.lstm.");
  w.add("attention.W1", Tensor<S>::from_matrix(source_model.bahdanau->W1));
  w.add("attention.W2", Tensor<S>::from_matrix(source_model.bahdanau->W2));
  w.add("attention.v", Tensor<S>::from_matrix(source_model.bahdanau->v).reshaped({6}));
  w.add("out.weight", Tensor<S>::from_matrix(source_model.out.weight));
  w.add("out.bias", Tensor<S>::from_matrix(source_model.out.bias).reshaped({8}));
  attend::Seq2Seq<S> loaded(opts, 2);
  loaded.load_state_dict(attend::SafeTensors::parse(w.to_bytes()));
  attend::DecodeOptions o;
  o.max_length = 5;
  o.beam_width = 2;
  const std::vector<std::int64_t> src{1, 2, 3};
  const auto a = attend::beam_search(attend::Seq2SeqDecoder<S>(source_model, src), o);
  const auto b = attend::beam_search(attend::Seq2SeqDecoder<S>(loaded, src), o);
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    CHECK(a[i].tokens == b[i].tokens);
    CHECK(a[i].log_prob == b[i].log_prob);
  }

  REQUIRE_THROWS_AS(source_model.encode({1, 2, 12}), attend::index_error);
  REQUIRE_THROWS_WITH(source_model.encode({1, 2, 12}),
                      "Seq2Seq::encode: source[2] is 12, expected in [0, 10) (source_vocab)");
  REQUIRE_THROWS_AS(source_model.encode({}), attend::value_error);
  REQUIRE_THROWS_WITH(source_model.encode({}),
                      "Seq2Seq::encode: source is empty, expected at least one token");
  const attend::Seq2SeqMemory<S> m = source_model.encode(src);
  attend::Seq2SeqState<S> st = source_model.start(m);
  REQUIRE_THROWS_AS(source_model.step(8, st, m), attend::index_error);
  REQUIRE_THROWS_WITH(source_model.step(8, st, m),
                      "Seq2Seq::step: token is 8, expected in [0, 8) (target_vocab)");
  o.bos = 8;
  REQUIRE_THROWS_WITH(attend::greedy_decode(attend::Seq2SeqDecoder<S>(source_model, src), o),
                      "greedy_decode: bos is 8, expected in [0, 8) (vocab_size)");
  o.bos = 1;
  o.beam_width = 0;
  REQUIRE_THROWS_WITH(attend::beam_search(attend::Seq2SeqDecoder<S>(source_model, src), o),
                      "beam_search: beam_width is 0, expected >= 1");
}
