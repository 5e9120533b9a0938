//! `twill lab`: a multi-node cluster out of network namespaces.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use ipnet::Ipv4Net;
use twill_lab::kubectl::{self, Scope};
use twill_lab::ops::{self, ExecTarget};
use twill_lab::{Backend, LabSpec, UpOptions, status};
use twill_model::ClusterState;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

/// `lab get -o`: kubectl's wide table or the objects as YAML.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum GetOutput {
    Wide,
    Yaml,
    Json,
    /// `get topology`: a Graphviz picture of the lab.
    Dot,
    /// `get topology`: a Mermaid picture of the lab.
    Mermaid,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum FlowVerdict {
    Dropped,
    Allowed,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum FlowOutput {
    Wide,
    Json,
}

#[derive(clap::Args, Clone)]
struct LabName {
    /// The lab's name (namespaces are prefixed `tl-NAME-`).
    #[arg(long, default_value = "twill", env = "TWILL_LAB")]
    name: String,
}

/// What `lab describe` shows.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum DescribeKind {
    #[value(alias = "po", alias = "pods")]
    Pod,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Build a lab: underlay switch, nodes, an outside host, agents, then apply manifests.
    Up {
        #[command(flatten)]
        lab: LabName,
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// Cross-node backend: vxlan, host-gw or udp.
        #[arg(long, default_value = "vxlan", value_parser = parse_backend)]
        backend: Backend,
        #[arg(long, default_value = "iptables")]
        proxy_mode: String,
        #[arg(long, default_value = "10.244.0.0/16")]
        pod_cidr: Ipv4Net,
        #[arg(long, default_value = "10.96.0.0/12")]
        service_cidr: Ipv4Net,
        /// The underlay network of the nodes (a /25 or wider).
        #[arg(long, default_value = "192.168.50.0/24")]
        underlay: Ipv4Net,
        /// Do not create the outside host `client`.
        #[arg(long)]
        no_client: bool,
        /// Do not run cluster DNS.
        #[arg(long)]
        no_dns: bool,
        /// Replace a lab of the same name.
        #[arg(long)]
        replace: bool,
        /// The crash-loop back-off base in milliseconds: a crashed container restarts at
        /// once, then after this, doubling to 30 times it (kubelet: 10 s to 5 min).
        #[arg(long, default_value_t = 10_000)]
        restart_backoff_ms: u64,
        /// Zones for the nodes, given in turn (`--zones a,b`: node-1 in a, node-2 in b,
        /// node-3 in a, ...), as `topology.kubernetes.io/zone` labels: Services with
        /// `trafficDistribution` keep traffic in the zone or on the node.
        #[arg(long, value_delimiter = ',')]
        zones: Vec<String>,
        /// What the nodes' NetworkPolicy flow logs record (`lab flows`): every decision,
        /// refused attempts only, or nothing.
        #[arg(long, value_enum, default_value = "all")]
        flow_log: crate::cmd::netpol::FlowLogMode,
        /// How long to wait for pods to become Ready, in seconds.
        #[arg(long, default_value_t = 30)]
        wait: u64,
        #[arg(short = 'f', long = "filename")]
        files: Vec<String>,
    },
    /// Tear a lab down: every namespace, process and file.
    Down {
        #[command(flatten)]
        lab: LabName,
        /// Also clean up after a crash (finds leftovers by the `tl-NAME-` prefix).
        #[arg(long)]
        force: bool,
    },
    /// Create or update objects from manifests.
    Apply {
        #[command(flatten)]
        lab: LabName,
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
    },
    /// Delete the objects named in manifests.
    Delete {
        #[command(flatten)]
        lab: LabName,
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
    },
    /// List objects with kubectl's columns.
    Get {
        #[command(flatten)]
        lab: LabName,
        /// nodes, pods, svc, endpointslices, networkpolicies or clusternetworkpolicies
        /// (kubectl's short names work, and `svc/NAME`), events, or `topology` (a
        /// picture: -o dot|mermaid).
        resource: String,
        /// Only this object.
        #[arg(value_name = "NAME")]
        object: Option<String>,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// wide, yaml or json; for `topology`: dot or mermaid.
        #[arg(short = 'o', long, value_enum)]
        output: Option<GetOutput>,
        /// Label selector, kubectl's syntax (`app=web,tier!=db,env in (a,b),!legacy`).
        #[arg(short = 'l', long)]
        selector: Option<String>,
    },
    /// Serve a live page of the lab: its nodes, pods and Services drawn (and listed as
    /// text), and a packet's path through them from a trace. Until Ctrl-C.
    Ui {
        #[command(flatten)]
        lab: LabName,
        /// Where the page listens (loopback by default: the page can run traces).
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: std::net::SocketAddr,
    },
    /// Run a command in a pod's namespaces, on a node, or on the outside host.
    Exec {
        #[command(flatten)]
        lab: LabName,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Run in this node's network namespace.
        #[arg(long, conflicts_with = "host")]
        node: Option<String>,
        /// Run on this outside host (`client`).
        #[arg(long)]
        host: Option<String>,
        /// The pod (unless --node or --host).
        pod: Option<String>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Show one object in detail, as kubectl describe does (pods: each container's
    /// lab runtime and why, state, last state, restarts, and the events).
    Describe {
        #[command(flatten)]
        lab: LabName,
        /// The kind: pod (`po`).
        kind: DescribeKind,
        /// The object's name.
        #[arg(value_name = "NAME")]
        object: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// A pod's output (every run of its containers, oldest first).
    Logs {
        #[command(flatten)]
        lab: LabName,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        pod: String,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
        /// The output of the run before the last restart.
        #[arg(short = 'p', long)]
        previous: bool,
        /// Keep printing what is written, across restarts (until interrupted).
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// The lab's topology, agents and problems.
    Status {
        #[command(flatten)]
        lab: LabName,
    },
    /// Run `twill doctor` on every node of the lab.
    Doctor {
        #[command(flatten)]
        lab: LabName,
        /// `json` for tools.
        #[arg(short = 'o', long, value_enum)]
        output: Option<crate::cmd::Output>,
    },
    /// Explain a packet's path through the lab's live rules and routes (`twill trace`
    /// started where the packet starts and followed across every node and pod).
    Trace {
        #[command(flatten)]
        lab: LabName,
        /// Source: a pod `[NAMESPACE/]NAME`, an outside host (`client`), or an IP.
        #[arg(long)]
        from: String,
        /// Destination: a Service `[NAMESPACE/]NAME[:PORT]`, or `IP:PORT`.
        #[arg(long)]
        to: String,
        /// `tcp`, `udp` or `sctp`.
        #[arg(long, default_value = "tcp")]
        proto: String,
        /// Start on this node instead of where the source lives (for an IP source:
        /// the packet arrives there from outside).
        #[arg(long)]
        node: Option<String>,
        /// Also trace the reply back to the client.
        #[arg(long)]
        reply: bool,
        /// `json` for tools.
        #[arg(short = 'o', long, value_enum)]
        output: Option<crate::cmd::trace::TraceOutput>,
    },
    /// The NetworkPolicy flow log of every node: connection attempts the policies
    /// dropped or admitted, with pods, ports and the deciding policy and rule.
    Flows {
        #[command(flatten)]
        lab: LabName,
        /// Keep printing new records as they come (Ctrl-C to stop).
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only `dropped` or only `allowed` attempts.
        #[arg(long, value_enum)]
        verdict: Option<FlowVerdict>,
        /// Only flows from or to this pod (`NAMESPACE/NAME`, or `NAME` in `default`).
        #[arg(long)]
        pod: Option<String>,
        /// `wide` adds the decision in words; `json` prints the records as JSON lines.
        #[arg(short = 'o', long, value_enum)]
        output: Option<FlowOutput>,
    },
    /// (internal) the lab's control plane loop.
    #[command(hide = true)]
    Controller {
        #[command(flatten)]
        lab: LabName,
    },
    /// (internal) the built-in responder that stands in for images that cannot run here.
    #[command(hide = true)]
    Responder {
        #[arg(long)]
        pod: String,
        #[arg(long)]
        namespace: String,
        #[arg(long, default_value = "")]
        ports: String,
    },
}

fn parse_backend(s: &str) -> Result<Backend, String> {
    Backend::parse(s).ok_or_else(|| format!("{s:?}: expected vxlan, host-gw or udp"))
}

/// The agents this build can run on a lab node.
fn agents_available() -> Vec<&'static str> {
    let mut v = Vec::new();
    if cfg!(feature = "overlay") {
        v.push("overlay");
    }
    if cfg!(feature = "netpol") {
        v.push("netpol");
    }
    if cfg!(feature = "proxy") {
        v.push("proxy");
    }
    if cfg!(feature = "dns") {
        v.push("dns");
    }
    v
}

/// One answer of `lab ui`: the page, the lab as JSON, or a trace (the same `lab trace -o
/// json` the CLI prints, run as this binary).
fn ui_answer(
    lab: &str,
    twill: &std::path::Path,
    path: &str,
    query: &str,
) -> twill_agent::http::Reply {
    use twill_agent::http::Reply;
    let json = |status: u16, v: &serde_json::Value| Reply {
        status,
        content_type: "application/json",
        body: serde_json::to_vec(v).unwrap_or_default(),
    };
    match path {
        "/" | "/index.html" => Reply {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: twill_lab::ui::INDEX_HTML.as_bytes().to_vec(),
        },
        "/api/topology" => match LabSpec::load(lab)
            .map_err(anyhow::Error::from)
            .and_then(|spec| load_state(&spec).map(|st| twill_lab::ui::topology(&spec, &st)))
        {
            Ok(v) => json(200, &v),
            Err(e) => json(503, &serde_json::json!({"error": format!("{e:#}")})),
        },
        "/api/flows" => {
            let q = match twill_lab::flows::FlowQuery::parse(query) {
                Ok(q) => q,
                Err(e) => return json(400, &serde_json::json!({ "error": e })),
            };
            match LabSpec::load(lab) {
                Ok(spec) => {
                    let (mut flows, errors) =
                        twill_lab::flows::lab_flows(&spec, &q, &Default::default());
                    if let Some(limit) = q.limit {
                        flows.drain(..flows.len().saturating_sub(limit));
                    }
                    json(
                        200,
                        &serde_json::json!({ "flows": flows, "errors": errors }),
                    )
                }
                Err(e) => json(503, &serde_json::json!({ "error": e.to_string() })),
            }
        }
        "/api/trace" => {
            let Some((from, to)) = twill_lab::ui::trace_query(query) else {
                return json(
                    400,
                    &serde_json::json!({"error": "from and to: pod, Service or IP:PORT"}),
                );
            };
            let out = std::process::Command::new(twill)
                .args([
                    "lab", "trace", "--name", lab, "--from", &from, "--to", &to, "-o", "json",
                ])
                .output();
            match out {
                Ok(o) if !o.stdout.is_empty() => Reply {
                    status: 200,
                    content_type: "application/json",
                    body: o.stdout,
                },
                Ok(o) => json(
                    400,
                    &serde_json::json!({"error": String::from_utf8_lossy(&o.stderr).trim()}),
                ),
                Err(e) => json(500, &serde_json::json!({"error": e.to_string()})),
            }
        }
        _ => Reply {
            status: 404,
            content_type: "text/plain",
            body: b"not found\n".to_vec(),
        },
    }
}

fn load_state(spec: &LabSpec) -> anyhow::Result<ClusterState> {
    let text = std::fs::read_to_string(spec.cluster_file()).with_context(|| {
        format!(
            "lab {} has no cluster state yet (is its controller running?)",
            spec.name
        )
    })?;
    let mut state =
        ClusterState::from_objects(twill_manifest::parse_str("cluster.yaml", &text).into_objects());
    // Policies are not part of the rendered state; show what was applied.
    let applied =
        twill_manifest::files::load_paths(&[spec.dir.join("applied.json").display().to_string()]);
    for o in applied.into_objects() {
        if let twill_model::Object::NetworkPolicy(p) = o {
            state.network_policies.insert(p.key.clone(), p);
        }
    }
    Ok(state)
}

/// `logs -f`: print what is appended to `path` from `offset` on; a restart starts a new
/// file (the old one becomes `log.previous`), which is followed from its start. Ends
/// when the pod is gone or on interrupt.
fn follow_log(path: &std::path::Path, mut offset: u64) -> anyhow::Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let inode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
    };
    let mut ino = inode(path);
    let mut out = std::io::stdout().lock();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = inode(path);
        if now.is_none() && !path.parent().is_some_and(std::path::Path::exists) {
            return Ok(());
        }
        if now != ino {
            ino = now;
            offset = 0;
        }
        let Ok(mut f) = std::fs::File::open(path) else {
            continue;
        };
        f.seek(SeekFrom::Start(offset))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        if !buf.is_empty() {
            offset += buf.len() as u64;
            out.write_all(&buf)?;
            out.flush()?;
        }
    }
}

/// After `up` timed out: each pod that is not Ready (nor Completed), where it is, what
/// kubectl would show for it, and the last lines of its log.
fn report_unready(spec: &LabSpec, wait: u64) {
    let (Ok(state), Ok(st)) = (load_state(spec), status::load(spec)) else {
        return;
    };
    eprintln!("not converged after {wait}s (--wait): these pods are not Ready:");
    for p in state.pods.values() {
        if p.ready || p.phase == twill_model::PodPhase::Succeeded {
            continue;
        }
        let r = st
            .pods
            .iter()
            .find(|r| r.namespace == p.key.namespace && r.name == p.key.name);
        let status = match r {
            None if p.spec.node_name.is_none() => "Pending (not scheduled)".into(),
            _ => kubectl::pod_status(p, r),
        };
        let node = p.spec.node_name.as_deref().unwrap_or("<none>");
        eprintln!("  pod {} on {node}: {status}", p.key);
        let log = std::fs::read_to_string(ops::log_path(spec, &p.key.namespace, &p.key.name))
            .unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        for l in &lines[lines.len().saturating_sub(3)..] {
            eprintln!("    | {l}");
        }
    }
    eprintln!(
        "(twill lab describe pod NAME --name {} shows why; the lab stays up)",
        spec.name
    );
}

/// Like kubectl against an API server that is down: a change nobody would act on is
/// refused, not reported as `configured`.
fn require_controller(spec: &LabSpec) -> anyhow::Result<()> {
    if twill_lab::agents::alive(&spec.dir.join("controller.pid")) {
        return Ok(());
    }
    anyhow::bail!(
        "lab {:?}'s controller is not running, so nothing would act on this change; `twill lab up --name {}` starts it again (pods keep running)",
        spec.name,
        spec.name
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn lab_age(spec: &LabSpec) -> String {
    let secs = std::fs::metadata(spec.dir.join("lab.json"))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .map_or(0, |d| d.as_secs());
    kubectl::age(secs)
}

fn print_problems(problems: &[twill_manifest::Problem]) {
    for p in problems {
        eprintln!("{p}");
    }
}

/// Whether the command only reads and prints (no daemons, no tool fed on stdin).
pub fn prints_only(a: &Args) -> bool {
    matches!(
        a.command,
        Command::Get { .. }
            | Command::Logs { .. }
            | Command::Describe { .. }
            | Command::Status { .. }
            | Command::Doctor { .. }
            | Command::Trace { .. }
            | Command::Flows { .. }
    )
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let twill = std::env::current_exe().context("locating the twill binary")?;
    match a.command {
        Command::Up {
            lab,
            nodes,
            backend,
            proxy_mode,
            pod_cidr,
            service_cidr,
            underlay,
            no_client,
            no_dns,
            replace,
            restart_backoff_ms,
            zones,
            flow_log,
            wait,
            files,
        } => {
            let opts = UpOptions {
                name: lab.name,
                nodes,
                backend,
                proxy_mode,
                pod_cidr,
                service_cidr,
                underlay,
                with_client: !no_client,
                dns: !no_dns,
                restart_backoff_ms,
                zones,
                flow_log: clap::ValueEnum::to_possible_value(&flow_log)
                    .map(|v| v.get_name().to_string())
                    .unwrap_or_default(),
            };
            let r = ops::up(
                &opts,
                twill,
                &files,
                replace,
                &agents_available(),
                Duration::from_secs(wait),
            )?;
            print_problems(&r.problems);
            match &r.restarted {
                Some(list) if list.is_empty() => {
                    println!(
                        "lab {} was up already; nothing needed restarting",
                        r.spec.name
                    )
                }
                Some(list) => println!(
                    "lab {} was up already; restarted: {}",
                    r.spec.name,
                    list.join(", ")
                ),
                None => {}
            }
            println!(
                "lab {} is up: {} nodes ({} backend, {} proxy), {}/{} pods ready in {:.2}s",
                r.spec.name,
                r.spec.nodes.len(),
                r.spec.backend.as_str(),
                r.spec.proxy_mode,
                r.ready,
                r.pods,
                r.elapsed.as_secs_f64()
            );
            let converged = r.ready == r.pods;
            if !converged {
                report_unready(&r.spec, wait);
            }
            Ok(
                if !converged
                    || r.problems
                        .iter()
                        .any(|p| p.severity == twill_manifest::Severity::Error)
                {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                },
            )
        }
        Command::Down { lab, force } => {
            let n = ops::down(&lab.name, force)?;
            println!("lab {} is down ({n} namespaces removed)", lab.name);
            Ok(ExitCode::SUCCESS)
        }
        Command::Apply { lab, files } => {
            let spec = LabSpec::load(&lab.name)?;
            require_controller(&spec)?;
            let r = ops::apply(&spec, &files)?;
            print_problems(&r.problems);
            for l in &r.objects {
                println!("{} configured", l.object.object_ref());
            }
            Ok(if r.has_errors() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Delete { lab, files } => {
            let spec = LabSpec::load(&lab.name)?;
            require_controller(&spec)?;
            let (r, removed) = ops::delete(&spec, &files)?;
            print_problems(&r.problems);
            println!("{removed} objects deleted");
            Ok(ExitCode::SUCCESS)
        }
        Command::Get {
            lab,
            resource,
            object,
            namespace,
            all_namespaces,
            output,
            selector,
        } => {
            let spec = LabSpec::load(&lab.name)?;
            let mut state = load_state(&spec)?;
            if let Some(sel) = &selector {
                let reqs = kubectl::parse_selector(sel).map_err(anyhow::Error::msg)?;
                kubectl::filter_by_labels(&mut state, &reqs);
            }
            let (resource, name) = match resource.split_once('/') {
                Some((r, n)) => (r.to_string(), Some(n.to_string())),
                None => (resource, object),
            };
            if let Some(n) = &name {
                let found = only_named(&mut state, &resource, n);
                if !found {
                    eprintln!("Error from server (NotFound): {resource} \"{n}\" not found");
                    return Ok(ExitCode::FAILURE);
                }
            }
            let scope = if all_namespaces {
                Scope::All
            } else {
                Scope::Namespace(&namespace)
            };
            if resource == "topology" {
                let g = match output {
                    Some(GetOutput::Dot) => twill_lab::picture::Graph::Dot,
                    Some(GetOutput::Mermaid) => twill_lab::picture::Graph::Mermaid,
                    _ => bail!("get topology draws the lab: -o dot or -o mermaid"),
                };
                if !all_namespaces {
                    state.pods.retain(|k, _| k.namespace == namespace);
                    state.services.retain(|k, _| k.namespace == namespace);
                }
                print!("{}", twill_lab::picture::topology(&spec, &state, g));
                return Ok(ExitCode::SUCCESS);
            }
            if matches!(output, Some(GetOutput::Dot | GetOutput::Mermaid)) {
                bail!("-o dot and -o mermaid draw `get topology` only");
            }
            let wide = output == Some(GetOutput::Wide);
            let age = lab_age(&spec);
            if resource == "events" || resource == "event" || resource == "ev" {
                if output.is_some() {
                    bail!("get events prints kubectl's table only");
                }
                print!(
                    "{}",
                    kubectl::events(&status::load(&spec)?.pods, &scope, unix_now())
                );
                return Ok(ExitCode::SUCCESS);
            }
            if let Some(GetOutput::Yaml | GetOutput::Json) = output {
                let mut filtered = ClusterState::default();
                match resource.as_str() {
                    "nodes" | "node" | "no" => filtered.nodes = state.nodes,
                    "pods" | "pod" | "po" => filtered.pods = state.pods,
                    "services" | "service" | "svc" => filtered.services = state.services,
                    "endpointslices" | "endpointslice" => {
                        filtered.endpoint_slices = state.endpoint_slices
                    }
                    "networkpolicies" | "networkpolicy" | "netpol" => {
                        filtered.network_policies = state.network_policies
                    }
                    "clusternetworkpolicies" | "clusternetworkpolicy" | "cnp" => {
                        filtered.cluster_network_policies = state.cluster_network_policies
                    }
                    r => bail!(
                        "unknown resource {r:?} (nodes, pods, svc, endpointslices, networkpolicies, clusternetworkpolicies, events)"
                    ),
                }
                filtered.pods.retain(|k, _| scope_ok(&scope, &k.namespace));
                filtered
                    .services
                    .retain(|k, _| scope_ok(&scope, &k.namespace));
                filtered
                    .endpoint_slices
                    .retain(|k, _| scope_ok(&scope, &k.namespace));
                filtered
                    .network_policies
                    .retain(|k, _| scope_ok(&scope, &k.namespace));
                if output == Some(GetOutput::Json) {
                    let list = twill_manifest::render_json(&filtered);
                    // One named object prints as itself, as kubectl does.
                    let v = match list["items"].as_array() {
                        Some(items) if name.is_some() && items.len() == 1 => items[0].clone(),
                        _ => list,
                    };
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    print!("{}", twill_manifest::render_yaml(&filtered));
                }
                return Ok(ExitCode::SUCCESS);
            }
            let text = match resource.as_str() {
                "nodes" | "node" | "no" => kubectl::nodes(&state, wide, &age),
                "pods" | "pod" | "po" => kubectl::pods(
                    &state,
                    &status::load(&spec)?.pods,
                    &scope,
                    wide,
                    &age,
                    unix_now(),
                ),
                "services" | "service" | "svc" => kubectl::services(&state, &scope, wide, &age),
                "endpointslices" | "endpointslice" => {
                    kubectl::endpoint_slices(&state, &scope, &age)
                }
                "networkpolicies" | "networkpolicy" | "netpol" => {
                    kubectl::network_policies(&state, &scope, &age)
                }
                "clusternetworkpolicies" | "clusternetworkpolicy" | "cnp" => {
                    kubectl::cluster_network_policies(&state, &age)
                }
                r => bail!(
                    "unknown resource {r:?} (nodes, pods, svc, endpointslices, networkpolicies, clusternetworkpolicies, events)"
                ),
            };
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec {
            lab,
            namespace,
            node,
            host,
            pod,
            command,
        } => {
            let spec = LabSpec::load(&lab.name)?;
            let target = match (node, host, pod) {
                (Some(n), _, _) => ExecTarget::Node(n),
                (_, Some(h), _) => ExecTarget::Host(h),
                (None, None, Some(p)) => ExecTarget::Pod { namespace, name: p },
                (None, None, None) => bail!("name a pod, or --node NODE, or --host client"),
            };
            let code = ops::exec(&spec, &target, &command)?;
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        Command::Describe {
            lab,
            kind: DescribeKind::Pod,
            object: name,
            namespace,
        } => {
            let spec = LabSpec::load(&lab.name)?;
            let state = load_state(&spec)?;
            let key = twill_model::ObjectKey::new(namespace.clone(), name.clone());
            let Some(pod) = state.pods.get(&key) else {
                anyhow::bail!("pods \"{name}\" not found in namespace {namespace}");
            };
            let running = status::load(&spec)?.pods;
            let r = running
                .iter()
                .find(|r| r.namespace == namespace && r.name == name);
            print!("{}", kubectl::describe_pod(pod, r, unix_now()));
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs {
            lab,
            namespace,
            pod,
            tail,
            previous,
            follow,
        } => {
            let spec = LabSpec::load(&lab.name)?;
            let mut path = ops::log_path(&spec, &namespace, &pod);
            if previous {
                path.set_file_name("log.previous");
            }
            let text = std::fs::read_to_string(&path).with_context(|| {
                if previous {
                    format!("previous terminated container in pod {namespace}/{pod} not found")
                } else {
                    format!("pod {namespace}/{pod} has no log")
                }
            })?;
            match tail {
                Some(n) => {
                    let lines: Vec<&str> = text.lines().collect();
                    for l in &lines[lines.len().saturating_sub(n)..] {
                        println!("{l}");
                    }
                }
                None => print!("{text}"),
            }
            if follow && !previous {
                follow_log(&path, text.len() as u64)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { lab } => {
            let spec = LabSpec::load(&lab.name)?;
            println!(
                "lab {} ({}): {} backend, {} proxy, state in {}",
                spec.name,
                lab_age(&spec),
                spec.backend.as_str(),
                spec.proxy_mode,
                spec.dir.display()
            );
            println!(
                "controller: {}",
                if twill_lab::agents::alive(&spec.dir.join("controller.pid")) {
                    "running".to_string()
                } else {
                    format!(
                        "NOT running (`twill lab up --name {}` starts it again; pods keep running)",
                        spec.name
                    )
                }
            );
            for n in &spec.nodes {
                let agents: Vec<String> = std::fs::read_dir(spec.node_dir(&n.name))
                    .map(|d| {
                        d.flatten()
                            .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
                            .map(|e| {
                                let name = e
                                    .path()
                                    .file_stem()
                                    .unwrap_or_default()
                                    .to_string_lossy()
                                    .into_owned();
                                let up = twill_lab::agents::alive(&e.path());
                                format!("{name}={}", if up { "running" } else { "DOWN" })
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                println!(
                    "node {} {} netns {} pods {} agents [{}]",
                    n.name,
                    n.ip,
                    n.netns,
                    n.pod_cidr,
                    agents.join(" ")
                );
            }
            if let Some(c) = &spec.client {
                println!("host {} {} netns {}", c.name, c.ip, c.netns);
            }
            println!("load balancer pool {}", spec.lb_pool);
            let st = status::load(&spec)?;
            for p in &st.problems {
                println!("problem: {p}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor { lab, output } => {
            let spec = LabSpec::load(&lab.name)?;
            let live: Vec<String> = status::load(&spec)?
                .pods
                .into_iter()
                .map(|p| p.container_id)
                .collect();
            let mut worst = 0;
            for n in &spec.nodes {
                let mut cmd = twill_lab::netns::in_netns(&n.netns, &twill);
                cmd.args(["doctor", "--node", &n.name, "-f"])
                    .arg(spec.cluster_file())
                    .arg("--ipam-dir")
                    .arg(spec.node_dir(&n.name).join("ipam"))
                    .arg(format!("--live-containers={}", live.join(",")));
                if let Some(o) = output {
                    cmd.args(["-o", o.as_str()]);
                }
                let code = cmd
                    .status()
                    .context("running twill doctor")?
                    .code()
                    .unwrap_or(2);
                worst = worst.max(code);
            }
            Ok(ExitCode::from(worst.clamp(0, 255) as u8))
        }
        Command::Trace {
            lab,
            from,
            to,
            proto,
            node,
            reply,
            output,
        } => {
            let spec = LabSpec::load(&lab.name)?;
            let running = status::load(&spec)?.pods;
            let (start, follow) = trace_namespaces(&spec, &running, &from, node.as_deref())?;
            crate::cmd::trace::run(crate::cmd::trace::Args {
                to: Some(to),
                from: Some(
                    spec.client
                        .as_ref()
                        .filter(|c| c.name == from)
                        .map_or(from, |c| c.ip.to_string()),
                ),
                proto,
                sport: 40000,
                iif: None,
                netns: Some(start),
                snapshot: None,
                save_snapshot: None,
                kube_proxy_jumps: false,
                files: vec![spec.cluster_file().display().to_string()],
                follow,
                reply,
                output,
                corpus: None,
                rendered: false,
            })
        }
        Command::Flows {
            lab,
            follow,
            verdict,
            pod,
            output,
        } => {
            use twill_lab::flows::{FlowQuery, Verdict};
            let spec = LabSpec::load(&lab.name)?;
            let q = FlowQuery {
                verdict: verdict.map(|v| match v {
                    FlowVerdict::Dropped => Verdict::Dropped,
                    FlowVerdict::Allowed => Verdict::Allowed,
                }),
                pod: pod.map(|p| {
                    if p.contains('/') {
                        p
                    } else {
                        format!("default/{p}")
                    }
                }),
                ..Default::default()
            };
            let mut since = std::collections::BTreeMap::new();
            let mut first = true;
            twill_agent::signals::install();
            loop {
                let (flows, errors) = twill_lab::flows::lab_flows(&spec, &q, &since);
                for e in &errors {
                    eprintln!("{e}");
                }
                if !follow && !errors.is_empty() && errors.len() == spec.nodes.len() {
                    anyhow::bail!("no node answered");
                }
                for f in &flows {
                    let s = since.entry(f.node.clone()).or_insert(0);
                    *s = (*s).max(f.seq);
                }
                match output {
                    Some(FlowOutput::Json) => {
                        for f in &flows {
                            println!("{}", serde_json::to_string(f)?);
                        }
                    }
                    _ if flows.is_empty() && !follow => eprintln!("No flows recorded."),
                    o => {
                        if first || !flows.is_empty() {
                            let wide = o == Some(FlowOutput::Wide);
                            print!("{}", twill_lab::flows::flows_table(&flows, wide, first));
                        }
                    }
                }
                first = false;
                if !follow || twill_agent::signals::stop_requested() {
                    break;
                }
                std::io::Write::flush(&mut std::io::stdout())?;
                std::thread::sleep(Duration::from_millis(500));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ui { lab, listen } => {
            let spec = LabSpec::load(&lab.name)?;
            let name = spec.name.clone();
            let twill = twill.clone();
            let handler: twill_agent::http::Handler =
                std::sync::Arc::new(move |path, query| ui_answer(&name, &twill, path, query));
            let (addr, _runtime) = twill_agent::http::serve_fn(listen, handler)
                .with_context(|| format!("listening on {listen}"))?;
            println!("lab {} at http://{addr}/ (Ctrl-C to stop)", spec.name);
            std::io::Write::flush(&mut std::io::stdout())?;
            twill_agent::signals::install();
            // The page ends with the lab (`lab down`), so a page started in the
            // background does not outlive what it shows.
            let mut gone_since: Option<std::time::Instant> = None;
            while !twill_agent::signals::stop_requested() {
                std::thread::sleep(Duration::from_millis(200));
                if LabSpec::load(&spec.name).is_ok() {
                    gone_since = None;
                } else if gone_since
                    .get_or_insert_with(std::time::Instant::now)
                    .elapsed()
                    > Duration::from_secs(10)
                {
                    eprintln!("lab {} is gone; the page stops", spec.name);
                    break;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Controller { lab } => {
            let spec = LabSpec::load(&lab.name)?;
            let mut c = twill_lab::controller::Controller::new(spec);
            c.run(Duration::from_millis(100), || false)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Responder {
            pod,
            namespace,
            ports,
        } => {
            let ports = twill_lab::responder::parse_ports(&ports).map_err(anyhow::Error::msg)?;
            twill_lab::responder::run(&pod, &namespace, &ports)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Keep only the objects of `resource` named `name` (in any namespace; the scope
/// filter narrows further); whether any is left.
fn only_named(state: &mut ClusterState, resource: &str, name: &str) -> bool {
    match resource {
        "nodes" | "node" | "no" => {
            state.nodes.retain(|k, _| k == name);
            !state.nodes.is_empty()
        }
        "pods" | "pod" | "po" => {
            state.pods.retain(|k, _| k.name == name);
            !state.pods.is_empty()
        }
        "services" | "service" | "svc" => {
            state.services.retain(|k, _| k.name == name);
            !state.services.is_empty()
        }
        "endpointslices" | "endpointslice" => {
            state.endpoint_slices.retain(|k, _| k.name == name);
            !state.endpoint_slices.is_empty()
        }
        "networkpolicies" | "networkpolicy" | "netpol" => {
            state.network_policies.retain(|k, _| k.name == name);
            !state.network_policies.is_empty()
        }
        "clusternetworkpolicies" | "clusternetworkpolicy" | "cnp" => {
            state.cluster_network_policies.retain(|k, _| k == name);
            !state.cluster_network_policies.is_empty()
        }
        _ => true,
    }
}

/// Where a lab trace starts (the source pod's own namespace, the outside host's, or a
/// node's) and every other namespace it may follow the packet into.
fn trace_namespaces(
    spec: &LabSpec,
    running: &[twill_lab::pod::RunningPod],
    from: &str,
    node: Option<&str>,
) -> anyhow::Result<(String, Vec<String>)> {
    let (ns, name) = from.split_once('/').unwrap_or(("default", from));
    let start = if let Some(n) = node {
        spec.node(n)
            .with_context(|| format!("--node {n}: lab {} has no such node", spec.name))?
            .netns
            .clone()
    } else if let Some(c) = spec.client.as_ref().filter(|c| c.name == from) {
        c.netns.clone()
    } else if let Some(p) = running.iter().find(|p| p.namespace == ns && p.name == name) {
        p.netns.clone()
    } else if from.parse::<std::net::IpAddr>().is_ok() {
        bail!("--from {from}: an IP source needs --node, the node the packet arrives on");
    } else {
        bail!(
            "--from {from}: no running pod {ns}/{name} and no outside host of that name in lab {}",
            spec.name
        );
    };
    let mut all: Vec<String> = spec.nodes.iter().map(|n| n.netns.clone()).collect();
    all.extend(spec.client.iter().map(|c| c.netns.clone()));
    all.extend(
        running
            .iter()
            .filter(|p| !p.host_network)
            .map(|p| p.netns.clone()),
    );
    all.sort();
    all.dedup();
    all.retain(|n| *n != start);
    Ok((start, all))
}

fn scope_ok(scope: &Scope<'_>, ns: &str) -> bool {
    match scope {
        Scope::Namespace(n) => *n == ns,
        Scope::All => true,
    }
}
