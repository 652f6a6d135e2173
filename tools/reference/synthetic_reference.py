#!/usr/bin/env python3
"""Independent numpy reference of the synthetic experiment (paper's Fig. 3), written from the
protocol, not from balora's code.

Loss ½‖W0 + B·A − T‖²_F, B = 0, A = A0, 100 steps; per trajectory the learning rate of
linspace(1e-5, 0.3, 50) with the lowest final loss (runs whose loss exceeds 1e5 or becomes
non-finite are discarded); gap = loss − ½Σ_{i>r} σᵢ(T − W0)². Methods: LoRA (nothing after the
step), BaLoRA canonical (the official code's `project_balanced(mode="old")`: SVD of BA,
B' = U√Σ, A' = √Σ Vᵀ) and BaLoRA closest (the balanced pair nearest to (A, B) in Frobenius norm:
O = polar factor of B₀ᵀB + A₀Aᵀ, A' = OᵀA₀, B' = B₀O). Optimizers: sign descent g/(|g| + 1e-8)
(the official `adam=True`), AdamW (β = (0.9, 0.999), ε = 1e-8 outside the square root, bias
correction, no weight decay) with moments kept in the old coordinates, and AdamW with both
moments transported (m_A ← Pᵀm_A, m_B ← m_B·Qᵀ, v_A ← (P∘P)ᵀv_A, v_B ← v_B·(Q∘Q)ᵀ with
A' = Q·A, B' = B·P, P, Q recovered by least squares from the factors).

Problems: either balora's `problems.json` (so every trajectory is compared on identical inputs,
`--summary` adds the per-trajectory comparison with balora's summary.json), or drawn here with
numpy (`--numpy-seeds`, the paper protocol: W0, T once per seed, A0 per trajectory).

  python3 tools/reference/synthetic_reference.py runs/synthetic/problems.json \
      --summary runs/synthetic/summary.json
  python3 tools/reference/synthetic_reference.py --numpy-seeds 0-15
"""

import argparse
import json
import sys

import numpy as np

EPS = 1e-8
DISCARD = 1e5


def optimal_loss(w0, t, r):
    s = np.linalg.svd(t - w0, compute_uv=False)
    return 0.5 * float(np.sum(np.sort(s)[::-1][r:] ** 2))


def balanced_pair(a, b, r):
    """Canonical balanced pair of the product BA (batched): B₀ = U√Σ, A₀ = √Σ Vᵀ."""
    u, s, vt = np.linalg.svd(b @ a)
    root = np.sqrt(s[:, :r])
    return root[:, :, None] * vt[:, :r, :], u[:, :, :r] * root[:, None, :]


def project(a, b, r, gauge):
    a0, b0 = balanced_pair(a, b, r)
    if gauge == "canonical":
        return a0, b0
    m = np.swapaxes(b0, 1, 2) @ b + a0 @ np.swapaxes(a, 1, 2)
    um, _, vmt = np.linalg.svd(m)
    o = um @ vmt
    return np.swapaxes(o, 1, 2) @ a0, b0 @ o


def run(problem, method, optimizer, grid, steps, dtype):
    """Loss curves (len(grid) × (steps + 1)) of one trajectory at every learning rate."""
    w0, t, a_init = (np.asarray(problem[k], dtype=dtype) for k in ("w0", "target", "a0"))
    r, d = a_init.shape
    n = len(grid)
    lr = np.asarray(grid, dtype=dtype)[:, None, None]
    a = np.repeat(a_init[None], n, axis=0)
    b = np.zeros((n, w0.shape[0], r), dtype=dtype)
    ma, va, mb, vb = (np.zeros_like(x) for x in (a, a, b, b))
    alive = np.ones(n, dtype=bool)
    losses = np.full((n, steps + 1), np.nan)
    b1, b2 = 0.9, 0.999
    for k in range(steps + 1):
        res = w0 + b @ a - t
        loss = 0.5 * np.sum(res.astype(np.float64) ** 2, axis=(1, 2))
        alive &= np.isfinite(loss) & (loss <= DISCARD)
        losses[:, k] = np.where(alive, loss, np.nan)
        if k == steps or not alive.any():
            break
        # Dead runs are reset to a harmless point so that the batched SVDs stay finite.
        a[~alive], b[~alive] = a_init, 1e-3
        for buf in (ma, va, mb, vb):
            buf[~alive] = 0.0
        res = w0 + b @ a - t
        ga = np.swapaxes(b, 1, 2) @ res
        gb = res @ np.swapaxes(a, 1, 2)
        if optimizer == "sign":
            a = a - lr * ga / (np.abs(ga) + EPS)
            b = b - lr * gb / (np.abs(gb) + EPS)
        else:
            c1, c2 = 1 - b1 ** (k + 1), 1 - b2 ** (k + 1)
            ma, mb = b1 * ma + (1 - b1) * ga, b1 * mb + (1 - b1) * gb
            va, vb = b2 * va + (1 - b2) * ga**2, b2 * vb + (1 - b2) * gb**2
            a = a - lr * (ma / c1) / (np.sqrt(va / c2) + EPS)
            b = b - lr * (mb / c1) / (np.sqrt(vb / c2) + EPS)
        if method == "lora":
            continue
        a_new, b_new = project(a, b, r, method)
        if optimizer == "adamw-T":
            # A' = Q·A, B' = B·P: Q = A'·A⁺, P = B⁺·B' (A full row rank, B full column rank).
            q = a_new @ np.linalg.pinv(a)
            p = np.linalg.pinv(b) @ b_new
            pt = np.swapaxes(p, 1, 2)
            ma, mb = pt @ ma, mb @ np.swapaxes(q, 1, 2)
            va, vb = (pt * pt) @ va, vb @ np.swapaxes(q * q, 1, 2)
        a, b = a_new, b_new
    return losses


def best_curve(curves, grid, select_index):
    ok = np.all(np.isfinite(curves), axis=1)
    if not ok.any():
        return None, None
    final = np.where(ok, curves[:, select_index], np.inf)
    i = int(np.argmin(final))
    return grid[i], curves[i]


def numpy_problems(seed, trajectories, dim, rank):
    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal((dim, dim))
    t = rng.standard_normal((dim, dim))
    out = []
    for _ in range(trajectories):
        a0 = rng.standard_normal((rank, dim))
        out.append({"w0": w0, "target": t, "a0": a0, "optimal_loss": optimal_loss(w0, t, rank)})
    return {"seed": seed, "trajectories": out}


def seed_range(text):
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(x) for x in text.split(",")]


LABELS = {"lora": "LoRA", "canonical": "BaLoRA-canonical", "closest": "BaLoRA-closest"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("problems", nargs="?", help="balora's problems.json")
    ap.add_argument("--summary", help="balora's summary.json: compare per trajectory")
    ap.add_argument("--numpy-seeds", help="draw problems with numpy instead, e.g. 0-15")
    ap.add_argument("--trajectories", type=int, default=8)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--methods", default="lora,canonical,closest")
    ap.add_argument("--optimizers", default="sign,adamw,adamw-T")
    ap.add_argument("--lr-count", type=int, default=50)
    ap.add_argument("--f32", action="store_true", help="run in float32")
    ap.add_argument(
        "--official-indexing",
        action="store_true",
        help="select the lr and report on the loss after steps-1 steps (the official code "
        "records the loss before each step, so its last entry is after 99 of 100 steps)",
    )
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    dtype = np.float32 if args.f32 else np.float64
    grid = np.linspace(1e-5, 0.3, args.lr_count)
    if args.numpy_seeds:
        seeds = [numpy_problems(s, args.trajectories, 20, 4) for s in seed_range(args.numpy_seeds)]
    else:
        seeds = json.load(open(args.problems))
    balora = {}
    if args.summary:
        for s in json.load(open(args.summary))["per_seed"]:
            for c in s["cells"]:
                balora[(s["seed"], c["method"], c["optimizer"])] = c
    idx = args.steps - 1 if args.official_indexing else args.steps
    results = []
    cells = [(m, o) for o in args.optimizers.split(",") for m in args.methods.split(",")]
    for s in seeds:
        for m, o in cells:
            lrs, gaps = [], []
            for p in s["trajectories"]:
                curves = run(p, m, o, grid, args.steps, dtype)
                lr, curve = best_curve(curves, grid, idx)
                lrs.append(None if lr is None else float(lr))
                gaps.append(None if curve is None else float(curve[idx] - p["optimal_loss"]))
            finite = [g for g in gaps if g is not None]
            med = float(np.median(finite)) if finite else float("nan")
            row = {"seed": s["seed"], "method": LABELS[m], "optimizer": o, "median_gap": med,
                   "chosen_lr": lrs, "final_gap": gaps}
            ref = balora.get((s["seed"], LABELS[m], o))
            if ref is not None:
                row["balora_median_gap"] = ref["median_gap"][str(args.steps)]
                row["balora_chosen_lr"] = ref["chosen_lr"]
                row["balora_final_gap"] = ref["final_gap"]
            results.append(row)
            line = f"seed {s['seed']:>3} {LABELS[m]:<17} {o:<8} median gap@{idx} {med:.4e}"
            if ref is not None:
                bl = row["balora_median_gap"]
                same_lr = sum(x == y or (x and y and abs(x - y) < 1e-9)
                              for x, y in zip(lrs, ref["chosen_lr"]))
                rel = [abs(g - h) / abs(h) for g, h in zip(gaps, ref["final_gap"])
                       if g is not None and h is not None]
                line += (f" | balora {bl:.4e} | same lr {same_lr}/{len(lrs)}"
                         f" | max rel diff of final gaps {max(rel) if rel else float('nan'):.2e}")
            print(line, flush=True)
    # Ratios to LoRA with the same optimizer, per seed, and their spread.
    print("\nratio of the median gap to LoRA's (same optimizer), per seed; median [min, max]")
    for m, o in cells:
        rat = []
        for s in seeds:
            get = lambda mm: next(r["median_gap"] for r in results
                                  if r["seed"] == s["seed"] and r["method"] == mm and r["optimizer"] == o)
            rat.append(get(LABELS[m]) / get("LoRA"))
        print(f"{LABELS[m]:<17} {o:<8} " + " ".join(f"{x:.2f}" for x in rat)
              + f"  median {np.median(rat):.2f} [{min(rat):.2f}, {max(rat):.2f}]")
    if args.json:
        json.dump(results, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    sys.exit(main())
