#!/bin/sh
# install_config_test.sh SCRIPT EXAMPLE - the meson install script puts the
# example config in place as kvpoold.json when there is none, and never
# overwrites an operator's file (DESTDIR staged installs included).
set -u
script=$1
example=$2
stage=$(mktemp -d /tmp/kvtest-$$-install.XXXXXX)
trap 'rm -rf "$stage"' EXIT
dir=/etc/kvpool
mkdir -p "$stage$dir"
cp "$example" "$stage$dir/kvpoold.json.example"

DESTDIR=$stage sh "$script" "$dir" || { echo "FAIL: install script failed on a fresh install" >&2; exit 1; }
cmp -s "$example" "$stage$dir/kvpoold.json" || { echo "FAIL: kvpoold.json is not the example after a fresh install" >&2; exit 1; }

echo '{"pools": []}' > "$stage$dir/kvpoold.json"
DESTDIR=$stage sh "$script" "$dir" || { echo "FAIL: install script failed on a reinstall" >&2; exit 1; }
grep -q '"pools": \[\]' "$stage$dir/kvpoold.json" || { echo "FAIL: a reinstall overwrote the operator's kvpoold.json" >&2; exit 1; }
echo "install-config: fresh install copies the example, reinstall keeps the operator's file"
