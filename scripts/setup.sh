#!/usr/bin/env bash
# Idempotent set-up on Debian bookworm: system packages and the project's venv.
# Used by scripts/demo.sh and scripts/test.sh; safe to run again and again.
#
# Output: one progress line per step on stderr; what the installers print (apt,
# pip, downloads) goes to build/setup.log, whose last lines are shown when a
# step fails.  Add a step with:   step "what it does" command [args...]
set -euo pipefail
cd "$(dirname "$0")/.."

mkdir -p build
SETUP_LOG=build/setup.log
: >"$SETUP_LOG"

# step "what it does" command [args...]: runs the command (or a shell function)
# under `set -e` with its output appended to $SETUP_LOG; prints
# "setup: what it does ... ok", or on failure the log's tail, and exits.
STEPS_RUN=0
step() {
    local what=$1 rc
    shift
    if ((STEPS_RUN++ == 0)); then
        echo "setup: the installers' output goes to $SETUP_LOG" >&2
    fi
    printf 'setup: %s ... ' "$what" >&2
    printf '\n=== %s\n$ %s\n' "$what" "$*" >>"$SETUP_LOG"
    set +e
    (set -e; "$@") </dev/null >>"$SETUP_LOG" 2>&1
    rc=$?
    set -e
    if ((rc == 0)); then
        echo "ok" >&2
        return 0
    fi
    echo "FAILED (exit $rc)" >&2
    echo "setup: the last lines of $SETUP_LOG (the whole output is there):" >&2
    tail -n 40 "$SETUP_LOG" | sed 's/^/  | /' >&2
    exit "$rc"
}

APT_PACKAGES=(
    python3-venv openssl curl tcpdump tshark nginx-light iproute2 procps util-linux nftables iptables qemu-system-x86 busybox-static cpio kmod xz-utils zstd
    zkg  # Zeek's package manager: the Zeek package's zkg install/test
    golang-go gnutls-bin  # the Go and GnuTLS servers the harvester's tests hook (issue 20)
    gcc libc6-dev python3-dev  # the package's C extensions (setup.py)
    clang libclang-rt-14-dev  # libFuzzer and the sanitizers for the compiled code's tests (tests/test_native.py)
    tcpreplay  # bench/bench_capture.py and the capture tests replay pcaps onto a veth (issue 12)
)
# node (a TLS server with OpenSSL linked in) may come from elsewhere (nodesource); Debian's otherwise.
command -v node >/dev/null 2>&1 || APT_PACKAGES+=(nodejs)
# npm fetches the official node binaries the tests calibrate and harvest (tests/support/node_builds.py).
command -v npm >/dev/null 2>&1 || APT_PACKAGES+=(npm)

# Suricata 7 comes from bookworm-backports.
BACKPORTS_PACKAGES=(suricata golang-1.23-go)  # a second Go release for the key-log hook tests (issue 20)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

need_apt=()
for pkg in "${APT_PACKAGES[@]}"; do installed "$pkg" || need_apt+=("$pkg"); done
need_backports=()
for pkg in "${BACKPORTS_PACKAGES[@]}"; do installed "$pkg" || need_backports+=("$pkg"); done

# bookworm-backports from the archive this machine's apt sources use for bookworm
# (no host name in the repository; a local mirror stays in use).
add_backports_source() {
    cat > /etc/apt/sources.list.d/bookworm-backports.sources <<SOURCES
Types: deb
URIs: $1
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
}

if ((${#need_apt[@]} + ${#need_backports[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: need root to install: ${need_apt[*]} ${need_backports[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # tshark asks whether non-root users may capture; answer for it.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    step "apt-get update" apt-get update -q
    if ((${#need_apt[@]})); then
        step "installing ${need_apt[*]}" apt-get install -y -q --no-install-recommends "${need_apt[@]}"
    fi
    if ((${#need_backports[@]})); then
        if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
            archive=$(python3 scripts/apt_sources.py bookworm)  # explains on stderr when there is none
            step "adding the bookworm-backports suite from $archive" add_backports_source "$archive"
            step "apt-get update (bookworm-backports)" apt-get update -q
        fi
        step "installing ${need_backports[*]} from bookworm-backports" \
            apt-get install -y -q -t bookworm-backports "${need_backports[@]}"
    fi
fi

stamp=.venv/.tls-bridge-installed
# the stamp covers what pip builds: the metadata and the C extensions' sources
want=$(cat pyproject.toml setup.py $(find bridge -name '*.c' -o -name '*.h' | sort) | sha256sum | cut -c1-16)
if [[ ! -x .venv/bin/python ]]; then
    step "creating the venv .venv" python3 -m venv .venv
fi
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    step "installing the Python package and test tools into .venv" \
        .venv/bin/pip install --disable-pip-version-check -e '.[test]'
    echo "$want" > "$stamp"
fi
# The package's bytecode, as an installed package has it (an editable install compiles
# nothing, and with PYTHONDONTWRITEBYTECODE nothing is ever written): without it every
# command's start compiles some 80 modules again, 0.1-0.15 s. Only what changed is compiled.
if ! .venv/bin/python -m compileall -q bridge >/dev/null 2>&1; then
    step "compiling the package's bytecode" .venv/bin/python -m compileall -q bridge
fi

# OpenSSL builds bundled in PyPI wheels (1.1.1 to 3.6) for the profile tests.
fetch_openssl_builds() {
    .venv/bin/python -m tests.support.openssl_builds fetch
    touch build/openssl-builds/.complete
}
if [[ ! -f build/openssl-builds/.complete || tests/support/openssl_builds.py -nt build/openssl-builds/.complete ]]; then
    step "fetching OpenSSL builds from PyPI wheels into build/openssl-builds" fetch_openssl_builds
fi

# Zeek for the Zeek package's tests and the demo: `zeek` on PATH, else /opt/zeek, else the
# build in ../shared/zeek (installed into /opt/zeek) where that folder is beside the checkout.
if ! command -v zeek >/dev/null 2>&1 && [[ ! -x /opt/zeek/bin/zeek ]]; then
    if [[ -f ../shared/zeek/install.sh ]]; then
        step "installing Zeek from ../shared/zeek into /opt/zeek" sh ../shared/zeek/install.sh
    else
        echo "setup: no Zeek (not on PATH, not in /opt/zeek, no ../shared/zeek): the Zeek tests will not run" >&2
    fi
fi

# LibVMI for the LibVMI backend's tests: the build in ../shared/libvmi (file driver) into
# /opt/libvmi (registered with ldconfig), then its Python bindings (PyPI: libvmi) linked to it:
# PyPI has them only as a wheel carrying its own LibVMI copy, so their cffi extension is rebuilt
# against /opt/libvmi from the wheel's own declarations (scripts/libvmi_bindings.py).
install_libvmi_bindings() {
    local missing=()
    for pkg in gcc python3-dev; do installed "$pkg" || missing+=("$pkg"); done  # cffi compiles the extension
    if ((${#missing[@]})); then
        apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    .venv/bin/pip install --disable-pip-version-check 'libvmi==3.7.1'
    .venv/bin/python scripts/libvmi_bindings.py build /opt/libvmi
}
if [[ -f ../shared/libvmi/install.sh ]]; then
    if [[ ! -e /opt/libvmi/lib/libvmi.so.0 ]] || ! .venv/bin/python scripts/libvmi_bindings.py check /opt/libvmi >/dev/null 2>&1; then
        step "installing LibVMI from ../shared/libvmi into /opt/libvmi" sh ../shared/libvmi/install.sh
        step "building LibVMI's Python bindings against /opt/libvmi into .venv" install_libvmi_bindings
    fi
elif ! .venv/bin/python -c "import libvmi" >/dev/null 2>&1; then
    echo "setup: no LibVMI (no ../shared/libvmi, no bindings in .venv): the LibVMI tests will not run" >&2
fi
