#!/bin/sh
# security_unit.sh UNIT MAX - runs `systemd-analyze security --offline=yes`
# on the generated unit and fails when the overall exposure is above MAX
# (docs/operations.md records the score; raise MAX only with a reason there).
set -u
unit=$1
max=$2
if ! command -v systemd-analyze >/dev/null 2>&1; then
        echo "FAIL: systemd-analyze is missing (install Debian's systemd package)" >&2
        exit 1
fi
out=$(systemd-analyze security --offline=yes --no-pager "$unit" 2>&1)
rc=$?
echo "$out" | grep -v '^✓'
score=$(echo "$out" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
if [ -z "$score" ]; then
        echo "FAIL: no overall exposure level in the output (exit $rc)" >&2
        exit 1
fi
echo "exposure: $score (limit $max)"
if ! awk -v s="$score" -v m="$max" 'BEGIN { exit !(s <= m) }'; then
        echo "FAIL: exposure $score is above $max" >&2
        exit 1
fi
