#!/usr/bin/env python3
"""ncu_stalls.py - where a kernel's warps stall, by SASS opcode, from Nsight
Compute's source page:

    ncu -i REPORT.ncu-rep --page source --csv --print-source sass > src.csv
    python3 bench/attn/ncu_stalls.py src.csv [--top 12] [--lines 0]

Prints the total warp-stall samples, then per opcode (the first word of the
instruction, predicate and suffixes stripped) its share of the samples and
its four largest stall reasons; with --lines N also the N instructions with
the most samples.  The report must have been taken with --section
SourceCounters (warp stall sampling), as in docs/benchmarks.md "Extend
attention".
"""
import argparse
import csv
import sys

REASONS = ["stall_barrier", "stall_branch_resolving", "stall_lg", "stall_long_sb", "stall_math", "stall_mio",
           "stall_no_inst", "stall_not_selected", "stall_selected", "stall_short_sb", "stall_wait",
           "stall_dispatch", "stall_drain"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--lines", type=int, default=0)
    args = ap.parse_args()
    rows = list(csv.reader(open(args.csv)))
    hdr = next((i for i, r in enumerate(rows) if "Warp Stall Sampling (All Samples)" in r), None)
    if hdr is None:
        sys.exit("ncu_stalls: %s has no warp stall sampling column (take the report with --section "
                 "SourceCounters)" % args.csv)
    h, data = rows[hdr], rows[hdr + 1:]
    i_s = h.index("Warp Stall Sampling (All Samples)")
    idx = [(n, h.index(n)) for n in REASONS if n in h]
    data = [r for r in data if len(r) > i_s and r[i_s].isdigit()]
    total = sum(int(r[i_s]) for r in data)
    if total == 0:
        sys.exit("ncu_stalls: no stall samples in %s" % args.csv)
    by_op = {}
    for r in data:
        words = [w for w in r[1].split() if not w.startswith("@")]
        op = words[0].split(".")[0] if words else "?"
        a = by_op.setdefault(op, [0, {}])
        a[0] += int(r[i_s])
        for n, i in idx:
            a[1][n] = a[1].get(n, 0) + int(r[i] or 0)
    print("%d stall samples" % total)
    for op, (n, why) in sorted(by_op.items(), key=lambda x: -x[1][0])[:args.top]:
        top = sorted(why.items(), key=lambda x: -x[1])[:4]
        print("  %-12s %5.1f%%  %s" % (op, 100.0 * n / total, ", ".join("%s %d" % (k[6:], v) for k, v in top)))
    for r in sorted(data, key=lambda r: -int(r[i_s]))[:args.lines]:
        print("  %7s %5.1f%%  %s" % (r[i_s], 100.0 * int(r[i_s]) / total, r[1].strip()[:90]))


if __name__ == "__main__":
    main()
