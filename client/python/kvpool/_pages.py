"""Arrays over an attached pool's own memory, without a copy: the K/V pages
of one layer or of all layers (Pool.kv_cache) and, for fp4 pools, their
block scales (Pool.kv_block_scales).

The pool is laid out per layer as separate K and V arrays, each
[num_pages][page_size][kv_heads][head_dim] (kvclient.h, kvc_pool_desc; the NHD
layout of vLLM's flash backend and FlashInfer), at offsets and strides the
daemon's descriptor gives.  K and V of every layer sit the same distance
apart, so one strided array covers them: [2, num_pages, page_size, kv_heads,
head_dim] for a layer, with a leading num_layers for all of them.

Lifetime.  The arrays point into the mapping that kvc_detach (and
kvc_disconnect) unmaps, and a CUDA kernel or a NumPy access after that
would read unmapped memory.  So each array holds an exporter object that
holds the Pool, and Pool.detach / Client.close refuse with BufferError while
an exporter is alive, as mmap.close does while a memoryview of it exists.
Arrays derived from one (slices, views, reshapes) keep it alive too; a copy
does not.
"""
import importlib

# element type of each pool dtype: (torch name, (numpy module, name), bytes)
_ELEMENTS = {
    "bf16": ("bfloat16", ("ml_dtypes", "bfloat16"), 2),
    "fp16": ("float16", ("numpy", "float16"), 2),
    "fp8_e4m3": ("float8_e4m3fn", ("ml_dtypes", "float8_e4m3fn"), 1),
    "fp8_e5m2": ("float8_e5m2", ("ml_dtypes", "float8_e5m2"), 1),
    "fp4_e2m1": ("uint8", ("numpy", "uint8"), 1),  # two codes a byte, the even element in the low nibble
}
_SCALES = ("uint8", ("numpy", "uint8"), 1)  # E8M0: 2^(s-127)


class Layout:
    """The byte offsets and strides of a pool's arrays (kvc_pool_desc)."""

    __slots__ = ("layer_stride", "k_offset", "v_offset", "ks_offset", "vs_offset", "page_bytes",
                 "token_bytes", "head_bytes", "scale_page_bytes", "scale_token_bytes", "scale_head_bytes")

    def __init__(self, d):
        for name in self.__slots__:
            setattr(self, name, getattr(d, name))


class _HostMemory:
    """Exporter of a host pool's mapping, as a flat uint8 NumPy array."""

    def __init__(self, pool):
        self.pool = pool
        self.__array_interface__ = {"shape": (pool.bytes,), "typestr": "|u1",
                                    "data": (pool.base, False), "version": 3}


class _DeviceMemory:
    """Exporter of a CUDA pool's mapping, as a flat uint8 device array."""

    def __init__(self, pool):
        self.pool = pool
        # no "stream": the consumer does not synchronize on the export
        self.__cuda_array_interface__ = {"shape": (pool.bytes,), "typestr": "|u1",
                                         "data": (pool.base, False), "strides": None, "version": 3}


def _module(name, why):
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ImportError(f"{why} needs the Python package {name} ({e})") from None


def _resolve_like(pool, like):
    if like is None:
        return "torch" if pool.backend == "cuda" else "numpy"
    if like not in ("torch", "numpy"):
        raise ValueError(f"like: {like!r} is neither 'torch' nor 'numpy'")
    if like == "numpy" and pool.backend == "cuda":
        raise ValueError(f"like: pool {pool.name} is in GPU memory, which a NumPy array cannot hold; "
                         "use like='torch'")
    return like


def array(pool, exports, element, offset, shape, strides, like):
    """A `like` array of `element` (_ELEMENTS / _SCALES entry) over pool's
    memory: shape and strides in bytes from byte `offset` of the mapping.
    Registers its exporter in `exports` (a WeakSet the pool's detach
    checks)."""
    torch_name, (np_mod, np_name), item = element
    like = _resolve_like(pool, like)
    if offset % item or any(s % item or s < 0 for s in strides):
        # kvpoold's layouts never get here (every array starts 256-byte aligned, K before V)
        raise ValueError(f"pool {pool.name}: its layout (offset {offset}, strides {strides} bytes) "
                         f"cannot be expressed as a strided array of {item}-byte elements")
    last = offset + sum((n - 1) * s for n, s in zip(shape, strides)) + item
    if min(shape) > 0 and last > pool.bytes:
        raise ValueError(f"pool {pool.name}: the array would end at byte {last}, past its {pool.bytes}")
    cuda = pool.backend == "cuda"
    mem = _DeviceMemory(pool) if cuda else _HostMemory(pool)
    elems = tuple(s // item for s in strides)
    # the exporter is registered only with the array made: one left by a
    # failure (an import, a dtype) would refuse detach for no array
    if like == "torch":
        torch = _module("torch", "like='torch'" if not cuda else f"a view of the CUDA pool {pool.name}")
        if cuda:
            raw = torch.as_tensor(mem, device=torch.device("cuda", pool.device))
            if raw.data_ptr() != pool.base or raw.device.index != pool.device:
                # torch copies when it places the pointer on another device
                raise RuntimeError(f"pool {pool.name}: torch did not view the pool's memory in place "
                                   f"(device {raw.device}, pool on cuda:{pool.device})")
        else:
            raw = torch.from_numpy(_module("numpy", "like='torch' on a host pool").asarray(mem))
        out = raw.view(getattr(torch, torch_name)).as_strided(shape, elems, offset // item)
    else:
        np = _module("numpy", "like='numpy'")
        dtype = getattr(_module(np_mod, f"a NumPy view of a {pool.dtype} pool"), np_name)
        # (as_strided would lose ml_dtypes' element types through their type strings)
        out = np.ndarray(shape, dtype, buffer=np.asarray(mem), offset=offset, strides=strides)
    exports.add(mem)
    return out


def kv_cache(pool, layout, exports, layer, like):
    """See Pool.kv_cache."""
    element = _ELEMENTS[pool.dtype]
    elems = pool.head_dim // 2 if pool.dtype == "fp4_e2m1" else pool.head_dim
    inner = (pool.num_pages, pool.page_size, pool.kv_heads, elems)
    inner_strides = (layout.page_bytes, layout.token_bytes, layout.head_bytes, element[2])
    return _stacked(pool, layout, exports, layer, like, element, layout.k_offset, layout.v_offset,
                    inner, inner_strides)


def kv_block_scales(pool, layout, exports, layer, like):
    """See Pool.kv_block_scales."""
    if pool.dtype != "fp4_e2m1":
        raise ValueError(f"pool {pool.name} is {pool.dtype}: only fp4_e2m1 pools have block scales"
                         + (" (its per-layer scales are k_scale and v_scale)" if pool.dtype.startswith("fp8")
                            else ""))
    inner = (pool.num_pages, pool.page_size, pool.kv_heads, pool.head_dim // 16)
    inner_strides = (layout.scale_page_bytes, layout.scale_token_bytes, layout.scale_head_bytes, 1)
    return _stacked(pool, layout, exports, layer, like, _SCALES, layout.ks_offset, layout.vs_offset,
                    inner, inner_strides)


def _stacked(pool, layout, exports, layer, like, element, k_off, v_off, inner, inner_strides):
    kv = (2,) + inner, (v_off - k_off,) + inner_strides
    if layer is None:
        return array(pool, exports, element, k_off, (pool.num_layers,) + kv[0],
                     (layout.layer_stride,) + kv[1], like)
    return array(pool, exports, element, k_off + layer * layout.layer_stride, kv[0], kv[1], like)

