"""What the binding needs to know of a caller's array: where its memory is,
its shape and strides in elements, its element type, and whether it lives on
a GPU.

Three kinds of arrays are understood, without importing any of their
libraries:
  - PyTorch tensors (CPU or CUDA), by their methods (data_ptr, stride, ...);
  - anything with __cuda_array_interface__ (CuPy, Numba, ...), whose
    version 3 "stream" key (the stream that must be waited for before the
    memory is used) the call honours (wait_streams);
  - anything with __array_interface__ (NumPy; ml_dtypes' bfloat16 is
    recognised by its dtype name, since its type string is an opaque 'V2').
Python sequences of ints are accepted where an index array lives in host
memory (page lists, slots and page tables of a host pool).

The C library cannot see the size of a buffer behind a pointer, so every
shape that decides how far a kernel reads or writes is checked here, against
the pool's geometry, before the call.
"""
import ctypes
import operator

_KINDS_TORCH = {"torch.float32": "f32", "torch.bfloat16": "bf16", "torch.float16": "f16",
                "torch.int32": "i32", "torch.int64": "i64"}
_KINDS_TYPESTR = {"f4": "f32", "f2": "f16", "i4": "i32", "i8": "i64"}
_SIZES = {"f32": 4, "bf16": 2, "f16": 2, "i32": 4, "i64": 8}
_INTS = {"i32": ("int32", ctypes.c_int32, -2**31, 2**31 - 1), "i64": ("int64", ctypes.c_int64, -2**63, 2**63 - 1)}


class View:
    """ptr, shape, strides (elements), kind ('f32' 'bf16' 'f16' 'i32' 'i64'),
    cuda (bool), device (CUDA ordinal in this process, or None), writable.
    keep holds whatever must stay alive while the pointer is used.  stream:
    the cudaStream_t its __cuda_array_interface__ says to wait for (1 the
    legacy default stream, 2 the per-thread one), or None."""

    __slots__ = ("ptr", "shape", "strides", "kind", "cuda", "device", "writable", "keep", "stream")

    def __init__(self, ptr, shape, strides, kind, cuda, device, writable, keep, stream=None):
        self.ptr, self.shape, self.strides, self.kind = ptr, tuple(shape), tuple(strides), kind
        self.cuda, self.device, self.writable, self.keep = cuda, device, writable, keep
        self.stream = stream

    def where(self):
        return f"CUDA device {self.device}" if self.cuda else "host memory"

    def contiguous(self):
        return contiguous(self.shape, self.strides)


def contiguous(shape, strides):
    """Whether strides (elements) lay shape out densely in C order; sizes of
    1 may have any stride, as PyTorch gives them."""
    expect = 1
    for n, s in zip(reversed(shape), reversed(strides)):
        if n > 1 and s != expect:
            return False
        expect *= n
    return True


def _c_strides(shape):
    out, acc = [], 1
    for n in reversed(shape):
        out.append(acc)
        acc *= n
    return tuple(reversed(out))


def _from_interface(x, ai, cuda, what):
    typestr = ai["typestr"]
    kind, name = None, None
    if typestr[0] in "<|=" and typestr[1:] in _KINDS_TYPESTR:
        kind = _KINDS_TYPESTR[typestr[1:]]
    else:
        # the dtype's name only where the type string cannot tell (numpy
        # computes .name in Python: a few microseconds a call)
        name = getattr(getattr(x, "dtype", None), "name", None)
        if name == "bfloat16" and typestr[1:] == "V2":  # ml_dtypes: an opaque '<V2' ('>V2' byte-swapped: refused)
            kind = "bf16" if typestr[0] != ">" else None
    if kind is None:
        raise TypeError(f"{what}: element type {f'{name} ({typestr})' if name else typestr} is not float32, "
                        "bfloat16, float16, int32 or int64 (little-endian)")
    shape = tuple(ai["shape"])
    size = _SIZES[kind]
    if not isinstance(ai.get("data"), tuple):
        raise TypeError(f"{what}: its array interface gives no data pointer (data {type(ai.get('data')).__name__})")
    if ai.get("strides") is None:
        strides = _c_strides(shape)
    else:
        if any(s % size for s in ai["strides"]):
            raise ValueError(f"{what}: strides {ai['strides']} are not multiples of the element size {size}")
        strides = tuple(s // size for s in ai["strides"])
    ptr, readonly = ai["data"]
    device, stream = None, None
    if cuda:
        device = _cuda_pointer_device(ptr)
        stream = _cai_stream(ai, what)
    return _aligned(View(ptr or 0, shape, strides, kind, cuda, device, not readonly, x, stream), what)


def _cai_stream(ai, what):
    """The stream a __cuda_array_interface__ (version 3) says its memory
    must be waited for on, or None (no key, or None: nothing to wait for).
    0 is ambiguous between the legacy and the per-thread default stream
    and the interface disallows it."""
    s = ai.get("stream")
    if s is None:
        return None
    if isinstance(s, bool) or not isinstance(s, int):
        raise TypeError(f"{what}: its __cuda_array_interface__ stream is {type(s).__name__}, not an int "
                        "(a cudaStream_t) or None")
    if s == 0:
        raise ValueError(f"{what}: its __cuda_array_interface__ gives stream 0, which the interface disallows "
                         "(1 is the legacy default stream, 2 the per-thread one)")
    if not 0 < s < 2**64:
        raise ValueError(f"{what}: its __cuda_array_interface__ stream {s} is not a pointer value (1 to 2^64-1)")
    return s


def wait_streams(arrays, stream, device):
    """Makes `stream` (the call's cudaStream_t; None is the legacy default
    stream) wait for the work enqueued so far on each stream that arrays
    (Views and Buffers) name through their __cuda_array_interface__,
    before the call is launched on it: an event recorded on that stream,
    waited for on the call's.  Streams equal to the call's need nothing
    (their order is the stream's own).  device: the pool's ordinal, current
    while the events are made (an event is recorded on streams of its own
    device only).  ValueError naming the array if CUDA refuses."""
    call = stream or 1  # NULL is the legacy default stream, as is 1 (cudaStreamLegacy)
    todo = [(a.stream, what) for a, what in arrays if a is not None and a.stream is not None and a.stream != call]
    if not todo:
        return
    rt = _cudart()
    prev = ctypes.c_int(-1 if device is None else device)
    if device is not None:
        rt.cudaGetDevice(ctypes.byref(prev))  # its failure leaves prev at device: nothing to switch
        if prev.value != device:
            rt.cudaSetDevice(device)  # its failure shows as the event's, on the device that is current
    try:
        done = set()
        for s, what in todo:
            if s in done:
                continue
            ev = ctypes.c_void_p()
            step, e = "cudaEventCreateWithFlags", rt.cudaEventCreateWithFlags(ctypes.byref(ev), 2)  # DisableTiming
            if e == 0:
                step, e = "cudaEventRecord", rt.cudaEventRecord(ev, ctypes.c_void_p(s))
                if e == 0:
                    step, e = "cudaStreamWaitEvent", rt.cudaStreamWaitEvent(ctypes.c_void_p(stream), ev, 0)
                # released once the wait has run, as CUDA does for a recorded event
                rt.cudaEventDestroy(ev)
            if e != 0:
                rt.cudaGetLastError()
                raise ValueError(f"{what}: waiting for its __cuda_array_interface__ stream {s:#x}: {step} failed "
                                 f"({_cuda_error_name(rt, e)})")
            done.add(s)
    finally:
        if device is not None and prev.value != device:
            rt.cudaSetDevice(prev.value)


def _cuda_error_name(rt, e):
    name = rt.cudaGetErrorName(e)  # a const char * (_cudart)
    return name.decode() if name else f"cudaError {e}"


def _aligned(v, what):
    """The kernels load elements with their natural alignment (and on CUDA a
    misaligned load is a sticky error that ends the process's context)."""
    size = _SIZES[v.kind]
    if v.ptr % size:
        raise ValueError(f"{what}: data pointer {v.ptr:#x} is not aligned to its {size}-byte elements")
    return v


def _cuda_pointer_device(ptr):
    """The CUDA ordinal of a device pointer, through the runtime's attribute
    query (the library links libcudart on a CUDA build); None if unknown."""
    try:
        rt = _cudart()
    except OSError:
        return None
    a = _PointerAttributes()
    if rt.cudaPointerGetAttributes(ctypes.byref(a), ctypes.c_void_p(ptr)) != 0:
        rt.cudaGetLastError()
        return None
    return a.device


class _PointerAttributes(ctypes.Structure):
    """cudaPointerAttributes: the four fields of CUDA >= 11, then room for
    what later runtimes add after them (CUDA 12 and 13 have `long
    reserved[8]`).  The runtime writes its whole struct: without the
    room, cudaPointerGetAttributes wrote 64 bytes past this one and
    crashed the process (SIGSEGV in python_cuda_check.py on the H200)."""
    _fields_ = [("type", ctypes.c_int), ("device", ctypes.c_int),
                ("devicePointer", ctypes.c_void_p), ("hostPointer", ctypes.c_void_p),
                ("reserved", ctypes.c_long * 32)]


_rt = []


def _cudart():
    if not _rt:
        for name in ("libcudart.so", "libcudart.so.13", "libcudart.so.12"):
            try:
                rt = ctypes.CDLL(name)
            except OSError:
                continue
            rt.cudaGetErrorName.restype = ctypes.c_char_p
            _rt.append(rt)
            break
        else:
            raise OSError("libcudart not found")
    return _rt[0]


def _torch_device(x, what):
    """(cuda, CUDA ordinal or None) of PyTorch tensor x, or TypeError naming
    `what` for a device whose memory the library cannot use (mps, xpu,
    meta, ...)."""
    dev = getattr(getattr(x, "device", None), "type", None)
    if dev not in ("cpu", "cuda"):
        raise TypeError(f"{what}: a tensor on device {dev} (the pool needs CPU or CUDA memory)")
    return dev == "cuda", x.device.index if dev == "cuda" else None


def view(x, what):
    """The View of x, or TypeError naming `what` when x is no array."""
    if hasattr(x, "data_ptr") and hasattr(x, "stride") and hasattr(x, "is_cuda"):  # PyTorch
        kind = _KINDS_TORCH.get(str(x.dtype))
        if kind is None:
            raise TypeError(f"{what}: element type {x.dtype} is not float32, bfloat16, float16, int32 or int64")
        cuda, device = _torch_device(x, what)
        if getattr(x, "layout", None) is not None and str(x.layout) != "torch.strided":
            raise TypeError(f"{what}: a {x.layout} tensor (a dense, strided one is needed)")
        return _aligned(View(x.data_ptr(), tuple(x.shape), tuple(x.stride()), kind, cuda, device, True, x), what)
    ai = getattr(x, "__cuda_array_interface__", None)
    if ai is not None:
        return _from_interface(x, ai, True, what)
    ai = getattr(x, "__array_interface__", None)
    if ai is not None:
        return _from_interface(x, ai, False, what)
    raise TypeError(f"{what}: expected an array (PyTorch tensor, NumPy array or an object with "
                    f"__cuda_array_interface__), got {type(x).__name__}")


class Buffer:
    """A caller's raw buffer (an attention workspace): ptr, nbytes, cuda
    (bool, or None when a bare pointer does not say), device (CUDA ordinal
    or None), keep (what must stay alive while the pointer is used),
    stream (as View's)."""

    __slots__ = ("ptr", "nbytes", "cuda", "device", "keep", "stream")

    def __init__(self, ptr, nbytes, cuda, device, keep, stream=None):
        self.ptr, self.nbytes, self.cuda, self.device, self.keep = ptr, nbytes, cuda, device, keep
        self.stream = stream

    def where(self):
        return f"CUDA device {self.device}" if self.cuda else "host memory"


def buffer(x, what):
    """The Buffer of x: a contiguous, writable array of any element type
    (PyTorch tensor, __cuda_array_interface__, __array_interface__), or a
    (pointer, nbytes) pair of ints, whose memory kind the library checks."""
    if isinstance(x, tuple) and len(x) == 2 and all(isinstance(v, int) for v in x):
        ptr, n = x
        if not (0 <= ptr < 2**64 and 0 <= n < 2**64):
            raise ValueError(f"{what}: pointer {ptr} and size {n} must not be negative nor 2^64 or more")
        # the memory kind and device are the library's to check (kvc_decode_ws):
        # no CUDA runtime call here (a host pool's process, or a capture)
        return Buffer(ptr, n, None, None, None)
    if hasattr(x, "data_ptr") and hasattr(x, "element_size") and hasattr(x, "is_cuda"):  # PyTorch
        cuda, device = _torch_device(x, what)
        if not x.is_contiguous():
            raise ValueError(f"{what}: must be contiguous (strides {tuple(x.stride())})")
        return Buffer(x.data_ptr(), x.numel() * x.element_size(), cuda, device, x)
    for attr, cuda in (("__cuda_array_interface__", True), ("__array_interface__", False)):
        ai = getattr(x, attr, None)
        if ai is None:
            continue
        data, typestr, shape = ai.get("data"), ai["typestr"], tuple(ai["shape"])
        if not isinstance(data, tuple):
            raise TypeError(f"{what}: its array interface gives no data pointer")
        if data[1]:
            raise ValueError(f"{what}: is read-only")
        size = _item_bytes(typestr, what)
        strides = ai.get("strides")
        if strides is not None and (any(s % size for s in strides) or
                                    not contiguous(shape, tuple(s // size for s in strides))):
            raise ValueError(f"{what}: must be contiguous (strides {strides})")
        n = size
        for d in shape:
            n *= d
        ptr = data[0] or 0
        return Buffer(ptr, n, cuda, _cuda_pointer_device(ptr) if cuda and ptr else None, x,
                      _cai_stream(ai, what) if cuda else None)
    raise TypeError(f"{what}: expected an array (PyTorch tensor, NumPy array or an object with "
                    f"__cuda_array_interface__) or a (pointer, nbytes) pair, got {type(x).__name__}")


def _item_bytes(typestr, what):
    """The bytes of an element of array-interface type string typestr:
    its number ('<f4', '<M8[ns]'), which for numpy's str arrays ('<U4')
    counts characters of 4 bytes.  TypeError naming `what` for one
    without a size (Python objects, '|O')."""
    digits = typestr[2:].split("[")[0]
    if not digits.isdigit() or typestr[1] == "O":
        raise TypeError(f"{what}: element type {typestr} has no fixed size in bytes (an array of Python objects?)")
    return int(digits) * (4 if typestr[1] == "U" else 1)


def index_view(x, kind, what, cuda):
    """An index array of C type `kind` ('i32' or 'i64'), 1-D or 2-D, in the
    memory the pool's calls need (cuda: device memory).  A Python sequence
    of ints (or of sequences, for 2-D) is copied into host memory."""
    if isinstance(x, (list, tuple, range)):
        if cuda:
            raise TypeError(f"{what}: a CUDA pool needs device memory here (a CUDA tensor), "
                            "not a Python sequence")
        rows = list(x)
        seq = (list, tuple, range)
        try:
            if rows and isinstance(rows[0], seq):
                if not all(isinstance(r, seq) for r in rows):
                    raise TypeError("a mix of rows and numbers")
                width = len(rows[0])
                if any(len(r) != width for r in rows):
                    raise ValueError(f"{what}: rows of different lengths")
                flat, shape = [operator.index(v) for r in rows for v in r], (len(rows), width)
            else:
                flat, shape = [operator.index(v) for v in rows], (len(rows),)
        except TypeError as e:  # floats, strings, deeper nesting: no silent int() of them
            raise TypeError(f"{what}: a sequence of integers (or, 2-D, of equal rows of integers) "
                            f"is needed ({e})") from None
        cname, ctype, lo, hi = _INTS[kind]
        bad = next((v for v in flat if not lo <= v <= hi), None)
        if bad is not None:
            raise ValueError(f"{what}: {bad} does not fit {cname}")
        buf = (ctype * max(len(flat), 1))(*flat)
        return View(ctypes.addressof(buf), shape, _c_strides(shape), kind, False, None, True, buf)
    v = view(x, what)
    if v.kind != kind:
        raise TypeError(f"{what}: expected {_INTS[kind][0]} elements, got {v.kind}")
    if v.cuda != cuda:
        raise TypeError(f"{what}: the pool needs {'device' if cuda else 'host'} memory here, got {v.where()}")
    if not v.contiguous():
        raise ValueError(f"{what}: must be contiguous (shape {v.shape}, strides {v.strides})")
    return v
