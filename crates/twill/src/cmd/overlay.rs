//! `twill overlay` (the agent, flannel's job) and `twill conformance overlay DIR`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use twill_agent::parts::podnet;
use twill_overlay_agent::StoreSpec;

#[derive(clap::Args)]
pub struct Args {
    /// Network config JSON (flannel's net-conf.json). Stored as the store's config; with
    /// etcd only when `<prefix>/config` is absent.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Lease store: `embedded` (default file /var/lib/twill/overlay/leases.json),
    /// `embedded:PATH`, or `etcd://HOST:PORT`.
    #[arg(long, default_value = "embedded")]
    pub store: String,
    /// etcd key prefix.
    #[arg(long, default_value = twill_overlay::lease::DEFAULT_PREFIX)]
    pub etcd_prefix: String,
    #[command(flatten)]
    pub iface: IfaceFlags,
    /// Masquerade pod traffic leaving the cluster network.
    #[arg(long)]
    pub ip_masq: bool,
    /// Where to write subnet.env.
    #[arg(long, default_value = twill_overlay::subnet_env::SUBNET_ENV_PATH)]
    pub subnet_file: PathBuf,
    /// Also write a twill-bridge CNI config here.
    #[arg(long)]
    pub cni_conf: Option<PathBuf>,
    /// Minutes before expiry to renew the lease (1..1439).
    #[arg(long, default_value_t = 60)]
    pub subnet_lease_renew_margin: u32,
    /// Serve `/healthz`, `/readyz` and `/metrics` on this address, e.g. 127.0.0.1:8471
    /// (`/readyz` names the lease and sync errors).
    #[arg(long)]
    pub healthz: Option<std::net::SocketAddr>,
    /// Seconds between full reconciles.
    #[arg(long, default_value_t = 10)]
    pub resync_secs: u64,
}

#[derive(clap::Args)]
pub struct ConformanceArgs {
    /// A folder of overlay cases (shared/testdata/overlay schema).
    pub dir: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    twill_overlay::renewal::plan_renewal(0, a.subnet_lease_renew_margin)?;
    let config = match &a.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            twill_overlay::NetworkConfig::parse(&p.display().to_string(), &text)?;
            Some(text)
        }
        None => None,
    };
    let spec = if a.store == "embedded" {
        StoreSpec::Embedded("/var/lib/twill/overlay/leases.json".into())
    } else if let Some(path) = a.store.strip_prefix("embedded:") {
        StoreSpec::Embedded(path.into())
    } else if a.store.starts_with("etcd://") || a.store.starts_with("http://") {
        StoreSpec::Etcd {
            endpoint: a.store.clone(),
            prefix: a.etcd_prefix.clone(),
        }
    } else {
        anyhow::bail!(
            "--store {}: expected embedded, embedded:PATH or etcd://HOST:PORT",
            a.store
        );
    };
    let opts = twill_overlay_agent::AgentOptions {
        iface: a.iface.choice(),
        public_ip: a.iface.public_ip,
        ip_masq: a.ip_masq,
        subnet_env_path: a.subnet_file,
        cni_conf_path: a.cni_conf,
        renew_margin_minutes: a.subnet_lease_renew_margin,
        resync: std::time::Duration::from_secs(a.resync_secs.max(1)),
        ..Default::default()
    };
    // The agent runtime with the pod network part: its reconcile loop runs on its own
    // thread, driven by lease changes; the runtime reports its health (`/healthz`,
    // `/readyz`, `/metrics` on `--healthz`) and stops it cleanly on SIGTERM.
    let status = twill_agent::Status::new(Duration::from_secs(a.resync_secs.max(1)));
    let http = match a.healthz {
        Some(addr) => {
            let http = twill_agent::http::HttpServer::new(status.clone())?;
            http.listen(addr, twill_agent::http::Routes::Agent)
                .with_context(|| format!("listening on {addr}"))?;
            Some(http)
        }
        None => None,
    };
    let part = podnet::start(
        podnet::SubnetStore::Leases(spec),
        config,
        opts,
        None,
        String::new(),
    )?;
    // No cluster state is needed: the leases are the source.
    let (tx, rx) = std::sync::mpsc::channel();
    tx.send(twill_agent::Update::Events(vec![
        twill_model::ObjectEvent::Synced,
    ]))?;
    drop(tx);
    twill_agent::signals::install();
    let runtime = twill_agent::Runtime::new(
        status,
        http,
        vec![twill_agent::Part::PodNetwork(podnet::PodNetworkPart::new(
            part,
        ))],
        rx,
        twill_agent::Options {
            min_sync_period: Duration::from_secs(1),
            sync_period: Duration::from_secs(a.resync_secs.max(1)),
            ..Default::default()
        },
    );
    runtime.run()?;
    Ok(ExitCode::SUCCESS)
}

/// Run every `*.json` case in the folder; one line per failure, then the summary.
pub fn run_conformance(a: ConformanceArgs) -> anyhow::Result<ExitCode> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(&a.dir)
        .with_context(|| format!("reading {}", a.dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let (mut passed, mut failed) = (0, 0);
    for path in files {
        let outcome = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read: {e}"))
            .and_then(|t| {
                serde_json::from_str::<serde_json::Value>(&t).map_err(|e| format!("not JSON: {e}"))
            })
            .and_then(|case| twill_conformance::overlay::check_case(&case));
        match outcome {
            Ok(()) => passed += 1,
            Err(e) => {
                failed += 1;
                println!("FAIL {}: {e}", path.display());
            }
        }
    }
    Ok(super::conformance::summary(passed, failed))
}

/// flanneld's interface flags, shared by `twill overlay` and `twill agent --pod-network`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct IfaceFlags {
    /// Interface for the overlay, by name or IPv4 address; repeat to try several in order
    /// (the first present wins). Default: the default route's interface.
    #[arg(long = "iface", value_name = "NAME|IP")]
    pub ifaces: Vec<String>,
    /// A regex matched against addresses, then names, to pick the interface (repeatable;
    /// used when --iface is not given).
    #[arg(long = "iface-regex", value_name = "REGEX")]
    pub regexes: Vec<String>,
    /// Use the interface of the route to this address (when neither of the above is
    /// given).
    #[arg(long = "iface-can-reach", value_name = "IP")]
    pub can_reach: Option<std::net::Ipv4Addr>,
    /// The address other nodes reach this one at (default: the interface's). host-gw
    /// refuses one that differs from the interface's address (a node behind NAT).
    #[arg(long = "public-ip", value_name = "IP")]
    pub public_ip: Option<std::net::Ipv4Addr>,
}

impl IfaceFlags {
    pub fn choice(&self) -> twill_netlink::IfaceChoice {
        twill_netlink::IfaceChoice {
            ifaces: self.ifaces.clone(),
            regexes: self.regexes.clone(),
            can_reach: self.can_reach,
        }
    }
}
