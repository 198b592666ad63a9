#!/bin/sh
# device_build.sh OUTDIR - builds the attention kernels, their GPU test, the
# ctypes shim and the accuracy bench with nvcc/gcc directly, without meson,
# for a quick run on the device machine whatever state the rest of the tree's
# meson files are in (the meson build builds the same targets).  NVX adds
# nvcc flags (e.g. NVX=-DKVA_S8=6 for a deeper fp8 ring; see kv_attn_decode.cuh).
set -e
O=${1:-/tmp/attn-build}
R=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$O"
printf '#define KV_HAVE_CUDA 1\n' > "$O/kv_config.h"
INC="-I$R/kernels -I$R/client/include -I$O"
NV="nvcc -gencode=arch=compute_90,code=sm_90 -std=c++17 -O3 --expt-relaxed-constexpr -lineinfo -Xcompiler -fPIC $INC ${NVX:-}"
CC="gcc -std=gnu11 -O2 -fPIC -D_GNU_SOURCE $INC -I/usr/local/cuda/include"
# objects of an earlier build into the same OUTDIR must not stand in for
# ones that fail to compile now
rm -f "$O"/*.o "$O/libkvk.a" "$O/test_attn" "$O/libkvattn_shim.so" "$O/bench_attn_accuracy"
pids=""
for f in kv_layout kv_codec_names kv_ref_write kv_ref_attn; do $CC -c "$R/kernels/$f.c" -o "$O/$f.o" & pids="$pids $!"; done
for f in kv_cuda_common kv_write kv_gather kv_attn_extend kv_attn_prefill; do
        $NV -c "$R/kernels/$f.cu" -o "$O/$f.o" &
        pids="$pids $!"
done
$NV -Xptxas -v -c "$R/kernels/kv_attn_decode.cu" -o "$O/kv_attn_decode.o" 2> "$O/ptxas.txt"
# a bare wait ignores the background jobs' status: wait for each
for p in $pids; do wait "$p" || { echo "device_build.sh: a compile failed" >&2; exit 1; }; done
rm -f "$O/libkvk.a"
ar rcs "$O/libkvk.a" "$O"/kv_*.o
L="-L/usr/local/cuda/lib64 -lcudart -lm -lstdc++ -lpthread -ldl"
$CC "$R/tests/gpu/test_attn.c" "$O/libkvk.a" $L -o "$O/test_attn"
if [ -f "$R/bench/attn/attn_shim.cu" ]; then
        $NV -shared "$R/bench/attn/attn_shim.cu" "$O/libkvk.a" -o "$O/libkvattn_shim.so"
fi
if [ -f "$R/bench/attn/bench_attn_accuracy.c" ]; then
        $CC "$R/bench/attn/bench_attn_accuracy.c" "$O/libkvk.a" $L -o "$O/bench_attn_accuracy"
fi
echo "built into $O"
