#!/usr/bin/env python3
"""prefix_reuse.py - two workers of a toy model share a prompt prefix through
kvpoold, the way a serving engine would use kvpool from Python.

    KVPOOL_SOCKET=ipc:///run/kvpool/kvpool.sock python3 prefix_reuse.py --pool default

Worker A prefills a prompt: per layer it writes the K/V of the new tokens
into its pages (Pool.write) and runs extend attention from a plan made once
for the step (Pool.plan_extend), then publishes the prompt's full blocks.
Worker B, a second client, gets a prompt with the same beginning: it looks
the prefix up (Pool.lookup), so it computes K/V only for its own tail, and
checks that its attention over the shared pages equals a prefill of its
whole prompt done from scratch.  Both then decode a few tokens with a plan
per step (Pool.plan_decode).

Any pool works (host or CUDA: arrays are NumPy on a host pool, PyTorch
tensors on a CUDA one); the toy model has the pool's geometry, with
2 * kv_heads query heads.  Exits 0 and prints "ok" when B's outputs match.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import kvpool  # noqa: E402


class Toy:
    """A model reduced to what the KV cache sees: per layer, K and V of a
    token are fixed functions of the token and its position, and q of a
    query token likewise."""

    def __init__(self, pool, layers, seed=1):
        self.pool, self.layers = pool, layers
        self.hq = 2 * pool.kv_heads
        self.cuda = pool.backend == "cuda"
        if self.cuda:
            import torch
            self.torch = torch
        rng = np.random.default_rng(seed)
        self.wk = rng.standard_normal((layers, 64, pool.kv_heads * pool.head_dim)).astype(np.float32) / 8
        self.wv = rng.standard_normal((layers, 64, pool.kv_heads * pool.head_dim)).astype(np.float32) / 8
        self.wq = rng.standard_normal((layers, 64, self.hq * pool.head_dim)).astype(np.float32) / 8

    def _embed(self, tokens, start):
        t = np.asarray(tokens, np.int64)[:, None] * 7919 + (start + np.arange(len(tokens)))[:, None]
        return np.sin(t * np.arange(1, 65) / 97.0).astype(np.float32)  # [T, 64]

    def kv(self, layer, tokens, start):
        x = self._embed(tokens, start)
        shape = (len(tokens), self.pool.kv_heads, self.pool.head_dim)
        return self._dev((x @ self.wk[layer]).reshape(shape)), self._dev((x @ self.wv[layer]).reshape(shape))

    def q(self, layer, tokens, start):
        x = self._embed(tokens, start)
        return self._dev((x @ self.wq[layer]).reshape(len(tokens), self.hq, self.pool.head_dim), half=True)

    def _dev(self, a, half=False):
        if not self.cuda:
            return a.astype(np.float16) if half else a
        t = self.torch.from_numpy(a).to(self.torch.device("cuda", self.pool.device))
        return t.to(self.torch.float16) if half else t

    def ints(self, a, dtype):
        a = np.asarray(a, dtype)
        return self.torch.from_numpy(a).to(self.torch.device("cuda", self.pool.device)) if self.cuda else a

    def empty_like(self, q):
        return self.torch.empty_like(q) if self.cuda else np.empty_like(q)

    def host(self, a):
        if self.cuda:
            self.torch.cuda.synchronize()
            return a.float().cpu().numpy()
        return a.astype(np.float32)


def prefill(toy, pool, tokens, cached_pages):
    """Writes K/V of the tokens after the cached pages and runs extend
    attention for them; returns (pages, the last layer's outputs [n, Hq, D])."""
    P = pool.page_size
    start = len(cached_pages) * P
    new = tokens[start:]
    pages = list(cached_pages) + pool.alloc(-(-len(tokens) // P) - len(cached_pages))
    slots = toy.ints([pages[t // P] * P + t % P for t in range(start, len(tokens))], np.int64)
    indptr = np.array([0, len(new)], np.int32)
    lens = np.array([len(tokens)], np.int32)
    # one plan for the step: the same page table, lengths and offsets in every layer
    plan = pool.plan_extend(toy.ints(indptr, np.int32), toy.ints([pages], np.int32), toy.ints(lens, np.int32),
                            qo_indptr_host=indptr, seq_lens_host=lens)
    out = None
    for layer in range(toy.layers):
        k, v = toy.kv(layer, new, start)
        pool.write(layer, k, v, slots)
        q = toy.q(layer, new, start)
        out = toy.empty_like(q)
        plan.run(layer, q, out)
    return pages, toy.host(out)


def decode(toy, pool, tokens, pages, steps):
    """Decodes `steps` more tokens (the toy's next token is fixed); returns
    the last step's output of the last layer."""
    P = pool.page_size
    out = None
    for _ in range(steps):
        pos = len(tokens)
        tokens = tokens + [(tokens[-1] * 31 + 7) % 50000]
        if pos // P >= len(pages):
            pages = pages + pool.alloc(1)
        slot = toy.ints([pages[pos // P] * P + pos % P], np.int64)
        lens = np.array([len(tokens)], np.int32)
        plan = pool.plan_decode(toy.ints([pages], np.int32), toy.ints(lens, np.int32), seq_lens_host=lens)
        for layer in range(toy.layers):
            k, v = toy.kv(layer, tokens[pos:], pos)
            pool.write(layer, k, v, slot)
            q = toy.q(layer, tokens[pos:], pos)
            out = toy.empty_like(q)
            plan.run(layer, q, out)
    return pages, toy.host(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", default="default")
    ap.add_argument("--socket", default=None, help="kvpoold's socket (default: $KVPOOL_SOCKET)")
    ap.add_argument("--layers", type=int, default=4, help="layers of the toy model (at most the pool's)")
    args = ap.parse_args()

    with kvpool.Client(args.socket, name="example-a") as a, kvpool.Client(args.socket, name="example-b") as b:
        pa, pb = a.attach(args.pool), b.attach(args.pool)
        layers = min(args.layers, pa.num_layers)
        toy_a, toy_b = Toy(pa, layers), Toy(pb, layers)
        P = pa.page_size
        shared = [(17 * i + 3) % 50000 for i in range(3 * P)]  # three full blocks
        prompt_a = shared + [11, 12, 13]
        prompt_b = shared + [21, 22, 23, 24, 25]

        # worker A: nothing cached yet, prefill everything, publish the full blocks
        keys_a = kvpool.chain_keys(prompt_a, P, extra=b"toy-model-v1")  # the model's identity in the keys
        pages_a, _ = prefill(toy_a, pa, prompt_a, [])
        stored, dup = pa.publish(pages_a[:len(keys_a)], keys_a)
        print(f"A: prefilled {len(prompt_a)} tokens, published {stored} blocks ({sum(dup)} already cached)")

        # worker B: the shared blocks come from the cache
        keys_b = kvpool.chain_keys(prompt_b, P, extra=b"toy-model-v1")
        cached = pb.lookup(keys_b)
        pages_b, out_b = prefill(toy_b, pb, prompt_b, cached)
        print(f"B: {len(cached)} of {len(keys_b)} blocks found in the cache, "
              f"computed K/V for {len(prompt_b) - len(cached) * P} of {len(prompt_b)} tokens")

        # the same prompt prefilled from scratch, on pages of its own: its
        # last rows are the ones B computed (the kernels may differ, as the
        # calls have other row counts, hence a tolerance)
        pages_r, out_r = prefill(toy_b, pb, prompt_b, [])
        tail = out_r[-out_b.shape[0]:]
        err = float(np.linalg.norm(out_b - tail) / np.linalg.norm(tail))
        print(f"B: attention over the shared pages against a prefill from scratch: relative error {err:.2e}")

        pages_b, d_b = decode(toy_b, pb, prompt_b, pages_b, 4)
        pages_r, d_r = decode(toy_b, pb, prompt_b, pages_r, 4)
        derr = float(np.linalg.norm(d_b - d_r) / np.linalg.norm(d_r))
        print(f"B: then 4 decode steps on each: relative error {derr:.2e}")
        pb.free(pages_r)
        pb.free(pages_b)  # its first pages are A's published ones, which B held through its lookup
        pa.free(pages_a)
        if len(cached) != len(shared) // P or not err <= 1e-2 or not derr <= 1e-2:
            print("FAILED: the shared prefix did not give the attention of a prefill from scratch")
            return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
