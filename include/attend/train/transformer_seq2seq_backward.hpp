// SPDX-License-Identifier: MIT
// Training of TransformerSeq2Seq: forward with a cache, backward, named parameters, and the
// batched teacher-forced cross-entropy over padded sequences with its backward.
#pragma once

#include "attend/attention/mask.hpp"
#include "attend/core/errors.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/train/loss.hpp"
#include "attend/train/parameters.hpp"
#include "attend/train/transformer_backward.hpp"
#include "attend/transformer/seq2seq.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace attend {

/// Parameter gradients of a TransformerSeq2Seq (the position table is not a parameter).
template <typename Scalar>
struct TransformerSeq2SeqGrad {
  EmbeddingGrad<Scalar> src_embed;  // d_weight [V_src, E]
  EmbeddingGrad<Scalar> tgt_embed;  // d_weight [V, E]
  TransformerGrad<Scalar> transformer;
  LinearGrad<Scalar> generator;  // d_weight [V, E], d_bias [V]
};

/// What transformer_seq2seq_backward needs from transformer_seq2seq_forward.
template <typename Scalar>
struct TransformerSeq2SeqTrainingCache {
  Tensor<std::int64_t> src;  // [S, B] ids ([B, S] batch_first; [S] unbatched)
  Tensor<std::int64_t> tgt;  // [L, B] ids, tgt's layout
  TransformerTrainingCache<Scalar> transformer;
  Matrix<Scalar> generator_in;  // [R, E] decoder output, rows in tgt's order (R = L * B)
  Shape logits_shape;           // [L, B, V] in tgt's layout
};

/// Visits the parameters in the order of the PyTorch twin's named_parameters() (class
/// TransformerSeq2Seq of tests/gen_fixtures_transformer.py): `src_embed.weight`,
/// `tgt_embed.weight`, `transformer.encoder.*`, `transformer.decoder.*`, `generator.*`; the
/// names load_state_dict reads.
template <typename Scalar, typename Visit>
void named_parameters(TransformerSeq2Seq<Scalar>& m, TransformerSeq2SeqGrad<Scalar>& g,
                      Visit&& visit, const std::string& prefix = "") {
  named_parameters(m.src_embed, g.src_embed, visit, prefix + "src_embed.");
  named_parameters(m.tgt_embed, g.tgt_embed, visit, prefix + "tgt_embed.");
  named_parameters(m.transformer, g.transformer, visit, prefix + "transformer.");
  named_parameters(m.generator, g.generator, visit, prefix + "generator.");
}

/// TransformerSeq2Seq::forward for training:
/// `logits = generator(decoder(embed_target(tgt), encoder(embed_source(src))))`, filling
/// `cache` for the backward.
/// \param src [S, B] source ids ([B, S] batch_first; [S] unbatched)
/// \param tgt [L, B] target ids (teacher forcing), src's layout
/// \param args masks, routed as Transformer::forward (pass tgt_is_causal = true)
/// \param cache if not null, receives what backward needs
/// \returns [L, B, V] logits in tgt's layout
/// \throws as TransformerSeq2Seq::forward (messages name embed_source, embed_target or the
///   layers).
/// \sa transformer_seq2seq_backward, transformer_seq2seq_loss
template <typename Scalar>
Tensor<Scalar> transformer_seq2seq_forward(const TransformerSeq2Seq<Scalar>& model,
                                           const Tensor<std::int64_t>& src,
                                           const Tensor<std::int64_t>& tgt,
                                           const TransformerArgs& args,
                                           TransformerSeq2SeqTrainingCache<Scalar>* cache) {
  // embed_*: table(ids) * sqrt(E) + PE[t]. The position table is a constant: the gradient
  // of "+ PE" is the identity, so the backward sends d_x straight to the embedding tables.
  const Tensor<Scalar> x_src = model.embed_source(src);  // [S, B, E]
  const Tensor<Scalar> x_tgt = model.embed_target(tgt);  // [L, B, E]
  const Tensor<Scalar> y = transformer_forward(model.transformer, x_src, x_tgt, args,
                                               cache ? &cache->transformer : nullptr);
  Tensor<Scalar> logits = model.generator.forward(y);  // [L, B, V]
  if (cache) {
    cache->src = src;
    cache->tgt = tgt;
    cache->generator_in = y.as_matrix();
    cache->logits_shape = logits.shape();
  }
  return logits;
}

/// Gradient of transformer_seq2seq_forward. Token ids are discrete: only parameters get
/// gradients. The sqrt(E) factor of the embeddings is applied by Embedding::backward
/// (scale_by_sqrt_d); the sinusoidal positions are added constants (identity backward).
/// \param cache the forward's \param d_logits [L, B, V] upstream gradient of the logits
/// \param grads accumulated (+=); empty members are zeroed first
/// \throws value_error on an empty cache; shape_error when d_logits is not the forward's
///   logits shape.
template <typename Scalar>
void transformer_seq2seq_backward(const TransformerSeq2Seq<Scalar>& model,
                                  const TransformerSeq2SeqTrainingCache<Scalar>& cache,
                                  const Tensor<Scalar>& d_logits,
                                  TransformerSeq2SeqGrad<Scalar>& grads) {
  const std::string who = "transformer_seq2seq_backward";
  if (cache.logits_shape.empty()) {
    throw value_error(who +
                      ": cache is empty, expected one filled by "
                      "transformer_seq2seq_forward");
  }
  if (d_logits.shape() != cache.logits_shape) {
    throw shape_error(who + ": d_logits is " + detail::shape_string(d_logits.shape()) +
                      ", expected " + detail::shape_string(cache.logits_shape) +
                      " (the forward's logits)");
  }
  // forward: logits = y W_g^T + b_g
  Shape y_shape = cache.logits_shape;
  y_shape.back() = model.d_model();
  Tensor<Scalar> d_y(y_shape);  // [L, B, E]
  d_y.as_matrix() = model.generator.backward(cache.generator_in, d_logits.as_matrix(),
                                             grads.generator.d_weight, grads.generator.d_bias);
  // forward: y = transformer(x_src, x_tgt)
  const TransformerInputGrads<Scalar> d =
      transformer_backward(model.transformer, cache.transformer, d_y, grads.transformer);
  // forward: x = table(ids) * sqrt(E) + PE[t]
  model.src_embed.backward(cache.src, d.d_src, grads.src_embed.d_weight);
  model.tgt_embed.backward(cache.tgt, d.d_tgt, grads.tgt_embed.d_weight);
}

// ---- the batched teacher-forced loss --------------------------------------------------------

/// What transformer_seq2seq_loss_backward needs.
template <typename Scalar>
struct TransformerSeq2SeqLossCache {
  TransformerSeq2SeqTrainingCache<Scalar> model;
  CrossEntropyCache<Scalar> loss;
  Index tokens = 0;  // target positions counted by the loss
};

namespace detail {

/// Pads `seqs` (B sequences) with id 0 into the model's id layout: [T, B], or [B, T] when
/// batch_first, T the longest length. Stores the lengths.
inline Tensor<std::int64_t> pad_token_batch(const std::vector<std::vector<std::int64_t>>& seqs,
                                            bool batch_first, std::vector<Index>& lengths) {
  const Index B = static_cast<Index>(seqs.size());
  Index T = 0;
  lengths.assign(seqs.size(), 0);
  for (std::size_t b = 0; b < seqs.size(); ++b) {
    lengths[b] = static_cast<Index>(seqs[b].size());
    T = std::max(T, lengths[b]);
  }
  Tensor<std::int64_t> ids(batch_first ? Shape{B, T} : Shape{T, B});
  ids.fill(0);
  for (Index b = 0; b < B; ++b) {
    const auto& s = seqs[static_cast<std::size_t>(b)];
    for (Index t = 0; t < static_cast<Index>(s.size()); ++t) {
      ids.data()[batch_first ? b * T + t : t * B + b] = s[static_cast<std::size_t>(t)];
    }
  }
  return ids;
}

/// Throws shape_error unless `seqs` holds `B` sequences, value_error when one is empty.
inline void check_token_batch(const std::vector<std::vector<std::int64_t>>& seqs, std::size_t B,
                              const std::string& who, const std::string& arg) {
  if (seqs.size() != B) {
    throw shape_error(who + ": " + arg + " has " + std::to_string(seqs.size()) +
                      " sequences, expected " + std::to_string(B) + " (one per source)");
  }
  for (std::size_t b = 0; b < B; ++b) {
    if (seqs[b].empty()) {
      throw value_error(who + ": " + arg + "[" + std::to_string(b) +
                        "] is empty, expected at least one token");
    }
  }
}

}  // namespace detail

/// Mean teacher-forced cross-entropy of a batch of sequences of different lengths:
///
///     logits = model(pad(sources), pad(target_in)) with key padding masks on both sides
///              (src_key_padding_mask = memory_key_padding_mask from the source lengths,
///              tgt_key_padding_mask from the target lengths) and tgt_is_causal
///     loss   = cross_entropy(logits[b, t], target_out[b][t]) over t < len(target_in[b])
///
/// Sequences are padded with id 0 (any valid id would do: padded positions are masked as
/// keys, left out of the loss, and get exactly zero gradient). Ids are laid out as the
/// model's batch_first says; batch_first = true avoids gathering rows per sequence.
/// \param sources B source sequences, each non-empty, ids in [0, V_src)
/// \param target_in B decoder inputs, e.g. bos y_1 .. y_n (teacher forcing)
/// \param target_out B targets of the same lengths as target_in, e.g. y_1 .. y_n eos; an
///        entry equal to options.ignore_index is not counted either
/// \param cache if not null, filled for transformer_seq2seq_loss_backward
/// \param options ignore_index, label_smoothing, reduction (mean: over counted tokens)
/// \returns the loss
/// \throws value_error on an empty batch or sequence; shape_error when the three batch
///   sizes differ or target_in[b] and target_out[b] differ in length; index_error on an id
///   out of range or a sequence longer than the model's max_len; as cross_entropy_forward.
/// \note The argument order of seq2seq_loss (train/seq2seq_backward.hpp, the LSTM
///   encoder-decoder), so one training loop can drive either model.
/// \note Vaswani et al. 2017 section 5 trains this objective (with label smoothing 0.1).
/// \sa transformer_seq2seq_loss_backward
template <typename Scalar>
Scalar transformer_seq2seq_loss(const TransformerSeq2Seq<Scalar>& model,
                                const std::vector<std::vector<std::int64_t>>& sources,
                                const std::vector<std::vector<std::int64_t>>& target_in,
                                const std::vector<std::vector<std::int64_t>>& target_out,
                                TransformerSeq2SeqLossCache<Scalar>* cache = nullptr,
                                const CrossEntropyOptions& options = {}) {
  const std::string who = "transformer_seq2seq_loss";
  if (sources.empty()) throw value_error(who + ": sources is empty, expected B >= 1 sequences");
  detail::check_token_batch(sources, sources.size(), who, "sources");
  detail::check_token_batch(target_in, sources.size(), who, "target_in");
  detail::check_token_batch(target_out, sources.size(), who, "target_out");
  for (std::size_t b = 0; b < sources.size(); ++b) {
    if (target_out[b].size() != target_in[b].size()) {
      throw shape_error(who + ": target_out[" + std::to_string(b) + "] has " +
                        std::to_string(target_out[b].size()) + " tokens, expected " +
                        std::to_string(target_in[b].size()) + " (the length of target_in[" +
                        std::to_string(b) + "])");
    }
  }
  const bool bf = model.options.transformer.layer.batch_first;
  std::vector<Index> src_len, tgt_len;
  const Tensor<std::int64_t> src =
      detail::pad_token_batch(sources, bf, src_len);  // [S, B] / [B, S]
  const Tensor<std::int64_t> tgt =
      detail::pad_token_batch(target_in, bf, tgt_len);  // [L, B] / [B, L]
  const Index B = static_cast<Index>(sources.size());
  const Index S = bf ? src.dim(1) : src.dim(0), L = bf ? tgt.dim(1) : tgt.dim(0);
  TransformerArgs args;
  args.src_key_padding_mask = Mask::key_padding_lengths(src_len, S);
  args.memory_key_padding_mask = args.src_key_padding_mask;
  args.tgt_key_padding_mask = Mask::key_padding_lengths(tgt_len, L);
  args.tgt_is_causal = true;
  const Tensor<Scalar> logits =
      transformer_seq2seq_forward(model, src, tgt, args, cache ? &cache->model : nullptr);
  std::vector<std::int64_t> targets(static_cast<std::size_t>(L * B), options.ignore_index);
  Index counted = 0;
  for (Index b = 0; b < B; ++b) {
    const auto& out = target_out[static_cast<std::size_t>(b)];
    for (Index t = 0; t < tgt_len[static_cast<std::size_t>(b)]; ++t) {
      const std::int64_t y = out[static_cast<std::size_t>(t)];
      targets[static_cast<std::size_t>(bf ? b * L + t : t * B + b)] = y;  // logits' row order
      if (y != options.ignore_index) ++counted;
    }
  }
  const Scalar loss =
      cross_entropy_forward(logits.as_matrix(), targets, options, cache ? &cache->loss : nullptr);
  if (cache) cache->tokens = counted;
  return loss;
}

/// Gradient of transformer_seq2seq_loss with respect to every parameter.
/// \param cache the loss's \param grads accumulated (+=) \param d_loss upstream gradient
/// \throws value_error on an empty cache, or one whose loss part is not the logits' shape.
template <typename Scalar>
void transformer_seq2seq_loss_backward(const TransformerSeq2Seq<Scalar>& model,
                                       const TransformerSeq2SeqLossCache<Scalar>& cache,
                                       TransformerSeq2SeqGrad<Scalar>& grads, double d_loss = 1.0) {
  if (cache.model.logits_shape.empty()) {
    throw value_error(
        "transformer_seq2seq_loss_backward: cache is empty, expected one filled "
        "by transformer_seq2seq_loss");
  }
  Tensor<Scalar> d_logits(cache.model.logits_shape);  // [L, B, V]
  const Index V = cache.model.logits_shape.back(), R = d_logits.size() / std::max<Index>(V, 1);
  if (cache.loss.probs.rows() != R || cache.loss.probs.cols() != V) {
    throw value_error("transformer_seq2seq_loss_backward: cache.loss.probs is " +
                      detail::matrix_shape(cache.loss.probs) + ", expected " +
                      detail::shape_string({R, V}) + " (filled by transformer_seq2seq_loss)");
  }
  d_logits.as_matrix() = cross_entropy_backward(cache.loss, d_loss);
  transformer_seq2seq_backward(model, cache.model, d_logits, grads);
}

}  // namespace attend
