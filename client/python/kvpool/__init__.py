"""kvpool: Python binding of libkvclient, the worker side of kvpool.

    import kvpool
    with kvpool.Client(name="worker-0") as c:          # $KVPOOL_SOCKET or the default socket
        pool = c.attach("default")
        pages = pool.alloc(4)
        pool.write(layer, k, v, slots)                   # k, v: [T, kv_heads, head_dim]
        pool.decode(layer, q, out, page_table, seq_lens)
        plan = pool.plan_decode(page_table, seq_lens)   # once a step, then per layer:
        plan.run(layer, q, out)
        pool.publish(pages, kvpool.chain_keys(tokens, pool.page_size))
        kv = pool.kv_cache(layer)                        # the pages themselves, no copy

Arrays are PyTorch tensors, NumPy arrays (ml_dtypes for bfloat16) or any
object with __cuda_array_interface__: host memory for a host pool, device
memory of the pool's GPU for a CUDA pool.  docs/python.md describes every
call; the C contracts behind them are in client/include/kvclient.h.
"""
from ._capi import DTYPES
from ._plan import AttentionPlan
from .client import Client, KvpoolError, Pool, block_key, chain_keys

__all__ = ["Client", "Pool", "AttentionPlan", "KvpoolError", "block_key", "chain_keys", "DTYPES"]
