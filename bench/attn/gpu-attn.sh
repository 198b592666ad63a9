#!/bin/sh
# gpu-attn.sh [VARIANT_NVX...] - one device call for the attention kernels,
# without meson: builds them (bench/attn/device_build.sh) into /tmp/A, runs
# the GPU test (tests/gpu/test_attn.c: every dtype and head_dim against the
# CPU reference), the SDPA cross-check and the full decode benchmark grid;
# then, for each argument (nvcc flags such as "-DKVA_S8=6"), builds that
# variant into /tmp/V<n> and runs the --quick grid with it.  Logs in $OUT
# (at most 8 files come back from the device: variants print to stdout).
# MAIN_ARGS / VAR_ARGS: bench_decode.py arguments for the main build (default
# the full grid) and for the variants (default --quick), e.g.
# VAR_ARGS="--shapes 32x4096,128x1024 --dtypes bf16,fp8_e5m2" for an A/B of
# chosen shapes in one run.
#   source .device/env.sh && sh bench/attn/gpu-attn.sh "-DKVA_S16=4"
set -u
OUT=${OUT:-/tmp/gpu-attn-out}
mkdir -p "$OUT"
R=$(cd "$(dirname "$0")/../.." && pwd)
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,clocks.mem --format=csv 2>&1
sh "$R/bench/attn/device_build.sh" /tmp/A >"$OUT/build.txt" 2>&1 || { tail -30 "$OUT/build.txt"; exit 1; }
grep -A2 "attn_kernel" /tmp/A/ptxas.txt | grep -E "Compiling|Used|spill" >"$OUT/ptxas.txt"
if command -v cuobjdump >/dev/null; then
        sh "$R/bench/attn/sass_summary.sh" /tmp/A/kv_attn_decode.o >"$OUT/sass-summary.txt" 2>&1
        # the fp4 and fp8 e4m3 kernels at D = 128, bf16 q: whole SASS
        cuobjdump --dump-sass -fun '_ZN3kva11attn_kernelILi4ELi128ELb0EEEvNS_6paramsE' /tmp/A/kv_attn_decode.o \
                >"$OUT/sass-fp4.txt" 2>&1
        cuobjdump --dump-sass -fun '_ZN3kva11attn_kernelILi2ELi128ELb0EEEvNS_6paramsE' /tmp/A/kv_attn_decode.o \
                >>"$OUT/sass-fp4.txt" 2>&1
fi
/tmp/A/test_attn >"$OUT/test_attn.txt" 2>&1
t1="test_attn rc $?: $(tail -n 1 "$OUT/test_attn.txt")"
python3 "$R/tests/gpu/sdpa_check.py" --lib /tmp/A/libkvattn_shim.so >"$OUT/sdpa_check.txt" 2>&1
t2="sdpa_check rc $?: $(tail -n 1 "$OUT/sdpa_check.txt")"
echo "$t1"; echo "$t2"
python3 "$R/bench/attn/bench_decode.py" --lib /tmp/A/libkvattn_shim.so --reps 15 ${MAIN_ARGS:-} >"$OUT/bench.txt" 2>&1
cat "$OUT/bench.txt"
n=0
for v in "$@"; do
        n=$((n + 1))
        NVX="$v" sh "$R/bench/attn/device_build.sh" /tmp/V$n >/tmp/build-v$n.txt 2>&1 || { echo "variant $v: build failed"; tail /tmp/build-v$n.txt; continue; }
        echo "== variant $n: $v"
        echo "test_attn: $(/tmp/V$n/test_attn 2>&1 | tail -n 1)"
        python3 "$R/bench/attn/bench_decode.py" --lib /tmp/V$n/libkvattn_shim.so --reps 15 ${VAR_ARGS:---quick} 2>&1 | tail -n 40
done
echo "$t1"; echo "$t2"
