// SPDX-License-Identifier: MIT
// The batched forward of a Seq2Seq (B padded sequences at once): encoder, decoder step and
// greedy decoding; the training forward (seq2seq_backward.hpp) runs on it.
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/rnn/seq2seq.hpp"
#include "attend/train/alignment_backward.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace attend {

/// A batch of B sequence pairs laid out time-major and padded: row t * B + b is step t of
/// sequence b; padded positions hold id 0 (never read by the loss or the gradients).
struct Seq2SeqBatchLayout {
  Index B = 0;                           // sequences
  Index S = 0;                           // longest source
  Index L = 0;                           // longest target (0 for decoding)
  std::vector<Index> source_lengths;     // [B] S_b
  std::vector<Index> target_lengths;     // [B] L_b (empty for decoding)
  std::vector<std::int64_t> source_ids;  // [S * B]
  std::vector<std::int64_t> target_ids;  // [L * B] the teacher-forced decoder inputs
};

/// The activations of one LSTM layer over T steps of B sequences, kept for the backward.
template <typename Scalar>
struct Seq2SeqLSTMTrace {
  Matrix<Scalar> x;       // [T * B, in] the layer's inputs
  Matrix<Scalar> h_prev;  // [T * B, N] the state entering each step
  Matrix<Scalar> c_prev;  // [T * B, N]
  Matrix<Scalar> gates;   // [T * B, 4N] activated i, f, g, o
  Matrix<Scalar> tanh_c;  // [T * B, N] tanh of the new cell state
};

namespace detail {

/// Target label of padded positions in the loss (never a real id: ids are >= 0).
constexpr std::int64_t kSeq2SeqIgnore = -1;

inline void check_seq2seq_id(std::int64_t id, Index V, const std::string& what, const char* vocab) {
  if (id < 0 || id >= V) {
    throw index_error(what + " is " + std::to_string(id) + ", expected in [0, " +
                      std::to_string(V) + ") (" + vocab + ")");
  }
}

/// Checks a batch at the door and lays it out; `target_input` may be null (decoding).
inline Seq2SeqBatchLayout seq2seq_layout(const Seq2SeqOptions& o,
                                         const std::vector<std::vector<std::int64_t>>& source,
                                         const std::vector<std::vector<std::int64_t>>* target_in,
                                         const std::vector<std::vector<std::int64_t>>* target_out,
                                         const std::string& who) {
  if (source.empty()) throw value_error(who + ": source is empty, expected at least one sequence");
  const std::size_t B = source.size();
  const auto check_count = [&](const std::vector<std::vector<std::int64_t>>* v, const char* name) {
    if (v && v->size() != B) {
      throw shape_error(who + ": " + name + " has " + std::to_string(v->size()) +
                        " sequences, expected " + std::to_string(B) + " (the sequences of source)");
    }
  };
  check_count(target_in, "target_input");
  check_count(target_out, "target_output");
  Seq2SeqBatchLayout lay;
  lay.B = Index(B);
  for (std::size_t b = 0; b < B; ++b) {
    const std::string at = "[" + std::to_string(b) + "]";
    const auto check_seq = [&](const std::vector<std::int64_t>& seq, const char* name, Index V,
                               const char* vocab) {
      if (seq.empty()) {
        throw value_error(who + ": " + name + at + " is empty, expected at least one token");
      }
      for (std::size_t t = 0; t < seq.size(); ++t) {
        check_seq2seq_id(seq[t], V, who + ": " + name + at + "[" + std::to_string(t) + "]", vocab);
      }
    };
    check_seq(source[b], "source", o.source_vocab, "source_vocab");
    lay.source_lengths.push_back(Index(source[b].size()));
    lay.S = std::max(lay.S, Index(source[b].size()));
    if (target_in) {
      check_seq((*target_in)[b], "target_input", o.target_vocab, "target_vocab");
      if (target_out && (*target_out)[b].size() != (*target_in)[b].size()) {
        throw shape_error(who + ": target_output" + at + " has " +
                          std::to_string((*target_out)[b].size()) + " tokens, expected " +
                          std::to_string((*target_in)[b].size()) + " (the tokens of target_input" +
                          at + ")");
      }
      if (target_out) check_seq((*target_out)[b], "target_output", o.target_vocab, "target_vocab");
      lay.target_lengths.push_back(Index((*target_in)[b].size()));
      lay.L = std::max(lay.L, Index((*target_in)[b].size()));
    }
  }
  const auto pad = [&](const std::vector<std::vector<std::int64_t>>& seqs, Index T) {
    std::vector<std::int64_t> ids(std::size_t(T) * B, 0);
    for (std::size_t b = 0; b < B; ++b) {
      for (std::size_t t = 0; t < seqs[b].size(); ++t) ids[t * B + b] = seqs[b][t];
    }
    return ids;
  };
  lay.source_ids = pad(source, lay.S);
  if (target_in) lay.target_ids = pad(*target_in, lay.L);
  return lay;
}

/// Sizes the traces of an LSTM stack for `rows` = T * B rows.
template <typename S>
void prepare_traces(const LSTM<S>& lstm, Index rows, std::vector<Seq2SeqLSTMTrace<S>>& traces) {
  traces.resize(lstm.cells.size());
  for (std::size_t k = 0; k < traces.size(); ++k) {
    const Index N = lstm.options.hidden_size;
    traces[k].x.resize(rows, lstm.cells[k].input_size());
    traces[k].h_prev.resize(rows, N);
    traces[k].c_prev.resize(rows, N);
    traces[k].gates.resize(rows, 4 * N);
    traces[k].tanh_c.resize(rows, N);
  }
}

/// What the batched encoder hands the decoder.
template <typename S>
struct Seq2SeqEncoded {
  Tensor<S> keys;            // [B, S, N] top-layer states, 0 at padded steps
  Tensor<S> projected_keys;  // [B, S, A] W1 keys (Bahdanau) or empty
  BoolMatrix mask;           // [B, S] true = padded source step
  std::vector<Matrix<S>> h;  // [num_layers] z: h after each sequence's last step [B, N]
  std::vector<Matrix<S>> c;  // [num_layers] [B, N]
};

/// The encoder over a padded batch: LSTM::forward with lengths, one layer at a time, the
/// input projection of all steps in one product; fills `traces` when not null.
template <typename S>
Seq2SeqEncoded<S> seq2seq_encode(const Seq2Seq<S>& model, const Seq2SeqBatchLayout& lay,
                                 std::vector<Seq2SeqLSTMTrace<S>>* traces) {
  const Index B = lay.B, T = lay.S, N = model.options.hidden_size;
  if (traces) prepare_traces(model.encoder, T * B, *traces);
  Matrix<S> below = model.source_embedding.forward(lay.source_ids);  // [T * B, E]
  Matrix<S> out(T * B, N), xi, gates(B, 4 * N), h(B, N), c(B, N), h_new(B, N), c_new(B, N);
  Seq2SeqEncoded<S> enc;
  for (const LSTMCell<S>& cell : model.encoder.cells) {
    Seq2SeqLSTMTrace<S>* tr = traces ? &(*traces)[enc.h.size()] : nullptr;
    if (tr) tr->x = below;
    xi = detail::input_projection<LSTMCell<S>, S>(cell, below);  // [T * B, 4N], all steps
    h.setZero();
    c.setZero();
    for (Index t = 0; t < T; ++t) {
      if (tr) {
        tr->h_prev.middleRows(t * B, B) = h;
        tr->c_prev.middleRows(t * B, B) = c;
      }
      MatrixRef<S> g = tr ? MatrixRef<S>(tr->gates.middleRows(t * B, B)) : MatrixRef<S>(gates);
      cell.step_projected(xi.middleRows(t * B, B), h, c, g, h_new, c_new);
      if (tr) tr->tanh_c.middleRows(t * B, B) = c_new.array().tanh().matrix();
      for (Index b = 0; b < B; ++b) {
        if (t < lay.source_lengths[std::size_t(b)]) {
          h.row(b) = h_new.row(b);
          c.row(b) = c_new.row(b);
          out.row(t * B + b) = h_new.row(b);
        } else {  // padded step: state held, output 0 (pad_packed_sequence)
          out.row(t * B + b).setZero();
        }
      }
    }
    enc.h.push_back(h);
    enc.c.push_back(c);
    below.swap(out);
    out.resize(T * B, N);
  }
  enc.keys = Tensor<S>({B, T, N});
  enc.mask.resize(B, T);
  for (Index b = 0; b < B; ++b) {
    for (Index t = 0; t < T; ++t) {
      enc.keys.matrix(b).row(t) = below.row(t * B + b);
      enc.mask(b, t) = t >= lay.source_lengths[std::size_t(b)];
    }
  }
  if (model.bahdanau) enc.projected_keys = model.bahdanau->project_keys(enc.keys);
  return enc;
}

/// The decoder's running state for a batch, with its per-step workspaces.
template <typename S>
struct Seq2SeqDecoderState {
  std::vector<Matrix<S>> h, c;  // [num_layers] [B, N]
  Matrix<S> feed;               // [B, N] h~_{i-1} (Luong input feeding) or empty
  Matrix<S> x, xi, gates;       // [B, in], [B, 4N], [B, 4N] workspaces
};

template <typename S>
Seq2SeqDecoderState<S> seq2seq_start(const Seq2Seq<S>& model, const Seq2SeqEncoded<S>& enc) {
  Seq2SeqDecoderState<S> st{enc.h, enc.c, Matrix<S>(), Matrix<S>(), Matrix<S>(), Matrix<S>()};
  const Index B = enc.keys.dim(0), N = model.options.hidden_size;
  if (model.luong && model.options.input_feeding) st.feed = Matrix<S>::Zero(B, N);
  st.x.resize(B, model.decoder.cells[0].input_size());
  st.xi.resize(B, 4 * N);
  st.gates.resize(B, 4 * N);
  return st;
}

/// One decoder step of all B sequences (Seq2Seq::step's equations): feeds `emb` = emb(y_{i-1})
/// [B, E], advances `st`, writes the output layer's input [B, N] ([B, 2N] Bahdanau) to
/// `out_in`; with `traces`, rows i * B .. of each layer's trace; `ac` the alignment cache or
/// null; `weights` (if not null) the alignment [B, S].
template <typename S>
void seq2seq_decoder_step(const Seq2Seq<S>& model, const Seq2SeqEncoded<S>& enc,
                          const MatrixCRef<S>& emb, Index i, Seq2SeqDecoderState<S>& st,
                          std::vector<Seq2SeqLSTMTrace<S>>* traces, AlignmentCache<S>* ac,
                          MatrixRef<S> out_in, Matrix<S>* weights) {
  const Index B = emb.rows(), E = emb.cols(), N = model.options.hidden_size;
  const std::size_t top = model.decoder.cells.size() - 1;
  st.x.leftCols(E) = emb;
  AlignmentResult<S> a;
  if (model.bahdanau) {  // c_i = align(s_{i-1}, h); input [emb; c_i]
    a = bahdanau_forward(*model.bahdanau, st.h[top], enc.keys, enc.mask, enc.projected_keys, ac);
    st.x.rightCols(N) = a.context;
  } else if (st.feed.size() != 0) {  // Luong input feeding: [emb; h~_{i-1}]
    st.x.rightCols(N) = st.feed;
  }
  for (std::size_t k = 0; k <= top; ++k) {
    const LSTMCell<S>& cell = model.decoder.cells[k];
    const Matrix<S>& xin = k == 0 ? st.x : st.h[k - 1];
    Seq2SeqLSTMTrace<S>* tr = traces ? &(*traces)[k] : nullptr;
    if (tr) {
      tr->x.middleRows(i * B, B) = xin;
      tr->h_prev.middleRows(i * B, B) = st.h[k];
      tr->c_prev.middleRows(i * B, B) = st.c[k];
    }
    st.xi.noalias() = xin * cell.weight_ih.transpose();
    if (cell.has_bias()) st.xi.rowwise() += cell.bias_ih.transpose();
    MatrixRef<S> g = tr ? MatrixRef<S>(tr->gates.middleRows(i * B, B)) : MatrixRef<S>(st.gates);
    cell.step_projected(st.xi, st.h[k], st.c[k], g, st.h[k], st.c[k]);  // in place
    if (tr) tr->tanh_c.middleRows(i * B, B) = st.c[k].array().tanh().matrix();
  }
  if (model.bahdanau) {  // logits from [s_i; c_i]
    out_in.leftCols(N) = st.h[top];
    out_in.rightCols(N) = a.context;
  } else if (model.luong) {  // a_i = align(s_i, h); logits from h~_i
    a = luong_forward(*model.luong, st.h[top], enc.keys, enc.mask, ac);
    out_in = a.attentional_hidden;
    if (st.feed.size() != 0) st.feed = a.attentional_hidden;
  } else {
    out_in = st.h[top];
  }
  if (weights && (model.bahdanau || model.luong)) *weights = std::move(a.weights);
}

}  // namespace detail

namespace detail {

/// Greedy decoding of one padded chunk of sources (checked by the caller).
template <typename Scalar>
std::vector<std::vector<std::int64_t>> seq2seq_greedy_chunk(
    const Seq2Seq<Scalar>& model, const std::vector<std::vector<std::int64_t>>& source,
    std::int64_t bos, std::int64_t eos, Index max_length, const std::string& who) {
  const Index V = model.options.target_vocab, N = model.options.hidden_size;
  const Seq2SeqBatchLayout lay = seq2seq_layout(model.options, source, nullptr, nullptr, who);
  const Index B = lay.B;
  const Seq2SeqEncoded<Scalar> enc = seq2seq_encode<Scalar>(model, lay, nullptr);
  Seq2SeqDecoderState<Scalar> st = seq2seq_start(model, enc);
  std::vector<std::vector<std::int64_t>> result(static_cast<std::size_t>(B));
  std::vector<std::int64_t> tokens(std::size_t(B), bos);
  std::vector<bool> done(std::size_t(B), false);
  Matrix<Scalar> out_in(B, model.bahdanau ? 2 * N : N), logits(B, V);  // [B, *], [B, V]
  for (Index i = 0; i < max_length; ++i) {
    const Matrix<Scalar> emb = model.target_embedding.forward(tokens);  // [B, E]
    seq2seq_decoder_step<Scalar>(model, enc, emb, i, st, nullptr, nullptr, out_in, nullptr);
    linear_into<Scalar>(out_in, model.out.weight, model.out.bias, logits);
    bool all_done = true;
    for (Index b = 0; b < B; ++b) {
      if (done[std::size_t(b)]) continue;
      Index best = 0;
      for (Index v = 1; v < V; ++v) {
        if (logits(b, v) > logits(b, best)) best = v;  // strict: the lowest id wins ties
      }
      tokens[std::size_t(b)] = best;
      result[std::size_t(b)].push_back(best);
      done[std::size_t(b)] = best == eos;
      all_done = all_done && done[std::size_t(b)];
    }
    if (all_done) break;
  }
  return result;
}

}  // namespace detail

/// Greedy decoding of many sources, `batch_size` at a time: every step feeds each
/// sequence's previous argmax (y_0 = bos) and stops a sequence at its first eos; the same
/// per-sequence results as greedy_decode over Seq2SeqDecoder (Seq2Seq::step), up to
/// rounding of near-ties.
/// \param model the model \param source sequences of S_b >= 1 ids in [0, source_vocab)
/// \param bos, eos ids in [0, target_vocab) \param max_length most ids per output, >= 1
/// \param batch_size sequences decoded together, >= 1; sources are grouped by length first,
///   so little work goes into padding
/// \returns per source (in the given order) y_1 .. y_k, k <= max_length, ending in eos when
///   one was produced
/// \throws value_error on an empty batch or sequence, max_length < 1 or batch_size < 1;
///   index_error on an id out of range (naming it).
/// \note Batching: [B, N] x [N, 4N] products per step instead of B products of one row.
template <typename Scalar>
std::vector<std::vector<std::int64_t>> seq2seq_greedy_decode(
    const Seq2Seq<Scalar>& model, const std::vector<std::vector<std::int64_t>>& source,
    std::int64_t bos, std::int64_t eos, Index max_length, Index batch_size = 64) {
  const std::string who = "seq2seq_greedy_decode";
  const Index V = model.options.target_vocab;
  detail::check_seq2seq_id(bos, V, who + ": bos", "target_vocab");
  detail::check_seq2seq_id(eos, V, who + ": eos", "target_vocab");
  if (max_length < 1) {
    throw value_error(who + ": max_length is " + std::to_string(max_length) + ", expected >= 1");
  }
  if (batch_size < 1) {
    throw value_error(who + ": batch_size is " + std::to_string(batch_size) + ", expected >= 1");
  }
  (void)detail::seq2seq_layout(model.options, source, nullptr, nullptr, who);  // all checks
  std::vector<std::size_t> order(source.size());
  for (std::size_t b = 0; b < order.size(); ++b) order[b] = b;
  std::stable_sort(order.begin(), order.end(), [&](std::size_t x, std::size_t y) {
    return source[x].size() < source[y].size();
  });
  std::vector<std::vector<std::int64_t>> result(source.size());
  const std::size_t chunk = static_cast<std::size_t>(batch_size);
  for (std::size_t first = 0; first < order.size(); first += chunk) {
    const std::size_t last = std::min(order.size(), first + chunk);
    std::vector<std::vector<std::int64_t>> part;
    for (std::size_t k = first; k < last; ++k) part.push_back(source[order[k]]);
    std::vector<std::vector<std::int64_t>> out =
        detail::seq2seq_greedy_chunk(model, part, bos, eos, max_length, who);
    for (std::size_t k = first; k < last; ++k) result[order[k]] = std::move(out[k - first]);
  }
  return result;
}

}  // namespace attend
