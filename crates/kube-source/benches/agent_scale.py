#!/usr/bin/env python3
"""How long `twill agent` takes from start to programmed, and how much memory, for a
cluster of N Services (each with one EndpointSlice of 3 ready endpoints, half of them
on this node) served by a fake API server.

The fake API server answers each list in one page and holds watches open without
events, as an idle cluster would. Everything runs in a network namespace of its own
(the agent programs iptables there), removed at the end.

    sudo crates/kube-source/benches/agent_scale.py [--twill target/release/twill] [N ...]

Prints one line per N: services, seconds to `programmed:`, max RSS (MiB), rules.
Needs root, iproute2, iptables and /usr/bin/time.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

SERVER = r'''
import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
lists = json.load(open(sys.argv[1]))
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        path, _, query = self.path.partition("?")
        if "watch=true" in query:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            time.sleep(3600)
            return
        body = json.dumps(lists.get(path, {"kind": "List", "apiVersion": "v1",
                                           "metadata": {"resourceVersion": "1"}, "items": []})).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
s = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), H)
s.daemon_threads = True
print("ready", flush=True)
s.serve_forever()
'''


def listing(kind, api_version, items):
    return {"kind": kind + "List", "apiVersion": api_version,
            "metadata": {"resourceVersion": "1000"}, "items": items}


def cluster(n):
    namespaces = [{"metadata": {"name": f"ns{i}"}} for i in range(max(1, n // 100))]
    nodes = [{"metadata": {"name": name},
              "spec": {"podCIDR": f"10.244.{i}.0/24"},
              "status": {"addresses": [{"type": "InternalIP", "address": f"192.168.56.{10 + i}"}]}}
             for i, name in enumerate(["node-a", "node-b"])]
    services, slices = [], []
    for i in range(n):
        ns = f"ns{i % len(namespaces)}"
        ip = f"10.96.{i // 250}.{i % 250 + 1}"
        services.append({"metadata": {"name": f"svc{i}", "namespace": ns},
                         "spec": {"clusterIP": ip, "clusterIPs": [ip], "type": "ClusterIP",
                                  "selector": {"app": f"svc{i}"},
                                  "ports": [{"name": "http", "port": 80, "protocol": "TCP",
                                             "targetPort": 8080}]}})
        eps = []
        for j in range(3):
            k = i * 3 + j
            eps.append({"addresses": [f"10.244.{k % 2}.{(k // 2) % 250 + 2}"],
                        "conditions": {"ready": True, "serving": True, "terminating": False},
                        "nodeName": "node-a" if k % 2 == 0 else "node-b"})
        slices.append({"metadata": {"name": f"svc{i}-abc", "namespace": ns,
                                    "labels": {"kubernetes.io/service-name": f"svc{i}"}},
                       "addressType": "IPv4", "endpoints": eps,
                       "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
    return {
        "/api/v1/namespaces": listing("Namespace", "v1", namespaces),
        "/api/v1/nodes": listing("Node", "v1", nodes),
        "/api/v1/pods": listing("Pod", "v1", []),
        "/api/v1/services": listing("Service", "v1", services),
        "/apis/discovery.k8s.io/v1/endpointslices": listing("EndpointSlice", "discovery.k8s.io/v1", slices),
        "/apis/networking.k8s.io/v1/networkpolicies": listing("NetworkPolicy", "networking.k8s.io/v1", []),
    }


def run(twill, n, tmp):
    ns = f"twbench{os.getpid()}-{n}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    server = None
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        lists = os.path.join(tmp, f"lists-{n}.json")
        with open(lists, "w") as f:
            json.dump(cluster(n), f)
        port = 18080
        server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, lists, str(port)],
                                  stdout=subprocess.PIPE, text=True)
        server.stdout.readline()
        kubeconfig = os.path.join(tmp, "kubeconfig")
        with open(kubeconfig, "w") as f:
            f.write(f"apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{port}\n"
                    "users:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n"
                    "current-context: c\n")
        started = time.monotonic()
        out = subprocess.run(["ip", "netns", "exec", ns, "/usr/bin/time", "-f", "maxrss_kib=%M",
                              twill, "agent", "--kubeconfig", kubeconfig, "--hostname-override", "node-a",
                              "--proxy-mode", "iptables", "--cluster-cidr", "10.244.0.0/16",
                              "--exit-after-sync"],
                             capture_output=True, text=True, timeout=600)
        elapsed = time.monotonic() - started
        if out.returncode != 0:
            sys.exit(f"twill agent failed ({out.returncode}): {out.stderr[-2000:]}")
        rss = next(int(l.split("=")[1]) for l in out.stderr.splitlines() if l.startswith("maxrss_kib="))
        rules = subprocess.run(["ip", "netns", "exec", ns, "iptables-save", "-t", "nat"],
                               capture_output=True, text=True, check=True).stdout.count("\n-A ")
        print(f"{n} services: {elapsed:.2f} s to programmed, max RSS {rss / 1024:.1f} MiB, {rules} nat rules",
              flush=True)
    finally:
        if server:
            server.kill()
            server.wait()
        subprocess.run(["ip", "netns", "del", ns])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--twill", default="target/debug/twill")
    p.add_argument("sizes", nargs="*", type=int, default=[100, 1000, 5000])
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for n in a.sizes:
            run(os.path.abspath(a.twill), n, tmp)


if __name__ == "__main__":
    main()
