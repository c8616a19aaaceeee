// SPDX-License-Identifier: MIT
// Gradient tests of the module backwards: multi-head attention (by hand, central
// differences through every parameter and input, masks, accumulation, errors) and the
// transformer encoder layer (post- and pre-norm).
#include "attend/attention/mask.hpp"
#include "attend/attention/multihead.hpp"
#include "attend/attention/multihead_backward.hpp"
#include "attend/core/errors.hpp"
#include "attend/core/random.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/train/gradcheck.hpp"
#include "attend/train/parameters.hpp"
#include "attend/transformer/encoder_layer.hpp"
#include "attend/train/encoder_layer_backward.hpp"

#include <Eigen/Core>

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "test_util.hpp"

namespace {

using attend::Index;
using attend::Mask;
using attend::Matrix;
using attend::MultiheadAttention;
using attend::MultiheadAttentionArgs;
using attend::MultiheadAttentionCache;
using attend::MultiheadAttentionGrad;
using attend::MultiheadAttentionOptions;
using attend::Rng;
using attend::Shape;
using attend::Tensor;
using attend::Vector;

using attend_test::dot_loss;
using attend_test::random_tensor;
using attend_test::require_gradient;

/// Random parameters (PyTorch initialises biases to zero, which would hide bias handling).
template <typename S>
void randomize(MultiheadAttention<S>& m, Rng& rng) {
  for (Matrix<S>* w : {&m.in_proj_weight, &m.q_proj_weight, &m.k_proj_weight, &m.v_proj_weight,
                       &m.out_proj_weight}) {
    if (w->size() == 0) continue;
    Matrix<double> d(w->rows(), w->cols());
    attend::fill_uniform(d, 1.0, rng);
    *w = d.cast<S>();
  }
  for (Vector<S>* b : {&m.in_proj_bias, &m.out_proj_bias}) {
    if (b->size() == 0) continue;
    Matrix<double> d(b->size(), 1);
    attend::fill_uniform(d, 0.5, rng);
    *b = d.cast<S>();
  }
}

/// One gradient-check scenario of MultiheadAttention.
struct MhaCase {
  const char* name;
  MultiheadAttentionOptions options;
  Index L, S, B;         // B = 0: unbatched
  bool self;             // forward(query, args)
  MultiheadAttentionArgs args;
  bool weights_upstream;  // L also includes sum(attn_weights * upstream)
};

Shape layout(const MultiheadAttentionOptions& o, Index B, Index T, Index W) {
  if (B == 0) return {T, W};
  return o.batch_first ? Shape{B, T, W} : Shape{T, B, W};
}

/// Checks every parameter and input gradient of `c` against central differences.
void check_case(const MhaCase& c) {
  INFO(c.name);
  Rng rng(1234);
  MultiheadAttention<double> mha(c.options, 7);
  randomize(mha, rng);
  const MultiheadAttentionOptions& o = mha.options;
  Tensor<double> query = random_tensor<double>(layout(o, c.B, c.L, o.embed_dim), rng);
  Tensor<double> key = random_tensor<double>(layout(o, c.B, c.S, o.kdim), rng);
  Tensor<double> value = random_tensor<double>(layout(o, c.B, c.S, o.vdim), rng);
  const Tensor<double> up = random_tensor<double>(query.shape(), rng);

  MultiheadAttentionArgs args = c.args;
  args.need_weights = c.weights_upstream;
  const auto run = [&](MultiheadAttentionCache<double>* cache) {
    return c.self ? mha.forward(query, args, cache) : mha.forward(query, key, value, args, cache);
  };
  MultiheadAttentionCache<double> cache;
  const attend::AttentionResult<double> r = run(&cache);
  Tensor<double> up_w;
  if (c.weights_upstream) up_w = random_tensor<double>(r.attn_weights.shape(), rng);
  MultiheadAttentionGrad<double> g;
  const auto d = mha.backward(cache, up, g, c.weights_upstream ? &up_w : nullptr);
  const auto loss = [&] {
    const attend::AttentionResult<double> y = run(nullptr);
    return dot_loss(y.output, up) + (c.weights_upstream ? dot_loss(y.attn_weights, up_w) : 0.0);
  };
  if (mha.packed()) {
    require_gradient("in_proj_weight", mha.in_proj_weight, g.d_in_proj_weight, loss);
  } else {
    require_gradient("q_proj_weight", mha.q_proj_weight, g.d_q_proj_weight, loss);
    require_gradient("k_proj_weight", mha.k_proj_weight, g.d_k_proj_weight, loss);
    require_gradient("v_proj_weight", mha.v_proj_weight, g.d_v_proj_weight, loss);
  }
  require_gradient("out_proj.weight", mha.out_proj_weight, g.d_out_proj_weight, loss);
  if (o.bias) {
    require_gradient("in_proj_bias", mha.in_proj_bias, g.d_in_proj_bias, loss);
    require_gradient("out_proj.bias", mha.out_proj_bias, g.d_out_proj_bias, loss);
  }
  require_gradient("query", query.flat(), d.d_query.flat(), loss);
  if (c.self) {
    REQUIRE(d.d_key.size() == 0);
    REQUIRE(d.d_value.size() == 0);
  } else {
    require_gradient("key", key.flat(), d.d_key.flat(), loss);
    require_gradient("value", value.flat(), d.d_value.flat(), loss);
  }
}

MultiheadAttentionOptions opts(Index E, Index H, Index kdim = 0, Index vdim = 0, bool bias = true,
                               bool batch_first = false) {
  MultiheadAttentionOptions o;
  o.embed_dim = E;
  o.num_heads = H;
  o.kdim = kdim;
  o.vdim = vdim;
  o.bias = bias;
  o.batch_first = batch_first;
  return o;
}

}  // namespace

// ========================================================================================
// multihead_backward.hpp
// ========================================================================================

TEMPLATE_TEST_CASE("multihead_backward.hpp: one key, one head by hand", "[grad]", float, double) {
  using S = TestType;
  // E = 1, H = 1: W_q = 2, W_k = 3, W_v = 0.5, biases b = [0.1, 0.2, 0.3]; W_o = 4, b_o = 1.
  MultiheadAttention<S> mha(opts(1, 1));
  mha.in_proj_weight << S(2), S(3), S(0.5);
  mha.in_proj_bias << S(0.1), S(0.2), S(0.3);
  mha.out_proj_weight << S(4);
  mha.out_proj_bias << S(1);
  Tensor<S> x({1, 1});  // unbatched [L = 1, E = 1]
  x(0, 0) = S(2);
  MultiheadAttentionCache<S> cache;
  const auto r = mha.forward(x, MultiheadAttentionArgs{}, &cache);
  // One key: weight 1, so out = (x W_v + b_v) W_o + b_o = (2 * 0.5 + 0.3) * 4 + 1 = 6.2.
  REQUIRE(r.output(0, 0) == Approx(6.2));
  Tensor<S> up({1, 1});
  up(0, 0) = S(1);
  MultiheadAttentionGrad<S> g;
  const auto d = mha.backward(cache, up, g);
  // d out_proj.weight = heads = 1.3, d out_proj.bias = 1; d_heads = 1 * W_o = 4 = dV.
  // A softmax over one key is constant, so dQ = dK = 0: rows 0, 1 of d in_proj_weight and
  // d in_proj_bias are 0; row 2 is dV x = 8 and d b_v = 4. d query = dV W_v = 2 (q, k add 0).
  REQUIRE(g.d_out_proj_weight(0, 0) == Approx(1.3));
  REQUIRE(g.d_out_proj_bias(0) == S(1));
  REQUIRE(g.d_in_proj_weight(0, 0) == S(0));
  REQUIRE(g.d_in_proj_weight(1, 0) == S(0));
  REQUIRE(g.d_in_proj_weight(2, 0) == S(8));
  REQUIRE(g.d_in_proj_bias(0) == S(0));
  REQUIRE(g.d_in_proj_bias(1) == S(0));
  REQUIRE(g.d_in_proj_bias(2) == S(4));
  REQUIRE(d.d_query(0, 0) == S(2));
  // A second backward accumulates parameter gradients (+=) and assigns input gradients.
  const auto d2 = mha.backward(cache, up, g);
  REQUIRE(g.d_in_proj_weight(2, 0) == S(16));
  REQUIRE(g.d_out_proj_bias(0) == S(2));
  REQUIRE(d2.d_query(0, 0) == S(2));
}

TEST_CASE("multihead_backward.hpp: every parameter and input matches central differences",
          "[grad]") {
  Tensor<bool> padded({2, 6});  // key padding [B, S], true = padding: 2 and 1 padded keys
  padded.fill(false);
  padded(0, 4) = padded(0, 5) = padded(1, 2) = true;
  Tensor<bool> deny({2 * 2, 4, 6});  // [B * H, L, S], true = masked; no row fully masked
  deny.fill(false);
  deny(0, 0, 1) = deny(1, 2, 0) = deny(1, 2, 3) = deny(3, 3, 5) = true;
  Tensor<double> bias({4, 6});  // additive [L, S] with -inf entries
  Rng rng(5);
  bias = random_tensor<double>({4, 6}, rng);
  bias(0, 2) = bias(3, 0) = -std::numeric_limits<double>::infinity();

  MultiheadAttentionArgs none;
  MultiheadAttentionArgs kpm;
  kpm.key_padding_mask = Mask::key_padding(padded);
  MultiheadAttentionArgs masks = kpm;
  masks.attn_mask = Mask::from_torch_mha(deny, 2);
  MultiheadAttentionArgs additive;
  additive.attn_mask = Mask::from_torch_mha_additive(bias, 2);
  MultiheadAttentionArgs causal;
  causal.is_causal = true;
  MultiheadAttentionArgs per_head;
  per_head.average_attn_weights = false;
  MultiheadAttentionOptions rotary = opts(8, 2, 0, 0, true, true);
  rotary.position = attend::PositionKind::rotary;
  MultiheadAttentionArgs shifted;
  shifted.query_position = 3;
  shifted.key_position = 1;
  MultiheadAttentionOptions alibi = opts(8, 2);
  alibi.position = attend::PositionKind::alibi;

  const MhaCase cases[] = {
      {"self-attention, packed, seq-first", opts(8, 2), 4, 4, 2, true, none, false},
      {"self-attention, batch_first, key padding", opts(8, 2, 0, 0, true, true), 6, 6, 2, true,
       kpm, false},
      {"cross-attention, packed", opts(6, 3), 4, 6, 2, false, none, false},
      {"cross-attention, kdim 5, vdim 3, batch_first", opts(8, 2, 5, 3, true, true), 4, 6, 2,
       false, none, false},
      {"cross-attention, no bias, kdim/vdim", opts(8, 4, 6, 7, false), 4, 6, 2, false, none, false},
      {"key padding + 3-D bool attn_mask", opts(8, 2), 4, 6, 2, false, masks, false},
      {"additive attn_mask with -inf", opts(8, 2), 4, 6, 1, false, additive, false},
      {"causal, unbatched", opts(8, 2), 5, 5, 0, true, causal, false},
      {"averaged attn_weights upstream, masked", opts(8, 2), 4, 6, 2, false, masks, true},
      {"per-head attn_weights upstream", opts(8, 2), 4, 6, 2, false, per_head, true},
      {"rotary positions", rotary, 4, 5, 2, false, shifted, false},
      {"alibi positions", alibi, 4, 4, 2, true, causal, false},
  };
  for (const MhaCase& c : cases) check_case(c);
}

TEMPLATE_TEST_CASE("multihead_backward.hpp: masked keys get exactly zero gradient", "[grad]",
                   float, double) {
  using S = TestType;
  Rng rng(9);
  MultiheadAttention<S> mha(opts(8, 2));
  randomize(mha, rng);
  const Tensor<S> q = random_tensor<S>({3, 2, 8}, rng);  // [L, B, E]
  const Tensor<S> k = random_tensor<S>({5, 2, 8}, rng), v = random_tensor<S>({5, 2, 8}, rng);
  MultiheadAttentionArgs args;
  args.key_padding_mask = Mask::key_padding_lengths({5, 3}, 5);  // sequence 1: keys 3, 4 padded
  MultiheadAttentionCache<S> cache;
  (void)mha.forward(q, k, v, args, &cache);
  MultiheadAttentionGrad<S> g;
  const auto d = mha.backward(cache, random_tensor<S>(q.shape(), rng), g);
  // Padded keys have weight 0 in every head: d_key and d_value of (t, b = 1) for t >= 3 are 0.
  for (Index t = 3; t < 5; ++t) {
    for (Index e = 0; e < 8; ++e) {
      REQUIRE(d.d_key(t, 1, e) == S(0));
      REQUIRE(d.d_value(t, 1, e) == S(0));
    }
  }
  // The unpadded sequence's keys do get gradient.
  REQUIRE(d.d_key(4, 0, 0) != S(0));
}

TEMPLATE_TEST_CASE("multihead_backward.hpp: the training forward equals the fused forward",
                   "[grad][property]", float, double) {
  using S = TestType;
  Rng rng(11);
  MultiheadAttention<S> mha(opts(16, 4, 0, 0, true, true));
  randomize(mha, rng);
  const Tensor<S> x = random_tensor<S>({2, 9, 16}, rng);
  MultiheadAttentionArgs args;
  args.need_weights = false;
  args.is_causal = true;
  MultiheadAttentionCache<S> cache;
  const auto train = mha.forward(x, args, &cache);
  const auto fused = mha.forward(x, args);
  REQUIRE(train.attn_weights.size() == 0);  // need_weights false is still honoured
  REQUIRE(cache.weights.size() == 2 * 4);
  // The online softmax of the fused path rounds differently: sums of 9 O(1) terms times
  // O(1) weights, a few ulps of values up to ~10 (float ulp 1e-6).
  const double tol = std::is_same_v<S, float> ? 1e-5 : 1e-12;
  const double err =
      (train.output.flat().template cast<double>() - fused.output.flat().template cast<double>())
          .cwiseAbs()
          .maxCoeff();
  REQUIRE(err < tol);
}

TEMPLATE_TEST_CASE("multihead_backward.hpp: float gradients agree with double", "[grad][property]",
                   float, double) {
  using S = TestType;
  Rng rng(3);
  MultiheadAttention<double> md(opts(8, 2, 5, 3, true, true));
  randomize(md, rng);
  MultiheadAttention<S> ms(md.options);
  ms.q_proj_weight = md.q_proj_weight.cast<S>();
  ms.k_proj_weight = md.k_proj_weight.cast<S>();
  ms.v_proj_weight = md.v_proj_weight.cast<S>();
  ms.in_proj_bias = md.in_proj_bias.cast<S>();
  ms.out_proj_weight = md.out_proj_weight.cast<S>();
  ms.out_proj_bias = md.out_proj_bias.cast<S>();
  const Tensor<double> q = random_tensor<double>({2, 4, 8}, rng);
  const Tensor<double> k = random_tensor<double>({2, 6, 5}, rng);
  const Tensor<double> v = random_tensor<double>({2, 6, 3}, rng);
  const Tensor<double> up = random_tensor<double>({2, 4, 8}, rng);
  MultiheadAttentionArgs args;
  args.is_causal = true;
  MultiheadAttentionCache<double> cd;
  (void)md.forward(q, k, v, args, &cd);
  MultiheadAttentionGrad<double> gd;
  const auto want = md.backward(cd, up, gd);
  MultiheadAttentionCache<S> cs;
  (void)ms.forward(q.cast<S>(), k.cast<S>(), v.cast<S>(), args, &cs);
  MultiheadAttentionGrad<S> gs;
  const auto got = ms.backward(cs, up.cast<S>(), gs);
  // Chains of four products over <= 8 terms of O(1) values: float a few ulps (1.2e-7) of
  // partial sums up to ~10.
  const double tol = std::is_same_v<S, float> ? 2e-5 : 1e-13;
  const auto close = [&](const auto& a, const auto& b) {
    return (a.template cast<double>() - b).cwiseAbs().maxCoeff() < tol;
  };
  REQUIRE(close(got.d_query.flat(), want.d_query.flat()));
  REQUIRE(close(got.d_key.flat(), want.d_key.flat()));
  REQUIRE(close(got.d_value.flat(), want.d_value.flat()));
  REQUIRE(close(gs.d_q_proj_weight, gd.d_q_proj_weight));
  REQUIRE(close(gs.d_v_proj_weight, gd.d_v_proj_weight));
  REQUIRE(close(gs.d_in_proj_bias, gd.d_in_proj_bias));
  REQUIRE(close(gs.d_out_proj_weight, gd.d_out_proj_weight));
}

TEMPLATE_TEST_CASE("multihead_backward.hpp: named parameters in PyTorch's order", "[grad]", float,
                   double) {
  using S = TestType;
  MultiheadAttention<S> packed(opts(8, 2));
  MultiheadAttentionGrad<S> gp;
  attend::ParameterList<S> list;
  attend::named_parameters(packed, gp, list, "self_attn.");
  REQUIRE(list.size() == 4);
  REQUIRE(list[0].name() == "self_attn.in_proj_weight");
  REQUIRE(list[0].shape() == Shape{24, 8});
  REQUIRE(list[1].name() == "self_attn.in_proj_bias");
  REQUIRE(list[2].name() == "self_attn.out_proj.weight");
  REQUIRE(list[3].name() == "self_attn.out_proj.bias");
  REQUIRE(list.numel() == 24 * 8 + 24 + 64 + 8);
  REQUIRE(gp.d_in_proj_weight.isZero(0));  // registered gradients start at zero

  MultiheadAttention<S> separate(opts(8, 2, 5, 3, false));
  MultiheadAttentionGrad<S> gs;
  attend::ParameterList<S> list2;
  attend::named_parameters(separate, gs, list2);
  REQUIRE(list2.size() == 4);
  REQUIRE(list2[0].name() == "q_proj_weight");
  REQUIRE(list2[1].name() == "k_proj_weight");
  REQUIRE(list2[1].shape() == Shape{8, 5});
  REQUIRE(list2[2].name() == "v_proj_weight");
  REQUIRE(list2[2].shape() == Shape{8, 3});
  REQUIRE(list2[3].name() == "out_proj.weight");
}

TEMPLATE_TEST_CASE("multihead_backward.hpp: bad caches and shapes are rejected", "[grad][error]",
                   float, double) {
  using S = TestType;
  MultiheadAttention<S> mha(opts(4, 2));
  const std::string who = "MultiheadAttention::backward: ";
  MultiheadAttentionGrad<S> g;
  MultiheadAttentionCache<S> empty;
  const Tensor<S> d3({3, 1, 4});
  REQUIRE_THROWS_AS(mha.backward(empty, d3, g), attend::value_error);
  REQUIRE_THROWS_WITH(mha.backward(empty, d3, g),
                      who + "cache is empty, expected one filled by forward(..., &cache)");
  Tensor<S> x({3, 1, 4});
  x.fill(S(0.5));
  MultiheadAttentionCache<S> cache;
  (void)mha.forward(x, MultiheadAttentionArgs{}, &cache);
  REQUIRE_THROWS_AS(mha.backward(cache, Tensor<S>({3, 4}), g), attend::shape_error);
  REQUIRE_THROWS_WITH(mha.backward(cache, Tensor<S>({3, 4}), g),
                      who + "d_output is [3, 4], expected [3, 1, 4] (the forward's output)");
  const Tensor<S> dw({1, 3, 2});
  REQUIRE_THROWS_WITH(mha.backward(cache, d3, g, &dw),
                      who + "d_attn_weights is [1, 3, 2], expected [1, 3, 3] (the forward's "
                            "attn_weights)");
  MultiheadAttention<S> four_heads(opts(4, 4));
  REQUIRE_THROWS_WITH(four_heads.backward(cache, d3, g),
                      who + "cache holds 2 head weights, expected 4 from forward(..., &cache) of "
                            "this module");
  g.d_out_proj_weight = Matrix<S>::Zero(2, 2);
  REQUIRE_THROWS_AS(mha.backward(cache, d3, g), attend::shape_error);
  REQUIRE_THROWS_WITH(mha.backward(cache, d3, g),
                      who + "grads.d_out_proj_weight is [2, 2], expected [4, 4]");
}

// ========================================================================================
// encoder_layer_backward.hpp
// ========================================================================================

namespace {

/// A TransformerEncoderLayer with its gradients, visitable as a model.
struct EncoderModel {
  attend::TransformerEncoderLayer<double> layer;
  attend::TransformerEncoderLayerGrad<double> grads;

  template <typename Visit>
  void named_parameters(Visit&& visit) {
    attend::named_parameters(layer, grads, visit);
  }
};

attend::TransformerLayerOptions encoder_options(bool norm_first, attend::Activation act,
                                                bool batch_first) {
  attend::TransformerLayerOptions o;
  o.d_model = 8;
  o.nhead = 2;
  o.dim_feedforward = 12;
  o.activation = act;
  o.norm_first = norm_first;
  o.batch_first = batch_first;
  return o;
}

}  // namespace

TEST_CASE("encoder_layer_backward.hpp: the training forward equals forward", "[grad]") {
  for (const bool norm_first : {false, true}) {
    INFO("norm_first " << norm_first);
    attend::TransformerEncoderLayer<double> layer(
        encoder_options(norm_first, attend::Activation::gelu, false), 4);
    Rng rng(2);
    const Tensor<double> src = random_tensor<double>({5, 2, 8}, rng);
    attend::TransformerEncoderLayerArgs args;
    args.is_causal = true;
    attend::TransformerEncoderLayerCache<double> cache;
    const Tensor<double> got = attend::transformer_encoder_layer_forward(layer, src, args, &cache);
    const Tensor<double> want = layer.forward(src, args);
    REQUIRE(got.shape() == want.shape());
    // The fused attention path of forward rounds differently: ~1e-15 on O(1) values.
    REQUIRE((got.flat() - want.flat()).cwiseAbs().maxCoeff() < 1e-12);
  }
}

TEST_CASE("encoder_layer_backward.hpp: every parameter and src match central differences",
          "[grad]") {
  struct Case {
    const char* name;
    bool norm_first;
    attend::Activation act;
    bool batch_first;
    bool padding;
  };
  const Case cases[] = {
      {"post-norm, relu, seq-first", false, attend::Activation::relu, false, false},
      {"post-norm, gelu, batch_first, key padding", false, attend::Activation::gelu, true, true},
      {"pre-norm, relu, key padding", true, attend::Activation::relu, false, true},
      {"pre-norm, gelu_tanh, batch_first", true, attend::Activation::gelu_tanh, true, false},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    EncoderModel model{attend::TransformerEncoderLayer<double>(
                           encoder_options(c.norm_first, c.act, c.batch_first), 3),
                       {}};
    Rng rng(17);
    randomize(model.layer.self_attn, rng);
    for (attend::LayerNorm<double>* n : {&model.layer.norm1, &model.layer.norm2}) {
      Matrix<double> w(8, 2);  // LayerNorm weight ~1 and bias ~0 hide errors: randomise
      attend::fill_uniform(w, 0.5, rng);
      n->weight = w.col(0).array() + 1.0;
      n->bias = w.col(1);
    }
    const Shape shape = c.batch_first ? Shape{2, 4, 8} : Shape{4, 2, 8};
    Tensor<double> src = random_tensor<double>(shape, rng);
    const Tensor<double> up = random_tensor<double>(shape, rng);
    attend::TransformerEncoderLayerArgs args;
    if (c.padding) args.src_key_padding_mask = Mask::key_padding_lengths({4, 2}, 4);
    attend::ParameterList<double> params = attend::collect_parameters<double>(model);
    REQUIRE(params.size() == 12);
    attend::TransformerEncoderLayerCache<double> cache;
    (void)attend::transformer_encoder_layer_forward(model.layer, src, args, &cache);
    const Tensor<double> d_src =
        attend::transformer_encoder_layer_backward(model.layer, cache, up, model.grads);
    const auto loss = [&] {
      return dot_loss(attend::transformer_encoder_layer_forward<double>(model.layer, src, args,
                                                                        nullptr),
                      up);
    };
    for (const auto& p : params) require_gradient(p.name(), p.value(), p.grad(), loss);
    require_gradient("src", src.flat(), d_src.flat(), loss);
  }
}

TEMPLATE_TEST_CASE("encoder_layer_backward.hpp: names, accumulation and errors", "[grad][error]",
                   float, double) {
  using S = TestType;
  attend::TransformerEncoderLayer<S> layer(encoder_options(false, attend::Activation::relu, false));
  attend::TransformerEncoderLayerGrad<S> g;
  attend::ParameterList<S> list;
  attend::named_parameters(layer, g, list, "layers.0.");
  const char* names[] = {"self_attn.in_proj_weight", "self_attn.in_proj_bias",
                         "self_attn.out_proj.weight", "self_attn.out_proj.bias", "linear1.weight",
                         "linear1.bias", "linear2.weight", "linear2.bias", "norm1.weight",
                         "norm1.bias", "norm2.weight", "norm2.bias"};
  REQUIRE(list.size() == 12);
  for (Index i = 0; i < 12; ++i) REQUIRE(list[i].name() == std::string("layers.0.") + names[i]);

  Rng rng(1);
  const Tensor<S> src = random_tensor<S>({3, 2, 8}, rng), up = random_tensor<S>({3, 2, 8}, rng);
  attend::TransformerEncoderLayerCache<S> cache;
  (void)attend::transformer_encoder_layer_forward(layer, src, {}, &cache);
  (void)attend::transformer_encoder_layer_backward(layer, cache, up, g);
  const Matrix<S> once = g.linear1.d_weight;
  (void)attend::transformer_encoder_layer_backward(layer, cache, up, g);
  REQUIRE(g.linear1.d_weight == Matrix<S>(once * S(2)));  // += (x + x = 2x exactly)

  const std::string who = "transformer_encoder_layer_backward: ";
  attend::TransformerEncoderLayerCache<S> empty;
  REQUIRE_THROWS_AS(attend::transformer_encoder_layer_backward(layer, empty, up, g),
                    attend::value_error);
  REQUIRE_THROWS_WITH(attend::transformer_encoder_layer_backward(layer, empty, up, g),
                      who + "cache is empty, expected one filled by "
                            "transformer_encoder_layer_forward");
  REQUIRE_THROWS_AS(attend::transformer_encoder_layer_backward(layer, cache, Tensor<S>({3, 8}), g),
                    attend::shape_error);
  REQUIRE_THROWS_WITH(
      attend::transformer_encoder_layer_backward(layer, cache, Tensor<S>({3, 8}), g),
      who + "d_output is [3, 8], expected [3, 2, 8] (the forward's src)");
}
