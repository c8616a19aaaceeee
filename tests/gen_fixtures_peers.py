#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# Writes the fixtures of the peer-suite cases: the edge values and options that PyTorch's,
# ggml's and ONNX's own tests exercise, and the gradient cases of every module with a backward.
"""Generate the peer-suite fixtures of tests/data (format: docs/fixtures.md).

Usage (Debian's python3-torch 1.13):

    /usr/bin/python3 tests/gen_fixtures_peers.py            # (re)write the files below
    /usr/bin/python3 tests/gen_fixtures_peers.py --out DIR  # write elsewhere (determinism check)

Folders written (each case as _f32 and _f64):

- scaled_dot_product_attention_edges/: float32's lowest value (finfo.min) as an additive
  mask, rows fully at finfo.min, the -2.3e38 / -2.4e38 boundary mixed with -inf; scores
  near 1e6 with exact ties (integer inputs); d = 1, L = 1, S = 1, S = 8192 with d = 4;
  head sizes 40, 72, 80, 112, 256 and d_k != d_v; ranks 2 to 5 with masks broadcast over
  the leading dimensions; enable_gqa; logit_softcap.
- multihead_attention_options/: add_bias_kv, add_zero_attn (with masks, per-head weights,
  kdim/vdim), unbatched input with a 1-D key_padding_mask [S].
- gru_options/: gru_cell and gru with linear_before_reset false (and true, as PyTorch).
- grad_softmax/, grad_scaled_dot_product_attention/, grad_layer_norm/, grad_cells/,
  grad_rnn/, grad_gru/, grad_bahdanau_attention/, grad_luong_attention/,
  grad_multihead_attention_options/: gradient cases (upstream. and grad. tensors).

Where PyTorch 1.13 has the feature, the stored values are torch's, computed in the case's
dtype (modules, functional ops and autograd). Where it does not (enable_gqa, which came in
torch 2.5, logit_softcap, linear_before_reset = false, an explicit SDPA scale), the values
come from an explicit float64 formula on the stored inputs, rounded to the case's dtype.
Every stored value, torch's included, is cross-checked at generation time against the
explicit float64 formulas below (independent of torch's modules), evaluated on the very
values stored in the file: it must use at most CHECK_MARGIN of the file's tolerance.
Running the script twice gives byte-identical files.
"""

import argparse
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_fixtures as gf  # noqa: E402  (writer, seeds, random data, masks, cell formulas)

F32, F64 = gf.F32, gf.F64
GENERATOR = "tests/gen_fixtures_peers.py (torch %s)" % torch.__version__
CHECK_MARGIN = gf.CHECK_MARGIN
FMIN32 = float(torch.finfo(torch.float32).min)  # -3.4028234663852886e38

# Forward tolerances: those of tests/gen_fixtures.py for the same modules (reasons there).
TOL_SDPA = gf.TOL_SDPA
TOL_MHA = gf.TOL_MHA
TOL_CELL = gf.TOL_CELL
TOL_RECURRENT = gf.TOL_RECURRENT
# Long rows (S = 8192) and wide heads (d = 256): each output is a weighted sum of up to
# 8192 values with weights ~1e-4, so float rounding of the weights (a few ulp each) and of
# the sum grows with S; torch float32 vs float64 measured 2.4e-7 (s8192) and 3.0e-7 (d256),
# under 0.1 of these.
TOL_SDPA_WIDE = {F32: (1e-5, 1e-5), F64: (1e-12, 1e-13)}
# Gradient cases: the float tolerance of tests/gen_fixtures_grad.py (one rule for every
# grad_* folder: backward chains are about twice the forward's products, attend's float
# backward differs from the stored values by up to ~2e-6 absolute); double 1e-12 / 1e-13.
TOL_GRAD = {F32: (1e-4, 1e-5), F64: (1e-12, 1e-13)}


class Writer:
    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.written = []
        self.worst = {}

    def write(self, folder, module, case, dtype, tensors, options, tol, description):
        floats = {t.dtype for t in tensors.values() if t.is_floating_point()}
        if floats != {dtype}:
            raise gf.FixtureError("%s/%s mixes float dtypes %s" % (folder, case, floats))
        for name, t in tensors.items():
            if t.is_floating_point() and bool(torch.isnan(t).any()):
                raise gf.FixtureError("%s/%s: %s holds NaN" % (folder, case, name))
        rtol, atol = tol[dtype]
        metadata = {
            "module": module,
            "options": gf.json.dumps(options, sort_keys=True),
            "rtol": repr(float(rtol)),
            "atol": repr(float(atol)),
            "description": description,
            "generator": GENERATOR,
        }
        rel = os.path.join(folder, "%s_%s.safetensors" % (case, gf.DTYPE_TAG[dtype]))
        gf.write_safetensors(os.path.join(self.out_dir, rel), tensors, metadata)
        self.written.append(rel)


def check_against(stored, reference, tol, dtype, what, w):
    """Every stored expected./grad. tensor against the float64 reference, within
    CHECK_MARGIN of the tolerance; records the worst ratio per folder."""
    rtol, atol = tol[dtype]
    if set(stored) != set(reference):
        raise gf.FixtureError("%s: stored %s, reference %s" % (what, sorted(stored), sorted(reference)))
    ratio = 0.0
    for name in stored:
        got, want = stored[name].to(F64), reference[name].to(F64)
        if got.shape != want.shape:
            raise gf.FixtureError("%s: %s shape %s, reference %s" % (what, name, list(got.shape),
                                                                    list(want.shape)))
        ratio = max(ratio, gf.tolerance_ratio(got, want, rtol, atol))
    if ratio > CHECK_MARGIN:
        raise gf.FixtureError("%s: stored values use %.3f of the tolerance (limit %.2f)"
                              % (what, ratio, CHECK_MARGIN))
    folder = what.split("/")[0]
    w.worst[folder] = max(w.worst.get(folder, 0.0), ratio)


def autograd(fn, inputs, upstream):
    """Runs fn(**inputs) -> {name: output} with the float inputs as leaves; returns the
    outputs and {grad.<name>: dL/d input} for L = sum_o sum(output_o * upstream_o)."""
    leaves = {}
    args = {}
    for name, t in inputs.items():
        if t.is_floating_point() and "mask" not in name:
            leaf = t.detach().clone().requires_grad_(True)
            leaves[name] = leaf
            args[name] = leaf
        else:
            args[name] = t
    outs = fn(**args)
    grads = {}
    if upstream:
        loss = sum((outs[n] * u).sum() for n, u in upstream.items())
        ds = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        for (name, leaf), d in zip(leaves.items(), ds):
            grads["grad." + name] = torch.zeros_like(leaf) if d is None else d.detach()
    return {k: v.detach() for k, v in outs.items()}, grads


def emit(w, folder, module, case, dtype, inputs, options, tol, description, torch_fn, ref_fn,
         upstream_names=(), upstream_scale=1.0):
    """Writes one case in `dtype`. `inputs` (float64 or bool/int) maps file names
    (parameters by state-dict name, `input.<name>`) to tensors; `torch_fn(dtype, **inputs)`
    gives torch's outputs {name: tensor} in dtype (None: torch lacks the feature, use the
    float64 formula), `ref_fn(**inputs)` the explicit float64 formula. With upstream_names,
    the case is a gradient case: upstream.<name> random, grad. of every float input."""
    cast = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in inputs.items()}
    as64 = {k: (v.to(F64) if v.is_floating_point() else v) for k, v in cast.items()}
    ref_outs, _ = autograd(ref_fn, as64, None)
    upstream = {}
    for n in upstream_names:
        upstream[n] = (torch.randn(ref_outs[n].shape, dtype=F64) * upstream_scale).to(dtype)
    up64 = {n: u.to(F64) for n, u in upstream.items()}
    ref_outs, ref_grads = autograd(ref_fn, as64, up64)
    if torch_fn is not None:
        outs, grads = autograd(lambda **a: torch_fn(dtype, **a), cast, upstream)
    else:
        outs = {k: v.to(dtype) for k, v in ref_outs.items()}
        grads = {k: v.to(dtype) for k, v in ref_grads.items()}
    tensors = dict(cast)
    tensors.update({"expected." + k: v for k, v in outs.items()})
    tensors.update({"upstream." + k: v for k, v in upstream.items()})
    tensors.update(grads)
    stored = {k: v for k, v in tensors.items() if k.startswith(("expected.", "grad."))}
    reference = {"expected." + k: v for k, v in ref_outs.items()}
    reference.update(ref_grads)
    check_against(stored, reference, tol, dtype, "%s/%s_%s" % (folder, case, gf.DTYPE_TAG[dtype]), w)
    w.write(folder, module, case, dtype, tensors, options, tol, description)


# ---------------------------------------------------------------------------------------
# scaled_dot_product_attention: explicit formula for any rank, GQA, softcap
# ---------------------------------------------------------------------------------------

def sdpa_formula(options):
    """softmax(cap(scale Q K^T) + mask) V for any rank; fixture masks: bool/I64 true =
    masked out, float additive."""
    def fn(**t):
        q, k, v = t["input.query"], t["input.key"], t["input.value"]
        E = q.shape[-1]
        scale = options.get("scale", 1.0 / math.sqrt(E))
        if options.get("enable_gqa", False):
            rep = q.shape[-3] // k.shape[-3]
            k = k.repeat_interleave(rep, dim=-3)
            v = v.repeat_interleave(rep, dim=-3)
        scores = torch.matmul(q, k.transpose(-2, -1)) * scale
        cap = options.get("logit_softcap")
        if cap:
            scores = cap * torch.tanh(scores / cap)
        mask = t.get("input.attn_mask")
        if mask is not None:
            if mask.dtype in (torch.bool, torch.int64):
                scores = scores.masked_fill(mask.to(torch.bool), -math.inf)
            else:
                scores = scores + mask
        if options.get("is_causal", False):
            L, S = scores.shape[-2:]
            scores = scores.masked_fill(torch.ones(L, S, dtype=torch.bool).triu(1), -math.inf)
        gf.check_no_fully_masked_rows(torch.isneginf(scores), "sdpa scores")
        weights = torch.softmax(scores, dim=-1)
        return {"output": weights @ v, "attn_weights": weights}
    return fn


def sdpa_torch(options, weights=True):
    """torch in the case's dtype (the same formula with torch's own softmax and matmul in
    that dtype, as torch 1.13's math SDPA computes it); None when torch lacks an option."""
    if options.get("enable_gqa") or options.get("logit_softcap"):
        return None

    def fn(dtype, **t):
        out = sdpa_formula(options)(**t)
        return out if weights else {"output": out["output"]}
    return fn


def gen_sdpa_edges(w):
    folder = module = "scaled_dot_product_attention"
    folder = "scaled_dot_product_attention_edges"

    def write(case, inputs, options, description, tol=TOL_SDPA, weights=True, dtypes=(F32, F64)):
        for dtype in dtypes:
            formula = sdpa_formula(options)
            ref = formula if weights else (lambda f: (lambda **t: {"output": f(**t)["output"]}))(formula)
            emit(w, folder, module, case, dtype, inputs, options, tol, description,
                 sdpa_torch(options, weights), ref)

    def qkv(lead, L, S, E, Ev, scale=1.0):
        return {"input.query": gf.randn(*lead, L, E, scale=scale),
                "input.key": gf.randn(*lead, S, E, scale=scale),
                "input.value": gf.randn(*lead, S, Ev)}

    # --- finfo.min and the log2(e) overflow boundary ---
    gf.seed_for(module, "finfo_min_minimal")
    # q = [[1]], k = [[1], [2]], v = [[1], [3]]: scores 1 and 2 plus -3.4028235e38 round to
    # the same float, so both keys weigh 1/2 and the output is (1 + 3) / 2 = 2.
    write("finfo_min_minimal",
          {"input.query": torch.tensor([[1.0]], dtype=F64), "input.key": torch.tensor([[1.0], [2.0]], dtype=F64),
           "input.value": torch.tensor([[1.0], [3.0]], dtype=F64),
           "input.attn_mask": torch.tensor([[FMIN32, FMIN32]], dtype=F64)},
          {}, "q [[1]], k [[1], [2]], v [[1], [3]], additive mask [finfo(float32).min] * 2: "
              "all scores equal, output 2 (the uniform average of V)")
    gf.seed_for(module, "finfo_min_rows")
    t = qkv((2, 3), 6, 9, 8, 5)
    L, S = 6, 9
    m = torch.zeros(L, S, dtype=F64)
    m[0, :] = -2.3e38                              # all equal after rounding: uniform
    m[1, :] = -2.4e38                              # past the log2(e) overflow of -2.36e38
    m[2, :] = FMIN32                               # Hugging Face padding, whole row
    m[3, :] = torch.tensor([-math.inf, FMIN32, -2.3e38, 0.0, -2.4e38, -math.inf, FMIN32, 0.5, -2.3e38])
    m[4, :] = torch.tensor([-2.4e38, -math.inf, FMIN32, -2.3e38, -2.4e38, -math.inf, -2.3e38, FMIN32, -2.4e38])
    m[5, :] = torch.tensor([FMIN32, FMIN32, -math.inf, FMIN32, -math.inf, FMIN32, FMIN32, FMIN32, -math.inf])
    t["input.attn_mask"] = m
    write("finfo_min_rows", t, {},
          "additive mask [6, 9] over q [2, 3, 6, 8]: rows all -2.3e38, all -2.4e38, all "
          "finfo(float32).min (uniform weights), and rows mixing -inf, finfo.min, -2.4e38, "
          "-2.3e38 and 0")
    gf.seed_for(module, "finfo_min_padding")
    t = qkv((2, 2), 37, 150, 16, 16)
    pad = torch.zeros(2, 1, 1, 150, dtype=F64)
    pad[0, :, :, 100:] = FMIN32
    pad[1, :, :, :] = FMIN32                        # batch 1: every key padded
    t["input.attn_mask"] = pad
    write("finfo_min_padding", t, {},
          "Hugging Face style padding mask [2, 1, 1, 150] of 0 / finfo(float32).min over "
          "q [2, 2, 37, 16], S = 150 (two key blocks): batch 1 fully at finfo.min (uniform)")

    # --- large scores with exact ties ---
    for case, lead, L, S, E, scale in (("large_ties", (), 7, 16, 4, 3.0e4),
                                       ("large_ties_blocks", (1, 2), 100, 300, 4, 2.5e4)):
        gf.seed_for(module, case)
        q = torch.randint(-3, 4, (*lead, L, E)).to(F64)
        if case == "large_ties_blocks":
            # three copies of 100 keys at 0, 100 and 200: every maximum is tied across the
            # fused kernel's key blocks (0..127, 128..255, 256..299)
            k = torch.randint(-3, 4, (*lead, 100, E)).to(F64)
            k = torch.cat([k, k, k], dim=-2)
        else:
            # every distinct key twice, in random order: every maximum is tied
            k = torch.randint(-3, 4, (*lead, S // 2, E)).to(F64)
            k = torch.cat([k, k], dim=-2)[..., torch.randperm(S), :]
        v = gf.randn(*lead, S, 6)
        raw = q @ k.transpose(-2, -1)
        top = raw.amax(dim=-1, keepdim=True)
        ties = ((raw == top).sum(dim=-1) > 1).to(F64).mean().item()
        if ties < 1.0:
            raise gf.FixtureError("%s: only %.2f of rows have a tied maximum" % (case, ties))
        write(case, {"input.query": q, "input.key": k, "input.value": v}, {"scale": scale}, weights=L < 50,
              description=
              "integer q, k in [-3, 3] (E = 4), scale %g: scores up to ~1e6, every row's maximum "
              "an exact tie between equal keys (equal weights, the rest 0)%s"
              % (scale, "; keys 0..99 repeated at 100 and 200 (ties across key blocks)"
                 if case == "large_ties_blocks" else ""))

    # --- tiny and long extents ---
    gf.seed_for(module, "d1")
    write("d1", qkv((2,), 5, 7, 1, 1, scale=2.0), {}, "E = Ev = 1, L = 5, S = 7, rank 3")
    gf.seed_for(module, "l1")
    t = qkv((2, 2), 1, 9, 8, 8)
    t["input.attn_mask"] = gf.bool_mask((2, 1, 1, 9), 0.4, "sdpa l1")
    write("l1", t, {}, "one query (L = 1), S = 9, bool mask [2, 1, 1, 9]")
    gf.seed_for(module, "s1")
    write("s1", qkv((2, 2), 5, 1, 8, 3), {}, "one key (S = 1): weights all 1, output = v")
    gf.seed_for(module, "s8192")
    t = qkv((1,), 2, 8192, 4, 4)
    t["input.attn_mask"] = gf.additive_mask((2, 8192), "sdpa s8192")
    write("s8192", t, {}, "S = 8192 keys, E = Ev = 4, L = 2, additive mask with -inf (64 key blocks)",
          tol=TOL_SDPA_WIDE, weights=False)

    # --- head sizes of ggml's flash-attention tests, kv length 113, query counts 1/3/32/35 ---
    for E, Ev, L in ((40, 40, 35), (72, 72, 32), (80, 80, 3), (112, 112, 1), (256, 256, 3),
                     (64, 40, 35), (40, 112, 32)):
        case = "head_%d" % E if E == Ev else "head_%d_%d" % (E, Ev)
        gf.seed_for(module, case)
        t = qkv((1, 2) if E < 256 else (1, 1), L, 113, E, Ev)
        t["input.attn_mask"] = gf.additive_mask((L, 113), "sdpa " + case)
        write(case, t, {}, "d_k = %d, d_v = %d, L = %d, S = 113, additive mask [L, S] with -inf"
              % (E, Ev, L), tol=TOL_SDPA_WIDE, weights=False)

    # --- ranks 2 to 5, masks broadcast over the leading dimensions ---
    gf.seed_for(module, "rank3_mask_2d")
    t = qkv((4,), 5, 7, 8, 6)
    t["input.attn_mask"] = gf.bool_mask((5, 7), 0.4, "rank3")
    write("rank3_mask_2d", t, {}, "rank 3 q [4, 5, 8], bool mask [5, 7] broadcast over the leading dim")
    gf.seed_for(module, "rank4_mask_1d")
    t = qkv((2, 3), 5, 7, 8, 6)
    t["input.attn_mask"] = torch.tensor([False, True, False, False, True, False, False])
    write("rank4_mask_1d", t, {}, "rank 4, bool mask [S] = [7] broadcast over [B, H, L]")
    gf.seed_for(module, "rank5_mask_5d")
    t = qkv((2, 3, 2), 5, 7, 8, 6)
    t["input.attn_mask"] = gf.bool_mask((2, 1, 2, 5, 7), 0.4, "rank5")
    write("rank5_mask_5d", t, {}, "rank 5 q [2, 3, 2, 5, 8], bool mask [2, 1, 2, 5, 7] (broadcast over dim 1)")
    gf.seed_for(module, "rank5_mask_3d_float")
    t = qkv((2, 3, 2), 5, 7, 8, 6)
    t["input.attn_mask"] = gf.additive_mask((2, 5, 7), "rank5 float")
    write("rank5_mask_3d_float", t, {},
          "rank 5 q [2, 3, 2, 5, 8], additive mask [2, 5, 7] broadcast over the first two dims")
    gf.seed_for(module, "rank5_causal")
    write("rank5_causal", qkv((3, 1, 2), 6, 6, 4, 4), {"is_causal": True}, "rank 5 [3, 1, 2, 6, 4], is_causal")

    # --- enable_gqa (torch >= 2.5), logit_softcap (Gemma 2, ggml) ---
    gf.seed_for(module, "gqa")
    t = {"input.query": gf.randn(2, 6, 5, 8), "input.key": gf.randn(2, 2, 7, 8), "input.value": gf.randn(2, 2, 7, 4)}
    write("gqa", t, {"enable_gqa": True},
          "enable_gqa: q [2, 6, 5, 8], k [2, 2, 7, 8], v [2, 2, 7, 4]: query head h reads kv head h // 3")
    gf.seed_for(module, "gqa_mask_rank3")
    t = {"input.query": gf.randn(4, 5, 8), "input.key": gf.randn(2, 9, 8), "input.value": gf.randn(2, 9, 8)}
    t["input.attn_mask"] = gf.additive_mask((4, 5, 9), "gqa rank3")
    write("gqa_mask_rank3", t, {"enable_gqa": True},
          "enable_gqa on rank 3 (heads in dim -3): q [4, 5, 8], k, v [2, 9, 8], additive mask [4, 5, 9]")
    gf.seed_for(module, "gqa_causal_mqa")
    t = {"input.query": gf.randn(1, 4, 6, 8), "input.key": gf.randn(1, 1, 6, 8), "input.value": gf.randn(1, 1, 6, 8)}
    write("gqa_causal_mqa", t, {"enable_gqa": True, "is_causal": True},
          "multi-query (H_kv = 1) with is_causal: q [1, 4, 6, 8], k, v [1, 1, 6, 8]")
    gf.seed_for(module, "softcap")
    write("softcap", qkv((2, 2), 5, 7, 8, 6, scale=2.5), {"logit_softcap": 5.0},
          "logit_softcap 5: scores = 5 tanh(scale q.k / 5) (scores up to ~20 before capping)")
    gf.seed_for(module, "softcap_mask_scale")
    t = qkv((2, 2), 5, 130, 8, 6, scale=2.5)
    t["input.attn_mask"] = gf.bool_mask((2, 1, 5, 130), 0.3, "softcap")
    write("softcap_mask_scale", t, {"logit_softcap": 3.0, "scale": 0.5},
          "logit_softcap 3 with scale 0.5 and a bool mask [2, 1, 5, 130] (the cap comes before the mask)")
    gf.seed_for(module, "softcap_gqa")
    t = {"input.query": gf.randn(1, 4, 5, 8, scale=2.0), "input.key": gf.randn(1, 2, 7, 8, scale=2.0),
         "input.value": gf.randn(1, 2, 7, 8)}
    write("softcap_gqa", t, {"logit_softcap": 4.0, "enable_gqa": True}, "logit_softcap 4 with enable_gqa (H 4, H_kv 2)")


# ---------------------------------------------------------------------------------------
# multihead_attention: add_bias_kv, add_zero_attn, unbatched 1-D key_padding_mask
# ---------------------------------------------------------------------------------------

def mha_formula(options):
    """nn.MultiheadAttention written out: projections, bias_k/bias_v appended, zero
    key/value appended, masks padded with attending columns."""
    E, H = options["embed_dim"], options["num_heads"]
    bf = options.get("batch_first", False)

    def fn(**g):
        query = g["input.query"]
        unbatched = query.dim() == 2
        key, value = g.get("input.key", query), g.get("input.value", query)
        if unbatched:
            query, key, value = (x.unsqueeze(0) for x in (query, key, value))  # [1, n, E]
        elif not bf:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        if "in_proj_weight" in g:
            wq, wk, wv = g["in_proj_weight"].chunk(3)
        else:
            wq, wk, wv = g["q_proj_weight"], g["k_proj_weight"], g["v_proj_weight"]
        bq, bk, bv = g["in_proj_bias"].chunk(3) if "in_proj_bias" in g else (0.0, 0.0, 0.0)
        B, L, dh = query.shape[0], query.shape[1], E // H
        q = query @ wq.T + bq                 # [B, L, E]
        k = key @ wk.T + bk                   # [B, S, E]
        v = value @ wv.T + bv
        am = g.get("input.attn_mask")
        kpm = g.get("input.key_padding_mask")
        if kpm is not None and unbatched:
            kpm = kpm.unsqueeze(0)
        blocked = None                         # [B, H, L, S'] true = masked out, or additive
        additive = None
        S = k.shape[1]
        if am is not None:
            am = am.reshape(B, H, L, S) if am.dim() == 3 else am.expand(B, H, L, S)
            if am.dtype in (torch.bool, torch.int64):
                blocked = am.to(torch.bool)
            else:
                additive = am
        if kpm is not None:
            kb = kpm.to(torch.bool).reshape(B, 1, 1, S).expand(B, H, L, S)
            blocked = kb if blocked is None else (blocked | kb)
        extra = 0
        if "bias_k" in g:
            k = torch.cat([k, g["bias_k"].reshape(1, 1, E).expand(B, 1, E)], dim=1)
            v = torch.cat([v, g["bias_v"].reshape(1, 1, E).expand(B, 1, E)], dim=1)
            extra += 1
        if options.get("add_zero_attn", False):
            k = torch.cat([k, torch.zeros(B, 1, E, dtype=k.dtype)], dim=1)
            v = torch.cat([v, torch.zeros(B, 1, E, dtype=v.dtype)], dim=1)
            extra += 1
        S2 = S + extra
        heads = lambda x, n: x.reshape(B, n, H, dh).transpose(1, 2)
        scores = (heads(q, L) @ heads(k, S2).transpose(-2, -1)) / math.sqrt(dh)  # [B, H, L, S2]
        if additive is not None:
            scores = scores + F.pad(additive, (0, extra))
        if blocked is not None:
            scores = scores.masked_fill(F.pad(blocked, (0, extra), value=False), -math.inf)
        gf.check_no_fully_masked_rows(torch.isneginf(scores), "mha scores")
        weights = torch.softmax(scores, dim=-1)
        ctx = (weights @ heads(v, S2)).transpose(1, 2).reshape(B, L, E)
        out = ctx @ g["out_proj.weight"].T
        if "out_proj.bias" in g:
            out = out + g["out_proj.bias"]
        if unbatched:
            out = out.squeeze(0)
        elif not bf:
            out = out.transpose(0, 1)
        result = {"output": out}
        if options.get("need_weights", True):
            wts = weights.mean(dim=1) if options.get("average_attn_weights", True) else weights
            result["attn_weights"] = wts.squeeze(0) if unbatched else wts
        return result
    return fn


def mha_torch(options):
    def fn(dtype, **g):
        E, H = options["embed_dim"], options["num_heads"]
        mha = torch.nn.MultiheadAttention(E, H, bias=options.get("bias", True),
                                          add_bias_kv=options.get("add_bias_kv", False),
                                          add_zero_attn=options.get("add_zero_attn", False),
                                          kdim=options.get("kdim"), vdim=options.get("vdim"),
                                          batch_first=options.get("batch_first", False),
                                          dtype=dtype)
        mha.eval()
        params = dict(mha.named_parameters())
        for name in list(params):
            with torch.no_grad():
                params[name].copy_(g[name])
        # Route the gradient of every parameter to the file's leaf tensors.
        for name, p in params.items():
            mod, attr = mha, name
            if "." in name:
                sub, attr = name.split(".")
                mod = getattr(mha, sub)
            delattr(mod, attr)
            setattr(mod, attr, g[name])
        query = g["input.query"]
        key, value = g.get("input.key", query), g.get("input.value", query)
        kpm = g.get("input.key_padding_mask")
        am = g.get("input.attn_mask")
        out, wts = mha(query, key, value, key_padding_mask=None if kpm is None else kpm.to(torch.bool),
                       attn_mask=None if am is None else (am.to(torch.bool) if am.dtype == torch.int64 else am),
                       need_weights=options.get("need_weights", True),
                       average_attn_weights=options.get("average_attn_weights", True))
        result = {"output": out}
        if options.get("need_weights", True):
            result["attn_weights"] = wts
        return result
    return fn


def mha_params(E, H, kdim, vdim, bias, add_bias_kv):
    p = {}
    if kdim == E and vdim == E:
        p["in_proj_weight"] = gf.randn(3 * E, E, scale=1.0 / math.sqrt(E))
    else:
        p["q_proj_weight"] = gf.randn(E, E, scale=1.0 / math.sqrt(E))
        p["k_proj_weight"] = gf.randn(E, kdim, scale=1.0 / math.sqrt(kdim))
        p["v_proj_weight"] = gf.randn(E, vdim, scale=1.0 / math.sqrt(vdim))
    if bias:
        p["in_proj_bias"] = gf.randn(3 * E, scale=0.1)
        p["out_proj.bias"] = gf.randn(E, scale=0.1)
    p["out_proj.weight"] = gf.randn(E, E, scale=1.0 / math.sqrt(E))
    if add_bias_kv:
        p["bias_k"] = gf.randn(1, 1, E)
        p["bias_v"] = gf.randn(1, 1, E)
    return p


def mha_cases():
    """(case, spec, description); spec: E, H, L, S, B (0: unbatched), kdim, vdim, bias,
    batch_first, self, add_bias_kv, add_zero_attn, kpm (None, "bool", "i64", "1d"),
    am (None, "bool2d", "float3d"), need_weights, average."""
    base = dict(E=8, H=2, L=4, S=5, B=2, kdim=8, vdim=8, bias=True, batch_first=False, self=False,
                add_bias_kv=False, add_zero_attn=False, kpm=None, am=None, need_weights=True, average=True)
    cases = [
        ("bias_kv", dict(add_bias_kv=True), "add_bias_kv: learned bias_k, bias_v [1, 1, 8] appended as a 6th key"),
        ("zero_attn", dict(add_zero_attn=True), "add_zero_attn: a zero key and value appended after the projections"),
        ("bias_kv_zero_attn_masks", dict(add_bias_kv=True, add_zero_attn=True, kpm="bool", am="bool2d"),
         "both options with a BOOL key_padding_mask [2, 5] and a bool attn_mask [4, 5] (padded with attending columns)"),
        ("bias_kv_float_mask_heads", dict(add_bias_kv=True, am="float3d", average=False, batch_first=True),
         "add_bias_kv, batch_first, additive 3-D attn_mask [B * H, L, S], per-head weights"),
        ("zero_attn_self_kdim", dict(add_zero_attn=True, self=False, kdim=6, vdim=3, kpm="i64"),
         "add_zero_attn with kdim 6, vdim 3 (separate projections) and an I64 key_padding_mask"),
        ("zero_attn_no_weights", dict(add_zero_attn=True, add_bias_kv=True, self=True, need_weights=False, bias=False),
         "self-attention, both options, bias=False, need_weights=False"),
        ("unbatched_kpm_1d", dict(B=0, kpm="1d"), "unbatched query [4, 8], key/value [5, 8], 1-D key_padding_mask [5]"),
        ("unbatched_kpm_1d_bias_kv", dict(B=0, kpm="1d", add_bias_kv=True, add_zero_attn=True, am="bool2d"),
         "unbatched with a 1-D key_padding_mask [5], add_bias_kv, add_zero_attn and attn_mask [4, 5]"),
    ]
    out = []
    for case, over, description in cases:
        spec = dict(base)
        spec.update(over)
        out.append((case, spec, description))
    return out


def mha_inputs(spec, case):
    E, H, L, S, B = spec["E"], spec["H"], spec["L"], spec["S"], spec["B"]
    if spec["self"]:
        S = L
    t = mha_params(E, H, spec["kdim"], spec["vdim"], spec["bias"], spec["add_bias_kv"])

    def seq(n, width):
        if B == 0:
            return gf.randn(n, width)
        return gf.randn(B, n, width) if spec["batch_first"] else gf.randn(n, B, width)
    t["input.query"] = seq(L, E)
    if not spec["self"]:
        t["input.key"] = seq(S, spec["kdim"])
        t["input.value"] = seq(S, spec["vdim"])
    Bm = max(B, 1)
    if spec["kpm"] == "1d":
        t["input.key_padding_mask"] = torch.tensor([False, True, False, False, True])
    elif spec["kpm"] is not None:
        m = gf.bool_mask((Bm, S), 0.3, "mha kpm " + case)
        t["input.key_padding_mask"] = m.to(torch.int64) if spec["kpm"] == "i64" else m
    if spec["am"] == "bool2d":
        t["input.attn_mask"] = gf.bool_mask((L, S), 0.3, "mha am " + case)
    elif spec["am"] == "float3d":
        t["input.attn_mask"] = gf.additive_mask((Bm * H, L, S), "mha am " + case)
    # Fixtures never hold a fully masked row: with the extra attending columns this holds
    # anyway when add_bias_kv or add_zero_attn is on; otherwise check the combination.
    if not (spec["add_bias_kv"] or spec["add_zero_attn"]) and "input.key_padding_mask" in t \
            and "input.attn_mask" in t:
        kp = t["input.key_padding_mask"].to(torch.bool).reshape(Bm, 1, 1, S)
        gf.check_no_fully_masked_rows(kp | t["input.attn_mask"].to(torch.bool), "mha " + case)
    return t


def mha_options(spec):
    o = {"embed_dim": spec["E"], "num_heads": spec["H"]}
    for key, default in (("bias", True), ("batch_first", False), ("add_bias_kv", False),
                         ("add_zero_attn", False), ("need_weights", True)):
        if spec[key] != default:
            o[key] = spec[key]
    if not spec["average"]:
        o["average_attn_weights"] = False
    if spec["kdim"] != spec["E"]:
        o["kdim"] = spec["kdim"]
    if spec["vdim"] != spec["E"]:
        o["vdim"] = spec["vdim"]
    return o


def gen_mha_options(w, grad):
    module = "multihead_attention"
    folder = "grad_multihead_attention_options" if grad else "multihead_attention_options"
    for case, spec, description in mha_cases():
        if grad and case in ("zero_attn_self_kdim",):
            continue
        gf.seed_for(folder, case)
        inputs = mha_inputs(spec, case)
        options = mha_options(spec)
        ups = ()
        if grad:
            ups = ("output", "attn_weights") if options.get("need_weights", True) else ("output",)
        for dtype in (F32, F64):
            emit(w, folder, module, case, dtype, inputs, options, TOL_GRAD if grad else TOL_MHA,
                 description + ("; gradients of sum(output * upstream)" if grad else ""),
                 mha_torch(options), mha_formula(options), ups)


# ---------------------------------------------------------------------------------------
# GRU with linear_before_reset
# ---------------------------------------------------------------------------------------

def gru_cell_formula(x, h, w_ih, w_hh, b_ih, b_hh, linear_before_reset):
    xi = x @ w_ih.T + (0.0 if b_ih is None else b_ih)
    xr, xz, xn = xi.chunk(3, dim=-1)
    w_hr, w_hz, w_hn = w_hh.chunk(3, dim=0)
    b_hr, b_hz, b_hn = (0.0, 0.0, 0.0) if b_hh is None else b_hh.chunk(3)
    r = torch.sigmoid(xr + h @ w_hr.T + b_hr)
    z = torch.sigmoid(xz + h @ w_hz.T + b_hz)
    if linear_before_reset:
        n = torch.tanh(xn + r * (h @ w_hn.T + b_hn))
    else:
        n = torch.tanh(xn + (r * h) @ w_hn.T + b_hn)
    return (1.0 - z) * n + z * h


def gru_stack_formula(opts):
    lbr = opts.get("linear_before_reset", True)
    bf = opts.get("batch_first", False)
    layers, N = opts.get("num_layers", 1), opts["hidden_size"]
    D = 2 if opts.get("bidirectional", False) else 1

    def fn(**g):
        x = g["input.input"]
        seq = x.transpose(0, 1) if bf else x
        T, B = seq.shape[0], seq.shape[1]
        lens = [T] * B if "input.lengths" not in g else [int(v) for v in g["input.lengths"]]
        h_0 = g.get("input.h_0")
        h_n = []
        layer_in = seq
        for k in range(layers):
            outs = []
            for d in range(D):
                sfx = "_l%d%s" % (k, "_reverse" if d else "")
                p = [g.get(n + sfx) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                h = torch.zeros(B, N, dtype=x.dtype) if h_0 is None else h_0[k * D + d]
                steps = [None] * T
                for s in range(T):
                    t = s if d == 0 else T - 1 - s
                    h_new = gru_cell_formula(layer_in[t], h, *p, lbr)
                    valid = torch.tensor([t < lens[b] for b in range(B)]).unsqueeze(1)
                    h = torch.where(valid, h_new, h)
                    steps[t] = torch.where(valid, h_new, torch.zeros_like(h_new))
                outs.append(torch.stack(steps))
                h_n.append(h)
            layer_in = torch.cat(outs, dim=2)
        out = layer_in.transpose(0, 1) if bf else layer_in
        return {"output": out, "h_n": torch.stack(h_n)}
    return fn


def gru_torch(opts):
    if not opts.get("linear_before_reset", True) or "lengths" in opts:
        return None

    def fn(dtype, **g):
        m = torch.nn.GRU(opts["input_size"], opts["hidden_size"], opts.get("num_layers", 1),
                         bias=opts.get("bias", True), batch_first=opts.get("batch_first", False),
                         bidirectional=opts.get("bidirectional", False), dtype=dtype)
        for name, _ in list(m.named_parameters()):
            delattr(m, name)
            setattr(m, name, g[name])
        m._flat_weights = [getattr(m, n) for n in m._flat_weights_names]
        out, h_n = m(g["input.input"], g.get("input.h_0"))
        return {"output": out, "h_n": h_n}
    return fn


def gen_gru_options(w, grad):
    folder = "grad_gru" if grad else "gru_options"
    I, N = 5, 4
    layer_cases = [
        ("no_reset_one_layer", dict(num_layers=1), False, "gru, linear_before_reset false, 1 layer, T 6, B 3"),
        ("no_reset_bidirectional_lengths", dict(num_layers=2, bidirectional=True, batch_first=True), True,
         "gru, linear_before_reset false, 2 layers, bidirectional, batch_first, h_0 given, lengths [6, 2, 4]"),
        ("no_reset_no_bias", dict(num_layers=1, bias=False), False, "gru, linear_before_reset false, bias=False"),
        ("reset_true_two_layers", dict(num_layers=2, linear_before_reset=True), False,
         "gru, linear_before_reset true given explicitly (PyTorch's GRU), 2 layers, h_0 given"),
    ]
    for case, over, lengths, description in layer_cases:
        gf.seed_for(folder, case)
        opts = {"input_size": I, "hidden_size": N, "linear_before_reset": False}
        opts.update(over)
        D = 2 if opts.get("bidirectional") else 1
        bound = 1.0 / math.sqrt(N)
        t = {}
        for k in range(opts["num_layers"]):
            for d in range(D):
                sfx = "_l%d%s" % (k, "_reverse" if d else "")
                width = I if k == 0 else N * D
                t["weight_ih" + sfx] = (torch.rand(3 * N, width, dtype=F64) * 2 - 1) * bound * 2
                t["weight_hh" + sfx] = (torch.rand(3 * N, N, dtype=F64) * 2 - 1) * bound * 2
                if opts.get("bias", True):
                    t["bias_ih" + sfx] = (torch.rand(3 * N, dtype=F64) * 2 - 1) * bound
                    t["bias_hh" + sfx] = (torch.rand(3 * N, dtype=F64) * 2 - 1) * bound
        T, B = 6, 3
        t["input.input"] = gf.randn(B, T, I) if opts.get("batch_first") else gf.randn(T, B, I)
        if opts["num_layers"] == 2:
            t["input.h_0"] = gf.randn(opts["num_layers"] * D, B, N, scale=0.5)
        topts = dict(opts)
        if lengths:
            t["input.lengths"] = torch.tensor([6, 2, 4], dtype=torch.int64)
            topts["lengths"] = True
        ups = ("output", "h_n") if grad else ()
        for dtype in (F32, F64):
            emit(w, folder, "gru", case, dtype, t, opts, TOL_GRAD if grad else TOL_RECURRENT, description,
                 gru_torch(topts), gru_stack_formula(opts), ups)
    # cells
    cfolder = "grad_cells" if grad else "gru_options"
    for case, lbr, bias, hx in (("gru_cell_no_reset", False, True, True), ("gru_cell_no_reset_no_bias", False, False, False),
                                ("gru_cell_reset_true", True, True, True)):
        gf.seed_for(cfolder, case)
        t = {"weight_ih": gf.randn(3 * N, I, scale=0.5), "weight_hh": gf.randn(3 * N, N, scale=0.5)}
        if bias:
            t["bias_ih"], t["bias_hh"] = gf.randn(3 * N, scale=0.3), gf.randn(3 * N, scale=0.3)
        t["input.input"] = gf.randn(3, I)
        if hx:
            t["input.hx"] = gf.randn(3, N)
        opts = {"input_size": I, "hidden_size": N, "linear_before_reset": lbr}
        if not bias:
            opts["bias"] = False

        def formula(lbr=lbr, **g):
            h = g.get("input.hx", torch.zeros(g["input.input"].shape[0], N, dtype=g["input.input"].dtype))
            return {"h": gru_cell_formula(g["input.input"], h, g["weight_ih"], g["weight_hh"],
                                          g.get("bias_ih"), g.get("bias_hh"), lbr)}

        def native(dtype, bias=bias, **g):
            cell = torch.nn.GRUCell(I, N, bias=bias, dtype=dtype)
            for name, _ in list(cell.named_parameters()):
                delattr(cell, name)
                setattr(cell, name, g[name])
            return {"h": cell(g["input.input"], g.get("input.hx"))}
        desc = "gru_cell, input [3, 5], hidden 4, linear_before_reset %s%s%s" % (
            str(lbr).lower(), "" if bias else ", bias=False", "" if hx else ", hx absent (zeros)")
        for dtype in (F32, F64):
            emit(w, cfolder, "gru_cell", case, dtype, t, opts, TOL_GRAD if grad else TOL_CELL, desc,
                 native if lbr else None, formula, ("h",) if grad else ())


# ---------------------------------------------------------------------------------------
# gradient cases of the modules whose backward the runner did not check
# ---------------------------------------------------------------------------------------

def gen_grad_sdpa(w):
    folder, module = "grad_scaled_dot_product_attention", "scaled_dot_product_attention"

    def qkv(lead, L, S, E, Ev, kv_lead=None):
        kv_lead = lead if kv_lead is None else kv_lead
        return {"input.query": gf.randn(*lead, L, E), "input.key": gf.randn(*kv_lead, S, E),
                "input.value": gf.randn(*kv_lead, S, Ev)}
    cases = []
    gf.seed_for(folder, "no_mask")
    cases.append(("no_mask", qkv((2, 3), 5, 7, 4, 6), {}, "q [2, 3, 5, 4], k [2, 3, 7, 4], v [2, 3, 7, 6], no mask"))
    gf.seed_for(folder, "causal")
    cases.append(("causal", qkv((2, 2), 6, 6, 8, 8), {"is_causal": True}, "is_causal, L = S = 6"))
    gf.seed_for(folder, "causal_l_ne_s")
    cases.append(("causal_l_ne_s", qkv((2,), 4, 9, 8, 5), {"is_causal": True},
                  "is_causal with L = 4 < S = 9 (top-left aligned), rank 3"))
    gf.seed_for(folder, "bool_mask")
    t = qkv((2, 2), 5, 7, 4, 4)
    t["input.attn_mask"] = gf.bool_mask((2, 1, 5, 7), 0.4, "grad sdpa bool")
    cases.append(("bool_mask", t, {}, "bool attn_mask [2, 1, 5, 7]"))
    gf.seed_for(folder, "float_mask_scale")
    t = qkv((2, 2), 5, 7, 4, 4)
    t["input.attn_mask"] = gf.additive_mask((5, 7), "grad sdpa float")
    cases.append(("float_mask_scale", t, {"scale": 0.7}, "additive attn_mask [5, 7] with -inf, scale 0.7"))
    gf.seed_for(folder, "unbatched")
    cases.append(("unbatched", qkv((), 5, 7, 4, 3), {}, "rank 2 q [5, 4], k [7, 4], v [7, 3]"))
    gf.seed_for(folder, "rank5")
    t = qkv((2, 2, 2), 4, 5, 4, 4)
    t["input.attn_mask"] = gf.bool_mask((2, 1, 1, 4, 5), 0.3, "grad sdpa rank5")
    cases.append(("rank5", t, {}, "rank 5 [2, 2, 2, L, E] with a bool mask [2, 1, 1, 4, 5]"))
    gf.seed_for(folder, "gqa")
    cases.append(("gqa", qkv((2, 4), 5, 6, 4, 4, kv_lead=(2, 2)), {"enable_gqa": True},
                  "enable_gqa: q [2, 4, 5, 4], k, v [2, 2, 6, 4]"))
    gf.seed_for(folder, "softcap")
    t = qkv((2, 2), 5, 7, 4, 4)
    t["input.query"] = t["input.query"] * 3.0
    cases.append(("softcap", t, {"logit_softcap": 2.0}, "logit_softcap 2 (q scaled by 3: the cap bends)"))
    gf.seed_for(folder, "softcap_gqa_causal")
    cases.append(("softcap_gqa_causal", qkv((1, 4), 6, 6, 4, 4, kv_lead=(1, 1)),
                  {"logit_softcap": 1.5, "enable_gqa": True, "is_causal": True},
                  "logit_softcap 1.5, enable_gqa with one kv head, is_causal"))
    for case, inputs, options, description in cases:
        for dtype in (F32, F64):
            emit(w, folder, module, case, dtype, inputs, options, TOL_GRAD,
                 description + "; upstream on output only", sdpa_torch(options, weights=False),
                 (lambda f: (lambda **t: {"output": f(**t)["output"]}))(sdpa_formula(options)), ("output",))


def gen_grad_softmax(w):
    folder, module = "grad_softmax", "softmax"
    for case, shape, dim, scale, description in (("random_2d", (3, 7), -1, 2.0, "input [3, 7], dim -1"),
                                                 ("dim0_3d", (4, 3, 5), 0, 2.0, "input [4, 3, 5], dim 0"),
                                                 ("large_logits", (2, 6), -1, 1.0, "logits near 1e3 (O(1) spread)")):
        gf.seed_for(folder, case)
        x = gf.randn(*shape, scale=scale)
        if case == "large_logits":
            x = x + 1000.0
        opts = {} if dim == -1 else {"dim": dim}
        for dtype in (F32, F64):
            emit(w, folder, module, case, dtype, {"input.input": x}, opts, TOL_GRAD, description,
                 lambda dtype, dim=dim, **t: {"output": torch.softmax(t["input.input"], dim=dim)},
                 lambda dim=dim, **t: {"output": gf._softmax_explicit(t["input.input"], dim)}, ("output",))


def gen_grad_layer_norm(w):
    folder, module = "grad_layer_norm", "layer_norm"
    for case, shape, affine, eps, description in (("affine", (3, 4, 6), True, 1e-5, "input [3, 4, 6], normalized_shape 6, affine"),
                                                  ("no_affine", (5, 8), False, 1e-5, "input [5, 8], elementwise_affine false"),
                                                  ("eps", (4, 3), True, 0.1, "input [4, 3], eps 0.1")):
        gf.seed_for(folder, case)
        D = shape[-1]
        t = {"input.input": gf.randn(*shape, scale=2.0) + 0.5}
        if affine:
            t["weight"] = 1.0 + gf.randn(D, scale=0.3)
            t["bias"] = gf.randn(D, scale=0.3)
        opts = {"normalized_shape": D, "eps": eps}
        if not affine:
            opts["elementwise_affine"] = False

        def formula(eps=eps, **g):
            x = g["input.input"]
            mu = x.mean(dim=-1, keepdim=True)
            var = ((x - mu) ** 2).mean(dim=-1, keepdim=True)
            y = (x - mu) / torch.sqrt(var + eps)
            if "weight" in g:
                y = y * g["weight"] + g["bias"]
            return {"output": y}

        def native(dtype, eps=eps, D=D, **g):
            return {"output": F.layer_norm(g["input.input"], (D,), g.get("weight"), g.get("bias"), eps)}
        for dtype in (F32, F64):
            emit(w, folder, module, case, dtype, t, opts, TOL_GRAD, description, native, formula, ("output",))


def gen_grad_cells(w):
    folder = "grad_cells"
    I, N = 5, 4
    for module, case, extra, hx, description in (
            ("rnn_cell", "rnn_cell_tanh", {}, True, "rnn_cell tanh, hx given"),
            ("rnn_cell", "rnn_cell_relu", {"nonlinearity": "relu"}, True, "rnn_cell relu, hx given"),
            ("lstm_cell", "lstm_cell", {}, True, "lstm_cell, hx and cx given"),
            ("lstm_cell", "lstm_cell_no_state_no_bias", {"bias": False}, False, "lstm_cell, bias=False, no state (zeros)"),
            ("gru_cell", "gru_cell", {}, True, "gru_cell, hx given")):
        gf.seed_for(folder, case)
        G = {"rnn_cell": 1, "lstm_cell": 4, "gru_cell": 3}[module]
        t = {"weight_ih": gf.randn(G * N, I, scale=0.5), "weight_hh": gf.randn(G * N, N, scale=0.5)}
        if extra.get("bias", True):
            t["bias_ih"], t["bias_hh"] = gf.randn(G * N, scale=0.3), gf.randn(G * N, scale=0.3)
        t["input.input"] = gf.randn(3, I)
        if hx:
            t["input.hx"] = gf.randn(3, N)
            if module == "lstm_cell":
                t["input.cx"] = gf.randn(3, N)
        opts = {"input_size": I, "hidden_size": N}
        opts.update(extra)
        kind = module.split("_")[0]

        def formula(kind=kind, nl=extra.get("nonlinearity", "tanh"), **g):
            x = g["input.input"]
            z = torch.zeros(x.shape[0], N, dtype=x.dtype)
            h, c = gf.cell_reference(kind, x, g.get("input.hx", z), g.get("input.cx", z), g["weight_ih"],
                                     g["weight_hh"], g.get("bias_ih"), g.get("bias_hh"), nl)
            return {"h": h} if c is None else {"h": h, "c": c}

        def native(dtype, module=module, extra=extra, **g):
            bias = extra.get("bias", True)
            if module == "rnn_cell":
                cell = torch.nn.RNNCell(I, N, bias=bias, nonlinearity=extra.get("nonlinearity", "tanh"), dtype=dtype)
            elif module == "lstm_cell":
                cell = torch.nn.LSTMCell(I, N, bias=bias, dtype=dtype)
            else:
                cell = torch.nn.GRUCell(I, N, bias=bias, dtype=dtype)
            for name, _ in list(cell.named_parameters()):
                delattr(cell, name)
                setattr(cell, name, g[name])
            if module == "lstm_cell":
                state = (g["input.hx"], g["input.cx"]) if "input.hx" in g else None
                h, c = cell(g["input.input"], state)
                return {"h": h, "c": c}
            return {"h": cell(g["input.input"], g.get("input.hx"))}
        ups = ("h", "c") if module == "lstm_cell" else ("h",)
        for dtype in (F32, F64):
            emit(w, folder, module, case, dtype, t, opts, TOL_GRAD, description, native, formula, ups)


def gen_grad_rnn(w):
    folder, module = "grad_rnn", "rnn"
    I, N, T, B = 4, 3, 5, 3
    for case, over, description in (("tanh_two_layers_h0", dict(num_layers=2), "rnn tanh, 2 layers, h_0 given"),
                                    ("relu_bidirectional_lengths", dict(nonlinearity="relu", bidirectional=True,
                                                                        batch_first=True),
                                     "rnn relu, bidirectional, batch_first, lengths [5, 2, 3]")):
        gf.seed_for(folder, case)
        opts = {"input_size": I, "hidden_size": N}
        opts.update(over)
        D = 2 if opts.get("bidirectional") else 1
        L = opts.get("num_layers", 1)
        t = {}
        for k in range(L):
            for d in range(D):
                sfx = "_l%d%s" % (k, "_reverse" if d else "")
                width = I if k == 0 else N * D
                t["weight_ih" + sfx] = gf.randn(N, width, scale=0.5)
                t["weight_hh" + sfx] = gf.randn(N, N, scale=0.5)
                t["bias_ih" + sfx] = gf.randn(N, scale=0.2)
                t["bias_hh" + sfx] = gf.randn(N, scale=0.2)
        t["input.input"] = gf.randn(B, T, I) if opts.get("batch_first") else gf.randn(T, B, I)
        lengths = None
        if L == 2:
            t["input.h_0"] = gf.randn(L * D, B, N, scale=0.5)
        else:
            lengths = [5, 2, 3]
            t["input.lengths"] = torch.tensor(lengths, dtype=torch.int64)

        def formula(opts=opts, **g):
            params = {k: v for k, v in g.items() if not k.startswith("input.")}
            lens = None if "input.lengths" not in g else g["input.lengths"].tolist()
            out, h_n, _ = gf.recurrent_reference("rnn", opts, params, g["input.input"], g.get("input.h_0"), None, lens)
            return {"output": out, "h_n": h_n}

        def native(dtype, opts=opts, **g):
            m = torch.nn.RNN(I, N, opts.get("num_layers", 1), nonlinearity=opts.get("nonlinearity", "tanh"),
                             batch_first=opts.get("batch_first", False), bidirectional=opts.get("bidirectional", False),
                             dtype=dtype)
            for name, _ in list(m.named_parameters()):
                delattr(m, name)
                setattr(m, name, g[name])
            m._flat_weights = [getattr(m, n) for n in m._flat_weights_names]
            x = g["input.input"]
            if "input.lengths" in g:
                bf = opts.get("batch_first", False)
                packed = torch.nn.utils.rnn.pack_padded_sequence(x, g["input.lengths"], batch_first=bf,
                                                                 enforce_sorted=False)
                out, h_n = m(packed, g.get("input.h_0"))
                out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=bf, total_length=T)
            else:
                out, h_n = m(x, g.get("input.h_0"))
            return {"output": out, "h_n": h_n}
        for dtype in (F32, F64):
            emit(w, folder, module, case, dtype, t, opts, TOL_GRAD, description, native, formula, ("output", "h_n"))


def gen_grad_alignment(w):
    B, T, Hq, Hk, A = 3, 6, 5, 4, 7
    blocked = torch.arange(T).unsqueeze(0) >= torch.tensor([6, 4, 1]).unsqueeze(1)
    # bahdanau
    folder = "grad_bahdanau_attention"
    for case, masked in (("basic", False), ("key_padding_mask", True)):
        gf.seed_for(folder, case)
        t = {"W1": gf.randn(A, Hk, scale=0.5), "W2": gf.randn(A, Hq, scale=0.5), "v": gf.randn(A),
             "input.query": gf.randn(B, Hq), "input.keys": gf.randn(B, T, Hk)}
        if masked:
            t["input.key_padding_mask"] = blocked

        def formula(**g):
            wts, ctx = gf.bahdanau_explicit(g["input.query"], g["input.keys"], g["W1"], g["W2"], g["v"],
                                            g.get("input.key_padding_mask"))
            return {"attn_weights": wts, "context": ctx}
        for dtype in (F32, F64):
            emit(w, folder, "bahdanau_attention", case, dtype, t, {}, TOL_GRAD,
                 "bahdanau, query [3, 5], keys [3, 6, 4], A 7%s; upstream on weights and context"
                 % (", key_padding_mask (lengths 6, 4, 1)" if masked else ""),
                 lambda dtype, **g: formula(**g), formula, ("attn_weights", "context"))
    # luong
    folder = "grad_luong_attention"
    for case, score, hidden, masked in (("dot", "dot", False, False), ("dot_attentional_mask", "dot", True, True),
                                        ("general", "general", False, True), ("general_attentional", "general", True, False),
                                        ("concat", "concat", False, False), ("concat_attentional_mask", "concat", True, True)):
        gf.seed_for(folder, case)
        Hk2 = Hq if score == "dot" else Hk
        t = {"input.query": gf.randn(B, Hq), "input.keys": gf.randn(B, T, Hk2)}
        if score == "general":
            t["W"] = gf.randn(Hq, Hk2, scale=0.5)
        if score == "concat":
            t["W"] = gf.randn(A, Hq + Hk2, scale=0.5)
            t["v"] = gf.randn(A)
        if hidden:
            t["Wc"] = gf.randn(Hq, Hk2 + Hq, scale=0.5)
        if masked:
            t["input.key_padding_mask"] = blocked

        def formula(score=score, **g):
            params = {k: g[k] for k in ("W", "v", "Wc") if k in g}
            wts, ctx, hid = gf.luong_explicit(score, g["input.query"], g["input.keys"], params,
                                              g.get("input.key_padding_mask"))
            out = {"attn_weights": wts, "context": ctx}
            if hid is not None:
                out["attentional_hidden"] = hid
            return out
        ups = ("attn_weights", "context") + (("attentional_hidden",) if hidden else ())
        for dtype in (F32, F64):
            emit(w, folder, "luong_attention", case, dtype, t, {"score": score}, TOL_GRAD,
                 "luong %s%s%s; upstream on every output" % (score, ", Wc (attentional_hidden)" if hidden else "",
                                                             ", key_padding_mask" if masked else ""),
                 lambda dtype, **g: formula(**g), formula, ups)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"))
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    w = Writer(args.out)
    gen_sdpa_edges(w)
    gen_mha_options(w, grad=False)
    gen_gru_options(w, grad=False)
    gen_grad_sdpa(w)
    gen_grad_softmax(w)
    gen_grad_layer_norm(w)
    gen_grad_cells(w)
    gen_grad_rnn(w)
    gen_gru_options(w, grad=True)
    gen_grad_alignment(w)
    gen_mha_options(w, grad=True)
    print("wrote %d files under %s" % (len(w.written), args.out))
    for folder in sorted(w.worst):
        print("  %-40s worst stored/float64 ratio %.4f of the tolerance" % (folder, w.worst[folder]))


if __name__ == "__main__":
    main()
