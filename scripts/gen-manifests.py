#!/usr/bin/env python3
"""Write a large manifest set for load benchmarks: N objects spread over namespaces,
services, deployments, pods and EndpointSlices, as one multi-document YAML stream."""
import sys

def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    out = sys.stdout
    per = 4  # namespace share + service + deployment + pod per unit
    units = n // per
    for i in range(units):
        ns = f"ns{i // 100}"
        if i % 100 == 0:
            out.write(f"---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels: {{team: t{i % 7}}}\n")
        out.write(f"""---
apiVersion: v1
kind: Service
metadata:
  name: svc{i}
  namespace: {ns}
  labels: {{app: app{i}}}
spec:
  type: {"NodePort" if i % 10 == 0 else "ClusterIP"}
  selector: {{app: app{i}}}
  ports:
  - name: http
    port: 80
    targetPort: http
  - name: metrics
    port: 9090
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: app{i}
  namespace: {ns}
spec:
  replicas: 2
  selector:
    matchLabels: {{app: app{i}}}
  template:
    metadata:
      labels: {{app: app{i}, tier: backend}}
    spec:
      containers:
      - name: app
        image: example/app:{i}
        ports:
        - {{name: http, containerPort: 8080}}
        - {{name: metrics, containerPort: 9090}}
---
apiVersion: v1
kind: Pod
metadata:
  name: standalone{i}
  namespace: {ns}
  labels: {{app: app{i}}}
spec:
  containers:
  - name: c
    image: busybox
    command: ["sleep", "infinity"]
    ports: [{{name: http, containerPort: 8080}}]
""")
        if i % 4 == 0:
            out.write(f"""---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow{i}
  namespace: {ns}
spec:
  podSelector: {{matchLabels: {{app: app{i}}}}}
  ingress:
  - from:
    - namespaceSelector: {{matchLabels: {{team: t1}}}}
      podSelector: {{matchExpressions: [{{key: tier, operator: In, values: [frontend]}}]}}
    ports: [{{port: http}}]
""")

main()
