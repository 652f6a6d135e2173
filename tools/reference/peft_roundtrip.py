#!/usr/bin/env python3
"""The PEFT side of `cargo xtask peft-roundtrip`: loads balora-written adapters with real PEFT
and compares PyTorch's outputs with balora's, and `balora merge`'s output with PEFT's
`merge_and_unload`.

    target/tch-venv/bin/python tools/reference/peft_roundtrip.py FIXTURES OUT

FIXTURES: crates/balora-models/tests/fixtures/peft_real (the tiny HF base models);
OUT: what `cargo run -p balora-models --example peft_roundtrip` and `balora merge` wrote:
<family>/{lora,balanced}/ adapters, <family>/{lora,balanced}.outputs.json,
<family>/{lora,balanced}.merged.safetensors.

Prints one line per (family, variant) with the max abs / rel differences and exits 1 if any
output differs by more than REL_TOL of its largest value, if PEFT did not load every tensor of
the adapter, or if a merged tensor differs by more than MERGE_ULP f32 ulps.
"""
import json
import os
import sys

import torch
import transformers
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import load_file

REL_TOL = 1e-4
MERGE_ULP = 4.0


def diff(name, ours, theirs):
    ours = torch.tensor(ours, dtype=torch.float64).reshape(-1)
    theirs = theirs.detach().double().reshape(-1)
    if ours.numel() != theirs.numel():
        return f"{name}: {ours.numel()} values vs PEFT's {theirs.numel()}", False
    abs_d = (ours - theirs).abs().max().item()
    rel = abs_d / max(theirs.abs().max().item(), 1e-30)
    return f"{name} max abs {abs_d:.3e} rel {rel:.3e}", rel <= REL_TOL


def merged_check(ours_path, merged_model):
    theirs = {k: v.float() for k, v in merged_model.state_dict().items()}
    ours = load_file(ours_path)
    worst, same, missing = 0.0, 0, []
    for k, v in ours.items():
        if k not in theirs:
            missing.append(k)
            continue
        t = theirs[k]
        if torch.equal(v, t):
            same += 1
        ulp = (t.abs().clamp_min(torch.finfo(torch.float32).tiny) * torch.finfo(torch.float32).eps)
        worst = max(worst, ((v.double() - t.double()).abs() / ulp.double()).max().item())
    ok = not missing and worst <= MERGE_ULP
    msg = f"merge: {same}/{len(ours)} tensors bit-identical to merge_and_unload, max {worst:.1f} ulp"
    if missing:
        msg += f", not in PEFT's model: {missing[:3]}"
    return msg, ok


def balance_gap(path):
    """max over pairs of ‖BᵀB − AAᵀ‖_F / (‖BᵀB‖_F + ‖AAᵀ‖_F), in float64."""
    t = load_file(path)
    worst = 0.0
    for k, a in t.items():
        if k.endswith("lora_A.weight"):
            a = a.double()
            b = t[k.replace("lora_A", "lora_B")].double()
            ga, gb = a @ a.T, b.T @ b
            worst = max(worst, ((gb - ga).norm() / (gb.norm() + ga.norm())).item())
    return worst


def main():
    fixtures, out = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    failures = 0
    for family in ["llama", "qwen2", "bert"]:
        base_dir = os.path.join(fixtures, family, "base")
        for variant in ["lora", "balanced"]:
            ad = os.path.join(out, family, variant)
            with open(os.path.join(out, family, f"{variant}.outputs.json")) as f:
                ours = json.load(f)
            ids = torch.tensor(ours["input_ids"])
            if family == "bert":
                base = transformers.BertForSequenceClassification.from_pretrained(base_dir)
            else:
                base = transformers.AutoModelForCausalLM.from_pretrained(base_dir)
            pm = PeftModel.from_pretrained(base.eval(), ad).eval()
            # Every tensor of the file must have landed in the model.
            with safe_open(os.path.join(ad, "adapter_model.safetensors"), "pt") as f:
                keys = list(f.keys())
            params = dict(pm.named_parameters())
            loaded = 0
            for k in keys:
                stem = k.removesuffix(".weight").removesuffix(".bias")
                suffix = k[len(stem):]
                cands = [f"{stem}.default{suffix}", f"{stem}.modules_to_save.default{suffix}"]
                hit = [c for c in cands if c in params]
                if hit:
                    with safe_open(os.path.join(ad, "adapter_model.safetensors"), "pt") as f:
                        if torch.equal(f.get_tensor(k), params[hit[0]].detach()):
                            loaded += 1
            lines = [f"{family}/{variant}: PEFT loaded {loaded}/{len(keys)} tensors"]
            ok = loaded == len(keys)
            gap = balance_gap(os.path.join(ad, "adapter_model.safetensors"))
            lines.append(f"max ‖BᵀB−AAᵀ‖/‖·‖ {gap:.1e}")
            if variant == "balanced":
                ok &= gap < 1e-5
            with torch.no_grad():
                if family == "bert":
                    h = pm.base_model.model.bert(input_ids=ids).last_hidden_state
                    m, o = diff("hidden", ours["hidden"], h)
                    lines.append(m)
                    ok &= o
                    logits = pm.base_model.model.classifier(h[:, 0])
                    m, o = diff("cls logits", ours["cls_logits"], logits)
                else:
                    m, o = diff("logits", ours["logits"], pm(input_ids=ids).logits)
                lines.append(m)
                ok &= o
                # The comparison must be able to see the adapter: its effect on the outputs.
                if family == "bert":
                    out_now = lambda: pm.base_model.model.bert(input_ids=ids).last_hidden_state
                else:
                    out_now = lambda: pm(input_ids=ids).logits
                now = out_now()
                with pm.disable_adapter():
                    plain = out_now()
                effect = (now - plain).abs().max().item() / now.abs().max().item()
                lines.append(f"adapter effect rel {effect:.2e}")
                ok &= effect > 100 * REL_TOL
                merged_path = os.path.join(out, family, f"{variant}.merged.safetensors")
                if os.path.exists(merged_path):
                    m, o = merged_check(merged_path, pm.merge_and_unload())
                    lines.append(m)
                    ok &= o
            print(("ok    " if ok else "FAIL  ") + "; ".join(lines))
            failures += not ok
    if failures:
        print(f"{failures} mismatches between balora and PEFT")
        sys.exit(1)
    print("balora adapters load in PEFT with the same outputs")


if __name__ == "__main__":
    main()
