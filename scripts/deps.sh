# Sourced by scripts/quickstart and scripts/test: install what is missing.
# Works as root on a fresh Debian 12; uses apt-get only for packages not yet
# installed, and PyPI (into .venv) for the Python test tools.

kv_say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# Debian packages the build and the tests need; scripts/test adds
# KV_DEB_TEST_PKGS (prometheus, for promtool only: see kv_install_debs).
KV_DEB_PKGS="gcc g++ make pkg-config cmake meson ninja-build python3 python3-venv python3-pip
 libnng-dev libcjson-dev libsystemd-dev libcriterion-dev libxxhash-dev
 systemd procps"
KV_DEB_TEST_PKGS="prometheus"

# kv_install_debs [EXTRA_PACKAGES...]: apt-get installs what is missing.
kv_install_debs() {
        local missing=() p policy=/usr/sbin/policy-rc.d own_policy=0 new_prom=0
        for p in $KV_DEB_PKGS "$@"; do
                dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
                        missing+=("$p")
        done
        if [ ${#missing[@]} -eq 0 ]; then
                kv_say "Debian packages: all present"
                return 0
        fi
        kv_say "Installing Debian packages: ${missing[*]}"
        if [ "$(id -u)" -ne 0 ]; then
                echo "error: need root to apt-get install ${missing[*]}" >&2
                return 1
        fi
        export DEBIAN_FRONTEND=noninteractive
        # prometheus is only needed for promtool: its package would start a
        # server on :9090 and enable it at boot.  A policy-rc.d that says 101
        # keeps the install from starting any service; the unit is then
        # disabled (only when this run installed the package).
        case " ${missing[*]} " in *" prometheus "*) new_prom=1 ;; esac
        if [ $new_prom -eq 1 ] && [ ! -e "$policy" ]; then
                printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
        fi
        # a fresh VM's apt-daily may hold the lock for a while: wait for it
        local rc=0
        if ! { apt-get -o DPkg::Lock::Timeout=600 update -qq &&
               apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
        then
                rc=1
        fi
        if [ $own_policy -eq 1 ]; then
                rm -f "$policy"
        fi
        if [ $new_prom -eq 1 ] && command -v systemctl >/dev/null 2>&1; then
                systemctl disable --now prometheus.service >/dev/null 2>&1 || true
        fi
        return $rc
}

# nvcc lives outside PATH on the usual CUDA installs.
kv_cuda_path() {
        if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
                export PATH=/usr/local/cuda/bin:$PATH
        fi
}

kv_venv() {
        local venv=$1
        if [ ! -x "$venv/bin/python" ]; then
                kv_say "Creating Python virtual environment $venv"
                python3 -m venv "$venv"
        fi
        if ! "$venv/bin/python" -c 'import numpy, ml_dtypes, safetensors, pytest, xxhash' 2>/dev/null; then
                kv_say "Installing Python test tools from PyPI (numpy, ml_dtypes, safetensors, pytest, xxhash)"
                "$venv/bin/python" -m pip install -q --disable-pip-version-check \
                        numpy ml_dtypes safetensors pytest xxhash
        fi
}

# Debian 12's meson (1.0) gives nvcc no depfile, so ninja does not see the
# headers a .cu file includes: after an edit of a header only, a build
# directory would keep (and test) CUDA objects of the old code.  A build
# directory records a checksum of the tree's headers (and of its own
# kv_config.h) when it has built (kv_cuda_built); kv_cuda_stale removes its
# CUDA objects when the checksum differs.  A checksum, not file times: a
# copy of the tree (the device machine's) need not keep them.  Both run
# from the repository root.
kv_header_sum() {
        { find kernels client protocol daemon tests bench \( -name '*.h' -o -name '*.cuh' \) 2>/dev/null || true
          find "$1" -maxdepth 1 -name kv_config.h 2>/dev/null || true; } |
                LC_ALL=C sort | xargs -r cat | sha1sum | cut -d' ' -f1
}

kv_cuda_stale() {
        local dir=$1 n
        [ "$(cat "$dir/.kvpool-header-sum" 2>/dev/null)" = "$(kv_header_sum "$dir")" ] && return 0
        n=$(find "$dir" -name '*.cu.o' | wc -l)
        if [ "$n" -gt 0 ]; then
                find "$dir" -name '*.cu.o' -delete
                kv_say "Headers changed since the last build in $dir: removed its $n CUDA objects"
        fi
}

kv_cuda_built() {
        kv_header_sum "$1" >"$1/.kvpool-header-sum"
}

# meson setup once, reconfigure when it exists; then build.
kv_build() {
        local dir=$1; shift
        if [ -f "$dir/build.ninja" ]; then
                # quiet when it works; meson prints its errors on stdout
                if ! meson setup --reconfigure "$dir" "$@" >"$dir/reconfigure.log" 2>&1; then
                        cat "$dir/reconfigure.log" >&2
                        echo "error: meson setup --reconfigure $dir failed (see above)" >&2
                        return 1
                fi
        else
                meson setup "$dir" "$@"
        fi
        kv_cuda_stale "$dir"
        kv_say "Building in $dir"
        ninja -C "$dir"
        kv_cuda_built "$dir"
}
