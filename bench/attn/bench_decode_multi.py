#!/usr/bin/env python3
"""bench_decode_multi.py - the decode-attention benchmark on every GPU of the
host at once, one process per GPU (as tensor-parallel workers run), next to
the same benchmark on one GPU alone, in one run.

    python3 bench/attn/bench_decode_multi.py [--gpus N] [bench_decode.py arguments]

e.g. --lib build-gpu/bench/attn/libkvattn_shim.so --reps 15 --shapes 8x16384,128x4096
--dtypes bf16,fp8_e4m3,fp4_e2m1.  Two phases, each running bench/attn/bench_decode.py
with the arguments given:
  1. alone: one process on the first GPU (CUDA_VISIBLE_DEVICES = that GPU);
  2. together: one process per GPU, each with CUDA_VISIBLE_DEVICES = its GPU,
     lined up with --sync-dir so that every measurement (the streaming-read
     probe, SDPA, each pool dtype) runs on all GPUs at the same time.
It prints, per shape and kv dtype, the time and effective bandwidth alone and
on each GPU together, and the slowest GPU's time over the time alone.  The
GPUs are those of CUDA_VISIBLE_DEVICES if set, else all (nvidia-smi -L); each
process sees only its own, so the shim's pools, SDPA's tensors and the L2
flush live on that GPU.  Exits 77 (skipped) when fewer than two GPUs are
visible; when one process fails, the others are stopped and its output is
printed.
"""
import argparse
import os
import time
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROW = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\S+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)%\s+([\d.]+)x\s*$")
READ = re.compile(r"^streaming read .*= ([\d.]+) TB/s")
DEV = re.compile(r"^device: (.*)$")


def gpus():
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    if vis is not None and vis.strip():
        return [g.strip() for g in vis.split(",") if g.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit("bench_decode_multi: cannot list the GPUs with nvidia-smi -L: %s" % e)
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def start(gpu, args, log, sync=None):
    """bench_decode.py on gpu, its output into the file log (a file, not a
    pipe: a process whose pipe nobody reads would block before a barrier)."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=gpu, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, os.path.join(HERE, "bench_decode.py")] + args
    if sync:
        cmd += ["--sync-dir", sync[0], "--sync-rank", str(sync[1]), "--sync-world", str(sync[2])]
    with open(log, "w") as f:
        return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)


def wait_all(procs, logs, sync, what):
    """Waits for every process; at the first failure tells the others to
    stop (sync/abort, then SIGTERM), prints the failed one's output, exits."""
    try:
        while any(p.poll() is None for p in procs):
            for p, log, w in zip(procs, logs, what):
                if p.poll() not in (None, 0):
                    if sync:
                        open(os.path.join(sync, "abort"), "w").close()
                    sys.stdout.write(open(log).read())
                    sys.exit("bench_decode_multi: %s: bench_decode.py exited with %d" % (w, p.returncode))
            time.sleep(0.1)
        for p, log, w in zip(procs, logs, what):
            if p.returncode != 0:
                sys.stdout.write(open(log).read())
                sys.exit("bench_decode_multi: %s: bench_decode.py exited with %d" % (w, p.returncode))
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    return [parse(open(log).read(), w) for log, w in zip(logs, what)]


def parse(out, what):
    rows, read, dev = {}, None, None
    for line in out.splitlines():
        m = ROW.match(line)
        if m:
            rows[(int(m.group(1)), int(m.group(2)), m.group(3))] = (float(m.group(4)), float(m.group(5)))
        elif READ.match(line):
            read = float(READ.match(line).group(1))
        elif DEV.match(line):
            dev = DEV.match(line).group(1)
    if not rows:
        sys.stdout.write(out)
        sys.exit("bench_decode_multi: %s: no result rows in bench_decode.py's output" % what)
    return rows, read, dev


def main():
    ap = argparse.ArgumentParser(usage="%(prog)s [--gpus N] [bench_decode.py arguments]")
    ap.add_argument("--gpus", type=int, help="use the first N GPUs (default: all, at least 2)")
    args, rest = ap.parse_known_args()
    if any(a.startswith("--sync") for a in rest):
        sys.exit("bench_decode_multi: the --sync-* arguments are its own; do not pass them")
    gs = gpus()
    if args.gpus is not None:
        if not 2 <= args.gpus <= len(gs):
            sys.exit("bench_decode_multi: --gpus %d: this host shows %d GPUs (need 2..%d)"
                     % (args.gpus, len(gs), len(gs)))
        gs = gs[:args.gpus]
    if len(gs) < 2:
        print("bench_decode_multi: %d GPU visible, at least 2 are needed: skipped" % len(gs))
        sys.exit(77)

    work = tempfile.mkdtemp(prefix="kvbench-multi-")
    try:
        log = os.path.join(work, "alone.txt")
        [(alone, read_alone, dev)] = wait_all([start(gs[0], rest, log)], [log], None, ["alone on GPU %s" % gs[0]])
        sync = os.path.join(work, "sync")
        os.mkdir(sync)
        logs = [os.path.join(work, "gpu%d.txt" % r) for r in range(len(gs))]
        procs = [start(g, rest, logs[r], (sync, r, len(gs))) for r, g in enumerate(gs)]
        together = wait_all(procs, logs, sync, ["GPU %s of %d together" % (g, len(gs)) for g in gs])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print("device: %s; GPUs %s (CUDA_VISIBLE_DEVICES per process)" % (dev, ", ".join(gs)))
    print("bench_decode.py %s" % " ".join(rest))
    print("streaming read (8 GiB): alone %.2f TB/s; together %s TB/s"
          % (read_alone, " / ".join("%.2f" % t[1] for t in together)))
    print("alone: one process on GPU %s; together: one process per GPU, every measurement started on all "
          "GPUs at once; slowest/alone: the slowest GPU's time together over the time alone" % gs[0])
    print()
    hdr = "%5s %6s %-9s %10s %6s" % ("B", "L", "kv", "alone_us", "TB/s")
    for g in gs:
        hdr += " %10s %6s" % ("gpu%s_us" % g, "TB/s")
    hdr += " %13s %9s" % ("slowest/alone", "sum_TB/s")
    print(hdr)
    print("-" * len(hdr))
    for key in alone:
        t0, bw0 = alone[key]
        line = "%5d %6d %-9s %10.1f %6.2f" % (key[0], key[1], key[2], t0, bw0)
        missing = [g for g, (rows, _, _) in zip(gs, together) if key not in rows]
        if missing:
            sys.exit("bench_decode_multi: no %s row for B=%d L=%d from GPU %s" % (key[2], key[0], key[1],
                                                                               ", ".join(missing)))
        worst, total = 0.0, 0.0
        for rows, _, _ in together:
            t, bw = rows[key]
            line += " %10.1f %6.2f" % (t, bw)
            worst = max(worst, t)
            total += bw
        line += " %12.3fx %9.2f" % (worst / t0, total)
        print(line)


if __name__ == "__main__":
    main()
