#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# Writes the seeded PyTorch gradient fixtures of tests/data (format: docs/fixtures.md).
"""Generate the PyTorch gradient fixtures (upstream. and grad. tensors).

Usage (Debian's python3-torch; the pyenv `python3` has no torch):

    /usr/bin/python3 tests/gen_fixtures_grad.py            # (re)write the files below
    /usr/bin/python3 tests/gen_fixtures_grad.py --out DIR  # write elsewhere (determinism check)

Files: tests/data/grad_multihead_attention/<case>_<f32|f64>.safetensors (module
`multihead_attention`), tests/data/grad_embedding/... (module `embedding`) and
tests/data/grad_transformer_encoder_layer/... (module `transformer_encoder_layer`) and
tests/data/grad_lstm/... (module `lstm`). Each case holds the forward case of docs/fixtures.md (parameters, `input.`,
`expected.`) plus `upstream.<output>` and the gradients `grad.<parameter>` and
`grad.input.<name>` of L = sum over outputs of sum(<output> * upstream.<output>),
computed by torch autograd in the case's dtype. For self-attention (no key/value in the
file) grad.input.query is the total gradient through query, key and value.

Every gradient is cross-checked at generation time against an independent float64
autograd through the explicit formulas of gen_fixtures.recompute (not torch modules),
evaluated on the very values stored in the file: the stored gradient must sit within
CHECK_MARGIN of the file's tolerance. Running the script twice gives byte-identical files.

The helpers (safetensors writer, seeds, random data, masks) are imported from
tests/gen_fixtures.py unchanged.
"""

import argparse
import copy
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_fixtures as gf  # noqa: E402  (the shared helpers; not edited here)
import gen_fixtures_transformer as gft  # noqa: E402  (its explicit encoder-layer formulas)

F32, F64 = gf.F32, gf.F64
GENERATOR = "tests/gen_fixtures_grad.py (torch %s)" % torch.__version__

# Same margin as gen_fixtures.py's --check: the torch value may use at most a quarter of
# the tolerance, leaving the rest to an independent implementation's own rounding.
CHECK_MARGIN = gf.CHECK_MARGIN

# multihead_attention gradients: the backward chains about twice the products of the
# forward (out_proj, weights^T d_heads, d_heads V^T, softmax backward, dZ K, dZ^T Q and the
# three projections), inner lengths <= 12, O(1) values up to ~10; parameter gradients sum
# over B * L <= 10 rows. Measured: torch float32 vs the float64 explicit-formula autograd
# reaches 0.099 of the forward's (1e-5, 1e-5) and 0.061 of these (self_attention_weights_
# upstream, cross_attention); attend's float backward differs from the stored values by
# up to 2.0e-6 absolute, which alone is 0.2 of atol 1e-5, so rtol is raised to 1e-4 for
# the larger gradients. Double: torch vs reference 0.011 of the double defaults; attend
# 4.4e-15 absolute.
TOL_GRAD_MHA = {F32: (1e-4, 1e-5), F64: (1e-12, 1e-13)}

# embedding gradients: each row of grad.weight is a sum of the upstream rows of the
# positions holding that id (<= 4 terms): a few ulps in float, exact in simple cases.
TOL_GRAD_EMBEDDING = {F32: (1e-6, 1e-7), F64: (1e-13, 1e-14)}

# transformer_encoder_layer gradients: the MHA chain plus two layer norms (whose backward
# divides by the row's standard deviation) and the feed-forward block, values up to ~10.
# Measured: torch float32 vs the float64 reference reaches 0.052 of these (pre_norm_gelu_
# causal); attend's float backward stays within 1.5e-6 absolute of the stored values, as
# for multihead_attention. Double: torch 0.018 of the double defaults, attend 5.3e-15.
TOL_GRAD_ENCODER = {F32: (1e-4, 1e-5), F64: (1e-12, 1e-13)}


# lstm gradients (2 layers, T = 5): backpropagation through time chains per step one
# [B, 4N] x [4N, N] product and the gate derivatives, over 5 steps and 2 stacked layers;
# values O(1), parameter gradients sum over T * B <= 20 rows. Measured: torch float32 vs
# the float64 explicit-formula autograd reaches 0.0091 of these (two_layers_bidirectional_
# lengths); attend's float BPTT differs from the stored values by up to 4.8e-7 absolute,
# < 0.05 of atol alone. Same float tolerances as the other gradient cases, so one rule
# covers grad_*/ (README). Double: torch 0.0012 of the double defaults, attend 1.0e-15.
TOL_GRAD_LSTM = {F32: (1e-4, 1e-5), F64: (1e-12, 1e-13)}

def write_case(out_dir, folder, module, case, dtype, tensors, options, tol, description, written):
    floats = {t.dtype for t in tensors.values() if t.is_floating_point()}
    if floats != {dtype}:
        raise gf.FixtureError("%s/%s mixes float dtypes %s" % (folder, case, floats))
    for name, t in tensors.items():
        if t.is_floating_point() and bool(torch.isnan(t).any()):
            raise gf.FixtureError("%s/%s: %s holds NaN" % (folder, case, name))
    rtol, atol = tol[dtype]
    metadata = {
        "module": module,
        "options": json.dumps(options, sort_keys=True),
        "rtol": repr(float(rtol)),
        "atol": repr(float(atol)),
        "description": description,
        "generator": GENERATOR,
    }
    rel = os.path.join(folder, "%s_%s.safetensors" % (case, gf.DTYPE_TAG[dtype]))
    gf.write_safetensors(os.path.join(out_dir, rel), tensors, metadata)
    written.append(rel)


def reference_grads(module, options, tensors):
    """float64 autograd through the explicit formulas of gen_fixtures.recompute (or
    gen_fixtures_transformer.recompute), on the stored values: returns
    {grad.<name>: tensor} for every float parameter and float input."""
    leaves = {}
    g = {}
    for name, t in tensors.items():
        if name.startswith(("expected.", "upstream.", "grad.")):
            continue
        if t.is_floating_point() and "mask" not in name:
            leaf = t.detach().to(F64).clone().requires_grad_(True)
            leaves[name] = leaf
            g[name] = leaf
        else:
            g[name] = t
    recompute = gft.recompute if module.startswith("transformer") else gf.recompute
    outs = recompute(module, options, g)
    loss = sum((outs["expected." + n[len("upstream."):]] * t.to(F64)).sum()
               for n, t in tensors.items() if n.startswith("upstream."))
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    result = {}
    for (name, leaf), d in zip(leaves.items(), grads):
        result["grad." + name] = torch.zeros_like(leaf) if d is None else d.detach()
    return result, {k: v.detach() for k, v in outs.items()}


def cross_check(module, options, tensors, tol, dtype, what, worst):
    want, outs = reference_grads(module, options, tensors)
    rtol, atol = tol[dtype]
    stored = {k for k in tensors if k.startswith("grad.")}
    if stored != set(want):
        raise gf.FixtureError("%s: grad tensors %s, reference %s" % (what, sorted(stored), sorted(want)))
    ratio = 0.0
    for name in sorted(stored):
        ratio = max(ratio, gf.tolerance_ratio(tensors[name].to(F64), want[name], rtol, atol))
    for name, t in tensors.items():  # the forward values too, against the same tolerance
        if name.startswith("expected."):
            ratio = max(ratio, gf.tolerance_ratio(t.to(F64), outs[name], rtol, atol))
    if ratio > CHECK_MARGIN:
        raise gf.FixtureError("%s: error reaches %.3g of the tolerance (limit %g)"
                              % (what, ratio, CHECK_MARGIN))
    key = (module, gf.DTYPE_TAG[dtype])
    if ratio >= worst.get(key, (-1.0, ""))[0]:
        worst[key] = (ratio, what)


def gen_mha(out_dir, written, worst):
    module, folder = "multihead_attention", "grad_multihead_attention"
    # spec: E, H, L, S, B, self_attn, batch_first, kdim, vdim, kpm_lengths, weights_upstream
    cases = [
        ("self_attention", dict(E=8, H=2, L=5, B=2, self_attn=True),
         "self-attention (key, value absent), seq-first [L=5, B=2, E=8], 2 heads: "
         "grad.input.query is the total through q, k and v"),
        ("self_attention_weights_upstream", dict(E=8, H=2, L=4, B=2, self_attn=True,
                                                 batch_first=True, weights_upstream=True),
         "self-attention batch_first [B=2, L=4, E=8], 2 heads, upstream.output and "
         "upstream.attn_weights (averaged [B, L, L]) both enter L"),
        ("cross_attention", dict(E=12, H=3, L=5, S=7, B=2),
         "cross-attention L=5 != S=7, embed_dim 12, 3 heads, seq-first: grad.input.query, "
         "grad.input.key, grad.input.value"),
        ("key_padding_mask", dict(E=8, H=2, L=5, S=7, B=2, kpm_lengths=[5, 7], batch_first=True),
         "cross-attention batch_first with BOOL key_padding_mask [2, 7] (sequence 0: keys 5, 6 "
         "padded): padded keys get zero grad.input.key/value rows"),
        ("kdim_vdim", dict(E=8, H=2, L=4, S=6, B=2, kdim=5, vdim=3),
         "cross-attention kdim 5, vdim 3: grad.q_proj_weight, grad.k_proj_weight, "
         "grad.v_proj_weight"),
    ]
    for case, spec, description in cases:
        gf.seed_for(folder, case)
        E, H, L, B = spec["E"], spec["H"], spec["L"], spec["B"]
        self_attn = spec.get("self_attn", False)
        S = L if self_attn else spec["S"]
        kdim, vdim = spec.get("kdim", E), spec.get("vdim", E)
        batch_first = spec.get("batch_first", False)
        weights_upstream = spec.get("weights_upstream", False)
        mha = torch.nn.MultiheadAttention(E, H, dropout=0.0, kdim=kdim, vdim=vdim,
                                          batch_first=batch_first, dtype=F64).eval()
        with torch.no_grad():
            for name, p in mha.named_parameters():
                if p.dim() == 2:
                    p.copy_(gf.randn(*p.shape) / math.sqrt(p.shape[-1]))
                else:
                    p.copy_(gf.randn(*p.shape, scale=0.5))

        def layout(n_seq, n_feat):
            return (B, n_seq, n_feat) if batch_first else (n_seq, B, n_feat)

        query64 = gf.randn(*layout(L, E))
        key64 = value64 = None
        if not self_attn:
            key64, value64 = gf.randn(*layout(S, kdim)), gf.randn(*layout(S, vdim))
        kpm = None
        if "kpm_lengths" in spec:
            kpm = torch.arange(S).unsqueeze(0) >= torch.tensor(spec["kpm_lengths"]).unsqueeze(1)
            gf.check_no_fully_masked_rows(kpm, "%s key_padding_mask" % case)
        up_out64 = gf.randn(*layout(L, E))
        up_w64 = gf.randn(B, L, S) if weights_upstream else None

        options = {"embed_dim": E, "num_heads": H}
        if kdim != E or vdim != E:
            options["kdim"], options["vdim"] = kdim, vdim
        if batch_first:
            options["batch_first"] = True

        for dtype in (F32, F64):
            m = copy.deepcopy(mha).to(dtype)
            query = query64.to(dtype).requires_grad_(True)
            key = query if self_attn else key64.to(dtype).requires_grad_(True)
            value = query if self_attn else value64.to(dtype).requires_grad_(True)
            out, weights = m(query, key, value, key_padding_mask=kpm, need_weights=True)
            up_out = up_out64.to(dtype)
            loss = (out * up_out).sum()
            if weights_upstream:
                loss = loss + (weights * up_w64.to(dtype)).sum()
            loss.backward()
            tensors = {n: p.detach().clone() for n, p in m.named_parameters()}
            for n, p in m.named_parameters():
                tensors["grad." + n] = p.grad.detach().clone()
            tensors["input.query"] = query.detach().clone()
            tensors["grad.input.query"] = query.grad.detach().clone()
            if not self_attn:
                tensors["input.key"], tensors["input.value"] = key.detach().clone(), value.detach().clone()
                tensors["grad.input.key"] = key.grad.detach().clone()
                tensors["grad.input.value"] = value.grad.detach().clone()
            if kpm is not None:
                tensors["input.key_padding_mask"] = kpm
                # Padded keys take no part in any score: their gradients are exactly zero.
                pad = kpm if batch_first else kpm.t()
                padded = pad.unsqueeze(-1).expand_as(tensors["grad.input.key"])
                if bool(tensors["grad.input.key"][padded].any()) or bool(
                        tensors["grad.input.value"][padded].any()):
                    raise gf.FixtureError("%s: padded keys have nonzero gradients" % case)
            tensors["expected.output"] = out.detach()
            tensors["expected.attn_weights"] = weights.detach()
            tensors["upstream.output"] = up_out
            if weights_upstream:
                tensors["upstream.attn_weights"] = up_w64.to(dtype)
            what = "%s/%s_%s" % (folder, case, gf.DTYPE_TAG[dtype])
            cross_check(module, options, tensors, TOL_GRAD_MHA, dtype, what, worst)
            write_case(out_dir, folder, module, case, dtype, tensors, options, TOL_GRAD_MHA,
                       description, written)


def gen_embedding(out_dir, written, worst):
    module, folder = "embedding", "grad_embedding"
    V, D = 10, 4
    cases = [
        ("padding_idx", 0, (3, 4),
         "padding_idx 0 looked up twice, repeated ids: grad.weight sums the upstream rows of "
         "each id; the padding row's gradient is zero"),
        ("padding_idx_negative", -2, (7,),
         "padding_idx -2 (= row 8) in a rank-1 input [7]: row 8's gradient is zero"),
    ]
    for case, padding_idx, in_shape, description in cases:
        gf.seed_for(folder, case)
        weight64 = gf.randn(V, D)
        index = torch.randint(0, 4, in_shape, dtype=torch.int64)  # few ids: repeats
        flat = index.view(-1)
        flat[1] = flat[-1] = padding_idx % V
        flat[2] = flat[3]  # a repeated id besides the padding one
        up64 = gf.randn(*in_shape, D)
        options = {"num_embeddings": V, "embedding_dim": D, "padding_idx": padding_idx}
        for dtype in (F32, F64):
            emb = torch.nn.Embedding(V, D, padding_idx=padding_idx, dtype=dtype)
            with torch.no_grad():
                emb.weight.copy_(weight64.to(dtype))
            out = emb(index)
            (out * up64.to(dtype)).sum().backward()
            grad = emb.weight.grad.detach().clone()
            if bool(grad[padding_idx % V].any()):
                raise gf.FixtureError("%s: padding row has a gradient" % case)
            tensors = {"weight": emb.weight.detach().clone(), "input.input": index,
                       "expected.output": out.detach(), "upstream.output": up64.to(dtype),
                       "grad.weight": grad}
            what = "%s/%s_%s" % (folder, case, gf.DTYPE_TAG[dtype])
            ref, _ = reference_grads(module, options, tensors)
            # The explicit formula g["weight"][ids] trains the padding row; PyTorch does not.
            ref["grad.weight"][padding_idx % V] = 0
            rtol, atol = TOL_GRAD_EMBEDDING[dtype]
            ratio = gf.tolerance_ratio(grad.to(F64), ref["grad.weight"], rtol, atol)
            if ratio > CHECK_MARGIN:
                raise gf.FixtureError("%s: error reaches %.3g of the tolerance" % (what, ratio))
            key = (module, gf.DTYPE_TAG[dtype])
            if ratio >= worst.get(key, (-1.0, ""))[0]:
                worst[key] = (ratio, what)
            write_case(out_dir, folder, module, case, dtype, tensors, options, TOL_GRAD_EMBEDDING,
                       description, written)


def gen_encoder_layer(out_dir, written, worst):
    module, folder = "transformer_encoder_layer", "grad_transformer_encoder_layer"
    base = dict(E=8, H=2, F=16, L=5, B=2)
    cases = [
        ("post_norm_relu_key_padding", dict(base, kpm=[5, 3]),
         "post-norm, relu, src [L=5, B=2, E=8], BOOL src_key_padding_mask (lengths 5, 3): "
         "grad of every parameter and grad.input.src"),
        ("pre_norm_gelu_causal", dict(base, norm_first=True, activation="gelu", batch_first=True,
                                      src_mask="causal_bool"),
         "pre-norm, gelu, batch_first, BOOL causal src_mask [5, 5]"),
    ]
    for case, spec, description in cases:
        gf.seed_for(folder, case)
        E, H, L, B = spec["E"], spec["H"], spec["L"], spec["B"]
        layer = torch.nn.TransformerEncoderLayer(E, H, **gft.torch_layer_kwargs(spec)).eval()
        gft.randomize(layer)
        src64 = gft.seq(spec, B, L, E)
        up64 = gft.seq(spec, B, L, E)
        src_mask = gft.make_mask(spec.get("src_mask"), L, L, B, H, case)
        kpm = gft.padding(B, L, spec["kpm"]) if "kpm" in spec else None
        options = gft.layer_options(spec)
        for dtype in (F32, F64):
            m = copy.deepcopy(layer).to(dtype)
            src = src64.to(dtype).requires_grad_(True)
            out = m(src, src_mask=src_mask, src_key_padding_mask=kpm)
            (out * up64.to(dtype)).sum().backward()
            tensors = {n: p.detach().clone() for n, p in m.named_parameters()}
            for n, p in m.named_parameters():
                tensors["grad." + n] = p.grad.detach().clone()
            tensors["input.src"] = src.detach().clone()
            tensors["grad.input.src"] = src.grad.detach().clone()
            if src_mask is not None:
                tensors["input.src_mask"] = src_mask
            if kpm is not None:
                tensors["input.src_key_padding_mask"] = kpm
            tensors["expected.output"] = out.detach()
            tensors["upstream.output"] = up64.to(dtype)
            what = "%s/%s_%s" % (folder, case, gf.DTYPE_TAG[dtype])
            cross_check(module, options, tensors, TOL_GRAD_ENCODER, dtype, what, worst)
            write_case(out_dir, folder, module, case, dtype, tensors, options, TOL_GRAD_ENCODER,
                       description, written)


def gen_lstm(out_dir, written, worst):
    module, folder = "lstm", "grad_lstm"
    # spec: L layers, T, I, N, lengths (B = len) or B, bf batch_first, bidir, h0 (h_0, c_0 given)
    cases = [
        ("two_layers", dict(L=2, B=3, h0=True),
         "2-layer LSTM, input [T=5, B=3, 4], hidden 3, h_0 and c_0 given; upstream.output, "
         "upstream.h_n and upstream.c_n: grad of every parameter, input, h_0 and c_0"),
        ("two_layers_bidirectional_lengths", dict(L=2, bidir=True, bf=True, h0=True,
                                                  lengths=[3, 5, 1, 4]),
         "2-layer bidirectional LSTM, batch_first input [B=4, T=5, 4], hidden 3, h_0 and c_0 "
         "given, packed lengths [3, 5, 1, 4] (input.lengths; random values at padded steps, "
         "whose grad.input is 0)"),
    ]
    for case, spec, description in cases:
        gf.seed_for(folder, case)
        layers, T, I, N = spec["L"], spec.get("T", 5), spec.get("I", 4), spec.get("N", 3)
        lengths = spec.get("lengths")
        B = len(lengths) if lengths else spec["B"]
        bf, bidir = spec.get("bf", False), spec.get("bidir", False)
        D = 2 if bidir else 1
        mod = torch.nn.LSTM(I, N, num_layers=layers, batch_first=bf, bidirectional=bidir,
                            dtype=F64).eval()
        x64 = gf.randn(*((B, T, I) if bf else (T, B, I)))
        h064, c064 = gf.randn(layers * D, B, N), gf.randn(layers * D, B, N)
        up_out64 = gf.randn(*((B, T, D * N) if bf else (T, B, D * N)))
        up_h64, up_c64 = gf.randn(layers * D, B, N), gf.randn(layers * D, B, N)
        options = {"input_size": I, "hidden_size": N, "num_layers": layers}
        if bf:
            options["batch_first"] = True
        if bidir:
            options["bidirectional"] = True
        for dtype in (F32, F64):
            m = copy.deepcopy(mod).to(dtype)
            x = x64.to(dtype).requires_grad_(True)
            h0 = h064.to(dtype).requires_grad_(True)
            c0 = c064.to(dtype).requires_grad_(True)
            if lengths:
                packed = torch.nn.utils.rnn.pack_padded_sequence(
                    x, torch.tensor(lengths, dtype=torch.int64), batch_first=bf,
                    enforce_sorted=False)
                out_p, (h_n, c_n) = m(packed, (h0, c0))
                out, _ = torch.nn.utils.rnn.pad_packed_sequence(out_p, batch_first=bf,
                                                                total_length=T)
            else:
                out, (h_n, c_n) = m(x, (h0, c0))
            up_out, up_h, up_c = up_out64.to(dtype), up_h64.to(dtype), up_c64.to(dtype)
            ((out * up_out).sum() + (h_n * up_h).sum() + (c_n * up_c).sum()).backward()
            tensors = {n: p.detach().clone() for n, p in m.named_parameters()}
            for n, p in m.named_parameters():
                tensors["grad." + n] = p.grad.detach().clone()
            tensors["input.input"] = x.detach().clone()
            tensors["input.h_0"] = h0.detach().clone()
            tensors["input.c_0"] = c0.detach().clone()
            if lengths:
                tensors["input.lengths"] = torch.tensor(lengths, dtype=torch.int64)
            tensors["expected.output"] = out.detach().contiguous()
            tensors["expected.h_n"] = h_n.detach().contiguous()
            tensors["expected.c_n"] = c_n.detach().contiguous()
            tensors["upstream.output"] = up_out
            tensors["upstream.h_n"] = up_h
            tensors["upstream.c_n"] = up_c
            tensors["grad.input.input"] = x.grad.detach().clone()
            tensors["grad.input.h_0"] = h0.grad.detach().clone()
            tensors["grad.input.c_0"] = c0.grad.detach().clone()
            what = "%s/%s_%s" % (folder, case, gf.DTYPE_TAG[dtype])
            cross_check(module, options, tensors, TOL_GRAD_LSTM, dtype, what, worst)
            write_case(out_dir, folder, module, case, dtype, tensors, options, TOL_GRAD_LSTM,
                       description, written)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=gf.DEFAULT_OUT, help="output folder (default tests/data)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # reproducible reductions
    written, worst = [], {}
    try:
        gen_mha(args.out, written, worst)
        gen_embedding(args.out, written, worst)
        gen_encoder_layer(args.out, written, worst)
        gen_lstm(args.out, written, worst)
    except gf.FixtureError as e:
        sys.exit("gen_fixtures_grad: %s" % e)
    for (module, tag), (ratio, what) in sorted(worst.items()):
        print("  %-24s %s  worst err/tolerance %.3g  (%s)" % (module, tag, ratio, what))
    print("wrote %d files to %s" % (len(written), args.out))


if __name__ == "__main__":
    main()
