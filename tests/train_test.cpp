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
#include "attend/ops/activation.hpp"
#include "attend/ops/dropout.hpp"
#include "attend/ops/layer_norm.hpp"
#include "attend/ops/linear.hpp"
#include "attend/ops/softmax.hpp"
#include "attend/train/gradcheck.hpp"
#include "attend/train/parameters.hpp"

#include <Eigen/Core>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using attend::GradCheckOptions;
using attend::Index;
using attend::Matrix;
using attend::Rng;
using attend::Tensor;
using attend::Vector;

// ---- tolerances ------------------------------------------------------------------------

/// Central differences in double with h = 1e-6: truncation O(h^2) ~ 1e-12 and cancellation
/// eps / h ~ 2e-10 relative, so the relative error of a correct backward stays near 1e-10
/// for smooth O(1) functions; 1e-7 leaves three orders of headroom and still catches any
/// wrong term (a wrong term gives errors of 1e-3 and more).
constexpr double kGradTol = 1e-7;

/// Hand values are written with 10 decimals (rounding <= 5e-11); float results carry a few
/// ulps of values up to ~10 (ulp 9.5e-7).
template <typename S>
constexpr double kHandTol = std::is_same_v<S, float> ? 4e-6 : 1e-10;

// ---- helpers ---------------------------------------------------------------------------

template <typename A, typename B>
void require_close(const Eigen::MatrixBase<A>& got, const Eigen::MatrixBase<B>& want, double atol) {
  REQUIRE(got.rows() == want.rows());
  REQUIRE(got.cols() == want.cols());
  double max_err = 0.0;
  Index bad_i = -1, bad_j = -1;
  for (Index i = 0; i < got.rows(); ++i) {
    for (Index j = 0; j < got.cols(); ++j) {
      const double g = static_cast<double>(got(i, j)), w = static_cast<double>(want(i, j));
      const double err = std::abs(g - w);
      max_err = std::max(max_err, std::isnan(err) ? std::numeric_limits<double>::infinity() : err);
      if (!(g == w || err <= atol) && bad_i < 0) {
        bad_i = i;
        bad_j = j;
      }
    }
  }
  std::ostringstream msg;
  msg.precision(17);
  msg << "max |got - want| = " << max_err << " (atol " << atol << ")";
  if (bad_i >= 0) {
    msg << "; first mismatch at [" << bad_i << ", " << bad_j << "]: got " << got(bad_i, bad_j)
        << ", want " << want(bad_i, bad_j);
  }
  INFO(msg.str());
  REQUIRE(bad_i < 0);
}

template <typename S>
Matrix<S> mat(Index rows, Index cols, std::initializer_list<double> values) {
  Matrix<S> m(rows, cols);
  auto it = values.begin();
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < cols; ++j) m(i, j) = static_cast<S>(*it++);
  return m;
}

template <typename S>
Vector<S> vec(std::initializer_list<double> values) {
  Vector<S> v(static_cast<Index>(values.size()));
  Index i = 0;
  for (const double x : values) v(i++) = static_cast<S>(x);
  return v;
}

Matrix<double> random_matrix(Index rows, Index cols, Rng& rng, double bound = 1.0) {
  Matrix<double> m(rows, cols);
  attend::fill_uniform(m, bound, rng);
  return m;
}

/// sum(y * upstream): the scalar loss whose gradient a backward computes from `upstream`.
template <typename A, typename B>
double dot_loss(const Eigen::MatrixBase<A>& y, const Eigen::MatrixBase<B>& upstream) {
  return (y.template cast<double>().array() * upstream.template cast<double>().array()).sum();
}

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
    const Matrix<S> de = attend::layer_norm_backward(ln, norm.weight, dh, &d_norm.d_weight,
                                                     &d_norm.d_bias);
    embed.backward(ids, de, d_embed.d_weight);
  }
};

/// Runs gradcheck and requires its error below kGradTol, printing the worst element.
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

TEST_CASE("gradcheck.hpp: relative error, worst element and a wrong gradient",
          "[train][grad]") {
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
  const Matrix<double> g = attend::numerical_gradient(Eigen::Map<Vector<double>>(storage.data(), 2), f);
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
  REQUIRE_THROWS_WITH(params("w2", w, bad), "ParameterList: grad of 'w2' is [3, 2], expected [2, 3]");
  Tensor<S> t({2, 2, 2}), dt({2, 4});
  REQUIRE_THROWS_WITH(params("t", t, dt), "ParameterList: grad of 't' is [2, 4], expected [2, 2, 2]");
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

TEST_CASE("embedding.hpp: backward matches central differences, scaled and not",
          "[train][grad]") {
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
