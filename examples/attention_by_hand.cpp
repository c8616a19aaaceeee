// SPDX-License-Identifier: MIT
// Self-attention by hand on a three-word sentence, every step printed, then checked
// against attend::scaled_dot_product_attention.
//
// docs/lecture-notes.md, "Key Concepts of Transformers" and "Self-Attention": tokenization ->
// word embeddings -> positional encodings -> query, key, value ->
// Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V, a weighted average of the values.
#include "attend/attend.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "common/print.hpp"

int main() {
  using attend::Index;
  using Mat = attend::Matrix<double>;
  using examples::heading;
  using examples::print_matrix;

  heading("1. Tokenize: text -> tokens (lowercased words)");
  const std::vector<std::string> tokens = attend::tokenize_words("The cat sat");
  examples::print_list("tokens", tokens);

  heading("2. Vocabulary: tokens -> ids (0-3 are <pad> <bos> <eos> <unk>)");
  const attend::Vocabulary vocab = attend::Vocabulary::build({tokens});
  const std::vector<std::int64_t> ids = vocab.encode(tokens);
  for (std::size_t t = 0; t < tokens.size(); ++t) {
    std::printf("  %-4s -> %ld\n", tokens[t].c_str(), static_cast<long>(ids[t]));
  }

  heading("3. Embed: each id picks a row of a [V, d_model] table (seeded N(0, 1))");
  constexpr Index d_model = 4, d_k = 2;  // d_v = d_k
  const attend::Embedding<double> embedding(vocab.size(), d_model, std::nullopt, /*seed=*/7);
  const Mat E = embedding.forward(ids);  // [L, d_model]
  print_matrix("E = embedding(ids)", E, tokens);
  const Index L = E.rows();

  heading("4. Add positions: PE[p, 2i] = sin(p w_i), PE[p, 2i+1] = cos(p w_i)");
  std::printf(
      "w_i = 1 / 10000^(2i / d_model): the order of the words, lost by the set of\n"
      "tokens, comes back as a small, position-dependent offset.\n");
  const Mat PE = attend::sinusoidal_positional_encoding<double>(L, d_model);  // [L, d_model]
  print_matrix("PE", PE, tokens);
  const Mat X = E + PE;  // [L, d_model]
  print_matrix("X = E + PE", X, tokens);

  heading("5. Queries, keys, values: Q = X W_q^T, K = X W_k^T, V = X W_v^T");
  // Small fixed weights in PyTorch's Linear layout [d_k, d_model]: y = x W^T.
  Mat W_q(d_k, d_model), W_k(d_k, d_model), W_v(d_k, d_model);
  // clang-format off
  W_q << 0.5, -0.2,  0.1,  0.4,
        -0.3,  0.6,  0.2, -0.1;
  W_k << 0.4,  0.1, -0.5,  0.2,
         0.2, -0.4,  0.3,  0.5;
  W_v << 1.0,  0.0,  0.5, -0.5,
         0.0,  1.0, -0.5,  0.5;
  // clang-format on
  const Mat Q = X * W_q.transpose(), K = X * W_k.transpose(), V = X * W_v.transpose();  // [L, d_k]
  print_matrix("Q", Q, tokens);
  print_matrix("K", K, tokens);
  print_matrix("V", V, tokens);

  heading("6. Scores: how well query i matches key j, scores[i, j] = q_i . k_j");
  Mat scores = Mat::Zero(L, L);  // [L, S], here S = L (self-attention)
  for (Index i = 0; i < L; ++i)
    for (Index j = 0; j < L; ++j)
      for (Index c = 0; c < d_k; ++c) scores(i, j) += Q(i, c) * K(j, c);
  print_matrix("Q K^T", scores, tokens, tokens);

  heading("7. Scale by 1 / sqrt(d_k) so the scores do not grow with d_k");
  const double scale = 1.0 / std::sqrt(static_cast<double>(d_k));
  std::printf("1 / sqrt(%ld) = %s\n", static_cast<long>(d_k), examples::fixed(scale).c_str());
  const Mat scaled = scores * scale;  // [L, S]
  print_matrix("Q K^T / sqrt(d_k)", scaled, tokens, tokens);

  heading("8. Softmax of each row: weights >= 0 that sum to 1");
  Mat weights(L, L);  // [L, S]
  for (Index i = 0; i < L; ++i) {
    const double row_max = scaled.row(i).maxCoeff();  // subtracted so exp() cannot overflow
    double total = 0.0;
    for (Index j = 0; j < L; ++j) total += weights(i, j) = std::exp(scaled(i, j) - row_max);
    for (Index j = 0; j < L; ++j) weights(i, j) /= total;
  }
  print_matrix("weights = softmax(Q K^T / sqrt(d_k))", weights, tokens, tokens);

  heading("9. Output: z_i = sum_j weights[i, j] v_j, a weighted average of the values");
  Mat Z = Mat::Zero(L, d_k);  // [L, d_v]
  for (Index i = 0; i < L; ++i)
    for (Index j = 0; j < L; ++j) Z.row(i) += weights(i, j) * V.row(j);
  print_matrix("Z = weights V", Z, tokens);

  heading("10. Check against attend::scaled_dot_product_attention");
  // Same double arithmetic, only the summation order may differ: rounding is ~1e-16.
  constexpr double tolerance = 1e-12;
  Mat library_weights;
  const Mat library = attend::scaled_dot_product_attention(Q, K, V, attend::Mask(), std::nullopt,
                                                           &library_weights);  // [L, d_v]
  const double error = std::max((library - Z).cwiseAbs().maxCoeff(),
                                (library_weights - weights).cwiseAbs().maxCoeff());
  if (!(error <= tolerance)) {
    std::printf("MISMATCH: max |difference| is %g, above %g\n", error, tolerance);
    return 1;
  }
  std::printf("outputs and weights match the library (max |difference| <= %g)\n", tolerance);
  return 0;
}
