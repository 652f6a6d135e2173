#!/usr/bin/env python3
"""Golden logits and real-PEFT adapters for the transformer families beyond Llama: Qwen3, Gemma 2,
Gemma 3 (text), Phi-3.

For each family this builds a TINY RANDOM model with `transformers` from a config (fixed seed,
f32, eager attention, non-trivial norm weights and weights large enough that the soft-caps and
the sliding window change the outputs), saves it with `save_pretrained(safe_serialization=True)`
(config.json + model.safetensors, plus a tiny word-level tokenizer.json that balora's HF folder
loader requires), and writes for two fixed token sequences (one longer than every sliding window):

* `base_logits`: the model's logits;
* `adapted_logits`: the logits of a real PEFT 0.21.2 LoRA (r = 4, attention and MLP projections,
  fused ones by their own names for Phi-3: `qkv_proj`, `gate_up_proj`; `init_lora_weights=False`
  and every lora_B set to non-zero random values), saved with `PeftModel.save_pretrained` into
  `adapter/`;
* `merged_logits` (after `merge_and_unload()`) and `merged_weights`: a few of its weights (HF
  names, the fused ones included).

Numbers are written as the shortest decimal that round-trips the f32 value; arrays are flat
(row-major) with their shape. GGUFs of the Qwen3 and Phi-3 models (written with gguf-py's
`GGUFWriter` from the same tensors, llama.cpp's names and keys, no q/k permutation: that is
llama-arch only) go to `qwen3/model.gguf` and `phi3/model.gguf`.

Output: crates/balora-models/tests/fixtures/families/<family>/{config.json, model.safetensors,
tokenizer.json, golden.json, adapter/}. The Rust tests (crates/balora-models/tests/families.rs)
read only these files.

    PYTHONHASHSEED=0 target/tch-venv/bin/python tools/reference/families_golden.py

(The tensors are the same on every run; PEFT writes target_modules from a Python set, whose
order follows the hash seed.)
"""
import json
import os
import shutil
import sys

import numpy as np
import torch
import transformers
import peft
from peft import LoraConfig, TaskType, get_peft_model

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peft_real_fixtures import tokenizer_json  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "crates/balora-models/tests/fixtures/families")
# The second sequence is longer than every sliding window below (4 and 5).
INPUTS = [[1, 17, 42, 99, 5, 63], [3, 88, 12, 50, 71, 9, 44, 2, 120, 7, 31, 64, 18, 101]]
ATTN_MLP = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def families():
    common = dict(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, initializer_range=0.1,
    )
    qwen3 = transformers.Qwen3Config(
        **common, num_hidden_layers=2, head_dim=32, tie_word_embeddings=True, rms_norm_eps=1e-6,
    )
    gemma2 = transformers.Gemma2Config(
        **common, num_hidden_layers=3, head_dim=16, query_pre_attn_scalar=24, sliding_window=4,
        attn_logit_softcapping=1.5, final_logit_softcapping=2.5, rms_norm_eps=1e-6,
    )
    gemma3 = transformers.Gemma3TextConfig(
        **common, num_hidden_layers=3, head_dim=16, query_pre_attn_scalar=16, sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
        rms_norm_eps=1e-6,
    )
    phi3 = transformers.Phi3Config(
        **common, num_hidden_layers=2, original_max_position_embeddings=64, sliding_window=5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "partial_rotary_factor": 0.5},
        tie_word_embeddings=False, rms_norm_eps=1e-5,
    )
    lora = dict(task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=8, init_lora_weights=False)
    return [
        ("qwen3", qwen3, transformers.Qwen3ForCausalLM, LoraConfig(**lora, target_modules=ATTN_MLP)),
        ("gemma2", gemma2, transformers.Gemma2ForCausalLM,
         LoraConfig(**lora, target_modules=ATTN_MLP)),
        ("gemma3", gemma3, transformers.Gemma3ForCausalLM,
         LoraConfig(**lora, target_modules=ATTN_MLP)),
        ("phi3", phi3, transformers.Phi3ForCausalLM,
         LoraConfig(**lora, target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"])),
    ]


# A few merged weights per family: a fused one for Phi-3.
MERGED = {
    "qwen3": ["model.layers.0.self_attn.k_proj.weight", "model.layers.1.mlp.down_proj.weight"],
    "gemma2": ["model.layers.0.self_attn.q_proj.weight", "model.layers.2.mlp.up_proj.weight"],
    "gemma3": ["model.layers.1.self_attn.v_proj.weight", "model.layers.0.mlp.gate_proj.weight"],
    "phi3": ["model.layers.0.self_attn.qkv_proj.weight", "model.layers.1.mlp.gate_up_proj.weight"],
}


def arr(t):
    """A tensor as {"shape", "data"} with the shortest round-trip decimal of each f32."""
    a = t.detach().float().contiguous().numpy()
    return {"shape": list(a.shape), "data": [float(str(x)) for x in a.reshape(-1)]}


def logits_of(m):
    with torch.no_grad():
        return [arr(m(input_ids=torch.tensor([ids])).logits[0]) for ids in INPUTS]


def write_gguf(name, model, cfg, path):
    """The model as a GGUF with gguf-py's own names and keys for its arch (`qwen3`, `phi3`), as
    llama.cpp's converter writes them: q/k rows as they are (NEOX RoPE, no permutation), Phi-3's
    fused `qkv_proj` / `gate_up_proj` as `attn_qkv` / `ffn_up`, its rotary dimensions as
    `rope.dimension_count` and its `sliding_window`."""
    import gguf

    arch = {"qwen3": gguf.MODEL_ARCH.QWEN3, "phi3": gguf.MODEL_ARCH.PHI3}[name]
    tmap = gguf.get_tensor_name_map(arch, cfg.num_hidden_layers)
    w = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    if name == "qwen3":
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    else:
        factor = cfg.rope_parameters.get("partial_rotary_factor", 1.0)
        w.add_rope_dimension_count(int(factor * cfg.hidden_size) // cfg.num_attention_heads)
        w.add_sliding_window(cfg.sliding_window)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    # A word-level-like BPE vocabulary; one merge (gguf-py does not write an empty list).
    tokens = [f"t{i}" for i in range(cfg.vocab_size - 1)] + ["t0t1"]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_merges(["t0 t1"])
    w.add_eos_token_id(2)
    for tname, t in model.state_dict().items():
        if tname == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        new = tmap.get_name(tname, try_suffixes=(".weight", ".bias"))
        w.add_tensor(new, t.detach().float().contiguous().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    torch.manual_seed(20261)
    for name, cfg, cls, lcfg in families():
        out = os.path.join(OUT, name)
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        cfg._attn_implementation = "eager"
        model = cls(cfg).float().eval()
        with torch.no_grad():  # non-trivial norms so a wrong (1 + w) or gamma shows up
            for n, p in model.named_parameters():
                if "norm" in n.lower():
                    base = 0.0 if name.startswith("gemma") else 1.0
                    p.copy_(base + 0.2 * torch.randn_like(p))
        model.save_pretrained(out, safe_serialization=True)
        tokenizer_json(cfg.vocab_size, os.path.join(out, "tokenizer.json"))
        gen = os.path.join(out, "generation_config.json")
        if os.path.exists(gen):
            os.remove(gen)
        golden = {"inputs": INPUTS, "base_logits": logits_of(model)}
        if name in ("qwen3", "phi3"):
            write_gguf(name, model, cfg, os.path.join(out, "model.gguf"))
        pm = get_peft_model(model, lcfg).eval()
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_B" in n:
                    p.copy_(0.2 * torch.randn_like(p))
        ad = os.path.join(out, "adapter")
        pm.save_pretrained(ad)
        readme = os.path.join(ad, "README.md")
        if os.path.exists(readme):
            os.remove(readme)
        golden["adapted_logits"] = logits_of(pm)
        merged = pm.merge_and_unload().eval()
        golden["merged_logits"] = logits_of(merged)
        sd = merged.state_dict()
        golden["merged_weights"] = {k: arr(sd[k]) for k in MERGED[name]}
        golden["versions"] = {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "numpy": np.__version__,
        }
        with open(os.path.join(out, "golden.json"), "w") as f:
            json.dump(golden, f, separators=(",", ":"))
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{name}: {n_params} params -> {out}")


if __name__ == "__main__":
    main()
