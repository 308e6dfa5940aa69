#!/usr/bin/env bash
# Create the injection interface the bridge writes synthetic cleartext flows to and
# Suricata/Zeek capture from: a dummy interface with a locally administered MAC and
# no IP address, so nothing on it is ever routable.
#
#   deploy/create-injection-interface.sh [NAME]      (default: tls0; needs root)
set -euo pipefail
name=${1:-tls0}
if ip link show "$name" >/dev/null 2>&1; then
    echo "$name exists" >&2
else
    ip link add "$name" type dummy
fi
ip link set "$name" address 02:00:00:00:00:fe
ip addr flush dev "$name"
sysctl -qw "net.ipv6.conf.$name.disable_ipv6=1"
ip link set "$name" arp off multicast off
ip link set "$name" mtu 1500 up
echo "$name: up, no address; inject with: tls-bridge decrypt ... --inject $name" >&2
