//! What the `twill lab` commands do: up, down, apply, delete, exec.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use twill_manifest::{LoadResult, Problem};

use crate::agents::{self, Daemon};
use crate::spec::{LabSpec, UpOptions, root, write_atomic};
use crate::{LabError, dns, netns, status, topology};

/// What `up` reports.
#[derive(Debug)]
pub struct UpReport {
    pub spec: LabSpec,
    pub problems: Vec<Problem>,
    pub pods: usize,
    pub ready: usize,
    pub elapsed: Duration,
    /// The lab was up already: the processes that were found dead and started again
    /// (`None` for a lab built now).
    pub restarted: Option<Vec<String>>,
}

/// Whether anything of lab `name` exists (files or namespaces).
pub fn exists(name: &str) -> bool {
    root().join(name).join("lab.json").exists() || !netns::list(&format!("tl-{name}-")).is_empty()
}

/// Build a lab, start its control plane and agents, apply manifests, and wait up to
/// `wait` for every pod to be Ready.
pub fn up(
    opts: &UpOptions,
    twill: PathBuf,
    manifests: &[String],
    replace: bool,
    agents_available: &[&str],
    wait: Duration,
) -> Result<UpReport, LabError> {
    let started = Instant::now();
    crate::spec::check_name(&opts.name)?;
    if exists(&opts.name) {
        if !replace {
            return repair(opts, &twill, manifests, agents_available, wait, started);
        }
        down(&opts.name, true)?;
    }
    let spec = LabSpec::plan(opts, twill)?;
    for d in [spec.dir.clone(), spec.pods_dir(), spec.cni_bin()] {
        std::fs::create_dir_all(&d).map_err(|e| LabError::Io(d.display().to_string(), e))?;
    }
    spec.save()?;
    let result = (|| {
        topology::build(&spec)?;
        install_cni(&spec)?;
        write_system(&spec, agents_available)?;
        write_atomic(
            &spec.dir.join("applied.json"),
            b"{\"apiVersion\":\"v1\",\"kind\":\"List\",\"items\":[]}\n",
        )?;
        let problems = apply(&spec, manifests)?.problems;
        if agents_available.contains(&"overlay") {
            write_net_conf(&spec)?;
        }
        for node in &spec.nodes {
            for d in agents::node_agents(&spec, node, agents_available) {
                agents::start(&spec.node_dir(&node.name), Some(&node.netns), &d)?;
            }
        }
        let mut spec = spec.clone();
        if agents_available.contains(&"overlay") {
            adopt_leases(&mut spec, Duration::from_secs(15))?;
            spec.save()?;
        }
        start_controller(&spec)?;
        Ok((spec, problems))
    })();
    let (spec, problems) = match result {
        Ok(p) => p,
        Err(e) => {
            let _ = down(&spec.name, true);
            return Err(e);
        }
    };
    let (pods, ready) = wait_ready(&spec, wait);
    if agents_available.contains(&"overlay") {
        wait_routes(&spec, wait.saturating_sub(started.elapsed()));
    }
    if agents_available.contains(&"proxy") {
        wait_services(&spec, wait.saturating_sub(started.elapsed()));
    }
    Ok(UpReport {
        spec,
        problems,
        pods,
        ready,
        elapsed: started.elapsed(),
        restarted: None,
    })
}

/// `up` on a lab that exists: if it was built with the same options, start again the
/// controller and node agents that died (pods keep running and keep their addresses),
/// then apply `manifests`. Different options, or a lab whose namespaces are gone, need
/// `--replace`.
fn repair(
    opts: &UpOptions,
    twill: &Path,
    manifests: &[String],
    agents_available: &[&str],
    wait: Duration,
    started: Instant,
) -> Result<UpReport, LabError> {
    let name = &opts.name;
    let spec = LabSpec::load(name).map_err(|_| LabError::Exists(name.clone()))?;
    let planned = LabSpec::plan(opts, twill.to_path_buf())?;
    let differ: Vec<String> = [
        (
            "--nodes",
            spec.nodes.len().to_string(),
            planned.nodes.len().to_string(),
        ),
        (
            "--backend",
            spec.backend.as_str().into(),
            planned.backend.as_str().into(),
        ),
        (
            "--proxy-mode",
            spec.proxy_mode.clone(),
            planned.proxy_mode.clone(),
        ),
        (
            "--pod-cidr",
            spec.pod_cidr.to_string(),
            planned.pod_cidr.to_string(),
        ),
        (
            "--service-cidr",
            spec.service_cidr.to_string(),
            planned.service_cidr.to_string(),
        ),
        (
            "--underlay",
            spec.underlay.to_string(),
            planned.underlay.to_string(),
        ),
        (
            "outside host",
            spec.client.is_some().to_string(),
            planned.client.is_some().to_string(),
        ),
        ("cluster DNS", spec.dns.to_string(), planned.dns.to_string()),
    ]
    .into_iter()
    .filter(|(_, have, want)| have != want)
    .map(|(what, have, want)| format!("{what} {have}, asked {want}"))
    .collect();
    if !differ.is_empty() {
        return Err(LabError::Invalid(format!(
            "lab {name:?} exists with other options ({}); `twill lab up --name {name}` with its own options restarts what is missing, --replace rebuilds it",
            differ.join("; ")
        )));
    }
    let present = netns::list(&spec.prefix());
    if let Some(n) = spec.nodes.iter().find(|n| !present.contains(&n.netns)) {
        return Err(LabError::Invalid(format!(
            "lab {name:?} is damaged: namespace {} is gone; rebuild it with `twill lab up --name {name} --replace`",
            n.netns
        )));
    }
    let mut restarted = Vec::new();
    for node in &spec.nodes {
        let dir = spec.node_dir(&node.name);
        for d in agents::node_agents(&spec, node, agents_available) {
            if !agents::alive(&dir.join(format!("{}.pid", d.name))) {
                agents::start(&dir, Some(&node.netns), &d)?;
                restarted.push(format!("{}/{}", node.name, d.name));
            }
        }
    }
    if !agents::alive(&spec.dir.join("controller.pid")) {
        start_controller(&spec)?;
        restarted.push("controller".into());
    }
    let problems = apply(&spec, manifests)?.problems;
    let (pods, ready) = wait_ready(&spec, wait);
    Ok(UpReport {
        spec,
        problems,
        pods,
        ready,
        elapsed: started.elapsed(),
        restarted: Some(restarted),
    })
}

/// flannel's net-conf.json for the lab's pod network and backend.
fn write_net_conf(spec: &LabSpec) -> Result<(), LabError> {
    let conf = json!({
        "Network": spec.pod_cidr.to_string(),
        "SubnetLen": 24,
        "Backend": {"Type": spec.backend.as_str()},
    });
    write_atomic(
        &spec.dir.join("net-conf.json"),
        serde_json::to_string_pretty(&conf)
            .expect("json")
            .as_bytes(),
    )
}

/// Read each node's subnet.env once its overlay agent has a lease: the node's pod subnet
/// and MTU come from there, as a runtime's CNI config would.
fn adopt_leases(spec: &mut LabSpec, wait: Duration) -> Result<(), LabError> {
    let deadline = Instant::now() + wait;
    for i in 0..spec.nodes.len() {
        let path = spec.node_dir(&spec.nodes[i].name).join("subnet.env");
        loop {
            if let Ok(text) = std::fs::read_to_string(&path)
                && let Some((subnet, mtu)) = parse_subnet_env(&text)
            {
                spec.nodes[i].pod_cidr = subnet;
                spec.nodes[i].mtu = mtu;
                break;
            }
            if Instant::now() >= deadline {
                let log =
                    std::fs::read_to_string(spec.node_dir(&spec.nodes[i].name).join("overlay.log"))
                        .unwrap_or_default();
                return Err(LabError::Command(
                    format!("overlay agent on {}", spec.nodes[i].name),
                    format!("no lease after {wait:?}; its log says: {}", log.trim()),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// `FLANNEL_SUBNET=10.244.3.1/24` → 10.244.3.0/24, and FLANNEL_MTU.
pub fn parse_subnet_env(text: &str) -> Option<(ipnet::Ipv4Net, Option<u32>)> {
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")).map(str::trim))
    };
    let subnet: ipnet::Ipv4Net = get("FLANNEL_SUBNET")?.parse().ok()?;
    Some((
        subnet.trunc(),
        get("FLANNEL_MTU").and_then(|m| m.parse().ok()),
    ))
}

/// Wait until every node routes to every other node's pod subnet.
fn wait_routes(spec: &LabSpec, wait: Duration) {
    let deadline = Instant::now() + wait;
    loop {
        let done = spec.nodes.iter().all(|n| {
            let routes = netns::run(&n.netns, "ip", &["route"]).unwrap_or_default();
            match spec.backend {
                // One route for the whole network into the TUN device; peers live in
                // the relay's table, refreshed every resync (1 s in the lab).
                crate::spec::Backend::Udp => routes.contains("dev flannel0"),
                _ => spec
                    .nodes
                    .iter()
                    .filter(|p| p.name != n.name)
                    .all(|p| routes.contains(&p.pod_cidr.to_string())),
            }
        });
        if done && spec.backend == crate::spec::Backend::Udp {
            std::thread::sleep(Duration::from_millis(1200));
        }
        if done || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait until every node's proxy has programmed every ready endpoint of the current
/// state, so the first request after `up` already goes through the Service.
pub fn wait_services(spec: &LabSpec, wait: Duration) {
    let deadline = Instant::now() + wait;
    loop {
        let Ok(cluster) = std::fs::read_to_string(spec.cluster_file()) else {
            return;
        };
        let state = twill_model::ClusterState::from_objects(
            twill_manifest::parse_str("cluster.yaml", &cluster).into_objects(),
        );
        // The userspace mode's rules send each portal to its own listener (which picks a
        // backend per connection): wait for the portals instead of the endpoints.
        let wanted = match spec.proxy_mode.as_str() {
            "userspace" => service_portals(&state),
            _ => ready_endpoints(&state),
        };
        let done = spec.nodes.iter().all(|n| {
            let rules = programmed_rules(spec, &n.netns);
            wanted.iter().all(|ep| rules.contains(ep.as_str()))
        });
        if done || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `IP:PORT` of every ready endpoint port of every Service-owned EndpointSlice: what a
/// proxy DNATs to (`--to-destination IP:PORT` in iptables, `dnat to IP:PORT` in nft).
pub fn ready_endpoints(state: &twill_model::ClusterState) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for slice in state.endpoint_slices.values() {
        // Headless Services (no cluster IP) get no proxy rules.
        let proxied = slice
            .service_key()
            .and_then(|k| state.services.get(&k))
            .is_some_and(|s| !s.cluster_ips.is_empty());
        if !proxied {
            continue;
        }
        for ep in slice.endpoints.iter().filter(|e| e.conditions.is_ready()) {
            for port in slice.ports.iter().filter_map(|p| p.port) {
                for ip in &ep.addresses {
                    out.insert(std::net::SocketAddr::new(*ip, port).to_string());
                }
            }
        }
    }
    out
}

/// `-d IP/32` of every cluster IP whose Service has a ready endpoint: the userspace
/// mode's portal rules.
pub fn service_portals(state: &twill_model::ClusterState) -> std::collections::BTreeSet<String> {
    let with_endpoints: std::collections::BTreeSet<twill_model::ObjectKey> = state
        .endpoint_slices
        .values()
        .filter(|s| s.endpoints.iter().any(|e| e.conditions.is_ready()))
        .filter_map(|s| s.service_key())
        .collect();
    state
        .services
        .values()
        .filter(|s| with_endpoints.contains(&s.key))
        .flat_map(|s| s.cluster_ips.iter().map(|ip| format!("-d {ip}/32")))
        .collect()
}

/// The proxy's NAT rules on one node, as text to search for endpoints.
fn programmed_rules(spec: &LabSpec, netns: &str) -> String {
    match spec.proxy_mode.as_str() {
        "nftables" => netns::run(netns, "nft", &["list", "table", "ip", "kube-proxy"]),
        _ => netns::run(netns, "iptables-save", &["-t", "nat"]),
    }
    .unwrap_or_default()
}

fn install_cni(spec: &LabSpec) -> Result<(), LabError> {
    let out = std::process::Command::new(&spec.twill)
        .args(["cni", "install", "--bin-dir"])
        .arg(spec.cni_bin())
        .output()
        .map_err(|e| LabError::Io(format!("{} cni install", spec.twill.display()), e))?;
    if !out.status.success() {
        return Err(LabError::Command(
            "twill cni install".into(),
            String::from_utf8_lossy(&out.stderr).trim().into(),
        ));
    }
    Ok(())
}

/// The objects the lab itself runs: cluster DNS behind `kube-system/kube-dns`.
fn write_system(spec: &LabSpec, agents_available: &[&str]) -> Result<(), LabError> {
    // The namespaces an API server always has.
    let mut items: Vec<Value> = ["default", "kube-system", "kube-public"]
        .iter()
        .map(|n| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}))
        .collect();
    // The ServiceCIDR an API server makes from --service-cluster-ip-range: nftables
    // mode drops traffic to addresses in it that no Service holds (cluster-ips-check).
    items.push(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
        "metadata": {"name": "kubernetes"},
        "spec": {"cidrs": [spec.service_cidr.to_string()]},
    }));
    if spec.dns && agents_available.contains(&"dns") {
        items.push(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
            "spec": {
                "clusterIP": dns::cluster_dns(spec).to_string(),
                "selector": {"k8s-app": "kube-dns"},
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                ]
            }
        }));
        items.push(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "coredns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"k8s-app": "kube-dns"}},
                "template": {
                    // The DNS server is Twill itself: run its command (the runtime
                    // rule would give an unknown image the responder).
                    "metadata": {
                        "labels": {"k8s-app": "kube-dns"},
                        "annotations": {crate::lifecycle::RUNTIME_ANNOTATION: "command"},
                    },
                    "spec": {
                        "dnsPolicy": "Default",
                        "containers": [{
                            "name": "dns",
                            "image": "twill",
                            "command": [spec.twill.display().to_string(), "dns",
                                "--zone", dns::CLUSTER_DOMAIN,
                                "-f", spec.cluster_file().display().to_string(),
                                "--listen", "0.0.0.0:53",
                                // The lab has no way out to the nodes' own resolver (the
                                // host's), so names outside the cluster fail at once
                                // (SERVFAIL) instead of after a forwarding timeout: glibc
                                // asks the bare name last and would stall every lookup
                                // that walks the search path.
                                "--upstream-resolv-conf", "/dev/null"],
                            "ports": [
                                {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                            ]
                        }]
                    }
                }
            }
        }));
    }
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    write_atomic(
        &spec.dir.join("system.yaml"),
        serde_json::to_string_pretty(&list)
            .expect("json")
            .as_bytes(),
    )
}

fn start_controller(spec: &LabSpec) -> Result<(), LabError> {
    let d = Daemon {
        name: "controller".into(),
        argv: vec![
            spec.twill.display().to_string(),
            "lab".into(),
            "controller".into(),
            "--name".into(),
            spec.name.clone(),
        ],
    };
    agents::start(&spec.dir, None, &d).map(|_| ())
}

/// Wait until every pod the controller knows is Ready (or Succeeded); returns (pods,
/// ready), not counting Succeeded pods.
pub fn wait_ready(spec: &LabSpec, wait: Duration) -> (usize, usize) {
    let deadline = Instant::now() + wait;
    let mut last = (0, 0);
    loop {
        if let Ok(cluster) = std::fs::read_to_string(spec.cluster_file()) {
            let state = twill_model::ClusterState::from_objects(
                twill_manifest::parse_str("cluster.yaml", &cluster).into_objects(),
            );
            // A pod that ran to completion has converged without being Ready.
            let live = state
                .pods
                .values()
                .filter(|p| p.phase != twill_model::PodPhase::Succeeded);
            let (total, ready) = live.fold((0, 0), |(t, r), p| (t + 1, r + usize::from(p.ready)));
            last = (total, ready);
            if total > 0 && ready == total {
                return last;
            }
        }
        if Instant::now() >= deadline {
            return last;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn applied(spec: &LabSpec) -> Result<Vec<Value>, LabError> {
    let path = spec.dir.join("applied.json");
    let text =
        std::fs::read_to_string(&path).map_err(|e| LabError::Io(path.display().to_string(), e))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| LabError::Invalid(format!("{}: {e}", path.display())))?;
    Ok(v["items"].as_array().cloned().unwrap_or_default())
}

fn save_applied(spec: &LabSpec, items: Vec<Value>) -> Result<(), LabError> {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    write_atomic(
        &spec.dir.join("applied.json"),
        serde_json::to_string_pretty(&list)
            .expect("json")
            .as_bytes(),
    )
}

fn identity(v: &Value) -> String {
    let kind = v["kind"].as_str().unwrap_or("");
    let ns = v
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let name = v
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let ns = if matches!(kind, "Namespace" | "Node") {
        ""
    } else {
        ns
    };
    format!("{kind}/{ns}/{name}")
}

/// Add or replace the valid objects of `files`; invalid ones are reported and skipped.
pub fn apply(spec: &LabSpec, files: &[String]) -> Result<LoadResult, LabError> {
    if files.is_empty() {
        return Ok(LoadResult::default());
    }
    let loaded = twill_manifest::files::load_paths_keep_raw(files);
    let mut items = applied(spec)?;
    for raw in loaded.objects.iter().filter_map(|l| l.raw.as_ref()) {
        let id = identity(raw);
        items.retain(|v| identity(v) != id);
        items.push(raw.clone());
    }
    save_applied(spec, items)?;
    Ok(loaded)
}

/// Remove the objects named in `files`; returns the load result and how many were removed.
pub fn delete(spec: &LabSpec, files: &[String]) -> Result<(LoadResult, usize), LabError> {
    let loaded = twill_manifest::files::load_paths_keep_raw(files);
    let ids: Vec<String> = loaded
        .objects
        .iter()
        .filter_map(|l| l.raw.as_ref().map(identity))
        .collect();
    let mut items = applied(spec)?;
    let before = items.len();
    items.retain(|v| !ids.contains(&identity(v)));
    let removed = before - items.len();
    save_applied(spec, items)?;
    Ok((loaded, removed))
}

/// Tear a lab down: controller, agents, pods, namespaces, files. With `force`, also
/// whatever is left of a lab whose files are gone (found by the `tl-NAME-` prefix).
pub fn down(name: &str, force: bool) -> Result<usize, LabError> {
    crate::spec::check_name(name)?;
    let dir = root().join(name);
    let spec = LabSpec::load(name);
    if spec.is_err() && !force && netns::list(&format!("tl-{name}-")).is_empty() {
        return Err(LabError::NoSuchLab(name.to_string()));
    }
    agents::stop_all(&dir);
    if let Ok(spec) = &spec {
        for n in &spec.nodes {
            agents::stop_all(&spec.node_dir(&n.name));
        }
        if let Ok(st) = status::load(spec) {
            for p in st.pods {
                for pid in p.pids {
                    // SAFETY: kill(2) has no memory-safety preconditions.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
    let removed = topology::destroy_namespaces(&format!("tl-{name}-"))?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| LabError::Io(dir.display().to_string(), e))?;
    }
    Ok(removed)
}

/// The namespace of a target and, for a pod, the pid whose namespaces to join.
pub enum ExecTarget {
    Pod { namespace: String, name: String },
    Node(String),
    Host(String),
}

/// Run `argv` in the target's namespaces; returns the exit code.
pub fn exec(spec: &LabSpec, target: &ExecTarget, argv: &[String]) -> Result<i32, LabError> {
    if argv.is_empty() {
        return Err(LabError::Invalid(
            "nothing to run: give a command after --".into(),
        ));
    }
    let mut cmd = match target {
        ExecTarget::Node(n) => {
            let node = spec.node(n).ok_or_else(|| {
                LabError::NotFound(format!("node {n:?} not found in lab {}", spec.name))
            })?;
            netns::in_netns(&node.netns, &argv[0])
        }
        ExecTarget::Host(h) => {
            let host = spec
                .client
                .as_ref()
                .filter(|c| c.name == *h)
                .ok_or_else(|| {
                    LabError::NotFound(format!("host {h:?} not found in lab {}", spec.name))
                })?;
            netns::in_netns(&host.netns, &argv[0])
        }
        ExecTarget::Pod { namespace, name } => {
            let st = status::load(spec)?;
            let pod = st
                .pods
                .iter()
                .find(|p| p.namespace == *namespace && p.name == *name)
                .ok_or_else(|| LabError::NotFound(format!("pod {namespace}/{name} not found (is it running? twill lab get pods -n {namespace})")))?;
            let pid = pod.pids.first().ok_or_else(|| {
                LabError::NotFound(format!("pod {namespace}/{name} has no process"))
            })?;
            let mut c = std::process::Command::new("nsenter");
            c.args(["-t", &pid.to_string(), "-n", "-u", "-m", "--"])
                .arg(&argv[0]);
            c
        }
    };
    cmd.args(&argv[1..]);
    let status = cmd.status().map_err(|e| LabError::Io(argv[0].clone(), e))?;
    Ok(status.code().unwrap_or(1))
}

/// A pod's log file.
pub fn log_path(spec: &LabSpec, namespace: &str, name: &str) -> PathBuf {
    crate::pod::pod_dir(spec, namespace, name).join("log")
}

/// Whether `path` looks like a lab state directory (used by `down --force` sweeps).
pub fn is_lab_dir(path: &Path) -> bool {
    path.join("lab.json").exists()
}
