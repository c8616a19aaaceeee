// SPDX-License-Identifier: MIT
// Greedy decoding of an encoder-decoder transformer, with and without the KV cache.
//
// An autoregressive decoder produces one token at a time; every step feeds the tokens so
// far back in. Without a cache, step n re-runs the decoder over the whole prefix of n
// tokens (masked causally) and keeps only the last row: O(n^2) attention work per step
// and O(n) projections of tokens whose results were already computed. With a KV cache,
// each decoder layer keeps the keys and values of the earlier positions (and the encoder
// memory's, projected once), so a step projects only the new token and attends over the
// cache: O(n) work. The two give the same tokens; the time per token tells them apart.
//
// The weights are seeded random (no training here): the tokens are arbitrary (untrained
// models fall into loops) but reproducible. The timings vary from run to run, so this
// example has no .expected file.
#include "attend/rnn/decoding.hpp"
#include "attend/transformer/seq2seq.hpp"

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <vector>

namespace {

struct Run {
  attend::Hypothesis<attend::TransformerSeq2SeqState<float>> result;
  double seconds = 0.0;
};

Run decode(const attend::TransformerSeq2Seq<float>& model, const std::vector<std::int64_t>& source,
           const attend::DecodeOptions& options, bool use_cache) {
  const auto start = std::chrono::steady_clock::now();
  // Encodes the source once; each step then feeds one token (bos first).
  const attend::TransformerSeq2SeqDecoder<float> decoder(model, source, use_cache,
                                                         options.max_length);
  Run run{attend::greedy_decode(decoder, options), 0.0};
  run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return run;
}

void print_tokens(const char* label, const std::vector<std::int64_t>& tokens) {
  std::printf("%s", label);
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    std::printf("%s%lld", i % 20 == 0 && i > 0 ? "\n      " : " ", static_cast<long long>(tokens[i]));
  }
  std::printf("\n");
}

}  // namespace

int main() {
  // A small model: d_model 64, 4 heads, feed-forward 256, 2 encoder and 2 decoder layers
  // (post-norm, as the paper), vocabularies of 96 tokens, positions up to 256.
  attend::TransformerSeq2SeqOptions o;
  o.transformer.layer.d_model = 64;
  o.transformer.layer.nhead = 4;
  o.transformer.layer.dim_feedforward = 256;
  o.transformer.num_encoder_layers = 2;
  o.transformer.num_decoder_layers = 2;
  o.src_vocab_size = o.tgt_vocab_size = 96;
  o.max_len = 256;
  attend::TransformerSeq2Seq<float> model(o, /*seed=*/2017);  // or model.load_state_dict(...)

  attend::DecodeOptions options;
  options.bos = 1;
  options.eos = 2;
  options.max_length = 120;
  // Untrained weights rarely pick eos; make sure they never do, so both runs decode the
  // same number of tokens and the timings compare like with like.
  model.generator.bias(options.eos) = -1e4f;

  const std::vector<std::int64_t> source{5, 17, 42, 8, 33, 61, 9, 77, 12, 50,
                                         23, 4, 88, 19, 70, 31, 46, 3, 58, 25};
  print_tokens("source:", source);

  const Run cached = decode(model, source, options, /*use_cache=*/true);
  const Run uncached = decode(model, source, options, /*use_cache=*/false);

  print_tokens("output:", cached.result.tokens);
  const bool same = cached.result.tokens == uncached.result.tokens;
  std::printf("with and without the cache: %s tokens, %s\n",
              same ? "the same" : "DIFFERENT", same ? "as they must be" : "a bug");
  std::printf("summed log-probabilities: %.6f (cache) and %.6f (no cache)\n",
              cached.result.log_prob, uncached.result.log_prob);

  const double n = static_cast<double>(cached.result.tokens.size());
  std::printf("\n%zu tokens, time per token (encoding the source included):\n",
              cached.result.tokens.size());
  std::printf("  with the KV cache:       %9.3f ms\n", 1e3 * cached.seconds / n);
  std::printf("  recomputing the prefix: %9.3f ms\n", 1e3 * uncached.seconds / n);
  std::printf("  ratio:                  %9.1f x\n", uncached.seconds / cached.seconds);
  return same ? 0 : 1;
}
