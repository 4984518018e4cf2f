#!/usr/bin/env bash
# Re-captures the kube-proxy fixtures in this folder with the real kernel
# tools: installs lab-iptables.rules / lab-kube-proxy.nft (the output of
# tests/src/kubeproxy_rules/) in a scratch "node" namespace, adds rules of
# another component (NetworkPolicy-like drops), sends a few packets from a
# scratch "client" namespace so counters move, and saves what
# iptables-nft-save -c and nft -j list ruleset print.
#
# Needs root, iproute2, iptables (nf_tables variant), nft and python3.
# Usage: capture.sh [OUTDIR]   (default: this folder)
# The namespaces are deleted on any exit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here}
node=kp-scratch-$$-node
client=kp-scratch-$$-client
pods=kp-scratch-$$-pods

cleanup() {
    ip netns del "$node" 2>/dev/null || true
    ip netns del "$client" 2>/dev/null || true
    ip netns del "$pods" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_node() { ip netns exec "$node" "$@"; }
in_client() { ip netns exec "$client" "$@"; }

# client 192.0.2.100 --veth-- 192.0.2.1 node 10.244.255.1 --veth-- 10.244.255.2 pods
# Pod addresses and the LoadBalancer range are routed on to the "pods"
# namespace, which does not forward: what the node forwards ends there, and
# only kube-proxy's (or the policy) rules stop or rewrite packets on the node.
topology() {
    cleanup
    ip netns add "$node"
    ip netns add "$client"
    ip netns add "$pods"
    ip link add kpn0 netns "$node" type veth peer name kpc0 netns "$client"
    ip link add pods0 netns "$node" type veth peer name pods1 netns "$pods"
    in_node ip link set lo up
    in_client ip link set lo up
    in_node ip addr add 192.0.2.1/24 dev kpn0
    in_node ip link set kpn0 up
    in_client ip addr add 192.0.2.100/24 dev kpc0
    in_client ip link set kpc0 up
    in_client ip route add default via 192.0.2.1
    ip netns exec "$pods" ip link set lo up
    ip netns exec "$pods" ip addr add 10.244.255.2/30 dev pods1
    ip netns exec "$pods" ip link set pods1 up
    in_node ip addr add 10.244.255.1/30 dev pods0
    in_node ip link set pods0 up
    in_node ip route add 10.244.0.0/16 via 10.244.255.2
    in_node ip route add 203.0.113.0/24 via 10.244.255.2
    in_node sysctl -qw net.ipv4.ip_forward=1
}

# Three TCP connection attempts (one SYN each) or UDP datagrams per
# ip:port:proto target, so counters move by known amounts.
traffic() {
    in_client python3 - "$@" <<'PY'
import socket, sys, time
for target in sys.argv[1:]:
    ip, port, proto = target.split(":")
    for _ in range(3):
        if proto == "udp":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(b"lbpath", (ip, int(port)))
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect((ip, int(port)))
            except BlockingIOError:
                pass
            # Closed before the 1 s SYN retransmit: one packet per attempt.
            time.sleep(0.2)
        s.close()
PY
}

targets=(
    203.0.113.10:80:tcp   # lab/web: DNAT to an endpoint
    203.0.113.11:80:tcp   # lab/empty: REJECT, no endpoints
    203.0.113.12:80:tcp   # lab/local-only: DROP, no local endpoint
    203.0.113.13:443:tcp  # lab/restricted: client not in loadBalancerSourceRanges
    192.0.2.1:30090:tcp   # lab/nodeport on the node's address
    203.0.113.14:53:udp   # lab/dns
    10.244.1.9:5432:tcp   # NetworkPolicy-like DROP (iptables)
)

# A policy engine's iptables rule, inserted first in FORWARD as such engines do.
netpol_iptables() {
    in_node iptables-nft -I FORWARD 1 -s 192.0.2.0/24 -d 10.244.1.9/32 -p tcp -m tcp --dport 5432 \
        -m comment --comment "netpol lab/deny-db: ingress from 192.0.2.0/24" -j DROP
}

echo "iptables mode (iptables-nft)"
topology
in_node iptables-nft-restore <"$here/lab-iptables.rules"
netpol_iptables
in_node iptables-nft-save -c >"$out/iptables-nft-before.save"
traffic "${targets[@]}"
in_node iptables-nft-save -c >"$out/iptables-nft.save"
in_node nft -j list ruleset >"$out/iptables-nft.nft.json"
cleanup

echo "nftables mode"
topology
in_node nft -f "$here/lab-kube-proxy.nft"
# A native nftables policy table, and an iptables-nft one beside it.
in_node nft -f - <<'NFT'
table inet lab-netpol {
    chain forward {
        type filter hook forward priority filter; policy accept;
        ip daddr 10.244.1.10 tcp dport 6379 counter drop comment "netpol lab/deny-cache"
    }
}
NFT
netpol_iptables
in_node nft -j list ruleset >"$out/nftables-before.json"
traffic "${targets[@]}" 10.244.1.10:6379:tcp
in_node nft -j list ruleset >"$out/nftables.json"
in_node nft -a list ruleset >"$out/nftables.txt"
in_node iptables-nft-save -c >"$out/nftables.iptables-nft.save"
cleanup
echo "done"
