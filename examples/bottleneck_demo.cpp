// SPDX-License-Identifier: MIT
// The context-vector bottleneck in about a minute (what `make demo` runs): an LSTM
// encoder-decoder whose decoder starts from the encoder's final state z alone, against
// the same LSTMs with Bahdanau attention, both trained here on one task of random symbol
// sequences, then scored by input length. bottleneck.cpp is the longer experiment (three
// models, two tasks, lengths up to 60; docs/bottleneck.md).
//
// Lecture notes, "the encoder-decoder bottleneck": the longer the input, the less of it z
// can hold; an attention decoder reads every encoder state at every step, so its accuracy
// should fall much less with length. The program prints its progress while it trains,
// the token accuracy by length, and a conclusion computed from those numbers.
//
// The defaults were chosen by measurement (docs/bottleneck.md): reversing sequences of 5
// to 30 symbols out of 10, an LSTM of hidden 64 against LSTMs of hidden 48 with attention
// (about 50k parameters each), 700 updates of 32 sequences: about 30 s of CPU time per
// model. Reversal rather than copying: the plain encoder-decoder learns it at short
// lengths in a few hundred updates, where copying (whose first output is the symbol read
// longest ago) takes it far longer.
//
// Usage: bottleneck_demo [--smoke] [--task reverse|copy] [--reverse-source] [--steps N]
//          [--symbols N] [--min N] [--max N] [--hidden N] [--attention-hidden N]
//          [--embedding N] [--lr X] [--batch N] [--test N] [--seed N] [--threads N]
//   --smoke  a few updates (the test suite runs this)
//   --reverse-source  feed the encoders the source reversed (Sutskever et al. 2014)
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <mutex>
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
using Clock = std::chrono::steady_clock;
using examples::Ids;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

/// One model's training run, shared with the thread that reports progress.
struct Job {
  std::string name;
  examples::RecurrentSettings settings;
  // written by the worker, read by the reporter under `mutex`
  std::mutex mutex;
  Index step = 0;
  double loss_sum = 0;  // since the last report
  Index loss_count = 0;
  bool evaluating = false, done = false;
  double train_seconds = 0;
  // results
  Index parameters = 0;
  double first_loss = 0, last_loss = 0;
  std::vector<double> accuracy;
  attend::Matrix<Scalar> alignment;
  Ids align_output;
};

struct Settings {
  examples::Task task;
  Index steps = 0, batch = 32, test_per_bucket = 0, bucket = 5;
  std::uint64_t seed = 1;
};

void run(Job& job, const Settings& s, const examples::TestSet& test, const Ids& align_source) {
  const auto start = Clock::now();
  examples::RecurrentModel<Scalar> model(s.task, job.settings, s.seed);
  job.parameters = model.parameter_count();
  attend::Rng data(s.seed + 1);  // both models see the same batches
  const Index window = std::max<Index>(1, std::min<Index>(50, s.steps / 4));
  double recent = 0;
  for (Index step = 0; step < s.steps; ++step) {
    const double loss = model.train_step(examples::make_batch(data, s.task, s.batch));
    if (step == 0) job.first_loss = loss;
    if (step >= s.steps - window) recent += loss;
    const std::lock_guard<std::mutex> lock(job.mutex);
    job.step = step + 1;
    job.loss_sum += loss;
    ++job.loss_count;
  }
  job.last_loss = recent / double(window);
  {
    const std::lock_guard<std::mutex> lock(job.mutex);
    job.evaluating = true;
    job.train_seconds = seconds_since(start);
  }
  job.accuracy = examples::token_accuracy(test, model.decode(test.source, s.task.max_length));
  if (job.settings.attention) job.alignment = model.alignment(align_source, job.align_output);
  const std::lock_guard<std::mutex> lock(job.mutex);
  job.done = true;
}

/// Trains every job (one thread each, at most `threads` at once) and prints, every
/// `period` seconds, each job's step and mean loss since the last line, the time so far
/// and an estimate of the time left.
void run_all(std::vector<Job>& jobs, const Settings& s, const examples::TestSet& test,
             const Ids& align_source, unsigned threads, double period) {
  std::atomic<std::size_t> next{0};
  std::vector<std::exception_ptr> errors(jobs.size());
  std::mutex m;
  std::condition_variable finished;
  unsigned running = threads;
  const auto worker = [&] {
    for (std::size_t j = next++; j < jobs.size(); j = next++) {
      try {
        run(jobs[j], s, test, align_source);
      } catch (...) {
        errors[j] = std::current_exception();
        const std::lock_guard<std::mutex> lock(jobs[j].mutex);
        jobs[j].done = true;
      }
    }
    const std::lock_guard<std::mutex> lock(m);
    --running;
    finished.notify_all();
  };
  const auto start = Clock::now();
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t) pool.emplace_back(worker);
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(m);
      if (finished.wait_for(lock, std::chrono::duration<double>(period),
                            [&] { return running == 0; }))
        break;
    }
    const double elapsed = seconds_since(start);
    std::string line;
    double left = 0;   // the longest time left of the jobs (they run side by side)
    Index queued = 0;  // steps of jobs not started yet
    for (Job& j : jobs) {
      const std::lock_guard<std::mutex> lock(j.mutex);
      line += "  " + j.name + " ";
      if (j.done) {
        line += "done";
      } else if (j.evaluating) {
        line += "decoding the test set";
      } else if (j.step == 0) {
        line += "waiting";
        queued += s.steps;
      } else {
        line += "step " + std::to_string(j.step) + "/" + std::to_string(s.steps) + " loss " +
                examples::fixed(j.loss_count ? j.loss_sum / double(j.loss_count) : 0.0, 3);
        left = std::max(left, elapsed / double(j.step) * double(s.steps - j.step));
      }
      j.loss_sum = 0;
      j.loss_count = 0;
    }
    left += elapsed / double(std::max<Index>(1, jobs.front().step)) * double(queued) /
            double(std::max(1u, threads));
    std::printf("[%4.0f s]%s | about %.0f s of training left\n", elapsed, line.c_str(), left);
    std::fflush(stdout);
  }
  for (std::thread& t : pool) t.join();
  for (const std::exception_ptr& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

std::string symbol(std::int64_t id) {
  return id >= examples::kFirstSymbol
             ? std::string(1, static_cast<char>('a' + (id - examples::kFirstSymbol)))
         : id == examples::kEos ? "</s>"
                                : "?";
}

std::string range(Index lo, Index hi) { return std::to_string(lo) + "-" + std::to_string(hi); }

}  // namespace

int main(int argc, char** argv) {
  try {
    Settings s;
    s.task.symbols = 10;
    s.task.min_length = 5;
    s.task.max_length = 30;
    s.task.reverse = true;
    s.steps = 700;
    s.test_per_bucket = 40;
    examples::RecurrentSettings lstm, attention;  // about 50k parameters each
    lstm.hidden = 64;
    attention.attention = true;
    attention.hidden = 48;
    unsigned threads = 2;
    double period = 5;
    bool smoke = false;
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      const auto value = [&]() -> std::string {
        if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
        return argv[++i];
      };
      if (a == "--smoke") {
        smoke = true;
      } else if (a == "--task") {
        const std::string t = value();
        if (t != "copy" && t != "reverse") throw std::invalid_argument("--task copy|reverse");
        s.task.reverse = t == "reverse";
      } else if (a == "--reverse-source") {
        lstm.reverse_source = attention.reverse_source = true;
      } else if (a == "--steps") {
        s.steps = std::stol(value());
      } else if (a == "--symbols") {
        s.task.symbols = std::stol(value());
      } else if (a == "--min") {
        s.task.min_length = std::stol(value());
      } else if (a == "--max") {
        s.task.max_length = std::stol(value());
      } else if (a == "--hidden") {
        lstm.hidden = std::stol(value());
      } else if (a == "--attention-hidden") {
        attention.hidden = std::stol(value());
      } else if (a == "--embedding") {
        lstm.embedding = attention.embedding = std::stol(value());
      } else if (a == "--lr") {
        lstm.lr = attention.lr = std::stod(value());
      } else if (a == "--batch") {
        s.batch = std::stol(value());
      } else if (a == "--test") {
        s.test_per_bucket = std::stol(value());
      } else if (a == "--seed") {
        s.seed = std::stoull(value());
      } else if (a == "--threads") {
        threads = static_cast<unsigned>(std::stoul(value()));
      } else {
        std::fprintf(stderr,
                     "usage: bottleneck_demo [--smoke] [--task reverse|copy] [--reverse-source]\n"
                     "  [--steps N] [--symbols N] [--min N] [--max N] [--hidden N]\n"
                     "  [--attention-hidden N] [--embedding N] [--lr X] [--batch N] [--test N]\n"
                     "  [--seed N] [--threads N]\n");
        return 2;
      }
    }
    if (smoke) s.steps = 3, s.batch = 4, s.test_per_bucket = 1;
    if (s.task.symbols < 2 || s.task.symbols > 26 || s.task.min_length < 1 ||
        s.task.max_length < s.task.min_length || s.steps < 1 || s.batch < 1 ||
        s.test_per_bucket < 1)
      throw std::invalid_argument("settings out of range");

    const examples::Task& task = s.task;
    const std::string task_name = std::string(task.reverse ? "reverse" : "copy") +
                                  (lstm.reverse_source ? " (source fed reversed)" : "");
    std::printf(
        "The bottleneck in a minute: %s random sequences of %ld to %ld symbols (%ld distinct).\n"
        "lstm: LSTM encoder-decoder, hidden %ld; the decoder sees only the encoder's final state.\n"
        "attention: LSTMs of hidden %ld with Bahdanau attention over every encoder state.\n"
        "%ld Adam updates (lr %g) of %ld sequences each, both models side by side on %u "
        "threads.\n\n",
        task_name.c_str(), long(task.min_length), long(task.max_length), long(task.symbols),
        long(lstm.hidden), long(attention.hidden), long(s.steps), lstm.lr, long(s.batch), threads);
    std::fflush(stdout);

    const examples::TestSet test =
        examples::make_test_set(task, s.bucket, s.test_per_bucket, s.seed + 7);
    attend::Rng pick(s.seed + 11);
    const Ids align_source =
        examples::make_example(pick, task, std::min<Index>(12, task.max_length)).source;
    std::vector<Job> jobs(2);
    jobs[0].name = "lstm";
    jobs[0].settings = lstm;
    jobs[1].name = "attention";
    jobs[1].settings = attention;
    const auto start = Clock::now();
    run_all(jobs, s, test, align_source, std::max(1u, threads), period);
    const double wall = seconds_since(start);

    examples::heading("models");
    for (const Job& j : jobs) {
      std::printf("%-10s %7ld parameters; loss %.3f -> %.3f (mean of the last updates), %.0f s\n",
                  j.name.c_str(), long(j.parameters), j.first_loss, j.last_loss, j.train_seconds);
    }
    examples::heading(task_name + ": token accuracy by input length (greedy decoding, " +
                      std::to_string(s.test_per_bucket) + " sequences each)");
    std::printf("%-8s %10s %10s\n", "length", "lstm", "attention");
    examples::Panel panel;
    panel.title = task_name;
    panel.x_label = "input length (bucket start)";
    panel.y_label = "token accuracy";
    panel.series = {{"lstm", {}, {}, "#d95f02"}, {"attention", {}, {}, "#1b9e77"}};
    for (std::size_t k = 0; k < test.lo.size(); ++k) {
      std::printf("%-8s %10s %10s\n", range(test.lo[k], test.hi[k]).c_str(),
                  examples::fixed(jobs[0].accuracy[k], 3).c_str(),
                  examples::fixed(jobs[1].accuracy[k], 3).c_str());
      for (std::size_t m = 0; m < 2; ++m) {
        panel.series[m].x.push_back(double(test.lo[k]));
        panel.series[m].y.push_back(jobs[m].accuracy[k]);
      }
    }

    // The conclusion, from the numbers: the shortest bucket and the longest one.
    const double chance = 1.0 / double(task.symbols);
    const std::size_t lo = 0, hi = test.lo.size() - 1;
    const double plain_short = jobs[0].accuracy[lo], plain_long = jobs[0].accuracy[hi];
    const double att_short = jobs[1].accuracy[lo], att_long = jobs[1].accuracy[hi];
    const double gap = 100 * (att_long - plain_long);
    const bool plain_learned = plain_short >= chance + 0.3;  // clearly above chance
    const bool att_learned = att_short >= chance + 0.3;
    const bool attention_ahead = hi > lo && gap >= 15;  // clearly ahead at the longest inputs
    const bool plain_falls = hi > lo && plain_short - plain_long >= 0.15;
    std::printf(
        "\nconclusion: at lengths %s attention scores %.2f and the plain encoder-decoder "
        "%.2f (%s%.0f points);\n",
        range(test.lo[hi], test.hi[hi]).c_str(), att_long, plain_long, gap >= 0 ? "+" : "", gap);
    std::printf(
        "at lengths %s the plain encoder-decoder scores %.2f and attention %.2f, "
        "chance is 1/%ld = %.2f.\n",
        range(test.lo[lo], test.hi[lo]).c_str(), plain_short, att_short, long(task.symbols),
        chance);
    if (plain_learned && att_learned && attention_ahead && plain_falls) {
      std::printf(
          "Both models learned the task, and the plain encoder-decoder falls by %.0f "
          "points\nfrom the shortest inputs to the longest: the bottleneck shows.\n",
          100 * (plain_short - plain_long));
    } else {
      std::printf("The numbers do not show the bottleneck clearly in this run:\n");
      if (!plain_learned)
        std::printf("- the plain encoder-decoder is not clearly above chance on short inputs\n");
      if (!att_learned)
        std::printf("- the attention model is not clearly above chance on short inputs\n");
      if (!attention_ahead) std::printf("- attention is not 15 points ahead on long inputs\n");
      if (!plain_falls)
        std::printf("- the plain encoder-decoder does not fall 15 points with length\n");
    }

    examples::write_line_plots("bottleneck_demo.svg", {panel});
    std::vector<std::string> in, out;
    for (std::int64_t id : align_source) in.push_back(symbol(id));
    for (std::int64_t id : jobs[1].align_output) out.push_back(symbol(id));
    examples::LabelledHeatmapOptions o;
    o.title = "Attention model's alignment, " + task_name + " (red: wrong outputs)";
    o.row_title = "output";
    o.col_title = "input";
    o.bar_title = "attention weight";
    o.row_marks = examples::wrong_outputs(task, align_source, jobs[1].align_output);
    examples::png::write("bottleneck_demo_alignment.png",
                         examples::labelled_heatmap(jobs[1].alignment, out, in, o));
    std::printf(
        "\nwrote bottleneck_demo.svg (accuracy by length) and "
        "bottleneck_demo_alignment.png (the attention model's alignment); %.0f s wall\n",
        wall);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bottleneck_demo: %s\n", e.what());
    return 1;
  }
}
