#!/usr/bin/env python3
"""bench_decode.py - paged decode attention over the quantized pool against
PyTorch's scaled_dot_product_attention on dense bf16 K/V, in one process.

    python3 bench/attn/bench_decode.py [--lib PATH] [--reps N] [--quick]

The library is libkvattn_shim.so (bench/attn/attn_shim.cu): found through
--lib, else $KVPOOL_BUILD/bench/attn/, else /tmp/attn-build (what
bench/attn/device_build.sh builds).  Shapes: Hq/kv_heads/D = 32/8/128, page
16, B in {1, 8, 32, 128}, L in {1k, 4k, 16k, 32k}, every pool dtype, bf16 q
and out.  Each time is the median of --reps runs timed with CUDA events, the
L2 flushed before every run (--flush memset, the default: a memset of 4x its
size; --flush read: a streaming read of it, see Timer), after a GPU spin of
--spin-us (300 by default) so that no host dispatch time is timed.
Effective bandwidth = (K/V bytes + fp4 scales + q + out) / time, next to a
streaming-read bandwidth (16-byte loads over 8 GiB) measured in the same
run.  The pools (one per dtype, sized for the largest shape) are allocated
once, first, and kept, as kvpoold does: the default grid holds 52.5 GiB of
pools, with 16 GiB of SDPA K/V and the 8 GiB probe on top (about 77 GiB).
The page table is a random permutation of the first B*L/16 pages (--pages
seq: those pages in order, to see what the random placement costs).  With
--floor the first dtype of each element width (bf16, fp8_e4m3 or the first
fp8 asked for, fp4) is followed by a "read" row: one streaming read of
exactly that width's K/V bytes (the same kernel as the 8 GiB probe, same
flush and timer), what a single kernel that only reads those bytes takes
at that size, launch and ramp included; its vs_sdpa column is the most any
decode of those bytes could show against SDPA in this run.
"""
import argparse
import ctypes
import os
import random
import statistics
import sys
import time

import torch
import torch.nn.functional as F

DTYPES = [("bf16", 0, 16), ("fp16", 1, 16), ("fp8_e4m3", 2, 8), ("fp8_e5m2", 3, 8), ("fp4_e2m1", 4, 4)]
ELEM_BF16 = 1
ELEM_F16 = 2  # enum kvc_elem


def find_lib(arg):
    cands = []
    if arg:
        cands.append(arg)
    if os.environ.get("KVPOOL_BUILD"):
        cands.append(os.path.join(os.environ["KVPOOL_BUILD"], "bench", "attn", "libkvattn_shim.so"))
    cands.append("/tmp/attn-build/libkvattn_shim.so")
    for c in cands:
        if os.path.exists(c):
            return c
    sys.exit("bench_decode: libkvattn_shim.so not found (tried %s)" % ", ".join(cands))


def load(path):
    lib = ctypes.CDLL(path)
    u64, i32, f32, p = ctypes.c_uint64, ctypes.c_int, ctypes.c_float, ctypes.c_void_p
    lib.shim_pool_new.restype = p
    lib.shim_pool_new.argtypes = [i32] * 7
    lib.shim_pool_free.argtypes = [p]
    lib.shim_fill_random.argtypes = [p, u64]
    lib.shim_errmsg.restype = ctypes.c_char_p
    lib.shim_stream_read.argtypes = [u64, u64, u64, u64]
    lib.shim_spin.argtypes = [u64, u64]
    if hasattr(lib, "shim_decode_warps"):  # not in shims built before 2026-11-30
        lib.shim_decode_warps.argtypes = [i32]
    lib.shim_decode.argtypes = [p, i32, u64, u64, i32, u64, i32, u64, ctypes.POINTER(ctypes.c_int32), i32, i32,
                                f32, u64]
    return lib


def parse_heads(text):
    """--heads HQ/KV -> (Hq, kv heads), or exit with what was wrong."""
    try:
        Hq, H = (int(x) for x in text.split("/"))
    except ValueError:
        sys.exit("--heads: want HQ/KV (e.g. 32/8), got %r" % text)
    if H < 1 or Hq < H or Hq % H:
        sys.exit("--heads %s: the query heads must be a positive multiple of the kv heads" % text)
    return Hq, H


class Barrier:
    """Lines up the timed measurements of several bench_decode.py processes
    (bench_decode_multi.py starts one per GPU): before each measurement, rank
    r creates DIR/<n>.<r> and waits until all ranks' files of step n exist,
    so every median is taken while the other GPUs run the same shape.  Every
    rank runs the same sequence of measurements (same arguments).  A rank
    that fails cannot arrive: the driver then creates DIR/abort, on which the
    others exit at once (and, without a driver, after timeout_s).  A world
    of 1 (the default) does nothing."""

    def __init__(self, path, rank, world, timeout_s=120):
        self.path, self.rank, self.world, self.timeout_s = path, rank, world, timeout_s
        self.step = 0

    def wait(self):
        if self.world <= 1:
            return
        n = self.step
        self.step += 1
        open(os.path.join(self.path, "%d.%d" % (n, self.rank)), "w").close()
        t0 = time.monotonic()
        while not all(os.path.exists(os.path.join(self.path, "%d.%d" % (n, r))) for r in range(self.world)):
            if os.path.exists(os.path.join(self.path, "abort")):
                sys.exit("bench_decode: rank %d: another rank failed (%s/abort)" % (self.rank, self.path))
            if time.monotonic() - t0 > self.timeout_s:
                sys.exit("bench_decode: rank %d: the other ranks did not reach measurement %d within %d s"
                         % (self.rank, n, self.timeout_s))
            time.sleep(0.0002)


class Timer:
    """Median of reps CUDA-event timings of fn, L2 flushed before each.

    flush "memset": a memset of 4x the L2 (the usual way; it leaves the L2
    full of dirty lines, whose write-back to HBM then runs during the timed
    call, up to ~60 MB of extra HBM traffic); "read": a streaming read of the
    same buffer (the L2 ends full of clean lines of other data: just as cold
    for the timed call, without the write-back)."""

    def __init__(self, reps, flush="memset", lib=None, spin_us=0, barrier=None):
        self.reps = reps
        self.barrier = barrier
        self.mode = flush
        self.lib = lib
        self.spin_ns = int(spin_us * 1000)
        l2 = torch.cuda.get_device_properties(0).L2_cache_size
        self.flush = torch.zeros(4 * l2, dtype=torch.uint8, device="cuda")
        self.sink = torch.zeros(1, dtype=torch.int32, device="cuda")

    def cold(self):
        if self.mode == "read":
            self.lib.shim_stream_read(self.flush.data_ptr(), self.flush.numel(), self.sink.data_ptr(),
                                      torch.cuda.current_stream().cuda_stream)
        else:
            self.flush.zero_()

    def median_us(self, fn):
        if self.barrier:
            self.barrier.wait()
        for _ in range(3):
            fn()
        times = []
        for _ in range(self.reps):
            if self.spin_ns:
                self.lib.shim_spin(self.spin_ns, torch.cuda.current_stream().cuda_stream)
            self.cold()
            a = torch.cuda.Event(enable_timing=True)
            b = torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) * 1e3)
        return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="B in {1, 32}, L in {4k, 32k}")
    ap.add_argument("--shapes", help="comma-separated BxL list (e.g. 32x4096,128x1024) instead of the grid")
    ap.add_argument("--dtypes", help="comma-separated pool dtypes to run (default: all)")
    ap.add_argument("--flush", choices=["memset", "read"], default="memset",
                    help="how the L2 is made cold before each timed call (see Timer)")
    ap.add_argument("--pages", choices=["random", "seq"], default="random",
                    help="page table: a random permutation of the first B*L/16 pages of the pool (default), or those "
                         "pages in order (each sequence's pages adjacent in memory: how much the random placement "
                         "costs)")
    ap.add_argument("--spin-us", type=float, default=300,
                    help="a GPU spin of this many us ahead of each flush, so that no host dispatch time is timed "
                         "(0: none, as before 2026-11-29 13:00)")
    ap.add_argument("--floor", action="store_true",
                    help="per element width (16, 8, 4 bits), after its first dtype, time a streaming read of exactly "
                         "its K/V bytes (see the docstring)")
    ap.add_argument("--pool-per-shape", action="store_true",
                    help="allocate each dtype's pool per shape, its size, and free it after its row (the benchmark "
                         "before commit afdb8e1: the next pool lands where it was, see docs/benchmarks.md)")
    ap.add_argument("--head-dim", type=int, default=128, choices=[64, 128, 256],
                    help="head_dim D (default 128, the issue's shapes)")
    ap.add_argument("--heads", default="32/8",
                    help="HQ/KV: query heads and kv heads (default 32/8, the issue's shape; e.g. 4/1 with 8x the "
                         "rows reads the same bytes with each CTA's K/V rows contiguous in the page)")
    ap.add_argument("--ragged", action="store_true",
                    help="each row's length drawn uniformly from [L/8, L] (seeded), the page table sized for L; no "
                         "SDPA (its dense K/V has one length): for comparing --decode-warps modes on ragged batches")
    ap.add_argument("--decode-warps", default="auto",
                    help="comma-separated: auto (the launcher's rule), tiles (a CTA's 4 warps share one kv head's "
                         "tiles), heads (each warp a kv head of its own); each dtype runs once per mode, rows "
                         "named dtype:mode when there are several")
    ap.add_argument("--sync-dir", help="with --sync-world N > 1: a directory shared by N runs of this script, "
                                       "one per GPU, that start each measurement together (bench_decode_multi.py)")
    ap.add_argument("--sync-rank", type=int, default=0)
    ap.add_argument("--sync-world", type=int, default=1)
    args = ap.parse_args()
    if args.sync_world > 1 and not (args.sync_dir and 0 <= args.sync_rank < args.sync_world):
        sys.exit("--sync-world %d needs --sync-dir and a --sync-rank in 0..%d" % (args.sync_world, args.sync_world - 1))
    lib = load(find_lib(args.lib))
    warp_modes = {"auto": 0, "tiles": 1, "heads": 2}
    modes = args.decode_warps.split(",")
    if any(m not in warp_modes for m in modes):
        sys.exit("--decode-warps: unknown mode in %s (known: auto, tiles, heads)" % args.decode_warps)
    if modes != ["auto"] and not hasattr(lib, "shim_decode_warps"):
        sys.exit("--decode-warps %s: this shim has no shim_decode_warps (built before 2026-11-30)" % args.decode_warps)
    torch.manual_seed(0)
    dev = torch.cuda.get_device_properties(0)
    stream = torch.cuda.current_stream().cuda_stream
    timer = Timer(args.reps, args.flush, lib, args.spin_us, Barrier(args.sync_dir, args.sync_rank, args.sync_world))
    Hq, H = parse_heads(args.heads)
    D, ps = args.head_dim, 16
    Bs = [1, 32] if args.quick else [1, 8, 32, 128]
    Ls = [4096, 32768] if args.quick else [1024, 4096, 16384, 32768]

    shapes = [(B, L) for B in Bs for L in Ls]
    if args.shapes:
        shapes = [tuple(int(x) for x in sh.split("x")) for sh in args.shapes.split(",")]
    dtypes = DTYPES
    if args.dtypes:
        want = args.dtypes.split(",")
        dtypes = [d for d in DTYPES if d[0] in want]
        if len(dtypes) != len(want):
            sys.exit("--dtypes: unknown dtype in %s (known: %s)" % (args.dtypes, ", ".join(d[0] for d in DTYPES)))

    # One pool per dtype, sized for the largest shape, allocated before
    # anything else and kept for the whole run, as kvpoold allocates its
    # pools once at startup; each shape uses its first B*L/16 pages.  (A
    # pool allocated per shape and dtype lands in memory the previous
    # dtype's pool just freed: on the H200 an fp8 pool made right after the
    # freed bf16 pool of B=128 L=32k ran 8-16% slower than the same pool made
    # first, see docs/benchmarks.md.)
    def new_pool(name, dt, pages):
        pool = lib.shim_pool_new(dt, 1, H, D, ps, pages, 0)
        if not pool:
            sys.exit("shim_pool_new(%s, %d pages): %s (without --pool-per-shape every dtype's pool is held for the "
                     "whole run: ask for fewer --dtypes or smaller --shapes)" % (name, pages, lib.shim_errmsg().decode()))
        rc = lib.shim_fill_random(pool, 1234)
        if rc:
            sys.exit("fill: %s" % lib.shim_errmsg().decode())
        return pool

    max_pages = max(B * L // ps for B, L in shapes)
    pools = {} if args.pool_per_shape else {name: new_pool(name, dt, max_pages) for name, dt, _ in dtypes}

    # streaming read over 8 GiB: the bandwidth ceiling of this run
    buf = torch.empty(8 << 30, dtype=torch.uint8, device="cuda")
    buf.fill_(1)
    sink = torch.zeros(1, dtype=torch.int32, device="cuda")
    t = timer.median_us(lambda: lib.shim_stream_read(buf.data_ptr(), buf.numel(), sink.data_ptr(), stream))
    read_bw = buf.numel() / (t * 1e-6) / 1e12
    del buf
    print("device: %s, %d SMs, L2 %d MB; torch %s" % (dev.name, dev.multi_processor_count,
                                                      dev.L2_cache_size >> 20, torch.__version__))
    print("streaming read (8 GiB, 16-byte loads): %.0f us = %.2f TB/s" % (t, read_bw))
    print("Hq/kv/D = %d/%d/%d, page %d, bf16 q/out, median of %d runs, cold L2 (flush: %s, spin %g us), "
          "%s pages" % (Hq, H, D, ps, args.reps, args.flush, args.spin_us, args.pages))
    print()
    hdr = "%5s %6s %-9s %9s %8s %7s %9s" % ("B", "L", "kv", "time_us", "TB/s", "%read", "vs_sdpa")
    print(hdr)
    print("-" * len(hdr))
    sys.stdout.flush()

    for B, L in shapes:
        q = torch.randn(B, Hq, D, dtype=torch.bfloat16, device="cuda")
        qo_bytes = 2 * q.numel() * 2
        # the outside reference: SDPA over dense bf16 K/V [B, H, L, D]
        k = torch.randn(B, H, L, D, dtype=torch.bfloat16, device="cuda")
        v = torch.randn(B, H, L, D, dtype=torch.bfloat16, device="cuda")
        q4 = q.view(B, Hq, 1, D)
        t_sdpa = None
        if not args.ragged:
            t_sdpa = timer.median_us(lambda: F.scaled_dot_product_attention(q4, k, v, enable_gqa=True))
            by = 2 * k.numel() * 2 + qo_bytes
            print("%5d %6d %-9s %9.1f %8.2f %6.0f%% %9s" % (B, L, "sdpa-bf16", t_sdpa, by / t_sdpa / 1e6,
                                                            100 * by / t_sdpa / 1e6 / read_bw, "1.000x"))
        del k, v
        pages = B * L // ps
        order = torch.randperm(pages, device="cuda") if args.pages == "random" else torch.arange(pages, device="cuda")
        pt = order.to(torch.int32).view(B, L // ps)
        lens_list = [L] * B
        if args.ragged:
            rg = random.Random(B * 1000003 + L)
            lens_list = [rg.randint(max(1, L // 8), L) for _ in range(B)]
            print("%5d %6d ragged: lengths %d..%d, %d keys in all" % (B, L, min(lens_list), max(lens_list),
                                                                       sum(lens_list)))
        lens = torch.tensor(lens_list, dtype=torch.int32, device="cuda")
        lens_host = (ctypes.c_int32 * B)(*lens_list)
        out = torch.empty(B, Hq, D, dtype=torch.bfloat16, device="cuda")
        floored = set()
        for name, dt, bits in dtypes:
            pool = new_pool(name, dt, pages) if args.pool_per_shape else pools[name]

            def run():
                r = lib.shim_decode(pool, 0, q.data_ptr(), out.data_ptr(), ELEM_BF16, pt.data_ptr(), L // ps,
                                    lens.data_ptr(), lens_host, B, Hq, D ** -0.5, stream)
                if r:
                    raise RuntimeError("shim_decode: %d %s" % (r, lib.shim_errmsg().decode()))
            keys = sum(lens_list)
            kv = keys * H * D * bits // 8 * 2
            if bits == 4:
                kv += keys * H * (D // 16) * 2
            by = kv + qo_bytes
            for mode in modes:
                if mode != "auto" and lib.shim_decode_warps(warp_modes[mode]) < 0:
                    sys.exit("shim_decode_warps(%s) failed" % mode)
                t = timer.median_us(run)
                if mode != "auto":
                    lib.shim_decode_warps(0)
                if torch.isnan(out.float()).any():
                    sys.exit("NaN in the output of %s (%s)" % (name, mode))
                label = name if len(modes) == 1 else "%s:%s" % (name, mode)
                print("%5d %6d %-9s %9.1f %8.2f %6.0f%% %9s" % (B, L, label, t, by / t / 1e6,
                                                                100 * by / t / 1e6 / read_bw,
                                                                "%.3fx" % (t_sdpa / t) if t_sdpa else "-"))
            if args.pool_per_shape:
                lib.shim_pool_free(pool)
            if args.floor and bits not in floored:
                floored.add(bits)
                fb = torch.empty(kv, dtype=torch.uint8, device="cuda")
                fb.fill_(1)
                tf = timer.median_us(lambda: lib.shim_stream_read(fb.data_ptr(), fb.numel(), sink.data_ptr(),
                                                                  stream))
                print("%5d %6d %-9s %9.1f %8.2f %6.0f%% %9s" % (B, L, "read" + str(bits), tf, kv / tf / 1e6,
                                                                100 * kv / tf / 1e6 / read_bw,
                                                                "%.3fx" % (t_sdpa / tf) if t_sdpa else "-"))
                del fb
            sys.stdout.flush()
        del pt, lens, out, q
        torch.cuda.empty_cache()
    for pool in pools.values():
        lib.shim_pool_free(pool)


if __name__ == "__main__":
    main()
