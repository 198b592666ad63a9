#!/usr/bin/env bash
# cuda_demo.sh BUILD_DIR - the demo workers on CUDA pools, one per dtype, on a
# machine with a GPU: kvpoold exports each pool through a CUDA IPC handle; a
# writer process allocates, writes through the CUDA write kernel and publishes
# its pages; a second process opens the handle, looks the pages up by key,
# gathers them with the CUDA gather kernel and checks them bit for bit against
# the CPU reference (kvpool-demo-worker read).  Also kvpoolctl status, and a
# SIGKILLed writer's pages coming back.  Exit status 0 when all passed, 77
# (skip) without a CUDA device.  Registered in the meson suite 'gpu'.
set -euo pipefail
if ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
        echo "no CUDA device: skipped"
        exit 77
fi
build=$(cd "${1:?usage: cuda_demo.sh BUILD_DIR}" && pwd)
run=$(mktemp -d /tmp/kvpool-cuda-demo.XXXXXX)
sock=ipc://$run/kvpool.sock
worker=$build/client/kvpool-demo-worker
ctl=$build/client/kvpoolctl
pid=
cleanup() {
        [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
        rm -rf "$run"
}
trap cleanup EXIT

args=()
for dt in bf16 fp16 fp8_e4m3 fp8_e5m2 fp4_e2m1; do
        args+=(--pool "name=$dt,dtype=$dt,layers=4,kv_heads=8,head_dim=128,page_size=16,capacity=64MiB,backend=cuda,device=0")
done
"$build/daemon/kvpoold" --socket "$sock" --events none --metrics none "${args[@]}" &
pid=$!
for _ in $(seq 100); do "$ctl" --socket "$sock" status >/dev/null 2>&1 && break; sleep 0.1; done

fail=0
for dt in bf16 fp16 fp8_e4m3 fp8_e5m2 fp4_e2m1; do
        echo "== $dt"
        mkfifo "$run/in.$dt"
        "$worker" write --socket "$sock" --pool "$dt" --pages 8 --tag 42 <"$run/in.$dt" >"$run/w.$dt" 2>&1 &
        wpid=$!
        exec 3>"$run/in.$dt"
        for _ in $(seq 100); do grep -q holding "$run/w.$dt" && break; sleep 0.1; done
        cat "$run/w.$dt"
        "$worker" read --socket "$sock" --pool "$dt" --pages 8 --tag 42 || fail=1
        exec 3>&-
        wait "$wpid" || fail=1
        # Again after the writer is gone: the pages stay cached.
        "$worker" read --socket "$sock" --pool "$dt" --pages 8 --tag 42 || fail=1
done
"$ctl" --socket "$sock" status

echo "== a SIGKILLed writer's pages come back"
held_before=$("$ctl" --socket "$sock" status --json | python3 -c 'import json,sys; print(sum(p["pages_held"] for p in json.load(sys.stdin)["pools"]))')
# stdin from a fifo held open here (no helper process may keep this
# script's output pipe open after it exits).
mkfifo "$run/kin"
"$worker" write --socket "$sock" --pool fp8_e4m3 --pages 8 --tag 7 <"$run/kin" >"$run/k" 2>&1 &
kpid=$!
exec 4>"$run/kin"
for _ in $(seq 100); do grep -q holding "$run/k" && break; sleep 0.1; done
kill -KILL "$kpid"
wait "$kpid" 2>/dev/null || true
exec 4>&-
sleep 1
held_after=$("$ctl" --socket "$sock" status --json | python3 -c 'import json,sys; print(sum(p["pages_held"] for p in json.load(sys.stdin)["pools"]))')
echo "pages held before $held_before, 1 s after the kill $held_after"
[ "$held_after" = "$held_before" ] || fail=1
"$worker" read --socket "$sock" --pool fp8_e4m3 --pages 8 --tag 7 || fail=1

echo "== result: $([ $fail = 0 ] && echo PASS || echo FAIL)"
exit $fail
