// SPDX-License-Identifier: MIT
// Checkpoints: parameters as a safetensors state dict with PyTorch names, and optimizer
// state (SGD, Adam, AdamW) beside it, saved and restored exactly.
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/io/safetensors.hpp"
#include "attend/io/safetensors_writer.hpp"
#include "attend/io/state_dict.hpp"
#include "attend/train/optim.hpp"
#include "attend/train/parameters.hpp"

#include <Eigen/Core>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace attend {

// ---- parameters: a PyTorch state dict --------------------------------------------------

/// Adds every parameter under its state-dict name, in its PyTorch shape (F32 for float,
/// F64 for double). A file made only of these loads in PyTorch with
/// `model.load_state_dict(safetensors.torch.load_file(path))`.
/// \throws value_error when a name was already added to `writer`.
template <typename Scalar>
void add_parameters(SafeTensorsWriter& writer, const ParameterList<Scalar>& params) {
  for (const auto& p : params) {
    Tensor<Scalar> t(p.shape());
    t.flat() = p.value();
    writer.add(p.name(), t);
  }
}

/// Writes the parameters as a safetensors state dict. \sa add_parameters, load_parameters
/// \throws error when the file cannot be written.
template <typename Scalar>
void save_parameters(const std::string& path, const ParameterList<Scalar>& params) {
  SafeTensorsWriter writer;
  add_parameters(writer, params);
  writer.save(path);
}

/// Loads every parameter by name (converted from F16, BF16, F32 or F64), all or nothing.
/// \param st a parsed state dict \param params the destinations (shapes must match)
/// \param strict also reject tensors of `st` that name no parameter (PyTorch's strict)
/// \throws index_error on a missing parameter or (strict) an unexpected tensor;
///   shape_error on a shape mismatch; value_error on an integer dtype or NaN/Inf. Nothing is
///   changed when anything is wrong.
template <typename Scalar>
void load_parameters(const SafeTensors& st, const ParameterList<Scalar>& params,
                     bool strict = true) {
  const char* who = "load_parameters";
  if (strict) {
    for (const std::string& name : st.names()) {
      if (!params.find(name)) {
        throw index_error(std::string(who) + ": unexpected tensor '" + name + "' in " +
                          st.source() + " (no parameter of that name)");
      }
    }
  }
  std::vector<Tensor<Scalar>> loaded;
  loaded.reserve(static_cast<std::size_t>(params.size()));
  for (const auto& p : params) {
    detail::require_parameter(st, p.name(), p.shape(), who);
    loaded.push_back(st.get<Scalar>(p.name()));
    detail::require_finite(loaded.back(), p.name(), who, st.source());
  }
  for (Index i = 0; i < params.size(); ++i) params[i].value() = loaded[std::size_t(i)].flat();
}

/// Reads the file at `path` and loads it. \sa load_parameters(const SafeTensors&, ...)
template <typename Scalar>
void load_parameters(const std::string& path, const ParameterList<Scalar>& params,
                     bool strict = true) {
  load_parameters(SafeTensors::load(path), params, strict);
}

// ---- optimizer state ---------------------------------------------------------------------
//
// One safetensors file per optimizer. Tensors `state.<parameter name>.<key>` with PyTorch's
// per-parameter keys and the parameter's shape: `momentum_buffer` (SGD); `step` (I64 [],
// exact, where PyTorch 1.13 keeps a float32 scalar), `exp_avg`, `exp_avg_sq` and, with
// amsgrad, `max_exp_avg_sq` (Adam, AdamW). Metadata: `optimizer` ("SGD", "Adam", "AdamW"),
// `param_groups` (one group as PyTorch's state_dict writes it: lr, momentum, betas, ...,
// and `params`, the indices of the parameters) and `param_names` (a JSON list: index ->
// state-dict name, so PyTorch's optimizer.load_state_dict can be fed by index).

namespace detail {

inline const char* optimizer_name(const SGDOptions&) { return "SGD"; }
inline const char* optimizer_name(const AdamOptions&) { return "Adam"; }
inline const char* optimizer_name(const AdamWOptions&) { return "AdamW"; }

inline nlohmann::json options_json(const SGDOptions& o) {
  return {{"lr", o.lr},
          {"momentum", o.momentum},
          {"dampening", o.dampening},
          {"weight_decay", o.weight_decay},
          {"nesterov", o.nesterov},
          {"maximize", o.maximize}};
}
template <typename AdamLike>
nlohmann::json options_json(const AdamLike& o) {
  return {{"lr", o.lr},           {"betas", {o.beta1, o.beta2}},
          {"eps", o.eps},         {"weight_decay", o.weight_decay},
          {"amsgrad", o.amsgrad}, {"maximize", o.maximize}};
}

/// Reads `g[key]` into `out` with the type of `out`; format_error when absent or mistyped.
template <typename T>
void json_field(const nlohmann::json& g, const char* key, T& out, const std::string& source) {
  const auto it = g.find(key);
  const bool ok = it != g.end() && (std::is_same_v<T, bool> ? it->is_boolean() : it->is_number());
  if (!ok) {
    throw format_error("load_optimizer: param_groups in " + source + " has no " +
                       (std::is_same_v<T, bool> ? "boolean" : "number") + " '" + key + "'");
  }
  out = it->template get<T>();
}

inline void options_from_json(const nlohmann::json& g, SGDOptions& o, const std::string& src) {
  json_field(g, "lr", o.lr, src);
  json_field(g, "momentum", o.momentum, src);
  json_field(g, "dampening", o.dampening, src);
  json_field(g, "weight_decay", o.weight_decay, src);
  json_field(g, "nesterov", o.nesterov, src);
  json_field(g, "maximize", o.maximize, src);
}
template <typename AdamLike>
void options_from_json(const nlohmann::json& g, AdamLike& o, const std::string& src) {
  json_field(g, "lr", o.lr, src);
  const auto betas = g.find("betas");
  if (betas == g.end() || !betas->is_array() || betas->size() != 2 || !(*betas)[0].is_number() ||
      !(*betas)[1].is_number()) {
    throw format_error("load_optimizer: param_groups in " + src + " has no 'betas' [b1, b2]");
  }
  o.beta1 = (*betas)[0].template get<double>();
  o.beta2 = (*betas)[1].template get<double>();
  json_field(g, "eps", o.eps, src);
  json_field(g, "weight_decay", o.weight_decay, src);
  json_field(g, "amsgrad", o.amsgrad, src);
  json_field(g, "maximize", o.maximize, src);
}

/// A state buffer [size] as a tensor of the parameter's shape.
template <typename Scalar>
Tensor<Scalar> state_tensor(const Vector<Scalar>& v, const Shape& shape) {
  Tensor<Scalar> t(shape);
  t.flat() = v;
  return t;
}

template <typename Scalar>
void write_state(SafeTensorsWriter& w, const std::string& prefix, const SGDState<Scalar>& s,
                 const Shape& shape) {
  if (s.momentum_buffer.size() != 0) {
    w.add(prefix + "momentum_buffer", state_tensor(s.momentum_buffer, shape));
  }
}
template <typename Scalar>
void write_state(SafeTensorsWriter& w, const std::string& prefix, const AdamState<Scalar>& s,
                 const Shape& shape) {
  if (s.exp_avg.size() == 0) return;  // created but never stepped
  w.add(prefix + "step", Tensor<std::int64_t>(Shape{}, s.step));
  w.add(prefix + "exp_avg", state_tensor(s.exp_avg, shape));
  w.add(prefix + "exp_avg_sq", state_tensor(s.exp_avg_sq, shape));
  if (s.max_exp_avg_sq.size() != 0) {
    w.add(prefix + "max_exp_avg_sq", state_tensor(s.max_exp_avg_sq, shape));
  }
}

/// The per-parameter keys an optimizer's state may hold.
template <typename Scalar>
std::vector<std::string> state_keys(const SGDState<Scalar>&) {
  return {"momentum_buffer"};
}
template <typename Scalar>
std::vector<std::string> state_keys(const AdamState<Scalar>&) {
  return {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
}

/// Reads `name` of shape `shape` as a flat vector (checked, finite).
template <typename Scalar>
Vector<Scalar> read_state_tensor(const SafeTensors& st, const std::string& name,
                                 const Shape& shape) {
  require_parameter(st, name, shape, "load_optimizer");
  const Tensor<Scalar> t = st.get<Scalar>(name);
  require_finite(t, name, "load_optimizer", st.source());
  return t.flat();
}

/// Reads the state of one parameter; \returns false when the file has none for it.
template <typename Scalar>
bool read_state(const SafeTensors& st, const std::string& prefix, const Shape& shape,
                SGDState<Scalar>& s) {
  if (!st.contains(prefix + "momentum_buffer")) return false;
  s.momentum_buffer = read_state_tensor<Scalar>(st, prefix + "momentum_buffer", shape);
  return true;
}
template <typename Scalar>
bool read_state(const SafeTensors& st, const std::string& prefix, const Shape& shape,
                AdamState<Scalar>& s) {
  if (!st.contains(prefix + "step")) return false;
  if (st.dtype(prefix + "step") != DType::I64 || !st.shape(prefix + "step").empty()) {
    throw format_error("load_optimizer: '" + prefix + "step' in " + st.source() +
                       " is not an I64 scalar");
  }
  s.step = st.get<std::int64_t>(prefix + "step").data()[0];
  // The next update computes step + 1 in int64 and beta^step in double: exact up to 2^53.
  constexpr std::int64_t kMaxStep = std::int64_t(1) << 53;
  if (s.step < 0 || s.step > kMaxStep) {
    throw value_error("load_optimizer: '" + prefix + "step' in " + st.source() + " is " +
                      std::to_string(s.step) + ", expected in [0, " + std::to_string(kMaxStep) +
                      "]");
  }
  s.exp_avg = read_state_tensor<Scalar>(st, prefix + "exp_avg", shape);
  s.exp_avg_sq = read_state_tensor<Scalar>(st, prefix + "exp_avg_sq", shape);
  if (st.contains(prefix + "max_exp_avg_sq")) {
    s.max_exp_avg_sq = read_state_tensor<Scalar>(st, prefix + "max_exp_avg_sq", shape);
  }
  return true;
}

}  // namespace detail

/// Adds the optimizer's state and hyperparameters (see the comment above) to `writer`.
/// \param optimizer an SGD, Adam or AdamW \param params the list it steps (names, shapes)
/// \throws index_error when the optimizer holds state for a name that is not in params.
template <typename Optimizer, typename Scalar>
void add_optimizer_state(SafeTensorsWriter& writer, const Optimizer& optimizer,
                         const ParameterList<Scalar>& params) {
  nlohmann::json group = detail::options_json(optimizer.options());
  nlohmann::json names = nlohmann::json::array();
  std::vector<Index> indices;
  for (Index i = 0; i < params.size(); ++i) {
    names.push_back(params[i].name());
    indices.push_back(i);
  }
  group["params"] = indices;
  for (const auto& entry : optimizer.state()) {
    const ParameterRef<Scalar>* p = params.find(entry.first);
    if (!p) {
      throw index_error("add_optimizer_state: the optimizer has state for '" + entry.first +
                        "', which is not in params");
    }
    detail::write_state(writer, "state." + entry.first + ".", entry.second, p->shape());
  }
  writer.set_metadata("optimizer", detail::optimizer_name(optimizer.options()));
  writer.set_metadata("param_groups", nlohmann::json::array({group}).dump());
  writer.set_metadata("param_names", names.dump());
}

/// Writes the optimizer's state to its own safetensors file. \sa load_optimizer
template <typename Optimizer, typename Scalar>
void save_optimizer(const std::string& path, const Optimizer& optimizer,
                    const ParameterList<Scalar>& params) {
  SafeTensorsWriter writer;
  add_optimizer_state(writer, optimizer, params);
  writer.save(path);
}

/// Restores an optimizer from add_optimizer_state's tensors, hyperparameters included (as
/// torch's Optimizer.load_state_dict), all or nothing. Parameters without saved state start
/// fresh; a lr set after loading (a schedule) overrides the saved one.
/// \param optimizer replaced by one built from the saved options, holding the saved state
/// \throws value_error when the file holds another optimizer's state (or invalid options,
///   or an Adam step outside [0, 2^53]);
///   format_error on missing or malformed metadata; index_error on state of a parameter
///   that is not in params; shape_error on a state tensor of the wrong shape.
template <typename Optimizer, typename Scalar>
void load_optimizer(const SafeTensors& st, Optimizer& optimizer,
                    const ParameterList<Scalar>& params) {
  const auto& meta = st.metadata();
  const std::string want = detail::optimizer_name(optimizer.options());
  const auto kind = meta.find("optimizer");
  if (kind == meta.end()) {
    throw format_error("load_optimizer: " + st.source() + " has no 'optimizer' metadata");
  }
  if (kind->second != want) {
    throw value_error("load_optimizer: " + st.source() + " holds " + kind->second +
                      " state, expected " + want);
  }
  const auto groups = meta.find("param_groups");
  nlohmann::json parsed;
  if (groups != meta.end()) parsed = nlohmann::json::parse(groups->second, nullptr, false);
  if (!parsed.is_array() || parsed.size() != 1 || !parsed[0].is_object()) {
    throw format_error("load_optimizer: " + st.source() +
                       " has no 'param_groups' metadata holding one group");
  }
  auto options = optimizer.options();
  detail::options_from_json(parsed[0], options, st.source());
  Optimizer restored(options);  // validates the options
  std::set<std::string> used;
  for (const auto& p : params) {
    const std::string prefix = "state." + p.name() + ".";
    typename std::decay_t<decltype(optimizer.state())>::mapped_type s;
    if (!detail::read_state(st, prefix, p.shape(), s)) continue;
    for (const std::string& key : detail::state_keys(s)) {
      if (st.contains(prefix + key)) used.insert(prefix + key);
    }
    restored.state()[p.name()] = std::move(s);
  }
  for (const std::string& n : st.names()) {
    if (!used.count(n)) {
      throw index_error("load_optimizer: unexpected tensor '" + n + "' in " + st.source() +
                        " (not a known state key of a parameter in params)");
    }
  }
  optimizer = std::move(restored);
}

/// Reads the file at `path` and restores the optimizer from it.
template <typename Optimizer, typename Scalar>
void load_optimizer(const std::string& path, Optimizer& optimizer,
                    const ParameterList<Scalar>& params) {
  load_optimizer(SafeTensors::load(path), optimizer, params);
}

}  // namespace attend
