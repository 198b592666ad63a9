"""Attention plans: the per-step arguments of decode and extend (page table,
lengths, query offsets and their host copies) checked once, then run for
every layer with that layer's q and out (Pool.plan_decode, Pool.plan_extend).

An engine's forward pass calls attention once a layer with the same page
table and lengths: checking those once a step instead of once a layer is
most of the binding's cost (docs/python.md, "Plans").  A plan holds its
arrays; their contents are read by the library at every run, so they may
change between runs as long as the host copies say what the device arrays
hold (as for any call: kvclient.h).  Plan again when the batch changes
shape.
"""
import ctypes
import math

from . import _capi as C

def sm_scale_of(s, head_dim):
    """sm_scale as the C call receives it (None: 1/sqrt(head_dim))."""
    if isinstance(s, (str, bytes)):
        raise TypeError(f"sm_scale: expected a number, got {type(s).__name__}")
    try:
        s = 1.0 / math.sqrt(head_dim) if s is None else float(s)
    except (TypeError, ValueError) as e:  # an object, an array of several values
        raise TypeError(f"sm_scale: expected a number, got {type(s).__name__} ({e})") from None
    except OverflowError:  # an int past float64
        raise ValueError(f"sm_scale: {s} is not a positive finite float32") from None
    f32 = ctypes.c_float(s).value
    if not math.isfinite(f32) or f32 <= 0:
        raise ValueError(f"sm_scale: {s} is not a positive finite float32")
    return s


class AttentionPlan:
    """A checked decode or extend call without its q, out and layer; run()
    adds them.  Made by Pool.plan_decode / Pool.plan_extend."""

    __slots__ = ("_pool", "_call", "_args", "_batch", "_indptr_host", "_keep", "_waits")

    def __init__(self, pool, call, args, batch, indptr_host, keep):
        """keep: (view, name) pairs of the plan's arrays."""
        self._pool, self._call, self._args, self._batch = pool, call, args, batch
        self._indptr_host, self._keep = indptr_host, keep
        # those whose __cuda_array_interface__ names a stream, waited for
        # at every run (the point of consumption): usually none
        self._waits = tuple(x for x in keep if x[0].stream is not None)

    @property
    def batch(self):
        """Sequences in the plan."""
        return self._batch

    def rows(self):
        """The q rows run() needs: the batch for decode, qo_indptr_host's
        last entry, as it is now, for extend."""
        if self._indptr_host is None:
            return self._batch
        return C.ptr32(self._indptr_host)[self._batch]

    def _call_args(self, layer, q, out, sm_scale):
        """The C call's arguments, the plan's with the layer, q, out and
        scale checked and added, and the views of q and out."""
        pool = self._pool
        layer = pool._layer(layer)
        qv, ov = pool._q_out(q, out)
        if self._indptr_host is None:
            if qv.shape[0] != self._batch:
                raise ValueError(f"q: {qv.shape[0]} rows, one per sequence of the plan's {self._batch}")
        else:
            ip = C.ptr32(self._indptr_host)
            first, last = ip[0], ip[self._batch]
            if first != 0:
                raise ValueError(f"qo_indptr: starts at {first}, not 0")
            if last != qv.shape[0]:
                raise ValueError(f"qo_indptr: ends at {last}, but q has {qv.shape[0]} rows")
        # a copy per run: plans may be run from several threads at once
        a = type(self._args).from_buffer_copy(self._args)
        a.q, a.out, a.elem, a.num_q_heads, a.layer = qv.ptr, ov.ptr, C.ELEMS[qv.kind], qv.shape[1], layer
        a.sm_scale = pool._default_scale if sm_scale is None else sm_scale_of(sm_scale, pool.head_dim)
        return a, qv, ov

    def run(self, layer, q, out, sm_scale=None, stream=None, workspace=None):
        """The attention of one layer: q and out [rows, Hq, head_dim]
        (bfloat16 or float16, contiguous; rows as rows() says), on the
        stream given (by default PyTorch's current one), as Pool.decode and
        Pool.extend.  workspace: scratch for the split partials that the
        caller owns (kvc_decode_ws): a contiguous array of any element type
        of at least workspace_bytes() bytes, device memory of the pool's
        GPU, 16-byte aligned, or a (pointer, nbytes) pair; None: the
        library's own scratch."""
        pool = self._pool
        a, qv, ov = self._call_args(layer, q, out, sm_scale)
        arrays = self._waits + ((qv, "q"), (ov, "out"))
        if workspace is None:
            pool._run(self._call, a, stream, arrays)
        else:
            b = pool._workspace(workspace)
            pool._run(self._call + "_ws", a, stream, arrays + ((b, "workspace"),), b.ptr, b.nbytes)

    def workspace_bytes(self, layer, q, out, sm_scale=None):
        """The bytes of workspace run() with the same arguments needs, on
        any stream, eagerly and under CUDA graph capture alike
        (kvc_decode_workspace / kvc_extend_workspace): the larger of the
        eager run's need (planned for seq_lens_host) and the captured
        run's (planned for the page table's capacity), so a graph's
        workspace is sized and allocated before the capture.  0 when
        neither splits its keys, and on a host pool."""
        return self._pool._workspace_bytes(self._call + "_workspace", self._call_args(layer, q, out, sm_scale)[0])
