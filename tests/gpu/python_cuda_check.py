#!/usr/bin/env python3
"""python_cuda_check.py - the Python binding (client/python/kvpool) on CUDA
pools served by a real kvpoold, with PyTorch tensors, against PyTorch.

    KVPOOLD=build/daemon/kvpoold KVPOOL_BUILD=build python3 tests/gpu/python_cuda_check.py

meson test gpu_python (suite gpu) runs it so.  Exits 77 without PyTorch, a
CUDA device or a CUDA build of libkvclient; 1 on any failure.  For a bf16,
an fp8_e4m3 and an fp4_e2m1 pool (8 kv heads x 128, page 16) it:
  - writes bf16 K/V through the binding on a created torch stream (the
    binding's default stream is PyTorch's current one), from a view with a
    token stride wider than a token;
  - gathers the pages back (bfloat16 and float32) and compares them with
    PyTorch's own casts (bf16 and fp8 bit for bit; fp8 as x / scale cast to
    torch.float8_e4m3fn, times the scale);
  - runs decode and extend attention through the binding and compares them
    with torch's scaled_dot_product_attention over the gathered K/V
    (relative error per sequence <= 1e-2, grouped-query 32/8);
  - runs the same decode from a plan (Pool.plan_decode) and compares;
  - captures decode in a CUDA graph (torch.cuda.graph) with every length 1
    and replays it at longer lengths: each replay against SDPA;
  - runs decode with a workspace tensor (decode_workspace bytes, which
    cover the call eagerly and captured): the same output as without, also
    with exactly the bytes the eager call needs (those a workspace of 0
    bytes is refused with), -ENOSPC a byte short of that with nothing
    written, and a graph captured with one (sized and allocated before the
    capture) replays as above;
  - checks that host arrays are refused for a CUDA pool before any launch;
  - on the bf16 pool, with arrays written on a side stream after a long
    sleep: the host copies of seq_lens and qo_indptr the binding takes are
    ordered on the call's stream= (a handle or a torch.cuda.Stream), and
    inputs whose __cuda_array_interface__ names that stream (K/V of a
    write, a decode's page table) are waited for on the call's stream;
    stream 0 is refused naming the argument;
  - reads the written pages through Pool.kv_cache (and kv_block_scales for
    fp4): torch tensors over the pool's own device memory, decoded here,
    equal to the gathers; stores through them are what gather reads; the
    tensors hold the pool, so detach refuses while one is alive.  An fp16
    pool's view is float16 and like='numpy' is refused; a host pool
    (fp8_e5m2) does the same with like='torch' CPU tensors;
  - runs client/python/examples/prefix_reuse.py on the bf16 and fp8 CUDA
    pools.
"""
import errno
import gc
import math
import os
import re
import subprocess
import sys
import tempfile

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    print("python_cuda_check: no torch: skipped")
    sys.exit(77)
if not torch.cuda.is_available():
    print("python_cuda_check: no CUDA device: skipped")
    sys.exit(77)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "client", "python"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import kvpool  # noqa: E402
from kvpoold_proc import Kvpoold  # noqa: E402

HEADS, DIM, PAGE, HQ, LAYERS = 8, 128, 16, 32, 2
SCALE = {"k": 0.5, "v": 0.25}
failures = []
checks = [0]
worst = {}  # (dtype, call) -> the largest relative error against SDPA


def check(ok, what):
    checks[0] += 1
    if not ok:
        failures.append(what)
        print("FAIL:", what)


def cuda_pools():
    pools = []
    for dt in ("bf16", "fp8_e4m3", "fp4_e2m1"):
        p = {"name": dt, "dtype": dt, "layers": LAYERS, "kv_heads": HEADS, "head_dim": DIM, "page_size": PAGE,
             "capacity": "64MiB", "backend": "cuda", "device": 0}
        if dt.startswith("fp8"):
            p["scales"] = {"source": "constant", "k": SCALE["k"], "v": SCALE["v"]}
        pools.append(p)
    pools.append({"name": "fp16", "dtype": "fp16", "layers": LAYERS, "kv_heads": HEADS, "head_dim": DIM,
                  "page_size": PAGE, "capacity": "16MiB", "backend": "cuda", "device": 0})
    pools.append({"name": "host", "dtype": "fp8_e5m2", "layers": LAYERS, "kv_heads": HEADS, "head_dim": DIM,
                  "page_size": PAGE, "capacity": "16MiB", "backend": "host",
                  "scales": {"source": "constant", "k": SCALE["k"], "v": SCALE["v"]}})
    return pools


FP4_VALUES = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6]


def from_view(pool, layer, view, pages):
    """K and V ([2, n*PAGE, HEADS, DIM] float32) of `pages` (an int64
    tensor), read through pool.kv_cache's view and decoded with torch."""
    # indexed as bytes: index kernels need not know the float8 element types
    got = view.view(torch.uint8)[:, pages].view(view.dtype) if view.element_size() == 1 else view[:, pages]
    got = got.flatten(1, 2)
    if pool.dtype == "fp4_e2m1":
        sc = pool.kv_block_scales(layer)[:, pages].flatten(1, 2)
        nib = torch.stack([got & 15, got >> 4], dim=-1).flatten(-2).long()
        vals = torch.tensor(FP4_VALUES, device=got.device)[nib]
        return vals * torch.exp2(sc.float() - 127).repeat_interleave(16, dim=-1)
    vals = got.float()
    if pool.dtype.startswith("fp8"):
        vals = vals * torch.tensor([pool.k_scale[layer], pool.v_scale[layer]], device=got.device).view(2, 1, 1, 1)
    return vals


def run_views(pool, table, lens, kv):
    """Pool.kv_cache against the gathers kv[b] of the pages in table."""
    dt = pool.dtype
    view = pool.kv_cache(1)
    width = DIM // 2 if dt == "fp4_e2m1" else DIM
    want = {"bf16": torch.bfloat16, "fp8_e4m3": torch.float8_e4m3fn, "fp4_e2m1": torch.uint8}[dt]
    check(view.dtype == want and view.device == torch.device("cuda", pool.device)
          and tuple(view.shape) == (2, pool.num_pages, PAGE, HEADS, width),
          f"{dt} kv_cache: {view.dtype} {tuple(view.shape)} on {view.device}")
    check(pool.kv_cache()[1].data_ptr() == view.data_ptr(), f"{dt} kv_cache(): layer 1 is kv_cache(1)")
    for b, n in enumerate(lens):
        pages = table[b, :-(-n // PAGE)].long().to(view.device)
        got = from_view(pool, 1, view, pages)
        check(torch.equal(got[0][:n], kv[b][0]) and torch.equal(got[1][:n], kv[b][1]),
              f"{dt} kv_cache b={b} L={n}: the view's pages decode to the gather")
    # a store through the view is what the kernels read: page table[0, 0], token 0, head 3
    page = int(table[0, 0])
    if dt == "fp4_e2m1":
        view[0, page, 0, 3, 0] = 0x9C                 # codes 12 (-2) and 9 (-0.5)
        pool.kv_block_scales(1)[0, page, 0, 3, 0] = 127 - 2
        expect = torch.tensor([-0.5, -0.125], device=view.device)
    else:
        store = torch.tensor([1.5, -3.0], device=view.device).to(want)
        if view.element_size() == 1:
            view.view(torch.uint8)[0, page, 0, 3, :2] = store.view(torch.uint8)
        else:
            view[0, page, 0, 3, :2] = store
        expect = torch.tensor([1.5, -3.0], device=view.device) * pool.k_scale[1]
    kf = torch.empty((PAGE, HEADS, DIM), dtype=torch.float32, device=view.device)
    vf = torch.empty_like(kf)
    pool.gather(1, torch.tensor([page], dtype=torch.int32, device=view.device), kf, vf)
    torch.cuda.synchronize()
    check(torch.equal(kf[0, 3, :2], expect), f"{dt} kv_cache: a store through the view is gathered "
                                             f"({kf[0, 3, :2].tolist()} against {expect.tolist()})")
    # the tensor holds the pool: torch keeps the exporter alive, detach refuses
    check(len(pool._exports) >= 1, f"{dt} kv_cache: the tensor holds its exporter")
    try:
        pool.detach()
        check(False, f"{dt}: detach went through while a kv_cache tensor was alive")
    except BufferError as e:
        check("kv_cache" in str(e), f"{dt}: detach refused while a view is alive ({e})")
    del view
    gc.collect()
    check(len(pool._exports) == 0, f"{dt} kv_cache: the exporters go with the tensors "
                                   f"({len(pool._exports)} left)")


def run_fp16_views(c):
    """An fp16 CUDA pool's view is float16 and holds what was written; a
    NumPy view of device memory is refused."""
    pool = c.attach("fp16")
    dev = torch.device("cuda", pool.device)
    page = pool.alloc(1)[0]
    k = torch.randn((5, HEADS, DIM), device=dev).to(torch.bfloat16)
    v = torch.randn((5, HEADS, DIM), device=dev).to(torch.bfloat16)
    pool.write(1, k, v, torch.arange(5, device=dev, dtype=torch.int64) + page * PAGE)
    torch.cuda.synchronize()
    view = pool.kv_cache(1)
    check(view.dtype == torch.float16, f"fp16 kv_cache: {view.dtype}")
    check(torch.equal(view[0, page, :5], k.to(torch.float16)) and torch.equal(view[1, page, :5], v.to(torch.float16)),
          "fp16 kv_cache: the view holds what was written")
    try:
        pool.kv_cache(1, like="numpy")
        check(False, "fp16: a NumPy view of device memory was made")
    except ValueError as e:
        check("like" in str(e), f"fp16: like='numpy' on a CUDA pool refused ({e})")
    del view
    pool.free([page])
    pool.detach()


def run_host_views(c, gen):
    """like='torch' on a host pool: CPU tensors over the shared memory."""
    pool = c.attach("host")
    pages = pool.alloc(2)
    n = 2 * PAGE - 3
    k = torch.randn((n, HEADS, DIM), generator=torch.Generator().manual_seed(3))
    v = torch.randn((n, HEADS, DIM), generator=torch.Generator().manual_seed(4))
    t = torch.arange(n)
    slots = torch.tensor(pages, dtype=torch.int64)[t // PAGE] * PAGE + t % PAGE
    pool.write(0, k, v, slots)
    kf = torch.empty((2 * PAGE, HEADS, DIM))
    vf = torch.empty_like(kf)
    pool.gather(0, torch.tensor(pages, dtype=torch.int32), kf, vf)
    view = pool.kv_cache(0, like="torch")
    check(view.dtype == torch.float8_e5m2 and view.device.type == "cpu", f"host kv_cache: {view.dtype} {view.device}")
    got = from_view(pool, 0, view, torch.tensor(pages))
    check(torch.equal(got[0][:n], kf[:n]) and torch.equal(got[1][:n], vf[:n]),
          "host kv_cache(like='torch'): the view's pages decode to the gather")
    try:
        pool.detach()
        check(False, "host: detach went through while a kv_cache tensor was alive")
    except BufferError:
        check(True, "host: detach refused while a view is alive")
    del view
    gc.collect()
    pool.free(pages)
    pool.detach()
    check(True, "host: detach after the view was dropped")


def rel(a, b):
    return (torch.linalg.norm((a - b).float()) / torch.linalg.norm(b.float())).item()


def sdpa(q, k, v, scale, offset=None):
    """q [n, HQ, D], k/v [L, HEADS, D] -> [n, HQ, D] in float32; query i at
    position offset + i sees keys 0..offset+i when offset is given."""
    g = HQ // HEADS
    kk = k.float().repeat_interleave(g, dim=1).transpose(0, 1)   # [HQ, L, D]
    vv = v.float().repeat_interleave(g, dim=1).transpose(0, 1)
    qq = q.float().transpose(0, 1)                               # [HQ, n, D]
    mask = None
    if offset is not None:
        n, L = q.shape[0], k.shape[0]
        mask = torch.arange(L, device=q.device)[None, :] <= (offset + torch.arange(n, device=q.device))[:, None]
    return F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask, scale=scale).transpose(0, 1)


def run_pool(pool, gen):
    dt = pool.dtype
    dev = torch.device("cuda", pool.device)
    check(pool.backend == "cuda" and pool.device == 0, f"{dt}: attached as a CUDA pool on device 0")
    lens = [1, 100, PAGE * 64, 4097]
    max_pages = max(-(-n // PAGE) for n in lens)
    table = torch.zeros((len(lens), max_pages), dtype=torch.int32)
    stream = torch.cuda.Stream()
    kv = []
    for b, n in enumerate(lens):
        pages = pool.alloc(-(-n // PAGE))
        table[b, :len(pages)] = torch.tensor(pages, dtype=torch.int32)
        wide_k = torch.randn((n, HEADS * DIM + 64), generator=gen, device=dev).to(torch.bfloat16)
        wide_v = torch.randn((n, HEADS * DIM + 64), generator=gen, device=dev).to(torch.bfloat16)
        k = wide_k[:, :HEADS * DIM].unflatten(1, (HEADS, DIM))   # token stride HEADS*DIM + 64
        v = wide_v[:, :HEADS * DIM].unflatten(1, (HEADS, DIM))
        t = torch.arange(n)
        slots = (torch.tensor(pages, dtype=torch.int64)[t // PAGE] * PAGE + t % PAGE).to(dev)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            pool.write(1, k, v, slots)       # on `stream`: PyTorch's current stream here
        torch.cuda.current_stream().wait_stream(stream)
        pt = torch.tensor(pages, dtype=torch.int32, device=dev)
        kb = torch.full((len(pages) * PAGE, HEADS, DIM), float("nan"), dtype=torch.bfloat16, device=dev)
        vb = torch.full_like(kb, float("nan"))
        kf = torch.full(kb.shape, float("nan"), dtype=torch.float32, device=dev)
        vf = torch.full_like(kf, float("nan"))
        pool.gather(1, pt, kb, vb)
        pool.gather(1, pt, kf, vf)
        torch.cuda.synchronize()
        check(torch.equal(kf.to(torch.bfloat16), kb) and torch.equal(vf.to(torch.bfloat16), vb),
              f"{dt} n={n}: the bfloat16 gather is the float32 gather rounded")
        if dt == "bf16":
            check(torch.equal(kf[:n], k.float()) and torch.equal(vf[:n], v.float()), f"{dt} n={n}: stored exactly")
        elif dt == "fp8_e4m3":
            wk = (k.float() / SCALE["k"]).to(torch.float8_e4m3fn).float() * SCALE["k"]
            wv = (v.float() / SCALE["v"]).to(torch.float8_e4m3fn).float() * SCALE["v"]
            check(torch.equal(kf[:n], wk) and torch.equal(vf[:n], wv), f"{dt} n={n}: equal to torch's fp8 cast")
        else:
            e = rel(kf[:n], k.float())
            check(0 < e < 0.2, f"{dt} n={n}: fp4 K relative error {e:.3f} within the format's")
        check(not torch.isnan(kf[n:]).any().item(), f"{dt} n={n}: the page tails gather as numbers")
        kv.append((kf[:n], vf[:n]))

    scale = 1 / math.sqrt(DIM)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    q = torch.randn((len(lens), HQ, DIM), generator=gen, device=dev).to(torch.bfloat16)
    out = torch.full_like(q, float("nan"))
    pool.decode(1, q, out, table.to(dev), seq_lens.to(dev))          # host copy of seq_lens taken
    pool.decode(1, q, out, table.to(dev), seq_lens.to(dev), seq_lens_host=seq_lens)
    torch.cuda.synchronize()
    for b, n in enumerate(lens):
        e = rel(out[b:b + 1], sdpa(q[b:b + 1], *kv[b], scale))
        worst[dt, "decode"] = max(worst.get((dt, "decode"), 0), e)
        check(e <= 1e-2, f"{dt} decode b={b} L={n}: relative error {e:.2e} against SDPA")
    # a plan made once runs the same call (the library's default stream choice included)
    plan = pool.plan_decode(table.to(dev), seq_lens.to(dev), seq_lens_host=seq_lens)
    out_p = torch.full_like(q, float("nan"))
    plan.run(1, q, out_p)
    torch.cuda.synchronize()
    check(torch.equal(out_p, out), f"{dt} plan_decode + run: the same output as decode")

    # a CUDA graph, as serving engines replay their decode step: captured
    # with every length 1, replayed at the real lengths, then at others
    lens_dev = torch.ones(len(lens), dtype=torch.int32, device=dev)
    table_dev, out_g = table.to(dev), torch.full_like(q, float("nan"))
    def replays(graph, label):
        # the graph replayed at the real lengths, then at others: each
        # sequence's output against SDPA at its replay length
        for replay in (lens, [max(1, n // 3) for n in lens]):
            lens_dev.copy_(torch.tensor(replay, dtype=torch.int32))
            out_g.fill_(float("nan"))
            graph.replay()
            torch.cuda.synchronize()
            for b, n in enumerate(replay):
                kb, vb = kv[b]
                e = rel(out_g[b:b + 1], sdpa(q[b:b + 1], kb[:n], vb[:n], scale))
                worst[dt, label] = max(worst.get((dt, label), 0), e)
                check(e <= 1e-2, f"{dt} {label} replay b={b} L={n}: relative error {e:.2e} against SDPA")

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        pool.decode(1, q, out_g, table_dev, lens_dev, seq_lens_host=torch.ones(len(lens), dtype=torch.int32))
    replays(graph, "decode graph")

    # a workspace the caller owns (kvc_decode_ws): the same output as the
    # library's own scratch.  decode_workspace answers for the call eagerly
    # and captured (planned for the table's capacity), so the eager call
    # may need less: what it needs is what a workspace of 0 bytes is
    # refused with; exactly that runs, a byte short is refused before any
    # launch.  A graph captured with one (sized and allocated before the
    # capture) replays as the graph above does
    table_dev, seq_dev = table.to(dev), seq_lens.to(dev)
    need = pool.decode_workspace(1, q, out, table_dev, seq_dev, seq_lens_host=seq_lens)
    check(need > 0, f"{dt}: the decode of {lens} splits and needs a workspace ({need} bytes)")
    if need > 0:
        ws = torch.empty(need, dtype=torch.uint8, device=dev)
        out_w = torch.full_like(q, float("nan"))
        pool.decode(1, q, out_w, table_dev, seq_dev, seq_lens_host=seq_lens, workspace=ws)
        plan.run(1, q, out_p, workspace=ws)
        torch.cuda.synchronize()
        check(torch.equal(out_w, out) and torch.equal(out_p, out),
              f"{dt} decode with a workspace: the same output as without")
        act = 0
        try:
            pool.decode(1, q, out_w, table_dev, seq_dev, seq_lens_host=seq_lens, workspace=(ws.data_ptr(), 0))
            check(False, f"{dt}: a workspace of 0 bytes was accepted by a decode that splits")
        except kvpool.KvpoolError as e:
            m = re.search(r"the call needs (\d+)", str(e))
            act = int(m.group(1)) if m else 0
            check(e.errno == errno.ENOSPC and 0 < act <= need,
                  f"{dt}: a workspace of 0 bytes refused with the eager call's need, at most {need} ({e})")
        if 0 < act <= need:
            out_w.fill_(float("nan"))
            pool.decode(1, q, out_w, table_dev, seq_dev, seq_lens_host=seq_lens, workspace=ws[:act])
            torch.cuda.synchronize()
            check(torch.equal(out_w, out), f"{dt} decode with a workspace of the {act} bytes it needs: "
                                           f"the same output as without")
            out_w.fill_(float("nan"))
            try:
                pool.decode(1, q, out_w, table_dev, seq_dev, seq_lens_host=seq_lens, workspace=ws[:act - 1])
                check(False, f"{dt}: a workspace a byte short was accepted")
            except kvpool.KvpoolError as e:
                check(e.errno == errno.ENOSPC and f"of {act - 1} bytes is too small, the call needs {act}" in str(e),
                      f"{dt}: a short workspace refused ({e})")
            torch.cuda.synchronize()
            check(torch.isnan(out_w.float()).all().item(), f"{dt}: the refused call wrote its output")
    ones = torch.ones(len(lens), dtype=torch.int32)
    lens_dev.fill_(1)
    out_g.fill_(float("nan"))
    # sized and allocated before the capture (no capture to size it): the
    # answer covers the captured call, planned for the table's capacity,
    # although at the capture's lengths of 1 the eager call does not split
    need_g = pool.decode_workspace(1, q, out_g, table_dev, lens_dev, seq_lens_host=ones)
    check(need_g > 0, f"{dt}: a captured decode plans for the table's capacity and needs a workspace ({need_g})")
    ws_g = torch.empty(max(need_g, 16), dtype=torch.uint8, device=dev)
    graph_w = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph_w):
        pool.decode(1, q, out_g, table_dev, lens_dev, seq_lens_host=ones, workspace=ws_g)
    replays(graph_w, "decode graph, workspace")
    del graph_w, ws_g

    new = [1, 7, 200, 64]
    indptr = torch.tensor([0] + list(torch.cumsum(torch.tensor(new), 0)), dtype=torch.int32)
    qe = torch.randn((int(indptr[-1]), HQ, DIM), generator=gen, device=dev).to(torch.bfloat16)
    oe = torch.full_like(qe, float("nan"))
    pool.extend(1, qe, oe, indptr.to(dev), table.to(dev), seq_lens.to(dev), sm_scale=scale,
                qo_indptr_host=indptr, seq_lens_host=seq_lens)
    torch.cuda.synchronize()
    for b, n in enumerate(lens):
        rows = slice(int(indptr[b]), int(indptr[b + 1]))
        e = rel(oe[rows], sdpa(qe[rows], *kv[b], scale, offset=n - new[b]))
        worst[dt, "extend"] = max(worst.get((dt, "extend"), 0), e)
        check(e <= 1e-2, f"{dt} extend b={b} L={n} new={new[b]}: relative error {e:.2e} against SDPA")

    run_views(pool, table, lens, kv)

    try:
        pool.decode(1, q.cpu(), out.cpu(), table.to(dev), seq_lens.to(dev), seq_lens_host=seq_lens)
        check(False, f"{dt}: host q on a CUDA pool was accepted")
    except TypeError as e:
        check("q:" in str(e) and "device" in str(e), f"{dt}: host q refused naming q ({e})")
    try:
        pool.decode(1, q, out, table, seq_lens.to(dev))
        check(False, f"{dt}: a host page table on a CUDA pool was accepted")
    except TypeError as e:
        check("page_table" in str(e), f"{dt}: host page_table refused naming it ({e})")
    try:
        pool.decode(1, q, out, table.to(dev), (seq_lens + max_pages * PAGE).to(dev))
        check(False, f"{dt}: lengths beyond the page table were accepted")
    except kvpool.KvpoolError as e:
        check("seq_len" in str(e), f"{dt}: lengths beyond the page table refused by the library ({e})")


SLEEP = 1 << 28  # GPU clock cycles, ~0.14 s on an H200: far longer than the binding's work before the launch


def late(t, value, s):
    """value (a device tensor of t's shape) copied into t on stream s after
    a sleep: until s has run, t holds what the current stream left there."""
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        torch.cuda._sleep(SLEEP)
        t.copy_(value)
    t.record_stream(s)  # made on the current stream, used on s: not reused before s has run
    value.record_stream(s)


class Cai:
    """Tensor t seen only through a __cuda_array_interface__ (version 3)
    whose "stream" key is `stream`, as CuPy or Numba hand over an array
    still being written on a stream of theirs."""

    def __init__(self, t, stream):
        self.t, self.stream = t, stream

    @property
    def __cuda_array_interface__(self):
        t = self.t
        return {"shape": tuple(t.shape), "typestr": {torch.float32: "<f4", torch.int32: "<i4"}[t.dtype],
                "data": (t.data_ptr(), False), "strides": tuple(x * t.element_size() for x in t.stride()),
                "version": 3, "stream": self.stream}


def run_streams(pool, gen):
    """The streams arrays are written on: the host copies of seq_lens and
    qo_indptr that the binding takes are ordered on the call's stream=
    (they were taken on PyTorch's current stream whatever stream= said),
    and an input whose __cuda_array_interface__ names a stream is waited
    for on the call's stream before the launch (the key was ignored).  The
    arrays are written on a side stream after a long sleep, so that a copy
    or a kernel not ordered after that stream reads what was there before."""
    dt, dev = pool.dtype, torch.device("cuda", pool.device)
    lens = [2 * PAGE + 3, 9]
    table = torch.zeros((len(lens), 3), dtype=torch.int32)
    for b, n in enumerate(lens):
        pages = pool.alloc(-(-n // PAGE))
        table[b, :len(pages)] = torch.tensor(pages, dtype=torch.int32)
        t = torch.arange(n)
        slots = (torch.tensor(pages, dtype=torch.int64)[t // PAGE] * PAGE + t % PAGE).to(dev)
        k = torch.randn((n, HEADS, DIM), generator=gen, device=dev).to(torch.bfloat16)
        pool.write(1, k, -k, slots)
    table_dev, lens_host = table.to(dev), torch.tensor(lens, dtype=torch.int32)
    lens_real = lens_host.to(dev)
    q = torch.randn((len(lens), HQ, DIM), generator=gen, device=dev).to(torch.bfloat16)
    want = torch.full_like(q, float("nan"))
    pool.decode(1, q, want, table_dev, lens_real, seq_lens_host=lens_host)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()

    # 1. the binding's host copy of seq_lens, on the call's stream: before
    # the side stream has run, seq_lens is beyond the page table, which the
    # library refuses from the host copy
    for how, stream in (("a handle", side.cuda_stream), ("a torch.cuda.Stream", side)):
        lens_dev = torch.full((len(lens),), 3 * PAGE + 1, dtype=torch.int32, device=dev)
        got = torch.full_like(q, float("nan"))  # before late(): side waits for it
        late(lens_dev, lens_real, side)
        try:
            pool.decode(1, q, got, table_dev, lens_dev, stream=stream)
            side.synchronize()
            check(torch.equal(got, want), f"{dt} decode on stream= ({how}), seq_lens written there: "
                                          "the output of the lengths written")
        except kvpool.KvpoolError as e:
            check(False, f"{dt} decode on stream= ({how}): the host copy of seq_lens was taken before the "
                         f"stream wrote it ({e})")
    indptr = torch.tensor([0, 2, 5], dtype=torch.int32, device=dev)
    indptr_dev = torch.zeros_like(indptr)
    late(indptr_dev, indptr, side)
    plan = pool.plan_extend(indptr_dev, table_dev, lens_real, seq_lens_host=lens_host, stream=side)
    check(plan.rows() == 5, f"{dt} plan_extend on stream=: qo_indptr's host copy is the one the stream wrote "
                            f"(rows {plan.rows()}, expected 5)")
    torch.cuda.synchronize()

    # 2. __cuda_array_interface__'s stream: K and V written on `side`,
    # written into the pool on the current stream (no stream=), which
    # waits for `side` first; then a page table the same way for decode
    n = lens[1]
    pages = table[1, :1].tolist()
    t = torch.arange(n)
    slots = (torch.tensor(pages, dtype=torch.int64)[t // PAGE] * PAGE + t % PAGE).to(dev)
    k_real = torch.randn((n, HEADS, DIM), generator=gen, device=dev).to(torch.bfloat16).float()
    v_real = 2 * k_real
    k_dev, v_dev = torch.zeros_like(k_real), torch.zeros_like(k_real)
    late(k_dev, k_real, side)
    late(v_dev, v_real, side)
    pool.write(1, Cai(k_dev, side.cuda_stream), Cai(v_dev, side.cuda_stream), slots)
    kf = torch.full((PAGE, HEADS, DIM), float("nan"), dtype=torch.float32, device=dev)
    vf = torch.full_like(kf, float("nan"))
    pool.gather(1, torch.tensor(pages, dtype=torch.int32, device=dev), kf, vf)
    torch.cuda.synchronize()
    check(torch.equal(kf[:n], k_real) and torch.equal(vf[:n], v_real),
          f"{dt} write of K/V whose __cuda_array_interface__ names the stream writing them: the values written "
          f"there ({'zeros' if not kf[:n].any().item() else 'others'} without the wait)")
    # want again: the K/V of sequence 1 changed
    pool.decode(1, q, want, table_dev, lens_real, seq_lens_host=lens_host)
    table_late = torch.zeros_like(table_dev)
    got = torch.full_like(q, float("nan"))
    late(table_late, table_dev, side)
    third = torch.cuda.Stream()
    third.wait_stream(torch.cuda.current_stream())  # got, want's inputs; not side's work
    pool.decode(1, q, got, Cai(table_late, side.cuda_stream), lens_real, seq_lens_host=lens_host, stream=third)
    torch.cuda.synchronize()
    check(torch.equal(got, want), f"{dt} decode with a page table whose __cuda_array_interface__ names the stream "
                                  "writing it, on a third stream: the output of the table written")
    try:
        pool.write(1, Cai(k_dev, 0), Cai(v_dev, None), slots)
        check(False, f"{dt}: a __cuda_array_interface__ stream of 0 was accepted")
    except ValueError as e:
        check(str(e).startswith("k:") and "stream 0" in str(e), f"{dt}: stream 0 refused naming k ({e})")
    # None (nothing to wait for) and the call's own stream need no wait
    pool.write(1, Cai(k_dev, None), Cai(v_dev, side.cuda_stream), slots, stream=side)
    side.synchronize()
    check(True, f"{dt}: a stream of None, or the call's own, is taken")


def main():
    gen = torch.Generator(device="cuda").manual_seed(5)
    with tempfile.TemporaryDirectory() as tmp:
        d = Kvpoold(tmp, cuda_pools()).start()
        url = d.url
        try:
            with kvpool.Client(url, name="python-cuda") as c:
                for name in ("bf16", "fp8_e4m3", "fp4_e2m1"):
                    p = c.attach(name)
                    run_pool(p, gen)
                    if name == "bf16":
                        run_streams(p, gen)
                    st = {x["name"]: x for x in c.status()["pools"]}[name]
                    check(st["pages_held"] > 0, f"{name}: the session's pages are held")
                run_fp16_views(c)
                run_host_views(c, gen)
            with kvpool.Client(url, name="after") as c2:
                held = sum(x["pages_held"] for x in c2.status()["pools"])
                check(held == 0, f"every page given back after close (held {held})")
            # the example of docs/python.md on CUDA pools: two workers, a shared prefix
            example = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "client", "python",
                                   "examples", "prefix_reuse.py")
            for name in ("bf16", "fp8_e4m3"):
                r = subprocess.run([sys.executable, example, "--socket", url, "--pool", name], capture_output=True,
                                   text=True, timeout=300)
                check(r.returncode == 0 and r.stdout.rstrip().endswith("ok"),
                      f"examples/prefix_reuse.py on the CUDA pool {name}: rc {r.returncode}\n{r.stdout}{r.stderr}")
        finally:
            rc = d.stop()
            check(rc == 0, f"kvpoold exited with {rc}")
    for (dt, call), e in sorted(worst.items()):
        print(f"{dt} {call}: worst relative error against SDPA {e:.2e}")
    print(f"python_cuda_check: {checks[0]} checks, {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
