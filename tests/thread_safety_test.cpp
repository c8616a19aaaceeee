// SPDX-License-Identifier: MIT
// Thread safety: `forward` on a const module, called from two threads at once, gives the
// single-thread result (no shared scratch). Run under ThreadSanitizer by `make test`.
#include "attend/attention/fused.hpp"
#include "attend/attention/mask.hpp"
#include "attend/attention/multihead.hpp"
#include "attend/core/random.hpp"
#include "attend/core/tensor.hpp"
#include "attend/embedding/embedding.hpp"
#include "attend/rnn/recurrent.hpp"
#include "attend/transformer/encoder_layer.hpp"

#include <catch2/catch.hpp>

#include <cstdint>
#include <functional>
#include <future>
#include <thread>
#include <vector>

namespace {

using attend::Index;
using attend::Shape;
using attend::Tensor;

/// Calls per thread. Each call of each thread is compared with the single-thread result;
/// enough rounds that the two threads' calls overlap many times (under TSan too).
constexpr int kRounds = 12;

template <typename S>
Tensor<S> randn(Shape shape, std::uint64_t seed) {
  Tensor<S> t(std::move(shape));
  attend::Rng rng(seed);
  for (Index i = 0; i < t.size(); ++i) t.data()[i] = static_cast<S>(rng.normal());
  return t;
}

/// Bit-for-bit equality: both threads run the same code on the same inputs.
template <typename T>
bool same(const Tensor<T>& a, const Tensor<T>& b) {
  return a.shape() == b.shape() && (a.size() == 0 || a.flat() == b.flat());
}

/// Runs `f` kRounds times in each of two threads started together and returns, per thread,
/// the number of results that differ from `want`. Catch's assertions are not thread-safe,
/// so the threads only count; the caller asserts.
template <typename T>
std::vector<int> mismatches_in_two_threads(const std::function<Tensor<T>()>& f,
                                           const Tensor<T>& want) {
  std::promise<void> go;
  const std::shared_future<void> start = go.get_future().share();
  std::vector<int> bad(2, 0);
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      start.wait();  // both threads begin together, so their calls overlap
      for (int r = 0; r < kRounds; ++r) {
        if (!same(f(), want)) ++bad[t];
      }
    });
  }
  go.set_value();
  for (std::thread& th : threads) th.join();
  return bad;
}

}  // namespace

TEMPLATE_TEST_CASE("thread safety: const MultiheadAttention::forward from two threads", "[threads]",
                   float, double) {
  using S = TestType;
  attend::MultiheadAttentionOptions o;
  o.embed_dim = 16;
  o.num_heads = 4;
  const attend::MultiheadAttention<S> mha(o, 3);
  const Tensor<S> q = randn<S>({9, 2, 16}, 1), kv = randn<S>({7, 2, 16}, 2);
  for (const bool need_weights : {true, false}) {  // reference and fused kernels
    attend::MultiheadAttentionArgs args;
    args.need_weights = need_weights;
    args.attn_mask = attend::Mask::causal(2);
    args.key_padding_mask = attend::Mask::key_padding_lengths({7, 5}, 7);
    const std::function<Tensor<S>()> f = [&] { return mha.forward(q, kv, kv, args).output; };
    const Tensor<S> want = f();
    CAPTURE(need_weights);
    CHECK(mismatches_in_two_threads<S>(f, want) == std::vector<int>{0, 0});
  }
}

TEMPLATE_TEST_CASE("thread safety: const TransformerEncoderLayer::forward from two threads",
                   "[threads]", float, double) {
  using S = TestType;
  attend::TransformerLayerOptions o;
  o.d_model = 16;
  o.nhead = 2;
  o.dim_feedforward = 32;
  for (const bool norm_first : {false, true}) {
    o.norm_first = norm_first;
    const attend::TransformerEncoderLayer<S> layer(o, 5);
    const Tensor<S> src = randn<S>({8, 2, 16}, 4);
    attend::TransformerEncoderLayerArgs args;
    args.is_causal = true;
    const std::function<Tensor<S>()> f = [&] { return layer.forward(src, args); };
    const Tensor<S> want = f();
    CAPTURE(norm_first);
    CHECK(mismatches_in_two_threads<S>(f, want) == std::vector<int>{0, 0});
  }
}

TEMPLATE_TEST_CASE("thread safety: const LSTM::forward from two threads", "[threads]", float,
                   double) {
  using S = TestType;
  attend::RecurrentOptions o;
  o.input_size = 5;
  o.hidden_size = 6;
  o.num_layers = 2;
  o.bidirectional = true;
  const attend::LSTM<S> lstm(o, 9);
  const Tensor<S> x = randn<S>({10, 3, 5}, 6);
  const std::vector<Index> lengths{10, 4, 7};
  const std::function<Tensor<S>()> f = [&] {
    const attend::RecurrentOutput<S> r = lstm.forward(x, {}, lengths);
    return r.output;
  };
  const Tensor<S> want = f();
  CHECK(mismatches_in_two_threads<S>(f, want) == std::vector<int>{0, 0});
}

TEMPLATE_TEST_CASE("thread safety: const Embedding::forward from two threads", "[threads]", float,
                   double) {
  using S = TestType;
  attend::Embedding<S> emb(50, 8, Index(0), 2);
  emb.scale_by_sqrt_d = true;
  const attend::Embedding<S>& e = emb;
  Tensor<std::int64_t> ids({4, 6});
  for (Index i = 0; i < ids.size(); ++i) ids.data()[i] = (7 * i + 3) % 50;
  const std::function<Tensor<S>()> f = [&] { return e.forward(ids); };
  const Tensor<S> want = f();
  CHECK(mismatches_in_two_threads<S>(f, want) == std::vector<int>{0, 0});
}

TEMPLATE_TEST_CASE("thread safety: scaled_dot_product_attention_fused from two threads",
                   "[threads]", float, double) {
  using S = TestType;
  // Long enough for several query and key blocks, so each call walks its own workspace.
  const Tensor<S> q = randn<S>({2, 70, 8}, 7), k = randn<S>({2, 90, 8}, 8),
                  v = randn<S>({2, 90, 8}, 9);
  const attend::Mask mask = attend::Mask::causal(20);
  const std::function<Tensor<S>()> f = [&] {
    return attend::scaled_dot_product_attention_fused(q, k, v, mask);
  };
  const Tensor<S> want = f();
  CHECK(mismatches_in_two_threads<S>(f, want) == std::vector<int>{0, 0});
}
