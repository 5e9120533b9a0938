#!/usr/bin/env bash
# The main job: build Twill, bring up a two-node lab running examples/, and take a
# short guided tour with real output. The lab stays up afterwards to explore.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
echo "== building twill (release)"
cargo build --release --quiet -p twill
TWILL=$PWD/target/release/twill
LAB=${TWILL_LAB:-demo}
export TWILL_LAB=$LAB

run() {
  echo
  echo "\$ $*"
  "$@"
}

run "$TWILL" lab up --name "$LAB" --nodes 2 --backend vxlan --replace -f examples/
run "$TWILL" lab get nodes -o wide
run "$TWILL" lab get pods -A -o wide
run "$TWILL" lab get svc -A

echo
echo "# Ten requests from the client pod to the hostnames ClusterIP service; each answer"
echo "# starts with the name of the pod that served it:"
echo "\$ for i in \$(seq 10); do $TWILL lab exec -n shop client -- curl -s http://hostnames.default/; done"
for _ in $(seq 10); do
  "$TWILL" lab exec -n shop client -- curl -s -m 2 http://hostnames.default/ || echo "(no answer)"
done | awk '{print $1}' | sort | uniq -c | awk '{printf "  %s answered %d of 10\n", $2, $1}'

echo
echo "# The NodePort service web answers on port 30080 of every node, from the outside host:"
for ip in $("$TWILL" lab get nodes -o wide | awk 'NR>1 {print $6}'); do
  run "$TWILL" lab exec --host client -- curl -s -m 2 "http://$ip:30080/" || echo "(no answer)"
done

echo
echo "# Cluster DNS from a pod: nslookup, and glibc walking the search path for a short name."
echo "# (The lab's DNS has no upstream resolver, so it says 'recursion not available';"
echo "# those lines are filtered out here.)"
echo "\$ $TWILL lab exec -n shop client -- nslookup web.shop.svc.cluster.local"
"$TWILL" lab exec -n shop client -- nslookup web.shop.svc.cluster.local 2>&1 | grep -v 'recursion not available' || true
run "$TWILL" lab exec -n shop client -- getent hosts web.shop || true

echo
echo "# The iptables chains that carried the ClusterIP traffic on node-1 (kube-proxy's layout):"
echo "\$ $TWILL lab exec --node node-1 -- iptables-save -t nat | grep -E 'default/hostnames'"
"$TWILL" lab exec --node node-1 -- iptables-save -t nat | grep -E 'default/hostnames' || true

echo
echo "# twill lab trace walks a packet through those same live rules and routes, node by"
echo "# node, to each pod it can reach (client pod -> shop/web's ClusterIP):"
run "$TWILL" lab trace --from shop/client --to shop/web:8080 || true

echo
echo "# NetworkPolicy: a policy that selects the hostnames pods and admits nothing. The"
echo "# client's requests are refused, and the flow log of the pods' nodes (NFLOG from the"
echo "# real rules) names the policy that decided:"
DENY=$(mktemp --suffix=.yaml)
cat >"$DENY" <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: hostnames-deny, namespace: default}
spec:
  podSelector: {matchLabels: {app: hostnames}}
  policyTypes: [Ingress]
YAML
run "$TWILL" lab apply -f "$DENY"
sleep 2
echo "\$ $TWILL lab exec -n shop client -- curl -s -m 2 http://hostnames.default/"
"$TWILL" lab exec -n shop client -- curl -s -m 2 http://hostnames.default/ || echo "(refused)"
sleep 0.5
run "$TWILL" lab flows --verdict dropped -o wide || true
run "$TWILL" lab delete -f "$DENY"
rm -f "$DENY"

# The live page of the lab, in the background until the lab goes.
pkill -f "twill lab ui --name $LAB " 2>/dev/null || true
setsid "$TWILL" lab ui --name "$LAB" --listen 127.0.0.1:8090 >/dev/null 2>&1 </dev/null &
UI="http://127.0.0.1:8090/"

cat <<TXT

The lab "$LAB" is still up, drawn live at $UI (twill lab ui: nodes, pods,
Services, a packet's path in Kubernetes terms, the flow log). Explore it:
  $TWILL lab get pods -A -o wide
  $TWILL lab exec -n shop client -- curl -s http://web.shop:8080/
  $TWILL lab exec --node node-1 -- ip route
  $TWILL lab exec --host client -- curl -s http://$(echo 192.168.50.11):30080/
  $TWILL lab status
  $TWILL lab trace --from client --to 192.168.50.11:30080 --reply
  $TWILL lab doctor
  $TWILL lab flows -f
Tear it down:
  $TWILL lab down --name $LAB
TXT
