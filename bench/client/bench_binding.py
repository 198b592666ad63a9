#!/usr/bin/env python3
"""bench_binding.py - what the Python binding (client/python/kvpool) itself
costs on the host per data-path call: its argument checks and the ctypes
call, with the library's function replaced by a no-op, so that neither the
CPU reference nor a GPU launch is counted.

    KVPOOL_BUILD=build python3 bench/client/bench_binding.py [--calls 2000]

Starts a kvpoold of its own with one host bf16 pool (8 kv heads x 128, page
16) and prints, for write, gather, decode and extend with NumPy arrays
(32 q heads, 4 sequences of one page, 4 tokens written), the median over 5
rounds of the mean time per call.  Host pools only: what a CUDA pool's call
adds on top (the library's plan and launches) is in bench_graph.py's eager
host column.
"""
import argparse
import os
import sys
import tempfile
import time

import ml_dtypes
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "client", "python"))
import kvpool  # noqa: E402
from kvpool import _capi  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))
from kvpoold_proc import Kvpoold  # noqa: E402

HEADS, DIM, PAGE, HQ, B = 8, 128, 16, 32, 4


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    pools = [{"name": "p", "dtype": "bf16", "layers": 1, "kv_heads": HEADS, "head_dim": DIM, "page_size": PAGE,
              "capacity": "16MiB", "backend": "host"}]
    with tempfile.TemporaryDirectory() as tmp:
        d = Kvpoold(tmp, pools).start()
        try:
            with kvpool.Client(d.url, name="bench-binding") as c:
                p = c.attach("p")
                pages = np.array(p.alloc(B), np.int32)
                k = np.zeros((4, HEADS, DIM), ml_dtypes.bfloat16)
                slots = np.arange(4, dtype=np.int64) + int(pages[0]) * PAGE
                ko = np.zeros((B * PAGE, HEADS, DIM), np.float32)
                q = np.zeros((B, HQ, DIM), ml_dtypes.bfloat16)
                out = np.zeros_like(q)
                table = pages.reshape(B, 1)
                lens = np.full(B, PAGE, np.int32)
                indptr = np.arange(B + 1, dtype=np.int32)
                dplan, eplan = p.plan_decode(table, lens), p.plan_extend(indptr, table, lens)
                calls = {
                    "write": ("kvc_write", lambda: p.write(0, k, k, slots)),
                    "gather": ("kvc_gather", lambda: p.gather(0, pages, ko, ko)),
                    "decode": ("kvc_decode", lambda: p.decode(0, q, out, table, lens)),
                    "extend": ("kvc_extend", lambda: p.extend(0, q, out, indptr, table, lens)),
                    "decode, plan.run": ("kvc_decode", lambda: dplan.run(0, q, out)),
                    "extend, plan.run": ("kvc_extend", lambda: eplan.run(0, q, out)),
                }
                print(f"# binding only (library call a no-op), NumPy arrays, median of 5 rounds of {args.calls} calls")
                print("| call | us per call |")
                print("| --- | ---: |")
                for name, (cfn, fn) in calls.items():
                    real = getattr(_capi.lib, cfn)
                    setattr(_capi.lib, cfn, lambda *a: 0)
                    try:
                        for _ in range(100):
                            fn()
                        rounds = []
                        for _ in range(5):
                            t = time.perf_counter()
                            for _ in range(args.calls):
                                fn()
                            rounds.append((time.perf_counter() - t) / args.calls * 1e6)
                    finally:
                        setattr(_capi.lib, cfn, real)
                    rounds.sort()
                    print(f"| {name} | {rounds[2]:.1f} |")
        finally:
            d.stop()


if __name__ == "__main__":
    main()
