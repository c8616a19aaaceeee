// SPDX-License-Identifier: MIT
// The context-vector bottleneck, measured: three sequence-to-sequence models trained here
// on copying and reversing random token sequences, scored by input length.
//
// Lecture notes, "the encoder-decoder bottleneck": an LSTM encoder squeezes the whole input
// into its final state z, and the decoder starts from z alone; the longer the input, the
// less of it z can hold. An attention decoder reads every encoder state at every step
// (alignment), so its score should fall much less with length. This program trains, with
// about the same number of parameters each,
//
//   lstm       LSTM encoder-decoder; the decoder starts from z (the bottleneck)
//   attention  the same with Bahdanau (additive) attention in the decoder
//   transformer  a small encoder-decoder transformer
//
// on two tasks generated here (random sequences of 5..60 symbols; copy: output = input,
// reverse: output = input reversed), then decodes held-out sequences greedily and prints
// the token accuracy (fraction of output positions right) by input length. It writes the
// curves as bottleneck.svg and the attention model's alignment on one reversed sequence
// as bottleneck_alignment.png (an anti-diagonal when it has learned to reverse).
// A small-scale, qualitative version of Bahdanau, Cho & Bengio (2015), figure 2.
//
// `make demo` runs bottleneck_demo instead: two models, one task, about a minute.
//
// Usage: bottleneck [--full | --smoke] [--steps N] [--seed N] [--threads N]
//   (default) a shortened run (a few minutes on 2 cores)
//   --full    the run of docs/bottleneck.md (under 10 minutes on 2 cores)
//   --smoke   a few training steps per model (the test suite runs this)
//   --steps N updates per model and task instead of the mode's number
//   --threads N  worker threads (default 2); each model and task trains on one thread
#include "attend/train/transformer_seq2seq_backward.hpp"
#include "attend/transformer/seq2seq.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "common/label.hpp"
#include "common/line_plot.hpp"
#include "common/png.hpp"
#include "common/print.hpp"
#include "common/recurrent_task.hpp"

namespace {

using attend::Index;
using Scalar = float;
using Ids = std::vector<std::int64_t>;

// ---- the tasks (common/recurrent_task.hpp) ------------------------------------------------

using examples::Batch;
using examples::Example;
using examples::Ids;
using examples::kBos;
using examples::kEos;
using examples::kFirstSymbol;
using examples::kPad;
constexpr Index kSymbols = 16;                     // distinct input symbols
constexpr Index kVocab = kFirstSymbol + kSymbols;  // ids 0 .. 18
constexpr Index kMinLength = 5, kMaxLength = 60;

examples::Task task(bool reverse) {
  examples::Task t;
  t.symbols = kSymbols;
  t.min_length = kMinLength;
  t.max_length = kMaxLength;
  t.reverse = reverse;
  return t;
}

// ---- the models --------------------------------------------------------------------------

/// What the experiment needs of a model.
class Model {
 public:
  virtual ~Model() = default;
  virtual std::string name() const = 0;
  virtual Index parameter_count() = 0;
  /// One optimiser update on `batch`. \returns the mean cross-entropy before the update
  virtual double train_step(const Batch& batch, Index step) = 0;
  /// Greedy decoding of every source; the first `source[i].size()` output tokens are
  /// scored (a shorter output's missing tokens count as wrong).
  virtual std::vector<Ids> decode(const std::vector<Ids>& source) = 0;
};

/// Sizes of the experiment's models (about 160k-170k parameters each with V = 19).
constexpr Index kEmbedding = 32;
constexpr Index kLstmHidden = 128;      // the bottleneck model
constexpr Index kAttentionHidden = 96;  // the attention model (its decoder reads [emb; c])
constexpr Index kModelWidth = 64, kHeads = 4, kFeedForward = 128, kLayers = 2;  // transformer
constexpr double kClipNorm = 1.0;  // global gradient norm, every model

/// The LSTM encoder-decoder, without (the bottleneck) or with Bahdanau attention
/// (examples::RecurrentModel: Adam, lr 3e-3, gradients clipped to kClipNorm).
class RecurrentModel final : public Model {
 public:
  RecurrentModel(bool attention, std::uint64_t seed)
      : attention_(attention), m_(task(false), settings(attention), seed) {}
  std::string name() const override { return attention_ ? "attention" : "lstm"; }
  Index parameter_count() override { return m_.parameter_count(); }
  double train_step(const Batch& b, Index) override { return m_.train_step(b); }
  std::vector<Ids> decode(const std::vector<Ids>& source) override {
    return m_.decode(source, kMaxLength);
  }
  /// The alignment matrix [output steps, input steps] of one source (attention model only).
  attend::Matrix<Scalar> alignment(const Ids& source, Ids& output) const {
    return m_.alignment(source, output);
  }

 private:
  static examples::RecurrentSettings settings(bool attention) {
    examples::RecurrentSettings s;
    s.attention = attention;
    s.embedding = kEmbedding;
    s.hidden = attention ? kAttentionHidden : kLstmHidden;
    s.lr = 3e-3;
    s.clip_norm = kClipNorm;
    return s;
  }

  bool attention_;
  examples::RecurrentModel<Scalar> m_;
};

/// A small encoder-decoder transformer (pre-norm, which trains without a long warmup),
/// Adam with the warmup + inverse-square-root schedule of the paper.
class TransformerModel final : public Model {
 public:
  explicit TransformerModel(std::uint64_t seed)
      : t_{attend::TransformerSeq2Seq<Scalar>(options(), seed), {}} {
    attend::AdamOptions o;
    o.beta2 = 0.98;  // the paper's betas
    o.eps = 1e-9;
    adam_ = attend::Adam<Scalar>(o);
  }
  std::string name() const override { return "transformer"; }
  Index parameter_count() override { return params().numel(); }
  double train_step(const Batch& b, Index step) override {
    // Peak 2e-3 after kWarmup updates: factor = 2e-3 * sqrt(d_model * warmup).
    constexpr std::int64_t kWarmup = 100;
    const double factor = 2e-3 * std::sqrt(double(kModelWidth * kWarmup));
    adam_.set_lr(attend::warmup_inverse_sqrt_lr(step + 1, kModelWidth, kWarmup, factor));
    attend::TransformerSeq2SeqLossCache<Scalar> cache;
    const double loss =
        attend::transformer_seq2seq_loss(t_.model, b.source, b.target_in, b.target_out, &cache);
    const attend::ParameterList<Scalar>& p = params();
    attend::zero_grad(p);
    attend::transformer_seq2seq_loss_backward(t_.model, cache, t_.grads);
    attend::clip_grad_norm_(p, kClipNorm);
    adam_.step(p);
    return loss;
  }
  std::vector<Ids> decode(const std::vector<Ids>& source) override {
    std::vector<Ids> out;
    for (std::size_t i = 0; i < source.size(); i += 64) {
      const std::vector<Ids> part(
          source.begin() + static_cast<std::ptrdiff_t>(i),
          source.begin() + static_cast<std::ptrdiff_t>(std::min(source.size(), i + 64)));
      const std::vector<Ids> y = decode_batch(part);
      out.insert(out.end(), y.begin(), y.end());
    }
    return out;
  }

 private:
  static attend::TransformerSeq2SeqOptions options() {
    attend::TransformerSeq2SeqOptions o;
    o.transformer.layer.d_model = kModelWidth;
    o.transformer.layer.nhead = kHeads;
    o.transformer.layer.dim_feedforward = kFeedForward;
    o.transformer.layer.norm_first = true;
    o.transformer.layer.batch_first = true;
    o.transformer.num_encoder_layers = o.transformer.num_decoder_layers = kLayers;
    o.src_vocab_size = o.tgt_vocab_size = kVocab;
    o.max_len = kMaxLength + 2;
    // Embeddings start N(0, 1) (nn.Embedding's init); times sqrt(64) = 8 they would drown
    // the positions (entries in [-1, 1]), and copying and reversing are about positions.
    o.scale_embedding = false;
    return o;
  }
  const attend::ParameterList<Scalar>& params() {
    if (params_.size() == 0) {
      attend::TransformerSeq2SeqLossCache<Scalar> cache;
      attend::transformer_seq2seq_loss(t_.model, {{kFirstSymbol}}, {{kBos}}, {{kEos}}, &cache);
      attend::transformer_seq2seq_loss_backward(t_.model, cache, t_.grads, 0.0);
      params_ = attend::collect_parameters<Scalar>(t_);
    }
    return params_;
  }
  // Greedy decoding of a batch with the decoder's key/value cache, as seq2seq_greedy_decode
  // does for the recurrent models: a sequence stops at its first eos (kept), and at most
  // as many tokens as the longest source are decoded (all that are scored).
  std::vector<Ids> decode_batch(const std::vector<Ids>& source) const {
    const Index B = static_cast<Index>(source.size());
    Index S = 0;
    std::vector<Index> lengths;
    for (const Ids& s : source) {
      lengths.push_back(static_cast<Index>(s.size()));
      S = std::max(S, lengths.back());
    }
    attend::Tensor<std::int64_t> src({B, S});
    src.fill(kPad);
    for (Index b = 0; b < B; ++b) {
      for (Index t = 0; t < lengths[std::size_t(b)]; ++t)
        src(b, t) = source[std::size_t(b)][std::size_t(t)];
    }
    attend::TransformerArgs args;
    args.src_key_padding_mask = attend::Mask::key_padding_lengths(lengths, S);
    const attend::Tensor<Scalar> memory = t_.model.encode(src, args);
    attend::TransformerDecoderCache<Scalar> cache = t_.model.make_cache(B, S);
    attend::Tensor<std::int64_t> token({B, 1});
    token.fill(kBos);
    std::vector<Ids> out(static_cast<std::size_t>(B));
    std::vector<bool> done(static_cast<std::size_t>(B), false);
    for (Index i = 0; i < S; ++i) {
      const attend::Tensor<Scalar> logits =
          t_.model.decode_step(token, memory, cache, args.src_key_padding_mask);  // [B, 1, V]
      for (Index b = 0; b < B; ++b) {
        const auto k = static_cast<std::size_t>(b);
        Index best = 0;
        logits.matrix(b).row(0).maxCoeff(&best);
        token(b, 0) = best;
        if (!done[k]) out[k].push_back(best);
        done[k] = done[k] || best == kEos;
      }
    }
    return out;
  }

  examples::Trainable<attend::TransformerSeq2Seq<Scalar>, attend::TransformerSeq2SeqGrad<Scalar>>
      t_;
  attend::Adam<Scalar> adam_;
  attend::ParameterList<Scalar> params_;
};

// ---- the experiment ----------------------------------------------------------------------

struct Settings {
  Index train_steps = 0;  // updates per model and task
  Index batch = 32;
  Index test_per_length = 0;  // held-out sequences per length bucket
  Index bucket = 5;           // lengths 5-9, 10-14, ... 55-60
};

/// Length buckets of `bucket` lengths from kMinLength; the last one also takes the rest.
Index bucket_count(const Settings& s) { return (kMaxLength - kMinLength + 1) / s.bucket; }

/// Token accuracy by length bucket (index (length - kMinLength) / bucket).
struct Curve {
  std::vector<double> correct, total;
};

Curve evaluate(Model& model, bool reverse, const Settings& s, std::uint64_t seed) {
  attend::Rng rng(seed);
  const Index buckets = bucket_count(s);
  Curve c{std::vector<double>(static_cast<std::size_t>(buckets)),
          std::vector<double>(static_cast<std::size_t>(buckets))};
  std::vector<Ids> sources, targets;
  for (Index b = 0; b < buckets; ++b) {
    for (Index i = 0; i < s.test_per_length; ++i) {
      const Index lo = kMinLength + b * s.bucket;
      const Index hi = b + 1 == buckets ? kMaxLength : lo + s.bucket - 1;
      const Index length =
          lo + static_cast<Index>(rng.next() % static_cast<std::uint64_t>(hi - lo + 1));
      const Example e = examples::make_example(rng, task(reverse), length);
      sources.push_back(e.source);
      targets.push_back(e.target);
    }
  }
  const std::vector<Ids> outputs = model.decode(sources);
  for (std::size_t i = 0; i < sources.size(); ++i) {
    const auto b = static_cast<std::size_t>(
        std::min(buckets - 1, (static_cast<Index>(sources[i].size()) - kMinLength) / s.bucket));
    for (std::size_t t = 0; t < targets[i].size(); ++t) {
      c.correct[b] += (t < outputs[i].size() && outputs[i][t] == targets[i][t]) ? 1.0 : 0.0;
      c.total[b] += 1.0;
    }
  }
  return c;
}

/// One training run: a model on a task, then its evaluation.
struct Job {
  std::string model;
  bool reverse = false;
  Curve curve;
  double first_loss = 0, last_loss = 0, seconds = 0;
  Index parameters = 0;
  attend::Matrix<Scalar> alignment;  // the attention model on reverse only
  Ids align_source, align_output;
};

std::unique_ptr<Model> make_model(const std::string& name, std::uint64_t seed) {
  if (name == "transformer") return std::make_unique<TransformerModel>(seed);
  return std::make_unique<RecurrentModel>(name == "attention", seed);
}

void run(Job& job, const Settings& s, std::uint64_t seed) {
  const auto start = std::chrono::steady_clock::now();
  std::unique_ptr<Model> model = make_model(job.model, seed);
  job.parameters = model->parameter_count();
  attend::Rng data(seed + 1 + (job.reverse ? 1000 : 0));
  double recent = 0;
  const Index window = std::max<Index>(1, std::min<Index>(50, s.train_steps / 4));
  for (Index step = 0; step < s.train_steps; ++step) {
    const double loss =
        model->train_step(examples::make_batch(data, task(job.reverse), s.batch), step);
    if (step == 0) job.first_loss = loss;
    if (step >= s.train_steps - window) recent += loss;
  }
  job.last_loss = recent / static_cast<double>(window);
  job.curve = evaluate(*model, job.reverse, s, seed + 7);  // held-out: another stream
  if (job.model == "attention" && job.reverse) {
    attend::Rng pick(seed + 11);
    job.align_source = examples::make_example(pick, task(true), 16).source;
    job.alignment =
        static_cast<RecurrentModel&>(*model).alignment(job.align_source, job.align_output);
  }
  job.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

/// Runs every job on `threads` worker threads (each job on one thread: results do not
/// depend on the scheduling).
void run_all(std::vector<Job>& jobs, const Settings& s, std::uint64_t seed, unsigned threads) {
  std::atomic<std::size_t> next{0};
  std::vector<std::exception_ptr> errors(jobs.size());
  const auto worker = [&] {
    for (std::size_t j = next++; j < jobs.size(); j = next++) {
      try {
        run(jobs[j], s, seed);
      } catch (...) {
        errors[j] = std::current_exception();
      }
    }
  };
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t) pool.emplace_back(worker);
  for (std::thread& t : pool) t.join();
  for (const std::exception_ptr& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

std::string symbol(std::int64_t id) {
  return id >= kFirstSymbol ? std::string(1, static_cast<char>('a' + (id - kFirstSymbol)))
         : id == kEos       ? "</s>"
                            : "?";
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::string mode = "short";
    std::uint64_t seed = 1;
    unsigned threads = 2;
    long steps = 0;
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--full")
        mode = "full";
      else if (a == "--smoke")
        mode = "smoke";
      else if (a == "--steps" && i + 1 < argc)
        steps = std::stol(argv[++i]);
      else if (a == "--seed" && i + 1 < argc)
        seed = std::stoull(argv[++i]);
      else if (a == "--threads" && i + 1 < argc)
        threads = static_cast<unsigned>(std::stoul(argv[++i]));
      else {
        std::fprintf(stderr,
                     "usage: bottleneck [--full | --smoke] [--steps N] [--seed N] [--threads N]\n");
        return 2;
      }
    }
    Settings s;
    if (mode == "smoke") {
      s.train_steps = 3, s.batch = 4, s.test_per_length = 1;
    } else if (mode == "short") {
      s.train_steps = 200, s.test_per_length = 20;
    } else {
      s.train_steps = 1000, s.test_per_length = 100;
    }
    if (steps > 0) s.train_steps = steps;
    std::vector<Job> jobs;
    for (bool reverse : {false, true}) {
      for (const char* m : {"attention", "transformer", "lstm"}) {
        Job j;
        j.model = m;
        j.reverse = reverse;
        jobs.push_back(j);
      }
    }
    std::printf(
        "bottleneck (%s run): %ld updates of %ld sequences per model and task, %ld held-out\n"
        "sequences per length bucket, lengths %ld..%ld, %ld symbols, seed %llu, %u threads\n",
        mode.c_str(), long(s.train_steps), long(s.batch), long(s.test_per_length), long(kMinLength),
        long(kMaxLength), long(kSymbols), static_cast<unsigned long long>(seed), threads);
    const auto start = std::chrono::steady_clock::now();
    run_all(jobs, s, seed, std::max(1u, threads));
    const double wall =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

    const char* order[] = {"lstm", "attention", "transformer"};
    const auto find = [&](const std::string& m, bool reverse) -> const Job& {
      for (const Job& j : jobs) {
        if (j.model == m && j.reverse == reverse) return j;
      }
      throw std::logic_error("no job " + m);
    };
    examples::heading("models");
    for (const char* m : order) {
      const Job& c = find(m, false);
      const Job& r = find(m, true);
      std::printf(
          "%-12s %7ld parameters; loss copy %.3f -> %.3f (%.0f s), reverse %.3f -> %.3f (%.0f s)\n",
          m, long(c.parameters), c.first_loss, c.last_loss, c.seconds, r.first_loss, r.last_loss,
          r.seconds);
    }
    std::vector<examples::Panel> panels;
    const char* colours[] = {"#d95f02", "#1b9e77", "#7570b3"};
    for (bool reverse : {false, true}) {
      const std::string task = reverse ? "reverse" : "copy";
      examples::heading(task + ": token accuracy by input length (greedy decoding)");
      std::printf("%-8s", "length");
      for (const char* m : order) std::printf(" %12s", m);
      std::printf("\n");
      examples::Panel panel;
      panel.title = task + ": token accuracy by input length";
      panel.x_label = "input length (bucket start, symbols)";
      panel.y_label = "token accuracy (greedy decoding)";
      for (std::size_t k = 0; k < 3; ++k) panel.series.push_back({order[k], {}, {}, colours[k]});
      const Index buckets = bucket_count(s);
      for (Index b = 0; b < buckets; ++b) {
        const Index lo = kMinLength + b * s.bucket;
        const Index hi = b + 1 == buckets ? kMaxLength : lo + s.bucket - 1;
        std::printf("%3ld-%-4ld", long(lo), long(hi));
        for (std::size_t k = 0; k < 3; ++k) {
          const Curve& c = find(order[k], reverse).curve;
          const auto i = static_cast<std::size_t>(b);
          const double acc = c.total[i] > 0 ? c.correct[i] / c.total[i] : 0.0;
          std::printf(" %12s", examples::fixed(acc, 3).c_str());
          panel.series[k].x.push_back(double(lo));
          panel.series[k].y.push_back(acc);
        }
        std::printf("\n");
      }
      panels.push_back(panel);
    }
    examples::write_line_plots("bottleneck.svg", panels);
    const Job& a = find("attention", true);
    std::vector<std::string> in, out;
    for (std::int64_t id : a.align_source) in.push_back(symbol(id));
    for (std::int64_t id : a.align_output) out.push_back(symbol(id));
    examples::LabelledHeatmapOptions o;
    o.title = "Attention model's alignment, reverse (red: wrong outputs)";
    o.row_title = "output";
    o.col_title = "input";
    o.bar_title = "attention weight";
    o.row_marks = examples::wrong_outputs(task(true), a.align_source, a.align_output);
    examples::png::write("bottleneck_alignment.png",
                         examples::labelled_heatmap(a.alignment, out, in, o));
    std::printf(
        "\nwrote bottleneck.svg (accuracy curves) and bottleneck_alignment.png (the attention\n"
        "model's alignment reversing %s); %.0f s wall\n",
        [&] {
          std::string w;
          for (const std::string& x : in) w += x;
          return w;
        }()
            .c_str(),
        wall);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bottleneck: %s\n", e.what());
    return 1;
  }
}
