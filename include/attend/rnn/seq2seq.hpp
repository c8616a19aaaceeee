// SPDX-License-Identifier: MIT
// The RNN encoder-decoder: the context-vector bottleneck baseline and its attention
// decoders (Bahdanau, Luong), with a step API for greedy and beam-search decoding.
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/embedding/embedding.hpp"
#include "attend/io/safetensors.hpp"
#include "attend/ops/linear.hpp"
#include "attend/ops/softmax.hpp"
#include "attend/rnn/alignment.hpp"
#include "attend/rnn/recurrent.hpp"

#include <Eigen/Core>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace attend {

/// How the decoder reads the encoder.
enum class AttentionKind {
  none,      ///< only the context vector z (the encoder's final state) starts the decoder
  bahdanau,  ///< additive alignment from s_{i-1}; LSTM input [emb; c_i]; logits from [s_i; c_i]
  luong      ///< alignment from s_i; logits from h~_i = tanh(Wc [c_i; s_i])
};

/// Model sizes and variant.
struct Seq2SeqOptions {
  Index source_vocab = 0;   ///< source token ids are in [0, source_vocab)
  Index target_vocab = 0;   ///< V: target token ids are in [0, V)
  Index embedding_dim = 0;  ///< E, both embeddings
  Index hidden_size = 0;    ///< N, encoder and decoder LSTMs
  Index num_layers = 1;     ///< stacked layers of both LSTMs (the decoder starts from z)
  AttentionKind attention = AttentionKind::none;
  LuongScore luong_score = LuongScore::general;  ///< Luong only
  Index attention_size = 0;    ///< A of Bahdanau and Luong concat; 0 means hidden_size
  bool input_feeding = false;  ///< Luong: the decoder input is [emb(y_{i-1}); h~_{i-1}]
};

/// What the encoder hands the decoder for one source sequence.
template <typename Scalar>
struct Seq2SeqMemory {
  Tensor<Scalar> keys;            // [1, S, N] encoder top-layer states h_1 .. h_S
  Tensor<Scalar> projected_keys;  // [1, S, A] W1 h_j (Bahdanau) or empty
  RecurrentState<Scalar> z;       // h_n, c_n [num_layers, 1, N]: the context vector
};

/// The decoder's state between steps (copied per beam hypothesis).
template <typename Scalar>
struct Seq2SeqState {
  RecurrentState<Scalar> rnn;  // h, c [num_layers, 1, N]
  Matrix<Scalar> feed;         // [1, N] h~_{i-1} (Luong input feeding) or empty
  Matrix<Scalar> alignment;    // [steps so far, S] one row of weights per output step
};

/// An encoder-decoder over token ids (one sequence at a time).
///
///     encoder:  h_1..h_S, z = LSTM_enc(emb_src(x_1..x_S))            z = (h_n, c_n)
///     none:     s_i = LSTM_dec(emb(y_{i-1}), s_{i-1}),  s_0 = z;       logits = out(s_i)
///     bahdanau: a_i = align(s_{i-1}, h), c_i = sum_j a_ij h_j
///               s_i = LSTM_dec([emb(y_{i-1}); c_i], s_{i-1});         logits = out([s_i; c_i])
///     luong:    s_i = LSTM_dec([emb(y_{i-1}); h~_{i-1}?], s_{i-1}),  a_i = align(s_i, h)
///               h~_i = tanh(Wc [c_i; s_i]);                           logits = out(h~_i)
///
/// s_i in an alignment is the top layer's h. State-dict names: `encoder.embedding.weight`,
/// `encoder.lstm.weight_ih_l0`..., `decoder.embedding.weight`, `decoder.lstm.*`,
/// `attention.W1`/`W2`/`v` (Bahdanau) or `attention.W`/`v`/`Wc` (Luong), `out.weight`,
/// `out.bias`: a PyTorch module with submodules encoder, decoder, attention and out.
/// \note Sutskever et al. 2014 (the bottleneck); Bahdanau et al. 2015; Luong et al. 2015.
/// \sa Seq2SeqDecoder, greedy_decode, beam_search
template <typename Scalar>
class Seq2Seq {
  static_assert(is_supported_scalar_v<Scalar>, "attend::Seq2Seq: Scalar must be float or double");

 public:
  Seq2SeqOptions options;
  Embedding<Scalar> source_embedding;  // [source_vocab, E]
  LSTM<Scalar> encoder;                // input E
  Embedding<Scalar> target_embedding;  // [V, E]
  LSTM<Scalar> decoder;                // input E (+ N: Bahdanau context or Luong feeding)
  std::optional<BahdanauAttention<Scalar>> bahdanau;
  std::optional<LuongAttention<Scalar>> luong;  // with Wc [N, 2N]
  Linear<Scalar> out;                           // [V, N] ([V, 2N] for Bahdanau)

  /// Random parameters from `seed` (each part with PyTorch's init scheme).
  /// \throws value_error when a size is not positive (or the Luong/attention options clash).
  explicit Seq2Seq(const Seq2SeqOptions& o, std::uint64_t seed = 0)
      : options(checked(o)),
        source_embedding(o.source_vocab, o.embedding_dim, std::nullopt, seed * 8 + 1),
        encoder(lstm_options(o, o.embedding_dim), seed * 8 + 2),
        target_embedding(o.target_vocab, o.embedding_dim, std::nullopt, seed * 8 + 3),
        decoder(lstm_options(o, o.embedding_dim + (feeds_context(o) ? o.hidden_size : 0)),
                seed * 8 + 4),
        out(o.attention == AttentionKind::bahdanau ? 2 * o.hidden_size : o.hidden_size,
            o.target_vocab, true, seed * 8 + 5) {
    const Index N = o.hidden_size, A = o.attention_size > 0 ? o.attention_size : N;
    if (o.attention == AttentionKind::bahdanau) bahdanau.emplace(N, N, A, seed * 8 + 6);
    if (o.attention == AttentionKind::luong)
      luong.emplace(o.luong_score, N, N, A, true, seed * 8 + 7);
  }

  /// Loads every parameter by the names in the class comment, all or nothing.
  /// \throws as the parts' load_state_dict (index_error naming a missing tensor, ...).
  void load_state_dict(const SafeTensors& st, const std::string& prefix = "") {
    Seq2Seq m = *this;
    const auto load_embedding = [&](Embedding<Scalar>& e, const std::string& name) {
      e.weight = load_matrix<Scalar>(st, prefix + name, e.weight.rows(), e.weight.cols());
    };
    load_embedding(m.source_embedding, "encoder.embedding.weight");
    m.encoder.load_state_dict(st, prefix + "encoder.lstm.");
    load_embedding(m.target_embedding, "decoder.embedding.weight");
    m.decoder.load_state_dict(st, prefix + "decoder.lstm.");
    if (m.bahdanau) m.bahdanau->load_state_dict(st, prefix + "attention.");
    if (m.luong) m.luong->load_state_dict(st, prefix + "attention.");
    m.out.load_state_dict(st, prefix + "out.");
    *this = std::move(m);
  }

  /// Runs the encoder over one source sequence.
  /// \param source S >= 1 token ids in [0, source_vocab)
  /// \returns keys [1, S, N], z = (h_n, c_n) [num_layers, 1, N] (and Bahdanau's W1 keys)
  /// \throws value_error when source is empty; index_error naming the first bad id.
  Seq2SeqMemory<Scalar> encode(const std::vector<std::int64_t>& source) const {
    const std::string who = "Seq2Seq::encode";
    if (source.empty()) throw value_error(who + ": source is empty, expected at least one token");
    for (std::size_t t = 0; t < source.size(); ++t) {
      check_id(source[t], options.source_vocab, who + ": source[" + std::to_string(t) + "]",
               "source_vocab");
    }
    const Index S = static_cast<Index>(source.size()), E = options.embedding_dim;
    const Tensor<Scalar> x =
        Tensor<Scalar>::from_matrix(source_embedding.forward(source)).reshaped({S, 1, E});
    RecurrentOutput<Scalar> r = encoder.forward(x);  // output [S, 1, N]
    Seq2SeqMemory<Scalar> m;
    m.keys = r.output.reshaped({1, S, options.hidden_size});  // B = 1: same element order
    if (bahdanau) m.projected_keys = bahdanau->project_keys(m.keys);
    m.z = {std::move(r.h_n), std::move(r.c_n)};
    return m;
  }

  /// The decoder's initial state: s_0 = z, no alignment yet.
  Seq2SeqState<Scalar> start(const Seq2SeqMemory<Scalar>& memory) const {
    Seq2SeqState<Scalar> s;
    s.rnn = memory.z;
    if (luong && options.input_feeding) s.feed = Matrix<Scalar>::Zero(1, options.hidden_size);
    s.alignment.resize(0, memory.keys.dim(1));
    return s;
  }

  /// One decoder step: feeds `token` (y_{i-1}), advances `state`, appends the alignment row.
  /// \returns [1, V] log-probabilities of y_i.
  /// \throws index_error when token is not in [0, target_vocab).
  Matrix<Scalar> step(std::int64_t token, Seq2SeqState<Scalar>& state,
                      const Seq2SeqMemory<Scalar>& memory) const {
    check_id(token, options.target_vocab, "Seq2Seq::step: token", "target_vocab");
    const Index N = options.hidden_size, E = options.embedding_dim;
    const Matrix<Scalar> emb =
        target_embedding.forward(std::vector<std::int64_t>{token});  // [1, E]
    Matrix<Scalar> s;                                                // [1, N] top-layer s_i
    Matrix<Scalar> logits;
    if (bahdanau) {
      const Matrix<Scalar> query = state.rnn.h.matrix(options.num_layers - 1);  // s_{i-1}
      const AlignmentResult<Scalar> a =
          bahdanau->forward(query, memory.keys, BoolMatrix(), memory.projected_keys);
      Matrix<Scalar> x(1, E + N);
      x << emb, a.context;
      s = decoder.step(x, state.rnn);
      Matrix<Scalar> sc(1, 2 * N);
      sc << s, a.context;
      logits = out.forward(sc);
      append_row(state.alignment, a.weights);
    } else if (luong) {
      Matrix<Scalar> x(1, E + (options.input_feeding ? N : 0));
      if (options.input_feeding) {
        x << emb, state.feed;
      } else {
        x = emb;
      }
      s = decoder.step(x, state.rnn);
      const AlignmentResult<Scalar> a = luong->forward(s, memory.keys);
      if (options.input_feeding) state.feed = a.attentional_hidden;
      logits = out.forward(a.attentional_hidden);
      append_row(state.alignment, a.weights);
    } else {
      s = decoder.step(emb, state.rnn);
      logits = out.forward(s);
    }
    return log_softmax(logits);
  }

 private:
  static bool feeds_context(const Seq2SeqOptions& o) {
    return o.attention == AttentionKind::bahdanau ||
           (o.attention == AttentionKind::luong && o.input_feeding);
  }

  static const Seq2SeqOptions& checked(const Seq2SeqOptions& o) {
    if (o.source_vocab <= 0 || o.target_vocab <= 0 || o.embedding_dim <= 0 || o.hidden_size <= 0 ||
        o.num_layers <= 0 || o.attention_size < 0) {
      throw value_error(
          "Seq2Seq: source_vocab, target_vocab, embedding_dim, hidden_size and "
          "num_layers must be positive (attention_size >= 0)");
    }
    if (o.input_feeding && o.attention != AttentionKind::luong) {
      throw value_error("Seq2Seq: input_feeding is true, expected attention luong");
    }
    return o;
  }

  static RecurrentOptions lstm_options(const Seq2SeqOptions& o, Index input_size) {
    RecurrentOptions r;
    r.input_size = input_size;
    r.hidden_size = o.hidden_size;
    r.num_layers = o.num_layers;
    return r;
  }

  static void check_id(std::int64_t id, Index V, const std::string& what, const char* vocab) {
    if (id < 0 || id >= V) {
      throw index_error(what + " is " + std::to_string(id) + ", expected in [0, " +
                        std::to_string(V) + ") (" + vocab + ")");
    }
  }

  static void append_row(Matrix<Scalar>& m, const Matrix<Scalar>& row) {
    m.conservativeResize(m.rows() + 1, row.cols());
    m.row(m.rows() - 1) = row.row(0);
  }
};

/// A Seq2Seq bound to one encoded source: the step model of greedy_decode and beam_search.
/// A hypothesis' `state.alignment` is its [output steps, input steps] alignment matrix.
template <typename Scalar>
class Seq2SeqDecoder {
 public:
  using State = Seq2SeqState<Scalar>;

  /// Encodes `source` once. \throws as Seq2Seq::encode.
  Seq2SeqDecoder(const Seq2Seq<Scalar>& model, const std::vector<std::int64_t>& source)
      : model_(&model), memory_(model.encode(source)) {}

  Index vocab_size() const noexcept { return model_->options.target_vocab; }
  State initial_state() const { return model_->start(memory_); }
  /// \returns [1, V] log-probabilities of the next token. \throws as Seq2Seq::step.
  Matrix<Scalar> step(std::int64_t token, State& state) const {
    return model_->step(token, state, memory_);
  }
  const Seq2SeqMemory<Scalar>& memory() const noexcept { return memory_; }

 private:
  const Seq2Seq<Scalar>* model_;
  Seq2SeqMemory<Scalar> memory_;
};

}  // namespace attend
