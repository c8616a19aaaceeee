// SPDX-License-Identifier: MIT
// A consumer of the installed package: softmax of one row through the umbrella header.
#include <attend/attend.hpp>

#include <cstdio>

int main() {
  // [1, 3] logits; softmax([1, 2, 3]) = exp([1, 2, 3]) / (e + e^2 + e^3)
  //                                   = [0.090031, 0.244728, 0.665241]
  const attend::Tensor<double> logits({1, 3}, {1.0, 2.0, 3.0});
  const attend::Matrix<double> probs = attend::softmax(logits.as_matrix());  // [1, 3]
  std::printf("softmax([1, 2, 3]) = [%.6f, %.6f, %.6f]\n", probs(0, 0), probs(0, 1), probs(0, 2));
  return 0;
}
