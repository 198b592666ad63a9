"""Client and Pool: libkvclient's calls with Python arguments.

Errors: every failure of the library raises KvpoolError, an OSError whose
errno is the library's (ENOENT, ENOSPC, EPERM, ESTALE, ...) and whose text is
the library's message (kvc_errmsg).  Arguments the binding can judge by
itself (shapes, element types, host or device memory) raise TypeError or
ValueError naming the argument, before anything reaches the library.

Data-path calls on a CUDA pool are asynchronous on the stream given (by
default PyTorch's current stream of the pool's device when PyTorch is loaded,
else the legacy default stream), exactly as the C calls: the caller keeps its
tensors alive until the stream has run them, as with any CUDA kernel.  That
stream first waits for the streams that arrays name in their
__cuda_array_interface__ (_arrays.wait_streams).
"""
import ctypes
import errno as _errno
import json
import operator
import os
import sys
import threading
import weakref

from . import _capi as C
from . import _pages, _plan
from ._arrays import buffer, contiguous, index_view, view, wait_streams


class KvpoolError(OSError):
    """A libkvclient call failed: .errno is the error, str() the library's message."""


def _raise(rv, message, call):
    err = -rv
    text = message or _errno.errorcode.get(err, f"error {err}")
    raise KvpoolError(err, f"{call}: {text}" if not text.startswith(call) else text)


def _bytes(x, what):
    """bytes(x), its errors (a float, ints past 255) naming `what`."""
    try:
        return bytes(x)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{what}: bytes-like data is needed ({e})") from None


def _key(k, what):
    if isinstance(k, C.Key):
        return k
    if isinstance(k, (int, str)):  # bytes(16) would be 16 zero bytes, bytes("...") an error without the name
        raise TypeError(f"{what}: a key is {C.KEY_LEN} bytes (bytes-like), got {type(k).__name__}")
    b = _bytes(k, what)
    if len(b) != C.KEY_LEN:
        raise ValueError(f"{what}: a key is {C.KEY_LEN} bytes, got {len(b)}")
    out = C.Key()
    ctypes.memmove(out.b, b, C.KEY_LEN)
    return out


def _keys(keys, what):
    if isinstance(keys, (bytes, bytearray, memoryview, str)):
        raise TypeError(f"{what}: a sequence of {C.KEY_LEN}-byte keys, not one {type(keys).__name__} object")
    keys = list(keys)
    arr = (C.Key * max(len(keys), 1))()
    for i, k in enumerate(keys):
        arr[i] = _key(k, f"{what}[{i}]")
    return arr, len(keys)


def block_key(parent, tokens, extra=b""):
    """The chained prefix-cache key of one block (kvc_block_key): parent is
    the previous block's key (None for the first block), tokens the block's
    token ids, extra optional bytes-like data (a LoRA id, an image hash,
    encoded by the caller: an int or a str is a TypeError).  Returns 16
    bytes."""
    # integers in int32 only: ctypes would wrap a larger one into another token's key
    tv = index_view(list(tokens), "i32", "tokens", False)
    if len(tv.shape) != 1:
        raise ValueError(f"tokens: a flat sequence of token ids, got shape {tv.shape}")
    par = _key(parent, "parent") if parent is not None else None
    if isinstance(extra, (int, str)):  # bytes(3) would be three zero bytes, bytes("...") an error without the name
        raise TypeError(f"extra: bytes-like data is needed (encode a LoRA id or a name), got {type(extra).__name__}")
    ex = _bytes(extra, "extra")
    out = C.Key()
    r = C.lib.kvc_block_key(ctypes.byref(par) if par is not None else None, C.ptr32(tv), tv.shape[0],
                            ex if ex else None, len(ex), ctypes.byref(out))
    if r < 0:  # not reached: the arguments above are never NULL with a length
        raise ValueError(f"kvc_block_key: {os.strerror(-r)}")
    return bytes(out.b)


def chain_keys(tokens, page_size, extra=b""):
    """Keys of every full block of a prompt, each chained on the one before
    (a partial last block has no key)."""
    page_size = _int(page_size, "page_size")
    if page_size < 1:
        raise ValueError(f"page_size: {page_size} is not positive")
    keys, parent = [], None
    for i in range(0, len(tokens) - page_size + 1, page_size):
        parent = block_key(parent, tokens[i:i + page_size], extra)
        keys.append(parent)
    return keys


def _stream_handle(stream, device):
    if stream is None:
        torch = sys.modules.get("torch")
        if torch is None or device is None:
            return None
        # the raw handle, without a Stream object (Triton reads it so too);
        # builds without it take the public way
        raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
        if raw is not None:
            try:
                return raw(device) or None
            except RuntimeError:  # CUDA not usable by torch: as the public way says below
                pass
        if torch.cuda.is_available():
            return torch.cuda.current_stream(device).cuda_stream or None
        return None
    h = stream
    if not isinstance(h, int):
        # torch.cuda.Stream, cupy Stream, others
        h = next((x for x in (getattr(stream, a, None) for a in ("cuda_stream", "ptr", "handle"))
                  if isinstance(x, int)), None)
    if h is not None:
        if not 0 <= h < 2**64:  # a cudaStream_t is a pointer: ctypes would wrap the value into another stream
            raise ValueError(f"stream: handle {h} is not a pointer value (0 to 2^64-1)")
        return h or None
    raise TypeError(f"stream: expected a CUDA stream handle (int) or a stream object, got {type(stream).__name__}")


class _Life:
    """Keeps a handle alive while calls on it run: close() and detach() in
    one thread wait for the calls other threads have in the library, and no
    call starts after them (the C library frees the client and unmaps the
    pool, and a call still running would use freed memory)."""

    __slots__ = ("lock", "cv", "busy", "closed", "shutting")

    def __init__(self):
        self.lock = threading.Lock()
        self.cv = threading.Condition(self.lock)
        self.busy, self.closed, self.shutting = 0, None, False

    def enter(self):
        with self.lock:
            if self.closed:
                raise ValueError(self.closed)
            self.busy += 1

    def leave(self):
        with self.lock:
            self.busy -= 1
            if self.closed and not self.busy:
                self.cv.notify_all()

    def shut(self, why, refuse=None):
        """Refuses new calls with ValueError(why), waits for those running;
        False if it was already shut.  refuse: called once they have
        returned; an exception it returns is raised and the handle stays
        open (calls made meanwhile got the ValueError).  A second shut
        waits for the first one's outcome, and tries itself if that one was
        refused."""
        with self.lock:
            while self.shutting:
                self.cv.wait()
            if self.closed:
                return False
            self.closed, self.shutting = why, True
            while self.busy:
                self.cv.wait()
        # outside the lock: refuse runs Python code (a collection it starts
        # may run a __del__ that calls this handle); no call can start now
        try:
            err = refuse() if refuse is not None else None
        except BaseException as e:
            err = e
        with self.lock:
            self.shutting = False
            if err is not None:
                self.closed = None
            self.cv.notify_all()
        if err is not None:
            raise err
        return True


class _InCall:
    """with x._call(): ... -- the handles of x (a pool and its client, or a
    client) stay valid inside."""

    __slots__ = ("a", "b")

    def __init__(self, a, b=None):
        self.a, self.b = a, b

    def __enter__(self):
        self.a.enter()
        if self.b is not None:
            try:
                self.b.enter()
            except BaseException:
                self.a.leave()
                raise

    def __exit__(self, *exc):
        if self.b is not None:
            self.b.leave()
        self.a.leave()


_clients = weakref.WeakSet()


def _after_fork_in_child():
    # nng does not survive fork (kvclient.h): the library answers a child's
    # calls on the parent's client with -ECHILD and its disconnect does
    # nothing.  The child forgets the parent's clients without a call.
    for c in list(_clients):
        c._forget("the client was inherited across fork(): connect again in this process")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _cstr(s, what):
    b = s if isinstance(s, bytes) else str(s).encode()
    if b"\0" in b:  # C would see only the part before it
        raise ValueError(f"{what}: contains a NUL byte")
    return b


class Client:
    """One connection to kvpoold (kvc_connect).  url None: $KVPOOL_SOCKET,
    else ipc:///run/kvpool/kvpool.sock.  name is what `kvpoolctl status`
    shows.  tenant_salt (16 bytes or None) scopes prefix-cache keys.  Use as
    a context manager, or call close(): the daemon releases every page the
    client still holds when it closes."""

    def __init__(self, url=None, name="python", tenant_salt=None):
        self._h = None
        # weak: a client and its pools are freed by reference counting, not
        # left to the cyclic collector (a client left open by a with block
        # that raised while views of a pool lived closes once they are gone)
        self._pools = weakref.WeakSet()
        self._life = _Life()
        salt = _key(tenant_salt, "tenant_salt") if tenant_salt is not None else None
        h = ctypes.c_void_p()
        rv = C.lib.kvc_connect(_cstr(url, "url") if url else None, _cstr(name, "name"),
                               ctypes.byref(salt) if salt is not None else None, ctypes.byref(h))
        if rv < 0:
            _raise(rv, C.lib.kvc_errmsg(None).decode(errors="replace"), "kvc_connect")
        self._h = h.value
        _clients.add(self)

    def _check(self, rv, call):
        if rv < 0:
            _raise(rv, C.lib.kvc_errmsg(self._h).decode(errors="replace"), call)
        return rv

    def _handle(self):
        if self._h is None:
            raise ValueError("the client is closed")
        return self._h

    def _call(self):
        return _InCall(self._life)

    def _forget(self, why):
        """Drops the handles without a call (after fork, in the child)."""
        self._life = _Life()  # the parent's lock may have been held at fork
        self._life.closed = why
        for p in list(self._pools):
            p._life = _Life()
            p._life.closed = why
            p._h = None
        self._pools = weakref.WeakSet()
        self._h = None

    def close(self):
        """Detaches every pool and disconnects (kvc_disconnect), once calls
        other threads have in the library on this client and its pools have
        returned.  BufferError, and nothing closed, while an array from a
        pool's kv_cache or kv_block_scales is alive.  Idempotent."""
        self._close(force=False)

    def _viewed(self):
        for p in list(self._pools):
            err = p._viewed()
            if err is not None:
                return err
        return None

    def _close(self, force):
        if self._h is None:
            return
        if not force:
            err = self._viewed()  # before anything is shut: the usual case refuses here
            if err is not None:
                raise err
        if not self._life.shut("the client is closed", None if force else self._viewed):
            return
        for p in list(self._pools):
            p._life.shut(f"pool {p.name} is detached (or its client closed)")
            p._h = None  # freed by kvc_disconnect
        self._pools = weakref.WeakSet()
        C.lib.kvc_disconnect(self._h)
        self._h = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and self._viewed() is not None:
            # the frames of the exception hold the arrays: raising BufferError
            # here would bury the exception, so the client stays open until
            # the last of them and the client are dropped (__del__)
            return
        self.close()

    def __del__(self):
        # unreachable, so no array viewing its pools is reachable either
        if getattr(self, "_h", None) is not None and C is not None and C.lib is not None:
            self._close(force=True)

    def status(self):
        """The daemon's status document (kvpoolctl status --json), as a dict."""
        return json.loads(self._malloced(C.lib.kvc_status_json, "kvc_status_json"))

    def metrics(self):
        """The Prometheus text of /metrics."""
        return self._malloced(C.lib.kvc_metrics_text, "kvc_metrics_text")

    def _malloced(self, fn, call):
        out = ctypes.c_void_p()
        with self._call():
            self._check(fn(self._handle(), ctypes.byref(out)), call)
        try:
            return ctypes.string_at(out.value).decode()
        finally:
            C.libc.free(out.value)

    def reset_prefixes(self, name):
        """Drops the prefix-cache keys of pool `name` (kvc_reset_prefixes):
        every tenant's, or only this client's tenant's when it has a salt.
        After a change of model weights, or of anything else the keys do not
        cover, the cached KV is wrong; stop the old engines first.  Pages in
        use stay with their holders.  Needs no attach.  Returns the number
        of keys dropped."""
        n = ctypes.c_uint32()
        with self._call():
            self._check(C.lib.kvc_reset_prefixes(self._handle(), _cstr(name, "name"), ctypes.byref(n)),
                        "kvc_reset_prefixes")
        return n.value

    def attach(self, name):
        """Attaches to pool `name` and maps its memory (kvc_attach)."""
        h = ctypes.c_void_p()
        with self._call():
            self._check(C.lib.kvc_attach(self._handle(), _cstr(name, "name"), ctypes.byref(h)), "kvc_attach")
            p = Pool(self, h.value)
            self._pools.add(p)
        return p


class Pool:
    """An attached pool.  Its geometry is in plain attributes (name, dtype,
    backend, device, num_layers, kv_heads, head_dim, page_size, num_pages,
    k_scale, v_scale, scale_source); see kvclient.h's kvc_pool_desc.
    kv_cache() and kv_block_scales() give its memory as arrays."""

    def __init__(self, client, handle):
        self._client, self._h = client, handle
        self._life = _Life()
        d = C.lib.kvc_pool_get_desc(handle).contents
        self.name = d.name.decode()
        self.dtype = C.DTYPES[d.dtype]
        self.backend = C.BACKENDS[d.backend]
        self.device = d.device if d.backend == 1 else None
        self.num_layers, self.kv_heads, self.head_dim = d.num_layers, d.kv_heads, d.head_dim
        self.page_size, self.num_pages = d.page_size, d.num_pages
        self.k_scale = [d.k_scale[i] for i in range(d.num_layers)]
        self.v_scale = [d.v_scale[i] for i in range(d.num_layers)]
        self.scale_source = d.scale_source.decode()
        self.base, self.bytes = d.base, d.bytes
        self._layout = _pages.Layout(d)
        self._exports = weakref.WeakSet()  # exporters of the arrays kv_cache & co. handed out
        self._default_scale = _plan.sm_scale_of(None, self.head_dim)

    def __repr__(self):
        return (f"<kvpool.Pool {self.name} {self.dtype} {self.backend} {self.num_layers}x{self.kv_heads}"
                f"x{self.head_dim} page {self.page_size}, {self.num_pages} pages>")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and self._viewed() is not None:
            return  # as Client.__exit__: detached with its client
        self.detach()

    def _handle(self):
        if self._h is None:
            raise ValueError(f"pool {self.name} is detached (or its client closed)")
        return self._h

    def _check(self, rv, call):
        return self._client._check(rv, call)

    def _call(self):
        return _InCall(self._life, self._client._life)

    def detach(self):
        """Undoes the attach (kvc_detach), once calls other threads have in
        the library on this pool have returned.  Pages still held stay held
        until free or close.  BufferError, and the pool stays attached, while
        an array from kv_cache or kv_block_scales is alive.  Idempotent."""
        try:
            self._client._life.enter()
        except ValueError:
            return  # the client is closed: the pool went with it
        try:
            if self._h is None:
                return
            err = self._viewed()
            if err is not None:
                raise err
            if self._life.shut(f"pool {self.name} is detached (or its client closed)", self._viewed):
                C.lib.kvc_detach(self._h)
                self._h = None
                self._client._pools.discard(self)
        finally:
            self._client._life.leave()

    def _viewed(self):
        """BufferError if arrays over the pool's memory are alive, else None."""
        n = len(self._exports)
        if not n:
            return None
        return BufferError(f"pool {self.name}: {n} array{'s' if n > 1 else ''} from kv_cache/kv_block_scales "
                           "still view its memory, which detaching would unmap; delete them first")

    # ---- pages and prefixes -------------------------------------------------

    def alloc(self, n):
        """n pages, all or nothing; returns their ids as a list."""
        n = _int(n, "n")
        if not 1 <= n <= _MAX_COUNT:
            raise ValueError(f"n: {n} is outside 1..{_MAX_COUNT}")
        out = (ctypes.c_int32 * n)()
        with self._call():
            self._check(C.lib.kvc_alloc(self._handle(), n, out), "kvc_alloc")
        return list(out)

    def free(self, pages):
        """Releases this session's reference on the pages, all or nothing."""
        pv = index_view(pages, "i32", "pages", False)
        n = _count(pv, "pages")
        with self._call():
            self._check(C.lib.kvc_free(self._handle(), n, C.ptr32(pv)), "kvc_free")

    def publish(self, pages, keys):
        """Publishes held, fully written pages under keys.  Returns (stored,
        dup): the number newly stored, and per page True where it was not
        stored (its key or the page was already published)."""
        pv = index_view(pages, "i32", "pages", False)
        n = _count(pv, "pages", _MAX_PREFIX)
        karr, nk = _keys(keys, "keys")
        if nk != n:
            raise ValueError(f"keys: {nk} keys for {n} pages")
        dup = (ctypes.c_uint8 * n)()
        with self._call():
            stored = self._check(C.lib.kvc_publish(self._handle(), n, C.ptr32(pv), karr, dup), "kvc_publish")
        return stored, [bool(x) for x in dup]

    def lookup(self, keys):
        """The pages of the longest cached leading run of keys, now also held
        by this session (a list, possibly empty)."""
        karr, n = _keys(keys, "keys")
        if not 1 <= n <= _MAX_PREFIX:
            raise ValueError(f"keys: {n} keys, expected 1..{_MAX_PREFIX}")
        out = (ctypes.c_int32 * n)()
        with self._call():
            hits = self._check(C.lib.kvc_lookup(self._handle(), n, karr, out), "kvc_lookup")
        return list(out[:hits])

    # ---- data path ------------------------------------------------------------

    def _data(self, x, what, kinds, writable=False):
        v = view(x, what)
        if v.kind not in kinds:
            raise TypeError(f"{what}: element type {v.kind} is not one of {', '.join(kinds)}")
        cuda = self.backend == "cuda"
        if v.cuda != cuda:
            raise TypeError(f"{what}: pool {self.name} is a {self.backend} pool and needs "
                            f"{'device' if cuda else 'host'} memory, got {v.where()}")
        self._on_device(v, what)
        if writable and not v.writable:
            raise ValueError(f"{what}: is read-only")
        return v

    def _index(self, x, kind, what):
        v = index_view(x, kind, what, self.backend == "cuda")
        self._on_device(v, what)
        return v

    def _on_device(self, v, what):
        if v.cuda and v.device is not None and v.device != self.device:
            raise ValueError(f"{what}: on CUDA device {v.device}, pool {self.name} on device {self.device}")

    def _run(self, call, args, stream, arrays, *extra):
        """Calls libkvclient's data-path function `call` with args (and
        extra, before the stream: a workspace's pointer and size) on the
        stream (see _stream_handle) while the pool is held open.  arrays:
        (view, name) pairs of the call's arrays; the stream first waits for
        those whose __cuda_array_interface__ names another stream."""
        sh = _stream_handle(stream, self.device)
        if self.backend == "cuda":
            wait_streams(arrays, sh, self.device)
        with self._call():
            self._check(getattr(C.lib, call)(self._handle(), ctypes.byref(args), *extra, sh), call)

    def _workspace_bytes(self, call, args):
        """The answer of the size query `call` (kvc_decode_workspace,
        kvc_extend_workspace) for args: no stream, it answers for the call
        eagerly and captured."""
        n = ctypes.c_size_t()
        with self._call():
            self._check(getattr(C.lib, call)(self._handle(), ctypes.byref(args), ctypes.byref(n)), call)
        return n.value

    def _workspace(self, x):
        """The Buffer of a caller's workspace, in the memory the pool's
        calls use (a host pool ignores it; the library checks its alignment
        and, on a CUDA pool, that it is device memory of the pool's GPU)."""
        b = buffer(x, "workspace")
        cuda = self.backend == "cuda"
        if b.cuda is not None and b.cuda != cuda:
            raise TypeError(f"workspace: pool {self.name} is a {self.backend} pool and needs "
                            f"{'device' if cuda else 'host'} memory, got {b.where()}")
        self._on_device(b, "workspace")
        return b

    def _layer(self, layer):
        layer = _int(layer, "layer")
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer: {layer} is out of range (pool {self.name} has {self.num_layers} layers)")
        return layer

    def _host_copy(self, x, v, given, what, stream):
        """The host copy of a device index array the launcher plans with:
        for a PyTorch tensor, one device-to-host copy ordered on the call's
        stream (`stream` as the calls take it; None: PyTorch's current
        one), the stream that wrote x if the caller's work is ordered."""
        if self.backend == "host":
            return v
        if given is not None:
            return index_view(given, "i32", what + "_host", False)
        if not hasattr(x, "cpu"):
            raise TypeError(f"{what}_host: needed on a CUDA pool when {what} is not a PyTorch tensor")
        torch = sys.modules.get("torch")
        if torch is None:  # not reached with a tensor: x.cpu() as it comes
            return index_view(x.cpu(), "i32", what + "_host", False)
        self._no_capture(torch, what)  # the current stream, captured in global mode, refuses the copy too
        if stream is None:
            return index_view(x.cpu(), "i32", what + "_host", False)
        h = _stream_handle(stream, self.device)
        dev = torch.device("cuda", self.device)
        s = torch.cuda.ExternalStream(h, device=dev) if h else torch.cuda.default_stream(dev)
        with torch.cuda.stream(s):  # x.cpu() copies on the current stream of x's device, the pool's
            self._no_capture(torch, what)
            return index_view(x.cpu(), "i32", what + "_host", False)

    @staticmethod
    def _no_capture(torch, what):
        if torch.cuda.is_current_stream_capturing():
            # the copy would wait on a capturing stream, which CUDA
            # refuses and which invalidates the caller's graph
            raise ValueError(f"{what}_host: pass it (a CPU tensor) while a CUDA graph is being captured: "
                             f"the device-to-host copy of {what} cannot be captured")

    def _kv_shape(self, v, what):
        want = (self.kv_heads, self.head_dim)
        if len(v.shape) != 3 or tuple(v.shape[1:]) != want:
            raise ValueError(f"{what}: shape {v.shape} is not [tokens, {want[0]}, {want[1]}] "
                             f"(pool {self.name}: kv_heads {want[0]}, head_dim {want[1]})")
        if not contiguous(v.shape[1:], v.strides[1:]):
            raise ValueError(f"{what}: each token's [kv_heads, head_dim] must be contiguous "
                             f"(strides {v.strides}); only the token stride is free")
        if v.shape[0] > 1 and v.strides[0] < self.kv_heads * self.head_dim:
            raise ValueError(f"{what}: token stride {v.strides[0]} (negative, zero or overlapping rows) is "
                             f"less than kv_heads*head_dim = {self.kv_heads * self.head_dim}")

    def _row_stride(self, v):
        # one token: its stride is never used, and a broadcast or expanded
        # one (stride 0) must not trip the library's check
        return v.strides[0] if v.shape[0] > 1 else self.kv_heads * self.head_dim

    def write(self, layer, k, v, slots, stream=None):
        """Quantizes K and V of T tokens (each [T, kv_heads, head_dim],
        float32, bfloat16 or float16, any token stride) into the slots
        (int64 [T]: page*page_size + offset, -1 = skip) of one layer."""
        layer = self._layer(layer)
        kv, vv = self._data(k, "k", ("f32", "bf16", "f16")), self._data(v, "v", ("f32", "bf16", "f16"))
        self._kv_shape(kv, "k")
        self._kv_shape(vv, "v")
        if kv.kind != vv.kind or kv.shape != vv.shape:
            raise ValueError(f"k and v differ: {kv.kind}{list(kv.shape)} against {vv.kind}{list(vv.shape)}")
        sv = self._index(slots, "i64", "slots")
        if sv.shape != (kv.shape[0],):
            raise ValueError(f"slots: shape {sv.shape}, expected ({kv.shape[0]},), one per token")
        if kv.shape[0] == 0:
            return
        a = C.WriteArgs(k=kv.ptr, v=vv.ptr, elem=C.ELEMS[kv.kind], k_row_stride=self._row_stride(kv),
                        v_row_stride=self._row_stride(vv), slots=ctypes.cast(sv.ptr, C.c_int64_p),
                        num_tokens=_u32(kv.shape[0], "k: tokens"), layer=layer)
        self._run("kvc_write", a, stream, ((kv, "k"), (vv, "v"), (sv, "slots")))

    def gather(self, layer, pages, k_out, v_out, stream=None):
        """Dequantizes pages (int32 [n]) of one layer into k_out and v_out,
        each [n*page_size, kv_heads, head_dim], float32 or bfloat16, contiguous."""
        layer = self._layer(layer)
        pv = self._index(pages, "i32", "pages")
        n = _count(pv, "pages", 2**32 - 1)
        ko = self._data(k_out, "k_out", ("f32", "bf16"), writable=True)
        vo = self._data(v_out, "v_out", ("f32", "bf16"), writable=True)
        want = (n * self.page_size, self.kv_heads, self.head_dim)
        for w, o in (("k_out", ko), ("v_out", vo)):
            if o.shape != want or not o.contiguous():
                raise ValueError(f"{w}: shape {o.shape} (strides {o.strides}), expected a contiguous {want}")
        if ko.kind != vo.kind:
            raise ValueError(f"k_out is {ko.kind}, v_out {vo.kind}: they must agree")
        a = C.GatherArgs(pages=C.ptr32(pv), n_pages=n, layer=layer, k_out=ko.ptr, v_out=vo.ptr, elem=C.ELEMS[ko.kind])
        self._run("kvc_gather", a, stream, ((pv, "pages"), (ko, "k_out"), (vo, "v_out")))

    def _q_out(self, q, out):
        """Checked views of an attention call's q and out."""
        qv = self._data(q, "q", ("bf16", "f16"))
        ov = self._data(out, "out", ("bf16", "f16"), writable=True)
        if len(qv.shape) != 3 or qv.shape[2] != self.head_dim:
            raise ValueError(f"q: shape {qv.shape} is not [rows, q_heads, {self.head_dim}]")
        if not qv.contiguous() or not ov.contiguous():
            raise ValueError("q and out must be contiguous")
        if ov.shape != qv.shape or ov.kind != qv.kind:
            raise ValueError(f"out: {ov.kind}{list(ov.shape)}, expected q's {qv.kind}{list(qv.shape)}")
        if qv.shape[1] == 0 or qv.shape[1] % self.kv_heads or qv.shape[1] > _MAX_Q_HEADS:
            raise ValueError(f"q: {qv.shape[1]} q heads is not a positive multiple of kv_heads {self.kv_heads} "
                             f"up to {_MAX_Q_HEADS}")
        return qv, ov

    def _meta(self, page_table, seq_lens, seq_lens_host, batch, stream):
        """Checked views of an attention call's page table and lengths, for
        `batch` sequences (None: the page table's rows); the host copy of
        seq_lens ordered on `stream` when the binding takes it."""
        pt = self._index(page_table, "i32", "page_table")
        if batch is None and len(pt.shape) == 2:
            batch = pt.shape[0]
        if len(pt.shape) != 2 or pt.shape[0] != batch:
            raise ValueError(f"page_table: shape {pt.shape}, expected [{batch if batch is not None else 'batch'}, "
                             "max_pages]")
        _u32(batch, "batch")
        if pt.shape[1] * self.page_size > 2**31 - 1:  # kvclient.h; ctypes would narrow max_pages
            raise ValueError(f"page_table: {pt.shape[1]} pages a row x page_size {self.page_size} "
                             "is more than 2^31-1 keys")
        sl = self._index(seq_lens, "i32", "seq_lens")
        if sl.shape != (batch,):
            raise ValueError(f"seq_lens: shape {sl.shape}, expected ({batch},)")
        slh = self._host_copy(seq_lens, sl, seq_lens_host, "seq_lens", stream)
        if slh.shape != (batch,):
            raise ValueError(f"seq_lens_host: shape {slh.shape}, expected ({batch},)")
        return pt, sl, slh, batch

    def plan_decode(self, page_table, seq_lens, seq_lens_host=None, stream=None):
        """Decode attention's per-step arguments, checked once: page_table
        int32 [B, max_pages], seq_lens int32 [B] and, on a CUDA pool, its
        host copy seq_lens_host (taken with a device-to-host copy of a
        PyTorch tensor when not given: a copy of the lengths as they are
        now, once the work on `stream` has run; stream as the calls take
        it, by default PyTorch's current one).  Returns an AttentionPlan;
        its run(layer, q, out) is decode for one layer, with q and out
        [B, Hq, head_dim]."""
        pt, sl, slh, b = self._meta(page_table, seq_lens, seq_lens_host, None, stream)
        a = C.DecodeArgs(page_table=C.ptr32(pt), max_pages=pt.shape[1], seq_lens=C.ptr32(sl),
                         seq_lens_host=C.ptr32(slh), batch=b)
        return _plan.AttentionPlan(self, "kvc_decode", a, b, None, ((pt, "page_table"), (sl, "seq_lens"),
                                                                    (slh, "seq_lens_host")))

    def plan_extend(self, qo_indptr, page_table, seq_lens, qo_indptr_host=None, seq_lens_host=None, stream=None):
        """Extend attention's per-step arguments, checked once (as
        plan_decode, stream included): qo_indptr int32 [B+1], page_table,
        seq_lens (the new tokens included) and the host copies.  Its
        run(layer, q, out) takes q and out [qo_indptr[B], Hq, head_dim]."""
        ip = self._index(qo_indptr, "i32", "qo_indptr")
        if len(ip.shape) != 1 or ip.shape[0] < 1:
            raise ValueError(f"qo_indptr: shape {ip.shape}, expected (batch+1,)")
        b = ip.shape[0] - 1
        iph = self._host_copy(qo_indptr, ip, qo_indptr_host, "qo_indptr", stream)
        if iph.shape != ip.shape:
            raise ValueError(f"qo_indptr_host: shape {iph.shape}, expected {ip.shape}")
        pt, sl, slh, _ = self._meta(page_table, seq_lens, seq_lens_host, b, stream)
        a = C.ExtendArgs(qo_indptr=C.ptr32(ip), qo_indptr_host=C.ptr32(iph), page_table=C.ptr32(pt),
                         max_pages=pt.shape[1], seq_lens=C.ptr32(sl), seq_lens_host=C.ptr32(slh), batch=b)
        return _plan.AttentionPlan(self, "kvc_extend", a, b, iph, ((ip, "qo_indptr"), (iph, "qo_indptr_host"),
                                                                   (pt, "page_table"), (sl, "seq_lens"),
                                                                   (slh, "seq_lens_host")))

    def decode(self, layer, q, out, page_table, seq_lens, sm_scale=None, seq_lens_host=None, stream=None,
               workspace=None):
        """Paged decode attention (kvc_decode): q and out [B, Hq, head_dim]
        (bfloat16 or float16), page_table int32 [B, max_pages], seq_lens
        int32 [B].  On a CUDA pool seq_lens_host is its host copy (taken with
        a device-to-host copy of a PyTorch tensor when not given, on the
        call's stream).
        sm_scale defaults to 1/sqrt(head_dim).  workspace: the caller's
        scratch for the split partials (kvc_decode_ws; see
        AttentionPlan.run), of at least decode_workspace() bytes.
        plan_decode checks the step's arguments once for every layer."""
        self.plan_decode(page_table, seq_lens, seq_lens_host, stream).run(layer, q, out, sm_scale, stream,
                                                                          workspace)

    def decode_workspace(self, layer, q, out, page_table, seq_lens, sm_scale=None, seq_lens_host=None):
        """The bytes of workspace decode() with the same arguments needs,
        eagerly and under CUDA graph capture alike (kvc_decode_workspace;
        AttentionPlan.workspace_bytes): ask before capturing.  0 when it
        would not split its keys, and on a host pool."""
        return self.plan_decode(page_table, seq_lens, seq_lens_host).workspace_bytes(layer, q, out, sm_scale)

    def extend(self, layer, q, out, qo_indptr, page_table, seq_lens, sm_scale=None,
               qo_indptr_host=None, seq_lens_host=None, stream=None, workspace=None):
        """Extend (chunked-prefill) attention (kvc_extend): q and out
        [total_q, Hq, head_dim]; qo_indptr int32 [B+1] (sequence b's queries
        are rows qo_indptr[b]..qo_indptr[b+1]); page_table int32 [B,
        max_pages]; seq_lens int32 [B], the new tokens included and already
        written.  Host copies as for decode; plan_extend checks them once.
        workspace as for decode (extend_workspace() bytes)."""
        self.plan_extend(qo_indptr, page_table, seq_lens, qo_indptr_host, seq_lens_host,
                         stream).run(layer, q, out, sm_scale, stream, workspace)

    def extend_workspace(self, layer, q, out, qo_indptr, page_table, seq_lens, sm_scale=None,
                         qo_indptr_host=None, seq_lens_host=None):
        """The bytes of workspace extend() with the same arguments needs,
        eagerly and under CUDA graph capture alike (kvc_extend_workspace)."""
        return self.plan_extend(qo_indptr, page_table, seq_lens, qo_indptr_host,
                                seq_lens_host).workspace_bytes(layer, q, out, sm_scale)

    # ---- the pool's memory as arrays ---------------------------------------------

    def kv_cache(self, layer=None, like=None):
        """The pool's K and V pages as one array, without a copy:
        [2, num_pages, page_size, kv_heads, head_dim] for `layer` (index 0
        is K, 1 is V), [num_layers, 2, ...] for every layer when layer is
        None.  The element type is the pool's: bfloat16, float16,
        float8_e4m3fn or float8_e5m2 (whose values times k_scale[layer] /
        v_scale[layer] are the stored K/V), or for fp4 uint8 with head_dim/2
        bytes a head (two codes a byte, the even element in the low nibble;
        kv_block_scales has their scales).  like: 'torch' (the default for
        a CUDA pool: a tensor on the pool's device) or 'numpy' (the default
        for a host pool; ml_dtypes for bfloat16 and fp8).  The array is
        valid until detach, which refuses while it or an array viewing it
        is alive.  It spans every page of the pool: write only into pages
        this client holds and has not published (docs/python.md)."""
        layer = None if layer is None else self._layer(layer)
        with self._call():
            self._handle()
            return _pages.kv_cache(self, self._layout, self._exports, layer, like)

    def kv_block_scales(self, layer=None, like=None):
        """An fp4 pool's block scales, as kv_cache gives its codes: uint8
        [2, num_pages, page_size, kv_heads, head_dim/16] for `layer` (or
        [num_layers, 2, ...]), one E8M0 byte s a block of 16 elements along
        head_dim, the block's scale 2^(s-127).  ValueError for other dtypes."""
        layer = None if layer is None else self._layer(layer)
        with self._call():
            self._handle()
            return _pages.kv_block_scales(self, self._layout, self._exports, layer, like)


_MAX_COUNT = 65536  # kvc_alloc and kvc_free (kvclient.h); ctypes would wrap a larger uint32_t
_MAX_PREFIX = 8192  # kvc_publish and kvc_lookup
_MAX_Q_HEADS = 65536  # KV_ATTN_MAX_Q_HEADS (kernels/kv_attn_common.cuh)


def _int(x, what):
    """An integer argument: no silent int() of a float or a string."""
    try:
        return operator.index(x)
    except TypeError:
        raise TypeError(f"{what}: expected an integer, got {type(x).__name__}") from None


def _u32(n, what):
    """A count going into a uint32_t field, which ctypes would silently wrap."""
    if n > 2**32 - 1:
        raise ValueError(f"{what}: {n} is more than 2^32-1")
    return n


def _count(v, what, limit=_MAX_COUNT):
    if len(v.shape) != 1 or not 1 <= v.shape[0] <= limit:
        raise ValueError(f"{what}: expected a 1-D array of 1..{limit} entries, got shape {v.shape}")
    return v.shape[0]
