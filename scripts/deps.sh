# Sourced by scripts/quickstart and scripts/test: install what is missing.
# Works as root on a fresh Debian 12; uses apt-get only for packages not yet
# installed, and PyPI (into .venv) for the Python test tools.

kv_say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# Debian packages the build and the tests need.
KV_DEB_PKGS="gcc g++ make pkg-config cmake meson ninja-build python3 python3-venv python3-pip
 libnng-dev libcjson-dev libsystemd-dev libcriterion-dev libxxhash-dev
 systemd prometheus procps"

kv_install_debs() {
        local missing=() p
        for p in $KV_DEB_PKGS; do
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
        apt-get update -qq
        # prometheus is only needed for promtool; its service must not start here.
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
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

# meson setup once, reconfigure when it exists; then build.
kv_build() {
        local dir=$1; shift
        if [ -f "$dir/build.ninja" ]; then
                meson setup --reconfigure "$dir" "$@" >/dev/null
        else
                meson setup "$dir" "$@"
        fi
        kv_say "Building in $dir"
        ninja -C "$dir"
}
