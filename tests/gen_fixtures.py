#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# Writes the seeded PyTorch reference fixtures of tests/data (format: docs/fixtures.md).
"""Generate (and check) the PyTorch reference fixtures of the attention core.

Usage (Debian's python3-torch; the pyenv `python3` has no torch):

    /usr/bin/python3 tests/gen_fixtures.py            # (re)write tests/data/<module>/*.safetensors
    /usr/bin/python3 tests/gen_fixtures.py --check    # re-read every file and re-verify it
    /usr/bin/python3 tests/gen_fixtures.py --out DIR  # write elsewhere (determinism check)

One case per file: tests/data/<module>/<case>_<f32|f64>.safetensors. Each case is built
from float64 random data (torch.manual_seed per case, CPU, one thread) and written
twice: once cast to float32 with the reference computed by torch in float32, once in
float64 with the reference computed in float64. Running the script twice gives
byte-identical files.

Conventions of the contract that need care here:
- Boolean masks in the files mean true = masked out (not attended), for every module.
  Torch 1.13's private F._scaled_dot_product_attention takes true = attend, so its
  masks are inverted before the call (the file keeps the true = blocked version).
- nn.MultiheadAttention of torch 1.13 rejects int64 masks (AssertionError "only bool
  and floating types of key_padding_mask are supported"), so the I64 case is computed
  with the bool mask and written as I64 0/1.
- No case has a fully masked row (checked when writing and again by --check).

`--check` re-parses every file with an independent reader, validates the layout against
the contract, recomputes every expected tensor in float64 from the stored inputs with
explicit formulas (not torch modules) and requires the stored value to sit well inside
the file's tolerance (CHECK_MARGIN), so an independent float/double implementation has
room for its own rounding.

Only the standard library and torch are used; safetensors is written with struct+json.
"""

import argparse
import copy
import json
import math
import os
import struct
import sys
import zlib

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "data")
GENERATOR = "tests/gen_fixtures.py (torch %s)" % torch.__version__

F32, F64 = torch.float32, torch.float64
DTYPE_TAG = {F32: "f32", F64: "f64"}

# --check: a stored expected value must be within CHECK_MARGIN of its tolerance from an
# independent float64 recomputation. The torch float32 result carries its own rounding
# error; a C++ float32 implementation carries a similar, independent one, so the two can
# differ by about twice the torch error. 0.25 leaves the other implementation at least
# half of the tolerance.
CHECK_MARGIN = 0.25

# ---------------------------------------------------------------------------------------
# Tolerances, per module and dtype: (rtol, atol), checked as atol + rtol * |want|.
# Measured worst ratios are printed by --check; every value below leaves >= 4x headroom
# over the torch-vs-float64 error seen on these cases.
# ---------------------------------------------------------------------------------------

# softmax: exp, one sum of <= 7 terms and a division: a few ulp relative error per
# element (float eps 1.2e-7, double 2.2e-16). Subtracting the row max is exact for the
# large-logit rows (Sterbenz), so large logits need nothing more. atol only matters for
# entries that underflow towards 0.
TOL_SOFTMAX = {F32: (1e-5, 1e-6), F64: (1e-12, 1e-13)}

# scaled_dot_product_attention with O(1) scores: dot products of length E <= 64, softmax,
# then sums of S <= 33 weighted values that can cancel to near 0. Measured torch float32
# vs float64: max abs error 3.1e-7, worst 0.09 of these tolerances (odd_size); double
# errors ~4e-16, 0.001 of them. So the softmax tolerances fit.
TOL_SDPA = {F32: (1e-5, 1e-6), F64: (1e-12, 1e-13)}

# scaled_dot_product_attention with scores of magnitude ~1e3 whose differences are O(1):
# a score carries an absolute rounding error ~ |score| * eps * sqrt(E) (~1e-4 in float,
# ~5e-13 in double) and softmax turns an absolute score error d into a relative weight
# error d. So rtol must exceed 1e3 * eps by a margin: 1e-3 (float), 1e-10 (double);
# outputs are weighted sums of O(1) values, hence atol of the same size. Measured:
# torch float32 vs float64 max abs error 4.2e-5 (28x the softmax tolerances, 0.03 of
# these); in double, merely summing the 4 products of each score in reverse order moves
# the output by 1.3e-13, 1.0x the default double tolerance and 0.001 of these.
TOL_SDPA_LARGE = {F32: (1e-3, 1e-3), F64: (1e-10, 1e-10)}

# multihead_attention: four chained products (in_proj, Q K^T, weights V, out_proj) with
# inner lengths up to 64 and random O(1/sqrt(fan_in)) weights; outputs are sums that can
# cancel to near 0, so float needs an absolute floor: measured torch float32 vs float64
# max abs error 8.2e-7 (odd_size), which would be 0.36 of atol 1e-6 and leave an
# independent float implementation no room; atol 1e-5 puts it at 0.04 (torch's own
# fused fast path and plain path differ by 4.8e-7 on O(3) outputs). Double errors are
# ~9e-16, 0.005 of the default double tolerances, which therefore stay.
TOL_MHA = {F32: (1e-5, 1e-5), F64: (1e-12, 1e-13)}

# embedding: a lookup copies stored rows; no arithmetic, so exact equality is required.
TOL_EMBEDDING = {F32: (0.0, 0.0), F64: (0.0, 0.0)}

# sinusoidal_positional_encoding: the reference is float64 math rounded once to the
# case dtype, but an implementation computing the angle p * w in the case dtype rounds
# an angle of up to max_len - 1 = 49 rad (ulp(49) / 2 = 1.9e-6 in float, 3.6e-15 in
# double) and w = 10000^(-2i/d) itself: a float32 torch version of the usual
# exp(-2i ln(10000) / d) recipe is off by 5e-7 at p = 49 (0.5 of atol 1e-6), the float64
# one by 1.8e-15. Values are in [-1, 1], so the float tolerance is absolute, 1e-5; the
# double defaults keep a 50x margin.
TOL_PE = {F32: (1e-5, 1e-5), F64: (1e-12, 1e-13)}

# rnn_cell / lstm_cell / gru_cell: a few products of inner length <= 8 and one layer of
# sigmoid/tanh, values O(1). Measured torch float32 vs float64 (--check's recomputation):
# max abs error 7.2e-8 (rnn_cell/relu), 0.007 of these tolerances; an independent float
# implementation (Eigen's vectorised exp/tanh, other summation orders) carries a similar,
# independent error. Double errors <= 1.2e-16: the double defaults keep ~500x headroom.
TOL_CELL = {F32: (1e-5, 1e-5), F64: (1e-12, 1e-13)}

# rnn / lstm / gru: the cell error compounds over up to 40 steps and 2 stacked layers; the
# recurrences are contractive at PyTorch's init (|W_hh| entries <= 1/sqrt(N)), so it stays
# near a few steps' worth. Measured torch float32 vs float64: max abs error 1.8e-7
# (lstm/lengths_batch_first c_n), 0.02 of these tolerances; double 2.2e-16, 0.002.
TOL_RECURRENT = {F32: (1e-5, 1e-5), F64: (1e-12, 1e-13)}

# bahdanau_attention / luong_attention: scores are dot products of length <= 9 (through one
# tanh for additive/concat), a softmax over T <= 7 keys, then weighted sums of O(1) keys
# that can cancel to near 0 (hence an absolute floor). Measured torch float32 vs float64:
# max abs error 2.4e-7 (luong general context), 0.02 of these; double 5e-16, 0.005.
TOL_ALIGNMENT = {F32: (1e-5, 1e-5), F64: (1e-12, 1e-13)}


# ---------------------------------------------------------------------------------------
# safetensors writer and reader (struct + json only)
# ---------------------------------------------------------------------------------------

_ST_DTYPE = {F32: ("F32", "<f", 4), F64: ("F64", "<d", 8), torch.int64: ("I64", "<q", 8),
             torch.bool: ("BOOL", None, 1)}
_ST_DECODE = {"F32": (F32, "<f", 4), "F64": (F64, "<d", 8), "I64": (torch.int64, "<q", 8),
              "BOOL": (torch.bool, None, 1)}


def _tensor_bytes(t):
    """Little-endian bytes of a CPU tensor, element by element (no reliance on host order)."""
    name, fmt, _ = _ST_DTYPE[t.dtype]
    flat = t.detach().contiguous().reshape(-1).tolist()
    if name == "BOOL":
        return bytes(1 if v else 0 for v in flat)
    return struct.pack("<%d%s" % (len(flat), fmt[1]), *flat)


def write_safetensors(path, tensors, metadata):
    """Write `tensors` (name -> tensor) and `metadata` (str -> str) as one .safetensors file.

    Layout: u64 LE header length N, N bytes of JSON padded with spaces so that N is a
    multiple of 8, then the tensors' raw LE data in sorted-name order, back to back.
    """
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError("metadata must be str -> str: %r" % ((k, v),))
    header = {"__metadata__": metadata}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        blob = _tensor_bytes(t)
        header[name] = {"dtype": _ST_DTYPE[t.dtype][0], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * ((-len(text)) % 8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)
    os.replace(tmp, path)


def read_safetensors(path):
    """Parse a .safetensors file strictly; returns (tensors, metadata). Raises ValueError."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError("file shorter than the 8-byte header length")
    (n,) = struct.unpack_from("<Q", raw, 0)
    if 8 + n > len(raw):
        raise ValueError("header length %d exceeds file size %d" % (n, len(raw)))
    if n % 8 != 0:
        raise ValueError("header length %d is not a multiple of 8" % n)
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = raw[8 + n:]
    metadata = header.pop("__metadata__", {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError("__metadata__ values must be strings")
    tensors = {}
    spans = []
    for name, info in header.items():
        dtype, fmt, size = _ST_DECODE[info["dtype"]]
        shape = [int(d) for d in info["shape"]]
        begin, end = info["data_offsets"]
        count = math.prod(shape)
        if not (0 <= begin <= end <= len(data)) or end - begin != count * size:
            raise ValueError("%s: bad data_offsets %r for shape %r" % (name, (begin, end), shape))
        spans.append((begin, end, name))
        chunk = data[begin:end]
        if info["dtype"] == "BOOL":
            if any(b not in (0, 1) for b in chunk):
                raise ValueError("%s: BOOL byte other than 0 or 1" % name)
            values = [bool(b) for b in chunk]
        else:
            values = list(struct.unpack("<%d%s" % (count, fmt[1]), chunk))
        tensors[name] = torch.tensor(values, dtype=dtype).reshape(shape)
    spans.sort()
    pos = 0
    for begin, end, name in spans:
        if begin != pos:
            raise ValueError("%s: data not contiguous (gap or overlap at %d)" % (name, begin))
        pos = end
    if pos != len(data):
        raise ValueError("%d trailing bytes after the last tensor" % (len(data) - pos))
    return tensors, metadata


# ---------------------------------------------------------------------------------------
# Case helpers
# ---------------------------------------------------------------------------------------

def seed_for(module, case):
    """A fixed seed per case, independent of the order cases are generated in."""
    torch.manual_seed(zlib.crc32(("%s/%s" % (module, case)).encode("utf-8")))


def randn(*shape, scale=1.0):
    return torch.randn(*shape, dtype=F64) * scale


class FixtureError(Exception):
    """A generated or re-read case breaks the contract (fatal when generating)."""


def check_no_fully_masked_rows(blocked, what):
    """`blocked` [..., S] bool (true = key not attended): fail loudly if a row is all true."""
    full = blocked.all(dim=-1)
    if bool(full.any()):
        raise FixtureError("%s has a fully masked row at %s" % (what, full.nonzero()[0].tolist()))


def bool_mask(shape, p_block, what):
    """Random true = blocked mask; one random key per row is forced open."""
    blocked = torch.rand(*shape, dtype=F64) < p_block
    keep = torch.randint(0, shape[-1], tuple(shape[:-1]) + (1,))
    blocked.scatter_(-1, keep, False)
    check_no_fully_masked_rows(blocked, what)
    return blocked


def additive_mask(shape, what):
    """Random additive float mask: -inf (~30%), finite negatives, zeros and small positives."""
    u = torch.rand(*shape, dtype=F64)
    values = torch.where(u < 0.3, torch.full_like(u, -math.inf),
                         torch.where(u < 0.6, -randn(*shape).abs() * 3.0,
                                     torch.where(u < 0.8, torch.zeros_like(u),
                                                 torch.rand(*shape, dtype=F64) * 0.5)))
    keep = torch.randint(0, shape[-1], tuple(shape[:-1]) + (1,))
    values.scatter_(-1, keep, -0.25)  # one finite entry per row
    check_no_fully_masked_rows(torch.isneginf(values), what)
    return values


class Writer:
    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.written = []

    def write(self, module, case, dtype, tensors, options, tol, description):
        float_dtypes = {t.dtype for t in tensors.values() if t.is_floating_point()}
        if float_dtypes != {dtype}:
            raise FixtureError("%s/%s mixes float dtypes %s" % (module, case, float_dtypes))
        for name, t in tensors.items():
            if t.is_floating_point() and bool(torch.isnan(t).any()):
                raise FixtureError("%s/%s: %s holds NaN" % (module, case, name))
        rtol, atol = tol[dtype]
        metadata = {
            "module": module,
            "options": json.dumps(options, sort_keys=True),
            "rtol": repr(float(rtol)),
            "atol": repr(float(atol)),
            "description": description,
            "generator": GENERATOR,
        }
        rel = os.path.join(module, "%s_%s.safetensors" % (case, DTYPE_TAG[dtype]))
        write_safetensors(os.path.join(self.out_dir, rel), tensors, metadata)
        self.written.append(rel)


def close_or_die(a, b, rtol, atol, what):
    """Cross-check two torch computations of the same thing at generation time."""
    if a.shape != b.shape or not torch.allclose(a, b, rtol=rtol, atol=atol, equal_nan=False):
        err = (a - b).abs().max().item() if a.shape == b.shape else "shape"
        raise FixtureError("cross-check failed for %s (max err %s)" % (what, err))


# ---------------------------------------------------------------------------------------
# softmax
# ---------------------------------------------------------------------------------------

def gen_softmax(w):
    module = "softmax"

    def mixed_rows():
        # Finite rows mixing magnitudes: one-hot by a huge gap, all near +3e4, all near
        # -1e4, tiny values (uniform result), and a row spanning 1e-30 .. 1e20.
        rows = randn(5, 7)
        rows[0] = torch.tensor([1e20, -1e20, 0.0, 1e-20, 5.0, -3e15, 2e19], dtype=F64)
        rows[1] = 3e4 + randn(7)
        rows[2] = -1e4 + randn(7)
        rows[3] = 1e-30 * randn(7)
        rows[4] = torch.tensor([88.0, 89.5, -1e20, 1e-30, 90.0, 87.25, -80.0], dtype=F64)
        return rows

    cases = [
        ("random_2d", lambda: randn(3, 7), {}, "random [3, 7] logits, dim absent (= -1)"),
        ("large_logits", lambda: 1000.0 + randn(3, 7), {"dim": -1},
         "[3, 7] logits 1000 + randn: needs the max subtracted"),
        ("mixed_magnitudes", mixed_rows, {"dim": -1},
         "[5, 7] finite logits mixing magnitudes 1e-30 .. 1e20 (one-hot, +3e4, -1e4, tiny rows)"),
        ("dim_last_3d", lambda: randn(2, 3, 5, scale=2.0), {"dim": -1},
         "[2, 3, 5] logits, softmax over dim -1"),
        ("dim1_3d", lambda: randn(2, 3, 5, scale=2.0), {"dim": 1},
         "[2, 3, 5] logits, softmax over dim 1 (a middle dim)"),
    ]
    for case, make, options, description in cases:
        seed_for(module, case)
        x64 = make()
        for dtype in (F32, F64):
            x = x64.to(dtype)
            if not bool(torch.isfinite(x).all()):
                raise FixtureError("softmax/%s input not finite in %s" % (case, dtype))
            y = torch.softmax(x, dim=options.get("dim", -1))
            w.write(module, case, dtype, {"input.input": x, "expected.output": y}, options,
                    TOL_SOFTMAX, description)


# ---------------------------------------------------------------------------------------
# scaled_dot_product_attention
# ---------------------------------------------------------------------------------------

def sdpa_explicit(q, k, v, blocked=None, additive=None, is_causal=False, scale=None):
    """softmax(scale * Q K^T + mask) V, written out; `blocked` is true = masked out."""
    E = q.shape[-1]
    s = 1.0 / math.sqrt(E) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * s  # [..., L, S]
    if blocked is not None:
        scores = scores.masked_fill(blocked, -math.inf)
    if additive is not None:
        scores = scores + additive
    if is_causal:
        L, S = scores.shape[-2], scores.shape[-1]
        causal = torch.ones(L, S, dtype=torch.bool).triu(1)  # key j > query i
        scores = scores.masked_fill(causal, -math.inf)
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights


def gen_sdpa(w):
    module = "scaled_dot_product_attention"
    B, H, L, S, E, Ev = 2, 3, 5, 7, 4, 6

    def qkv(lead, L_, S_, E_, Ev_, scale=1.0):
        return (randn(*lead, L_, E_, scale=scale), randn(*lead, S_, E_, scale=scale),
                randn(*lead, S_, Ev_))

    # Each entry: case, builder -> (q, k, v, blocked, additive), options, tolerance, text.
    def no_mask():
        return qkv((B, H), L, S, E, Ev) + (None, None)

    def bool_2d():
        q, k, v = qkv((B, H), L, S, E, Ev)
        return q, k, v, bool_mask((L, S), 0.4, "sdpa bool_mask_2d"), None

    def bool_4d():
        q, k, v = qkv((B, H), L, S, E, Ev)
        return q, k, v, bool_mask((B, 1, L, S), 0.4, "sdpa bool_mask_4d"), None

    def i64_mask():
        q, k, v = qkv((B, H), L, S, E, Ev)
        return q, k, v, bool_mask((B, 1, 1, S), 0.4, "sdpa i64_mask"), None

    def float_mask():
        q, k, v = qkv((B, H), L, S, E, Ev)
        return q, k, v, None, additive_mask((B, H, L, S), "sdpa float_mask")

    def causal():
        return qkv((B, H), L, L, E, Ev) + (None, None)

    def unbatched():
        q, k, v = qkv((), L, S, E, Ev)
        return q, k, v, bool_mask((L, S), 0.4, "sdpa unbatched_2d"), None

    def odd_size():
        return qkv((2,), 33, 33, 64, 64) + (None, None)

    def large_logits():
        # q ~ 22 + N(0, 1), k ~ 22 + N(0, 0.05^2) per entry: scores (q.k)/2 ~ 4 * 22 * 22 / 2
        # ~ 970 for every key, while the spread over keys, q.(k_j - k_j'), / 2 is O(1):
        # exp overflows without the max subtracted, and the weights are not one-hot.
        q = 22.0 + randn(B, H, L, E)
        k = 22.0 + randn(B, H, S, E, scale=0.05)
        return q, k, randn(B, H, S, Ev), None, None

    cases = [
        ("no_mask", no_mask, {}, TOL_SDPA,
         "q [2,3,5,4], k [2,3,7,4], v [2,3,7,6] (L != S, E != Ev), no mask"),
        ("bool_mask_2d", bool_2d, {}, TOL_SDPA,
         "bool attn_mask [L, S] = [5, 7] broadcast over [B, H], true = masked out"),
        ("bool_mask_4d", bool_4d, {}, TOL_SDPA,
         "bool attn_mask [B, 1, L, S] = [2, 1, 5, 7] broadcast over heads, true = masked out"),
        ("i64_mask", i64_mask, {}, TOL_SDPA,
         "I64 0/1 attn_mask [B, 1, 1, S] = [2, 1, 1, 7] (a per-key padding mask), 1 = masked out"),
        ("float_mask", float_mask, {}, TOL_SDPA,
         "additive float attn_mask [2, 3, 5, 7] with -inf, finite negative, zero and positive entries"),
        ("causal", causal, {"is_causal": True}, TOL_SDPA,
         "is_causal with L == S = 5: key j masked for query i when j > i"),
        ("scale", no_mask, {"scale": 0.3}, TOL_SDPA,
         "explicit scale 0.3 instead of 1/sqrt(E), L != S, E != Ev"),
        ("unbatched_2d", unbatched, {}, TOL_SDPA,
         "rank-2 q [5, 4], k [7, 4], v [7, 6] with bool attn_mask [5, 7], true = masked out"),
        ("odd_size", odd_size, {}, TOL_SDPA,
         "rank-3 q, k, v [2, 33, 64] (L = S = 33, E = Ev = 64), no mask"),
        ("large_logits", large_logits, {}, TOL_SDPA_LARGE,
         "scores ~970 +- O(1) (q ~ 22 + N(0,1), k ~ 22 + N(0,0.05^2)): exp overflows unless the max is subtracted"),
    ]
    for case, build, options, tol, description in cases:
        seed_for(module, case)
        q64, k64, v64, blocked, additive64 = build()
        for dtype in (F32, F64):
            q, k, v = q64.to(dtype), k64.to(dtype), v64.to(dtype)
            additive = None if additive64 is None else additive64.to(dtype)
            out, weights = sdpa_explicit(q, k, v, blocked, additive, options.get("is_causal", False),
                                         options.get("scale"))
            check_no_fully_masked_rows(weights.eq(0), "sdpa/%s weights" % case)
            # Cross-check with torch 1.13's private SDPA (true = attend, no `scale`).
            if "scale" not in options:
                mask = None
                if blocked is not None:
                    mask = ~blocked  # file: true = blocked; torch: true = attend
                elif additive is not None:
                    mask = additive
                t_out, t_w = F._scaled_dot_product_attention(
                    q, k, v, mask, 0.0, True, options.get("is_causal", False))
                rtol, atol = tol[dtype]
                close_or_die(t_out, out, rtol / 10, atol / 10, "sdpa/%s output" % case)
                close_or_die(t_w, weights, rtol / 10, atol / 10, "sdpa/%s weights" % case)
            tensors = {"input.query": q, "input.key": k, "input.value": v,
                       "expected.output": out, "expected.attn_weights": weights}
            if blocked is not None:
                tensors["input.attn_mask"] = blocked.to(torch.int64) if case == "i64_mask" else blocked
            if additive is not None:
                tensors["input.attn_mask"] = additive
            w.write(module, case, dtype, tensors, options, tol, description)


# ---------------------------------------------------------------------------------------
# multihead_attention
# ---------------------------------------------------------------------------------------
# is_causal is not generated for nn.MultiheadAttention: torch 1.13's forward has no
# is_causal argument, and in later versions it is only a hint that requires attn_mask to
# be the causal mask, while docs/fixtures.md never gives both is_causal and attn_mask.

def gen_mha(w):
    module = "multihead_attention"

    # spec keys: E, H, L, S, B, kdim, vdim, bias, batch_first, self_attn, need_weights,
    # average_attn_weights, kpm ("bool" | "i64"), kpm_lengths (None: random), attn_mask ("bool2d" |
    # "float2d" | "bool3d" | "float3d"), explicit (options to write even at defaults)
    cases = [
        ("self_seq_first", dict(E=8, H=2, L=5, B=2, self_attn=True,
                                explicit={"bias": True, "batch_first": False, "dropout": 0.0,
                                          "kdim": 8, "vdim": 8, "need_weights": True,
                                          "average_attn_weights": True}),
         "self-attention (key, value absent), batch_first false: query [L=5, B=2, E=8], "
         "2 heads, every option written at its default"),
        ("self_batch_first", dict(E=8, H=2, L=5, B=2, self_attn=True, batch_first=True),
         "self-attention, batch_first true: query [B=2, L=5, E=8], 2 heads"),
        ("cross_attention", dict(E=12, H=3, L=5, S=7, B=2),
         "cross-attention L=5 != S=7, embed_dim 12, 3 heads, batch_first false"),
        ("kdim_vdim", dict(E=8, H=2, L=5, S=7, B=2, kdim=5, vdim=3, batch_first=True),
         "kdim 5 and vdim 3 != embed_dim 8: q_proj_weight/k_proj_weight/v_proj_weight, batch_first"),
        ("no_bias", dict(E=8, H=2, L=5, S=7, B=2, bias=False),
         "bias=False: no in_proj_bias and no out_proj.bias"),
        ("no_bias_kdim_vdim", dict(E=8, H=4, L=4, S=6, B=2, kdim=6, vdim=10, bias=False),
         "bias=False with kdim 6, vdim 10: only q/k/v_proj_weight and out_proj.weight"),
        ("key_padding_mask_bool", dict(E=8, H=2, L=5, S=7, B=2, kpm="bool", kpm_lengths=None),
         "BOOL key_padding_mask [B, S] = [2, 7], true = masked out, random (not suffix) pattern"),
        ("key_padding_mask_i64", dict(E=8, H=2, L=5, S=7, B=2, kpm="i64", kpm_lengths=[5, 7]),
         "I64 0/1 key_padding_mask [2, 7], 1 = padded (torch 1.13 rejects I64: computed as bool)"),
        ("key_padding_self_batch_first", dict(E=8, H=2, L=6, B=3, self_attn=True, batch_first=True,
                                              kpm="bool", kpm_lengths=[6, 3, 1]),
         "self-attention batch_first with BOOL key_padding_mask [3, 6]: padded query rows are "
         "computed normally, not zeroed"),
        ("attn_mask_bool_2d", dict(E=8, H=2, L=5, S=7, B=2, attn_mask="bool2d"),
         "BOOL attn_mask [L, S] = [5, 7], true = masked out"),
        ("attn_mask_float_2d", dict(E=8, H=2, L=5, S=7, B=2, attn_mask="float2d"),
         "additive float attn_mask [5, 7] with -inf, finite negative, zero and positive entries"),
        ("attn_mask_3d", dict(E=8, H=2, L=5, S=7, B=2, attn_mask="bool3d"),
         "BOOL attn_mask [B*num_heads, L, S] = [4, 5, 7], indexed b * num_heads + h"),
        ("key_padding_and_attn_mask", dict(E=8, H=2, L=5, S=7, B=2, kpm="bool",
                                           kpm_lengths=[6, 4], attn_mask="float3d"),
         "BOOL key_padding_mask [2, 7] together with additive float attn_mask [4, 5, 7] (-inf entries)"),
        ("key_padding_and_bool_attn_mask", dict(E=8, H=2, L=5, S=7, B=2, kpm="i64",
                                                kpm_lengths=[7, 5], attn_mask="bool2d",
                                                batch_first=True),
         "I64 key_padding_mask [2, 7] together with BOOL attn_mask [5, 7], batch_first"),
        ("weights_per_head", dict(E=8, H=2, L=5, S=7, B=2, average_attn_weights=False),
         "need_weights with average_attn_weights false: attn_weights [B, H, L, S] = [2, 2, 5, 7], "
         "batch_first false"),
        ("weights_averaged", dict(E=12, H=3, L=5, S=7, B=2, average_attn_weights=True,
                                  batch_first=True, attn_mask="bool2d",
                                  explicit={"need_weights": True, "average_attn_weights": True}),
         "need_weights, average_attn_weights true (explicit): attn_weights [B, L, S] = [2, 5, 7]"),
        ("no_weights", dict(E=8, H=2, L=5, S=7, B=2, need_weights=False),
         "need_weights false: only expected.output"),
        ("odd_size", dict(E=64, H=4, L=33, B=2, self_attn=True, kpm="bool", kpm_lengths=[33, 20]),
         "self-attention embed_dim 64, 4 heads, L = 33, B = 2, key_padding_mask (second: 20 keys)"),
    ]
    for case, spec, description in cases:
        seed_for(module, case)
        E, H, L, B = spec["E"], spec["H"], spec["L"], spec["B"]
        self_attn = spec.get("self_attn", False)
        S = L if self_attn else spec["S"]
        kdim, vdim = spec.get("kdim", E), spec.get("vdim", E)
        bias = spec.get("bias", True)
        batch_first = spec.get("batch_first", False)
        need_weights = spec.get("need_weights", True)
        average = spec.get("average_attn_weights", True)

        # Module in float64; parameters overwritten with random values (torch initialises
        # the biases to zero, which would hide bias handling).
        mha = torch.nn.MultiheadAttention(E, H, dropout=0.0, bias=bias, kdim=kdim, vdim=vdim,
                                          batch_first=batch_first, dtype=F64).eval()
        params64 = {}
        with torch.no_grad():
            for name, p in mha.named_parameters():
                fan_in = p.shape[-1] if p.dim() == 2 else 1
                if p.dim() == 2:
                    p.copy_(randn(*p.shape) / math.sqrt(fan_in))
                else:
                    p.copy_(randn(*p.shape, scale=0.5))
                params64[name] = p.detach().clone()
        if set(params64) != set(mha.state_dict()):
            raise FixtureError("parameter names differ from state_dict for %s" % case)

        def layout(n_seq, n_feat):
            return (B, n_seq, n_feat) if batch_first else (n_seq, B, n_feat)

        query64 = randn(*layout(L, E))
        key64 = value64 = None
        if not self_attn:
            key64, value64 = randn(*layout(S, kdim)), randn(*layout(S, vdim))

        kpm_blocked = None
        if "kpm" in spec:
            lengths = spec["kpm_lengths"]
            if lengths is None:  # arbitrary pattern, one random key per sequence kept
                kpm_blocked = bool_mask((B, S), 0.4, "mha/%s key_padding_mask" % case)
            else:  # padded suffix: sequence b has lengths[b] keys
                kpm_blocked = torch.arange(S).unsqueeze(0) >= torch.tensor(lengths).unsqueeze(1)
        attn_blocked = attn_add64 = None
        kind = spec.get("attn_mask")
        if kind == "bool2d":
            attn_blocked = bool_mask((L, S), 0.35, "mha/%s attn_mask" % case)
        elif kind == "bool3d":
            attn_blocked = bool_mask((B * H, L, S), 0.35, "mha/%s attn_mask" % case)
        elif kind == "float2d":
            attn_add64 = additive_mask((L, S), "mha/%s attn_mask" % case)
        elif kind == "float3d":
            attn_add64 = additive_mask((B * H, L, S), "mha/%s attn_mask" % case)
        # Every (b, h, l) row keeps at least one key after combining both masks.
        combined = torch.zeros(B, H, L, S, dtype=torch.bool)
        if kpm_blocked is not None:
            combined |= kpm_blocked.view(B, 1, 1, S)
        if attn_blocked is not None:
            combined |= attn_blocked.view(-1, L, S).expand(B * H, L, S).reshape(B, H, L, S)
        if attn_add64 is not None:
            combined |= torch.isneginf(attn_add64).view(-1, L, S).expand(B * H, L, S).reshape(B, H, L, S)
        check_no_fully_masked_rows(combined, "mha/%s combined masks" % case)

        options = {"embed_dim": E, "num_heads": H}
        options.update(spec.get("explicit", {}))
        if not bias:
            options["bias"] = False
        if kdim != E or vdim != E:
            options["kdim"], options["vdim"] = kdim, vdim
        if batch_first:
            options["batch_first"] = True
        if not need_weights:
            options["need_weights"] = False
        if not average:
            options["average_attn_weights"] = False

        for dtype in (F32, F64):
            mha_d = copy.deepcopy(mha).to(dtype)  # float64 -> float32 rounds parameters once
            query = query64.to(dtype)
            key = query if self_attn else key64.to(dtype)
            value = query if self_attn else value64.to(dtype)
            attn_mask = attn_blocked if attn_blocked is not None else (
                None if attn_add64 is None else attn_add64.to(dtype))
            # Grad enabled with parameters requiring grad keeps torch 1.13 on the plain
            # (slow) path for every case; the fused fast path (batch_first self-attention)
            # is cross-checked below.
            with torch.enable_grad():
                out, weights = mha_d(query, key, value, key_padding_mask=kpm_blocked,
                                     need_weights=need_weights, attn_mask=attn_mask,
                                     average_attn_weights=average)
            out = out.detach()
            weights = None if weights is None else weights.detach()
            expected_w_shape = (B, L, S) if average else (B, H, L, S)
            if need_weights and tuple(weights.shape) != expected_w_shape:
                raise FixtureError("mha/%s attn_weights shape %s" % (case, tuple(weights.shape)))
            if self_attn and batch_first and attn_mask is None and H % 2 == 0:
                with torch.no_grad():
                    f_out, f_w = mha_d(query, query, query, key_padding_mask=kpm_blocked,
                                       need_weights=need_weights, average_attn_weights=average)
                rtol, atol = TOL_MHA[dtype]
                close_or_die(f_out, out, rtol / 4, atol / 4, "mha/%s fast path output" % case)
            tensors = {n: p.detach().clone() for n, p in mha_d.named_parameters()}
            tensors["input.query"] = query
            if not self_attn:
                tensors["input.key"], tensors["input.value"] = key, value
            if kpm_blocked is not None:
                tensors["input.key_padding_mask"] = (kpm_blocked.to(torch.int64)
                                                     if spec["kpm"] == "i64" else kpm_blocked)
            if attn_mask is not None:
                tensors["input.attn_mask"] = attn_mask
            tensors["expected.output"] = out
            if need_weights:
                tensors["expected.attn_weights"] = weights
            w.write(module, case, dtype, tensors, options, TOL_MHA, description)


# ---------------------------------------------------------------------------------------
# embedding
# ---------------------------------------------------------------------------------------

def gen_embedding(w):
    module = "embedding"
    V, D = 10, 4
    cases = [
        ("basic", None, (2, 5), "weight [10, 4], input I64 [2, 5], no padding_idx"),
        ("padding_idx", 0, (2, 5),
         "padding_idx 0 with index 0 in the input: the stored (nonzero) row 0 is returned"),
        ("padding_idx_negative", -1, (2, 5),
         "padding_idx -1 (= row 9) with index 9 in the input: the stored row is returned"),
        ("input_1d", None, (6,), "rank-1 input I64 [6] -> output [6, 4]"),
    ]
    for case, padding_idx, in_shape, description in cases:
        seed_for(module, case)
        weight64 = randn(V, D)
        index = torch.randint(0, V, in_shape, dtype=torch.int64)
        if padding_idx is not None:
            index.view(-1)[1] = padding_idx % V  # make sure the padding row is looked up
        options = {"num_embeddings": V, "embedding_dim": D}
        if padding_idx is not None:
            options["padding_idx"] = padding_idx
        for dtype in (F32, F64):
            emb = torch.nn.Embedding(V, D, padding_idx=padding_idx, dtype=dtype)
            with torch.no_grad():
                emb.weight.copy_(weight64.to(dtype))  # overwrite the zeroed padding row too
            out = emb(index).detach()
            tensors = {"weight": emb.weight.detach().clone(), "input.input": index,
                       "expected.output": out}
            w.write(module, case, dtype, tensors, options, TOL_EMBEDDING, description)


# ---------------------------------------------------------------------------------------
# sinusoidal_positional_encoding (no torch module: docs/fixtures.md formulas, float64 math)
# ---------------------------------------------------------------------------------------

def sinusoidal_reference(max_len, d_model, layout, first_position):
    """[max_len, d_model] float64 table from the docs/fixtures.md formulas, scalar math."""
    n_sin, n_cos = (d_model + 1) // 2, d_model // 2
    pe = torch.zeros(max_len, d_model, dtype=F64)
    for r in range(max_len):
        p = first_position + r
        for i in range(n_sin):
            a = p / 10000.0 ** (2 * i / d_model)
            pe[r, 2 * i if layout == "interleaved" else i] = math.sin(a)
        for i in range(n_cos):
            a = p / 10000.0 ** (2 * i / d_model)
            pe[r, 2 * i + 1 if layout == "interleaved" else n_sin + i] = math.cos(a)
    return pe


def gen_sinusoidal(w):
    module = "sinusoidal_positional_encoding"
    cases = [
        ("interleaved", dict(max_len=6, d_model=8, layout="interleaved"),
         "interleaved [6, 8], first_position absent (= 0)"),
        ("interleaved_first1", dict(max_len=6, d_model=8, layout="interleaved", first_position=1),
         "interleaved [6, 8], first_position 1"),
        ("concatenated", dict(max_len=6, d_model=8, layout="concatenated", first_position=0),
         "concatenated [6, 8] (sines then cosines), first_position 0 (explicit)"),
        ("concatenated_first1", dict(max_len=6, d_model=8, layout="concatenated", first_position=1),
         "concatenated [6, 8], first_position 1"),
        ("odd_d_interleaved", dict(max_len=5, d_model=7, layout="interleaved"),
         "interleaved, odd d_model 7: last column is a sine"),
        ("odd_d_concatenated", dict(max_len=5, d_model=7, layout="concatenated"),
         "concatenated, odd d_model 7: 4 sine then 3 cosine columns"),
        ("d16_len50", dict(max_len=50, d_model=16, layout="interleaved"),
         "interleaved [50, 16]: angles up to 49 rad"),
    ]
    for case, options, description in cases:
        pe = sinusoidal_reference(options["max_len"], options["d_model"], options["layout"],
                                  options.get("first_position", 0))
        # Cross-check the scalar formula against a vectorised torch float64 version.
        d = options["d_model"]
        pos = torch.arange(options["max_len"], dtype=F64).unsqueeze(1) + options.get("first_position", 0)
        ang = pos / torch.pow(torch.tensor(10000.0, dtype=F64),
                              torch.arange(0, d, 2, dtype=F64) / d)  # [max_len, ceil(d/2)]
        vec = torch.cat([torch.sin(ang), torch.cos(ang[:, : d // 2])], dim=1)
        if options["layout"] == "interleaved":
            order = list(range(0, d, 2)) + list(range(1, d, 2))  # column c -> position in vec
            vec = vec[:, torch.argsort(torch.tensor(order))]
        close_or_die(vec, pe, 0.0, 1e-14, "sinusoidal/%s" % case)
        for dtype in (F32, F64):
            w.write(module, case, dtype, {"expected.output": pe.to(dtype)}, options, TOL_PE,
                    description)


# ---------------------------------------------------------------------------------------
# rnn_cell, lstm_cell, gru_cell, rnn, lstm, gru
# ---------------------------------------------------------------------------------------
# Tensor names follow docs/fixtures.md. Variable lengths have no name there; they are passed as
# `input.lengths` (I64 [B]): sequence b has lengths[b] valid steps (1 <= lengths[b] <= T,
# any order). The expected outputs are PyTorch's packed-sequence results:
# pack_padded_sequence(input, lengths, batch_first, enforce_sorted=False), the module, then
# pad_packed_sequence(..., total_length=T). So padded steps leave the state unchanged,
# `output` is 0 there, the reverse direction starts at each sequence's last valid step, and
# h_n / c_n are in the original batch order. The input at padded steps holds random values
# (not zeros): an implementation must ignore them.


def _sigmoid(x):
    return 1.0 / (1.0 + torch.exp(-x))


def cell_reference(kind, x, h, c, w_ih, w_hh, b_ih, b_hh, nonlinearity="tanh"):
    """One step of an RNN / LSTM / GRU cell written out, PyTorch gate order (i, f, g, o and
    r, z, n); returns (h', c') with c' None except for the LSTM."""
    xi = x @ w_ih.T + (0.0 if b_ih is None else b_ih)
    hh = h @ w_hh.T + (0.0 if b_hh is None else b_hh)
    if kind == "rnn":
        pre = xi + hh
        return (torch.tanh(pre) if nonlinearity == "tanh" else torch.clamp(pre, min=0.0)), None
    if kind == "lstm":
        i, f, g, o = (xi + hh).chunk(4, dim=-1)
        c_next = _sigmoid(f) * c + _sigmoid(i) * torch.tanh(g)
        return _sigmoid(o) * torch.tanh(c_next), c_next
    xr, xz, xn = xi.chunk(3, dim=-1)
    hr, hz, hn = hh.chunk(3, dim=-1)
    r, z = _sigmoid(xr + hr), _sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1.0 - z) * n + z * h, None


def recurrent_reference(kind, opts, params, x, h_0, c_0, lengths):
    """The stacked, optionally bidirectional layer written out step by step (float64 when
    given float64). Padded steps (t >= lengths[b]) keep the state and output 0."""
    bf = opts.get("batch_first", False)
    layers, N = opts.get("num_layers", 1), opts["hidden_size"]
    D = 2 if opts.get("bidirectional", False) else 1
    seq = x.transpose(0, 1) if bf else x  # [T, B, in]
    T, B = seq.shape[0], seq.shape[1]
    lens = [T] * B if lengths is None else [int(v) for v in lengths]
    h_n, c_n = [], []
    layer_in = seq
    for k in range(layers):
        outs = []
        for d in range(D):
            sfx = "_l%d%s" % (k, "_reverse" if d else "")
            p = [params.get(n + sfx) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            zeros = torch.zeros(B, N, dtype=x.dtype)
            h = zeros.clone() if h_0 is None else h_0[k * D + d].clone()
            c = None
            if kind == "lstm":
                c = zeros.clone() if c_0 is None else c_0[k * D + d].clone()
            out = torch.zeros(T, B, N, dtype=x.dtype)
            for s in range(T):
                t = s if d == 0 else T - 1 - s
                h_new, c_new = cell_reference(kind, layer_in[t], h, c, *p,
                                              nonlinearity=opts.get("nonlinearity", "tanh"))
                valid = torch.tensor([t < lens[b] for b in range(B)]).unsqueeze(1)  # [B, 1]
                h = torch.where(valid, h_new, h)
                if c is not None:
                    c = torch.where(valid, c_new, c)
                out[t] = torch.where(valid, h_new, torch.zeros_like(h_new))
            outs.append(out)
            h_n.append(h)
            c_n.append(c)
        layer_in = torch.cat(outs, dim=2)  # [T, B, D * N]
    output = layer_in.transpose(0, 1) if bf else layer_in
    return output, torch.stack(h_n), (torch.stack(c_n) if kind == "lstm" else None)



def _cell_params(module_obj):
    return {n: p.detach().clone() for n, p in module_obj.named_parameters()}


def gen_cells(w):
    B, I, N = 3, 5, 4
    # (module, case, options beyond sizes, state given, description)
    cases = [
        ("rnn_cell", "tanh", {}, True, "RNNCell tanh, input [3, 5], hx [3, 4] given"),
        ("rnn_cell", "relu", {"nonlinearity": "relu"}, True, "RNNCell relu, hx given"),
        ("rnn_cell", "zero_state", {"nonlinearity": "tanh"}, False,
         "RNNCell tanh (explicit), hx absent (zeros)"),
        ("rnn_cell", "no_bias", {"bias": False}, True, "RNNCell without bias_ih/bias_hh"),
        ("lstm_cell", "basic", {}, True, "LSTMCell, input [3, 5], hx and cx [3, 4] given"),
        ("lstm_cell", "zero_state", {}, False, "LSTMCell, hx and cx absent (zeros)"),
        ("lstm_cell", "no_bias", {"bias": False}, True, "LSTMCell without biases"),
        ("gru_cell", "basic", {}, True, "GRUCell, input [3, 5], hx [3, 4] given"),
        ("gru_cell", "zero_state", {}, False, "GRUCell, hx absent (zeros)"),
        ("gru_cell", "no_bias", {"bias": False}, True, "GRUCell without biases"),
    ]
    for module, case, extra, with_state, description in cases:
        seed_for(module, case)
        kind = module.split("_")[0]
        bias = extra.get("bias", True)
        if kind == "rnn":
            cell = torch.nn.RNNCell(I, N, bias=bias, nonlinearity=extra.get("nonlinearity", "tanh"),
                                    dtype=F64)
        elif kind == "lstm":
            cell = torch.nn.LSTMCell(I, N, bias=bias, dtype=F64)
        else:
            cell = torch.nn.GRUCell(I, N, bias=bias, dtype=F64)
        x64 = randn(B, I)
        hx64, cx64 = randn(B, N), randn(B, N)
        options = {"input_size": I, "hidden_size": N}
        options.update(extra)
        for dtype in (F32, F64):
            c = copy.deepcopy(cell).to(dtype)
            x, hx, cx = x64.to(dtype), hx64.to(dtype), cx64.to(dtype)
            with torch.no_grad():
                if kind == "lstm":
                    h, c_out = c(x, (hx, cx)) if with_state else c(x)
                else:
                    h, c_out = (c(x, hx) if with_state else c(x)), None
            params = _cell_params(c)
            zeros = torch.zeros(B, N, dtype=dtype)
            ref_h, ref_c = cell_reference(kind, x, hx if with_state else zeros,
                                          cx if with_state else zeros, params["weight_ih"],
                                          params["weight_hh"], params.get("bias_ih"),
                                          params.get("bias_hh"), extra.get("nonlinearity", "tanh"))
            rtol, atol = TOL_CELL[dtype]
            close_or_die(ref_h, h, rtol / 4, atol / 4, "%s/%s h" % (module, case))
            tensors = dict(params)
            tensors["input.input"] = x
            if with_state:
                tensors["input.hx"] = hx
                if kind == "lstm":
                    tensors["input.cx"] = cx
            tensors["expected.h"] = h
            if kind == "lstm":
                close_or_die(ref_c, c_out, rtol / 4, atol / 4, "%s/%s c" % (module, case))
                tensors["expected.c"] = c_out
            w.write(module, case, dtype, tensors, options, TOL_CELL, description)


def gen_recurrent(w):
    # spec keys: L layers, T, B, I, N, bf batch_first, bidir, h0 (initial states given),
    # bias, nl (rnn nonlinearity), lengths (list of B valid lengths), explicit (options to
    # write even at their defaults)
    common = [
        ("one_layer", dict(L=1), "1 layer, batch_first false, h_0 absent (zeros): input [5, 3, 4]"),
        ("two_layers_h0", dict(L=2, h0=True),
         "2 layers, batch_first false, initial states given [2, 3, 3]"),
        ("batch_first_h0", dict(L=2, bf=True, h0=True,
                                explicit={"bias": True, "bidirectional": False, "num_layers": 2}),
         "2 layers, batch_first: input [3, 5, 4], states [2, 3, 3]; options written at defaults"),
        ("bidirectional", dict(L=1, bidir=True, h0=True),
         "1 layer bidirectional, batch_first false, states [2, 3, 3] given: output [5, 3, 6]"),
        ("two_layers_bidirectional", dict(L=2, bidir=True, bf=True),
         "2 layers bidirectional, batch_first, zero states: layer 1 reads [B, T, 6]"),
        ("lengths", dict(L=2, bidir=True, h0=True, lengths=[3, 5, 1, 4]),
         "packed: unsorted lengths [3, 5, 1, 4] (input.lengths), 2 layers bidirectional, states "
         "given, batch_first false; random values at padded steps"),
        ("lengths_batch_first", dict(L=1, bidir=True, bf=True, lengths=[2, 4, 4]),
         "packed, batch_first, 1 layer bidirectional, zero states, lengths [2, 4, 4] all < T = 5 "
         "(the last step is padding everywhere)"),
        ("lengths_unidirectional", dict(L=2, h0=True, lengths=[4, 1, 5]),
         "packed, 2 layers unidirectional, states given, lengths [4, 1, 5]"),
        ("no_bias", dict(L=2, bias=False, bidir=True, h0=True),
         "bias false (no bias_ih/bias_hh), 2 layers bidirectional, states given"),
        ("long_sequence", dict(L=1, T=40, B=2, I=8, N=16),
         "1 layer, T = 40, B = 2, input_size 8, hidden_size 16, zero states"),
    ]
    relu = [
        ("relu", dict(L=2, nl="relu", bidir=True, h0=True),
         "nonlinearity relu, 2 layers bidirectional, states given"),
        ("relu_lengths", dict(L=2, nl="relu", bf=True, lengths=[5, 2, 3]),
         "nonlinearity relu, packed lengths [5, 2, 3], batch_first, zero states"),
    ]
    torch_class = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
    for module in ("rnn", "lstm", "gru"):
        for case, spec, description in common + (relu if module == "rnn" else []):
            seed_for(module, case)
            layers, T, I, N = spec["L"], spec.get("T", 5), spec.get("I", 4), spec.get("N", 3)
            lengths = spec.get("lengths")
            B = len(lengths) if lengths else spec.get("B", 3)
            bf, bidir, bias = spec.get("bf", False), spec.get("bidir", False), spec.get("bias", True)
            D = 2 if bidir else 1
            kwargs = dict(num_layers=layers, bias=bias, batch_first=bf, bidirectional=bidir)
            if module == "rnn":
                kwargs["nonlinearity"] = spec.get("nl", "tanh")
            mod = torch_class[module](I, N, dtype=F64, **kwargs).eval()
            x64 = randn(*((B, T, I) if bf else (T, B, I)))
            h064, c064 = randn(layers * D, B, N), randn(layers * D, B, N)
            options = {"input_size": I, "hidden_size": N}
            options.update(spec.get("explicit", {}))
            if layers != 1:
                options["num_layers"] = layers
            for key, value, default in (("bias", bias, True), ("batch_first", bf, False),
                                        ("bidirectional", bidir, False)):
                if value != default:
                    options[key] = value
            if module == "rnn" and spec.get("nl", "tanh") != "tanh":
                options["nonlinearity"] = spec["nl"]
            for dtype in (F32, F64):
                m = copy.deepcopy(mod).to(dtype)
                x = x64.to(dtype)
                h0 = h064.to(dtype) if spec.get("h0") else None
                c0 = c064.to(dtype) if spec.get("h0") and module == "lstm" else None
                hx = None if h0 is None else ((h0, c0) if module == "lstm" else h0)
                with torch.no_grad():
                    if lengths:
                        lens = torch.tensor(lengths, dtype=torch.int64)
                        packed = torch.nn.utils.rnn.pack_padded_sequence(
                            x, lens, batch_first=bf, enforce_sorted=False)
                        out_p, state = m(packed, hx)
                        out, _ = torch.nn.utils.rnn.pad_packed_sequence(
                            out_p, batch_first=bf, total_length=T)
                    else:
                        out, state = m(x, hx)
                h_n, c_n = state if module == "lstm" else (state, None)
                params = _cell_params(m)
                if set(params) != set(m.state_dict()):
                    raise FixtureError("%s/%s parameter names differ from state_dict" % (module, case))
                ref_out, ref_h, ref_c = recurrent_reference(module, dict(options, hidden_size=N),
                                                            params, x, h0, c0, lengths)
                rtol, atol = TOL_RECURRENT[dtype]
                close_or_die(ref_out, out, rtol / 4, atol / 4, "%s/%s output" % (module, case))
                close_or_die(ref_h, h_n, rtol / 4, atol / 4, "%s/%s h_n" % (module, case))
                tensors = dict(params)
                tensors["input.input"] = x
                if h0 is not None:
                    tensors["input.h_0"] = h0
                if c0 is not None:
                    tensors["input.c_0"] = c0
                if lengths:
                    tensors["input.lengths"] = torch.tensor(lengths, dtype=torch.int64)
                tensors["expected.output"] = out.contiguous()
                tensors["expected.h_n"] = h_n
                if module == "lstm":
                    close_or_die(ref_c, c_n, rtol / 4, atol / 4, "%s/%s c_n" % (module, case))
                    tensors["expected.c_n"] = c_n
                w.write(module, case, dtype, tensors, options, TOL_RECURRENT, description)


# ---------------------------------------------------------------------------------------
# bahdanau_attention, luong_attention (no torch module: docs/fixtures.md formulas)
# ---------------------------------------------------------------------------------------


def _masked_softmax(scores, blocked):
    """softmax over the last dim with true = masked out excluded (no fully masked rows)."""
    if blocked is not None:
        scores = scores.masked_fill(blocked, -math.inf)
    return torch.softmax(scores, dim=-1)


def bahdanau_explicit(query, keys, W1, W2, v, blocked):
    """score_j = v . tanh(W1 keys_j + W2 query); query [B, Hq], keys [B, T, Hk]."""
    scores = torch.tanh(keys @ W1.T + (query @ W2.T).unsqueeze(1)) @ v  # [B, T]
    weights = _masked_softmax(scores, blocked)
    return weights, (weights.unsqueeze(1) @ keys).squeeze(1)  # [B, T], [B, Hk]


def luong_explicit(score, query, keys, params, blocked):
    """dot: query . keys_j; general: query . (W keys_j); concat: v . tanh(W [query; keys_j]).
    Returns weights [B, T], context [B, Hk] and, when Wc is given, tanh(Wc [context; query])."""
    if score == "dot":
        scores = (keys @ query.unsqueeze(2)).squeeze(2)
    elif score == "general":
        scores = ((keys @ params["W"].T) @ query.unsqueeze(2)).squeeze(2)
    else:
        q = query.unsqueeze(1).expand(-1, keys.shape[1], -1)  # [B, T, Hq]
        scores = torch.tanh(torch.cat([q, keys], dim=2) @ params["W"].T) @ params["v"]
    weights = _masked_softmax(scores, blocked)
    context = (weights.unsqueeze(1) @ keys).squeeze(1)
    hidden = None
    if "Wc" in params:
        hidden = torch.tanh(torch.cat([context, query], dim=1) @ params["Wc"].T)
    return weights, context, hidden


def _mask_tensor(blocked, kind):
    return blocked.to(torch.int64) if kind == "i64" else blocked


def gen_bahdanau(w):
    module = "bahdanau_attention"
    B, T, Hq, Hk, A = 3, 6, 5, 4, 7
    cases = [
        ("basic", None, "query [3, 5], keys [3, 6, 4], W1 [7, 4], W2 [7, 5], v [7], no mask"),
        ("key_padding_mask", "bool",
         "BOOL key_padding_mask [3, 6] (true = masked out), padded suffixes of lengths 6, 4, 1"),
        ("key_padding_mask_i64", "i64", "I64 0/1 key_padding_mask [3, 6], random pattern"),
    ]
    for case, mask_kind, description in cases:
        seed_for(module, case)
        query64, keys64 = randn(B, Hq), randn(B, T, Hk)
        W1, W2, v = randn(A, Hk, scale=0.5), randn(A, Hq, scale=0.5), randn(A)
        blocked = None
        if mask_kind == "bool":
            blocked = torch.arange(T).unsqueeze(0) >= torch.tensor([6, 4, 1]).unsqueeze(1)
        elif mask_kind == "i64":
            blocked = bool_mask((B, T), 0.4, "bahdanau/%s" % case)
        for dtype in (F32, F64):
            p = {"W1": W1.to(dtype), "W2": W2.to(dtype), "v": v.to(dtype)}
            query, keys = query64.to(dtype), keys64.to(dtype)
            weights, context = bahdanau_explicit(query, keys, p["W1"], p["W2"], p["v"], blocked)
            tensors = dict(p)
            tensors.update({"input.query": query, "input.keys": keys,
                            "expected.attn_weights": weights, "expected.context": context})
            if blocked is not None:
                tensors["input.key_padding_mask"] = _mask_tensor(blocked, mask_kind)
            w.write(module, case, dtype, tensors, {}, TOL_ALIGNMENT, description)


def gen_luong(w):
    module = "luong_attention"
    B, T, Hq, A = 3, 7, 5, 6
    cases = []
    for score in ("dot", "general", "concat"):
        Hk = Hq if score == "dot" else 4
        cases += [
            (score, score, Hk, None, False,
             "score %s, query [3, 5], keys [3, 7, %d], no mask, no Wc" % (score, Hk)),
            (score + "_mask_attentional", score, Hk, "bool", True,
             "score %s, BOOL key_padding_mask [3, 7] (lengths 7, 3, 5), Wc [5, %d]: "
             "attentional_hidden = tanh(Wc [context; query])" % (score, Hk + Hq)),
        ]
    cases.append(("general_mask_i64", "general", 4, "i64", False,
                  "score general, I64 0/1 key_padding_mask [3, 7], random pattern, no Wc"))
    for case, score, Hk, mask_kind, attentional, description in cases:
        seed_for(module, case)
        query64, keys64 = randn(B, Hq), randn(B, T, Hk)
        p64 = {}
        if score == "general":
            p64["W"] = randn(Hq, Hk, scale=0.5)
        elif score == "concat":
            p64["W"], p64["v"] = randn(A, Hq + Hk, scale=0.5), randn(A)
        if attentional:
            p64["Wc"] = randn(Hq, Hk + Hq, scale=0.5)
        blocked = None
        if mask_kind == "bool":
            blocked = torch.arange(T).unsqueeze(0) >= torch.tensor([7, 3, 5]).unsqueeze(1)
        elif mask_kind == "i64":
            blocked = bool_mask((B, T), 0.4, "luong/%s" % case)
        for dtype in (F32, F64):
            p = {k: t.to(dtype) for k, t in p64.items()}
            query, keys = query64.to(dtype), keys64.to(dtype)
            weights, context, hidden = luong_explicit(score, query, keys, p, blocked)
            tensors = dict(p)
            tensors.update({"input.query": query, "input.keys": keys,
                            "expected.attn_weights": weights, "expected.context": context})
            if hidden is not None:
                tensors["expected.attentional_hidden"] = hidden
            if blocked is not None:
                tensors["input.key_padding_mask"] = _mask_tensor(blocked, mask_kind)
            w.write(module, case, dtype, tensors, {"score": score}, TOL_ALIGNMENT, description)


# ---------------------------------------------------------------------------------------
# --check: independent float64 recomputation from the stored inputs
# ---------------------------------------------------------------------------------------

def _is_bool_mask(t):
    return t.dtype in (torch.bool, torch.int64)


def _apply_mask(scores, mask):
    """Add a fixture mask (bool/I64: true = masked out; float: additive) to scores."""
    if mask is None:
        return scores
    if _is_bool_mask(mask):
        return scores.masked_fill(mask.to(torch.bool), -math.inf)
    return scores + mask.to(F64)


def _softmax_explicit(x, dim):
    m = x.amax(dim=dim, keepdim=True)
    e = torch.exp(x - m)
    return e / e.sum(dim=dim, keepdim=True)


def _recompute_rnn_modules(module, opts, g):
    """float64 recomputation for the recurrent and alignment modules (None: not one)."""
    if module in ("rnn_cell", "lstm_cell", "gru_cell"):
        kind = module.split("_")[0]
        x = g["input.input"]
        zeros = torch.zeros(x.shape[0], opts["hidden_size"], dtype=F64)
        h, c = cell_reference(kind, x, g.get("input.hx", zeros), g.get("input.cx", zeros),
                              g["weight_ih"], g["weight_hh"], g.get("bias_ih"), g.get("bias_hh"),
                              opts.get("nonlinearity", "tanh"))
        return {"expected.h": h} if c is None else {"expected.h": h, "expected.c": c}
    if module in ("rnn", "lstm", "gru"):
        x = g["input.input"]
        T = x.shape[1] if opts.get("batch_first", False) else x.shape[0]
        lengths = g.get("input.lengths")
        if lengths is not None:
            lengths = lengths.tolist()
            if not all(1 <= v <= T for v in lengths):
                raise ValueError("input.lengths %s outside [1, %d]" % (lengths, T))
        params = {k: v for k, v in g.items() if not k.startswith(("input.", "expected."))}
        out, h_n, c_n = recurrent_reference(module, opts, params, x, g.get("input.h_0"),
                                            g.get("input.c_0"), lengths)
        result = {"expected.output": out, "expected.h_n": h_n}
        if module == "lstm":
            result["expected.c_n"] = c_n
        return result
    if module not in ("bahdanau_attention", "luong_attention"):
        return None
    # Alignment: scalar loops over batch and keys (independent of the batched generator).
    q, keys = g["input.query"], g["input.keys"]
    B, T, Hk = keys.shape
    mask = g.get("input.key_padding_mask")
    blocked = None if mask is None else mask.to(torch.bool)
    if blocked is not None:
        check_no_fully_masked_rows(blocked, "%s key_padding_mask" % module)
    score = opts.get("score")
    weights = torch.zeros(B, T, dtype=F64)
    context = torch.zeros(B, Hk, dtype=F64)
    hidden = torch.zeros(B, q.shape[1], dtype=F64) if "Wc" in g else None
    for b in range(B):
        scores = []
        for j in range(T):
            k = keys[b, j]
            if module == "bahdanau_attention":
                s = float(g["v"] @ torch.tanh(g["W1"] @ k + g["W2"] @ q[b]))
            elif score == "dot":
                s = float(q[b] @ k)
            elif score == "general":
                s = float(q[b] @ (g["W"] @ k))
            elif score == "concat":
                s = float(g["v"] @ torch.tanh(g["W"] @ torch.cat([q[b], k])))
            else:
                raise ValueError("unknown luong score %r" % score)
            scores.append(-math.inf if blocked is not None and bool(blocked[b, j]) else s)
        top = max(scores)
        e = [0.0 if s == -math.inf else math.exp(s - top) for s in scores]
        total = sum(e)
        for j in range(T):
            weights[b, j] = e[j] / total
            context[b] += weights[b, j] * keys[b, j]
        if hidden is not None:
            hidden[b] = torch.tanh(g["Wc"] @ torch.cat([context[b], q[b]]))
    result = {"expected.attn_weights": weights, "expected.context": context}
    if hidden is not None:
        result["expected.attentional_hidden"] = hidden
    return result


def recompute(module, opts, t):
    """float64 recomputation of every expected.* tensor from the file's own contents."""
    g = {k: v.to(F64) if v.is_floating_point() else v for k, v in t.items()}
    if module == "softmax":
        return {"expected.output": _softmax_explicit(g["input.input"], opts.get("dim", -1))}
    if module == "scaled_dot_product_attention":
        q, k, v = g["input.query"], g["input.key"], g["input.value"]
        scale = opts.get("scale", 1.0 / math.sqrt(q.shape[-1]))
        scores = _apply_mask(torch.matmul(q, k.transpose(-2, -1)) * scale, g.get("input.attn_mask"))
        if opts.get("is_causal", False):
            L, S = scores.shape[-2:]
            scores = scores.masked_fill(torch.ones(L, S, dtype=torch.bool).triu(1), -math.inf)
        check_no_fully_masked_rows(torch.isneginf(scores), "sdpa scores")
        weights = _softmax_explicit(scores, -1)
        return {"expected.output": weights @ v, "expected.attn_weights": weights}
    if module == "multihead_attention":
        E, H = opts["embed_dim"], opts["num_heads"]
        bf = opts.get("batch_first", False)
        query = g["input.query"]
        key, value = g.get("input.key", query), g.get("input.value", query)
        if ("input.key" in g) != ("input.value" in g):
            raise ValueError("key and value must be both present or both absent")
        if not bf:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))  # [B, *, *]
        if "in_proj_weight" in g:
            wq, wk, wv = g["in_proj_weight"].chunk(3)
        else:
            wq, wk, wv = g["q_proj_weight"], g["k_proj_weight"], g["v_proj_weight"]
        bq, bk, bv = g["in_proj_bias"].chunk(3) if "in_proj_bias" in g else (0.0, 0.0, 0.0)
        B, L, S, dh = query.shape[0], query.shape[1], key.shape[1], E // H
        heads = lambda x, n: x.reshape(B, n, H, dh).transpose(1, 2)  # [B, H, n, dh]
        qh = heads(query @ wq.T + bq, L)
        kh = heads(key @ wk.T + bk, S)
        vh = heads(value @ wv.T + bv, S)
        scores = (qh @ kh.transpose(-2, -1)) / math.sqrt(dh)  # [B, H, L, S]
        am = g.get("input.attn_mask")
        if am is not None:
            am = am.reshape(B, H, L, S) if am.dim() == 3 else am
            scores = _apply_mask(scores, am)
        kpm = g.get("input.key_padding_mask")
        if kpm is not None:
            scores = _apply_mask(scores, kpm.reshape(B, 1, 1, S))
        check_no_fully_masked_rows(torch.isneginf(scores), "mha scores")
        weights = _softmax_explicit(scores, -1)
        ctx = (weights @ vh).transpose(1, 2).reshape(B, L, E)
        out = ctx @ g["out_proj.weight"].T
        if "out_proj.bias" in g:
            out = out + g["out_proj.bias"]
        result = {"expected.output": out if bf else out.transpose(0, 1)}
        if opts.get("need_weights", True):
            avg = opts.get("average_attn_weights", True)
            result["expected.attn_weights"] = weights.mean(dim=1) if avg else weights
        return result
    if module == "embedding":
        return {"expected.output": g["weight"][g["input.input"]]}
    if module == "sinusoidal_positional_encoding":
        return {"expected.output": sinusoidal_reference(opts["max_len"], opts["d_model"], opts["layout"],
                                                        opts.get("first_position", 0))}
    return _recompute_rnn_modules(module, opts, g)


def tolerance_ratio(got, want, rtol, atol):
    """max over elements of |got - want| / (atol + rtol |want|); exact matches count 0."""
    err = (got - want).abs()
    err = torch.where(got == want, torch.zeros_like(err), err)
    if bool(torch.isnan(err).any()):
        return math.inf
    bound = atol + rtol * want.abs()
    ratio = torch.where(err == 0, torch.zeros_like(err),
                        err / torch.where(bound > 0, bound, torch.full_like(bound, 1e-300)))
    return ratio.max().item() if ratio.numel() else 0.0


def check(out_dir):
    known = {"softmax", "scaled_dot_product_attention", "multihead_attention", "embedding",
             "sinusoidal_positional_encoding",
             "rnn_cell", "lstm_cell", "gru_cell", "rnn", "lstm", "gru", "bahdanau_attention",
             "luong_attention"}
    files = sorted(os.path.relpath(os.path.join(root, f), out_dir)
                   for root, _, names in os.walk(out_dir) for f in names if f.endswith(".safetensors"))
    failures, checked, skipped, worst = 0, 0, 0, {}
    for rel in files:
        try:
            tensors, meta = read_safetensors(os.path.join(out_dir, rel))
            module = meta["module"]
            if module not in known:
                skipped += 1
                continue
            opts = json.loads(meta["options"])
            rtol, atol = float(meta["rtol"]), float(meta["atol"])
            floats = {t.dtype for t in tensors.values() if t.is_floating_point()}
            if len(floats) != 1:
                raise ValueError("float tensors use %d dtypes" % len(floats))
            for name, t in tensors.items():
                if "mask" in name and _is_bool_mask(t):
                    if t.dtype == torch.int64 and not bool(((t == 0) | (t == 1)).all()):
                        raise ValueError("%s: I64 mask values other than 0/1" % name)
            want = recompute(module, opts, tensors)
            expected = {k for k in tensors if k.startswith("expected.")}
            if set(want) != expected:
                raise ValueError("expected tensors %s, recomputed %s" % (sorted(expected), sorted(want)))
            ratio = 0.0
            for name in sorted(expected):
                got = tensors[name].to(F64)
                if got.shape != want[name].shape:
                    raise ValueError("%s shape %s, recomputed %s" % (name, list(got.shape),
                                                                       list(want[name].shape)))
                ratio = max(ratio, tolerance_ratio(got, want[name], rtol, atol))
            if ratio > CHECK_MARGIN:
                raise ValueError("error reaches %.3g of the tolerance (limit %g)" % (ratio, CHECK_MARGIN))
            checked += 1
            key = (module, rel.rsplit("_", 1)[-1].split(".")[0])
            if ratio >= worst.get(key, (-1.0, ""))[0]:
                worst[key] = (ratio, rel)
        except Exception as e:  # report every bad file, keep going
            failures += 1
            print("FAIL  %s: %s" % (rel, e))
    for (module, tag), (ratio, rel) in sorted(worst.items()):
        print("  %-32s %s  worst err/tolerance %.3g  (%s)" % (module, tag, ratio, rel))
    print("checked %d files, %d failed, %d skipped (module not generated here)"
          % (checked, failures, skipped))
    return failures == 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder (default tests/data)")
    parser.add_argument("--check", action="store_true",
                        help="only re-read and verify the files in --out")
    args = parser.parse_args()
    torch.set_num_threads(1)  # reproducible reductions; the machine is shared anyway
    if args.check:
        sys.exit(0 if check(args.out) else 1)
    w = Writer(args.out)
    try:
        for generate in (gen_softmax, gen_sdpa, gen_mha, gen_embedding, gen_sinusoidal, gen_cells,
                         gen_recurrent, gen_bahdanau, gen_luong):
            generate(w)
    except FixtureError as e:
        sys.exit("gen_fixtures: %s" % e)
    by_module = {}
    for rel in w.written:
        by_module[rel.split(os.sep)[0]] = by_module.get(rel.split(os.sep)[0], 0) + 1
    for module, n in sorted(by_module.items()):
        print("  %-32s %d files" % (module, n))
    print("wrote %d files to %s" % (len(w.written), args.out))


if __name__ == "__main__":
    main()
