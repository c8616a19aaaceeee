// SPDX-License-Identifier: MIT
// Tests of MultiheadAttention's PyTorch options add_bias_kv and add_zero_attn (forward on
// both attention paths, backward, state dict), the 1-D key_padding_mask of unbatched
// input, and the attention-path override: hand-computed cases, properties and errors.
#include "attend/attention/dispatch.hpp"
#include "attend/attention/kv_cache.hpp"
#include "attend/attention/mask.hpp"
#include "attend/attention/multihead.hpp"
#include "attend/attention/multihead_backward.hpp"
#include "attend/core/errors.hpp"
#include "attend/core/random.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/io/safetensors.hpp"
#include "attend/io/safetensors_writer.hpp"
#include "attend/train/gradcheck.hpp"
#include "attend/train/parameters.hpp"
#include "attend/transformer/state_dict_writer.hpp"

#include <Eigen/Core>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "test_util.hpp"

namespace {

using attend::AttentionPath;
using attend::Index;
using attend::Mask;
using attend::Matrix;
using attend::MultiheadAttention;
using attend::MultiheadAttentionArgs;
using attend::MultiheadAttentionCache;
using attend::MultiheadAttentionGrad;
using attend::MultiheadAttentionOptions;
using attend::Rng;
using attend::SafeTensors;
using attend::SafeTensorsWriter;
using attend::ScopedAttentionPath;
using attend::Shape;
using attend::Tensor;

using attend_test::dot_loss;
using attend_test::mat;
using attend_test::random_index;
using attend_test::random_tensor;
using attend_test::require_close;
using attend_test::require_gradient;

// ---- tolerances ------------------------------------------------------------------------

/// Hand values are exact fractions of O(1) outputs; the inputs carry ln 2 and sqrt 2, so a
/// float result is off by a few ulps of values up to ~5 (ulp 4.8e-7).
template <typename S>
constexpr double kHandTol = std::is_same_v<S, float> ? 2e-6 : 1e-12;

/// Rows of softmax weights sum to 1 up to the rounding of S + 2 terms.
template <typename S>
constexpr double kRowSumTol = std::is_same_v<S, float> ? 1e-6 : 1e-14;

/// Fused vs reference kernel on O(1) values: the scale applied at another step, another exp
/// and summation order (tests/fused_test.cpp kFusedTol: below 1e-6 observed in float).
template <typename S>
constexpr double kFusedTol = std::is_same_v<S, float> ? 1e-5 : 1e-12;

// ---- helpers ---------------------------------------------------------------------------

MultiheadAttentionOptions options(Index E, Index H, bool bias_kv, bool zero_attn, bool bias = true,
                                  Index kdim = 0, Index vdim = 0) {
  MultiheadAttentionOptions o;
  o.embed_dim = E;
  o.num_heads = H;
  o.bias = bias;
  o.kdim = kdim;
  o.vdim = vdim;
  o.add_bias_kv = bias_kv;
  o.add_zero_attn = zero_attn;
  return o;
}

/// Every parameter uniform in [-1, 1) (biases included: zeros would hide their paths).
template <typename S>
void randomize(MultiheadAttention<S>& m, Rng& rng) {
  for (Matrix<S>* w : {&m.in_proj_weight, &m.q_proj_weight, &m.k_proj_weight, &m.v_proj_weight,
                       &m.out_proj_weight}) {
    for (Index i = 0; i < w->size(); ++i) w->data()[i] = static_cast<S>(rng.uniform(-1, 1));
  }
  for (attend::Vector<S>* b : {&m.in_proj_bias, &m.out_proj_bias}) {
    for (Index i = 0; i < b->size(); ++i) (*b)[i] = static_cast<S>(rng.uniform(-1, 1));
  }
  for (Tensor<S>* t : {&m.bias_k, &m.bias_v}) {
    for (Index i = 0; i < t->size(); ++i) t->data()[i] = static_cast<S>(rng.uniform(-1, 1));
  }
}

/// The hand-computed module: E = 2, one head, no projection biases, W_q = W_k = W_v = I
/// and W_o = I, so Q, K, V are the inputs and the output is the attention itself;
/// bias_k = [-1, 0], bias_v = [8, 8] when add_bias_kv.
template <typename S>
MultiheadAttention<S> identity_module(bool bias_kv, bool zero_attn) {
  MultiheadAttention<S> m(options(2, 1, bias_kv, zero_attn, false));
  m.in_proj_weight = mat<S>(6, 2, {1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1});  // [I; I; I]
  m.out_proj_weight = Matrix<S>::Identity(2, 2);
  if (bias_kv) {
    m.bias_k = Tensor<S>({1, 1, 2}, std::vector<S>{S(-1), S(0)});
    m.bias_v = Tensor<S>({1, 1, 2}, std::vector<S>{S(8), S(8)});
  }
  return m;
}

/// The hand case's inputs, unbatched: queries q0 = [sqrt(2) ln 2, 0] and q1 = [0, 0];
/// keys k0 = [1, 0], k1 = [0, 1]; values v0 = [4, 0], v1 = [0, 4]. With d_k = 2 the scaled
/// scores of q0 are its first entry times 1/sqrt(2): ln 2 for k0, 0 for k1, -ln 2 for
/// bias_k = [-1, 0], 0 for the zero key; q1 scores 0 everywhere (uniform weights).
template <typename S>
struct HandInputs {
  Tensor<S> query =
      Tensor<S>({2, 2}, std::vector<S>{S(std::sqrt(2.0) * std::log(2.0)), S(0), S(0), S(0)});
  Tensor<S> key = Tensor<S>({2, 2}, std::vector<S>{S(1), S(0), S(0), S(1)});
  Tensor<S> value = Tensor<S>({2, 2}, std::vector<S>{S(4), S(0), S(0), S(4)});
};

/// The layout of a [T, W] sequence for B sequences (B = 0: unbatched), seq-first.
Shape layout(Index B, Index T, Index W) { return B == 0 ? Shape{T, W} : Shape{T, B, W}; }

/// A random bool tensor of `shape`, true with probability 1/3.
Tensor<bool> random_padding(const Shape& shape, Rng& rng) {
  Tensor<bool> t(shape, false);
  for (Index i = 0; i < t.size(); ++i) t.data()[i] = rng.uniform(0, 3) < 1;
  return t;
}

// =======================================================================================
// Hand-computed cases
// =======================================================================================

TEMPLATE_TEST_CASE("multihead_options: add_bias_kv by hand", "[multihead][bias_kv]", float,
                   double) {
  using S = TestType;
  const MultiheadAttention<S> m = identity_module<S>(true, false);
  const HandInputs<S> in;
  SECTION("no mask") {
    // q0: scores [ln 2, 0, -ln 2] over [k0, k1, bias_k]; exp = [2, 1, 1/2], sum 7/2,
    //     weights [4/7, 2/7, 1/7]; output 4/7 [4, 0] + 2/7 [0, 4] + 1/7 [8, 8] = [24/7, 16/7].
    // q1: weights [1/3, 1/3, 1/3]; output ([4, 0] + [0, 4] + [8, 8]) / 3 = [4, 4].
    const auto r = m.forward(in.query, in.key, in.value);
    REQUIRE(r.attn_weights.shape() == Shape{2, 3});
    require_close(r.attn_weights.as_matrix(),
                  mat<double>(2, 3, {4.0 / 7, 2.0 / 7, 1.0 / 7, 1.0 / 3, 1.0 / 3, 1.0 / 3}),
                  kHandTol<S>);
    require_close(r.output.as_matrix(), mat<double>(2, 2, {24.0 / 7, 16.0 / 7, 4, 4}), kHandTol<S>);
  }
  SECTION("key k1 padded (1-D key_padding_mask) or hidden from q0 by is_causal") {
    // The bias_k column is appended unpadded and visible to every query.
    // q0 (k1 blocked either way): exp [2, -, 1/2], weights [4/5, 0, 1/5];
    //     output 4/5 [4, 0] + 1/5 [8, 8] = [24/5, 8/5].
    const Matrix<double> q0_weights = mat<double>(1, 3, {4.0 / 5, 0, 1.0 / 5});
    const Matrix<double> q0_output = mat<double>(1, 2, {24.0 / 5, 8.0 / 5});
    MultiheadAttentionArgs padded;
    padded.key_padding_mask_bool = Tensor<bool>({2}, std::vector<bool>{false, true});
    // q1 (k1 padded): weights [1/2, 0, 1/2]; output ([4, 0] + [8, 8]) / 2 = [6, 4].
    const auto rp = m.forward(in.query, in.key, in.value, padded);
    require_close(rp.attn_weights.as_matrix(),
                  mat<double>(2, 3, {4.0 / 5, 0, 1.0 / 5, 0.5, 0, 0.5}), kHandTol<S>);
    require_close(rp.output.as_matrix(), mat<double>(2, 2, {24.0 / 5, 8.0 / 5, 6, 4}), kHandTol<S>);
    MultiheadAttentionArgs causal;
    causal.is_causal = true;
    // q1 (causal: sees k0, k1 and bias_k): as without a mask, [4, 4].
    const auto rc = m.forward(in.query, in.key, in.value, causal);
    require_close(rc.attn_weights.as_matrix().topRows(1), q0_weights, kHandTol<S>);
    require_close(rc.output.as_matrix().topRows(1), q0_output, kHandTol<S>);
    require_close(rc.output.as_matrix().bottomRows(1), mat<double>(1, 2, {4, 4}), kHandTol<S>);
  }
}

TEMPLATE_TEST_CASE("multihead_options: add_zero_attn by hand", "[multihead][zero_attn]", float,
                   double) {
  using S = TestType;
  const HandInputs<S> in;
  SECTION("add_zero_attn alone") {
    // q0: scores [ln 2, 0, 0] over [k0, k1, zero key]; exp [2, 1, 1], sum 4,
    //     weights [1/2, 1/4, 1/4]; output 1/2 [4, 0] + 1/4 [0, 4] + 1/4 [0, 0] = [2, 1].
    // q1: weights 1/3 each; output ([4, 0] + [0, 4]) / 3 = [4/3, 4/3].
    const MultiheadAttention<S> m = identity_module<S>(false, true);
    const auto r = m.forward(in.query, in.key, in.value);
    REQUIRE(r.attn_weights.shape() == Shape{2, 3});
    require_close(r.attn_weights.as_matrix(),
                  mat<double>(2, 3, {0.5, 0.25, 0.25, 1.0 / 3, 1.0 / 3, 1.0 / 3}), kHandTol<S>);
    require_close(r.output.as_matrix(), mat<double>(2, 2, {2, 1, 4.0 / 3, 4.0 / 3}), kHandTol<S>);
  }
  SECTION("add_bias_kv then add_zero_attn") {
    // Keys [k0, k1, bias_k, zero]. q0: exp [2, 1, 1/2, 1], sum 9/2, weights
    //     [4/9, 2/9, 1/9, 2/9]; output 4/9 [4, 0] + 2/9 [0, 4] + 1/9 [8, 8] = [8/3, 16/9].
    // q1: weights 1/4 each; output ([4, 0] + [0, 4] + [8, 8] + 0) / 4 = [3, 3].
    const MultiheadAttention<S> m = identity_module<S>(true, true);
    const auto r = m.forward(in.query, in.key, in.value);
    REQUIRE(r.attn_weights.shape() == Shape{2, 4});
    require_close(r.attn_weights.as_matrix(),
                  mat<double>(2, 4, {4.0 / 9, 2.0 / 9, 1.0 / 9, 2.0 / 9, 0.25, 0.25, 0.25, 0.25}),
                  kHandTol<S>);
    require_close(r.output.as_matrix(), mat<double>(2, 2, {8.0 / 3, 16.0 / 9, 3, 3}), kHandTol<S>);
  }
  SECTION("all given keys padded: the zero key takes all the weight") {
    // q0, q1: only the zero key is visible: weights [0, 0, 1], output 1 * [0, 0] = [0, 0].
    const MultiheadAttention<S> m = identity_module<S>(false, true);
    MultiheadAttentionArgs a;
    a.key_padding_mask_bool = Tensor<bool>({2}, true);
    const auto r = m.forward(in.query, in.key, in.value, a);
    require_close(r.attn_weights.as_matrix(), mat<double>(2, 3, {0, 0, 1, 0, 0, 1}), kHandTol<S>);
    require_close(r.output.as_matrix(), mat<double>(2, 2, {0, 0, 0, 0}), kHandTol<S>);
  }
}

// =======================================================================================
// Properties
// =======================================================================================

TEMPLATE_TEST_CASE("multihead_options: weight rows sum to 1 over S + 1 or S + 2 keys",
                   "[multihead][property]", float, double) {
  using S = TestType;
  for (std::uint64_t seed = 1; seed <= 6; ++seed) {
    Rng rng(seed);
    const bool bias_kv = seed % 3 != 2, zero_attn = seed % 3 != 1;
    const Index H = random_index(rng, 1, 3), E = H * random_index(rng, 1, 3);
    const Index B = random_index(rng, 1, 3), L = random_index(rng, 1, 5);
    const Index Sk = random_index(rng, 1, 5);
    CAPTURE(seed, bias_kv, zero_attn, H, E, B, L, Sk);
    MultiheadAttention<S> m(options(E, H, bias_kv, zero_attn), seed);
    randomize(m, rng);
    const Tensor<S> q = random_tensor<S>(layout(B, L, E), rng);
    const Tensor<S> k = random_tensor<S>(layout(B, Sk, E), rng);
    const Tensor<S> v = random_tensor<S>(layout(B, Sk, E), rng);
    MultiheadAttentionArgs a;
    // Sequence 0 has every given key padded: its rows still sum to 1 over the new keys.
    Tensor<bool> padded = random_padding({B, Sk}, rng);
    for (Index j = 0; j < Sk; ++j) padded(Index(0), j) = true;
    a.key_padding_mask = Mask::key_padding(padded);
    a.is_causal = seed % 2 == 0;
    const Index extra = (bias_kv ? 1 : 0) + (zero_attn ? 1 : 0);
    for (const bool average : {true, false}) {
      a.average_attn_weights = average;
      const auto r = m.forward(q, k, v, a);
      REQUIRE(r.attn_weights.shape() ==
              (average ? Shape{B, L, Sk + extra} : Shape{B, H, L, Sk + extra}));
      const auto w = r.attn_weights.as_matrix();  // [rows, S']
      require_close(w.rowwise().sum().eval(), Matrix<double>::Ones(w.rows(), 1), kRowSumTol<S>);
      // Padded keys get exactly 0; sequence 0 gives all its weight to the new keys.
      for (Index row = 0; row < w.rows(); ++row) {
        const Index b = row / (average ? L : H * L);
        for (Index j = 0; j < Sk; ++j) {
          if (padded(b, j)) REQUIRE(w(row, j) == S(0));
        }
      }
    }
  }
}

TEMPLATE_TEST_CASE("multihead_options: no keys (S = 0) attend only the appended ones",
                   "[multihead][property]", float, double) {
  using S = TestType;
  Rng rng(5);
  const Index E = 4, H = 2, L = 3, B = 2;
  MultiheadAttention<S> m(options(E, H, true, true), 9);
  randomize(m, rng);
  const Tensor<S> q = random_tensor<S>(layout(B, L, E), rng);
  const Tensor<S> kv({0, B, E});
  const auto r = m.forward(q, kv, kv);
  REQUIRE(r.attn_weights.shape() == Shape{B, L, 2});
  // Each head: softmax over [Q_h . bias_k_h * scale, 0]; the zero value adds nothing, so the
  // heads are w_bias * bias_v_h and the output is heads W_o^T + b_o.
  const Index dh = E / H;
  const Matrix<S> wq = m.in_proj_weight.topRows(E);
  for (Index b = 0; b < B; ++b) {
    for (Index i = 0; i < L; ++i) {
      const Matrix<S> x = q.as_matrix().row(i * B + b);  // [1, E]
      const Matrix<S> qi = (x * wq.transpose()).rowwise() + m.in_proj_bias.head(E).transpose();
      Matrix<double> heads(1, E);
      double avg_bias = 0;
      for (Index h = 0; h < H; ++h) {
        double dot = 0;
        for (Index c = 0; c < dh; ++c)
          dot += double(qi(0, h * dh + c)) * double(m.bias_k.flat()[h * dh + c]);
        const double s = dot / std::sqrt(double(dh));
        const double w_bias = std::exp(s) / (std::exp(s) + 1.0);
        avg_bias += w_bias / H;
        for (Index c = 0; c < dh; ++c)
          heads(0, h * dh + c) = w_bias * double(m.bias_v.flat()[h * dh + c]);
      }
      const Matrix<double> want =
          (heads * m.out_proj_weight.template cast<double>().transpose()).rowwise() +
          m.out_proj_bias.template cast<double>().transpose();
      require_close(r.output.as_matrix().row(i * B + b), want, kHandTol<S>, kHandTol<S>);
      require_close(r.attn_weights.matrix(b).row(i), mat<double>(1, 2, {avg_bias, 1.0 - avg_bias}),
                    kHandTol<S>);
    }
  }
}

TEMPLATE_TEST_CASE("multihead_options: reference and fused paths agree (ScopedAttentionPath)",
                   "[multihead][property][path]", float, double) {
  using S = TestType;
  for (std::uint64_t seed = 1; seed <= 6; ++seed) {
    Rng rng(seed + 40);
    const bool bias_kv = seed % 3 != 2, zero_attn = seed % 3 != 1;
    const Index H = random_index(rng, 1, 3), E = H * 2 * random_index(rng, 1, 2);
    const Index B = random_index(rng, 0, 2), L = random_index(rng, 1, 6);
    const Index Sk = random_index(rng, 1, 6);
    CAPTURE(seed, bias_kv, zero_attn, H, E, B, L, Sk);
    MultiheadAttention<S> m(options(E, H, bias_kv, zero_attn), seed);
    randomize(m, rng);
    const Tensor<S> q = random_tensor<S>(layout(B, L, E), rng);
    const Tensor<S> k = random_tensor<S>(layout(B, Sk, E), rng);
    const Tensor<S> v = random_tensor<S>(layout(B, Sk, E), rng);
    MultiheadAttentionArgs a;
    a.need_weights = false;
    a.key_padding_mask_bool = random_padding(B == 0 ? Shape{Sk} : Shape{B, Sk}, rng);
    a.attn_mask = Mask::additive(random_tensor<S>({L, Sk}, rng));
    a.is_causal = seed % 2 == 1;
    MultiheadAttentionArgs with_weights = a;
    with_weights.need_weights = true;
    const Tensor<S> weighted = m.forward(q, k, v, with_weights).output;
    Tensor<S> reference, fused;
    {
      ScopedAttentionPath guard(AttentionPath::reference);
      reference = m.forward(q, k, v, a).output;
    }
    {
      ScopedAttentionPath guard(AttentionPath::fused);
      fused = m.forward(q, k, v, a).output;
    }
    // Forced reference: the very kernel of need_weights = true, bit for bit.
    require_close(reference, weighted, 0.0);
    require_close(fused, reference, kFusedTol<S>, kFusedTol<S>);
    CHECK(attend::attention_path() == AttentionPath::automatic);  // the guards restored it
  }
}

TEMPLATE_TEST_CASE("multihead_options: unbatched 1-D key_padding_mask equals batched [1, S]",
                   "[multihead][property][key_padding]", float, double) {
  using S = TestType;
  for (std::uint64_t seed = 1; seed <= 4; ++seed) {
    Rng rng(seed + 80);
    const Index H = random_index(rng, 1, 2), E = 2 * H, L = random_index(rng, 1, 4);
    const Index Sk = random_index(rng, 1, 5);
    CAPTURE(seed, H, L, Sk);
    MultiheadAttention<S> m(options(E, H, seed % 2 == 0, seed > 2), seed);
    randomize(m, rng);
    const Tensor<S> q = random_tensor<S>({L, E}, rng);
    const Tensor<S> k = random_tensor<S>({Sk, E}, rng);
    const Tensor<bool> padded = random_padding({Sk}, rng);
    MultiheadAttentionArgs one_d;
    one_d.key_padding_mask_bool = padded;
    MultiheadAttentionArgs batched;
    batched.key_padding_mask = Mask::key_padding(padded.reshaped({1, Sk}));
    for (const bool need_weights : {true, false}) {
      one_d.need_weights = batched.need_weights = need_weights;
      const auto r1 = m.forward(q, k, k, one_d);
      const auto rb =
          m.forward(q.reshaped({L, 1, E}), k.reshaped({Sk, 1, E}), k.reshaped({Sk, 1, E}), batched);
      require_close(r1.output.as_matrix(), rb.output.as_matrix(), 0.0);
      if (need_weights)
        require_close(r1.attn_weights.as_matrix(), rb.attn_weights.as_matrix(), 0.0);
      // And the tensor form [1, S] of a batched query is the same mask.
      MultiheadAttentionArgs batched_bool = one_d;
      batched_bool.key_padding_mask_bool = padded.reshaped({1, Sk});
      const auto rt = m.forward(q.reshaped({L, 1, E}), k.reshaped({Sk, 1, E}),
                                k.reshaped({Sk, 1, E}), batched_bool);
      require_close(rt.output.as_matrix(), rb.output.as_matrix(), 0.0);
    }
  }
}

TEMPLATE_TEST_CASE("multihead_options: bias_k and bias_v initialisation and parameter counts",
                   "[multihead][init]", float, double) {
  using S = TestType;
  const Index E = 400;
  MultiheadAttention<S> m(options(E, 4, true, true), 3);
  REQUIRE(m.bias_k.shape() == Shape{1, 1, E});
  REQUIRE(m.bias_v.shape() == Shape{1, 1, E});
  // xavier_normal_ of [1, 1, E]: fan_in = fan_out = 1 * E, std = sqrt(2 / (2E)) = 1/sqrt(400)
  // = 0.05. The sample std of 400 draws is within a few % of it (standard error 0.05/sqrt(800)
  // = 0.0018); 10% is a loose bound that still catches a uniform or unscaled init.
  for (const Tensor<S>* t : {&m.bias_k, &m.bias_v}) {
    const Eigen::VectorXd x = t->flat().template cast<double>();
    const double mean = x.mean();
    const double sd = std::sqrt((x.array() - mean).square().sum() / double(E - 1));
    CHECK(std::abs(mean) < 0.01);
    CHECK(std::abs(sd - 0.05) < 0.005);
  }
  // Without add_bias_kv there are no such parameters.
  const MultiheadAttention<S> plain(options(E, 4, false, true), 3);
  CHECK(plain.bias_k.size() == 0);
  CHECK(plain.bias_v.size() == 0);
  // PyTorch's named_parameters() order and numel: in_proj_weight 3E * E, in_proj_bias 3E,
  // bias_k E, bias_v E, out_proj.weight E * E, out_proj.bias E.
  MultiheadAttentionGrad<S> g;
  attend::ParameterList<S> list;
  attend::named_parameters(m, g, list);
  REQUIRE(list.size() == 6);
  const std::vector<std::string> names{"in_proj_weight", "in_proj_bias",    "bias_k",
                                       "bias_v",         "out_proj.weight", "out_proj.bias"};
  for (Index i = 0; i < 6; ++i) CHECK(list[i].name() == names[std::size_t(i)]);
  CHECK(list.at("bias_k").shape() == Shape{1, 1, E});
  CHECK(list.at("bias_v").shape() == Shape{1, 1, E});
  CHECK(list.numel() == 3 * E * E + 3 * E + E + E + E * E + E);
  CHECK(g.d_bias_k.shape() == Shape{1, 1, E});  // registered gradients start at zero
  CHECK(g.d_bias_k.flat().isZero(0));
}

// =======================================================================================
// Backward
// =======================================================================================

struct GradCase {
  const char* name;
  MultiheadAttentionOptions options;
  Index B, L, S;  // B = 0: unbatched
  bool self;
  bool masks;  // key padding (1-D / 2-D tensor form), an additive attn_mask and is_causal
};

void check_gradients(const GradCase& c) {
  INFO(c.name);
  // The loss without a cache must run the kernel the cached forward ran.
  ScopedAttentionPath guard(AttentionPath::reference);
  Rng rng(77);
  MultiheadAttention<double> m(c.options, 5);
  randomize(m, rng);
  const MultiheadAttentionOptions& o = m.options;
  Tensor<double> query = random_tensor<double>(layout(c.B, c.L, o.embed_dim), rng);
  Tensor<double> key = random_tensor<double>(layout(c.B, c.S, o.kdim), rng);
  Tensor<double> value = random_tensor<double>(layout(c.B, c.S, o.vdim), rng);
  MultiheadAttentionArgs a;
  if (c.masks) {
    Tensor<bool> padded = random_padding(c.B == 0 ? Shape{c.S} : Shape{c.B, c.S}, rng);
    padded.data()[0] = true;  // at least one padded key
    a.key_padding_mask_bool = padded;
    a.attn_mask = Mask::additive(random_tensor<double>({c.L, c.S}, rng));
    a.is_causal = true;
  }
  for (const bool average : {true, false}) {
    a.average_attn_weights = average;
    const auto run = [&](MultiheadAttentionCache<double>* cache) {
      return c.self ? m.forward(query, a, cache) : m.forward(query, key, value, a, cache);
    };
    MultiheadAttentionCache<double> cache;
    const auto r = run(&cache);
    const Tensor<double> up = random_tensor<double>(r.output.shape(), rng);
    const Tensor<double> up_w = random_tensor<double>(r.attn_weights.shape(), rng);
    MultiheadAttentionGrad<double> g;
    const auto d = m.backward(cache, up, g, &up_w);
    const auto loss = [&] {
      const auto y = run(nullptr);
      return dot_loss(y.output, up) + dot_loss(y.attn_weights, up_w);
    };
    // Every parameter by its state-dict name, through the visitor optimizers use.
    attend::named_parameters(m, g, [&](const std::string& name, auto& param, auto& grad) {
      using Plain = std::decay_t<decltype(param)>;
      if constexpr (std::is_same_v<Plain, Tensor<double>>) {
        require_gradient(name, param.flat(), grad.flat(), loss);
      } else {
        require_gradient(name, param, grad, loss);
      }
    });
    if (o.add_bias_kv) {
      REQUIRE(g.d_bias_k.shape() == Shape{1, 1, o.embed_dim});
      REQUIRE(g.d_bias_v.shape() == Shape{1, 1, o.embed_dim});
    } else {
      REQUIRE(g.d_bias_k.size() == 0);
    }
    require_gradient("query", query.flat(), d.d_query.flat(), loss);
    if (!c.self && key.size() > 0) {  // (S = 0: nothing to perturb)
      require_gradient("key", key.flat(), d.d_key.flat(), loss);
      require_gradient("value", value.flat(), d.d_value.flat(), loss);
    }
  }
}

TEST_CASE("multihead_options: backward with add_bias_kv / add_zero_attn by central differences",
          "[multihead][grad]") {
  const auto rotary = [](MultiheadAttentionOptions o) {
    o.position = attend::PositionKind::rotary;
    return o;
  };
  const std::vector<GradCase> cases{
      {"bias_kv, self, batched", options(4, 2, true, false), 2, 3, 3, true, false},
      {"zero_attn, cross, batched", options(4, 2, false, true), 2, 3, 4, false, false},
      {"both, cross, unbatched, masks", options(4, 2, true, true), 0, 3, 4, false, true},
      {"both, self, batched, masks", options(4, 1, true, true), 2, 4, 4, true, true},
      {"both, separate kdim/vdim, no bias", options(4, 2, true, true, false, 3, 5), 2, 2, 3, false,
       true},
      {"bias_kv with rotary", rotary(options(4, 2, true, true)), 2, 3, 4, false, false},
      {"bias_kv, no keys (S = 0)", options(4, 2, true, true), 2, 3, 0, false, false},
  };
  for (const GradCase& c : cases) check_gradients(c);
}

TEST_CASE("multihead_options: d_bias_k and d_bias_v accumulate over backward calls",
          "[multihead][grad]") {
  Rng rng(3);
  MultiheadAttention<double> m(options(4, 2, true, false), 1);
  randomize(m, rng);
  const Tensor<double> x = random_tensor<double>({3, 2, 4}, rng);
  const Tensor<double> up = random_tensor<double>({3, 2, 4}, rng);
  MultiheadAttentionCache<double> cache;
  m.forward(x, MultiheadAttentionArgs{}, &cache);
  MultiheadAttentionGrad<double> once, twice;
  m.backward(cache, up, once);
  m.backward(cache, up, twice);
  m.backward(cache, up, twice);
  require_close(twice.d_bias_k.flat(), (2.0 * once.d_bias_k.flat()).eval(), 1e-14);
  require_close(twice.d_bias_v.flat(), (2.0 * once.d_bias_v.flat()).eval(), 1e-14);
  CHECK(once.d_bias_v.flat().norm() > 0);
}

// =======================================================================================
// State dict
// =======================================================================================

TEMPLATE_TEST_CASE("multihead_options: save and load bias_k / bias_v by name", "[multihead][io]",
                   float, double) {
  using S = TestType;
  for (const bool packed : {true, false}) {
    CAPTURE(packed);
    Rng rng(11);
    const MultiheadAttentionOptions o =
        packed ? options(4, 2, true, true) : options(4, 2, true, true, true, 3, 5);
    MultiheadAttention<S> saved(o, 1);
    randomize(saved, rng);
    SafeTensorsWriter w;
    attend::add_state_dict(w, saved, "self_attn.");
    const SafeTensors st = SafeTensors::parse(w.to_bytes());
    REQUIRE(st.contains("self_attn.bias_k"));
    REQUIRE(st.shape("self_attn.bias_k") == Shape{1, 1, 4});
    REQUIRE(st.shape("self_attn.bias_v") == Shape{1, 1, 4});
    MultiheadAttention<S> loaded(o, 2);  // other random parameters until loaded
    loaded.load_state_dict(st, "self_attn.");
    CHECK(loaded.bias_k.flat() == saved.bias_k.flat());
    CHECK(loaded.bias_v.flat() == saved.bias_v.flat());
    const Tensor<S> q = random_tensor<S>({3, 2, 4}, rng);
    const Tensor<S> k = random_tensor<S>({2, 2, o.kdim ? o.kdim : 4}, rng);
    const Tensor<S> v = random_tensor<S>({2, 2, o.vdim ? o.vdim : 4}, rng);
    require_close(loaded.forward(q, k, v).output, saved.forward(q, k, v).output, 0.0);
    // The checkpoint path (ParameterList) writes the same names and shapes.
    MultiheadAttentionGrad<S> g;
    attend::ParameterList<S> list;
    attend::named_parameters(saved, g, list, "self_attn.");
    for (const auto& p : list) CHECK(st.shape(p.name()) == p.shape());
    CHECK(list.size() == static_cast<Index>(st.names().size()));
  }
}

// =======================================================================================
// PyTorch 1.13 fixtures (tests/gen_fixtures_peers.py)
// =======================================================================================

/// A BOOL or I64 0/1 mask tensor of the file as bools (FIXTURES: both mean the same).
Tensor<bool> read_bool(const SafeTensors& st, const std::string& name) {
  if (st.dtype(name) == attend::DType::BOOL) return st.get<bool>(name);
  const Tensor<std::int64_t> t = st.get<std::int64_t>(name);
  Tensor<bool> out(t.shape(), false);
  for (Index i = 0; i < t.size(); ++i) out.data()[i] = t.data()[i] != 0;
  return out;
}

/// The fixture files of `folder` (sorted), at least `at_least` of them.
std::vector<std::string> fixture_files(const std::string& folder, std::size_t at_least) {
  std::vector<std::string> files;
  const std::filesystem::path dir = std::filesystem::path(ATTEND_TEST_DATA_DIR) / folder;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().extension() == ".safetensors") files.push_back(e.path().string());
  }
  std::sort(files.begin(), files.end());
  REQUIRE(files.size() >= at_least);
  return files;
}

/// The module, arguments and inputs of a multihead_attention fixture; masks in PyTorch's
/// forms: key_padding_mask [B, S] or [S] through key_padding_mask_bool, attn_mask through
/// Mask::from_torch_mha (BOOL/I64) or from_torch_mha_additive (float).
template <typename S>
struct MhaFixture {
  explicit MhaFixture(const std::string& path) : st(SafeTensors::load(path)) {
    const nlohmann::json o = nlohmann::json::parse(st.metadata().at("options"));
    MultiheadAttentionOptions opt;
    opt.embed_dim = o.at("embed_dim").get<Index>();
    opt.num_heads = o.at("num_heads").get<Index>();
    opt.bias = o.value("bias", true);
    opt.kdim = o.value("kdim", Index(0));
    opt.vdim = o.value("vdim", Index(0));
    opt.batch_first = o.value("batch_first", false);
    opt.add_bias_kv = o.value("add_bias_kv", false);
    opt.add_zero_attn = o.value("add_zero_attn", false);
    m = std::make_unique<MultiheadAttention<S>>(opt);
    m->load_state_dict(st);
    args.need_weights = o.value("need_weights", true);
    args.average_attn_weights = o.value("average_attn_weights", true);
    if (st.contains("input.key_padding_mask")) {
      args.key_padding_mask_bool = read_bool(st, "input.key_padding_mask");
    }
    if (st.contains("input.attn_mask")) {
      const attend::DType dt = st.dtype("input.attn_mask");
      args.attn_mask =
          dt == attend::DType::BOOL || dt == attend::DType::I64
              ? Mask::from_torch_mha(read_bool(st, "input.attn_mask"), opt.num_heads)
              : Mask::from_torch_mha_additive(st.get<S>("input.attn_mask"), opt.num_heads);
    }
    query = st.get<S>("input.query");
    self = !st.contains("input.key");
    if (!self) {
      key = st.get<S>("input.key");
      value = st.get<S>("input.value");
    }
    atol = std::stod(st.metadata().at("atol"));
    rtol = std::stod(st.metadata().at("rtol"));
  }

  attend::AttentionResult<S> forward(const MultiheadAttentionArgs& a,
                                     MultiheadAttentionCache<S>* cache = nullptr) const {
    return self ? m->forward(query, a, cache) : m->forward(query, key, value, a, cache);
  }

  /// The file's tensor `name` as S.
  Tensor<S> get(const std::string& name) const { return st.get<S>(name); }

  SafeTensors st;
  std::unique_ptr<MultiheadAttention<S>> m;
  MultiheadAttentionArgs args;
  Tensor<S> query, key, value;
  bool self = true;
  double atol = 0, rtol = 0;
};

TEMPLATE_TEST_CASE("multihead_options: PyTorch fixtures, forward on both attention paths",
                   "[multihead][fixture]", float, double) {
  using S = TestType;
  const std::string suffix = std::is_same_v<S, float> ? "_f32.safetensors" : "_f64.safetensors";
  for (const std::string& path : fixture_files("multihead_attention_options", 16)) {
    const bool ours = path.size() >= suffix.size() &&
                      path.compare(path.size() - suffix.size(), suffix.size(), suffix) == 0;
    if (!ours) continue;
    INFO(path);
    const MhaFixture<S> f(path);
    {
      ScopedAttentionPath guard(AttentionPath::reference);
      const auto r = f.forward(f.args);
      require_close(r.output, f.get("expected.output"), f.atol, f.rtol);
      if (f.args.need_weights) {
        require_close(r.attn_weights, f.get("expected.attn_weights"), f.atol, f.rtol);
      } else {
        REQUIRE(!f.st.contains("expected.attn_weights"));
      }
    }
    ScopedAttentionPath guard(AttentionPath::fused);
    MultiheadAttentionArgs no_weights = f.args;
    no_weights.need_weights = false;
    require_close(f.forward(no_weights).output, f.get("expected.output"), f.atol, f.rtol);
  }
}

TEST_CASE("multihead_options: PyTorch fixtures, gradients by name", "[multihead][fixture]") {
  for (const std::string& path : fixture_files("grad_multihead_attention_options", 14)) {
    INFO(path);
    const bool is_float = path.find("_f32.") != std::string::npos;
    const auto check = [&](auto tag) {
      using S = decltype(tag);
      MhaFixture<S> f(path);
      MultiheadAttentionCache<S> cache;
      f.forward(f.args, &cache);
      const bool weights_up = f.st.contains("upstream.attn_weights");
      const Tensor<S> up_w = weights_up ? f.get("upstream.attn_weights") : Tensor<S>();
      MultiheadAttentionGrad<S> g;
      const auto d =
          f.m->backward(cache, f.get("upstream.output"), g, weights_up ? &up_w : nullptr);
      Index checked = 0;
      attend::named_parameters(*f.m, g, [&](const std::string& name, auto&, auto& grad) {
        INFO(name);
        const Tensor<S> want = f.get("grad." + name);
        REQUIRE(want.size() == grad.size());
        const Eigen::Map<const Eigen::Matrix<S, Eigen::Dynamic, 1>> got(grad.data(), grad.size());
        require_close(got, want.flat(), f.atol, f.rtol);
        ++checked;
      });
      CHECK(checked >= 4);
      require_close(d.d_query, f.get("grad.input.query"), f.atol, f.rtol);
      if (!f.self) {
        require_close(d.d_key, f.get("grad.input.key"), f.atol, f.rtol);
        require_close(d.d_value, f.get("grad.input.value"), f.atol, f.rtol);
      }
    };
    if (is_float) {
      check(float());
    } else {
      check(double());
    }
  }
}

// =======================================================================================
// Errors
// =======================================================================================

TEMPLATE_TEST_CASE("multihead_options: bad bias_k / bias_v and 1-D masks are rejected",
                   "[multihead][error]", float, double) {
  using S = TestType;
  Rng rng(1);
  MultiheadAttention<S> m(options(2, 1, true, false), 1);
  SECTION("loading bias_k of the wrong shape or without bias_v") {
    SafeTensorsWriter w;
    w.add("in_proj_weight", Tensor<S>({6, 2}));
    w.add("in_proj_bias", Tensor<S>({6}));
    w.add("out_proj.weight", Tensor<S>({2, 2}));
    w.add("out_proj.bias", Tensor<S>({2}));
    w.add("bias_k", Tensor<S>({1, 2}));
    const SafeTensors st = SafeTensors::parse(w.to_bytes());
    const Tensor<S> before = m.bias_k;
    REQUIRE_THROWS_AS(m.load_state_dict(st), attend::shape_error);
    REQUIRE_THROWS_WITH(m.load_state_dict(st),
                        "MultiheadAttention::load_state_dict: 'bias_k' in <buffer> is [1, 2], "
                        "expected "
                        "[1, 1, 2]");
    CHECK(m.bias_k.flat() == before.flat());  // all or nothing
    SafeTensorsWriter w2;
    w2.add("in_proj_weight", Tensor<S>({6, 2}));
    w2.add("in_proj_bias", Tensor<S>({6}));
    w2.add("out_proj.weight", Tensor<S>({2, 2}));
    w2.add("out_proj.bias", Tensor<S>({2}));
    w2.add("bias_k", Tensor<S>({1, 1, 2}));
    const SafeTensors st2 = SafeTensors::parse(w2.to_bytes());
    REQUIRE_THROWS_AS(m.load_state_dict(st2), attend::index_error);
    REQUIRE_THROWS_WITH(m.load_state_dict(st2),
                        Catch::Contains("MultiheadAttention::load_state_dict: no parameter "
                                        "named 'bias_v'"));
  }
  SECTION("a 1-D key_padding_mask of the wrong length, or with a batched query") {
    const Tensor<S> q = random_tensor<S>({3, 2}, rng), k = random_tensor<S>({2, 2}, rng);
    MultiheadAttentionArgs a;
    a.key_padding_mask_bool = Tensor<bool>({3}, false);
    REQUIRE_THROWS_AS(m.forward(q, k, k, a), attend::shape_error);
    REQUIRE_THROWS_WITH(m.forward(q, k, k, a),
                        "MultiheadAttention::forward: key_padding_mask_bool is [3], expected [2] "
                        "([S]: the query is unbatched)");
    a.key_padding_mask_bool = Tensor<bool>({2}, false);
    REQUIRE_THROWS_AS(
        m.forward(q.reshaped({3, 1, 2}), k.reshaped({2, 1, 2}), k.reshaped({2, 1, 2}), a),
        attend::shape_error);
    REQUIRE_THROWS_WITH(
        m.forward(q.reshaped({3, 1, 2}), k.reshaped({2, 1, 2}), k.reshaped({2, 1, 2}), a),
        "MultiheadAttention::forward: key_padding_mask_bool is [2], expected "
        "[1, 2] ([B, S])");
  }
  SECTION("a bias_k member of the wrong shape") {
    m.bias_k = Tensor<S>({2});
    const Tensor<S> q = random_tensor<S>({3, 2}, rng);
    REQUIRE_THROWS_AS(m.forward(q), attend::shape_error);
    REQUIRE_THROWS_WITH(m.forward(q),
                        "MultiheadAttention::forward: bias_k is [2], expected "
                        "[1, 1, 2] (add_bias_kv)");
  }
  SECTION("backward with a cache of a module without the appended keys, or a bad d_bias_k") {
    const MultiheadAttention<S> plain(options(2, 1, false, false), 1);
    const Tensor<S> x = random_tensor<S>({3, 2}, rng);
    MultiheadAttentionCache<S> cache;
    plain.forward(x, MultiheadAttentionArgs{}, &cache);
    MultiheadAttentionGrad<S> g;
    REQUIRE_THROWS_AS(m.backward(cache, x, g), attend::value_error);
    REQUIRE_THROWS_WITH(m.backward(cache, x, g),
                        "MultiheadAttention::backward: cache.extra_keys is 0, expected 1 "
                        "(add_bias_kv + add_zero_attn) from forward(..., &cache) of this module");
    MultiheadAttentionCache<S> own;
    m.forward(x, MultiheadAttentionArgs{}, &own);
    g.d_bias_k = Tensor<S>({2});
    REQUIRE_THROWS_AS(m.backward(own, x, g), attend::shape_error);
    REQUIRE_THROWS_WITH(m.backward(own, x, g),
                        "MultiheadAttention::backward: grads.d_bias_k is [2], expected [1, 1, 2]");
  }
  SECTION("the KV cache refuses the appended keys instead of ignoring them") {
    attend::KVCache<S> cache;
    const Tensor<S> x = random_tensor<S>({3, 2}, rng);
    REQUIRE_THROWS_AS(attend::append_keys_values(m, x, cache), attend::value_error);
    REQUIRE_THROWS_WITH(attend::append_keys_values(m, x, cache),
                        Catch::Contains("append_keys_values: the KV cache does not append "
                                        "bias_k/bias_v or the zero key"));
  }
}

}  // namespace
