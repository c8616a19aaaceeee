// SPDX-License-Identifier: MIT
// Tests that the conformance runner (tests/conformance/runner.hpp) follows every docs/fixtures.md rule.
#include "attend/io/safetensors.hpp"
#include "attend/io/safetensors_writer.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "conformance/runner.hpp"

namespace {

using attend::Index;
using attend::Shape;
using attend::Tensor;
using attend::conformance::CaseResult;
using Bytes = std::vector<std::uint8_t>;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;

const std::string kSource = "case.safetensors";  // the name messages give the case
const double kInf = std::numeric_limits<double>::infinity();
const double kNaN = std::numeric_limits<double>::quiet_NaN();
const double kLn2 = std::log(2.0);
const double kLn3 = std::log(3.0);
const double kLn5 = std::log(5.0);

// Tolerances of the hand-made cases (docs/fixtures.md decimal strings). Expected values are
// exact rationals or double libm results; the library rounds logits such as ln 3 to the
// case dtype and computes exp, sums and products in it: a few ulp (float eps 1.2e-7,
// double 2.2e-16) on values of magnitude <= 30, i.e. <= 4e-6 in float and <= 1e-14 in
// double, so rtol = atol = 1e-5 (float) and 1e-12 (double) leave >= 2x and 100x headroom.
template <typename S>
struct HandTol;
template <>
struct HandTol<float> {
  static constexpr const char* rtol = "1e-05";
  static constexpr const char* atol = "1e-05";
};
template <>
struct HandTol<double> {
  static constexpr const char* rtol = "1e-12";
  static constexpr const char* atol = "1e-12";
};

// Exact equality: embedding lookups and cases whose results are exact in binary.
constexpr const char* kExact = "0";

/// A case file under construction; serialized with attend::SafeTensorsWriter.
class CaseFile {
 public:
  /// Sets module/options/rtol/atol; an empty string leaves that key out.
  CaseFile(const std::string& module, const std::string& options, const std::string& rtol,
           const std::string& atol) {
    if (!module.empty()) writer_.set_metadata("module", module);
    if (!options.empty()) writer_.set_metadata("options", options);
    if (!rtol.empty()) writer_.set_metadata("rtol", rtol);
    if (!atol.empty()) writer_.set_metadata("atol", atol);
  }

  /// Adds tensor `name` of element type T (float -> F32, double -> F64, int64 -> I64,
  /// bool -> BOOL) from row-major `values`.
  template <typename T>
  CaseFile& add(const std::string& name, Shape shape, const std::vector<double>& values) {
    std::vector<T> v;
    for (const double x : values) v.push_back(static_cast<T>(x));
    writer_.add(name, Tensor<T>(std::move(shape), v));
    return *this;
  }

  CaseFile& meta(const std::string& key, const std::string& value) {
    writer_.set_metadata(key, value);
    return *this;
  }

  Bytes bytes() const { return writer_.to_bytes(); }
  CaseResult run() const { return attend::conformance::run_case_bytes(bytes(), kSource); }

 private:
  attend::SafeTensorsWriter writer_;
};

/// "PASS", "FAIL <detail>" or "UNSUPPORTED <detail>": one string Catch prints on failure.
std::string verdict(const CaseResult& r) {
  switch (r.status) {
    case CaseResult::Status::pass:
      return "PASS";
    case CaseResult::Status::fail:
      return "FAIL " + r.detail;
    case CaseResult::Status::unsupported:
      return "UNSUPPORTED " + r.detail;
  }
  return "?";
}

std::string run_bytes(Bytes bytes) {
  return verdict(attend::conformance::run_case_bytes(std::move(bytes), kSource));
}

/// A safetensors file from a hand-written header and data buffer.
Bytes raw_file(const std::string& header, const Bytes& data) {
  Bytes out(8);
  for (int k = 0; k < 8; ++k)
    out[k] = static_cast<std::uint8_t>(std::uint64_t{header.size()} >> (8 * k));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

/// Little-endian bytes of `values` stored as S, built with memcpy (no reliance on the reader).
template <typename S>
Bytes le_bytes(const std::vector<double>& values) {
  Bytes out;
  for (const double x : values) {
    const S v = static_cast<S>(x);
    std::uint8_t b[sizeof(S)];
    std::memcpy(b, &v, sizeof(S));
    for (std::size_t k = 0; k < sizeof(S); ++k) out.push_back(b[k]);  // host is little-endian
  }
  return out;
}

template <typename S>
std::string dtype_name() {
  return sizeof(S) == 4 ? "F32" : "F64";
}

/// Softmax case [rows, cols] (dim -1 unless options say otherwise).
template <typename S>
CaseFile softmax_case(Shape shape, const std::vector<double>& x, const std::vector<double>& want,
                      const std::string& rtol, const std::string& atol,
                      const std::string& options = "") {
  CaseFile c("softmax", options, rtol, atol);
  c.add<S>("input.input", shape, x).template add<S>("expected.output", shape, want);
  return c;
}

// --- multi-head attention by hand ---------------------------------------------------
// E = 2, H = 2 (d_k = 1, so the scale is 1), self-attention over L = S = 2 positions
// x_0 = [1, 0], x_1 = [0, 1], repeated in each of B batch entries (query [L, B, E]).
// W_q = ln3 I, W_k = W_v = I, b_q = b_k = 0, b_v = [2, 4]; W_o = diag(1, 2), b_o = [10, 20].
// So q_i = ln3 x_i, k_j = x_j, v_0 = [3, 4], v_1 = [2, 5]. Head h uses column h:
//   head 0 scores [[ln3, 0], [0, 0]] -> weights [[3/4, 1/4], [1/2, 1/2]]
//          values [3, 2]   -> outputs [3*3/4 + 2/4, 3/2 + 2/2] = [2.75, 2.5]
//   head 1 scores [[0, 0], [0, ln3]] -> weights [[1/2, 1/2], [1/4, 3/4]]
//          values [4, 5]   -> outputs [4.5, 4/4 + 5*3/4] = [4.5, 4.75]
//   output row = [head0 + 10, 2 * head1 + 20]: [[12.75, 29], [12.5, 29.5]]
//   averaged weights [[5/8, 3/8], [3/8, 5/8]]
template <typename S>
CaseFile mha_case(const std::string& options, Index B) {
  CaseFile c("multihead_attention", options, HandTol<S>::rtol, HandTol<S>::atol);
  c.add<S>("in_proj_weight", {6, 2}, {kLn3, 0, 0, kLn3, 1, 0, 0, 1, 1, 0, 0, 1});
  c.add<S>("in_proj_bias", {6}, {0, 0, 0, 0, 2, 4});
  c.add<S>("out_proj.weight", {2, 2}, {1, 0, 0, 2});
  c.add<S>("out_proj.bias", {2}, {10, 20});
  std::vector<double> q;  // [L, B, E]
  for (int t = 0; t < 2; ++t) {
    for (Index b = 0; b < B; ++b) {
      q.push_back(t == 0 ? 1 : 0);
      q.push_back(t == 0 ? 0 : 1);
    }
  }
  c.add<S>("input.query", {2, B, 2}, q);
  return c;
}

const std::string kMhaOptions = R"({"embed_dim": 2, "num_heads": 2})";
const std::vector<double> kMhaOutput = {12.75, 29, 12.5, 29.5};            // [L = 2, B = 1, E = 2]
const std::vector<double> kMhaWeights = {5. / 8, 3. / 8, 3. / 8, 5. / 8};  // [B = 1, L, S]

// --- scaled dot-product attention with zero queries ----------------------------------
// With q = 0 every score is 0, so the weights are softmax_j(mask bias) and the output the
// weighted mean of the values: easy to compute independently for any mask.
struct Attention {
  std::vector<double> output;   // [B, H, L, 1]
  std::vector<double> weights;  // [B, H, L, S]
};

constexpr Index kB = 2, kH = 2, kL = 2, kS = 3;

double zq_value(Index b, Index h, Index j) { return 1.0 + j + 3.0 * h + 6.0 * b; }

Attention zero_query_attention(const std::function<double(Index, Index, Index, Index)>& bias) {
  Attention a;
  for (Index b = 0; b < kB; ++b) {
    for (Index h = 0; h < kH; ++h) {
      for (Index i = 0; i < kL; ++i) {
        double total = 0.0, out = 0.0;
        std::vector<double> w(kS);
        for (Index j = 0; j < kS; ++j) total += w[j] = std::exp(bias(b, h, i, j));
        for (Index j = 0; j < kS; ++j) {
          w[j] /= total;
          out += w[j] * zq_value(b, h, j);
          a.weights.push_back(w[j]);
        }
        a.output.push_back(out);
      }
    }
  }
  return a;
}

template <typename S>
CaseFile zero_query_case(const std::string& options, const Attention& want) {
  CaseFile c("scaled_dot_product_attention", options, HandTol<S>::rtol, HandTol<S>::atol);
  std::vector<double> k, v;
  for (Index b = 0; b < kB; ++b) {
    for (Index h = 0; h < kH; ++h) {
      for (Index j = 0; j < kS; ++j) {
        k.push_back(0.5 * j - 1.0);  // irrelevant: q = 0
        v.push_back(zq_value(b, h, j));
      }
    }
  }
  c.add<S>("input.query", {kB, kH, kL, 1}, std::vector<double>(kB * kH * kL, 0.0));
  c.add<S>("input.key", {kB, kH, kS, 1}, k).template add<S>("input.value", {kB, kH, kS, 1}, v);
  c.add<S>("expected.output", {kB, kH, kL, 1}, want.output);
  c.add<S>("expected.attn_weights", {kB, kH, kL, kS}, want.weights);
  return c;
}

}  // namespace

// ======================================================================================
// A correct tiny case per module passes, in F32 and F64.
// ======================================================================================

TEMPLATE_TEST_CASE("runner: softmax hand case passes, dim defaults to -1", "[conformance]", float,
                   double) {
  using S = TestType;
  // Row 0: exp(0, ln2, ln5) = (1, 2, 5), sum 8. Row 1: exp(x - 1000) = (1, 1, 0), sum 2.
  const std::vector<double> x = {0, kLn2, kLn5, 1000, 1000, -kInf};
  const std::vector<double> rows = {1. / 8, 2. / 8, 5. / 8, 0.5, 0.5, 0};
  // dim 0 pairs (0, 1000), (ln2, 1000), (ln5, -inf): exp(-1000) underflows to exactly 0.
  const std::vector<double> cols = {0, 0, 1, 1, 1, 0};
  const auto run = [&](const std::vector<double>& want, const std::string& options) {
    return softmax_case<S>({2, 3}, x, want, HandTol<S>::rtol, HandTol<S>::atol, options).run();
  };

  const CaseResult r = run(rows, "");
  REQUIRE(verdict(r) == "PASS");
  CHECK(r.max_abs_err <= 1e-6);
  CHECK(verdict(run(rows, R"({"dim": -1})")) == "PASS");
  CHECK(verdict(run(rows, R"({"dim": 1})")) == "PASS");
  CHECK(verdict(run(cols, R"({"dim": 0})")) == "PASS");
  CHECK(verdict(run(cols, R"({"dim": -2})")) == "PASS");
  // The default is not dim 0: the column result fails without options.
  CHECK_THAT(verdict(run(cols, "")), StartsWith("FAIL expected.output: "));
}

TEMPLATE_TEST_CASE("runner: scaled_dot_product_attention hand case, scale defaults to 1/sqrt(E)",
                   "[conformance]", float, double) {
  using S = TestType;
  // query [1, L=1, E=4] = [2 ln3, 0, 0, 0]; keys [0, 0, 0, 0] and [1, 0, 0, 0]; values
  // [4, 0] and [0, 8]. Scores (0, 2 ln3) * 1/sqrt(4) = (0, ln3) -> weights (1/4, 3/4),
  // output (4/4, 8*3/4) = (1, 6). With scale 1: (0, 2 ln3) -> (1/10, 9/10) -> (0.4, 7.2).
  const auto sdpa = [](const std::string& options, const std::vector<double>& w,
                       const std::vector<double>& out) {
    CaseFile c("scaled_dot_product_attention", options, HandTol<S>::rtol, HandTol<S>::atol);
    c.add<S>("input.query", {1, 1, 4}, {2 * kLn3, 0, 0, 0});
    c.add<S>("input.key", {1, 2, 4}, {0, 0, 0, 0, 1, 0, 0, 0});
    c.add<S>("input.value", {1, 2, 2}, {4, 0, 0, 8});
    c.add<S>("expected.attn_weights", {1, 1, 2}, w)
        .template add<S>("expected.output", {1, 1, 2}, out);
    return c.run();
  };
  CHECK(verdict(sdpa("", {0.25, 0.75}, {1, 6})) == "PASS");
  CHECK(verdict(sdpa(R"({"scale": null, "is_causal": false})", {0.25, 0.75}, {1, 6})) == "PASS");
  CHECK(verdict(sdpa(R"({"scale": 1.0})", {0.1, 0.9}, {0.4, 7.2})) == "PASS");
  CHECK(verdict(sdpa(R"({"scale": 0.5})", {0.25, 0.75}, {1, 6})) == "PASS");
  CHECK_THAT(verdict(sdpa(R"({"scale": 1.0})", {0.25, 0.75}, {1, 6})),
             StartsWith("FAIL expected.attn_weights: "));
  // Rank-2 inputs [L, E] work too.
  CaseFile c("scaled_dot_product_attention", "", HandTol<S>::rtol, HandTol<S>::atol);
  c.add<S>("input.query", {1, 4}, {2 * kLn3, 0, 0, 0});
  c.add<S>("input.key", {2, 4}, {0, 0, 0, 0, 1, 0, 0, 0});
  c.add<S>("input.value", {2, 2}, {4, 0, 0, 8});
  c.add<S>("expected.attn_weights", {1, 2}, {0.25, 0.75})
      .template add<S>("expected.output", {1, 2}, {1, 6});
  CHECK(verdict(c.run()) == "PASS");
}

TEMPLATE_TEST_CASE("runner: multihead_attention hand case, options default as in PyTorch",
                   "[conformance]", float, double) {
  using S = TestType;
  const auto with = [](const std::string& options) {
    CaseFile c = mha_case<S>(options, 1);
    c.add<S>("expected.output", {2, 1, 2}, kMhaOutput);
    c.add<S>("expected.attn_weights", {1, 2, 2}, kMhaWeights);
    return verdict(c.run());
  };
  // Only the required options: batch_first false ([L, B, E]), bias true (b_v and b_o are
  // used), need_weights true (attn_weights produced) and average_attn_weights true ([B, L, S]).
  CHECK(with(kMhaOptions) == "PASS");
  CHECK(with(R"({"embed_dim": 2, "num_heads": 2, "batch_first": false, "bias": true,
                 "need_weights": true, "average_attn_weights": true, "kdim": null,
                 "vdim": null, "dropout": 0.0, "add_bias_kv": false,
                 "add_zero_attn": false, "is_causal": false})") == "PASS");
  // Each default, flipped, changes the verdict.
  CHECK_THAT(with(R"({"embed_dim": 2, "num_heads": 2, "batch_first": true})"),
             StartsWith("FAIL expected.attn_weights: shape [2, 1, 1], expected [1, 2, 2]"));
  CHECK_THAT(with(R"({"embed_dim": 2, "num_heads": 2, "bias": false})"),
             StartsWith("FAIL expected.output: "));
  CHECK_THAT(with(R"({"embed_dim": 2, "num_heads": 2, "average_attn_weights": false})"),
             StartsWith("FAIL expected.attn_weights: shape [1, 2, 2, 2], expected [1, 2, 2]"));
  CHECK(with(R"({"embed_dim": 2, "num_heads": 2, "need_weights": false})") ==
        "UNSUPPORTED output 'attn_weights' of multihead_attention");

  // Per-head weights [B, H, L, S], and need_weights false with only the output expected.
  CaseFile per_head =
      mha_case<S>(R"({"embed_dim": 2, "num_heads": 2, "average_attn_weights": false})", 1);
  per_head.add<S>("expected.output", {2, 1, 2}, kMhaOutput);
  per_head.add<S>("expected.attn_weights", {1, 2, 2, 2},
                  {0.75, 0.25, 0.5, 0.5, 0.5, 0.5, 0.25, 0.75});
  CHECK(verdict(per_head.run()) == "PASS");
  CaseFile no_weights =
      mha_case<S>(R"({"embed_dim": 2, "num_heads": 2, "need_weights": false})", 1);
  no_weights.add<S>("expected.output", {2, 1, 2}, kMhaOutput);
  CHECK(verdict(no_weights.run()) == "PASS");

  // Cross-attention with explicit key and value equal to the query gives the same result.
  CaseFile cross = mha_case<S>(kMhaOptions, 1);
  cross.add<S>("input.key", {2, 1, 2}, {1, 0, 0, 1})
      .template add<S>("input.value", {2, 1, 2}, {1, 0, 0, 1});
  cross.add<S>("expected.output", {2, 1, 2}, kMhaOutput);
  CHECK(verdict(cross.run()) == "PASS");
}

TEMPLATE_TEST_CASE("runner: embedding hand case passes exactly", "[conformance]", float, double) {
  using S = TestType;
  // weight rows 0: [1, 2], 1: [3, 4], 2: [5, 6]; ids [[2, 0], [1, 2]] -> rows in that order.
  const auto with = [](const std::string& options) {
    CaseFile c("embedding", options, kExact, kExact);
    c.add<S>("weight", {3, 2}, {1, 2, 3, 4, 5, 6});
    c.add<std::int64_t>("input.input", {2, 2}, {2, 0, 1, 2});
    c.add<S>("expected.output", {2, 2, 2}, {5, 6, 1, 2, 3, 4, 5, 6});
    return c.run();
  };
  const CaseResult r = with(R"({"num_embeddings": 3, "embedding_dim": 2})");
  REQUIRE(verdict(r) == "PASS");
  CHECK(r.max_abs_err == 0.0);
  // padding_idx does not change the forward: the stored row 0 = [1, 2] is returned.
  CHECK(verdict(with(R"({"num_embeddings": 3, "embedding_dim": 2, "padding_idx": 0})")) == "PASS");
  CHECK(verdict(with(R"({"num_embeddings": 3, "embedding_dim": 2, "padding_idx": -3})")) == "PASS");
  CHECK(verdict(with(R"({"num_embeddings": 4, "embedding_dim": 2})")) ==
        "FAIL weight is [3, 2], expected [4, 2]");
}

TEMPLATE_TEST_CASE(
    "runner: sinusoidal_positional_encoding hand case, layout defaults to interleaved",
    "[conformance]", float, double) {
  using S = TestType;
  // d_model 4: w_0 = 1, w_1 = 1 / 10000^(2/4) = 1/100. Interleaved row p:
  // [sin p, cos p, sin(p/100), cos(p/100)]; concatenated: [sin p, sin(p/100), cos p, cos(p/100)].
  const auto table = [](bool interleaved, Index first) {
    std::vector<double> t;
    for (Index r = 0; r < 3; ++r) {
      const double p = static_cast<double>(first + r);
      if (interleaved) {
        t.insert(t.end(), {std::sin(p), std::cos(p), std::sin(p / 100), std::cos(p / 100)});
      } else {
        t.insert(t.end(), {std::sin(p), std::sin(p / 100), std::cos(p), std::cos(p / 100)});
      }
    }
    return t;
  };
  const auto with = [](const std::string& options, const std::vector<double>& want) {
    CaseFile c("sinusoidal_positional_encoding", options, HandTol<S>::rtol, HandTol<S>::atol);
    c.add<S>("expected.output", {3, 4}, want);
    return verdict(c.run());
  };
  const std::string base = R"({"max_len": 3, "d_model": 4)";
  CHECK(table(true, 0)[0] == 0.0);  // row 0 is [0, 1, 0, 1]
  CHECK(with(base + "}", table(true, 0)) == "PASS");
  CHECK(with(base + R"(, "layout": "interleaved", "first_position": 0})", table(true, 0)) ==
        "PASS");
  CHECK(with(base + R"(, "layout": "concatenated"})", table(false, 0)) == "PASS");
  CHECK(with(base + R"(, "first_position": 1})", table(true, 1)) == "PASS");
  CHECK_THAT(with(base + "}", table(false, 0)), StartsWith("FAIL expected.output: "));
  CHECK(with(base + R"(, "layout": "diagonal"})", table(true, 0)) ==
        "UNSUPPORTED layout 'diagonal'");
}

// ======================================================================================
// The comparison: abs(got - want) <= atol + rtol * abs(want), or got == want; NaN never.
// ======================================================================================

TEMPLATE_TEST_CASE("runner: a value passes up to atol + rtol * |want| and fails beyond",
                   "[conformance]", float, double) {
  using S = TestType;
  // softmax([0, 0]) = [0.5, 0.5] exactly. Every number below is a binary fraction, exact
  // in float and double, so the boundary err == tol is hit exactly.
  const auto check = [](double want0, const char* rtol, const char* atol) {
    return softmax_case<S>({1, 2}, {0, 0}, {want0, 0.5}, rtol, atol).run();
  };
  // atol alone: err 0.25 == tol 0.25 passes; 2^-20 more fails.
  CHECK(verdict(check(0.75, "0", "0.25")) == "PASS");
  CHECK(verdict(check(0.75 + std::ldexp(1.0, -20), "0", "0.25")) ==
        "FAIL expected.output: max_abs_err=2.500e-01 at [0, 0] (tolerance 2.500e-01)");
  // rtol scales with |want|, not |got|: want 1, err 0.5, tol 0.25 + 0.25 * 1 = 0.5 passes;
  // want 0, err 0.5 > tol 0.25 + 0.25 * 0 fails (with |got| it would be 0.375).
  CHECK(verdict(check(1.0, "0.25", "0.25")) == "PASS");
  CHECK(verdict(check(0.0, "0.25", "0.25")) ==
        "FAIL expected.output: max_abs_err=5.000e-01 at [0, 0] (tolerance 2.500e-01)");
  // Realistic tolerances, "1e-06" notation: 2^-20 = 9.5e-7 is within atol 1e-6, 2^-19 is not.
  const CaseResult near = check(0.5 + std::ldexp(1.0, -20), "0", "1e-06");
  REQUIRE(verdict(near) == "PASS");
  CHECK(near.max_abs_err == std::ldexp(1.0, -20));  // PASS reports the largest |got - want|
  CHECK_THAT(
      verdict(check(0.5 + std::ldexp(1.0, -19), "0", "1e-06")),
      StartsWith("FAIL expected.output: max_abs_err=1.907e-06 at [0, 0] (tolerance 1.000e-06)"));
  // got == want passes with rtol = atol = 0.
  const CaseResult exact = check(0.5, kExact, kExact);
  REQUIRE(verdict(exact) == "PASS");
  CHECK(exact.max_abs_err == 0.0);
  CHECK(verdict(check(0.5, "0.0", "0e0")) == "PASS");
}

TEMPLATE_TEST_CASE("runner: FAIL names the element with the largest err / tolerance",
                   "[conformance]", float, double) {
  using S = TestType;
  // softmax of zeros [2, 2] = 0.5 everywhere; rtol 0.1, atol 0, so tol = 0.1 * |want|:
  //   [0, 1] want 0.6:  err 0.1,  tol 0.06,  ratio 1.7  (the first failing element)
  //   [1, 0] want 10:   err 9.5,  tol 1.0,   ratio 9.5  (the largest error)
  //   [1, 1] want 0.05: err 0.45, tol 0.005, ratio 90   (the largest ratio: reported)
  const CaseResult r =
      softmax_case<S>({2, 2}, {0, 0, 0, 0}, {0.5, 0.6, 10, 0.05}, "0.1", "0").run();
  CHECK(verdict(r) ==
        "FAIL expected.output: max_abs_err=4.500e-01 at [1, 1] (tolerance 5.000e-03)");
  // The index has one entry per dimension: [2, 1, 2], worst at [1, 0, 1].
  CHECK(
      verdict(softmax_case<S>({2, 1, 2}, {0, 0, 0, 0}, {0.5, 0.6, 0.5, 0.05}, "0.1", "0").run()) ==
      "FAIL expected.output: max_abs_err=4.500e-01 at [1, 0, 1] (tolerance 5.000e-03)");
  // With a zero tolerance every ratio is infinite; the larger error wins the tie.
  CHECK(verdict(softmax_case<S>({1, 3}, {0, 0, 0}, {1. / 3 + 0.25, 1. / 3 + 0.5, 1. / 3 - 0.125},
                                kExact, kExact)
                    .run()) ==
        "FAIL expected.output: max_abs_err=5.000e-01 at [0, 1] (tolerance 0.000e+00)");
}

TEMPLATE_TEST_CASE("runner: FAIL names the first failing tensor", "[conformance]", float, double) {
  using S = TestType;
  // scaled_dot_product_attention of one query over two equal keys: weights (1/2, 1/2),
  // output the mean of values 2 and 6 = 4 (exact). Tensors are checked in name order.
  const auto sdpa = [](double w0, double out) {
    CaseFile c("scaled_dot_product_attention", "", kExact, kExact);
    c.add<S>("input.query", {1, 1}, {1}).template add<S>("input.key", {2, 1}, {1, 1});
    c.add<S>("input.value", {2, 1}, {2, 6});
    c.add<S>("expected.attn_weights", {1, 2}, {w0, 0.5})
        .template add<S>("expected.output", {1, 1}, {out});
    return verdict(c.run());
  };
  CHECK(sdpa(0.5, 4) == "PASS");
  CHECK(sdpa(0.5, 4.5) ==
        "FAIL expected.output: max_abs_err=5.000e-01 at [0, 0] (tolerance 0.000e+00)");
  CHECK(sdpa(0.25, 4.5) ==
        "FAIL expected.attn_weights: max_abs_err=2.500e-01 at [0, 0] (tolerance 0.000e+00)");
}

TEMPLATE_TEST_CASE("runner: NaN never passes; equal infinities pass", "[conformance]", float,
                   double) {
  using S = TestType;
  // An expected NaN fails against any value, whatever the tolerance.
  CHECK(verdict(softmax_case<S>({1, 2}, {0, 0}, {kNaN, 0.5}, "1000", "1000").run()) ==
        "FAIL expected.output: max_abs_err=nan at [0, 0] (tolerance nan)");
  // An expected infinity does not pass a finite value, though |0.5 - inf| <= rtol * inf.
  CHECK(verdict(softmax_case<S>({1, 2}, {0, 0}, {kInf, 0.5}, "1e-05", "1e-08").run()) ==
        "FAIL expected.output: max_abs_err=inf at [0, 0] (tolerance inf)");

  // multihead_attention overflowing to +inf: E = H = 1, no bias, W_q = W_k = 0 (score 0,
  // weight 1), W_v = W_o = big, query 2: output 2 * big * big overflows (2e60 > 3.4e38 in
  // float, 2e400 > 1.8e308 in double), a value an expected tensor can hold.
  const double big = sizeof(S) == 4 ? 1e30 : 1e200;
  const auto overflow = [big](double want) {
    CaseFile c("multihead_attention", R"({"embed_dim": 1, "num_heads": 1, "bias": false})", kExact,
               kExact);
    c.add<S>("in_proj_weight", {3, 1}, {0, 0, big})
        .template add<S>("out_proj.weight", {1, 1}, {big});
    c.add<S>("input.query", {1, 1, 1}, {2});
    c.add<S>("expected.output", {1, 1, 1}, {want})
        .template add<S>("expected.attn_weights", {1, 1, 1}, {1});
    return c.run();
  };
  const CaseResult r = overflow(kInf);
  REQUIRE(verdict(r) == "PASS");  // got == want == +inf, even with rtol = atol = 0
  CHECK(r.max_abs_err == 0.0);
  CHECK(verdict(overflow(-kInf)) ==
        "FAIL expected.output: max_abs_err=inf at [0, 0, 0] (tolerance 0.000e+00)");
  const double top = static_cast<double>(std::numeric_limits<S>::max());
  CHECK(verdict(overflow(top)) ==
        "FAIL expected.output: max_abs_err=inf at [0, 0, 0] (tolerance 0.000e+00)");
}

TEMPLATE_TEST_CASE("runner: the comparison alone, on NaN and infinite outputs", "[conformance]",
                   float, double) {
  using S = TestType;
  namespace cd = attend::conformance::detail;
  // compare() directly, so the module output can hold NaN (no module produces one here).
  const auto compare = [](const std::vector<double>& want, const std::vector<double>& got,
                          double rtol, double atol) {
    attend::SafeTensorsWriter w;
    std::vector<S> values(want.begin(), want.end());
    w.add("expected.output", Tensor<S>({1, static_cast<Index>(want.size())}, values));
    const attend::SafeTensors st = attend::SafeTensors::parse(w.to_bytes(), kSource);
    cd::Case c;
    c.st = &st;
    c.module = "softmax";
    c.rtol = rtol;
    c.atol = atol;
    const std::vector<S> g(got.begin(), got.end());
    const cd::Outputs<S> outputs{{"output", Tensor<S>({1, static_cast<Index>(got.size())}, g)}};
    CaseResult r;
    cd::compare<S>(c, outputs, r);
    return r;
  };
  const CaseResult same = compare({kInf, -kInf, 1}, {kInf, -kInf, 1}, 0, 0);
  REQUIRE(verdict(same) == "PASS");
  CHECK(same.max_abs_err == 0.0);
  CHECK(verdict(compare({1, 2}, {1, kNaN}, 1e3, 1e3)) ==
        "FAIL expected.output: max_abs_err=nan at [0, 1] (tolerance 3.000e+03)");
  CHECK(verdict(compare({kNaN}, {kNaN}, 1e3, 1e3)) ==
        "FAIL expected.output: max_abs_err=nan at [0, 0] (tolerance nan)");
  CHECK(verdict(compare({kInf, 0}, {-kInf, 0}, 1, 1)) ==
        "FAIL expected.output: max_abs_err=inf at [0, 0] (tolerance inf)");
  // |1 - inf| = inf <= atol + rtol * inf, yet an infinity passes only when equal.
  CHECK(verdict(compare({kInf, 0}, {1, 0}, 1e-5, 1e-8)) ==
        "FAIL expected.output: max_abs_err=inf at [0, 0] (tolerance inf)");
  CHECK(verdict(compare({1e30, 0}, {kInf, 0}, 1, 1)) ==
        "FAIL expected.output: max_abs_err=inf at [0, 0] (tolerance 1.000e+30)");
  // An output the module does not produce cannot be checked: UNSUPPORTED.
  const CaseResult none = [&] {
    attend::SafeTensorsWriter w;
    w.add("expected.output", Tensor<S>({1}, std::vector<S>{1}));
    const attend::SafeTensors st = attend::SafeTensors::parse(w.to_bytes(), kSource);
    cd::Case c;
    c.st = &st;
    c.module = "softmax";
    CaseResult r;
    try {
      cd::compare<S>(c, cd::Outputs<S>{}, r);
    } catch (const attend::conformance::unsupported& e) {
      r.status = CaseResult::Status::unsupported;
      r.detail = e.what();
    }
    return r;
  }();
  CHECK(verdict(none) == "UNSUPPORTED output 'output' of softmax");
}

// ======================================================================================
// Masks
// ======================================================================================

TEMPLATE_TEST_CASE("runner: SDPA masks, BOOL and I64 alike, true = masked out, broadcast",
                   "[conformance]", float, double) {
  using S = TestType;
  // Blocked (query i, key j) for every b, h: (0, 2) and (1, 0).
  const auto lxs = [](Index, Index, Index i, Index j) {
    return (i == 0 && j == 2) || (i == 1 && j == 0) ? -kInf : 0.0;
  };
  const std::vector<double> lxs_mask = {0, 0, 1, 1, 0, 0};  // [L, S], 1 = masked out
  const Attention want = zero_query_attention(lxs);
  REQUIRE(want.weights[0] == 0.5);  // query 0 of (0, 0) attends keys 0 and 1 equally

  const auto with_mask = [](const Attention& w, auto tag, Shape shape, const std::vector<double>& m,
                            const std::string& options = "") {
    using M = decltype(tag);
    CaseFile c = zero_query_case<S>(options, w);
    c.template add<M>("input.attn_mask", std::move(shape), m);
    return c.run();
  };
  const CaseResult as_bool = with_mask(want, bool{}, {kL, kS}, lxs_mask);
  const CaseResult as_i64 = with_mask(want, std::int64_t{}, {kL, kS}, lxs_mask);
  CHECK(verdict(as_bool) == "PASS");
  CHECK(verdict(as_i64) == "PASS");
  CHECK(as_bool.max_abs_err == as_i64.max_abs_err);  // the same computation
  // An additive float mask holding -inf and 0 means the same.
  const std::vector<double> additive = {0, 0, -kInf, -kInf, 0, 0};
  CHECK(verdict(with_mask(want, S{}, {kL, kS}, additive)) == "PASS");
  // Polarity: the inverted mask (true = attend) gives other weights.
  CHECK_THAT(verdict(with_mask(want, bool{}, {kL, kS}, {1, 1, 0, 0, 1, 1})), StartsWith("FAIL "));
  // An I64 mask holding 2 is neither true nor false.
  CHECK(verdict(with_mask(want, std::int64_t{}, {kL, kS}, {0, 0, 2, 1, 0, 0})) ==
        "FAIL SafeTensors::get: tensor 'input.attn_mask' in case.safetensors: element 2 is 2, "
        "expected 0 or 1 (reading I64 as bool)");

  // Finite additive values are added to the scores: row 0 of every head gets
  // (0, ln2, -inf) -> weights (1/3, 2/3, 0); row 1 (-inf, 0, 0) -> (0, 1/2, 1/2).
  const auto finite = [](Index, Index, Index i, Index j) {
    const double row0[] = {0, kLn2, -kInf}, row1[] = {-kInf, 0, 0};
    return i == 0 ? row0[j] : row1[j];
  };
  CHECK(verdict(with_mask(zero_query_attention(finite), S{}, {kL, kS},
                          {0, kLn2, -kInf, -kInf, 0, 0})) == "PASS");

  // [B, 1, L, S]: batch 0 blocks key 0 for query 0, batch 1 blocks key 2 for query 1.
  const auto per_batch = [](Index b, Index, Index i, Index j) {
    return (b == 0 && i == 0 && j == 0) || (b == 1 && i == 1 && j == 2) ? -kInf : 0.0;
  };
  const std::vector<double> b1ls = {1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  CHECK(verdict(with_mask(zero_query_attention(per_batch), bool{}, {kB, 1, kL, kS}, b1ls)) ==
        "PASS");
  CHECK(verdict(with_mask(zero_query_attention(per_batch), std::int64_t{}, {kB, 1, kL, kS},
                          b1ls)) == "PASS");
  // [B, 1, 1, S] (key padding shape): batch 0 blocks key 1, batch 1 blocks key 0.
  const auto padding = [](Index b, Index, Index, Index j) { return j == 1 - b ? -kInf : 0.0; };
  CHECK(verdict(with_mask(zero_query_attention(padding), std::int64_t{}, {kB, 1, 1, kS},
                          {0, 1, 0, 1, 0, 0})) == "PASS");
  // [H, L, S] lines up with the head axis (right-aligned broadcasting): head 1 blocks (0, 0).
  const auto per_head = [](Index, Index h, Index i, Index j) {
    return h == 1 && i == 0 && j == 0 ? -kInf : 0.0;
  };
  CHECK(verdict(with_mask(zero_query_attention(per_head), bool{}, {kH, kL, kS},
                          {0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0})) == "PASS");
  // [S] broadcasts to every query: key 2 blocked everywhere.
  const auto key2 = [](Index, Index, Index, Index j) { return j == 2 ? -kInf : 0.0; };
  CHECK(verdict(with_mask(zero_query_attention(key2), bool{}, {kS}, {0, 0, 1})) == "PASS");
  // A mask that does not broadcast is a FAIL with the reason.
  CHECK_THAT(verdict(with_mask(want, bool{}, {kL, 2}, {0, 0, 0, 0})),
             Contains("attn_mask is [1, 1, 2, 2], expected broadcastable to [2, 2, 2, 3]"));

  // is_causal masks key j for query i when j > i (top-left): row 0 sees key 0, row 1 keys 0, 1.
  const auto causal = [](Index, Index, Index i, Index j) { return j > i ? -kInf : 0.0; };
  CHECK(verdict(zero_query_case<S>(R"({"is_causal": true})", zero_query_attention(causal)).run()) ==
        "PASS");
  CHECK_THAT(verdict(zero_query_case<S>("", zero_query_attention(causal)).run()),
             StartsWith("FAIL "));
}

TEMPLATE_TEST_CASE("runner: MHA masks, BOOL and I64 alike, additive -inf, 3-D per head",
                   "[conformance]", float, double) {
  using S = TestType;
  const auto with_mask = [](const std::string& input, auto tag, Shape shape,
                            const std::vector<double>& m, Index B, const std::vector<double>& out,
                            const std::vector<double>& weights) {
    using M = decltype(tag);
    CaseFile c = mha_case<S>(kMhaOptions, B);
    c.template add<M>(input, std::move(shape), m);
    c.template add<S>("expected.output", {2, B, 2}, out);
    c.template add<S>("expected.attn_weights", {B, 2, 2}, weights);
    return verdict(c.run());
  };
  // attn_mask [L, S] = [[0, 1], [0, 0]]: query 0 sees key 0 only in both heads, so its
  // head outputs are v_0 = [3, 4] and its output [13, 28]; query 1 is as unmasked.
  const std::vector<double> out2d = {13, 28, 12.5, 29.5}, w2d = {1, 0, 3. / 8, 5. / 8};
  CHECK(with_mask("input.attn_mask", bool{}, {2, 2}, {0, 1, 0, 0}, 1, out2d, w2d) == "PASS");
  CHECK(with_mask("input.attn_mask", std::int64_t{}, {2, 2}, {0, 1, 0, 0}, 1, out2d, w2d) ==
        "PASS");
  CHECK(with_mask("input.attn_mask", std::int64_t{}, {2, 2}, {0, 2, 0, 0}, 1, out2d, w2d) ==
        "FAIL SafeTensors::get: tensor 'input.attn_mask' in case.safetensors: element 1 is 2, "
        "expected 0 or 1 (reading I64 as bool)");
  // Additive [[0, -inf], [ln3, 0]]: query 0 as above; query 1 scores head 0 (ln3, 0) ->
  // (3/4, 1/4), head output 2.75; head 1 (ln3, ln3) -> (1/2, 1/2), 4.5: [12.75, 29].
  CHECK(with_mask("input.attn_mask", S{}, {2, 2}, {0, -kInf, kLn3, 0}, 1, {13, 28, 12.75, 29},
                  {1, 0, 5. / 8, 3. / 8}) == "PASS");

  // 3-D [B * H, L, S] with B = 2, indexed b * H + h: (b0, h1) blocks (1, 0), (b1, h0) blocks
  // (0, 1). Batch 0: head 1 query 1 sees v_1 only (5): output rows [12.75, 29], [12.5, 30];
  // weights [[(3/4 + 1/2)/2, (1/4 + 1/2)/2], [(1/2 + 0)/2, (1/2 + 1)/2]].
  // Batch 1: head 0 query 0 sees v_0 only (3): rows [13, 29], [12.5, 29.5];
  // weights [[(1 + 1/2)/2, (0 + 1/2)/2], [(1/2 + 1/4)/2, (1/2 + 3/4)/2]].
  const std::vector<double> out3d = {12.75, 29, 13, 29, 12.5, 30, 12.5, 29.5};  // [L, B, E]
  const std::vector<double> w3d = {5. / 8, 3. / 8, 1. / 4, 3. / 4, 3. / 4, 1. / 4, 3. / 8, 5. / 8};
  const std::vector<double> m3d = {0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0};
  CHECK(with_mask("input.attn_mask", bool{}, {4, 2, 2}, m3d, 2, out3d, w3d) == "PASS");
  CHECK(with_mask("input.attn_mask", std::int64_t{}, {4, 2, 2}, m3d, 2, out3d, w3d) == "PASS");
  std::vector<double> additive3d;
  for (const double m : m3d) additive3d.push_back(m == 1 ? -kInf : 0.0);
  CHECK(with_mask("input.attn_mask", S{}, {4, 2, 2}, additive3d, 2, out3d, w3d) == "PASS");
  // Indexed h * B + b instead, entries 1 and 2 would swap: a different result.
  const std::vector<double> swapped = {0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0};
  CHECK_THAT(with_mask("input.attn_mask", bool{}, {4, 2, 2}, swapped, 2, out3d, w3d),
             StartsWith("FAIL "));

  // key_padding_mask [B, S]: batch 1 pads key 1, so all its queries see v_0: rows [13, 28].
  const std::vector<double> out_kp = {12.75, 29, 13, 28, 12.5, 29.5, 13, 28};
  const std::vector<double> w_kp = {5. / 8, 3. / 8, 3. / 8, 5. / 8, 1, 0, 1, 0};
  CHECK(with_mask("input.key_padding_mask", bool{}, {2, 2}, {0, 0, 0, 1}, 2, out_kp, w_kp) ==
        "PASS");
  CHECK(with_mask("input.key_padding_mask", std::int64_t{}, {2, 2}, {0, 0, 0, 1}, 2, out_kp,
                  w_kp) == "PASS");
  CHECK(with_mask("input.key_padding_mask", S{}, {2, 2}, {0, 0, 0, -kInf}, 2, out_kp, w_kp) ==
        "PASS");
  CHECK_THAT(
      with_mask("input.key_padding_mask", std::int64_t{}, {2, 2}, {0, 0, 0, 2}, 2, out_kp, w_kp),
      StartsWith("FAIL SafeTensors::get: tensor 'input.key_padding_mask' in case.safetensors: "
                 "element 3 is 2"));
}

// ======================================================================================
// Unaligned data
// ======================================================================================

TEMPLATE_TEST_CASE("runner: tensor data at odd file offsets is read byte-wise", "[conformance]",
                   float, double) {
  using S = TestType;
  // softmax([1000, 1000, -inf]) = [0.5, 0.5, 0] exactly.
  const std::size_t n = 3 * sizeof(S);
  const auto header = [&](std::size_t first, std::size_t gap) {
    const std::string dt = dtype_name<S>();
    const std::size_t e0 = first, e1 = e0 + n, i0 = e1 + gap, i1 = i0 + n;
    return R"({"__metadata__":{"module":"softmax","rtol":"0","atol":"0"},)"
           R"("expected.output":{"dtype":")" +
           dt + R"(","shape":[3],"data_offsets":[)" + std::to_string(e0) + "," +
           std::to_string(e1) + R"(]},"input.input":{"dtype":")" + dt +
           R"(","shape":[3],"data_offsets":[)" + std::to_string(i0) + "," + std::to_string(i1) +
           "]}}";
  };
  const Bytes want = le_bytes<S>({0.5, 0.5, 0}), x = le_bytes<S>({1000, 1000, -kInf});

  // The data buffer starts at an odd file offset: pad the header to an odd length.
  std::string h = header(0, 0);
  if (h.size() % 2 == 0) h += ' ';
  REQUIRE((8 + h.size()) % 2 == 1);
  Bytes data = want;
  data.insert(data.end(), x.begin(), x.end());
  CHECK(run_bytes(raw_file(h, data)) == "PASS");

  // Header padded to a multiple of 8, tensors at buffer offsets 1 and 1 + n + 3.
  std::string h2 = header(1, 3);
  h2.append((8 - h2.size() % 8) % 8, ' ');
  Bytes data2(1, 0xAB);
  data2.insert(data2.end(), want.begin(), want.end());
  data2.insert(data2.end(), 3, 0xCD);
  data2.insert(data2.end(), x.begin(), x.end());
  CHECK(run_bytes(raw_file(h2, data2)) == "PASS");
}

// ======================================================================================
// Malformed input: FAIL with the reason, never a crash
// ======================================================================================

TEMPLATE_TEST_CASE("runner: malformed files fail with the reason", "[conformance]", float, double) {
  using S = TestType;
  const auto good = [] { return softmax_case<S>({1, 2}, {0, 0}, {0.5, 0.5}, kExact, kExact); };
  REQUIRE(verdict(good().run()) == "PASS");
  const Bytes bytes = good().bytes();

  // Truncated: the last tensor ends past the data buffer; or not even the length field.
  Bytes cut(bytes.begin(), bytes.end() - 1);
  CHECK_THAT(run_bytes(cut), StartsWith("FAIL SafeTensors: case.safetensors: truncated file: tensor '") &&
                                 Contains("expected end <= " + std::to_string(4 * sizeof(S) - 1) +
                                          " (the data buffer's size)"));
  CHECK(run_bytes(Bytes(bytes.begin(), bytes.begin() + 5)) ==
        "FAIL SafeTensors: case.safetensors: truncated file or not a safetensors file: file is 5 "
        "bytes, expected at least 8 (the header length)");
  CHECK(run_bytes(Bytes()) ==
        "FAIL SafeTensors: case.safetensors: empty file or not a safetensors file: file is 0 "
        "bytes, expected at least 8 (the header length)");
  // Cut inside the header: the length field now points past the end.
  CHECK_THAT(run_bytes(Bytes(bytes.begin(), bytes.begin() + 20)),
             StartsWith("FAIL SafeTensors: case.safetensors: truncated file: header length is ") &&
                 Contains(", expected at most 12 (the bytes after the length field)"));
  // Header length past the end of the file.
  Bytes long_header = bytes;
  long_header[0] = 0xFF;
  long_header[1] = 0xFF;
  CHECK_THAT(run_bytes(long_header), Contains("(the bytes after the length field)"));
  Bytes huge = bytes;
  for (int k = 0; k < 8; ++k) huge[k] = 0xFF;
  CHECK(run_bytes(huge) ==
        "FAIL SafeTensors: case.safetensors: not a safetensors file: it begins with "
        "\"\\xFF\\xFF\\xFF\\xFF\\xFF\\xFF\\xFF\\xFF\", read as a header length of "
        "18446744073709551615, expected at most 100000000");
  // Bad JSON header; a header that is not an object.
  CHECK(run_bytes(raw_file("{\"a\": [1, 2}", {})) ==
        "FAIL SafeTensors: case.safetensors: header is not valid JSON near file offset 19");
  CHECK(run_bytes(raw_file("[]", {})) ==
        "FAIL SafeTensors: case.safetensors: header is a JSON array, expected an object");
  // A BOOL byte other than 0 or 1.
  CHECK(run_bytes(raw_file(R"({"m":{"dtype":"BOOL","shape":[1],"data_offsets":[0,1]}})", {2})) ==
        "FAIL SafeTensors: case.safetensors: tensor 'm': element 0 is 2, expected 0 or 1 (BOOL)");
}

TEMPLATE_TEST_CASE("runner: malformed metadata fails with the reason", "[conformance]", float,
                   double) {
  using S = TestType;
  const auto meta = [](const std::string& key, const std::string& value) {
    return verdict(
        softmax_case<S>({1, 2}, {0, 0}, {0.5, 0.5}, kExact, kExact).meta(key, value).run());
  };
  CHECK_THAT(meta("options", R"({"dim": )"),
             StartsWith("FAIL metadata 'options' is not valid JSON: [json.exception.parse_error."));
  CHECK(meta("options", "[-1]") == "FAIL metadata 'options' is not a JSON object");
  CHECK(meta("options", R"({"dim": "last"})") ==
        "FAIL option 'dim' is \"last\", expected an integer");
  CHECK(meta("options", R"({"dim": 0.5})") == "FAIL option 'dim' is 0.5, expected an integer");
  CHECK(meta("options", R"({"dim": 2})") == "FAIL option 'dim' is out of range for input [1, 2]");
  // A deeply nested option value is described by its type (dumping it would recurse until
  // the stack overflows).
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  CHECK(meta("options", R"({"dim": )" + deep + "}") ==
        "FAIL option 'dim' is a JSON array, expected an integer");
  CHECK(meta("rtol", "abc") ==
        "FAIL metadata 'rtol' is \"abc\", expected a non-negative decimal number");
  CHECK(meta("atol", "1e-5x") ==
        "FAIL metadata 'atol' is \"1e-5x\", expected a non-negative decimal number");
  CHECK(meta("rtol", "-1") ==
        "FAIL metadata 'rtol' is \"-1\", expected a non-negative decimal number");
  CHECK(meta("rtol", "nan") ==
        "FAIL metadata 'rtol' is \"nan\", expected a non-negative decimal number");
  CHECK(meta("atol", "") == "FAIL metadata 'atol' is \"\", expected a non-negative decimal number");
  CHECK(meta("rtol", "1e-05") == "PASS");

  CaseFile no_module("", "", kExact, kExact);
  no_module.add<S>("input.input", {2}, {0, 0}).template add<S>("expected.output", {2}, {0.5, 0.5});
  CHECK(verdict(no_module.run()) == "FAIL metadata has no 'module'");
  CHECK(run_bytes(raw_file("{}", {})) == "FAIL metadata has no 'module'");
}

TEMPLATE_TEST_CASE("runner: malformed tensors fail with the reason", "[conformance]", float,
                   double) {
  using S = TestType;
  using Other = std::conditional_t<std::is_same_v<S, float>, double, float>;
  // Mixed F32/F64 float tensors.
  CaseFile mixed("softmax", "", kExact, kExact);
  mixed.add<S>("input.input", {2}, {0, 0}).template add<Other>("expected.output", {2}, {0.5, 0.5});
  CHECK(verdict(mixed.run()) == "FAIL float tensors must share one dtype, found 2");
  // Expected tensor of the wrong shape.
  CHECK(verdict(softmax_case<S>({3}, {0, 0, 0}, {1. / 3, 1. / 3, 1. / 3}, kExact, kExact).run()) ==
        "PASS");
  CaseFile shape("softmax", "", HandTol<S>::rtol, HandTol<S>::atol);
  shape.add<S>("input.input", {2, 3}, {0, 0, 0, 0, 0, 0})
      .template add<S>("expected.output", {3, 2}, {0, 0, 0, 0, 0, 0});
  CHECK(verdict(shape.run()) == "FAIL expected.output: shape [2, 3], expected [3, 2]");
  // Missing input.
  CaseFile no_input("softmax", "", kExact, kExact);
  no_input.add<S>("expected.output", {2}, {0.5, 0.5});
  CHECK(verdict(no_input.run()) ==
        "FAIL SafeTensors: no tensor named 'input.input' in case.safetensors");
  // No expected tensor: nothing would be checked.
  CaseFile no_expected("softmax", "", kExact, kExact);
  no_expected.add<S>("input.input", {2}, {0, 0});
  CHECK(verdict(no_expected.run()) == "FAIL no expected. tensor: the case checks nothing");
  // An integer tensor where a float one is needed.
  CaseFile int_input("softmax", "", kExact, kExact);
  int_input.add<std::int64_t>("input.input", {2}, {0, 0})
      .template add<S>("expected.output", {2}, {0.5, 0.5});
  CHECK(verdict(int_input.run()) ==
        "FAIL SafeTensors::get: tensor 'input.input' in case.safetensors is I64, expected F16, "
        "BF16, F32 or F64 (reading as " +
            std::string(sizeof(S) == 4 ? "float" : "double") + ")");

  // Missing parameters.
  const auto mha_without = [](const std::string& skip) {
    CaseFile c("multihead_attention", kMhaOptions, HandTol<S>::rtol, HandTol<S>::atol);
    const auto add = [&](const std::string& name, Shape s, const std::vector<double>& v) {
      if (name != skip) c.add<S>(name, std::move(s), v);
    };
    add("in_proj_weight", {6, 2}, {kLn3, 0, 0, kLn3, 1, 0, 0, 1, 1, 0, 0, 1});
    add("in_proj_bias", {6}, {0, 0, 0, 0, 2, 4});
    add("out_proj.weight", {2, 2}, {1, 0, 0, 2});
    add("out_proj.bias", {2}, {10, 20});
    add("input.query", {2, 1, 2}, {1, 0, 0, 1});
    c.add<S>("expected.output", {2, 1, 2}, kMhaOutput);
    return verdict(c.run());
  };
  CHECK(mha_without("") == "PASS");
  CHECK(mha_without("out_proj.weight") ==
        "FAIL multihead_attention: no parameter named 'out_proj.weight' in case.safetensors");
  CHECK(mha_without("in_proj_weight") ==
        "FAIL multihead_attention: no parameter named 'in_proj_weight' in case.safetensors");
  CHECK(mha_without("in_proj_bias") ==
        "FAIL load_vector: no parameter named 'in_proj_bias' in case.safetensors");
  CHECK(mha_without("input.query") ==
        "FAIL SafeTensors: no tensor named 'input.query' in case.safetensors");
  CaseFile no_weight("embedding", R"({"num_embeddings": 1, "embedding_dim": 1})", kExact, kExact);
  no_weight.add<std::int64_t>("input.input", {1}, {0})
      .template add<S>("expected.output", {1, 1}, {0});
  CHECK(verdict(no_weight.run()) ==
        "FAIL Embedding::from_state_dict: no parameter named 'weight' in case.safetensors");
  // Required options.
  CaseFile no_heads("multihead_attention", R"({"embed_dim": 2})", kExact, kExact);
  no_heads.add<S>("input.query", {1, 1, 2}, {0, 0})
      .template add<S>("expected.output", {1, 1, 2}, {0, 0});
  CHECK(verdict(no_heads.run()) == "FAIL option 'num_heads' is required for multihead_attention");
  // key without value.
  CaseFile key_only = mha_case<S>(kMhaOptions, 1);
  key_only.add<S>("input.key", {2, 1, 2}, {1, 0, 0, 1})
      .template add<S>("expected.output", {2, 1, 2}, kMhaOutput);
  CHECK(verdict(key_only.run()) == "FAIL input.key and input.value must both be present or absent");
}

TEMPLATE_TEST_CASE("runner: sizes from options are checked before anything is allocated",
                   "[conformance]", float, double) {
  using S = TestType;
  // A 100-byte file claiming embed_dim 100000 (an 8e10-byte in_proj_weight) or a
  // 1e5 x 1e5 positional table fails at once instead of exhausting memory.
  CaseFile mha("multihead_attention", R"({"embed_dim": 100000, "num_heads": 1})", kExact, kExact);
  mha.add<S>("input.query", {1, 1, 1}, {0}).template add<S>("expected.output", {1, 1, 1}, {0});
  CHECK(verdict(mha.run()) ==
        "FAIL multihead_attention: no parameter named 'out_proj.weight' in case.safetensors");
  CaseFile pe("sinusoidal_positional_encoding", R"({"max_len": 100000, "d_model": 100000})", kExact,
              kExact);
  pe.add<S>("expected.output", {1, 1}, {0});
  CHECK(verdict(pe.run()) ==
        "FAIL expected.output is [1, 1], expected [max_len, d_model] = [100000, 100000]");
  // Zero keys would leave every score row empty (fully masked): a FAIL, not an assertion.
  CaseFile no_keys("scaled_dot_product_attention", "", kExact, kExact);
  no_keys.add<S>("input.query", {1, 1}, {0}).template add<S>("input.key", {0, 1}, {});
  no_keys.add<S>("input.value", {0, 1}, {}).template add<S>("expected.output", {1, 1}, {0});
  CHECK(verdict(no_keys.run()) ==
        "FAIL input.key is [0, 1]: S = 0 keys leave every query row fully masked");
  CaseFile mha_no_keys = mha_case<S>(kMhaOptions, 1);
  mha_no_keys.add<S>("input.key", {0, 1, 2}, {}).template add<S>("input.value", {0, 1, 2}, {});
  mha_no_keys.add<S>("expected.output", {2, 1, 2}, kMhaOutput);
  CHECK(verdict(mha_no_keys.run()) ==
        "FAIL input.key is [0, 1, 2]: S = 0 keys leave every query row fully masked");
  // An empty softmax is computed (nothing to do), not asserted on.
  CHECK(verdict(softmax_case<S>({2, 0}, {}, {}, kExact, kExact).run()) == "PASS");
}

// ======================================================================================
// UNSUPPORTED: unknown module, option or input; gradient cases; dropout
// ======================================================================================

TEMPLATE_TEST_CASE("runner: what the runner does not handle is UNSUPPORTED", "[conformance]", float,
                   double) {
  using S = TestType;
  // A module name the library does not have (PyTorch's Conv1d).
  CaseFile conv("conv1d", R"({"in_channels": 1, "out_channels": 1, "kernel_size": 1})", kExact,
                kExact);
  conv.add<S>("weight", {1, 1, 1}, {1});
  conv.add<S>("input.input", {1, 1, 1}, {0}).template add<S>("expected.output", {1, 1, 1}, {0});
  CHECK(verdict(conv.run()) == "UNSUPPORTED module 'conv1d'");
  // Unknown option and unknown input.
  CHECK(verdict(softmax_case<S>({2}, {0, 0}, {0.5, 0.5}, kExact, kExact,
                                R"({"dim": -1, "dtype": "float64"})")
                    .run()) == "UNSUPPORTED option 'dtype' of softmax");
  CHECK(verdict(softmax_case<S>({2}, {0, 0}, {0.5, 0.5}, kExact, kExact)
                    .template add<S>("input.mask", {2}, {0, 0})
                    .run()) == "UNSUPPORTED input 'mask' of softmax");
  // An expected output the module does not have.
  CHECK(verdict(softmax_case<S>({2}, {0, 0}, {0.5, 0.5}, kExact, kExact)
                    .template add<S>("expected.log", {2}, {0, 0})
                    .run()) == "UNSUPPORTED output 'log' of softmax");
  // Gradient cases of a module without a backward (the positional table has no input).
  // d_model 2, position 0: [sin 0, cos 0] = [0, 1].
  CaseFile pe("sinusoidal_positional_encoding", R"({"max_len": 1, "d_model": 2})", kExact,
              kExact);
  pe.add<S>("expected.output", {1, 2}, {0, 1}).template add<S>("upstream.output", {1, 2}, {1, 1});
  CHECK(verdict(pe.run()) ==
        "UNSUPPORTED gradient case (grad./upstream. tensors) of sinusoidal_positional_encoding");

  // Dropout other than 0 (training mode); 0 is accepted and ignored.
  const auto mha = [](const std::string& options) {
    CaseFile c = mha_case<S>(options, 1);
    c.add<S>("expected.output", {2, 1, 2}, kMhaOutput);
    return verdict(c.run());
  };
  CHECK(mha(R"({"embed_dim": 2, "num_heads": 2, "dropout": 0.1})") ==
        "UNSUPPORTED option 'dropout' != 0 (training mode)");
  CHECK(mha(R"({"embed_dim": 2, "num_heads": 2, "dropout": 0})") == "PASS");
  // add_bias_kv is handled, and needs its parameters: without bias_k the case fails.
  CHECK_THAT(mha(R"({"embed_dim": 2, "num_heads": 2, "add_bias_kv": true})"),
             StartsWith("FAIL ") && Contains("bias_k"));
  CHECK(mha(R"({"embed_dim": 2, "num_heads": 2, "add_attn_sink": true})") ==
        "UNSUPPORTED option 'add_attn_sink' of multihead_attention");
  const auto sdpa = [](const std::string& options) {
    CaseFile c("scaled_dot_product_attention", options, kExact, kExact);
    c.add<S>("input.query", {1, 1}, {1}).template add<S>("input.key", {2, 1}, {1, 1});
    c.add<S>("input.value", {2, 1}, {2, 6}).template add<S>("expected.output", {1, 1}, {4});
    return verdict(c.run());
  };
  CHECK(sdpa(R"({"dropout_p": 0.5})") == "UNSUPPORTED option 'dropout_p' != 0 (training mode)");
  CHECK(sdpa(R"({"dropout_p": 0.0})") == "PASS");
  CHECK(sdpa(R"({"sliding_window": 4})") ==
        "UNSUPPORTED option 'sliding_window' of scaled_dot_product_attention");
}

TEMPLATE_TEST_CASE("runner: attention cases run through every path", "[conformance]", float,
                   double) {
  using S = TestType;
  using attend::conformance::detail::paths_for;
  // The reference, then the fused kernel in each variant this CPU runs (double: portable).
  std::vector<std::string> want{"reference", "fused/portable"};
  if (std::is_same_v<S, float> && attend::fused_kernel_supported(attend::FusedKernel::avx2)) {
    want.push_back("fused/avx2");
  }
  std::vector<std::string> names;
  for (const auto& p : paths_for("scaled_dot_product_attention", false, std::is_same_v<S, float>))
    names.push_back(p.name);
  CHECK(names == want);
  names.clear();
  for (const auto& p : paths_for("transformer_encoder_layer", false, std::is_same_v<S, float>))
    names.push_back(p.name);
  CHECK(names == want);
  // Modules without attention, and training through cached weights: one path.
  CHECK(paths_for("lstm", false, true).size() == 1);
  CHECK(paths_for("multihead_attention", true, true).size() == 1);
  CHECK(paths_for("scaled_dot_product_attention", true, std::is_same_v<S, float>).size() ==
        want.size());

  // enable_gqa (rank 3, heads in dim 0): q [2, 1, 1] = 1, one kv head k [1, 2, 1] = 1,
  // v = [2, 6]: both query heads weigh the two equal scores 1/2 each, output (2 + 6) / 2 = 4.
  CaseFile gqa("scaled_dot_product_attention", R"({"enable_gqa": true})", kExact, kExact);
  gqa.add<S>("input.query", {2, 1, 1}, {1, 1}).template add<S>("input.key", {1, 2, 1}, {1, 1});
  gqa.add<S>("input.value", {1, 2, 1}, {2, 6}).template add<S>("expected.output", {2, 1, 1}, {4, 4});
  CHECK(verdict(gqa.run()) == "PASS");
  // Only the weights expected: the fused paths compute none of the case's tensors, and the
  // FAIL line names the first such path.
  CaseFile weights_only("scaled_dot_product_attention", "", kExact, kExact);
  weights_only.add<S>("input.query", {1, 1}, {1}).template add<S>("input.key", {2, 1}, {1, 1});
  weights_only.add<S>("input.value", {2, 1}, {2, 6});
  weights_only.add<S>("expected.attn_weights", {1, 2}, {0.5, 0.5});
  CHECK(verdict(weights_only.run()) ==
        "FAIL the run produced none of the case's expected. or grad. tensors (path "
        "fused/portable)");
}

TEMPLATE_TEST_CASE("runner: gradient cases check every grad. tensor; no backward is UNSUPPORTED",
                   "[conformance][grad]", float, double) {
  using S = TestType;
  // embedding V = 3, D = 1, weight [1, 2, 3], padding_idx 0, ids [0, 2, 2], upstream
  // [5, 6, 7]: L = 5 w0 + 6 w2 + 7 w2, so grad.weight = [0 (padding row), 0, 6 + 7 = 13].
  const auto embedding = [](std::vector<double> grad_weight, bool with_upstream = true) {
    CaseFile c("embedding", R"({"num_embeddings": 3, "embedding_dim": 1, "padding_idx": 0})",
               kExact, kExact);
    c.add<S>("weight", {3, 1}, {1, 2, 3}).template add<std::int64_t>("input.input", {3}, {0, 2, 2});
    c.add<S>("expected.output", {3, 1}, {1, 3, 3});
    if (with_upstream) c.add<S>("upstream.output", {3, 1}, {5, 6, 7});
    c.add<S>("grad.weight", {3, 1}, grad_weight);
    return verdict(c.run());
  };
  CHECK(embedding({0, 0, 13}) == "PASS");
  // A grad. tensor is compared like an expected. one.
  CHECK(embedding({0, 0, 12}) ==
        "FAIL grad.weight: max_abs_err=1.000e+00 at [2, 0] (tolerance 0.000e+00)");
  CHECK(embedding({0, 0, 13}, false) ==
        "FAIL no upstream. tensor: the gradient case defines no L");

  // multihead_attention (the hand case of mha_case): a gradient the runner does not
  // produce is UNSUPPORTED rather than ignored; an unknown upstream likewise.
  CaseFile extra = mha_case<S>(kMhaOptions, 1);
  extra.add<S>("upstream.output", {2, 1, 2}, {0, 0, 0, 0});
  extra.add<S>("grad.bias_k", {1, 1, 2}, {0, 0});
  CHECK(verdict(extra.run()) == "UNSUPPORTED gradient 'bias_k' of multihead_attention");
  CaseFile odd_upstream = mha_case<S>(kMhaOptions, 1);
  odd_upstream.add<S>("upstream.attn_output", {2, 1, 2}, {0, 0, 0, 0});
  odd_upstream.add<S>("grad.out_proj.bias", {2}, {0, 0});
  CHECK(verdict(odd_upstream.run()) ==
        "UNSUPPORTED upstream gradient 'attn_output' of multihead_attention");
  // With upstream.output = 0 every gradient is exactly 0.
  CaseFile zero = mha_case<S>(kMhaOptions, 1);
  zero.add<S>("upstream.output", {2, 1, 2}, {0, 0, 0, 0});
  zero.add<S>("grad.out_proj.bias", {2}, {0, 0});
  zero.add<S>("grad.input.query", {2, 1, 2}, {0, 0, 0, 0});
  CHECK(verdict(zero.run()) == "PASS");
  // upstream.output = 1 for output (t = 0, e = 1) only: grad.out_proj.bias = [0, 1].
  CaseFile one = mha_case<S>(kMhaOptions, 1);
  one.add<S>("upstream.output", {2, 1, 2}, {0, 1, 0, 0});
  one.add<S>("grad.out_proj.bias", {2}, {0, 1});
  CHECK(verdict(one.run()) == "PASS");

  // softmax of [0, 0] is [1/2, 1/2]; with upstream [1, 0]:
  // dx = y * (dy - y . dy) = [0.5 (1 - 0.5), 0.5 (0 - 0.5)] = [0.25, -0.25].
  const auto soft = [](std::vector<double> grad, bool with_upstream = true) {
    CaseFile c = softmax_case<S>({2}, {0, 0}, {0.5, 0.5}, kExact, kExact);
    if (with_upstream) c.add<S>("upstream.output", {2}, {1, 0});
    c.add<S>("grad.input.input", {2}, grad);
    return verdict(c.run());
  };
  CHECK(soft({0.25, -0.25}) == "PASS");
  CHECK_THAT(soft({0.25, 0.25}), StartsWith("FAIL grad.input.input: max_abs_err=5.000e-01 at [1]"));
  CHECK(soft({0.25, -0.25}, false) == "FAIL no upstream. tensor: the gradient case defines no L");
}
