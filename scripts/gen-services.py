#!/usr/bin/env python3
"""N Services (ClusterIP, one port) each with an EndpointSlice of 10 ready endpoints, as
one YAML stream: the shape of `cargo bench -p twill-proxy-iptables --bench sync`, for measuring
the daemon (`twill proxy -f FILE --hostname-override n0` in a netns you create)."""
import sys
n = int(sys.argv[1])
out = sys.stdout
out.write("---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: bench\n")
for i in range(n):
    ip = 0xAC1E0000 + i
    cip = ".".join(str((ip >> s) & 255) for s in (24, 16, 8, 0))
    out.write(f"""---
apiVersion: v1
kind: Service
metadata:
  name: svc{i}
  namespace: bench
spec:
  type: ClusterIP
  clusterIP: {cip}
  clusterIPs: [{cip}]
  ports:
  - name: http
    port: 80
    targetPort: 8080
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc{i}-a
  namespace: bench
  labels: {{kubernetes.io/service-name: svc{i}}}
addressType: IPv4
ports:
- name: http
  port: 8080
  protocol: TCP
endpoints:
""")
    for e in range(10):
        a = 0x0A000000 + i * 16 + e
        eip = ".".join(str((a >> s) & 255) for s in (24, 16, 8, 0))
        out.write(f"- addresses: [{eip}]\n  nodeName: n{e}\n  conditions: {{ready: true}}\n")
