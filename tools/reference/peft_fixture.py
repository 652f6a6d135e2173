#!/usr/bin/env python3
"""An independent writer of PEFT's adapter format (python `safetensors` + json, no balora code).

Writes crates/balora-models/tests/fixtures/peft_tiny/{adapter_model.safetensors,adapter_config.json}
for the tiny Llama of tests/peft.rs (d=24, 6 heads of 4, 2 KV heads, ffn 40, 2 layers), with the
config fields PEFT 0.17 writes. Factor values follow a closed formula the Rust test recomputes:
A[i, j] = sin(0.37*i + 0.11*j + k), B[i, j] = cos(0.23*i + 0.71*j + k) / 5, k = module index.

    python3 tools/reference/peft_fixture.py
"""
import json
import os

import numpy as np
from safetensors.numpy import save_file

OUT = "crates/balora-models/tests/fixtures/peft_tiny"
D, NH, NKV, HD, FF, LAYERS = 24, 6, 2, 4, 40, 2
dims = {"self_attn.q_proj": (D, NH * HD), "self_attn.v_proj": (D, NKV * HD), "mlp.down_proj": (FF, D)}
rank = {"self_attn.q_proj": 4, "self_attn.v_proj": 4, "mlp.down_proj": 2}

tensors = {}
k = 0
for layer in range(LAYERS):
    for name, (din, dout) in dims.items():
        r = rank[name]
        i = np.arange(r)[:, None]
        j = np.arange(din)[None, :]
        a = np.sin(0.37 * i + 0.11 * j + k).astype(np.float32)
        i = np.arange(dout)[:, None]
        j = np.arange(r)[None, :]
        b = (np.cos(0.23 * i + 0.71 * j + k) / 5).astype(np.float32)
        pre = f"base_model.model.model.layers.{layer}.{name}"
        tensors[pre + ".lora_A.weight"] = a
        tensors[pre + ".lora_B.weight"] = b
        k += 1

os.makedirs(OUT, exist_ok=True)
save_file(tensors, os.path.join(OUT, "adapter_model.safetensors"), metadata={"format": "pt"})
config = {
    "alpha_pattern": {"v_proj": 16},
    "auto_mapping": None,
    "base_model_name_or_path": "tiny-llama",
    "bias": "none",
    "corda_config": None,
    "eva_config": None,
    "exclude_modules": None,
    "fan_in_fan_out": False,
    "inference_mode": True,
    "init_lora_weights": True,
    "layer_replication": None,
    "layers_pattern": None,
    "layers_to_transform": None,
    "loftq_config": {},
    "lora_alpha": 8,
    "lora_bias": False,
    "lora_dropout": 0.05,
    "megatron_config": None,
    "megatron_core": "megatron.core",
    "modules_to_save": None,
    "peft_type": "LORA",
    "r": 4,
    "rank_pattern": {"down_proj": 2},
    "revision": None,
    "target_modules": ["v_proj", "q_proj", "down_proj"],
    "task_type": "CAUSAL_LM",
    "trainable_token_indices": None,
    "use_dora": False,
    "use_rslora": False,
}
with open(os.path.join(OUT, "adapter_config.json"), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
print("wrote", OUT)
