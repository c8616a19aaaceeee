// SPDX-License-Identifier: MIT
// Tests of ops/: softmax, masked softmax, log-softmax and their backwards (hand-computed,
// property, gradient and error-path cases).
#include "attend/core/errors.hpp"
#include "attend/core/random.hpp"
#include "attend/core/types.hpp"
#include "attend/ops/softmax.hpp"

#include <Eigen/Core>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "test_util.hpp"

namespace {

using attend::BoolMatrix;
using attend::Index;
using attend::Matrix;

using attend_test::inf;
using attend_test::random_index;
using attend_test::random_matrix;
using attend_test::require_close;

// ---- tolerances ------------------------------------------------------------------------

/// Hand-computed values are written with 10-12 significant digits; float results carry
/// ~1 ulp (6e-8) of rounding per exp/log/division on values in [0, 1].
template <typename S>
constexpr double kHandTol = std::is_same_v<S, float> ? 1e-6 : 1e-10;

/// log-softmax of logits near 1e3: the log-sum-exp ~1002.4 is rounded once, so the error
/// is half an ulp of 1e3 (3e-5 in float, 6e-14 in double).
template <typename S>
constexpr double kLargeLogitTol = std::is_same_v<S, float> ? 1e-4 : 1e-12;

/// Two mathematically equal row computations that differ only in rounding order
/// (shifted logits, log of softmax): a few ulps of O(1) values.
template <typename S>
constexpr double kReorderTol = std::is_same_v<S, float> ? 2e-6 : 1e-13;

/// Central differences in double with h = 1e-6 have truncation error O(h^2) = 1e-12 and
/// round-off O(eps / h) = 1e-10; gradients are O(1).
constexpr double kFiniteDiffTol = 1e-8;
constexpr double kFiniteDiffStep = 1e-6;

// ---- helpers ---------------------------------------------------------------------------

/// A [1, n] row of logits.
template <typename S>
Matrix<S> row(std::initializer_list<S> values) {
  Matrix<S> m(1, static_cast<Index>(values.size()));
  Index j = 0;
  for (const S v : values) m(0, j++) = v;
  return m;
}

}  // namespace

// ---- hand-computed ---------------------------------------------------------------------

TEMPLATE_TEST_CASE("softmax.hpp: softmax of [1, 2, 3] by hand", "[ops]", float, double) {
  using S = TestType;
  // e^0 = 1, e^1 = 2.718281828459, e^2 = 7.389056098931; sum = 11.107337927390
  // y = [1, e, e^2] / sum = [0.090030573170, 0.244728471055, 0.665240955775]
  // (the code shifts by the max 3 first: exp([-2, -1, 0]) / 1.503214724408, same ratios)
  const Matrix<S> want = row<S>({S(0.090030573170), S(0.244728471055), S(0.665240955775)});
  require_close(attend::softmax(row<S>({1, 2, 3})), want, kHandTol<S>);

  // Two rows are independent: row 1 is [3, 2, 1], the mirror image.
  Matrix<S> x(2, 3);
  x << 1, 2, 3, 3, 2, 1;
  Matrix<S> want2(2, 3);
  want2 << want(0, 0), want(0, 1), want(0, 2), want(0, 2), want(0, 1), want(0, 0);
  require_close(attend::softmax(x), want2, kHandTol<S>);
}

TEMPLATE_TEST_CASE("softmax.hpp: a -inf logit gets exactly zero weight", "[ops]", float, double) {
  using S = TestType;
  // [1, -inf, 3]: exp(1 - 3) = e^-2 = 0.135335283237, exp(-inf) = 0, exp(0) = 1;
  // sum = 1.135335283237 -> [0.119202922022, 0, 0.880797077978] (= sigmoid(-2), sigmoid(2))
  const Matrix<S> y = attend::softmax(row<S>({1, -inf<S>, 3}));
  CHECK(y(0, 1) == S(0));
  require_close(y, row<S>({S(0.119202922022), S(0), S(0.880797077978)}), kHandTol<S>);

  // The masked form gives the same numbers: blocked = true is the same as a -inf logit.
  BoolMatrix blocked(1, 3);
  blocked << false, true, false;
  const Matrix<S> ym = attend::softmax(row<S>({1, 42, 3}), blocked);
  CHECK(ym(0, 1) == S(0));
  require_close(ym, y, 0.0);
}

TEMPLATE_TEST_CASE("softmax.hpp: a fully masked row gives zeros, not NaN", "[ops]", float, double) {
  using S = TestType;
  // Row 0 is all -inf (PyTorch gives NaN there); row 1 = [0, 0, 0] -> 1/3 each.
  Matrix<S> x(2, 3);
  x << -inf<S>, -inf<S>, -inf<S>, 0, 0, 0;
  Matrix<S> want(2, 3);
  want << 0, 0, 0, S(1) / 3, S(1) / 3, S(1) / 3;
  const Matrix<S> y = attend::softmax(x);
  require_close(y.row(0), want.row(0), 0.0);
  require_close(y, want, kHandTol<S>);

  // Masked form: a fully blocked row is zeros too, whatever its logits.
  BoolMatrix blocked(2, 3);
  blocked << true, true, true, false, false, false;
  Matrix<S> x2(2, 3);
  x2 << 5, -7, 1e3, 0, 0, 0;
  require_close(attend::softmax(x2, blocked), want, kHandTol<S>);
  require_close(attend::softmax(x2, blocked).row(0), want.row(0), 0.0);

  // log_softmax of a fully masked row: log 0 = -inf everywhere, never NaN.
  const Matrix<S> ly = attend::log_softmax(x);
  require_close(ly.row(0), row<S>({-inf<S>, -inf<S>, -inf<S>}), 0.0);
  // log(1/3) = -1.098612288668
  require_close(ly.row(1), row<S>({S(-1.098612288668), S(-1.098612288668), S(-1.098612288668)}),
                kHandTol<S>);
}

TEMPLATE_TEST_CASE("softmax.hpp: logits of magnitude 1e3 and 1e30 neither overflow nor NaN",
                   "[ops]", float, double) {
  using S = TestType;
  // exp(1000) overflows both float and double; shifting by the max makes
  // softmax([1000, 1001, 1002]) = softmax([-2, -1, 0]) = softmax([1, 2, 3]).
  const Matrix<S> small = row<S>({S(0.090030573170), S(0.244728471055), S(0.665240955775)});
  require_close(attend::softmax(row<S>({1000, 1001, 1002})), small, kHandTol<S>);
  // exp(-1000) underflows to 0 (sum 0 -> 0/0 without the shift); the shift gives
  // softmax([0, -1, -2]) = the mirror of the above.
  require_close(attend::softmax(row<S>({-1000, -1001, -1002})),
                row<S>({small(0, 2), small(0, 1), small(0, 0)}), kHandTol<S>);
  // [1e30, 0, -1e30]: shifted [0, -1e30, -2e30] -> exp = [1, 0, 0] exactly.
  const Matrix<S> y = attend::softmax(row<S>({S(1e30), 0, S(-1e30)}));
  require_close(y, row<S>({1, 0, 0}), 0.0);
  // [1e30, 1e30, -1e30]: [0, 0, -2e30] -> [1, 1, 0] / 2.
  require_close(attend::softmax(row<S>({S(1e30), S(1e30), S(-1e30)})), row<S>({0.5, 0.5, 0}), 0.0);

  // log_softmax([1000, 1001, 1002]) = x - 1002 - log(1 + e^-1 + e^-2)
  //   log(1.503214724408) = 0.407605964444 -> [-2.407605964444, -1.407605964444, -0.407605964444]
  const Matrix<S> log_small = row<S>({S(-2.407605964444), S(-1.407605964444), S(-0.407605964444)});
  require_close(attend::log_softmax(row<S>({1000, 1001, 1002})), log_small, kLargeLogitTol<S>);
  require_close(attend::log_softmax(row<S>({-1002, -1001, -1000})), log_small, kLargeLogitTol<S>);
  // log_softmax([1e30, 0, -1e30]) = x - 1e30 - log(1 + 0 + 0) = [0, -1e30, -2e30]
  const Matrix<S> ly = attend::log_softmax(row<S>({S(1e30), 0, S(-1e30)}));
  REQUIRE(ly.allFinite());
  CHECK(ly(0, 0) == S(0));
  require_close(ly, row<S>({0, S(-1e30), S(-2e30)}), 0.0, kHandTol<S>);
}

TEMPLATE_TEST_CASE("softmax.hpp: log_softmax by hand, with a -inf entry", "[ops]", float, double) {
  using S = TestType;
  // [1, 2, 3]: log(sum e^x) = 3 + log(1.503214724408) = 3.407605964444
  //   -> [-2.407605964444, -1.407605964444, -0.407605964444]
  require_close(attend::log_softmax(row<S>({1, 2, 3})),
                row<S>({S(-2.407605964444), S(-1.407605964444), S(-0.407605964444)}), kHandTol<S>);
  // [1, -inf, 3]: lse = 3 + log(1 + e^-2) = 3 + log(1.135335283237) = 3.126928011043
  //   -> [-2.126928011043, -inf, -0.126928011043]
  const Matrix<S> y = attend::log_softmax(row<S>({1, -inf<S>, 3}));
  CHECK(y(0, 1) == -inf<S>);
  require_close(y, row<S>({S(-2.126928011043), -inf<S>, S(-0.126928011043)}), kHandTol<S>);
}

TEMPLATE_TEST_CASE("softmax.hpp: softmax_backward on a 1x3 example by hand", "[ops]", float,
                   double) {
  using S = TestType;
  // y = [0.5, 0.25, 0.25] (softmax of [log 2, 0, 0]), dy = [1, 2, 3]
  // sum(dy * y) = 0.5 + 0.5 + 0.75 = 1.75
  // dx = y * (dy - 1.75) = [0.5 * -0.75, 0.25 * 0.25, 0.25 * 1.25] = [-0.375, 0.0625, 0.3125]
  // (all exact in binary, so the result is exact)
  const Matrix<S> dx = attend::softmax_backward(row<S>({0.5, 0.25, 0.25}), row<S>({1, 2, 3}));
  require_close(dx, row<S>({-0.375, 0.0625, 0.3125}), 0.0);
  // A fully masked row (y = 0) gets zero gradient.
  require_close(attend::softmax_backward(row<S>({0, 0, 0}), row<S>({1, 2, 3})), row<S>({0, 0, 0}),
                0.0);
}

TEMPLATE_TEST_CASE("softmax.hpp: log_softmax_backward on a 1x3 example by hand", "[ops]", float,
                   double) {
  using S = TestType;
  // y = log([0.5, 0.25, 0.25]) = [-0.693147180560, -1.386294361120, -1.386294361120]
  // dy = [1, 2, 3], sum(dy) = 6; dx = dy - exp(y) * 6 = [1 - 3, 2 - 1.5, 3 - 1.5]
  //    = [-2, 0.5, 1.5]
  const Matrix<S> y = row<S>({S(std::log(0.5)), S(std::log(0.25)), S(std::log(0.25))});
  require_close(attend::log_softmax_backward(y, row<S>({1, 2, 3})), row<S>({-2, 0.5, 1.5}),
                kHandTol<S>);
  // With a masked entry: y = [log 0.5, log 0.5, -inf], dy = [1, 2, 3], sum(dy) = 6
  // dx = [1 - 0.5 * 6, 2 - 0.5 * 6, 0 (masked, does not depend on x)] = [-2, -1, 0]
  const Matrix<S> ym = row<S>({S(std::log(0.5)), S(std::log(0.5)), -inf<S>});
  const Matrix<S> dxm = attend::log_softmax_backward(ym, row<S>({1, 2, 3}));
  CHECK(dxm(0, 2) == S(0));
  require_close(dxm, row<S>({-2, -1, 0}), kHandTol<S>);
}

// ---- properties ------------------------------------------------------------------------

TEMPLATE_TEST_CASE("softmax.hpp: rows sum to 1 and are shift invariant", "[ops][property]", float,
                   double) {
  using S = TestType;
  for (std::uint64_t seed = 1; seed <= 6; ++seed) {
    attend::Rng rng(seed);
    const Index R = random_index(rng, 1, 7), C = random_index(rng, 1, 9);
    CAPTURE(seed, R, C);
    const Matrix<S> x = random_matrix<S>(R, C, rng, 5.0);
    const Matrix<S> y = attend::softmax(x);
    REQUIRE((y.array() >= S(0)).all());
    require_close(y.rowwise().sum(), Matrix<S>::Ones(R, 1), kReorderTol<S>);
    // Adding a constant per row changes nothing: c in [-10, 10].
    Matrix<S> shifted = x;
    for (Index i = 0; i < R; ++i) shifted.row(i).array() += static_cast<S>(rng.uniform(-10, 10));
    require_close(attend::softmax(shifted), y, kReorderTol<S>, kReorderTol<S>);
    // log_softmax = log(softmax) and its exp is softmax.
    const Matrix<S> ly = attend::log_softmax(x);
    require_close(ly, Matrix<S>(y.array().log()), kReorderTol<S>, kReorderTol<S>);
    require_close(Matrix<S>(ly.array().exp()), y, kReorderTol<S>);
  }
}

TEMPLATE_TEST_CASE("softmax.hpp: masked softmax equals softmax with -inf at blocked entries",
                   "[ops][property]", float, double) {
  using S = TestType;
  for (std::uint64_t seed = 1; seed <= 6; ++seed) {
    attend::Rng rng(seed);
    const Index R = random_index(rng, 1, 6), C = random_index(rng, 1, 8);
    CAPTURE(seed, R, C);
    const Matrix<S> x = random_matrix<S>(R, C, rng, 3.0);
    BoolMatrix blocked(R, C);
    Matrix<S> x_inf = x;
    for (Index i = 0; i < R; ++i) {
      for (Index j = 0; j < C; ++j) {
        blocked(i, j) = rng.uniform() < 0.4;
        if (blocked(i, j)) x_inf(i, j) = -inf<S>;
      }
    }
    const Matrix<S> y = attend::softmax(x, blocked);
    require_close(y, attend::softmax(x_inf), 0.0);
    for (Index i = 0; i < R; ++i) {
      for (Index j = 0; j < C; ++j) {
        if (blocked(i, j)) REQUIRE(y(i, j) == S(0));
      }
      const double want_sum = blocked.row(i).all() ? 0.0 : 1.0;
      REQUIRE(std::abs(static_cast<double>(y.row(i).sum()) - want_sum) <= kReorderTol<S>);
    }
  }
}

TEST_CASE("softmax.hpp: backwards match central differences", "[ops][grad]") {
  // L = sum(softmax(x) * g) and sum(log_softmax(x) * g) for a fixed random g; dL/dx by
  // central differences against softmax_backward / log_softmax_backward.
  for (std::uint64_t seed = 1; seed <= 4; ++seed) {
    attend::Rng rng(seed);
    const Index R = random_index(rng, 1, 4), C = random_index(rng, 2, 6);
    CAPTURE(seed, R, C);
    Matrix<double> x = random_matrix<double>(R, C, rng, 2.0);
    if (C > 2) x(0, 1) = -inf<double>;  // a masked entry: its gradient is zero
    const Matrix<double> g = random_matrix<double>(R, C, rng, 1.0);
    const auto loss = [&](const Matrix<double>& z, bool log) {
      const Matrix<double> y = log ? attend::log_softmax(z) : attend::softmax(z);
      double total = 0.0;
      for (Index i = 0; i < R; ++i)
        for (Index j = 0; j < C; ++j)
          if (std::isfinite(y(i, j))) total += y(i, j) * g(i, j);
      return total;
    };
    for (const bool log : {false, true}) {
      CAPTURE(log);
      Matrix<double> dy = g;
      if (log) {  // a masked output is a constant -inf: it does not enter L
        for (Index i = 0; i < R; ++i)
          for (Index j = 0; j < C; ++j)
            if (!std::isfinite(x(i, j))) dy(i, j) = 0.0;
      }
      const Matrix<double> dx = log ? attend::log_softmax_backward(attend::log_softmax(x), dy)
                                    : attend::softmax_backward(attend::softmax(x), dy);
      Matrix<double> numeric = Matrix<double>::Zero(R, C);
      for (Index i = 0; i < R; ++i) {
        for (Index j = 0; j < C; ++j) {
          if (!std::isfinite(x(i, j))) continue;
          Matrix<double> xp = x, xm = x;
          xp(i, j) += kFiniteDiffStep;
          xm(i, j) -= kFiniteDiffStep;
          numeric(i, j) = (loss(xp, log) - loss(xm, log)) / (2 * kFiniteDiffStep);
        }
      }
      require_close(dx, numeric, kFiniteDiffTol);
    }
  }
}

// ---- error paths -----------------------------------------------------------------------

TEMPLATE_TEST_CASE("softmax.hpp: NaN and +inf logits are rejected", "[ops][error]", float, double) {
  using S = TestType;
  const S nan = std::numeric_limits<S>::quiet_NaN();
  Matrix<S> x(2, 3);
  x << 0, nan, 1, 2, 3, 4;
  REQUIRE_THROWS_AS(attend::softmax(x), attend::value_error);
  REQUIRE_THROWS_WITH(attend::softmax(x), "softmax: x has NaN at [0, 1]");
  REQUIRE_THROWS_WITH(attend::log_softmax(x), "log_softmax: x has NaN at [0, 1]");
  REQUIRE_THROWS_WITH(attend::softmax(x, BoolMatrix::Constant(2, 3, false)),
                      "softmax: x has NaN at [0, 1]");

  Matrix<S> y(2, 3);
  y << 0, -inf<S>, 1, 2, 3, inf<S>;
  REQUIRE_THROWS_AS(attend::softmax(y), attend::value_error);
  REQUIRE_THROWS_WITH(attend::softmax(y), "softmax: x has +inf at [1, 2]");
  REQUIRE_THROWS_AS(attend::log_softmax(y), attend::value_error);
  REQUIRE_THROWS_WITH(attend::log_softmax(y), "log_softmax: x has +inf at [1, 2]");
  // Even where the mask blocks it, a +inf logit is an error, not silently dropped.
  BoolMatrix blocked = BoolMatrix::Constant(2, 3, false);
  blocked(1, 2) = true;
  REQUIRE_THROWS_AS(attend::softmax(y, blocked), attend::value_error);
  REQUIRE_THROWS_WITH(attend::softmax(y, blocked), "softmax: x has +inf at [1, 2]");
}

TEMPLATE_TEST_CASE("softmax.hpp: mask and gradient shape mismatches are rejected", "[ops][error]",
                   float, double) {
  using S = TestType;
  const Matrix<S> x = Matrix<S>::Zero(2, 3);
  const BoolMatrix blocked = BoolMatrix::Constant(2, 2, false);
  REQUIRE_THROWS_AS(attend::softmax(x, blocked), attend::shape_error);
  REQUIRE_THROWS_WITH(attend::softmax(x, blocked), "softmax: blocked is [2, 2], expected [2, 3]");

  const Matrix<S> dy = Matrix<S>::Zero(3, 2);
  REQUIRE_THROWS_AS(attend::softmax_backward(x, dy), attend::shape_error);
  REQUIRE_THROWS_WITH(attend::softmax_backward(x, dy),
                      "softmax_backward: dy is [3, 2], expected [2, 3]");
  REQUIRE_THROWS_AS(attend::log_softmax_backward(x, dy), attend::shape_error);
  REQUIRE_THROWS_WITH(attend::log_softmax_backward(x, dy),
                      "log_softmax_backward: dy is [3, 2], expected [2, 3]");
}

// Regression: maxCoeff() on an empty row asserts; torch.softmax of a [2, 0] tensor returns
// [2, 0], and so does attend now.
TEMPLATE_TEST_CASE("softmax.hpp: rows with no columns give an empty result", "[ops][regression]", float,
                   double) {
  using S = TestType;
  const Matrix<S> x(2, 0);
  const Matrix<S> y = attend::softmax(x);
  CHECK(y.rows() == 2);
  CHECK(y.cols() == 0);
  const Matrix<S> ly = attend::log_softmax(x);
  CHECK(ly.rows() == 2);
  CHECK(ly.cols() == 0);
}
