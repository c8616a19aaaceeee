#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Writes the committed seed corpora of the fuzz targets (tests/fuzz/<target>/).
#
#   python3 tests/fuzz/make_seeds.py     (standard library only; no PyTorch needed)
#
# Seeds are small valid files copied from tests/data, plus hand-made edge cases: empty and
# metadata-only headers, every dtype (F16/BF16 with inf and NaN), zero-size and scalar
# tensors, unaligned data with gaps, a space-padded header, truncated files, and shapes
# whose sizes overflow. The conformance seeds add cases a runner must reject (unknown
# module, bad options, no expected tensor, a gradient case, a huge table). Keep the total
# under 200 KB.
import json
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data")


def file_bytes(tensors, metadata=None, pad_header=0, trailing=b""):
    """A safetensors file from (name, dtype, shape, raw bytes) in order, data packed."""
    header, data = {}, b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode() + b" " * pad_header
    return struct.pack("<Q", len(text)) + text + data + trailing


def read(path):
    """(header dict, data bytes) of a safetensors file."""
    with open(path, "rb") as f:
        b = f.read()
    n = struct.unpack("<Q", b[:8])[0]
    return json.loads(b[8:8 + n]), b[8 + n:]


def rewrite(path, meta_update=None, drop=(), add=()):
    """The file at `path` with metadata entries replaced and tensors dropped or added."""
    header, data = read(path)
    meta = dict(header.pop("__metadata__", {}))
    for k, v in (meta_update or {}).items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    tensors = []
    for name, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        if name in drop:
            continue
        b, end = e["data_offsets"]
        tensors.append((name, e["dtype"], e["shape"], data[b:end]))
    tensors.extend(add)
    return file_bytes(tensors, meta)


def write(folder, name, content):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(content)


def f32(*values):
    return struct.pack("<%df" % len(values), *values)


def safetensors_seeds(out):
    inf, nan = float("inf"), float("nan")
    write(out, "empty_header.safetensors", file_bytes([]))
    write(out, "metadata_only.safetensors", file_bytes([], {"format": "pt", "k": "v"}))
    write(out, "every_dtype.safetensors", file_bytes([
        # F16: 1.0, -2.0, inf, NaN; BF16: 1.0, -inf, NaN, a subnormal
        ("h", "F16", [4], struct.pack("<4H", 0x3C00, 0xC000, 0x7C00, 0x7E01)),
        ("b", "BF16", [2, 2], struct.pack("<4H", 0x3F80, 0xFF80, 0x7FC1, 0x0001)),
        ("f", "F32", [3], f32(1.5, -inf, nan)),
        ("d", "F64", [1, 1], struct.pack("<d", -0.0)),
        ("i", "I64", [2], struct.pack("<2q", 1, -(2 ** 63))),
        ("m", "BOOL", [3], bytes([0, 1, 1])),
    ], {"note": "one tensor of each dtype"}))
    write(out, "zero_size_and_scalar.safetensors", file_bytes([
        ("empty", "F32", [0, 3], b""),
        ("scalar", "F64", [], struct.pack("<d", 3.25)),
        ("none", "I64", [2, 0, 5], b""),
    ]))
    # Unaligned data with a gap before it and bytes after it (both accepted by attend).
    header = json.dumps({"x": {"dtype": "F64", "shape": [2], "data_offsets": [3, 19]}}).encode()
    write(out, "unaligned_gap.safetensors", struct.pack("<Q", len(header)) + header +
          b"\x00\x00\x00" + struct.pack("<2d", 1.0, 2.0) + b"tail")
    write(out, "space_padded_header.safetensors",
          file_bytes([("w", "F32", [2, 2], f32(1, 2, 3, 4))], {"a": "b"}, pad_header=7))
    write(out, "truncated.safetensors", file_bytes([("w", "F32", [4], f32(1, 2, 3, 4))])[:-5])
    write(out, "length_only.safetensors", struct.pack("<Q", 2))
    # Shapes whose element count (2^64) and byte count (2^62 * 4) overflow 64 bits.
    write(out, "overflow_shapes.safetensors", file_bytes([
        ("n", "F32", [2 ** 32, 2 ** 32], b""), ("b", "F32", [2 ** 62], b"")]))
    for rel in ["softmax/random_2d_f32.safetensors", "embedding/input_1d_f32.safetensors",
                "sinusoidal_positional_encoding/odd_d_interleaved_f64.safetensors",
                "scaled_dot_product_attention/unbatched_2d_f32.safetensors"]:
        shutil.copy(os.path.join(DATA, rel), os.path.join(out, rel.replace("/", "__")))


CONFORMANCE_FIXTURES = [
    "softmax/random_2d_f32.safetensors",
    "softmax/random_2d_f64.safetensors",
    "sinusoidal_positional_encoding/odd_d_interleaved_f32.safetensors",
    "layer_norm/no_affine_f32.safetensors",
    "embedding/input_1d_f32.safetensors",
    "rnn_cell/no_bias_f32.safetensors",
    "gru_cell/no_bias_f32.safetensors",
    "lstm_cell/no_bias_f32.safetensors",
    "rnn/relu_lengths_f32.safetensors",
    "gru/one_layer_f32.safetensors",
    "lstm/lengths_unidirectional_f32.safetensors",
    "bahdanau_attention/key_padding_mask_f32.safetensors",
    "luong_attention/general_mask_i64_f32.safetensors",
    "luong_attention/dot_mask_attentional_f32.safetensors",
    "scaled_dot_product_attention/unbatched_2d_f32.safetensors",
    "scaled_dot_product_attention/i64_mask_f32.safetensors",
    "multihead_attention/key_padding_and_bool_attn_mask_f32.safetensors",
    "multihead_attention/self_batch_first_f64.safetensors",
    "transformer_encoder_layer/key_padding_i64_causal_f32.safetensors",
    "transformer_decoder_layer/all_masks_batch_first_f32.safetensors",
    "transformer_encoder/is_causal_no_final_norm_f32.safetensors",
    "transformer_decoder/no_final_norm_memory_mask_f32.safetensors",
    "transformer/pre_norm_gelu_batch_first_f32.safetensors",
    "transformer_seq2seq/unbatched_unscaled_f32.safetensors",
]


def conformance_seeds(out):
    os.makedirs(out, exist_ok=True)
    for rel in CONFORMANCE_FIXTURES:
        path = os.path.join(DATA, rel)
        if os.path.exists(path):  # a fixture folder may be renamed; skip rather than fail
            shutil.copy(path, os.path.join(out, rel.replace("/", "__")))
    softmax = os.path.join(DATA, "softmax/random_2d_f32.safetensors")
    write(out, "bad__unknown_module.safetensors", rewrite(softmax, {"module": "softmaxx"}))
    write(out, "bad__options_not_json.safetensors", rewrite(softmax, {"options": "{\"dim\": "}))
    write(out, "bad__options_nested.safetensors",
          rewrite(softmax, {"options": json.dumps({"dim": [[[[-1]]]]})}))
    write(out, "bad__tolerance.safetensors", rewrite(softmax, {"rtol": "1e-5x", "atol": "-1"}))
    write(out, "bad__no_module.safetensors", rewrite(softmax, {"module": None}))
    header, _ = read(softmax)
    expected = [n for n in header if n.startswith("expected.")]
    write(out, "bad__no_expected.safetensors", rewrite(softmax, drop=expected))
    write(out, "bad__gradient_case.safetensors",
          rewrite(softmax, add=[("grad.input.input", "F32", [1], f32(0.0))]))
    sinus = os.path.join(DATA, "sinusoidal_positional_encoding/odd_d_interleaved_f32.safetensors")
    huge = {"options": json.dumps({"max_len": 100000, "d_model": 100000})}
    write(out, "bad__huge_table.safetensors", rewrite(sinus, huge))
    # Found by fuzzing: with expected.output renamed, the runner skipped its size check and
    # asked for a 40 GB table (AddressSanitizer: allocator is out of memory).
    header, data = read(sinus)
    b, end = header["expected.output"]["data_offsets"]
    write(out, "bad__huge_table_renamed_expected.safetensors",
          rewrite(sinus, huge, drop=["expected.output"],
                  add=[("expected.outpu[", "F32", header["expected.output"]["shape"], data[b:end])]))


def main():
    for target, make in [("safetensors", safetensors_seeds), ("conformance", conformance_seeds)]:
        out = os.path.join(HERE, target)
        shutil.rmtree(out, ignore_errors=True)
        make(out)
        total = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
        print("%s: %d seeds, %d bytes" % (target, len(os.listdir(out)), total))


if __name__ == "__main__":
    main()
