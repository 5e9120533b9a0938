//! `twill trace`: explain one packet's path through a node (its live netns, a named
//! netns, or a recorded snapshot folder).

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use twill_conformance::trace as corpus;
use twill_trace::{Probe, Snapshot, collect, report};

#[derive(clap::Args)]
pub struct Args {
    /// Destination: `IP:PORT`, `[IPv6]:PORT`, or with -f a Service `[NAMESPACE/]NAME[:PORT]`
    /// (port number or name; its first port when left out).
    #[arg(long, required_unless_present = "corpus")]
    pub to: Option<String>,
    /// Source: an IP, or with -f a pod `[NAMESPACE/]NAME`.
    #[arg(long, required_unless_present = "corpus")]
    pub from: Option<String>,
    /// `tcp`, `udp` or `sctp`.
    #[arg(long, default_value = "tcp")]
    pub proto: String,
    /// Source port of the probe.
    #[arg(long, default_value_t = 40000)]
    pub sport: u16,
    /// The interface the packet arrives on (default: a local source is locally generated,
    /// any other arrives on the device of the route back to it).
    #[arg(long)]
    pub iif: Option<String>,
    /// Trace in this named network namespace (`ip netns` name or a path).
    #[arg(long, conflicts_with = "snapshot")]
    pub netns: Option<String>,
    /// Trace over a recorded snapshot folder instead of live state.
    #[arg(long)]
    pub snapshot: Option<PathBuf>,
    /// Also write the state traced over into this folder (replayable with --snapshot).
    #[arg(long)]
    pub save_snapshot: Option<PathBuf>,
    /// The ruleset is a bare kube-proxy dump: add kube-proxy's base-chain jumps.
    #[arg(long)]
    pub kube_proxy_jumps: bool,
    /// Cluster objects for pod and Service names (manifests, or a lab's cluster.yaml).
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<String>,
    /// Follow the packet on into these namespaces (other nodes, pods) when its next hop
    /// is theirs: a netns name, or a snapshot folder. Repeatable.
    #[arg(long)]
    pub follow: Vec<String>,
    /// Also trace each delivered request's reply back (un-NATed by conntrack on the
    /// nodes that translated the request) and say whether it reaches the client as the
    /// connection it opened.
    #[arg(long)]
    pub reply: bool,
    /// `json` for tools.
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<TraceOutput>,
    /// Run the proxy corpus folder (testdata/proxy) through the tracer instead:
    /// one line per failure, then `N passed, N failed`.
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// With --corpus: trace every fixture over the rules Twill's own proxy renders for it
    /// (not only fixtures that carry upstream's `iptablesRestore`). Needs the `proxy`
    /// feature.
    #[arg(long, requires = "corpus")]
    pub rendered: bool,
}

/// `-o` of a trace: text, JSON, or a picture of the paths (Graphviz or Mermaid).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceOutput {
    Text,
    Json,
    Dot,
    Mermaid,
}

impl TraceOutput {
    fn graph(self) -> Option<report::Graph> {
        match self {
            TraceOutput::Dot => Some(report::Graph::Dot),
            TraceOutput::Mermaid => Some(report::Graph::Mermaid),
            _ => None,
        }
    }
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    if let Some(dir) = &a.corpus {
        return run_corpus(dir, a.rendered);
    }
    let cluster = (!a.files.is_empty()).then(|| {
        let loaded = twill_manifest::files::load_paths(&a.files);
        for p in &loaded.problems {
            eprintln!("{p}");
        }
        twill_model::ClusterState::from_objects(loaded.into_objects())
    });
    let from = a.from.as_deref().unwrap_or_default();
    let to = a.to.as_deref().unwrap_or_default();
    let src = resolve_source(from, cluster.as_ref())?;
    let (dst, port) = resolve_dest(to, cluster.as_ref())?;

    let files = match &a.snapshot {
        Some(dir) => collect::read_dir(dir)?,
        None => collect::collect_files_in(a.netns.as_deref())?,
    };
    if let Some(dir) = &a.save_snapshot {
        collect::write_dir(dir, &files)?;
    }
    let mut snap = Snapshot::from_files(&files).context("reading the node's state")?;
    if a.kube_proxy_jumps {
        corpus::add_kube_proxy_jumps(&mut snap.ipv4)?;
        corpus::add_kube_proxy_jumps(&mut snap.ipv6)?;
    }
    let probe = Probe {
        src,
        dst,
        proto: a.proto.to_lowercase(),
        sport: a.sport,
        dport: port,
        iif: a.iif.clone(),
        established: false,
        conntrack: vec![],
    };
    if !a.follow.is_empty() || a.reply {
        return run_across(&a, snap, &probe, cluster.as_ref());
    }
    let mut t = twill_trace::trace(&snap, &probe)?;
    if let Some(c) = &cluster {
        twill_trace::kubernetes::annotate(&mut t, c);
    }
    if let Some(g) = a.output.and_then(TraceOutput::graph) {
        let paths: Vec<twill_trace::path::Path> = t
            .branches
            .iter()
            .map(|b| twill_trace::path::Path {
                probability: b.probability,
                conditions: b.conditions.clone(),
                hops: vec![twill_trace::path::Hop {
                    node: a.netns.clone().unwrap_or_else(|| "this node".into()),
                    origin: t.origin.clone(),
                    branch: b.clone(),
                }],
                stopped: None,
            })
            .collect();
        print!("{}", report::render_graph(&paths, from, g));
    } else if a.output == Some(TraceOutput::Json) {
        println!("{}", serde_json::to_string_pretty(&t)?);
    } else {
        print!("{}", report::render_text(&t));
    }
    // Exit 1 when no branch gets through: the packet cannot reach anything.
    let through = t.branches.iter().any(|b| {
        matches!(
            b.fate,
            Some(twill_trace::Fate::Delivered { .. } | twill_trace::Fate::Sent { .. })
        )
    });
    Ok(if through {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn run_across(
    a: &Args,
    start: Snapshot,
    probe: &Probe,
    cluster: Option<&twill_model::ClusterState>,
) -> anyhow::Result<ExitCode> {
    let start_name = a
        .netns
        .clone()
        .or_else(|| a.snapshot.as_ref().map(|d| d.display().to_string()))
        .unwrap_or_else(|| "this node".into());
    let mut nodes = vec![(start_name.clone(), start)];
    for f in &a.follow {
        let dir = std::path::Path::new(f);
        let files = if dir.is_dir() {
            collect::read_dir(dir)?
        } else {
            collect::collect_files_in(Some(f))?
        };
        let mut snap = Snapshot::from_files(&files).with_context(|| format!("reading {f}"))?;
        if a.kube_proxy_jumps {
            corpus::add_kube_proxy_jumps(&mut snap.ipv4)?;
            corpus::add_kube_proxy_jumps(&mut snap.ipv6)?;
        }
        nodes.push((f.clone(), snap));
    }
    if a.reply {
        if a.output.and_then(TraceOutput::graph).is_some() {
            anyhow::bail!("-o dot|mermaid draws paths; with --reply use text or json");
        }
        let trips = twill_trace::trace_round_trip(&nodes, &start_name, probe)?;
        if a.output == Some(TraceOutput::Json) {
            println!("{}", serde_json::to_string_pretty(&trips)?);
        } else {
            print!("{}", report::render_round_trips(&trips));
        }
        let ok = trips.iter().any(|t| t.ok == Some(true));
        return Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let mut paths = twill_trace::trace_across(&nodes, &start_name, probe)?;
    if let Some(c) = cluster {
        twill_trace::kubernetes::annotate_paths(&mut paths, probe, c);
    }
    if let Some(g) = a.output.and_then(TraceOutput::graph) {
        print!(
            "{}",
            report::render_graph(&paths, a.from.as_deref().unwrap_or("source"), g)
        );
    } else if a.output == Some(TraceOutput::Json) {
        println!("{}", serde_json::to_string_pretty(&paths)?);
    } else {
        print!("{}", report::render_paths(&paths));
    }
    let through = paths.iter().any(|p| {
        matches!(
            p.hops.last().and_then(|h| h.branch.fate.as_ref()),
            Some(twill_trace::Fate::Delivered { .. } | twill_trace::Fate::Sent { .. })
        )
    });
    Ok(if through {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn run_corpus(dir: &std::path::Path, rendered: bool) -> anyhow::Result<ExitCode> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let (mut passed, mut failed) = (0, 0);
    for p in files {
        let label = p.display().to_string();
        let text = std::fs::read_to_string(&p).with_context(|| format!("reading {label}"))?;
        let mut v: serde_json::Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                println!("{label}: {e}");
                failed += 1;
                continue;
            }
        };
        if rendered && let Err(e) = render_into(&label, &text, &mut v) {
            println!("{label}: {e}");
            failed += 1;
            continue;
        }
        let (ok, failures, _skipped) = corpus::run_file(&label, &v);
        passed += ok;
        failed += failures.len();
        for f in failures {
            println!("{f}");
        }
    }
    Ok(crate::cmd::conformance::summary(passed, failed))
}

fn split_key(s: &str) -> twill_model::ObjectKey {
    match s.split_once('/') {
        Some((ns, n)) => twill_model::ObjectKey::new(ns, n),
        None => twill_model::ObjectKey::new("default", s),
    }
}

fn resolve_source(s: &str, cluster: Option<&twill_model::ClusterState>) -> anyhow::Result<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Ok(ip);
    }
    let Some(c) = cluster else {
        bail!("--from {s}: not an IP address (pass -f MANIFESTS to use pod names)");
    };
    let key = split_key(s);
    let pod = c
        .pods
        .get(&key)
        .with_context(|| format!("--from {s}: no pod {}/{}", key.namespace, key.name))?;
    pod.pod_ips.first().copied().with_context(|| {
        format!(
            "--from {s}: pod {}/{} has no IP yet",
            key.namespace, key.name
        )
    })
}

fn resolve_dest(
    s: &str,
    cluster: Option<&twill_model::ClusterState>,
) -> anyhow::Result<(IpAddr, u16)> {
    if let Some(rest) = s.strip_prefix('[')
        && let Some((ip, port)) = rest.split_once("]:")
    {
        return Ok((
            ip.parse()
                .with_context(|| format!("--to {s}: bad address"))?,
            port.parse()
                .with_context(|| format!("--to {s}: bad port"))?,
        ));
    }
    if let Some((ip, port)) = s.rsplit_once(':')
        && let Ok(ip) = ip.parse::<IpAddr>()
    {
        return Ok((
            ip,
            port.parse()
                .with_context(|| format!("--to {s}: bad port"))?,
        ));
    }
    let Some(c) = cluster else {
        bail!("--to {s}: expected IP:PORT (pass -f MANIFESTS to use Service names)");
    };
    let (name, port) = match s.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (s, None),
    };
    let key = split_key(name);
    let svc = c
        .services
        .get(&key)
        .with_context(|| format!("--to {s}: no Service {}/{}", key.namespace, key.name))?;
    let ip = svc
        .cluster_ips
        .first()
        .copied()
        .with_context(|| format!("--to {s}: Service has no cluster IP"))?;
    let sp = match port {
        None => svc.ports.first(),
        Some(p) => svc
            .ports
            .iter()
            .find(|sp| sp.name == p || p.parse::<u16>().ok() == Some(sp.port)),
    }
    .with_context(|| format!("--to {s}: no such Service port"))?;
    Ok((ip, sp.port))
}

/// Replace each fixture's `iptablesRestore` with what Twill's proxy renders for it.
#[cfg(feature = "proxy")]
fn render_into(label: &str, text: &str, file: &mut serde_json::Value) -> anyhow::Result<()> {
    let cf = twill_conformance::proxy::corpus::parse_case_file(label, text)?;
    for (i, fx) in cf.fixtures.iter().enumerate() {
        let prepared = fx
            .prepare(true)
            .map_err(|e| anyhow::anyhow!("fixture {}: {e}", fx.name))?;
        let lines: Vec<serde_json::Value> = prepared
            .render()
            .text
            .lines()
            .map(serde_json::Value::from)
            .collect();
        file["fixtures"][i]["iptablesRestore"] = lines.into();
    }
    Ok(())
}

#[cfg(not(feature = "proxy"))]
fn render_into(_: &str, _: &str, _: &mut serde_json::Value) -> anyhow::Result<()> {
    bail!("--rendered needs a build with the `proxy` feature")
}
