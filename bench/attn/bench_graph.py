#!/usr/bin/env python3
"""bench_graph.py - decode attention replayed from a CUDA graph, next to the
same call made eagerly, through the Python binding on a real kvpoold.

    KVPOOL_BUILD=build-gpu python3 bench/attn/bench_graph.py [--reps 30]

A call captured into a graph is planned for its page table's capacity
(max_pages * page_size keys a sequence; kvclient.h, "CUDA graphs"), an
eager call for its actual lengths: where the table is much longer than the
sequences, the graph launches CTAs that find no keys.  For each shape
(Hq/kv_heads/D = 32/8/128, page 16) and table capacity this prints the
eager call's GPU time, the graph replay's and their ratio, and the host
time each takes to return (an eager call: the binding's checks, the
library's plan and its launches; a replay: one cudaGraphLaunch), the same
call run from a plan made once (Pool.plan_decode: only q and out checked
per call), and the host time of the library's kvc_decode alone, called through ctypes with the
argument struct the binding built (its checks, plan and launches).  GPU
times are the median of --reps runs between two CUDA events around one
call or one replay, the L2 cleaned before each by a streaming read of 256
MiB (as bench_decode.py's --flush read), behind a 300 us spin kernel so
that the host's time does not show in them.
"""
import argparse
import ctypes
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "client", "python"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))
import kvpool  # noqa: E402
from kvpool import _capi  # noqa: E402
from kvpoold_proc import Kvpoold  # noqa: E402

HEADS, DIM, PAGE, HQ = 8, 128, 16, 32
SPIN_CYCLES = 600_000  # about 300 us at the H200's clock
SHAPES = [  # (B, L, table capacity in keys)
    (1, 1024, 1024), (1, 1024, 32768), (1, 4096, 4096), (1, 4096, 32768),
    (8, 16384, 16384), (8, 16384, 32768), (32, 4096, 4096), (32, 4096, 32768),
    (128, 1024, 1024), (128, 1024, 8192),
]


def cuda_pools(dtypes, tokens):
    """One single-layer CUDA pool per dtype, holding tokens tokens."""
    pools = []
    for dt in dtypes:
        per_token = HEADS * DIM * 2 * (1 if dt.startswith("fp8") else 2)
        mib = (tokens * per_token * 9 // 8 >> 20) + 4
        pools.append({"name": dt, "dtype": dt, "layers": 1, "kv_heads": HEADS, "head_dim": DIM, "page_size": PAGE,
                      "capacity": f"{mib}MiB", "backend": "cuda", "device": 0})
    return pools


def timed(fn, flush, reps):
    """(GPU us, host us): the median GPU time between two events around
    one fn(), and the median host time fn() takes to return.  A 300 us spin
    kernel ahead of the flush keeps the GPU busy while the host issues the
    call, so the GPU time does not include the host's (as bench_decode.py
    --spin-us)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ts, hs = [], []
    for _ in range(reps):
        torch.cuda._sleep(SPIN_CYCLES)
        flush()
        start.record()
        t0 = time.perf_counter()
        fn()
        hs.append((time.perf_counter() - t0) * 1e6)
        end.record()
        end.synchronize()
        ts.append(start.elapsed_time(end) * 1000.0)
    ts.sort()
    hs.sort()
    return ts[len(ts) // 2], hs[len(hs) // 2]


def library_call(pool, call):
    """A function making the C call that call() makes through the binding,
    with the same argument struct and stream, and nothing of the binding."""
    seen = []
    real = pool._run
    pool._run = lambda name, args, stream, *rest: seen.append((name, args, stream)) or real(name, args, stream,
                                                                                            *rest)
    try:
        call()
    finally:
        del pool._run
    name, args, stream = seen[0]
    fn, h = getattr(_capi.lib, name), pool._h
    sh = kvpool.client._stream_handle(stream, pool.device)
    ref = ctypes.byref(args)

    def direct():
        if fn(h, ref, sh) != 0:
            sys.exit(f"bench_graph: {name} failed: {_capi.lib.kvc_errmsg(pool._client._h).decode()}")
    return direct


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--dtypes", default="bf16,fp8_e4m3")
    args = ap.parse_args()
    dtypes = args.dtypes.split(",")
    dev = torch.device("cuda", 0)
    most = max(b * l for b, l, _ in SHAPES)
    flush_buf = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    flush = lambda: flush_buf.view(torch.int64).sum()  # noqa: E731  a streaming read: clean, cold L2
    gen = torch.Generator(device=dev).manual_seed(3)
    print(f"# {torch.cuda.get_device_name(0)}; Hq/kv_heads/D = {HQ}/{HEADS}/{DIM}, page {PAGE}; "
          f"median of {args.reps}, L2 cleaned by a read before each; times in us")
    print("| B | L | table keys | dtype | eager us | graph us | graph / eager | eager host us | "
          "plan.run host us | library host us | replay host us |")
    print("| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        d = Kvpoold(tmp, cuda_pools(dtypes, most)).start()
        url = d.url
        try:
            printed_launch = False
            with kvpool.Client(url, name="bench-graph") as c:
                for dt in dtypes:
                    pool = c.attach(dt)
                    pages = pool.alloc(most // PAGE)
                    page_ids = torch.tensor(pages, dtype=torch.int32)
                    for t0 in range(0, most, 16384):  # every page written once: real codes, no NaN
                        n = min(16384, most - t0)
                        k = torch.randn((n, HEADS, DIM), generator=gen, device=dev).to(torch.bfloat16)
                        slots = torch.arange(t0, t0 + n, device=dev, dtype=torch.int64)
                        slots = page_ids.to(dev)[slots // PAGE].to(torch.int64) * PAGE + slots % PAGE
                        pool.write(0, k, k, slots)
                    for b, L, cap in SHAPES:
                        mp = cap // PAGE
                        table = torch.zeros((b, mp), dtype=torch.int32)
                        perm = page_ids[torch.randperm(len(page_ids))[: b * (L // PAGE)]].view(b, L // PAGE)
                        table[:, : L // PAGE] = perm
                        table = table.to(dev)
                        lens_h = torch.full((b,), L, dtype=torch.int32)
                        lens = lens_h.to(dev)
                        q = torch.randn((b, HQ, DIM), generator=gen, device=dev).to(torch.bfloat16)
                        out = torch.empty_like(q)
                        eager = lambda: pool.decode(0, q, out, table, lens, seq_lens_host=lens_h)  # noqa: E731
                        eager()
                        ref = out.clone()
                        g = torch.cuda.CUDAGraph()
                        with torch.cuda.graph(g):
                            pool.decode(0, q, out, table, lens, seq_lens_host=lens_h)
                        g.replay()
                        torch.cuda.synchronize()
                        err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
                        if err > 1e-2:
                            sys.exit(f"bench_graph: graph and eager outputs differ ({err:.3g}) at B={b} L={L}")
                        if not printed_launch:  # what one kernel launch costs the host, for scale
                            _, hz = timed(out.zero_, flush, args.reps)
                            print(f"# one PyTorch launch (out.zero_()) returns after {hz:.1f} us of host time")
                            printed_launch = True
                        te, he = timed(eager, flush, args.reps)
                        plan = pool.plan_decode(table, lens, seq_lens_host=lens_h)
                        _, hp = timed(lambda: plan.run(0, q, out), flush, args.reps)
                        _, hl = timed(library_call(pool, eager), flush, args.reps)
                        tg, hg = timed(g.replay, flush, args.reps)
                        print(f"| {b} | {L} | {cap} | {dt} | {te:.1f} | {tg:.1f} | {tg / te:.2f} | {he:.1f} | "
                              f"{hp:.1f} | {hl:.1f} | {hg:.1f} |")
                        del g
                    pool.free(pages)
                    pool.detach()
        finally:
            d.stop()


if __name__ == "__main__":
    main()
