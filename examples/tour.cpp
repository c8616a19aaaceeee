// SPDX-License-Identifier: MIT
// The demo: a short tour of the ideas of docs/lecture-notes.md, each condensed from its own example
// (attention_by_hand, why_sqrt_dk, positional_encoding), plus multi-head attention.
//
// docs/lecture-notes.md: "Key Concepts of Transformers" (tokens, embeddings, positions) and
// "Self-Attention" (softmax(Q K^T / sqrt(d_k)) V, the sqrt(d_k) scaling, several heads).
#include "attend/attend.hpp"

#include <cstdint>
#include <cstdio>
#include <exception>
#include <optional>
#include <string>
#include <vector>

#include "common/heatmap.hpp"
#include "common/label.hpp"
#include "common/png.hpp"
#include "common/print.hpp"
#include "common/scaling_experiment.hpp"

int main() {
  using attend::Index;
  using Mat = attend::Matrix<double>;
  using examples::fixed;
  using examples::heading;
  using examples::print_matrix;
  std::printf("attend: a tour of attention, from words to multi-head attention\n");

  heading("1. Tokens -> embeddings -> positions -> attention");
  const std::vector<std::string> tokens = attend::tokenize_words("The cat sat on the mat");
  const attend::Vocabulary vocab = attend::Vocabulary::build({tokens});
  const std::vector<std::int64_t> ids = vocab.encode(tokens);
  examples::print_list("tokens", tokens);
  std::vector<std::string> id_text;
  for (const std::int64_t id : ids) id_text.push_back(std::to_string(id));
  examples::print_list("ids   ", id_text);
  constexpr Index d_model = 8;
  const Index L = static_cast<Index>(ids.size());
  const Mat E = attend::Embedding<double>(vocab.size(), d_model, std::nullopt, 7).forward(ids);
  const Mat X = E + attend::sinusoidal_positional_encoding<double>(L, d_model);  // [L, d_model]
  const auto cosine = [](const Mat& m, Index a, Index b) {
    return m.row(a).dot(m.row(b)) / (m.row(a).norm() * m.row(b).norm());
  };
  std::printf("\"the\" at positions 0 and 4: cosine %s as embeddings, %s after adding positions\n",
              fixed(cosine(E, 0, 4)).c_str(), fixed(cosine(X, 0, 4)).c_str());
  Mat weights;  // [L, L]; no projections yet: Q = K = V = X
  attend::scaled_dot_product_attention(X, X, X, attend::Mask(), std::nullopt, &weights);
  std::printf("Self-attention of X on itself (Q = K = V = X); row = query, column = key:\n");
  print_matrix("softmax(X X^T / sqrt(d_model))", weights, tokens, tokens, 3);

  heading("2. Why divide by sqrt(d_k)? (random N(0, 1) queries and keys, 64 keys each)");
  std::printf("   d_k  var(q.k)  var(q.k/sqrt(d_k))  max weight unscaled  scaled\n");
  attend::Rng rng(2017);
  for (const Index d_k : {4, 64, 1024}) {
    const examples::ScalingStats s = examples::measure_scaling(d_k, 64, 100, rng);
    std::printf("  %4ld  %8s  %18s  %19s  %6s\n", static_cast<long>(d_k),
                fixed(s.var_raw, 1).c_str(), fixed(s.var_scaled, 2).c_str(),
                fixed(s.raw.max_weight, 2).c_str(), fixed(s.scaled.max_weight, 2).c_str());
  }
  std::printf(
      "Unscaled scores spread like sqrt(d_k) and the softmax turns one-hot; scaled\n"
      "ones keep unit variance and the weights stay spread at every d_k.\n");

  heading("3. Multi-head attention: 2 heads of d_k = 4 on the same sentence");
  attend::MultiheadAttentionOptions options;
  options.embed_dim = d_model;
  options.num_heads = 2;
  const attend::MultiheadAttention<double> mha(options, /*seed=*/3);
  attend::MultiheadAttentionArgs args;
  args.average_attn_weights = false;  // keep one [L, S] table per head
  const auto result = mha.forward(attend::Tensor<double>::from_matrix(X), args);
  for (Index h = 0; h < mha.num_heads(); ++h) {
    print_matrix("head " + std::to_string(h) + " weights", result.attn_weights.matrix(h), tokens,
                 tokens, 3);
  }
  std::printf(
      "Each head projects X with its own W_q, W_k, W_v and so attends differently; the\n"
      "heads' outputs are concatenated and mixed by out_proj: output [%ld, %ld].\n",
      static_cast<long>(result.output.dim(0)), static_cast<long>(result.output.dim(1)));

  heading("4. The positional encoding as a picture");
  const Mat pe = attend::sinusoidal_positional_encoding<double>(64, 128);  // [64, 128]
  try {
    examples::png::write("positional_encoding.png", examples::positional_encoding_figure(pe, 4));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  std::printf(
      "Wrote positional_encoding.png: positions 0-63 top to bottom, dimensions 0-127\n"
      "left to right, blue -1 / white 0 / red +1. Fast waves on the left, slow on the\n"
      "right: every position gets its own pattern.\n");
  return 0;
}
