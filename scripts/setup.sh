#!/usr/bin/env bash
# Idempotent set-up on Debian bookworm: system packages and the project's venv.
# Used by scripts/demo.sh and scripts/test.sh; safe to run again and again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
    python3-venv openssl curl tcpdump tshark nginx-light iproute2 procps util-linux nftables qemu-system-x86 busybox-static cpio kmod xz-utils zstd
)
# node (a TLS server with OpenSSL linked in) may come from elsewhere (nodesource); Debian's otherwise.
command -v node >/dev/null 2>&1 || APT_PACKAGES+=(nodejs)

# Suricata 7 comes from bookworm-backports.
BACKPORTS_PACKAGES=(suricata)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

need_apt=()
for pkg in "${APT_PACKAGES[@]}"; do installed "$pkg" || need_apt+=("$pkg"); done
need_backports=()
for pkg in "${BACKPORTS_PACKAGES[@]}"; do installed "$pkg" || need_backports+=("$pkg"); done

if ((${#need_apt[@]} + ${#need_backports[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: need root to install: ${need_apt[*]} ${need_backports[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # tshark asks whether non-root users may capture; answer for it.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    if ((${#need_backports[@]})) && ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo "setup: adding the bookworm-backports suite" >&2
        cat > /etc/apt/sources.list.d/bookworm-backports.sources <<'SOURCES'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    fi
    echo "setup: installing ${need_apt[*]} ${need_backports[*]}" >&2
    apt-get update -q >/dev/null
    if ((${#need_apt[@]})); then
        apt-get install -y -q --no-install-recommends "${need_apt[@]}" >/dev/null
    fi
    if ((${#need_backports[@]})); then
        apt-get install -y -q -t bookworm-backports "${need_backports[@]}" >/dev/null
    fi
fi

stamp=.venv/.tls-bridge-installed
want=$(cat pyproject.toml | sha256sum | cut -c1-16)
if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    echo "setup: installing the Python package and test tools into .venv" >&2
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
    echo "$want" > "$stamp"
fi

# OpenSSL builds bundled in PyPI wheels (1.1.1 to 3.6) for the profile tests.
if [[ ! -f build/openssl-builds/.complete || tests/support/openssl_builds.py -nt build/openssl-builds/.complete ]]; then
    echo "setup: fetching OpenSSL builds from PyPI wheels into build/openssl-builds" >&2
    .venv/bin/python -m tests.support.openssl_builds fetch
    touch build/openssl-builds/.complete
fi
