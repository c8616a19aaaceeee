// SPDX-License-Identifier: MIT
// Tests of train/ (gradient check, named parameters, losses, optimizers, checkpoints) and of
// the backwards they exercise: scaled dot-product attention, embedding, the ops/ backwards.
#include "attend/attention/mask.hpp"
#include "attend/attention/scaled_dot_product.hpp"
#include "attend/core/errors.hpp"
#include "attend/core/random.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/embedding/embedding.hpp"
#include "attend/embedding/learned_positional.hpp"
#include "attend/io/safetensors.hpp"
#include "attend/io/safetensors_writer.hpp"
#include "attend/ops/activation.hpp"
#include "attend/ops/dropout.hpp"
#include "attend/ops/layer_norm.hpp"
#include "attend/ops/linear.hpp"
#include "attend/ops/softmax.hpp"
#include "attend/train/checkpoint.hpp"
#include "attend/train/gradcheck.hpp"
#include "attend/train/loss.hpp"
#include "attend/train/optim.hpp"
#include "attend/train/parameters.hpp"

#include <Eigen/Core>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "test_util.hpp"

// PyTorch's numbers for the optimizer, clipping and cross-entropy parity tests.
#include "data/optim/optim_reference.inc"

namespace {

using attend::GradCheckOptions;
using attend::Index;
using attend::Matrix;
using attend::Rng;
using attend::Tensor;
using attend::Vector;

using attend_test::dot_loss;
using attend_test::kGradTol;
using attend_test::mat;
using attend_test::random_matrix;
using attend_test::require_close;
using attend_test::vec;

// ---- tolerances ------------------------------------------------------------------------

/// Hand values are written with 10 decimals (rounding <= 5e-11); float results carry a few
/// ulps of values up to ~10 (ulp 9.5e-7).
template <typename S>
constexpr double kHandTol = std::is_same_v<S, float> ? 4e-6 : 1e-10;

// ---- helpers ---------------------------------------------------------------------------

/// Embedding -> LayerNorm -> Linear: a model with every kind of registered parameter.
template <typename S>
struct TinyModel {
  attend::Embedding<S> embed{5, 3, Index(0), 1};  // padding_idx 0
  attend::LayerNorm<S> norm{3};
  attend::Linear<S> fc{3, 4, true, 2};
  attend::EmbeddingGrad<S> d_embed;
  attend::LayerNormGrad<S> d_norm;
  attend::LinearGrad<S> d_fc;

  template <typename Visit>
  void named_parameters(Visit&& visit) {
    attend::named_parameters(embed, d_embed, visit, "embed.");
    attend::named_parameters(norm, d_norm, visit, "norm.");
    attend::named_parameters(fc, d_fc, visit, "fc.");
  }

  /// [L, 4] logits of the ids; `cache` receives the LayerNorm and Linear inputs.
  Matrix<S> forward(const std::vector<std::int64_t>& ids, attend::LayerNormCache<S>* ln = nullptr,
                    Matrix<S>* fc_in = nullptr) const {
    const Matrix<S> h = norm.forward(embed.forward(ids), ln);  // [L, 3]
    if (fc_in) *fc_in = h;
    return fc.forward(h);
  }

  /// Accumulates every parameter gradient of sum(forward(ids) * dy).
  void backward(const std::vector<std::int64_t>& ids, const Matrix<S>& dy) {
    attend::LayerNormCache<S> ln;
    Matrix<S> h;
    (void)forward(ids, &ln, &h);
    const Matrix<S> dh = fc.backward(h, dy, d_fc.d_weight, d_fc.d_bias);
    const Matrix<S> de =
        attend::layer_norm_backward(ln, norm.weight, dh, &d_norm.d_weight, &d_norm.d_bias);
    embed.backward(ids, de, d_embed.d_weight);
  }
};

/// Runs gradcheck and requires its error below kGradTol, printing the worst element (as
/// attend_test::require_gradient, without a name: these checks report only the element).
template <typename X, typename DA, typename F>
void require_gradient(X&& x, const Eigen::MatrixBase<DA>& analytic, F&& f,
                      const GradCheckOptions& options = {}) {
  const attend::GradCheckResult r = attend::gradcheck(x, analytic, f, options);
  INFO(r.describe());
  REQUIRE(r.error < kGradTol);
}

}  // namespace

// ========================================================================================
// gradcheck.hpp
// ========================================================================================

TEST_CASE("gradcheck.hpp: numerical gradient of sum(x^3) is 3 x^2", "[train][grad]") {
  Matrix<double> x = mat<double>(2, 2, {1, -2, 0.5, 3});
  const auto f = [&] { return x.array().cube().sum(); };
  // d/dx sum(x^3) = 3 x^2: [3, 12; 0.75, 27]. Central differences err by h^2 f''' / 6 =
  // h^2 (6) / 6 = 1e-12 here, plus cancellation ~ 1e-16 * 30 / 1e-6 = 3e-9 (f ~ 30).
  constexpr double kCentralTol = 1e-8;
  const Matrix<double> g = attend::numerical_gradient(x, f);
  require_close(g, mat<double>(2, 2, {3, 12, 0.75, 27}), kCentralTol);
  // x is restored bit for bit.
  REQUIRE(x == mat<double>(2, 2, {1, -2, 0.5, 3}));
}

TEST_CASE("gradcheck.hpp: the 4-point stencil is exact for quartics where 2-point is not",
          "[train][grad]") {
  Matrix<double> x = mat<double>(1, 1, {1.0});
  const auto f = [&] { return std::pow(x(0, 0), 4); };  // f' = 4 x^3 = 4 at x = 1
  GradCheckOptions wide;
  wide.step = 1e-2;
  // 2-point: (f(1+h) - f(1-h)) / 2h = 4 + 4 h^2 = 4.0004 at h = 1e-2 (the f''' h^2 / 6 term).
  const double two = attend::numerical_gradient(x, f, wide)(0, 0);
  REQUIRE(std::abs(two - 4.0004) < 1e-10);
  // 4-point: the error term is h^4 f^(5) / 30 = 0 for a quartic, so only rounding remains
  // (~ eps * f / h = 1e-16 * 1 / 1e-2).
  wide.four_point = true;
  const double four = attend::numerical_gradient(x, f, wide)(0, 0);
  REQUIRE(std::abs(four - 4.0) < 1e-12);
}

TEST_CASE("gradcheck.hpp: relative error, worst element and a wrong gradient", "[train][grad]") {
  // ||a - b|| / ||a + b|| with a = [1, 2], b = [1, 4]: ||[0, -2]|| / ||[2, 6]|| = 2 / sqrt(40).
  REQUIRE(attend::relative_error(vec<double>({1, 2}), vec<double>({1, 4})) ==
          Approx(2.0 / std::sqrt(40.0)).epsilon(1e-14));
  REQUIRE(attend::relative_error(vec<double>({0, 0}), vec<double>({0, 0})) == 0.0);

  Matrix<double> x = mat<double>(1, 3, {1, 2, 3});
  const auto f = [&] { return x.squaredNorm(); };  // gradient 2x = [2, 4, 6]
  const attend::GradCheckResult good = attend::gradcheck(x, mat<double>(1, 3, {2, 4, 6}), f);
  REQUIRE(good.error < kGradTol);
  const attend::GradCheckResult bad = attend::gradcheck(x, mat<double>(1, 3, {2, 5, 6}), f);
  // ||[0, 1, 0]|| / ||[4, 9, 12]|| = 1 / sqrt(241) = 0.0644 (up to the 1e-10 estimate error).
  REQUIRE(bad.error == Approx(1.0 / std::sqrt(241.0)).epsilon(1e-6));
  REQUIRE(bad.worst_row == 0);
  REQUIRE(bad.worst_col == 1);
  REQUIRE(bad.max_abs_diff == Approx(1.0).epsilon(1e-6));
  REQUIRE(bad.describe().find("at [0, 1]") != std::string::npos);
}

TEST_CASE("gradcheck.hpp: kinks are detected and skipped", "[train][grad]") {
  Matrix<double> x = mat<double>(1, 3, {-1.0, 0.0, 2.0});
  const auto f = [&] { return x.array().max(0.0).sum(); };  // relu: kink at 0
  const Matrix<double> analytic = attend::relu_backward(x, Matrix<double>::Ones(1, 3));
  // At x = 0 the central difference is (h - 0) / 2h = 0.5 but relu_backward says 0.
  REQUIRE(attend::gradcheck(x, analytic, f).error > 0.1);
  GradCheckOptions options;
  // One-sided slopes 1 and 0 differ by 1 at the kink, by ~h f'' = 0 elsewhere.
  options.kink_tolerance = 1e-3;
  const attend::GradCheckResult r = attend::gradcheck(x, analytic, f, options);
  REQUIRE(r.skipped == 1);
  REQUIRE(std::isnan(r.numeric(0, 1)));
  REQUIRE(r.error < kGradTol);
}

TEST_CASE("gradcheck.hpp: works through maps and blocks", "[train][grad]") {
  Vector<double> storage = vec<double>({0.5, -1.5, 2.0, 1.0});
  const auto f = [&] { return storage.array().sin().sum(); };  // gradient cos(x)
  const Vector<double> want = storage.array().cos();
  // An rvalue map over part of the storage: only those elements are perturbed.
  const Matrix<double> g =
      attend::numerical_gradient(Eigen::Map<Vector<double>>(storage.data(), 2), f);
  require_close(g, want.head(2), 1e-9);
  require_gradient(storage.segment(2, 2), want.tail(2), f);
}

TEST_CASE("gradcheck.hpp: bad shapes and options are rejected", "[train][grad][error]") {
  Matrix<double> x = Matrix<double>::Zero(2, 3);
  const auto f = [&] { return x.sum(); };
  REQUIRE_THROWS_AS(attend::gradcheck(x, Matrix<double>::Zero(3, 2), f), attend::shape_error);
  REQUIRE_THROWS_WITH(attend::gradcheck(x, Matrix<double>::Zero(3, 2), f),
                      "gradcheck: analytic is [3, 2], expected [2, 3] (the shape of x)");
  GradCheckOptions bad;
  bad.step = 0.0;
  REQUIRE_THROWS_AS(attend::numerical_gradient(x, f, bad), attend::value_error);
  REQUIRE_THROWS_WITH(attend::numerical_gradient(x, f, bad),
                      "numerical_gradient: options.step is 0.000000, expected a finite value > 0");
  bad.step = 1e-6;
  bad.kink_tolerance = -1.0;
  REQUIRE_THROWS_WITH(attend::gradcheck(x, Matrix<double>::Zero(2, 3), f, bad),
                      "gradcheck: options.kink_tolerance is -1.000000, expected >= 0");
  REQUIRE_THROWS_AS(attend::relative_error(vec<double>({1}), vec<double>({1, 2})),
                    attend::shape_error);
  REQUIRE_THROWS_WITH(attend::relative_error(vec<double>({1}), vec<double>({1, 2})),
                      "relative_error: b is [2, 1], expected [1, 1]");
}

// ---- the existing ops/ backwards not yet checked elsewhere -----------------------------

TEST_CASE("gradcheck.hpp: dropout_backward with a fixed mask matches differences",
          "[train][grad]") {
  Rng rng(7);
  Matrix<double> x = random_matrix(4, 5, rng);
  const Matrix<double> up = random_matrix(4, 5, rng);
  attend::DropoutCache<double> cache;
  Rng mask_rng(11);
  (void)attend::dropout_forward(x, 0.4, true, mask_rng, &cache);
  // The loss replays the same mask: a fresh generator with the same seed draws it again.
  const auto loss = [&] {
    Rng replay(11);
    return dot_loss(attend::dropout_forward(x, 0.4, true, replay), up);
  };
  require_gradient(x, attend::dropout_backward(cache, up), loss);
}

TEST_CASE("gradcheck.hpp: masked log_softmax and softmax backwards match differences",
          "[train][grad]") {
  Rng rng(3);
  Matrix<double> x = random_matrix(3, 4, rng, 2.0);
  const Matrix<double> up = random_matrix(3, 4, rng);
  attend::BoolMatrix blocked = attend::BoolMatrix::Constant(3, 4, false);
  blocked(0, 1) = blocked(2, 0) = blocked(2, 3) = true;
  const auto y = [&] { return attend::softmax(x, blocked); };
  require_gradient(x, attend::softmax_backward(y(), up), [&] { return dot_loss(y(), up); });
  // log_softmax with -inf logits: masked inputs are constants, their gradient is 0.
  Matrix<double> xm = x;
  xm(1, 2) = -std::numeric_limits<double>::infinity();
  const Matrix<double> ly = attend::log_softmax(xm);
  const Matrix<double> dx = attend::log_softmax_backward(ly, up);
  REQUIRE(dx(1, 2) == 0.0);
  const auto lloss = [&] {
    const Matrix<double> l = attend::log_softmax(xm);
    double s = 0;  // sum over the finite entries (masked ones are -inf * up)
    for (Index i = 0; i < l.rows(); ++i)
      for (Index j = 0; j < l.cols(); ++j)
        if (std::isfinite(l(i, j))) s += l(i, j) * up(i, j);
    return s;
  };
  // Perturb only the finite entries: row 0 and row 2 here.
  require_gradient(xm.row(0), dx.row(0), lloss);
  require_gradient(xm.row(2), dx.row(2), lloss);
}

// ========================================================================================
// parameters.hpp
// ========================================================================================

TEMPLATE_TEST_CASE("parameters.hpp: a model's named parameters, in order, with PyTorch shapes",
                   "[train]", float, double) {
  using S = TestType;
  TinyModel<S> model;
  const attend::ParameterList<S> params = attend::collect_parameters<S>(model);
  const std::vector<std::string> names{"embed.weight", "norm.weight", "norm.bias", "fc.weight",
                                       "fc.bias"};
  const std::vector<attend::Shape> shapes{{5, 3}, {3}, {3}, {4, 3}, {4}};
  REQUIRE(params.size() == 5);
  for (Index i = 0; i < params.size(); ++i) {
    CHECK(params[i].name() == names[static_cast<std::size_t>(i)]);
    CHECK(params[i].shape() == shapes[static_cast<std::size_t>(i)]);
  }
  REQUIRE(params.numel() == 15 + 3 + 3 + 12 + 4);
  // Gradient buffers were sized to zeros of the parameter's shape.
  REQUIRE(model.d_fc.d_weight.rows() == 4);
  REQUIRE(model.d_fc.d_weight.cols() == 3);
  REQUIRE(model.d_fc.d_weight.isZero(0));
  REQUIRE(model.d_norm.d_bias.size() == 3);
  // The views alias the module's storage, row-major like a state dict.
  params.at("fc.weight").value()(4) = S(2.5);  // row 1, column 1 of [4, 3]
  REQUIRE(model.fc.weight(1, 1) == S(2.5));
  model.d_fc.d_bias(3) = S(-1);
  REQUIRE(params.at("fc.bias").grad()(3) == S(-1));
  REQUIRE(params.find("nope") == nullptr);
}

TEMPLATE_TEST_CASE("parameters.hpp: absent parameters are not visited", "[train]", float, double) {
  using S = TestType;
  attend::Linear<S> lin(3, 2, /*bias=*/false);
  attend::LinearGrad<S> d_lin;
  attend::LayerNorm<S> ln(3, 1e-5, /*elementwise_affine=*/false);
  attend::LayerNormGrad<S> d_ln;
  attend::ParameterList<S> params;
  attend::named_parameters(lin, d_lin, params, "lin.");
  attend::named_parameters(ln, d_ln, params, "ln.");
  REQUIRE(params.size() == 1);
  REQUIRE(params[0].name() == "lin.weight");
  REQUIRE(d_lin.d_bias.size() == 0);
}

TEST_CASE("parameters.hpp: gradients accumulate until zero_grad", "[train][grad]") {
  TinyModel<double> model;
  const attend::ParameterList<double> params = attend::collect_parameters<double>(model);
  const std::vector<std::int64_t> ids{1, 3, 0, 3};
  Rng rng(5);
  const Matrix<double> up = random_matrix(4, 4, rng);
  model.backward(ids, up);
  std::vector<Vector<double>> once;
  for (const auto& p : params) once.emplace_back(p.grad());
  model.backward(ids, up);
  // Two identical backward calls give twice the gradient; only the order of additions
  // differs (id 3 repeats: ((a + b) + a) + b against 2 (a + b)), a few ulps of O(1) values.
  constexpr double kReorderTol = 1e-14;
  for (Index i = 0; i < params.size(); ++i) {
    INFO(params[i].name());
    require_close(params[i].grad(), 2 * once[static_cast<std::size_t>(i)], kReorderTol);
  }
  attend::zero_grad(params);
  for (const auto& p : params) REQUIRE(p.grad().isZero(0));
}

TEST_CASE("parameters.hpp: every parameter of the model passes gradcheck through the list",
          "[train][grad]") {
  TinyModel<double> model;
  const attend::ParameterList<double> params = attend::collect_parameters<double>(model);
  // Non-trivial LayerNorm parameters, so their gradients are not special values.
  Rng rng(9);
  model.norm.weight = Vector<double>::Constant(3, 1.0) + random_matrix(3, 1, rng, 0.5);
  model.norm.bias = random_matrix(3, 1, rng, 0.5);
  const std::vector<std::int64_t> ids{1, 3, 0, 3, 4};  // 0 is the padding id
  const Matrix<double> up = random_matrix(5, 4, rng);
  model.backward(ids, up);
  const auto loss = [&] { return dot_loss(model.forward(ids), up); };
  for (const auto& p : params) {
    if (p.name() == "embed.weight") continue;  // below: the padding row is special
    INFO(p.name());
    require_gradient(p.value(), p.grad(), loss);
  }
  // Rows 1..4 of the embedding follow the forward; row 0 (padding) gets no gradient even
  // though the forward reads it, as in PyTorch.
  require_gradient(model.embed.weight.bottomRows(4), model.d_embed.d_weight.bottomRows(4), loss);
  REQUIRE(model.d_embed.d_weight.row(0).isZero(0));
  REQUIRE(model.d_embed.d_weight.row(2).isZero(0));  // id 2 does not occur
}

TEMPLATE_TEST_CASE("parameters.hpp: duplicate names, bad gradient shapes, unknown names",
                   "[train][error]", float, double) {
  using S = TestType;
  attend::ParameterList<S> params;
  Matrix<S> w = Matrix<S>::Zero(2, 3), dw;
  Vector<S> b = Vector<S>::Zero(2), db = Vector<S>::Zero(3);
  params("w", w, dw);
  REQUIRE_THROWS_AS(params("w", w, dw), attend::value_error);
  REQUIRE_THROWS_WITH(params("w", w, dw), "ParameterList: parameter 'w' is registered twice");
  REQUIRE_THROWS_AS(params("b", b, db), attend::shape_error);
  REQUIRE_THROWS_WITH(params("b", b, db), "ParameterList: grad of 'b' is [3], expected [2]");
  Matrix<S> bad = Matrix<S>::Zero(3, 2);
  REQUIRE_THROWS_WITH(params("w2", w, bad),
                      "ParameterList: grad of 'w2' is [3, 2], expected [2, 3]");
  Tensor<S> t({2, 2, 2}), dt({2, 4});
  REQUIRE_THROWS_WITH(params("t", t, dt),
                      "ParameterList: grad of 't' is [2, 4], expected [2, 2, 2]");
  REQUIRE_THROWS_AS(params.at("x"), attend::index_error);
  REQUIRE_THROWS_WITH(params.at("x"), "ParameterList::at: no parameter named 'x'");
  REQUIRE(params.size() == 1);  // failed registrations left nothing behind
}

// ========================================================================================
// embedding.hpp: backward
// ========================================================================================

TEMPLATE_TEST_CASE("embedding.hpp: backward by hand; repeated ids add up; padding row stays 0",
                   "[train][grad]", float, double) {
  using S = TestType;
  attend::Embedding<S> emb(4, 2, Index(0), 3);  // V = 4, D = 2, padding_idx 0
  const std::vector<std::int64_t> ids{1, 3, 1, 0};
  const Matrix<S> dy = mat<S>(4, 2, {1, 2, 3, 4, 5, 6, 7, 8});
  Matrix<S> dw;
  emb.backward(ids, dy, dw);
  // row 1: [1, 2] + [5, 6] = [6, 8]; row 3: [3, 4]; row 0 (padding) and row 2: 0.
  require_close(dw, mat<S>(4, 2, {0, 0, 6, 8, 0, 0, 3, 4}), 0.0);
  // Accumulates; the tensor form with ids [2, 2] gives the same.
  Tensor<std::int64_t> tids({2, 2}, std::vector<std::int64_t>{1, 3, 1, 0});
  Tensor<S> tdy({2, 2, 2});
  tdy.as_matrix() = dy;
  emb.backward(tids, tdy, dw);
  require_close(dw, mat<S>(4, 2, {0, 0, 12, 16, 0, 0, 6, 8}), 0.0);
  // scale_by_sqrt_d: the forward multiplies by sqrt(2), so does the gradient.
  emb.scale_by_sqrt_d = true;
  Matrix<S> ds;
  emb.backward(ids, dy, ds);
  const double r2 = std::sqrt(2.0);
  require_close(ds, mat<S>(4, 2, {0, 0, 6 * r2, 8 * r2, 0, 0, 3 * r2, 4 * r2}), kHandTol<S>);
}

TEST_CASE("embedding.hpp: backward matches central differences, scaled and not", "[train][grad]") {
  for (const bool scaled : {false, true}) {
    attend::Embedding<double> emb(6, 4, std::nullopt, 2);
    emb.scale_by_sqrt_d = scaled;
    const std::vector<std::int64_t> ids{5, 0, 2, 5, 1};
    Rng rng(4);
    const Matrix<double> up = random_matrix(5, 4, rng);
    Matrix<double> dw;
    emb.backward(ids, up, dw);
    require_gradient(emb.weight, dw, [&] { return dot_loss(emb.forward(ids), up); });
  }
}

TEMPLATE_TEST_CASE("embedding.hpp: backward rejects bad shapes and ids", "[train][error]", float,
                   double) {
  using S = TestType;
  attend::Embedding<S> emb(4, 2);
  Matrix<S> dw;
  REQUIRE_THROWS_AS(emb.backward({1, 2}, Matrix<S>::Zero(3, 2), dw), attend::shape_error);
  REQUIRE_THROWS_WITH(emb.backward({1, 2}, Matrix<S>::Zero(3, 2), dw),
                      "Embedding::backward: d_out is [3, 2], expected [2, 2] ([L, D] for 2 ids)");
  REQUIRE_THROWS_AS(emb.backward({1, 4}, Matrix<S>::Zero(2, 2), dw), attend::index_error);
  REQUIRE_THROWS_WITH(emb.backward({1, 4}, Matrix<S>::Zero(2, 2), dw),
                      "Embedding::backward: token id 4 at position 1 is out of range [0, 4)");
  REQUIRE(dw.isZero(0));  // sized, but nothing written before the failure
  Matrix<S> wrong = Matrix<S>::Zero(2, 2);
  REQUIRE_THROWS_WITH(emb.backward({1}, Matrix<S>::Zero(1, 2), wrong),
                      "Embedding::backward: d_weight is [2, 2], expected [4, 2]");
  Tensor<std::int64_t> ids({2}, std::vector<std::int64_t>{0, 1});
  REQUIRE_THROWS_WITH(emb.backward(ids, Tensor<S>({2, 3}), dw),
                      "Embedding::backward: d_out is [2, 3], expected [2, 2]");
}

TEMPLATE_TEST_CASE("learned_positional.hpp: backward adds each row to its position by hand",
                   "[train][grad]", float, double) {
  using S = TestType;
  attend::LearnedPositionalEmbedding<S> pos(5, 2);
  // forward(2, 3) reads rows 3 and 4, so d_weight gets d_out's rows there:
  // row 3 += [1, 2], row 4 += [3, 4]; a second call at first_position 2 with [[10, 20]]
  // adds to row 2 only. Rows 0 and 1 stay 0.
  Matrix<S> dw;
  Matrix<S> up(2, 2);
  up << 1, 2, 3, 4;
  pos.backward(up, 3, dw);
  Matrix<S> one(1, 2);
  one << 10, 20;
  pos.backward(one, 2, dw);
  Matrix<S> want(5, 2);
  want << 0, 0, 0, 0, 10, 20, 1, 2, 3, 4;
  REQUIRE(dw == want);
  pos.backward(up, 3, dw);  // accumulates: rows 3 and 4 doubled
  want.bottomRows(2) *= S(2);
  REQUIRE(dw == want);
}

TEST_CASE("learned_positional.hpp: backward matches central differences", "[train][grad]") {
  attend::LearnedPositionalEmbedding<double> pos(7, 3, 5);
  Rng rng(6);
  const Matrix<double> up = random_matrix(4, 3, rng);
  Matrix<double> dw;
  pos.backward(up, 2, dw);
  require_gradient(pos.weight, dw, [&] { return dot_loss(pos.forward(4, 2), up); });
}

TEMPLATE_TEST_CASE("learned_positional.hpp: backward rejects bad shapes and positions",
                   "[train][error]", float, double) {
  using S = TestType;
  attend::LearnedPositionalEmbedding<S> pos(4, 2);
  Matrix<S> dw;
  REQUIRE_THROWS_AS(pos.backward(Matrix<S>::Zero(2, 3), 0, dw), attend::shape_error);
  REQUIRE_THROWS_WITH(pos.backward(Matrix<S>::Zero(2, 3), 0, dw),
                      "LearnedPositionalEmbedding::backward: d_out is [2, 3], expected [L, 2] "
                      "(d_model)");
  REQUIRE_THROWS_AS(pos.backward(Matrix<S>::Zero(3, 2), 2, dw), attend::index_error);
  REQUIRE_THROWS_WITH(pos.backward(Matrix<S>::Zero(3, 2), 2, dw),
                      "LearnedPositionalEmbedding::backward: positions [2, 5) are outside [0, 4) "
                      "(max_len)");
  REQUIRE(dw.size() == 0);  // nothing allocated or written before the failure
  Matrix<S> wrong = Matrix<S>::Zero(3, 2);
  REQUIRE_THROWS_WITH(pos.backward(Matrix<S>::Zero(1, 2), 0, wrong),
                      "LearnedPositionalEmbedding::backward: d_weight is [3, 2], expected [4, 2] "
                      "(max_len, d_model)");
  REQUIRE(wrong.isZero(0));
}

// ========================================================================================
// loss.hpp
// ========================================================================================

TEMPLATE_TEST_CASE("loss.hpp: cross-entropy by hand, with ignore_index and label smoothing",
                   "[train]", float, double) {
  using S = TestType;
  const Matrix<S> x = mat<S>(2, 3, {1, 2, 3, 0, 0, 0});
  // Row 0, target 2: log-sum-exp = 3 + a with a = log(1 + e^-1 + e^-2) = 0.4076059644,
  // so -log p[2] = a. Row 1 is ignored (-100), and the mean divides by 1.
  const double a = std::log(1 + std::exp(-1.0) + std::exp(-2.0));
  attend::CrossEntropyOptions opt;
  REQUIRE(attend::cross_entropy_forward(x, {2, -100}, opt) == Approx(a).epsilon(kHandTol<S>));
  REQUIRE(std::abs(a - 0.4076059644) < 1e-10);
  // Smoothing 0.1: sum_c -log p[c] = 3 (3 + a) - (1 + 2 + 3) = 3 + 3a, so
  // loss = 0.9 a + (0.1 / 3)(3 + 3a) = a + 0.1 = 0.5076059644 (torch gives 0.5076).
  opt.label_smoothing = 0.1;
  REQUIRE(attend::cross_entropy_forward(x, {2, -100}, opt) == Approx(a + 0.1).epsilon(kHandTol<S>));
  // Sum over both rows, row 1 target 1, smoothing 0.2: row 1 has -log p = log 3 for every
  // class. loss = 0.8 (a + log 3) + (0.2 / 3)(3 + 3a + 3 log 3) = a + log 3 + 0.2
  //             = 0.4076059644 + 1.0986122887 + 0.2 = 1.7062182531 (torch: 1.7062).
  opt.label_smoothing = 0.2;
  opt.reduction = attend::Reduction::sum;
  REQUIRE(attend::cross_entropy_forward(x, {2, 1}, opt) ==
          Approx(a + std::log(3.0) + 0.2).epsilon(kHandTol<S>));
  // A custom ignore_index inside [0, C) ignores that class's rows.
  attend::CrossEntropyOptions ign;
  ign.ignore_index = 1;
  REQUIRE(attend::cross_entropy_forward(x, {2, 1}, ign) == Approx(a).epsilon(kHandTol<S>));
}

TEMPLATE_TEST_CASE("loss.hpp: cross_entropy_backward by hand; rows sum to 0; all ignored",
                   "[train][grad]", float, double) {
  using S = TestType;
  // logits [0, 0] (p = [0.5, 0.5]) target 0 and [0, log 3] (p = [0.25, 0.75]) target 1.
  const Matrix<S> x = mat<S>(2, 2, {0, 0, 0, std::log(3.0)});
  attend::CrossEntropyCache<S> cache;
  (void)attend::cross_entropy_forward(x, {0, 1}, {}, &cache);
  // mean over 2: dx = (p - onehot) / 2 = [-0.25, 0.25; 0.125, -0.125].
  require_close(attend::cross_entropy_backward(cache), mat<S>(2, 2, {-0.25, 0.25, 0.125, -0.125}),
                kHandTol<S>);
  // Smoothing 0.5, C = 2: target distribution [0.75, 0.25] / [0.25, 0.75]; dx = (p - q) / 2
  // = [-0.125, 0.125; 0, 0]; with d_loss = 4 everything times 4.
  attend::CrossEntropyOptions opt;
  opt.label_smoothing = 0.5;
  (void)attend::cross_entropy_forward(x, {0, 1}, opt, &cache);
  const Matrix<S> dx = attend::cross_entropy_backward(cache, 4.0);
  require_close(dx, mat<S>(2, 2, {-0.5, 0.5, 0, 0}), kHandTol<S>);
  // Every target ignored: loss 0 and gradient 0 (PyTorch's mean would be NaN).
  REQUIRE(attend::cross_entropy_forward(x, {-100, -100}, {}, &cache) == S(0));
  REQUIRE(attend::cross_entropy_backward(cache).isZero(0));
}

TEST_CASE("loss.hpp: cross_entropy_backward matches central differences", "[train][grad]") {
  Rng rng(12);
  Matrix<double> x = random_matrix(6, 5, rng, 3.0);
  const std::vector<std::int64_t> targets{4, 0, -100, 2, 2, 1};
  for (const double eps : {0.0, 0.1}) {
    for (const auto red : {attend::Reduction::mean, attend::Reduction::sum}) {
      attend::CrossEntropyOptions opt;
      opt.label_smoothing = eps;
      opt.reduction = red;
      attend::CrossEntropyCache<double> cache;
      (void)attend::cross_entropy_forward(x, targets, opt, &cache);
      const double d_loss = 0.7;  // L = 0.7 loss: checks the upstream scaling too
      const Matrix<double> dx = attend::cross_entropy_backward(cache, d_loss);
      REQUIRE(dx.row(2).isZero(0));  // the ignored row
      // Each counted row sums to d_loss * scale * (1 - (1 - eps) - eps) = 0.
      REQUIRE(dx.rowwise().sum().cwiseAbs().maxCoeff() < 1e-15);
      require_gradient(x, dx,
                       [&] { return d_loss * attend::cross_entropy_forward(x, targets, opt); });
    }
  }
}

TEMPLATE_TEST_CASE("loss.hpp: mse by hand, both reductions, and its gradient", "[train][grad]",
                   float, double) {
  using S = TestType;
  const Matrix<S> x = mat<S>(2, 2, {1, 2, 3, 4});
  const Matrix<S> t = mat<S>(2, 2, {0, 2, 1, 1});
  // differences 1, 0, 2, 3: squares sum to 14; mean 14 / 4 = 3.5.
  REQUIRE(attend::mse_loss_forward(x, t) == S(3.5));
  REQUIRE(attend::mse_loss_forward(x, t, attend::Reduction::sum) == S(14));
  // mean: 2 (x - t) / 4 = [0.5, 0, 1, 1.5]; sum with d_loss 0.5: (x - t) = [1, 0, 2, 3].
  require_close(attend::mse_loss_backward(x, t), mat<S>(2, 2, {0.5, 0, 1, 1.5}), 0.0);
  require_close(attend::mse_loss_backward(x, t, 0.5, attend::Reduction::sum),
                mat<S>(2, 2, {1, 0, 2, 3}), 0.0);
  if constexpr (std::is_same_v<S, double>) {
    Rng rng(2);
    Matrix<double> xr = random_matrix(3, 4, rng);
    const Matrix<double> tr = random_matrix(3, 4, rng);
    require_gradient(xr, attend::mse_loss_backward(xr, tr),
                     [&] { return attend::mse_loss_forward(xr, tr); });
  }
}

TEMPLATE_TEST_CASE("loss.hpp: bad targets, options and shapes are rejected", "[train][error]",
                   float, double) {
  using S = TestType;
  const Matrix<S> x = Matrix<S>::Zero(2, 3);
  REQUIRE_THROWS_AS(attend::cross_entropy_forward(x, {0}), attend::shape_error);
  REQUIRE_THROWS_WITH(attend::cross_entropy_forward(x, {0}),
                      "cross_entropy_forward: targets is [1], expected [2] (the rows of logits "
                      "[2, 3])");
  REQUIRE_THROWS_AS(attend::cross_entropy_forward(x, {0, 3}), attend::index_error);
  REQUIRE_THROWS_WITH(attend::cross_entropy_forward(x, {0, 3}),
                      "cross_entropy_forward: target 3 at position 1 is out of range [0, 3) and "
                      "is not ignore_index (-100)");
  attend::CrossEntropyOptions opt;
  opt.label_smoothing = 1.5;
  REQUIRE_THROWS_AS(attend::cross_entropy_forward(x, {0, 1}, opt), attend::value_error);
  REQUIRE_THROWS_WITH(attend::cross_entropy_forward(x, {0, 1}, opt),
                      "cross_entropy_forward: label_smoothing is 1.5, expected in [0, 1]");
  Matrix<S> nan = x;
  nan(1, 2) = std::numeric_limits<S>::quiet_NaN();
  REQUIRE_THROWS_WITH(attend::cross_entropy_forward(nan, {0, 1}),
                      "cross_entropy_forward: logits has NaN at [1, 2]");
  REQUIRE_THROWS_AS(attend::mse_loss_forward(x, Matrix<S>::Zero(3, 2)), attend::shape_error);
  REQUIRE_THROWS_WITH(attend::mse_loss_forward(x, Matrix<S>::Zero(3, 2)),
                      "mse_loss_forward: target is [3, 2], expected [2, 3] (the shape of input)");
  REQUIRE_THROWS_WITH(attend::mse_loss_backward(x, Matrix<S>::Zero(3, 2)),
                      "mse_loss_backward: target is [3, 2], expected [2, 3] (the shape of input)");
}

// ========================================================================================
// optim.hpp
// ========================================================================================

namespace {

namespace ref = optim_reference;

/// Parity with PyTorch on the same inputs and gradients. Both sides do the same operations
/// in the same order and round after each, so the results may differ only where a compiler
/// fuses a multiply-add: measured, every float64 value and every float32 Adam/AdamW value is
/// bit-identical to torch's; float32 SGD differs by up to 1 ulp per step (worst 0.23 of the
/// tolerance below), as torch's `add_(d_p, alpha=-lr)` kernel fuses. The tolerances allow
/// a few ulps per step over five steps on O(1) values: float 2e-6 relative (ulp 1.2e-7),
/// double 1e-13 (ulp 2.2e-16; room for another libm's pow and sqrt).
template <typename S>
constexpr double kParityRtol = std::is_same_v<S, float> ? 2e-6 : 1e-13;
template <typename S>
constexpr double kParityAtol = std::is_same_v<S, float> ? 1e-7 : 1e-15;

/// w [2, 3] and b [3] from kInitial, registered with their gradients.
template <typename S>
struct TwoParams {
  Matrix<S> w = Matrix<S>::Zero(2, 3), dw;
  Vector<S> b = Vector<S>::Zero(3), db;
  attend::ParameterList<S> params;

  TwoParams() {
    set(ref::kInitial, w, b);
    params("w", w, dw);
    params("b", b, db);
  }
  static void set(const double* flat, Matrix<S>& m, Vector<S>& v) {
    for (Index i = 0; i < 6; ++i) m(i / 3, i % 3) = static_cast<S>(flat[i]);
    for (Index i = 0; i < 3; ++i) v(i) = static_cast<S>(flat[6 + i]);
  }
  Vector<double> flat() const {
    Vector<double> out(9);
    for (Index i = 0; i < 6; ++i) out(i) = static_cast<double>(w(i / 3, i % 3));
    for (Index i = 0; i < 3; ++i) out(6 + i) = static_cast<double>(b(i));
    return out;
  }
};

template <typename S>
void require_parity(const Vector<double>& got, const double* want, const std::string& what) {
  double worst = -1.0;  // the largest error as a fraction of its tolerance
  Index at = 0;
  for (Index i = 0; i < got.size(); ++i) {
    const double err = std::abs(got(i) - want[i]);
    const double ratio = err / (kParityAtol<S> + kParityRtol<S> * std::abs(want[i]));
    if (!(ratio <= worst)) {
      worst = ratio;
      at = i;
    }
  }
  std::ostringstream msg;
  msg.precision(17);
  msg << what << ": worst error " << worst << " of the tolerance at " << at << " (got " << got(at)
      << ", torch " << want[at] << ")";
  INFO(msg.str());
  REQUIRE(worst <= 1.0);
}

/// Runs kSteps steps of `opt` on kGrads and compares every step with torch's trace.
template <typename S, typename Opt>
void require_trace(Opt& opt, const double (&want_f32)[ref::kSteps][ref::kNumel],
                   const double (&want_f64)[ref::kSteps][ref::kNumel], const std::string& name) {
  TwoParams<S> m;
  for (int k = 0; k < ref::kSteps; ++k) {
    TwoParams<S>::set(ref::kGrads[k], m.dw, m.db);
    opt.step(m.params);
    const double* want = std::is_same_v<S, float> ? want_f32[k] : want_f64[k];
    require_parity<S>(m.flat(), want, name + " step " + std::to_string(k + 1));
  }
}

}  // namespace

TEMPLATE_TEST_CASE("optim.hpp: SGD, Adam and AdamW steps equal PyTorch's", "[train][optim]", float,
                   double) {
  using S = TestType;
  {
    attend::SGDOptions o;
    o.lr = 0.1;
    attend::SGD<S> opt(o);
    require_trace<S>(opt, ref::k_sgd_plain_f32, ref::k_sgd_plain_f64, "sgd_plain");
  }
  {
    attend::SGDOptions o;
    o.lr = 0.1;
    o.momentum = 0.9;
    o.dampening = 0.1;
    o.weight_decay = 0.01;
    attend::SGD<S> opt(o);
    require_trace<S>(opt, ref::k_sgd_momentum_f32, ref::k_sgd_momentum_f64, "sgd_momentum");
  }
  {
    attend::SGDOptions o;
    o.lr = 0.05;
    o.momentum = 0.8;
    o.nesterov = true;
    o.weight_decay = 0.001;
    o.maximize = true;
    attend::SGD<S> opt(o);
    require_trace<S>(opt, ref::k_sgd_nesterov_f32, ref::k_sgd_nesterov_f64, "sgd_nesterov");
  }
  {
    attend::Adam<S> opt;  // PyTorch's defaults
    require_trace<S>(opt, ref::k_adam_default_f32, ref::k_adam_default_f64, "adam_default");
  }
  {
    attend::AdamOptions o;
    o.lr = 0.01;
    o.beta1 = 0.8;
    o.beta2 = 0.99;
    o.eps = 1e-6;
    o.weight_decay = 0.1;
    o.amsgrad = true;
    attend::Adam<S> opt(o);
    require_trace<S>(opt, ref::k_adam_amsgrad_f32, ref::k_adam_amsgrad_f64, "adam_amsgrad");
  }
  {
    attend::AdamW<S> opt;  // PyTorch's defaults, weight_decay 0.01
    require_trace<S>(opt, ref::k_adamw_default_f32, ref::k_adamw_default_f64, "adamw_default");
  }
  {
    attend::AdamWOptions o;
    o.lr = 0.02;
    o.beta1 = 0.85;
    o.beta2 = 0.995;
    o.weight_decay = 0.05;
    o.amsgrad = true;
    o.maximize = true;
    attend::AdamW<S> opt(o);
    require_trace<S>(opt, ref::k_adamw_amsgrad_f32, ref::k_adamw_amsgrad_f64, "adamw_amsgrad");
  }
}

TEST_CASE("optim.hpp: SGD momentum, Adam's first step and AdamW's decay by hand",
          "[train][optim]") {
  Matrix<double> p = mat<double>(1, 1, {1.0}), g;
  attend::ParameterList<double> params;
  params("p", p, g);
  g(0, 0) = 1.0;
  attend::SGDOptions so;
  so.lr = 0.1;
  so.momentum = 0.9;
  so.dampening = 0.5;
  attend::SGD<double> sgd(so);
  // Step 1: buf = g = 1 (no dampening at the first step); p = 1 - 0.1 * 1 = 0.9.
  sgd.step(params);
  REQUIRE(p(0, 0) == Approx(0.9).epsilon(1e-15));
  // Step 2: buf = 0.9 * 1 + (1 - 0.5) * 1 = 1.4; p = 0.9 - 0.1 * 1.4 = 0.76.
  sgd.step(params);
  REQUIRE(p(0, 0) == Approx(0.76).epsilon(1e-15));
  REQUIRE(sgd.state().at("p").momentum_buffer(0) == Approx(1.4).epsilon(1e-15));

  // Adam, first step: m = 0.1 g, v = 0.001 g^2, bias-corrected m^ = g and v^ = g^2, so
  // p -= lr g / (|g| + eps) = 0.1 * 2 / (2 + 1e-8) for p = 1, g = 2.
  p(0, 0) = 1.0;
  g(0, 0) = 2.0;
  attend::AdamOptions ao;
  ao.lr = 0.1;
  attend::Adam<double> adam(ao);
  adam.step(params);
  REQUIRE(p(0, 0) == Approx(1.0 - 0.1 * 2.0 / (2.0 + 1e-8)).epsilon(1e-15));
  REQUIRE(adam.state().at("p").step == 1);

  // Zero gradient, weight decay 0.5, lr 0.1, p = 2. AdamW decays the weight directly:
  // p = 2 (1 - 0.1 * 0.5) = 1.9, and m = v = 0 give no further update. Adam adds the decay
  // to the gradient, g = 0.5 * 2 = 1, and takes a normalised step: p = 2 - 0.1 / (1 + 1e-8).
  g(0, 0) = 0.0;
  p(0, 0) = 2.0;
  attend::AdamWOptions wo;
  wo.lr = 0.1;
  wo.weight_decay = 0.5;
  attend::AdamW<double> adamw(wo);
  adamw.step(params);
  REQUIRE(p(0, 0) == Approx(1.9).epsilon(1e-15));
  p(0, 0) = 2.0;
  ao.weight_decay = 0.5;
  attend::Adam<double> coupled(ao);
  coupled.step(params);
  REQUIRE(p(0, 0) == Approx(2.0 - 0.1 / (1.0 + 1e-8)).epsilon(1e-15));
  // Defaults are PyTorch's.
  REQUIRE(attend::AdamW<double>().options().weight_decay == 1e-2);
  REQUIRE(attend::Adam<double>().options().lr == 1e-3);
  REQUIRE(attend::Adam<double>().options().beta2 == 0.999);
}

TEMPLATE_TEST_CASE("optim.hpp: clip_grad_norm_ equals PyTorch's and returns the norm",
                   "[train][optim]", float, double) {
  using S = TestType;
  const bool f32 = std::is_same_v<S, float>;
  struct Case {
    const char* name;
    double max_norm, norm_type, norm_f32, norm_f64;
    const double *want_f32, *want_f64;
  };
  const double inf = std::numeric_limits<double>::infinity();
  const Case cases[] = {
      {"clip_l2", 0.5, 2.0, ref::k_clip_l2_f32_norm, ref::k_clip_l2_f64_norm, ref::k_clip_l2_f32,
       ref::k_clip_l2_f64},
      {"clip_inf", 0.1, inf, ref::k_clip_inf_f32_norm, ref::k_clip_inf_f64_norm,
       ref::k_clip_inf_f32, ref::k_clip_inf_f64},
      {"clip_none", 100.0, 2.0, ref::k_clip_none_f32_norm, ref::k_clip_none_f64_norm,
       ref::k_clip_none_f32, ref::k_clip_none_f64},
  };
  for (const Case& c : cases) {
    TwoParams<S> m;
    TwoParams<S>::set(ref::kGrads[0], m.dw, m.db);
    const double norm = attend::clip_grad_norm_(m.params, c.max_norm, c.norm_type);
    // The norm is computed in double here, in the parameter's dtype by torch: float torch
    // carries ~1e-7 relative error on a sum of 9 squares.
    REQUIRE(norm == Approx(f32 ? c.norm_f32 : c.norm_f64).epsilon(f32 ? 1e-6 : 1e-14));
    Vector<double> grads(9);
    for (Index i = 0; i < 6; ++i) grads(i) = static_cast<double>(m.dw(i / 3, i % 3));
    for (Index i = 0; i < 3; ++i) grads(6 + i) = static_cast<double>(m.db(i));
    require_parity<S>(grads, f32 ? c.want_f32 : c.want_f64, c.name);
  }
  // By hand: gradients [3] and [4] have global norm 5; max_norm 1 scales them by
  // 1 / (5 + 1e-6), giving [0.6, 0.8] up to the 2e-7 relative shift of the 1e-6.
  Vector<S> a = vec<S>({0}), da = vec<S>({3}), b = vec<S>({0}), db = vec<S>({4});
  attend::ParameterList<S> two;
  two("a", a, da);
  two("b", b, db);
  REQUIRE(attend::clip_grad_norm_(two, 1.0) == Approx(5.0).epsilon(1e-15));
  REQUIRE(da(0) == Approx(0.6).epsilon(3e-7));
  REQUIRE(db(0) == Approx(0.8).epsilon(3e-7));
}

TEST_CASE("optim.hpp: the warmup + inverse-square-root schedule by hand", "[train][optim]") {
  // d_model 512, warmup 4000 (the paper): the peak at step 4000 is
  // 512^-0.5 * 4000^-0.5 = 1 / sqrt(2048000) = 6.9877124e-4.
  const double peak = attend::warmup_inverse_sqrt_lr(4000, 512, 4000);
  REQUIRE(peak == Approx(1.0 / std::sqrt(2048000.0)).epsilon(1e-15));
  REQUIRE(std::abs(peak - 6.9877124e-4) < 1e-11);
  // Linear warmup: step 1 is peak / 4000, step 2000 half the peak.
  REQUIRE(attend::warmup_inverse_sqrt_lr(1, 512, 4000) == Approx(peak / 4000).epsilon(1e-14));
  REQUIRE(attend::warmup_inverse_sqrt_lr(2000, 512, 4000) == Approx(peak / 2).epsilon(1e-14));
  // Then 1 / sqrt(step): 4x the steps, half the rate; factor scales everything.
  REQUIRE(attend::warmup_inverse_sqrt_lr(16000, 512, 4000) == Approx(peak / 2).epsilon(1e-14));
  REQUIRE(attend::warmup_inverse_sqrt_lr(16000, 512, 4000, 2.0) == Approx(peak).epsilon(1e-14));
  // Driving an optimizer.
  attend::Adam<double> adam;
  adam.set_lr(attend::warmup_inverse_sqrt_lr(10, 64, 100));
  REQUIRE(adam.lr() == Approx(10.0 / (8.0 * 1000.0)).epsilon(1e-14));  // 64^-0.5 * 10 * 100^-1.5
  REQUIRE_THROWS_AS(attend::warmup_inverse_sqrt_lr(0, 512), attend::value_error);
  REQUIRE_THROWS_WITH(attend::warmup_inverse_sqrt_lr(0, 512),
                      "warmup_inverse_sqrt_lr: step is 0, d_model 512 and warmup_steps 4000, "
                      "expected all >= 1");
}

TEST_CASE("optim.hpp: bad options, state of another size and bad clipping are rejected",
          "[train][optim][error]") {
  attend::SGDOptions so;
  so.lr = -1;
  REQUIRE_THROWS_AS(attend::SGD<double>(so), attend::value_error);
  REQUIRE_THROWS_WITH(attend::SGD<double>(so), "SGD: lr is -1, expected >= 0");
  so.lr = 0.1;
  so.nesterov = true;
  REQUIRE_THROWS_WITH(attend::SGD<double>(so),
                      "SGD: nesterov needs momentum > 0 and dampening = 0, got momentum 0 and "
                      "dampening 0");
  attend::AdamOptions ao;
  ao.beta2 = 1.0;
  REQUIRE_THROWS_WITH(attend::Adam<double>(ao), "Adam: beta2 is 1, expected in [0, 1)");
  attend::AdamWOptions wo;
  wo.eps = -1e-8;
  REQUIRE_THROWS_WITH(attend::AdamW<double>(wo), "AdamW: eps is -1e-08, expected >= 0");
  attend::Adam<double> adam;
  REQUIRE_THROWS_WITH(adam.set_lr(std::nan("")), "Adam::set_lr: lr is nan, expected >= 0");

  // The same optimizer on a parameter of the same name but another size.
  Matrix<double> w = Matrix<double>::Ones(2, 3), dw;
  attend::ParameterList<double> first;
  first("w", w, dw);
  adam.step(first);
  Vector<double> v = Vector<double>::Ones(3), dv;
  attend::ParameterList<double> second;
  second("w", v, dv);
  REQUIRE_THROWS_AS(adam.step(second), attend::shape_error);
  REQUIRE_THROWS_WITH(adam.step(second),
                      "Adam::step: state of 'w' has 6 elements, expected 3 (the parameter's size)");

  REQUIRE_THROWS_WITH(attend::clip_grad_norm_(first, -1.0),
                      "clip_grad_norm_: max_norm is -1, expected >= 0");
  REQUIRE_THROWS_WITH(attend::clip_grad_norm_(first, 1.0, 0.0),
                      "clip_grad_norm_: norm_type is 0, expected > 0 or infinity");
  dw(1, 2) = std::numeric_limits<double>::infinity();
  REQUIRE_THROWS_WITH(attend::clip_grad_norm_(first, 1.0, 2.0, true),
                      "clip_grad_norm_: the total norm of the gradients is inf, expected a "
                      "finite value");
}

TEMPLATE_TEST_CASE("loss.hpp: cross-entropy loss and gradient equal PyTorch's", "[train][grad]",
                   float, double) {
  using S = TestType;
  const bool f32 = std::is_same_v<S, float>;
  Matrix<S> logits(4, 5);
  for (Index i = 0; i < 20; ++i) logits(i / 5, i % 5) = static_cast<S>(ref::kCeLogits[i]);
  const std::vector<std::int64_t> targets(std::begin(ref::kCeTargets), std::end(ref::kCeTargets));
  struct Case {
    const char* name;
    attend::Reduction reduction;
    double smoothing, loss_f32, loss_f64;
    const double *grad_f32, *grad_f64;
  };
  const Case cases[] = {
      {"ce_mean", attend::Reduction::mean, 0.0, ref::k_ce_mean_f32_loss, ref::k_ce_mean_f64_loss,
       ref::k_ce_mean_f32_grad, ref::k_ce_mean_f64_grad},
      {"ce_mean_smooth", attend::Reduction::mean, 0.1, ref::k_ce_mean_smooth_f32_loss,
       ref::k_ce_mean_smooth_f64_loss, ref::k_ce_mean_smooth_f32_grad,
       ref::k_ce_mean_smooth_f64_grad},
      {"ce_sum_smooth", attend::Reduction::sum, 0.25, ref::k_ce_sum_smooth_f32_loss,
       ref::k_ce_sum_smooth_f64_loss, ref::k_ce_sum_smooth_f32_grad, ref::k_ce_sum_smooth_f64_grad},
  };
  for (const Case& c : cases) {
    attend::CrossEntropyOptions opt;
    opt.reduction = c.reduction;
    opt.label_smoothing = c.smoothing;
    attend::CrossEntropyCache<S> cache;
    const S loss = attend::cross_entropy_forward(logits, targets, opt, &cache);
    // A log-softmax and a sum over <= 20 terms in each dtype: float a few ulps of O(1).
    REQUIRE(double(loss) == Approx(f32 ? c.loss_f32 : c.loss_f64).epsilon(f32 ? 2e-6 : 1e-13));
    const Matrix<S> dx = attend::cross_entropy_backward(cache);
    Vector<double> got(20);
    for (Index i = 0; i < 20; ++i) got(i) = static_cast<double>(dx(i / 5, i % 5));
    require_parity<S>(got, f32 ? c.grad_f32 : c.grad_f64, c.name);
  }
}

// ========================================================================================
// scaled_dot_product.hpp: backward
// ========================================================================================

TEMPLATE_TEST_CASE("scaled_dot_product.hpp: backward of a 1-query, 2-key example by hand",
                   "[train][grad]", float, double) {
  using S = TestType;
  // q = [1], k = [0; 0]: equal scores, W = [0.5, 0.5]; v = [1; 3]: out = 2.
  const Matrix<S> q = mat<S>(1, 1, {1}), k = mat<S>(2, 1, {0, 0}), v = mat<S>(2, 1, {1, 3});
  attend::AttentionCache<S> cache;
  const Matrix<S> out =
      attend::scaled_dot_product_attention_forward(q, k, v, attend::Mask(), std::nullopt, &cache);
  REQUIRE(out(0, 0) == S(2));
  REQUIRE(cache.scale == 1.0);  // 1 / sqrt(d_k = 1)
  const attend::AttentionGrads<S> g =
      attend::scaled_dot_product_attention_backward(q, k, v, cache, mat<S>(1, 1, {1}));
  // dv = W^T d_out = [0.5; 0.5]. dW = d_out v^T = [1, 3]; rowsum(W dW) = 2;
  // dZ = W (dW - 2) = [-0.5, 0.5]; dq = dZ k = 0; dk = dZ^T q = [-0.5; 0.5].
  require_close(g.dv, mat<S>(2, 1, {0.5, 0.5}), 0.0);
  require_close(g.dq, mat<S>(1, 1, {0}), 0.0);
  require_close(g.dk, mat<S>(2, 1, {-0.5, 0.5}), 0.0);
}

TEST_CASE("scaled_dot_product.hpp: backward matches central differences, masked and not",
          "[train][grad]") {
  const Index L = 4, Sk = 5, d_k = 3, d_v = 2;
  Rng rng(21);
  Matrix<double> q = random_matrix(L, d_k, rng, 1.5);
  Matrix<double> k = random_matrix(Sk, d_k, rng, 1.5);
  Matrix<double> v = random_matrix(Sk, d_v, rng);
  const Matrix<double> up = random_matrix(L, d_v, rng);
  attend::BoolMatrix deny = attend::BoolMatrix::Constant(L, Sk, false);
  deny.row(2).setConstant(true);  // query 2 sees no key: a fully masked row
  deny(0, 4) = deny(1, 0) = deny(3, 3) = true;
  Matrix<double> bias = random_matrix(L, Sk, rng);  // an additive mask with one -inf
  bias(1, 2) = -std::numeric_limits<double>::infinity();
  struct Case {
    const char* name;
    attend::Mask mask;
    std::optional<double> scale;
  };
  const Case cases[] = {
      {"no mask", attend::Mask(), std::nullopt},
      {"causal", attend::Mask::causal(), std::nullopt},
      {"deny with a fully masked row", attend::Mask::deny(deny), std::nullopt},
      {"additive with -inf, scale 0.7", attend::Mask::additive(bias), 0.7},
      {"key padding (last two keys)", attend::Mask::key_padding_lengths({3}, Sk), std::nullopt},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    attend::AttentionCache<double> cache;
    (void)attend::scaled_dot_product_attention_forward(q, k, v, c.mask, c.scale, &cache);
    const attend::AttentionGrads<double> g =
        attend::scaled_dot_product_attention_backward(q, k, v, cache, up);
    const auto loss = [&] {
      return dot_loss(attend::scaled_dot_product_attention(q, k, v, c.mask, c.scale), up);
    };
    require_gradient(q, g.dq, loss);
    require_gradient(k, g.dk, loss);
    require_gradient(v, g.dv, loss);
  }
  // Masked pairs pass no gradient: with the deny mask, query 2's dq row is exactly 0; with
  // key padding, the padded keys' dk and dv rows are exactly 0.
  attend::AttentionCache<double> cache;
  (void)attend::scaled_dot_product_attention_forward(q, k, v, attend::Mask::deny(deny),
                                                     std::nullopt, &cache);
  REQUIRE(cache.weights.row(2).isZero(0));
  auto g = attend::scaled_dot_product_attention_backward(q, k, v, cache, up);
  REQUIRE(g.dq.row(2).isZero(0));
  (void)attend::scaled_dot_product_attention_forward(
      q, k, v, attend::Mask::key_padding_lengths({3}, Sk), std::nullopt, &cache);
  g = attend::scaled_dot_product_attention_backward(q, k, v, cache, up);
  REQUIRE(g.dk.bottomRows(2).isZero(0));
  REQUIRE(g.dv.bottomRows(2).isZero(0));
}

TEMPLATE_TEST_CASE("scaled_dot_product.hpp: backward in float agrees with double",
                   "[train][grad][property]", float, double) {
  using S = TestType;
  Rng rng(8);
  const Matrix<double> q = random_matrix(6, 4, rng), k = random_matrix(7, 4, rng),
                       v = random_matrix(7, 3, rng), up = random_matrix(6, 3, rng);
  attend::AttentionCache<double> cd;
  (void)attend::scaled_dot_product_attention_forward(q, k, v, attend::Mask::causal(), {}, &cd);
  const auto want = attend::scaled_dot_product_attention_backward(q, k, v, cd, up);
  attend::AttentionCache<S> cs;
  const Matrix<S> qs = q.cast<S>(), ks = k.cast<S>(), vs = v.cast<S>(), us = up.cast<S>();
  (void)attend::scaled_dot_product_attention_forward(qs, ks, vs, attend::Mask::causal(), {}, &cs);
  const auto got = attend::scaled_dot_product_attention_backward(qs, ks, vs, cs, us);
  // Products of O(1) values over <= 7 terms: float a few ulps (1.2e-7) times ~10.
  const double tol = std::is_same_v<S, float> ? 2e-6 : 1e-14;
  require_close(got.dq, want.dq, tol);
  require_close(got.dk, want.dk, tol);
  require_close(got.dv, want.dv, tol);
}

TEMPLATE_TEST_CASE("scaled_dot_product.hpp: backward rejects inconsistent shapes", "[train][error]",
                   float, double) {
  using S = TestType;
  const Matrix<S> q = Matrix<S>::Zero(2, 3), k = Matrix<S>::Zero(4, 3), v = Matrix<S>::Zero(4, 5);
  attend::AttentionCache<S> cache;
  cache.weights = Matrix<S>::Zero(2, 4);
  const Matrix<S> d_out = Matrix<S>::Zero(2, 5);
  const std::string who = "scaled_dot_product_attention_backward: ";
  REQUIRE_THROWS_AS(attend::scaled_dot_product_attention_backward(q, k, v, cache,
                                                                  Matrix<S>(Matrix<S>::Zero(2, 4))),
                    attend::shape_error);
  REQUIRE_THROWS_WITH(attend::scaled_dot_product_attention_backward(
                          q, k, v, cache, Matrix<S>(Matrix<S>::Zero(2, 4))),
                      who + "d_out is [2, 4], expected [2, 5] ([L, d_v])");
  REQUIRE_THROWS_WITH(attend::scaled_dot_product_attention_backward(
                          q, Matrix<S>(Matrix<S>::Zero(4, 2)), v, cache, d_out),
                      who + "key is [4, 2], expected [S, 3] (d_k of query)");
  REQUIRE_THROWS_WITH(attend::scaled_dot_product_attention_backward(
                          q, k, Matrix<S>(Matrix<S>::Zero(3, 5)), cache, d_out),
                      who + "value is [3, 5], expected [4, d_v] (S of key)");
  cache.weights = Matrix<S>::Zero(2, 3);
  REQUIRE_THROWS_WITH(attend::scaled_dot_product_attention_backward(q, k, v, cache, d_out),
                      who + "cache.weights is [2, 3], expected [2, 4] ([L, S] of query and key)");
}

// ========================================================================================
// training: a loss that falls, determinism, checkpoints
// ========================================================================================

namespace {

/// Three 2-D Gaussian blobs (centres on a circle of radius 2, sd 0.6), 20 points each.
template <typename S>
void make_blobs(std::uint64_t seed, Matrix<S>& x, std::vector<std::int64_t>& y) {
  Rng rng(seed);
  const Index n = 60;
  x.resize(n, 2);
  y.resize(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) {
    const std::int64_t c = i % 3;
    const double angle = 2.0943951023931953 * static_cast<double>(c);  // 2 pi / 3 apart
    x(i, 0) = static_cast<S>(2.0 * std::cos(angle) + 0.6 * rng.normal());
    x(i, 1) = static_cast<S>(2.0 * std::sin(angle) + 0.6 * rng.normal());
    y[static_cast<std::size_t>(i)] = c;
  }
}

/// A 2 -> 16 -> 3 ReLU classifier trained with cross-entropy.
template <typename S>
struct Mlp {
  attend::Linear<S> fc1, fc2;
  attend::LinearGrad<S> d_fc1, d_fc2;

  explicit Mlp(std::uint64_t seed) : fc1(2, 16, true, seed), fc2(16, 3, true, seed + 1) {}

  template <typename Visit>
  void named_parameters(Visit&& visit) {
    attend::named_parameters(fc1, d_fc1, visit, "fc1.");
    attend::named_parameters(fc2, d_fc2, visit, "fc2.");
  }

  /// The mean cross-entropy of the batch; accumulates every gradient.
  S loss_and_backward(const Matrix<S>& x, const std::vector<std::int64_t>& y) {
    const Matrix<S> h = fc1.forward(x);  // [N, 16]
    const Matrix<S> a = attend::relu(h);
    const Matrix<S> logits = fc2.forward(a);  // [N, 3]
    attend::CrossEntropyCache<S> cache;
    const S loss = attend::cross_entropy_forward(logits, y, {}, &cache);
    const Matrix<S> d_logits = attend::cross_entropy_backward(cache);
    const Matrix<S> da = fc2.backward(a, d_logits, d_fc2.d_weight, d_fc2.d_bias);
    fc1.backward(x, attend::relu_backward(h, da), d_fc1.d_weight, d_fc1.d_bias);
    return loss;
  }
};

/// `steps` full-batch steps: zero_grad, loss and backward, clipping at norm 5, update.
template <typename S, typename Opt>
std::vector<double> train(Mlp<S>& model, Opt& opt, int steps, std::uint64_t data_seed = 1) {
  Matrix<S> x;
  std::vector<std::int64_t> y;
  make_blobs(data_seed, x, y);
  const attend::ParameterList<S> params = attend::collect_parameters<S>(model);
  std::vector<double> losses;
  for (int t = 0; t < steps; ++t) {
    attend::zero_grad(params);
    losses.push_back(static_cast<double>(model.loss_and_backward(x, y)));
    attend::clip_grad_norm_(params, 5.0);
    opt.step(params);
  }
  return losses;
}

/// All parameters, flattened in list order (for bitwise comparisons).
template <typename S>
Vector<S> flat_parameters(Mlp<S>& model) {
  const attend::ParameterList<S> params = attend::collect_parameters<S>(model);
  Vector<S> out(params.numel());
  Index at = 0;
  for (const auto& p : params) {
    out.segment(at, p.size()) = p.value();
    at += p.size();
  }
  return out;
}

attend::AdamOptions classifier_adam() {
  attend::AdamOptions o;
  o.lr = 0.05;
  o.amsgrad = true;  // exercises every state buffer in the checkpoint tests
  return o;
}

}  // namespace

TEMPLATE_TEST_CASE("train: an MLP classifier's loss falls under Adam, and SGD fits a line",
                   "[train][optim]", float, double) {
  using S = TestType;
  Mlp<S> model(3);
  attend::Adam<S> adam(classifier_adam());
  const std::vector<double> losses = train(model, adam, 150);
  // Three classes start near chance, log 3 = 1.0986; the blobs are well separated (centres
  // 3.5 apart, sd 0.6), so a trained classifier reaches a small loss.
  INFO("first loss " << losses.front() << ", last " << losses.back());
  REQUIRE(losses.front() > 0.7);
  REQUIRE(losses.back() < 0.1);
  REQUIRE(losses.back() < losses.front() / 10);

  // Linear regression y = x w^T + b with SGD + momentum on MSE recovers w and b.
  Rng rng(4);
  Matrix<S> x(64, 3);
  attend::fill_uniform(x, 1.0, rng);
  const Matrix<S> w_true = mat<S>(1, 3, {1.5, -2.0, 0.5});
  const Matrix<S> y = (x * w_true.transpose()).array() + S(0.25);
  attend::Linear<S> lin(3, 1, true, 9);
  attend::LinearGrad<S> d_lin;
  attend::ParameterList<S> params;
  attend::named_parameters(lin, d_lin, params);
  attend::SGDOptions so;
  so.lr = 0.1;
  so.momentum = 0.9;
  attend::SGD<S> sgd(so);
  const S first = attend::mse_loss_forward(lin.forward(x), y);
  for (int t = 0; t < 300; ++t) {
    attend::zero_grad(params);
    const Matrix<S> pred = lin.forward(x);
    lin.backward(x, attend::mse_loss_backward(pred, y), d_lin.d_weight, d_lin.d_bias);
    sgd.step(params);
  }
  const S last = attend::mse_loss_forward(lin.forward(x), y);
  INFO("mse " << first << " -> " << last);
  REQUIRE(last < S(1e-6) * first);
  // Noise-free data: the fit converges to the true parameters (float: to ~1e-5).
  require_close(lin.weight, w_true, 1e-3);
  REQUIRE(std::abs(double(lin.bias(0)) - 0.25) < 1e-3);
}

TEMPLATE_TEST_CASE("train: the same seed gives bit-identical weights", "[train][optim]", float,
                   double) {
  using S = TestType;
  Mlp<S> a(11), b(11), c(12);
  attend::Adam<S> oa(classifier_adam()), ob(classifier_adam()), oc(classifier_adam());
  (void)train(a, oa, 40);
  (void)train(b, ob, 40);
  (void)train(c, oc, 40);
  REQUIRE(flat_parameters(a) == flat_parameters(b));  // exact, not approximate
  REQUIRE(flat_parameters(a) != flat_parameters(c));  // another seed, another model
}

TEMPLATE_TEST_CASE("checkpoint.hpp: parameters round-trip bit for bit, by PyTorch names",
                   "[train][checkpoint]", float, double) {
  using S = TestType;
  Mlp<S> trained(5);
  attend::Adam<S> opt(classifier_adam());
  (void)train(trained, opt, 10);
  const attend::ParameterList<S> params = attend::collect_parameters<S>(trained);
  const std::string path =
      std::string("train_params_") + (std::is_same_v<S, float> ? "f32" : "f64") + ".safetensors";
  attend::save_parameters(path, params);
  const attend::SafeTensors st = attend::SafeTensors::load(path);
  std::remove(path.c_str());
  // A PyTorch state dict: nn.Sequential-like names, PyTorch shapes, the model's dtype.
  REQUIRE(st.names() ==
          std::vector<std::string>{"fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"});
  REQUIRE(st.shape("fc1.weight") == attend::Shape{16, 2});
  REQUIRE(st.shape("fc2.bias") == attend::Shape{3});
  REQUIRE(st.dtype("fc1.weight") ==
          (std::is_same_v<S, float> ? attend::DType::F32 : attend::DType::F64));
  Mlp<S> fresh(99);
  REQUIRE(flat_parameters(fresh) != flat_parameters(trained));
  attend::load_parameters(st, attend::collect_parameters<S>(fresh));
  REQUIRE(flat_parameters(fresh) == flat_parameters(trained));
}

TEMPLATE_TEST_CASE(
    "checkpoint.hpp: resuming from saved parameters and optimizer state equals "
    "training on",
    "[train][checkpoint]", float, double) {
  using S = TestType;
  const auto resume = [](auto make_optimizer, const char* tag) {
    Mlp<S> model(7);
    auto opt = make_optimizer();
    (void)train(model, opt, 15);
    // Checkpoint in memory (the file functions only add fopen/fwrite around these).
    const attend::ParameterList<S> params = attend::collect_parameters<S>(model);
    attend::SafeTensorsWriter pw, ow;
    attend::add_parameters(pw, params);
    attend::add_optimizer_state(ow, opt, params);
    const attend::SafeTensors saved_params = attend::SafeTensors::parse(pw.to_bytes(), "params");
    const attend::SafeTensors saved_opt = attend::SafeTensors::parse(ow.to_bytes(), "optimizer");
    (void)train(model, opt, 15);  // the uninterrupted run

    Mlp<S> other(8);
    auto other_opt = make_optimizer();
    other_opt.set_lr(123.0);  // overwritten by the saved hyperparameters
    const attend::ParameterList<S> other_params = attend::collect_parameters<S>(other);
    attend::load_parameters(saved_params, other_params);
    attend::load_optimizer(saved_opt, other_opt, other_params);
    REQUIRE(other_opt.lr() == opt.lr());
    (void)train(other, other_opt, 15);
    INFO(tag);
    REQUIRE(flat_parameters(other) == flat_parameters(model));  // bit for bit
  };
  resume([] { return attend::Adam<S>(classifier_adam()); }, "Adam amsgrad");
  resume(
      [] {
        attend::AdamWOptions o;
        o.lr = 0.02;
        return attend::AdamW<S>(o);
      },
      "AdamW");
  resume(
      [] {
        attend::SGDOptions o;
        o.lr = 0.05;
        o.momentum = 0.9;
        o.nesterov = true;
        return attend::SGD<S>(o);
      },
      "SGD nesterov");
}

TEST_CASE("checkpoint.hpp: the optimizer file's names and metadata", "[train][checkpoint]") {
  Mlp<double> model(2);
  attend::Adam<double> opt(classifier_adam());
  (void)train(model, opt, 3);
  const attend::ParameterList<double> params = attend::collect_parameters<double>(model);
  const std::string path = "train_optimizer.safetensors";
  attend::save_optimizer(path, opt, params);
  const attend::SafeTensors st = attend::SafeTensors::load(path);
  std::remove(path.c_str());
  REQUIRE(st.contains("state.fc1.weight.exp_avg"));
  REQUIRE(st.contains("state.fc2.bias.max_exp_avg_sq"));
  REQUIRE(st.shape("state.fc1.weight.exp_avg_sq") == attend::Shape{16, 2});
  REQUIRE(st.dtype("state.fc1.bias.step") == attend::DType::I64);
  REQUIRE(st.shape("state.fc1.bias.step").empty());
  REQUIRE(st.get<std::int64_t>("state.fc1.bias.step").data()[0] == 3);
  REQUIRE(st.names().size() == 4 * 4);  // 4 parameters x (step, exp_avg, exp_avg_sq, max)
  REQUIRE(st.metadata().at("optimizer") == "Adam");
  REQUIRE(st.metadata().at("param_names") ==
          R"(["fc1.weight","fc1.bias","fc2.weight","fc2.bias"])");
  REQUIRE(st.metadata().at("param_groups") ==
          R"([{"amsgrad":true,"betas":[0.9,0.999],"eps":1e-08,"lr":0.05,"maximize":false,)"
          R"("params":[0,1,2,3],"weight_decay":0.0}])");
}

TEMPLATE_TEST_CASE("checkpoint.hpp: bad files are rejected and change nothing",
                   "[train][checkpoint][error]", float, double) {
  using S = TestType;
  Mlp<S> model(1);
  const attend::ParameterList<S> params = attend::collect_parameters<S>(model);
  const Vector<S> before = flat_parameters(model);
  const auto file = [](const std::map<std::string, Tensor<S>>& tensors) {
    attend::SafeTensorsWriter w;
    for (const auto& kv : tensors) w.add(kv.first, kv.second);
    return attend::SafeTensors::parse(w.to_bytes(), "ckpt");
  };
  std::map<std::string, Tensor<S>> good{{"fc1.weight", Tensor<S>({16, 2}, S(1))},
                                        {"fc1.bias", Tensor<S>({16}, S(1))},
                                        {"fc2.weight", Tensor<S>({3, 16}, S(1))},
                                        {"fc2.bias", Tensor<S>({3}, S(1))}};
  auto missing = good;
  missing.erase("fc2.bias");
  REQUIRE_THROWS_AS(attend::load_parameters(file(missing), params), attend::index_error);
  REQUIRE_THROWS_WITH(attend::load_parameters(file(missing), params),
                      "load_parameters: no parameter named 'fc2.bias' in ckpt");
  auto extra = good;
  extra.emplace("fc3.weight", Tensor<S>({1, 1}));
  REQUIRE_THROWS_WITH(attend::load_parameters(file(extra), params),
                      "load_parameters: unexpected tensor 'fc3.weight' in ckpt (no parameter of "
                      "that name)");
  auto wrong = good;
  wrong["fc2.weight"] = Tensor<S>({16, 3});
  REQUIRE_THROWS_AS(attend::load_parameters(file(wrong), params), attend::shape_error);
  REQUIRE_THROWS_WITH(attend::load_parameters(file(wrong), params),
                      "load_parameters: 'fc2.weight' in ckpt is [16, 3], expected [3, 16]");
  REQUIRE(flat_parameters(model) == before);  // nothing was loaded by the failed calls
  attend::load_parameters(file(extra), params, /*strict=*/false);
  REQUIRE(flat_parameters(model) == Vector<S>::Ones(before.size()));

  // Optimizer state of another optimizer, or with an unknown tensor.
  attend::Adam<S> adam;
  attend::SGDOptions so;
  so.lr = 0.1;
  so.momentum = 0.5;
  attend::SGD<S> sgd(so);
  sgd.step(params);
  attend::SafeTensorsWriter w;
  attend::add_optimizer_state(w, sgd, params);
  const attend::SafeTensors sgd_file = attend::SafeTensors::parse(w.to_bytes(), "opt");
  REQUIRE_THROWS_AS(attend::load_optimizer(sgd_file, adam, params), attend::value_error);
  REQUIRE_THROWS_WITH(attend::load_optimizer(sgd_file, adam, params),
                      "load_optimizer: opt holds SGD state, expected Adam");
  Mlp<S> small(1);
  attend::ParameterList<S> only_fc1;
  attend::named_parameters(small.fc1, small.d_fc1, only_fc1, "fc1.");
  attend::SGD<S> sgd2(so);
  REQUIRE_THROWS_AS(attend::load_optimizer(sgd_file, sgd2, only_fc1), attend::index_error);
  REQUIRE_THROWS_WITH(attend::load_optimizer(sgd_file, sgd2, only_fc1),
                      "load_optimizer: unexpected tensor 'state.fc2.bias.momentum_buffer' in opt "
                      "(not a known state key of a parameter in params)");
  REQUIRE(sgd2.state().empty());
  REQUIRE_THROWS_AS(attend::load_optimizer(file(good), sgd2, params), attend::format_error);
  REQUIRE_THROWS_WITH(attend::load_optimizer(file(good), sgd2, params),
                      "load_optimizer: ckpt has no 'optimizer' metadata");
}
