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
# DevicePolicy=closed: the DeviceAllow=char-GROUP lines must let CUDA open
# /dev/nvidiactl and /dev/nvidia0 (the driver's main major) and /dev/nvidia-uvm
# on both driver families.  systemd resolves each group when the unit starts
# by matching it, as a glob (fnmatch), against the names in /proc/devices
# (bpf_devices_allow_list_major); a group that matches no name adds nothing,
# silently.  The fixtures are /proc/devices as the drivers print them: older
# ones register major 195 as "nvidia-frontend"; the open kernel modules (and
# current drivers: 580.159.04 on an H200) register it as "nvidia" and
# "nvidiactl" and have no "nvidia-frontend" at all.
allowed_majors() { # $1 = "major name" lines; prints the majors the unit allows rw
        grep '^DeviceAllow=char-' "$unit" | while read -r line; do
                spec=${line#DeviceAllow=char-}
                pat=${spec%% *}
                acc=${spec#"$pat"}
                case $acc in *r*w*|*w*r*) ;; *) continue ;; esac
                printf '%s\n' "$1" | while read -r maj name; do
                        # shellcheck disable=SC2254
                        case $name in $pat) echo "$maj" ;; esac
                done
        done | sort -u
}
check_driver() { # $1 = label, $2 = /proc/devices lines, $3.. = majors CUDA needs
        label=$1 devs=$2
        shift 2
        got=$(allowed_majors "$devs")
        for need in "$@"; do
                printf '%s\n' "$got" | grep -qx "$need" || {
                        echo "FAIL: $unit: with $label, no DeviceAllow=char-... rw line matches the" \
                             "group of major $need in /proc/devices, so DevicePolicy=closed denies it:" >&2
                        printf '%s\n' "$devs" | grep "^$need " >&2
                        exit 1
                }
        done
}
check_driver "an older NVIDIA driver" "195 nvidia-frontend
235 nvidia-uvm
236 nvidia-caps" 195 235
check_driver "the NVIDIA open kernel modules (580.159.04, H200)" "195 nvidia
195 nvidiactl
238 nvidia-uvm
239 nvidia-nvswitch
240 nvidia-nvlink
241 nvidia-caps
242 nvidia-caps-imex-channels" 195 238
grep -q '^ExecStart=/.*/kvpoold --config /.*/kvpool/kvpoold.json --group kvpool$' "$unit" ||
        { echo "FAIL: unexpected ExecStart in $unit" >&2; grep ExecStart= "$unit" >&2; exit 1; }
echo "systemd-analyze verify: ok, no warnings"
