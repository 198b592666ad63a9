#!/bin/sh
# meson install script: put the example config in place as kvpoold.json
# unless the operator already has one.  $1 = the config directory
# (sysconfdir/kvpool); DESTDIR is honoured for staged installs.
set -eu
dir="${DESTDIR:-}$1"
if [ ! -e "$dir/kvpoold.json" ]; then
        cp "$dir/kvpoold.json.example" "$dir/kvpoold.json"
        chmod 0644 "$dir/kvpoold.json"
        echo "Installed $dir/kvpoold.json (from kvpoold.json.example)"
else
        echo "Kept existing $dir/kvpoold.json (the new example is kvpoold.json.example)"
fi
