// SPDX-License-Identifier: MIT
// Optimizers with PyTorch's update rules and defaults (SGD, Adam, AdamW), gradient clipping
// by global norm, and the transformer's warmup + inverse-square-root learning rate.
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/types.hpp"
#include "attend/train/parameters.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <sstream>
#include <string>

namespace attend {

/// Per-parameter state of SGD (PyTorch's key: `momentum_buffer`).
template <typename Scalar>
struct SGDState {
  Vector<Scalar> momentum_buffer;  // [size]; empty until the first step with momentum
};

/// Per-parameter state of Adam and AdamW (PyTorch's keys).
template <typename Scalar>
struct AdamState {
  std::int64_t step = 0;          // updates taken
  Vector<Scalar> exp_avg;         // [size] first moment m
  Vector<Scalar> exp_avg_sq;      // [size] second moment v
  Vector<Scalar> max_exp_avg_sq;  // [size] running max of v (amsgrad only, else empty)
};

namespace detail {

/// The number of elements a state was made for, or -1 before the first step.
template <typename Scalar>
Index state_size(const SGDState<Scalar>& s) {
  return s.momentum_buffer.size() == 0 ? -1 : s.momentum_buffer.size();
}
template <typename Scalar>
Index state_size(const AdamState<Scalar>& s) {
  return s.exp_avg.size() == 0 ? -1 : s.exp_avg.size();
}

inline std::string optim_number(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

/// Throws value_error "<who>: <what> is <v>, expected <want>" unless ok.
inline void require_option(bool ok, const char* who, const char* what, double v, const char* want) {
  if (!ok) {
    throw value_error(std::string(who) + ": " + what + " is " + optim_number(v) + ", expected " +
                      want);
  }
}

/// Finds or creates the state of `p`; an existing state (`state_size(s) >= 0`) must have
/// p's size.
template <typename State, typename Scalar>
State& optimizer_state(std::map<std::string, State>& states, const ParameterRef<Scalar>& p,
                       const char* who) {
  State& s = states[p.name()];
  const Index n = state_size(s);
  if (n >= 0 && n != p.size()) {
    throw shape_error(std::string(who) + ": state of '" + p.name() + "' has " + std::to_string(n) +
                      " elements, expected " + std::to_string(p.size()) +
                      " (the parameter's size)");
  }
  return s;
}

}  // namespace detail

// ---- SGD ----------------------------------------------------------------------------------

/// Options of SGD, named as torch.optim.SGD's (lr has no default there either).
struct SGDOptions {
  double lr = 0.0;            ///< learning rate, >= 0
  double momentum = 0.0;      ///< >= 0; 0 disables the momentum buffer
  double dampening = 0.0;     ///< scales the new gradient in the buffer by (1 - dampening)
  double weight_decay = 0.0;  ///< L2 penalty added to the gradient, >= 0
  bool nesterov = false;      ///< needs momentum > 0 and dampening = 0
  bool maximize = false;      ///< ascend instead of descend
};

/// Stochastic gradient descent with momentum, torch.optim.SGD:
/// `g = grad + wd p`; `b = g` at the first step, then `b = momentum b + (1 - dampening) g`;
/// `g = g + momentum b` (nesterov) or `g = b`; `p -= lr g`.
/// \note torch.optim.SGD (1.13 single-tensor path); Sutskever et al. 2013 for nesterov.
template <typename Scalar>
class SGD {
  static_assert(is_supported_scalar_v<Scalar>, "attend::SGD: Scalar must be float or double");

 public:
  /// \throws value_error on a negative lr, momentum or weight_decay, or nesterov without
  ///   momentum > 0 and dampening = 0.
  explicit SGD(const SGDOptions& options) : options_(options) { validate(options); }

  const SGDOptions& options() const noexcept { return options_; }
  double lr() const noexcept { return options_.lr; }
  /// \throws value_error when lr is negative or NaN.
  void set_lr(double lr) {
    detail::require_option(lr >= 0.0, "SGD::set_lr", "lr", lr, ">= 0");
    options_.lr = lr;
  }
  /// State by parameter name, as torch's optimizer.state (by tensor there).
  std::map<std::string, SGDState<Scalar>>& state() noexcept { return state_; }
  const std::map<std::string, SGDState<Scalar>>& state() const noexcept { return state_; }

  /// One update of every parameter from its gradient (gradients are not cleared).
  /// \throws shape_error when a parameter's stored state has another size.
  void step(const ParameterList<Scalar>& params) {
    const SGDOptions& o = options_;
    const Scalar wd = static_cast<Scalar>(o.weight_decay);
    const Scalar momentum = static_cast<Scalar>(o.momentum);
    const Scalar keep_new = static_cast<Scalar>(1.0 - o.dampening);
    const Scalar neg_lr = static_cast<Scalar>(-o.lr);
    for (const auto& p : params) {
      SGDState<Scalar>& s = detail::optimizer_state(state_, p, "SGD::step");
      auto value = p.value();  // [size]
      Vector<Scalar> d = o.maximize ? Vector<Scalar>(-p.grad()) : Vector<Scalar>(p.grad());
      if (o.weight_decay != 0.0) d += wd * value;  // d_p.add(param, alpha=weight_decay)
      if (o.momentum != 0.0) {
        if (s.momentum_buffer.size() == 0) {
          s.momentum_buffer = d;  // torch.clone(d_p): no dampening at the first step
        } else {
          s.momentum_buffer *= momentum;  // buf.mul_(momentum).add_(d_p, alpha=1 - dampening)
          s.momentum_buffer += keep_new * d;
        }
        if (o.nesterov)
          d += momentum * s.momentum_buffer;
        else
          d = s.momentum_buffer;
      }
      value += neg_lr * d;  // param.add_(d_p, alpha=-lr)
    }
  }

 private:
  static void validate(const SGDOptions& o) {
    detail::require_option(o.lr >= 0.0, "SGD", "lr", o.lr, ">= 0");
    detail::require_option(o.momentum >= 0.0, "SGD", "momentum", o.momentum, ">= 0");
    detail::require_option(o.weight_decay >= 0.0, "SGD", "weight_decay", o.weight_decay, ">= 0");
    detail::require_option(std::isfinite(o.dampening), "SGD", "dampening", o.dampening,
                           "a finite value");
    if (o.nesterov && (o.momentum <= 0.0 || o.dampening != 0.0)) {
      throw value_error("SGD: nesterov needs momentum > 0 and dampening = 0, got momentum " +
                        detail::optim_number(o.momentum) + " and dampening " +
                        detail::optim_number(o.dampening));
    }
  }

  SGDOptions options_;
  std::map<std::string, SGDState<Scalar>> state_;
};

// ---- Adam and AdamW -----------------------------------------------------------------------

/// Options of Adam, named and defaulted as torch.optim.Adam's (betas split in two).
struct AdamOptions {
  double lr = 1e-3;
  double beta1 = 0.9;         ///< betas[0], in [0, 1)
  double beta2 = 0.999;       ///< betas[1], in [0, 1)
  double eps = 1e-8;          ///< added to the denominator, >= 0
  double weight_decay = 0.0;  ///< L2 penalty added to the gradient (coupled), >= 0
  bool amsgrad = false;       ///< use the running maximum of the second moment
  bool maximize = false;
};

/// Options of AdamW: as Adam's, but weight decay is decoupled and defaults to 0.01, as
/// torch.optim.AdamW.
struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;  ///< decoupled: p *= 1 - lr * weight_decay before the update
  bool amsgrad = false;
  bool maximize = false;
};

namespace detail {

template <typename Options>
void validate_adam(const Options& o, const char* who) {
  require_option(o.lr >= 0.0, who, "lr", o.lr, ">= 0");
  require_option(o.eps >= 0.0, who, "eps", o.eps, ">= 0");
  require_option(o.beta1 >= 0.0 && o.beta1 < 1.0, who, "beta1", o.beta1, "in [0, 1)");
  require_option(o.beta2 >= 0.0 && o.beta2 < 1.0, who, "beta2", o.beta2, "in [0, 1)");
  require_option(o.weight_decay >= 0.0, who, "weight_decay", o.weight_decay, ">= 0");
}

/// One Adam (decoupled = false) or AdamW (true) update, in torch's operation order.
template <typename Scalar, typename Options>
void adam_step(const ParameterList<Scalar>& params,
               std::map<std::string, AdamState<Scalar>>& states, const Options& o, bool decoupled,
               const char* who) {
  using S = Scalar;
  const S beta1 = static_cast<S>(o.beta1), beta2 = static_cast<S>(o.beta2);
  const S one_minus_beta1 = static_cast<S>(1.0 - o.beta1);
  const S one_minus_beta2 = static_cast<S>(1.0 - o.beta2);
  const S eps = static_cast<S>(o.eps);
  for (const auto& p : params) {
    AdamState<S>& s = optimizer_state(states, p, who);
    if (s.exp_avg.size() == 0) {  // lazy state initialisation, as torch
      s.step = 0;
      s.exp_avg = Vector<S>::Zero(p.size());
      s.exp_avg_sq = Vector<S>::Zero(p.size());
      if (o.amsgrad) s.max_exp_avg_sq = Vector<S>::Zero(p.size());
    }
    if (o.amsgrad && s.max_exp_avg_sq.size() != p.size()) {
      s.max_exp_avg_sq = Vector<S>::Zero(p.size());  // amsgrad switched on later
    }
    auto value = p.value();  // [size]
    Vector<S> g = o.maximize ? Vector<S>(-p.grad()) : Vector<S>(p.grad());
    ++s.step;
    if (decoupled) {
      value *= static_cast<S>(1.0 - o.lr * o.weight_decay);  // param.mul_(1 - lr * wd)
    } else if (o.weight_decay != 0.0) {
      g += static_cast<S>(o.weight_decay) * value;  // grad.add(param, alpha=weight_decay)
    }
    // exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
    s.exp_avg *= beta1;
    s.exp_avg += one_minus_beta1 * g;
    // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    s.exp_avg_sq *= beta2;
    s.exp_avg_sq.array() += one_minus_beta2 * g.array() * g.array();
    // Bias corrections in double, as Python computes them.
    const double step = static_cast<double>(s.step);
    const double bias_correction1 = 1.0 - std::pow(o.beta1, step);
    const double bias_correction2_sqrt = std::sqrt(1.0 - std::pow(o.beta2, step));
    const S step_size = static_cast<S>(o.lr / bias_correction1);
    const S bc2_sqrt = static_cast<S>(bias_correction2_sqrt);
    const Vector<S>* second = &s.exp_avg_sq;
    if (o.amsgrad) {
      s.max_exp_avg_sq = s.max_exp_avg_sq.cwiseMax(s.exp_avg_sq);
      second = &s.max_exp_avg_sq;
    }
    // denom = (v.sqrt() / bias_correction2_sqrt).add_(eps); param.addcdiv_(m, denom, -step_size)
    value.array() += -step_size * (s.exp_avg.array() / (second->array().sqrt() / bc2_sqrt + eps));
  }
}

}  // namespace detail

/// Adam, torch.optim.Adam: `g = grad + wd p`, `m = b1 m + (1 - b1) g`,
/// `v = b2 v + (1 - b2) g^2`, `p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`
/// (amsgrad: v replaced by its running maximum in the denominator).
/// \note Kingma & Ba 2015; Reddi et al. 2018 (amsgrad); torch.optim.Adam 1.13 single-tensor.
template <typename Scalar>
class Adam {
  static_assert(is_supported_scalar_v<Scalar>, "attend::Adam: Scalar must be float or double");

 public:
  /// \throws value_error on a negative lr, eps or weight_decay, or a beta outside [0, 1).
  explicit Adam(const AdamOptions& options = {}) : options_(options) {
    detail::validate_adam(options, "Adam");
  }
  const AdamOptions& options() const noexcept { return options_; }
  double lr() const noexcept { return options_.lr; }
  /// \throws value_error when lr is negative or NaN.
  void set_lr(double lr) {
    detail::require_option(lr >= 0.0, "Adam::set_lr", "lr", lr, ">= 0");
    options_.lr = lr;
  }
  std::map<std::string, AdamState<Scalar>>& state() noexcept { return state_; }
  const std::map<std::string, AdamState<Scalar>>& state() const noexcept { return state_; }
  /// One update of every parameter. \throws shape_error when stored state has another size.
  void step(const ParameterList<Scalar>& params) {
    detail::adam_step(params, state_, options_, false, "Adam::step");
  }

 private:
  AdamOptions options_;
  std::map<std::string, AdamState<Scalar>> state_;
};

/// AdamW, torch.optim.AdamW: `p *= 1 - lr wd`, then Adam's update without weight decay in
/// the gradient.
/// \note Loshchilov & Hutter 2019; torch.optim.AdamW 1.13 single-tensor.
template <typename Scalar>
class AdamW {
  static_assert(is_supported_scalar_v<Scalar>, "attend::AdamW: Scalar must be float or double");

 public:
  /// \throws value_error on a negative lr, eps or weight_decay, or a beta outside [0, 1).
  explicit AdamW(const AdamWOptions& options = {}) : options_(options) {
    detail::validate_adam(options, "AdamW");
  }
  const AdamWOptions& options() const noexcept { return options_; }
  double lr() const noexcept { return options_.lr; }
  /// \throws value_error when lr is negative or NaN.
  void set_lr(double lr) {
    detail::require_option(lr >= 0.0, "AdamW::set_lr", "lr", lr, ">= 0");
    options_.lr = lr;
  }
  std::map<std::string, AdamState<Scalar>>& state() noexcept { return state_; }
  const std::map<std::string, AdamState<Scalar>>& state() const noexcept { return state_; }
  /// One update of every parameter. \throws shape_error when stored state has another size.
  void step(const ParameterList<Scalar>& params) {
    detail::adam_step(params, state_, options_, true, "AdamW::step");
  }

 private:
  AdamWOptions options_;
  std::map<std::string, AdamState<Scalar>> state_;
};

// ---- gradient clipping and the learning-rate schedule ----------------------------------

/// Scales all gradients together so that their global norm is at most `max_norm`:
/// `total = ||(||g_1||_p, ..., ||g_n||_p)||_p`; when `max_norm / (total + 1e-6) < 1`, every
/// gradient is multiplied by it.
/// \param params the gradients to clip (in place)
/// \param max_norm >= 0 \param norm_type p > 0, or infinity for the max-norm
/// \param error_if_nonfinite throw instead of scaling by a NaN/Inf norm
/// \returns the total norm before clipping
/// \throws value_error on a negative max_norm, a non-positive norm_type, or (when asked) a
///   non-finite total norm.
/// \note torch.nn.utils.clip_grad_norm_ (the 1e-6 is its constant); norms are computed in
///   double.
template <typename Scalar>
double clip_grad_norm_(const ParameterList<Scalar>& params, double max_norm, double norm_type = 2.0,
                       bool error_if_nonfinite = false) {
  detail::require_option(max_norm >= 0.0, "clip_grad_norm_", "max_norm", max_norm, ">= 0");
  detail::require_option(norm_type > 0.0, "clip_grad_norm_", "norm_type", norm_type,
                         "> 0 or infinity");
  const bool is_inf = std::isinf(norm_type);
  double total = 0.0;
  for (const auto& p : params) {
    const auto g = p.grad().template cast<double>().array();
    if (is_inf) {
      if (p.size() != 0) total = std::max(total, g.abs().maxCoeff());
    } else {
      // ||g||_p^p summed directly: equal to the p-norm of per-tensor p-norms.
      total += norm_type == 2.0 ? g.square().sum() : g.abs().pow(norm_type).sum();
    }
  }
  if (!is_inf) total = norm_type == 2.0 ? std::sqrt(total) : std::pow(total, 1.0 / norm_type);
  if (error_if_nonfinite && !std::isfinite(total)) {
    throw value_error("clip_grad_norm_: the total norm of the gradients is " +
                      detail::optim_number(total) + ", expected a finite value");
  }
  const double coef = max_norm / (total + 1e-6);
  if (coef < 1.0 || std::isnan(coef)) {
    const Scalar c = static_cast<Scalar>(coef);
    for (const auto& p : params) p.grad() *= c;
  }
  return total;
}

/// The learning rate of "Attention is all you need" (section 5.3):
/// `lr = factor * d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5)`: linear warmup
/// for warmup_steps updates, then decay as 1 / sqrt(step); the peak, at step = warmup_steps,
/// is `factor / sqrt(d_model * warmup_steps)`.
/// \param step the update about to be taken, from 1 \param d_model > 0
/// \param warmup_steps > 0 (4000 in the paper) \param factor a multiplier (1 in the paper)
/// \throws value_error when step, d_model or warmup_steps is not positive, or factor is
///   negative or not finite.
/// \note Vaswani et al. 2017, eq. 3 (the "Noam" schedule).
inline double warmup_inverse_sqrt_lr(std::int64_t step, std::int64_t d_model,
                                     std::int64_t warmup_steps = 4000, double factor = 1.0) {
  if (step < 1 || d_model < 1 || warmup_steps < 1) {
    throw value_error("warmup_inverse_sqrt_lr: step is " + std::to_string(step) + ", d_model " +
                      std::to_string(d_model) + " and warmup_steps " +
                      std::to_string(warmup_steps) + ", expected all >= 1");
  }
  detail::require_option(factor >= 0.0 && std::isfinite(factor), "warmup_inverse_sqrt_lr",
                         "factor", factor, "a finite value >= 0");
  const double s = static_cast<double>(step), w = static_cast<double>(warmup_steps);
  return factor / std::sqrt(static_cast<double>(d_model)) *
         std::min(1.0 / std::sqrt(s), s / (w * std::sqrt(w)));
}

}  // namespace attend
