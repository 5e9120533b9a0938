//! End to end on real kernels: `twill lab` clusters with the real agents, driven the way
//! a user drives them (the `twill` binary), checked with real clients.
//!
//! Each test owns a lab named `e<pid>x<n>`; a guard tears it down even when the test
//! fails, and labs left by a killed run (whose pid is gone) are swept first.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

static N: AtomicUsize = AtomicUsize::new(0);

fn twill() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_twill"));
    // Tests must not leave state where a user's labs live.
    c.env("TWILL_LAB_ROOT", lab_root());
    c
}

fn lab_root() -> String {
    "/run/twill-lab-tests".to_string()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Remove labs of test processes that no longer exist.
fn sweep() {
    let mut names: Vec<String> = std::fs::read_dir(lab_root())
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if let Ok(d) = std::fs::read_dir("/run/netns") {
        for e in d.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(rest) = n.strip_prefix("tl-e")
                && let Some((lab, _)) = rest.split_once('-')
            {
                names.push(format!("e{lab}"));
            }
        }
    }
    names.sort();
    names.dedup();
    for name in names {
        let Some(pid) = name
            .strip_prefix('e')
            .and_then(|r| r.split('x').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = twill()
                .args(["lab", "down", "--force", "--name", &name])
                .output();
        }
    }
}

struct Lab {
    name: String,
}

impl Lab {
    /// A fresh lab name owned by this test (labs of dead test processes are swept
    /// first); nothing is built yet, but the guard tears down whatever gets built.
    fn named() -> Lab {
        sweep();
        let name = format!(
            "e{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        Lab { name }
    }

    /// `twill lab up --name NAME`, for the caller to add options to.
    fn up_command(&self) -> Command {
        let mut c = twill();
        c.args(["lab", "up", "--name", &self.name]);
        c
    }

    fn up(extra: &[&str]) -> Lab {
        let lab = Lab::named();
        let out = lab.up_command().args(extra).output().unwrap();
        assert!(out.status.success(), "lab up failed: {}", text(&out));
        lab
    }

    fn run(&self, args: &[&str]) -> Output {
        twill()
            .args(["lab"])
            .args(args)
            .args(["--name", &self.name])
            .output()
            .unwrap()
    }

    fn exec(&self, target: &[&str], cmd: &[&str]) -> Output {
        twill()
            .args(["lab", "exec", "--name", &self.name])
            .args(target)
            .arg("--")
            .args(cmd)
            .output()
            .unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = twill()
            .args(["lab", "down", "--force", "--name", &self.name])
            .output();
    }
}

fn manifest(name: &str, yaml: &str) -> String {
    let dir = std::env::temp_dir().join(format!("twill-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, yaml).unwrap();
    p.display().to_string()
}

const PODS: &str = "
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      nodeSelector: {kubernetes.io/hostname: node-1}
      containers: [{name: web, image: nginx, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeName: node-1
  containers: [{name: c, image: busybox, command: [sleep, infinity]}]
";

#[test]
fn pods_on_one_node_reach_each_other_and_down_leaves_nothing() {
    if !twill_testkit::require_root("pods_on_one_node_reach_each_other_and_down_leaves_nothing") {
        return;
    }
    let f = manifest("pods.yaml", PODS);
    let lab = Lab::up(&["--nodes", "2", "--no-dns", "-f", &f]);
    let pods = text(&lab.run(&["get", "pods", "-o", "wide"]));
    let web_ips: Vec<String> = pods
        .lines()
        .filter(|l| l.starts_with("web-"))
        .map(|l| l.split_whitespace().nth(5).unwrap().to_string())
        .collect();
    assert_eq!(web_ips.len(), 2, "{pods}");
    for ip in &web_ips {
        let out = lab.exec(
            &["client"],
            &["curl", "-s", "-m", "3", &format!("http://{ip}/")],
        );
        let body = text(&out);
        assert!(
            body.starts_with("web-") && body.contains(&format!("ip={ip}")),
            "{body}"
        );
    }
    let hostname = text(&lab.exec(&["client"], &["hostname"]));
    assert_eq!(hostname.trim(), "client");
    let name = lab.name.clone();
    drop(lab);
    let leftovers: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !leftovers
            .iter()
            .any(|n| n.starts_with(&format!("tl-{name}-"))),
        "{leftovers:?}"
    );
    assert!(!Path::new(&lab_root()).join(&name).exists());
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    assert!(
        !text(&ps).contains(&format!("--name {name}")),
        "a lab process survived down"
    );
}

#[test]
fn bad_manifests_deploy_the_rest_and_name_the_problem() {
    if !twill_testkit::require_root("bad_manifests_deploy_the_rest_and_name_the_problem") {
        return;
    }
    let f = manifest(
        "bad.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: ok}\nspec:\n  containers: [{name: c, image: i, command: [sleep, infinity]}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: broken}\nspec:\n  ports: [{port: 99999}]\n---\napiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\n",
    );
    let name = format!(
        "e{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let out = twill()
        .args(["lab", "up", "--name", &name, "--no-dns", "-f", &f])
        .output()
        .unwrap();
    let _guard = Lab { name: name.clone() };
    let t = text(&out);
    assert!(
        !out.status.success(),
        "an invalid object makes up exit non-zero: {t}"
    );
    assert!(t.contains("bad.yaml doc 2 (line 7): Service default/broken: spec.ports[0].port: 99999 is out of range 1-65535"), "{t}");
    assert!(
        t.contains("warning: ") && t.contains("Job default/j"),
        "{t}"
    );
    assert!(
        t.contains("1/1 pods ready"),
        "the valid pod still deploys: {t}"
    );
    // `up` again with the same options finds nothing to restart; other options are
    // refused with what differs.
    let again = twill()
        .args(["lab", "up", "--name", &name, "--no-dns"])
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("was up already; nothing needed restarting"),
        "{}",
        text(&again)
    );
    let other = twill()
        .args(["lab", "up", "--name", &name, "--no-dns", "--nodes", "3"])
        .output()
        .unwrap();
    assert!(!other.status.success());
    assert!(
        text(&other).contains("exists with other options (--nodes 2, asked 3)"),
        "{}",
        text(&other)
    );
    let apply = twill()
        .args(["lab", "apply", "--name", &name, "-f", &f])
        .output()
        .unwrap();
    assert!(
        text(&apply).contains("spec.ports[0].port: 99999"),
        "{}",
        text(&apply)
    );
}

#[test]
fn commands_on_a_missing_lab_say_so() {
    let out = twill()
        .args(["lab", "get", "pods", "--name", "nosuchlab"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("lab \"nosuchlab\" does not exist"),
        "{}",
        text(&out)
    );
}

/// Extra objects for the data-plane tests: a sticky service, a LoadBalancer, a hostPort
/// pod, and a standalone backend pod that the test deletes.
const EXTRA: &str = "
apiVersion: apps/v1
kind: Deployment
metadata: {name: sticky}
spec:
  replicas: 3
  selector: {matchLabels: {app: sticky}}
  template:
    metadata: {labels: {app: sticky}}
    spec:
      containers: [{name: s, image: serve_hostname, ports: [{containerPort: 9376}]}]
---
apiVersion: v1
kind: Service
metadata: {name: sticky}
spec:
  selector: {app: sticky}
  sessionAffinity: ClientIP
  ports: [{port: 80, targetPort: 9376}]
---
apiVersion: v1
kind: Service
metadata: {name: public}
spec:
  type: LoadBalancer
  selector: {app: hostnames}
  ports: [{port: 80, targetPort: 9376}]
---
apiVersion: v1
kind: Pod
metadata: {name: hp}
spec:
  nodeName: node-2
  containers: [{name: web, image: nginx, ports: [{containerPort: 80, hostPort: 8088}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: extra-backend, labels: {app: hostnames}}
spec:
  nodeName: node-1
  containers: [{name: web, image: serve_hostname, ports: [{containerPort: 9376}]}]
";

const DELETE_BACKEND: &str = "
apiVersion: v1
kind: Pod
metadata: {name: extra-backend}
spec:
  containers: [{name: web, image: serve_hostname}]
";

fn column(table: &str, row_prefix: &str, col: usize) -> Vec<String> {
    table
        .lines()
        .filter(|l| l.starts_with(row_prefix))
        .filter_map(|l| l.split_whitespace().nth(col).map(str::to_string))
        .collect()
}

fn curl(lab: &Lab, target: &[&str], url: &str) -> String {
    text(&lab.exec(target, &["curl", "-s", "-m", "3", url]))
}

/// `twill lab trace -o json`: each delivered path's (endpoint `IP:PORT`, source address
/// the endpoint sees).
fn traced_deliveries(lab: &Lab, from: &str, to: &str) -> Vec<(String, String)> {
    let out = lab.run(&["trace", "--from", from, "--to", to, "-o", "json"]);
    let paths: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("lab trace {from} -> {to}: {e}: {}", text(&out)));
    paths
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| {
            let b = &p["hops"].as_array()?.last()?["branch"];
            (b["fate"]["fate"] == "delivered").then(|| {
                (
                    b["fate"]["to"].as_str().unwrap().to_string(),
                    b["packet"]["src"].as_str().unwrap().to_string(),
                )
            })
        })
        .collect()
}

fn data_plane(backend: &str) {
    data_plane_with(backend, "iptables");
}

fn data_plane_with(backend: &str, mode: &str) {
    let test = format!("data_plane_{backend}_{mode}");
    if !twill_testkit::require_root(&test) || !twill_testkit::require_tool(&test, "dig") {
        return;
    }
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/examples");
    let extra = manifest(&format!("extra-{backend}.yaml"), EXTRA);
    let lab = Lab::up(&[
        "--nodes",
        "2",
        "--backend",
        backend,
        "--proxy-mode",
        mode,
        "-f",
        shared.to_str().unwrap(),
        "-f",
        &extra,
    ]);

    let pods = text(&lab.run(&["get", "pods", "-A", "-o", "wide"]));
    let nodes = text(&lab.run(&["get", "nodes", "-o", "wide"]));
    let node_ips = column(&nodes, "node-", 5);
    assert_eq!(node_ips.len(), 2, "{nodes}");
    // Pod → pod, same node and across nodes, from the shop client.
    let hostnames: Vec<(String, String)> = pods
        .lines()
        .filter(|l| l.starts_with("default") && l.contains(" hostnames-"))
        .map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            (c[6].to_string(), c[7].to_string())
        })
        .collect();
    assert!(
        hostnames.iter().any(|(_, n)| n == "node-1")
            && hostnames.iter().any(|(_, n)| n == "node-2"),
        "{pods}"
    );
    for (ip, node) in &hostnames {
        let body = curl(
            &lab,
            &["-n", "shop", "client"],
            &format!("http://{ip}:9376/"),
        );
        assert!(
            body.contains(&format!("ip={ip}")),
            "pod → pod on {node} ({ip}): {body:?}"
        );
    }

    // Pod → ClusterIP reaches pods on both nodes.
    let svcs = text(&lab.run(&["get", "svc", "-A"]));
    let cluster_ip = svcs
        .lines()
        .find(|l| l.starts_with("default") && l.contains(" hostnames "))
        .unwrap()
        .split_whitespace()
        .nth(3)
        .unwrap()
        .to_string();
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let body = curl(
            &lab,
            &["-n", "shop", "client"],
            &format!("http://{cluster_ip}/"),
        );
        answered.insert(body.split_whitespace().next().unwrap_or("").to_string());
    }
    let on_node = |n: &str| {
        pods.lines()
            .filter(|l| l.contains(&format!(" {n} ")))
            .any(|l| {
                answered
                    .iter()
                    .any(|a| !a.is_empty() && l.contains(a.as_str()))
            })
    };
    assert!(
        on_node("node-1") && on_node("node-2"),
        "ClusterIP answers from both nodes: {answered:?}"
    );

    // `lab trace` predicts what the kernel did: every pod that answered the ClusterIP is
    // a delivered endpoint of the trace, and the trace reaches every ready backend.
    let predicted = traced_deliveries(&lab, "shop/client", "default/hostnames");
    let backends: std::collections::BTreeSet<String> = pods
        .lines()
        .filter(|l| {
            l.starts_with("default") && (l.contains(" hostnames-") || l.contains(" extra-backend "))
        })
        .map(|l| l.split_whitespace().nth(6).unwrap().to_string())
        .collect();
    let predicted_ips: std::collections::BTreeSet<String> = predicted
        .iter()
        .map(|(to, _)| to.split(':').next().unwrap().to_string())
        .collect();
    assert_eq!(
        predicted_ips, backends,
        "trace endpoints vs the Service's pods"
    );
    for a in &answered {
        let ip = pods
            .lines()
            .find(|l| !a.is_empty() && l.contains(a.as_str()))
            .and_then(|l| l.split_whitespace().nth(6))
            .unwrap_or("?");
        assert!(
            predicted_ips.contains(ip),
            "{a} ({ip}) answered but the trace never reaches it"
        );
    }

    // Outside host → NodePort on each node; the trace's source address at the pod (the
    // masquerade) is the client address the pod saw.
    for ip in &node_ips {
        let body = curl(&lab, &["--host", "client"], &format!("http://{ip}:30080/"));
        assert!(body.starts_with("web-"), "NodePort on {ip}: {body:?}");
        let seen_ip = body
            .split_whitespace()
            .find_map(|w| w.strip_prefix("ip="))
            .unwrap()
            .to_string();
        let seen_client = body
            .split_whitespace()
            .find_map(|w| w.strip_prefix("client="))
            .and_then(|c| c.rsplit_once(':'))
            .map(|(a, _)| a.to_string())
            .unwrap();
        let predicted = traced_deliveries(&lab, "client", &format!("{ip}:30080"));
        assert!(
            predicted
                .iter()
                .any(|(to, src)| to.starts_with(&format!("{seen_ip}:")) && *src == seen_client),
            "NodePort on {ip}: pod {seen_ip} saw {seen_client}; trace predicted {predicted:?}"
        );
    }

    // DNS by name: dig, glibc, search-path short names.
    let dig = text(&lab.exec(
        &["-n", "shop", "client"],
        &[
            "dig",
            "+short",
            "+time=2",
            "+tries=2",
            "hostnames.default.svc.cluster.local",
        ],
    ));
    assert_eq!(dig.trim(), cluster_ip, "dig through the kube-dns Service");
    let web_ip = svcs
        .lines()
        .find(|l| l.starts_with("shop") && l.contains(" web "))
        .unwrap()
        .split_whitespace()
        .nth(3)
        .unwrap()
        .to_string();
    for name in ["web.shop", "web", "web.shop.svc.cluster.local"] {
        let g = text(&lab.exec(&["-n", "shop", "client"], &["getent", "hosts", name]));
        assert!(g.starts_with(&web_ip), "getent hosts {name}: {g:?}");
    }

    // Session affinity keeps one backend.
    let sticky_ip = svcs
        .lines()
        .find(|l| l.contains(" sticky "))
        .unwrap()
        .split_whitespace()
        .nth(3)
        .unwrap()
        .to_string();
    let backends: std::collections::BTreeSet<String> = (0..8)
        .map(|_| {
            curl(
                &lab,
                &["-n", "shop", "client"],
                &format!("http://{sticky_ip}/"),
            )
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string()
        })
        .collect();
    assert_eq!(backends.len(), 1, "ClientIP affinity: {backends:?}");

    // LoadBalancer from the outside host on its pool address.
    let lb_ip = svcs
        .lines()
        .find(|l| l.contains(" public "))
        .unwrap()
        .split_whitespace()
        .nth(4)
        .unwrap()
        .to_string();
    assert!(lb_ip.starts_with("192.168.50.24"), "pool address: {svcs}");
    let body = curl(&lab, &["--host", "client"], &format!("http://{lb_ip}/"));
    assert!(
        body.starts_with("hostnames-") || body.starts_with("extra-backend"),
        "LB {lb_ip}: {body:?}"
    );

    // hostPort on its node's address.
    let body = curl(
        &lab,
        &["--host", "client"],
        &format!("http://{}:8088/", node_ips[1]),
    );
    assert!(body.starts_with("hp "), "hostPort: {body:?}");

    // A deleted pod leaves the EndpointSlices and the rules.
    let extra_ip = column(&pods, "default", 6)
        .into_iter()
        .zip(column(&pods, "default", 1))
        .find(|(_, n)| n == "extra-backend")
        .map(|(ip, _)| ip)
        .unwrap();
    let del = manifest(&format!("delete-{backend}.yaml"), DELETE_BACKEND);
    assert!(lab.run(&["delete", "-f", &del]).status.success());
    let mut gone = false;
    for _ in 0..50 {
        let slices = text(&lab.run(&["get", "endpointslices", "-o", "yaml"]));
        let rules = match mode {
            "nftables" => text(&lab.exec(
                &["--node", "node-1"],
                &["nft", "list", "table", "ip", "kube-proxy"],
            )),
            _ => text(&lab.exec(&["--node", "node-1"], &["iptables-save", "-t", "nat"])),
        };
        if !slices.contains(&extra_ip) && !rules.contains(&format!("{extra_ip}:9376")) {
            gone = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(gone, "{extra_ip} still in slices or rules after delete");
}

#[test]
fn data_plane_vxlan() {
    data_plane("vxlan");
}

#[test]
fn data_plane_host_gw() {
    data_plane("host-gw");
}

#[test]
fn data_plane_udp() {
    data_plane("udp");
}

/// The same walkthrough with kube-proxy's nftables mode on every node.
#[test]
fn data_plane_vxlan_nftables() {
    data_plane_with("vxlan", "nftables");
}

#[test]
fn a_network_policy_applied_to_the_lab_changes_what_curl_reaches() {
    if !twill_testkit::require_root("a_network_policy_applied_to_the_lab_changes_what_curl_reaches")
    {
        return;
    }
    let f = manifest(
        "np-pods.yaml",
        &PODS.replace(
            "nodeSelector: {kubernetes.io/hostname: node-1}",
            "nodeSelector: {kubernetes.io/hostname: node-2}",
        ),
    );
    let lab = Lab::up(&["--nodes", "2", "--no-dns", "-f", &f]);
    let pods = text(&lab.run(&["get", "pods", "-o", "wide"]));
    let ip = column(&pods, "web-", 5).into_iter().next().unwrap();
    let url = format!("http://{ip}/");
    let reach = |lab: &Lab| {
        lab.exec(&["client"], &["curl", "-s", "-m", "2", &url])
            .status
            .success()
    };
    assert!(reach(&lab), "open before any policy");
    let deny = manifest(
        "np-deny.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-web}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Ingress]\n",
    );
    assert!(lab.run(&["apply", "-f", &deny]).status.success());
    let closed = (0..40).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        !reach(&lab)
    });
    assert!(closed, "deny-all ingress closes web");
    let allow = manifest(
        "np-allow.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-client}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from: [{podSelector: {}}]\n    ports: [{port: 80}]\n",
    );
    assert!(lab.run(&["apply", "-f", &allow]).status.success());
    let open = (0..40).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        reach(&lab)
    });
    assert!(
        open,
        "an allow rule for pods in the namespace on port 80 opens it again"
    );
}

/// The classic hello-world walkthrough: a Java Spring Boot Deployment behind NodePort
/// 30001. The lab's runtime rule gives its image the responder on every machine; here a
/// `java` that would crash at once is first on the lab's PATH, and every node's 30001
/// still reaches all three replicas.
#[test]
fn the_hello_world_walkthrough_serves_through_the_responder_even_where_java_exists() {
    let test = "the_hello_world_walkthrough_serves_through_the_responder_even_where_java_exists";
    if !twill_testkit::require_root(test) || !twill_testkit::require_tool(test, "curl") {
        return;
    }
    let bin = std::env::temp_dir().join(format!("twill-e2e-fakejava-{}", std::process::id()));
    std::fs::create_dir_all(&bin).unwrap();
    let java = bin.join("java");
    std::fs::write(
        &java,
        "#!/bin/sh\necho 'Error: Unable to access jarfile' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&java, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // The lab's processes inherit this PATH from `lab up`.
    let lab = Lab::named();
    let hello = manifest(
        "hello.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: hello}\nspec:\n  replicas: 3\n  selector: {matchLabels: {app: hello}}\n  template:\n    metadata: {labels: {app: hello}}\n    spec:\n      containers:\n      - name: hello\n        image: myorg/spring-hello:1.0\n        command: [java, -jar, lib/spring-boot-1.0-SNAPSHOT.jar]\n        ports: [{containerPort: 8080}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: hello}\nspec:\n  type: NodePort\n  selector: {app: hello}\n  ports: [{port: 8080, nodePort: 30001}]\n",
    );
    let out = lab
        .up_command()
        .env("PATH", &path)
        .args(["--no-dns", "-f", &hello])
        .output()
        .unwrap();
    assert!(out.status.success(), "lab up: {}", text(&out));
    assert!(text(&out).contains("3/3 pods ready"), "{}", text(&out));
    let pods = text(&lab.run(&["get", "pods", "-o", "wide"]));
    assert_eq!(column(&pods, "hello-", 2), ["Running"; 3], "{pods}");
    assert_eq!(column(&pods, "hello-", 9), ["responder"; 3], "{pods}");
    let status = text(&lab.run(&["status"]));
    let node_ips: Vec<String> = status
        .lines()
        .filter(|l| l.starts_with("node "))
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
        .collect();
    assert_eq!(node_ips.len(), 2, "{status}");
    for ip in &node_ips {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..30 {
            let body = curl(&lab, &["--host", "client"], &format!("http://{ip}:30001/"));
            if let Some(pod) = body.split_whitespace().next() {
                seen.insert(pod.to_string());
            }
            if seen.len() == 3 {
                break;
            }
        }
        assert_eq!(seen.len(), 3, "node {ip}:30001 reached {seen:?}");
        assert!(seen.iter().all(|p| p.starts_with("hello-")), "{seen:?}");
    }
    // -o json parses and names the same objects as -o yaml; -l selects by label.
    for resource in ["pods", "svc", "endpointslices", "nodes"] {
        let json = lab.run(&["get", resource, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&json.stdout)
            .unwrap_or_else(|e| panic!("get {resource} -o json: {e}: {}", text(&json)));
        let yaml = text(&lab.run(&["get", resource, "-o", "yaml"]));
        let from_yaml: Vec<String> = twill_manifest::parse_str("y", &yaml)
            .objects
            .iter()
            .map(|o| o.object.object_ref().to_string())
            .collect();
        let from_json: Vec<String> = twill_manifest::parse_str("j", &v.to_string())
            .objects
            .iter()
            .map(|o| o.object.object_ref().to_string())
            .collect();
        assert!(!from_json.is_empty(), "{resource}");
        assert_eq!(from_json, from_yaml, "{resource}");
    }
    let selected = lab.run(&["get", "pods", "-l", "app=hello", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&selected.stdout).unwrap();
    assert_eq!(v["items"].as_array().map(Vec::len), Some(3), "{v}");
    let none = text(&lab.run(&["get", "pods", "-l", "app notin (hello)"]));
    assert!(column(&none, "hello-", 0).is_empty(), "{none}");
    let events = text(&lab.run(&["get", "events"]));
    assert!(
        events.contains("Scheduled") && events.contains("pod/hello-"),
        "{events}"
    );
    let described = text(&lab.run(&["describe", "pod", &column(&pods, "hello-", 0)[0]]));
    assert!(
        described
            .contains("Lab runtime:  responder (image myorg/spring-hello:1.0 is not a tool image"),
        "{described}"
    );
    let _ = std::fs::remove_dir_all(&bin);
}

/// kubelet's lifecycle: a failing command under `Always` crash-loops with growing
/// restarts and back-off events; under `Never` it stays `Error`; a command that exits 0
/// under `OnFailure` is `Completed`; a program the host lacks is a `StartError`.
#[test]
fn failing_containers_show_as_kubectl_shows_them() {
    let test = "failing_containers_show_as_kubectl_shows_them";
    if !twill_testkit::require_root(test) {
        return;
    }
    let pods = manifest(
        "lifecycle.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: crash}\nspec:\n  containers: [{name: c, image: busybox, command: [sh, -c, 'echo boom; exit 3']}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: once}\nspec:\n  restartPolicy: Never\n  containers: [{name: c, image: busybox, command: [sh, -c, 'exit 1']}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: done}\nspec:\n  restartPolicy: OnFailure\n  containers: [{name: c, image: alpine, command: ['true']}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: missing, annotations: {lab.twill.dev/runtime: command}}\nspec:\n  containers: [{name: c, image: myorg/app, command: [no-such-program-in-the-lab]}]\n",
    );
    let lab = Lab::named();
    let up = lab
        .up_command()
        .args([
            "--nodes",
            "1",
            "--no-dns",
            "--no-client",
            "--restart-backoff-ms",
            "300",
        ])
        .args(["--wait", "2", "-f", &pods])
        .output()
        .unwrap();
    // Pods that never become Ready: up says which, and exits non-zero; `done` ran to
    // completion and is not among them.
    let said = text(&up);
    assert!(!up.status.success(), "{said}");
    assert!(said.contains("not converged after 2s"), "{said}");
    assert!(said.contains("pod default/crash on node-1: "), "{said}");
    assert!(said.contains("    | boom"), "{said}");
    assert!(!said.contains("pod default/done"), "{said}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let table = loop {
        let t = text(&lab.run(&["get", "pods"]));
        let restarts = |pod: &str| -> u32 {
            column(&t, &format!("{pod} "), 3)
                .first()
                .and_then(|r| r.parse().ok())
                .unwrap_or(0)
        };
        let settled = column(&t, "crash ", 2) == ["CrashLoopBackOff"]
            && restarts("crash") >= 3
            && column(&t, "missing ", 2) == ["CrashLoopBackOff"]
            && column(&t, "once ", 2) == ["Error"]
            && column(&t, "done ", 2) == ["Completed"];
        if settled || std::time::Instant::now() > deadline {
            break t;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(column(&table, "crash ", 2), ["CrashLoopBackOff"], "{table}");
    assert_eq!(column(&table, "once ", 2), ["Error"], "{table}");
    assert_eq!(column(&table, "once ", 3), ["0"], "{table}");
    assert_eq!(column(&table, "done ", 2), ["Completed"], "{table}");
    assert_eq!(
        column(&table, "missing ", 2),
        ["CrashLoopBackOff"],
        "{table}"
    );
    assert_eq!(column(&table, "crash ", 1), ["0/1"], "{table}");
    let crash = text(&lab.run(&["describe", "pod", "crash"]));
    for want in [
        "Exit Code:  3",
        "Reason:     Error",
        "BackOff",
        "Back-off restarting failed container c",
    ] {
        assert!(
            crash.contains(want),
            "describe crash lacks {want:?}:\n{crash}"
        );
    }
    let missing = text(&lab.run(&["describe", "pod", "missing"]));
    assert!(
        missing
            .contains("exec: \"no-such-program-in-the-lab\": executable file not found in $PATH"),
        "{missing}"
    );
    assert!(missing.contains("StartError"), "{missing}");
    // `logs` is the current run, `--previous` the run before the last restart.
    let logs = text(&lab.run(&["logs", "crash"]));
    assert!(
        logs.matches("boom").count() <= 1,
        "only the current run: {logs}"
    );
    let previous = text(&lab.run(&["logs", "crash", "--previous"]));
    assert_eq!(previous, "boom\n");
    let last = text(&lab.run(&["logs", "crash", "-p", "--tail", "1"]));
    assert_eq!(last, "boom\n");
    let none = lab.run(&["logs", "once", "--previous"]);
    assert!(!none.status.success());
    assert!(
        text(&none).contains("previous terminated container"),
        "{}",
        text(&none)
    );
}

/// The lab's processes come back: a killed controller shows in `status`, `apply` is
/// refused while it is down, and `up` on the same name starts it (and a killed node
/// agent) again; the pods keep running with their addresses.
#[test]
fn a_killed_controller_is_reported_and_up_restarts_it_without_losing_pods() {
    let test = "a_killed_controller_is_reported_and_up_restarts_it_without_losing_pods";
    if !twill_testkit::require_root(test) {
        return;
    }
    let pods = manifest(
        "keep.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: keep}\nspec:\n  containers: [{name: c, image: nginx, ports: [{containerPort: 80}]}]\n",
    );
    let lab = Lab::up(&["--nodes", "1", "--no-dns", "--no-client", "-f", &pods]);
    let ip_of = |lab: &Lab| column(&text(&lab.run(&["get", "pods", "-o", "wide"])), "keep ", 5);
    let before = ip_of(&lab);
    assert_eq!(before.len(), 1);
    let dir = format!("{}/{}", lab_root(), lab.name);
    let pid = |file: &str| -> i32 {
        std::fs::read_to_string(format!("{dir}/{file}"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    // SAFETY: kill(2) on the lab's own daemons.
    unsafe {
        libc::kill(pid("controller.pid"), libc::SIGKILL);
        libc::kill(pid("nodes/node-1/proxy.pid"), libc::SIGKILL);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let status = loop {
        let s = text(&lab.run(&["status"]));
        let both = s.contains("controller: NOT running") && s.contains("proxy=DOWN");
        if both || std::time::Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(status.contains("controller: NOT running"), "{status}");
    assert!(status.contains("proxy=DOWN"), "{status}");
    let refused = lab.run(&["apply", "-f", &pods]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("controller is not running"),
        "{}",
        text(&refused)
    );
    let up = lab
        .up_command()
        .args(["--nodes", "1", "--no-dns", "--no-client"])
        .output()
        .unwrap();
    assert!(up.status.success(), "{}", text(&up));
    assert!(
        text(&up).contains("restarted: node-1/proxy, controller"),
        "{}",
        text(&up)
    );
    let status = text(&lab.run(&["status"]));
    assert!(status.contains("controller: running"), "{status}");
    assert!(!status.contains("DOWN"), "{status}");
    assert_eq!(ip_of(&lab), before, "the pod keeps its address");
    let pods_table = text(&lab.run(&["get", "pods"]));
    assert_eq!(column(&pods_table, "keep ", 2), ["Running"], "{pods_table}");
    assert_eq!(column(&pods_table, "keep ", 3), ["0"], "{pods_table}");
}

/// Probes as kubelet runs them: a failing readiness probe takes the pod out of its
/// Service's EndpointSlice and brings it back when it passes; a failing liveness probe
/// restarts the container.
#[test]
fn readiness_and_liveness_probes_drive_endpoints_and_restarts() {
    let test = "readiness_and_liveness_probes_drive_endpoints_and_restarts";
    if !twill_testkit::require_root(test) || !twill_testkit::require_tool(test, "python3") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("twill-e2e-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ready"), "ok").unwrap();
    std::fs::write(dir.join("alive"), "ok").unwrap();
    let d = dir.display();
    let pods = manifest(
        "probes.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: web, labels: {{app: web}}}}\nspec:\n  containers:\n  - name: web\n    image: python:3.12\n    command: [python3, -m, http.server, '8080', --directory, '{d}']\n    ports: [{{name: http, containerPort: 8080}}]\n    readinessProbe: {{httpGet: {{path: /ready, port: http}}, periodSeconds: 1, failureThreshold: 1}}\n    livenessProbe: {{exec: {{command: [test, -f, '{d}/alive']}}, periodSeconds: 1, failureThreshold: 2}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  selector: {{app: web}}\n  ports: [{{port: 80, targetPort: http}}]\n"
        ),
    );
    let lab = Lab::up(&[
        "--nodes",
        "1",
        "--no-dns",
        "--no-client",
        "--restart-backoff-ms",
        "300",
        "-f",
        &pods,
    ]);
    let wait_for = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !f() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting: {what}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    let ready = || column(&text(&lab.run(&["get", "pods"])), "web ", 1) == ["1/1"];
    let slice_ready = |want: &str| {
        let y = text(&lab.run(&["get", "endpointslices", "-o", "yaml"]));
        y.contains(&format!("ready: {want}"))
    };
    wait_for("web Ready", &ready);
    assert!(slice_ready("true"));
    std::fs::remove_file(dir.join("ready")).unwrap();
    wait_for("web not Ready", &|| !ready());
    wait_for("endpoint not ready", &|| slice_ready("false"));
    let described = text(&lab.run(&["describe", "pod", "web"]));
    assert!(
        described.contains("Readiness probe failed: HTTP probe failed with statuscode: 404"),
        "{described}"
    );
    std::fs::write(dir.join("ready"), "ok").unwrap();
    wait_for("web Ready again", &ready);
    // Liveness: the container is killed and started again.
    std::fs::remove_file(dir.join("alive")).unwrap();
    wait_for("a restart", &|| {
        column(&text(&lab.run(&["get", "pods"])), "web ", 3)
            .first()
            .is_some_and(|r| r != "0")
    });
    std::fs::write(dir.join("alive"), "ok").unwrap();
    let described = text(&lab.run(&["describe", "pod", "web"]));
    assert!(
        described.contains("Container web failed liveness probe, will be restarted"),
        "{described}"
    );
    assert!(
        described.contains("Liveness probe failed: command"),
        "{described}"
    );
    wait_for("web Ready after the restart", &ready);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Deleting a pod terminates it as kubelet does: SIGTERM, the pod shown Terminating and
/// its endpoint `terminating` while it winds down, SIGKILL after
/// `terminationGracePeriodSeconds` for a process that ignores SIGTERM.
#[test]
fn deleted_pods_get_sigterm_then_sigkill_after_the_grace_period() {
    let test = "deleted_pods_get_sigterm_then_sigkill_after_the_grace_period";
    if !twill_testkit::require_root(test) {
        return;
    }
    let polite = manifest(
        "polite.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: polite, labels: {app: g}}\nspec:\n  terminationGracePeriodSeconds: 20\n  containers:\n  - name: c\n    image: busybox\n    command: [sh, -c, \"trap 'sleep 1; echo bye; exit 0' TERM; while true; do sleep 0.1; done\"]\n",
    );
    let stubborn = manifest(
        "stubborn.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: stubborn, labels: {app: g}}\nspec:\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: c\n    image: busybox\n    command: [sh, -c, \"trap '' TERM; while true; do sleep 0.1; done\"]\n",
    );
    let service = manifest(
        "g.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: g}\nspec:\n  selector: {app: g}\n  clusterIP: None\n  ports: [{port: 80}]\n",
    );
    let lab = Lab::up(&[
        "--nodes",
        "1",
        "--no-dns",
        "--no-client",
        "-f",
        &polite,
        "-f",
        &stubborn,
        "-f",
        &service,
    ]);
    let status_of = |pod: &str| column(&text(&lab.run(&["get", "pods"])), &format!("{pod} "), 2);
    // The polite one ends about a second after SIGTERM (its trap sleeps 1 s), well
    // before its 20 s grace period, and shows Terminating meanwhile.
    let out = lab.run(&["delete", "-f", &polite]);
    assert!(out.status.success(), "{}", text(&out));
    let t0 = std::time::Instant::now();
    let mut saw_terminating = false;
    while !status_of("polite").is_empty() {
        saw_terminating |= status_of("polite") == ["Terminating"];
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(15),
            "polite never went"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(saw_terminating, "polite was never shown Terminating");
    let took = t0.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(800) && took < std::time::Duration::from_secs(10),
        "SIGTERM, then its own exit: {took:?}"
    );
    // The stubborn one ignores SIGTERM: it stays Terminating, its endpoint marked
    // terminating, until the 2 s grace period ends.
    let out = lab.run(&["delete", "-f", &stubborn]);
    assert!(out.status.success(), "{}", text(&out));
    let t0 = std::time::Instant::now();
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert_eq!(status_of("stubborn"), ["Terminating"]);
    let slices = text(&lab.run(&["get", "endpointslices", "-o", "yaml"]));
    assert!(slices.contains("terminating: true"), "{slices}");
    while !status_of("stubborn").is_empty() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "stubborn never went"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        t0.elapsed() >= std::time::Duration::from_millis(1800),
        "killed before its grace period: {:?}",
        t0.elapsed()
    );
}

const ZONED: &str = "
apiVersion: v1
kind: Pod
metadata: {name: zoned-1, labels: {app: zoned}}
spec:
  nodeName: node-1
  containers: [{name: web, image: serve_hostname, ports: [{containerPort: 9376}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: zoned-2, labels: {app: zoned}}
spec:
  nodeName: node-2
  containers: [{name: web, image: serve_hostname, ports: [{containerPort: 9376}]}]
---
apiVersion: v1
kind: Service
metadata: {name: zoned}
spec:
  selector: {app: zoned}
  trafficDistribution: PreferSameZone
  ports: [{port: 80, targetPort: 9376}]
---
apiVersion: v1
kind: Pod
metadata: {name: in-a}
spec:
  nodeName: node-1
  containers: [{name: c, image: busybox, command: [sleep, infinity]}]
---
apiVersion: v1
kind: Pod
metadata: {name: in-b}
spec:
  nodeName: node-2
  containers: [{name: c, image: busybox, command: [sleep, infinity]}]
";

/// `lab up --zones a,b` labels the nodes; a Service with `trafficDistribution:
/// PreferSameZone` gets hints from the control loop, and each node's proxy keeps its
/// pods' connections in their zone.
#[test]
fn traffic_distribution_keeps_connections_in_the_zone() {
    if !twill_testkit::require_root("traffic_distribution_keeps_connections_in_the_zone") {
        return;
    }
    let zoned = manifest("zoned.yaml", ZONED);
    let lab = Lab::up(&[
        "--nodes",
        "2",
        "--zones",
        "a,b",
        "--no-client",
        "-f",
        &zoned,
    ]);
    let nodes = text(&lab.run(&["get", "nodes", "-o", "json"]));
    assert!(
        nodes.contains("\"topology.kubernetes.io/zone\": \"a\""),
        "{nodes}"
    );
    for (from, want, other) in [
        ("in-a", "zoned-1", "zoned-2"),
        ("in-b", "zoned-2", "zoned-1"),
    ] {
        for _ in 0..12 {
            let body = curl(&lab, &[from], "http://zoned.default.svc.cluster.local/");
            assert!(
                body.contains(want) && !body.contains(other),
                "{from} reached {body:?}, not its zone's {want}"
            );
        }
    }
}

const SAY_WHY: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
spec:
  nodeName: node-2
  containers: [{name: db, image: serve_hostname, ports: [{containerPort: 5432}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec:
  nodeName: node-1
  containers: [{name: c, image: busybox, command: [sleep, infinity]}]
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: shop, labels: {app: api}}
spec:
  nodeName: node-1
  containers: [{name: c, image: busybox, command: [sleep, infinity]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-ingress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: api}}}]
    ports: [{protocol: TCP, port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  selector: {app: db}
  ports: [{name: pg, port: 5432}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-a, namespace: shop, labels: {app: web}}
spec:
  nodeName: node-1
  containers: [{name: web, image: serve_hostname, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-b, namespace: shop, labels: {app: web}}
spec:
  nodeName: node-2
  containers: [{name: web, image: serve_hostname, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: shop}
spec:
  selector: {app: nothing}
  ports: [{name: http, port: 80}]
";

/// `lab trace` answers in Kubernetes terms: the Service and the endpoint pod a packet
/// meets, and why it stops (the policy and its closest rule; a Service without ready
/// endpoints), in the text and in `-o json`.
#[test]
fn trace_names_the_service_the_pod_and_the_policy_that_decided() {
    if !twill_testkit::require_root("trace_names_the_service_the_pod_and_the_policy_that_decided") {
        return;
    }
    let m = manifest("say-why.yaml", SAY_WHY);
    let lab = Lab::up(&["--nodes", "2", "--no-client", "-f", &m]);
    let out = lab.run(&["trace", "--from", "shop/client", "--to", "shop/db"]);
    let text_out = text(&out);
    for want in [
        "Service shop/db: port pg by its cluster IP",
        "Pod shop/db: the endpoint",
        "on node node-2",
        "rejected: pod shop/db is selected by NetworkPolicy shop/db-ingress (policyTypes Ingress); no ingress rule allows pod shop/client on TCP 5432; the closest rule, #1 of shop/db-ingress, allows pods with app=api on TCP 5432",
    ] {
        assert!(text_out.contains(want), "{want:?} missing:\n{text_out}");
    }
    // The allowed client: the policy and the rule that let it in.
    let allowed = text(&lab.run(&["trace", "--from", "shop/api", "--to", "shop/db"]));
    assert!(
        allowed.contains("NetworkPolicy shop/db-ingress: ingress allowed by rule #1 (pods with app=api on TCP 5432) for pod shop/db"),
        "{allowed}"
    );
    let out = lab.run(&[
        "trace",
        "--from",
        "shop/client",
        "--to",
        "shop/empty",
        "-o",
        "json",
    ]);
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let verdicts: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["hops"].as_array().unwrap().iter())
        .filter_map(|h| {
            h["branch"]["kubernetes"]["verdict"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert!(
        verdicts
            .iter()
            .any(|v| v.ends_with(": Service shop/empty has no ready endpoints (0 not ready)")),
        "{verdicts:?}\n{}",
        text(&out)
    );
    // Pictures: the lab and the refused path, in Graphviz (checked by `dot` itself) and
    // Mermaid.
    let dot_ok = |src: &str| {
        let mut child = std::process::Command::new("dot")
            .arg("-Tsvg")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("graphviz's dot (scripts/setup.sh installs it)");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(src.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "dot refused:\n{src}\n{}", text(&out));
        // The SVG's text, as drawn (dot writes '-' as an entity).
        String::from_utf8_lossy(&out.stdout).replace("&#45;", "-")
    };
    let topo = text(&lab.run(&["get", "topology", "-A", "-o", "dot"]));
    let svg = dot_ok(&topo);
    for want in [
        "node-1",
        "node-2",
        "shop/db",
        "shop/client",
        "Service shop/db",
    ] {
        assert!(svg.contains(want), "{want} not drawn:\n{topo}");
    }
    let mermaid = text(&lab.run(&["get", "topology", "-A", "-o", "mermaid"]));
    assert!(
        mermaid.starts_with("flowchart TB") && mermaid.contains("shop/db"),
        "{mermaid}"
    );
    let path = text(&lab.run(&[
        "trace",
        "--from",
        "shop/client",
        "--to",
        "shop/db",
        "-o",
        "dot",
    ]));
    let svg = dot_ok(&path);
    assert!(
        svg.contains("selected by NetworkPolicy shop/db-ingress"),
        "{path}"
    );
    assert!(path.contains("color=red"), "a refused path is red:\n{path}");
    let path = text(&lab.run(&[
        "trace",
        "--from",
        "shop/client",
        "--to",
        "shop/db",
        "-o",
        "mermaid",
    ]));
    assert!(
        path.starts_with("flowchart LR") && path.contains("stroke:#d00"),
        "{path}"
    );
    flow_log_names_the_policy_that_decided(&lab);
    lab_ui_draws_the_lab_and_a_path(&lab);
}

/// Records of `lab flows -o json` with these filters.
fn flows(lab: &Lab, filters: &[&str]) -> Vec<serde_json::Value> {
    let out = lab.run(&[&["flows", "-o", "json"], filters].concat());
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Poll `lab flows` until a record from `src` to `dst` with `verdict` shows up.
fn wait_for_flow(lab: &Lab, verdict: &str, src: &str, dst: &str) -> serde_json::Value {
    let asked = std::time::Instant::now();
    loop {
        if let Some(f) = flows(lab, &["--verdict", verdict, "--pod", src])
            .into_iter()
            .find(|f| f["dst"]["pod"] == dst && f["src"]["pod"] == src)
        {
            eprintln!(
                "{verdict} {src} -> {dst} in the flow log after {:?}",
                asked.elapsed()
            );
            return f;
        }
        assert!(
            asked.elapsed() < std::time::Duration::from_secs(10),
            "no {verdict} flow {src} -> {dst}: {:?}",
            flows(lab, &[])
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The flow log in the lab (NFLOG from the real rules, read by each node's agent): a
/// refused attempt is a drop that names the policy and its closest rule, an admitted one
/// names the rule that admitted it, the node's counter moves, and the text table and the
/// filters show the same.
fn flow_log_names_the_policy_that_decided(lab: &Lab) {
    let pods = text(&lab.run(&["get", "pods", "-n", "shop", "-o", "wide"]));
    let db = column(&pods, "db ", 5).pop().expect("db's IP");
    let url = format!("http://{db}:5432/");
    let out = lab.exec(&["-n", "shop", "client"], &["curl", "-s", "-m", "2", &url]);
    assert!(
        !out.status.success(),
        "the client got through: {}",
        text(&out)
    );
    let drop = wait_for_flow(lab, "dropped", "shop/client", "shop/db");
    assert_eq!(drop["node"], "node-2");
    assert_eq!(drop["direction"], "ingress");
    assert_eq!(drop["protocol"], "TCP");
    assert_eq!(drop["dst"]["port"], 5432);
    assert_eq!(drop["policies"], serde_json::json!(["shop/db-ingress"]));
    assert_eq!(
        drop["reason"],
        "rejected: pod shop/db is selected by NetworkPolicy shop/db-ingress (policyTypes Ingress); no ingress rule allows pod shop/client on TCP 5432; the closest rule, #1 of shop/db-ingress, allows pods with app=api on TCP 5432"
    );
    assert!(curl(lab, &["-n", "shop", "api"], &url).contains("db"));
    let allowed = wait_for_flow(lab, "allowed", "shop/api", "shop/db");
    assert_eq!(allowed["rule"], "shop/db-ingress#1");
    // Filters: the client's flows hold no allowed one; the api's no drop.
    assert!(
        flows(lab, &["--pod", "shop/client"])
            .iter()
            .all(|f| f["verdict"] == "dropped")
    );
    assert!(flows(lab, &["--verdict", "dropped", "--pod", "shop/api"]).is_empty());
    let table = text(&lab.run(&["flows"]));
    assert!(
        table.starts_with("TIME") && table.contains("shop/db-ingress#1"),
        "{table}"
    );
    let metrics = text(&lab.exec(
        &["--node", "node-2"],
        &["curl", "-s", "http://127.0.0.1:10255/metrics"],
    ));
    let dropped = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                "twill_netpol_flows_total{verdict=\"dropped\",direction=\"ingress\",policy=\"shop/db-ingress\"}",
            )
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no drop counter:\n{metrics}"));
    assert!(dropped >= 1, "{metrics}");
}

/// GET `url` (`http://ADDR/PATH`): status and body.
fn http_get(url: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let rest = url.strip_prefix("http://").unwrap();
    let (addr, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

/// Whether `v` has every `key: type` of `schema` (types: `string`, `number`, `bool`,
/// `array`, `object`, `string?` for a string or null).
fn has_shape(v: &serde_json::Value, schema: &[(&str, &str)]) -> Result<(), String> {
    for (key, ty) in schema {
        let f = &v[*key];
        let ok = match *ty {
            "string" => f.is_string(),
            "string?" => f.is_string() || f.is_null(),
            "number" => f.is_number(),
            "number?" => f.is_number() || f.is_null(),
            "bool" => f.is_boolean(),
            "array" => f.is_array(),
            "object" => f.is_object(),
            other => panic!("no type {other}"),
        };
        if !ok {
            return Err(format!("{key} is not {ty} in {v}"));
        }
    }
    Ok(())
}

/// The page's JSON API, every endpoint, each answer's shape checked.
fn lab_ui_json_api(url: &str) {
    let (code, body) = http_get(&format!("{url}api/topology"));
    assert_eq!(code, 200, "{body}");
    let topo: serde_json::Value = serde_json::from_str(&body).unwrap();
    has_shape(
        &topo,
        &[
            ("lab", "string"),
            ("underlay", "string"),
            ("nodes", "array"),
            ("pods", "array"),
            ("services", "array"),
        ],
    )
    .unwrap();
    assert_eq!(topo["nodes"].as_array().unwrap().len(), 2);
    for n in topo["nodes"].as_array().unwrap() {
        has_shape(
            n,
            &[
                ("name", "string"),
                ("ip", "string"),
                ("podCidr", "string"),
                ("backend", "string"),
                ("zone", "string?"),
            ],
        )
        .unwrap();
    }
    for p in topo["pods"].as_array().unwrap() {
        has_shape(
            p,
            &[
                ("namespace", "string"),
                ("name", "string"),
                ("ip", "string?"),
                ("node", "string?"),
                ("ready", "bool"),
            ],
        )
        .unwrap();
    }
    for sv in topo["services"].as_array().unwrap() {
        has_shape(
            sv,
            &[
                ("namespace", "string"),
                ("name", "string"),
                ("type", "string"),
                ("clusterIp", "string?"),
                ("ports", "array"),
                ("endpoints", "array"),
            ],
        )
        .unwrap();
        for p in sv["ports"].as_array().unwrap() {
            has_shape(
                p,
                &[
                    ("port", "number"),
                    ("protocol", "string"),
                    ("nodePort", "number?"),
                ],
            )
            .unwrap();
        }
        for e in sv["endpoints"].as_array().unwrap() {
            has_shape(
                e,
                &[("ip", "string?"), ("pod", "string?"), ("ready", "bool")],
            )
            .unwrap();
        }
    }
    let (code, body) = http_get(&format!("{url}api/trace?from=shop%2Fclient&to=shop%2Fweb"));
    assert_eq!(code, 200, "{body}");
    let paths: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(paths.as_array().map(Vec::len), Some(2), "{body}");
    for p in paths.as_array().unwrap() {
        has_shape(p, &[("probability", "number"), ("hops", "array")]).unwrap();
        for h in p["hops"].as_array().unwrap() {
            has_shape(h, &[("node", "string"), ("branch", "object")]).unwrap();
            has_shape(&h["branch"], &[("kubernetes", "object")]).unwrap();
        }
    }
    let (code, body) = http_get(&format!("{url}api/trace?from=shop%2Fclient"));
    assert_eq!(code, 400, "{body}");
    let (code, body) = http_get(&format!("{url}api/flows?verdict=dropped&limit=10"));
    assert_eq!(code, 200, "{body}");
    let got: serde_json::Value = serde_json::from_str(&body).unwrap();
    has_shape(&got, &[("flows", "array"), ("errors", "array")]).unwrap();
    assert_eq!(got["errors"], serde_json::json!([]), "{body}");
    let flows: Vec<twill_lab::flows::Flow> =
        serde_json::from_value(got["flows"].clone()).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert!(!flows.is_empty() && flows.len() <= 10, "{body}");
    assert!(
        flows
            .iter()
            .all(|f| f.verdict == twill_lab::flows::Verdict::Dropped)
    );
    let (code, body) = http_get(&format!("{url}api/flows?verdict=sideways"));
    assert_eq!(code, 400, "{body}");
    let (code, body) = http_get(&format!("{url}index.html"));
    assert!(code == 200 && body.contains("<h2>Flows</h2>"), "{code}");
}

/// `lab ui` in a real browser: headless Chromium driven through WebDriver
/// (`chromedriver`, Debian's `chromium-driver`, by `fantoccini`). The page loads without
/// script errors, lists every node and pod with its address, draws a path from a link
/// (a Service's path reaching both endpoint pods; a refused path naming the policy),
/// shows the flow log with the drop in its own colour, and follows the lab live: a
/// deleted pod leaves the open page within 2 s of leaving the lab. Screenshots of the
/// states go to `target/test-artifacts/`.
fn lab_ui_draws_the_lab_and_a_path(lab: &Lab) {
    if !twill_testkit::require_tool("lab_ui_draws_the_lab_and_a_path", "chromedriver") {
        return;
    }
    use std::io::BufRead as _;
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = twill()
        .args(["lab", "ui", "--name", &lab.name, "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let _ui = Kill(child);
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_string();
    lab_ui_json_api(&url);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let _driver = Kill(
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let artefacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("../test-artifacts");
    let _ = std::fs::create_dir_all(&artefacts);
    let pods = text(&lab.run(&["get", "pods", "-A", "-o", "wide"]));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use fantoccini::{ClientBuilder, Locator};
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({"args": ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1100,1250"]}),
        );
        let started = std::time::Instant::now();
        let client = loop {
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(c) => break c,
                Err(e) if started.elapsed() < std::time::Duration::from_secs(20) => {
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) => panic!("chromedriver: {e}"),
            }
        };
        // The text of an element, "" while it is not there.
        let text_of = async |css: &str| -> String {
            // Cells come back separated by tabs or newlines: one space each.
            match client.find(Locator::Css(css)).await {
                Ok(e) => e
                    .text()
                    .await
                    .unwrap_or_default()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" "),
                Err(_) => String::new(),
            }
        };
        // Wait (up to `secs`) until the element's text passes `ok`; its text then.
        let wait_text = async |css: &str, secs: u64, ok: &dyn Fn(&str) -> bool| -> String {
            let start = std::time::Instant::now();
            loop {
                let t = text_of(css).await;
                if ok(&t) {
                    return t;
                }
                assert!(
                    start.elapsed() < std::time::Duration::from_secs(secs),
                    "{css} never became what the test waits for:\n{t}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        };
        let shot = async |name: &str| {
            let png = client.screenshot().await.unwrap();
            assert!(png.len() > 10_000, "a blank screenshot {name}");
            std::fs::write(artefacts.join(name), png).unwrap();
        };

        // Every node and pod, with its address, as text.
        client.goto(&url).await.unwrap();
        let listed = wait_text("#pods", 20, &|t| t.contains("shop/db")).await;
        for line in pods.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (ns, name, ip) = (cols[0], cols[1], cols[6]);
            if ip == "<none>" {
                continue;
            }
            assert!(
                listed.contains(&format!("{ns}/{name} {ip}")),
                "pod {ns}/{name} {ip} not listed:\n{listed}"
            );
        }
        let nodes = text_of("#nodes").await;
        for n in ["node-1 192.168.50.11", "node-2 192.168.50.12"] {
            assert!(nodes.contains(n), "{n} not listed:\n{nodes}");
        }
        let errors = client
            .execute("return window.__errors === undefined ? null : window.__errors", vec![])
            .await
            .unwrap();
        assert_eq!(errors, serde_json::json!([]), "the page's script failed");
        shot("lab-ui-topology.png").await;

        // A Service's paths reach both endpoint pods.
        client
            .goto(&format!("{url}?from=shop/client&to=shop/web"))
            .await
            .unwrap();
        let trace = wait_text("#trace", 30, &|t| t.contains("Pod shop/web-b") && t.contains("Pod shop/web-a")).await;
        assert!(trace.contains("Service shop/web"), "{trace}");
        shot("lab-ui-service-trace.png").await;

        // A refused path names the policy, in the refused colour; the flow log shows the
        // client's refused attempt (made by the flow log test) in red.
        client
            .goto(&format!("{url}?from=shop/client&to=shop/db"))
            .await
            .unwrap();
        wait_text("#trace", 30, &|t| t.contains("selected by NetworkPolicy shop/db-ingress")).await;
        assert!(!text_of("#trace .verdict-bad").await.is_empty());
        let dropped = wait_text("#flows tr.flow-dropped", 10, &|t| t.contains("shop/client")).await;
        assert!(dropped.contains("shop/db-ingress"), "{dropped}");
        let colour = client
            .find(Locator::Css("#flows tr.flow-dropped td"))
            .await
            .unwrap()
            .css_value("color")
            .await
            .unwrap();
        assert!(colour.contains("221, 0, 0"), "a drop in {colour}");
        shot("lab-ui-refused-trace.png").await;

        // Live: a pod applied shows up; deleted, it leaves the open page within 2 s of
        // leaving the lab.
        let extra = manifest(
            "ui-extra.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: late, namespace: shop}\nspec:\n  nodeName: node-1\n  containers: [{name: c, image: busybox, command: [sleep, infinity]}]\n",
        );
        let out = lab.run(&["apply", "-f", &extra]);
        assert!(out.status.success(), "{}", text(&out));
        wait_text("#pods", 20, &|t| t.contains("shop/late")).await;
        let out = lab.run(&["delete", "-f", &extra]);
        assert!(out.status.success(), "{}", text(&out));
        let start = std::time::Instant::now();
        while text(&lab.run(&["get", "pods", "-n", "shop"])).contains("late ") {
            assert!(start.elapsed() < std::time::Duration::from_secs(30), "late never went");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let gone = std::time::Instant::now();
        wait_text("#pods", 2, &|t| !t.contains("shop/late")).await;
        eprintln!("the deleted pod left the page {:?} after it left the lab", gone.elapsed());
        client.close().await.unwrap();
    });
}

const TIERS: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: corp, labels: {tier: prod}}
---
apiVersion: v1
kind: Namespace
metadata: {name: guest, labels: {kind: guest}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: corp, labels: {app: web}}
spec:
  nodeName: node-2
  containers: [{name: web, image: serve_hostname, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: corp, labels: {app: api}}
spec:
  nodeName: node-2
  containers: [{name: api, image: serve_hostname, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: corp, labels: {app: client}}
spec:
  nodeName: node-1
  containers: [{name: c, image: busybox, command: [sleep, infinity]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: guest, labels: {app: client}}
spec:
  nodeName: node-1
  containers: [{name: c, image: busybox, command: [sleep, infinity]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api-open, namespace: corp}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress: [{from: [{namespaceSelector: {}}]}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: guest-no-corp}
spec:
  tier: Admin
  priority: 20
  subject: {namespaces: {matchLabels: {tier: prod}}}
  ingress:
  - name: no-guests
    action: Deny
    from: [{namespaces: {matchLabels: {kind: guest}}}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: guest-to-api-passes}
spec:
  tier: Admin
  priority: 10
  subject: {pods: {namespaceSelector: {matchLabels: {tier: prod}}, podSelector: {matchLabels: {app: api}}}}
  ingress:
  - action: Pass
    from: [{namespaces: {matchLabels: {kind: guest}}}]
    protocols: [{tcp: {destinationPort: {number: 8080}}}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: corp-baseline}
spec:
  tier: Baseline
  priority: 100
  subject: {namespaces: {matchLabels: {tier: prod}}}
  ingress:
  - action: Deny
    from: [{namespaces: {}}]
";

/// ClusterNetworkPolicy in real kernels: an Admin Deny beats everything below it, an
/// Admin Pass hands the decision to the NetworkPolicies, a NetworkPolicy overrides the
/// Baseline tier, and the Baseline tier decides for pods no NetworkPolicy selects; the
/// flow log and the trace name the cluster policy that decided.
#[test]
fn cluster_network_policies_decide_in_their_tiers() {
    if !twill_testkit::require_root("cluster_network_policies_decide_in_their_tiers") {
        return;
    }
    let m = manifest("tiers.yaml", TIERS);
    let lab = Lab::up(&["--nodes", "2", "--no-client", "--no-dns", "-f", &m]);
    let pods = text(&lab.run(&["get", "pods", "-n", "corp", "-o", "wide"]));
    let web = column(&pods, "web ", 5).pop().expect("web's IP");
    let api = column(&pods, "api ", 5).pop().expect("api's IP");
    let reaches = |from: &str, ip: &str| {
        let (ns, pod) = from.split_once('/').unwrap();
        lab.exec(
            &["-n", ns, pod],
            &["curl", "-s", "-m", "2", &format!("http://{ip}:8080/")],
        )
        .status
        .success()
    };
    for (from, ip, want, why) in [
        ("guest/client", &web, false, "the Admin tier denies guests"),
        (
            "guest/client",
            &api,
            true,
            "the Admin Pass hands it to api-open, which allows it",
        ),
        (
            "corp/client",
            &web,
            false,
            "the Baseline tier denies what no NetworkPolicy decides",
        ),
        (
            "corp/client",
            &api,
            true,
            "the NetworkPolicy overrides the Baseline tier",
        ),
    ] {
        assert_eq!(reaches(from, ip), want, "{from} -> {ip}: {why}");
    }
    let listed = text(&lab.run(&["get", "cnp"]));
    assert!(
        listed.starts_with("NAME") && listed.contains("guest-no-corp") && listed.contains("Admin"),
        "{listed}"
    );
    let drop = wait_for_flow(&lab, "dropped", "guest/client", "corp/web");
    assert_eq!(
        drop["policies"],
        serde_json::json!(["ClusterNetworkPolicy/guest-no-corp"])
    );
    assert!(
        drop["reason"]
            .as_str()
            .unwrap()
            .contains("ClusterNetworkPolicy guest-no-corp (tier Admin, priority 20) selects pod corp/web; its ingress rule #1 (no-guests) matches pod guest/client"),
        "{drop}"
    );
    let baseline = wait_for_flow(&lab, "dropped", "corp/client", "corp/web");
    assert_eq!(
        baseline["policies"],
        serde_json::json!(["ClusterNetworkPolicy/corp-baseline"])
    );
    let traced = text(&lab.run(&[
        "trace",
        "--from",
        "guest/client",
        "--to",
        &format!("{web}:8080"),
    ]));
    assert!(
        traced.contains("ClusterNetworkPolicy guest-no-corp (tier Admin, priority 20)"),
        "{traced}"
    );
}
