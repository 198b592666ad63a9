#!/bin/sh
# sass_summary.sh OBJ - per kernel of an object: HMMA, 16/8-byte global
# loads, cp.async (LDGSTS), shared loads (LDS), local-memory accesses
# (LDL/STL) and instruction count, from
# cuobjdump --dump-sass.
cuobjdump --dump-sass "$1" | awk '
/Function :/ { if (f) printf "%-58s HMMA %4d LDG.128 %3d LDG.64 %3d LDGSTS %3d LDS %3d LDL/STL %3d PRMT %4d F2FP %3d instrs %5d\n", f, h, l, l8, gs, ls, lo, pr, cv, n;
               f = $3; h = l = l8 = gs = ls = lo = pr = cv = n = 0 }
/HMMA/ { h++ }
/LDG\.[^ ]*\.128/ { l++ }
/LDG\.[^ ]*\.64/ { l8++ }
/LDL|STL/ { lo++ }
/LDGSTS/ { gs++ }
/ LDS/ { ls++ }
/PRMT/ { pr++ }
/F2FP|F2F\./ { cv++ }
/\/\*[0-9a-f][0-9a-f][0-9a-f][0-9a-f]\*\// { n++ }
END { if (f) printf "%-58s HMMA %4d LDG.128 %3d LDG.64 %3d LDGSTS %3d LDS %3d LDL/STL %3d PRMT %4d F2FP %3d instrs %5d\n", f, h, l, l8, gs, ls, lo, pr, cv, n }'
