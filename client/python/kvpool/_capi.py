"""ctypes declarations of libkvclient (client/include/kvclient.h).

Nothing here checks arguments: this module only mirrors the C header, so that
client.py can stay about Python.  The struct layouts must match the header
field for field; tests/client/test_python.py compares every size and offset
with what a C compiler gives (tests/client/abi_layout.c).

The library is found at $KVPOOL_LIB (a file path) alone when that is set;
else in $KVPOOL_BUILD/client (a meson build directory, as the tests run it)
first, then as the installed libkvclient.so.0.
"""
import ctypes
import os

KEY_LEN = 16

DTYPES = ("bf16", "fp16", "fp8_e4m3", "fp8_e5m2", "fp4_e2m1")  # enum kvc_dtype, in order
ELEM_F32, ELEM_BF16, ELEM_F16 = 0, 1, 2                        # enum kvc_elem
BACKENDS = ("host", "cuda")                                     # enum kvc_backend

c_int32_p = ctypes.POINTER(ctypes.c_int32)
c_int64_p = ctypes.POINTER(ctypes.c_int64)
ELEMS = {"f32": ELEM_F32, "bf16": ELEM_BF16, "f16": ELEM_F16}  # an array view's kind -> enum kvc_elem


def ptr32(v):
    """The int32_t * of an int32 array view (_arrays.index_view)."""
    return ctypes.cast(v.ptr, c_int32_p)


class Key(ctypes.Structure):
    _fields_ = [("b", ctypes.c_uint8 * KEY_LEN)]


class PoolDesc(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char * 32),
        ("dtype", ctypes.c_int),
        ("backend", ctypes.c_int),
        ("device", ctypes.c_int),
        ("pool_id", ctypes.c_uint32),
        ("num_layers", ctypes.c_uint32),
        ("kv_heads", ctypes.c_uint32),
        ("head_dim", ctypes.c_uint32),
        ("page_size", ctypes.c_uint32),
        ("num_pages", ctypes.c_uint32),
        ("base", ctypes.c_void_p),
        ("bytes", ctypes.c_uint64),
        ("layer_stride", ctypes.c_uint64),
        ("k_offset", ctypes.c_uint64),
        ("v_offset", ctypes.c_uint64),
        ("ks_offset", ctypes.c_uint64),
        ("vs_offset", ctypes.c_uint64),
        ("page_bytes", ctypes.c_uint64),
        ("token_bytes", ctypes.c_uint64),
        ("head_bytes", ctypes.c_uint64),
        ("scale_page_bytes", ctypes.c_uint64),
        ("scale_token_bytes", ctypes.c_uint64),
        ("scale_head_bytes", ctypes.c_uint64),
        ("k_scale", ctypes.POINTER(ctypes.c_float)),
        ("v_scale", ctypes.POINTER(ctypes.c_float)),
        ("scale_source", ctypes.c_char * 32),
    ]


class WriteArgs(ctypes.Structure):
    _fields_ = [
        ("k", ctypes.c_void_p),
        ("v", ctypes.c_void_p),
        ("elem", ctypes.c_int),
        ("k_row_stride", ctypes.c_int64),
        ("v_row_stride", ctypes.c_int64),
        ("slots", c_int64_p),
        ("num_tokens", ctypes.c_uint32),
        ("layer", ctypes.c_uint32),
    ]


class GatherArgs(ctypes.Structure):
    _fields_ = [
        ("pages", c_int32_p),
        ("n_pages", ctypes.c_uint32),
        ("layer", ctypes.c_uint32),
        ("k_out", ctypes.c_void_p),
        ("v_out", ctypes.c_void_p),
        ("elem", ctypes.c_int),
    ]


# kvc_decode_args and kvc_extend_args share their first and last fields;
# extend has the query index pointers between them.
_ATTN_HEAD = [("q", ctypes.c_void_p), ("out", ctypes.c_void_p), ("elem", ctypes.c_int)]
_ATTN_TAIL = [
    ("page_table", c_int32_p),
    ("max_pages", ctypes.c_uint32),
    ("seq_lens", c_int32_p),
    ("seq_lens_host", c_int32_p),
    ("batch", ctypes.c_uint32),
    ("num_q_heads", ctypes.c_uint32),
    ("sm_scale", ctypes.c_float),
    ("layer", ctypes.c_uint32),
]


class DecodeArgs(ctypes.Structure):
    _fields_ = _ATTN_HEAD + _ATTN_TAIL


class ExtendArgs(ctypes.Structure):
    _fields_ = _ATTN_HEAD + [("qo_indptr", c_int32_p), ("qo_indptr_host", c_int32_p)] + _ATTN_TAIL


STRUCTS = {"kvc_key": Key, "kvc_pool_desc": PoolDesc, "kvc_write_args": WriteArgs,
           "kvc_gather_args": GatherArgs, "kvc_decode_args": DecodeArgs, "kvc_extend_args": ExtendArgs}


def _candidates():
    path = os.environ.get("KVPOOL_LIB")
    if path:
        return [path]  # named explicitly: no silent fallback to another copy
    names = ["libkvclient.so.0"]
    build = os.environ.get("KVPOOL_BUILD")
    if build:
        names.insert(0, os.path.join(build, "client", "libkvclient.so.0"))
    return names


def _load():
    errors = []
    for name in _candidates():
        try:
            return ctypes.CDLL(name)
        except OSError as e:
            errors.append(f"{name}: {e}")
    raise ImportError("kvpool: libkvclient not found (set KVPOOL_LIB to its path, or install kvpool): "
                      + "; ".join(errors))


lib = _load()

_vp, _u32, _i = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int
_PROTOS = {
    "kvc_connect": (_i, [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(Key), ctypes.POINTER(_vp)]),
    "kvc_disconnect": (None, [_vp]),
    "kvc_errmsg": (ctypes.c_char_p, [_vp]),
    "kvc_status_json": (_i, [_vp, ctypes.POINTER(_vp)]),
    "kvc_metrics_text": (_i, [_vp, ctypes.POINTER(_vp)]),
    "kvc_attach": (_i, [_vp, ctypes.c_char_p, ctypes.POINTER(_vp)]),
    "kvc_detach": (None, [_vp]),
    "kvc_pool_get_desc": (ctypes.POINTER(PoolDesc), [_vp]),
    "kvc_alloc": (_i, [_vp, _u32, c_int32_p]),
    "kvc_free": (_i, [_vp, _u32, c_int32_p]),
    "kvc_publish": (_i, [_vp, _u32, c_int32_p, ctypes.POINTER(Key), ctypes.POINTER(ctypes.c_uint8)]),
    "kvc_lookup": (_i, [_vp, _u32, ctypes.POINTER(Key), c_int32_p]),
    "kvc_reset_prefixes": (_i, [_vp, ctypes.c_char_p, ctypes.POINTER(_u32)]),
    "kvc_block_key": (_i, [ctypes.POINTER(Key), c_int32_p, ctypes.c_size_t, _vp, ctypes.c_size_t,
                           ctypes.POINTER(Key)]),
    "kvc_write": (_i, [_vp, ctypes.POINTER(WriteArgs), _vp]),
    "kvc_gather": (_i, [_vp, ctypes.POINTER(GatherArgs), _vp]),
    "kvc_decode": (_i, [_vp, ctypes.POINTER(DecodeArgs), _vp]),
    "kvc_extend": (_i, [_vp, ctypes.POINTER(ExtendArgs), _vp]),
    "kvc_decode_ws": (_i, [_vp, ctypes.POINTER(DecodeArgs), _vp, ctypes.c_size_t, _vp]),
    "kvc_extend_ws": (_i, [_vp, ctypes.POINTER(ExtendArgs), _vp, ctypes.c_size_t, _vp]),
    "kvc_decode_workspace": (_i, [_vp, ctypes.POINTER(DecodeArgs), ctypes.POINTER(ctypes.c_size_t)]),
    "kvc_extend_workspace": (_i, [_vp, ctypes.POINTER(ExtendArgs), ctypes.POINTER(ctypes.c_size_t)]),
}
for _name, (_res, _args) in _PROTOS.items():
    _f = getattr(lib, _name)
    _f.restype, _f.argtypes = _res, _args

# malloc'ed strings (status, metrics) are released with the C library's free()
libc = ctypes.CDLL(None)
libc.free.argtypes, libc.free.restype = [_vp], None
