#!/usr/bin/env bash
# Create the two veth pairs between the inline IPS (tls-bridge ips --inline) and the
# Suricata that judges the plaintext in af-packet IPS mode
# (deploy/suricata/tls-bridge-inline.yaml):
#
#   bridge --> ipsin0 == ipsin1 --> Suricata (copy-mode: ips) --> ipsout1 == ipsout0 --> bridge
#
# Each link: up, no IPv4/IPv6 address, ARP and multicast
# off, IPv6 disabled: nothing on them is routable and the host never answers or
# originates a frame there.
#
#   create-inline-interfaces.sh [--mtu N] [IN OUT]
#   create-inline-interfaces.sh --delete [IN OUT]
#
#   IN, OUT  the bridge's ends (default ipsin0 and ipsout0); Suricata's ends are the
#            same names with the last character 1 (ipsin1, ipsout1)
#   --mtu N  the links' MTU (default 65535: the bridge sends each record's plaintext,
#            at most 16 KiB, as one synthetic segment of the links' MTU, so Suricata
#            and the bridge handle one frame per record instead of one per 1460 bytes)
#
# Idempotent: existing veth pairs are reconfigured, never recreated; an interface of
# another kind with one of the names is refused.  Needs CAP_NET_ADMIN.  Run it before
# Suricata and the bridge start, e.g. from a drop-in of tls-bridge-ips.service:
#   [Service]
#   ExecStartPre=+/usr/lib/tls-bridge/create-inline-interfaces.sh
#
# Exit status: 0 done; 1 failure; 2 bad usage.
set -euo pipefail

prog=${0##*/}
mtu=65535
delete=0
names=()
while (($#)); do
    case $1 in
        --mtu) mtu=${2:?--mtu needs a value}; shift 2 ;;
        --delete) delete=1; shift ;;
        -h|--help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "$prog: unknown option $1" >&2; exit 2 ;;
        *) names+=("$1"); shift ;;
    esac
done
if ((${#names[@]} == 0)); then
    names=(ipsin0 ipsout0)
elif ((${#names[@]} != 2)); then
    echo "$prog: give both bridge ends (IN OUT) or neither" >&2
    exit 2
fi
[[ $mtu =~ ^[0-9]+$ ]] && ((mtu >= 68 && mtu <= 65535)) || { echo "$prog: --mtu $mtu: 68..65535" >&2; exit 2; }

peer() { echo "${1%?}1"; }

for name in "${names[@]}"; do
    other=$(peer "$name")
    if ((delete)); then
        ip link del "$name" 2>/dev/null || true
        continue
    fi
    if ip link show "$name" >/dev/null 2>&1; then
        kind=$(ip -d -o link show "$name" | grep -o 'veth' | head -1 || true)
        if [[ $kind != veth ]]; then
            echo "$prog: $name exists and is not a veth: not ours, refusing" >&2
            exit 1
        fi
    else
        ip link add "$name" type veth peer name "$other"
    fi
    for link in "$name" "$other"; do
        ip link set "$link" down
        ip addr flush dev "$link"
        ip link set "$link" mtu "$mtu" arp off multicast off
        if [[ -w /proc/sys/net/ipv6/conf/$link/disable_ipv6 ]]; then
            echo 1 > "/proc/sys/net/ipv6/conf/$link/disable_ipv6"
        fi
        ip link set "$link" up
    done
done
exit 0
