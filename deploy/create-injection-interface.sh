#!/usr/bin/env bash
# Create the injection interface the bridge writes synthetic cleartext connections
# to and Suricata/Zeek capture from: a link with a locally administered MAC, no
# IPv4 or IPv6 address, ARP and multicast off, so nothing on it is ever routable
# and the host never answers or originates a frame on it.
#
#   create-injection-interface.sh [--veth] [--mtu N] [--mac MAC] [NAME]
#   create-injection-interface.sh --delete [NAME]
#
#   NAME     the interface (default: tls0)
#   --veth   a veth pair NAME / NAMEpeer instead of a dummy interface, for kernels
#            without the dummy module (capture on NAME, as with dummy; the peer is
#            configured the same way and only gives NAME its carrier)
#   --mtu N  the link MTU (default 1500): at least [inject] mtu of the sensor
#   --mac M  the interface's MAC (default 02:00:00:00:00:fe, locally administered)
#   --delete remove the interface (and its veth peer)
#
# Idempotent: an existing dummy/veth NAME is reconfigured, never recreated; any
# other kind of interface with that name is refused (it is not ours). Needs root
# (CAP_NET_ADMIN). Installed as /usr/lib/tls-bridge/create-injection-interface.sh
# and run at boot by tls-bridge-injection@NAME.service (deploy/systemd/).
#
# Exit status: 0 done; 1 failure; 2 bad usage; 3 the dummy kind is not available
# in this kernel (use --veth).
set -euo pipefail

prog=${0##*/}
kind=dummy
mtu=1500
mac=02:00:00:00:00:fe
action=create
name=

usage() {
    sed -n '8,16p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}
die() {
    echo "$prog: error: $*" >&2
    exit 1
}

while (($#)); do
    case $1 in
        --veth) kind=veth ;;
        --dummy) kind=dummy ;;
        --delete) action=delete ;;
        --mtu) (($# >= 2)) || usage; mtu=$2; shift ;;
        --mtu=*) mtu=${1#*=} ;;
        --mac) (($# >= 2)) || usage; mac=$2; shift ;;
        --mac=*) mac=${1#*=} ;;
        -h | --help) usage ;;
        -*) echo "$prog: unknown option $1" >&2; usage ;;
        *) [[ -z $name ]] || usage; name=$1 ;;
    esac
    shift
done
name=${name:-tls0}
peer=${name}peer

# Interface names: at most 15 bytes, no '/', no whitespace; the peer's too.
[[ $name =~ ^[A-Za-z0-9_.-]{1,11}$ ]] || die "bad interface name '$name' (1-11 characters [A-Za-z0-9_.-], so that '${name}peer' fits)"
[[ $mtu =~ ^[0-9]+$ ]] && ((mtu >= 68 && mtu <= 65535)) || die "bad MTU '$mtu' (68-65535)"
[[ $mac =~ ^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$ ]] || die "bad MAC '$mac'"
# Locally administered (bit 1 of the first octet) and unicast (bit 0 clear).
(((0x${mac:0:2} & 0x03) == 0x02)) || die "MAC $mac is not a locally administered unicast address (first octet x2, x6, xA or xE)"
command -v ip >/dev/null 2>&1 || die "'ip' not found (Debian package iproute2)"
[[ $(id -u) -eq 0 ]] || die "needs root (CAP_NET_ADMIN)"

# The kind of an existing link ('dummy', 'veth', ... or '' for a physical one).
link_kind() {
    ip -d -j link show dev "$1" 2>/dev/null | sed -n 's/.*"info_kind":"\([^"]*\)".*/\1/p'
}
exists() { ip link show dev "$1" >/dev/null 2>&1; }

if [[ $action == delete ]]; then
    if exists "$name"; then
        ip link delete dev "$name"
        echo "$prog: $name deleted" >&2
    else
        echo "$prog: $name does not exist" >&2
    fi
    exit 0
fi

if exists "$name"; then
    have=$(link_kind "$name")
    case $have in
        dummy | veth) kind=$have; echo "$prog: $name exists ($have): reconfiguring" >&2 ;;
        *) die "$name exists and is not a dummy or veth interface (kind '${have:-none}'): refusing to touch it; choose another name" ;;
    esac
else
    if [[ $kind == dummy ]]; then
        if ! out=$(ip link add dev "$name" type dummy 2>&1); then
            if [[ $out == *"Unknown device type"* || $out == *"not supported"* || $out == *"Not supported"* ]]; then
                {
                    echo "$prog: error: this kernel has no 'dummy' interface support (ip: ${out//$'\n'/ })."
                    echo "  Load it with 'modprobe dummy' (CONFIG_DUMMY), or use a veth pair instead:"
                    echo "    $0 --veth $name"
                    echo "  (for tls-bridge-injection@$name.service: INJECTION_ARGS=\"--veth\" in /etc/tls-bridge/injection.env)"
                } >&2
                exit 3
            fi
            die "ip link add $name type dummy: $out"
        fi
    else
        exists "$peer" && die "$peer exists but $name does not: remove $peer first"
        out=$(ip link add dev "$name" type veth peer name "$peer" 2>&1) || die "ip link add $name type veth peer name $peer: $out"
    fi
    echo "$prog: $name created ($kind)" >&2
fi

links=("$name")
if [[ $kind == veth ]]; then
    # The peer of an existing veth may have another name (or be in another namespace).
    peer=$(ip -j link show dev "$name" | sed -n 's/.*"link":"\([^"]*\)".*/\1/p')
    [[ -n $peer ]] && exists "$peer" || die "cannot find the veth peer of $name in this network namespace"
    links+=("$peer")
fi

# Configure down, then bring up: no IPv6 link-local address is ever assigned.
for link in "${links[@]}"; do
    ip link set dev "$link" down
    if [[ $link == "$name" ]]; then
        ip link set dev "$link" address "$mac"
    else
        # the peer: the next locally administered address
        last=$(((0x${mac:15:2} + 1) & 0xff))
        ip link set dev "$link" address "$(printf '%s:%02x' "${mac:0:14}" "$last")"
    fi
    ip link set dev "$link" arp off multicast off mtu "$mtu"
    if [[ -d /proc/sys/net/ipv6/conf/$link ]]; then
        echo 1 > "/proc/sys/net/ipv6/conf/$link/disable_ipv6" || die "cannot disable IPv6 on $link (/proc/sys read-only?)"
        ip link set dev "$link" addrgenmode none 2>/dev/null || true
    fi
    ip addr flush dev "$link"
done
for link in "${links[@]}"; do
    ip link set dev "$link" up
done

if [[ -n $(ip -o addr show dev "$name") ]]; then
    die "$name still has an address: $(ip -o addr show dev "$name")"
fi
echo "$prog: $name up ($kind, $mac, mtu $mtu, no address); inject with [inject] interface = \"$name\" (or --inject $name), capture on $name" >&2
