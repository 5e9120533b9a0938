#!/usr/bin/env python3
"""Generate the same cluster twice for the DNS benchmark: Kubernetes objects for Twill
and zone files holding the records CoreDNS/Twill would synthesise, for Knot.

usage: gen_fixture.py OUTDIR SERVICES [HEADLESS]
Writes OUTDIR/objects.json, cluster.local.zone, 10.in-addr.arpa.zone, queries.txt.
The query mix: 60% A (ClusterIP and headless), 10% NXDOMAIN, 15% SRV, 15% PTR.
"""
import json
import random
import sys

out, n = sys.argv[1], int(sys.argv[2])
n_headless = int(sys.argv[3]) if len(sys.argv) > 3 else max(1, n // 10)
ns_count = 10
ttl = 5
objects = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"bench-{k}"}} for k in range(ns_count)]
zone = [
    "$ORIGIN cluster.local.",
    f"@ {ttl} IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 {ttl}",
    f"@ {ttl} IN NS ns.dns.cluster.local.",
    f"ns.dns {ttl} IN A 127.0.0.1",
    f'dns-version 28800 IN TXT "1.1.0"',
]
rev = [
    "$ORIGIN 10.in-addr.arpa.",
    f"@ {ttl} IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 {ttl}",
    f"@ {ttl} IN NS ns.dns.cluster.local.",
]
queries_a, queries_srv, queries_ptr, queries_nx = [], [], [], []


def port(name, p):
    return {"name": name, "protocol": "TCP", "port": p, "targetPort": p}


for i in range(n):
    ns = f"bench-{i % ns_count}"
    name = f"svc-{i}"
    ip = f"10.96.{i // 250}.{i % 250 + 1}"
    objects.append({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "ports": [port("http", 80)]},
    })
    objects.append({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{name}-1", "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [f"10.244.{i // 250}.{i % 250 + 1}"], "conditions": {"ready": True}}],
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
    })
    fq = f"{name}.{ns}.svc"
    zone.append(f"{fq} {ttl} IN A {ip}")
    zone.append(f"{fq} {ttl} IN SRV 0 100 80 {fq}.cluster.local.")
    zone.append(f"_http._tcp.{fq} {ttl} IN SRV 0 100 80 {fq}.cluster.local.")
    o = ip.split(".")
    rev.append(f"{o[3]}.{o[2]}.{o[1]} {ttl} IN PTR {fq}.cluster.local.")
    queries_a.append(f"{fq}.cluster.local A")
    queries_srv.append(f"_http._tcp.{fq}.cluster.local SRV")
    queries_ptr.append(f"{o[3]}.{o[2]}.{o[1]}.10.in-addr.arpa PTR")
    queries_nx.append(f"missing-{i}.{ns}.svc.cluster.local A")

for h in range(n_headless):
    ns = f"bench-{h % ns_count}"
    name = f"hdls-{h}"
    objects.append({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
        "spec": {"type": "ClusterIP", "clusterIP": "None", "clusterIPs": ["None"], "ports": [port("http", 80)]},
    })
    eps = [f"10.245.{h // 60}.{(h % 60) * 4 + k + 1}" for k in range(4)]
    objects.append({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{name}-1", "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [e], "conditions": {"ready": True}} for e in eps],
        "ports": [{"name": "http", "protocol": "TCP", "port": 80}],
    })
    fq = f"{name}.{ns}.svc"
    for e in eps:
        dashed = e.replace(".", "-")
        zone.append(f"{fq} {ttl} IN A {e}")
        zone.append(f"{dashed}.{fq} {ttl} IN A {e}")
        zone.append(f"_http._tcp.{fq} {ttl} IN SRV 0 25 80 {dashed}.{fq}.cluster.local.")
        o = e.split(".")
        rev.append(f"{o[3]}.{o[2]}.{o[1]} {ttl} IN PTR {dashed}.{fq}.cluster.local.")
    queries_a.append(f"{fq}.cluster.local A")

random.seed(7)
mix = []
total = 20000
for _ in range(total):
    r = random.random()
    pool = queries_a if r < 0.60 else queries_nx if r < 0.70 else queries_srv if r < 0.85 else queries_ptr
    mix.append(random.choice(pool))
with open(f"{out}/objects.json", "w") as f:
    json.dump({"apiVersion": "v1", "kind": "List", "items": objects}, f)
with open(f"{out}/cluster.local.zone", "w") as f:
    f.write("\n".join(zone) + "\n")
with open(f"{out}/10.in-addr.arpa.zone", "w") as f:
    f.write("\n".join(rev) + "\n")
with open(f"{out}/queries.txt", "w") as f:
    f.write("\n".join(mix) + "\n")
print(f"{n} services, {n_headless} headless, {len(zone)} forward and {len(rev)} reverse records")
