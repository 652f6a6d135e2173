#!/usr/bin/env python3
"""Golden fixtures for balora's GPT-2 and GPT-NeoX families, written by `transformers` and real PEFT.

For each family this builds a TINY RANDOM model from a config (hidden 64, 2 layers, 4 heads,
vocab 200, fixed seed; no download), with non-trivial LayerNorm gammas/betas and biases so a
wrong norm or bias shows up, and writes into
crates/balora-models/tests/fixtures/families/<family>/:

* config.json + model.safetensors (f32, `save_pretrained(safe_serialization=True)`);
* adapter/: a real PEFT 0.21.2 LoRA adapter (r=4, every lora_B set to non-zero random values),
  saved with `PeftModel.save_pretrained`:
  - gpt2: targets c_attn, c_proj, c_fc (HF Conv1D layers, `fan_in_fan_out=True`);
  - gpt_neox: targets query_key_value, dense, dense_h_to_4h, dense_4h_to_h;
* golden.json: for the token ids in `input_ids` (2 fixed sequences),
  - `base_logits` of the plain model, `adapted_logits` of the PEFT model (eval mode),
    `merged_logits` after `merge_and_unload()` (each `[2, 8, vocab]`, flattened row-major);
  - `merged`: a few tensors of the merged model's state dict (HF names and layout: GPT-2's
    Conv1D weights are `[in, out]`), as `{name: {"shape": [...], "data": [...]}}`;
  - `padded_logits`: the base model on sequence 0 with its last 3 positions masked out
    (attention_mask 0, right padding), for the padding mask.
  Floats are written with 9 significant digits (exact for f32).

gpt_neox/serial/ holds a second NeoX model with `use_parallel_residual=False` (base only).

    PYTHONHASHSEED=0 target/tch-venv/bin/python tools/reference/gpt_golden.py

(PEFT writes target_modules from a Python set, whose order follows the hash seed.)

With `--check DIR FAMILY`, instead loads the adapter balora wrote into DIR (by
`cargo test -p balora-models --test gpt_families -- --ignored write_for_python`) onto the
committed base model of FAMILY with PEFT, and compares PEFT's logits with DIR/logits.json (what
balora computed with that adapter); exits 1 if they differ by more than 1e-4 of the largest.
"""
import json
import os
import shutil
import sys

import torch
import transformers
import peft
from peft import LoraConfig, PeftModel, TaskType, get_peft_model

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "crates/balora-models/tests/fixtures/families")
IDS = [[1, 17, 42, 99, 5, 163, 28, 7], [3, 188, 12, 50, 71, 9, 144, 2]]
VOCAB = 200


def gpt2():
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=4,
        bos_token_id=0, eos_token_id=0, initializer_range=0.1,
        attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0,
    )
    lora = LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=8, lora_dropout=0.0,
        target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True,
        init_lora_weights=False,
    )
    merged = ["transformer.h.0.attn.c_attn.weight", "transformer.h.1.attn.c_proj.weight"]
    return cfg, transformers.GPT2LMHeadModel, lora, merged


def neox(parallel=True):
    cfg = transformers.GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=256, max_position_embeddings=64, rotary_pct=0.25,
        rotary_emb_base=10000, use_parallel_residual=parallel, tie_word_embeddings=False,
        initializer_range=0.1, bos_token_id=0, eos_token_id=0,
    )
    lora = LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=8, lora_dropout=0.0,
        target_modules=["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
        init_lora_weights=False,
    )
    merged = [
        "gpt_neox.layers.0.attention.query_key_value.weight",
        "gpt_neox.layers.1.attention.dense.weight",
    ]
    return cfg, transformers.GPTNeoXForCausalLM, lora, merged


def floats(t):
    return [float(f"{x:.9g}") for x in t.detach().float().reshape(-1).tolist()]


def build(cls, cfg, seed):
    torch.manual_seed(seed)
    cfg._attn_implementation = "eager"
    model = cls(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ("ln" in n or "norm" in n) and n.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif n.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
    return model


def save_base(model, out):
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    model.save_pretrained(out, safe_serialization=True)
    for extra in ("generation_config.json",):
        p = os.path.join(out, extra)
        if os.path.exists(p):
            os.remove(p)


def logits(m, ids, mask=None):
    with torch.no_grad():
        return m(input_ids=ids, attention_mask=mask).logits


def meta():
    return {
        "input_ids": IDS,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": sys.version.split()[0],
    }


def family(name, cfg, cls, lora, merged_names, seed):
    out = os.path.join(OUT, name)
    model = build(cls, cfg, seed)
    save_base(model, out)
    ids = torch.tensor(IDS)
    gold = meta()
    gold["base_logits"] = floats(logits(model, ids))
    mask = torch.ones(1, len(IDS[0]), dtype=torch.long)
    mask[0, -3:] = 0
    gold["padded_logits"] = floats(logits(model, ids[:1], mask))
    pm = get_peft_model(model, lora).eval()
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(0.2 * torch.randn_like(p))
    ad = os.path.join(out, "adapter")
    pm.save_pretrained(ad)
    readme = os.path.join(ad, "README.md")
    if os.path.exists(readme):
        os.remove(readme)
    gold["adapted_logits"] = floats(logits(pm, ids))
    merged = pm.merge_and_unload().eval()
    gold["merged_logits"] = floats(logits(merged, ids))
    sd = merged.state_dict()
    gold["merged"] = {k: {"shape": list(sd[k].shape), "data": floats(sd[k])} for k in merged_names}
    with open(os.path.join(out, "golden.json"), "w") as f:
        json.dump(gold, f)
    n = sum(p.numel() for p in model.parameters())
    print(f"{name}: {n} params -> {out}")


def serial(seed):
    cfg, cls, _, _ = neox(parallel=False)
    out = os.path.join(OUT, "gpt_neox", "serial")
    model = build(cls, cfg, seed)
    save_base(model, out)
    gold = meta()
    gold["base_logits"] = floats(logits(model, torch.tensor(IDS)))
    with open(os.path.join(out, "golden.json"), "w") as f:
        json.dump(gold, f)
    print(f"gpt_neox/serial -> {out}")


def check(dir_, fam):
    base_dir = os.path.join(OUT, fam)
    cls = {"gpt2": transformers.GPT2LMHeadModel, "gpt_neox": transformers.GPTNeoXForCausalLM}[fam]
    model = cls.from_pretrained(base_dir, attn_implementation="eager").eval()
    pm = PeftModel.from_pretrained(model, dir_).eval()
    loaded = {n for n, _ in pm.named_parameters() if "lora_" in n}
    with open(os.path.join(dir_, "logits.json")) as f:
        want = json.load(f)
    got = logits(pm, torch.tensor(want["input_ids"])).double().reshape(-1)
    ours = torch.tensor(want["logits"], dtype=torch.float64)
    rel = ((got - ours).abs().max() / got.abs().max()).item()
    print(f"{fam}: PEFT loaded {len(loaded)} LoRA tensors; fan_in_fan_out = "
          f"{pm.peft_config['default'].fan_in_fan_out}; max rel diff vs balora {rel:.3e}")
    sys.exit(0 if rel <= 1e-4 and loaded else 1)


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--check":
        check(sys.argv[2], sys.argv[3])
        return
    cfg, cls, lora, merged = gpt2()
    family("gpt2", cfg, cls, lora, merged, 1701)
    cfg, cls, lora, merged = neox()
    family("gpt_neox", cfg, cls, lora, merged, 1702)
    serial(1703)


if __name__ == "__main__":
    main()
