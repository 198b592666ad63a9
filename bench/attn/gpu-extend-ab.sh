#!/bin/sh
# gpu-extend-ab.sh [VARIANT_NVX...] - one device call that compares extend
# (tiled prefill) kernel variants side by side: builds this tree
# (bench/attn/device_build.sh) into /tmp/A and each variant (nvcc flags such
# as "-DKVA_PBAR=0") into /tmp/V1, /tmp/V2, ... in parallel; runs test_attn
# on every build at once (correctness only: they share the GPU); then ROUNDS
# (default 1) rounds of bench_extend.py on A and each variant in turn, and A
# once more at the end, so that drift shows.  EXT_ARGS: bench_extend.py
# arguments (default four shapes, bf16, fp8 e4m3 and fp4).  Logs under
# $OUT (builds and tests); the tables go to stdout.  Exits 1 if a build or
# a test failed (the benchmark still runs on the builds that exist).
#   source .device/env.sh && sh bench/attn/gpu-extend-ab.sh "-DKVA_PBAR=0" "-DKVA_KT64=1"
set -u
OUT=${OUT:-/tmp/gpu-extend-out}
mkdir -p "$OUT"
R=$(cd "$(dirname "$0")/../.." && pwd)
ARGS=${EXT_ARGS:---reps 8 --shapes 1x4096x512,8x4096x512,4x16384x512,32x1024x64}
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,clocks.mem --format=csv 2>&1
# a warm machine keeps /tmp: nothing of an earlier call may pass for this one's
rm -rf /tmp/A /tmp/V[0-9]* /tmp/test-*.txt
status=0
(sh "$R/bench/attn/device_build.sh" /tmp/A >"$OUT/build-A.txt" 2>&1 || echo "A: build failed") &
n=0
for v in "$@"; do
        n=$((n + 1))
        (NVX="$v" sh "$R/bench/attn/device_build.sh" /tmp/V$n >"$OUT/build-V$n.txt" 2>&1 || echo "V$n: build failed") &
done
wait
builds="A"
n=0
for v in "$@"; do n=$((n + 1)); builds="$builds V$n"; done
for b in $builds; do
        [ -x /tmp/$b/test_attn ] && (/tmp/$b/test_attn >/tmp/test-$b.txt 2>&1; echo "rc $?" >>/tmp/test-$b.txt) &
done
wait
for b in $builds; do
        if [ ! -f /tmp/test-$b.txt ]; then
                echo "$b: no build"
                status=1
                continue
        fi
        echo "$b test_attn: $(tail -n 2 /tmp/test-$b.txt | tr '\n' ' ')"
        tail -n 5 /tmp/test-$b.txt >>"$OUT/tests.txt"
        [ "$(tail -n 1 /tmp/test-$b.txt)" = "rc 0" ] || status=1
done
r=1
while [ "$r" -le "${ROUNDS:-1}" ]; do
        n=0
        echo "== A (this tree), round $r"
        [ -f /tmp/A/libkvattn_shim.so ] && python3 "$R/bench/attn/bench_extend.py" --lib /tmp/A/libkvattn_shim.so $ARGS 2>&1
        for v in "$@"; do
                n=$((n + 1))
                echo "== V$n ($v), round $r"
                [ -f /tmp/V$n/libkvattn_shim.so ] && python3 "$R/bench/attn/bench_extend.py" --lib /tmp/V$n/libkvattn_shim.so $ARGS 2>&1
        done
        r=$((r + 1))
done
echo "== A (this tree), again"
[ -f /tmp/A/libkvattn_shim.so ] && python3 "$R/bench/attn/bench_extend.py" --lib /tmp/A/libkvattn_shim.so $ARGS 2>&1
exit $status
