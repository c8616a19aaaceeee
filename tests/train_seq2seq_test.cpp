// SPDX-License-Identifier: MIT
// Tests of the RNN encoder-decoder training: Bahdanau and Luong alignment backwards (by
// hand, central differences with masks), the batched teacher-forced Seq2Seq loss against
// Seq2Seq::step, its backward against central differences for every attention kind, float
// against double, a training run on the copy task, batched greedy decoding and the errors.
#include "attend/core/errors.hpp"
#include "attend/core/random.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/ops/softmax.hpp"
#include "attend/rnn/alignment.hpp"
#include "attend/rnn/decoding.hpp"
#include "attend/rnn/seq2seq.hpp"
#include "attend/train/alignment_backward.hpp"
#include "attend/train/gradcheck.hpp"
#include "attend/train/optim.hpp"
#include "attend/train/parameters.hpp"
#include "attend/train/seq2seq_backward.hpp"
#include "attend/train/seq2seq_batch.hpp"

#include <Eigen/Core>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "test_util.hpp"

namespace {

using attend::AlignmentCache;
using attend::AlignmentResult;
using attend::AttentionKind;
using attend::BahdanauAttention;
using attend::BoolMatrix;
using attend::Index;
using attend::LuongAttention;
using attend::LuongScore;
using attend::Matrix;
using attend::Rng;
using attend::Seq2Seq;
using attend::Seq2SeqOptions;
using attend::Shape;
using attend::Tensor;
using Ids = std::vector<std::vector<std::int64_t>>;

using attend_test::dot;
using attend_test::kGradTol;
using attend_test::random_matrix;
using attend_test::random_tensor;

/// For the whole seq2seq loss: some gradients are tiny (~1e-5: the source embedding under
/// two LSTM layers), where the cancellation noise eps |f| / h of h = 1e-6 (~3e-10) is a
/// relative 1e-5. The 4-point stencil with h = 1e-4 has noise ~3e-12 and truncation
/// O(h^4) ~ 1e-16, so the relative test stays meaningful there.
attend::GradCheckOptions precise() {
  attend::GradCheckOptions o;
  o.step = 1e-4;
  o.four_point = true;
  return o;
}

/// attend_test::require_gradient with an absolute floor for near-zero gradients (below).
template <typename X, typename DA, typename F>
void require_gradient(const std::string& what, X&& x, const Eigen::MatrixBase<DA>& analytic, F&& f,
                      const attend::GradCheckOptions& options = {}) {
  const attend::GradCheckResult r = attend::gradcheck(x, analytic, f, options);
  INFO(what << ": " << r.describe());
  // A parameter whose whole gradient is ~1e-6 (Bahdanau's W2 in the tiny model: a shift
  // shared by all keys acts only through tanh's curvature) meets the stencil's absolute
  // noise (~5e-12) at a relative 1e-7: there an absolute floor of 1e-10 decides, still
  // 1e-4 of the gradient, far below the size of any missing or wrong term.
  constexpr double kGradAbsFloor = 1e-10;
  REQUIRE((r.error < kGradTol || r.max_abs_diff < kGradAbsFloor));
}

/// Padding mask [2, 4]: sequence 0 has 4 keys, sequence 1 has keys 2 and 3 padded.
BoolMatrix two_lengths_mask() {
  BoolMatrix m = BoolMatrix::Constant(2, 4, false);
  m(1, 2) = m(1, 3) = true;
  return m;
}

/// A model and its gradients with a visitor for collect_parameters.
template <typename S>
using Trainable = attend::Seq2SeqTrainable<S>;

Seq2SeqOptions tiny_options(AttentionKind kind, LuongScore score = LuongScore::general,
                            bool feeding = false, Index layers = 1) {
  Seq2SeqOptions o;
  o.source_vocab = 6;
  o.target_vocab = 5;
  o.embedding_dim = 3;
  o.hidden_size = 4;
  o.num_layers = layers;
  o.attention = kind;
  o.luong_score = score;
  o.input_feeding = feeding;
  return o;
}

/// B = 2 pairs with different source (3, 5) and target (4, 2) lengths.
struct TinyBatch {
  Ids source{{1, 4, 2}, {5, 0, 3, 3, 1}};
  Ids target_input{{0, 2, 4, 1}, {0, 3}};
  Ids target_output{{2, 4, 1, 3}, {3, 4}};
};

struct Kind {
  const char* name;
  Seq2SeqOptions options;
};

std::vector<Kind> all_kinds() {
  return {
      {"none", tiny_options(AttentionKind::none)},
      {"none, 2 layers", tiny_options(AttentionKind::none, LuongScore::general, false, 2)},
      {"bahdanau", tiny_options(AttentionKind::bahdanau)},
      {"bahdanau, 2 layers", tiny_options(AttentionKind::bahdanau, LuongScore::general, false, 2)},
      {"luong general", tiny_options(AttentionKind::luong, LuongScore::general)},
      {"luong dot, input feeding", tiny_options(AttentionKind::luong, LuongScore::dot, true)},
      {"luong concat, input feeding, 2 layers",
       tiny_options(AttentionKind::luong, LuongScore::concat, true, 2)},
  };
}

}  // namespace

// ========================================================================================
// alignment_backward.hpp
// ========================================================================================

TEMPLATE_TEST_CASE("alignment_backward.hpp: Bahdanau backward by hand", "[grad]", float, double) {
  using S = TestType;
  // Hq = Hk = A = 1, W1 = W2 = v = 1; query q = 0; keys k = [0, 1, 5], key 3 padded.
  //   u_j = W1 k_j + W2 q = [0, 1],  t = tanh(u) = [0, tanh 1 = 0.7615941559557649]
  //   scores = v t; weights = softmax: e^0.76159... = 2.14168768474935,
  //   w = [1 / 3.14168768474935, 2.14168768474935 / 3.14168768474935]
  //     = [0.3183002578054738, 0.6816997421945262, 0];  context = w_2 * 1 = 0.68169974...
  // Upstream d_context = 1:
  //   dw_j = k_j = [0, 1];  w . dw = 0.6816997421945262
  //   dscore = w (dw - w . dw) = [-w1 w2, w2 w1] = [-0.2169852036864427, 0.2169852036864427]
  //   du = dscore v (1 - t^2): 1 - t_2^2 = 0.41997434161402614
  //      = [-0.2169852036864427, 0.09112821805819912]
  //   d_v = sum dscore_j t_j = 0.2169852036864427 * 0.76159... = 0.16525466305646605
  //   d_W2 = sum du_j q = 0;  d_query = sum du_j W2 = -0.12585698562824357
  //   d_W1 = sum du_j k_j = 0.09112821805819912
  //   d_keys = w_j d_context + du_j W1 = [0.10131505411903108, 0.7728279602527254, 0]
  BahdanauAttention<S> m(1, 1, 1);
  m.W1 << S(1);
  m.W2 << S(1);
  m.v << S(1);
  Tensor<S> keys({1, 3, 1});
  keys(0, 0, 0) = S(0);
  keys(0, 1, 0) = S(1);
  keys(0, 2, 0) = S(5);
  BoolMatrix mask = BoolMatrix::Constant(1, 3, false);
  mask(0, 2) = true;
  const Matrix<S> query = Matrix<S>::Zero(1, 1);
  AlignmentCache<S> cache;
  const AlignmentResult<S> r = attend::bahdanau_forward(m, query, keys, mask, Tensor<S>(), &cache);
  REQUIRE(r.weights(0, 0) == Approx(0.3183002578054738));
  REQUIRE(r.weights(0, 1) == Approx(0.6816997421945262));
  REQUIRE(r.weights(0, 2) == S(0));
  REQUIRE(r.context(0, 0) == Approx(0.6816997421945262));
  AlignmentResult<S> up;
  up.context = Matrix<S>::Ones(1, 1);
  attend::BahdanauGrad<S> g;
  const attend::AlignmentGrad<S> d = attend::bahdanau_backward(m, cache, keys, up, g);
  REQUIRE(g.d_v(0) == Approx(0.16525466305646605));
  REQUIRE(g.d_W2(0, 0) == S(0));
  REQUIRE(g.d_W1(0, 0) == Approx(0.09112821805819912));
  REQUIRE(d.d_query(0, 0) == Approx(-0.12585698562824357));
  REQUIRE(d.d_keys(0, 0, 0) == Approx(0.10131505411903108));
  REQUIRE(d.d_keys(0, 1, 0) == Approx(0.7728279602527254));
  REQUIRE(d.d_keys(0, 2, 0) == S(0));  // the padded key gets nothing
  REQUIRE(d.d_projected_keys.size() == 0);
  // Parameter gradients accumulate; input gradients are assigned.
  const attend::AlignmentGrad<S> d2 = attend::bahdanau_backward(m, cache, keys, up, g);
  REQUIRE(g.d_v(0) == Approx(2 * 0.16525466305646605));
  REQUIRE(d2.d_query(0, 0) == Approx(-0.12585698562824357));
}

TEST_CASE("alignment_backward.hpp: Bahdanau matches central differences", "[grad]") {
  for (const bool given : {false, true}) {
    for (const bool masked : {false, true}) {
      INFO("projected keys given " << given << ", masked " << masked);
      Rng rng(21);
      BahdanauAttention<double> m(3, 5, 4, 8);  // Hq 3, Hk 5, A 4
      Matrix<double> query = random_matrix(2, 3, rng);
      Tensor<double> keys = random_tensor<double>({2, 4, 5}, rng);
      const BoolMatrix mask = masked ? two_lengths_mask() : BoolMatrix();
      const Matrix<double> up_c = random_matrix(2, 5, rng), up_w = random_matrix(2, 4, rng);
      attend::BahdanauGrad<double> g;
      attend::ParameterList<double> params;
      attend::named_parameters(m, g, params, "attention.");
      REQUIRE(params.size() == 3);
      REQUIRE(params[0].name() == "attention.W1");
      REQUIRE(params[1].name() == "attention.W2");
      REQUIRE(params[2].name() == "attention.v");
      const auto run = [&](AlignmentCache<double>* cache) {
        return attend::bahdanau_forward(m, query, keys, mask,
                                        given ? m.project_keys(keys) : Tensor<double>(), cache);
      };
      AlignmentCache<double> cache;
      const AlignmentResult<double> r = run(&cache);
      const AlignmentResult<double> plain = m.forward(query, keys, mask);
      REQUIRE((r.weights - plain.weights).cwiseAbs().maxCoeff() == 0.0);
      REQUIRE((r.context - plain.context).cwiseAbs().maxCoeff() == 0.0);
      AlignmentResult<double> up{up_w, up_c, Matrix<double>()};
      attend::AlignmentGrad<double> d = attend::bahdanau_backward(m, cache, keys, up, g);
      if (given) {  // the caller owns the W1 path: projected = keys W1^T
        REQUIRE(d.d_projected_keys.shape() == Shape{2, 4, 4});
        g.d_W1 += d.d_projected_keys.as_matrix().transpose() * keys.as_matrix();
        d.d_keys.as_matrix() += d.d_projected_keys.as_matrix() * m.W1;
      }
      const auto loss = [&] {
        const AlignmentResult<double> y = run(nullptr);
        return dot(y.context, up_c) + dot(y.weights, up_w);
      };
      for (const auto& p : params) require_gradient(p.name(), p.value(), p.grad(), loss);
      require_gradient("query", query, d.d_query, loss);
      require_gradient("keys", keys.flat(), d.d_keys.flat(), loss);
      if (masked) {
        for (Index t = 2; t < 4; ++t) REQUIRE(d.d_keys.matrix(1).row(t).isZero(0));
      }
    }
  }
}

TEST_CASE("alignment_backward.hpp: Luong matches central differences", "[grad]") {
  struct Case {
    const char* name;
    LuongScore score;
    bool attentional;
    bool masked;
    Index params;
  };
  const Case cases[] = {
      {"dot", LuongScore::dot, false, false, 0},
      {"dot, attentional, masked", LuongScore::dot, true, true, 1},
      {"general, masked", LuongScore::general, false, true, 1},
      {"general, attentional", LuongScore::general, true, false, 2},
      {"concat, attentional, masked", LuongScore::concat, true, true, 3},
      {"concat", LuongScore::concat, false, false, 2},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    Rng rng(33);
    const Index Hq = 5, Hk = c.score == LuongScore::dot ? 5 : 3;
    LuongAttention<double> m(c.score, Hq, Hk, 4, c.attentional, 6);
    Matrix<double> query = random_matrix(2, Hq, rng);
    Tensor<double> keys = random_tensor<double>({2, 4, Hk}, rng);
    const BoolMatrix mask = c.masked ? two_lengths_mask() : BoolMatrix();
    const Matrix<double> up_c = random_matrix(2, Hk, rng), up_w = random_matrix(2, 4, rng);
    const Matrix<double> up_h = c.attentional ? random_matrix(2, Hq, rng) : Matrix<double>();
    attend::LuongGrad<double> g;
    attend::ParameterList<double> params;
    attend::named_parameters(m, g, params);
    REQUIRE(params.size() == c.params);
    AlignmentCache<double> cache;
    const AlignmentResult<double> r = attend::luong_forward(m, query, keys, mask, &cache);
    const AlignmentResult<double> plain = m.forward(query, keys, mask);
    REQUIRE((r.weights - plain.weights).cwiseAbs().maxCoeff() == 0.0);
    REQUIRE((r.context - plain.context).cwiseAbs().maxCoeff() == 0.0);
    REQUIRE(r.attentional_hidden.size() == plain.attentional_hidden.size());
    const AlignmentResult<double> up{up_w, up_c, up_h};
    const attend::AlignmentGrad<double> d = attend::luong_backward(m, cache, keys, up, g);
    const auto loss = [&] {
      const AlignmentResult<double> y = attend::luong_forward(m, query, keys, mask, nullptr);
      return dot(y.context, up_c) + dot(y.weights, up_w) + dot(y.attentional_hidden, up_h);
    };
    for (const auto& p : params) require_gradient(p.name(), p.value(), p.grad(), loss);
    require_gradient("query", query, d.d_query, loss);
    require_gradient("keys", keys.flat(), d.d_keys.flat(), loss);
    if (c.masked) {
      for (Index t = 2; t < 4; ++t) REQUIRE(d.d_keys.matrix(1).row(t).isZero(0));
    }
  }
}

TEMPLATE_TEST_CASE("alignment_backward.hpp: names and errors", "[grad][error]", float, double) {
  using S = TestType;
  LuongAttention<S> concat(LuongScore::concat, 4, 3, 5, true);
  attend::LuongGrad<S> lg;
  attend::ParameterList<S> list;
  attend::named_parameters(concat, lg, list, "attention.");
  REQUIRE(list.size() == 3);
  REQUIRE(list[0].name() == "attention.W");
  REQUIRE(list[0].shape() == Shape{5, 7});
  REQUIRE(list[1].name() == "attention.v");
  REQUIRE(list[2].name() == "attention.Wc");
  REQUIRE(list[2].shape() == Shape{4, 7});

  BahdanauAttention<S> m(2, 3, 4);
  Rng rng(1);
  const Tensor<S> keys = random_tensor<S>({2, 5, 3}, rng);
  const Matrix<S> q = random_matrix(2, 2, rng).cast<S>();
  attend::BahdanauGrad<S> g;
  AlignmentResult<S> up;
  up.context = Matrix<S>::Ones(2, 3);
  AlignmentCache<S> empty;
  REQUIRE_THROWS_AS(attend::bahdanau_backward(m, empty, keys, up, g), attend::value_error);
  REQUIRE_THROWS_WITH(attend::bahdanau_backward(m, empty, keys, up, g),
                      "bahdanau_backward: cache is empty, expected one filled by the forward");
  AlignmentCache<S> cache;
  (void)attend::bahdanau_forward(m, q, keys, BoolMatrix(), Tensor<S>(), &cache);
  const Tensor<S> other({2, 4, 3});
  REQUIRE_THROWS_AS(attend::bahdanau_backward(m, cache, other, up, g), attend::shape_error);
  REQUIRE_THROWS_WITH(
      attend::bahdanau_backward(m, cache, other, up, g),
      "bahdanau_backward: keys is [2, 4, 3], expected [2, 5, 3] (the forward's keys)");
  AlignmentResult<S> bad;
  bad.context = Matrix<S>::Ones(1, 3);
  REQUIRE_THROWS_WITH(attend::bahdanau_backward(m, cache, keys, bad, g),
                      "bahdanau_backward: d_result.context is [1, 3], expected [2, 3] or empty");
  g.d_W2 = Matrix<S>::Zero(2, 2);
  REQUIRE_THROWS_AS(attend::bahdanau_backward(m, cache, keys, up, g), attend::shape_error);
  REQUIRE_THROWS_WITH(attend::bahdanau_backward(m, cache, keys, up, g),
                      "bahdanau_backward: grads.d_W2 is [2, 2], expected [4, 2]");
  // The forward keeps the module's own messages.
  REQUIRE_THROWS_WITH(attend::bahdanau_forward(m, q, keys, BoolMatrix(), other, &cache),
                      "BahdanauAttention::forward: projected_keys is [2, 4, 3], expected "
                      "[2, 5, 4] (B, T, attention_size)");
  LuongAttention<S> general(LuongScore::general, 2, 3);
  AlignmentCache<S> lc;
  REQUIRE_THROWS_WITH(
      attend::luong_forward(general, Matrix<S>(Matrix<S>::Zero(2, 3)), keys, BoolMatrix(), &lc),
      "LuongAttention::forward: query is [2, 3], expected [B, 2] (query_size)");
  REQUIRE_THROWS_WITH(attend::luong_backward(general, lc, keys, up, lg),
                      "luong_backward: cache is empty, expected one filled by the forward");
}

// ========================================================================================
// seq2seq_backward.hpp, seq2seq_batch.hpp
// ========================================================================================

TEMPLATE_TEST_CASE("seq2seq_backward.hpp: the batched training forward equals Seq2Seq::step",
                   "[grad][property]", float, double) {
  using S = TestType;
  // The batched products ([B, in] x [in, 4N]) and the step path ([1, in] rows) round
  // differently: sums of <= 16 O(1) terms through ~10 steps; float a few ulps (1.2e-7).
  const double tol = std::is_same_v<S, float> ? 2e-5 : 1e-12;
  const TinyBatch batch;
  for (const Kind& k : all_kinds()) {
    INFO(k.name);
    const Seq2Seq<S> model(k.options, 3);
    attend::Seq2SeqCache<S> cache;
    const S loss =
        attend::seq2seq_loss(model, batch.source, batch.target_input, batch.target_output, &cache);
    const Matrix<S> logp = attend::log_softmax(model.out.forward(cache.out_input));  // [L*B, V]
    double nll = 0.0;
    Index count = 0;
    for (std::size_t b = 0; b < 2; ++b) {
      const attend::Seq2SeqMemory<S> mem = model.encode(batch.source[b]);
      attend::Seq2SeqState<S> state = model.start(mem);
      for (std::size_t i = 0; i < batch.target_input[b].size(); ++i) {
        const Matrix<S> want = model.step(batch.target_input[b][i], state, mem);  // [1, V]
        const Index row = Index(i * 2 + b);
        const double err = (logp.row(row).template cast<double>() - want.template cast<double>())
                               .cwiseAbs()
                               .maxCoeff();
        INFO("sequence " << b << " step " << i << " error " << err);
        REQUIRE(err < tol);
        if (k.options.attention != AttentionKind::none) {   // the same alignment row
          const Matrix<S>& w = cache.alignment[i].weights;  // [B, S_max]
          const Index Sb = Index(batch.source[b].size());
          REQUIRE((w.row(Index(b)).leftCols(Sb).template cast<double>() -
                   state.alignment.row(Index(i)).template cast<double>())
                      .cwiseAbs()
                      .maxCoeff() < tol);
          REQUIRE(w.row(Index(b)).rightCols(5 - Sb).isZero(0));  // padded keys
        }
        nll -= double(want(0, batch.target_output[b][i]));
        ++count;
      }
    }
    REQUIRE(std::abs(double(loss) - nll / double(count)) < tol);
  }
}

TEST_CASE("seq2seq_backward.hpp: every parameter matches central differences", "[grad]") {
  const TinyBatch batch;
  for (const Kind& k : all_kinds()) {
    INFO(k.name);
    Trainable<double> t{Seq2Seq<double>(k.options, 5), {}};
    attend::ParameterList<double> params = attend::collect_parameters<double>(t);
    attend::Seq2SeqCache<double> cache;
    (void)attend::seq2seq_loss(t.model, batch.source, batch.target_input, batch.target_output,
                               &cache);
    attend::seq2seq_backward(t.model, cache, t.grads);
    const auto loss = [&] {
      return double(
          attend::seq2seq_loss(t.model, batch.source, batch.target_input, batch.target_output));
    };
    for (const auto& p : params) {
      REQUIRE(p.grad().norm() > 0.0);  // every parameter takes part
      require_gradient(p.name(), p.value(), p.grad(), loss, precise());
    }
  }
}

TEST_CASE("seq2seq_backward.hpp: named parameters in state-dict order", "[grad]") {
  Seq2SeqOptions o = tiny_options(AttentionKind::bahdanau, LuongScore::general, false, 2);
  Trainable<float> t{Seq2Seq<float>(o, 1), {}};
  const attend::ParameterList<float> list = attend::collect_parameters<float>(t);
  const std::vector<std::string> want = {"encoder.embedding.weight",
                                         "encoder.lstm.weight_ih_l0",
                                         "encoder.lstm.weight_hh_l0",
                                         "encoder.lstm.bias_ih_l0",
                                         "encoder.lstm.bias_hh_l0",
                                         "encoder.lstm.weight_ih_l1",
                                         "encoder.lstm.weight_hh_l1",
                                         "encoder.lstm.bias_ih_l1",
                                         "encoder.lstm.bias_hh_l1",
                                         "decoder.embedding.weight",
                                         "decoder.lstm.weight_ih_l0",
                                         "decoder.lstm.weight_hh_l0",
                                         "decoder.lstm.bias_ih_l0",
                                         "decoder.lstm.bias_hh_l0",
                                         "decoder.lstm.weight_ih_l1",
                                         "decoder.lstm.weight_hh_l1",
                                         "decoder.lstm.bias_ih_l1",
                                         "decoder.lstm.bias_hh_l1",
                                         "attention.W1",
                                         "attention.W2",
                                         "attention.v",
                                         "out.weight",
                                         "out.bias"};
  REQUIRE(list.size() == Index(want.size()));
  for (Index i = 0; i < list.size(); ++i) REQUIRE(list[i].name() == want[std::size_t(i)]);
  REQUIRE(list.at("decoder.lstm.weight_ih_l0").shape() == Shape{16, 3 + 4});  // [emb; c]
  REQUIRE(list.at("out.weight").shape() == Shape{5, 8});                      // [s; c]

  Trainable<double> l{Seq2Seq<double>(tiny_options(AttentionKind::luong, LuongScore::dot, true)),
                      {}};
  const attend::ParameterList<double> ll = attend::collect_parameters<double>(l);
  REQUIRE(ll.size() == 13);  // embedding, 4 LSTM, embedding, 4 LSTM, Wc (dot: no W), out
  REQUIRE(ll[10].name() == "attention.Wc");
  REQUIRE(ll[11].name() == "out.weight");
}

TEST_CASE("seq2seq_backward.hpp: float gradients agree with double", "[grad][property]") {
  const TinyBatch batch;
  for (const Kind& k : all_kinds()) {
    INFO(k.name);
    Trainable<double> td{Seq2Seq<double>(k.options, 9), {}};
    Trainable<float> tf{Seq2Seq<float>(k.options, 0), {}};
    const attend::ParameterList<double> pd = attend::collect_parameters<double>(td);
    const attend::ParameterList<float> pf = attend::collect_parameters<float>(tf);
    for (Index i = 0; i < pd.size(); ++i) pf[i].value() = pd[i].value().cast<float>();
    attend::Seq2SeqCache<double> cd;
    attend::Seq2SeqCache<float> cf;
    const double ld =
        attend::seq2seq_loss(td.model, batch.source, batch.target_input, batch.target_output, &cd);
    const float lf =
        attend::seq2seq_loss(tf.model, batch.source, batch.target_input, batch.target_output, &cf);
    attend::seq2seq_backward(td.model, cd, td.grads);
    attend::seq2seq_backward(tf.model, cf, tf.grads);
    // Through ~10 recurrent steps of O(1) values, float rounding (1.2e-7 per operation)
    // grows to ~1e-6; 1e-4 relative to the gradient's size leaves room.
    constexpr double kFloatTol = 1e-4;
    REQUIRE(std::abs(double(lf) - ld) < kFloatTol);
    for (Index i = 0; i < pd.size(); ++i) {
      const double err = (pf[i].grad().cast<double>() - pd[i].grad()).cwiseAbs().maxCoeff() /
                         std::max(1.0, pd[i].grad().cwiseAbs().maxCoeff());
      INFO(pd[i].name() << " error " << err);
      REQUIRE(err < kFloatTol);
    }
  }
}

TEMPLATE_TEST_CASE("seq2seq_backward.hpp: gradients accumulate, errors name the argument",
                   "[grad][error]", float, double) {
  using S = TestType;
  const TinyBatch batch;
  Trainable<S> t{Seq2Seq<S>(tiny_options(AttentionKind::luong, LuongScore::concat, true)), {}};
  attend::Seq2SeqCache<S> cache;
  (void)attend::seq2seq_loss(t.model, batch.source, batch.target_input, batch.target_output,
                             &cache);
  attend::seq2seq_backward(t.model, cache, t.grads);
  const Matrix<S> once = t.grads.decoder[0].weight_hh;
  attend::seq2seq_backward(t.model, cache, t.grads);
  REQUIRE(t.grads.decoder[0].weight_hh == Matrix<S>(once * S(2)));  // x + x = 2x exactly

  const Seq2Seq<S>& m = t.model;
  const std::string who = "seq2seq_loss: ";
  const auto loss = [&](const Ids& s, const Ids& ti, const Ids& to) {
    return attend::seq2seq_loss(m, s, ti, to);
  };
  REQUIRE_THROWS_AS(loss({}, {}, {}), attend::value_error);
  REQUIRE_THROWS_WITH(loss({}, {}, {}), who + "source is empty, expected at least one sequence");
  REQUIRE_THROWS_AS(loss(batch.source, {{1}}, batch.target_output), attend::shape_error);
  REQUIRE_THROWS_WITH(loss(batch.source, {{1}}, batch.target_output),
                      who + "target_input has 1 sequences, expected 2 (the sequences of source)");
  REQUIRE_THROWS_WITH(loss(batch.source, batch.target_input, {{1}, {2}, {3}}),
                      who + "target_output has 3 sequences, expected 2 (the sequences of source)");
  REQUIRE_THROWS_AS(loss({{1}, {}}, batch.target_input, batch.target_output), attend::value_error);
  REQUIRE_THROWS_WITH(loss({{1}, {}}, batch.target_input, batch.target_output),
                      who + "source[1] is empty, expected at least one token");
  REQUIRE_THROWS_WITH(loss(batch.source, {{1}, {}}, {{1}, {}}),
                      who + "target_input[1] is empty, expected at least one token");
  REQUIRE_THROWS_AS(loss(batch.source, batch.target_input, {{2, 4, 1}, {3, 4}}),
                    attend::shape_error);
  REQUIRE_THROWS_WITH(loss(batch.source, batch.target_input, {{2, 4, 1}, {3, 4}}),
                      who +
                          "target_output[0] has 3 tokens, expected 4 (the tokens of "
                          "target_input[0])");
  REQUIRE_THROWS_AS(loss({{1}, {2, 6}}, batch.target_input, batch.target_output),
                    attend::index_error);
  REQUIRE_THROWS_WITH(loss({{1}, {2, 6}}, batch.target_input, batch.target_output),
                      who + "source[1][1] is 6, expected in [0, 6) (source_vocab)");
  REQUIRE_THROWS_WITH(loss(batch.source, {{0, -1, 2, 3}, {1, 1}}, batch.target_output),
                      who + "target_input[0][1] is -1, expected in [0, 5) (target_vocab)");
  REQUIRE_THROWS_WITH(loss(batch.source, batch.target_input, {{2, 4, 1, 3}, {3, 5}}),
                      who + "target_output[1][1] is 5, expected in [0, 5) (target_vocab)");

  attend::Seq2SeqCache<S> empty;
  REQUIRE_THROWS_AS(attend::seq2seq_backward(m, empty, t.grads), attend::value_error);
  REQUIRE_THROWS_WITH(attend::seq2seq_backward(m, empty, t.grads),
                      "seq2seq_backward: cache is empty, expected one filled by seq2seq_loss");
  t.grads.out.d_weight = Matrix<S>::Zero(1, 1);
  REQUIRE_THROWS_AS(attend::seq2seq_backward(m, cache, t.grads), attend::shape_error);
  REQUIRE_THROWS_WITH(attend::seq2seq_backward(m, cache, t.grads),
                      "seq2seq_backward: grads.out.d_weight is [1, 1], expected [5, 4]");

  const std::string g = "seq2seq_greedy_decode: ";
  REQUIRE_THROWS_AS(attend::seq2seq_greedy_decode(m, batch.source, 0, 2, 0), attend::value_error);
  REQUIRE_THROWS_WITH(attend::seq2seq_greedy_decode(m, batch.source, 0, 2, 0),
                      g + "max_length is 0, expected >= 1");
  REQUIRE_THROWS_WITH(attend::seq2seq_greedy_decode(m, batch.source, 0, 2, 3, 0),
                      g + "batch_size is 0, expected >= 1");
  REQUIRE_THROWS_AS(attend::seq2seq_greedy_decode(m, batch.source, 5, 2, 3), attend::index_error);
  REQUIRE_THROWS_WITH(attend::seq2seq_greedy_decode(m, batch.source, 5, 2, 3),
                      g + "bos is 5, expected in [0, 5) (target_vocab)");
  REQUIRE_THROWS_WITH(attend::seq2seq_greedy_decode(m, {{1}, {9}}, 0, 2, 3),
                      g + "source[1][0] is 9, expected in [0, 6) (source_vocab)");
}

TEMPLATE_TEST_CASE("seq2seq_batch.hpp: batched greedy decoding equals greedy_decode", "[property]",
                   float, double) {
  using S = TestType;
  Rng rng(4);
  Ids sources;
  for (int b = 0; b < 6; ++b) {
    std::vector<std::int64_t> s(std::size_t(1 + rng.next() % 6));
    for (auto& id : s) id = std::int64_t(rng.next() % 6);
    sources.push_back(s);
  }
  for (const Kind& k : all_kinds()) {
    INFO(k.name);
    const Seq2Seq<S> model(k.options, 12);
    const Ids got = attend::seq2seq_greedy_decode(model, sources, 0, 1, 7);
    REQUIRE(got.size() == sources.size());
    // Chunks of 4 (sorted by source length, results put back in order) decode the same.
    REQUIRE(attend::seq2seq_greedy_decode(model, sources, 0, 1, 7, 4) == got);
    for (std::size_t b = 0; b < sources.size(); ++b) {
      const attend::Seq2SeqDecoder<S> dec(model, sources[b]);
      attend::DecodeOptions o;
      o.bos = 0;
      o.eos = 1;
      o.max_length = 7;
      REQUIRE(got[b] == attend::greedy_decode(dec, o).tokens);
    }
  }
}

TEST_CASE("seq2seq_backward.hpp: Adam learns the copy task", "[grad][train]") {
  // Copy task: tokens 3..9 (0 unused, bos 1, eos 2), sources of length 3..5;
  // target_input = [bos, x...], target_output = [x..., eos]. Fixed seeds: deterministic.
  Seq2SeqOptions o;
  o.source_vocab = o.target_vocab = 10;
  o.embedding_dim = 8;
  o.hidden_size = 24;
  o.attention = AttentionKind::bahdanau;
  Trainable<float> t{Seq2Seq<float>(o, 7), {}};
  const attend::ParameterList<float> params = attend::collect_parameters<float>(t);
  attend::AdamOptions ao;
  ao.lr = 0.01;
  attend::Adam<float> adam(ao);
  Rng rng(123);
  const auto make_batch = [&](Ids& s, Ids& ti, Ids& to) {
    s.clear();
    ti.clear();
    to.clear();
    for (int b = 0; b < 16; ++b) {
      std::vector<std::int64_t> x(std::size_t(3 + rng.next() % 3));
      for (auto& id : x) id = std::int64_t(3 + rng.next() % 7);
      s.push_back(x);
      ti.push_back({1});
      ti.back().insert(ti.back().end(), x.begin(), x.end());
      to.push_back(x);
      to.back().push_back(2);
    }
  };
  Ids s, ti, to;
  double first = 0.0, last = 0.0;
  constexpr int kSteps = 300;
  for (int step = 0; step < kSteps; ++step) {
    make_batch(s, ti, to);
    attend::Seq2SeqCache<float> cache;
    const double loss = attend::seq2seq_loss(t.model, s, ti, to, &cache);
    if (step < 10) first += loss / 10;
    if (step >= kSteps - 10) last += loss / 10;
    attend::zero_grad(params);
    attend::seq2seq_backward(t.model, cache, t.grads);
    adam.step(params);
  }
  INFO("mean loss of the first 10 steps " << first << ", of the last 10 " << last);
  // Chance level is ln 10 = 2.3; the attention model copies almost perfectly after 300
  // steps (measured on x86-64 with g++ 12: 2.136 -> 0.0184, a factor of 116); 50 leaves
  // room for other rounding on other compilers.
  REQUIRE(first > 2.0);
  REQUIRE(last < first / 50);
  // Greedy decoding now copies fresh sequences.
  make_batch(s, ti, to);
  const Ids out = attend::seq2seq_greedy_decode(t.model, s, 1, 2, 8);
  int correct = 0;
  for (std::size_t b = 0; b < s.size(); ++b) correct += out[b] == to[b] ? 1 : 0;
  INFO(correct << " of 16 copied exactly");
  REQUIRE(correct >= 12);
}
