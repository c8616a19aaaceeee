// SPDX-License-Identifier: MIT
// The conformance runner's case loader and checker: runs one docs/fixtures.md case file.
#pragma once

#include "attend/attend.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace attend::conformance {

/// Thrown when a case needs a module or option the library does not handle.
class unsupported : public std::runtime_error {
 public:
  explicit unsupported(const std::string& what) : std::runtime_error(what) {}
};

/// The verdict on one case.
struct CaseResult {
  enum class Status { pass, fail, unsupported };
  Status status = Status::fail;
  std::string detail;        // FAIL or UNSUPPORTED reason; empty on PASS
  double max_abs_err = 0.0;  // over every checked tensor (PASS)
};

namespace detail {

using json = nlohmann::json;

/// One implementation a case runs through: the attention path and fused-kernel variant
/// set process-wide while it runs (attend::ScopedAttentionPath), and its name for FAIL
/// lines ("reference", "fused/avx2", ...; empty for modules with a single path).
struct RunPath {
  AttentionPath path = AttentionPath::automatic;
  FusedKernel kernel = FusedKernel::automatic;
  std::string name;
  bool fused() const { return path == AttentionPath::fused; }
};

/// A case file: tensors, module name, options and tolerances.
struct Case {
  const SafeTensors* st = nullptr;
  std::string module;
  json options = json::object();
  double rtol = 1e-5;  // torch.allclose's defaults when the file gives none
  double atol = 1e-8;
  RunPath path;  // the implementation of the current run
};

/// Modules whose forward the library runs by either the reference attention or the fused
/// kernel (chosen by attend::attention_path()).
inline bool uses_attention(const std::string& module) {
  return module == "scaled_dot_product_attention" || module == "multihead_attention" ||
         module.rfind("transformer", 0) == 0;
}

/// Every implementation the library would pick for the case: the reference attention and
/// the fused kernel in each variant the CPU runs (double: the portable tiles only) for
/// modules with attention; their training path (a cache of the weights) is the reference
/// alone, except scaled_dot_product_attention, whose fused backward is checked too.
inline std::vector<RunPath> paths_for(const std::string& module, bool gradient_case,
                                      bool is_float) {
  if (!uses_attention(module)) return {RunPath{}};
  if (gradient_case && module != "scaled_dot_product_attention") {
    return {RunPath{AttentionPath::reference, FusedKernel::automatic, ""}};
  }
  std::vector<RunPath> paths{{AttentionPath::reference, FusedKernel::automatic, "reference"}};
  const std::vector<FusedKernel> kernels =
      is_float ? fused_kernels_supported() : std::vector<FusedKernel>{FusedKernel::portable};
  for (const FusedKernel k : kernels) {
    paths.push_back({AttentionPath::fused, k, std::string("fused/") + fused_kernel_name(k)});
  }
  return paths;
}

inline double parse_tolerance(const std::map<std::string, std::string>& meta, const char* key,
                              double fallback) {
  const auto it = meta.find(key);
  if (it == meta.end()) return fallback;
  std::size_t used = 0;
  double v = 0.0;
  try {
    v = std::stod(it->second, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != it->second.size() || !(v >= 0.0) || !std::isfinite(v)) {
    throw format_error(std::string("metadata '") + key + "' is \"" + it->second +
                       "\", expected a non-negative decimal number");
  }
  return v;
}

/// An option's value for a message: scalars as JSON text, containers by type only
/// (dumping a hostile, deeply nested value would recurse until the stack overflows).
inline std::string describe(const json& v) {
  return v.is_structured() ? std::string("a JSON ") + v.type_name() : v.dump();
}

/// Rejects options the runner does not know, so a case is never silently misread.
inline void allow_options(const Case& c, std::initializer_list<const char*> known) {
  const std::set<std::string> ok(known.begin(), known.end());
  for (auto it = c.options.begin(); it != c.options.end(); ++it) {
    if (!ok.count(it.key())) throw unsupported("option '" + it.key() + "' of " + c.module);
  }
}

/// Rejects `input.` tensors the module does not take: ignoring one would misread the case.
inline void allow_inputs(const Case& c, std::initializer_list<const char*> known) {
  const std::set<std::string> ok(known.begin(), known.end());
  for (const std::string& name : c.st->names()) {
    if (name.rfind("input.", 0) == 0 && !ok.count(name.substr(6))) {
      throw unsupported("input '" + name.substr(6) + "' of " + c.module);
    }
  }
}

inline bool opt_bool(const Case& c, const char* name, bool fallback) {
  const auto it = c.options.find(name);
  if (it == c.options.end() || it->is_null()) return fallback;
  if (it->is_boolean()) return it->get<bool>();
  if (it->is_number_integer() && (it->get<std::int64_t>() == 0 || it->get<std::int64_t>() == 1)) {
    return it->get<std::int64_t>() == 1;
  }
  throw format_error(std::string("option '") + name + "' is " + describe(*it) +
                     ", expected a boolean");
}

inline std::optional<Index> opt_int(const Case& c, const char* name) {
  const auto it = c.options.find(name);
  if (it == c.options.end() || it->is_null()) return std::nullopt;
  if (it->is_number_integer()) return static_cast<Index>(it->get<std::int64_t>());
  throw format_error(std::string("option '") + name + "' is " + describe(*it) +
                     ", expected an integer");
}

inline Index opt_required_int(const Case& c, const char* name) {
  const auto v = opt_int(c, name);
  if (!v) throw format_error(std::string("option '") + name + "' is required for " + c.module);
  return *v;
}

inline std::optional<double> opt_number(const Case& c, const char* name) {
  const auto it = c.options.find(name);
  if (it == c.options.end() || it->is_null()) return std::nullopt;
  if (it->is_number()) return it->get<double>();
  throw format_error(std::string("option '") + name + "' is " + describe(*it) +
                     ", expected a number");
}

inline std::string opt_string(const Case& c, const char* name, const std::string& fallback) {
  const auto it = c.options.find(name);
  if (it == c.options.end() || it->is_null()) return fallback;
  if (it->is_string()) return it->get<std::string>();
  throw format_error(std::string("option '") + name + "' is " + describe(*it) +
                     ", expected a string");
}

/// Dropout options are accepted only when they are zero (fixtures run in eval mode).
inline void ignore_dropout(const Case& c, const char* name) {
  const auto p = opt_number(c, name);
  if (p && *p != 0.0) throw unsupported("option '" + std::string(name) + "' != 0 (training mode)");
}

inline bool is_bool_dtype(DType d) { return d == DType::BOOL || d == DType::I64; }

/// A mask tensor: BOOL/I64 means true = blocked; F32/F64 is additive. `heads` > 0 splits a
/// 3-D MHA mask [B * heads, L, S].
template <typename S>
Mask read_mask(const Case& c, const std::string& name, Index heads) {
  // PyTorch broadcasts an SDPA mask of rank < 2 ([S] or a scalar) as [1, S] or [1, 1];
  // the Mask type takes rank >= 2. (MHA masks must be 2-D or 3-D, as in PyTorch.)
  const auto at_least_2d = [heads](auto m) {
    if (heads > 0 || m.rank() >= 2) return m;
    return m.reshaped({1, m.rank() == 1 ? m.dim(0) : 1});
  };
  if (is_bool_dtype(c.st->dtype(name))) {
    const Tensor<bool> m = at_least_2d(c.st->get<bool>(name));
    return heads > 0 ? Mask::from_torch_mha(m, heads) : Mask::deny(m);
  }
  const Tensor<S> m = at_least_2d(c.st->get<S>(name));
  return heads > 0 ? Mask::from_torch_mha_additive(m, heads) : Mask::additive(m);
}

/// Rejects a key with S = 0 positions (S on axis `s_axis`): every score row would be
/// empty, i.e. fully masked, which docs/fixtures.md excludes (attend's softmax asserts on it).
template <typename S>
void no_empty_rows(const Tensor<S>& key, Index s_axis) {
  if (s_axis >= 0 && s_axis < key.rank() && key.dim(s_axis) == 0) {
    throw format_error("input.key is " + attend::detail::shape_string(key.shape()) +
                       ": S = 0 keys leave every query row fully masked");
  }
}

template <typename S>
using Outputs = std::map<std::string, Tensor<S>>;

/// A softmax case's axis (option `dim`, default -1) as strided rows of `shape`: element j
/// of row (o, in) is at flat index (o * n + j) * inner + in.
struct SoftmaxAxis {
  Index outer = 1, n = 0, inner = 1;
};

inline SoftmaxAxis read_softmax_axis(const Case& c, const Shape& shape) {
  const Index r = static_cast<Index>(shape.size());
  Index dim = opt_int(c, "dim").value_or(-1);
  if (dim < 0) dim += r;
  if (r == 0 || dim < 0 || dim >= r) {
    throw format_error("option 'dim' is out of range for input " +
                       attend::detail::shape_string(shape));
  }
  SoftmaxAxis a;
  for (Index i = 0; i < dim; ++i) a.outer *= shape[static_cast<std::size_t>(i)];
  for (Index i = dim + 1; i < r; ++i) a.inner *= shape[static_cast<std::size_t>(i)];
  a.n = shape[static_cast<std::size_t>(dim)];
  return a;
}

template <typename S>
Outputs<S> run_softmax(const Case& c) {
  allow_options(c, {"dim"});
  allow_inputs(c, {"input"});
  const Tensor<S> x = c.st->get<S>("input.input");
  const auto [outer, n, inner] = read_softmax_axis(c, x.shape());
  Tensor<S> y(x.shape());
  if (y.size() == 0) return {{"output", y}};  // attend::softmax asserts on an empty row
  Matrix<S> row(1, n);
  for (Index o = 0; o < outer; ++o) {
    for (Index in = 0; in < inner; ++in) {
      for (Index j = 0; j < n; ++j) row(0, j) = x.data()[(o * n + j) * inner + in];
      const Matrix<S> p = softmax(row);
      for (Index j = 0; j < n; ++j) y.data()[(o * n + j) * inner + in] = p(0, j);
    }
  }
  return {{"output", y}};
}

/// The options of a scaled_dot_product_attention case (scale, enable_gqa, logit_softcap).
inline SdpaOptions read_sdpa_options(const Case& c) {
  SdpaOptions o;
  o.scale = opt_number(c, "scale");
  o.enable_gqa = opt_bool(c, "enable_gqa", false);
  o.logit_softcap = opt_number(c, "logit_softcap");
  return o;
}

/// The inputs of a scaled_dot_product_attention case: query, key, value and the mask
/// (attn_mask and is_causal).
template <typename S>
struct SdpaInputs {
  Tensor<S> q, k, v;
  Mask mask;
};

template <typename S>
SdpaInputs<S> read_sdpa_inputs(const Case& c) {
  SdpaInputs<S> in{c.st->get<S>("input.query"), c.st->get<S>("input.key"),
                   c.st->get<S>("input.value"), Mask()};
  no_empty_rows(in.k, in.k.rank() - 2);
  if (c.st->contains("input.attn_mask")) in.mask = read_mask<S>(c, "input.attn_mask", 0);
  if (opt_bool(c, "is_causal", false)) in.mask = in.mask & Mask::causal(0);
  return in;
}

/// scaled_dot_product_attention on the case's path: the reference (output and weights) or
/// the fused kernel in the path's variant (output only).
template <typename S>
Outputs<S> run_sdpa(const Case& c) {
  allow_options(c, {"is_causal", "scale", "dropout_p", "enable_gqa", "logit_softcap"});
  allow_inputs(c, {"query", "key", "value", "attn_mask"});
  ignore_dropout(c, "dropout_p");
  const SdpaInputs<S> in = read_sdpa_inputs<S>(c);
  const SdpaOptions o = read_sdpa_options(c);
  if (c.path.fused()) {
    return {{"output", scaled_dot_product_attention_fused(in.q, in.k, in.v, in.mask, o)}};
  }
  AttentionResult<S> r = scaled_dot_product_attention(in.q, in.k, in.v, in.mask, o, true);
  return {{"output", r.output}, {"attn_weights", r.attn_weights}};
}

/// The options of a multihead_attention case.
inline MultiheadAttentionOptions read_mha_options(const Case& c) {
  allow_options(c,
                {"embed_dim", "num_heads", "bias", "kdim", "vdim", "batch_first", "need_weights",
                 "average_attn_weights", "is_causal", "dropout", "add_bias_kv", "add_zero_attn"});
  allow_inputs(c, {"query", "key", "value", "key_padding_mask", "attn_mask"});
  ignore_dropout(c, "dropout");
  MultiheadAttentionOptions o;
  o.embed_dim = opt_required_int(c, "embed_dim");
  o.num_heads = opt_required_int(c, "num_heads");
  o.bias = opt_bool(c, "bias", true);
  o.kdim = opt_int(c, "kdim").value_or(0);
  o.vdim = opt_int(c, "vdim").value_or(0);
  o.batch_first = opt_bool(c, "batch_first", false);
  o.add_bias_kv = opt_bool(c, "add_bias_kv", false);
  o.add_zero_attn = opt_bool(c, "add_zero_attn", false);
  if (o.embed_dim > 0 && o.kdim >= 0 && o.vdim >= 0) {
    // The constructor allocates parameters as large as the options say: require the file
    // to hold them first, so a small malformed file cannot make the runner allocate GBs.
    const Index E = o.embed_dim, kdim = o.kdim ? o.kdim : E, vdim = o.vdim ? o.vdim : E;
    std::vector<std::pair<std::string, Shape>> params{{"out_proj.weight", {E, E}}};
    if (kdim == E && vdim == E) {
      params.push_back({"in_proj_weight", {3 * E, E}});
    } else {
      params.push_back({"q_proj_weight", {E, E}});
      params.push_back({"k_proj_weight", {E, kdim}});
      params.push_back({"v_proj_weight", {E, vdim}});
    }
    if (o.add_bias_kv) {
      params.push_back({"bias_k", {1, 1, E}});
      params.push_back({"bias_v", {1, 1, E}});
    }
    for (const auto& p : params) {
      attend::detail::require_parameter(*c.st, p.first, p.second, "multihead_attention");
    }
  }
  return o;
}

/// The forward arguments of a multihead_attention case (masks, weights, is_causal).
template <typename S>
MultiheadAttentionArgs read_mha_args(const Case& c, const MultiheadAttentionOptions& o) {
  MultiheadAttentionArgs a;
  a.need_weights = opt_bool(c, "need_weights", true);
  a.average_attn_weights = opt_bool(c, "average_attn_weights", true);
  a.is_causal = opt_bool(c, "is_causal", false);
  if (c.st->contains("input.key_padding_mask")) {
    // [B, S], or [S] for unbatched input (PyTorch's only form there)
    const std::string name = "input.key_padding_mask";
    if (is_bool_dtype(c.st->dtype(name))) {
      a.key_padding_mask_bool = c.st->get<bool>(name);  // PyTorch's form, checked by forward
    } else {
      const Tensor<S> kp = c.st->get<S>(name);
      if (kp.rank() != 2 && kp.rank() != 1) {
        throw shape_error("key_padding_mask is " + attend::detail::shape_string(kp.shape()) +
                          ", expected [B, S] or [S]");
      }
      const Index B = kp.rank() == 2 ? kp.dim(0) : 1;
      a.key_padding_mask = Mask::additive(kp.reshaped({B, 1, 1, kp.dim(-1)}));
    }
  }
  if (c.st->contains("input.attn_mask")) {
    a.attn_mask = read_mask<S>(c, "input.attn_mask", o.num_heads);
  }
  return a;
}

/// multihead_attention: the reference path as the case asks; a fused path without the
/// weights (the only way the library runs the fused kernel for this module).
template <typename S>
Outputs<S> run_mha(const Case& c) {
  const MultiheadAttentionOptions o = read_mha_options(c);
  MultiheadAttention<S> mha(o);
  mha.load_state_dict(*c.st);
  MultiheadAttentionArgs a = read_mha_args<S>(c, o);
  if (c.path.fused()) a.need_weights = false;
  const Tensor<S> q = c.st->get<S>("input.query");
  const bool has_k = c.st->contains("input.key"), has_v = c.st->contains("input.value");
  if (has_k != has_v)
    throw format_error("input.key and input.value must both be present or absent");
  AttentionResult<S> r;
  if (has_k) {
    const Tensor<S> k = c.st->get<S>("input.key");
    const Tensor<S> v = c.st->get<S>("input.value");
    no_empty_rows(k, k.rank() == 3 && o.batch_first ? 1 : 0);
    r = mha.forward(q, k, v, a);
  } else {
    r = mha.forward(q, a);
  }
  Outputs<S> out{{"output", r.output}};
  if (a.need_weights) out.emplace("attn_weights", r.attn_weights);
  return out;
}

template <typename S>
Outputs<S> run_embedding(const Case& c) {
  allow_options(c, {"num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type",
                    "scale_grad_by_freq", "sparse"});
  allow_inputs(c, {"input"});
  if (opt_number(c, "max_norm")) throw unsupported("option 'max_norm'");
  const Index V = opt_required_int(c, "num_embeddings");
  const Index D = opt_required_int(c, "embedding_dim");
  const Embedding<S> e = Embedding<S>::from_state_dict(*c.st, "", opt_int(c, "padding_idx"));
  if (e.num_embeddings() != V || e.embedding_dim() != D) {
    throw shape_error("weight is " + attend::detail::matrix_shape(e.weight) + ", expected [" +
                      std::to_string(V) + ", " + std::to_string(D) + "]");
  }
  return {{"output", e.forward(c.st->get<std::int64_t>("input.input"))}};
}

template <typename S>
Outputs<S> run_sinusoidal(const Case& c) {
  allow_options(c, {"max_len", "d_model", "layout", "first_position"});
  allow_inputs(c, {});
  const std::string layout = opt_string(c, "layout", "interleaved");
  PositionalLayout l = PositionalLayout::interleaved;
  if (layout == "concatenated") {
    l = PositionalLayout::concatenated;
  } else if (layout != "interleaved") {
    throw unsupported("layout '" + layout + "'");
  }
  const Index max_len = opt_required_int(c, "max_len"), d_model = opt_required_int(c, "d_model");
  // The table's size comes from the options alone: check it against the file before
  // computing it, so a small malformed file cannot ask for max_len * d_model = 1e10 values.
  // Without expected.output (e.g. a renamed tensor) nothing bounds them: a FAIL, not a table.
  const std::string want = "expected.output";
  if (!c.st->contains(want)) {
    throw format_error("no " + want + " tensor: the table's size would come from the options "
                       "alone");
  }
  if (c.st->shape(want) != Shape{max_len, d_model}) {
    throw shape_error(want + " is " + attend::detail::shape_string(c.st->shape(want)) +
                      ", expected [max_len, d_model] = [" + std::to_string(max_len) + ", " +
                      std::to_string(d_model) + "]");
  }
  const Matrix<S> pe = sinusoidal_positional_encoding<S>(max_len, d_model, l,
                                                         opt_int(c, "first_position").value_or(0));
  return {{"output", Tensor<S>::from_matrix(pe)}};
}

// Modules of the other issues, defined in their own files (included at the end).
template <typename S>
bool run_rnn_module(const Case& c, Outputs<S>& out);
template <typename S>
bool run_transformer_module(const Case& c, Outputs<S>& out);

// Gradient cases (upstream./grad. tensors), defined in grad_cases.hpp (included at the end).
inline bool grad_module_supported(const std::string& module);
template <typename S>
bool run_grad_case(const Case& c, Outputs<S>& out);

template <typename S>
Outputs<S> run_module(const Case& c) {
  if (Outputs<S> out; run_rnn_module<S>(c, out)) return out;
  if (Outputs<S> out; run_transformer_module<S>(c, out)) return out;
  if (c.module == "softmax") return run_softmax<S>(c);
  if (c.module == "scaled_dot_product_attention") return run_sdpa<S>(c);
  if (c.module == "multihead_attention") return run_mha<S>(c);
  if (c.module == "embedding") return run_embedding<S>(c);
  if (c.module == "sinusoidal_positional_encoding") return run_sinusoidal<S>(c);
  throw unsupported("module '" + c.module + "'");
}

/// "[i, j, k]" for flat index `flat` of `shape`.
inline std::string index_string(const Shape& shape, Index flat) {
  std::vector<Index> ix(shape.size());
  for (std::size_t k = shape.size(); k-- > 0;) {
    ix[k] = shape[k] == 0 ? 0 : flat % shape[k];
    flat = shape[k] == 0 ? 0 : flat / shape[k];
  }
  return attend::detail::shape_string(ix);
}

inline std::string fmt(double v) {
  std::ostringstream s;
  s.precision(3);
  s << std::scientific << v;
  return s.str();
}

/// Runs a forward case, or the forward and backward of a gradient case.
template <typename S>
Outputs<S> run_any(const Case& c, bool gradient_case) {
  if (!gradient_case) return run_module<S>(c);
  Outputs<S> out;
  if (!run_grad_case<S>(c, out)) {
    throw unsupported("gradient case (grad./upstream. tensors) of " + c.module);
  }
  return out;
}

/// Compares every `expected.X` tensor with got["X"] and every `grad.X` tensor with
/// got["grad.X"]; fills `result`. With `all_outputs` false (a fused path, which computes
/// no attention weights) tensors the run did not produce are skipped, but at least one
/// must be compared.
template <typename S>
void compare(const Case& c, const Outputs<S>& got, CaseResult& result, bool all_outputs = true) {
  double max_abs = 0.0;
  int compared = 0;
  for (const std::string& name : c.st->names()) {
    const bool is_grad = name.rfind("grad.", 0) == 0;
    if (name.rfind("expected.", 0) != 0 && !is_grad) continue;
    const std::string out_name = is_grad ? name : name.substr(9);
    const auto it = got.find(out_name);
    if (it == got.end()) {
      if (!all_outputs) continue;
      throw unsupported((is_grad ? "gradient '" + name.substr(5) : "output '" + out_name) +
                        "' of " + c.module);
    }
    ++compared;
    const Tensor<double> want = c.st->get<S>(name).template cast<double>();
    const Tensor<double> have = it->second.template cast<double>();
    if (want.shape() != have.shape()) {
      result.status = CaseResult::Status::fail;
      result.detail = name + ": shape " + attend::detail::shape_string(have.shape()) +
                      ", expected " + attend::detail::shape_string(want.shape());
      return;
    }
    constexpr double inf = std::numeric_limits<double>::infinity();
    double worst_ratio = -1.0, worst_key = 0.0, worst_err = 0.0, worst_tol = 0.0, tensor_max = 0.0;
    Index worst = -1;
    for (Index i = 0; i < want.size(); ++i) {
      const double w = want.flat()[i], g = have.flat()[i];
      // rtol * |want| only when rtol > 0: 0 * inf would make the tolerance NaN.
      const double tol = c.atol + (c.rtol > 0.0 ? c.rtol * std::abs(w) : 0.0);
      const double err = std::abs(g - w);
      // An infinity passes only when equal (as torch.isclose): |1 - inf| <= rtol * inf
      // must not. NaN fails both tests.
      const bool finite = std::isfinite(g) && std::isfinite(w);
      if (g == w || (finite && err <= tol)) {
        if (g != w) tensor_max = std::max(tensor_max, err);
        continue;
      }
      const double ratio = !finite || tol == 0.0 ? inf : err / tol;
      // Ties (a zero tolerance makes every ratio infinite) go to the larger error.
      const double key = std::isnan(err) ? inf : err;
      if (worst < 0 || ratio > worst_ratio || (ratio == worst_ratio && key > worst_key)) {
        worst_ratio = ratio;
        worst_key = key;
        worst = i;
        worst_err = err;
        worst_tol = tol;
      }
    }
    if (worst >= 0) {
      result.status = CaseResult::Status::fail;
      result.detail = name + ": max_abs_err=" + fmt(worst_err) + " at " +
                      index_string(want.shape(), worst) + " (tolerance " + fmt(worst_tol) + ")";
      return;
    }
    max_abs = std::max(max_abs, tensor_max);
  }
  if (compared == 0) {
    result.status = CaseResult::Status::fail;
    result.detail = "the run produced none of the case's expected. or grad. tensors";
    return;
  }
  result.status = CaseResult::Status::pass;
  result.max_abs_err = max_abs;
}

/// Runs the case through every path of paths_for and compares each run; the first failing
/// path ends it. A failure on a later path (a fused one) ends with "(path <name>)"; one on
/// the first path (the reference, or a module's only path) carries no suffix, as it reads
/// the case the same way every path does. max_abs_err is the largest over the paths.
template <typename S>
void run_and_compare(Case& c, bool gradient_case, CaseResult& result) {
  const std::vector<RunPath> paths = paths_for(c.module, gradient_case, std::is_same_v<S, float>);
  double max_abs = 0.0;
  for (std::size_t i = 0; i < paths.size(); ++i) {
    c.path = paths[i];
    Outputs<S> got;
    try {
      const ScopedAttentionPath scope(c.path.path, c.path.kernel);
      got = run_any<S>(c, gradient_case);
    } catch (const unsupported&) {
      throw;
    } catch (const std::exception& e) {
      if (i == 0) throw;
      throw std::runtime_error(std::string(e.what()) + " (path " + c.path.name + ")");
    }
    compare<S>(c, got, result, i == 0);
    if (result.status != CaseResult::Status::pass) {
      if (i > 0) result.detail += " (path " + c.path.name + ")";
      return;
    }
    max_abs = std::max(max_abs, result.max_abs_err);
  }
  result.max_abs_err = max_abs;
}

}  // namespace detail

/// Runs one case held in memory (the file's bytes). Never throws: a malformed case is a
/// FAIL with the reason, an unknown module or option UNSUPPORTED.
inline CaseResult run_case_bytes(std::vector<std::uint8_t> bytes, const std::string& source) {
  CaseResult result;
  try {
    const SafeTensors st = SafeTensors::parse(std::move(bytes), source);
    detail::Case c;
    c.st = &st;
    const auto& meta = st.metadata();
    const auto m = meta.find("module");
    if (m == meta.end()) throw format_error("metadata has no 'module'");
    c.module = m->second;
    const auto o = meta.find("options");
    if (o != meta.end()) {
      try {
        c.options = detail::json::parse(o->second);
      } catch (const detail::json::parse_error& e) {
        throw format_error(std::string("metadata 'options' is not valid JSON: ") + e.what());
      }
      if (!c.options.is_object()) throw format_error("metadata 'options' is not a JSON object");
    }
    c.rtol = detail::parse_tolerance(meta, "rtol", c.rtol);
    c.atol = detail::parse_tolerance(meta, "atol", c.atol);
    // The case's dtype: that of its float tensors, which must agree.
    std::set<DType> float_dtypes;
    bool gradient_case = false;
    for (const std::string& name : st.names()) {
      const DType d = st.dtype(name);
      if (d == DType::F32 || d == DType::F64 || d == DType::F16 || d == DType::BF16) {
        float_dtypes.insert(d);
      }
      if (name.rfind("grad.", 0) == 0 || name.rfind("upstream.", 0) == 0) gradient_case = true;
    }
    if (gradient_case && !detail::grad_module_supported(c.module)) {
      throw unsupported("gradient case (grad./upstream. tensors) of " + c.module);
    }
    const std::vector<std::string> names = st.names();
    if (std::none_of(names.begin(), names.end(), [&](const std::string& n) {
          return n.rfind("expected.", 0) == 0 || (gradient_case && n.rfind("grad.", 0) == 0);
        })) {
      throw format_error(gradient_case ? "no expected. or grad. tensor: the case checks nothing"
                                       : "no expected. tensor: the case checks nothing");
    }
    if (float_dtypes.size() != 1) {
      throw format_error("float tensors must share one dtype, found " +
                         std::to_string(float_dtypes.size()));
    }
    const DType dt = *float_dtypes.begin();
    if (dt == DType::F32) {
      detail::run_and_compare<float>(c, gradient_case, result);
    } else if (dt == DType::F64) {
      detail::run_and_compare<double>(c, gradient_case, result);
    } else {
      throw unsupported("case dtype " + to_string(dt));
    }
  } catch (const unsupported& e) {
    result.status = CaseResult::Status::unsupported;
    result.detail = e.what();
  } catch (const std::exception& e) {
    result.status = CaseResult::Status::fail;
    result.detail = e.what();
  }
  return result;
}

}  // namespace attend::conformance

#include "rnn_cases.hpp"  // IWYU pragma: keep
#include "transformer_cases.hpp"  // IWYU pragma: keep
#include "grad_cases.hpp"  // IWYU pragma: keep
#include "grad_op_cases.hpp"  // IWYU pragma: keep
