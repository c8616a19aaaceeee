// SPDX-License-Identifier: MIT
// Tests of transformer/: encoder and decoder layers, stacks, the full seq2seq model, and the
// positions of attention (PyTorch fixtures, properties, state-dict loading and error paths).
#include "attend/transformer/transformer.hpp"

#include "attend/attention/alibi.hpp"
#include "attend/attention/grouped_query.hpp"
#include "attend/attention/kv_cache.hpp"
#include "attend/attention/mask.hpp"
#include "attend/attention/multihead.hpp"
#include "attend/core/errors.hpp"
#include "attend/core/random.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/embedding/learned_positional.hpp"
#include "attend/embedding/rotary.hpp"
#include "attend/io/safetensors.hpp"
#include "attend/io/safetensors_writer.hpp"
#include "attend/ops/activation.hpp"
#include "attend/ops/layer_norm.hpp"
#include "attend/ops/linear.hpp"
#include "attend/transformer/decoder.hpp"
#include "attend/transformer/decoder_layer.hpp"
#include "attend/transformer/encoder.hpp"
#include "attend/transformer/encoder_layer.hpp"
#include "attend/transformer/layer_options.hpp"
#include "attend/transformer/seq2seq.hpp"
#include "attend/transformer/state_dict_writer.hpp"
#include "attend/rnn/decoding.hpp"

#include <Eigen/Core>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#ifndef ATTEND_TEST_DATA_DIR
#define ATTEND_TEST_DATA_DIR "tests/data"
#endif

#include "test_util.hpp"

namespace {

using attend::Index;
using attend::Mask;
using attend::Matrix;
using attend::Rng;
using attend::Shape;
using attend::Tensor;
using attend::TransformerDecoder;
using attend::TransformerDecoderLayer;
using attend::TransformerDecoderLayerArgs;
using attend::TransformerEncoder;
using attend::TransformerEncoderArgs;
using attend::TransformerEncoderLayer;
using attend::TransformerEncoderLayerArgs;
using attend::TransformerLayerOptions;

using attend_test::random_tensor;
using attend_test::randomize_biases;
using attend_test::require_close;

// ---- tolerances ------------------------------------------------------------------------

/// The same layer on the same numbers through another layout or batch split (seq-first vs
/// batch_first, one batch vs several, unbatched): only Eigen's summation order may change
/// with alignment; LayerNorm divides by row stds ~1, so a few ulps of O(1) values.
template <typename S>
constexpr double kSameTol = std::is_same_v<S, float> ? 5e-6 : 1e-13;

/// Incremental decoding vs recomputing the prefix: the same sums, but projections of one
/// row vs a block GEMM and a softmax over the cached keys vs a masked full row may round
/// differently; through up to 2 layers and 50 positions a few ulps of O(1) values.
template <typename S>
constexpr double kCacheTol = std::is_same_v<S, float> ? 2e-5 : 1e-12;

/// Hand values written with 10 decimals (rounding <= 5e-11); float results carry a few
/// ulps of values up to ~4.
template <typename S>
constexpr double kHandTol = std::is_same_v<S, float> ? 2e-6 : 1e-10;

/// Two mathematically equal computations rounded in different orders (a stack vs its
/// layers applied by hand, a mask spelled two ways): a few ulps through two layers.
template <typename S>
constexpr double kReorderTol = std::is_same_v<S, float> ? 2e-5 : 1e-12;

// ---- helpers ---------------------------------------------------------------------------

/// [T, B, E] <-> [B, T, E].
template <typename S>
Tensor<S> swap01(const Tensor<S>& x) {
  Tensor<S> y({x.dim(1), x.dim(0), x.dim(2)});
  for (Index i = 0; i < x.dim(0); ++i)
    for (Index j = 0; j < x.dim(1); ++j)
      for (Index k = 0; k < x.dim(2); ++k) y(j, i, k) = x(i, j, k);
  return y;
}

/// Sequence b of a [T, B, E] tensor as [T, E].
template <typename S>
Tensor<S> seq_of(const Tensor<S>& x, Index b) {
  Tensor<S> y({x.dim(0), x.dim(2)});
  for (Index t = 0; t < x.dim(0); ++t)
    for (Index k = 0; k < x.dim(2); ++k) y(t, k) = x(t, b, k);
  return y;
}

TransformerLayerOptions small_options(bool norm_first = false, bool batch_first = false) {
  TransformerLayerOptions o;
  o.d_model = 8;
  o.nhead = 2;
  o.dim_feedforward = 16;
  o.activation = attend::Activation::gelu;
  o.norm_first = norm_first;
  o.batch_first = batch_first;
  return o;
}

/// Random biases and norm parameters (the defaults are zeros and ones, which hide them).
template <typename S, typename Layer>
void randomize_small_parameters(Layer& layer, Rng& rng) {
  const auto fill = [&](auto& v, double center) {
    for (Index i = 0; i < v.size(); ++i) v(i) = static_cast<S>(center + rng.uniform(-0.3, 0.3));
  };
  fill(layer.self_attn.in_proj_bias, 0.0);
  fill(layer.self_attn.out_proj_bias, 0.0);
  fill(layer.norm1.weight, 1.0);
  fill(layer.norm1.bias, 0.0);
  fill(layer.norm2.weight, 1.0);
  fill(layer.norm2.bias, 0.0);
}

template <typename S>
void add_vector(attend::SafeTensorsWriter& w, const std::string& name, const attend::Vector<S>& v) {
  Tensor<S> t({v.size()});
  t.flat() = v;
  w.add(name, t);
}

template <typename S>
void add_layer_common(attend::SafeTensorsWriter& w, const std::string& p,
                      const attend::MultiheadAttention<S>& sa, const attend::Linear<S>& l1,
                      const attend::Linear<S>& l2) {
  w.add(p + "self_attn.in_proj_weight", Tensor<S>::from_matrix(sa.in_proj_weight));
  add_vector(w, p + "self_attn.in_proj_bias", sa.in_proj_bias);
  w.add(p + "self_attn.out_proj.weight", Tensor<S>::from_matrix(sa.out_proj_weight));
  add_vector(w, p + "self_attn.out_proj.bias", sa.out_proj_bias);
  w.add(p + "linear1.weight", Tensor<S>::from_matrix(l1.weight));
  add_vector(w, p + "linear1.bias", l1.bias);
  w.add(p + "linear2.weight", Tensor<S>::from_matrix(l2.weight));
  add_vector(w, p + "linear2.bias", l2.bias);
}

/// Writes an encoder layer's parameters under PyTorch's state-dict names.
template <typename S>
void add_encoder_layer(attend::SafeTensorsWriter& w, const std::string& p,
                       const TransformerEncoderLayer<S>& layer) {
  add_layer_common(w, p, layer.self_attn, layer.linear1, layer.linear2);
  add_vector(w, p + "norm1.weight", layer.norm1.weight);
  add_vector(w, p + "norm1.bias", layer.norm1.bias);
  add_vector(w, p + "norm2.weight", layer.norm2.weight);
  add_vector(w, p + "norm2.bias", layer.norm2.bias);
}

/// The fixture's tolerance-checked output of a case file.
template <typename S>
void check_fixture(const Tensor<S>& got, const attend::SafeTensors& st) {
  const double rtol = std::stod(st.metadata().at("rtol"));
  const double atol = std::stod(st.metadata().at("atol"));
  require_close(got, st.get<S>("expected.output"), atol, rtol);
}

std::string fixture(const std::string& rel) {
  return std::string(ATTEND_TEST_DATA_DIR) + "/" + rel;
}

// ========================================================================================
// PyTorch fixtures (the whole set runs in attend-conformance; these pin one case each)
// ========================================================================================

TEST_CASE("encoder_layer.hpp: matches nn.TransformerEncoderLayer fixtures",
          "[transformer][fixture]") {
  SECTION("pre-norm gelu, batch_first, double") {
    const auto st = attend::SafeTensors::load(
        fixture("transformer_encoder_layer/pre_norm_gelu_batch_first_f64.safetensors"));
    TransformerLayerOptions o = small_options(true, true);
    TransformerEncoderLayer<double> layer(o);
    layer.load_state_dict(st);
    check_fixture(layer.forward(st.get<double>("input.src")), st);
  }
  SECTION("pre-norm relu with an I64 key padding mask and an additive causal mask, float") {
    const auto st = attend::SafeTensors::load(
        fixture("transformer_encoder_layer/key_padding_i64_causal_f32.safetensors"));
    TransformerLayerOptions o = small_options(true, false);
    o.activation = attend::Activation::relu;
    TransformerEncoderLayer<float> layer(o);
    layer.load_state_dict(st);
    TransformerEncoderLayerArgs a;
    a.src_mask = Mask::from_torch_mha_additive(st.get<float>("input.src_mask"), 2);
    a.src_key_padding_mask = Mask::key_padding(st.get<bool>("input.src_key_padding_mask"));
    check_fixture(layer.forward(st.get<float>("input.src"), a), st);
  }
}

TEST_CASE("decoder_layer.hpp: matches nn.TransformerDecoderLayer fixtures",
          "[transformer][fixture]") {
  const auto st = attend::SafeTensors::load(
      fixture("transformer_decoder_layer/causal_memory_padding_f64.safetensors"));
  TransformerLayerOptions o = small_options(false, false);
  o.activation = attend::Activation::relu;
  TransformerDecoderLayer<double> layer(o);
  layer.load_state_dict(st);
  TransformerDecoderLayerArgs a;
  a.tgt_mask = Mask::from_torch_mha_additive(st.get<double>("input.tgt_mask"), 2);
  a.memory_key_padding_mask = Mask::key_padding(st.get<bool>("input.memory_key_padding_mask"));
  check_fixture(layer.forward(st.get<double>("input.tgt"), st.get<double>("input.memory"), a), st);
  // The same causal mask as the tgt_is_causal flag gives the same result.
  TransformerDecoderLayerArgs b;
  b.tgt_is_causal = true;
  b.memory_key_padding_mask = a.memory_key_padding_mask;
  check_fixture(layer.forward(st.get<double>("input.tgt"), st.get<double>("input.memory"), b), st);
}

TEST_CASE("encoder.hpp: matches a 2-layer nn.TransformerEncoder with final norm",
          "[transformer][fixture]") {
  const auto st = attend::SafeTensors::load(
      fixture("transformer_encoder/post_norm_final_norm_f32.safetensors"));
  TransformerLayerOptions o = small_options();
  o.activation = attend::Activation::relu;
  TransformerEncoder<float> encoder(o, 2, true);
  encoder.load_state_dict(st);
  check_fixture(encoder.forward(st.get<float>("input.src")), st);
}

TEST_CASE("decoder.hpp: matches a 2-layer nn.TransformerDecoder with final norm",
          "[transformer][fixture]") {
  const auto st = attend::SafeTensors::load(
      fixture("transformer_decoder/pre_norm_final_norm_batch_first_f32.safetensors"));
  TransformerDecoder<float> decoder(small_options(true, true), 2, true);
  decoder.load_state_dict(st);
  TransformerDecoderLayerArgs a;
  a.tgt_is_causal = true;
  a.tgt_key_padding_mask = Mask::key_padding(st.get<bool>("input.tgt_key_padding_mask"));
  check_fixture(decoder.forward(st.get<float>("input.tgt"), st.get<float>("input.memory"), a), st);
}

TEST_CASE("transformer.hpp: matches nn.Transformer (2 + 2 layers)", "[transformer][fixture]") {
  const auto st = attend::SafeTensors::load(fixture("transformer/post_norm_masks_f64.safetensors"));
  attend::TransformerOptions o;
  o.layer = small_options();
  o.layer.activation = attend::Activation::relu;
  o.num_encoder_layers = o.num_decoder_layers = 2;
  attend::Transformer<double> model(o);
  model.load_state_dict(st);
  attend::TransformerArgs a;
  a.src_key_padding_mask = Mask::key_padding(st.get<bool>("input.src_key_padding_mask"));
  a.memory_key_padding_mask = a.src_key_padding_mask;
  a.tgt_mask = Mask::from_torch_mha_additive(st.get<double>("input.tgt_mask"), 2);
  const Tensor<double> src = st.get<double>("input.src"), tgt = st.get<double>("input.tgt");
  const Tensor<double> y = model.forward(src, tgt, a);
  check_fixture(y, st);
  require_close(model.decode(tgt, model.encode(src, a), a), y, 0.0);  // the same two calls
  REQUIRE_THROWS_AS(model.forward(src, Tensor<double>({4, 3, 8}), a), attend::shape_error);
  REQUIRE_THROWS_WITH(model.forward(src, Tensor<double>({4, 3, 8}), a),
                      "Transformer::forward: tgt is [4, 3, 8], expected [L, 2, 8] (d_model)");
  REQUIRE_THROWS_WITH(model.forward(Tensor<double>({6, 2, 4}), tgt, a),
                      "Transformer::forward: src is [6, 2, 4], expected [S, B, 8] (d_model)");
}

// ========================================================================================
// properties
// ========================================================================================

TEMPLATE_TEST_CASE("encoder_layer.hpp: zeroed sublayers leave the residual path",
                   "[transformer][property]", float, double) {
  using S = TestType;
  Rng rng(1);
  const Tensor<S> src = random_tensor<S>({5, 2, 8}, rng, 2.0);
  for (const bool norm_first : {true, false}) {
    TransformerEncoderLayer<S> layer(small_options(norm_first), 3);
    randomize_small_parameters<S>(layer, rng);
    // Attention and feed-forward outputs are exactly zero with zero output projections.
    layer.self_attn.out_proj_weight.setZero();
    layer.self_attn.out_proj_bias.setZero();
    layer.linear2.weight.setZero();
    layer.linear2.bias.setZero();
    const Tensor<S> y = layer.forward(src);
    if (norm_first) {
      CHECK(y.as_matrix() == src.as_matrix());  // x + 0 + 0, exactly
    } else {
      require_close(y, layer.norm2.forward(layer.norm1.forward(src)), kSameTol<S>);
    }
  }
}

TEMPLATE_TEST_CASE("encoder_layer.hpp: layouts, unbatched input and batch splits agree",
                   "[transformer][property]", float, double) {
  using S = TestType;
  Rng rng(2);
  const Tensor<S> src = random_tensor<S>({6, 3, 8}, rng);  // [L, B, E]
  for (const bool norm_first : {false, true}) {
    TransformerEncoderLayer<S> seq_first(small_options(norm_first, false), 5);
    randomize_small_parameters<S>(seq_first, rng);
    TransformerEncoderLayer<S> batch_first = seq_first;
    batch_first.options.batch_first = true;
    batch_first.self_attn.options.batch_first = true;
    const Tensor<S> y = seq_first.forward(src);
    require_close(batch_first.forward(swap01(src)), swap01(y), kSameTol<S>);
    for (Index b = 0; b < 3; ++b) {
      require_close(seq_first.forward(seq_of(src, b)), seq_of(y, b), kSameTol<S>);  // unbatched
    }
  }
}

TEMPLATE_TEST_CASE("encoder_layer.hpp: padded and future positions do not leak",
                   "[transformer][property]", float, double) {
  using S = TestType;
  Rng rng(3);
  TransformerEncoderLayer<S> layer(small_options(false, true), 7);
  randomize_small_parameters<S>(layer, rng);
  const Index B = 2, L = 6;
  const Tensor<S> src = random_tensor<S>({B, L, 8}, rng);
  Tensor<S> changed = src;
  for (Index k = 0; k < 8; ++k) changed(1, 5, k) += S(3);  // last position of sequence 1
  TransformerEncoderLayerArgs pad;
  pad.src_key_padding_mask = Mask::key_padding_lengths({6, 5}, L);  // sequence 1: 5 valid
  const Tensor<S> y0 = layer.forward(src, pad), y1 = layer.forward(changed, pad);
  require_close(y1.matrix(1).topRows(5), y0.matrix(1).topRows(5), 0.0);  // identical bits
  require_close(y1.matrix(0), y0.matrix(0), 0.0);
  CHECK(y1.matrix(1).row(5) != y0.matrix(1).row(5));  // the padded query itself is computed

  TransformerEncoderLayerArgs causal;
  causal.is_causal = true;
  const Tensor<S> c0 = layer.forward(src, causal), c1 = layer.forward(changed, causal);
  require_close(c1.matrix(1).topRows(5), c0.matrix(1).topRows(5), 0.0);
  // is_causal, Mask::causal() and PyTorch's bool triu mask are one mask.
  TransformerEncoderLayerArgs as_mask;
  as_mask.src_mask = Mask::causal();
  require_close(layer.forward(src, as_mask), c0, 0.0);
  Tensor<bool> triu({L, L}, false);
  for (Index i = 0; i < L; ++i)
    for (Index j = i + 1; j < L; ++j) triu(i, j) = true;
  TransformerEncoderLayerArgs torch_mask;
  torch_mask.src_mask = Mask::from_torch_mha(triu, 2);
  require_close(layer.forward(src, torch_mask), c0, kSameTol<S>);
}

TEMPLATE_TEST_CASE("decoder_layer.hpp: causal self-attention, memory padding, layouts",
                   "[transformer][property]", float, double) {
  using S = TestType;
  Rng rng(4);
  for (const bool norm_first : {false, true}) {
    TransformerDecoderLayer<S> layer(small_options(norm_first), 11);
    randomize_small_parameters<S>(layer, rng);
    const Tensor<S> tgt = random_tensor<S>({5, 2, 8}, rng),
                    memory = random_tensor<S>({7, 2, 8}, rng);
    TransformerDecoderLayerArgs a;
    a.tgt_is_causal = true;
    a.memory_key_padding_mask = Mask::key_padding_lengths({7, 4}, 7);
    const Tensor<S> y = layer.forward(tgt, memory, a);
    // A later target position or a padded memory position changes nothing before it.
    Tensor<S> tgt2 = tgt, memory2 = memory;
    for (Index k = 0; k < 8; ++k) {
      tgt2(4, 0, k) += S(2);
      tgt2(4, 1, k) -= S(2);
      memory2(6, 1, k) += S(5);  // padded in sequence 1
    }
    const Tensor<S> y2 = layer.forward(tgt2, memory, a);
    require_close(Matrix<S>(y2.as_matrix().topRows(8)), Matrix<S>(y.as_matrix().topRows(8)), 0.0);
    require_close(seq_of(layer.forward(tgt, memory2, a), 1), seq_of(y, 1), 0.0);
    // batch_first and unbatched agree with seq-first.
    TransformerDecoderLayer<S> bf = layer;
    bf.options.batch_first = bf.self_attn.options.batch_first =
        bf.multihead_attn.options.batch_first = true;
    require_close(bf.forward(swap01(tgt), swap01(memory), a), swap01(y), kSameTol<S>);
    TransformerDecoderLayerArgs one;
    one.tgt_is_causal = true;
    one.memory_key_padding_mask = Mask::key_padding_lengths({4}, 7);
    require_close(layer.forward(seq_of(tgt, 1), seq_of(memory, 1), one), seq_of(y, 1), kSameTol<S>);
  }
}

TEMPLATE_TEST_CASE("encoder.hpp: the stack is its layers in turn, then the final norm",
                   "[transformer][property]", float, double) {
  using S = TestType;
  Rng rng(5);
  TransformerEncoder<S> encoder(small_options(true), 3, true, 17);
  REQUIRE(encoder.num_layers() == 3);
  REQUIRE(encoder.norm.has_value());
  for (auto& layer : encoder.layers) randomize_small_parameters<S>(layer, rng);
  CHECK(encoder.layers[0].linear1.weight != encoder.layers[1].linear1.weight);  // own streams
  const Tensor<S> src = random_tensor<S>({4, 2, 8}, rng);
  TransformerEncoderArgs a;
  a.src_key_padding_mask = Mask::key_padding_lengths({4, 2}, 4);
  TransformerEncoderLayerArgs la;
  la.src_key_padding_mask = a.src_key_padding_mask;
  Tensor<S> want = src;
  for (const auto& layer : encoder.layers) want = layer.forward(want, la);
  want = encoder.norm->forward(want);
  require_close(encoder.forward(src, a), want, kReorderTol<S>);
}

// ========================================================================================
// construction and loading
// ========================================================================================

TEMPLATE_TEST_CASE("encoder_layer.hpp: PyTorch initialisation, seeded", "[transformer]", float,
                   double) {
  using S = TestType;
  const TransformerEncoderLayer<S> a(small_options(), 1), b(small_options(), 1),
      c(small_options(), 2);
  CHECK(a.self_attn.in_proj_weight == b.self_attn.in_proj_weight);
  CHECK(a.linear2.weight == b.linear2.weight);
  CHECK(a.self_attn.in_proj_weight != c.self_attn.in_proj_weight);
  CHECK(a.linear1.weight.rows() == 16);
  CHECK(a.linear1.weight.cols() == 8);
  CHECK(a.linear2.weight.cwiseAbs().maxCoeff() <= S(0.25));  // 1/sqrt(dim_feedforward = 16)
  CHECK(a.self_attn.in_proj_bias == attend::Vector<S>::Zero(24));
  CHECK(a.norm1.weight == attend::Vector<S>::Ones(8));
  CHECK(a.norm2.bias == attend::Vector<S>::Zero(8));
  CHECK(a.norm1.eps() == 1e-5);
}

TEMPLATE_TEST_CASE("encoder.hpp: load_state_dict by PyTorch names, all or nothing", "[transformer]",
                   float, double) {
  using S = TestType;
  Rng rng(6);
  TransformerEncoder<S> source(small_options(), 2, true, 21);
  for (auto& layer : source.layers) randomize_small_parameters<S>(layer, rng);
  source.norm->weight.setConstant(S(1.5));
  attend::SafeTensorsWriter w;
  add_encoder_layer(w, "encoder.layers.0.", source.layers[0]);
  add_encoder_layer(w, "encoder.layers.1.", source.layers[1]);
  add_vector(w, "encoder.norm.weight", source.norm->weight);
  add_vector(w, "encoder.norm.bias", source.norm->bias);
  const auto st = attend::SafeTensors::parse(w.to_bytes(), "mem");

  TransformerEncoder<S> target(small_options(), 2, true, 22);
  const Tensor<S> src = random_tensor<S>({3, 2, 8}, rng);
  target.load_state_dict(st, "encoder.");
  require_close(target.forward(src), source.forward(src), 0.0);

  TransformerEncoder<S> three(small_options(), 3, true, 23);
  const Tensor<S> before = three.forward(src);
  REQUIRE_THROWS_AS(three.load_state_dict(st, "encoder."), attend::index_error);
  REQUIRE_THROWS_WITH(
      three.load_state_dict(st, "encoder."),
      "load_matrix: no parameter named 'encoder.layers.2.self_attn.in_proj_weight' in mem");
  require_close(three.forward(src), before, 0.0);  // layers 0 and 1 were not replaced either
}

// ========================================================================================
// errors
// ========================================================================================

TEMPLATE_TEST_CASE("layer_options.hpp: invalid options are rejected at construction",
                   "[transformer][error]", float, double) {
  using S = TestType;
  TransformerLayerOptions o = small_options();
  o.d_model = 10;
  o.nhead = 3;
  REQUIRE_THROWS_AS(TransformerEncoderLayer<S>(o), attend::value_error);
  REQUIRE_THROWS_WITH(TransformerEncoderLayer<S>(o),
                      "TransformerEncoderLayer: d_model 10 is not divisible by nhead 3");
  REQUIRE_THROWS_WITH(TransformerDecoderLayer<S>(o),
                      "TransformerDecoderLayer: d_model 10 is not divisible by nhead 3");
  REQUIRE_THROWS_WITH(TransformerEncoder<S>(o, 2),
                      "TransformerEncoderLayer: d_model 10 is not divisible by nhead 3");
  o = small_options();
  o.nhead = 0;
  REQUIRE_THROWS_WITH(
      TransformerEncoderLayer<S>(o),
      "TransformerEncoderLayer: d_model is 8 and nhead is 0, expected both positive");
  o = small_options();
  o.dim_feedforward = 0;
  REQUIRE_THROWS_WITH(TransformerDecoderLayer<S>(o),
                      "TransformerDecoderLayer: dim_feedforward is 0, expected a positive size");
  o = small_options();
  o.layer_norm_eps = -1e-5;
  REQUIRE_THROWS_WITH(
      TransformerEncoderLayer<S>(o),
      "TransformerEncoderLayer: layer_norm_eps is -1e-05, expected a finite value >= 0");
  REQUIRE_THROWS_AS(TransformerEncoder<S>(small_options(), 0), attend::value_error);
  REQUIRE_THROWS_WITH(TransformerEncoder<S>(small_options(), 0),
                      "TransformerEncoder: num_layers is 0, expected a positive count");
  REQUIRE_THROWS_WITH(TransformerDecoder<S>(small_options(), -1),
                      "TransformerDecoder: num_layers is -1, expected a positive count");
}

TEMPLATE_TEST_CASE("encoder_layer.hpp, decoder_layer.hpp: bad input shapes are rejected",
                   "[transformer][error]", float, double) {
  using S = TestType;
  const TransformerEncoderLayer<S> enc(small_options());
  const TransformerEncoderLayer<S> enc_bf(small_options(false, true));
  REQUIRE_THROWS_AS(enc.forward(Tensor<S>({5, 2, 7})), attend::shape_error);
  REQUIRE_THROWS_WITH(
      enc.forward(Tensor<S>({5, 2, 7})),
      "TransformerEncoderLayer::forward: src is [5, 2, 7], expected [L, B, 8] (d_model)");
  REQUIRE_THROWS_WITH(
      enc_bf.forward(Tensor<S>({2, 5, 7})),
      "TransformerEncoderLayer::forward: src is [2, 5, 7], expected [B, L, 8] (d_model)");
  REQUIRE_THROWS_WITH(
      enc.forward(Tensor<S>({1, 5, 2, 8})),
      "TransformerEncoderLayer::forward: src is [1, 5, 2, 8], expected [L, B, 8] or "
      "[L, 8] (d_model)");
  TransformerEncoderLayerArgs bad_mask;
  bad_mask.src_mask =
      Mask::causal() & Mask::deny(attend::BoolMatrix(attend::BoolMatrix::Zero(4, 4)));
  REQUIRE_THROWS_WITH(enc.forward(Tensor<S>({5, 2, 8}), bad_mask),
                      "TransformerEncoderLayer::forward: src_mask is [1, 1, 4, 4], expected "
                      "broadcastable to [2, 2, 5, 5]");
  TransformerEncoderLayerArgs bad_pad;
  bad_pad.src_key_padding_mask = Mask::key_padding_lengths({5, 5, 5}, 5);
  REQUIRE_THROWS_WITH(enc.forward(Tensor<S>({5, 2, 8}), bad_pad),
                      "TransformerEncoderLayer::forward: src_key_padding_mask is [3, 1, 1, 5], "
                      "expected broadcastable to [2, 1, 1, 5]");

  const TransformerDecoderLayer<S> dec(small_options());
  const Tensor<S> tgt({4, 2, 8});
  REQUIRE_THROWS_AS(dec.forward(tgt, Tensor<S>({6, 2, 7})), attend::shape_error);
  REQUIRE_THROWS_WITH(
      dec.forward(tgt, Tensor<S>({6, 2, 7})),
      "TransformerDecoderLayer::forward: memory is [6, 2, 7], expected [S, 2, 8] (d_model)");
  REQUIRE_THROWS_WITH(
      dec.forward(tgt, Tensor<S>({6, 3, 8})),
      "TransformerDecoderLayer::forward: memory is [6, 3, 8], expected [S, 2, 8] (d_model)");
  REQUIRE_THROWS_WITH(
      dec.forward(tgt, Tensor<S>({6, 8})),
      "TransformerDecoderLayer::forward: memory is [6, 8], expected [S, 2, 8] (d_model)");
  REQUIRE_THROWS_WITH(
      dec.forward(Tensor<S>({4, 8}), Tensor<S>({6, 1, 8})),
      "TransformerDecoderLayer::forward: memory is [6, 1, 8], expected [S, 8] (d_model)");
  REQUIRE_THROWS_WITH(
      dec.forward(Tensor<S>({4, 2, 9}), Tensor<S>({6, 2, 8})),
      "TransformerDecoderLayer::forward: tgt is [4, 2, 9], expected [L, B, 8] (d_model)");
  TransformerDecoderLayerArgs bad;
  bad.memory_key_padding_mask = Mask::key_padding_lengths({4, 4}, 4);
  REQUIRE_THROWS_WITH(dec.forward(tgt, Tensor<S>({6, 2, 8}), bad),
                      "TransformerDecoderLayer::forward: memory_key_padding_mask is [2, 1, 1, 4], "
                      "expected broadcastable to [2, 1, 1, 6]");
  Tensor<S> nan_tgt({4, 2, 8});
  nan_tgt(1, 0, 3) = std::numeric_limits<S>::quiet_NaN();
  REQUIRE_THROWS_AS(dec.forward(nan_tgt, Tensor<S>({6, 2, 8})), attend::value_error);
}

// ========================================================================================
// incremental decoding with a KV cache
// ========================================================================================

TEMPLATE_TEST_CASE("kv_cache.hpp: 50 cached self-attention steps equal causal attention",
                   "[transformer][property]", float, double) {
  using S = TestType;
  Rng rng(7);
  for (const bool batch_first : {false, true}) {
    attend::MultiheadAttentionOptions o;
    o.embed_dim = 8;
    o.num_heads = 2;
    o.batch_first = batch_first;
    attend::MultiheadAttention<S> mha(o, 3);
    for (Index i = 0; i < mha.in_proj_bias.size(); ++i)
      mha.in_proj_bias(i) = S(rng.uniform(-0.3, 0.3));
    const Index L = 50, B = 2;
    const Tensor<S> x = random_tensor<S>({L, B, 8}, rng);  // seq-first
    const Tensor<S> input = batch_first ? swap01(x) : x;
    attend::MultiheadAttentionArgs causal;
    causal.is_causal = true;
    causal.need_weights = false;
    const Tensor<S> full = mha.forward(input, causal).output;
    const Tensor<S> want = batch_first ? swap01(full) : full;  // [L, B, E]
    // One position per step; then the same in chunks of 1, 3 and 7 positions.
    for (const Index chunk : {Index(1), Index(3), Index(7)}) {
      attend::KVCache<S> cache(B, L, 8);
      for (Index t0 = 0; t0 < L; t0 += chunk) {
        const Index T = std::min(chunk, L - t0);
        Tensor<S> step({T, B, 8});
        step.as_matrix() = x.as_matrix().middleRows(t0 * B, T * B);
        const Tensor<S> got =
            attend::self_attention_step(mha, batch_first ? swap01(step) : step, cache);
        require_close((batch_first ? swap01(got) : got).as_matrix(),
                      want.as_matrix().middleRows(t0 * B, T * B), kCacheTol<S>);
        REQUIRE(cache.size() == t0 + T);
      }
    }
  }
}

TEMPLATE_TEST_CASE(
    "decoder_layer.hpp, decoder.hpp: 50 decoding steps with the cache equal "
    "recomputing the prefix",
    "[transformer][property]", float, double) {
  using S = TestType;
  Rng rng(8);
  const Index L = 50, B = 2, Sm = 6;
  const Tensor<S> tgt = random_tensor<S>({L, B, 8}, rng),
                  memory = random_tensor<S>({Sm, B, 8}, rng);
  const Mask memory_padding = Mask::key_padding_lengths({6, 4}, Sm);
  TransformerDecoderLayerArgs a;
  a.tgt_is_causal = true;
  a.memory_key_padding_mask = memory_padding;
  const auto token = [&](Index t) {  // position t of every sequence, [1, B, E]
    Tensor<S> x({1, B, 8});
    x.as_matrix() = tgt.as_matrix().middleRows(t * B, B);
    return x;
  };
  for (const bool norm_first : {false, true}) {
    INFO("norm_first " << norm_first);
    TransformerDecoderLayer<S> layer(small_options(norm_first), 13);
    randomize_small_parameters<S>(layer, rng);
    const Tensor<S> full = layer.forward(tgt, memory, a);
    auto cache = layer.make_cache(B, L);
    for (Index t = 0; t < L; ++t) {
      const Tensor<S> y = layer.forward_step(token(t), memory, cache, memory_padding);
      require_close(y.as_matrix(), full.as_matrix().middleRows(t * B, B), kCacheTol<S>);
    }
    CHECK(cache.self_attn.size() == L);
    CHECK(cache.memory.size() == Sm);  // projected once

    TransformerDecoder<S> decoder(small_options(norm_first), 2, true, 19);
    for (auto& l : decoder.layers) randomize_small_parameters<S>(l, rng);
    const Tensor<S> full2 = decoder.forward(tgt, memory, a);
    auto cache2 = decoder.make_cache(B, L);
    for (Index t = 0; t < L; ++t) {
      const Tensor<S> y = decoder.forward_step(token(t), memory, cache2, memory_padding);
      require_close(y.as_matrix(), full2.as_matrix().middleRows(t * B, B), kCacheTol<S>);
    }
    CHECK(cache2.size() == L);
  }
}

TEMPLATE_TEST_CASE("kv_cache.hpp, decoder_layer.hpp: cache overflow and mismatches are rejected",
                   "[transformer][error]", float, double) {
  using S = TestType;
  const TransformerDecoderLayer<S> layer(small_options(), 5);
  const Tensor<S> memory({6, 2, 8}), token({1, 2, 8});
  auto cache = layer.make_cache(2, 3);
  for (int t = 0; t < 3; ++t) layer.forward_step(token, memory, cache);
  REQUIRE_THROWS_AS(layer.forward_step(token, memory, cache), attend::index_error);
  REQUIRE_THROWS_WITH(layer.forward_step(token, memory, cache),
                      "append_keys_values: kv_input has 1 new position(s), expected at most 0 "
                      "(cache capacity 3, 3 cached)");
  CHECK(cache.self_attn.size() == 3);  // a failed step appends nothing
  auto fresh = layer.make_cache(2, 3);
  layer.forward_step(token, memory, fresh);
  REQUIRE_THROWS_AS(layer.forward_step(token, Tensor<S>({5, 2, 8}), fresh), attend::shape_error);
  REQUIRE_THROWS_WITH(layer.forward_step(token, Tensor<S>({5, 2, 8}), fresh),
                      "TransformerDecoderLayer::forward_step: memory has 5 positions, expected 6 "
                      "(the memory of the cached steps)");
  auto wrong_batch = layer.make_cache(3, 3);
  REQUIRE_THROWS_WITH(layer.forward_step(token, memory, wrong_batch),
                      "TransformerDecoderLayer::forward_step: cache is for batch 3 and d_model 8, "
                      "expected 2 and 8 (make_cache(B, max_len))");
  const TransformerDecoder<S> two(small_options(), 2);
  auto one_layer = TransformerDecoder<S>(small_options(), 1).make_cache(2, 3);
  REQUIRE_THROWS_WITH(
      two.forward_step(token, memory, one_layer),
      "TransformerDecoder::forward_step: cache has 1 layers, expected 2 (make_cache)");
  REQUIRE_THROWS_AS(layer.make_cache(0, 3), attend::value_error);
  REQUIRE_THROWS_WITH(
      layer.make_cache(0, 3),
      "KVCache: batch is 0, capacity 3 and embed_dim 8, expected batch, embed_dim > 0 "
      "and capacity >= 0");
  const attend::KVCache<S> unfilled(2, 3, 8);
  REQUIRE_THROWS_WITH(attend::attend_cached(layer.self_attn, token, unfilled),
                      "attend_cached: cache holds 0 positions, expected at least 1 to attend to");
  attend::KVCache<S> empty;
  REQUIRE_THROWS_WITH(attend::attend_cached(layer.self_attn, token, empty),
                      "attend_cached: cache is [0, 0, 0], expected [2, capacity, 8] (batch, "
                      "embed_dim)");
  REQUIRE_THROWS_WITH(attend::self_attention_step(layer.self_attn, token, empty),
                      "self_attention_step: cache has capacity 0, expected a cache made with room "
                      "for the positions to decode");
}

// ========================================================================================
// positions beyond sinusoidal, grouped-query attention
// ========================================================================================

TEMPLATE_TEST_CASE("rotary.hpp: rotations by hand, both layouts, and the inverse", "[transformer]",
                   float, double) {
  using S = TestType;
  Matrix<S> x(1, 4);
  x << 1, 2, 3, 4;
  // Position 2, d = 4: t_0 = 1, t_1 = 10000^(-2/4) = 0.01, so angles 2 and 0.02;
  // cos 2 = -0.4161468365, sin 2 = 0.9092974268, cos 0.02 = 0.9998000067, sin 0.02 = 0.0199986667.
  // interleaved pairs (0, 1), (2, 3):
  //   1 cos2 - 2 sin2 = -2.2347416902, 1 sin2 + 2 cos2 = 0.0770037537,
  //   3 cos.02 - 4 sin.02 = 2.9194053532, 3 sin.02 + 4 cos.02 = 4.0591960267
  Matrix<S> want(1, 4);
  want << S(-2.2347416902), S(0.0770037537), S(2.9194053532), S(4.0591960267);
  require_close(attend::apply_rotary(x, 2), want, kHandTol<S>);
  // half pairs (0, 2), (1, 3):
  //   1 cos2 - 3 sin2 = -3.1440391170, 1 sin2 + 3 cos2 = -0.3391430828,
  //   2 cos.02 - 4 sin.02 = 1.9196053466, 2 sin.02 + 4 cos.02 = 4.0391973601
  want << S(-3.1440391170), S(1.9196053466), S(-0.3391430828), S(4.0391973601);
  require_close(attend::apply_rotary(x, 2, attend::RotaryLayout::half), want, kHandTol<S>);
  // Position 0 is the identity; rotary_backward undoes the rotation (R^T R = I).
  require_close(attend::apply_rotary(x, 0), x, 0.0);
  require_close(attend::rotary_backward(attend::apply_rotary(x, 7), 7), x, kHandTol<S>);
  REQUIRE_THROWS_AS(attend::apply_rotary(Matrix<S>(Matrix<S>::Zero(2, 3))), attend::shape_error);
  REQUIRE_THROWS_WITH(attend::apply_rotary(Matrix<S>(Matrix<S>::Zero(2, 3))),
                      "apply_rotary: x is [2, 3], expected an even, nonzero number of features");
}

TEST_CASE("rotary.hpp: q . k depends only on the relative offset", "[transformer][property]") {
  Rng rng(12);
  for (int trial = 0; trial < 20; ++trial) {
    const Index d = 2 * (1 + static_cast<Index>(rng.next() % 16));  // even, 2 .. 32
    Matrix<double> q(1, d), k(1, d);
    attend::fill_uniform(q, 1.0, rng);
    attend::fill_uniform(k, 1.0, rng);
    const Index m = static_cast<Index>(rng.next() % 100), n = static_cast<Index>(rng.next() % 100);
    const Index shift = static_cast<Index>(rng.next() % 1000);
    for (const auto layout : {attend::RotaryLayout::interleaved, attend::RotaryLayout::half}) {
      const double a =
          attend::apply_rotary(q, m, layout).row(0).dot(attend::apply_rotary(k, n, layout).row(0));
      const double b = attend::apply_rotary(q, m + shift, layout)
                           .row(0)
                           .dot(attend::apply_rotary(k, n + shift, layout).row(0));
      // Angles up to ~1100 rad lose ~1e-13 absolute in cos/sin; dot products of <= 32 terms.
      CHECK(std::abs(a - b) < 1e-11);
    }
  }
}

TEST_CASE("alibi.hpp: slopes and biases by hand", "[transformer]") {
  // H = 8: 2^(-8(h+1)/8) = 1/2, 1/4, ..., 1/256.
  const std::vector<double> s8 = attend::alibi_slopes(8);
  REQUIRE(s8.size() == 8);
  for (std::size_t h = 0; h < 8; ++h) CHECK(s8[h] == std::ldexp(1.0, -static_cast<int>(h + 1)));
  // H = 6: the slopes of 4 (2^-2, 2^-4, 2^-6, 2^-8), then slopes 0 and 2 of 8 (2^-1, 2^-3).
  CHECK(attend::alibi_slopes(6) ==
        std::vector<double>{0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125});
  // H = 2: slopes 2^-4 = 0.0625 and 2^-8 = 0.00390625; L = S = 3, causal: bias -m (i - j)
  // on and below the diagonal, blocked above it.
  const Mask m = attend::alibi_mask(2, 3, 3);
  REQUIRE(m.bias().has_value());
  const Tensor<double>& bias = *m.bias();
  REQUIRE(bias.shape() == Shape{1, 2, 3, 3});
  CHECK(bias(0, 0, 2, 0) == -0.125);  // head 0, i = 2, j = 0: -0.0625 * 2
  CHECK(bias(0, 0, 2, 1) == -0.0625);
  CHECK(bias(0, 0, 2, 2) == 0.0);
  CHECK(bias(0, 1, 2, 0) == -0.0078125);  // head 1: -0.00390625 * 2
  CHECK(m.is_blocked(0, 0, 0, 1));
  CHECK_FALSE(m.is_blocked(0, 1, 1, 1));
  // Symmetric (encoder) form and a cache offset: query 0 at absolute position 2.
  const Mask sym = attend::alibi_mask(2, 1, 4, false, 2);
  CHECK((*sym.bias())(0, 0, 0, 3) == -0.0625);  // |2 - 3| * 0.0625
  CHECK((*sym.bias())(0, 0, 0, 0) == -0.125);
  CHECK_FALSE(sym.blocked().has_value());
  REQUIRE_THROWS_WITH(attend::alibi_slopes(0),
                      "alibi_slopes: num_heads is 0, expected a positive count");
}

TEMPLATE_TEST_CASE("learned_positional.hpp: rows by position, range checked", "[transformer]",
                   float, double) {
  using S = TestType;
  attend::LearnedPositionalEmbedding<S> pe(10, 4, 3);
  require_close(pe.forward(3, 5), Matrix<S>(pe.weight.middleRows(5, 3)), 0.0);
  REQUIRE_THROWS_AS(pe.forward(3, 8), attend::index_error);
  REQUIRE_THROWS_WITH(pe.forward(3, 8),
                      "LearnedPositionalEmbedding::forward: positions [8, 11) are outside [0, 10) "
                      "(max_len)");
}

TEMPLATE_TEST_CASE("grouped_query.hpp: GQA equals MHA with repeated K/V heads",
                   "[transformer][property]", float, double) {
  using S = TestType;
  Rng rng(13);
  const Index E = 12, H = 6, L = 5, Sk = 7, B = 2;
  for (const Index G : {Index(1), Index(2), Index(3), Index(6)}) {
    INFO("num_kv_heads " << G);
    attend::GroupedQueryAttentionOptions go;
    go.embed_dim = E;
    go.num_heads = H;
    go.num_kv_heads = G;
    attend::GroupedQueryAttention<S> gqa(go, 4);
    for (auto* v : {&gqa.q_proj_bias, &gqa.k_proj_bias, &gqa.v_proj_bias, &gqa.out_proj_bias}) {
      for (Index i = 0; i < v->size(); ++i) (*v)(i) = S(rng.uniform(-0.5, 0.5));
    }
    // The equivalent MHA: K/V rows of kv head h / (H / G) repeated for query head h.
    attend::MultiheadAttentionOptions mo;
    mo.embed_dim = E;
    mo.num_heads = H;
    attend::MultiheadAttention<S> mha(mo);
    const Index dh = E / H, group = H / G;
    mha.in_proj_weight.topRows(E) = gqa.q_proj_weight;
    mha.in_proj_bias.head(E) = gqa.q_proj_bias;
    for (Index h = 0; h < H; ++h) {
      const Index g = h / group;
      mha.in_proj_weight.middleRows(E + h * dh, dh) = gqa.k_proj_weight.middleRows(g * dh, dh);
      mha.in_proj_weight.middleRows(2 * E + h * dh, dh) = gqa.v_proj_weight.middleRows(g * dh, dh);
      mha.in_proj_bias.segment(E + h * dh, dh) = gqa.k_proj_bias.segment(g * dh, dh);
      mha.in_proj_bias.segment(2 * E + h * dh, dh) = gqa.v_proj_bias.segment(g * dh, dh);
    }
    mha.out_proj_weight = gqa.out_proj_weight;
    mha.out_proj_bias = gqa.out_proj_bias;
    const Tensor<S> q = random_tensor<S>({L, B, E}, rng), k = random_tensor<S>({Sk, B, E}, rng),
                    v = random_tensor<S>({Sk, B, E}, rng);
    attend::GroupedQueryAttentionArgs ga;
    ga.key_padding_mask = Mask::key_padding_lengths({7, 4}, Sk);
    ga.attn_mask = attend::alibi_mask(H, L, Sk, false);
    attend::MultiheadAttentionArgs ma;
    ma.key_padding_mask = ga.key_padding_mask;
    ma.attn_mask = ga.attn_mask;
    ma.need_weights = false;
    require_close(gqa.forward(q, k, v, ga), mha.forward(q, k, v, ma).output, kSameTol<S>);
  }
}

TEMPLATE_TEST_CASE("grouped_query.hpp: rotary attention sees relative positions only",
                   "[transformer][property]", float, double) {
  using S = TestType;
  Rng rng(14);
  attend::GroupedQueryAttentionOptions go;
  go.embed_dim = 16;
  go.num_heads = 4;
  go.num_kv_heads = 2;
  go.rotary = true;
  go.batch_first = true;
  const attend::GroupedQueryAttention<S> gqa(go, 5);
  const Tensor<S> x = random_tensor<S>({2, 6, 16}, rng);
  attend::GroupedQueryAttentionArgs a;
  a.is_causal = true;
  const Tensor<S> y0 = gqa.forward(x, x, x, a);
  a.query_position = a.key_position = 40;  // the same offsets, shifted
  require_close(gqa.forward(x, x, x, a), y0, kReorderTol<S>);
  a.key_position = 0;  // a different relative offset changes the result
  CHECK(gqa.forward(x, x, x, a).as_matrix() != y0.as_matrix());
  // Without rotary the positions are ignored altogether.
  go.rotary = false;
  const attend::GroupedQueryAttention<S> plain(go, 5);
  CHECK(plain.forward(x, x, x, a).as_matrix() != y0.as_matrix());
}

TEST_CASE("grouped_query.hpp: invalid head counts are rejected", "[transformer][error]") {
  attend::GroupedQueryAttentionOptions go;
  go.embed_dim = 12;
  go.num_heads = 4;
  go.num_kv_heads = 3;
  REQUIRE_THROWS_AS(attend::GroupedQueryAttention<float>(go), attend::value_error);
  REQUIRE_THROWS_WITH(attend::GroupedQueryAttention<float>(go),
                      "GroupedQueryAttention: num_kv_heads 3 does not divide num_heads 4");
  go.num_kv_heads = 2;
  go.num_heads = 5;
  REQUIRE_THROWS_WITH(attend::GroupedQueryAttention<float>(go),
                      "GroupedQueryAttention: embed_dim 12 is not divisible by num_heads 5");
  go.num_heads = 4;
  go.embed_dim = 12;
  go.rotary = true;
  go.num_heads = 4;  // head_dim 3
  REQUIRE_THROWS_WITH(
      attend::GroupedQueryAttention<float>(go),
      "GroupedQueryAttention: head_dim 3 is odd, expected an even head_dim for rotary");
}

// ========================================================================================
// positions selectable in multi-head attention
// ========================================================================================

TEMPLATE_TEST_CASE("multihead.hpp: rotary positions equal GroupedQueryAttention with G = H",
                   "[transformer][property]", float, double) {
  using S = TestType;
  Rng rng(21);
  const Index E = 16, H = 4, L = 5, Sk = 7, B = 2;
  for (const auto layout : {attend::RotaryLayout::interleaved, attend::RotaryLayout::half}) {
    for (const bool batch_first : {false, true}) {
      INFO("layout " << static_cast<int>(layout) << ", batch_first " << batch_first);
      attend::MultiheadAttentionOptions mo;
      mo.embed_dim = E;
      mo.num_heads = H;
      mo.batch_first = batch_first;
      mo.position = attend::PositionKind::rotary;
      mo.rotary_layout = layout;
      mo.rotary_base = 500.0;  // not the default, so the option must reach the rotation
      attend::MultiheadAttention<S> mha(mo, 9);
      randomize_biases<S>(mha, rng);
      // The same weights in GQA's layout: q/k/v_proj are the row blocks of in_proj.
      attend::GroupedQueryAttentionOptions go;
      go.embed_dim = E;
      go.num_heads = H;
      go.num_kv_heads = H;
      go.batch_first = batch_first;
      go.rotary = true;
      go.rotary_layout = layout;
      go.rotary_base = 500.0;
      attend::GroupedQueryAttention<S> gqa(go);
      gqa.q_proj_weight = mha.in_proj_weight.topRows(E);
      gqa.k_proj_weight = mha.in_proj_weight.middleRows(E, E);
      gqa.v_proj_weight = mha.in_proj_weight.bottomRows(E);
      gqa.q_proj_bias = mha.in_proj_bias.head(E);
      gqa.k_proj_bias = mha.in_proj_bias.segment(E, E);
      gqa.v_proj_bias = mha.in_proj_bias.tail(E);
      gqa.out_proj_weight = mha.out_proj_weight;
      gqa.out_proj_bias = mha.out_proj_bias;
      const Tensor<S> q = random_tensor<S>(batch_first ? Shape{B, L, E} : Shape{L, B, E}, rng);
      const Tensor<S> k = random_tensor<S>(batch_first ? Shape{B, Sk, E} : Shape{Sk, B, E}, rng);
      const Tensor<S> v = random_tensor<S>(batch_first ? Shape{B, Sk, E} : Shape{Sk, B, E}, rng);
      attend::MultiheadAttentionArgs ma;
      ma.need_weights = false;
      ma.key_padding_mask = Mask::key_padding_lengths({7, 5}, Sk);
      ma.attn_mask = Mask::causal(2);
      ma.query_position = 3;
      ma.key_position = 1;
      attend::GroupedQueryAttentionArgs ga;
      ga.key_padding_mask = ma.key_padding_mask;
      ga.attn_mask = ma.attn_mask;
      ga.query_position = 3;
      ga.key_position = 1;
      const Tensor<S> y = mha.forward(q, k, v, ma).output;
      require_close(y, gqa.forward(q, k, v, ga), kSameTol<S>);
      // The rotation is not the identity: without it the result differs.
      attend::MultiheadAttention<S> plain = mha;
      plain.options.position = attend::PositionKind::none;
      CHECK(plain.forward(q, k, v, ma).output.as_matrix() != y.as_matrix());
    }
  }
}

TEMPLATE_TEST_CASE("multihead.hpp: rotary self-attention sees relative positions only",
                   "[transformer][property]", float, double) {
  using S = TestType;
  Rng rng(22);
  attend::MultiheadAttentionOptions mo;
  mo.embed_dim = 12;
  mo.num_heads = 3;
  mo.position = attend::PositionKind::rotary;
  attend::MultiheadAttention<S> mha(mo, 4);
  randomize_biases<S>(mha, rng);
  const Tensor<S> x = random_tensor<S>({6, 2, 12}, rng);
  attend::MultiheadAttentionArgs a;
  a.is_causal = true;
  const attend::AttentionResult<S> r0 = mha.forward(x, a);
  a.query_position = a.key_position = 57;  // every position shifted alike
  const attend::AttentionResult<S> r1 = mha.forward(x, a);
  // Angles up to ~60 rad round differently in cos/sin than the unshifted ones; a few ulps.
  require_close(r1.output, r0.output, kReorderTol<S>);
  require_close(r1.attn_weights, r0.attn_weights, kReorderTol<S>);
  a.key_position = 0;  // another relative offset: another result
  CHECK(mha.forward(x, a).output.as_matrix() != r0.output.as_matrix());
}

TEMPLATE_TEST_CASE("multihead.hpp: the ALiBi option equals alibi_mask passed as attn_mask",
                   "[transformer][property]", float, double) {
  using S = TestType;
  Rng rng(23);
  const Index E = 12, H = 6, L = 4, Sk = 9, B = 2;  // H = 6: slopes of 4, then every other of 8
  attend::MultiheadAttentionOptions mo;
  mo.embed_dim = E;
  mo.num_heads = H;
  attend::MultiheadAttention<S> by_mask(mo, 6);
  randomize_biases<S>(by_mask, rng);
  attend::MultiheadAttention<S> by_option = by_mask;
  by_option.options.position = attend::PositionKind::alibi;
  const Tensor<S> q = random_tensor<S>({L, B, E}, rng), kv = random_tensor<S>({Sk, B, E}, rng);
  const Mask padding = Mask::key_padding_lengths({9, 6}, Sk);
  // Query 0 at absolute position 7, key 0 at 2: offset 5, so the causal form leaves keys
  // 0 .. 5 + i visible to query i.
  for (const bool causal : {false, true}) {
    INFO("causal " << causal);
    attend::MultiheadAttentionArgs opt;
    opt.average_attn_weights = false;
    opt.key_padding_mask = padding;
    opt.query_position = 7;
    opt.key_position = 2;
    opt.attn_mask = causal ? Mask::causal(5) : Mask();
    attend::MultiheadAttentionArgs ref;
    ref.average_attn_weights = false;
    ref.key_padding_mask = padding;
    ref.attn_mask = attend::alibi_mask(H, L, Sk, causal, 5);
    const attend::AttentionResult<S> a = by_option.forward(q, kv, kv, opt);
    const attend::AttentionResult<S> b = by_mask.forward(q, kv, kv, ref);
    // The same biases (in double) are added to the same scores, and the blocked entries
    // are the same: identical bits, not just close.
    require_close(a.output, b.output, 0.0);
    require_close(a.attn_weights, b.attn_weights, 0.0);
    // ALiBi changes the weights: query 0 of head 0 (slope 1/4) weighs key 5 (distance 0)
    // against key 0 (distance 5) by exp(5/4) more than plain attention does.
    const attend::AttentionResult<S> plain = by_mask.forward(q, kv, kv, opt);
    const double ratio_alibi = double(a.attn_weights(0, 0, 0, 5)) / double(a.attn_weights(0, 0, 0, 0));
    const double ratio_plain =
        double(plain.attn_weights(0, 0, 0, 5)) / double(plain.attn_weights(0, 0, 0, 0));
    CHECK(std::abs(ratio_alibi / ratio_plain - std::exp(1.25)) < kHandTol<S> * 100);
  }
}

TEMPLATE_TEST_CASE("multihead.hpp: positions default to none and are checked",
                   "[transformer][error]", float, double) {
  using S = TestType;
  Rng rng(24);
  attend::MultiheadAttentionOptions mo;
  mo.embed_dim = 8;
  mo.num_heads = 2;
  REQUIRE(mo.position == attend::PositionKind::none);
  const attend::MultiheadAttention<S> plain(mo, 1);
  const Tensor<S> x = random_tensor<S>({3, 8}, rng);
  attend::MultiheadAttentionArgs shifted;
  shifted.query_position = 9;  // ignored without rotary or ALiBi
  shifted.key_position = -4;
  require_close(plain.forward(x, shifted).output, plain.forward(x).output, 0.0);

  mo.position = attend::PositionKind::rotary;
  mo.embed_dim = 6;  // head_dim 3
  REQUIRE_THROWS_AS(attend::MultiheadAttention<S>(mo), attend::value_error);
  REQUIRE_THROWS_WITH(attend::MultiheadAttention<S>(mo),
                      "MultiheadAttention: head_dim 3 is odd, expected an even head_dim for rotary");
  mo.embed_dim = 8;
  mo.rotary_base = 1.0;
  REQUIRE_THROWS_WITH(attend::MultiheadAttention<S>(mo),
                      "MultiheadAttention: rotary_base is 1.000000, expected a finite value > 1");
  mo.rotary_base = 10000.0;
  mo.position = attend::PositionKind::alibi;
  const attend::MultiheadAttention<S> alibi(mo, 1);
  REQUIRE_THROWS_AS(alibi.forward(x, shifted), attend::value_error);
  REQUIRE_THROWS_WITH(alibi.forward(x, shifted),
                      "MultiheadAttention::forward: query_position is 9 and key_position is -4, "
                      "expected both >= 0");
}

// ========================================================================================
// the full model: TransformerSeq2Seq
// ========================================================================================

attend::TransformerSeq2SeqOptions seq2seq_options(bool norm_first = false, bool batch_first = false) {
  attend::TransformerSeq2SeqOptions o;
  o.transformer.layer = small_options(norm_first, batch_first);
  o.transformer.num_encoder_layers = 2;
  o.transformer.num_decoder_layers = 2;
  o.src_vocab_size = 11;
  o.tgt_vocab_size = 13;
  o.max_len = 40;
  return o;
}

/// Token ids uniform in [0, V), shaped `shape`.
Tensor<std::int64_t> random_ids(const Shape& shape, Index V, Rng& rng) {
  Tensor<std::int64_t> t(shape);
  for (Index i = 0; i < t.size(); ++i) t.data()[i] = static_cast<std::int64_t>(rng.next() % V);
  return t;
}

/// The names of every tensor of a parsed file that are not input. or expected.
std::set<std::string> parameter_names(const attend::SafeTensors& st) {
  std::set<std::string> out;
  for (const std::string& n : st.names()) {
    if (n.rfind("input.", 0) != 0 && n.rfind("expected.", 0) != 0) out.insert(n);
  }
  return out;
}

TEST_CASE("seq2seq.hpp: matches the generator's PyTorch TransformerSeq2Seq", "[transformer][fixture]") {
  const auto st = attend::SafeTensors::load(
      fixture("transformer_seq2seq/post_norm_causal_f64.safetensors"));
  attend::TransformerSeq2SeqOptions o = seq2seq_options();
  o.transformer.layer.activation = attend::Activation::relu;
  o.max_len = 16;
  attend::TransformerSeq2Seq<double> model(o);
  model.load_state_dict(st);
  attend::TransformerArgs a;
  a.tgt_is_causal = true;
  a.src_key_padding_mask = Mask::key_padding(st.get<bool>("input.src_key_padding_mask"));
  a.memory_key_padding_mask = a.src_key_padding_mask;
  const Tensor<double> memory = model.encode(st.get<std::int64_t>("input.src"), a);
  const double rtol = std::stod(st.metadata().at("rtol")), atol = std::stod(st.metadata().at("atol"));
  require_close(memory, st.get<double>("expected.memory"), atol, rtol);
  check_fixture(model.decode(st.get<std::int64_t>("input.tgt"), memory, a), st);
  // save_state_dict writes exactly the names of the PyTorch module's state dict.
  attend::SafeTensorsWriter w;
  model.save_state_dict(w);
  CHECK(parameter_names(attend::SafeTensors::parse(w.to_bytes(), "saved")) == parameter_names(st));
}

TEST_CASE("state_dict_writer.hpp: nn.Transformer's state-dict names", "[transformer]") {
  const auto st = attend::SafeTensors::load(fixture("transformer/post_norm_masks_f32.safetensors"));
  attend::TransformerOptions o;
  o.layer = small_options();
  o.num_encoder_layers = o.num_decoder_layers = 2;
  attend::Transformer<float> model(o);
  model.load_state_dict(st);
  attend::SafeTensorsWriter w;
  attend::add_state_dict(w, model);
  const auto saved = attend::SafeTensors::parse(w.to_bytes(), "saved");
  REQUIRE(parameter_names(saved) == parameter_names(st));  // 60 names
  for (const std::string& n : parameter_names(st)) {
    INFO(n);
    CHECK(saved.get<float>(n).flat() == st.get<float>(n).flat());  // the loaded values, unchanged
  }
}

TEMPLATE_TEST_CASE("seq2seq.hpp: save and load by names round-trip, all or nothing",
                   "[transformer]", float, double) {
  using S = TestType;
  Rng rng(31);
  const attend::TransformerSeq2Seq<S> source(seq2seq_options(true), 1);
  attend::SafeTensorsWriter w;
  source.save_state_dict(w, "model.");
  const std::vector<std::uint8_t> bytes = w.to_bytes();
  const auto st = attend::SafeTensors::parse(bytes, "mem");
  // 2 embeddings + generator weight and bias + nn.Transformer's 2 * 12 + 2 * 18 + 2 + 2.
  CHECK(st.names().size() == 68);
  CHECK(st.contains("model.transformer.decoder.layers.1.multihead_attn.out_proj.bias"));

  attend::TransformerSeq2Seq<S> target(seq2seq_options(true), 2);
  const Tensor<std::int64_t> src = random_ids({6, 2}, 11, rng), tgt = random_ids({4, 2}, 13, rng);
  attend::TransformerArgs causal;
  causal.tgt_is_causal = true;
  CHECK(target.forward(src, tgt, causal).as_matrix() != source.forward(src, tgt, causal).as_matrix());
  target.load_state_dict(st, "model.");
  require_close(target.forward(src, tgt, causal), source.forward(src, tgt, causal), 0.0);
  attend::SafeTensorsWriter again;
  target.save_state_dict(again, "model.");
  CHECK(again.to_bytes() == bytes);  // the same file, byte for byte

  // A file without the generator's bias: nothing is loaded.
  attend::SafeTensorsWriter partial;
  attend::TransformerSeq2Seq<S> third(seq2seq_options(true), 3);
  attend::add_state_dict(partial, source.transformer, "transformer.");
  partial.add("src_embed.weight", Tensor<S>::from_matrix(source.src_embed.weight));
  partial.add("tgt_embed.weight", Tensor<S>::from_matrix(source.tgt_embed.weight));
  partial.add("generator.weight", Tensor<S>::from_matrix(source.generator.weight));
  const Tensor<S> before = third.forward(src, tgt, causal);
  const auto partial_st = attend::SafeTensors::parse(partial.to_bytes(), "partial");
  REQUIRE_THROWS_AS(third.load_state_dict(partial_st), attend::index_error);
  REQUIRE_THROWS_WITH(third.load_state_dict(partial_st),
                      "load_vector: no parameter named 'generator.bias' in partial");
  require_close(third.forward(src, tgt, causal), before, 0.0);
}

TEMPLATE_TEST_CASE("seq2seq.hpp: 30 cached decode steps equal decoding the whole prefix",
                   "[transformer][property]", float, double) {
  using S = TestType;
  Rng rng(32);
  const Index L = 30, B = 2, Sm = 7;
  for (const bool norm_first : {false, true}) {
    for (const bool batch_first : {false, true}) {
      INFO("norm_first " << norm_first << ", batch_first " << batch_first);
      attend::TransformerSeq2Seq<S> model(seq2seq_options(norm_first, batch_first), 41);
      for (Index i = 0; i < model.generator.bias.size(); ++i)
        model.generator.bias(i) = S(rng.uniform(-0.5, 0.5));
      const Tensor<std::int64_t> src = random_ids(batch_first ? Shape{B, Sm} : Shape{Sm, B}, 11, rng);
      const Tensor<std::int64_t> tgt = random_ids(batch_first ? Shape{B, L} : Shape{L, B}, 13, rng);
      attend::TransformerArgs a;
      a.tgt_is_causal = true;
      a.src_key_padding_mask = a.memory_key_padding_mask = Mask::key_padding_lengths({7, 5}, Sm);
      const Tensor<S> memory = model.encode(src, a);
      const Tensor<S> full = model.decode(tgt, memory, a);  // [L, B, V] or [B, L, V]
      auto cache = model.make_cache(B, L);
      for (Index t = 0; t < L; ++t) {
        Tensor<std::int64_t> step(batch_first ? Shape{B, 1} : Shape{1, B});
        for (Index b = 0; b < B; ++b) step.data()[b] = batch_first ? tgt(b, t) : tgt(t, b);
        const Tensor<S> got = model.decode_step(step, memory, cache, a.memory_key_padding_mask);
        for (Index b = 0; b < B; ++b) {
          const Index row = batch_first ? b * L + t : t * B + b;
          require_close(got.as_matrix().row(b), full.as_matrix().row(row), kCacheTol<S>);
        }
      }
      CHECK(cache.size() == L);
    }
  }
}

TEMPLATE_TEST_CASE("seq2seq.hpp: greedy decoding with the KV cache equals decoding without",
                   "[transformer][property]", float, double) {
  using S = TestType;
  Rng rng(33);
  attend::TransformerSeq2Seq<S> model(seq2seq_options(true), 51);
  constexpr std::int64_t eos = 12;
  model.generator.bias(eos) = S(-100);  // never chosen: every run decodes max_length tokens
  const std::vector<std::int64_t> source{3, 1, 4, 1, 5, 9, 2, 6};
  attend::DecodeOptions opts;
  opts.bos = 0;
  opts.eos = eos;
  opts.max_length = 25;
  const attend::TransformerSeq2SeqDecoder<S> cached(model, source, true);
  const attend::TransformerSeq2SeqDecoder<S> uncached(model, source, false);
  const auto a = attend::greedy_decode(cached, opts);
  const auto b = attend::greedy_decode(uncached, opts);
  REQUIRE(a.tokens.size() == 25);
  CHECK(a.tokens == b.tokens);
  // 25 summed log-probabilities, each off by at most kCacheTol.
  CHECK(std::abs(a.log_prob - b.log_prob) < 25 * kCacheTol<S>);
  CHECK(a.state.cache.size() == 25);
  CHECK(a.state.tokens.size() == 25);  // bos and the first 24 generated tokens were fed
  CHECK(std::set<std::int64_t>(a.tokens.begin(), a.tokens.end()).size() > 1);  // not one token
  // Beam search runs on the same step model, and agrees both ways too.
  opts.beam_width = 3;
  opts.max_length = 8;
  const auto beams_a = attend::beam_search(cached, opts);
  const auto beams_b = attend::beam_search(uncached, opts);
  REQUIRE(beams_a.size() == beams_b.size());
  for (std::size_t i = 0; i < beams_a.size(); ++i) CHECK(beams_a[i].tokens == beams_b[i].tokens);
  // The cache's capacity bounds a hypothesis.
  const attend::TransformerSeq2SeqDecoder<S> short_cache(model, source, true, 4);
  opts.max_length = 5;
  REQUIRE_THROWS_AS(attend::greedy_decode(short_cache, opts), attend::index_error);
  const attend::TransformerSeq2SeqDecoder<S> short_prefix(model, source, false, 4);
  REQUIRE_THROWS_WITH(attend::greedy_decode(short_prefix, opts),
                      "TransformerSeq2SeqDecoder::step: 5 target positions, expected at most 4 "
                      "(max_steps)");
}

TEMPLATE_TEST_CASE("seq2seq.hpp: embeddings, positions and bad input", "[transformer][error]",
                   float, double) {
  using S = TestType;
  attend::TransformerSeq2SeqOptions o = seq2seq_options();
  o.max_len = 6;
  const attend::TransformerSeq2Seq<S> model(o, 7);
  // Token 4 at position 2 enters the encoder as src_embed.weight[4] * sqrt(8) + PE[2], and
  // target token 5 at position 3 of a cached decode as tgt_embed.weight[5] * sqrt(8) + PE[3].
  Tensor<std::int64_t> ids({3});
  ids.data()[0] = 0;
  ids.data()[1] = 0;
  ids.data()[2] = 4;
  const attend::Matrix<S> pe = attend::sinusoidal_positional_encoding<S>(6, 8);
  CHECK(model.positions.table() == pe);
  const S sqrt8 = static_cast<S>(std::sqrt(8.0));
  const Tensor<S> x = model.embed_source(ids);  // [3, 8]
  REQUIRE(x.shape() == Shape{3, 8});
  CHECK(x.as_matrix().row(2) == (model.src_embed.weight.row(4) * sqrt8 + pe.row(2)).eval());
  Tensor<std::int64_t> five({1, 1});  // [T = 1, B = 1]
  five.data()[0] = 5;
  const Tensor<S> y = model.embed_target(five, 3);  // [1, 1, 8]
  CHECK(y.as_matrix().row(0) == (model.tgt_embed.weight.row(5) * sqrt8 + pe.row(3)).eval());
  CHECK(model.src_embed.scale_by_sqrt_d);

  REQUIRE_THROWS_AS(model.encode(Tensor<std::int64_t>({2, 2, 2})), attend::shape_error);
  REQUIRE_THROWS_WITH(model.encode(Tensor<std::int64_t>({2, 2, 2})),
                      "TransformerSeq2Seq::encode: src is [2, 2, 2], expected [T, B] or [T] "
                      "(token ids)");
  ids.data()[1] = 11;
  REQUIRE_THROWS_AS(model.encode(ids), attend::index_error);
  REQUIRE_THROWS_WITH(model.encode(ids),
                      "TransformerSeq2Seq::encode: src holds token id 11 at flat index 1, "
                      "expected in [0, 11)");
  REQUIRE_THROWS_WITH(model.encode(Tensor<std::int64_t>({7})),
                      "TransformerSeq2Seq::encode: src positions [0, 7) exceed max_len 6");
  const Tensor<S> memory = model.encode(Tensor<std::int64_t>({4}));
  auto cache = model.make_cache(1, 10);
  for (int t = 0; t < 6; ++t) model.decode_step(Tensor<std::int64_t>({1}), memory, cache);
  REQUIRE_THROWS_WITH(model.decode_step(Tensor<std::int64_t>({1}), memory, cache),
                      "TransformerSeq2Seq::decode_step: tgt positions [6, 7) exceed max_len 6");
  o.tgt_vocab_size = 0;
  REQUIRE_THROWS_AS(attend::TransformerSeq2Seq<S>(o), attend::value_error);
  REQUIRE_THROWS_WITH(attend::TransformerSeq2Seq<S>(o),
                      "TransformerSeq2Seq: src_vocab_size is 11, tgt_vocab_size 0 and max_len 6, "
                      "expected all positive");
}

}  // namespace

TEMPLATE_TEST_CASE("kv_cache.hpp: a rotary or ALiBi attention is refused, not decoded wrongly",
                   "[transformer][error]", float, double) {
  using S = TestType;
  for (const attend::PositionKind kind :
       {attend::PositionKind::rotary, attend::PositionKind::alibi}) {
    attend::MultiheadAttentionOptions o;
    o.embed_dim = 8;
    o.num_heads = 2;
    o.batch_first = true;
    o.position = kind;
    const attend::MultiheadAttention<S> mha(o, 1);
    attend::KVCache<S> cache(1, 4, 8);
    const attend::Tensor<S> x({1, 1, 8}, S(0.5));  // [B, T, E]
    REQUIRE_THROWS_AS(attend::self_attention_step(mha, x, cache), attend::value_error);
    REQUIRE_THROWS_WITH(attend::self_attention_step(mha, x, cache),
                        "append_keys_values: the KV cache does not apply rotary or ALiBi "
                        "positions yet; use a MultiheadAttention with position none");
    CHECK(cache.size() == 0);  // nothing was appended
  }
}
