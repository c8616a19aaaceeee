// SPDX-License-Identifier: MIT
// Named parameters and their gradient buffers: the one visitor optimizers, checks and
// checkpoints use to reach a model's tensors by PyTorch state-dict names.
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/tensor.hpp"
#include "attend/core/types.hpp"
#include "attend/embedding/embedding.hpp"
#include "attend/embedding/learned_positional.hpp"
#include "attend/ops/layer_norm.hpp"
#include "attend/ops/linear.hpp"

#include <Eigen/Core>

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

namespace attend {

// ---- the convention ---------------------------------------------------------------------
//
// Modules own their parameters (`Linear::weight`); their gradients live beside them in a
// gradient struct whose members are `d` + the parameter's name (`LinearGrad::d_weight`),
// filled by the module's backward, which accumulates (+=) until zero_grad. A free function
//
//     named_parameters(module, grads, visit, prefix)
//
// calls `visit(prefix + state_dict_name, parameter, gradient)` once per parameter, in
// PyTorch's `named_parameters()` order. A model composes these in a member
//
//     template <typename Visit> void named_parameters(Visit&& visit) {
//       attend::named_parameters(embed, d_embed, visit, "embed.");
//       attend::named_parameters(fc, d_fc, visit, "fc.");
//     }
//
// and `collect_parameters<S>(model)` turns it into a ParameterList: a list of (name, shape,
// value view, gradient view) that optimizers, gradient checks and checkpoints walk. Not
// mlpack's views into one flat weight vector (docs/style.md section 3).

/// One parameter and its gradient: a PyTorch state-dict name, the PyTorch shape, and flat
/// views of both buffers (row-major order, as the safetensors data).
///
/// A view, not an owner: it stays valid while the module's matrices are not reallocated
/// (resized, or replaced by load_state_dict). Rebuild the list after that.
template <typename Scalar>
class ParameterRef {
  static_assert(is_supported_scalar_v<Scalar>,
                "attend::ParameterRef: Scalar must be float or double");

 public:
  /// \param value, grad `size` elements each (the product of `shape`).
  ParameterRef(std::string name, Shape shape, Scalar* value, Scalar* grad, Index size)
      : name_(std::move(name)), shape_(std::move(shape)), value_(value), grad_(grad), size_(size) {}

  /// The state-dict name, e.g. "out_proj.weight".
  const std::string& name() const noexcept { return name_; }
  /// PyTorch's shape: `[out, in]` for a Linear weight, `[n]` for a bias.
  const Shape& shape() const noexcept { return shape_; }
  /// The number of elements.
  Index size() const noexcept { return size_; }

  /// [size] the parameter, flat (writable: optimizers update through it).
  Eigen::Map<Vector<Scalar>> value() const { return {value_, size_}; }
  /// [size] its gradient, flat.
  Eigen::Map<Vector<Scalar>> grad() const { return {grad_, size_}; }

 private:
  std::string name_;
  Shape shape_;
  Scalar* value_;
  Scalar* grad_;
  Index size_;
};

/// The parameters of a model, in registration order (PyTorch's `named_parameters()` order
/// when the model's visitor follows it). Itself a visitor: `model.named_parameters(list)`
/// registers everything.
template <typename Scalar>
class ParameterList {
  static_assert(is_supported_scalar_v<Scalar>,
                "attend::ParameterList: Scalar must be float or double");

 public:
  using iterator = typename std::vector<ParameterRef<Scalar>>::const_iterator;

  /// Registers a matrix parameter `[rows, cols]`; an empty `grad` becomes zeros of that
  /// shape.
  /// \throws value_error when `name` is already registered; shape_error when a non-empty
  ///   `grad` has another shape.
  void operator()(const std::string& name, Matrix<Scalar>& value, Matrix<Scalar>& grad) {
    prepare(name, value, grad);
    add(name, {value.rows(), value.cols()}, value.data(), grad.data(), value.size());
  }
  /// Registers a vector parameter `[n]` (a bias, a LayerNorm weight).
  void operator()(const std::string& name, Vector<Scalar>& value, Vector<Scalar>& grad) {
    prepare(name, value, grad);
    add(name, {value.size()}, value.data(), grad.data(), value.size());
  }
  /// Registers a parameter of any rank; an empty `grad` becomes zeros of value's shape.
  void operator()(const std::string& name, Tensor<Scalar>& value, Tensor<Scalar>& grad) {
    if (grad.size() == 0 && value.size() != 0) grad = Tensor<Scalar>(value.shape());
    if (grad.shape() != value.shape()) {
      throw shape_error("ParameterList: grad of '" + name + "' is " +
                        detail::shape_string(grad.shape()) + ", expected " +
                        detail::shape_string(value.shape()));
    }
    add(name, value.shape(), value.data(), grad.data(), value.size());
  }

  /// The number of parameters (tensors).
  Index size() const noexcept { return static_cast<Index>(params_.size()); }
  /// The number of scalar elements over all parameters.
  Index numel() const noexcept {
    Index n = 0;
    for (const auto& p : params_) n += p.size();
    return n;
  }
  iterator begin() const noexcept { return params_.begin(); }
  iterator end() const noexcept { return params_.end(); }
  /// \throws index_error when i is outside [0, size()).
  const ParameterRef<Scalar>& operator[](Index i) const {
    if (i < 0 || i >= size()) {
      throw index_error("ParameterList::operator[]: i is " + std::to_string(i) +
                        ", expected in [0, " + std::to_string(size()) + ")");
    }
    return params_[static_cast<std::size_t>(i)];
  }

  /// The parameter called `name`, or nullptr.
  const ParameterRef<Scalar>* find(const std::string& name) const {
    for (const auto& p : params_) {
      if (p.name() == name) return &p;
    }
    return nullptr;
  }
  /// The parameter called `name`. \throws index_error when there is none.
  const ParameterRef<Scalar>& at(const std::string& name) const {
    if (const ParameterRef<Scalar>* p = find(name)) return *p;
    throw index_error("ParameterList::at: no parameter named '" + name + "'");
  }

 private:
  template <typename Plain>
  void prepare(const std::string& name, const Plain& value, Plain& grad) const {
    if (grad.size() == 0 && value.size() != 0) grad = Plain::Zero(value.rows(), value.cols());
    if (grad.rows() != value.rows() || grad.cols() != value.cols()) {
      const bool is_vector = Plain::ColsAtCompileTime == 1;
      throw shape_error(
          "ParameterList: grad of '" + name + "' is " +
          (is_vector ? detail::shape_string({grad.size()}) : detail::matrix_shape(grad)) +
          ", expected " +
          (is_vector ? detail::shape_string({value.size()}) : detail::matrix_shape(value)));
    }
  }

  void add(const std::string& name, Shape shape, Scalar* value, Scalar* grad, Index size) {
    if (find(name)) {
      throw value_error("ParameterList: parameter '" + name + "' is registered twice");
    }
    params_.emplace_back(name, std::move(shape), value, grad, size);
  }

  std::vector<ParameterRef<Scalar>> params_;
};

/// Builds the parameter list of anything with a `named_parameters(visit)` member.
/// \tparam Scalar the model's scalar type \param model visited once
/// \returns the list, in the model's visiting order
template <typename Scalar, typename Model>
ParameterList<Scalar> collect_parameters(Model& model) {
  ParameterList<Scalar> list;
  model.named_parameters(list);
  return list;
}

/// Sets every gradient to zero (llm.c gpt2_zero_grad; torch.optim.Optimizer.zero_grad with
/// set_to_none=False). Gradients accumulate across backward calls until this is called.
template <typename Scalar>
void zero_grad(const ParameterList<Scalar>& params) {
  for (const auto& p : params) p.grad().setZero();
}

// ---- gradient structs and visitors of the modules in ops/ and embedding/ ---------------

/// Gradients of a Linear: `d_weight` [out, in], `d_bias` [out] (empty without a bias).
template <typename Scalar>
struct LinearGrad {
  Matrix<Scalar> d_weight;  // [out, in]
  Vector<Scalar> d_bias;    // [out] or empty
};

/// Gradients of a LayerNorm: `d_weight`, `d_bias` [N] (unused without elementwise_affine).
template <typename Scalar>
struct LayerNormGrad {
  Vector<Scalar> d_weight;  // [N]
  Vector<Scalar> d_bias;    // [N]
};

/// Gradient of an Embedding: `d_weight` [V, D] (the padding row stays zero).
template <typename Scalar>
struct EmbeddingGrad {
  Matrix<Scalar> d_weight;  // [V, D]
};

/// Visits `weight` and, when present, `bias` of a Linear (torch.nn.Linear's order).
template <typename Scalar, typename Visit>
void named_parameters(Linear<Scalar>& m, LinearGrad<Scalar>& g, Visit&& visit,
                      const std::string& prefix = "") {
  visit(prefix + "weight", m.weight, g.d_weight);
  if (m.has_bias()) visit(prefix + "bias", m.bias, g.d_bias);
}

/// Visits `weight` and `bias` of a LayerNorm with elementwise_affine (none otherwise).
template <typename Scalar, typename Visit>
void named_parameters(LayerNorm<Scalar>& m, LayerNormGrad<Scalar>& g, Visit&& visit,
                      const std::string& prefix = "") {
  if (!m.elementwise_affine()) return;
  visit(prefix + "weight", m.weight, g.d_weight);
  visit(prefix + "bias", m.bias, g.d_bias);
}

/// Visits `weight` of a LearnedPositionalEmbedding (its gradient is an EmbeddingGrad).
template <typename Scalar, typename Visit>
void named_parameters(LearnedPositionalEmbedding<Scalar>& m, EmbeddingGrad<Scalar>& g,
                      Visit&& visit, const std::string& prefix = "") {
  visit(prefix + "weight", m.weight, g.d_weight);
}

/// Visits `weight` of an Embedding.
template <typename Scalar, typename Visit>
void named_parameters(Embedding<Scalar>& m, EmbeddingGrad<Scalar>& g, Visit&& visit,
                      const std::string& prefix = "") {
  visit(prefix + "weight", m.weight, g.d_weight);
}

}  // namespace attend
