// Tests read the shared example manifests; the core itself does no I/O.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeSet;
use std::net::IpAddr;

use proptest::prelude::*;
use twill_model::*;

use super::*;

fn state(yaml: &str, nodes: usize, settings: &Settings) -> ClusterState {
    let r = twill_manifest::parse_str("test.yaml", yaml);
    assert!(!r.has_errors(), "{:?}", r.problems);
    let mut s = ClusterState::from_objects(r.into_objects());
    for n in generated_nodes(nodes, settings) {
        s.apply(ObjectEvent::Applied(Object::Node(n)));
    }
    s
}

fn svc<'a>(s: &'a ClusterState, ns: &str, name: &str) -> &'a Service {
    s.services
        .get(&ObjectKey::new(ns, name))
        .unwrap_or_else(|| panic!("service {ns}/{name} missing"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn service_yaml(ns: &str, name: &str, extra_spec: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{}{extra_spec}",
        if extra_spec.contains("ports:") {
            ""
        } else {
            "  ports: [{port: 80}]\n"
        }
    )
}

#[test]
fn well_known_services_get_first_and_tenth_addresses_and_others_the_upper_band() {
    let settings = Settings::default();
    let yaml = [
        service_yaml("default", "kubernetes", ""),
        service_yaml("kube-system", "kube-dns", ""),
        service_yaml("shop", "web", ""),
        service_yaml("shop", "db", ""),
    ]
    .concat();
    let out = reconcile(&state(&yaml, 0, &settings), &settings);
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    assert_eq!(
        svc(&out.state, "default", "kubernetes").cluster_ips,
        [ip("10.96.0.1")]
    );
    assert_eq!(
        svc(&out.state, "kube-system", "kube-dns").cluster_ips,
        [ip("10.96.0.10")]
    );
    // 10.96.0.0/12 has 2^20-2 addresses; the lower band holds the first 256.
    let lower_end = ip("10.96.1.1");
    for name in ["web", "db"] {
        let got = svc(&out.state, "shop", name).cluster_ips[0];
        assert!(got > lower_end, "{got} should be in the upper band");
        assert!("10.96.0.0/12".parse::<IpNet>().unwrap().contains(&got));
    }
    assert_eq!(svc(&out.state, "shop", "web").ip_families, [IpFamily::V4]);
}

use ipnet::IpNet;

#[test]
fn reconcile_is_deterministic_and_a_fixed_point() {
    let settings = Settings {
        simulate_pods: true,
        ..Default::default()
    };
    let yaml = std::fs::read_to_string(twill_testkit_examples().join("web-nodeport.yaml")).unwrap();
    let input = state(&yaml, 2, &settings);
    let a = reconcile(&input, &settings);
    let b = reconcile(&input, &settings);
    assert_eq!(a, b);
    let again = reconcile(&a.state, &settings);
    assert_eq!(
        again.state, a.state,
        "feeding the output back must change nothing"
    );
    let other_seed = reconcile(
        &input,
        &Settings {
            seed: 7,
            ..settings.clone()
        },
    );
    let names = |o: &Output| o.state.pods.keys().cloned().collect::<Vec<_>>();
    assert_ne!(
        names(&a),
        names(&other_seed),
        "the seed picks the generated names"
    );
}

fn twill_testkit_examples() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/examples")
}

#[test]
fn explicit_cluster_ip_is_honoured_and_the_later_claimant_loses() {
    let settings = Settings::default();
    let yaml = [
        service_yaml("a", "first", "  clusterIP: 10.96.5.5\n"),
        service_yaml("b", "second", "  clusterIP: 10.96.5.5\n"),
        service_yaml("c", "outside", "  clusterIP: 10.0.0.5\n"),
        service_yaml("d", "net", "  clusterIP: 10.96.0.0\n"),
    ]
    .concat();
    let out = reconcile(&state(&yaml, 0, &settings), &settings);
    assert_eq!(svc(&out.state, "a", "first").cluster_ips, [ip("10.96.5.5")]);
    assert!(
        !out.state
            .services
            .contains_key(&ObjectKey::new("b", "second"))
    );
    assert!(
        !out.state
            .services
            .contains_key(&ObjectKey::new("c", "outside"))
    );
    let msgs: Vec<String> = out.problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        msgs,
        [
            "Service b/second: spec.clusterIP: 10.96.5.5 is already allocated to another service",
            "Service c/outside: spec.clusterIP: 10.0.0.5 is not in the service CIDR 10.96.0.0/12 (or is its network or broadcast address)",
            "Service d/net: spec.clusterIP: 10.96.0.0 is not in the service CIDR 10.96.0.0/12 (or is its network or broadcast address)",
        ]
    );
}

#[test]
fn node_ports_explicit_duplicate_out_of_range_and_shared_across_protocols() {
    let settings = Settings::default();
    let yaml = [
        service_yaml("a", "x", "  type: NodePort\n  ports: [{port: 80, nodePort: 30080}]\n"),
        service_yaml("b", "dup", "  type: NodePort\n  ports: [{port: 80, nodePort: 30080}]\n"),
        service_yaml("c", "low", "  type: NodePort\n  ports: [{port: 80, nodePort: 3001}]\n"),
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: dns, namespace: d}\nspec:\n  type: NodePort\n  ports:\n  - {name: udp, port: 53, protocol: UDP}\n  - {name: tcp, port: 53, protocol: TCP}\n  - {name: m, port: 9153}\n".to_string(),
    ]
    .concat();
    let out = reconcile(&state(&yaml, 0, &settings), &settings);
    assert_eq!(svc(&out.state, "a", "x").ports[0].node_port, Some(30080));
    assert!(!out.state.services.contains_key(&ObjectKey::new("b", "dup")));
    assert!(!out.state.services.contains_key(&ObjectKey::new("c", "low")));
    let msgs: Vec<String> = out.problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        msgs,
        [
            "Service b/dup: spec.ports[0].nodePort: node port 30080 is already allocated (by Service a/x)",
            "Service c/low: spec.ports[0].nodePort: 3001 is not in the node-port range 30000-32767",
        ]
    );
    let dns = svc(&out.state, "d", "dns");
    let np: Vec<u16> = dns.ports.iter().map(|p| p.node_port.unwrap()).collect();
    assert_eq!(np[0], np[1], "TCP and UDP of port 53 share one node port");
    assert_ne!(np[0], np[2]);
    assert!(np.iter().all(|p| (30000..=32767).contains(p)));
}

#[test]
fn load_balancers_take_pool_addresses_and_requested_ones_when_free() {
    let pool = Settings {
        load_balancer_pool: vec!["192.168.0.240/29".parse().unwrap()],
        ..Default::default()
    };
    let yaml = [
        service_yaml("a", "lb1", "  type: LoadBalancer\n"),
        service_yaml(
            "a",
            "lb2",
            "  type: LoadBalancer\n  loadBalancerIP: 192.168.0.245\n",
        ),
        service_yaml(
            "a",
            "local",
            "  type: LoadBalancer\n  externalTrafficPolicy: Local\n",
        ),
    ]
    .concat();
    let out = reconcile(&state(&yaml, 0, &pool), &pool);
    let lb = |n: &str| {
        svc(&out.state, "a", n)
            .load_balancer_ingress
            .iter()
            .map(|i| i.ip)
            .collect::<Vec<_>>()
    };
    assert_eq!(lb("lb1"), [ip("192.168.0.241")]);
    assert_eq!(lb("lb2"), [ip("192.168.0.245")]);
    assert_eq!(lb("local"), [ip("192.168.0.242")]);
    assert!(
        svc(&out.state, "a", "local")
            .health_check_node_port
            .is_some()
    );
    assert!(svc(&out.state, "a", "lb1").ports[0].node_port.is_some());
    let none = Settings::default();
    let out = reconcile(&state(&yaml, 0, &none), &none);
    assert!(
        svc(&out.state, "a", "lb1").load_balancer_ingress.is_empty(),
        "no pool: the LB stays pending"
    );
}

const DEPLOY: &str = "
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: nginx
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: kube-system}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      hostNetwork: true
      containers: [{name: a, image: agent}]
";

#[test]
fn workloads_become_named_pods_spread_over_nodes_and_daemonsets_cover_every_node() {
    let settings = Settings {
        simulate_pods: true,
        ..Default::default()
    };
    let out = reconcile(&state(DEPLOY, 2, &settings), &settings);
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    let web: Vec<&Pod> = out
        .state
        .pods
        .values()
        .filter(|p| p.key.namespace == "shop")
        .collect();
    assert_eq!(web.len(), 3);
    for p in &web {
        let hash = p
            .labels
            .get("pod-template-hash")
            .expect("deployment pods carry the template hash");
        let rs = format!("web-{hash}");
        assert_eq!(p.owner.as_ref().unwrap().name, rs);
        assert!(p.key.name.starts_with(&format!("{rs}-")));
        assert_eq!(p.key.name.len(), rs.len() + 6);
        assert!(p.ready && p.phase == PodPhase::Running);
        let node = out
            .state
            .nodes
            .get(p.spec.node_name.as_ref().unwrap())
            .unwrap();
        assert!(
            node.pod_cidrs[0].contains(&p.pod_ips[0]),
            "pod IP from its node's subnet"
        );
    }
    let mut per_node: Vec<usize> = ["node-1", "node-2"]
        .iter()
        .map(|n| {
            web.iter()
                .filter(|p| p.spec.node_name.as_deref() == Some(*n))
                .count()
        })
        .collect();
    per_node.sort();
    assert_eq!(per_node, [1, 2], "spread");
    let agents: Vec<&Pod> = out
        .state
        .pods
        .values()
        .filter(|p| p.key.namespace == "kube-system")
        .collect();
    assert_eq!(agents.len(), 2);
    for a in agents {
        let node = out
            .state
            .nodes
            .get(a.spec.node_name.as_ref().unwrap())
            .unwrap();
        assert_eq!(
            a.pod_ips, node.internal_ips,
            "host-network pods use the node address"
        );
    }
    let ips: BTreeSet<IpAddr> = web.iter().map(|p| p.pod_ips[0]).collect();
    assert_eq!(ips.len(), 3);
}

#[test]
fn scaling_down_removes_pods_and_keeps_the_rest_unchanged() {
    let settings = Settings {
        simulate_pods: true,
        ..Default::default()
    };
    let first = reconcile(&state(DEPLOY, 2, &settings), &settings).state;
    let mut smaller = first.clone();
    for w in smaller.workloads.values_mut() {
        w.replicas = 1;
    }
    let second = reconcile(&smaller, &settings).state;
    let web: Vec<&Pod> = second
        .pods
        .values()
        .filter(|p| p.key.namespace == "shop")
        .collect();
    assert_eq!(web.len(), 1);
    assert_eq!(
        first.pods.get(&web[0].key),
        Some(web[0]),
        "the survivor keeps its node and address"
    );
}

#[test]
fn unknown_node_and_unmatched_node_selector_are_reported() {
    let settings = Settings::default();
    let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  nodeName: nowhere\n  containers: [{name: c, image: i}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: q}\nspec:\n  nodeSelector: {disk: ssd}\n  containers: [{name: c, image: i}]\n";
    let out = reconcile(&state(yaml, 1, &settings), &settings);
    let msgs: Vec<String> = out.problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        msgs,
        [
            "Pod default/p: spec.nodeName: node \"nowhere\" does not exist; the pod stays Pending",
            "Pod default/q: spec.nodeSelector: no schedulable node matches; the pod stays Pending",
        ]
    );
}

#[test]
fn host_ports_are_respected_like_the_schedulers_node_ports_filter() {
    let settings = Settings::default();
    let pod = |name: &str, port: &str| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers: [{{name: c, image: i, ports: [{{containerPort: 80, {port}}}]}}]\n"
        )
    };
    // Two nodes, three pods wanting host port 8080/TCP: two fit, the third waits.
    let yaml = [
        pod("a", "hostPort: 8080"),
        pod("b", "hostPort: 8080"),
        pod("c", "hostPort: 8080"),
        // Another protocol on the same port does not collide.
        pod("d", "hostPort: 8080, protocol: UDP"),
    ]
    .concat();
    let out = reconcile(&state(&yaml, 2, &settings), &settings);
    let node = |n: &str| {
        out.state
            .pods
            .get(&ObjectKey::new("default", n))
            .and_then(|p| p.spec.node_name.clone())
    };
    let (a, b) = (node("a").unwrap(), node("b").unwrap());
    assert_ne!(
        a, b,
        "the second pod with hostPort 8080 goes to the other node"
    );
    assert_eq!(node("c"), None, "no node has 8080 free");
    assert!(node("d").is_some());
    let msgs: Vec<String> = out.problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        msgs,
        [
            "Pod default/c: spec.containers[].ports[].hostPort: 0/2 nodes are available: 2 node(s) didn't have free ports for the requested pod ports; the pod stays Pending"
        ]
    );
    // Once placed, a pod keeps its node on the next reconcile, and a finished pod frees
    // its port.
    let again = reconcile(&out.state, &settings);
    assert_eq!(
        again
            .state
            .pods
            .get(&ObjectKey::new("default", "a"))
            .unwrap()
            .spec
            .node_name,
        Some(a)
    );
    let mut done = out.state.clone();
    done.pods
        .get_mut(&ObjectKey::new("default", "b"))
        .unwrap()
        .phase = PodPhase::Failed;
    let freed = reconcile(&done, &settings);
    assert_eq!(
        freed
            .state
            .pods
            .get(&ObjectKey::new("default", "c"))
            .unwrap()
            .spec
            .node_name,
        Some(b)
    );
}

fn pod_yaml(
    name: &str,
    ips: &str,
    ready: bool,
    port_name: &str,
    port: u16,
    extra_meta: &str,
) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: ns, labels: {{app: a}}{extra_meta}}}\nspec:\n  nodeName: node-1\n  containers: [{{name: c, image: i, ports: [{{name: {port_name}, containerPort: {port}}}]}}]\nstatus:\n  phase: Running\n  podIPs: {ips}\n  conditions: [{{type: Ready, status: \"{}\"}}]\n",
        if ready { "True" } else { "False" }
    )
}

fn slices_of<'a>(s: &'a ClusterState, ns: &str, svc: &str) -> Vec<&'a EndpointSlice> {
    let key = ObjectKey::new(ns, svc);
    s.slices_for(&key).collect()
}

#[test]
fn named_target_port_resolved_per_pod_splits_slices_and_missing_names_drop_the_port() {
    let settings = Settings::default();
    let yaml = [
        pod_yaml("p1", "[{ip: 10.244.0.2}]", true, "http", 8080, ""),
        pod_yaml("p2", "[{ip: 10.244.0.3}]", true, "http", 9090, ""),
        pod_yaml("p3", "[{ip: 10.244.0.4}]", true, "other", 7070, ""),
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: ns, labels: {team: x}}\nspec:\n  selector: {app: a}\n  ports: [{name: web, port: 80, targetPort: http}]\n".into(),
    ]
    .concat();
    let out = reconcile(&state(&yaml, 1, &settings), &settings);
    let slices = slices_of(&out.state, "ns", "s");
    let mut by_port: Vec<(Option<u16>, Vec<String>)> = slices
        .iter()
        .map(|s| {
            (
                s.ports.first().and_then(|p| p.port),
                s.endpoints
                    .iter()
                    .map(|e| e.target_ref.as_ref().unwrap().key.name.clone())
                    .collect(),
            )
        })
        .collect();
    by_port.sort();
    assert_eq!(
        by_port,
        [
            (None, vec!["p3".to_string()]),
            (Some(8080), vec!["p1".into()]),
            (Some(9090), vec!["p2".into()])
        ]
    );
    for s in &slices {
        assert_eq!(
            s.labels.get(SERVICE_NAME_LABEL).map(String::as_str),
            Some("s")
        );
        assert_eq!(
            s.labels.get("team").map(String::as_str),
            Some("x"),
            "service labels are copied"
        );
        assert_eq!(
            s.labels.get(slices::MANAGED_BY_LABEL).map(String::as_str),
            Some(slices::CONTROLLER_NAME)
        );
        assert!(s.key.name.starts_with("s-"));
    }
}

#[test]
fn readiness_terminating_and_publish_not_ready_conditions() {
    let settings = Settings::default();
    let yaml = [
        pod_yaml("ready", "[{ip: 10.244.0.2}]", true, "http", 80, ""),
        pod_yaml("notready", "[{ip: 10.244.0.3}]", false, "http", 80, ""),
        pod_yaml("leaving", "[{ip: 10.244.0.4}]", true, "http", 80, ", deletionTimestamp: \"2026-01-01T00:00:00Z\""),
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: ns}\nspec:\n  selector: {app: a}\n  ports: [{port: 80}]\n".into(),
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: pub, namespace: ns}\nspec:\n  selector: {app: a}\n  publishNotReadyAddresses: true\n  ports: [{port: 80}]\n".into(),
    ]
    .concat();
    let out = reconcile(&state(&yaml, 1, &settings), &settings);
    let cond = |svc: &str, pod: &str| {
        let s = slices_of(&out.state, "ns", svc);
        let e = s
            .iter()
            .flat_map(|s| &s.endpoints)
            .find(|e| e.target_ref.as_ref().unwrap().key.name == pod)
            .unwrap();
        (
            e.conditions.ready,
            e.conditions.serving,
            e.conditions.terminating,
        )
    };
    assert_eq!(cond("s", "ready"), (Some(true), Some(true), Some(false)));
    assert_eq!(
        cond("s", "notready"),
        (Some(false), Some(false), Some(false))
    );
    assert_eq!(cond("s", "leaving"), (Some(false), Some(true), Some(true)));
    assert_eq!(
        cond("pub", "notready"),
        (Some(true), Some(true), Some(false))
    );
    assert_eq!(cond("pub", "leaving"), (Some(true), Some(true), Some(true)));
}

#[test]
fn more_than_a_hundred_endpoints_are_cut_into_slices() {
    let settings = Settings::default();
    let mut yaml: String = (0..250)
        .map(|i| {
            pod_yaml(
                &format!("p{i}"),
                &format!("[{{ip: 10.244.{}.{}}}]", i / 200, 2 + i % 200),
                true,
                "http",
                80,
                "",
            )
        })
        .collect();
    yaml.push_str("---\napiVersion: v1\nkind: Service\nmetadata: {name: big, namespace: ns}\nspec:\n  selector: {app: a}\n  ports: [{port: 80}]\n");
    let out = reconcile(&state(&yaml, 1, &settings), &settings);
    let mut sizes: Vec<usize> = slices_of(&out.state, "ns", "big")
        .iter()
        .map(|s| s.endpoints.len())
        .collect();
    sizes.sort();
    assert_eq!(sizes, [50, 100, 100]);
}

#[test]
fn dual_stack_services_get_one_slice_per_family_and_empty_services_a_placeholder() {
    let settings = Settings {
        service_cidrs: vec![
            "10.96.0.0/12".parse().unwrap(),
            "fd00:10:96::/112".parse().unwrap(),
        ],
        ..Default::default()
    };
    let yaml = [
        pod_yaml("p", "[{ip: 10.244.0.2}, {ip: 'fd00:10:244::2'}]", true, "http", 80, ""),
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: ds, namespace: ns}\nspec:\n  ipFamilyPolicy: PreferDualStack\n  selector: {app: a}\n  ports: [{port: 80}]\n".into(),
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: empty, namespace: ns}\nspec:\n  selector: {app: nothing}\n  ports: [{port: 80}]\n".into(),
    ]
    .concat();
    let out = reconcile(&state(&yaml, 1, &settings), &settings);
    let ds = svc(&out.state, "ns", "ds");
    assert_eq!(ds.ip_families, [IpFamily::V4, IpFamily::V6]);
    assert_eq!(ds.cluster_ips.len(), 2);
    let mut types: Vec<(AddressType, usize)> = slices_of(&out.state, "ns", "ds")
        .iter()
        .map(|s| (s.address_type, s.endpoints.len()))
        .collect();
    types.sort();
    assert_eq!(types, [(AddressType::IPv4, 1), (AddressType::IPv6, 1)]);
    let empty = slices_of(&out.state, "ns", "empty");
    assert_eq!(empty.len(), 1);
    assert!(empty[0].endpoints.is_empty());
}

#[test]
fn hostname_and_subdomain_name_the_endpoint_and_selectorless_services_keep_user_slices() {
    let settings = Settings::default();
    let yaml = "
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: ns, labels: {app: db}}
spec:
  hostname: db-0
  subdomain: db
  nodeName: node-1
  containers: [{name: c, image: i}]
status: {phase: Running, podIP: 10.244.0.9, conditions: [{type: Ready, status: 'True'}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: ns}
spec: {clusterIP: None, selector: {app: db}, ports: [{port: 5432}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: ns}
spec: {ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ext-manual, namespace: ns, labels: {kubernetes.io/service-name: ext}}
addressType: IPv4
endpoints: [{addresses: [192.0.2.7]}]
ports: [{port: 80}]
";
    let out = reconcile(&state(yaml, 1, &settings), &settings);
    let db = slices_of(&out.state, "ns", "db");
    assert_eq!(db[0].endpoints[0].hostname.as_deref(), Some("db-0"));
    assert!(db[0].labels.contains_key("service.kubernetes.io/headless"));
    assert!(svc(&out.state, "ns", "db").cluster_ips.is_empty());
    let ext = slices_of(&out.state, "ns", "ext");
    assert_eq!(ext.len(), 1);
    assert_eq!(ext[0].key.name, "ext-manual");
}

proptest! {
    #[test]
    fn ip_allocator_never_duplicates_and_stays_in_range(
        prefix in 20u8..29,
        explicit in proptest::collection::vec(0u32..4096, 0..20),
        hashes in proptest::collection::vec(any::<u64>(), 0..200),
    ) {
        let cidr: IpNet = format!("10.96.0.0/{prefix}").parse().unwrap();
        let mut a = IpAllocator::new(cidr);
        let mut seen = BTreeSet::new();
        for e in &explicit {
            let ip = IpAddr::V4((u32::from(std::net::Ipv4Addr::new(10, 96, 0, 0)) + e).into());
            let ok = a.reserve(ip);
            if ok {
                prop_assert!(seen.insert(ip), "reserved twice: {ip}");
                prop_assert!(cidr.contains(&ip) && ip != cidr.network() && ip != cidr.broadcast());
            } else {
                prop_assert!(seen.contains(&ip) || !cidr.contains(&ip) || ip == cidr.network() || ip == cidr.broadcast());
            }
        }
        for h in &hashes {
            match a.allocate(*h) {
                Some(ip) => {
                    prop_assert!(cidr.contains(&ip) && ip != cidr.network() && ip != cidr.broadcast());
                    prop_assert!(seen.insert(ip), "allocated twice: {ip}");
                }
                None => prop_assert_eq!(seen.len() as u128, a.size(), "None only when full"),
            }
        }
    }

    #[test]
    fn port_allocator_never_duplicates_honours_explicit_and_is_deterministic(
        explicit in proptest::collection::vec(29990u16..32780, 0..30),
        hashes in proptest::collection::vec(any::<u64>(), 0..300),
    ) {
        let run = || {
            let mut a = PortAllocator::new((30000, 32767));
            let mut got = Vec::new();
            for e in &explicit {
                got.push((*e, a.reserve(*e)));
            }
            let dynamic: Vec<Option<u16>> = hashes.iter().map(|h| a.allocate(*h)).collect();
            (got, dynamic)
        };
        let (got, dynamic) = run();
        prop_assert_eq!(run(), (got.clone(), dynamic.clone()));
        let mut seen = BTreeSet::new();
        for (p, ok) in got {
            prop_assert_eq!(ok, (30000..=32767).contains(&p) && seen.insert(p));
        }
        for p in dynamic.into_iter().flatten() {
            prop_assert!((30000..=32767).contains(&p));
            prop_assert!(seen.insert(p), "duplicate {}", p);
        }
    }

    #[test]
    fn service_allocation_is_unique_across_services(n in 1usize..60, seed in any::<u64>()) {
        let settings = Settings { seed, service_cidrs: vec!["10.96.0.0/24".parse().unwrap()], ..Default::default() };
        let yaml: String = (0..n).map(|i| service_yaml("ns", &format!("s{i}"), "  type: NodePort\n")).collect();
        let out = reconcile(&state(&yaml, 0, &settings), &settings);
        prop_assert!(out.problems.is_empty());
        let ips: BTreeSet<IpAddr> = out.state.services.values().map(|s| s.cluster_ips[0]).collect();
        let ports: BTreeSet<u16> = out.state.services.values().map(|s| s.ports[0].node_port.unwrap()).collect();
        prop_assert_eq!(ips.len(), n);
        prop_assert_eq!(ports.len(), n);
    }
}

#[test]
fn nodes_past_the_pod_cidrs_room_are_problems_and_settings_checks_name_the_flag() {
    let settings = Settings {
        pod_cidr: "10.244.0.0/22".parse().unwrap(),
        ..Settings::default()
    };
    assert_eq!(settings.node_capacity(), 4);
    assert!(settings.check(4).is_empty(), "{:?}", settings.check(4));
    assert_eq!(settings.check(5).len(), 1);
    let mut input = ClusterState::default();
    for i in 0..6 {
        input.apply(ObjectEvent::Applied(Object::Node(twill_model::Node {
            name: format!("n{i}"),
            ..Default::default()
        })));
    }
    let out = reconcile(&input, &settings);
    let without: Vec<String> = out
        .problems
        .iter()
        .filter(|p| p.path == "spec.podCIDR")
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        without,
        [
            "Node n4: spec.podCIDR: no pod subnet left: 10.244.0.0/22 holds 4 subnets of /24, all taken",
            "Node n5: spec.podCIDR: no pod subnet left: 10.244.0.0/22 holds 4 subnets of /24, all taken",
        ]
    );
    let wide = Settings {
        node_subnet_len: 16,
        ..Settings::default()
    };
    assert_eq!(wide.node_capacity(), 1);
    let v6 = Settings {
        pod_cidr: "fd00:10::/56".parse().unwrap(),
        node_subnet_len: 127,
        service_cidrs: vec!["fd00:96::/112".parse().unwrap()],
        ..Settings::default()
    };
    assert_eq!(v6.check(1).len(), 1, "{:?}", v6.check(1));
}

#[test]
fn service_cidr_objects_are_where_cluster_ips_come_from() {
    let settings = Settings::default();
    let yaml = format!(
        "apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {{name: extra}}\nspec: {{cidrs: [10.200.0.0/24]}}\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {{name: kubernetes}}\nspec: {{cidrs: [10.100.0.0/16]}}\n---\n{}",
        service_yaml("default", "web", "")
    );
    let out = reconcile(&state(&yaml, 1, &settings), &settings);
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    let ip = svc(&out.state, "default", "web").cluster_ips[0];
    let kubernetes: ipnet::IpNet = "10.100.0.0/16".parse().unwrap();
    assert!(
        kubernetes.contains(&ip),
        "{ip} is from the `kubernetes` ServiceCIDR, not the flag's 10.96.0.0/12"
    );
    // Without objects, the settings' CIDR.
    let out = reconcile(
        &state(&service_yaml("default", "web", ""), 1, &settings),
        &settings,
    );
    let ip = svc(&out.state, "default", "web").cluster_ips[0];
    assert!(settings.service_cidrs[0].contains(&ip));
}

#[test]
fn traffic_distribution_hints_each_endpoint_for_its_zone_and_node() {
    let settings = Settings::default();
    let mut yaml = String::new();
    for (i, zone) in ["z1", "z2"].iter().enumerate() {
        yaml.push_str(&format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: n{i}, labels: {{topology.kubernetes.io/zone: {zone}}}}}\nspec: {{podCIDR: 10.244.{i}.0/24}}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: default, labels: {{app: web}}}}\n\
             spec: {{nodeName: n{i}, containers: [{{name: c, image: i}}]}}\n\
             status: {{phase: Running, podIP: 10.244.{i}.5, conditions: [{{type: Ready, status: 'True'}}]}}\n---\n"
        ));
    }
    let hints = |td: &str| -> Vec<(Vec<String>, Vec<String>)> {
        let svc = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\n\
             spec: {{selector: {{app: web}}, trafficDistribution: {td}, ports: [{{port: 80}}]}}\n"
        );
        let out = reconcile(&state(&format!("{yaml}{svc}"), 0, &settings), &settings);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        let mut eps: Vec<_> = out
            .state
            .endpoint_slices
            .values()
            .flat_map(|s| s.endpoints.clone())
            .collect();
        eps.sort_by_key(|e| e.addresses.clone());
        eps.into_iter()
            .map(|e| (e.hints_for_zones, e.hints_for_nodes))
            .collect()
    };
    let v = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        hints("PreferSameZone"),
        [(v(&["z1"]), v(&[])), (v(&["z2"]), v(&[]))]
    );
    assert_eq!(
        hints("PreferClose"),
        hints("PreferSameZone"),
        "the old name"
    );
    assert_eq!(
        hints("PreferSameNode"),
        [(v(&["z1"]), v(&["n0"])), (v(&["z2"]), v(&["n1"]))]
    );
}
