#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# Writes the seeded PyTorch gradient fixtures of the transformer decoder layer (docs/fixtures.md).
"""Generate the PyTorch gradient fixtures of nn.TransformerDecoderLayer.

Usage (Debian's python3-torch; the pyenv `python3` has no torch):

    /usr/bin/python3 tests/gen_fixtures_grad_transformer.py            # (re)write the files
    /usr/bin/python3 tests/gen_fixtures_grad_transformer.py --out DIR  # write elsewhere

Files: tests/data/grad_transformer_decoder_layer/<case>_<f32|f64>.safetensors (module
`transformer_decoder_layer`). Each case holds the forward case of docs/fixtures.md as
tests/gen_fixtures_transformer.py writes it (parameters by nn.TransformerDecoderLayer's
names, `input.tgt`, `input.memory`, the masks, `expected.output`) plus `upstream.output`
and the gradients `grad.<parameter>`, `grad.input.tgt` and `grad.input.memory` of
L = sum(output * upstream.output), computed by torch autograd in the case's dtype.

Kept apart from tests/gen_fixtures_grad.py (another generator is extended there at the
same time); it reuses that file's writer and its cross-check: every gradient is compared
at generation time with a float64 autograd through the explicit decoder-layer formulas of
gen_fixtures_transformer.recompute (not torch modules) on the stored values, and must sit
within CHECK_MARGIN of the file's tolerance. Running the script twice gives byte-identical
files.
"""

import argparse
import copy
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_fixtures as gf  # noqa: E402  (seeds, safetensors writer)
import gen_fixtures_grad as gfg  # noqa: E402  (write_case, cross_check)
import gen_fixtures_transformer as gft  # noqa: E402  (layer kwargs, masks, randomize)

F32, F64 = gf.F32, gf.F64

# transformer_decoder_layer gradients: the encoder layer's chain (gen_fixtures_grad.py
# TOL_GRAD_ENCODER) plus a second attention and a third layer norm, same sizes and values
# (E = 8, L, S <= 6, values up to ~10): the same tolerance. The script prints the worst
# ratio of torch's stored gradient to the float64 reference against it.
TOL_GRAD_DECODER = {F32: (1e-4, 1e-5), F64: (1e-12, 1e-13)}


def gen_decoder_layer(out_dir, written, worst):
    module, folder = "transformer_decoder_layer", "grad_transformer_decoder_layer"
    base = dict(E=8, H=2, F=16, L=4, S=6, B=2)
    cases = [
        ("post_norm_relu_causal_padding", dict(base, tgt_mask="causal_float", mkpm=[6, 4]),
         "post-norm, relu, tgt [L=4, B=2, E=8], memory [S=6, 2, 8], additive causal tgt_mask, "
         "BOOL memory_key_padding_mask (lengths 6, 4): grad of every parameter, "
         "grad.input.tgt and grad.input.memory"),
        ("pre_norm_gelu_masks_batch_first",
         dict(base, norm_first=True, activation="gelu", batch_first=True, tgt_is_causal=True,
              tkpm=[4, 3], memory_mask="bool2d"),
         "pre-norm, gelu, batch_first, option tgt_is_causal (no tgt_mask tensor), BOOL "
         "tgt_key_padding_mask (lengths 4, 3), BOOL memory_mask [4, 6]"),
        ("unbatched_post_norm", dict(base, unbatched=True, tgt_mask="causal_bool"),
         "unbatched tgt [4, 8], memory [6, 8], BOOL causal tgt_mask, post-norm relu"),
    ]
    for case, spec, description in cases:
        gf.seed_for(folder, case)
        E, H, L, S, B = spec["E"], spec["H"], spec["L"], spec["S"], spec["B"]
        layer = torch.nn.TransformerDecoderLayer(E, H, **gft.torch_layer_kwargs(spec)).eval()
        gft.randomize(layer)
        tgt64, mem64 = gft.seq(spec, B, L, E), gft.seq(spec, B, S, E)
        up64 = gft.seq(spec, B, L, E)
        what = "%s/%s" % (folder, case)
        tgt_mask64 = gft.make_mask(spec.get("tgt_mask"), L, L, B, H, what + " tgt_mask")
        memory_mask64 = gft.make_mask(spec.get("memory_mask"), L, S, B, H, what + " memory_mask")
        tkpm = gft.padding(B, L, spec["tkpm"]) if "tkpm" in spec else None
        mkpm = gft.padding(B, S, spec["mkpm"]) if "mkpm" in spec else None
        tgt_causal = spec.get("tgt_is_causal", False)
        options = gft.layer_options(spec)
        if tgt_causal:
            options["tgt_is_causal"] = True  # torch 1.13 has no is_causal: explicit mask below
        for dtype in (F32, F64):
            m = copy.deepcopy(layer).to(dtype)
            tgt = tgt64.to(dtype).requires_grad_(True)
            mem = mem64.to(dtype).requires_grad_(True)
            tgt_mask = gft.as_written(tgt_mask64, dtype)
            memory_mask = gft.as_written(memory_mask64, dtype)
            with torch.enable_grad():  # torch's plain path, as the forward fixtures
                out = m(tgt, mem, tgt_mask=gft.causal_blocked(L) if tgt_causal else tgt_mask,
                        memory_mask=memory_mask, tgt_key_padding_mask=tkpm,
                        memory_key_padding_mask=mkpm)
                (out * up64.to(dtype)).sum().backward()
            tensors = {n: p.detach().clone() for n, p in m.named_parameters()}
            for n, p in m.named_parameters():
                tensors["grad." + n] = p.grad.detach().clone()
            tensors["input.tgt"] = tgt.detach().clone()
            tensors["input.memory"] = mem.detach().clone()
            tensors["grad.input.tgt"] = tgt.grad.detach().clone()
            tensors["grad.input.memory"] = mem.grad.detach().clone()
            for name, mask in (("tgt_mask", tgt_mask), ("memory_mask", memory_mask),
                               ("tgt_key_padding_mask", tkpm), ("memory_key_padding_mask", mkpm)):
                if mask is not None:
                    tensors["input." + name] = mask
            tensors["expected.output"] = out.detach()
            tensors["upstream.output"] = up64.to(dtype)
            name = "%s_%s" % (what, gf.DTYPE_TAG[dtype])
            gfg.cross_check(module, options, tensors, TOL_GRAD_DECODER, dtype, name, worst)
            gfg.write_case(out_dir, folder, module, case, dtype, tensors, options,
                           TOL_GRAD_DECODER, description, written)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=gf.DEFAULT_OUT, help="output folder (default tests/data)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # reproducible reductions
    written, worst = [], {}
    try:
        gen_decoder_layer(args.out, written, worst)
    except gf.FixtureError as e:
        sys.exit("gen_fixtures_grad_transformer: %s" % e)
    for (module, tag), (ratio, what) in sorted(worst.items()):
        print("  %-26s %s  worst err/tolerance %.3g  (%s)" % (module, tag, ratio, what))
    print("wrote %d files to %s" % (len(written), args.out))


if __name__ == "__main__":
    main()
