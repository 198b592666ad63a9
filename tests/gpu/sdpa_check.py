#!/usr/bin/env python3
"""sdpa_check.py - the attention kernels against an outside implementation:
PyTorch's scaled_dot_product_attention over the gathered (dequantized) K/V.

    python3 tests/gpu/sdpa_check.py [--lib PATH]

Runs on a machine with a GPU and PyTorch (the H200); exits 1 on any failure,
77 when there is no CUDA device.  For a handful of shapes (every pool dtype,
head_dim 64/128/256, page sizes 1/16/128, GQA, ragged lengths) it writes
random K/V with the CPU reference write (kv_ref_write) into a pool, copies it
to the device, runs kv_cuda_decode / kv_cuda_extend through ctypes
(libkvattn_shim.so, see bench/attn/attn_shim.cu) and compares the output
with SDPA in float32 on the K/V that kv_ref_gather dequantizes from the same
pool: decode without a mask, extend with the causal mask offset by the
cached prefix (query i of a sequence of n new tokens and L keys sees keys
0 .. L-n+i).  Bound: relative error (Frobenius, per sequence) <= 1e-2 with
bf16 outputs.  Not collected by pytest (no test_ prefix): CI has no GPU.
"""
import argparse
import ctypes
import os
import sys

import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    print("sdpa_check: no torch: skipped")
    sys.exit(77)

DT = {"bf16": 0, "fp16": 1, "fp8_e4m3": 2, "fp8_e5m2": 3, "fp4_e2m1": 4}
ELEM_BF16 = 1


def find_lib(arg):
    cands = [arg] if arg else []
    if os.environ.get("KVPOOL_BUILD"):
        cands.append(os.path.join(os.environ["KVPOOL_BUILD"], "bench", "attn", "libkvattn_shim.so"))
    cands.append("/tmp/attn-build/libkvattn_shim.so")
    for c in cands:
        if c and os.path.exists(c):
            return c
    sys.exit("sdpa_check: libkvattn_shim.so not found (tried %s)" % ", ".join(c for c in cands if c))


def load(path):
    lib = ctypes.CDLL(path)
    u64, i32, f32, p = ctypes.c_uint64, ctypes.c_int, ctypes.c_float, ctypes.c_void_p
    P32, PF = ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_float)
    lib.shim_pool_new.restype = p
    lib.shim_pool_new.argtypes = [i32] * 7
    lib.shim_pool_free.argtypes = [p]
    lib.shim_set_scales.argtypes = [p, f32, f32]
    lib.shim_write_host.argtypes = [p, i32, PF, PF, ctypes.POINTER(ctypes.c_int64), i32]
    lib.shim_upload.argtypes = [p]
    lib.shim_gather_host.argtypes = [p, i32, P32, i32, PF, PF]
    lib.shim_errmsg.restype = ctypes.c_char_p
    lib.shim_decode.argtypes = [p, i32, u64, u64, i32, u64, i32, u64, P32, i32, i32, f32, u64]
    lib.shim_extend.argtypes = [p, i32, u64, u64, i32, u64, P32, u64, i32, u64, P32, i32, i32, f32, u64]
    return lib


def ptr(a, t):
    return a.ctypes.data_as(ctypes.POINTER(t))


def check(lib, rng, dtype, D, ps, H, G, lens, news):
    """One case; news None = decode.  Returns the worst relative error."""
    B = len(lens)
    Hq = H * G
    npg = [(L + ps - 1) // ps for L in lens]
    maxp = max(npg) + 1
    pages = sum(npg) + 2
    pool = lib.shim_pool_new(DT[dtype], 2, H, D, ps, pages, 1)
    if not pool:
        raise RuntimeError(lib.shim_errmsg().decode())
    lib.shim_set_scales(pool, 0.031, 0.017)
    perm = rng.permutation(pages).astype(np.int32)
    pt = np.full((B, maxp), -3, dtype=np.int32)
    nxt = 0
    for b in range(B):
        pt[b, :npg[b]] = perm[nxt:nxt + npg[b]]
        nxt += npg[b]
        L = lens[b]
        k = (rng.standard_normal((L, H, D)) * 2).astype(np.float32)
        k[:, :, 5] *= 10.0  # an outlier channel
        v = (rng.standard_normal((L, H, D)) * 2).astype(np.float32)
        slots = np.array([pt[b, j // ps] * ps + j % ps for j in range(L)], dtype=np.int64)
        if lib.shim_write_host(pool, 1, ptr(k, ctypes.c_float), ptr(v, ctypes.c_float),
                               ptr(slots, ctypes.c_int64), L):
            raise RuntimeError(lib.shim_errmsg().decode())
    if lib.shim_upload(pool):
        raise RuntimeError(lib.shim_errmsg().decode())

    n_new = [1] * B if news is None else news
    indptr = np.zeros(B + 1, dtype=np.int32)
    indptr[1:] = np.cumsum(n_new)
    rows = int(indptr[-1])
    q = torch.randn(rows, Hq, D, dtype=torch.bfloat16, device="cuda")
    out = torch.full((rows, Hq, D), float("nan"), dtype=torch.bfloat16, device="cuda")
    lens_np = np.array(lens, dtype=np.int32)
    d_pt = torch.from_numpy(pt).cuda()
    d_lens = torch.from_numpy(lens_np).cuda()
    d_ind = torch.from_numpy(indptr).cuda()
    sm = D ** -0.5
    st = torch.cuda.current_stream().cuda_stream
    if news is None:
        rc = lib.shim_decode(pool, 1, q.data_ptr(), out.data_ptr(), ELEM_BF16, d_pt.data_ptr(), maxp,
                             d_lens.data_ptr(), ptr(lens_np, ctypes.c_int32), B, Hq, sm, st)
    else:
        rc = lib.shim_extend(pool, 1, q.data_ptr(), out.data_ptr(), ELEM_BF16, d_ind.data_ptr(),
                             ptr(indptr, ctypes.c_int32), d_pt.data_ptr(), maxp, d_lens.data_ptr(),
                             ptr(lens_np, ctypes.c_int32), B, Hq, sm, st)
    if rc:
        raise RuntimeError("kernel: %d %s" % (rc, lib.shim_errmsg().decode()))
    torch.cuda.synchronize()

    worst = 0.0
    for b in range(B):
        n = n_new[b]
        if n == 0:
            continue
        L = lens[b]
        kg = np.zeros((npg[b] * ps, H, D), dtype=np.float32)
        vg = np.zeros_like(kg)
        pg = np.ascontiguousarray(pt[b, :npg[b]])
        if lib.shim_gather_host(pool, 1, ptr(pg, ctypes.c_int32), npg[b], ptr(kg, ctypes.c_float),
                                ptr(vg, ctypes.c_float)):
            raise RuntimeError(lib.shim_errmsg().decode())
        K = torch.from_numpy(kg[:L]).cuda().permute(1, 0, 2).unsqueeze(0)  # [1, H, L, D]
        V = torch.from_numpy(vg[:L]).cuda().permute(1, 0, 2).unsqueeze(0)
        Q = q[indptr[b]:indptr[b + 1]].float().permute(1, 0, 2).unsqueeze(0)  # [1, Hq, n, D]
        pos = torch.arange(L - n, L, device="cuda").view(n, 1)
        mask = torch.arange(L, device="cuda").view(1, L) <= pos  # [n, L]: causal, offset by the prefix
        ref = F.scaled_dot_product_attention(Q, K, V, attn_mask=mask, scale=sm, enable_gqa=True)
        got = out[indptr[b]:indptr[b + 1]].float().permute(1, 0, 2).unsqueeze(0)
        if torch.isnan(got).any():
            raise RuntimeError("NaN in the kernel output (sequence %d)" % b)
        rel = (torch.linalg.norm(got - ref) / torch.linalg.norm(ref)).item()
        worst = max(worst, rel)
    lib.shim_pool_free(pool)
    return worst


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("sdpa_check: no CUDA device: skipped")
        sys.exit(77)
    lib = load(find_lib(args.lib))
    rng = np.random.default_rng(2024)
    torch.manual_seed(2024)
    cases = []
    for dt in DT:
        cases.append((dt, 128, 16, 8, 4, [1, 17, 300, 1000], None))
        cases.append((dt, 128, 16, 2, 4, [40, 100, 16], [40, 7, 1]))
    cases += [("bf16", 64, 1, 2, 8, [33, 5], None), ("fp4_e2m1", 256, 128, 1, 6, [700, 129], None),
              ("fp8_e4m3", 64, 128, 4, 2, [200, 300], [64, 300]), ("fp4_e2m1", 64, 1, 2, 12, [50], [20]),
              ("fp8_e5m2", 256, 16, 2, 4, [4097], None)]
    fails = 0
    print("%-9s %4s %5s %3s %3s %-22s %-14s %10s" % ("dtype", "D", "page", "H", "G", "lens", "new", "rel_err"))
    for dt, D, ps, H, G, lens, news in cases:
        try:
            e = check(lib, rng, dt, D, ps, H, G, lens, news)
            ok = e <= 1e-2
        except RuntimeError as ex:
            e, ok = float("nan"), False
            print("  error: %s" % ex)
        fails += not ok
        print("%-9s %4d %5d %3d %3d %-22s %-14s %10.2e %s" % (dt, D, ps, H, G, lens, "decode" if news is None
                                                              else news, e, "ok" if ok else "FAIL"))
    print("sdpa_check: %d cases, %d failures (bound 1e-2, bf16 outputs)" % (len(cases), fails))
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
