#!/bin/sh
# sass_loop.sh OBJ FUNCTION | sass_loop.sh SASS.txt - the main loop of one
# attention kernel, from its SASS: the backward branch whose span holds the
# most HMMA, the tightest such (the per-tile loop), its length, and the opcodes in it (the
# static body, rare paths included), with the IMADs by their constant
# operand (the fp4 unpack's placement multiplies are 0x1040 and 0x104).
#   sh bench/attn/sass_loop.sh build-gpu/kernels/libkvkernels.a.p/kv_attn_decode.cu.o \
#       '_ZN3kva11attn_kernelILi4ELi128ELb0EEEvNS_6paramsE'
# (the fp4 kernel at D = 128, bf16 q; a file already dumped with
# cuobjdump --dump-sass -fun works too, as the only argument).
set -eu
if [ $# -eq 2 ]; then
        cuobjdump --dump-sass -fun "$2" "$1"
elif [ $# -eq 1 ] && [ -f "$1" ]; then
        cat "$1"
else
        echo "usage: sass_loop.sh OBJ FUNCTION | sass_loop.sh SASS.txt" >&2
        exit 2
fi | awk '
# hex digits (with or without 0x) -> number; POSIX awk has no strtonum
function hex(s,    i, v) {
        sub(/^0x/, "", s)
        v = 0
        for (i = 1; i <= length(s); i++)
                v = v * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1
        return v
}
/\/\*[0-9a-f]+\*\/ / {
        if (!match($0, /\/\*[0-9a-f]+\*\//))
                next
        a = hex(substr($0, RSTART + 2, RLENGTH - 4))
        rest = substr($0, RSTART + RLENGTH)
        sub(/;.*/, "", rest)
        sub(/^[ \t]+/, "", rest)
        sub(/^@!?U?P[A-Z0-9]+[ \t]+/, "", rest)
        split(rest, f, /[ \t]+/)
        op = f[1]
        if (op == "")
                next
        n++
        addr[n] = a
        full[n] = op
        line[n] = rest
        if (op ~ /^BRA/ && match(rest, /0x[0-9a-f]+/)) {
                t = hex(substr(rest, RSTART, RLENGTH))
                if (t < a) {
                        nb++
                        bfrom[nb] = t
                        bto[nb] = a
                }
        }
}
END {
        best = 0
        for (b = 1; b <= nb; b++) {
                h = 0
                for (i = 1; i <= n; i++)
                        if (addr[i] >= bfrom[b] && addr[i] <= bto[b] && full[i] ~ /^HMMA/)
                                h++
                if (h > besth || (h == besth && bto[b] - bfrom[b] < bto[best] - bfrom[best])) {
                        besth = h
                        best = b
                }
        }
        if (!best || !besth) {
                print "no loop with HMMA found"
                exit 1
        }
        for (i = 1; i <= n; i++) {
                if (addr[i] < bfrom[best] || addr[i] > bto[best])
                        continue
                total++
                split(full[i], p, ".")
                cnt[p[1]]++
                if (p[1] == "IMAD" && match(line[i], /0x[0-9a-f]+, R/))
                        imm[substr(line[i], RSTART, RLENGTH - 3)]++
                else if (p[1] == "IMAD" && match(line[i], /0x[0-9a-f]+, RZ/))
                        imm[substr(line[i], RSTART, RLENGTH - 4)]++
                if (full[i] ~ /^IMAD\.MOV/)
                        moves++
        }
        printf "loop 0x%x..0x%x: %d instructions, %d HMMA\n", bfrom[best], bto[best], total, besth
        for (o in cnt)
                printf "%6d %s\n", cnt[o], o | "sort -rn"
        close("sort -rn")
        printf "IMAD.MOV (register moves): %d\n", moves
        for (c in imm)
                printf "IMAD by %s: %d\n", c, imm[c] | "sort -t: -k2 -rn | head -n 6"
        close("sort -t: -k2 -rn | head -n 6")
}'
