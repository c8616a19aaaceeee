// SPDX-License-Identifier: MIT
// The sequence tasks and the recurrent encoder-decoders of the bottleneck examples
// (bottleneck_demo; bottleneck adds a transformer): random symbol sequences to copy or
// reverse, the LSTM encoder-decoder with or without Bahdanau attention trained with Adam,
// greedy decoding and token accuracy by input length.
#pragma once

#include "attend/core/random.hpp"
#include "attend/rnn/seq2seq.hpp"
#include "attend/train/optim.hpp"
#include "attend/train/parameters.hpp"
#include "attend/train/seq2seq_backward.hpp"
#include "attend/train/seq2seq_batch.hpp"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace examples {

using Ids = std::vector<std::int64_t>;

constexpr std::int64_t kPad = 0, kBos = 1, kEos = 2, kFirstSymbol = 3;

/// A task: sequences of `symbols` distinct symbols, of `min_length` to `max_length`
/// symbols (uniform); the output is the input (copy) or the input reversed.
struct Task {
  attend::Index symbols = 16;
  attend::Index min_length = 5, max_length = 60;
  bool reverse = false;
  /// Ids: pad, bos, eos, then the symbols.
  attend::Index vocab() const { return kFirstSymbol + symbols; }
};

/// One example: source symbols and the expected output.
struct Example {
  Ids source, target;
};

inline Example make_example(attend::Rng& rng, const Task& task, attend::Index length) {
  Example e;
  for (attend::Index t = 0; t < length; ++t) {
    e.source.push_back(kFirstSymbol +
                       static_cast<std::int64_t>(rng.next() % std::uint64_t(task.symbols)));
  }
  e.target = e.source;
  if (task.reverse) std::reverse(e.target.begin(), e.target.end());
  return e;
}

/// Which output rows of an alignment figure are wrong: row i is wrong when output[i]
/// differs from the task's target for `source` (or lies past its end, e.g. a missing eos).
inline std::vector<bool> wrong_outputs(const Task& task, const Ids& source, const Ids& output) {
  Ids target = source;
  if (task.reverse) std::reverse(target.begin(), target.end());
  std::vector<bool> wrong(output.size());
  for (std::size_t i = 0; i < output.size(); ++i) {
    wrong[i] = i >= target.size() || output[i] != target[i];
  }
  return wrong;
}

/// A training batch: sources, decoder inputs (bos, y_1 .. y_n), outputs (y_1 .. y_n, eos).
struct Batch {
  std::vector<Ids> source, target_in, target_out;
};

inline Batch make_batch(attend::Rng& rng, const Task& task, attend::Index size) {
  Batch b;
  const auto span = static_cast<std::uint64_t>(task.max_length - task.min_length + 1);
  for (attend::Index i = 0; i < size; ++i) {
    const attend::Index length = task.min_length + static_cast<attend::Index>(rng.next() % span);
    const Example e = make_example(rng, task, length);
    b.source.push_back(e.source);
    Ids in{kBos}, out = e.target;
    in.insert(in.end(), e.target.begin(), e.target.end());
    out.push_back(kEos);
    b.target_in.push_back(in);
    b.target_out.push_back(out);
  }
  return b;
}

/// A model with its gradients, in the form collect_parameters and the optimisers take.
template <typename M, typename G>
struct Trainable {
  M model;
  G grads;
  template <typename Visit>
  void named_parameters(Visit&& visit) {
    attend::named_parameters(model, grads, visit);
  }
};

/// Sizes and training settings of a recurrent encoder-decoder.
struct RecurrentSettings {
  bool attention = false;  ///< Bahdanau attention (else the decoder sees only z)
  attend::Index embedding = 32, hidden = 128;
  double lr = 3e-3, clip_norm = 1.0;
  /// Feed the encoder the source reversed (Sutskever et al. 2014); the targets are unchanged.
  bool reverse_source = false;
};

/// The LSTM encoder-decoder, without (the bottleneck) or with Bahdanau attention, trained
/// with Adam and gradient clipping on the batched teacher-forced loss.
template <typename Scalar>
class RecurrentModel {
 public:
  RecurrentModel(const Task& task, const RecurrentSettings& s, std::uint64_t seed)
      : s_(s), t_{attend::Seq2Seq<Scalar>(options(task, s), seed), {}} {
    attend::AdamOptions o;
    o.lr = s.lr;
    adam_ = attend::Adam<Scalar>(o);
  }
  attend::Index parameter_count() { return params().numel(); }
  /// One optimiser update. \returns the mean cross-entropy before the update
  double train_step(const Batch& b) {
    attend::Seq2SeqCache<Scalar> cache;
    const double loss =
        attend::seq2seq_loss(t_.model, encoder_input(b.source), b.target_in, b.target_out, &cache);
    const attend::ParameterList<Scalar>& p = params();
    attend::zero_grad(p);
    attend::seq2seq_backward(t_.model, cache, t_.grads);
    attend::clip_grad_norm_(p, s_.clip_norm);
    adam_.step(p);
    return loss;
  }
  /// Greedy decoding of every source (at most max_length + 1 tokens each).
  std::vector<Ids> decode(const std::vector<Ids>& source, attend::Index max_length) const {
    return attend::seq2seq_greedy_decode(t_.model, encoder_input(source), kBos, kEos,
                                         max_length + 1);
  }
  /// The alignment matrix [output steps, input steps] of one source (attention only),
  /// `source.size()` greedy steps; the tokens written go to `output`.
  attend::Matrix<Scalar> alignment(const Ids& source, Ids& output) const {
    const attend::Seq2SeqMemory<Scalar> memory = t_.model.encode(encoder_input({source})[0]);
    attend::Seq2SeqState<Scalar> state = t_.model.start(memory);
    std::int64_t token = kBos;
    for (std::size_t i = 0; i < source.size(); ++i) {
      const attend::Matrix<Scalar> logits = t_.model.step(token, state, memory);
      attend::Index best = 0;
      logits.row(0).maxCoeff(&best);
      token = best;
      output.push_back(token);
    }
    return state.alignment;
  }

 private:
  static attend::Seq2SeqOptions options(const Task& task, const RecurrentSettings& s) {
    attend::Seq2SeqOptions o;
    o.source_vocab = o.target_vocab = task.vocab();
    o.embedding_dim = s.embedding;
    o.hidden_size = s.hidden;
    o.attention = s.attention ? attend::AttentionKind::bahdanau : attend::AttentionKind::none;
    return o;
  }
  std::vector<Ids> encoder_input(std::vector<Ids> source) const {
    if (s_.reverse_source) {
      for (Ids& x : source) std::reverse(x.begin(), x.end());
    }
    return source;
  }
  // Gradients are sized by the first backward; the list points into them, so it is built
  // once they exist (a zero-loss backward of one tiny batch).
  const attend::ParameterList<Scalar>& params() {
    if (params_.size() == 0) {
      attend::Seq2SeqCache<Scalar> cache;
      attend::seq2seq_loss(t_.model, {{kFirstSymbol}}, {{kBos}}, {{kEos}}, &cache);
      attend::seq2seq_backward(t_.model, cache, t_.grads, 0.0);
      params_ = attend::collect_parameters<Scalar>(t_);
    }
    return params_;
  }

  RecurrentSettings s_;
  Trainable<attend::Seq2Seq<Scalar>, attend::Seq2SeqGrad<Scalar>> t_;
  attend::Adam<Scalar> adam_;
  attend::ParameterList<Scalar> params_;
};

/// Held-out test sequences: `per_bucket` of each length bucket [lo_k, hi_k].
struct TestSet {
  std::vector<attend::Index> lo, hi;  // bucket bounds
  std::vector<Ids> source, target;
  std::vector<std::size_t> bucket;  // of each sequence
};

/// Buckets of `width` lengths from task.min_length; the last one also takes the rest.
inline TestSet make_test_set(const Task& task, attend::Index width, attend::Index per_bucket,
                             std::uint64_t seed) {
  TestSet t;
  attend::Rng rng(seed);
  const attend::Index buckets =
      std::max<attend::Index>(1, (task.max_length - task.min_length + 1) / width);
  for (attend::Index k = 0; k < buckets; ++k) {
    const attend::Index lo = task.min_length + k * width;
    const attend::Index hi = k + 1 == buckets ? task.max_length : lo + width - 1;
    t.lo.push_back(lo);
    t.hi.push_back(hi);
    for (attend::Index i = 0; i < per_bucket; ++i) {
      const attend::Index length =
          lo + static_cast<attend::Index>(rng.next() % std::uint64_t(hi - lo + 1));
      const Example e = make_example(rng, task, length);
      t.source.push_back(e.source);
      t.target.push_back(e.target);
      t.bucket.push_back(static_cast<std::size_t>(k));
    }
  }
  return t;
}

/// Token accuracy per bucket: the fraction of target positions whose output token is
/// right (a missing position counts as wrong).
inline std::vector<double> token_accuracy(const TestSet& t, const std::vector<Ids>& outputs) {
  std::vector<double> correct(t.lo.size()), total(t.lo.size()), acc(t.lo.size());
  for (std::size_t i = 0; i < t.source.size(); ++i) {
    for (std::size_t p = 0; p < t.target[i].size(); ++p) {
      correct[t.bucket[i]] += (p < outputs[i].size() && outputs[i][p] == t.target[i][p]) ? 1 : 0;
      total[t.bucket[i]] += 1;
    }
  }
  for (std::size_t k = 0; k < acc.size(); ++k) acc[k] = total[k] > 0 ? correct[k] / total[k] : 0;
  return acc;
}

}  // namespace examples
