//! `twill agent`: one process per node, fed by the Kubernetes API: clap arguments into
//! the node agent runtime (`twill_agent`) with the API source and the parts chosen on
//! the command line:
//!
//! - `--proxy-mode iptables|nftables`: the service proxy (kube-proxy's job), the same
//!   part `twill proxy` runs;
//! - `--network-policy`: the NetworkPolicy enforcer;
//! - `--pod-network`: the overlay (flannel's job), with this node's subnet from its Node
//!   (`--subnet-store kube`, flannel's kube subnet manager) or from a lease store.
//!
//! The runtime syncs nothing before the source has listed everything, batches changes
//! to at most one sync per `--min-sync-period`, resyncs every `--sync-period`, retries a
//! failed sync after a second (backing off), and serves `/healthz`, `/livez`, `/readyz`
//! and `/metrics` from one HTTP server. Without a part (`--dump-events`), it prints the
//! event stream: what the parts would act on.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use twill_agent::Part;
use twill_agent::parts::podnet::{self, SubnetStore, parse_subnet_store};
use twill_agent::parts::proxy::{Mode, ProxyPart, ProxySettings};
use twill_kube_source::{Role, SourceConfig};
use twill_model::IpFamily;
use twill_netpol::DenyAction;

#[derive(clap::Args)]
pub struct Args {
    /// Remove everything Twill or kube-proxy wrote into this network namespace (chains in
    /// every table and backend, the `kube-proxy` nft tables, ipsets, policy and overlay
    /// rules) and exit, as `kube-proxy --cleanup` does.
    #[arg(long)]
    pub cleanup: bool,
    /// kubeconfig to use; without it: `KUBECONFIG`, `~/.kube/config`, then the pod's
    /// service account (in-cluster).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (default: `NODE_NAME`, then the hostname), as kube-proxy's
    /// `--hostname-override`.
    #[arg(long, env = "NODE_NAME")]
    pub hostname_override: Option<String>,
    /// What this process watches as: `node` (the DaemonSet agent) or `dns` (what cluster
    /// DNS reads; with `--dump-events` only — `twill dns --source kube` serves it).
    #[arg(long, default_value = "node", value_parser = parse_role)]
    pub role: Role,
    /// Watch only this node's Pods (`fieldSelector=spec.nodeName=NODE`): far less
    /// traffic on big clusters; not with `--network-policy` (policy peers live on every
    /// node).
    #[arg(long)]
    pub local_pods_only: bool,
    /// Print every event (`applied KIND NAME`, `deleted KIND NAME`, `synced ...`) on
    /// stdout.
    #[arg(long)]
    pub dump_events: bool,
    /// Exit after the first sync (with its summary, after the parts' first pass); for
    /// scripts and smoke tests.
    #[arg(long)]
    pub exit_after_sync: bool,

    /// The service proxy: `iptables`, `nftables`, or `none` (kube-proxy stays in charge).
    /// Default: none, or the `--config` file's mode (iptables when it names none).
    #[arg(long, value_enum)]
    pub proxy_mode: Option<ProxyMode>,
    /// Run the pod network (the overlay: this node's subnet, routes to the others').
    #[arg(long)]
    pub pod_network: bool,
    /// Enforce NetworkPolicy for this node's pods.
    #[arg(long)]
    pub network_policy: bool,

    /// Where this node's pod subnet comes from: `kube` (the Node's spec.podCIDR, lease
    /// published as flannel.alpha.coreos.com annotations), `embedded[:PATH]` or
    /// `etcd:URL` (a lease store, as `twill overlay`).
    #[arg(long, default_value = "kube", value_parser = parse_subnet_store)]
    pub subnet_store: SubnetStore,
    /// Network config (flannel's net-conf.json).
    #[arg(long, default_value = "/etc/twill/net-conf.json")]
    pub net_conf: PathBuf,
    #[command(flatten)]
    pub iface: crate::cmd::overlay::IfaceFlags,
    /// Masquerade pod traffic leaving the cluster network (flanneld `--ip-masq`).
    #[arg(long)]
    pub ip_masq: bool,
    /// Where to write subnet.env (the CNI plugin reads it).
    #[arg(long, default_value = twill_overlay::subnet_env::SUBNET_ENV_PATH)]
    pub subnet_file: PathBuf,
    /// Also write a twill-bridge CNI config here.
    #[arg(long)]
    pub cni_conf: Option<PathBuf>,

    /// Pod CIDR for the proxy's local-traffic detector (default: the network config's
    /// Network with `--pod-network`, else none).
    #[arg(long)]
    pub cluster_cidr: Option<String>,
    /// The node's IPs for NodePorts (default: the Node's InternalIPs).
    #[arg(long = "node-ip")]
    pub node_ips: Vec<IpAddr>,
    /// Masquerade all ClusterIP traffic.
    #[arg(long)]
    pub masquerade_all: bool,
    /// CIDRs whose local addresses accept NodePorts (comma separated); default all.
    #[arg(long, value_delimiter = ',')]
    pub nodeport_addresses: Vec<String>,
    /// Which iptables binaries to use.
    #[arg(long, value_enum, default_value = "system")]
    pub iptables_backend: twill_agent::parts::proxy::Backend,
    /// Full resync period (`30s`, `1m`; default 30s).
    #[arg(long, alias = "iptables-sync-period")]
    pub sync_period: Option<String>,
    /// Minimum time between syncs (default 1s).
    #[arg(long, alias = "iptables-min-sync-period")]
    pub min_sync_period: Option<String>,
    #[command(flatten)]
    pub tuning: crate::cmd::kube_proxy::TuningFlags,

    /// What NetworkPolicy-denied packets get.
    #[arg(long, value_enum, default_value = "reject")]
    pub deny: Deny,
    #[command(flatten)]
    pub flow_log: crate::cmd::netpol::FlowLogFlags,

    /// Where /healthz listens (default kube-proxy's, 0.0.0.0:10256).
    #[arg(long)]
    pub healthz_bind_address: Option<SocketAddr>,
    /// Where /metrics listens (default kube-proxy's, 127.0.0.1:10249).
    #[arg(long)]
    pub metrics_bind_address: Option<SocketAddr>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    None,
    Iptables,
    Nftables,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deny {
    Reject,
    Drop,
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| {
        let known: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        format!("unknown role {s:?} (known: {})", known.join(", "))
    })
}

fn node_name(a: &Args) -> anyhow::Result<String> {
    if let Some(n) = a.hostname_override.as_ref().filter(|n| !n.is_empty()) {
        return Ok(n.clone());
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading the hostname (give --hostname-override)")?;
    // Node names are lower case, as kubelet registers them.
    Ok(host.trim().to_lowercase())
}

/// Fold a `--config` KubeProxyConfiguration into the flags (flags win); the proxy runs
/// when the file is given, in its mode (iptables when it names none).
fn apply_config_file(f: &twill_agent::kube_proxy_config::FromFile, a: &mut Args) {
    if a.proxy_mode.is_none() {
        a.proxy_mode = Some(match f.mode {
            Some(Mode::Nftables) => ProxyMode::Nftables,
            _ => ProxyMode::Iptables,
        });
    }
    if a.kubeconfig.is_none() {
        a.kubeconfig = f.kubeconfig.clone();
    }
    crate::cmd::kube_proxy::Basics {
        hostname_override: &mut a.hostname_override,
        cluster_cidr: &mut a.cluster_cidr,
        node_ips: &mut a.node_ips,
        masquerade_all: &mut a.masquerade_all,
        nodeport_addresses: &mut a.nodeport_addresses,
        sync_period: &mut a.sync_period,
        min_sync_period: &mut a.min_sync_period,
        healthz_bind_address: &mut a.healthz_bind_address,
        metrics_bind_address: &mut a.metrics_bind_address,
    }
    .fold(f);
}

pub fn run(mut a: Args) -> anyhow::Result<ExitCode> {
    let file = a.tuning.load_file()?;
    if let Some(f) = &file {
        if f.mode == Some(Mode::Ipvs) || f.mode == Some(Mode::Userspace) {
            anyhow::bail!(
                "{}: mode {:?}: twill agent runs iptables or nftables",
                a.tuning
                    .config
                    .as_ref()
                    .map_or(String::new(), |p| p.display().to_string()),
                f.mode.map(Mode::as_str).unwrap_or_default()
            );
        }
        apply_config_file(f, &mut a);
    }
    let tuning = a.tuning.tuning(file.as_ref())?;
    let proxy_mode = a.proxy_mode.unwrap_or(ProxyMode::None);
    if a.cleanup {
        return Ok(crate::cmd::print_cleanup(
            twill_agent::cleanup::remove_everything(),
        ));
    }
    let node = node_name(&a)?;
    let parts_on = proxy_mode != ProxyMode::None || a.network_policy || a.pod_network;
    if !parts_on && !a.dump_events && !a.exit_after_sync {
        anyhow::bail!(
            "nothing to run: choose parts (--proxy-mode iptables, --pod-network, \
             --network-policy) or --dump-events"
        );
    }
    if parts_on && a.role != Role::Node {
        anyhow::bail!(
            "--role {} runs no node parts; use `twill dns --source kube`",
            a.role.as_str()
        );
    }
    if a.local_pods_only && a.network_policy {
        anyhow::bail!(
            "--local-pods-only cannot be used with --network-policy: policy peers are pods of every node"
        );
    }
    let sync_period = crate::cmd::proxy::parse_duration(a.sync_period.as_deref().unwrap_or("30s"))?;
    let min_sync_period =
        crate::cmd::proxy::parse_duration(a.min_sync_period.as_deref().unwrap_or("1s"))?;

    let mut config: SourceConfig = a.role.source_config();
    if a.local_pods_only {
        config = config.local_pods_only(node.clone());
    }
    tracing::info!(node, role = a.role.as_str(), proxy = ?proxy_mode, pod_network = a.pod_network, network_policy = a.network_policy, "connecting to the API server");

    let mut parts = Vec::new();
    if a.pod_network {
        let text = std::fs::read_to_string(&a.net_conf)
            .with_context(|| format!("reading the network config {}", a.net_conf.display()))?;
        let opts = twill_overlay_agent::AgentOptions {
            iface: a.iface.choice(),
            public_ip: a.iface.public_ip,
            ip_masq: a.ip_masq,
            subnet_env_path: a.subnet_file.clone(),
            cni_conf_path: a.cni_conf.clone(),
            resync: podnet::DEFAULT_RESYNC,
            ..Default::default()
        };
        parts.push(Part::PodNetwork(podnet::PodNetworkPart::new(
            podnet::start(
                a.subnet_store.clone(),
                Some(text),
                opts,
                a.kubeconfig.clone(),
                node.clone(),
            )?,
        )));
    }
    if proxy_mode != ProxyMode::None {
        let cluster_cidr = match &a.cluster_cidr {
            Some(c) => Some(c.clone()),
            None if a.pod_network => std::fs::read_to_string(&a.net_conf)
                .ok()
                .and_then(|t| twill_overlay::NetworkConfig::parse("net-conf", &t).ok())
                .map(|c| c.network.to_string()),
            None => None,
        };
        let settings = ProxySettings {
            mode: match proxy_mode {
                ProxyMode::Nftables => Mode::Nftables,
                _ => Mode::Iptables,
            },
            family: IpFamily::V4,
            node: node.clone(),
            cluster_cidr,
            node_ips: a.node_ips.clone(),
            masquerade_all: a.masquerade_all,
            nodeport_addresses: a.nodeport_addresses.clone(),
            iptables_backend: a.iptables_backend,
            sync_period,
            tuning,
        };
        settings.check_runnable()?;
        parts.push(Part::Proxy(ProxyPart::new(settings)));
    }
    if a.network_policy {
        parts.push(Part::Policy(a.flow_log.part(
            &node,
            match a.deny {
                Deny::Reject => DenyAction::Reject,
                Deny::Drop => DenyAction::Drop,
            },
            vec![],
        )));
    }

    let status = twill_agent::Status::new(sync_period);
    let http = if parts_on && !a.exit_after_sync {
        let http = twill_agent::http::HttpServer::new(status.clone())?;
        crate::cmd::proxy::listen_agent(
            &http,
            a.healthz_bind_address
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 10256))),
            a.metrics_bind_address
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 10249))),
        )?;
        Some(http)
    } else {
        None
    };
    let (tx, rx) = std::sync::mpsc::channel();
    twill_agent::source::follow_kube(a.kubeconfig.clone(), config, tx)
        .context("starting the Kubernetes source")?;
    twill_agent::signals::install();
    let runtime = twill_agent::Runtime::new(
        status,
        http,
        parts,
        rx,
        twill_agent::Options {
            min_sync_period,
            sync_period,
            once: a.exit_after_sync,
            dump_events: a.dump_events,
            report: true,
            ..Default::default()
        },
    );
    runtime.run()?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;
    use std::collections::BTreeMap;
    use twill_model::{Kind, ObjectKey};

    /// The subcommands the deploy manifests run.
    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Deployed,
    }

    #[derive(clap::Subcommand)]
    enum Deployed {
        Agent(Box<Args>),
        Dns(crate::cmd::dns::Args),
    }

    /// Every container of every workload in `deploy/`, as (file, args).
    fn deployed_args() -> Vec<(String, Vec<String>)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
        let mut out = Vec::new();
        for file in ["agent.yaml", "dns.yaml"] {
            let text = std::fs::read_to_string(dir.join(file)).unwrap();
            for doc in text.split("\n---") {
                let v: serde_json::Value = serde_saphyr::from_str(doc).unwrap();
                for c in v["spec"]["template"]["spec"]["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    let args: Vec<String> = c["args"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|a| a.as_str().unwrap().to_string())
                        .collect();
                    out.push((file.to_string(), args));
                }
            }
        }
        out
    }

    fn deploy_docs(file: &str) -> Vec<serde_json::Value> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        text.split("\n---")
            .map(|doc| serde_saphyr::from_str(doc).unwrap())
            .collect()
    }

    fn deployed_corefile() -> String {
        deploy_docs("dns.yaml")
            .iter()
            .find(|d| d["kind"] == "ConfigMap")
            .and_then(|d| d["data"]["Corefile"].as_str())
            .expect("a Corefile in dns.yaml")
            .to_string()
    }

    /// Applied over kubeadm's kube-dns Service, dns.yaml keeps its selector, and the DNS
    /// pods carry the label it selects: CoreDNS's and Twill's pods serve side by side
    /// until CoreDNS is scaled down, with no moment without endpoints.
    #[test]
    fn the_dns_manifest_keeps_kube_dns_selecting_both_coredns_and_twill() {
        let docs = deploy_docs("dns.yaml");
        let svc = docs.iter().find(|d| d["kind"] == "Service").unwrap();
        assert_eq!(svc["metadata"]["name"], "kube-dns");
        let selector = svc["spec"]["selector"].as_object().unwrap();
        assert_eq!(
            selector
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
                .collect::<Vec<_>>(),
            [("k8s-app", "kube-dns")],
            "kubeadm's selector"
        );
        let ports: Vec<_> = svc["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["port"].as_u64().unwrap(), p["protocol"].as_str().unwrap()))
            .collect();
        assert_eq!(ports, [(53, "UDP"), (53, "TCP"), (9153, "TCP")]);
        let dep = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
        let labels = &dep["spec"]["template"]["metadata"]["labels"];
        for (k, v) in selector {
            assert_eq!(&labels[k], v, "the pods match the Service's {k}");
        }
    }

    #[test]
    fn the_deployed_agent_and_dns_arguments_parse_and_run_every_part_from_the_api() {
        let mut seen = Vec::new();
        for (file, args) in deployed_args() {
            let cli = Cli::try_parse_from(std::iter::once("twill".to_string()).chain(args.clone()))
                .unwrap_or_else(|e| panic!("{file}: {args:?}: {e}"));
            match cli.command {
                Deployed::Agent(a) => {
                    assert_eq!(a.proxy_mode, Some(ProxyMode::Iptables), "{file}");
                    assert!(a.pod_network && a.network_policy, "{file}");
                    assert_eq!(a.subnet_store, SubnetStore::Kube, "{file}");
                    assert!(!a.local_pods_only, "{file}: policy needs every pod");
                    assert_eq!(a.net_conf, PathBuf::from("/etc/twill/net-conf.json"));
                    seen.push("agent");
                }
                Deployed::Dns(mut d) => {
                    assert!(d.command.is_none(), "{file}");
                    assert!(d.serve.files.is_empty(), "{file}");
                    // The shipped Corefile, folded as the pod will: in-cluster, the
                    // kubeadm settings.
                    let dir =
                        std::env::temp_dir().join(format!("twill-corefile-{}", std::process::id()));
                    std::fs::create_dir_all(&dir).unwrap();
                    let path = dir.join("Corefile");
                    std::fs::write(&path, deployed_corefile()).unwrap();
                    assert_eq!(
                        d.serve.corefile.as_deref(),
                        Some(std::path::Path::new("/etc/twill-dns/Corefile"))
                    );
                    crate::cmd::dns::apply_corefile(&path, &mut d.serve).unwrap();
                    let _ = std::fs::remove_dir_all(&dir);
                    // The ConfigMap ships the corpus's kubeadm Corefile, unchanged.
                    let corpus = std::fs::read_to_string(
                        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                            .join("../dns/tests/corefiles/kubeadm.Corefile"),
                    )
                    .unwrap();
                    let body: Vec<&str> = corpus.lines().filter(|l| !l.starts_with('#')).collect();
                    assert_eq!(deployed_corefile().trim(), body.join("\n").trim());
                    assert!(d.serve.in_cluster, "{file}");
                    assert_eq!(d.serve.zone, "cluster.local");
                    assert_eq!(d.serve.ttl, 30);
                    assert_eq!(d.serve.lameduck.as_deref(), Some("5000ms"));
                    assert!(d.serve.loadbalance && !d.serve.no_loop_check);
                    seen.push("dns");
                }
            }
        }
        seen.sort();
        assert_eq!(seen, ["agent", "dns"]);
    }

    #[test]
    fn an_unreadable_policy_fails_closed_until_fixed_or_deleted() {
        use kube::runtime::watcher::Event;
        use twill_kube_source::{Entry, SyncGate, WatchedKind};
        let policy = |selector: serde_json::Value| -> Entry {
            let np: k8s_openapi::api::networking::v1::NetworkPolicy =
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": "deny", "namespace": "shop"},
                    "spec": {"podSelector": selector, "policyTypes": ["Ingress"]},
                }))
                .unwrap();
            Entry {
                object_ref: twill_model::ObjectRef {
                    kind: Kind::NetworkPolicy,
                    key: ObjectKey::new("shop", "deny"),
                },
                object: twill_model::k8s::network_policy_from_k8s(&np)
                    .map(twill_model::Object::NetworkPolicy),
            }
        };
        let good = policy(serde_json::json!({"matchLabels": {"app": "web"}}));
        let bad = policy(serde_json::json!({"matchLabels": {"not a label!": "web"}}));
        assert!(bad.object.is_err(), "the test needs an invalid policy");
        const NP: WatchedKind = WatchedKind::NetworkPolicy;
        let mut gate = SyncGate::new([NP]);
        let mut rejected = BTreeMap::new();
        let mut feed = |gate: &mut SyncGate, e: Event<Entry>| {
            for item in gate.step(NP, e) {
                twill_agent::source::track_rejected_policies(&mut rejected, &item);
            }
            rejected.keys().map(ToString::to_string).collect::<Vec<_>>()
        };
        feed(&mut gate, Event::Init);
        feed(&mut gate, Event::InitApply(good.clone()));
        assert!(feed(&mut gate, Event::InitDone).is_empty());
        assert_eq!(feed(&mut gate, Event::Apply(bad.clone())), ["shop/deny"]);
        assert!(feed(&mut gate, Event::Apply(good)).is_empty(), "fixed");
        assert_eq!(feed(&mut gate, Event::Apply(bad.clone())), ["shop/deny"]);
        assert!(feed(&mut gate, Event::Delete(bad)).is_empty(), "deleted");
    }
}
