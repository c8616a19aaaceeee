// SPDX-License-Identifier: MIT
// Greedy and beam-search decoding over any step model (token in, next-token log-probs out).
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/types.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace attend {

/// Decoding options (names as in common seq2seq toolkits).
struct DecodeOptions {
  std::int64_t bos = 1;         ///< start token, fed at the first step (not part of the output)
  std::int64_t eos = 2;         ///< end token: a hypothesis that emits it is finished
  Index max_length = 50;        ///< most generated tokens per hypothesis (eos included)
  Index beam_width = 4;         ///< hypotheses kept per step (beam_search only)
  double length_penalty = 1.0;  ///< score = log_prob / length^length_penalty; 0 = raw log prob
};

/// One decoded sequence.
template <typename State>
struct Hypothesis {
  std::vector<std::int64_t> tokens;  ///< generated tokens, bos excluded, eos last when finished
  double log_prob = 0.0;             ///< sum of the tokens' log-probabilities
  double score = 0.0;                ///< log_prob / tokens.size()^length_penalty
  bool finished = false;             ///< ended with eos (else stopped at max_length)
  State state;                       ///< the model state after the last token
};

namespace detail {

/// Checks decoding options against a vocabulary of V tokens, naming `who`.
inline void check_decode_options(const DecodeOptions& o, Index V, bool beam,
                                 const std::string& who) {
  if (beam && o.beam_width < 1) {
    throw value_error(who + ": beam_width is " + std::to_string(o.beam_width) + ", expected >= 1");
  }
  if (o.max_length < 1) {
    throw value_error(who + ": max_length is " + std::to_string(o.max_length) + ", expected >= 1");
  }
  for (const auto& [name, id] :
       {std::pair<const char*, std::int64_t>{"bos", o.bos}, {"eos", o.eos}}) {
    if (id < 0 || id >= V) {
      throw index_error(who + ": " + name + " is " + std::to_string(id) + ", expected in [0, " +
                        std::to_string(V) + ") (vocab_size)");
    }
  }
  if (!std::isfinite(o.length_penalty)) {
    throw value_error(who + ": length_penalty is " + std::to_string(o.length_penalty) +
                      ", expected a finite value");
  }
}

inline double length_normalized(double log_prob, std::size_t length, double penalty) {
  return log_prob / std::pow(static_cast<double>(length), penalty);
}

/// Checks the log-probabilities a model returned: [1, V], no NaN, no +inf.
template <typename M>
void check_log_probs(const M& lp, Index V, const std::string& who) {
  if (lp.rows() != 1 || lp.cols() != V) {
    throw shape_error(who + ": the model's log-probabilities are " + matrix_shape(lp) +
                      ", expected [1, " + std::to_string(V) + "] (vocab_size)");
  }
  for (Index v = 0; v < V; ++v) {
    const double x = static_cast<double>(lp(0, v));
    if (std::isnan(x) || x == std::numeric_limits<double>::infinity()) {
      throw value_error(who + ": the model's log-probability of token " + std::to_string(v) +
                        " is " + std::to_string(x) + ", expected finite or -inf");
    }
  }
}

}  // namespace detail

/// Greedy decoding: from bos, feed back the most probable token (the lowest id on ties)
/// until eos or max_length.
///
/// `Model` provides `using State`, `Index vocab_size() const`, `State initial_state() const`
/// and `Matrix<S> step(std::int64_t token, State& state) const`, which returns the [1, V]
/// log-probabilities of the next token and advances `state` (see Seq2SeqDecoder).
/// \returns the hypothesis; `finished` is false when max_length stopped it.
/// \throws value_error on max_length < 1 or a non-finite length_penalty; index_error when
///   bos or eos is not a token id; errors of the model's step.
/// \sa beam_search
template <typename Model>
Hypothesis<typename Model::State> greedy_decode(const Model& model, const DecodeOptions& options) {
  const std::string who = "greedy_decode";
  const Index V = model.vocab_size();
  detail::check_decode_options(options, V, false, who);
  Hypothesis<typename Model::State> h;
  h.state = model.initial_state();
  std::int64_t token = options.bos;
  for (Index i = 0; i < options.max_length; ++i) {
    const auto lp = model.step(token, h.state);  // [1, V]
    detail::check_log_probs(lp, V, who);
    Index best = 0;
    for (Index v = 1; v < V; ++v) {
      if (lp(0, v) > lp(0, best)) best = v;  // strict: the lowest id wins ties
    }
    token = static_cast<std::int64_t>(best);
    h.tokens.push_back(token);
    h.log_prob += static_cast<double>(lp(0, best));
    if (token == options.eos) {
      h.finished = true;
      break;
    }
  }
  h.score = detail::length_normalized(h.log_prob, h.tokens.size(), options.length_penalty);
  return h;
}

/// Beam search: keeps the `beam_width` most probable partial hypotheses (by summed
/// log-probability). At each step every live hypothesis proposes its `beam_width` best next
/// tokens; candidates are ranked by log-probability (ties: earlier hypothesis, then lower
/// token id, so the search is deterministic); a candidate ending in eos among the first
/// `beam_width` ranks is finished, the others fill the next beam. The search stops when
/// `beam_width` hypotheses have finished, no live one remains, or after max_length steps.
/// Tokens of probability 0 (-inf) are never chosen. A beam of width 1 equals greedy_decode.
/// \returns finished hypotheses by decreasing length-normalized score, then (only when
///   fewer than beam_width finished) the live ones cut by max_length, also by score.
/// \throws value_error on beam_width < 1 (and as greedy_decode).
/// \note Length normalization as in Wu et al. 2016 (GNMT) without its +5 offset.
template <typename Model>
std::vector<Hypothesis<typename Model::State>> beam_search(const Model& model,
                                                           const DecodeOptions& options) {
  using State = typename Model::State;
  const std::string who = "beam_search";
  const Index V = model.vocab_size();
  detail::check_decode_options(options, V, true, who);
  const Index K = options.beam_width;
  struct Candidate {
    double log_prob;
    std::size_t parent;
    Index token;
  };
  const auto better = [](const Candidate& a, const Candidate& b) {
    if (a.log_prob != b.log_prob) return a.log_prob > b.log_prob;
    if (a.parent != b.parent) return a.parent < b.parent;
    return a.token < b.token;
  };

  std::vector<Hypothesis<State>> live(1), finished;
  live[0].state = model.initial_state();
  std::vector<Index> order(static_cast<std::size_t>(V));
  for (Index i = 0; i < options.max_length && !live.empty(); ++i) {
    std::vector<Candidate> candidates;
    std::vector<State> next_states;
    next_states.reserve(live.size());
    for (std::size_t p = 0; p < live.size(); ++p) {
      State s = live[p].state;
      const std::int64_t last = live[p].tokens.empty() ? options.bos : live[p].tokens.back();
      const auto lp = model.step(last, s);  // [1, V]
      detail::check_log_probs(lp, V, who);
      next_states.push_back(std::move(s));
      // This hypothesis' K best tokens (ties: lower id).
      for (Index v = 0; v < V; ++v) order[static_cast<std::size_t>(v)] = v;
      const Index k = std::min(K, V);
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](Index a, Index b) {
        return lp(0, a) != lp(0, b) ? lp(0, a) > lp(0, b) : a < b;
      });
      for (Index j = 0; j < k; ++j) {
        const Index v = order[static_cast<std::size_t>(j)];
        const double x = static_cast<double>(lp(0, v));
        if (x == -std::numeric_limits<double>::infinity()) break;  // probability 0
        candidates.push_back({live[p].log_prob + x, p, v});
      }
    }
    std::sort(candidates.begin(), candidates.end(), better);
    std::vector<Hypothesis<State>> next;
    for (std::size_t r = 0; r < candidates.size() && static_cast<Index>(next.size()) < K; ++r) {
      const Candidate& c = candidates[r];
      const bool is_eos = c.token == options.eos;
      if (is_eos && static_cast<Index>(r) >= K) continue;  // only top-K ranks may finish
      Hypothesis<State> h;
      h.tokens = live[c.parent].tokens;
      h.tokens.push_back(static_cast<std::int64_t>(c.token));
      h.log_prob = c.log_prob;
      h.score = detail::length_normalized(h.log_prob, h.tokens.size(), options.length_penalty);
      h.state = next_states[c.parent];
      if (is_eos) {
        h.finished = true;
        finished.push_back(std::move(h));
      } else {
        next.push_back(std::move(h));
      }
    }
    live = std::move(next);
    if (static_cast<Index>(finished.size()) >= K) break;
  }
  const auto by_score = [](const Hypothesis<State>& a, const Hypothesis<State>& b) {
    return a.score > b.score;
  };
  std::stable_sort(finished.begin(), finished.end(), by_score);
  if (static_cast<Index>(finished.size()) < K) {
    std::stable_sort(live.begin(), live.end(), by_score);
    for (auto& h : live) finished.push_back(std::move(h));
  }
  return finished;
}

}  // namespace attend
