#!/usr/bin/env python3
"""bench_extend.py - extend attention (chunked prefill: N new query tokens
per sequence over P cached keys plus themselves, causal) over the quantized
pool against PyTorch's scaled_dot_product_attention on dense bf16 K/V (f16 with
--q f16) with a lower-right causal mask, in one process.

    python3 bench/attn/bench_extend.py [--lib PATH[,PATH...]] [--reps N] [--shapes BxPxN,...]

The library and the timer are bench_decode.py's (libkvattn_shim.so, median
of --reps CUDA-event timings, L2 made cold before each run).  Shapes:
Hq/kv_heads/D = 32/8/128 (--heads), page 16, B sequences of P cached keys
and N new tokens each (P + N a multiple of 16); the pool holds all P + N
keys of every sequence, as after the worker's write of the new tokens.
Columns: time, the attention's useful work in TFLOP/s (4 * D flops per
query head and key it sees), the K/V bytes of the pool over the time (each
byte counted once, though every query row reads its keys), and the ratio
to SDPA's time.  SDPA is given q [B, Hq, N, D] and K/V [B, kv, P+N, D]
(enable_gqa), the mask torch.nn.attention.bias.causal_lower_right(N, P+N):
what a dense-cache engine would run for the same step (--no-sdpa leaves it
out).  Several libraries (--lib A,B: e.g. two builds of the kernels with
different switches) run in the same process, each shape and dtype timed on
each in turn, their rows labelled dtype@index.  --kernel tiled,decode times
every row with each kernel forced (kv_cuda_extend_kernel; auto is the
launcher's choice), rows labelled dtype/kernel unless it is only auto.
"""
import argparse
import ctypes
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_decode import DTYPES, ELEM_BF16, ELEM_F16, Timer, find_lib, load, parse_heads  # noqa: E402

SHAPES = "1x4096x16,1x4096x128,1x4096x512,1x4096x2048,8x4096x128,8x4096x512,4x16384x512,32x1024x64"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", help="libkvattn_shim.so, or several comma-separated (rows dtype@index)")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--shapes", default=SHAPES, help="comma-separated BxPxN list (default %(default)s)")
    ap.add_argument("--dtypes", default="bf16,fp8_e4m3,fp4_e2m1", help="comma-separated pool dtypes")
    ap.add_argument("--flush", choices=["memset", "read"], default="read")
    ap.add_argument("--spin-us", type=float, default=300)
    ap.add_argument("--heads", default="32/8", help="HQ/KV (default %(default)s)")
    ap.add_argument("--q", choices=["bf16", "f16"], default="bf16",
                    help="q/out type (f16 over a bf16 or fp4 pool takes the two-term q kernels)")
    ap.add_argument("--no-sdpa", action="store_true", help="time the library only")
    ap.add_argument("--kernel", default="auto",
                    help="comma-separated: auto (the launcher's choice), tiled, decode (default %(default)s)")
    args = ap.parse_args()
    kmodes = {"auto": 0, "tiled": 1, "decode": 2}
    kernels = args.kernel.split(",")
    if not kernels or any(k not in kmodes for k in kernels) or len(set(kernels)) != len(kernels):
        sys.exit("--kernel: want auto, tiled or decode, comma-separated, each once, got %r" % args.kernel)
    paths = args.lib.split(",") if args.lib else []
    for a in paths:
        # find_lib falls back to a default build; a typo in a side-by-side
        # run must not time that build under another library's label
        if len(paths) > 1 and not os.path.exists(a):
            sys.exit("--lib: %r does not exist" % a)
    libs = [load(find_lib(a)) for a in paths] if paths else [load(find_lib(None))]
    u64, i32, f32, p = ctypes.c_uint64, ctypes.c_int, ctypes.c_float, ctypes.c_void_p
    for lib in libs:
        if kernels != ["auto"] and not hasattr(lib, "shim_extend_kernel"):
            sys.exit("--kernel: this libkvattn_shim.so has no shim_extend_kernel (a build before it)")
        lib.shim_extend.argtypes = [p, i32, u64, u64, i32, u64, ctypes.POINTER(ctypes.c_int32), u64, i32, u64,
                                    ctypes.POINTER(ctypes.c_int32), i32, i32, f32, u64]
    Hq, H = parse_heads(args.heads)
    try:
        shapes = [tuple(int(x) for x in sh.split("x")) for sh in args.shapes.split(",")]
    except ValueError:
        sys.exit("--shapes: want BxPxN items, got %r" % args.shapes)
    for B, P, N in shapes:
        if B < 1 or N < 1 or P < 0 or (P + N) % 16:
            sys.exit("--shapes: %dx%dx%d: want B >= 1, N >= 1, P >= 0 and P + N a multiple of 16" % (B, P, N))
    want = args.dtypes.split(",")
    dtypes = [d for d in DTYPES if d[0] in want]
    if len(dtypes) != len(want):
        sys.exit("--dtypes: unknown dtype in %s (known: %s)" % (args.dtypes, ", ".join(d[0] for d in DTYPES)))
    try:
        from torch.nn.attention.bias import causal_lower_right
    except ImportError:
        sys.exit("bench_extend: this torch (%s) has no torch.nn.attention.bias.causal_lower_right" % torch.__version__)

    torch.manual_seed(0)
    elem = ELEM_BF16 if args.q == "bf16" else ELEM_F16
    D, ps = 128, 16
    stream = torch.cuda.current_stream().cuda_stream
    timer = Timer(args.reps, args.flush, libs[0], args.spin_us)
    max_pages = max(B * (P + N) // ps for B, P, N in shapes)
    pools = {}
    for li, lib in enumerate(libs):
        for name, dt, _ in dtypes:
            pool = lib.shim_pool_new(dt, 1, H, D, ps, max_pages, 0)
            if not pool or lib.shim_fill_random(pool, 1234):
                sys.exit("pool %s: %s" % (name, lib.shim_errmsg().decode()))
            pools[(li, name)] = pool

    dev = torch.cuda.get_device_properties(0)
    print("device: %s, %d SMs; torch %s" % (dev.name, dev.multi_processor_count, torch.__version__))
    print("Hq/kv/D = %d/%d/%d, page %d, %s q/out (SDPA: %s K/V), median of %d runs, cold L2 (flush: %s)"
          % (Hq, H, D, ps, args.q, args.q, args.reps, args.flush))
    print()
    hdr = "%4s %6s %5s %-18s %9s %7s %7s %8s" % ("B", "P", "N", "kv", "time_us", "TFLOP/s", "KV TB/s", "vs_sdpa")
    print(hdr)
    print("-" * len(hdr))
    sys.stdout.flush()

    for B, P, N in shapes:
        L = P + N
        seen = B * Hq * (N * P + N * (N + 1) // 2)   # (query head, key) pairs
        flops = 4.0 * D * seen
        qt = torch.bfloat16 if args.q == "bf16" else torch.float16
        q = torch.randn(B * N, Hq, D, dtype=qt, device="cuda")
        t_sdpa = None
        if not args.no_sdpa:
            k = torch.randn(B, H, L, D, dtype=qt, device="cuda")
            v = torch.randn(B, H, L, D, dtype=qt, device="cuda")
            q4 = q.view(B, N, Hq, D).transpose(1, 2)
            mask = causal_lower_right(N, L)
            try:
                F.scaled_dot_product_attention(q4, k, v, attn_mask=mask, enable_gqa=True)
                sdpa = lambda: F.scaled_dot_product_attention(q4, k, v, attn_mask=mask, enable_gqa=True)  # noqa: E731
                how = "gqa"
            except (TypeError, RuntimeError):
                k, v = k.repeat_interleave(Hq // H, 1), v.repeat_interleave(Hq // H, 1)
                sdpa = lambda: F.scaled_dot_product_attention(q4, k, v, attn_mask=mask)  # noqa: E731
                how = "rep"
            t_sdpa = timer.median_us(sdpa)
            print("%4d %6d %5d %-18s %9.1f %7.1f %7.2f %8s" % (B, P, N, "sdpa-" + how, t_sdpa, flops / t_sdpa / 1e6,
                                                             2 * B * H * L * D * 2 / t_sdpa / 1e6, "1.000x"))
            del k, v
        pages = B * L // ps
        pt = torch.randperm(pages, device="cuda").to(torch.int32).view(B, L // ps)
        lens = torch.full((B,), L, dtype=torch.int32, device="cuda")
        lens_host = (ctypes.c_int32 * B)(*([L] * B))
        ind = [i * N for i in range(B + 1)]
        indptr = torch.tensor(ind, dtype=torch.int32, device="cuda")
        ind_host = (ctypes.c_int32 * (B + 1))(*ind)
        out = torch.empty(B * N, Hq, D, dtype=qt, device="cuda")
        for (name, _, bits), li, km in ((d, li, km) for d in dtypes for li in range(len(libs)) for km in kernels):
            lib, pool = libs[li], pools[(li, name)]
            label = name if len(libs) == 1 else "%s@%d" % (name, li)
            if kernels != ["auto"]:
                label += "/" + km
                if lib.shim_extend_kernel(kmodes[km]) < 0:
                    sys.exit("shim_extend_kernel(%s) failed" % km)

            def run():
                r = lib.shim_extend(pool, 0, q.data_ptr(), out.data_ptr(), elem, indptr.data_ptr(), ind_host,
                                    pt.data_ptr(), L // ps, lens.data_ptr(), lens_host, B, Hq, D ** -0.5, stream)
                if r:
                    raise RuntimeError("shim_extend: %d %s" % (r, lib.shim_errmsg().decode()))
            out.fill_(float("nan"))  # a library that writes nothing must not pass on the last one's output
            t = timer.median_us(run)
            if torch.isnan(out.float()).any():
                sys.exit("NaN in the output of %s" % label)
            kv = B * L * H * D * bits // 8 * 2 + (B * L * H * (D // 16) * 2 if bits == 4 else 0)
            ratio = "%7.3fx" % (t_sdpa / t) if t_sdpa else "%8s" % "-"
            print("%4d %6d %5d %-18s %9.1f %7.1f %7.2f %s" % (B, P, N, label, t, flops / t / 1e6, kv / t / 1e6,
                                                             ratio))
            sys.stdout.flush()
        del pt, lens, indptr, out, q
        torch.cuda.empty_cache()
    for (li, _), pool in pools.items():
        libs[li].shim_pool_free(pool)


if __name__ == "__main__":
    main()
