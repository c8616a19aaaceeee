// SPDX-License-Identifier: MIT
// Why attention divides the scores by sqrt(d_k): measured on random queries and keys.
//
// docs/lecture-notes.md, "Self-Attention": Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V, and
// the scaling factor "makes sure that the vectors won't explode". With N(0, 1) entries a
// score q . k sums d_k products, so its variance is d_k: for large d_k the softmax sees
// huge differences between scores and puts nearly all the weight on one key, which also
// starves the other keys of gradient. Dividing by sqrt(d_k) brings the variance back to 1
// and the weights stay spread at every d_k (Vaswani et al. 2017, section 3.2.1, note 4).
// The measurement itself is in common/scaling_experiment.hpp.
#include "attend/attend.hpp"

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "common/print.hpp"
#include "common/scaling_experiment.hpp"

int main() {
  using examples::fixed;
  constexpr attend::Index S = 64;        // keys per query
  constexpr attend::Index trials = 500;  // queries per d_k, each with its own 64 keys
  const double log_S = std::log(static_cast<double>(S));
  attend::Rng rng(/*seed=*/2017);

  std::printf(
      "Random queries and keys with N(0, 1) entries; %ld queries per d_k, each\n"
      "against its own S = %ld keys. Entropy of the softmax weights in nats, and as\n"
      "a share of log(S) = %s, the entropy of uniform weights.\n\n",
      static_cast<long>(trials), static_cast<long>(S), fixed(log_S).c_str());
  std::printf("        variance of the score   |   softmax entropy, nats    | mean max weight\n");
  std::printf("   d_k       q.k  q.k/sqrt(d_k) |   unscaled       scaled     | unscaled  scaled\n");

  // Tolerances of the self-check below. The 64 scores of one query share its norm |q|^2,
  // whose relative variance is 2 / d_k, so the variance estimate from 500 queries has a
  // relative standard error of about sqrt(2 / (500 d_k)): 3% at d_k = 4, less above.
  constexpr double variance_tolerance = 0.15;  // relative; 4.5 standard errors at d_k = 4
  // Scaled scores are ~N(0, 1), whose softmax entropy is about log S - 1/2 = 3.66 nats (88%
  // of log S) at every d_k; unscaled ones at d_k = 1024 have a standard deviation of 32 and
  // the top score usually beats the next by many nats.
  constexpr double spread_share = 0.75;   // scaled entropy stays above this share of log S
  constexpr double one_hot_weight = 0.9;  // unscaled mean max weight exceeds this at 1024
  bool as_expected = true;

  for (const attend::Index d_k : {4, 16, 64, 256, 1024}) {
    const examples::ScalingStats s = examples::measure_scaling(d_k, S, trials, rng);
    const auto share = [&](double entropy) { return fixed(100.0 * entropy / log_S, 0, 3) + "%"; };
    std::printf("  %4ld  %8s  %13s | %6s (%s)  %6s (%s) |  %6s  %6s\n", static_cast<long>(d_k),
                fixed(s.var_raw, 1).c_str(), fixed(s.var_scaled, 3).c_str(),
                fixed(s.raw.entropy, 3).c_str(), share(s.raw.entropy).c_str(),
                fixed(s.scaled.entropy, 3).c_str(), share(s.scaled.entropy).c_str(),
                fixed(s.raw.max_weight, 3).c_str(), fixed(s.scaled.max_weight, 3).c_str());
    const double dk = static_cast<double>(d_k);
    as_expected = as_expected && std::abs(s.var_raw / dk - 1.0) < variance_tolerance &&
                  std::abs(s.var_scaled - 1.0) < variance_tolerance &&
                  s.scaled.entropy > spread_share * log_S;
    if (d_k == 1024) as_expected = as_expected && s.raw.max_weight > one_hot_weight;
  }

  if (!as_expected) {
    std::printf("\nUNEXPECTED: the measurements do not show the effect described above.\n");
    return 1;
  }
  std::printf(
      "\nConclusion: without scaling the score variance grows like d_k and the softmax\n"
      "collapses onto one key (max weight -> 1, entropy -> 0); dividing by sqrt(d_k)\n"
      "keeps the variance at 1 and the same spread of weights at every d_k.\n");
  return 0;
}
