// SPDX-License-Identifier: MIT
// Tests of PyTorch's full argument set of scaled dot-product attention on tensors (any rank,
// enable_gqa, logit soft-capping; SdpaOptions), reference and fused, forward and backward:
// hand-computed cases, slices and repeated heads as oracles, gradient checks, errors.
#include "attend/attention/dispatch.hpp"
#include "attend/attention/fused.hpp"
#include "attend/attention/fused_backward.hpp"
#include "attend/attention/mask.hpp"
#include "attend/attention/scaled_dot_product.hpp"
#include "attend/core/errors.hpp"
#include "attend/core/random.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/train/gradcheck.hpp"

#include <Eigen/Core>

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "test_util.hpp"

namespace {

using attend::AttentionTensorCache;
using attend::AttentionTensorGrads;
using attend::FusedKernel;
using attend::Index;
using attend::Mask;
using attend::Rng;
using attend::SdpaOptions;
using attend::Shape;
using attend::Tensor;

using attend_test::dot_loss;
using attend_test::random_tensor;
using attend_test::require_close;
using attend_test::require_gradient;

// ---- tolerances ------------------------------------------------------------------------

/// Hand values are written with 12 decimals; float results carry a few ulps of O(1) values.
template <typename S>
constexpr double kHandTol = std::is_same_v<S, float> ? 2e-6 : 1e-11;

/// The same per-head arithmetic on the same numbers reached another way (a slice of a
/// rank-5 call, K/V repeated instead of shared): only Eigen's vectorised summation order
/// may differ with memory alignment, a few ulps of O(1) values.
template <typename S>
constexpr double kSameKernelTol = std::is_same_v<S, float> ? 1e-6 : 1e-14;

/// Fused vs reference on O(1) logits (as fused_test.cpp's kFusedTol): the scale applied at
/// another point, another exp, online summation: a few ulps of each weight; the soft-cap's
/// tanh (bounded derivative <= 1) adds no amplification.
template <typename S>
constexpr double kFusedTol = std::is_same_v<S, float> ? 1e-5 : 1e-12;

/// Fused backward vs reference backward (as fused_test.cpp's kBackwardTol): P recomputed
/// from the lse, sums in other orders; GQA sums H / H_kv such partials.
template <typename S>
constexpr double kBackwardTol = std::is_same_v<S, float> ? 2e-5 : 1e-12;

// ---- builders --------------------------------------------------------------------------

/// Tensor t viewed at rank `rank` by adding or dropping leading 1s (PyTorch's right
/// alignment).
template <typename T>
Tensor<T> pad_rank(const Tensor<T>& t, Index rank) {
  Shape s = t.shape();
  while (static_cast<Index>(s.size()) > rank && s.front() == 1) s.erase(s.begin());
  s.insert(s.begin(), static_cast<std::size_t>(rank - static_cast<Index>(s.size())), Index(1));
  return t.reshaped(s);
}

/// Slice a of dimension 0 (slice 0 when that extent is 1: a broadcast), rank one less.
template <typename T>
Tensor<T> slice0(const Tensor<T>& t, Index a) {
  const Index n = t.dim(0) == 1 ? 0 : a;
  Shape s(t.shape().begin() + 1, t.shape().end());
  Tensor<T> out(s);
  for (Index i = 0; i < out.size(); ++i) out.data()[i] = t.data()[n * out.size() + i];
  return out;
}

/// PyTorch's repeat_interleave(t, group, dim=-3): head h of the result is head h / group.
template <typename S>
Tensor<S> repeat_interleave_heads(const Tensor<S>& t, Index group) {
  Shape s = t.shape();
  const std::size_t hd = s.size() - 3;
  const Index h_kv = s[hd], block = s[hd + 1] * s[hd + 2];
  s[hd] *= group;
  Tensor<S> out(s);
  const Index outer = t.size() / (h_kv * block);
  for (Index o = 0; o < outer; ++o)
    for (Index h = 0; h < h_kv * group; ++h)
      for (Index i = 0; i < block; ++i)
        out.data()[(o * h_kv * group + h) * block + i] =
            t.data()[(o * h_kv + h / group) * block + i];
  return out;
}

/// The sum over each group of `group` consecutive heads (dimension -3): the adjoint of
/// repeat_interleave_heads, i.e. the gradient of shared K/V from repeated ones.
template <typename S>
Tensor<S> sum_head_groups(const Tensor<S>& t, Index group) {
  Shape s = t.shape();
  const std::size_t hd = s.size() - 3;
  const Index h = s[hd], block = s[hd + 1] * s[hd + 2];
  s[hd] /= group;
  Tensor<S> out(s);
  const Index outer = t.size() / (h * block);
  for (Index o = 0; o < outer; ++o)
    for (Index j = 0; j < h; ++j)
      for (Index i = 0; i < block; ++i)
        out.data()[(o * (h / group) + j / group) * block + i] += t.data()[(o * h + j) * block + i];
  return out;
}

Tensor<bool> random_bools(const Shape& shape, Rng& rng, double p_true) {
  Tensor<bool> t(shape);
  for (Index i = 0; i < t.size(); ++i) t.data()[i] = rng.uniform() < p_true;
  return t;
}

SdpaOptions options_with(std::optional<double> scale, bool gqa, std::optional<double> cap) {
  SdpaOptions o;
  o.scale = scale;
  o.enable_gqa = gqa;
  o.logit_softcap = cap;
  return o;
}

// ---- hand-computed cases ---------------------------------------------------------------

TEMPLATE_TEST_CASE("scaled_dot_product.hpp: logit_softcap by hand, 1 query and 2 keys",
                   "[attention][sdpa_options]", float, double) {
  using S = TestType;
  // q = [2, 0], k = [[2, 0], [-1, 0]], scale 0.5: u = 0.5 * [4, -2] = [2, -1].
  // c = 2: z = 2 tanh(u / 2) = [2 tanh(1), -2 tanh(0.5)] = [1.523188311912, -0.924234314520]
  // w0 = 1 / (1 + exp(z1 - z0)) = 1 / (1 + exp(-2.447422626432)) = 0.920372768054
  // (without the cap: 1 / (1 + exp(-3)) = 0.952574126822). v = I, so out = w.
  const Tensor<S> q({1, 2}, std::vector<S>{2, 0});
  const Tensor<S> k({2, 2}, std::vector<S>{2, 0, -1, 0});
  const Tensor<S> v({2, 2}, std::vector<S>{1, 0, 0, 1});
  const SdpaOptions o = options_with(0.5, false, 2.0);
  const Tensor<S> want({1, 2}, std::vector<S>{S(0.920372768054), S(0.079627231946)});
  const auto ref = attend::scaled_dot_product_attention(q, k, v, Mask(), o);
  require_close(ref.output, want, kHandTol<S>);
  require_close(ref.attn_weights, want, kHandTol<S>);
  for (const FusedKernel kernel : attend::fused_kernels_supported()) {
    INFO("kernel " << attend::fused_kernel_name(kernel));
    require_close(attend::detail::scaled_dot_product_attention_fused(q, k, v, Mask(), o, kernel),
                  want, kHandTol<S>);
  }

  // The mask is added after the cap. q = [1, 0], k = [[2, 0], [0, 0]], scale 1, c = 1:
  // z = [tanh 2, tanh 0] = [0.964027580076, 0]; bias [0, 1.5]: [0.964027580076, 1.5];
  // w0 = 1 / (1 + exp(1.5 - 0.964027580076)) = 1 / (1 + 1.709109406488) = 0.369124996431
  // (a bias inside the tanh would give tanh([2, 1.5]) = [0.9640, 0.9051], w0 = 0.5147).
  const Tensor<S> q2({1, 2}, std::vector<S>{1, 0});
  const Tensor<S> k2({2, 2}, std::vector<S>{2, 0, 0, 0});
  const Mask bias = Mask::additive(Tensor<S>({1, 2}, std::vector<S>{0, 1.5}));
  const SdpaOptions o2 = options_with(1.0, false, 1.0);
  const Tensor<S> want2({1, 2}, std::vector<S>{S(0.369124996431), S(0.630875003569)});
  require_close(attend::scaled_dot_product_attention(q2, k2, v, bias, o2).output, want2,
                kHandTol<S>);
  for (const FusedKernel kernel : attend::fused_kernels_supported()) {
    INFO("kernel " << attend::fused_kernel_name(kernel));
    require_close(attend::detail::scaled_dot_product_attention_fused(q2, k2, v, bias, o2, kernel),
                  want2, kHandTol<S>);
  }
}

TEMPLATE_TEST_CASE("scaled_dot_product.hpp: enable_gqa by hand, H = 4 query heads on H_kv = 2",
                   "[attention][sdpa_options]", float, double) {
  using S = TestType;
  // [1, H, 1, 1] queries q_h = [1, 2, 1, 2]; [1, 2, 2, 1] keys and values, scale 1.
  // kv head 0: k = [0, 0] (equal scores), v = [1, 3]: out = (1 + 3) / 2 = 2 for any q.
  // kv head 1: k = [ln 3, 0], v = [4, 8]: q = 1: weights [3, 1] / 4, out = 3 + 2 = 5;
  //            q = 2: scores [2 ln 3, 0], weights [9, 1] / 10, out = 3.6 + 0.8 = 4.4.
  // Query heads 0, 1 read kv head 0 and 2, 3 read kv head 1: out = [2, 2, 5, 4.4]
  // (interleaved h % H_kv would give [2, 4.4, 2, 4.4]).
  const S ln3 = static_cast<S>(std::log(3.0));
  const Tensor<S> q({1, 4, 1, 1}, std::vector<S>{1, 2, 1, 2});
  const Tensor<S> k({1, 2, 2, 1}, std::vector<S>{0, 0, ln3, 0});
  const Tensor<S> v({1, 2, 2, 1}, std::vector<S>{1, 3, 4, 8});
  const SdpaOptions o = options_with(1.0, true, std::nullopt);
  const Tensor<S> want({1, 4, 1, 1}, std::vector<S>{2, 2, 5, S(4.4)});
  const auto ref = attend::scaled_dot_product_attention(q, k, v, Mask(), o);
  require_close(ref.output, want, kHandTol<S>);
  // weights of query head 3: [0.9, 0.1]
  CHECK(ref.attn_weights(0, 3, 0, 0) == Approx(0.9).epsilon(kHandTol<S>));
  for (const FusedKernel kernel : attend::fused_kernels_supported()) {
    INFO("kernel " << attend::fused_kernel_name(kernel));
    require_close(attend::detail::scaled_dot_product_attention_fused(q, k, v, Mask(), o, kernel),
                  want, kHandTol<S>);
  }
  // Rank 3 [H, L, E] with [H_kv, S, E]: the same numbers.
  const auto r3 = attend::scaled_dot_product_attention(q.reshaped({4, 1, 1}), k.reshaped({2, 2, 1}),
                                                       v.reshaped({2, 2, 1}), Mask(), o);
  require_close(r3.output, want.reshaped({4, 1, 1}), kHandTol<S>);
}

// ---- any rank ----------------------------------------------------------------------------

/// Masks of rank 2 to 5 over scores [A, B, H, L, S] that broadcast over different leading
/// dimensions, as (name, mask, the mask of slice a).
struct RankFiveMask {
  std::string name;
  Mask mask;
  std::vector<Mask> slices;  // per index a of dimension 0
};

std::vector<RankFiveMask> rank_five_masks(Index A, Index B, Index H, Index L, Index Sk, Rng& rng) {
  std::vector<RankFiveMask> out;
  const auto add_bool = [&](const std::string& name, const Shape& shape) {
    const Tensor<bool> allowed = random_bools(shape, rng, 0.7);
    RankFiveMask m{name, Mask::from_torch_sdpa(allowed), {}};
    const Tensor<bool> padded = pad_rank(allowed, 5);
    for (Index a = 0; a < A; ++a) m.slices.push_back(Mask::from_torch_sdpa(slice0(padded, a)));
    out.push_back(std::move(m));
  };
  const auto add_bias = [&](const std::string& name, const Shape& shape) {
    const Tensor<double> bias = random_tensor<double>(shape, rng, 2.0);
    RankFiveMask m{name, Mask::additive(bias), {}};
    const Tensor<double> padded = pad_rank(bias, 5);
    for (Index a = 0; a < A; ++a) m.slices.push_back(Mask::additive(slice0(padded, a)));
    out.push_back(std::move(m));
  };
  add_bool("bool [A, 1, 1, L, S] (over B and H)", {A, 1, 1, L, Sk});
  add_bool("bool [A, B, H, L, S] (full)", {A, B, H, L, Sk});
  add_bool("bool [A, B, 1, 1, S] (padding per A, B)", {A, B, 1, 1, Sk});
  add_bool("bool [H, L, S] (rank 3, over A and B)", {H, L, Sk});
  add_bias("additive [B, 1, L, S] (rank 4, over A and H)", {B, 1, L, Sk});
  add_bias("additive [A, 1, H, 1, S] (over B and L)", {A, 1, H, 1, Sk});
  add_bias("additive [L, S] (rank 2)", {L, Sk});
  add_bias("additive [1, 1, 1, 1, L, S] (rank 6, leading 1s)", {1, 1, 1, 1, L, Sk});
  {
    const Tensor<bool> allowed = random_bools({A, 1, H, L, Sk}, rng, 0.8);
    RankFiveMask m{"causal & bool [A, 1, H, L, S]", Mask::causal() & Mask::from_torch_sdpa(allowed),
                   {}};
    for (Index a = 0; a < A; ++a)
      m.slices.push_back(Mask::causal() & Mask::from_torch_sdpa(slice0(allowed, a)));
    out.push_back(std::move(m));
  }
  return out;
}

TEMPLATE_TEST_CASE("scaled_dot_product.hpp: rank 5 equals rank-4 calls on each slice",
                   "[attention][sdpa_options]", float, double) {
  using S = TestType;
  Rng rng(501);
  const Index A = 2, B = 3, H = 2, L = 4, Sk = 5, E = 3, Ev = 2;
  const Tensor<S> q = random_tensor<S>({A, B, H, L, E}, rng);
  const Tensor<S> k = random_tensor<S>({A, B, H, Sk, E}, rng);
  const Tensor<S> v = random_tensor<S>({A, B, H, Sk, Ev}, rng);
  const Tensor<S> d_out = random_tensor<S>({A, B, H, L, Ev}, rng);
  for (const std::optional<double> cap : {std::optional<double>(), std::optional<double>(1.5)}) {
    const SdpaOptions o = options_with(0.7, false, cap);
    for (const RankFiveMask& m : rank_five_masks(A, B, H, L, Sk, rng)) {
      INFO("mask " << m.name << ", softcap " << (cap ? *cap : 0.0));
      AttentionTensorCache<S> cache;
      const Tensor<S> out = attend::scaled_dot_product_attention_forward(q, k, v, m.mask, o, &cache);
      const AttentionTensorGrads<S> g =
          attend::scaled_dot_product_attention_backward(q, k, v, cache, d_out);
      Tensor<S> lse;
      const Tensor<S> fused = attend::scaled_dot_product_attention_fused(q, k, v, m.mask, o, &lse);
      const AttentionTensorGrads<S> fg = attend::scaled_dot_product_attention_fused_backward(
          q, k, v, fused, lse, d_out, m.mask, o);
      REQUIRE(out.shape() == Shape{A, B, H, L, Ev});
      REQUIRE(cache.weights.shape() == Shape{A, B, H, L, Sk});
      REQUIRE(lse.shape() == Shape{A, B, H, L});
      for (Index a = 0; a < A; ++a) {
        INFO("slice " << a);
        const Tensor<S> qa = slice0(q, a), ka = slice0(k, a), va = slice0(v, a);
        AttentionTensorCache<S> ca;
        const Tensor<S> want =
            attend::scaled_dot_product_attention_forward(qa, ka, va, m.slices[a], o, &ca);
        require_close(slice0(out, a), want, kSameKernelTol<S>, kSameKernelTol<S>);
        require_close(slice0(cache.weights, a), ca.weights, kSameKernelTol<S>, kSameKernelTol<S>);
        const AttentionTensorGrads<S> ga =
            attend::scaled_dot_product_attention_backward(qa, ka, va, ca, slice0(d_out, a));
        require_close(slice0(g.dq, a), ga.dq, kSameKernelTol<S>, kSameKernelTol<S>);
        require_close(slice0(g.dk, a), ga.dk, kSameKernelTol<S>, kSameKernelTol<S>);
        require_close(slice0(g.dv, a), ga.dv, kSameKernelTol<S>, kSameKernelTol<S>);
        require_close(slice0(fused, a), want, kFusedTol<S>, kFusedTol<S>);
        require_close(slice0(fg.dq, a), ga.dq, kBackwardTol<S>, kBackwardTol<S>);
        require_close(slice0(fg.dk, a), ga.dk, kBackwardTol<S>, kBackwardTol<S>);
        require_close(slice0(fg.dv, a), ga.dv, kBackwardTol<S>, kBackwardTol<S>);
      }
    }
  }
}

TEST_CASE("mask.hpp: masks of rank > 4 are stored without leading 1s and flattened",
          "[attention][sdpa_options]") {
  // A [1, 1, 1, 2, 3] tensor loses its leading 1s down to rank 4: [1, 1, 2, 3].
  CHECK(Mask::deny(Tensor<bool>({1, 1, 1, 2, 3})).blocked()->shape() == Shape{1, 1, 2, 3});
  CHECK(Mask::deny(Tensor<bool>({2, 1, 1, 2, 3})).blocked()->shape() == Shape{2, 1, 1, 2, 3});
  // Scores [2, 3, 4, L, S]: B = 2 * 3, H = 4.
  const Shape scores{2, 3, 4, 2, 3};
  // All batch extents full: a reshape [6, 1, 2, 3].
  CHECK(Mask::deny(Tensor<bool>({2, 3, 1, 2, 3})).flatten_leading(scores).blocked()->shape() ==
        Shape{6, 1, 2, 3});
  // All batch extents 1: [1, 4, 2, 3].
  CHECK(Mask::deny(Tensor<bool>({4, 2, 3})).flatten_leading(scores).blocked()->shape() ==
        Shape{1, 4, 2, 3});
  // Mixed ([2, 1] over [2, 3]): expanded over the batch, entry (a, b) = input (a).
  Tensor<bool> mixed({2, 1, 1, 1, 3}, false);
  mixed(Index(1), Index(0), Index(0), Index(0), Index(2)) = true;  // a = 1, key 2
  const Mask flat = Mask::deny(mixed).flatten_leading(scores);
  REQUIRE(flat.blocked()->shape() == Shape{6, 1, 1, 3});
  for (Index n = 0; n < 6; ++n) {
    for (Index j = 0; j < 3; ++j) {
      INFO("n " << n << ", j " << j);
      CHECK(flat.is_blocked(n, 0, 0, j) == (n / 3 == 1 && j == 2));
    }
  }
  // operator& broadcasts masks of different ranks (right-aligned).
  const Mask both = Mask::deny(Tensor<bool>({2, 1, 1, 1, 3})) & Mask::deny(Tensor<bool>({3, 2, 3}));
  CHECK(both.blocked()->shape() == Shape{2, 1, 3, 2, 3});
}

// ---- enable_gqa --------------------------------------------------------------------------

TEMPLATE_TEST_CASE("scaled_dot_product.hpp: enable_gqa equals repeat_interleave of K and V",
                   "[attention][sdpa_options]", float, double) {
  using S = TestType;
  Rng rng(77);
  struct Case {
    Shape q, kv;  // query and key shapes (value: same as key with E_v)
    Index group;
  };
  const Index L = 5, Sk = 7, E = 4, Ev = 3;
  const std::vector<Case> cases{{{2, 6, L, E}, {2, 2, Sk, E}, 3},
                                {{2, 6, L, E}, {2, 3, Sk, E}, 2},
                                {{4, L, E}, {1, Sk, E}, 4},
                                {{2, 2, 4, L, E}, {2, 2, 2, Sk, E}, 2}};
  for (const Case& c : cases) {
    INFO("query " << attend::detail::shape_string(c.q) << ", key "
                  << attend::detail::shape_string(c.kv));
    Shape v_shape = c.kv;
    v_shape.back() = Ev;
    Shape o_shape = c.q;
    o_shape.back() = Ev;
    const Tensor<S> q = random_tensor<S>(c.q, rng), k = random_tensor<S>(c.kv, rng);
    const Tensor<S> v = random_tensor<S>(v_shape, rng), d_out = random_tensor<S>(o_shape, rng);
    const Tensor<S> k_rep = repeat_interleave_heads(k, c.group);
    const Tensor<S> v_rep = repeat_interleave_heads(v, c.group);
    Shape scores = c.q;
    scores.back() = Sk;
    const Mask mask = Mask::causal(2) & Mask::from_torch_sdpa(random_bools(scores, rng, 0.8));
    for (const std::optional<double> cap : {std::optional<double>(), std::optional<double>(2.0)}) {
      INFO("softcap " << (cap ? *cap : 0.0));
      const SdpaOptions gqa = options_with(std::nullopt, true, cap);
      const SdpaOptions plain = options_with(std::nullopt, false, cap);
      AttentionTensorCache<S> cg, cr;
      const Tensor<S> out = attend::scaled_dot_product_attention_forward(q, k, v, mask, gqa, &cg);
      const Tensor<S> want =
          attend::scaled_dot_product_attention_forward(q, k_rep, v_rep, mask, plain, &cr);
      require_close(out, want, kSameKernelTol<S>, kSameKernelTol<S>);
      const auto g = attend::scaled_dot_product_attention_backward(q, k, v, cg, d_out);
      const auto gr = attend::scaled_dot_product_attention_backward(q, k_rep, v_rep, cr, d_out);
      REQUIRE(g.dk.shape() == k.shape());
      REQUIRE(g.dv.shape() == v.shape());
      require_close(g.dq, gr.dq, kSameKernelTol<S>, kSameKernelTol<S>);
      require_close(g.dk, sum_head_groups(gr.dk, c.group), kSameKernelTol<S>, kSameKernelTol<S>);
      require_close(g.dv, sum_head_groups(gr.dv, c.group), kSameKernelTol<S>, kSameKernelTol<S>);
      for (const FusedKernel kernel : attend::fused_kernels_supported()) {
        INFO("kernel " << attend::fused_kernel_name(kernel));
        Tensor<S> lse, lse_rep;
        const Tensor<S> f =
            attend::detail::scaled_dot_product_attention_fused(q, k, v, mask, gqa, kernel, &lse);
        const Tensor<S> f_rep = attend::detail::scaled_dot_product_attention_fused(
            q, k_rep, v_rep, mask, plain, kernel, &lse_rep);
        require_close(f, f_rep, kSameKernelTol<S>, kSameKernelTol<S>);
        require_close(f, want, kFusedTol<S>, kFusedTol<S>);
        require_close(lse, lse_rep, kSameKernelTol<S>, kSameKernelTol<S>);
        const auto fg = attend::scaled_dot_product_attention_fused_backward(q, k, v, f, lse, d_out,
                                                                            mask, gqa);
        require_close(fg.dq, g.dq, kBackwardTol<S>, kBackwardTol<S>);
        require_close(fg.dk, g.dk, kBackwardTol<S>, kBackwardTol<S>);
        require_close(fg.dv, g.dv, kBackwardTol<S>, kBackwardTol<S>);
      }
    }
  }
}

TEMPLATE_TEST_CASE("fused_backward.hpp: GQA backward is bit-identical for 1 and 2 threads",
                   "[attention][sdpa_options]", float, double) {
  using S = TestType;
  Rng rng(91);
  const Tensor<S> q = random_tensor<S>({2, 4, 70, 8}, rng), k = random_tensor<S>({2, 2, 40, 8}, rng);
  const Tensor<S> v = random_tensor<S>({2, 2, 40, 8}, rng), d = random_tensor<S>({2, 4, 70, 8}, rng);
  const SdpaOptions o = options_with(std::nullopt, true, 3.0);
  Tensor<S> lse;
  const Tensor<S> out = attend::scaled_dot_product_attention_fused(q, k, v, Mask::causal(), o, &lse);
#if defined(_OPENMP)
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const auto g1 =
      attend::scaled_dot_product_attention_fused_backward(q, k, v, out, lse, d, Mask::causal(), o);
  omp_set_num_threads(2);
  const auto g2 =
      attend::scaled_dot_product_attention_fused_backward(q, k, v, out, lse, d, Mask::causal(), o);
  omp_set_num_threads(saved);
  CHECK(g1.dq.flat() == g2.dq.flat());
  CHECK(g1.dk.flat() == g2.dk.flat());
  CHECK(g1.dv.flat() == g2.dv.flat());
#else
  const auto g1 =
      attend::scaled_dot_product_attention_fused_backward(q, k, v, out, lse, d, Mask::causal(), o);
  CHECK(g1.dk.flat().allFinite());
  WARN("built without OpenMP: thread-count independence not exercised");
#endif
}

// ---- soft-capping: fused vs reference -----------------------------------------------------

TEMPLATE_TEST_CASE("fused.hpp: logit_softcap fused equals the reference, forward and backward",
                   "[attention][sdpa_options]", float, double) {
  using S = TestType;
  Rng rng(13);
  const Index B = 2, H = 3, L = 37, Sk = 70, E = 16, Ev = 8;  // odd sizes: partial tiles
  const Tensor<S> q = random_tensor<S>({B, H, L, E}, rng, 2.0);
  const Tensor<S> k = random_tensor<S>({B, H, Sk, E}, rng, 2.0);
  const Tensor<S> v = random_tensor<S>({B, H, Sk, Ev}, rng);
  const Tensor<S> d_out = random_tensor<S>({B, H, L, Ev}, rng);
  const std::vector<std::pair<std::string, Mask>> masks{
      {"none", Mask()},
      {"causal", Mask::causal()},
      {"padding", Mask::key_padding_lengths({50, 9}, Sk)},
      {"additive", Mask::additive(random_tensor<double>({H, L, Sk}, rng, 3.0))}};
  for (const double cap : {0.5, 5.0, 50.0}) {
    const SdpaOptions o = options_with(std::nullopt, false, cap);
    for (const auto& [name, mask] : masks) {
      INFO("mask " << name << ", softcap " << cap);
      AttentionTensorCache<S> cache;
      const Tensor<S> want = attend::scaled_dot_product_attention_forward(q, k, v, mask, o, &cache);
      const auto gw = attend::scaled_dot_product_attention_backward(q, k, v, cache, d_out);
      for (const FusedKernel kernel : attend::fused_kernels_supported()) {
        INFO("kernel " << attend::fused_kernel_name(kernel));
        Tensor<S> lse;
        const Tensor<S> got =
            attend::detail::scaled_dot_product_attention_fused(q, k, v, mask, o, kernel, &lse);
        require_close(got, want, kFusedTol<S>, kFusedTol<S>);
        const auto g = attend::scaled_dot_product_attention_fused_backward(q, k, v, got, lse, d_out,
                                                                           mask, o);
        require_close(g.dq, gw.dq, kBackwardTol<S>, kBackwardTol<S>);
        require_close(g.dk, gw.dk, kBackwardTol<S>, kBackwardTol<S>);
        require_close(g.dv, gw.dv, kBackwardTol<S>, kBackwardTol<S>);
      }
    }
  }
}

// ---- gradient checks ---------------------------------------------------------------------

TEST_CASE("scaled_dot_product.hpp: tensor backward passes gradient checks (softcap, GQA, rank 5)",
          "[attention][sdpa_options][grad]") {
  Rng rng(2024);
  struct Case {
    std::string name;
    Shape q, kv;
    SdpaOptions options;
    bool masked;
  };
  const Index L = 3, Sk = 4, E = 3, Ev = 2;
  const std::vector<Case> cases{
      {"softcap 1.5, rank 4", {2, 2, L, E}, {2, 2, Sk, E}, options_with(0.9, false, 1.5), true},
      {"GQA 4 on 2, rank 4", {1, 4, L, E}, {1, 2, Sk, E}, options_with(std::nullopt, true, {}),
       true},
      {"GQA 3 on 1 with softcap 2, rank 3", {3, L, E}, {1, Sk, E}, options_with({}, true, 2.0),
       false},
      {"rank 5 with GQA and softcap 0.8", {2, 1, 2, L, E}, {2, 1, 1, Sk, E},
       options_with(1.3, true, 0.8), true}};
  for (const Case& c : cases) {
    INFO(c.name);
    Shape v_shape = c.kv, o_shape = c.q, scores = c.q;
    v_shape.back() = Ev;
    o_shape.back() = Ev;
    scores.back() = Sk;
    Tensor<double> q = random_tensor<double>(c.q, rng, 1.5), k = random_tensor<double>(c.kv, rng, 1.5);
    Tensor<double> v = random_tensor<double>(v_shape, rng);
    const Tensor<double> up = random_tensor<double>(o_shape, rng);
    Shape bias_shape = scores;
    bias_shape.front() = 1;  // broadcast over the first dimension
    const Mask mask = c.masked ? Mask::causal(1) & Mask::additive(random_tensor<double>(
                                                       bias_shape, rng, 1.0))
                               : Mask();
    AttentionTensorCache<double> cache;
    (void)attend::scaled_dot_product_attention_forward(q, k, v, mask, c.options, &cache);
    const auto g = attend::scaled_dot_product_attention_backward(q, k, v, cache, up);
    const auto loss = [&] {
      return dot_loss(attend::scaled_dot_product_attention(q, k, v, mask, c.options, false).output,
                      up);
    };
    require_gradient("dq", q.as_matrix(), g.dq.as_matrix(), loss);
    require_gradient("dk", k.as_matrix(), g.dk.as_matrix(), loss);
    require_gradient("dv", v.as_matrix(), g.dv.as_matrix(), loss);
    // The fused backward against the same finite differences.
    Tensor<double> lse;
    const Tensor<double> out =
        attend::scaled_dot_product_attention_fused(q, k, v, mask, c.options, &lse);
    const auto fg = attend::scaled_dot_product_attention_fused_backward(q, k, v, out, lse, up, mask,
                                                                        c.options);
    require_gradient("fused dq", q.as_matrix(), fg.dq.as_matrix(), loss);
    require_gradient("fused dk", k.as_matrix(), fg.dk.as_matrix(), loss);
    require_gradient("fused dv", v.as_matrix(), fg.dv.as_matrix(), loss);
  }
}

// ---- errors ------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("scaled_dot_product.hpp: bad GQA shapes, ranks, soft-caps and masks are rejected",
                   "[attention][sdpa_options][error]", float, double) {
  using S = TestType;
  const std::string sdpa = "scaled_dot_product_attention", fused = sdpa + "_fused";
  const SdpaOptions gqa = options_with(std::nullopt, true, std::nullopt);
  const SdpaOptions plain;
  const Tensor<S> q({2, 4, 3, 8}), k3({2, 3, 5, 8}), v3({2, 3, 5, 2});
  const Tensor<S> k2({2, 2, 5, 8}), v2({2, 2, 5, 2});
  // H = 4 is not a multiple of H_kv = 3.
  const std::string not_multiple =
      ": enable_gqa needs the query's heads to be a multiple of the key's heads (dimension "
      "-3): query is [2, 4, 3, 8], key is [2, 3, 5, 8] (H = 4, H_kv = 3)";
  REQUIRE_THROWS_AS(attend::scaled_dot_product_attention(q, k3, v3, Mask(), gqa),
                    attend::shape_error);
  REQUIRE_THROWS_WITH(attend::scaled_dot_product_attention(q, k3, v3, Mask(), gqa),
                      sdpa + not_multiple);
  REQUIRE_THROWS_AS(attend::scaled_dot_product_attention_fused(q, k3, v3, Mask(), gqa),
                    attend::shape_error);
  REQUIRE_THROWS_WITH(attend::scaled_dot_product_attention_fused(q, k3, v3, Mask(), gqa),
                      fused + not_multiple);
  // Without enable_gqa, fewer key heads stay an error (with a hint).
  REQUIRE_THROWS_AS(attend::scaled_dot_product_attention(q, k2, v2, Mask(), plain),
                    attend::shape_error);
  REQUIRE_THROWS_WITH(attend::scaled_dot_product_attention(q, k2, v2, Mask(), plain),
                      sdpa + ": key is [2, 2, 5, 8], expected [2, 4, S, 8] (enable_gqa allows "
                             "fewer key/value heads)");
  // Under GQA, value must still match key (its heads are H_kv).
  REQUIRE_THROWS_WITH(attend::scaled_dot_product_attention(q, k2, v3, Mask(), gqa),
                      sdpa + ": value is [2, 3, 5, 2], expected [2, 2, 5, d_v]");
  // Under GQA the other leading extents must match.
  REQUIRE_THROWS_WITH(attend::scaled_dot_product_attention(q, Tensor<S>({1, 2, 5, 8}), v2,
                                                           Mask(), gqa),
                      sdpa + ": key is [1, 2, 5, 8], expected [2, H_kv, S, 8]");
  // Rank mismatch: rank-5 query, rank-4 key.
  const Tensor<S> q5({1, 2, 4, 3, 8});
  REQUIRE_THROWS_AS(attend::scaled_dot_product_attention(q5, k2, v2, Mask(), plain),
                    attend::shape_error);
  REQUIRE_THROWS_WITH(attend::scaled_dot_product_attention(q5, k2, v2, Mask(), plain),
                      sdpa + ": key is [2, 2, 5, 8], expected [1, 2, 4, S, 8]");
  REQUIRE_THROWS_WITH(attend::scaled_dot_product_attention_fused(q5, k2, v2, Mask(), plain),
                      fused + ": key is [2, 2, 5, 8], expected [1, 2, 4, S, 8]");
  // Rank 1.
  REQUIRE_THROWS_AS(attend::scaled_dot_product_attention(Tensor<S>({8}), Tensor<S>({8}),
                                                         Tensor<S>({8}), Mask(), plain),
                    attend::shape_error);
  REQUIRE_THROWS_WITH(attend::scaled_dot_product_attention(Tensor<S>({8}), Tensor<S>({8}),
                                                           Tensor<S>({8}), Mask(), plain),
                      sdpa + ": query is [8], expected rank >= 2 ([..., L, d_k])");
  // Bad soft-caps: 0, negative, inf, NaN.
  const Tensor<S> k4({2, 4, 5, 8}), v4({2, 4, 5, 2});
  for (const double c : {0.0, -1.0}) {
    const SdpaOptions bad = options_with(std::nullopt, false, c);
    REQUIRE_THROWS_AS(attend::scaled_dot_product_attention(q, k4, v4, Mask(), bad),
                      attend::value_error);
    REQUIRE_THROWS_WITH(attend::scaled_dot_product_attention(q, k4, v4, Mask(), bad),
                        sdpa + ": logit_softcap is " + std::to_string(c) +
                            ", expected a finite value > 0 (unset for no soft-capping)");
    REQUIRE_THROWS_AS(attend::scaled_dot_product_attention_fused(q, k4, v4, Mask(), bad),
                      attend::value_error);
  }
  const SdpaOptions inf_cap = options_with(std::nullopt, false, attend_test::inf<double>);
  REQUIRE_THROWS_AS(attend::scaled_dot_product_attention(q, k4, v4, Mask(), inf_cap),
                    attend::value_error);
  REQUIRE_THROWS_WITH(attend::scaled_dot_product_attention(q, k4, v4, Mask(), inf_cap),
                      sdpa + ": logit_softcap is inf, expected a finite value > 0 (unset for no "
                             "soft-capping)");
  const SdpaOptions nan_cap =
      options_with(std::nullopt, false, std::numeric_limits<double>::quiet_NaN());
  REQUIRE_THROWS_AS(attend::scaled_dot_product_attention_fused(q, k4, v4, Mask(), nan_cap),
                    attend::value_error);
  // Masks that do not broadcast, in the caller's coordinates.
  const Tensor<S> k5({1, 2, 4, 5, 8}), v5({1, 2, 4, 5, 2});
  const Mask wrong = Mask::deny(Tensor<bool>({3, 1, 1, 1, 5}));
  REQUIRE_THROWS_AS(attend::scaled_dot_product_attention(q5, k5, v5, wrong, plain),
                    attend::shape_error);
  REQUIRE_THROWS_WITH(attend::scaled_dot_product_attention(q5, k5, v5, wrong, plain),
                      sdpa + ": attn_mask is [3, 1, 1, 1, 5], expected broadcastable to "
                             "[1, 2, 4, 3, 5]");
  REQUIRE_THROWS_WITH(attend::scaled_dot_product_attention_fused(q5, k5, v5, wrong, plain),
                      fused + ": attn_mask is [3, 1, 1, 1, 5], expected broadcastable to "
                              "[1, 2, 4, 3, 5]");
  const Mask too_long = Mask::deny(Tensor<bool>({2, 1, 1, 1, 1, 5}));  // rank 6 on rank 5
  REQUIRE_THROWS_WITH(attend::scaled_dot_product_attention(q5, k5, v5, too_long, plain),
                      sdpa + ": attn_mask is [2, 1, 1, 1, 1, 5], expected broadcastable to "
                             "[1, 2, 4, 3, 5]");
  // A rank-5 mask on a rank-4 call of the rank-4 interface (multi-head attention's check).
  REQUIRE_THROWS_AS(wrong.check(1, 1, 3, 5, "f", "mask"), attend::shape_error);
  REQUIRE_THROWS_WITH(wrong.check(1, 1, 3, 5, "f", "mask"),
                      "f: mask is [3, 1, 1, 1, 5], expected broadcastable to [1, 1, 3, 5]");
  REQUIRE_THROWS_AS(Mask::deny(Tensor<bool>({5})), attend::shape_error);
  REQUIRE_THROWS_WITH(Mask::deny(Tensor<bool>({5})),
                      "Mask::deny: blocked is [5], expected rank >= 2 broadcastable to [..., L, "
                      "S]");
  REQUIRE_THROWS_AS(Mask::deny(Tensor<bool>({2, 1, 1, 2, 5})) & Mask::deny(Tensor<bool>({3, 5})),
                    attend::shape_error);
  REQUIRE_THROWS_WITH(Mask::deny(Tensor<bool>({2, 1, 1, 2, 5})) & Mask::deny(Tensor<bool>({3, 5})),
                      "Mask::operator&: masks [2, 1, 1, 2, 5] and [1, 1, 3, 5] do not broadcast");
}

TEMPLATE_TEST_CASE("scaled_dot_product.hpp: the tensor backward and fused backward check shapes",
                   "[attention][sdpa_options][error]", float, double) {
  using S = TestType;
  Rng rng(5);
  const Tensor<S> q = random_tensor<S>({2, 1, 4, 3, 8}, rng), k = random_tensor<S>({2, 1, 2, 5, 8}, rng);
  const Tensor<S> v = random_tensor<S>({2, 1, 2, 5, 2}, rng), d = random_tensor<S>({2, 1, 4, 3, 2}, rng);
  const SdpaOptions gqa = options_with(std::nullopt, true, 2.0);
  AttentionTensorCache<S> cache;
  (void)attend::scaled_dot_product_attention_forward(q, k, v, Mask(), gqa, &cache);
  const std::string back = "scaled_dot_product_attention_backward";
  AttentionTensorCache<S> no_gqa = cache;
  no_gqa.enable_gqa = false;
  REQUIRE_THROWS_AS(attend::scaled_dot_product_attention_backward(q, k, v, no_gqa, d),
                    attend::shape_error);
  REQUIRE_THROWS_WITH(attend::scaled_dot_product_attention_backward(q, k, v, no_gqa, d),
                      back + ": key is [2, 1, 2, 5, 8], expected [2, 1, 4, S, 8] (enable_gqa "
                             "allows fewer key/value heads)");
  AttentionTensorCache<S> short_w = cache;
  short_w.weights = Tensor<S>({2, 1, 4, 3, 4});
  REQUIRE_THROWS_WITH(attend::scaled_dot_product_attention_backward(q, k, v, short_w, d),
                      back + ": cache.weights is [2, 1, 4, 3, 4], expected [2, 1, 4, 3, 5] "
                             "([..., L, S])");
  REQUIRE_THROWS_WITH(attend::scaled_dot_product_attention_backward(q, k, v, cache, q),
                      back + ": d_output is [2, 1, 4, 3, 8], expected [2, 1, 4, 3, 2] "
                             "([..., L, d_v])");
  Tensor<S> lse;
  const Tensor<S> out = attend::scaled_dot_product_attention_fused(q, k, v, Mask(), gqa, &lse);
  REQUIRE_THROWS_AS(attend::scaled_dot_product_attention_fused_backward(q, k, v, out, out, d,
                                                                        Mask(), gqa),
                    attend::shape_error);
  REQUIRE_THROWS_WITH(attend::scaled_dot_product_attention_fused_backward(q, k, v, out, out, d,
                                                                          Mask(), gqa),
                      "scaled_dot_product_attention_fused_backward: lse is [2, 1, 4, 3, 2], "
                      "expected [2, 1, 4, 3] ([..., L])");
}

}  // namespace
