// SPDX-License-Identifier: MIT
// The full encoder-decoder transformer over token ids: embeddings, sinusoidal positions,
// nn.Transformer and the output projection, with cached incremental decoding.
#pragma once

#include "attend/attention/mask.hpp"
#include "attend/core/errors.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/embedding/embedding.hpp"
#include "attend/embedding/positional.hpp"
#include "attend/io/safetensors.hpp"
#include "attend/io/safetensors_writer.hpp"
#include "attend/io/state_dict.hpp"
#include "attend/ops/linear.hpp"
#include "attend/ops/softmax.hpp"
#include "attend/rnn/decoding.hpp"
#include "attend/transformer/decoder.hpp"
#include "attend/transformer/layer_options.hpp"
#include "attend/transformer/state_dict_writer.hpp"
#include "attend/transformer/transformer.hpp"

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace attend {

/// Constructor options of TransformerSeq2Seq.
struct TransformerSeq2SeqOptions {
  TransformerOptions transformer;  ///< layer options (d_model = embedding width) and counts
  Index src_vocab_size = 0;        ///< V_src, source token ids in [0, V_src) (required)
  Index tgt_vocab_size = 0;        ///< V, target token ids and output classes (required)
  Index max_len = 512;             ///< rows of the position table: the longest src or tgt
  bool scale_embedding = true;     ///< embeddings times sqrt(d_model), as the paper
  PositionalLayout positional_layout = PositionalLayout::interleaved;
};

/// The encoder-decoder transformer of "Attention Is All You Need" over token ids:
///
///     memory = encoder(src_embed(src) * sqrt(E) + PE[0 : S])
///     logits = generator(decoder(tgt_embed(tgt) * sqrt(E) + PE[0 : L], memory))
///
/// with PE the sinusoidal table (positional.hpp), `transformer` a torch.nn.Transformer
/// (encoder and decoder stacks, each with a final norm) and `generator` a Linear(E, V).
///
/// State-dict names, those of a PyTorch module with these attributes (the generator
/// tests/gen_fixtures_transformer.py builds one, class TransformerSeq2Seq):
/// `src_embed.weight` [V_src, E], `tgt_embed.weight` [V, E],
/// `transformer.encoder.layers.{i}.*`, `transformer.encoder.norm.*`,
/// `transformer.decoder.layers.{i}.*`, `transformer.decoder.norm.*` (nn.Transformer's names),
/// `generator.weight` [V, E], `generator.bias` [V]. The position table is computed, not
/// stored (a non-persistent buffer in PyTorch).
///
/// Token ids come as `[L, B]` (`[B, L]` when batch_first; `[L]` unbatched), the layout of
/// the layers' `[L, B, E]` inputs; logits are `[L, B, V]` in the same layout.
/// \note Vaswani et al. 2017, sections 3.4 (embeddings times sqrt(d_model); the paper also
///       ties the embedding and output weights, which is not done here) and 3.5; evaluation
///       mode (no dropout).
/// \sa Transformer, TransformerSeq2SeqDecoder, greedy_decode
template <typename Scalar>
class TransformerSeq2Seq {
  static_assert(is_supported_scalar_v<Scalar>,
                "attend::TransformerSeq2Seq: Scalar must be float or double");

 public:
  TransformerSeq2SeqOptions options;
  Embedding<Scalar> src_embed;                     // weight [V_src, E]
  Embedding<Scalar> tgt_embed;                     // weight [V, E]
  SinusoidalPositionalEncoding<Scalar> positions;  // [max_len, E], not a parameter
  Transformer<Scalar> transformer;
  Linear<Scalar> generator;  // weight [V, E], bias [V]

  /// Embeddings N(0, 1) as nn.Embedding, the rest as the sub-modules initialise, each from
  /// a stream derived from `seed`.
  /// \throws value_error when a vocabulary size or max_len is not positive, or as Transformer.
  explicit TransformerSeq2Seq(const TransformerSeq2SeqOptions& o, std::uint64_t seed = 0)
      : options(checked(o)),
        src_embed(o.src_vocab_size, o.transformer.layer.d_model, std::nullopt,
                  detail::derive_seed(seed, 0)),
        tgt_embed(o.tgt_vocab_size, o.transformer.layer.d_model, std::nullopt,
                  detail::derive_seed(seed, 1)),
        positions(o.max_len, o.transformer.layer.d_model, o.positional_layout),
        transformer(o.transformer, detail::derive_seed(seed, 2)),
        generator(o.transformer.layer.d_model, o.tgt_vocab_size, true,
                  detail::derive_seed(seed, 3)) {
    src_embed.scale_by_sqrt_d = tgt_embed.scale_by_sqrt_d = o.scale_embedding;
  }

  Index d_model() const noexcept { return options.transformer.layer.d_model; }
  Index src_vocab_size() const noexcept { return options.src_vocab_size; }
  Index tgt_vocab_size() const noexcept { return options.tgt_vocab_size; }

  /// Loads every parameter by the names in the class comment, after `prefix`.
  /// \throws index_error when one is missing; shape_error on a wrong shape; value_error on
  ///   NaN/Inf. On error nothing is changed.
  void load_state_dict(const SafeTensors& st, const std::string& prefix = "") {
    TransformerSeq2Seq m = *this;  // all or nothing
    const Index E = d_model();
    m.src_embed.weight = load_matrix<Scalar>(st, prefix + "src_embed.weight", src_vocab_size(), E);
    m.tgt_embed.weight = load_matrix<Scalar>(st, prefix + "tgt_embed.weight", tgt_vocab_size(), E);
    m.transformer.load_state_dict(st, prefix + "transformer.");
    m.generator.load_state_dict(st, prefix + "generator.");
    *this = std::move(m);
  }

  /// Adds every parameter to `w` under the names load_state_dict reads.
  /// \throws value_error when a name was already added.
  void save_state_dict(SafeTensorsWriter& w, const std::string& prefix = "") const {
    detail::add_matrix(w, prefix + "src_embed.weight", src_embed.weight);
    detail::add_matrix(w, prefix + "tgt_embed.weight", tgt_embed.weight);
    add_state_dict(w, transformer, prefix + "transformer.");
    add_state_dict(w, generator, prefix + "generator.");
  }

  /// The encoder's input: `src_embed(src) * sqrt(E) + PE[t]` for the token at position t
  /// (no sqrt(E) when scale_embedding is false).
  /// \param src [S, B] token ids ([B, S] when batch_first; [S] unbatched)
  /// \returns [S, B, E] in src's layout
  /// \throws shape_error when src is not of rank 1 or 2; index_error on an id outside
  ///   [0, V_src) or S > max_len.
  Tensor<Scalar> embed_source(const Tensor<std::int64_t>& src) const {
    return embed(src_embed, src, 0, "embed_source", "src");
  }

  /// The decoder's input for target positions first_position .. first_position + L - 1.
  /// \param tgt [L, B] token ids (layout as embed_source) \returns [L, B, E]
  /// \throws as embed_source (ids in [0, V); first_position + L <= max_len).
  Tensor<Scalar> embed_target(const Tensor<std::int64_t>& tgt, Index first_position = 0) const {
    return embed(tgt_embed, tgt, first_position, "embed_target", "tgt");
  }

  /// The encoder output (the decoder's memory).
  /// \param src [S, B] token ids ([B, S] when batch_first; [S] unbatched)
  /// \param args src_mask, src_key_padding_mask, src_is_causal are used
  /// \returns [S, B, E] in src's layout
  /// \throws shape_error when src is not of rank 1 or 2; index_error on an id outside
  ///   [0, V_src) or S > max_len; as TransformerEncoder::forward.
  Tensor<Scalar> encode(const Tensor<std::int64_t>& src, const TransformerArgs& args = {}) const {
    return transformer.encode(embed(src_embed, src, 0, "encode", "src"), args);
  }

  /// Logits of every target position over an encoded memory (teacher forcing). For
  /// autoregressive models pass `args.tgt_is_causal = true` (or a causal tgt_mask).
  /// \param tgt [L, B] token ids in src's layout \param memory [S, B, E] from encode
  /// \returns [L, B, V] logits \throws as encode and TransformerDecoder::forward.
  Tensor<Scalar> decode(const Tensor<std::int64_t>& tgt, const Tensor<Scalar>& memory,
                        const TransformerArgs& args = {}) const {
    return generator.forward(transformer.decode(embed(tgt_embed, tgt, 0, "decode", "tgt"),
                                                memory, args));
  }

  /// `decode(tgt, encode(src, args), args)`. \returns [L, B, V] logits
  Tensor<Scalar> forward(const Tensor<std::int64_t>& src, const Tensor<std::int64_t>& tgt,
                         const TransformerArgs& args = {}) const {
    return decode(tgt, encode(src, args), args);
  }

  /// An empty decoder cache for up to `max_steps` target positions of `batch` sequences.
  TransformerDecoderCache<Scalar> make_cache(Index batch, Index max_steps) const {
    return transformer.decoder.make_cache(batch, max_steps);
  }

  /// Logits of T new target positions (usually 1) after the `cache.size()` decoded ones,
  /// which sit at positions cache.size() .. cache.size() + T - 1. Equals the matching rows
  /// of `decode(prefix, memory, {tgt_is_causal = true, memory_key_padding_mask})` with
  /// O(prefix) attention work per position (TransformerDecoder::forward_step).
  /// \param tgt [T, B] new token ids (layout as decode) \param memory [S, B, E], the same
  ///        at every step \param cache from make_cache, updated
  /// \returns [T, B, V] logits
  /// \throws index_error when the positions pass max_len or the cache is full; as decode.
  Tensor<Scalar> decode_step(const Tensor<std::int64_t>& tgt, const Tensor<Scalar>& memory,
                             TransformerDecoderCache<Scalar>& cache,
                             const Mask& memory_key_padding_mask = Mask()) const {
    const Tensor<Scalar> x = embed(tgt_embed, tgt, cache.size(), "decode_step", "tgt");
    return generator.forward(
        transformer.decoder.forward_step(x, memory, cache, memory_key_padding_mask));
  }

 private:
  static TransformerSeq2SeqOptions checked(const TransformerSeq2SeqOptions& o) {
    if (o.src_vocab_size <= 0 || o.tgt_vocab_size <= 0 || o.max_len <= 0) {
      throw value_error("TransformerSeq2Seq: src_vocab_size is " +
                        std::to_string(o.src_vocab_size) + ", tgt_vocab_size " +
                        std::to_string(o.tgt_vocab_size) + " and max_len " +
                        std::to_string(o.max_len) + ", expected all positive");
    }
    return o;
  }

  // `table(ids) * sqrt(E) + PE[first + t]` for every id, t its position in the sequence.
  Tensor<Scalar> embed(const Embedding<Scalar>& table, const Tensor<std::int64_t>& ids,
                       Index first, const char* fn, const char* arg) const {
    const std::string who = std::string("TransformerSeq2Seq::") + fn;
    const bool bf = options.transformer.layer.batch_first;
    if (ids.rank() != 1 && ids.rank() != 2) {
      throw shape_error(who + ": " + arg + " is " + detail::shape_string(ids.shape()) +
                        (bf ? ", expected [B, T] or [T] (token ids)"
                            : ", expected [T, B] or [T] (token ids)"));
    }
    const Index T = ids.rank() == 1 || !bf ? ids.dim(0) : ids.dim(1);
    const Index B = ids.rank() == 1 ? 1 : (bf ? ids.dim(0) : ids.dim(1));
    if (first < 0 || first > positions.max_len() - T) {  // no overflow of first + T
      // first + T overflows only when first >= 0: printed as an unsigned sum then.
      const std::string end = first < 0 ? std::to_string(first + T)
                                        : std::to_string(static_cast<unsigned long long>(first) +
                                                         static_cast<unsigned long long>(T));
      throw index_error(who + ": " + arg + " positions [" + std::to_string(first) + ", " + end +
                        ") exceed max_len " + std::to_string(positions.max_len()));
    }
    const Index V = table.num_embeddings();
    for (Index i = 0; i < ids.size(); ++i) {
      const std::int64_t id = ids.data()[i];
      if (id < 0 || id >= V) {
        throw index_error(who + ": " + arg + " holds token id " + std::to_string(id) +
                          " at flat index " + std::to_string(i) + ", expected in [0, " +
                          std::to_string(V) + ")");
      }
    }
    Tensor<Scalar> x = table.forward(ids);  // [T, B, E] / [B, T, E] / [T, E]
    MatrixMap<Scalar> rows = x.as_matrix();  // [T * B, E]
    for (Index b = 0; b < B; ++b) {
      for (Index t = 0; t < T; ++t) {
        const Index r = bf ? b * T + t : t * B + b;
        rows.row(r) += positions.table().row(first + t);
      }
    }
    return x;
  }
};

/// The incremental state of one hypothesis in TransformerSeq2SeqDecoder.
template <typename Scalar>
struct TransformerSeq2SeqState {
  std::vector<std::int64_t> tokens;       ///< target tokens fed so far, bos first
  TransformerDecoderCache<Scalar> cache;  ///< per-layer K/V of those tokens (cached mode)
};

/// A TransformerSeq2Seq bound to one encoded source sequence: the step model of
/// greedy_decode and beam_search (rnn/decoding.hpp). Each step feeds one token and returns
/// the [1, V] log-probabilities of the next. With `use_cache`, a step runs the new token
/// against the hypothesis' KV cache (O(n) per step); without, it re-decodes the whole
/// prefix with a causal mask (O(n^2) per step). Both give the same tokens.
template <typename Scalar>
class TransformerSeq2SeqDecoder {
 public:
  using State = TransformerSeq2SeqState<Scalar>;

  /// Encodes `source` once.
  /// \param source [S] token ids \param use_cache decode with the KV cache
  /// \param max_steps cache capacity, the most target positions (0: the model's max_len)
  /// \throws as TransformerSeq2Seq::encode; value_error when max_steps is negative.
  TransformerSeq2SeqDecoder(const TransformerSeq2Seq<Scalar>& model,
                            const std::vector<std::int64_t>& source, bool use_cache = true,
                            Index max_steps = 0)
      : model_(&model),
        memory_(model.encode(ids_of(source))),
        use_cache_(use_cache),
        max_steps_(max_steps == 0 ? model.options.max_len : max_steps) {
    if (max_steps < 0) {
      throw value_error("TransformerSeq2SeqDecoder: max_steps is " + std::to_string(max_steps) +
                        ", expected >= 0 (0: max_len)");
    }
  }

  Index vocab_size() const noexcept { return model_->tgt_vocab_size(); }
  const Tensor<Scalar>& memory() const noexcept { return memory_; }  // [S, E]
  bool uses_cache() const noexcept { return use_cache_; }

  State initial_state() const {
    State s;
    if (use_cache_) s.cache = model_->make_cache(1, max_steps_);
    return s;
  }

  /// Feeds `token`. \returns [1, V] log-probabilities of the next token
  /// \throws index_error when token is not a target id or the sequence reaches max_steps.
  Matrix<Scalar> step(std::int64_t token, State& state) const {
    Tensor<Scalar> logits;  // [T, V]: T = 1 with the cache, else the whole prefix
    if (use_cache_) {
      logits = model_->decode_step(ids_of({token}), memory_, state.cache);
    } else {
      if (static_cast<Index>(state.tokens.size()) >= max_steps_) {
        throw index_error("TransformerSeq2SeqDecoder::step: " +
                          std::to_string(state.tokens.size() + 1) +
                          " target positions, expected at most " + std::to_string(max_steps_) +
                          " (max_steps)");
      }
      std::vector<std::int64_t> prefix = state.tokens;
      prefix.push_back(token);
      TransformerArgs causal;
      causal.tgt_is_causal = true;
      logits = model_->decode(ids_of(prefix), memory_, causal);
    }
    state.tokens.push_back(token);  // only once the step succeeded
    const MatrixMap<Scalar> all = logits.as_matrix();
    return log_softmax(all.bottomRows(1));
  }

 private:
  static Tensor<std::int64_t> ids_of(const std::vector<std::int64_t>& v) {
    Tensor<std::int64_t> t({static_cast<Index>(v.size())});  // [T], unbatched
    for (std::size_t i = 0; i < v.size(); ++i) t.data()[i] = v[i];
    return t;
  }

  const TransformerSeq2Seq<Scalar>* model_;
  Tensor<Scalar> memory_;  // [S, E]
  bool use_cache_;
  Index max_steps_;
};

}  // namespace attend
