#!/usr/bin/env python3
"""Adapters written by real PEFT (0.21.2) on tiny random Hugging Face models, with PyTorch's outputs.

For each family (llama, qwen2, bert) this builds a tiny RANDOM model with `transformers` (fixed
seed), saves it in HF format (config.json + model.safetensors + a tiny word-level tokenizer.json,
which balora's HF folder loader requires), wraps it with a real `peft.LoraConfig`, sets every
lora_B (and the modules_to_save copy of the BERT classifier) to non-zero random values, saves
the adapter with `PeftModel.save_pretrained` (so adapter_config.json holds every field PEFT 0.21
writes), and records for fixed token ids:

* `base_logits`, `adapted_logits` (PEFT model, eval mode), `merged_logits` (after
  `merge_and_unload`) — for BERT the encoder's last hidden state is recorded under the same names
  (`*_hidden`), plus `cls_logits`: the PEFT model's (trained) classifier applied to the CLS
  hidden state, the head balora's `BertForSequenceClassification` computes (balora has no pooler);
* `merged.<name>`: every tensor of `merge_and_unload()`'s state dict (HF names).

Output: crates/balora-models/tests/fixtures/peft_real/<family>/{base/,adapter/,expected.safetensors,
expected.json}. The Rust tests (crates/balora-models/tests/peft_real.rs) read only these files.

    PYTHONHASHSEED=0 target/tch-venv/bin/python tools/reference/peft_real_fixtures.py

(The tensors are the same on every run; PEFT writes target_modules from a Python set, whose
order follows the hash seed.)
"""
import json
import os
import shutil
import sys

import torch
import transformers
import peft
from peft import LoraConfig, TaskType, get_peft_model
from safetensors.torch import save_file
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "crates/balora-models/tests/fixtures/peft_real")
IDS = [[1, 17, 42, 99, 5, 63, 28, 7], [3, 88, 12, 50, 71, 9, 44, 2]]


def tokenizer_json(vocab, path):
    tok = Tokenizer(WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tok.pre_tokenizer = Whitespace()
    tok.save(path)


def families():
    llama = transformers.LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=False, rms_norm_eps=1e-5,
    )
    qwen2 = transformers.Qwen2Config(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=True, rms_norm_eps=1e-6,
    )
    bert = transformers.BertConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=64, num_labels=3,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return [
        (
            "llama", llama, transformers.LlamaForCausalLM,
            LoraConfig(
                task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=8, lora_dropout=0.05,
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"],
                rank_pattern={"down_proj": 2}, alpha_pattern={"v_proj": 16},
            ),
        ),
        (
            "qwen2", qwen2, transformers.Qwen2ForCausalLM,
            LoraConfig(
                task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=6, target_modules="all-linear",
                use_rslora=True, rank_pattern={"layers.1.mlp.gate_proj": 6},
                alpha_pattern={"up_proj": 3},
            ),
        ),
        (
            "bert", bert, transformers.BertForSequenceClassification,
            LoraConfig(
                task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8,
                target_modules=["query", "key", "value", "attention.output.dense"],
                rank_pattern={"key": 2}, modules_to_save=["classifier"],
            ),
        ),
    ]


def main():
    torch.manual_seed(20260)
    ids = torch.tensor(IDS)
    for name, cfg, cls, lcfg in families():
        out = os.path.join(OUT, name)
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        cfg._attn_implementation = "eager"
        model = cls(cfg).eval()
        with torch.no_grad():  # non-trivial norms so a wrong gamma/beta shows up
            for n, p in model.named_parameters():
                if "norm" in n.lower() and n.endswith("weight"):
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
                elif "norm" in n.lower() and n.endswith("bias"):
                    p.copy_(0.1 * torch.randn_like(p))
                elif n.endswith("bias"):
                    p.copy_(0.05 * torch.randn_like(p))
        base_dir = os.path.join(out, "base")
        model.save_pretrained(base_dir, safe_serialization=True)
        tokenizer_json(cfg.vocab_size, os.path.join(base_dir, "tokenizer.json"))
        for extra in ("generation_config.json",):
            p = os.path.join(base_dir, extra)
            if os.path.exists(p):
                os.remove(p)
        exp = {}
        is_bert = name == "bert"

        def run(m):
            with torch.no_grad():
                if is_bert:
                    inner = m.bert if hasattr(m, "bert") else m.base_model.model.bert
                    return inner(input_ids=ids).last_hidden_state
                return m(input_ids=ids).logits

        key = "hidden" if is_bert else "logits"
        exp[f"base_{key}"] = run(model)
        pm = get_peft_model(model, lcfg).eval()
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_B" in n:
                    p.copy_(0.2 * torch.randn_like(p))
                if "modules_to_save" in n:
                    p.add_(0.3 * torch.randn_like(p))
        ad_dir = os.path.join(out, "adapter")
        pm.save_pretrained(ad_dir)
        readme = os.path.join(ad_dir, "README.md")
        if os.path.exists(readme):
            os.remove(readme)
        exp[f"adapted_{key}"] = run(pm)
        if is_bert:
            clf = pm.base_model.model.classifier
            with torch.no_grad():
                exp["cls_logits"] = clf(exp["adapted_hidden"][:, 0])
        merged = pm.merge_and_unload().eval()
        exp[f"merged_{key}"] = run(merged)
        for k, v in merged.state_dict().items():
            exp[f"merged.{k}"] = v
        exp = {k: v.detach().float().clone().contiguous() for k, v in exp.items()}
        save_file(exp, os.path.join(out, "expected.safetensors"))
        meta = {
            "input_ids": IDS,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "python": sys.version.split()[0],
        }
        with open(os.path.join(out, "expected.json"), "w") as f:
            json.dump(meta, f, indent=1)
        print(f"{name}: {sum(p.numel() for p in model.parameters())} params -> {out}")


def feature_configs():
    """adapter_config.json as PEFT writes it with one unsupported feature turned on (or the
    defaults, under "default"); balora must name the field of each."""
    import tempfile
    from peft.tuners.lora.config import BdLoraConfig, KasaConfig, VeloraConfig

    base = dict(task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=8, target_modules=["q_proj"])
    cases = {
        "default": {},
        "use_dora": dict(use_dora=True),
        "fan_in_fan_out": dict(fan_in_fan_out=True),
        "bias": dict(bias="all"),
        "lora_bias": dict(lora_bias=True),
        "layer_replication": dict(layer_replication=[[0, 2]]),
        "trainable_token_indices": dict(trainable_token_indices=[1, 2]),
        "alora_invocation_tokens": dict(alora_invocation_tokens=[5, 6]),
        "target_parameters": dict(target_parameters=["mlp.experts.gate_up_proj"]),
        "init_lora_weights": dict(init_lora_weights="pissa"),
        "kasa_config": dict(kasa_config=KasaConfig()),
        "use_bdlora": dict(use_bdlora=BdLoraConfig(target_modules_bd_a=["q_proj"], nblocks=2)),
        "velora_config": dict(velora_config=VeloraConfig()),
    }
    write_configs(base, cases, "feature_configs.json")
    # Initialisations that leave the base untouched: the saved factors are plain LoRA.
    from peft.tuners.lora.config import EvaConfig

    accepted = {
        "init_false": dict(init_lora_weights=False),
        "init_gaussian": dict(init_lora_weights="gaussian"),
        "init_orthogonal": dict(init_lora_weights="orthogonal"),
        "init_eva": dict(init_lora_weights="eva", eva_config=EvaConfig(rho=1.5)),
    }
    write_configs(base, accepted, "accepted_configs.json")


def write_configs(base, cases, file):
    import tempfile

    out = {}
    for name, kw in cases.items():
        with tempfile.TemporaryDirectory() as d:
            try:
                LoraConfig(**base, **kw).save_pretrained(d)
            except Exception as e:  # a feature this PEFT cannot build stand-alone: say so
                print(f"feature config {name}: not written ({type(e).__name__}: {e})")
                continue
            with open(os.path.join(d, "adapter_config.json")) as f:
                out[name] = json.load(f)
    with open(os.path.join(OUT, file), "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
    print(f"{file}: {sorted(out)}")


if __name__ == "__main__":
    main()
    feature_configs()
