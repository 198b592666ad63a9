#!/bin/sh
# gpu-profile.sh BUILD - what holds the fp8 decode kernel under 1.8x SDPA at
# the mid shapes, and why fp8_e4m3 runs slower than e5m2 on some GPUs: one
# device call, after a meson build in BUILD (e.g. build-gpu), from the
# repository root:
#
#   source .device/env.sh && sh bench/attn/gpu-profile.sh build-gpu
#
# 1. Nsight Compute (clocks not locked: --clock-control none) on the
#    attention kernel of one bench_decode.py call per (dtype, shape), on
#    every GPU of the machine: time, SM clock, DRAM throughput, issue
#    activity and the warp-stall breakdown (ncu-<gpu>.txt);
# 2. the fp8 rows of the decode benchmark on every GPU at once
#    (bench_decode_multi.py) while nvidia-smi logs each GPU's SM clock,
#    power and throttle reasons every 100 ms (smi.csv).
# Logs go to $OUT (default /tmp/gpu-profile-out).  PROFILE_SHAPES and
# PROFILE_DTYPES (space-separated) choose what step 1 profiles.
set -u
B=${1:?usage: gpu-profile.sh BUILD}
OUT=${OUT:-/tmp/gpu-profile-out}
mkdir -p "$OUT"
R=$(cd "$(dirname "$0")/../.." && pwd)
LIB=$(cd "$B" && pwd)/bench/attn/libkvattn_shim.so
[ -f "$LIB" ] || { echo "gpu-profile.sh: no $LIB (build the gpu build first)"; exit 1; }
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -n 1)
SHAPES=${PROFILE_SHAPES:-32x4096 128x32768}
DTYPES=${PROFILE_DTYPES:-fp8_e4m3 fp8_e5m2}
METRICS=gpu__time_duration.sum,sm__cycles_elapsed.avg.per_second,dram__cycles_elapsed.avg.per_second,\
dram__throughput.avg.pct_of_peak_sustained_elapsed,dram__bytes_read.sum,\
smsp__issue_active.avg.pct_of_peak_sustained_active,smsp__inst_executed.sum,sm__warps_active.avg.pct_of_peak_sustained_active,\
smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio,\
smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio,\
smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio,\
smsp__average_warps_issue_stalled_wait_per_issue_active.ratio,\
smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio,\
smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio,\
smsp__average_warps_issue_stalled_lg_throttle_per_issue_active.ratio,\
smsp__average_warps_issue_stalled_not_selected_per_issue_active.ratio,\
smsp__average_warps_issue_stalled_selected_per_issue_active.ratio,\
smsp__average_warps_issue_stalled_dispatch_stall_per_issue_active.ratio,\
smsp__average_warps_issue_stalled_no_instruction_per_issue_active.ratio,\
smsp__average_warps_issue_stalled_branch_resolving_per_issue_active.ratio,\
smsp__average_warps_issue_stalled_tex_throttle_per_issue_active.ratio,\
smsp__average_warps_issue_stalled_misc_per_issue_active.ratio

# PROFILE_GPUS=N: profile on GPUs 0..N-1 only (default: all)
ngpu=${PROFILE_GPUS:-$(nvidia-smi -L | grep -c '^GPU ')}
if [ -n "$NCU" ]; then
        g=0
        while [ "$g" -lt "$ngpu" ]; do
                for s in $SHAPES; do
                        for d in $DTYPES; do
                                echo "== GPU $g, $s, $d"
                                # the third attn_kernel launch of the
                                # process: the last warm-up call of
                                # bench_decode.py's Timer (attn_reduce, run
                                # after it at split shapes, is not timed)
                                CUDA_VISIBLE_DEVICES=$g "$NCU" --clock-control none -k regex:attn_kernel \
                                        --launch-skip 2 --launch-count 1 --metrics "$METRICS" \
                                        python3 "$R/bench/attn/bench_decode.py" --lib "$LIB" --shapes "$s" \
                                        --dtypes "$d" --reps 3 --spin-us 0 2>&1 |
                                        grep -E "attn_kernel|^ +[a-z_]+__|^ +gpu__|^ +sm__|^ +dram__|ERR|error" |
                                        sed 's/^ *//'
                        done
                done >"$OUT/ncu-$g.txt" 2>&1
                g=$((g + 1))
        done
else
        echo "no ncu on this machine: step 1 skipped" | tee "$OUT/ncu-none.txt"
fi

# PROFILE_MULTI=0: step 1 only
[ "${PROFILE_MULTI:-1}" = 0 ] && exit 0
nvidia-smi --query-gpu=timestamp,index,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
        --format=csv -lms 100 >"$OUT/smi.csv" 2>&1 &
smi=$!
python3 "$R/bench/attn/bench_decode_multi.py" --lib "$LIB" --reps 15 --shapes 128x32768,32x4096,128x1024 \
        --dtypes bf16,fp8_e4m3,fp8_e5m2 >"$OUT/multi-fp8.txt" 2>&1
kill $smi
cat "$OUT/multi-fp8.txt"
# per GPU: mean SM clock and power over the samples with power above 300 W
# (the kernels running), and the throttle reasons seen
awk -F', ' 'NR > 1 && $5 + 0 > 300 { n[$2]++; c[$2] += $3 + 0; p[$2] += $5 + 0; t[$2 " " $7]++ }
        END { for (g in n) printf "GPU %s: %d busy samples, mean SM clock %.0f MHz, mean power %.0f W\n", g, n[g], c[g] / n[g], p[g] / n[g];
              for (k in t) printf "  GPU/throttle %s: %d samples\n", k, t[k] }' "$OUT/smi.csv"
