#!/bin/sh
# gpu-ab.sh OLD_TREE [bench_decode.py ARGS...] - one device call comparing
# the attention kernels of this tree with those of another commit, side by
# side: builds both with bench/attn/device_build.sh (this tree into /tmp/N,
# OLD_TREE into /tmp/O, in parallel), runs test_attn and sdpa_check on the
# new build, then ROUNDS (default 2) rounds of bench_decode.py with ARGS on
# the old and the new build in turn.  OLD_TREE is a copy of the other
# commit's kernels, bench/attn, tests/gpu and client/include, made before
# the call in a folder git does not ignore (so that it travels to the
# device machine), e.g.:
#   mkdir ab-old && git archive b50c977 kernels bench/attn tests/gpu client/include | tar -x -C ab-old
#   source .device/env.sh && sh bench/attn/gpu-ab.sh ab-old --shapes 32x4096,128x4096 --flush read
set -u
[ $# -ge 1 ] && [ -f "$1/bench/attn/device_build.sh" ] || {
        echo "usage: gpu-ab.sh OLD_TREE [bench_decode.py args] (OLD_TREE holds the other commit's bench/attn)" >&2
        exit 2
}
OLD=$1
shift
R=$(cd "$(dirname "$0")/../.." && pwd)
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,clocks.mem --format=csv 2>&1
(sh "$R/bench/attn/device_build.sh" /tmp/N >/tmp/ab-build-new.txt 2>&1 || echo "new build failed") &
(sh "$OLD/bench/attn/device_build.sh" /tmp/O >/tmp/ab-build-old.txt 2>&1 || echo "old build failed") &
wait
[ -x /tmp/N/test_attn ] && [ -f /tmp/O/libkvattn_shim.so ] || { tail -20 /tmp/ab-build-new.txt /tmp/ab-build-old.txt; exit 1; }
echo "test_attn (new): $(/tmp/N/test_attn 2>&1 | tail -n 1)"
echo "sdpa_check (new): $(python3 "$R/tests/gpu/sdpa_check.py" --lib /tmp/N/libkvattn_shim.so 2>&1 | tail -n 1)"
r=1
while [ "$r" -le "${ROUNDS:-2}" ]; do
        for v in O N; do
                echo "== $([ $v = O ] && echo "old ($OLD)" || echo new), round $r"
                python3 "$R/bench/attn/bench_decode.py" --lib /tmp/$v/libkvattn_shim.so --reps 15 "$@" 2>&1
        done
        r=$((r + 1))
done
