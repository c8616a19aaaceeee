// SPDX-License-Identifier: MIT
// The bad-input matrix: every public entry point called with wrong shapes, empty sequences,
// zero or negative sizes, NaN/Inf, out-of-range ids and masks of the wrong size.
//
// One table per scalar type; each row names the call, the exception type it must throw and
// the words its message must contain (the function and the argument). Rows of kind `ok`
// are edge cases that must work (empty sequences, S = 0 keys) and check their own result;
// they run under UBSan too. docs/reliability.md lists what the matrix covers.
#include "attend/attend.hpp"

#include <catch2/catch.hpp>

#include <cstdint>
#include <fstream>
#include <functional>
#include <limits>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace {

using namespace attend;  // NOLINT: a test of the whole public API

template <typename S>
constexpr S nan_v = std::numeric_limits<S>::quiet_NaN();
template <typename S>
constexpr S inf_v = std::numeric_limits<S>::infinity();
constexpr Index index_max = std::numeric_limits<Index>::max();

// ---- the table -------------------------------------------------------------------------

enum class Want { shape, index, value, format, error, ok };

struct Row {
  std::string what;                  // the call, as a section name
  Want want;                         // the exception type, or ok
  std::vector<std::string> needles;  // words what() must contain
  std::function<void()> call;
};

struct Table {
  std::vector<Row> rows;
  void shape(std::string w, std::vector<std::string> n, std::function<void()> f) {
    rows.push_back({std::move(w), Want::shape, std::move(n), std::move(f)});
  }
  void index(std::string w, std::vector<std::string> n, std::function<void()> f) {
    rows.push_back({std::move(w), Want::index, std::move(n), std::move(f)});
  }
  void value(std::string w, std::vector<std::string> n, std::function<void()> f) {
    rows.push_back({std::move(w), Want::value, std::move(n), std::move(f)});
  }
  void format(std::string w, std::vector<std::string> n, std::function<void()> f) {
    rows.push_back({std::move(w), Want::format, std::move(n), std::move(f)});
  }
  /// attend::error itself (I/O failures).
  void error(std::string w, std::vector<std::string> n, std::function<void()> f) {
    rows.push_back({std::move(w), Want::error, std::move(n), std::move(f)});
  }
  void ok(std::string w, std::function<void()> f) {
    rows.push_back({std::move(w), Want::ok, {}, std::move(f)});
  }
};

// ---- inputs ----------------------------------------------------------------------------

/// N(0, 1) values from a fixed seed.
template <typename S>
Tensor<S> randn(Shape shape, std::uint64_t seed = 7) {
  Tensor<S> t(std::move(shape));
  Rng rng(seed);
  for (Index i = 0; i < t.size(); ++i) t.data()[i] = static_cast<S>(rng.normal());
  return t;
}

template <typename S>
Matrix<S> randm(Index rows, Index cols, std::uint64_t seed = 7) {
  return randn<S>({rows, cols}, seed).as_matrix();
}

/// `t` with element `at` (flat) replaced by `v`.
template <typename T, typename V>
T poison(T t, V v, Index at = 1) {
  t.data()[at] = v;
  return t;
}

template <typename S>
bool all_finite(const Tensor<S>& t) {
  return t.flat().allFinite();
}

/// A state dict built by `fill`, parsed back from bytes.
inline SafeTensors state(const std::function<void(SafeTensorsWriter&)>& fill) {
  SafeTensorsWriter w;
  fill(w);
  return SafeTensors::parse(w.to_bytes(), "state");
}

/// A safetensors file: the 8-byte length, `header`, then `data_bytes` zero bytes.
inline std::vector<std::uint8_t> raw_file(const std::string& header, std::size_t data_bytes = 0) {
  std::vector<std::uint8_t> b(8);
  detail::store_le(static_cast<std::uint64_t>(header.size()), b.data());
  b.insert(b.end(), header.begin(), header.end());
  b.resize(b.size() + data_bytes, 0);
  return b;
}

inline MultiheadAttentionOptions mha_options(Index E = 8, Index H = 2) {
  MultiheadAttentionOptions o;
  o.embed_dim = E;
  o.num_heads = H;
  return o;
}

inline TransformerLayerOptions layer_options(Index E = 8, Index H = 2) {
  TransformerLayerOptions o;
  o.d_model = E;
  o.nhead = H;
  o.dim_feedforward = 16;
  return o;
}

inline RecurrentOptions rnn_options(Index in = 3, Index N = 4) {
  RecurrentOptions o;
  o.input_size = in;
  o.hidden_size = N;
  return o;
}

/// A step model for the decoders that returns fixed log-probabilities.
template <typename S>
struct FixedModel {
  using State = int;
  Matrix<S> log_probs;  // [1, V] normally; any shape to test the checks
  Index vocab = 4;
  Index vocab_size() const { return vocab; }
  State initial_state() const { return 0; }
  Matrix<S> step(std::int64_t /*token*/, State& s) const {
    ++s;
    return log_probs;
  }
};

// ---- rows by folder ----------------------------------------------------------------------

template <typename S>
void core_rows(Table& t) {
  t.value("Tensor with a negative extent", {"Tensor", "negative extent"}, [] {
    Tensor<S>({2, -1});
  });
  t.value("Tensor whose element count overflows", {"Tensor", "too many elements"}, [] {
    Tensor<S>({index_max, 2});
  });
  t.shape("Tensor with too few values", {"Tensor", "needs 6 values, got 5"}, [] {
    Tensor<S>({2, 3}, std::vector<S>(5));
  });
  t.index("Tensor::dim out of range", {"Tensor::dim", "dimension 2"}, [] {
    Tensor<S>({2, 3}).dim(2);
  });
  t.shape("Tensor::reshaped to another size", {"Tensor::reshaped", "[2, 3]", "[4, 2]"}, [] {
    Tensor<S>({2, 3}).reshaped({4, 2});
  });
}

template <typename S>
void ops_rows(Table& t) {
  // softmax and log_softmax
  t.value("softmax with NaN in x", {"softmax", "x", "NaN"},
          [] { softmax(poison(randm<S>(2, 3), nan_v<S>)); });
  t.value("softmax with +inf in x", {"softmax", "x", "+inf"},
          [] { softmax(poison(randm<S>(2, 3), inf_v<S>)); });
  t.shape("softmax with blocked of the wrong size", {"softmax", "blocked", "[2, 3]"},
          [] { softmax(randm<S>(2, 3), BoolMatrix::Constant(3, 2, false)); });
  t.value("log_softmax with NaN in x", {"log_softmax", "x", "NaN"},
          [] { log_softmax(poison(randm<S>(2, 3), nan_v<S>)); });
  t.shape("softmax_backward with dy of the wrong shape", {"softmax_backward", "dy"},
          [] { softmax_backward(randm<S>(2, 3), randm<S>(3, 2)); });
  t.shape("log_softmax_backward with dy of the wrong shape", {"log_softmax_backward", "dy"},
          [] { log_softmax_backward(randm<S>(2, 3), randm<S>(2, 2)); });
  t.ok("softmax of rows with no entries", [] {
    const Matrix<S> y = softmax(Matrix<S>(2, 0));
    CHECK(y.rows() == 2);
    CHECK(y.cols() == 0);
  });
  t.ok("log_softmax of zero rows", [] { CHECK(log_softmax(Matrix<S>(0, 3)).rows() == 0); });
  t.value("softmax_backward with NaN in dy", {"softmax_backward", "dy", "non-finite"},
          [] { softmax_backward(softmax(randm<S>(2, 3)), poison(randm<S>(2, 3), nan_v<S>)); });

  // activations
  t.value("activation_from_string with an unknown name", {"activation_from_string", "name"},
          [] { activation_from_string("tanh"); });
  t.shape("relu_backward with dy of the wrong shape", {"relu_backward", "dy"},
          [] { relu_backward(randm<S>(2, 3), randm<S>(2, 2)); });
  t.shape("gelu_backward with dy of the wrong shape", {"gelu_backward", "dy"},
          [] { gelu_backward(randm<S>(2, 3), randm<S>(1, 3)); });
  t.value("relu with NaN in x", {"relu", "x", "non-finite"},
          [] { relu(poison(randm<S>(2, 3), nan_v<S>)); });
  t.value("gelu with NaN in x", {"gelu", "x", "non-finite"},
          [] { gelu(poison(randm<S>(2, 3), nan_v<S>)); });
  t.value("gelu (tanh) with -inf in x", {"gelu", "x", "non-finite"},
          [] { gelu(poison(randm<S>(2, 3), -inf_v<S>), true); });
  t.value("activation with +inf in x", {"activation", "x", "non-finite"},
          [] { activation(poison(randm<S>(2, 3), inf_v<S>), Activation::relu); });
  t.ok("relu and gelu of zero rows", [] {
    CHECK(relu(Matrix<S>(0, 3)).rows() == 0);
    CHECK(gelu(Matrix<S>(2, 0)).cols() == 0);
  });

  // linear
  t.value("Linear with in_features 0", {"Linear", "in_features is 0"}, [] { Linear<S>(0, 3); });
  t.value("Linear with negative out_features", {"Linear", "out_features is -1"},
          [] { Linear<S>(3, -1); });
  t.shape("Linear::forward with x of the wrong width", {"Linear::forward", "x is [2, 4]"},
          [] { Linear<S>(3, 2).forward(randm<S>(2, 4)); });
  t.shape("Linear::forward with a rank-0 tensor", {"Linear::forward", "x is []"},
          [] { Linear<S>(3, 2).forward(Tensor<S>()); });
  t.shape("linear_forward with x of the wrong width", {"linear_forward", "x is [2, 4]"},
          [] { linear_forward(randm<S>(2, 4), randm<S>(2, 3)); });
  t.shape("linear_forward with a bias of the wrong length", {"linear_forward", "bias is [5]"},
          [] { linear_forward(randm<S>(2, 3), randm<S>(2, 3), Vector<S>::Zero(5).eval()); });
  t.shape("linear_backward with dy of the wrong shape", {"linear_backward", "dy is"}, [] {
    Matrix<S> dw;
    linear_backward(randm<S>(2, 3), randm<S>(4, 3), randm<S>(2, 3), dw);
  });
  t.index("Linear::load_state_dict without weight", {"load_matrix", "'weight'"},
          [] { Linear<S>(3, 2).load_state_dict(state([](SafeTensorsWriter&) {})); });
  t.value("Linear::load_state_dict with NaN in weight", {"load_matrix", "'weight'", "nan"}, [] {
    Linear<S>(3, 2).load_state_dict(state([](SafeTensorsWriter& w) {
      w.add("weight", poison(randn<S>({2, 3}), nan_v<S>));
      w.add("bias", randn<S>({2}));
    }));
  });
  t.ok("Linear::forward of zero rows",
       [] { CHECK(Linear<S>(3, 2).forward(Matrix<S>(0, 3)).rows() == 0); });
  t.value("Linear::forward with NaN in x", {"Linear::forward", "x", "non-finite"},
          [] { Linear<S>(3, 2).forward(poison(randm<S>(2, 3), nan_v<S>)); });
  t.value("Linear::forward (tensor) with +inf in x", {"Linear::forward", "x", "non-finite"}, [] {
    Linear<S>(3, 2).forward(poison(randn<S>({2, 2, 3}), inf_v<S>, 7));
  });
  t.value("linear_forward with NaN in x", {"linear_forward", "x", "non-finite"},
          [] { linear_forward(poison(randm<S>(2, 3), nan_v<S>), randm<S>(2, 3)); });

  // layer norm
  t.value("LayerNorm with normalized_shape 0", {"LayerNorm", "normalized_shape is 0"},
          [] { LayerNorm<S>(0); });
  t.value("LayerNorm with a negative eps", {"LayerNorm", "eps is"}, [] { LayerNorm<S>(4, -1.0); });
  t.value("LayerNorm with a NaN eps", {"LayerNorm", "eps is"},
          [] { LayerNorm<S>(4, std::numeric_limits<double>::quiet_NaN()); });
  t.shape("LayerNorm::forward with x of the wrong width", {"LayerNorm::forward", "x is [2, 3]"},
          [] { LayerNorm<S>(4).forward(randm<S>(2, 3)); });
  t.shape("LayerNorm::forward with a rank-0 tensor", {"LayerNorm::forward", "x is []"},
          [] { LayerNorm<S>(4).forward(Tensor<S>()); });
  t.shape("layer_norm_forward with a weight of the wrong length",
          {"layer_norm_forward", "weight is [3]"},
          [] { layer_norm_forward(randm<S>(2, 4), Vector<S>::Ones(3).eval(), Vector<S>()); });
  t.value("layer_norm_forward with an infinite eps", {"layer_norm_forward", "eps is"}, [] {
    layer_norm_forward(randm<S>(2, 4), Vector<S>(), Vector<S>(),
                       std::numeric_limits<double>::infinity());
  });
  t.shape("layer_norm_backward with dy of the wrong shape", {"layer_norm_backward", "dy is"}, [] {
    LayerNormCache<S> cache;
    layer_norm_forward(randm<S>(2, 4), Vector<S>(), Vector<S>(), 1e-5, &cache);
    layer_norm_backward(cache, Vector<S>(), randm<S>(2, 3));
  });
  t.ok("LayerNorm::forward of zero rows",
       [] { CHECK(LayerNorm<S>(4).forward(Matrix<S>(0, 4)).rows() == 0); });
  t.value("LayerNorm::forward with NaN in x", {"LayerNorm::forward", "x", "non-finite"},
          [] { LayerNorm<S>(4).forward(poison(randm<S>(2, 4), nan_v<S>)); });
  t.value("LayerNorm::forward (tensor) with +inf in x", {"LayerNorm::forward", "x", "non-finite"},
          [] {
            LayerNorm<S>(4).forward(poison(randn<S>({2, 1, 4}), inf_v<S>));
          });
  t.shape("LayerNorm::forward with a weight of the wrong length",
          {"LayerNorm::forward", "weight is [3]"}, [] {
            LayerNorm<S> norm(4);
            norm.weight = Vector<S>::Ones(3);  // a public member, set by hand
            norm.forward(randm<S>(2, 4));
          });
  t.value("layer_norm_forward with NaN in x", {"layer_norm_forward", "x", "non-finite"},
          [] { layer_norm_forward(poison(randm<S>(2, 4), nan_v<S>), Vector<S>(), Vector<S>()); });

  // dropout
  t.value("Dropout with p = 1", {"Dropout", "p is 1"}, [] { Dropout(1.0); });
  t.value("Dropout with a negative p", {"Dropout", "p is -0.1"}, [] { Dropout(-0.1); });
  t.value("Dropout with a NaN p", {"Dropout", "p is"},
          [] { Dropout{std::numeric_limits<double>::quiet_NaN()}; });
  t.value("dropout_forward with p = 1.5", {"dropout_forward", "p is 1.5"}, [] {
    Rng rng(1);
    dropout_forward(randm<S>(2, 3), 1.5, true, rng);
  });
  t.value("dropout_forward with NaN in x", {"dropout_forward", "x", "non-finite"}, [] {
    Rng rng(1);
    dropout_forward(poison(randm<S>(2, 3), nan_v<S>), 0.5, true, rng);
  });
  t.value("Dropout::forward (evaluation) with +inf in x", {"Dropout::forward", "x", "non-finite"},
          [] {
            Rng rng(1);
            Dropout(0.5).forward(poison(randn<S>({2, 3}), inf_v<S>), rng);
          });
  t.shape("dropout_backward with dy of the wrong shape", {"dropout_backward", "dy is"}, [] {
    Rng rng(1);
    DropoutCache<S> cache;
    dropout_forward(randm<S>(2, 3), 0.5, true, rng, &cache);
    dropout_backward(cache, randm<S>(3, 2));
  });
}

template <typename S>
void embedding_rows(Table& t) {
  t.value("Embedding with num_embeddings 0", {"Embedding", "num_embeddings"},
          [] { Embedding<S>(0, 4); });
  t.value("Embedding with a negative embedding_dim", {"Embedding", "embedding_dim", "-2"},
          [] { Embedding<S>(5, -2); });
  t.value("Embedding with padding_idx out of range", {"Embedding", "padding_idx is 5"},
          [] { Embedding<S>(5, 4, Index(5)); });
  t.value("Embedding::from_pretrained with an empty weight",
          {"Embedding::from_pretrained", "weight"},
          [] { Embedding<S>::from_pretrained(Matrix<S>(0, 4)); });
  t.value("Embedding::from_pretrained with NaN in weight",
          {"Embedding::from_pretrained", "weight", "non-finite"},
          [] { Embedding<S>::from_pretrained(poison(randm<S>(3, 2), nan_v<S>)); });
  t.index("Embedding::from_state_dict without weight", {"Embedding::from_state_dict", "'weight'"},
          [] { Embedding<S>::from_state_dict(state([](SafeTensorsWriter&) {})); });
  t.shape("Embedding::from_state_dict with a rank-1 weight",
          {"Embedding::from_state_dict", "'weight'", "[6]"}, [] {
            Embedding<S>::from_state_dict(
                state([](SafeTensorsWriter& w) { w.add("weight", randn<S>({6})); }));
          });
  t.index("Embedding::forward with id -1", {"Embedding::forward", "token id -1", "position 1"}, [] {
    Embedding<S>(5, 4).forward(std::vector<std::int64_t>{0, -1});
  });
  t.index("Embedding::forward with id V", {"Embedding::forward", "token id 5"},
          [] { Embedding<S>(5, 4).forward(std::vector<std::int64_t>{5}); });
  t.index("Embedding::forward with an int64 max id in a tensor", {"Embedding::forward", "token id"},
          [] {
            Embedding<S>(5, 4).forward(
                Tensor<std::int64_t>({1, 2}, std::vector<std::int64_t>{1, INT64_MAX}));
          });
  t.ok("Embedding::forward of no ids", [] {
    const Matrix<S> y = Embedding<S>(5, 4).forward(std::vector<std::int64_t>{});
    CHECK(y.rows() == 0);
    CHECK(y.cols() == 4);
  });

  t.value("sinusoidal_positional_encoding with max_len -1",
          {"sinusoidal_positional_encoding", "max_len is -1"},
          [] { sinusoidal_positional_encoding<S>(-1, 4); });
  t.value("sinusoidal_positional_encoding with d_model 0",
          {"sinusoidal_positional_encoding", "d_model is 0"},
          [] { sinusoidal_positional_encoding<S>(4, 0); });
  t.value("sinusoidal_positional_encoding with base 0",
          {"sinusoidal_positional_encoding", "base is"},
          [] { sinusoidal_positional_encoding<S>(4, 4, PositionalLayout::interleaved, 0, 0.0); });
  t.ok("sinusoidal_positional_encoding at the largest first_position", [] {
    // Row r is position first_position + r: it must not overflow Index.
    CHECK(sinusoidal_positional_encoding<S>(3, 4, PositionalLayout::interleaved, index_max)
              .allFinite());
  });
  t.shape("SinusoidalPositionalEncoding::forward with x of the wrong width",
          {"SinusoidalPositionalEncoding::forward", "x is [2, 3]"},
          [] { SinusoidalPositionalEncoding<S>(8, 4).forward(randm<S>(2, 3)); });
  t.index("SinusoidalPositionalEncoding::forward past max_len",
          {"SinusoidalPositionalEncoding::forward", "max_len 8"},
          [] { SinusoidalPositionalEncoding<S>(8, 4).forward(randm<S>(2, 4), 7); });
  t.index("SinusoidalPositionalEncoding::forward with a negative offset",
          {"SinusoidalPositionalEncoding::forward", "positions [-1"},
          [] { SinusoidalPositionalEncoding<S>(8, 4).forward(randm<S>(2, 4), -1); });
  t.value("SinusoidalPositionalEncoding::forward with NaN in x",
          {"SinusoidalPositionalEncoding::forward", "x", "non-finite"},
          [] { SinusoidalPositionalEncoding<S>(8, 4).forward(poison(randm<S>(2, 4), nan_v<S>)); });

  t.value("LearnedPositionalEmbedding with max_len 0",
          {"LearnedPositionalEmbedding", "max_len is 0"},
          [] { LearnedPositionalEmbedding<S>(0, 4); });
  t.index("LearnedPositionalEmbedding::forward with a negative L",
          {"LearnedPositionalEmbedding::forward", "L is -1"},
          [] { LearnedPositionalEmbedding<S>(8, 4).forward(-1); });
  t.index("LearnedPositionalEmbedding::forward past max_len",
          {"LearnedPositionalEmbedding::forward", "[6, 10)"},
          [] { LearnedPositionalEmbedding<S>(8, 4).forward(4, 6); });
  t.index("LearnedPositionalEmbedding::forward at the largest first_position",
          {"LearnedPositionalEmbedding::forward", "max_len"},
          [] { LearnedPositionalEmbedding<S>(8, 4).forward(2, index_max); });

  t.shape("apply_rotary with an odd width", {"apply_rotary", "x is [2, 3]"},
          [] { apply_rotary(randm<S>(2, 3)); });
  t.shape("apply_rotary with width 0", {"apply_rotary", "x is [2, 0]"},
          [] { apply_rotary(Matrix<S>(2, 0)); });
  t.value("apply_rotary with a negative first_position", {"apply_rotary", "first_position is -1"},
          [] { apply_rotary(randm<S>(2, 4), -1); });
  t.value("apply_rotary with base 1", {"apply_rotary", "base is"},
          [] { apply_rotary(randm<S>(2, 4), 0, RotaryLayout::interleaved, 1.0); });
  // Finding: the message calls rotary_backward's argument dy "x".
  t.shape("rotary_backward with an odd width", {"rotary_backward", "x is [2, 5]"},
          [] { rotary_backward(randm<S>(2, 5)); });
  t.ok("apply_rotary at the largest first_position",
       [] { CHECK(apply_rotary(randm<S>(3, 4), index_max).allFinite()); });
  t.value("apply_rotary with NaN in x", {"apply_rotary", "x", "non-finite"},
          [] { apply_rotary(poison(randm<S>(2, 4), nan_v<S>)); });
}

template <typename S>
void mask_rows(Table& t) {
  t.value("Mask::key_padding_lengths with a negative length",
          {"Mask::key_padding_lengths", "lengths[1] is -1"}, [] {
            Mask::key_padding_lengths({2, -1}, 3);
          });
  t.value("Mask::key_padding_lengths with a length above S",
          {"Mask::key_padding_lengths", "lengths[0] is 4"},
          [] { Mask::key_padding_lengths({4}, 3); });
  // Finding: the message comes from the Tensor constructor and names neither the
  // function nor S.
  t.value("Mask::key_padding_lengths with a negative S", {"negative extent"},
          [] { Mask::key_padding_lengths({0}, -1); });
  t.shape("Mask::key_padding with a rank-3 tensor", {"Mask::key_padding", "padded is [1, 2, 3]"},
          [] {
            Mask::key_padding(Tensor<bool>({1, 2, 3}, false));
          });
  t.shape("Mask::deny with a rank-1 tensor", {"Mask::deny", "blocked is [3]"},
          [] { Mask::deny(Tensor<bool>({3}, false)); });
  t.shape("Mask::deny with a rank-5 tensor", {"Mask::deny", "blocked is"}, [] {
    Mask::deny(Tensor<bool>({1, 1, 1, 2, 2}, false));
  });
  t.shape("Mask::allow with a rank-1 tensor", {"Mask::allow", "allowed is [3]"},
          [] { Mask::allow(Tensor<bool>({3}, true)); });
  t.value("Mask::additive with NaN", {"Mask::additive", "bias has NaN"}, [] {
    Mask::additive(poison(Tensor<S>({2, 2}), nan_v<S>));
  });
  t.value("Mask::additive with +inf", {"Mask::additive", "bias has +inf"}, [] {
    Mask::additive(poison(Tensor<S>({2, 2}), inf_v<S>));
  });
  t.shape("Mask::additive with a rank-1 tensor", {"Mask::additive", "bias is [2]"},
          [] { Mask::additive(Tensor<S>({2})); });
  t.shape("Mask::from_torch_mha with B * H not divisible by num_heads",
          {"Mask::from_torch_mha", "attn_mask is [3, 2, 2]"}, [] {
            Mask::from_torch_mha(Tensor<bool>({3, 2, 2}, false), 2);
          });
  t.shape("Mask::from_torch_mha with num_heads 0", {"Mask::from_torch_mha", "num_heads = 0"}, [] {
    Mask::from_torch_mha(Tensor<bool>({2, 2, 2}, false), 0);
  });
  t.value("Mask::from_torch_mha_additive with NaN", {"Mask::additive", "NaN"}, [] {
    Mask::from_torch_mha_additive(poison(Tensor<S>({2, 2}), nan_v<S>), 2);
  });
  t.shape("Mask::from_torch_sdpa with a rank-1 tensor",
          {"Mask::from_torch_sdpa", "attn_mask is [4]"},
          [] { Mask::from_torch_sdpa(Tensor<bool>({4}, true)); });
  t.value("Mask::from_keras with the value 2", {"Mask::from_keras", "mask has value 2"}, [] {
    Mask::from_keras(poison(Tensor<S>({2, 2}, S(1)), S(2)));
  });
  t.value("Mask::from_keras with NaN", {"Mask::from_keras", "mask has value nan"}, [] {
    Mask::from_keras(poison(Tensor<S>({2, 2}, S(1)), nan_v<S>));
  });
  t.shape("Mask::from_keras with a rank-1 tensor", {"Mask::from_keras", "mask is [2]"},
          [] { Mask::from_keras(Tensor<S>({2}, S(1))); });
  t.shape("Mask operator& of masks that do not broadcast", {"Mask::operator&", "do not broadcast"},
          [] {
            Mask::deny(Tensor<bool>({2, 3}, false)) & Mask::deny(Tensor<bool>({3, 3}, false));
          });
  t.value("alibi_slopes with num_heads 0", {"alibi_slopes", "num_heads is 0"},
          [] { alibi_slopes(0); });
  t.value("alibi_mask with a negative L", {"alibi_mask", "L is -1"}, [] { alibi_mask(2, -1, 3); });
  t.ok("alibi_mask at the largest offset", [] {
    // The distance i + offset - j must not overflow Index.
    const Mask m = alibi_mask(2, 2, 2, false, index_max);
    REQUIRE(m.bias());
    CHECK(m.bias()->flat().allFinite());
  });
}

template <typename S>
void attention_rows(Table& t) {
  const std::string sdpa = "scaled_dot_product_attention";
  // matrix form
  t.shape("SDPA (matrix) with key of the wrong width", {sdpa, "key is [5, 3]"},
          [] { scaled_dot_product_attention(randm<S>(2, 4), randm<S>(5, 3), randm<S>(5, 4)); });
  t.shape("SDPA (matrix) with value of the wrong length", {sdpa, "value is [4, 4]"},
          [] { scaled_dot_product_attention(randm<S>(2, 4), randm<S>(5, 4), randm<S>(4, 4)); });
  t.value("SDPA (matrix) with NaN in query", {sdpa, "query", "non-finite"}, [] {
    scaled_dot_product_attention(poison(randm<S>(2, 4), nan_v<S>), randm<S>(5, 4), randm<S>(5, 4));
  });
  t.value("SDPA (matrix) with -inf in key", {sdpa, "key", "non-finite"}, [] {
    scaled_dot_product_attention(randm<S>(2, 4), poison(randm<S>(5, 4), -inf_v<S>), randm<S>(5, 4));
  });
  t.value("SDPA (matrix) with +inf in value", {sdpa, "value", "non-finite"}, [] {
    scaled_dot_product_attention(randm<S>(2, 4), randm<S>(5, 4), poison(randm<S>(5, 4), inf_v<S>));
  });
  t.shape("SDPA (matrix) with a mask of the wrong size", {sdpa, "mask is [1, 1, 3, 5]"}, [] {
    scaled_dot_product_attention(randm<S>(2, 4), randm<S>(5, 4), randm<S>(5, 4),
                                 Mask::deny(BoolMatrix::Constant(3, 5, false)));
  });
  t.value("SDPA (matrix) with a NaN scale", {sdpa, "scale is"}, [] {
    scaled_dot_product_attention(randm<S>(2, 4), randm<S>(5, 4), randm<S>(5, 4), Mask(),
                                 std::numeric_limits<double>::quiet_NaN());
  });
  t.shape("SDPA (matrix) with d_k = 0 and no scale", {sdpa, "d_k = 0"},
          [] { scaled_dot_product_attention(Matrix<S>(2, 0), Matrix<S>(5, 0), randm<S>(5, 4)); });
  t.ok("SDPA (matrix) with no queries", [] {
    CHECK(scaled_dot_product_attention(Matrix<S>(0, 4), randm<S>(5, 4), randm<S>(5, 3)).rows() ==
          0);
  });
  t.ok("SDPA (matrix) with no keys gives zeros", [] {
    const Matrix<S> y =
        scaled_dot_product_attention(randm<S>(2, 4), Matrix<S>(0, 4), Matrix<S>(0, 3));
    CHECK(y.rows() == 2);
    CHECK(y.cols() == 3);
    CHECK(y.isZero(0));
  });
  // tensor form
  t.shape("SDPA (tensor) with a rank-1 query", {sdpa, "query is [4]"},
          [] { scaled_dot_product_attention(randn<S>({4}), randn<S>({4}), randn<S>({4})); });
  t.shape("SDPA (tensor) with a rank-5 query", {sdpa, "query is [1, 1, 1, 2, 4]"}, [] {
    scaled_dot_product_attention(randn<S>({1, 1, 1, 2, 4}), randn<S>({1, 1, 1, 2, 4}),
                                 randn<S>({1, 1, 1, 2, 4}));
  });
  t.shape("SDPA (tensor) with key of another batch", {sdpa, "key is [3, 5, 4]", "[2, S, 4]"}, [] {
    scaled_dot_product_attention(randn<S>({2, 3, 4}), randn<S>({3, 5, 4}), randn<S>({3, 5, 4}));
  });
  t.shape("SDPA (tensor) with value of another length", {sdpa, "value is [2, 4, 4]"}, [] {
    scaled_dot_product_attention(randn<S>({2, 3, 4}), randn<S>({2, 5, 4}), randn<S>({2, 4, 4}));
  });
  t.shape("SDPA (tensor) with an attn_mask of the wrong size", {sdpa, "attn_mask is"}, [] {
    scaled_dot_product_attention(randn<S>({2, 3, 4}), randn<S>({2, 5, 4}), randn<S>({2, 5, 4}),
                                 Mask::deny(Tensor<bool>({3, 3, 5}, false)));
  });
  t.value("SDPA (tensor) with NaN in value", {sdpa, "value", "non-finite"}, [] {
    scaled_dot_product_attention(randn<S>({2, 3, 4}), randn<S>({2, 5, 4}),
                                 poison(randn<S>({2, 5, 4}), nan_v<S>));
  });
  t.value("SDPA (tensor) with an infinite scale", {sdpa, "scale is"}, [] {
    scaled_dot_product_attention(randn<S>({3, 4}), randn<S>({5, 4}), randn<S>({5, 4}), Mask(),
                                 std::numeric_limits<double>::infinity());
  });
  // fused kernel
  const std::string fused = "scaled_dot_product_attention_fused";
  t.shape("SDPA fused (matrix) with key of the wrong width", {fused, "key is [5, 3]"}, [] {
    scaled_dot_product_attention_fused(randm<S>(2, 4), randm<S>(5, 3), randm<S>(5, 4));
  });
  t.value("SDPA fused (matrix) with NaN in query", {fused, "query", "non-finite"}, [] {
    scaled_dot_product_attention_fused(poison(randm<S>(2, 4), nan_v<S>), randm<S>(5, 4),
                                       randm<S>(5, 4));
  });
  t.shape("SDPA fused (tensor) with an attn_mask of the wrong size", {fused, "attn_mask is"}, [] {
    scaled_dot_product_attention_fused(randn<S>({2, 3, 4}), randn<S>({2, 5, 4}),
                                       randn<S>({2, 5, 4}),
                                       Mask::deny(Tensor<bool>({3, 6}, false)));
  });
  t.value("SDPA fused (tensor) with +inf in key", {fused, "key", "non-finite"}, [] {
    scaled_dot_product_attention_fused(randn<S>({2, 3, 4}), poison(randn<S>({2, 5, 4}), inf_v<S>),
                                       randn<S>({2, 5, 4}));
  });
  t.ok("SDPA fused (tensor) with no keys gives zeros", [] {
    const Tensor<S> y = scaled_dot_product_attention_fused(
        randn<S>({2, 3, 4}), Tensor<S>({2, 0, 4}), Tensor<S>({2, 0, 4}));
    CHECK(y.shape() == Shape{2, 3, 4});
    CHECK(y.flat().isZero(0));
  });
}

template <typename S>
void multihead_rows(Table& t) {
  const std::string ctor = "MultiheadAttention", fwd = "MultiheadAttention::forward";
  t.value("MultiheadAttention with embed_dim 0", {ctor, "embed_dim is 0"},
          [] { MultiheadAttention<S>(mha_options(0, 1)); });
  t.value("MultiheadAttention with num_heads -1", {ctor, "num_heads is -1"},
          [] { MultiheadAttention<S>(mha_options(8, -1)); });
  t.value("MultiheadAttention with num_heads not dividing embed_dim",
          {ctor, "embed_dim 8", "num_heads 3"}, [] { MultiheadAttention<S>(mha_options(8, 3)); });
  t.value("MultiheadAttention with a negative kdim", {ctor, "kdim"}, [] {
    MultiheadAttentionOptions o = mha_options();
    o.kdim = -1;
    MultiheadAttention<S>{o};
  });
  t.value("MultiheadAttention with rotary and an odd head_dim", {ctor, "head_dim 3"}, [] {
    MultiheadAttentionOptions o = mha_options(6, 2);
    o.position = PositionKind::rotary;
    MultiheadAttention<S>{o};
  });
  t.value("MultiheadAttention with rotary_base 1", {ctor, "rotary_base is"}, [] {
    MultiheadAttentionOptions o = mha_options();
    o.position = PositionKind::rotary;
    o.rotary_base = 1.0;
    MultiheadAttention<S>{o};
  });
  t.shape("MultiheadAttention::forward with a rank-4 query", {fwd, "query is [1, 2, 3, 8]"}, [] {
    MultiheadAttention<S>(mha_options()).forward(randn<S>({1, 2, 3, 8}));
  });
  t.shape("MultiheadAttention::forward with a query of the wrong width",
          {fwd, "query is [3, 2, 7]"}, [] {
            MultiheadAttention<S>(mha_options()).forward(randn<S>({3, 2, 7}));
          });
  t.shape("MultiheadAttention::forward with key of another batch", {fwd, "key is [5, 3, 8]"}, [] {
    MultiheadAttention<S>(mha_options())
        .forward(randn<S>({3, 2, 8}), randn<S>({5, 3, 8}), randn<S>({5, 3, 8}));
  });
  t.shape("MultiheadAttention::forward with value of another length", {fwd, "value is [4, 2, 8]"},
          [] {
            MultiheadAttention<S>(mha_options())
                .forward(randn<S>({3, 2, 8}), randn<S>({5, 2, 8}), randn<S>({4, 2, 8}));
          });
  t.shape("MultiheadAttention::forward with an unbatched key and a batched query",
          {fwd, "key is [5, 8]"}, [] {
            MultiheadAttention<S>(mha_options())
                .forward(randn<S>({3, 2, 8}), randn<S>({5, 8}), randn<S>({5, 8}));
          });
  t.shape("MultiheadAttention::forward with a key_padding_mask of the wrong size",
          {fwd, "key_padding_mask is [3, 1, 1, 3]"}, [] {
            MultiheadAttentionArgs a;
            a.key_padding_mask = Mask::key_padding(Tensor<bool>({3, 3}, false));
            MultiheadAttention<S>(mha_options()).forward(randn<S>({3, 2, 8}), a);
          });
  t.shape("MultiheadAttention::forward with an attn_mask of the wrong size",
          {fwd, "attn_mask is [1, 1, 4, 3]"}, [] {
            MultiheadAttentionArgs a;
            a.attn_mask = Mask::from_torch_mha(Tensor<bool>({4, 3}, false), 2);
            MultiheadAttention<S>(mha_options()).forward(randn<S>({3, 2, 8}), a);
          });
  t.value("MultiheadAttention::forward with NaN in query (self-attention)",
          {fwd, "query", "non-finite"}, [] {
            MultiheadAttention<S>(mha_options()).forward(poison(randn<S>({3, 2, 8}), nan_v<S>));
          });
  t.value("MultiheadAttention::forward with +inf in key", {fwd, "key", "non-finite"}, [] {
    MultiheadAttention<S>(mha_options())
        .forward(randn<S>({3, 2, 8}), poison(randn<S>({5, 2, 8}), inf_v<S>), randn<S>({5, 2, 8}));
  });
  t.value("MultiheadAttention::forward with NaN in value", {fwd, "value", "non-finite"}, [] {
    MultiheadAttention<S>(mha_options())
        .forward(randn<S>({3, 2, 8}), randn<S>({5, 2, 8}), poison(randn<S>({5, 2, 8}), nan_v<S>));
  });
  t.value("MultiheadAttention::forward with rotary and a negative query_position",
          {fwd, "query_position is -1"}, [] {
            MultiheadAttentionOptions o = mha_options();
            o.position = PositionKind::rotary;
            MultiheadAttentionArgs a;
            a.query_position = -1;
            MultiheadAttention<S>(o).forward(randn<S>({3, 2, 8}), a);
          });
  t.ok("MultiheadAttention::forward with rotary at the largest query_position", [] {
    MultiheadAttentionOptions o = mha_options();
    o.position = PositionKind::rotary;
    MultiheadAttentionArgs a;
    a.query_position = a.key_position = index_max;  // row r at index_max + r: no overflow
    CHECK(all_finite(MultiheadAttention<S>(o).forward(randn<S>({3, 2, 8}), a).output));
  });
  // L = 0 and S = 0 work as in PyTorch: an empty output, or the out_proj bias per row (the
  // heads are 0; biases start at 0). They once took a head's columns of an empty matrix.
  t.ok("MultiheadAttention::forward with no queries", [] {
    const AttentionResult<S> r =
        MultiheadAttention<S>(mha_options())
            .forward(Tensor<S>({0, 2, 8}), randn<S>({5, 2, 8}), randn<S>({5, 2, 8}));
    CHECK(r.output.shape() == Shape{0, 2, 8});
    CHECK(r.attn_weights.shape() == Shape{2, 0, 5});
  });
  t.ok("MultiheadAttention::forward with no keys", [] {
    const AttentionResult<S> r =
        MultiheadAttention<S>(mha_options())
            .forward(randn<S>({3, 2, 8}), Tensor<S>({0, 2, 8}), Tensor<S>({0, 2, 8}));
    CHECK(r.output.shape() == Shape{3, 2, 8});
    CHECK(r.output.flat().isZero(0));  // heads 0, out_proj bias 0 at construction
    CHECK(r.attn_weights.shape() == Shape{2, 3, 0});
  });
  t.ok("MultiheadAttention::forward of an empty sequence (self, rotary, no weights)", [] {
    MultiheadAttentionOptions o = mha_options();
    o.position = PositionKind::rotary;
    MultiheadAttentionArgs a;
    a.need_weights = false;  // the fused path
    CHECK(MultiheadAttention<S>(o).forward(Tensor<S>({2, 0, 8}), a).output.shape() ==
          Shape{2, 0, 8});
  });
  // load_state_dict (messages come from load_matrix / load_vector)
  t.index("MultiheadAttention::load_state_dict without in_proj_weight",
          {"load_matrix", "in_proj_weight"}, [] {
            MultiheadAttention<S>(mha_options()).load_state_dict(state([](SafeTensorsWriter&) {}));
          });
  t.shape("MultiheadAttention::load_state_dict with in_proj_weight of the wrong shape",
          {"load_matrix", "in_proj_weight", "[8, 8]"}, [] {
            MultiheadAttention<S>(mha_options()).load_state_dict(state([](SafeTensorsWriter& w) {
              w.add("in_proj_weight", randn<S>({8, 8}));
            }));
          });
  t.value("MultiheadAttention::load_state_dict with NaN in out_proj.weight",
          {"load_matrix", "out_proj.weight", "nan"}, [] {
            MultiheadAttention<S>(mha_options()).load_state_dict(state([](SafeTensorsWriter& w) {
              w.add("in_proj_weight", randn<S>({24, 8}));
              w.add("out_proj.weight", poison(randn<S>({8, 8}), nan_v<S>));
            }));
          });
  t.value("MultiheadAttention::load_state_dict with an I64 in_proj_weight",
          {"load_matrix", "in_proj_weight", "I64"}, [] {
            MultiheadAttention<S>(mha_options()).load_state_dict(state([](SafeTensorsWriter& w) {
              w.add("in_proj_weight", Tensor<std::int64_t>({24, 8}));
            }));
          });

  const std::string gqa = "GroupedQueryAttention";
  t.value("GroupedQueryAttention with num_kv_heads not dividing num_heads", {gqa, "num_kv_heads 3"},
          [] {
            GroupedQueryAttentionOptions o;
            o.embed_dim = 8;
            o.num_heads = 4;
            o.num_kv_heads = 3;
            GroupedQueryAttention<S>{o};
          });
  t.shape("GroupedQueryAttention::forward with key of the wrong width",
          {"GroupedQueryAttention::forward", "key is [5, 2, 7]"}, [] {
            GroupedQueryAttentionOptions o;
            o.embed_dim = 8;
            o.num_heads = 2;
            GroupedQueryAttention<S>(o).forward(randn<S>({3, 2, 8}), randn<S>({5, 2, 7}),
                                                randn<S>({5, 2, 7}));
          });
  t.value("GroupedQueryAttention::forward with NaN in value",
          {"GroupedQueryAttention::forward", "value", "non-finite"}, [] {
            GroupedQueryAttentionOptions o;
            o.embed_dim = 8;
            o.num_heads = 2;
            GroupedQueryAttention<S>(o).forward(randn<S>({3, 2, 8}), randn<S>({5, 2, 8}),
                                                poison(randn<S>({5, 2, 8}), nan_v<S>));
          });
  t.ok("GroupedQueryAttention::forward with no queries or no keys", [] {
    GroupedQueryAttentionOptions o;
    o.embed_dim = 8;
    o.num_heads = 4;
    o.num_kv_heads = 2;
    o.rotary = true;
    const GroupedQueryAttention<S> gqa(o);
    CHECK(gqa.forward(Tensor<S>({0, 2, 8}), randn<S>({5, 2, 8}), randn<S>({5, 2, 8})).shape() ==
          Shape{0, 2, 8});
    const Tensor<S> y =
        gqa.forward(randn<S>({3, 2, 8}), Tensor<S>({0, 2, 8}), Tensor<S>({0, 2, 8}));
    CHECK(y.shape() == Shape{3, 2, 8});
    CHECK(y.flat().isZero(0));  // zero heads through out_proj, whose bias starts at 0
  });

  // KV cache
  t.value("KVCache with batch 0", {"KVCache", "batch is 0"}, [] { KVCache<S>(0, 4, 8); });
  // Finding: a negative size reaches the Tensor constructor first; its message does not
  // name KVCache or the argument.
  t.value("KVCache with a negative capacity", {"negative extent"}, [] { KVCache<S>(1, -1, 8); });
  t.shape("append_keys_values with kv_input of the wrong width",
          {"append_keys_values", "kv_input is [3, 7]"}, [] {
            KVCache<S> cache(1, 4, 8);
            append_keys_values(MultiheadAttention<S>(mha_options()), randn<S>({3, 7}), cache);
          });
  t.index("append_keys_values past the capacity", {"append_keys_values", "kv_input has 5 new"}, [] {
    KVCache<S> cache(1, 4, 8);
    append_keys_values(MultiheadAttention<S>(mha_options()), randn<S>({5, 8}), cache);
  });
  t.value("append_keys_values with NaN in kv_input",
          {"append_keys_values", "kv_input", "non-finite"}, [] {
            KVCache<S> cache(1, 4, 8);
            append_keys_values(MultiheadAttention<S>(mha_options()),
                               poison(randn<S>({3, 8}), nan_v<S>), cache);
          });
  t.index("attend_cached over an empty cache", {"attend_cached", "cache holds 0 positions"}, [] {
    const KVCache<S> cache(1, 4, 8);
    attend_cached(MultiheadAttention<S>(mha_options()), randn<S>({1, 8}), cache);
  });
  t.shape("attend_cached with a cache of another batch", {"attend_cached", "query is"}, [] {
    const KVCache<S> cache(2, 4, 8);
    attend_cached(MultiheadAttention<S>(mha_options()), randn<S>({1, 3, 8}), cache);
  });
  t.shape("attend_cached with a mask of the wrong size", {"attend_cached", "mask is"}, [] {
    const MultiheadAttention<S> mha(mha_options());
    KVCache<S> cache(1, 4, 8);
    append_keys_values(mha, randn<S>({3, 8}), cache);
    attend_cached(mha, randn<S>({1, 8}), cache, Mask::deny(BoolMatrix::Constant(1, 4, false)));
  });
  t.value("attend_cached with NaN in query", {"attend_cached", "query", "non-finite"}, [] {
    const MultiheadAttention<S> mha(mha_options());
    KVCache<S> cache(1, 4, 8);
    append_keys_values(mha, randn<S>({3, 8}), cache);
    attend_cached(mha, poison(randn<S>({1, 8}), nan_v<S>), cache);
  });
  t.index("self_attention_step with a cache of capacity 0", {"self_attention_step", "capacity 0"},
          [] {
            KVCache<S> cache;
            self_attention_step(MultiheadAttention<S>(mha_options()), randn<S>({1, 8}), cache);
          });
  t.shape("self_attention_step with a key_padding_mask of the wrong size",
          {"attend_cached", "mask is"}, [] {
            KVCache<S> cache(1, 4, 8);
            self_attention_step(MultiheadAttention<S>(mha_options()), randn<S>({2, 8}), cache,
                                Mask::key_padding(Tensor<bool>({1, 5}, false)));
          });
}

template <typename S>
void io_rows(Table& t) {
  t.format("SafeTensors::parse of 3 bytes", {"SafeTensors", "file is 3 bytes"}, [] {
    SafeTensors::parse({1, 2, 3});
  });
  t.format("SafeTensors::parse with a header length past the end",
           {"SafeTensors", "header length is"}, [] {
             std::vector<std::uint8_t> b = raw_file("{}");
             b[0] = 200;
             SafeTensors::parse(b);
           });
  t.format("SafeTensors::parse of a header that is not JSON", {"SafeTensors", "not valid JSON"},
           [] { SafeTensors::parse(raw_file("{\"a\":")); });
  t.format("SafeTensors::parse of offsets past the data", {"SafeTensors", "'x'", "data_offsets"},
           [] {
             SafeTensors::parse(
                 raw_file(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4));
           });
  t.format("SafeTensors::parse of a shape that overflows", {"SafeTensors", "'x'", "overflows"}, [] {
    SafeTensors::parse(
        raw_file(R"({"x":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})"));
  });
  t.format("SafeTensors::parse of a BOOL byte 2", {"SafeTensors", "'x'", "is 2"}, [] {
    std::vector<std::uint8_t> b =
        raw_file(R"({"x":{"dtype":"BOOL","shape":[1],"data_offsets":[0,1]}})", 1);
    b.back() = 2;
    SafeTensors::parse(b);
  });
  t.error("SafeTensors::load of a missing file", {"SafeTensors::load", "cannot open"},
          [] { SafeTensors::load("no/such/dir/file.safetensors"); });
  t.index("SafeTensors::get of an unknown name", {"SafeTensors", "no tensor named 'y'"}, [] {
    state([](SafeTensorsWriter& w) { w.add("x", Tensor<S>({2})); }).template get<S>("y");
  });
  t.value("SafeTensors::get of I64 as a float", {"SafeTensors::get", "'x'", "I64"}, [] {
    state([](SafeTensorsWriter& w) { w.add("x", Tensor<std::int64_t>({2})); }).template get<S>("x");
  });
  t.value("SafeTensors::get of I64 2 as bool", {"SafeTensors::get", "'x'", "is 2"}, [] {
    state([](SafeTensorsWriter& w) {
      w.add("x", Tensor<std::int64_t>({2}, std::vector<std::int64_t>{1, 2}));
    }).template get<bool>("x");
  });
  t.value("SafeTensorsWriter::add of a name twice", {"SafeTensorsWriter", "'x'"}, [] {
    SafeTensorsWriter w;
    w.add("x", Tensor<S>({1}));
    w.add("x", Tensor<S>({1}));
  });
  t.value("SafeTensorsWriter::set_metadata with invalid UTF-8", {"SafeTensorsWriter", "UTF-8"},
          [] { SafeTensorsWriter().set_metadata("k", "\xff"); });
  t.shape("load_matrix with the wrong shape", {"load_matrix", "'w'", "[2, 3]"}, [] {
    load_matrix<S>(state([](SafeTensorsWriter& w) { w.add("w", randn<S>({2, 3})); }), "w", 3, 2);
  });
  t.value("load_vector with +inf", {"load_vector", "'b'", "inf"}, [] {
    load_vector<S>(state([](SafeTensorsWriter& w) { w.add("b", poison(randn<S>({3}), inf_v<S>)); }),
                   "b", 3);
  });
}

inline void text_rows(Table& t) {
  t.value("tokenize_words with invalid UTF-8", {"tokenize_words", "text", "byte offset 2"},
          [] { tokenize_words("ab\xC3"); });
  t.value("tokenize_chars with a stray continuation byte",
          {"tokenize_chars", "text", "byte offset 0"}, [] { tokenize_chars("\x80"); });
  t.value("Vocabulary::build with min_freq 0", {"Vocabulary::build", "min_freq is 0"},
          [] { Vocabulary::build({{"a"}}, 0); });
  t.value("Vocabulary::build with max_size 3", {"Vocabulary::build", "max_size is 3"},
          [] { Vocabulary::build({{"a"}}, 1, Index(3)); });
  t.value("Vocabulary::build with an empty token", {"Vocabulary::build", "corpus[0][1]"}, [] {
    Vocabulary::build({{"a", ""}});
  });
  t.index("Vocabulary::token with id -1", {"Vocabulary::token", "id -1"},
          [] { Vocabulary().token(-1); });
  t.index("Vocabulary::decode with id V", {"Vocabulary::decode", "id 4"}, [] {
    Vocabulary().decode({1, 4});
  });
  t.index("Vocabulary::decode_text with an int64 min id", {"Vocabulary::decode", "id"},
          [] { Vocabulary().decode_text({INT64_MIN}); });
  t.value("Vocabulary::encode_text with invalid UTF-8", {"tokenize_words", "text"},
          [] { Vocabulary().encode_text("\xC0\xAF"); });
  t.format("Vocabulary::load of a missing file", {"Vocabulary::load", "cannot open"},
           [] { Vocabulary::load("no/such/dir/vocab.txt"); });
  t.format("Vocabulary::load of a file without the special tokens", {"Vocabulary::load", "line 1"},
           [] {
             const std::string path = "bad_input_vocab.txt";
             std::ofstream(path, std::ios::binary) << "hello\nworld\n";
             Vocabulary::load(path);
           });
  t.value("Vocabulary::save of a token with a line break", {"Vocabulary::save", "token 4"},
          [] { Vocabulary::build({{"a\nb"}}).save("bad_input_vocab_out.txt"); });
  t.ok("tokenizers and Vocabulary::encode of empty input", [] {
    CHECK(tokenize_words("").empty());
    CHECK(tokenize_chars("").empty());
    CHECK(Vocabulary().encode({}).empty());
    CHECK(Vocabulary().decode_text({}).empty());
  });
}

template <typename S>
void rnn_rows(Table& t) {
  // cells
  t.value("RNNCell with input_size 0", {"RNNCell", "input_size is 0"}, [] { RNNCell<S>(0, 4); });
  t.value("LSTMCell with hidden_size -1", {"LSTMCell", "hidden_size is -1"},
          [] { LSTMCell<S>(3, -1); });
  t.value("GRUCell with hidden_size 0", {"GRUCell", "hidden_size is 0"}, [] { GRUCell<S>(3, 0); });
  t.shape("LSTMCell::forward with input of the wrong width",
          {"LSTMCell::forward", "input is [2, 4]"},
          [] { LSTMCell<S>(3, 4).forward(randm<S>(2, 4)); });
  t.shape("LSTMCell::forward with an empty batch", {"LSTMCell::forward", "input is [0, 3]"},
          [] { LSTMCell<S>(3, 4).forward(Matrix<S>(0, 3)); });
  t.shape("LSTMCell::forward with hx of the wrong shape", {"LSTMCell::forward", "hx is [2, 3]"},
          [] {
            LSTMCell<S>(3, 4).forward(randm<S>(2, 3), {randm<S>(2, 3), randm<S>(2, 4)});
          });
  t.shape("LSTMCell::forward with cx of the wrong shape", {"LSTMCell::forward", "cx is [1, 4]"},
          [] {
            LSTMCell<S>(3, 4).forward(randm<S>(2, 3), {randm<S>(2, 4), randm<S>(1, 4)});
          });
  t.shape("GRUCell::forward with hx of the wrong shape", {"GRUCell::forward", "hx is [2, 5]"}, [] {
    GRUCell<S>(3, 4).forward(randm<S>(2, 3), {randm<S>(2, 5), Matrix<S>()});
  });
  t.shape("RNNCell::forward with input of the wrong width", {"RNNCell::forward", "input is [2, 2]"},
          [] { RNNCell<S>(3, 4).forward(randm<S>(2, 2)); });
  t.index("LSTMCell::load_state_dict without weight_hh", {"load_matrix", "weight_hh"}, [] {
    LSTMCell<S>(3, 4).load_state_dict(state([](SafeTensorsWriter& w) {
      w.add("weight_ih", randn<S>({16, 3}));
    }));
  });
  t.value("LSTMCell::forward with NaN in input", {"LSTMCell::forward", "input", "non-finite"},
          [] { LSTMCell<S>(3, 4).forward(poison(randm<S>(2, 3), nan_v<S>)); });
  t.value("LSTMCell::forward with -inf in cx", {"LSTMCell::forward", "cx", "non-finite"}, [] {
    LSTMCell<S>(3, 4).forward(randm<S>(2, 3), {randm<S>(2, 4), poison(randm<S>(2, 4), -inf_v<S>)});
  });
  t.value("GRUCell::forward with +inf in hx", {"GRUCell::forward", "hx", "non-finite"}, [] {
    GRUCell<S>(3, 4).forward(randm<S>(2, 3), {poison(randm<S>(2, 4), inf_v<S>), Matrix<S>()});
  });
  t.value("RNNCell::forward with NaN in input", {"RNNCell::forward", "input", "non-finite"},
          [] { RNNCell<S>(3, 4).forward(poison(randm<S>(2, 3), nan_v<S>)); });

  // layers
  t.value("LSTM with num_layers 0", {"LSTM", "num_layers is 0"}, [] {
    RecurrentOptions o = rnn_options();
    o.num_layers = 0;
    LSTM<S>{o};
  });
  t.value("GRU with input_size -3", {"GRU", "input_size is -3"},
          [] { GRU<S>{rnn_options(-3, 4)}; });
  t.shape("LSTM::forward with a rank-2 input", {"LSTM::forward", "input is [5, 3]"}, [] {
    LSTM<S>(rnn_options()).forward(randn<S>({5, 3}));
  });
  t.shape("LSTM::forward with input of the wrong width", {"LSTM::forward", "input is [5, 2, 4]"},
          [] {
            LSTM<S>(rnn_options()).forward(randn<S>({5, 2, 4}));
          });
  t.shape("LSTM::forward with an empty sequence", {"LSTM::forward", "input is [0, 2, 3]"}, [] {
    LSTM<S>(rnn_options()).forward(Tensor<S>({0, 2, 3}));
  });
  t.shape("LSTM::forward with h_0 of the wrong shape", {"LSTM::forward", "h_0 is [1, 3, 4]"}, [] {
    LSTM<S>(rnn_options()).forward(randn<S>({5, 2, 3}), {randn<S>({1, 3, 4}), Tensor<S>()});
  });
  t.shape("LSTM::forward with c_0 of the wrong shape", {"LSTM::forward", "c_0 is [2, 2, 4]"}, [] {
    LSTM<S>(rnn_options()).forward(randn<S>({5, 2, 3}), {Tensor<S>(), randn<S>({2, 2, 4})});
  });
  t.value("GRU::forward with a c_0", {"GRU::forward", "c_0 is [1, 2, 4]"}, [] {
    GRU<S>(rnn_options()).forward(randn<S>({5, 2, 3}), {Tensor<S>(), randn<S>({1, 2, 4})});
  });
  t.shape("RNN::forward with lengths of the wrong count", {"RNN::forward", "lengths has 3"}, [] {
    RNN<S>(rnn_options()).forward(randn<S>({5, 2, 3}), {}, {5, 5, 5});
  });
  t.value("LSTM::forward with a length 0", {"LSTM::forward", "lengths[1] is 0"}, [] {
    LSTM<S>(rnn_options()).forward(randn<S>({5, 2, 3}), {}, {5, 0});
  });
  t.value("LSTM::forward with a length above T", {"LSTM::forward", "lengths[0] is 6"}, [] {
    LSTM<S>(rnn_options()).forward(randn<S>({5, 2, 3}), {}, {6, 5});
  });
  t.value("LSTM::step on a bidirectional stack", {"LSTM::step", "bidirectional"}, [] {
    RecurrentOptions o = rnn_options();
    o.bidirectional = true;
    RecurrentState<S> s;
    LSTM<S>(o).step(randm<S>(2, 3), s);
  });
  t.shape("LSTM::step with x of the wrong width", {"LSTM::step", "x is [2, 4]"}, [] {
    RecurrentState<S> s;
    LSTM<S>(rnn_options()).step(randm<S>(2, 4), s);
  });
  t.shape("LSTM::step with a state of another batch", {"LSTM::step", "state.h is [1, 3, 4]"}, [] {
    const LSTM<S> lstm(rnn_options());
    RecurrentState<S> s = lstm.zero_state(3);
    lstm.step(randm<S>(2, 3), s);
  });
  t.index("GRU::load_state_dict without bias_hh_l0", {"load_vector", "bias_hh_l0"}, [] {
    GRU<S>(rnn_options()).load_state_dict(state([](SafeTensorsWriter& w) {
      w.add("weight_ih_l0", randn<S>({12, 3}));
      w.add("weight_hh_l0", randn<S>({12, 4}));
      w.add("bias_ih_l0", randn<S>({12}));
    }));
  });
  t.value("LSTM::forward with NaN in input", {"LSTM::forward", "input", "non-finite"}, [] {
    LSTM<S>(rnn_options()).forward(poison(randn<S>({5, 2, 3}), nan_v<S>));
  });
  t.value("LSTM::forward with NaN in a step before its length",
          {"LSTM::forward", "input has a non-finite value (nan) at [2, 1, 0]"}, [] {
            Tensor<S> x = randn<S>({5, 2, 3});
            x(2, 1, 0) = nan_v<S>;  // sequence 1 has length 3: step 2 is read
            LSTM<S>(rnn_options()).forward(x, {}, {5, 3});
          });
  t.ok("LSTM::forward with NaN only in padded steps", [] {
    Tensor<S> x = randn<S>({5, 2, 3});
    x(3, 1, 0) = x(4, 1, 2) = nan_v<S>;  // sequence 1 has length 3: steps 3, 4 are padding
    CHECK(all_finite(LSTM<S>(rnn_options()).forward(x, {}, {5, 3}).output));
  });
  t.value("LSTM::forward with +inf in h_0", {"LSTM::forward", "h_0", "non-finite"}, [] {
    LSTM<S>(rnn_options())
        .forward(randn<S>({5, 2, 3}), {poison(randn<S>({1, 2, 4}), inf_v<S>), Tensor<S>()});
  });
  t.value("RNN::forward with NaN in h_0", {"RNN::forward", "h_0", "non-finite"}, [] {
    RNN<S>(rnn_options())
        .forward(randn<S>({5, 2, 3}), {poison(randn<S>({1, 2, 4}), nan_v<S>), Tensor<S>()});
  });
  t.value("GRU::step with NaN in x", {"GRU::step", "x", "non-finite"}, [] {
    RecurrentState<S> s;
    GRU<S>(rnn_options()).step(poison(randm<S>(2, 3), nan_v<S>), s);
  });
  t.value("LSTM::step with NaN in state.c", {"LSTM::step", "state.c", "non-finite"}, [] {
    const LSTM<S> lstm(rnn_options());
    RecurrentState<S> s = lstm.zero_state(2);
    s.c = poison(s.c, nan_v<S>);
    lstm.step(randm<S>(2, 3), s);
  });

  // alignment
  const std::string bah = "BahdanauAttention::forward", luong = "LuongAttention::forward";
  t.value("BahdanauAttention with attention_size 0", {"BahdanauAttention", "attention_size"},
          [] { BahdanauAttention<S>(4, 3, 0); });
  t.shape("BahdanauAttention::forward with query of the wrong width", {bah, "query is [2, 5]"}, [] {
    BahdanauAttention<S>(4, 3, 6).forward(randm<S>(2, 5), randn<S>({2, 7, 3}));
  });
  t.shape("BahdanauAttention::forward with keys of another batch", {bah, "keys is [3, 7, 3]"}, [] {
    BahdanauAttention<S>(4, 3, 6).forward(randm<S>(2, 4), randn<S>({3, 7, 3}));
  });
  t.shape("BahdanauAttention::forward with no keys", {bah, "keys is [2, 0, 3]"}, [] {
    BahdanauAttention<S>(4, 3, 6).forward(randm<S>(2, 4), Tensor<S>({2, 0, 3}));
  });
  t.shape("BahdanauAttention::forward with a key_padding_mask of the wrong size",
          {bah, "key_padding_mask is [2, 6]"}, [] {
            BahdanauAttention<S>(4, 3, 6).forward(randm<S>(2, 4), randn<S>({2, 7, 3}),
                                                  BoolMatrix::Constant(2, 6, false));
          });
  t.shape("BahdanauAttention::forward with projected_keys of the wrong shape",
          {bah, "projected_keys is [2, 7, 5]"}, [] {
            BahdanauAttention<S>(4, 3, 6).forward(randm<S>(2, 4), randn<S>({2, 7, 3}), BoolMatrix(),
                                                  randn<S>({2, 7, 5}));
          });
  t.shape("BahdanauAttention::project_keys with keys of the wrong width",
          {"BahdanauAttention::project_keys", "keys is [2, 7, 4]"}, [] {
            BahdanauAttention<S>(4, 3, 6).project_keys(randn<S>({2, 7, 4}));
          });
  t.value("LuongAttention dot with query_size != key_size",
          {"LuongAttention", "query_size == key_size"},
          [] { LuongAttention<S>(LuongScore::dot, 4, 3); });
  t.value("LuongAttention concat with attention_size 0", {"LuongAttention", "attention_size"},
          [] { LuongAttention<S>(LuongScore::concat, 4, 3, 0); });
  t.shape("LuongAttention::forward with keys of the wrong width", {luong, "keys is [2, 7, 4]"}, [] {
    LuongAttention<S>(LuongScore::general, 4, 3).forward(randm<S>(2, 4), randn<S>({2, 7, 4}));
  });
  t.shape("LuongAttention::forward with a key_padding_mask of the wrong size",
          {luong, "key_padding_mask is [1, 7]"}, [] {
            LuongAttention<S>(LuongScore::dot, 3, 3)
                .forward(randm<S>(2, 3), randn<S>({2, 7, 3}), BoolMatrix::Constant(1, 7, false));
          });
  t.value("BahdanauAttention::forward with NaN in query", {bah, "query", "non-finite"}, [] {
    BahdanauAttention<S>(4, 3, 6).forward(poison(randm<S>(2, 4), nan_v<S>), randn<S>({2, 7, 3}));
  });
  t.value("BahdanauAttention::forward with +inf in projected_keys",
          {bah, "projected_keys", "non-finite"}, [] {
            BahdanauAttention<S>(4, 3, 6).forward(randm<S>(2, 4), randn<S>({2, 7, 3}), BoolMatrix(),
                                                  poison(randn<S>({2, 7, 6}), inf_v<S>));
          });
  t.value("LuongAttention::forward with NaN in keys", {luong, "keys", "non-finite"}, [] {
    LuongAttention<S>(LuongScore::dot, 3, 3)
        .forward(randm<S>(2, 3), poison(randn<S>({2, 7, 3}), nan_v<S>));
  });

  // decoding and the encoder-decoder
  t.value("greedy_decode with max_length 0", {"greedy_decode", "max_length is 0"}, [] {
    DecodeOptions o;
    o.max_length = 0;
    greedy_decode(FixedModel<S>{Matrix<S>::Zero(1, 4)}, o);
  });
  t.index("greedy_decode with bos out of range", {"greedy_decode", "bos is 4"}, [] {
    DecodeOptions o;
    o.bos = 4;
    greedy_decode(FixedModel<S>{Matrix<S>::Zero(1, 4)}, o);
  });
  t.index("beam_search with eos -1", {"beam_search", "eos is -1"}, [] {
    DecodeOptions o;
    o.eos = -1;
    beam_search(FixedModel<S>{Matrix<S>::Zero(1, 4)}, o);
  });
  t.value("beam_search with beam_width 0", {"beam_search", "beam_width is 0"}, [] {
    DecodeOptions o;
    o.beam_width = 0;
    beam_search(FixedModel<S>{Matrix<S>::Zero(1, 4)}, o);
  });
  t.value("beam_search with a NaN length_penalty", {"beam_search", "length_penalty is"}, [] {
    DecodeOptions o;
    o.length_penalty = std::numeric_limits<double>::quiet_NaN();
    beam_search(FixedModel<S>{Matrix<S>::Zero(1, 4)}, o);
  });
  t.value("greedy_decode with a model returning NaN",
          {"greedy_decode", "log-probability of token 2"}, [] {
            greedy_decode(FixedModel<S>{poison(Matrix<S>::Zero(1, 4).eval(), nan_v<S>, 2)},
                          DecodeOptions());
          });
  t.shape("beam_search with a model returning the wrong shape", {"beam_search", "[1, 3]"},
          [] { beam_search(FixedModel<S>{Matrix<S>::Zero(1, 3)}, DecodeOptions()); });
  const auto seq2seq = [] {
    Seq2SeqOptions o;
    o.source_vocab = 5;
    o.target_vocab = 6;
    o.embedding_dim = 4;
    o.hidden_size = 4;
    o.attention = AttentionKind::bahdanau;
    return Seq2Seq<S>(o);
  };
  t.value("Seq2Seq with target_vocab 0", {"Seq2Seq", "target_vocab"}, [] {
    Seq2SeqOptions o;
    o.source_vocab = 5;
    o.embedding_dim = o.hidden_size = 4;
    Seq2Seq<S>{o};
  });
  t.value("Seq2Seq with input_feeding but no Luong attention", {"Seq2Seq", "input_feeding"}, [] {
    Seq2SeqOptions o;
    o.source_vocab = o.target_vocab = 5;
    o.embedding_dim = o.hidden_size = 4;
    o.input_feeding = true;
    Seq2Seq<S>{o};
  });
  t.value("Seq2Seq::encode of an empty source", {"Seq2Seq::encode", "source is empty"},
          [seq2seq] { seq2seq().encode({}); });
  t.index("Seq2Seq::encode with an id out of range", {"Seq2Seq::encode", "source[1] is 5"},
          [seq2seq] {
            seq2seq().encode({1, 5});
          });
  t.index("Seq2Seq::step with a token out of range", {"Seq2Seq::step", "token is -1"}, [seq2seq] {
    const Seq2Seq<S> m = seq2seq();
    const Seq2SeqMemory<S> mem = m.encode({1, 2});
    Seq2SeqState<S> s = m.start(mem);
    m.step(-1, s, mem);
  });
}

template <typename S>
void transformer_rows(Table& t) {
  const std::string enc = "TransformerEncoderLayer", dec = "TransformerDecoderLayer";
  t.value("TransformerEncoderLayer with d_model 0", {enc, "d_model is 0"},
          [] { TransformerEncoderLayer<S>{layer_options(0, 2)}; });
  t.value("TransformerEncoderLayer with nhead not dividing d_model", {enc, "nhead 3"},
          [] { TransformerEncoderLayer<S>{layer_options(8, 3)}; });
  t.value("TransformerEncoderLayer with dim_feedforward 0", {enc, "dim_feedforward is 0"}, [] {
    TransformerLayerOptions o = layer_options();
    o.dim_feedforward = 0;
    TransformerEncoderLayer<S>{o};
  });
  t.value("TransformerDecoderLayer with a NaN layer_norm_eps", {dec, "layer_norm_eps is"}, [] {
    TransformerLayerOptions o = layer_options();
    o.layer_norm_eps = std::numeric_limits<double>::quiet_NaN();
    TransformerDecoderLayer<S>{o};
  });
  t.value("TransformerEncoder with num_layers 0", {"TransformerEncoder", "num_layers is 0"},
          [] { TransformerEncoder<S>(layer_options(), 0); });
  t.value("TransformerDecoder with num_layers -1", {"TransformerDecoder", "num_layers is -1"},
          [] { TransformerDecoder<S>(layer_options(), -1); });
  t.shape("TransformerEncoderLayer::forward with src of the wrong width",
          {"TransformerEncoderLayer::forward", "src is [3, 2, 6]"}, [] {
            TransformerEncoderLayer<S>(layer_options()).forward(randn<S>({3, 2, 6}));
          });
  t.shape("TransformerEncoderLayer::forward with a rank-4 src",
          {"TransformerEncoderLayer::forward", "src is [1, 3, 2, 8]"}, [] {
            TransformerEncoderLayer<S>(layer_options()).forward(randn<S>({1, 3, 2, 8}));
          });
  t.shape("TransformerEncoderLayer::forward with a src_mask of the wrong size",
          {"TransformerEncoderLayer::forward", "src_mask is"}, [] {
            TransformerEncoderLayerArgs a;
            a.src_mask = Mask::from_torch_mha(Tensor<bool>({3, 4}, false), 2);
            TransformerEncoderLayer<S>(layer_options()).forward(randn<S>({3, 2, 8}), a);
          });
  t.shape("TransformerEncoderLayer::forward with a src_key_padding_mask of the wrong size",
          {"TransformerEncoderLayer::forward", "src_key_padding_mask is"}, [] {
            TransformerEncoderLayerArgs a;
            a.src_key_padding_mask = Mask::key_padding(Tensor<bool>({2, 4}, false));
            TransformerEncoderLayer<S>(layer_options()).forward(randn<S>({3, 2, 8}), a);
          });
  // The check is MultiheadAttention's: the message names its function and argument.
  t.value(
      "TransformerEncoderLayer::forward with NaN in src",
      {"MultiheadAttention::forward", "query", "non-finite"}, [] {
        TransformerEncoderLayer<S>(layer_options()).forward(poison(randn<S>({3, 2, 8}), nan_v<S>));
      });
  t.ok("TransformerEncoderLayer::forward of an empty sequence", [] {
    CHECK(TransformerEncoderLayer<S>(layer_options()).forward(Tensor<S>({0, 2, 8})).shape() ==
          Shape{0, 2, 8});
  });
  t.shape("TransformerDecoderLayer::forward with memory of another batch",
          {"TransformerDecoderLayer::forward", "memory is [4, 3, 8]"}, [] {
            TransformerDecoderLayer<S>(layer_options())
                .forward(randn<S>({3, 2, 8}), randn<S>({4, 3, 8}));
          });
  t.shape("TransformerDecoderLayer::forward with a memory_mask of the wrong size",
          {"TransformerDecoderLayer::forward", "memory_mask is"}, [] {
            TransformerDecoderLayerArgs a;
            a.memory_mask = Mask::from_torch_mha(Tensor<bool>({3, 3}, false), 2);
            TransformerDecoderLayer<S>(layer_options())
                .forward(randn<S>({3, 2, 8}), randn<S>({4, 2, 8}), a);
          });
  t.shape("TransformerDecoderLayer::forward with a tgt_key_padding_mask of the wrong size",
          {"TransformerDecoderLayer::forward", "tgt_key_padding_mask is"}, [] {
            TransformerDecoderLayerArgs a;
            a.tgt_key_padding_mask = Mask::key_padding_lengths({1, 2}, 4);
            TransformerDecoderLayer<S>(layer_options())
                .forward(randn<S>({3, 2, 8}), randn<S>({4, 2, 8}), a);
          });
  t.value("TransformerDecoderLayer::forward with NaN in memory",
          {"MultiheadAttention::forward", "key", "non-finite"}, [] {
            TransformerDecoderLayer<S>(layer_options())
                .forward(randn<S>({3, 2, 8}), poison(randn<S>({4, 2, 8}), nan_v<S>));
          });
  t.ok("TransformerDecoderLayer::forward with an empty memory", [] {
    const Tensor<S> y = TransformerDecoderLayer<S>(layer_options())
                            .forward(randn<S>({3, 2, 8}), Tensor<S>({0, 2, 8}));
    CHECK(y.shape() == Shape{3, 2, 8});
    CHECK(all_finite(y));
  });
  t.value("TransformerDecoderLayer::make_cache with batch 0", {"KVCache", "batch is 0"},
          [] { TransformerDecoderLayer<S>(layer_options()).make_cache(0, 4); });
  t.shape("TransformerDecoderLayer::forward_step with a cache of another batch",
          {"TransformerDecoderLayer::forward_step", "cache is for batch 2"}, [] {
            const TransformerDecoderLayer<S> layer(layer_options());
            TransformerDecoderLayerCache<S> cache = layer.make_cache(2, 4);
            layer.forward_step(randn<S>({1, 1, 8}), randn<S>({4, 1, 8}), cache);
          });
  t.index("TransformerDecoderLayer::forward_step past max_len",
          {"append_keys_values", "kv_input has 3 new"}, [] {
            const TransformerDecoderLayer<S> layer(layer_options());
            TransformerDecoderLayerCache<S> cache = layer.make_cache(1, 2);
            layer.forward_step(randn<S>({3, 1, 8}), randn<S>({4, 1, 8}), cache);
          });
  t.value("TransformerDecoderLayer::forward_step with NaN in tgt",
          {"append_keys_values", "kv_input", "non-finite"}, [] {
            const TransformerDecoderLayer<S> layer(layer_options());
            TransformerDecoderLayerCache<S> cache = layer.make_cache(1, 4);
            layer.forward_step(poison(randn<S>({1, 1, 8}), nan_v<S>), randn<S>({4, 1, 8}), cache);
          });
  t.shape("TransformerDecoder::forward_step with a cache of another depth",
          {"TransformerDecoder::forward_step", "cache has 0 layers"}, [] {
            TransformerDecoderCache<S> cache;
            TransformerDecoder<S>(layer_options(), 2)
                .forward_step(randn<S>({1, 1, 8}), randn<S>({4, 1, 8}), cache);
          });
  t.shape("TransformerEncoder::forward with src of the wrong width",
          {"TransformerEncoderLayer::forward", "src is [3, 2, 7]"}, [] {
            TransformerEncoder<S>(layer_options(), 2).forward(randn<S>({3, 2, 7}));
          });
  t.value("TransformerDecoder::forward with NaN in tgt",
          {"MultiheadAttention::forward", "query", "non-finite"}, [] {
            TransformerDecoder<S>(layer_options(), 2)
                .forward(poison(randn<S>({3, 2, 8}), nan_v<S>), randn<S>({4, 2, 8}));
          });
  t.shape("Transformer::forward with tgt of another batch",
          {"Transformer::forward", "tgt is [3, 1, 8]"}, [] {
            TransformerOptions o;
            o.layer = layer_options();
            o.num_encoder_layers = o.num_decoder_layers = 1;
            Transformer<S>(o).forward(randn<S>({4, 2, 8}), randn<S>({3, 1, 8}));
          });
  t.value("Transformer with num_decoder_layers 0", {"TransformerDecoder", "num_layers is 0"}, [] {
    TransformerOptions o;
    o.layer = layer_options();
    o.num_decoder_layers = 0;
    Transformer<S>{o};
  });

  // the token-level encoder-decoder
  const auto t2t = [] {
    TransformerSeq2SeqOptions o;
    o.transformer.layer = layer_options();
    o.transformer.num_encoder_layers = o.transformer.num_decoder_layers = 1;
    o.src_vocab_size = 5;
    o.tgt_vocab_size = 6;
    o.max_len = 8;
    return TransformerSeq2Seq<S>(o);
  };
  t.value("TransformerSeq2Seq with tgt_vocab_size 0", {"TransformerSeq2Seq", "tgt_vocab_size 0"},
          [] {
            TransformerSeq2SeqOptions o;
            o.transformer.layer = layer_options();
            o.src_vocab_size = 5;
            TransformerSeq2Seq<S>{o};
          });
  t.shape("TransformerSeq2Seq::encode with rank-3 src", {"TransformerSeq2Seq::encode", "src is"},
          [t2t] {
            t2t().encode(Tensor<std::int64_t>({2, 1, 1}));
          });
  t.index("TransformerSeq2Seq::encode with an id out of range",
          {"TransformerSeq2Seq::encode", "src", "token id 5"}, [t2t] {
            t2t().encode(Tensor<std::int64_t>({2}, std::vector<std::int64_t>{1, 5}));
          });
  t.index("TransformerSeq2Seq::encode past max_len", {"TransformerSeq2Seq::encode", "max_len 8"},
          [t2t] { t2t().encode(Tensor<std::int64_t>({9}, 0)); });
  t.index("TransformerSeq2Seq::embed_target at the largest first_position",
          {"TransformerSeq2Seq::embed_target", "tgt", "max_len 8"}, [t2t] {
            // first_position + L must not overflow Index, not even in the message.
            t2t().embed_target(Tensor<std::int64_t>({2}, 0), index_max);
          });
  t.index("TransformerSeq2Seq::forward with a tgt id out of range",
          {"TransformerSeq2Seq::decode", "tgt", "token id -1"},
          [t2t] { t2t().forward(Tensor<std::int64_t>({3}, 1), Tensor<std::int64_t>({2}, -1)); });
  t.shape("TransformerSeq2Seq::decode with memory of the wrong width",
          {"TransformerDecoderLayer::forward", "memory is [3, 7]"}, [t2t] {
            t2t().decode(Tensor<std::int64_t>({2}, 1), randn<S>({3, 7}));
          });
  t.value("TransformerSeq2Seq::decode with NaN in memory",
          {"MultiheadAttention::forward", "key", "non-finite"}, [t2t] {
            t2t().decode(Tensor<std::int64_t>({2}, 1), poison(randn<S>({3, 8}), nan_v<S>));
          });
  // Finding: the message comes from append_keys_values (the decoder layers' cache step).
  t.index("TransformerSeq2Seq::decode_step past the cache",
          {"append_keys_values", "kv_input has 2 new", "capacity 1"}, [t2t] {
            const TransformerSeq2Seq<S> m = t2t();
            TransformerDecoderCache<S> cache = m.make_cache(1, 1);
            m.decode_step(Tensor<std::int64_t>({2}, 1), randn<S>({3, 8}), cache);
          });
  t.value("TransformerSeq2SeqDecoder with max_steps -1",
          {"TransformerSeq2SeqDecoder", "max_steps is -1"}, [t2t] {
            TransformerSeq2SeqDecoder<S>(t2t(), {1, 2}, true, -1);
          });
  t.index("TransformerSeq2SeqDecoder::step with a token out of range",
          {"TransformerSeq2Seq::decode_step", "token id 6"}, [t2t] {
            const TransformerSeq2Seq<S> m = t2t();
            const TransformerSeq2SeqDecoder<S> d(m, {1, 2});
            auto state = d.initial_state();
            d.step(6, state);
          });
  t.index("TransformerSeq2SeqDecoder::step past max_steps (no cache)",
          {"TransformerSeq2SeqDecoder::step", "max_steps"}, [t2t] {
            const TransformerSeq2Seq<S> m = t2t();
            const TransformerSeq2SeqDecoder<S> d(m, {1, 2}, false, 1);
            auto state = d.initial_state();
            d.step(1, state);
            d.step(1, state);
          });
}

template <typename S>
Table table() {
  Table t;
  core_rows<S>(t);
  ops_rows<S>(t);
  embedding_rows<S>(t);
  mask_rows<S>(t);
  attention_rows<S>(t);
  multihead_rows<S>(t);
  io_rows<S>(t);
  text_rows(t);
  rnn_rows<S>(t);
  transformer_rows<S>(t);
  return t;
}

/// Runs one error row: the type, then the words of the message.
void check_row(const Row& r) {
  switch (r.want) {
    case Want::shape:
      REQUIRE_THROWS_AS(r.call(), shape_error);
      break;
    case Want::index:
      REQUIRE_THROWS_AS(r.call(), index_error);
      break;
    case Want::value:
      REQUIRE_THROWS_AS(r.call(), value_error);
      break;
    case Want::format:
      REQUIRE_THROWS_AS(r.call(), format_error);
      break;
    case Want::error:
      REQUIRE_THROWS_AS(r.call(), attend::error);
      break;
    case Want::ok:
      REQUIRE_NOTHROW(r.call());
      return;
  }
  std::string message;
  try {
    r.call();
  } catch (const std::exception& e) {
    message = e.what();
  }
  for (const std::string& word : r.needles) CHECK_THAT(message, Catch::Contains(word));
}

}  // namespace

TEMPLATE_TEST_CASE("bad input: every public entry point rejects bad arguments by name",
                   "[bad_input]", float, double) {
  const Table t = table<TestType>();
  SECTION("the table: unique names, words to look for in every error row") {
    std::set<std::string> names;
    for (const Row& r : t.rows) {
      INFO(r.what);
      CHECK(names.insert(r.what).second);
      CHECK((r.want == Want::ok || !r.needles.empty()));
    }
  }
  for (const Row& r : t.rows) {
    DYNAMIC_SECTION(r.what) { check_row(r); }
  }
}
