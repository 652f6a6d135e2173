#!/usr/bin/env python3
"""Reference fixtures for balora-formats' Q5_0/Q5_1 and K-quant (Q2_K..Q8_K) dequantisers.

For every type: a few random but valid blocks (fixed seed; random bytes for the quantised payload,
finite f16 scale fields `d`/`dmin`/`m` drawn from ±[1e-3, 1]), dequantised by the `gguf` PyPI
package (llama.cpp's own Python implementation, `gguf.quants.dequantize`), which is independent of
balora's Rust code. gguf 0.19 has no Q8_K dequantiser; for Q8_K (`d: f32`, `qs: [i8; 256]`,
`bsums: [i16; 16]`, value `d·qs[i]`, as ggml's `dequantize_row_q8_K`) the expected values are
computed here with numpy.

Writes to crates/balora-formats/tests/fixtures/kquant/:
  <type>.blocks   raw block bytes (little-endian, ggml layout)
  <type>.f32      the expected values, f32 little-endian, one per element
  kquant.gguf     a GGUF v3 file (gguf-py's GGUFWriter) holding one tensor per type, named by the
                  lower-case type (`q4_k`), shape [2, n/2] (ne = [n/2, 2]), data = <type>.blocks
  manifest.json   type, ggml id, blocks, elements, max |value| per type

Usage (from the repository root; needs numpy and gguf==0.19):
  target/tch-venv/bin/python tools/reference/gguf_kquant_reference.py
"""
import json
import os
import sys

import numpy as np
from gguf import GGUFReader, GGUFWriter
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf.quants import dequantize

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "crates",
                   "balora-formats", "tests", "fixtures", "kquant")
SEED = 20240617

# type: (number of blocks, byte offsets of the f16 scale fields, offset of an f32 scale or None)
TYPES = {
    T.Q5_0: (8, [0], None),
    T.Q5_1: (8, [0, 2], None),
    T.Q2_K: (4, [80, 82], None),
    T.Q3_K: (4, [108], None),
    T.Q4_K: (4, [0, 2], None),
    T.Q5_K: (4, [0, 2], None),
    T.Q6_K: (4, [208], None),
    T.Q8_K: (4, [], 0),
}


def scale(rng, dtype):
    """A finite scale with magnitude in [1e-3, 1] and a random sign."""
    mag = np.exp(rng.uniform(np.log(1e-3), 0.0))
    return np.array(mag * rng.choice([-1.0, 1.0]), dtype=dtype).tobytes()


def make_blocks(rng, qtype, n_blocks, f16_at, f32_at):
    _, size = GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    blocks[0, :] = 0xFF  # block 0: every payload bit set (largest nibbles, all high bits)
    blocks[1, :] = 0x00  # block 1: every payload bit clear
    for b in range(n_blocks):
        for at in f16_at:
            blocks[b, at:at + 2] = np.frombuffer(scale(rng, np.float16), np.uint8)
        if f32_at is not None:
            blocks[b, f32_at:f32_at + 4] = np.frombuffer(scale(rng, np.float32), np.uint8)
    return blocks.reshape(-1)


def q8_k_reference(data):
    """ggml's dequantize_row_q8_K: y[i] = d · qs[i] (bsums are not used)."""
    blocks = data.reshape(-1, 292)
    d = blocks[:, 0:4].copy().view(np.float32)  # (n, 1)
    qs = blocks[:, 4:260].copy().view(np.int8).astype(np.float32)
    return (d * qs).reshape(-1)


def expected(data, qtype):
    if qtype == T.Q8_K:
        return q8_k_reference(data)
    return dequantize(data, qtype).astype(np.float32).reshape(-1)


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(SEED)
    manifest = []
    tensors = []
    for qtype, (n_blocks, f16_at, f32_at) in TYPES.items():
        per, size = GGML_QUANT_SIZES[qtype]
        data = make_blocks(rng, qtype, n_blocks, f16_at, f32_at)
        want = expected(data, qtype)
        assert want.shape == (n_blocks * per,) and np.all(np.isfinite(want)), qtype.name
        name = qtype.name.lower()
        data.tofile(os.path.join(OUT, f"{name}.blocks"))
        want.astype("<f4").tofile(os.path.join(OUT, f"{name}.f32"))
        manifest.append({"type": qtype.name, "id": int(qtype), "blocks": n_blocks,
                         "elements": n_blocks * per, "block_bytes": size,
                         "max_abs": float(np.abs(want).max())})
        tensors.append((name, qtype, data, want))

    path = os.path.join(OUT, "kquant.gguf")
    w = GGUFWriter(path, "kquant-test")
    for name, qtype, data, _ in tensors:
        # byte shape (rows, row bytes); gguf-py turns it into the element shape [2, n/2]
        w.add_tensor(name, data.reshape(2, -1), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # The file reads back through gguf-py's own reader with the same values.
    r = GGUFReader(path)
    for (name, qtype, data, want), t in zip(tensors, r.tensors):
        assert t.name == name and t.tensor_type == qtype, (t.name, t.tensor_type)
        assert list(t.shape) == [len(want) // 2, 2], (name, list(t.shape))
        assert np.array_equal(np.asarray(t.data).reshape(-1), data), name
        assert np.array_equal(expected(np.asarray(t.data).reshape(-1), qtype), want), name

    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump({"seed": SEED, "gguf": "kquant.gguf", "types": manifest}, f, indent=1)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(OUT, p)) for p in os.listdir(OUT))
    print(f"wrote {len(manifest)} types to {os.path.normpath(OUT)} ({total} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
