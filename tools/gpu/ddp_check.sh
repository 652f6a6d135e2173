#!/usr/bin/env bash
# Data-parallel training on a CUDA GPU with NCCL (docs/distributed.md, issue 14): prepared for a
# session that is lent a GPU machine; NOT run yet (no GPU was lent when it was written).
#
# Two halves, because the GPU machine has no Rust toolchain and no MPI:
#
#   tools/gpu/ddp_check.sh prepare    # HERE (x86-64, glibc <= the GPU image's): release build with
#                                     # cuda+nccl+mpi, plus the MPI runtime it links (libmpich,
#                                     # UCX and its modules, hwloc, Hydra's mpiexec), into .gpu/
#   # then, with the device tool:  run(command="bash tools/gpu/ddp_check.sh run",
#   #                                   carry=[".gpu"], timeout_s=480)
#   tools/gpu/ddp_check.sh run        # THERE: the checks below; results on stdout and in $OUT
#
# What `run` checks, each printed as PASS/FAIL with its numbers:
#   1. the collective's selftest on 2 ranks with NCCL, both ranks on the one GPU (each rank gets
#      its own NCCL_HOSTID, so NCCL treats them as two hosts and talks over sockets: NCCL refuses
#      two ranks of one communicator on one device otherwise);
#   2. the tiny llama (crates/balora-fuzz/corpus/gguf/tiny_llama.gguf) for 20 steps on the cuda
#      backend: `mpiexec -n 2` with trainer.collective = "nccl" (fingerprint check after steps 10
#      and 20; on the GPU a mismatch re-sends rank 0's state with a warning, which is counted)
#      against 1 process with trainer.grad_accum = 2: per-step losses and gradient norms and the
#      adapter, bit for bit or else by how much they differ;
#   3. the same 2-rank run with trainer.collective = "mpi" (host all-reduce) against the same.
#
# Libraries at run time (nothing CUDA is needed at build time: cudarc loads them with dlopen):
#   * libcuda: the driver's.
#   * NVRTC (burn's CUDA backend compiles its kernels at run time): the image's pip package
#     nvidia-cuda-nvrtc (libnvrtc.so.13) is found through LD_LIBRARY_PATH below. For an image
#     without it, carry the wheel nvidia-cuda-nvrtc-cu12 (README of the device tool: `pip
#     download --no-deps --only-binary=:all: ... -d .whl nvidia-cuda-nvrtc-cu12`) and `carry` .whl:
#     this script unpacks every .whl/*.whl it finds.
#   * NCCL: the image's nvidia-nccl-cu13, or a carried nvidia-nccl-cu12 wheel (.whl, as above).
#     cudarc looks for libnccl.so (and libnccl.so.12 ...), not the soname libnccl.so.2 the wheels
#     ship, so a link libnccl.so -> libnccl.so.2 is made in /tmp/balora-lib.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
G=$ROOT/.gpu

prepare() {
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
    nice -n 19 cargo build --release -p balora-cli --no-default-features --features flex,nccl
    nice -n 19 cargo build --release -p balora-collective --features nccl \
        --bin balora-collective-selftest
    rm -rf "$G" && mkdir -p "$G/bin" "$G/lib"
    cp target/release/balora target/release/balora-collective-selftest "$G/bin/"
    strip "$G/bin/balora" "$G/bin/balora-collective-selftest"
    cp "$(readlink -f "$(command -v mpiexec)")" "$G/bin/mpiexec"
    cp "$(command -v hydra_pmi_proxy)" "$G/bin/"
    # Every shared library they link, except the C library's own (the image has a newer glibc).
    for f in "$G"/bin/*; do
        ldd "$f" | awk '/=> \//{print $3}'
    done | sort -u | grep -Ev '/(libc|libm|libpthread|libdl|librt|libresolv|ld-linux[^/]*)\.so' |
        xargs -I{} cp -L {} "$G/lib/"
    # UCX loads its transports as modules at run time.
    cp -r /usr/lib/x86_64-linux-gnu/ucx "$G/lib/ucx"
    du -sh "$G"
    # The device tool carries at most 64 MiB (the working tree included).
    if [ "$(du -sm "$G" | cut -f1)" -gt 56 ]; then
        echo "$G is over 56 MiB: too large to carry" >&2
        exit 1
    fi
    echo "prepared $G; now: run(command=\"bash tools/gpu/ddp_check.sh run\", carry=[\".gpu\"])"
}

STATUS=0
pass() { echo "PASS $*"; }
fail() {
    echo "FAIL $*"
    STATUS=1
}

# The training arguments of the tiny job for 20 steps on the cuda backend.
job() {
    local out=$1
    shift
    echo train --out "$out" --set 'backend="cuda"' \
        --set "model.path=\"$ROOT/crates/balora-fuzz/corpus/gguf/tiny_llama.gguf\"" \
        --set "data.path=\"$W/corpus.txt\"" --set data.max_chars=3000 --set data.seq_len=8 \
        --set trainer.batch_size=2 --set trainer.eval_batches=3 --set trainer.eval_every=5 \
        --set trainer.checkpoint_every=10 --set trainer.steps=20 --set trainer.progress=false \
        --set adapter.r=2 --set 'manifold.name="balanced"' "$@"
}

# `mpiexec` of 2 ranks sharing the GPU, each with its own NCCL_HOSTID.
two_ranks() {
    mpiexec -n 1 -env NCCL_HOSTID balora-a "$@" : -n 1 -env NCCL_HOSTID balora-b "$@"
}

compare() { # compare <one> <two> <label>
    python3 - "$1" "$2" "$3" <<'EOF'
import json, sys, hashlib, pathlib
a, b, label = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
def recs(d):
    out = []
    for line in (d / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out.append((r["kind"], r["step"], r.get("loss"), r.get("grad_norm")))
    return out
ra, rb = recs(a), recs(b)
same_keys = [(k, s) for k, s, *_ in ra] == [(k, s) for k, s, *_ in rb]
worst = 0.0
for x, y in zip(ra, rb):
    for u, v in zip(x[2:], y[2:]):
        if u is not None and v is not None:
            worst = max(worst, abs(u - v) / max(abs(u), 1e-30))
bits = ra == rb
ad = lambda d: hashlib.sha256((d / "adapter/adapter_model.safetensors").read_bytes()).hexdigest()
adapter = ad(a) == ad(b)
print(f"{label}: records {len(ra)} vs {len(rb)}, same steps {same_keys}, numbers bit-identical {bits}, "
      f"largest relative difference {worst:.3e}, adapter bytes identical {adapter}")
sys.exit(0 if same_keys and worst < 1e-4 else 1)
EOF
}

run() {
    OUT=${OUT:-/tmp/balora-out}
    W=/tmp/balora-ddp && rm -rf "$W" && mkdir -p "$W" "$OUT" /tmp/balora-lib
    nvidia-smi -L || true
    for w in "$ROOT"/.whl/*.whl; do
        if [ -e "$w" ]; then python3 -m zipfile -e "$w" /tmp/balora-wheels; fi
    done
    # NCCL and NVRTC from the image's (or the carried) pip packages.
    local site
    site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null || true)
    local libs
    libs=$(find /tmp/balora-wheels "$site" -path '*nvidia/*/lib' -type d 2>/dev/null | tr '\n' ':')
    local nccl
    nccl=$(find /tmp/balora-wheels "$site" -name 'libnccl.so.2' 2>/dev/null | head -1)
    if [ -n "$nccl" ]; then ln -sf "$nccl" /tmp/balora-lib/libnccl.so; fi
    export PATH=$G/bin:$PATH
    export LD_LIBRARY_PATH=/tmp/balora-lib:$G/lib:$libs${LD_LIBRARY_PATH:-}
    export UCX_MODULE_DIR=$G/lib/ucx
    # Loopback only: the "two hosts" are one machine with no other network.
    export NCCL_SOCKET_IFNAME=lo NCCL_IB_DISABLE=1 NCCL_DEBUG=${NCCL_DEBUG:-WARN}
    echo "NCCL: ${nccl:-none found}"
    python3 - >"$W/corpus.txt" <<'EOF'
words = ["the", "whale", "ship", "sea", "captain", "white", "water", "boat", "deck", "harpoon"]
print(" ".join(words[(i * 7 + i // 3) % len(words)] for i in range(1500)))
EOF

    echo "== 1. collective selftest, 2 ranks, NCCL, one GPU"
    if two_ranks balora-collective-selftest ok nccl 2>&1 | tee "$OUT/selftest.log" |
        grep -c '(nccl, local rank' | grep -qx 2; then
        pass "selftest: every operation on 2 NCCL ranks"
    else
        fail "selftest (see selftest.log)"
    fi

    echo "== 2. 20 steps: 1 process grad_accum=2 vs 2 ranks (nccl)"
    local t0 t1
    t0=$(date +%s%N)
    # shellcheck disable=SC2046
    balora $(job "$W/one" --set trainer.grad_accum=2) >"$OUT/one.log" 2>&1 ||
        fail "1 process (see one.log)"
    t1=$(date +%s%N)
    echo "1 process: $(((t1 - t0) / 1000000)) ms wall"
    for coll in nccl mpi; do
        t0=$(date +%s%N)
        # shellcheck disable=SC2046
        if two_ranks balora $(job "$W/two-$coll" --set "trainer.collective=\"$coll\"") \
            >"$OUT/two-$coll.log" 2>&1; then
            t1=$(date +%s%N)
            echo "2 ranks ($coll): $(((t1 - t0) / 1000000)) ms wall;" \
                "re-broadcasts: $(grep -c "re-sending rank 0's" "$OUT/two-$coll.log" || true)"
            grep -h "device of this rank\|NCCL communicator ready" "$OUT/two-$coll.log" || true
            if compare "$W/one" "$W/two-$coll" "2 ranks ($coll) vs 1 process"; then
                pass "2 ranks ($coll) equal 1 process with grad_accum=2"
            else
                fail "2 ranks ($coll) differ from 1 process"
            fi
        else
            fail "2 ranks ($coll) (see two-$coll.log)"
            tail -20 "$OUT/two-$coll.log"
        fi
    done
    cp "$W"/one/metrics.jsonl "$OUT/one-metrics.jsonl" 2>/dev/null || true
    cp "$W"/two-nccl/metrics.jsonl "$OUT/two-nccl-metrics.jsonl" 2>/dev/null || true
    [ $STATUS = 0 ] && echo "ALL PASSED" || echo "SOME FAILED"
    return $STATUS
}

case "${1:-}" in
prepare) prepare ;;
run) run ;;
*)
    echo "usage: $0 prepare|run" >&2
    exit 2
    ;;
esac
