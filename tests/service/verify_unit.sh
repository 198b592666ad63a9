#!/bin/sh
# verify_unit.sh UNIT - `systemd-analyze verify` must accept the generated
# unit with nothing at all on stderr (an unknown or misspelt key only warns,
# so a warning is a failure here).  The unit given is the test copy whose
# ExecStart points at the build tree's kvpoold, since verify checks that the
# binary exists.
set -u
unit=$1
if ! command -v systemd-analyze >/dev/null 2>&1; then
        echo "FAIL: systemd-analyze is missing (install Debian's systemd package)" >&2
        exit 1
fi
err=$(mktemp)
trap 'rm -f "$err"' EXIT
# No systemd as PID 1 here: --man=no keeps verify from checking the
# Documentation= man pages, which is not what this test is about.
systemd-analyze verify --man=no "$unit" 2>"$err"
rc=$?
if [ $rc -ne 0 ] || [ -s "$err" ]; then
        echo "FAIL: systemd-analyze verify $unit: exit $rc, stderr:" >&2
        cat "$err" >&2
        exit 1
fi
# The settings the service depends on must be there (a "cleanup" that drops
# one would still verify).
for key in 'Type=notify' 'NotifyAccess=main' 'WatchdogSec=30' 'Restart=on-failure' \
           'RuntimeDirectory=kvpool' 'RuntimeDirectoryMode=0750' 'User=kvpool' 'Group=kvpool' \
           'DevicePolicy=closed' 'DeviceAllow=char-nvidia-frontend rw' 'DeviceAllow=char-nvidia-uvm rw' \
           'ProtectSystem=strict' 'ProtectHome=yes' 'PrivateTmp=yes' 'NoNewPrivileges=yes' \
           'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6'; do
        grep -qx "$key" "$unit" || { echo "FAIL: $unit lacks the line: $key" >&2; exit 1; }
done
# And what would break CUDA or the shared pools must not be.
for key in 'PrivateDevices=yes' 'PrivateDevices=true' 'MemoryDenyWriteExecute=yes' \
           'MemoryDenyWriteExecute=true' 'ProcSubset=pid' 'PrivateIPC=yes' 'PrivateUsers=yes'; do
        if grep -qx "$key" "$unit"; then
                echo "FAIL: $unit has $key, which CUDA or the shared pools do not tolerate" >&2
                exit 1
        fi
done
grep -q '^ExecStart=/.*/kvpoold --config /.*/kvpool/kvpoold.json --group kvpool$' "$unit" ||
        { echo "FAIL: unexpected ExecStart in $unit" >&2; grep ExecStart= "$unit" >&2; exit 1; }
echo "systemd-analyze verify: ok, no warnings"
