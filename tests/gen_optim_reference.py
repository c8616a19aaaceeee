#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# Writes PyTorch reference numbers for tests/train_test.cpp: optimizer steps, gradient
# clipping and cross-entropy, as C++ constants in tests/data/optim/optim_reference.inc.
"""Generate the PyTorch references of the training tests (optimizers, clipping, losses).

Usage (Debian's python3-torch; the pyenv `python3` has no torch):

    /usr/bin/python3 tests/gen_optim_reference.py           # rewrite the .inc file
    /usr/bin/python3 tests/gen_optim_reference.py --check   # exit 1 if it is out of date

These are not fixtures of the conformance contract (docs/fixtures.md has no optimizer module),
so they are C++ constants included by tests/train_test.cpp rather than .safetensors files:
`attend-conformance` walks tests/data for *.safetensors and would report any file here as
a failure.

Every input (parameters, gradients, logits) is drawn in float64 with a fixed seed and then
rounded to float32, so the float32 and float64 runs start from identical numbers. Each
case runs twice in torch, in float32 and in float64, on the CPU with one thread, with the
default (single-tensor, foreach=False) optimizer implementations of torch 1.13. Values are
printed with repr(), which round-trips exactly (a float32 value is printed as the double it
converts to, so `static_cast<float>` of the literal is that float again). Running the script
twice gives a byte-identical file.
"""

import argparse
import os
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "data", "optim", "optim_reference.inc")

STEPS = 5
SHAPES = {"w": (2, 3), "b": (3,)}  # two parameters: a [2, 3] weight and a [3] bias
NUMEL = 9

# Optimizer cases: (C++ name, torch class, keyword arguments). Every option of the C++
# classes is exercised at least once, defaults included.
OPTIM_CASES = [
    ("sgd_plain", torch.optim.SGD, dict(lr=0.1)),
    ("sgd_momentum", torch.optim.SGD,
     dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("sgd_nesterov", torch.optim.SGD,
     dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.001, maximize=True)),
    ("adam_default", torch.optim.Adam, dict()),
    ("adam_amsgrad", torch.optim.Adam,
     dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, amsgrad=True)),
    ("adamw_default", torch.optim.AdamW, dict()),
    ("adamw_amsgrad", torch.optim.AdamW,
     dict(lr=0.02, betas=(0.85, 0.995), weight_decay=0.05, amsgrad=True, maximize=True)),
]

# Gradient clipping cases: (C++ name, max_norm, norm_type).
CLIP_CASES = [("clip_l2", 0.5, 2.0), ("clip_inf", 0.1, float("inf")),
              ("clip_none", 100.0, 2.0)]

# Cross-entropy cases: (C++ name, reduction, label_smoothing); targets below.
CE_CASES = [("ce_mean", "mean", 0.0), ("ce_mean_smooth", "mean", 0.1),
            ("ce_sum_smooth", "sum", 0.25)]
CE_TARGETS = [3, -100, 0, 3]


def rounded(*shape, seed, scale=1.0):
    """float64 normal values rounded to float32 (both dtypes then start from the same)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).float().double()


def initial_params():
    return {"w": rounded(2, 3, seed=1), "b": rounded(3, seed=2)}


def gradients():
    """STEPS gradients per parameter; step k's gradient does not depend on the parameters."""
    return [{"w": rounded(2, 3, seed=100 + k), "b": rounded(3, seed=200 + k, scale=0.5)}
            for k in range(STEPS)]


def flat(tensors):
    return [float(v) for name in ("w", "b") for v in tensors[name].reshape(-1).tolist()]


def run_optimizer(cls, kwargs, dtype):
    params = {k: v.to(dtype).clone().requires_grad_(True) for k, v in initial_params().items()}
    opt = cls([params["w"], params["b"]], **kwargs)
    trace = []
    for grads in gradients():
        for k in ("w", "b"):
            params[k].grad = grads[k].to(dtype).clone()
        opt.step()
        trace.append(flat({k: v.detach() for k, v in params.items()}))
    return trace


def run_clip(max_norm, norm_type, dtype):
    grads = gradients()[0]
    params = {k: torch.zeros(SHAPES[k], dtype=dtype, requires_grad=True) for k in ("w", "b")}
    for k in ("w", "b"):
        params[k].grad = grads[k].to(dtype).clone()
    total = torch.nn.utils.clip_grad_norm_([params["w"], params["b"]], max_norm, norm_type)
    return float(total), flat({k: v.grad for k, v in params.items()})


def run_ce(reduction, smoothing, dtype):
    logits = rounded(4, 5, seed=300, scale=2.0).to(dtype).requires_grad_(True)
    loss = F.cross_entropy(logits, torch.tensor(CE_TARGETS), reduction=reduction,
                           label_smoothing=smoothing)
    loss.backward()
    return float(loss), [float(v) for v in logits.grad.reshape(-1).tolist()]


def array(values):
    return "{" + ", ".join(repr(v) for v in values) + "}"


def render():
    torch.set_num_threads(1)
    out = []
    emit = out.append
    emit("// SPDX-License-Identifier: MIT")
    emit("// PyTorch %s references for tests/train_test.cpp." % torch.__version__.split("+")[0])
    emit("// Generated by tests/gen_optim_reference.py; do not edit.")
    emit("// Parameters w [2, 3] then b [3], flattened row-major (9 values per row).")
    emit("// clang-format off")
    emit("namespace optim_reference {")
    emit("")
    emit("constexpr int kSteps = %d;" % STEPS)
    emit("constexpr int kNumel = %d;" % NUMEL)
    emit("constexpr double kInitial[kNumel] = %s;" % array(flat(initial_params())))
    emit("constexpr double kGrads[kSteps][kNumel] = {")
    for g in gradients():
        emit("    %s," % array(flat(g)))
    emit("};")
    for name, cls, kwargs in OPTIM_CASES:
        emit("")
        emit("// torch.optim.%s(%s)" % (cls.__name__,
                                         ", ".join("%s=%r" % kv for kv in kwargs.items())))
        for dtype, tag in ((torch.float32, "f32"), (torch.float64, "f64")):
            emit("constexpr double k_%s_%s[kSteps][kNumel] = {" % (name, tag))
            for row in run_optimizer(cls, kwargs, dtype):
                emit("    %s," % array(row))
            emit("};")
    emit("")
    emit("// torch.nn.utils.clip_grad_norm_ on kGrads[0]: total norm, then the clipped grads.")
    for name, max_norm, norm_type in CLIP_CASES:
        emit("// max_norm=%r, norm_type=%r" % (max_norm, norm_type))
        for dtype, tag in ((torch.float32, "f32"), (torch.float64, "f64")):
            total, grads = run_clip(max_norm, norm_type, dtype)
            emit("constexpr double k_%s_%s_norm = %r;" % (name, tag, total))
            emit("constexpr double k_%s_%s[kNumel] = %s;" % (name, tag, array(grads)))
    emit("")
    emit("// F.cross_entropy(logits [4, 5], targets, ignore_index=-100): loss, d loss / d logits.")
    emit("constexpr long long kCeTargets[4] = %s;" % array(CE_TARGETS))
    emit("constexpr double kCeLogits[20] = %s;" %
         array([float(v) for v in rounded(4, 5, seed=300, scale=2.0).reshape(-1).tolist()]))
    for name, reduction, smoothing in CE_CASES:
        emit("// reduction=%r, label_smoothing=%r" % (reduction, smoothing))
        for dtype, tag in ((torch.float32, "f32"), (torch.float64, "f64")):
            loss, grad = run_ce(reduction, smoothing, dtype)
            emit("constexpr double k_%s_%s_loss = %r;" % (name, tag, loss))
            emit("constexpr double k_%s_%s_grad[20] = %s;" % (name, tag, array(grad)))
    emit("")
    emit("}  // namespace optim_reference")
    emit("// clang-format on")
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        with open(OUT) as f:
            same = f.read() == text
        print("%s is %s" % (OUT, "up to date" if same else "OUT OF DATE"))
        return 0 if same else 1
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        f.write(text)
    print("wrote", OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
