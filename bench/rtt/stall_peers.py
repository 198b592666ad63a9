#!/usr/bin/env python3
"""stall_peers.py - how long peers that do not read their replies hold up
everyone else (docs/operations.md, "Peers that do not read their replies").

    KVPOOL_BUILD=build .venv/bin/python bench/rtt/stall_peers.py [--peers 20,60,100] [--requests 200]

(the venv scripts/test makes: the helpers borrowed below import pytest)

For each count K: a fresh kvpoold (one small host pool), one client that
reads its replies (the victim), and K raw peers that each say HELLO, then
send --requests METRICS requests in one go and never read a reply.  The
victim sends STATUS requests one after another for --seconds and the table
gives the slowest of its round trips, and how many peers the daemon closed
(its log's "does not read its replies").  The raw protocol is the one
tests/protocol/test_raw_client.py speaks (written from docs/protocol.md);
this script borrows its connection and daemon helpers.  A benchmark: it
prints, it never fails on a figure.
"""
import argparse
import os
import pathlib
import struct
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "protocol"))
from test_raw_client import METRICS, STATUS, Conn, hello, pipelined, start  # noqa: E402


def one(k, requests, seconds):
    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(d)
        sock = str(tmp / "kv.sock")
        p, log = start(tmp, sock)
        try:
            victim = Conn(sock, timeout=60)
            hello(victim, "victim")
            peers = []
            for _ in range(k):
                c = Conn(sock)
                hello(c, "stuck")
                c.s.setblocking(False)
                peers.append(c)
            for c in peers:
                try:
                    c.s.send(b"".join(pipelined(c, METRICS, struct.pack("<I", 0)) for _ in range(requests)))
                except BlockingIOError:
                    pass  # the socket buffer is full: what went is enough
            worst, end = 0.0, time.time() + seconds
            while time.time() < end:
                t0 = time.time()
                victim.ok(STATUS, struct.pack("<I", 0))
                worst = max(worst, time.time() - t0)
            for c in peers:
                c.close()
            victim.close()
        finally:
            p.terminate()
            p.wait()
        closed = log.read_text().count("does not read its replies")
    return worst, closed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", default="20,60,100", help="comma-separated counts of peers that do not read")
    ap.add_argument("--requests", type=int, default=200, help="requests each such peer sends")
    ap.add_argument("--seconds", type=float, default=20.0, help="how long the victim keeps asking")
    args = ap.parse_args()
    print(f"# {args.requests} METRICS requests a peer, never read; the victim's STATUS for {args.seconds:g} s")
    print("| peers that do not read | slowest STATUS round trip (s) | connections closed |")
    print("| ---: | ---: | ---: |")
    for k in (int(x) for x in args.peers.split(",")):
        worst, closed = one(k, args.requests, args.seconds)
        print(f"| {k} | {worst:.2f} | {closed} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
