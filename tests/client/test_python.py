"""The Python binding (client/python/kvpool) against a real kvpoold with host
pools of every dtype: its ctypes structs against the C compiler's layout,
errors, the write/gather round trip against independent oracles (ml_dtypes
for the element codecs, the fp4 block rule of docs/dtypes.md written out
here), decode and extend attention against float64 NumPy attention on the
gathered values, and the prefix cache across two clients.

Needs $KVPOOL_BUILD (the meson build directory: daemon/kvpoold,
client/libkvclient.so.0, tests/client/abi-layout); fails, does not skip,
without it.
"""
import ctypes
import errno
import json
import os
import struct
import subprocess
import sys
import tempfile
import time

import ml_dtypes
import numpy as np
import pytest
import xxhash

BUILD = os.environ.get("KVPOOL_BUILD")
assert BUILD, "KVPOOL_BUILD must name the meson build directory"
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "client", "python"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import kvpool  # noqa: E402
from kvpool import _capi  # noqa: E402
from kvpoold_proc import Kvpoold  # noqa: E402

LAYERS, HEADS, DIM, PAGE = 2, 2, 64, 16
SCALES = {"k": 0.5, "v": 0.25}  # powers of two: decode(q) * scale is exact in float32
DTYPES = ["bf16", "fp16", "fp8_e4m3", "fp8_e5m2", "fp4_e2m1"]


@pytest.fixture(scope="module")
def daemon():
    pools = [{"name": dt, "dtype": dt, "layers": LAYERS, "kv_heads": HEADS, "head_dim": DIM, "page_size": PAGE,
              "capacity": "2MiB", "backend": "host"} for dt in DTYPES]
    for pool in pools:
        if pool["dtype"].startswith("fp8"):
            pool["scales"] = {"source": "constant", "k": SCALES["k"], "v": SCALES["v"]}
    with tempfile.TemporaryDirectory(prefix="kvpy") as folder:
        d = Kvpoold(folder, pools, exe=os.path.join(BUILD, "daemon", "kvpoold")).start()
        yield d.url
        assert d.stop(timeout=10) == 0, d.log_text()


def test_ctypes_structs_match_the_c_layout():
    out = subprocess.run([os.path.join(BUILD, "tests", "client", "abi-layout")], check=True,
                         capture_output=True, text=True).stdout
    c = json.loads(out)
    assert set(c) == set(_capi.STRUCTS)
    for name, cls in _capi.STRUCTS.items():
        py_fields = {f[0]: getattr(cls, f[0]).offset for f in cls._fields_}
        assert py_fields == c[name]["fields"], name
        assert ctypes.sizeof(cls) == c[name]["size"], name


def test_attach_gives_the_pool_geometry(daemon):
    with kvpool.Client(daemon, name="geometry") as c:
        for dt in DTYPES:
            with c.attach(dt) as p:
                assert (p.name, p.dtype, p.backend, p.device) == (dt, dt, "host", None)
                assert (p.num_layers, p.kv_heads, p.head_dim, p.page_size) == (LAYERS, HEADS, DIM, PAGE)
                assert p.num_pages > 0
                fp8 = dt.startswith("fp8")
                assert p.k_scale == [SCALES["k"] if fp8 else 1.0] * LAYERS
                assert p.v_scale == [SCALES["v"] if fp8 else 1.0] * LAYERS
        st = c.status()
        assert sorted(x["name"] for x in st["pools"]) == sorted(DTYPES)
        me = [x for x in st["clients"] if x["name"] == "geometry"]
        assert len(me) == 1 and me[0]["pid"] == os.getpid()
        assert "kvpool_" in c.metrics()


def test_errors_carry_errno_and_the_library_message(daemon):
    with kvpool.Client(daemon, name="errors") as c:
        with pytest.raises(kvpool.KvpoolError) as e:
            c.attach("no-such-pool")
        assert e.value.errno == errno.ENOENT and "no-such-pool" in str(e.value)
        p = c.attach("bf16")
        with pytest.raises(kvpool.KvpoolError) as e:
            p.alloc(p.num_pages + 1)
        assert e.value.errno == errno.ENOSPC and "free" in str(e.value)
        pages = p.alloc(2)
        with pytest.raises(kvpool.KvpoolError) as e:
            p.free([pages[0], (pages[1] + 1) % p.num_pages if (pages[1] + 1) % p.num_pages != pages[0] else 0])
        assert e.value.errno in (errno.EPERM, errno.EINVAL)
        p.free(pages)
        with pytest.raises(kvpool.KvpoolError) as e:
            p.free(pages)  # no longer held
        assert e.value.errno == errno.EPERM
        # the library judges what it can see: a page id out of range
        with pytest.raises(kvpool.KvpoolError) as e:
            p.free([p.num_pages])
        assert e.value.errno == errno.ERANGE

    with kvpool.Client(daemon) as c:
        p = c.attach("fp8_e4m3")
        k = np.zeros((3, HEADS, DIM), np.float32)
        slots = np.array([0, 1, 2], np.int64)
        # what the binding judges before the library: each names its argument
        cases = [
            (lambda: p.write(LAYERS, k, k, slots), ValueError, "layer"),
            (lambda: p.write(0, k[:, :1], k[:, :1], slots), ValueError, "k: shape"),
            (lambda: p.write(0, k, k[:2], slots[:2]), ValueError, "differ"),
            (lambda: p.write(0, k, k, slots.astype(np.int32)), TypeError, "slots"),
            (lambda: p.write(0, k, k, slots[:2]), ValueError, "slots"),
            (lambda: p.write(0, k.astype(np.float64), k, slots), TypeError, "k: element type"),
            (lambda: p.write(0, k[:, :, ::2], k[:, :, ::2], slots), ValueError, "k: shape"),
            (lambda: p.write(0, np.zeros((3, DIM, HEADS), np.float32).transpose(0, 2, 1), k, slots),
             ValueError, "contiguous"),
            (lambda: p.write(0, [[0.0]], k, slots), TypeError, "k: expected an array"),
            (lambda: p.gather(0, [0], np.zeros((PAGE, HEADS, DIM), np.float16), np.zeros((PAGE, HEADS, DIM),
                                                                                         np.float16)),
             TypeError, "k_out"),
            (lambda: p.gather(0, [0, 1], np.zeros((PAGE, HEADS, DIM), np.float32),
                              np.zeros((PAGE, HEADS, DIM), np.float32)), ValueError, "k_out: shape"),
            (lambda: p.gather(0, [], k, k), ValueError, "pages"),
            (lambda: p.free([2**31]), ValueError, "int32"),
            (lambda: p.lookup([b"short"]), ValueError, "16 bytes"),
            (lambda: p.alloc(0), ValueError, "n"),
        ]
        for fn, exc, words in cases:
            with pytest.raises(exc) as e:
                fn()
            assert words in str(e.value), (words, str(e.value))
        ro = np.zeros((PAGE, HEADS, DIM), np.float32)
        ro.setflags(write=False)
        with pytest.raises(ValueError, match="read-only"):
            p.gather(0, [0], ro, np.zeros_like(ro))
        # a slot the library refuses (beyond the pool) comes back with its message
        with pytest.raises(kvpool.KvpoolError) as e:
            p.write(0, k, k, np.array([0, 1, p.num_pages * PAGE], np.int64))
        assert e.value.errno in (errno.ERANGE, errno.EINVAL) and "slot" in str(e.value)
        c.close()
        with pytest.raises(ValueError, match="detached"):
            p.alloc(1)
        with pytest.raises(ValueError, match="closed"):
            c.status()


def _fp4_oracle(x):
    """docs/dtypes.md's FP4 rule, per 16 elements along head_dim: scale 2^e
    with e = ceil(log2(amax/6)), each element e2m1(x / 2^e) * 2^e."""
    b = x.reshape(-1, 16).astype(np.float32)
    amax = np.abs(b).max(axis=1)
    m, ex = np.frexp(amax)              # amax = m * 2^ex, m in [0.5, 1)
    e = np.where(m <= 0.75, ex - 3, ex - 2).astype(np.int32)  # the doc's E-2 / E-1 with E = ex-1
    e = np.where(amax == 0, 0, e)
    s = np.ldexp(np.float32(1), e)[:, None]
    q = (b / s).astype(ml_dtypes.float4_e2m1fn).astype(np.float32) * s
    return q.reshape(x.shape)


def _oracle(dt, x, scale):
    if dt == "bf16":
        return x.astype(ml_dtypes.bfloat16).astype(np.float32)
    if dt == "fp16":
        return x.astype(np.float16).astype(np.float32)
    if dt == "fp8_e4m3":
        return (x / scale).astype(ml_dtypes.float8_e4m3fn).astype(np.float32) * scale
    if dt == "fp8_e5m2":
        return (x / scale).astype(ml_dtypes.float8_e5m2).astype(np.float32) * scale
    return _fp4_oracle(x)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("elem", ["f32", "bf16"])
def test_write_then_gather_equals_the_oracle(daemon, dt, elem):
    rng = np.random.default_rng(7)
    with kvpool.Client(daemon, name=f"rt-{dt}") as c:
        p = c.attach(dt)
        pages = p.alloc(3)
        T = 2 * PAGE + 5
        # rows 8 elements wider than a token: the token stride is free
        wide_k = rng.standard_normal((T, HEADS * DIM + 8)).astype(np.float32)
        wide_v = rng.standard_normal((T, HEADS * DIM + 8)).astype(np.float32)
        if elem == "bf16":
            wide_k, wide_v = wide_k.astype(ml_dtypes.bfloat16), wide_v.astype(ml_dtypes.bfloat16)
        k = wide_k[:, :HEADS * DIM].reshape(T, HEADS, DIM)
        v = wide_v[:, :HEADS * DIM].reshape(T, HEADS, DIM)
        assert not k.flags.c_contiguous
        slots = np.array([pages[t // PAGE] * PAGE + t % PAGE for t in range(T)], np.int64)
        skipped = 3
        slots[skipped] = -1
        for layer in range(LAYERS):
            p.write(layer, k, v, slots)
        ko = np.full((3 * PAGE, HEADS, DIM), np.nan, np.float32)
        vo = np.full_like(ko, np.nan)
        p.gather(1, pages, ko, vo)
        kf, vf = k.astype(np.float32), v.astype(np.float32)
        fp8 = dt.startswith("fp8")
        want_k = _oracle(dt, kf, SCALES["k"] if fp8 else 1.0)
        want_v = _oracle(dt, vf, SCALES["v"] if fp8 else 1.0)
        keep = np.arange(T) != skipped
        np.testing.assert_array_equal(ko[:T][keep], want_k[keep])
        np.testing.assert_array_equal(vo[:T][keep], want_v[keep])
        assert not np.any(ko[skipped]) and not np.any(ko[T:])  # a fresh pool is zeroed; -1 skipped
        kb = np.zeros((3 * PAGE, HEADS, DIM), ml_dtypes.bfloat16)
        vb = np.zeros_like(kb)
        p.gather(1, pages, kb, vb)
        np.testing.assert_array_equal(kb.astype(np.float32), ko.astype(ml_dtypes.bfloat16).astype(np.float32))
        p.free(pages)


def _attention(q, k, v, scale, causal_from=None):
    """float64 attention of q [n, Hq, D] over k, v [L, Hkv, D]; query i sits
    at position causal_from + i when causal_from is given."""
    n, hq, _ = q.shape
    g = hq // k.shape[1]
    out = np.zeros(q.shape, np.float64)
    for i in range(n):
        L = k.shape[0] if causal_from is None else causal_from + i + 1
        for h in range(hq):
            s = k[:L, h // g] @ q[i, h] * scale
            w = np.exp(s - s.max())
            out[i, h] = (w / w.sum()) @ v[:L, h // g]
    return out


@pytest.mark.parametrize("dt", ["bf16", "fp8_e5m2", "fp4_e2m1"])
def test_decode_and_extend_match_numpy_attention(daemon, dt):
    rng = np.random.default_rng(11)
    lens = [1, PAGE, PAGE + 1, 3 * PAGE + 7]
    hq = 2 * HEADS
    with kvpool.Client(daemon, name=f"attn-{dt}") as c:
        p = c.attach(dt)
        max_pages = max((n + PAGE - 1) // PAGE for n in lens)
        table = np.zeros((len(lens), max_pages), np.int32)
        kv = []
        for b, n in enumerate(lens):
            pages = p.alloc((n + PAGE - 1) // PAGE)[::-1]  # any order
            table[b, :len(pages)] = pages
            k = rng.standard_normal((n, HEADS, DIM)).astype(np.float32)
            v = rng.standard_normal((n, HEADS, DIM)).astype(np.float32)
            slots = np.array([pages[t // PAGE] * PAGE + t % PAGE for t in range(n)], np.int64)
            p.write(0, k, v, slots)
            ko = np.zeros((len(pages) * PAGE, HEADS, DIM), np.float32)
            vo = np.zeros_like(ko)
            p.gather(0, pages, ko, vo)
            kv.append((ko[:n].astype(np.float64), vo[:n].astype(np.float64)))
        seq_lens = np.array(lens, np.int32)
        scale = 1.0 / np.sqrt(DIM)

        q = rng.standard_normal((len(lens), hq, DIM)).astype(ml_dtypes.bfloat16)
        out = np.full(q.shape, np.nan, ml_dtypes.bfloat16)
        p.decode(0, q, out, table, seq_lens)
        for b in range(len(lens)):
            want = _attention(q[b:b + 1].astype(np.float64), *kv[b], scale)
            got = out[b:b + 1].astype(np.float64)
            assert np.linalg.norm(got - want) / np.linalg.norm(want) <= 1e-2, (dt, b)

        new = [1, 3, PAGE, 2]  # the last new[b] tokens of each sequence are the queries
        indptr = np.concatenate([[0], np.cumsum(new)]).astype(np.int32)
        qe = rng.standard_normal((indptr[-1], hq, DIM)).astype(np.float16)
        oe = np.full(qe.shape, np.nan, np.float16)
        p.extend(0, qe, oe, indptr, table, seq_lens, sm_scale=scale)
        for b, n in enumerate(lens):
            rows = slice(indptr[b], indptr[b + 1])
            want = _attention(qe[rows].astype(np.float64), *kv[b], scale, causal_from=n - new[b])
            got = oe[rows].astype(np.float64)
            assert np.linalg.norm(got - want) / np.linalg.norm(want) <= 1e-2, (dt, b)
        with pytest.raises(ValueError, match="qo_indptr"):
            p.extend(0, qe[:-1], oe[:-1], indptr, table, seq_lens)
        with pytest.raises(kvpool.KvpoolError) as e:  # a length beyond the page table: the library's check
            p.decode(0, q, out, table, seq_lens + max_pages * PAGE)
        assert e.value.errno == errno.EINVAL and "seq_len" in str(e.value)


def test_block_keys_and_the_prefix_cache_across_clients(daemon):
    def oracle(parent, tokens, extra=b""):  # docs/prefix-cache.md
        d = xxhash.xxh3_128_digest((parent or bytes(16)) + struct.pack(f"<{len(tokens)}i", *tokens) + extra)
        return d[:8][::-1] + d[8:][::-1]

    tokens = list(range(1000, 1000 + 3 * PAGE + 5))
    keys = kvpool.chain_keys(tokens, PAGE, extra=b"lora-7")
    assert len(keys) == 3
    parent = None
    for i, key in enumerate(keys):
        parent = oracle(parent, tokens[i * PAGE:(i + 1) * PAGE], b"lora-7")
        assert key == parent
    assert kvpool.block_key(None, tokens[:PAGE]) != keys[0]  # the extra bytes count

    with kvpool.Client(daemon, name="writer") as a, kvpool.Client(daemon, name="reader") as b:
        pa, pb = a.attach("fp8_e4m3"), b.attach("fp8_e4m3")
        pages = pa.alloc(3)
        assert pa.publish(pages, keys) == (3, [False, False, False])
        assert pa.publish(pages[:1], keys[:1]) == (0, [True])
        assert pb.lookup(keys) == pages
        assert pb.lookup([keys[0], oracle(None, [1, 2, 3])]) == pages[:1]
        free_before = _free_pages(b, "fp8_e4m3")
        a.close()  # the reader's references keep the pages
        assert _free_pages(b, "fp8_e4m3") == free_before
        pb.free(pages)
        pb.free(pages[:1])
    with kvpool.Client(daemon, name="salted", tenant_salt=bytes(range(16))) as s:
        assert s.attach("fp8_e4m3").lookup(keys) == []  # another tenant sees nothing


def test_reset_prefixes_drops_the_keys_not_the_pages(daemon):
    keys = kvpool.chain_keys(list(range(500, 500 + 3 * PAGE)), PAGE)
    with kvpool.Client(daemon, name="resetter") as c, kvpool.Client(daemon, name="holder") as h:
        p, ph = c.attach("fp16"), h.attach("fp16")
        pages = ph.alloc(3)
        assert ph.publish(pages, keys) == (3, [False] * 3)
        ph.free(pages[2:])  # one idle cached page, two held
        before = next(x for x in c.status()["pools"] if x["name"] == "fp16")
        assert c.reset_prefixes("fp16") == before["pages_cached"] >= 3
        after = next(x for x in c.status()["pools"] if x["name"] == "fp16")
        assert (after["pages_cached"], after["pages_held"]) == (0, before["pages_held"])
        assert p.lookup(keys) == []
        ph.free(pages[:2])  # still held until now
        assert c.reset_prefixes("fp16") == 0
        with pytest.raises(kvpool.KvpoolError) as e:
            c.reset_prefixes("no-such-pool")
        assert e.value.errno == errno.ENOENT and "no pool named" in str(e.value)
        with pytest.raises(ValueError, match="NUL"):
            c.reset_prefixes("fp16\0x")


def _free_pages(client, name):
    return next(x["pages_free"] for x in client.status()["pools"] if x["name"] == name)


def test_closing_a_client_gives_its_pages_back(daemon):
    with kvpool.Client(daemon, name="watcher") as w:
        before = _free_pages(w, "fp16")
        c = kvpool.Client(daemon, name="holder")
        c.attach("fp16").alloc(5)
        assert _free_pages(w, "fp16") == before - 5
        c.close()
        c.close()  # idempotent
        # the daemon releases a session's pages when it sees the connection
        # close, which the client does not wait for
        for _ in range(100):
            if _free_pages(w, "fp16") == before:
                break
            time.sleep(0.05)
        assert _free_pages(w, "fp16") == before


def test_no_daemon_is_a_clear_error(tmp_path):
    with pytest.raises(kvpool.KvpoolError) as e:
        kvpool.Client("ipc://" + str(tmp_path / "nothing.sock"))
    assert e.value.errno in (errno.ECONNREFUSED, errno.ENOENT)
    assert "nothing.sock" in str(e.value) or "connect" in str(e.value)


def test_arguments_the_kernels_cannot_take_are_refused_by_name(daemon):
    with kvpool.Client(daemon, name="strict") as c:
        p = c.attach("bf16")
        page = p.alloc(1)[0]
        k = np.zeros((3, HEADS, DIM), np.float32)
        slots = np.arange(page * PAGE, page * PAGE + 3, dtype=np.int64)
        misaligned = np.frombuffer(bytearray(k.nbytes + 4), np.float32, count=k.size, offset=2).reshape(k.shape)
        slots_mis = np.frombuffer(bytearray(8 * 4), np.int64, count=3, offset=4)
        q = np.zeros((1, HEADS, DIM), ml_dtypes.bfloat16)
        wide = np.lib.stride_tricks.as_strided(np.zeros(4, np.int32), (1, 2**32 + 1), (4 * (2**32 + 1), 4))
        be_bf16 = np.zeros((3, HEADS, DIM), np.dtype(ml_dtypes.bfloat16).newbyteorder(">"))
        cases = [
            (lambda: p.write(0, misaligned, misaligned, slots), ValueError, "k: data pointer"),
            (lambda: p.write(0, k, k, slots_mis), ValueError, "slots: data pointer"),
            (lambda: p.write(0, k[::-1], k, slots), ValueError, "k: token stride"),
            (lambda: p.write(0, np.broadcast_to(k[:1], k.shape), k, slots), ValueError, "k: token stride"),
            (lambda: p.write(0, be_bf16, be_bf16, slots), TypeError, "k: element type"),
            (lambda: p.write(1.5, k, k, slots), TypeError, "layer"),
            (lambda: p.write(0, k, k, [0.5, 1.5, 2.5]), TypeError, "slots"),
            (lambda: p.free([float(page)]), TypeError, "pages"),
            (lambda: p.free([[page], page]), TypeError, "pages"),
            (lambda: p.alloc(2.5), TypeError, "n"),
            (lambda: p.lookup([16]), TypeError, "keys[0]"),
            (lambda: p.lookup([bytes(16)] * 8193), ValueError, "keys"),
            # bytes()'s own errors named nothing
            (lambda: p.lookup([1.5]), TypeError, "keys[0]"),
            (lambda: p.lookup([bytes(16), [300] * 16]), ValueError, "keys[1]"),
            (lambda: kvpool.block_key(None, [1], extra=1.5), TypeError, "extra"),
            (lambda: p.decode(0, q, np.zeros_like(q), [[page]], [1], sm_scale=object()), TypeError, "sm_scale"),
            (lambda: p.decode(0, q, np.zeros_like(q), [[page]], [1], sm_scale=np.array([0.1, 0.2])), TypeError,
             "sm_scale"),
            (lambda: p.decode(0, q, np.zeros_like(q), [[page]], [1], sm_scale=10**400), ValueError, "sm_scale"),
            (lambda: kvpool.block_key(None, [2**32 + 5]), ValueError, "tokens"),
            # bytes(3) is three zero bytes: a LoRA id given as an int keyed its blocks with zeros
            # (and bytes(2**40) asks for a TiB); a str failed without naming extra
            (lambda: kvpool.block_key(None, [1, 2], extra=3), TypeError, "extra"),
            (lambda: kvpool.chain_keys(list(range(PAGE)), PAGE, extra=7), TypeError, "extra"),
            (lambda: kvpool.block_key(None, [1, 2], extra="lora-7"), TypeError, "extra"),
            (lambda: p.decode(0, np.zeros((), np.float16), q, [[0]], [1]), ValueError, "q: shape"),
            (lambda: p.decode(0, q[:, :0], q[:, :0], [[0]], [1]), ValueError, "q heads"),
            (lambda: p.decode(0, q, np.zeros_like(q), wide, [1]), ValueError, "page_table"),
            (lambda: p.decode(0, q, np.zeros_like(q), [[0]], [1], sm_scale=1e39), ValueError, "sm_scale"),
            (lambda: c.attach("bf16\0x"), ValueError, "name"),
            # a cudaStream_t is a pointer: ctypes passed -1 as 2^64-1 and 2^64+5 as stream 5
            (lambda: p.write(0, k, k, slots, stream=-1), ValueError, "stream"),
            (lambda: p.write(0, k, k, slots, stream=2**64), ValueError, "stream"),
            (lambda: p.decode(0, q, np.zeros_like(q), [[page]], [1], stream=type("S", (), {"ptr": 2**64 + 5})()),
             ValueError, "stream"),
        ]
        for fn, exc, words in cases:
            with pytest.raises(exc) as e:
                fn()
            assert words in str(e.value), (words, str(e.value))
        # one token: its stride is never used, so a broadcast one is fine
        p.write(0, np.broadcast_to(k[0], (1, HEADS, DIM)), k[:1], slots[:1])
        p.free([page])


def test_close_and_detach_wait_for_calls_in_other_threads(daemon):
    import threading
    for how in ("close", "detach"):
        c = kvpool.Client(daemon, name="threads")
        p = c.attach("fp4_e2m1")
        pages = np.array(p.alloc(32), np.int32)
        ko = np.zeros((32 * PAGE, HEADS, DIM), np.float32)
        vo = np.zeros_like(ko)
        got = []

        def worker():
            try:
                while True:
                    p.gather(0, pages, ko, vo)
            except ValueError as e:
                got.append(e)

        t = threading.Thread(target=worker)
        t.start()
        time.sleep(0.05)
        c.close() if how == "close" else p.detach()  # unmaps the pool: without waiting, a segfault
        t.join()
        assert got and ("closed" in str(got[0]) or "detached" in str(got[0])), how
        c.close()


def test_a_forked_child_forgets_the_parents_client(daemon):
    # in a separate interpreter, so that the child's normal exit runs the
    # finalizers (which must not disconnect the parent's client: nng aborts)
    script = f"""
import os, sys
sys.path.insert(0, {os.path.join(os.path.dirname(__file__), "..", "..", "client", "python")!r})
import kvpool
c = kvpool.Client({daemon!r}, name="parent")
p = c.attach("fp16")
pages = p.alloc(2)
pid = os.fork()
if pid == 0:
    try:
        p.alloc(1)
        sys.exit(3)
    except ValueError as e:
        sys.exit(0 if "fork" in str(e) else 4)
_, status = os.waitpid(pid, 0)
p.free(pages)
c.close()
sys.exit(os.waitstatus_to_exitcode(status))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (r.returncode, r.stderr)


def test_a_capture_without_host_lengths_is_refused_before_any_copy(monkeypatch):
    # A CUDA pool's decode copies seq_lens to the host when seq_lens_host is
    # not given; under torch.cuda.graph that copy would invalidate the
    # caller's capture, so the binding refuses first, naming the argument.
    # Neither torch nor a GPU is needed: a stand-in module answers whether
    # a capture is under way, and the pool is a CUDA pool's shell.
    import types

    capturing = [True]
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(is_current_stream_capturing=lambda: capturing[0]))
    monkeypatch.setitem(sys.modules, "torch", fake)
    copied = []

    class DeviceLens:
        def cpu(self):
            copied.append(1)
            return np.array([16], np.int32)

    pool = kvpool.Pool.__new__(kvpool.Pool)
    pool.backend, pool.name = "cuda", "shell"
    with pytest.raises(ValueError, match="seq_lens_host: pass it"):
        pool._host_copy(DeviceLens(), None, None, "seq_lens", None)
    assert copied == []
    capturing[0] = False
    assert pool._host_copy(DeviceLens(), None, None, "seq_lens", None).shape == (1,) and copied == [1]


class _FakeTorch:
    """Enough of torch's stream API for the binding's host copies, without
    torch or a GPU: streams are their handles, the current one is what
    torch.cuda.stream sets, and `capturing` names the handles whose
    capture is under way."""

    class Stream:
        def __init__(self, handle):
            self.cuda_stream = handle

    def __init__(self, current):
        import contextlib
        import types
        fake = self
        self.current, self.capturing = self.Stream(current), set()

        @contextlib.contextmanager
        def stream(s):
            prev, fake.current = fake.current, s
            try:
                yield
            finally:
                fake.current = prev

        self.cuda = types.SimpleNamespace(
            Stream=self.Stream, stream=stream,
            ExternalStream=lambda h, device=None: self.Stream(h),
            default_stream=lambda device=None: self.Stream(0),
            is_current_stream_capturing=lambda: fake.current.cuda_stream in fake.capturing)
        self._C = types.SimpleNamespace(_cuda_getCurrentRawStream=lambda device: fake.current.cuda_stream)
        self.device = lambda kind, index: (kind, index)


class _FakeTensor:
    """A CUDA tensor as the binding sees one (data_ptr, stride, dtype,
    device), over a NumPy array; cpu() notes the stream current at the
    copy in `copies`."""

    def __init__(self, a, dtype, torch, copies):
        import types
        self.a, self.dtype, self.torch, self.copies = a, dtype, torch, copies
        self.is_cuda, self.layout = True, "torch.strided"
        self.device = types.SimpleNamespace(type="cuda", index=0)
        self.shape = a.shape

    def data_ptr(self):
        return self.a.ctypes.data

    def stride(self):
        return tuple(s // self.a.itemsize for s in self.a.strides)

    def cpu(self):
        self.copies.append(self.torch.current.cuda_stream)
        return self.a.copy()


def _cuda_shell(monkeypatch, calls):
    """A CUDA pool's shell on device 0 whose library calls only note their
    name and stream in `calls`, in order."""
    import types
    pool = kvpool.Pool.__new__(kvpool.Pool)
    pool.backend, pool.name, pool.device, pool._h = "cuda", "shell", 0, 1
    pool.num_layers, pool.kv_heads, pool.head_dim, pool.page_size = LAYERS, HEADS, DIM, PAGE
    pool._default_scale = 1 / DIM ** 0.5
    pool._life = kvpool.client._Life()
    pool._client = types.SimpleNamespace(_life=kvpool.client._Life(), _check=lambda rv, call: rv)

    class Lib:
        def __getattr__(self, name):
            return lambda *a: calls.append((name, a[-1])) or 0
    monkeypatch.setattr(_capi, "lib", Lib())
    return pool


def test_the_host_copy_is_taken_on_the_calls_stream(monkeypatch):
    # seq_lens (and qo_indptr) written by the caller on the stream it passes
    # as stream= must be copied to the host after that work: the copy was
    # made on torch's current stream whatever stream= said, so it could
    # read lengths not yet written.  A stand-in torch notes the stream
    # current at each copy; the pool is a CUDA pool's shell.
    torch = _FakeTorch(current=5)
    monkeypatch.setitem(sys.modules, "torch", torch)
    copies, calls = [], []
    pool = _cuda_shell(monkeypatch, calls)
    t = lambda a, dtype="torch.int32": _FakeTensor(a, dtype, torch, copies)  # noqa: E731
    table, lens = t(np.zeros((2, 3), np.int32)), t(np.array([3, 17], np.int32))
    q = t(np.zeros((2, 2 * HEADS, DIM), np.uint16), "torch.bfloat16")
    out = t(np.zeros((2, 2 * HEADS, DIM), np.uint16), "torch.bfloat16")

    indptr = t(np.array([0, 1, 2], np.int32))
    pool.decode(0, q, out, table, lens, stream=11)
    assert copies == [11] and calls == [("kvc_decode", 11)]
    pool.extend(0, q, out, indptr, table, lens, stream=15)
    assert copies == [11, 15, 15] and calls == [("kvc_decode", 11), ("kvc_extend", 15)]
    del copies[:], calls[:]
    pool.plan_decode(table, lens)                       # no stream: the current one, as the call's
    pool.plan_decode(table, lens, stream=7)             # a handle
    pool.plan_decode(table, lens, stream=torch.Stream(9))  # a stream object
    pool.plan_decode(table, lens, stream=0)             # the legacy default stream
    assert copies == [5, 7, 9, 0]
    assert torch.current.cuda_stream == 5               # the current stream is given back
    del copies[:]
    plan = pool.plan_extend(indptr, table, lens, stream=13)
    assert copies == [13, 13] and plan.rows() == 2
    del copies[:]

    # a capture on the call's stream, or on the current one, refuses before any copy
    for capturing in (7, 5):
        torch.capturing = {capturing}
        with pytest.raises(ValueError, match="seq_lens_host: pass it"):
            pool.plan_decode(table, lens, stream=7)
        with pytest.raises(ValueError, match="qo_indptr_host: pass it"):
            pool.extend(0, q, out, indptr, table, lens, stream=7)
    assert copies == [] and calls == []
    torch.capturing = set()
    pool.plan_decode(table, lens, seq_lens_host=np.array([3, 17], np.int32), stream=7)  # given: no copy
    assert copies == []


class _OnGpu:
    """An object with a __cuda_array_interface__ (version 3) over a NumPy
    array; stream: its "stream" key, left out when absent."""
    _absent = object()

    def __init__(self, a, stream=_absent, readonly=False):
        self.a, self.stream, self.readonly = a, stream, readonly

    @property
    def __cuda_array_interface__(self):
        ai = {"shape": self.a.shape, "typestr": self.a.dtype.str, "data": (self.a.ctypes.data, self.readonly),
              "strides": None, "version": 3}
        if self.stream is not self._absent:
            ai["stream"] = self.stream
        return ai


class _FakeRuntime:
    """libcudart as wait_streams uses it, noting each event call in `log`."""

    def __init__(self, log, device=0, fail=None):
        self.log, self.device, self.fail, self.events = log, device, fail, 0

    def cudaPointerGetAttributes(self, attrs, ptr):
        return 1  # unknown: no device to check

    def cudaGetLastError(self):
        return 0

    def cudaGetDevice(self, ref):
        ref._obj.value = self.device
        return 0

    def cudaSetDevice(self, d):
        self.log.append(("set_device", d))
        return 0

    def cudaEventCreateWithFlags(self, ref, flags):
        self.events += 1
        ref._obj.value = 0x1000 + self.events
        self.log.append(("create", flags))
        return 0

    def cudaEventRecord(self, ev, stream):
        self.log.append(("record", ev.value, stream.value))
        return 0

    def cudaStreamWaitEvent(self, stream, ev, flags):
        self.log.append(("wait", stream.value, ev.value))
        return self.fail or 0

    def cudaEventDestroy(self, ev):
        self.log.append(("destroy", ev.value))
        return 0

    def cudaGetErrorName(self, e):
        return b"cudaErrorInvalidResourceHandle" if e == 400 else None


def test_a_cuda_array_interface_stream_is_waited_for(monkeypatch):
    # CUDA Array Interface v3: "stream" is the stream to synchronize on
    # before the memory is used (None: nothing to wait for; 1 the legacy
    # default stream, 2 the per-thread one; 0 disallowed).  It was ignored:
    # a kernel on the call's stream read k before the producer's stream
    # had written it.  The call's stream must wait for it (an event
    # recorded there, waited for on the call's stream) before the launch.
    from kvpool import _arrays
    log, calls = [], []
    rt = _FakeRuntime(log)
    monkeypatch.setattr(_arrays, "_cudart", lambda: rt)
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # no current stream: None is the legacy one
    pool = _cuda_shell(monkeypatch, calls)
    pool._run = (lambda run: lambda *a: (log.append(("launch", a[0])), run(*a))[1])(pool._run)
    k = np.zeros((3, HEADS, DIM), np.float32)
    slots = np.arange(3, dtype=np.int64)

    pool.write(0, _OnGpu(k), _OnGpu(k), _OnGpu(slots), stream=0x55)  # no stream key: no CUDA call
    pool.write(0, _OnGpu(k, None), _OnGpu(k, 0x55), _OnGpu(slots, 0x55), stream=0x55)  # None, or the call's own
    pool.write(0, _OnGpu(k, 1), _OnGpu(k), _OnGpu(slots), stream=None)  # 1 is the legacy stream, as None
    assert log == [("launch", "kvc_write")] * 3 and calls == [("kvc_write", 0x55)] * 2 + [("kvc_write", None)]
    del log[:], calls[:]

    pool.write(0, _OnGpu(k, 0x77), _OnGpu(k, 0x77), _OnGpu(slots, 2), stream=0x55)
    assert log == [("launch", "kvc_write"),
                   ("create", 2), ("record", 0x1001, 0x77), ("wait", 0x55, 0x1001), ("destroy", 0x1001),
                   ("create", 2), ("record", 0x1002, 2), ("wait", 0x55, 0x1002), ("destroy", 0x1002)]
    assert calls == [("kvc_write", 0x55)]
    del log[:], calls[:]

    # a plan's arrays are waited for at each run, the point of use; the
    # pool's device is made current for the events, then given back
    rt.device = 1
    table = _OnGpu(np.zeros((2, 1), np.int32), 0x77)
    lens = _OnGpu(np.array([1, 1], np.int32))
    q = _OnGpu(np.zeros((2, 2 * HEADS, DIM), np.float16))
    out = _OnGpu(np.zeros((2, 2 * HEADS, DIM), np.float16), 0x88)
    plan = pool.plan_decode(table, lens, seq_lens_host=np.array([1, 1], np.int32))
    assert log == []
    for _ in range(2):
        plan.run(0, q, out, stream=0x55)
    one = [("set_device", 0), ("create", 2), ("record", None, 0x77), ("wait", 0x55, None), ("destroy", None),
           ("create", 2), ("record", None, 0x88), ("wait", 0x55, None), ("destroy", None), ("set_device", 1)]
    assert [tuple(None if isinstance(x, int) and x > 0x1000 and i else x for i, x in enumerate(e)) for e in log
            if e[0] != "launch"] == one * 2
    assert calls == [("kvc_decode", 0x55)] * 2
    del log[:], calls[:]
    rt.device = 0

    # what the interface does not allow, named; CUDA's refusal, named
    for bad, exc, text in ((0, ValueError, "k: its __cuda_array_interface__ gives stream 0"),
                           ("s", TypeError, "k: its __cuda_array_interface__ stream is str"),
                           (True, TypeError, "k: its __cuda_array_interface__ stream is bool"),
                           (2**64, ValueError, "k: its __cuda_array_interface__ stream")):
        with pytest.raises(exc, match=text):
            pool.write(0, _OnGpu(k, bad), _OnGpu(k), _OnGpu(slots))
    with pytest.raises(ValueError, match="workspace: its __cuda_array_interface__ gives stream 0"):
        plan.run(0, q, _OnGpu(out.a), workspace=_OnGpu(np.zeros(64, np.uint8), 0))
    rt.fail = 400
    with pytest.raises(ValueError, match=r"v: waiting for its __cuda_array_interface__ stream 0x99: "
                                         r"cudaStreamWaitEvent failed \(cudaErrorInvalidResourceHandle\)"):
        pool.write(0, _OnGpu(k), _OnGpu(k, 0x99), _OnGpu(slots), stream=0x55)
    assert calls == [], "a call was launched after a refusal"
    # a read-only output on a CUDA pool
    with pytest.raises(ValueError, match="k_out: is read-only"):
        pool.gather(0, _OnGpu(np.zeros(1, np.int32)), _OnGpu(np.zeros((PAGE, HEADS, DIM), np.float32), readonly=True),
                    _OnGpu(np.zeros((PAGE, HEADS, DIM), np.float32)))
    with pytest.raises(ValueError, match="out: is read-only"):
        plan.run(0, q, _OnGpu(out.a, readonly=True))


def test_read_only_inputs_are_taken_and_read_only_outputs_refused(daemon):
    # every output (gather's k_out and v_out, attention's out, a workspace)
    # goes through the writable check; inputs may be read-only
    def ro(a):
        a = np.array(a)
        a.setflags(write=False)
        return a
    rng = np.random.default_rng(3)
    with kvpool.Client(daemon, name="read-only") as c:
        p = c.attach("bf16")
        pages = p.alloc(1)
        k = ro(rng.standard_normal((5, HEADS, DIM)).astype(np.float32))
        p.write(0, k, ro(-k), ro(np.arange(pages[0] * PAGE, pages[0] * PAGE + 5, dtype=np.int64)))
        ko, vo = np.zeros((PAGE, HEADS, DIM), np.float32), np.zeros((PAGE, HEADS, DIM), np.float32)
        p.gather(0, ro(np.array(pages, np.int32)), ko, vo)
        np.testing.assert_array_equal(ko[:5], k.astype(ml_dtypes.bfloat16).astype(np.float32))
        table, lens = ro(np.array([pages], np.int32)), ro(np.array([5], np.int32))
        indptr = ro(np.array([0, 2], np.int32))
        q = ro(rng.standard_normal((1, 2 * HEADS, DIM)).astype(np.float16))
        qe = ro(rng.standard_normal((2, 2 * HEADS, DIM)).astype(np.float16))
        out, oute = np.zeros_like(q), np.zeros_like(qe)
        p.decode(0, q, out, table, lens, seq_lens_host=ro(lens))
        p.extend(0, qe, oute, indptr, table, lens, qo_indptr_host=indptr, seq_lens_host=lens)
        assert np.abs(out.astype(np.float32)).sum() > 0 and np.abs(oute.astype(np.float32)).sum() > 0
        plan = p.plan_decode(table, lens)
        ws = np.zeros(64, np.uint8)
        for fn, name in ((lambda: p.gather(0, pages, ro(ko), vo), "k_out"),
                         (lambda: p.gather(0, pages, ko, ro(vo)), "v_out"),
                         (lambda: p.decode(0, q, ro(out), table, lens), "out"),
                         (lambda: p.extend(0, qe, ro(oute), indptr, table, lens), "out"),
                         (lambda: plan.run(0, q, ro(out)), "out"),
                         (lambda: plan.run(0, q, out, workspace=ro(ws)), "workspace")):
            with pytest.raises(ValueError, match=f"^{name}: is read-only"):
                fn()
        p.free(pages)


def _fp4_decode(codes, scales):
    """fp4 codes (uint8 [..., D/2], the even element in the low nibble) and
    their E8M0 block scales (uint8 [..., D/16]) as float32, from
    docs/dtypes.md's tables rather than the library's decoder."""
    nib = np.stack([codes & 0xF, codes >> 4], axis=-1).reshape(codes.shape[:-1] + (2 * codes.shape[-1],))
    mag = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float32)[nib & 7]
    scale = np.ldexp(np.float32(1), scales.astype(np.int32) - 127)
    return np.where(nib & 8, -mag, mag) * np.repeat(scale, 16, axis=-1)


@pytest.mark.parametrize("dt", DTYPES)
def test_kv_cache_views_the_pages_the_kernels_use(daemon, dt):
    rng = np.random.default_rng(11)
    fp4, fp8 = dt == "fp4_e2m1", dt.startswith("fp8")
    with kvpool.Client(daemon, name=f"views-{dt}") as c:
        p = c.attach(dt)
        pages = p.alloc(3)
        T = 2 * PAGE + 5
        k = rng.standard_normal((T, HEADS, DIM)).astype(np.float32)
        v = rng.standard_normal((T, HEADS, DIM)).astype(np.float32)
        slots = np.array([pages[t // PAGE] * PAGE + t % PAGE for t in range(T)], np.int64)
        p.write(1, k, v, slots)
        ko = np.full((3 * PAGE, HEADS, DIM), np.nan, np.float32)
        vo = np.full_like(ko, np.nan)
        p.gather(1, pages, ko, vo)

        kv = p.kv_cache(1)
        width = DIM // 2 if fp4 else DIM
        assert kv.shape == (2, p.num_pages, PAGE, HEADS, width)
        assert kv.dtype.name == {"bf16": "bfloat16", "fp16": "float16", "fp8_e4m3": "float8_e4m3fn",
                                 "fp8_e5m2": "float8_e5m2", "fp4_e2m1": "uint8"}[dt]
        every = p.kv_cache()
        assert every.shape == (LAYERS,) + kv.shape
        assert every[1].__array_interface__["data"][0] == kv.__array_interface__["data"][0]
        assert every[0].__array_interface__["data"][0] == p.base  # layer 0's K opens the pool

        def decoded(layer, view):  # K and V of `pages`, read through the view and decoded here
            got = view[:, pages].reshape(2, 3 * PAGE, HEADS, width)
            if fp4:
                sc = p.kv_block_scales(layer)
                assert sc.shape == (2, p.num_pages, PAGE, HEADS, DIM // 16) and sc.dtype == np.uint8
                return _fp4_decode(got, sc[:, pages].reshape(2, 3 * PAGE, HEADS, DIM // 16))
            vals = got.astype(np.float32)
            if fp8:
                vals = vals * np.array([p.k_scale[layer], p.v_scale[layer]], np.float32)[:, None, None, None]
            return vals

        # what the write kernel stored, as gather dequantizes it
        vals = decoded(1, kv)
        np.testing.assert_array_equal(vals[0], ko)
        np.testing.assert_array_equal(vals[1], vo)
        assert np.any(vals[0][:T] != 0)
        p.write(0, -k, 2 * v, slots)  # another layer, other values
        p.gather(0, pages, ko, vo)
        vals = decoded(0, every[0])
        np.testing.assert_array_equal(vals[0], ko)
        np.testing.assert_array_equal(vals[1], vo)
        p.gather(1, pages, ko, vo)
        sc = p.kv_block_scales(1) if fp4 else None

        # and the other way: a store into the view is what the kernels read
        if fp4:
            kv[1, pages[2], 3, 1, 0] = 0xB2          # elements 0, 1 of the head: codes 2 (+1.0) and 11 (-1.5)
            sc[1, pages[2], 3, 1, 0] = 127 + 3       # block 0 scaled by 8
            want = [8.0, -12.0]
        else:
            kv[1, pages[2], 3, 1, :2] = np.array([2.0, -0.75], np.float32).astype(kv.dtype)
            want = [2.0 * p.v_scale[1], -0.75 * p.v_scale[1]]
        p.gather(1, pages, ko, vo)
        np.testing.assert_array_equal(vo[2 * PAGE + 3, 1, :2], np.array(want, np.float32))

        # the arrays keep the pool mapped: detach and close refuse while one lives
        with pytest.raises(BufferError, match="kv_cache"):
            p.detach()
        with pytest.raises(BufferError, match="delete them first"):
            c.close()
        p.free(pages)  # both still open
        row = kv[1, pages[0]]  # a view of a view holds the memory too
        del kv, every, sc
        with pytest.raises(BufferError, match="1 array"):
            p.detach()
        del row
        p.detach()
        with pytest.raises(ValueError, match="detached"):
            p.kv_cache(0)


def test_kv_cache_arguments_are_checked(daemon):
    with kvpool.Client(daemon, name="views-args") as c:
        p = c.attach("fp8_e5m2")
        with pytest.raises(ValueError, match="layer"):
            p.kv_cache(LAYERS)
        with pytest.raises(TypeError, match="layer"):
            p.kv_cache(1.0)
        with pytest.raises(ValueError, match="like"):
            p.kv_cache(0, like="cupy")
        with pytest.raises(ValueError, match="k_scale"):
            p.kv_block_scales(0)
        with pytest.raises(ValueError, match="only fp4_e2m1"):
            c.attach("bf16").kv_block_scales()
        assert len(p._exports) == 0  # nothing was handed out


def test_a_failed_view_leaves_no_export(daemon, monkeypatch):
    with kvpool.Client(daemon, name="views-fail") as c:
        p = c.attach("fp8_e4m3")
        monkeypatch.setitem(sys.modules, "torch", None)  # import torch fails
        with pytest.raises(ImportError, match="torch") as e:
            p.kv_cache(0, like="torch")
        assert len(p._exports) == 0, "an exporter was left behind by a failed call"
        del e
        p.detach()


def test_a_second_close_waits_for_the_first_ones_outcome():
    # thread A's shut is refused (a view is alive) while thread B's shut
    # waits: B must not return as if the handle were shut, but shut it
    import threading
    from kvpool.client import _Life

    life = _Life()
    inside, release, order = threading.Event(), threading.Event(), []

    def refuse_once():
        inside.set()
        release.wait(5)
        return BufferError("a view is alive")

    def a():
        try:
            life.shut("closed", refuse_once)
        except BufferError:
            order.append("A refused")

    def b():
        order.append("B shut" if life.shut("closed") else "B found it shut")

    ta = threading.Thread(target=a)
    ta.start()
    assert inside.wait(5)
    tb = threading.Thread(target=b)
    tb.start()
    time.sleep(0.2)
    assert order == [], "the second shut returned while the first one was deciding"
    release.set()
    ta.join(5)
    tb.join(5)
    assert order == ["A refused", "B shut"] and life.closed == "closed"
    assert life.shut("again") is False


def test_a_with_block_that_raises_with_a_view_alive_closes_when_it_is_dropped(daemon):
    import gc

    def body():
        with kvpool.Client(daemon, name="raiser") as c:
            p = c.attach("bf16")
            p.alloc(4)
            views = [p.kv_cache(0)]  # alive in this frame when the exception leaves the block
            raise RuntimeError(f"boom, {len(views)} view alive")

    gc.disable()  # what is freed below must be freed by reference counting alone
    try:
        try:
            body()
        except RuntimeError:
            pass  # the traceback, and with it the frame and the view, goes at the end of this block
        with kvpool.Client(daemon, name="raiser-watch") as w:
            for _ in range(100):
                if not any(x["name"] == "raiser" for x in w.status()["clients"]):
                    break
                time.sleep(0.05)
            assert not any(x["name"] == "raiser" for x in w.status()["clients"]), \
                "the client left open by the with block was not closed once its view was dropped"
    finally:
        gc.enable()


def test_a_plan_checks_the_step_once_and_runs_every_layer(daemon):
    rng = np.random.default_rng(5)
    lens = [PAGE + 3, 2 * PAGE]
    with kvpool.Client(daemon, name="plans") as c:
        p = c.attach("fp8_e5m2")
        table = np.zeros((2, 2), np.int32)
        for b, n in enumerate(lens):
            pages = p.alloc(2)
            table[b] = pages
            slots = np.array([pages[t // PAGE] * PAGE + t % PAGE for t in range(n)], np.int64)
            for layer in range(LAYERS):  # other K/V in each layer
                k = rng.standard_normal((n, HEADS, DIM)).astype(np.float32)
                p.write(layer, k, -k, slots)
        seq_lens = np.array(lens, np.int32)
        plan = p.plan_decode(table, seq_lens)
        assert plan.batch == 2 and plan.rows() == 2
        q = rng.standard_normal((2, 2 * HEADS, DIM)).astype(ml_dtypes.bfloat16)
        for layer in range(LAYERS):  # the same q: only the layer's K/V differ
            got, want = np.zeros_like(q), np.zeros_like(q)
            plan.run(layer, q, got, sm_scale=0.1)
            p.decode(layer, q, want, table, seq_lens, sm_scale=0.1)
            np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32))
            for b, n in enumerate(lens):  # against float64 attention over this layer's gathered K/V
                ko = np.zeros((2 * PAGE, HEADS, DIM), np.float32)
                vo = np.zeros_like(ko)
                p.gather(layer, table[b], ko, vo)
                ref = _attention(q[b:b + 1].astype(np.float64), ko[:n].astype(np.float64),
                                 vo[:n].astype(np.float64), 0.1)
                g = got[b:b + 1].astype(np.float64)
                assert np.linalg.norm(g - ref) / np.linalg.norm(ref) <= 1e-2, (layer, b)
        with pytest.raises(ValueError, match="q: 3 rows"):
            plan.run(0, np.zeros((3, 2 * HEADS, DIM), np.float16), np.zeros((3, 2 * HEADS, DIM), np.float16))
        with pytest.raises(ValueError, match="layer"):
            plan.run(LAYERS, q, got)
        with pytest.raises(ValueError, match="sm_scale"):
            plan.run(0, q, got, sm_scale=-1.0)
        with pytest.raises(ValueError, match="page_table"):
            p.plan_decode(table[:, 0], seq_lens)

        # extend: the queries' rows follow qo_indptr_host as it is at each run
        indptr = np.array([0, 2, 3], np.int32)
        eplan = p.plan_extend(indptr, table, seq_lens)
        assert eplan.rows() == 3
        qe = rng.standard_normal((3, HEADS, DIM)).astype(np.float16)
        got, want = np.zeros_like(qe), np.zeros_like(qe)
        eplan.run(1, qe, got)
        p.extend(1, qe, want, indptr, table, seq_lens)
        np.testing.assert_array_equal(got, want)
        indptr[2] = 4  # the host copy is the array itself on a host pool
        assert eplan.rows() == 4
        with pytest.raises(ValueError, match="ends at 4"):
            eplan.run(1, qe, got)
        p.detach()
        with pytest.raises(ValueError, match="detached"):
            plan.run(0, q, np.zeros_like(q))


def test_a_workspace_is_checked_and_ignored_on_a_host_pool(daemon):
    # kvclient.h: a host pool needs no workspace (sizes 0) and ignores a
    # well-formed one; the binding passes it as kvc_decode_ws does, and the
    # library refuses the shapes a CUDA pool refuses (NULL with bytes,
    # misaligned)
    rng = np.random.default_rng(9)
    lens = [PAGE + 5, 3]
    with kvpool.Client(daemon, name="workspace") as c:
        p = c.attach("bf16")
        table = np.zeros((2, 2), np.int32)
        for b, n in enumerate(lens):
            pages = p.alloc(2)
            table[b] = pages
            slots = np.array([pages[t // PAGE] * PAGE + t % PAGE for t in range(n)], np.int64)
            k = rng.standard_normal((n, HEADS, DIM)).astype(np.float32)
            p.write(0, k, 2 * k, slots)
        seq_lens = np.array(lens, np.int32)
        q = rng.standard_normal((2, 2 * HEADS, DIM)).astype(ml_dtypes.bfloat16)
        raw = np.zeros(256, np.uint8)
        off = -raw.ctypes.data % 16
        ws = raw[off:off + 128]  # 16-byte aligned
        want = np.zeros_like(q)
        p.decode(0, q, want, table, seq_lens)
        assert p.decode_workspace(0, q, want, table, seq_lens) == 0
        # any element type: datetime64's type string '<M8[ns]' used to fail int('8[ns]'), unnamed
        for w in (ws, (ws.ctypes.data, ws.nbytes), (ws.ctypes.data, 0), ws.view(np.float32), ws.view("M8[ns]")):
            got = np.full_like(q, np.nan)
            p.decode(0, q, got, table, seq_lens, workspace=w)
            np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32))
        plan = p.plan_decode(table, seq_lens)
        assert plan.workspace_bytes(0, q, want) == 0
        # the size answers for the call on any stream, captured or not: no stream argument
        with pytest.raises(TypeError):
            p.decode_workspace(0, q, want, table, seq_lens, stream=None)
        with pytest.raises(TypeError):
            plan.workspace_bytes(0, q, want, stream=None)
        got = np.full_like(q, np.nan)
        plan.run(0, q, got, workspace=ws)
        np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32))

        indptr = np.array([0, 2, 3], np.int32)
        qe = rng.standard_normal((3, HEADS, DIM)).astype(np.float16)
        ewant = np.zeros_like(qe)
        p.extend(0, qe, ewant, indptr, table, seq_lens)
        assert p.extend_workspace(0, qe, ewant, indptr, table, seq_lens) == 0
        got = np.full_like(qe, np.nan)
        p.extend(0, qe, got, indptr, table, seq_lens, workspace=ws)
        np.testing.assert_array_equal(got, ewant)

        # the library's refusals, before anything is written
        got = np.full_like(q, np.nan)
        for w, text in ((raw[off + 4:off + 132], "16-byte aligned"), ((0, 64), "workspace is NULL")):
            with pytest.raises(kvpool.KvpoolError) as e:
                p.decode(0, q, got, table, seq_lens, workspace=w)
            assert e.value.errno == errno.EINVAL and text in str(e.value) and "kvc_decode_ws" in str(e.value)
        assert np.isnan(got.astype(np.float32)).all()
        eout = np.full_like(qe, np.nan)
        with pytest.raises(kvpool.KvpoolError) as e:
            p.extend(0, qe, eout, indptr, table, seq_lens, workspace=raw[off + 8:off + 24])
        assert e.value.errno == errno.EINVAL and "kvc_extend_ws" in str(e.value)
        assert np.isnan(eout).all()
        with pytest.raises(kvpool.KvpoolError) as e:  # the size query checks what the call checks
            p.decode_workspace(0, q, want, table, seq_lens + 2 * PAGE)
        assert e.value.errno == errno.EINVAL and "kvc_decode_workspace" in str(e.value) and "seq_len" in str(e.value)

        # the binding's own checks
        class OnGpu:
            __cuda_array_interface__ = {"shape": (64,), "typestr": "|u1", "data": (0, False), "version": 3}
        ro = ws.copy()
        ro.setflags(write=False)
        for w, exc, text in ((OnGpu(), TypeError, "needs host memory"),
                             (np.zeros((4, 64), np.uint8)[:, ::2], ValueError, "contiguous"),
                             (ro, ValueError, "read-only"),
                             ("ws", TypeError, "workspace: expected an array"),
                             (np.zeros(16, object), TypeError, "workspace: element type"),
                             ((-16, 64), ValueError, "negative")):
            with pytest.raises(exc, match=text):
                p.decode(0, q, got, table, seq_lens, workspace=w)


def test_a_workspace_counts_the_bytes_of_its_elements():
    # numpy's type string of a str array gives characters ('<U4': 16 bytes an
    # element), and the size was read as bytes: a quarter of the buffer
    from kvpool import _arrays
    for a in (np.zeros(4, "U4"), np.zeros((2, 3), "M8[ns]"), np.zeros(5, np.complex64), np.zeros(7, "S3")):
        assert _arrays.buffer(a, "workspace").nbytes == a.nbytes, a.dtype


def test_a_pointer_pair_workspace_asks_no_cuda_and_must_fit_64_bits(daemon, monkeypatch):
    # A (pointer, nbytes) workspace: the binding cannot tell its device and
    # leaves that to the library (kvc_decode_ws checks it on a CUDA pool), so
    # it must not call into the CUDA runtime for it: on a host pool that would
    # create a CUDA context in a process that uses no GPU, and under
    # torch.cuda.graph it would be an unwrapped runtime call inside a
    # global-mode capture.  Values ctypes would wrap modulo 2^64 are refused
    # by name instead of reaching the library as other numbers.
    from kvpool import _arrays
    asked = []
    monkeypatch.setattr(_arrays, "_cuda_pointer_device", lambda ptr: asked.append(ptr))
    with kvpool.Client(daemon, name="ws-pair") as c:
        p = c.attach("bf16")
        table = np.zeros((1, 1), np.int32)
        table[0, 0] = p.alloc(1)[0]
        seq_lens = np.array([1], np.int32)
        p.write(0, np.ones((1, HEADS, DIM), np.float32), np.ones((1, HEADS, DIM), np.float32),
                np.array([table[0, 0] * PAGE], np.int64))
        q = np.ones((1, 2 * HEADS, DIM), ml_dtypes.bfloat16)
        out = np.zeros_like(q)
        raw = np.zeros(256, np.uint8)
        off = -raw.ctypes.data % 16
        p.decode(0, q, out, table, seq_lens, workspace=(raw.ctypes.data + off, 64))
        assert asked == [], "the binding queried CUDA for a pointer pair on a host pool"
        for w in ((2**64, 64), (raw.ctypes.data + off, 2**64 + 16), (2**64 + raw.ctypes.data + off, 0)):
            with pytest.raises(ValueError, match="workspace"):
                p.decode(0, q, out, table, seq_lens, workspace=w)


def test_reset_prefixes_of_a_tenant_and_of_a_group(tmp_path):
    # a tenant's session drops only its tenant's keys; a group's name (a
    # spec expanded over tp_size) resets each of its pools
    pools = [{"name": "g", "dtype": "bf16", "layers": 1, "kv_heads": 2, "head_dim": DIM, "page_size": PAGE,
              "capacity": "2MiB", "backend": "host", "tp_size": 2}]
    d = Kvpoold(str(tmp_path), pools, exe=os.path.join(BUILD, "daemon", "kvpoold")).start()
    try:
        keys = kvpool.chain_keys(list(range(3 * PAGE)), PAGE)
        salt = bytes(range(1, 17))
        with kvpool.Client(d.url, name="plain") as c, kvpool.Client(d.url, name="tenant", tenant_salt=salt) as t:
            for name in ("g.tp0", "g.tp1"):
                for cl in (c, t):
                    p = cl.attach(name)
                    pages = p.alloc(3)
                    assert p.publish(pages, keys)[0] == 3
                    p.free(pages)
            assert t.reset_prefixes("g.tp0") == 3  # its own three keys only
            held = c.attach("g.tp0").lookup(keys)
            assert len(held) == 3, "the plain client's keys went with the tenant's reset"
            c.attach("g.tp0").free(held)
            assert t.attach("g.tp0").lookup(keys) == []
            assert c.reset_prefixes("g") == 3 + 6  # g.tp0's remaining three, g.tp1's six
            st = {x["name"]: x for x in c.status()["pools"]}
            assert {n: x["pages_cached"] for n, x in st.items()} == {"g.tp0": 0, "g.tp1": 0}
            assert (st["g.tp0"]["prefix_resets"], st["g.tp0"]["keys_reset"]) == (2, 6)
            assert (st["g.tp1"]["prefix_resets"], st["g.tp1"]["keys_reset"]) == (1, 6)
            m = c.metrics()
            assert 'kvpool_requests_total{op="reset"} 2' in m
            assert 'kvpool_pool_prefix_resets_total{pool="g.tp0",dtype="bf16",backend="host"} 2' in m
            assert 'kvpool_pool_keys_reset_total{pool="g.tp1",dtype="bf16",backend="host"} 6' in m
            with pytest.raises(kvpool.KvpoolError) as e:
                c.attach("g")  # a group name is not a pool to attach
            assert e.value.errno == errno.ENOENT
    finally:
        assert d.stop(timeout=10) == 0, d.log_text()


def test_the_prefix_reuse_example_runs(daemon):
    example = os.path.join(os.path.dirname(__file__), "..", "..", "client", "python", "examples", "prefix_reuse.py")
    for pool in ("bf16", "fp4_e2m1"):
        r = subprocess.run([sys.executable, example, "--socket", daemon, "--pool", pool], capture_output=True,
                           text=True, timeout=120, env=dict(os.environ, KVPOOL_BUILD=BUILD))
        assert r.returncode == 0 and r.stdout.rstrip().endswith("ok"), (pool, r.stdout, r.stderr)
        assert "3 of 3 blocks found in the cache" in r.stdout, r.stdout
