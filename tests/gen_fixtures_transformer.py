#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# Writes the seeded PyTorch fixtures of the transformer blocks (layer norm, layers, stacks, full models).
"""Generate (and check) the PyTorch reference fixtures of the transformer blocks.

Usage (Debian's python3-torch; the pyenv `python3` has no torch):

    /usr/bin/python3 tests/gen_fixtures_transformer.py            # (re)write tests/data/<module>/
    /usr/bin/python3 tests/gen_fixtures_transformer.py --check    # re-read and re-verify them
    /usr/bin/python3 tests/gen_fixtures_transformer.py --out DIR  # write elsewhere

Modules: layer_norm, transformer_encoder_layer, transformer_decoder_layer, and four the
contract's table does not list (names in tests/data/README.md): transformer_encoder and
transformer_decoder (stacks with an optional final norm), transformer (nn.Transformer) and
transformer_seq2seq (class TransformerSeq2Seq below: embeddings, sinusoidal positions,
nn.Transformer and an output projection, attend::TransformerSeq2Seq's PyTorch twin).
The file format, seeding, dtype handling and mask helpers come from tests/gen_fixtures.py
(imported, not copied): one case per file, built from float64 random data with a per-case
seed, written once in float32 (reference computed by torch in float32) and once in
float64. A rerun gives byte-identical files.

Torch 1.13 notes that shape the generator:
- Its transformer layers have no is_causal argument. Cases with the `is_causal` /
  `tgt_is_causal` option are computed with the explicit causal mask (key j > i blocked)
  and written without any mask tensor, as docs/fixtures.md requires.
- In eval mode under no_grad, nn.TransformerEncoderLayer (batch_first, no src_mask, even
  nhead) takes a fused fast path, and nn.TransformerEncoder with a key padding mask
  converts to nested tensors and returns zeros at padded positions, which docs/fixtures.md
  forbids. References are therefore computed on the plain path (grad enabled with
  parameters requiring grad, as gen_fixtures.py does for MHA) and cross-checked against
  the fast path where it applies (non-padded positions only).
- I64 key padding masks are rejected ("only bool and floating types"): such cases are
  computed with the bool mask and written as I64 0/1.

`--check` recomputes every expected tensor in float64 from the file's own tensors with
explicit formulas (no torch.nn modules) and requires the stored values to use at most
CHECK_MARGIN of the file's tolerance.
"""

import argparse
import copy
import json
import math
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gen_fixtures as gf  # noqa: E402  (the shared writer, seeds, masks and checks)

F32, F64 = gf.F32, gf.F64
DEFAULT_OUT = os.path.join(HERE, "data")
GENERATOR = "tests/gen_fixtures_transformer.py (torch %s)" % torch.__version__
MODULES = ("layer_norm", "transformer_encoder_layer", "transformer_decoder_layer",
           "transformer_encoder", "transformer_decoder", "transformer", "transformer_seq2seq")

# ---------------------------------------------------------------------------------------
# Tolerances (rtol, atol), checked as atol + rtol * |want|. The measured worst ratios
# against the float64 recomputation are printed by --check.
# ---------------------------------------------------------------------------------------

# layer_norm: a mean and a variance over <= 16 features, one sqrt and a division; outputs
# are O(1) (x_hat has unit variance, affine weights ~1). Measured torch float32 vs float64:
# max abs error 3.4e-7 (basic), 0.01 of these; double 4.4e-16, 0.004 of the double pair.
TOL_LAYER_NORM = {F32: (1e-5, 1e-5), F64: (1e-12, 1e-13)}

# layer_norm on rows 1000 + N(0, 1): x - mean is computed from values whose ulp is 6.1e-5
# (float) / 1.1e-13 (double), and the float mean of 16 such values is off by several ulps,
# so after dividing by the row's std ~1 any float implementation is off by ~1e-4: measured
# torch float32 vs float64 max abs error 1.6e-4 (a plain two-pass float version: 8.5e-5),
# 0.08 of these; double 5.6e-13, 0.03. A one-pass variance E[x^2] - E[x]^2 cancels
# 1e6-sized terms (float: ulp 0.06, garbage; double: ~2e-10 relative) and fails both.
TOL_LAYER_NORM_OFFSET = {F32: (1e-3, 1e-3), F64: (1e-11, 1e-11)}

# transformer layers and stacks: MHA (four products, softmax), two LayerNorms (three in
# the decoder) and a feed-forward block of inner lengths <= 64; LayerNorm divides by the
# row's std, so an absolute error of the residual sum passes through scaled by
# weight / std (both O(1) here). Outputs reach |y| ~ 6.6 (pre-norm residual streams are
# not normalised), where one float ulp is 4.8e-7, hence atol 2e-5 (twice MHA's 1e-5).
# Measured torch float32 vs float64: max abs error 1.2e-6 (transformer_encoder,
# pre-norm with masks), 0.044 of these; double <= 2.8e-15, 0.002 of the double pair.
TOL_TRANSFORMER = {F32: (1e-5, 2e-5), F64: (1e-12, 1e-12)}


def write_case(w, module, case, dtype, tensors, options, tol, description):
    """gf.Writer.write with this script named as the generator."""
    float_dtypes = {t.dtype for t in tensors.values() if t.is_floating_point()}
    if float_dtypes != {dtype}:
        raise gf.FixtureError("%s/%s mixes float dtypes %s" % (module, case, float_dtypes))
    for name, t in tensors.items():
        if t.is_floating_point() and bool(torch.isnan(t).any()):
            raise gf.FixtureError("%s/%s: %s holds NaN" % (module, case, name))
    rtol, atol = tol[dtype]
    metadata = {
        "module": module,
        "options": json.dumps(options, sort_keys=True),
        "rtol": repr(float(rtol)),
        "atol": repr(float(atol)),
        "description": description,
        "generator": GENERATOR,
    }
    rel = os.path.join(module, "%s_%s.safetensors" % (case, gf.DTYPE_TAG[dtype]))
    gf.write_safetensors(os.path.join(w.out_dir, rel), tensors, metadata)
    w.written.append(rel)


def randomize(module):
    """Overwrite every parameter with seeded random values (torch's zero biases and unit
    norm weights would hide bias and affine handling). Returns name -> float64 tensor."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            owner = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
            if isinstance(owner, torch.nn.LayerNorm) and name.endswith("weight"):
                p.copy_(1.0 + gf.randn(*p.shape, scale=0.3))
            elif p.dim() == 2:
                p.copy_(gf.randn(*p.shape) / math.sqrt(p.shape[-1]))
            else:
                p.copy_(gf.randn(*p.shape, scale=0.3))
    params = {n: p.detach().clone() for n, p in module.named_parameters()}
    if set(params) != set(module.state_dict()):
        raise gf.FixtureError("parameter names differ from the state_dict")
    return params


def causal_blocked(L, S=None):
    """[L, S] bool, true = key j > query i (top-left aligned, as is_causal)."""
    return torch.ones(L, L if S is None else S, dtype=torch.bool).triu(1)


def causal_float(L):
    """generate_square_subsequent_mask: 0 on and below the diagonal, -inf above."""
    return torch.zeros(L, L, dtype=F64).masked_fill(causal_blocked(L), -math.inf)


def padding(B, L, lengths):
    """[B, L] bool, true = padded: sequence b has lengths[b] valid positions (a suffix pads)."""
    return torch.arange(L).unsqueeze(0) >= torch.tensor(lengths).unsqueeze(1)


def blocked_of(mask, B, H, L, S):
    """A fixture mask (bool true = blocked, or additive float) as bool [B, H, L, S]."""
    if mask is None:
        return torch.zeros(B, H, L, S, dtype=torch.bool)
    m = mask.to(torch.bool) if mask.dtype in (torch.bool, torch.int64) else torch.isneginf(mask)
    if m.dim() == 3:
        return m.reshape(B, H, L, S)
    return m.expand(B, H, L, S)


def check_attention_rows(what, B, H, L, S, attn_mask, kpm, causal):
    full = blocked_of(attn_mask, B, H, L, S)
    if kpm is not None:
        full = full | kpm.to(torch.bool).view(B, 1, 1, S)
    if causal:
        full = full | causal_blocked(L, S)
    gf.check_no_fully_masked_rows(full, what)


# ---------------------------------------------------------------------------------------
# layer_norm
# ---------------------------------------------------------------------------------------

def gen_layer_norm(w):
    module = "layer_norm"
    # case: (input shape, normalized_shape, eps or None, elementwise_affine, offset, scale, text)
    # The offset case has its own tolerance (TOL_LAYER_NORM_OFFSET).
    cases = [
        ("basic", (2, 3, 8), 8, None, True, 0.0, 1.0,
         "input [2, 3, 8], normalized_shape 8, eps absent (= 1e-5), random weight and bias"),
        ("eps", (4, 6), 6, 1e-2, True, 0.0, 0.1,
         "input [4, 6] with std ~0.1 and eps 1e-2: eps changes the result by ~40%"),
        ("no_affine", (3, 5), 5, 1e-5, False, 0.0, 1.0,
         "elementwise_affine false: no weight, no bias; odd width 5"),
        ("offset", (3, 16), 16, None, True, 1000.0, 1.0,
         "rows 1000 + N(0, 1): the mean must be subtracted before squaring (two-pass variance)"),
        ("rank1", (7,), 7, None, True, 0.0, 2.0, "rank-1 input [7]"),
        ("multi_dim", (2, 3, 4), [3, 4], None, True, 0.0, 1.0,
         "normalized_shape [3, 4]: statistics over the last two dims, weight and bias [3, 4]"),
    ]
    for case, shape, nshape, eps, affine, offset, scale, description in cases:
        gf.seed_for(module, case)
        x64 = offset + gf.randn(*shape, scale=scale)
        ln = torch.nn.LayerNorm(nshape, eps=1e-5 if eps is None else eps,
                                elementwise_affine=affine, dtype=F64)
        if affine:
            randomize(ln)
        options = {"normalized_shape": nshape}
        if eps is not None:
            options["eps"] = eps
        if not affine:
            options["elementwise_affine"] = False
        for dtype in (F32, F64):
            ln_d = copy.deepcopy(ln).to(dtype)
            x = x64.to(dtype)
            with torch.no_grad():
                y = ln_d(x)
            tensors = {n: p.detach().clone() for n, p in ln_d.named_parameters()}
            tensors["input.input"] = x
            tensors["expected.output"] = y
            tol = TOL_LAYER_NORM_OFFSET if case == "offset" else TOL_LAYER_NORM
            write_case(w, module, case, dtype, tensors, options, tol, description)


# ---------------------------------------------------------------------------------------
# transformer_encoder_layer, transformer_encoder
# ---------------------------------------------------------------------------------------

def layer_options(spec):
    """The options of a layer spec, defaults written only when `explicit` asks for them."""
    o = {"d_model": spec["E"], "nhead": spec["H"], "dim_feedforward": spec["F"]}
    for key in ("activation", "norm_first", "layer_norm_eps", "batch_first"):
        if key in spec:
            o[key] = spec[key]
    o.update(spec.get("explicit", {}))
    return o


def torch_layer_kwargs(spec):
    return dict(dim_feedforward=spec["F"], dropout=0.0, activation=spec.get("activation", "relu"),
                layer_norm_eps=spec.get("layer_norm_eps", 1e-5),
                batch_first=spec.get("batch_first", False), norm_first=spec.get("norm_first", False),
                dtype=F64)


def seq(spec, B, n, E):
    """A random sequence tensor [n, B, E] / [B, n, E] / [n, E] (unbatched)."""
    if spec.get("unbatched"):
        return gf.randn(n, E)
    return gf.randn(B, n, E) if spec.get("batch_first") else gf.randn(n, B, E)


def make_mask(kind, L, S, B, H, what):
    """An attention mask of the given kind (bool: true = blocked), or None."""
    if kind is None:
        return None
    if kind == "causal_bool":
        return causal_blocked(L, S)
    if kind == "causal_float":
        return causal_float(L)
    if kind == "bool2d":
        return gf.bool_mask((L, S), 0.35, what)
    if kind == "bool3d":
        return gf.bool_mask((B * H, L, S), 0.35, what)
    if kind == "float2d":
        return gf.additive_mask((L, S), what)
    raise ValueError(kind)


def run_plain(module, *args, **kwargs):
    """The module on torch's plain path: grad enabled and parameters requiring grad."""
    with torch.enable_grad():
        return module(*args, **kwargs).detach()


def as_written(mask, dtype):
    """A float mask in the case dtype; bool masks unchanged."""
    return None if mask is None else (mask.to(dtype) if mask.is_floating_point() else mask)


def gen_encoder_layers(w, module):
    """transformer_encoder_layer, or transformer_encoder (2-layer stacks) when asked."""
    stack = module == "transformer_encoder"
    base = dict(E=8, H=2, F=16, L=5, B=2)
    if not stack:
        cases = [
            ("post_norm_relu", dict(base, explicit={"activation": "relu", "norm_first": False,
                                                    "layer_norm_eps": 1e-5, "batch_first": False}),
             "post-norm, relu, src [L=5, B=2, E=8], 2 heads, F 16, every option written at its default"),
            ("pre_norm_relu", dict(base, norm_first=True),
             "pre-norm (norm_first), relu, seq-first"),
            ("post_norm_gelu_batch_first", dict(base, activation="gelu", batch_first=True),
             "post-norm, gelu (erf), batch_first src [B=2, L=5, E=8]"),
            ("pre_norm_gelu_batch_first", dict(base, activation="gelu", batch_first=True, norm_first=True),
             "pre-norm, gelu, batch_first"),
            ("causal_bool_mask", dict(base, src_mask="causal_bool"),
             "post-norm with a BOOL causal src_mask [5, 5] (true = masked out)"),
            ("causal_float_mask_pre_norm", dict(base, src_mask="causal_float", norm_first=True,
                                                activation="gelu"),
             "pre-norm gelu with an additive causal src_mask (0 / -inf, generate_square_subsequent_mask)"),
            ("is_causal", dict(base, is_causal=True, batch_first=True),
             "option is_causal true and no src_mask: key j masked for query i when j > i, batch_first"),
            ("key_padding", dict(base, kpm=[5, 3], batch_first=True),
             "BOOL src_key_padding_mask [B, L] (lengths 5 and 3), batch_first; padded positions are "
             "computed as queries, not zeroed"),
            ("key_padding_i64_causal", dict(base, kpm=[4, 2], kpm_i64=True, src_mask="causal_float",
                                            norm_first=True),
             "I64 src_key_padding_mask (lengths 4 and 2) with an additive causal src_mask, pre-norm"),
            ("random_mask_3d", dict(base, src_mask="bool3d"),
             "BOOL src_mask [B*nhead, L, L] = [4, 5, 5], random pattern, indexed b * nhead + h"),
            ("float_mask_eps", dict(base, E=12, H=3, F=20, src_mask="float2d", layer_norm_eps=1e-3),
             "d_model 12, 3 heads (odd), additive src_mask with -inf/finite entries, layer_norm_eps 1e-3"),
            ("unbatched", dict(base, unbatched=True, norm_first=True),
             "unbatched src [L=5, E=8], pre-norm"),
            ("wide", dict(E=32, H=4, F=64, L=17, B=3, activation="gelu", kpm=[17, 9, 1], batch_first=True),
             "d_model 32, 4 heads, F 64, L 17, B 3, gelu, src_key_padding_mask lengths 17, 9, 1"),
        ]
    else:
        cases = [
            ("post_norm_final_norm", dict(base, final_norm=True),
             "2 post-norm relu layers + final LayerNorm, seq-first, no mask"),
            ("pre_norm_final_norm_masks", dict(base, final_norm=True, norm_first=True, activation="gelu",
                                               batch_first=True, src_mask="causal_float", kpm=[5, 3]),
             "2 pre-norm gelu layers + final norm, batch_first, additive causal mask and "
             "src_key_padding_mask (lengths 5, 3)"),
            ("key_padding_final_norm", dict(base, final_norm=True, batch_first=True, kpm=[5, 2]),
             "2 post-norm layers + final norm, batch_first, BOOL src_key_padding_mask only "
             "(torch's nested-tensor path would zero padded rows; computed on the plain path)"),
            ("is_causal_no_final_norm", dict(base, is_causal=True),
             "2 post-norm layers, no final norm (no norm.* tensors), option is_causal"),
        ]
    for case, spec, description in cases:
        gf.seed_for(module, case)
        E, H, F_, L, B = spec["E"], spec["H"], spec["F"], spec["L"], spec["B"]
        layer = torch.nn.TransformerEncoderLayer(E, H, **torch_layer_kwargs(spec))
        if stack:
            final = torch.nn.LayerNorm(E, eps=spec.get("layer_norm_eps", 1e-5), dtype=F64) \
                if spec.get("final_norm") else None
            model = torch.nn.TransformerEncoder(layer, 2, norm=final)
        else:
            model = layer
        model = model.eval()
        randomize(model)
        src64 = seq(spec, B, L, E)
        src_mask64 = make_mask(spec.get("src_mask"), L, L, B, H, "%s/%s src_mask" % (module, case))
        kpm = padding(B, L, spec["kpm"]) if "kpm" in spec else None
        causal = spec.get("is_causal", False)
        check_attention_rows("%s/%s masks" % (module, case), 1 if spec.get("unbatched") else B, H,
                             L, L, src_mask64, kpm, causal)
        options = layer_options(spec)
        if stack:
            options["num_layers"] = 2
        if causal:
            options["is_causal"] = True
        mask_name = "mask" if stack else "src_mask"
        for dtype in (F32, F64):
            model_d = copy.deepcopy(model).to(dtype)
            src = src64.to(dtype)
            src_mask = as_written(src_mask64, dtype)
            call_mask = causal_blocked(L) if causal else src_mask
            kwargs = {mask_name: call_mask, "src_key_padding_mask": kpm}
            out = run_plain(model_d, src, **kwargs)
            # Cross-check with the fast path (fused layer / nested tensors) where torch takes
            # it: compare the non-padded positions only (the nested path zeroes the others).
            if spec.get("batch_first") and call_mask is None and H % 2 == 0:
                with torch.no_grad():
                    fast = model_d(src, **kwargs)
                keep = torch.ones(B, L, dtype=torch.bool) if kpm is None else ~kpm
                rtol, atol = TOL_TRANSFORMER[dtype]
                gf.close_or_die(fast[keep], out[keep], rtol / 2, atol / 2,
                                "%s/%s fast path" % (module, case))
            tensors = {n: p.detach().clone() for n, p in model_d.named_parameters()}
            tensors["input.src"] = src
            if src_mask is not None:
                tensors["input." + mask_name] = src_mask
            if kpm is not None:
                tensors["input.src_key_padding_mask"] = kpm.to(torch.int64) if spec.get("kpm_i64") else kpm
            tensors["expected.output"] = out
            write_case(w, module, case, dtype, tensors, options, TOL_TRANSFORMER, description)


# ---------------------------------------------------------------------------------------
# transformer_decoder_layer
# ---------------------------------------------------------------------------------------

def gen_decoder(w, module):
    """transformer_decoder_layer, or transformer_decoder (2-layer stacks) when asked."""
    stack = module == "transformer_decoder"
    base = dict(E=8, H=2, F=16, L=4, S=6, B=2)
    cases = [] if stack else [
        ("post_norm_relu", dict(base, explicit={"activation": "relu", "norm_first": False,
                                                "layer_norm_eps": 1e-5, "batch_first": False}),
         "post-norm relu, tgt [L=4, B=2, E=8], memory [S=6, 2, 8], every option at its default"),
        ("pre_norm_relu", dict(base, norm_first=True), "pre-norm relu, seq-first, no masks"),
        ("post_norm_gelu_batch_first", dict(base, activation="gelu", batch_first=True),
         "post-norm gelu, batch_first tgt [2, 4, 8], memory [2, 6, 8]"),
        ("pre_norm_gelu_batch_first", dict(base, activation="gelu", batch_first=True, norm_first=True),
         "pre-norm gelu, batch_first"),
        ("causal_memory_padding", dict(base, tgt_mask="causal_float", mkpm=[6, 4]),
         "additive causal tgt_mask [4, 4] and BOOL memory_key_padding_mask (lengths 6, 4)"),
        ("tgt_is_causal_masks", dict(base, tgt_is_causal=True, tkpm=[4, 3], memory_mask="bool2d",
                                     norm_first=True),
         "option tgt_is_causal (no tgt_mask), BOOL tgt_key_padding_mask (lengths 4, 3), BOOL "
         "memory_mask [4, 6], pre-norm"),
        ("all_masks_batch_first", dict(base, tgt_mask="causal_bool", memory_mask="float2d",
                                       tkpm=[4, 2], mkpm=[5, 6], tkpm_i64=True, batch_first=True,
                                       activation="gelu"),
         "BOOL causal tgt_mask, additive memory_mask with -inf, I64 tgt_key_padding_mask, BOOL "
         "memory_key_padding_mask, batch_first, gelu"),
        ("memory_mask_3d_eps", dict(base, E=12, H=3, F=20, memory_mask="bool3d", layer_norm_eps=1e-3),
         "d_model 12, 3 heads, BOOL memory_mask [B*nhead, L, S] = [6, 4, 6], layer_norm_eps 1e-3"),
        ("unbatched", dict(base, unbatched=True, tgt_mask="causal_bool"),
         "unbatched tgt [4, 8], memory [6, 8], BOOL causal tgt_mask"),
        ("wide", dict(E=32, H=4, F=64, L=9, S=13, B=3, norm_first=True, tgt_mask="causal_float",
                      mkpm=[13, 7, 1]),
         "d_model 32, 4 heads, F 64, L 9, S 13, B 3, pre-norm, causal tgt_mask, memory padding"),
    ]
    if stack:
        cases = [
            ("post_norm_final_norm", dict(base, final_norm=True, tgt_mask="causal_float", mkpm=[6, 4]),
             "2 post-norm relu layers + final LayerNorm, additive causal tgt_mask, BOOL "
             "memory_key_padding_mask (lengths 6, 4)"),
            ("pre_norm_final_norm_batch_first", dict(base, final_norm=True, norm_first=True,
                                                     activation="gelu", batch_first=True,
                                                     tgt_is_causal=True, tkpm=[4, 2]),
             "2 pre-norm gelu layers + final norm, batch_first, option tgt_is_causal, BOOL "
             "tgt_key_padding_mask (lengths 4, 2)"),
            ("no_final_norm_memory_mask", dict(base, memory_mask="bool2d"),
             "2 post-norm layers without final norm (no norm.* tensors), BOOL memory_mask [4, 6]"),
        ]
    for case, spec, description in cases:
        gf.seed_for(module, case)
        E, H, L, S, B = spec["E"], spec["H"], spec["L"], spec["S"], spec["B"]
        model = torch.nn.TransformerDecoderLayer(E, H, **torch_layer_kwargs(spec))
        if stack:
            final = torch.nn.LayerNorm(E, eps=spec.get("layer_norm_eps", 1e-5), dtype=F64) \
                if spec.get("final_norm") else None
            model = torch.nn.TransformerDecoder(model, 2, norm=final)
        model = model.eval()
        randomize(model)
        tgt64, mem64 = seq(spec, B, L, E), seq(spec, B, S, E)
        what = "%s/%s" % (module, case)
        tgt_mask64 = make_mask(spec.get("tgt_mask"), L, L, B, H, what + " tgt_mask")
        memory_mask64 = make_mask(spec.get("memory_mask"), L, S, B, H, what + " memory_mask")
        tkpm = padding(B, L, spec["tkpm"]) if "tkpm" in spec else None
        mkpm = padding(B, S, spec["mkpm"]) if "mkpm" in spec else None
        tgt_causal = spec.get("tgt_is_causal", False)
        Bm = 1 if spec.get("unbatched") else B
        check_attention_rows(what + " self-attention masks", Bm, H, L, L, tgt_mask64, tkpm, tgt_causal)
        check_attention_rows(what + " cross-attention masks", Bm, H, L, S, memory_mask64, mkpm, False)
        options = layer_options(spec)
        if stack:
            options["num_layers"] = 2
        if tgt_causal:
            options["tgt_is_causal"] = True
        for dtype in (F32, F64):
            model_d = copy.deepcopy(model).to(dtype)
            tgt, mem = tgt64.to(dtype), mem64.to(dtype)
            tgt_mask, memory_mask = as_written(tgt_mask64, dtype), as_written(memory_mask64, dtype)
            out = run_plain(model_d, tgt, mem, tgt_mask=causal_blocked(L) if tgt_causal else tgt_mask,
                            memory_mask=memory_mask, tgt_key_padding_mask=tkpm,
                            memory_key_padding_mask=mkpm)
            tensors = {n: p.detach().clone() for n, p in model_d.named_parameters()}
            tensors["input.tgt"], tensors["input.memory"] = tgt, mem
            for name, m in (("tgt_mask", tgt_mask), ("memory_mask", memory_mask)):
                if m is not None:
                    tensors["input." + name] = m
            if tkpm is not None:
                tensors["input.tgt_key_padding_mask"] = tkpm.to(torch.int64) if spec.get("tkpm_i64") else tkpm
            if mkpm is not None:
                tensors["input.memory_key_padding_mask"] = mkpm
            tensors["expected.output"] = out
            write_case(w, module, case, dtype, tensors, options, TOL_TRANSFORMER, description)


# ---------------------------------------------------------------------------------------
# transformer (nn.Transformer: encoder and decoder stacks, each with its final norm)
# ---------------------------------------------------------------------------------------

def gen_transformer(w):
    module = "transformer"
    base = dict(E=8, H=2, F=16, L=4, S=6, B=2)
    cases = [
        ("post_norm_masks", dict(base, skpm=[6, 4], tgt_mask="causal_float"),
         "2 + 2 post-norm relu layers, src [S=6, B=2, E=8], tgt [L=4, 2, 8]; src_key_padding_mask "
         "= memory_key_padding_mask (lengths 6, 4), additive causal tgt_mask"),
        ("pre_norm_gelu_batch_first", dict(base, norm_first=True, activation="gelu", batch_first=True,
                                           tgt_is_causal=True, src_mask="bool2d", tkpm=[4, 3]),
         "2 + 2 pre-norm gelu layers, batch_first, option tgt_is_causal, BOOL src_mask [6, 6], BOOL "
         "tgt_key_padding_mask (lengths 4, 3)"),
    ]
    for case, spec, description in cases:
        gf.seed_for(module, case)
        E, H, L, S, B = spec["E"], spec["H"], spec["L"], spec["S"], spec["B"]
        kwargs = torch_layer_kwargs(spec)
        model = torch.nn.Transformer(E, H, num_encoder_layers=2, num_decoder_layers=2, **kwargs).eval()
        randomize(model)
        src64, tgt64 = seq(spec, B, S, E), seq(spec, B, L, E)
        what = "%s/%s" % (module, case)
        src_mask64 = make_mask(spec.get("src_mask"), S, S, B, H, what + " src_mask")
        tgt_mask64 = make_mask(spec.get("tgt_mask"), L, L, B, H, what + " tgt_mask")
        skpm = padding(B, S, spec["skpm"]) if "skpm" in spec else None
        tkpm = padding(B, L, spec["tkpm"]) if "tkpm" in spec else None
        tgt_causal = spec.get("tgt_is_causal", False)
        check_attention_rows(what + " encoder masks", B, H, S, S, src_mask64, skpm, False)
        check_attention_rows(what + " decoder masks", B, H, L, L, tgt_mask64, tkpm, tgt_causal)
        check_attention_rows(what + " memory masks", B, H, L, S, None, skpm, False)
        options = layer_options(spec)
        options.update({"num_encoder_layers": 2, "num_decoder_layers": 2})
        if tgt_causal:
            options["tgt_is_causal"] = True
        for dtype in (F32, F64):
            model_d = copy.deepcopy(model).to(dtype)
            src, tgt = src64.to(dtype), tgt64.to(dtype)
            src_mask, tgt_mask = as_written(src_mask64, dtype), as_written(tgt_mask64, dtype)
            out = run_plain(model_d, src, tgt, src_mask=src_mask,
                            tgt_mask=causal_blocked(L) if tgt_causal else tgt_mask,
                            src_key_padding_mask=skpm, tgt_key_padding_mask=tkpm,
                            memory_key_padding_mask=skpm)
            tensors = {n: p.detach().clone() for n, p in model_d.named_parameters()}
            tensors["input.src"], tensors["input.tgt"] = src, tgt
            for name, m in (("src_mask", src_mask), ("tgt_mask", tgt_mask),
                            ("src_key_padding_mask", skpm), ("memory_key_padding_mask", skpm),
                            ("tgt_key_padding_mask", tkpm)):
                if m is not None:
                    tensors["input." + name] = m
            tensors["expected.output"] = out
            write_case(w, module, case, dtype, tensors, options, TOL_TRANSFORMER, description)


# ---------------------------------------------------------------------------------------
# transformer_seq2seq (a full model over token ids; no torch class: built here)
# ---------------------------------------------------------------------------------------

class TransformerSeq2Seq(torch.nn.Module):
    """Token ids to logits: `generator(transformer(src_embed(src) * sqrt(E) + PE[:S],
    tgt_embed(tgt) * sqrt(E) + PE[:L]))`, PE the sinusoidal table of docs/fixtures.md (a
    non-persistent buffer, so not in the state dict). Its state-dict names are those
    attend::TransformerSeq2Seq loads: src_embed.weight, tgt_embed.weight, transformer.*
    (nn.Transformer's), generator.weight, generator.bias."""

    def __init__(self, src_vocab_size, tgt_vocab_size, d_model, nhead, num_encoder_layers,
                 num_decoder_layers, max_len, positional_layout="interleaved",
                 scale_embedding=True, **layer_kwargs):
        super().__init__()
        self.src_embed = torch.nn.Embedding(src_vocab_size, d_model, dtype=F64)
        self.tgt_embed = torch.nn.Embedding(tgt_vocab_size, d_model, dtype=F64)
        self.register_buffer("pe", gf.sinusoidal_reference(max_len, d_model, positional_layout, 0),
                             persistent=False)
        self.transformer = torch.nn.Transformer(d_model, nhead, num_encoder_layers=num_encoder_layers,
                                                num_decoder_layers=num_decoder_layers, **layer_kwargs)
        self.generator = torch.nn.Linear(d_model, tgt_vocab_size, dtype=F64)
        self.scale = math.sqrt(d_model) if scale_embedding else 1.0
        self.batch_first = layer_kwargs.get("batch_first", False)

    def embed(self, table, ids):
        x = table(ids) * self.scale  # [T, B, E] / [B, T, E] / [T, E]
        T = ids.shape[1] if ids.dim() == 2 and self.batch_first else ids.shape[0]
        pe = self.pe[:T]  # [T, E]
        return x + (pe.unsqueeze(1) if ids.dim() == 2 and not self.batch_first else pe)

    def encode(self, src, src_mask=None, src_key_padding_mask=None):
        return self.transformer.encoder(self.embed(self.src_embed, src), mask=src_mask,
                                        src_key_padding_mask=src_key_padding_mask)

    def forward(self, src, tgt, **masks):
        y = self.transformer(self.embed(self.src_embed, src), self.embed(self.tgt_embed, tgt), **masks)
        return self.generator(y)


def gen_transformer_seq2seq(w):
    module = "transformer_seq2seq"
    base = dict(E=8, H=2, F=16, L=5, S=6, B=2, Vs=11, Vt=13, max_len=16)
    cases = [
        ("post_norm_causal", dict(base, skpm=[6, 4], tgt_is_causal=True),
         "src_vocab 11, tgt_vocab 13, 2 + 2 post-norm relu layers, src [S=6, B=2] and tgt [L=5, 2] "
         "I64 ids, option tgt_is_causal, src_key_padding_mask = memory_key_padding_mask (lengths "
         "6, 4); expected.memory is the encoder output, expected.output the logits [5, 2, 13]"),
        ("pre_norm_gelu_batch_first", dict(base, norm_first=True, activation="gelu", batch_first=True,
                                           tgt_mask="causal_float", tkpm=[5, 3],
                                           positional_layout="concatenated"),
         "2 + 2 pre-norm gelu layers, batch_first ids [B=2, S=6] / [2, L=5], additive causal "
         "tgt_mask, BOOL tgt_key_padding_mask (lengths 5, 3), positional_layout concatenated"),
        ("unbatched_unscaled", dict(base, unbatched=True, tgt_is_causal=True, scale_embedding=False,
                                    max_len=6),
         "unbatched ids src [6], tgt [5], option tgt_is_causal, scale_embedding false, max_len 6 "
         "(= S: the whole table is used)"),
    ]
    for case, spec, description in cases:
        gf.seed_for(module, case)
        E, H, L, S, B = spec["E"], spec["H"], spec["L"], spec["S"], spec["B"]
        layout = spec.get("positional_layout", "interleaved")
        scale = spec.get("scale_embedding", True)
        model = TransformerSeq2Seq(spec["Vs"], spec["Vt"], E, H, 2, 2, spec["max_len"], layout, scale,
                                   **torch_layer_kwargs(spec)).eval()
        randomize(model)
        shape = lambda n: (n,) if spec.get("unbatched") else ((B, n) if spec.get("batch_first") else (n, B))
        src = torch.randint(0, spec["Vs"], shape(S), dtype=torch.int64)
        tgt = torch.randint(0, spec["Vt"], shape(L), dtype=torch.int64)
        what = "%s/%s" % (module, case)
        Bm = 1 if spec.get("unbatched") else B
        tgt_mask64 = make_mask(spec.get("tgt_mask"), L, L, B, H, what + " tgt_mask")
        skpm = padding(B, S, spec["skpm"]) if "skpm" in spec else None
        tkpm = padding(B, L, spec["tkpm"]) if "tkpm" in spec else None
        tgt_causal = spec.get("tgt_is_causal", False)
        check_attention_rows(what + " encoder masks", Bm, H, S, S, None, skpm, False)
        check_attention_rows(what + " decoder masks", Bm, H, L, L, tgt_mask64, tkpm, tgt_causal)
        options = layer_options(spec)
        options.update({"num_encoder_layers": 2, "num_decoder_layers": 2, "src_vocab_size": spec["Vs"],
                        "tgt_vocab_size": spec["Vt"], "max_len": spec["max_len"]})
        if "positional_layout" in spec:
            options["positional_layout"] = layout
        if "scale_embedding" in spec:
            options["scale_embedding"] = scale
        if tgt_causal:
            options["tgt_is_causal"] = True
        for dtype in (F32, F64):
            model_d = copy.deepcopy(model).to(dtype)
            tgt_mask = as_written(tgt_mask64, dtype)
            masks = dict(tgt_mask=causal_blocked(L) if tgt_causal else tgt_mask,
                         src_key_padding_mask=skpm, tgt_key_padding_mask=tkpm,
                         memory_key_padding_mask=skpm)
            out = run_plain(model_d, src, tgt, **masks)
            memory = run_plain(model_d.encode, src, src_key_padding_mask=skpm)
            tensors = {n: p.detach().clone() for n, p in model_d.named_parameters()}
            if set(tensors) != set(model_d.state_dict()):
                raise gf.FixtureError(what + ": parameters differ from the state_dict")
            tensors["input.src"], tensors["input.tgt"] = src, tgt
            for name, m in (("tgt_mask", tgt_mask), ("src_key_padding_mask", skpm),
                            ("memory_key_padding_mask", skpm), ("tgt_key_padding_mask", tkpm)):
                if m is not None:
                    tensors["input." + name] = m
            tensors["expected.output"] = out
            tensors["expected.memory"] = memory
            write_case(w, module, case, dtype, tensors, options, TOL_TRANSFORMER, description)


# ---------------------------------------------------------------------------------------
# --check: explicit float64 formulas
# ---------------------------------------------------------------------------------------

def ref_layer_norm(x, weight, bias, eps, n_dims=1):
    dims = tuple(range(-n_dims, 0))
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def ref_attention(g, prefix, q_in, kv_in, H, attn_mask, kpm, causal):
    """Multi-head attention on [B, L, E] / [B, S, E], masks in fixture convention."""
    B, L, E = q_in.shape
    S = kv_in.shape[1]
    dh = E // H
    wq, wk, wv = g[prefix + "in_proj_weight"].chunk(3)
    bq, bk, bv = g[prefix + "in_proj_bias"].chunk(3)
    heads = lambda x, n: x.reshape(B, n, H, dh).transpose(1, 2)  # [B, H, n, dh]
    q, k, v = heads(q_in @ wq.T + bq, L), heads(kv_in @ wk.T + bk, S), heads(kv_in @ wv.T + bv, S)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(dh)  # [B, H, L, S]
    if attn_mask is not None:
        if attn_mask.dtype in (torch.bool, torch.int64):
            scores = scores.masked_fill(blocked_of(attn_mask, B, H, L, S), -math.inf)
        else:
            am = attn_mask.to(F64)
            scores = scores + (am.reshape(B, H, L, S) if am.dim() == 3 else am)
    if kpm is not None:
        scores = scores.masked_fill(kpm.to(torch.bool).view(B, 1, 1, S), -math.inf)
    if causal:
        scores = scores.masked_fill(causal_blocked(L, S), -math.inf)
    gf.check_no_fully_masked_rows(torch.isneginf(scores), "attention scores")
    m = scores.amax(dim=-1, keepdim=True)
    e = torch.exp(scores - m)
    weights = e / e.sum(dim=-1, keepdim=True)
    ctx = (weights @ v).transpose(1, 2).reshape(B, L, E)
    return ctx @ g[prefix + "out_proj.weight"].T + g[prefix + "out_proj.bias"]


def ref_ff(g, prefix, x, activation):
    h = x @ g[prefix + "linear1.weight"].T + g[prefix + "linear1.bias"]
    if activation == "relu":
        h = h.clamp(min=0.0)
    elif activation == "gelu":
        h = 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))
    else:
        raise ValueError("activation %r" % activation)
    return h @ g[prefix + "linear2.weight"].T + g[prefix + "linear2.bias"]


def ref_encoder_layer(g, prefix, opts, x, mask, kpm, causal):
    eps, act, H = opts.get("layer_norm_eps", 1e-5), opts.get("activation", "relu"), opts["nhead"]
    ln = lambda name, y: ref_layer_norm(y, g[prefix + name + ".weight"], g[prefix + name + ".bias"], eps)
    sa = lambda y: ref_attention(g, prefix + "self_attn.", y, y, H, mask, kpm, causal)
    if opts.get("norm_first", False):
        x = x + sa(ln("norm1", x))
        return x + ref_ff(g, prefix, ln("norm2", x), act)
    x = ln("norm1", x + sa(x))
    return ln("norm2", x + ref_ff(g, prefix, x, act))


def ref_decoder_layer(g, prefix, opts, x, mem):
    eps, act, H = opts.get("layer_norm_eps", 1e-5), opts.get("activation", "relu"), opts["nhead"]
    ln = lambda name, y: ref_layer_norm(y, g[prefix + name + ".weight"], g[prefix + name + ".bias"], eps)
    sa = lambda y: ref_attention(g, prefix + "self_attn.", y, y, H, g.get("input.tgt_mask"),
                                 g.get("input.tgt_key_padding_mask"), opts.get("tgt_is_causal", False))
    ca = lambda y: ref_attention(g, prefix + "multihead_attn.", y, mem, H, g.get("input.memory_mask"),
                                 g.get("input.memory_key_padding_mask"), opts.get("memory_is_causal", False))
    if opts.get("norm_first", False):
        x = x + sa(ln("norm1", x))
        x = x + ca(ln("norm2", x))
        return x + ref_ff(g, prefix, ln("norm3", x), act)
    x = ln("norm1", x + sa(x))
    x = ln("norm2", x + ca(x))
    return ln("norm3", x + ref_ff(g, prefix, x, act))


def ref_final_norm(g, prefix, opts, x):
    if prefix + "norm.weight" not in g:
        return x
    return ref_layer_norm(x, g[prefix + "norm.weight"], g[prefix + "norm.bias"],
                          opts.get("layer_norm_eps", 1e-5))


def to_batch_major(x, opts):
    """[B, n, E] from the file's layout, and a function mapping results back."""
    if x.dim() == 2:
        return x.unsqueeze(0), lambda y: y.squeeze(0)
    if opts.get("batch_first", False):
        return x, lambda y: y
    return x.transpose(0, 1), lambda y: y.transpose(0, 1)


def ref_embed(g, name, ids, opts):
    """transformer_seq2seq: weight[ids] * sqrt(E) + PE[t], in the ids' layout."""
    E = opts["d_model"]
    x = g[name + ".weight"][ids] * (math.sqrt(E) if opts.get("scale_embedding", True) else 1.0)
    bf = opts.get("batch_first", False)
    T = ids.shape[1] if ids.dim() == 2 and bf else ids.shape[0]
    pe = gf.sinusoidal_reference(T, E, opts.get("positional_layout", "interleaved"), 0)
    return x + (pe.unsqueeze(1) if ids.dim() == 2 and not bf else pe)


def recompute(module, opts, t):
    g = {k: v.to(F64) if v.is_floating_point() else v for k, v in t.items()}
    if module == "transformer_seq2seq":
        if max(t["input.src"].shape[-1 if opts.get("batch_first") else 0],
               t["input.tgt"].shape[-1 if opts.get("batch_first") else 0]) > opts["max_len"]:
            raise ValueError("a sequence is longer than max_len")
        mem, back_mem = to_batch_major(ref_embed(g, "src_embed", t["input.src"], opts), opts)
        x, back = to_batch_major(ref_embed(g, "tgt_embed", t["input.tgt"], opts), opts)
        for i in range(opts["num_encoder_layers"]):
            mem = ref_encoder_layer(g, "transformer.encoder.layers.%d." % i, opts, mem,
                                    g.get("input.src_mask"), g.get("input.src_key_padding_mask"),
                                    opts.get("src_is_causal", False))
        mem = ref_final_norm(g, "transformer.encoder.", opts, mem)
        for i in range(opts["num_decoder_layers"]):
            x = ref_decoder_layer(g, "transformer.decoder.layers.%d." % i, opts, x, mem)
        x = ref_final_norm(g, "transformer.decoder.", opts, x)
        logits = x @ g["generator.weight"].T + g["generator.bias"]
        return {"expected.output": back(logits), "expected.memory": back_mem(mem)}
    if module == "layer_norm":
        ns = opts["normalized_shape"]
        n_dims = len(ns) if isinstance(ns, list) else 1
        return {"expected.output": ref_layer_norm(g["input.input"], g.get("weight"), g.get("bias"),
                                                  opts.get("eps", 1e-5), n_dims)}
    if module == "transformer_decoder_layer":
        x, back = to_batch_major(g["input.tgt"], opts)
        mem, _ = to_batch_major(g["input.memory"], opts)
        return {"expected.output": back(ref_decoder_layer(g, "", opts, x, mem))}
    if module == "transformer_decoder":
        x, back = to_batch_major(g["input.tgt"], opts)
        mem, _ = to_batch_major(g["input.memory"], opts)
        for i in range(opts["num_layers"]):
            x = ref_decoder_layer(g, "layers.%d." % i, opts, x, mem)
        return {"expected.output": back(ref_final_norm(g, "", opts, x))}
    if module == "transformer":
        mem, _ = to_batch_major(g["input.src"], opts)
        x, back = to_batch_major(g["input.tgt"], opts)
        for i in range(opts["num_encoder_layers"]):
            mem = ref_encoder_layer(g, "encoder.layers.%d." % i, opts, mem, g.get("input.src_mask"),
                                    g.get("input.src_key_padding_mask"), opts.get("src_is_causal", False))
        mem = ref_final_norm(g, "encoder.", opts, mem)
        for i in range(opts["num_decoder_layers"]):
            x = ref_decoder_layer(g, "decoder.layers.%d." % i, opts, x, mem)
        return {"expected.output": back(ref_final_norm(g, "decoder.", opts, x))}
    x, back = to_batch_major(g["input.src"], opts)
    kpm = g.get("input.src_key_padding_mask")
    causal = opts.get("is_causal", False)
    if module == "transformer_encoder_layer":
        return {"expected.output": back(ref_encoder_layer(g, "", opts, x, g.get("input.src_mask"),
                                                          kpm, causal))}
    for i in range(opts["num_layers"]):
        x = ref_encoder_layer(g, "layers.%d." % i, opts, x, g.get("input.mask"), kpm, causal)
    return {"expected.output": back(ref_final_norm(g, "", opts, x))}


def check(out_dir):
    failures, checked, worst = 0, 0, {}
    files = sorted(os.path.join(m, f) for m in MODULES if os.path.isdir(os.path.join(out_dir, m))
                   for f in os.listdir(os.path.join(out_dir, m)) if f.endswith(".safetensors"))
    for rel in files:
        try:
            tensors, meta = gf.read_safetensors(os.path.join(out_dir, rel))
            module, opts = meta["module"], json.loads(meta["options"])
            if module != rel.split(os.sep)[0]:
                raise ValueError("module %r in folder %r" % (module, rel.split(os.sep)[0]))
            rtol, atol = float(meta["rtol"]), float(meta["atol"])
            if len({t.dtype for t in tensors.values() if t.is_floating_point()}) != 1:
                raise ValueError("float tensors use more than one dtype")
            want = recompute(module, opts, tensors)
            expected = {k for k in tensors if k.startswith("expected.")}
            if set(want) != expected:
                raise ValueError("expected %s, recomputed %s" % (sorted(expected), sorted(want)))
            ratio = 0.0
            for name in sorted(expected):
                got = tensors[name].to(F64)
                if got.shape != want[name].shape:
                    raise ValueError("%s shape %s, recomputed %s" % (name, list(got.shape),
                                                                       list(want[name].shape)))
                ratio = max(ratio, gf.tolerance_ratio(got, want[name], rtol, atol))
            if ratio > gf.CHECK_MARGIN:
                raise ValueError("error reaches %.3g of the tolerance (limit %g)" % (ratio, gf.CHECK_MARGIN))
            checked += 1
            key = (module, rel.rsplit("_", 1)[-1].split(".")[0])
            if ratio >= worst.get(key, (-1.0, ""))[0]:
                worst[key] = (ratio, rel)
        except Exception as e:  # report every bad file, keep going
            failures += 1
            print("FAIL  %s: %s" % (rel, e))
    for (module, tag), (ratio, rel) in sorted(worst.items()):
        print("  %-28s %s  worst err/tolerance %.3g  (%s)" % (module, tag, ratio, rel))
    print("checked %d files, %d failed" % (checked, failures))
    return failures == 0 and checked > 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder (default tests/data)")
    parser.add_argument("--check", action="store_true", help="only re-read and verify the files in --out")
    args = parser.parse_args()
    torch.set_num_threads(1)  # reproducible reductions
    if args.check:
        sys.exit(0 if check(args.out) else 1)
    w = gf.Writer(args.out)
    try:
        gen_layer_norm(w)
        gen_encoder_layers(w, "transformer_encoder_layer")
        gen_decoder(w, "transformer_decoder_layer")
        gen_encoder_layers(w, "transformer_encoder")
        gen_decoder(w, "transformer_decoder")
        gen_transformer(w)
        gen_transformer_seq2seq(w)
    except gf.FixtureError as e:
        sys.exit("gen_fixtures_transformer: %s" % e)
    counts = {}
    for rel in w.written:
        counts[rel.split(os.sep)[0]] = counts.get(rel.split(os.sep)[0], 0) + 1
    for module, n in sorted(counts.items()):
        print("  %-28s %d files" % (module, n))
    print("wrote %d files to %s" % (len(w.written), args.out))


if __name__ == "__main__":
    main()
