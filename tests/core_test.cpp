// SPDX-License-Identifier: MIT
// Tests of core/: the Eigen aliases, typed errors, the owning Tensor and its views, and the
// seeded Rng with its init helpers.
#include "attend/core/errors.hpp"
#include "attend/core/random.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"

#include <Eigen/Core>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using attend::Index;
using attend::Matrix;
using attend::Shape;
using attend::Tensor;

/// A tensor holding 0, 1, 2, ... in row-major order.
template <typename T>
Tensor<T> iota(const Shape& shape) {
  Tensor<T> t(shape);
  for (Index i = 0; i < t.size(); ++i) t.data()[i] = static_cast<T>(i);
  return t;
}

// Sample sizes and bounds for the Rng statistics; each bound is >= 5 standard errors, so
// a correct generator fails with probability < 1e-6 (and the streams are fixed anyway).
constexpr int kDraws = 20000;
/// Mean of U[0, 1): standard error sqrt(1/12 / 20000) = 0.002.
constexpr double kUniformMeanTol = 0.01;
/// Mean of N(0, 1): standard error 1/sqrt(20000) = 0.007.
constexpr double kNormalMeanTol = 0.035;
/// Variance of N(0, 1): standard error sqrt(2 / 20000) = 0.01.
constexpr double kNormalVarTol = 0.05;

}  // namespace

// ---- types and errors ------------------------------------------------------------------

TEST_CASE("types.hpp: aliases are row-major and only float/double are supported", "[core]") {
  STATIC_REQUIRE(attend::Matrix<float>::IsRowMajor);
  STATIC_REQUIRE(attend::BoolMatrix::IsRowMajor);
  STATIC_REQUIRE(attend::RowVector<double>::RowsAtCompileTime == 1);
  STATIC_REQUIRE(attend::Vector<double>::ColsAtCompileTime == 1);
  STATIC_REQUIRE(std::is_same_v<attend::Index, Eigen::Index>);
  STATIC_REQUIRE(attend::is_supported_scalar_v<float>);
  STATIC_REQUIRE(attend::is_supported_scalar_v<double>);
  STATIC_REQUIRE_FALSE(attend::is_supported_scalar_v<int>);
  STATIC_REQUIRE_FALSE(attend::is_supported_scalar_v<long double>);

  // A head (column block of a row-major [L, d_model] matrix) binds to MatrixCRef without
  // a copy: the Ref points into the original storage.
  Matrix<double> x = Matrix<double>::Zero(3, 8);
  const attend::MatrixCRef<double> head = x.middleCols(2, 2);
  CHECK(head.data() == x.data() + 2);
  CHECK(head.outerStride() == 8);
}

TEST_CASE("errors.hpp: typed errors derive from attend::error and keep the message", "[core]") {
  STATIC_REQUIRE(std::is_base_of_v<std::runtime_error, attend::error>);
  STATIC_REQUIRE(std::is_base_of_v<attend::error, attend::shape_error>);
  STATIC_REQUIRE(std::is_base_of_v<attend::error, attend::index_error>);
  STATIC_REQUIRE(std::is_base_of_v<attend::error, attend::value_error>);
  STATIC_REQUIRE(std::is_base_of_v<attend::error, attend::format_error>);
  REQUIRE_THROWS_AS(throw attend::shape_error("f: x is [1], expected [2]"), attend::error);
  REQUIRE_THROWS_WITH(throw attend::index_error("f: id 3"), "f: id 3");

  CHECK(attend::detail::shape_string({7, 12}) == "[7, 12]");
  CHECK(attend::detail::shape_string(Shape{}) == "[]");
  CHECK(attend::detail::shape_string(Shape{2, 0, 5}) == "[2, 0, 5]");
  CHECK(attend::detail::shape_string(std::vector<int>{-1}) == "[-1]");
  CHECK(attend::detail::matrix_shape(Matrix<float>(3, 4)) == "[3, 4]");
}

// ---- Tensor ----------------------------------------------------------------------------

TEMPLATE_TEST_CASE("tensor.hpp: construction, shape queries and dim(-1)", "[core]", float, double) {
  using S = TestType;
  const Tensor<S> empty;
  CHECK(empty.rank() == 0);
  CHECK(empty.size() == 0);
  CHECK(empty.empty());
  CHECK(Tensor<S>({2, 0, 3}).empty());  // a zero extent holds no elements
  CHECK_FALSE(Tensor<S>({1}).empty());

  const Tensor<S> t({2, 3, 4}, S(1.5));
  CHECK(t.shape() == Shape{2, 3, 4});
  CHECK(t.rank() == 3);
  CHECK(t.size() == 24);
  CHECK(t.dim(0) == 2);
  CHECK(t.dim(2) == 4);
  CHECK(t.dim(-1) == 4);
  CHECK(t.dim(-2) == 3);
  CHECK(t.dim(-3) == 2);
  CHECK((t.flat().array() == S(1.5)).all());

  const Tensor<S> zeros({2, 2});
  CHECK((zeros.flat().array() == S(0)).all());

  const Tensor<S> none({0, 3});  // zero extents are fine
  CHECK(none.rank() == 2);
  CHECK(none.size() == 0);
  CHECK(none.dim(-1) == 3);

  // Values are row-major: element (i, j) of [2, 3] is values[i * 3 + j].
  const Tensor<S> v({2, 3}, std::vector<S>{0, 1, 2, 3, 4, 5});
  CHECK(v(0, 0) == S(0));
  CHECK(v(0, 2) == S(2));
  CHECK(v(1, 0) == S(3));
  CHECK(v(1, 2) == S(5));
  CHECK(v.data()[4] == S(4));

  // Rank 0 from an empty shape holds one element.
  const Tensor<S> scalar(Shape{}, std::vector<S>{7});
  CHECK(scalar.rank() == 0);
  CHECK(scalar.size() == 1);
  CHECK(scalar() == S(7));
}

TEMPLATE_TEST_CASE("tensor.hpp: element, batch and head views share the tensor's storage", "[core]",
                   float, double) {
  using S = TestType;
  // [B, L, d] = [2, 3, 4]: element (b, i, j) sits at flat (b * 3 + i) * 4 + j.
  Tensor<S> t = iota<S>({2, 3, 4});
  CHECK(t(1, 2, 3) == S(23));
  CHECK(t(1, 0, 1) == S(13));
  const auto seq1 = t[1];  // [3, 4] map of sequence 1
  REQUIRE(seq1.rows() == 3);
  REQUIRE(seq1.cols() == 4);
  CHECK(seq1(0, 0) == S(12));
  CHECK(seq1(2, 1) == S(21));
  CHECK(seq1.data() == t.data() + 12);
  CHECK(t.matrix(1).data() == seq1.data());

  // Writing through a view writes the tensor.
  t[0](1, 2) = S(-5);
  CHECK(t(0, 1, 2) == S(-5));
  t.matrix(1).row(0).setConstant(S(9));
  CHECK(t(1, 0, 3) == S(9));
  CHECK(t(1, 1, 0) == S(16));

  // [B, H, L, d] = [2, 3, 2, 2]: matrix(b, h) starts at ((b * 3 + h) * 2) * 2.
  Tensor<S> u = iota<S>({2, 3, 2, 2});
  for (Index b = 0; b < 2; ++b) {
    for (Index h = 0; h < 3; ++h) {
      const auto m = u.matrix(b, h);
      REQUIRE(m.rows() == 2);
      REQUIRE(m.cols() == 2);
      CHECK(m.data() == u.data() + (b * 3 + h) * 4);
      CHECK(m(1, 0) == S((b * 3 + h) * 4 + 2));
      CHECK(m(1, 1) == u(b, h, 1, 1));
    }
  }

  // as_matrix: [prod(leading), last] over the same storage.
  const Tensor<S>& ct = u;
  const auto all = ct.as_matrix();
  REQUIRE(all.rows() == 12);
  REQUIRE(all.cols() == 2);
  CHECK(all.data() == u.data());
  CHECK(all(5, 1) == S(11));
  const auto row = Tensor<S>({5}, S(2)).as_matrix();  // rank 1 -> [1, n]
  CHECK(row.rows() == 1);
  CHECK(row.cols() == 5);
}

TEMPLATE_TEST_CASE("tensor.hpp: reshaped, cast, fill and from_matrix", "[core]", float, double) {
  using S = TestType;
  const Tensor<S> t = iota<S>({2, 3, 4});
  const Tensor<S> r = t.reshaped({6, 4});
  CHECK(r.shape() == Shape{6, 4});
  CHECK(r.flat() == t.flat());
  CHECK(r(5, 3) == S(23));
  const Tensor<S> r4 = t.reshaped({1, 2, 3, 4});
  CHECK(r4.matrix(0, 1)(2, 3) == t(1, 2, 3));

  const Tensor<double> d = t.template cast<double>();
  CHECK(d.shape() == t.shape());
  CHECK(d(1, 2, 3) == 23.0);
  const Tensor<std::int64_t> ids({3}, std::vector<std::int64_t>{4, -1, 2});
  const Tensor<S> as_float = ids.cast<S>();
  CHECK(as_float(1) == S(-1));
  const Tensor<bool> flags({2}, std::vector<bool>{true, false});
  const Tensor<S> flag_values = flags.cast<S>();
  CHECK(flag_values(0) == S(1));
  CHECK(flag_values(1) == S(0));

  Tensor<S> f({2, 2}, S(3));
  f.fill(S(-0.5));
  CHECK((f.flat().array() == S(-0.5)).all());

  Matrix<double> m(2, 3);
  m << 1, 2, 3, 4, 5, 6;
  const Tensor<S> fm = Tensor<S>::from_matrix(m);
  CHECK(fm.shape() == Shape{2, 3});
  CHECK(fm(1, 0) == S(4));
  CHECK(fm.as_matrix() == m.cast<S>());

  const Tensor<bool> b({2, 2}, true);
  CHECK(b.flat().all());
  const Tensor<std::int64_t> z({3});
  CHECK((z.flat().array() == 0).all());
}

TEST_CASE("tensor.hpp: error messages name the call and the shapes", "[core][error]") {
  REQUIRE_THROWS_AS(Tensor<float>({2, -1}), attend::value_error);
  REQUIRE_THROWS_WITH(Tensor<float>({2, -1}), "Tensor: negative extent in shape [2, -1]");

  REQUIRE_THROWS_AS(Tensor<double>({2, 3}, std::vector<double>{1, 2, 3, 4, 5}),
                    attend::shape_error);
  REQUIRE_THROWS_WITH(Tensor<double>({2, 3}, std::vector<double>{1, 2, 3, 4, 5}),
                      "Tensor: shape [2, 3] needs 6 values, got 5");

  const Index big = Index(1) << 40;
  REQUIRE_THROWS_AS(Tensor<float>({big, big}), attend::value_error);
  REQUIRE_THROWS_WITH(Tensor<float>({big, big}),
                      "Tensor: shape [1099511627776, 1099511627776] has too many elements");

  const Tensor<float> t({2, 3, 4});
  REQUIRE_THROWS_AS(t.dim(3), attend::index_error);
  REQUIRE_THROWS_WITH(t.dim(3), "Tensor::dim: dimension 3 out of range for rank 3");
  REQUIRE_THROWS_WITH(t.dim(-4), "Tensor::dim: dimension -4 out of range for rank 3");
  REQUIRE_THROWS_WITH(Tensor<float>().dim(-1), "Tensor::dim: dimension -1 out of range for rank 0");

  REQUIRE_THROWS_AS(t.reshaped({5, 5}), attend::shape_error);
  REQUIRE_THROWS_WITH(t.reshaped({5, 5}), "Tensor::reshaped: cannot view [2, 3, 4] as [5, 5]");
  // (-4) * (-6) = 24 would match the element count: negative extents are caught first.
  REQUIRE_THROWS_AS(t.reshaped({-4, -6}), attend::value_error);
  REQUIRE_THROWS_WITH(t.reshaped({-4, -6}), "Tensor::reshaped: negative extent in shape [-4, -6]");
}

// ---- Rng -------------------------------------------------------------------------------

TEST_CASE("random.hpp: Rng streams are deterministic and platform independent", "[core]") {
  // The C++ standard fixes mt19937_64's output ([rand.predef]): seeded with its default
  // 5489, the first value is 14514284786278117030 and the 10000th is 9981545732273789042.
  attend::Rng std_seed(5489);
  CHECK(std_seed.next() == 14514284786278117030ULL);
  for (int i = 2; i < 10000; ++i) std_seed.next();
  CHECK(std_seed.next() == 9981545732273789042ULL);

  // uniform() is the top 53 bits of one raw draw, scaled by 2^-53.
  attend::Rng a(7), b(7);
  for (int i = 0; i < 5; ++i) {
    CHECK(a.uniform() == static_cast<double>(b.next() >> 11) * 0x1.0p-53);
  }

  // Same seed, same stream (raw, uniform, normal interleaved); other seed, other stream.
  attend::Rng x(42), y(42), z(43);
  bool differs = false;
  for (int i = 0; i < 100; ++i) {
    const std::uint64_t rx = x.next();
    REQUIRE(rx == y.next());
    REQUIRE(x.uniform(-2, 3) == y.uniform(-2, 3));
    REQUIRE(x.normal() == y.normal());
    differs = differs || rx != z.next();
  }
  CHECK(differs);
}

TEST_CASE("random.hpp: uniform and normal draws have the right range and moments", "[core]") {
  attend::Rng rng(2024);
  double sum = 0.0, lo = 1.0, hi = 0.0;
  for (int i = 0; i < kDraws; ++i) {
    const double u = rng.uniform();
    sum += u;
    lo = std::min(lo, u);
    hi = std::max(hi, u);
  }
  CHECK(lo >= 0.0);
  CHECK(hi < 1.0);
  CHECK(std::abs(sum / kDraws - 0.5) < kUniformMeanTol);
  for (int i = 0; i < 1000; ++i) {
    const double u = rng.uniform(-3.0, -1.0);
    REQUIRE(u >= -3.0);
    REQUIRE(u < -1.0);
  }

  double s1 = 0.0, s2 = 0.0;
  for (int i = 0; i < kDraws; ++i) {
    const double n = rng.normal();
    REQUIRE(std::isfinite(n));
    s1 += n;
    s2 += n * n;
  }
  const double mean = s1 / kDraws;
  CHECK(std::abs(mean) < kNormalMeanTol);
  CHECK(std::abs(s2 / kDraws - mean * mean - 1.0) < kNormalVarTol);
}

TEMPLATE_TEST_CASE("random.hpp: fill_uniform, fill_normal and xavier_uniform", "[core]", float,
                   double) {
  using S = TestType;
  attend::Rng r1(5), r2(5);
  Matrix<S> a(6, 10), b(6, 10);
  attend::fill_uniform(a, 0.25, r1);
  attend::fill_uniform(b, 0.25, r2);
  CHECK(a == b);  // same seed, same matrix
  CHECK((a.array().abs() <= S(0.25)).all());
  CHECK(a.cwiseAbs().maxCoeff() > S(0));

  attend::fill_normal(a, r1);
  attend::fill_normal(b, r2);
  CHECK(a == b);
  CHECK(a.allFinite());

  // Xavier for a [fan_out, fan_in] = [6, 10] weight: bound sqrt(6 / 16) = 0.612372435696.
  Matrix<S> w(6, 10);
  attend::xavier_uniform(w, r1);
  CHECK((w.array().abs() <= S(0.612372435696)).all());
  CHECK(w.cwiseAbs().maxCoeff() > S(0.3));  // 60 draws: P(all |w| <= 0.3) = 0.49^60
}
