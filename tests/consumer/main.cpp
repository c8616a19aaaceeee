// SPDX-License-Identifier: MIT
// A consumer of the package: softmax of one row and a multi-head attention large enough
// for Eigen's GEMM path (so the optional BLAS backend, when on, is exercised).
#include <attend/attend.hpp>

#include <cstdio>

int main() {
  // [1, 3] logits; softmax([1, 2, 3]) = exp([1, 2, 3]) / (e + e^2 + e^3)
  //                                   = [0.090031, 0.244728, 0.665241]
  const attend::Tensor<double> logits({1, 3}, {1.0, 2.0, 3.0});
  const attend::Matrix<double> probs = attend::softmax(logits.as_matrix());  // [1, 3]
  std::printf("softmax([1, 2, 3]) = [%.6f, %.6f, %.6f]\n", probs(0, 0), probs(0, 1), probs(0, 2));

  // Self-attention over 48 tokens of width 64 (8 heads), seeded weights and inputs. The sum
  // of the outputs is printed to 6 decimals: with or without BLAS the products differ only
  // in rounding (~1e-15 here), far below the printed digits.
  attend::MultiheadAttentionOptions opts;
  opts.embed_dim = 64;
  opts.num_heads = 8;
  opts.batch_first = true;
  const attend::MultiheadAttention<double> mha(opts, /*seed=*/3);
  attend::Tensor<double> x({1, 48, 64});  // [B, L, E]
  attend::Rng rng(5);
  for (attend::Index i = 0; i < x.size(); ++i) x.flat()[i] = rng.normal();
  attend::MultiheadAttentionArgs args;
  args.need_weights = false;
  const attend::AttentionResult<double> r = mha.forward(x, args);
  std::printf("multi-head attention [1, 48, 64]: sum = %.6f\n", r.output.flat().sum());
  return 0;
}
