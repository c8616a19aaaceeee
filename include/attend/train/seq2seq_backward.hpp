// SPDX-License-Identifier: MIT
// Batched teacher-forced training of the RNN encoder-decoder (Seq2Seq): the loss with a
// cache, its backward into every parameter, and named parameters by state-dict names.
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/rnn/seq2seq.hpp"
#include "attend/train/alignment_backward.hpp"
#include "attend/train/cell_backward.hpp"
#include "attend/train/loss.hpp"
#include "attend/train/parameters.hpp"
#include "attend/train/seq2seq_batch.hpp"

#include <Eigen/Core>

#include <cstdint>
#include <string>
#include <vector>

namespace attend {

/// Parameter gradients of a Seq2Seq, one member per sub-module (unused ones stay empty).
template <typename Scalar>
struct Seq2SeqGrad {
  EmbeddingGrad<Scalar> source_embedding;  // encoder.embedding.weight
  std::vector<CellGrad<Scalar>> encoder;   // [num_layers] encoder.lstm.*_l{k}
  EmbeddingGrad<Scalar> target_embedding;  // decoder.embedding.weight
  std::vector<CellGrad<Scalar>> decoder;   // [num_layers] decoder.lstm.*_l{k}
  BahdanauGrad<Scalar> bahdanau;           // attention.W1, W2, v
  LuongGrad<Scalar> luong;                 // attention.W, v, Wc
  LinearGrad<Scalar> out;                  // out.weight, out.bias
};

/// Visits every parameter of `m` with its gradient in `g` by the state-dict names of
/// Seq2Seq::load_state_dict, in that order: `encoder.embedding.weight`,
/// `encoder.lstm.weight_ih_l0`, `weight_hh_l0`, `bias_ih_l0`, `bias_hh_l0` (then l1 ...),
/// `decoder.embedding.weight`, `decoder.lstm.*`, `attention.*`, `out.weight`, `out.bias`.
template <typename Scalar, typename Visit>
void named_parameters(Seq2Seq<Scalar>& m, Seq2SeqGrad<Scalar>& g, Visit&& visit,
                      const std::string& prefix = "") {
  const auto lstm = [&](LSTM<Scalar>& stack, std::vector<CellGrad<Scalar>>& grads,
                        const std::string& p) {
    grads.resize(stack.cells.size());
    for (std::size_t k = 0; k < stack.cells.size(); ++k) {
      LSTMCell<Scalar>& cell = stack.cells[k];
      CellGrad<Scalar>& cg = grads[k];
      const std::string l = "_l" + std::to_string(k);
      visit(p + "weight_ih" + l, cell.weight_ih, cg.weight_ih);
      visit(p + "weight_hh" + l, cell.weight_hh, cg.weight_hh);
      if (cell.has_bias()) {
        visit(p + "bias_ih" + l, cell.bias_ih, cg.bias_ih);
        visit(p + "bias_hh" + l, cell.bias_hh, cg.bias_hh);
      }
    }
  };
  named_parameters(m.source_embedding, g.source_embedding, visit, prefix + "encoder.embedding.");
  lstm(m.encoder, g.encoder, prefix + "encoder.lstm.");
  named_parameters(m.target_embedding, g.target_embedding, visit, prefix + "decoder.embedding.");
  lstm(m.decoder, g.decoder, prefix + "decoder.lstm.");
  if (m.bahdanau) named_parameters(*m.bahdanau, g.bahdanau, visit, prefix + "attention.");
  if (m.luong) named_parameters(*m.luong, g.luong, visit, prefix + "attention.");
  named_parameters(m.out, g.out, visit, prefix + "out.");
}

/// A Seq2Seq with its gradients: what collect_parameters and the optimizers take.
///     Seq2SeqTrainable<float> t{Seq2Seq<float>(options, seed), {}};
///     ParameterList<float> params = collect_parameters<float>(t);
template <typename Scalar>
struct Seq2SeqTrainable {
  Seq2Seq<Scalar> model;
  Seq2SeqGrad<Scalar> grads;

  template <typename Visit>
  void named_parameters(Visit&& visit) {
    attend::named_parameters(model, grads, visit);
  }
};

/// What seq2seq_backward needs from seq2seq_loss. Rows of the [T * B, *] matrices are
/// time-major: row t * B + b is step t of sequence b.
template <typename Scalar>
struct Seq2SeqCache {
  Seq2SeqBatchLayout layout;                      // B, S, L, lengths, padded ids
  std::vector<Seq2SeqLSTMTrace<Scalar>> encoder;  // [num_layers] over S steps
  std::vector<Seq2SeqLSTMTrace<Scalar>> decoder;  // [num_layers] over L steps
  Tensor<Scalar> keys;                            // [B, S, N] encoder top-layer states
  Tensor<Scalar> projected_keys;                  // [B, S, A] W1 keys (Bahdanau) or empty
  std::vector<AlignmentCache<Scalar>> alignment;  // [L] one per decoder step (attention)
  Matrix<Scalar> out_input;                       // [L * B, N] ([L * B, 2N] Bahdanau)
  CrossEntropyCache<Scalar> loss;
};

namespace detail {

/// Zeroes empty gradient members (or checks their shapes) for every parameter of `m`.
template <typename S>
void prepare_seq2seq_grad(const Seq2Seq<S>& m, Seq2SeqGrad<S>& g, const std::string& who) {
  const auto emb = [&](const Embedding<S>& e, EmbeddingGrad<S>& eg, const char* name) {
    prepare_grad(eg.d_weight, e.weight.rows(), e.weight.cols(), who, name);
  };
  const auto lstm = [&](const LSTM<S>& stack, std::vector<CellGrad<S>>& grads) {
    grads.resize(stack.cells.size());
    for (std::size_t k = 0; k < grads.size(); ++k) prepare_cell_grad(stack.cells[k], grads[k], who);
  };
  emb(m.source_embedding, g.source_embedding, "grads.source_embedding.d_weight");
  lstm(m.encoder, g.encoder);
  emb(m.target_embedding, g.target_embedding, "grads.target_embedding.d_weight");
  lstm(m.decoder, g.decoder);
  if (m.bahdanau) {
    const BahdanauAttention<S>& a = *m.bahdanau;
    prepare_grad(g.bahdanau.d_W1, a.W1.rows(), a.W1.cols(), who, "grads.bahdanau.d_W1");
    prepare_grad(g.bahdanau.d_W2, a.W2.rows(), a.W2.cols(), who, "grads.bahdanau.d_W2");
    prepare_grad(g.bahdanau.d_v, a.v.size(), 1, who, "grads.bahdanau.d_v");
  }
  if (m.luong) {
    const LuongAttention<S>& a = *m.luong;
    if (a.score != LuongScore::dot) {
      prepare_grad(g.luong.d_W, a.W.rows(), a.W.cols(), who, "grads.luong.d_W");
    }
    if (a.score == LuongScore::concat)
      prepare_grad(g.luong.d_v, a.v.size(), 1, who, "grads.luong.d_v");
    if (a.attentional()) {
      prepare_grad(g.luong.d_Wc, a.Wc.rows(), a.Wc.cols(), who, "grads.luong.d_Wc");
    }
  }
  prepare_grad(g.out.d_weight, m.out.weight.rows(), m.out.weight.cols(), who, "grads.out.d_weight");
  if (m.out.has_bias()) prepare_grad(g.out.d_bias, m.out.bias.size(), 1, who, "grads.out.d_bias");
}

/// Checks that a non-empty cache was filled by seq2seq_loss of a model of `m`'s
/// configuration (layers, sizes, attention): the members the backward reads.
template <typename S>
void check_seq2seq_cache(const Seq2Seq<S>& m, const Seq2SeqCache<S>& c, const std::string& who) {
  const Seq2SeqBatchLayout& lay = c.layout;
  const Index B = lay.B, N = m.options.hidden_size, layers = m.options.num_layers;
  const auto fail = [&](const std::string& what, const std::string& actual,
                        const std::string& want) {
    throw value_error(who + ": cache." + what + " " + actual + ", expected " + want +
                      " (a cache of seq2seq_loss with this model)");
  };
  const auto check_layers = [&](const std::vector<Seq2SeqLSTMTrace<S>>& traces, const char* what,
                                const LSTM<S>& stack, Index T) {
    if (static_cast<Index>(traces.size()) != layers) {
      fail(what, "has " + std::to_string(traces.size()) + " layers", std::to_string(layers));
    }
    for (std::size_t k = 0; k < traces.size(); ++k) {
      const Seq2SeqLSTMTrace<S>& tr = traces[k];
      const Index in = stack.cells[k].input_size();
      const bool ok = tr.x.rows() == T * B && tr.x.cols() == in && tr.h_prev.rows() == T * B &&
                      tr.h_prev.cols() == N && tr.c_prev.rows() == T * B &&
                      tr.c_prev.cols() == N && tr.gates.rows() == T * B &&
                      tr.gates.cols() == 4 * N && tr.tanh_c.rows() == T * B &&
                      tr.tanh_c.cols() == N;
      if (!ok) {
        fail(std::string(what) + "[" + std::to_string(k) + "].x", "is " + matrix_shape(tr.x),
             shape_string({T * B, in}) + " with states [" + std::to_string(T * B) + ", " +
                 std::to_string(N) + "]");
      }
    }
  };
  check_layers(c.encoder, "encoder", m.encoder, lay.S);
  check_layers(c.decoder, "decoder", m.decoder, lay.L);
  const Shape keys{B, lay.S, N};
  if (c.keys.shape() != keys) {
    fail("keys", "is " + shape_string(c.keys.shape()), shape_string(keys));
  }
  const Index out_cols = m.bahdanau ? 2 * N : N;
  if (c.out_input.rows() != lay.L * B || c.out_input.cols() != out_cols) {
    fail("out_input", "is " + matrix_shape(c.out_input), shape_string({lay.L * B, out_cols}));
  }
  const Index V = m.options.target_vocab;
  if (c.loss.probs.rows() != lay.L * B || c.loss.probs.cols() != V) {
    fail("loss.probs", "is " + matrix_shape(c.loss.probs), shape_string({lay.L * B, V}));
  }
  const bool attention = m.bahdanau || m.luong;
  const std::size_t steps = attention ? static_cast<std::size_t>(lay.L) : 0;
  if (c.alignment.size() != steps) {
    fail("alignment", "has " + std::to_string(c.alignment.size()) + " steps",
         std::to_string(steps));
  }
  if (m.bahdanau && c.projected_keys.shape() != Shape{B, lay.S, m.bahdanau->attention_size()}) {
    fail("projected_keys", "is " + shape_string(c.projected_keys.shape()),
         shape_string({B, lay.S, m.bahdanau->attention_size()}));
  }
  for (std::size_t i = 0; i < c.alignment.size(); ++i) {
    const std::string name = "cache.alignment[" + std::to_string(i) + "]";
    if (c.alignment[i].keys_shape != keys) {
      fail(name.substr(6) + ".keys_shape", "is " + shape_string(c.alignment[i].keys_shape),
           shape_string(keys));
    }
    if (m.bahdanau) check_alignment_cache(*m.bahdanau, c.alignment[i], who, name);
    if (m.luong) check_alignment_cache(*m.luong, c.alignment[i], who, name);
  }
}

/// The parameter gradients of one LSTM layer over all its steps in three products:
/// `dW_ih += dpre^T x`, `dW_hh += dpre^T h_prev`, `db_ih = db_hh += colsum(dpre)`.
/// \param dpre [T * B, 4N] pre-activation gradients of every step (0 rows for padding)
template <typename S>
void trace_param_backward(const LSTMCell<S>& cell, const Seq2SeqLSTMTrace<S>& tr,
                          const Matrix<S>& dpre, CellGrad<S>& g) {
  g.weight_ih.noalias() += dpre.transpose() * tr.x;
  g.weight_hh.noalias() += dpre.transpose() * tr.h_prev;
  if (cell.has_bias()) {
    const Vector<S> db = dpre.colwise().sum().transpose();  // [4N]
    g.bias_ih += db;
    g.bias_hh += db;
  }
}

/// Backward of seq2seq_encode: layers top to bottom, steps S-1 .. 0.
/// \param d_keys [B, S, N] gradient of the top layer's outputs
/// \param dh, dc [num_layers] of [B, N]: gradients of z (consumed)
template <typename S>
void seq2seq_encoder_backward(const Seq2Seq<S>& model, const Seq2SeqCache<S>& cache,
                              const Tensor<S>& d_keys, std::vector<Matrix<S>>& dh,
                              std::vector<Matrix<S>>& dc, Seq2SeqGrad<S>& grads) {
  const Seq2SeqBatchLayout& lay = cache.layout;
  const Index B = lay.B, T = lay.S, N = model.options.hidden_size;
  Matrix<S> d_out(T * B, N);  // [T * B, N] gradient of the current layer's outputs
  for (Index b = 0; b < B; ++b) {
    for (Index t = 0; t < T; ++t) d_out.row(t * B + b) = d_keys.matrix(b).row(t);
  }
  Matrix<S> dpre(T * B, 4 * N), dc_keep(B, N), dh_prev(B, N);
  for (std::size_t k = model.encoder.cells.size(); k-- > 0;) {
    const LSTMCell<S>& cell = model.encoder.cells[k];
    const Seq2SeqLSTMTrace<S>& tr = cache.encoder[k];
    Matrix<S>& h = dh[k];
    Matrix<S>& c = dc[k];
    for (Index t = T - 1; t >= 0; --t) {
      auto dp = dpre.middleRows(t * B, B);
      h += d_out.middleRows(t * B, B);  // 0 at padded steps (their output is the constant 0)
      dc_keep = c;
      lstm_step_backward<S>(tr.gates.middleRows(t * B, B), tr.c_prev.middleRows(t * B, B),
                            tr.tanh_c.middleRows(t * B, B), h, c, dp, c);
      dh_prev.noalias() = dp * cell.weight_hh;
      for (Index b = 0; b < B; ++b) {
        if (t < lay.source_lengths[std::size_t(b)]) continue;
        // padded step: (h, c) passed through unchanged, the cell took no part
        dp.row(b).setZero();
        c.row(b) = dc_keep.row(b);
        dh_prev.row(b) = h.row(b);
      }
      h = dh_prev;
    }
    trace_param_backward(cell, tr, dpre, grads.encoder[k]);
    if (k > 0) {
      d_out.noalias() = dpre * cell.weight_ih;  // layer k's input is layer k - 1's output
    } else {
      const Matrix<S> dx = dpre * cell.weight_ih;  // [T * B, E]
      model.source_embedding.backward(lay.source_ids, dx, grads.source_embedding.d_weight);
    }
  }
}

}  // namespace detail

/// Teacher-forced training forward of a Seq2Seq over a batch of B sequence pairs: the
/// encoder runs over every source (padded to the longest, lengths respected as
/// pack_padded_sequence: z is each sequence's state after its last token, padded keys are
/// masked), the decoder reads `target_input` (y_0 = bos, y_1 ...) and predicts
/// `target_output` (y_1 ... e.g. ending in eos) at every step, all B sequences at once.
///
///     loss = mean over the sum_b L_b target tokens of -log p(target_output[b][i])
///
/// Step i of sequence b equals Seq2Seq::step(target_input[b][i], ...) after encode(source[b])
/// and the earlier steps (the same equations; see Seq2Seq's class comment).
/// \param model the model \param source B sequences of S_b >= 1 ids in [0, source_vocab)
/// \param target_input B sequences of L_b >= 1 ids in [0, target_vocab)
/// \param target_output B sequences of the same L_b ids in [0, target_vocab)
/// \param cache if not null, filled for seq2seq_backward
/// \returns the mean cross-entropy (train/loss.hpp cross_entropy_forward, ignore_index for
///   the padding)
/// \throws value_error on an empty batch or sequence; shape_error when the three batch sizes
///   or a target pair's lengths differ; index_error naming the first id out of range.
/// \sa seq2seq_backward, seq2seq_greedy_decode
template <typename Scalar>
Scalar seq2seq_loss(const Seq2Seq<Scalar>& model,
                    const std::vector<std::vector<std::int64_t>>& source,
                    const std::vector<std::vector<std::int64_t>>& target_input,
                    const std::vector<std::vector<std::int64_t>>& target_output,
                    Seq2SeqCache<Scalar>* cache = nullptr) {
  Seq2SeqCache<Scalar> local;
  Seq2SeqCache<Scalar>& c = cache ? *cache : local;
  c.layout =
      detail::seq2seq_layout(model.options, source, &target_input, &target_output, "seq2seq_loss");
  const Seq2SeqBatchLayout& lay = c.layout;
  const Index B = lay.B, L = lay.L, N = model.options.hidden_size;
  detail::Seq2SeqEncoded<Scalar> enc = detail::seq2seq_encode(model, lay, &c.encoder);
  detail::Seq2SeqDecoderState<Scalar> st = detail::seq2seq_start(model, enc);
  const Matrix<Scalar> emb = model.target_embedding.forward(lay.target_ids);  // [L * B, E]
  c.out_input.resize(L * B, model.bahdanau ? 2 * N : N);
  c.alignment.assign(model.bahdanau || model.luong ? static_cast<std::size_t>(L) : 0, {});
  detail::prepare_traces(model.decoder, L * B, c.decoder);
  for (Index i = 0; i < L; ++i) {
    detail::seq2seq_decoder_step<Scalar>(
        model, enc, emb.middleRows(i * B, B), i, st, &c.decoder,
        c.alignment.empty() ? nullptr : &c.alignment[std::size_t(i)],
        c.out_input.middleRows(i * B, B), nullptr);
  }
  const Matrix<Scalar> logits = model.out.forward(c.out_input);  // [L * B, V]
  std::vector<std::int64_t> targets(static_cast<std::size_t>(L * B), detail::kSeq2SeqIgnore);
  for (Index b = 0; b < B; ++b) {
    const auto& y = target_output[static_cast<std::size_t>(b)];
    for (std::size_t i = 0; i < y.size(); ++i) targets[i * std::size_t(B) + std::size_t(b)] = y[i];
  }
  CrossEntropyOptions ce;
  ce.ignore_index = detail::kSeq2SeqIgnore;
  c.keys = std::move(enc.keys);
  c.projected_keys = std::move(enc.projected_keys);
  return cross_entropy_forward(logits, targets, ce, &c.loss);
}

/// Gradient of seq2seq_loss with respect to every parameter, in reverse order of the
/// forward: output layer, decoder steps L-1 .. 0 (LSTM layers top to bottom, attention),
/// then the encoder layers top to bottom over steps S-1 .. 0 (padded steps pass the state
/// gradient through unchanged), and the two embeddings.
/// \param model the model of the forward (unchanged since) \param cache seq2seq_loss's
/// \param grads accumulated (+=); empty members are zeroed first
/// \param d_loss upstream gradient of the loss (1 for training)
/// \throws value_error on an empty cache or one of another model's configuration;
///   shape_error when a non-empty gradient member has the wrong shape.
/// \note Backpropagation through time (Werbos 1990) of Seq2Seq's equations.
template <typename Scalar>
void seq2seq_backward(const Seq2Seq<Scalar>& model, const Seq2SeqCache<Scalar>& cache,
                      Seq2SeqGrad<Scalar>& grads, double d_loss = 1.0) {
  using S = Scalar;
  const std::string who = "seq2seq_backward";
  if (cache.layout.B == 0 || cache.loss.probs.size() == 0) {
    throw value_error(who + ": cache is empty, expected one filled by seq2seq_loss");
  }
  detail::check_seq2seq_cache(model, cache, who);
  detail::prepare_seq2seq_grad(model, grads, who);
  const Seq2SeqBatchLayout& lay = cache.layout;
  const Index B = lay.B, L = lay.L, N = model.options.hidden_size, E = model.options.embedding_dim;
  const Index layers = model.options.num_layers, top = layers - 1;
  const bool bahdanau = model.bahdanau.has_value(), luong = model.luong.has_value();
  const bool feeding = luong && model.options.input_feeding;

  // forward: logits = out(out_input); loss = cross_entropy(logits, targets)
  const Matrix<S> d_logits = cross_entropy_backward(cache.loss, d_loss);  // [L * B, V]
  const Matrix<S> d_out_in =
      model.out.backward(cache.out_input, d_logits, grads.out.d_weight, grads.out.d_bias);

  std::vector<Matrix<S>> dh(static_cast<std::size_t>(layers), Matrix<S>::Zero(B, N));
  std::vector<Matrix<S>> dc = dh;
  std::vector<Matrix<S>> dpre(static_cast<std::size_t>(layers));  // [L * B, 4N] per layer
  for (auto& m : dpre) m.resize(L * B, 4 * N);
  Matrix<S> d_feed = Matrix<S>::Zero(B, N), d_ctx(B, N), d_query(B, N), dx;
  Matrix<S> d_emb(L * B, E);  // [L * B, E]
  Tensor<S> d_keys(cache.keys.shape());
  Tensor<S> d_proj(cache.projected_keys.shape());
  AlignmentResult<S> d_align;
  for (Index i = L - 1; i >= 0; --i) {
    const auto rows = d_out_in.middleRows(i * B, B);
    const AlignmentCache<S>* ac = bahdanau || luong ? &cache.alignment[std::size_t(i)] : nullptr;
    if (bahdanau) {  // out_input = [s_i; c_i]
      dh[std::size_t(top)] += rows.leftCols(N);
      d_ctx = rows.rightCols(N);
    } else if (luong) {  // out_input = h~_i, also fed to step i + 1 when input feeding
      d_align.attentional_hidden = rows;
      if (feeding) d_align.attentional_hidden += d_feed;
      detail::luong_backward_into(*model.luong, *ac, cache.keys, d_align, grads.luong, d_query,
                                  d_keys);
      dh[std::size_t(top)] += d_query;  // the query is s_i
    } else {
      dh[std::size_t(top)] += rows;
    }
    for (Index k = top; k >= 0; --k) {
      const std::size_t kk = std::size_t(k);
      const Seq2SeqLSTMTrace<S>& tr = cache.decoder[kk];
      const LSTMCell<S>& cell = model.decoder.cells[kk];
      auto dp = dpre[kk].middleRows(i * B, B);
      detail::lstm_step_backward<S>(tr.gates.middleRows(i * B, B), tr.c_prev.middleRows(i * B, B),
                                    tr.tanh_c.middleRows(i * B, B), dh[kk], dc[kk], dp, dc[kk]);
      dh[kk].noalias() = dp * cell.weight_hh;  // to step i - 1
      dx.noalias() = dp * cell.weight_ih;      // [B, in]
      if (k > 0) {
        dh[kk - 1] += dx;  // layer k's input is layer k - 1's h at this step
      } else {
        d_emb.middleRows(i * B, B) = dx.leftCols(E);
        if (bahdanau) d_ctx += dx.rightCols(N);
        if (feeding) d_feed = dx.rightCols(N);
      }
    }
    if (bahdanau) {  // c_i = align(s_{i-1}, keys)
      d_align.context = d_ctx;
      detail::bahdanau_backward_into(*model.bahdanau, *ac, cache.keys, d_align, grads.bahdanau,
                                     d_query, d_keys, &d_proj);
      dh[std::size_t(top)] += d_query;
    }
  }
  for (Index k = 0; k < layers; ++k) {
    detail::trace_param_backward(model.decoder.cells[std::size_t(k)], cache.decoder[std::size_t(k)],
                                 dpre[std::size_t(k)], grads.decoder[std::size_t(k)]);
  }
  model.target_embedding.backward(lay.target_ids, d_emb, grads.target_embedding.d_weight);
  if (bahdanau) {  // projected_keys = keys W1^T
    grads.bahdanau.d_W1.noalias() += d_proj.as_matrix().transpose() * cache.keys.as_matrix();
    d_keys.as_matrix().noalias() += d_proj.as_matrix() * model.bahdanau->W1;
  }
  detail::seq2seq_encoder_backward(model, cache, d_keys, dh, dc, grads);
}

}  // namespace attend
