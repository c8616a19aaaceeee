// SPDX-License-Identifier: MIT
// Tests of embedding/: token embedding lookup and the sinusoidal positional encoding
// (hand-computed rows, properties and error paths).
#include "attend/embedding/embedding.hpp"

#include "attend/core/errors.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/embedding/positional.hpp"

#include <Eigen/Core>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "test_util.hpp"

namespace {

using attend::Embedding;
using attend::Index;
using attend::Matrix;
using attend::PositionalLayout;
using attend::Shape;
using attend::SinusoidalPositionalEncoding;
using attend::Tensor;
using Ids = std::vector<std::int64_t>;

using attend_test::require_close;

/// Table entries are sin/cos in [-1, 1] computed in double and rounded once: half an ulp
/// of a value below 1 in float is 3e-8, so one ulp (6e-8) is the bound; in double, libm's
/// sin/cos/pow are within an ulp or two for the small positions used by hand.
template <typename S>
constexpr double kTableTol = std::is_same_v<S, float> ? 6e-8 : 1e-15;

/// Hand values below are written with 12 decimals (rounding error 5e-13).
constexpr double kDigitsTol = 1e-12;

/// Results of one or two roundings of a larger value (x + PE, a row times sqrt(D)):
/// relative error 2^-22 in float, 2^-51 in double.
template <typename S>
constexpr double kRelTol = std::is_same_v<S, float> ? 2.4e-7 : 4.5e-16;

/// sin^2 + cos^2 and angle-addition identities on rounded table entries at positions up
/// to 40: a few ulps of O(1) values, plus the double angle error (40 * eps) in double.
template <typename S>
constexpr double kIdentityTol = std::is_same_v<S, float> ? 1e-6 : 1e-14;

template <typename S>
Matrix<S> rows(Index r, Index c, std::initializer_list<double> values) {
  Matrix<S> m(r, c);
  Index k = 0;
  for (const double v : values) {
    m(k / c, k % c) = static_cast<S>(v);
    ++k;
  }
  return m;
}

/// The tiny table used below: V = 4 tokens, D = 2.
template <typename S>
Matrix<S> tiny_table() {
  return rows<S>(4, 2, {0.5, -1, 1, 2, 3, 4, 5, 6});
}

}  // namespace

// ---- Embedding -------------------------------------------------------------------------

TEMPLATE_TEST_CASE("embedding.hpp: ids select rows of the table", "[embedding]", float, double) {
  using S = TestType;
  const Embedding<S> e = Embedding<S>::from_pretrained(tiny_table<S>());
  CHECK(e.num_embeddings() == 4);
  CHECK(e.embedding_dim() == 2);
  CHECK_FALSE(e.padding_idx.has_value());
  // ids [2, 0, 3, 2] -> rows 2, 0, 3, 2 of the table
  const Matrix<S> out = e.forward(Ids{2, 0, 3, 2});
  require_close(out, rows<S>(4, 2, {3, 4, 0.5, -1, 5, 6, 3, 4}), 0.0);
  // No ids, no rows.
  const Matrix<S> none = e.forward(Ids{});
  CHECK(none.rows() == 0);
  CHECK(none.cols() == 2);
}

TEMPLATE_TEST_CASE("embedding.hpp: the Tensor form gives shape [..., D]", "[embedding]", float,
                   double) {
  using S = TestType;
  const Embedding<S> e = Embedding<S>::from_pretrained(tiny_table<S>());
  // ids [2, 3] = [[1, 3, 0], [2, 2, 1]] -> [2, 3, 2]
  const Tensor<std::int64_t> ids({2, 3}, Ids{1, 3, 0, 2, 2, 1});
  const Tensor<S> out = e.forward(ids);
  REQUIRE(out.shape() == Shape{2, 3, 2});
  require_close(out.matrix(0), rows<S>(3, 2, {1, 2, 5, 6, 0.5, -1}), 0.0);
  require_close(out.matrix(1), rows<S>(3, 2, {3, 4, 3, 4, 1, 2}), 0.0);
  // Same numbers as the vector form on the flattened ids.
  require_close(out.as_matrix(), e.forward(Ids{1, 3, 0, 2, 2, 1}), 0.0);
  // Rank 1 [3] -> [3, 2]; rank 0 (one id) -> [2].
  const Tensor<S> out1 = e.forward(Tensor<std::int64_t>({3}, Ids{3, 3, 0}));
  REQUIRE(out1.shape() == Shape{3, 2});
  require_close(out1.as_matrix(), rows<S>(3, 2, {5, 6, 5, 6, 0.5, -1}), 0.0);
  const Tensor<S> out0 = e.forward(Tensor<std::int64_t>(Shape{}, Ids{1}));
  REQUIRE(out0.shape() == Shape{2});
  CHECK(out0(0) == S(1));
  CHECK(out0(1) == S(2));
}

TEMPLATE_TEST_CASE("embedding.hpp: the padding_idx row is returned as stored", "[embedding]", float,
                   double) {
  using S = TestType;
  // from_pretrained does not zero the padding row (torch.nn.Embedding.from_pretrained).
  Embedding<S> e = Embedding<S>::from_pretrained(tiny_table<S>(), 1);
  REQUIRE(e.padding_idx == Index(1));
  require_close(e.forward(Ids{1, 0}), rows<S>(2, 2, {1, 2, 0.5, -1}), 0.0);
  // Whatever the row holds is returned: only its gradient would be zero.
  e.weight.row(1) << S(9), S(-9);
  require_close(e.forward(Ids{1}), rows<S>(1, 2, {9, -9}), 0.0);

  // The constructor starts the padding row at zero; other rows are N(0, 1) from the seed.
  const Embedding<S> fresh(5, 3, 2, /*seed=*/11);
  CHECK(fresh.weight.row(2).isZero(0));
  CHECK(fresh.weight.allFinite());
  CHECK_FALSE(fresh.weight.row(0).isZero(0));
  const Matrix<S> got = fresh.forward(Ids{2, 4});
  CHECK(got.row(0).isZero(0));
  require_close(got.row(1), fresh.weight.row(4), 0.0);
  const Embedding<S> same(5, 3, 2, 11), other(5, 3, 2, 12);
  CHECK(same.weight == fresh.weight);
  CHECK(other.weight != fresh.weight);
}

TEMPLATE_TEST_CASE("embedding.hpp: a negative padding_idx counts from the end", "[embedding]",
                   float, double) {
  using S = TestType;
  // V = 5: -1 -> 4, -5 -> 0.
  const Embedding<S> last(5, 3, -1, 3);
  REQUIRE(last.padding_idx == Index(4));
  CHECK(last.weight.row(4).isZero(0));
  CHECK_FALSE(last.weight.row(3).isZero(0));
  const Embedding<S> first(5, 3, -5, 3);
  REQUIRE(first.padding_idx == Index(0));
  CHECK(first.weight.row(0).isZero(0));
  const Embedding<S> pre = Embedding<S>::from_pretrained(tiny_table<S>(), -4);
  CHECK(pre.padding_idx == Index(0));
}

TEMPLATE_TEST_CASE("embedding.hpp: scale_by_sqrt_d multiplies the rows by sqrt(D)", "[embedding]",
                   float, double) {
  using S = TestType;
  // D = 4: sqrt(4) = 2, so every entry doubles exactly.
  Embedding<S> e = Embedding<S>::from_pretrained(rows<S>(2, 4, {1, 2, 3, 4, -1, 0.5, 0, 8}));
  e.scale_by_sqrt_d = true;
  require_close(e.forward(Ids{1, 0}), rows<S>(2, 4, {-2, 1, 0, 16, 2, 4, 6, 8}), 0.0);
  const Tensor<S> t = e.forward(Tensor<std::int64_t>({1, 1}, Ids{0}));
  require_close(t.as_matrix(), rows<S>(1, 4, {2, 4, 6, 8}), 0.0);
  // D = 2: sqrt(2) = 1.414213562373; row 3 of the tiny table is [5, 6] -> [7.071067811865,
  // 8.485281374239].
  Embedding<S> e2 = Embedding<S>::from_pretrained(tiny_table<S>());
  e2.scale_by_sqrt_d = true;
  require_close(e2.forward(Ids{3}), rows<double>(1, 2, {7.071067811865, 8.485281374239}),
                kDigitsTol, kRelTol<S>);
}

TEMPLATE_TEST_CASE("embedding.hpp: out-of-range ids and bad sizes are rejected",
                   "[embedding][error]", float, double) {
  using S = TestType;
  const Embedding<S> e = Embedding<S>::from_pretrained(tiny_table<S>());
  REQUIRE_THROWS_AS(e.forward(Ids{0, 4}), attend::index_error);
  REQUIRE_THROWS_WITH(e.forward(Ids{0, 4}),
                      "Embedding::forward: token id 4 at position 1 is out of range [0, 4)");
  REQUIRE_THROWS_AS(e.forward(Ids{-1}), attend::index_error);
  REQUIRE_THROWS_WITH(e.forward(Ids{-1}),
                      "Embedding::forward: token id -1 at position 0 is out of range [0, 4)");
  // Tensor form: the position is the flat (row-major) index; (1, 0) of [2, 2] is 2.
  const Tensor<std::int64_t> ids({2, 2}, Ids{0, 1, 7, 2});
  REQUIRE_THROWS_AS(e.forward(ids), attend::index_error);
  REQUIRE_THROWS_WITH(e.forward(ids),
                      "Embedding::forward: token id 7 at position 2 is out of range [0, 4)");

  using E = Embedding<S>;
  REQUIRE_THROWS_AS(E(5, 3, 5), attend::value_error);
  REQUIRE_THROWS_WITH(E(5, 3, 5), "Embedding: padding_idx is 5, expected in [-5, 5)");
  REQUIRE_THROWS_WITH(E(5, 3, -6), "Embedding: padding_idx is -6, expected in [-5, 5)");
  REQUIRE_THROWS_AS(E::from_pretrained(tiny_table<S>(), 4), attend::value_error);
  REQUIRE_THROWS_WITH(E::from_pretrained(tiny_table<S>(), 4),
                      "Embedding: padding_idx is 4, expected in [-4, 4)");
  REQUIRE_THROWS_AS(E(0, 3), attend::value_error);
  REQUIRE_THROWS_WITH(E(0, 3),
                      "Embedding: num_embeddings and embedding_dim must be positive, got 0 and 3");
  REQUIRE_THROWS_WITH(E(4, -2),
                      "Embedding: num_embeddings and embedding_dim must be positive, got 4 and -2");
  REQUIRE_THROWS_AS(E::from_pretrained(Matrix<S>(0, 3)), attend::value_error);
  REQUIRE_THROWS_WITH(
      E::from_pretrained(Matrix<S>(0, 3)),
      "Embedding::from_pretrained: weight is [0, 3], expected [V, D] with V, D > 0");
  Matrix<S> bad = tiny_table<S>();
  bad(2, 1) = std::numeric_limits<S>::quiet_NaN();
  REQUIRE_THROWS_AS(E::from_pretrained(bad), attend::value_error);
  REQUIRE_THROWS_WITH(E::from_pretrained(bad),
                      "Embedding::from_pretrained: weight has a non-finite value");
}

// ---- sinusoidal positional encoding ----------------------------------------------------

TEMPLATE_TEST_CASE("positional.hpp: position 0 is [0, 1, 0, 1, ...]", "[embedding]", float,
                   double) {
  using S = TestType;
  // sin(0) = 0, cos(0) = 1 for every frequency.
  const Matrix<S> pe = attend::sinusoidal_positional_encoding<S>(3, 6);
  REQUIRE(pe.rows() == 3);
  REQUIRE(pe.cols() == 6);
  require_close(pe.row(0), rows<double>(1, 6, {0, 1, 0, 1, 0, 1}), 0.0);
  // Concatenated: all sines, then all cosines.
  const Matrix<S> pc =
      attend::sinusoidal_positional_encoding<S>(3, 6, PositionalLayout::concatenated);
  require_close(pc.row(0), rows<double>(1, 6, {0, 0, 0, 1, 1, 1}), 0.0);
}

TEMPLATE_TEST_CASE("positional.hpp: PE[1] and PE[2] for d_model = 4 by hand", "[embedding]", float,
                   double) {
  using S = TestType;
  // d = 4: w_0 = 1 / 10000^(0/4) = 1, w_1 = 1 / 10000^(2/4) = 1/100.
  // PE[1] interleaved  = [sin 1, cos 1, sin 0.01, cos 0.01]
  //                    = [0.841470984808, 0.540302305868, 0.009999833334, 0.999950000417]
  // PE[2] interleaved  = [sin 2, cos 2, sin 0.02, cos 0.02]
  //                    = [0.909297426826, -0.416146836547, 0.019998666693, 0.999800006667]
  const Matrix<S> pe = attend::sinusoidal_positional_encoding<S>(3, 4);
  const double tol = kTableTol<S> + kDigitsTol;
  require_close(
      pe.row(1),
      rows<double>(1, 4, {0.841470984808, 0.540302305868, 0.009999833334, 0.999950000417}), tol);
  require_close(
      pe.row(2),
      rows<double>(1, 4, {0.909297426826, -0.416146836547, 0.019998666693, 0.999800006667}), tol);
  // Concatenated: [sin 1, sin 0.01, cos 1, cos 0.01].
  const Matrix<S> pc =
      attend::sinusoidal_positional_encoding<S>(3, 4, PositionalLayout::concatenated);
  require_close(
      pc.row(1),
      rows<double>(1, 4, {0.841470984808, 0.009999833334, 0.540302305868, 0.999950000417}), tol);
  // base = 100: w_1 = 1 / 100^(2/4) = 0.1 -> PE[1] = [sin 1, cos 1, sin 0.1, cos 0.1]
  //   = [0.841470984808, 0.540302305868, 0.099833416647, 0.995004165278]
  const Matrix<S> pb =
      attend::sinusoidal_positional_encoding<S>(2, 4, PositionalLayout::interleaved, 0, 100.0);
  require_close(
      pb.row(1),
      rows<double>(1, 4, {0.841470984808, 0.540302305868, 0.099833416647, 0.995004165278}), tol);
}

TEMPLATE_TEST_CASE("positional.hpp: odd d_model ends with a sine column", "[embedding]", float,
                   double) {
  using S = TestType;
  // d = 5: ceil(5/2) = 3 sines, floor(5/2) = 2 cosines;
  // w_0 = 1, w_1 = 10000^(-2/5) = 0.025118864315, w_2 = 10000^(-4/5) = 0.000630957344.
  // PE[1] interleaved = [sin 1, cos 1, sin w_1, cos w_1, sin w_2]
  //   = [0.841470984808, 0.540302305868, 0.025116222910, 0.999684537915, 0.000630957303]
  const Matrix<S> pe = attend::sinusoidal_positional_encoding<S>(2, 5);
  const double tol = kTableTol<S> + kDigitsTol;
  require_close(pe.row(0), rows<double>(1, 5, {0, 1, 0, 1, 0}), 0.0);
  require_close(
      pe.row(1),
      rows<double>(
          1, 5, {0.841470984808, 0.540302305868, 0.025116222910, 0.999684537915, 0.000630957303}),
      tol);
  // Concatenated: [sin 1, sin w_1, sin w_2, cos 1, cos w_1].
  const Matrix<S> pc =
      attend::sinusoidal_positional_encoding<S>(2, 5, PositionalLayout::concatenated);
  require_close(pc.row(0), rows<double>(1, 5, {0, 0, 0, 1, 1}), 0.0);
  require_close(
      pc.row(1),
      rows<double>(
          1, 5, {0.841470984808, 0.025116222910, 0.000630957303, 0.540302305868, 0.999684537915}),
      tol);
  // d = 1: a single sine column, sin(p).
  const Matrix<S> p1 = attend::sinusoidal_positional_encoding<S>(3, 1);
  require_close(p1, rows<double>(3, 1, {0, 0.841470984808, 0.909297426826}), tol);
}

TEMPLATE_TEST_CASE("positional.hpp: first_position shifts the rows", "[embedding]", float, double) {
  using S = TestType;
  for (const PositionalLayout layout :
       {PositionalLayout::interleaved, PositionalLayout::concatenated}) {
    const Matrix<S> from0 = attend::sinusoidal_positional_encoding<S>(12, 6, layout, 0);
    // Row r of a table starting at position 1 is row r + 1 of one starting at 0 (the
    // same double computation, so bit-identical).
    const Matrix<S> from1 = attend::sinusoidal_positional_encoding<S>(5, 6, layout, 1);
    require_close(from1, from0.middleRows(1, 5), 0.0);
    const Matrix<S> from7 = attend::sinusoidal_positional_encoding<S>(5, 6, layout, 7);
    require_close(from7, from0.middleRows(7, 5), 0.0);
  }
}

TEMPLATE_TEST_CASE("positional.hpp: the table is computed in double and rounded once",
                   "[embedding][property]", float, double) {
  using S = TestType;
  for (const Index d : {1, 2, 5, 8, 13}) {
    CAPTURE(d);
    const Matrix<double> ref = attend::sinusoidal_positional_encoding<double>(40, d);
    const Matrix<S> pe = attend::sinusoidal_positional_encoding<S>(40, d);
    require_close(pe, ref.cast<S>(), 0.0);  // exactly the rounded double table
    // Each (sin, cos) pair lies on the unit circle, and
    // PE[p + k] = rotation of PE[p] by angle k w_i (the relative-position property).
    for (Index i = 0; 2 * i + 1 < d; ++i) {
      const double w = 1.0 / std::pow(10000.0, static_cast<double>(2 * i) / static_cast<double>(d));
      for (Index p = 0; p + 3 < 40; p += 5) {
        const double s = pe(p, 2 * i), c = pe(p, 2 * i + 1);
        REQUIRE(std::abs(s * s + c * c - 1.0) <= kIdentityTol<S>);
        const double sk = std::sin(3 * w), ck = std::cos(3 * w);
        REQUIRE(std::abs(static_cast<double>(pe(p + 3, 2 * i)) - (s * ck + c * sk)) <=
                kIdentityTol<S>);
        REQUIRE(std::abs(static_cast<double>(pe(p + 3, 2 * i + 1)) - (c * ck - s * sk)) <=
                kIdentityTol<S>);
      }
    }
  }
}

TEMPLATE_TEST_CASE("positional.hpp: SinusoidalPositionalEncoding::forward adds rows at an offset",
                   "[embedding]", float, double) {
  using S = TestType;
  const SinusoidalPositionalEncoding<S> pos(6, 4);
  CHECK(pos.max_len() == 6);
  CHECK(pos.d_model() == 4);
  require_close(pos.table(), attend::sinusoidal_positional_encoding<S>(6, 4), 0.0);
  const Matrix<S> x = rows<S>(2, 4, {1, 2, 3, 4, -1, -2, -3, -4});
  // offset 0: x + PE[0:2]; PE[0] = [0, 1, 0, 1]
  const Matrix<S> y0 = pos.forward(x);
  require_close(y0.row(0), rows<double>(1, 4, {1, 3, 3, 5}), 0.0);
  require_close(y0, Matrix<S>(x + pos.table().topRows(2)), 0.0);
  // offset 3: x + PE[3:5] (positions 3 and 4; incremental decoding after 3 tokens)
  const Matrix<S> y3 = pos.forward(x, 3);
  require_close(y3, Matrix<S>(x + pos.table().middleRows(3, 2)), 0.0);
  // PE[3] = [sin 3, cos 3, sin 0.03, cos 0.03]
  //       = [0.141120008060, -0.989992496600, 0.029995500202, 0.999550033749]
  require_close(
      y3.row(0),
      rows<double>(1, 4, {1.141120008060, 1.010007503400, 3.029995500202, 4.999550033749}),
      kDigitsTol, kRelTol<S>);
  // The last rows fit exactly: offset 4 + 2 rows = max_len 6. Zero rows at offset 6 too.
  require_close(pos.forward(x, 4), Matrix<S>(x + pos.table().bottomRows(2)), 0.0);
  CHECK(pos.forward(Matrix<S>(0, 4), 6).rows() == 0);
  // Layout and first_position pass through.
  const SinusoidalPositionalEncoding<S> cat(4, 4, PositionalLayout::concatenated, 1);
  require_close(cat.table(),
                attend::sinusoidal_positional_encoding<S>(4, 4, PositionalLayout::concatenated, 1),
                0.0);
}

TEMPLATE_TEST_CASE("positional.hpp: bad sizes, bases and offsets are rejected",
                   "[embedding][error]", float, double) {
  using S = TestType;
  const auto pe = [](Index max_len, Index d, double base = 10000.0) {
    return attend::sinusoidal_positional_encoding<S>(max_len, d, PositionalLayout::interleaved, 0,
                                                     base);
  };
  REQUIRE_THROWS_AS(pe(-1, 4), attend::value_error);
  REQUIRE_THROWS_WITH(pe(-1, 4),
                      "sinusoidal_positional_encoding: max_len is -1 and d_model is 4, "
                      "expected max_len >= 0 and d_model > 0");
  REQUIRE_THROWS_AS(pe(3, 0), attend::value_error);
  REQUIRE_THROWS_WITH(pe(3, 0),
                      "sinusoidal_positional_encoding: max_len is 3 and d_model is 0, "
                      "expected max_len >= 0 and d_model > 0");
  REQUIRE_THROWS_AS(pe(3, 4, 0.0), attend::value_error);
  REQUIRE_THROWS_WITH(pe(3, 4, 0.0),
                      "sinusoidal_positional_encoding: base is 0.000000, expected a positive "
                      "finite value");
  REQUIRE_THROWS_WITH(pe(3, 4, -2.0),
                      "sinusoidal_positional_encoding: base is -2.000000, expected a positive "
                      "finite value");
  REQUIRE_THROWS_WITH(pe(3, 4, std::numeric_limits<double>::quiet_NaN()),
                      "sinusoidal_positional_encoding: base is nan, expected a positive finite "
                      "value");
  REQUIRE_THROWS_WITH(pe(3, 4, std::numeric_limits<double>::infinity()),
                      "sinusoidal_positional_encoding: base is inf, expected a positive finite "
                      "value");
  CHECK(pe(0, 4).rows() == 0);  // an empty table is fine
  REQUIRE_THROWS_AS(SinusoidalPositionalEncoding<S>(5, 0), attend::value_error);

  const SinusoidalPositionalEncoding<S> pos(5, 4);
  const Matrix<S> x = Matrix<S>::Zero(3, 4);
  REQUIRE_THROWS_AS(pos.forward(Matrix<S>::Zero(2, 3)), attend::shape_error);
  REQUIRE_THROWS_WITH(pos.forward(Matrix<S>::Zero(2, 3)),
                      "SinusoidalPositionalEncoding::forward: x is [2, 3], expected [L, 4]");
  REQUIRE_THROWS_AS(pos.forward(x, 3), attend::index_error);
  REQUIRE_THROWS_WITH(pos.forward(x, 3),
                      "SinusoidalPositionalEncoding::forward: positions [3, 6) exceed max_len 5");
  REQUIRE_THROWS_AS(pos.forward(Matrix<S>::Zero(6, 4)), attend::index_error);
  REQUIRE_THROWS_WITH(pos.forward(Matrix<S>::Zero(6, 4)),
                      "SinusoidalPositionalEncoding::forward: positions [0, 6) exceed max_len 5");
  REQUIRE_THROWS_AS(pos.forward(x, -1), attend::index_error);
  REQUIRE_THROWS_WITH(pos.forward(x, -1),
                      "SinusoidalPositionalEncoding::forward: positions [-1, 2) exceed max_len 5");
}

// Regression: with the largest Index as the offset, `offset + x.rows()` overflowed, the
// range check passed and middleRows() read out of bounds. Now an index_error.
TEST_CASE("positional.hpp: an offset near the Index maximum is rejected, not overflowed",
          "[embedding][error][regression]") {
  const SinusoidalPositionalEncoding<double> pos(5, 4);
  const Matrix<double> x = Matrix<double>::Zero(1, 4);
  const Index huge = std::numeric_limits<Index>::max();
  REQUIRE_THROWS_AS(pos.forward(x, huge), attend::index_error);
}
