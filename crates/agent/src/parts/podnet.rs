//! The pod network part (flannel's job). Its reconcile loop runs on a thread of its own
//! with its own tokio runtime, driven by lease and peer changes (the overlay agent's
//! watch); the runtime's syncs read its health and stop the agent if it stopped.
//! (The loop still has its own resync timer: folding it into the runtime's schedule is
//! future work.)
//!
//! Two ways to get this node's subnet, as flanneld has:
//!
//! - `--subnet-store kube` (flannel's `--kube-subnet-mgr`): the cluster allocates pod
//!   CIDRs; this node's subnet is its `spec.podCIDR`, its lease is published as Node
//!   annotations and peers are read from the other Nodes
//!   ([`twill_kube_source::subnet`]). The loop below is the overlay agent's sync loop
//!   with that lease source: plan the backend's kernel state from the peers, reconcile
//!   it through netlink, on every peer change and every resync period.
//! - `--subnet-store embedded[:PATH]|etcd:URL`: the lease store of `twill overlay`; the
//!   overlay agent (`twill_overlay_agent::run_agent`) runs unchanged.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use rtnetlink::Handle;
use tokio::sync::watch;
use twill_kube_source::subnet::{NodeLease, own_subnet, peer_leases};
use twill_netlink::{Scope, describe_underlay, reconcile};
use twill_overlay::backend::{OwnLease, PeerTable, plan_backend};
use twill_overlay::{BackendKind, LeaseAttrs, NetworkConfig, SubnetKey};
use twill_overlay_agent::{
    AgentOptions, HealthState, StoreSpec, apply_masquerade, existing_or_new_mac, write_subnet_files,
};

/// Where this node's subnet comes from (`--subnet-store`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubnetStore {
    /// `kube`: Node `spec.podCIDR` and `flannel.alpha.coreos.com/*` annotations.
    Kube,
    /// `embedded[:PATH]` or `etcd:URL`: the overlay agent's lease store.
    Leases(StoreSpec),
}

pub fn parse_subnet_store(s: &str) -> Result<SubnetStore, String> {
    if s == "kube" {
        return Ok(SubnetStore::Kube);
    }
    if s == "embedded" {
        return Ok(SubnetStore::Leases(StoreSpec::Embedded(
            "/var/lib/twill/overlay/leases.json".into(),
        )));
    }
    if let Some(path) = s.strip_prefix("embedded:") {
        return Ok(SubnetStore::Leases(StoreSpec::Embedded(path.into())));
    }
    if let Some(url) = s.strip_prefix("etcd:") {
        // `etcd:http://HOST:PORT`, or `etcd://HOST:PORT` as `twill overlay --store` takes.
        let endpoint = if url.starts_with("//") {
            s.to_string()
        } else {
            url.to_string()
        };
        return Ok(SubnetStore::Leases(StoreSpec::Etcd {
            endpoint,
            prefix: twill_overlay::lease::DEFAULT_PREFIX.into(),
        }));
    }
    Err(format!(
        "--subnet-store {s:?}: expected kube, embedded, embedded:PATH or etcd:URL"
    ))
}

/// How the part reports on itself: the overlay agent's health fields.
#[derive(Clone)]
enum HealthSource {
    Agent(twill_overlay_agent::Health),
    Local(Arc<Mutex<HealthState>>),
}

/// The running part.
pub struct PodNetwork {
    health: HealthSource,
    stop: watch::Sender<bool>,
    done: std::sync::mpsc::Receiver<anyhow::Result<()>>,
}

impl PodNetwork {
    pub fn health(&self) -> HealthState {
        match &self.health {
            HealthSource::Agent(h) => h.get(),
            HealthSource::Local(h) => h.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }

    /// Whether the data plane is converged (the lease is held and the last sync
    /// reached the kernel).
    pub fn is_healthy(&self) -> bool {
        let h = self.health();
        h.store_reachable && h.last_error.is_none() && h.subnet.is_some()
    }

    /// `Some` once the part has stopped (always with an error: it runs until told to
    /// stop).
    pub fn stopped(&self) -> Option<anyhow::Error> {
        match self.done.try_recv() {
            Ok(Err(e)) => Some(e),
            Ok(Ok(())) => Some(anyhow::anyhow!("the pod network part stopped")),
            Err(std::sync::mpsc::TryRecvError::Empty) => None,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                Some(anyhow::anyhow!("the pod network part panicked"))
            }
        }
    }
}

impl Drop for PodNetwork {
    /// Stop the loop and give it a moment to finish its current step, so a SIGTERM never
    /// cuts a netlink batch or a lease write in half.
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        let _ = self.done.recv_timeout(Duration::from_secs(5));
    }
}

/// Start the part on its own thread with its own runtime. `net_conf` (flannel's
/// net-conf.json) is needed with the kube store; a lease store may hold it instead.
pub fn start(
    store: SubnetStore,
    net_conf: Option<String>,
    opts: AgentOptions,
    kubeconfig: Option<PathBuf>,
    node: String,
) -> anyhow::Result<PodNetwork> {
    let config = match (&net_conf, &store) {
        (Some(text), _) => {
            Some(NetworkConfig::parse("net-conf", text).context("the network config")?)
        }
        (None, SubnetStore::Kube) => bail!("the kube subnet store needs a network config"),
        (None, SubnetStore::Leases(_)) => None,
    };
    let (stop, stop_rx) = watch::channel(false);
    let (done_tx, done) = std::sync::mpsc::channel();
    let health = match &store {
        SubnetStore::Kube => HealthSource::Local(Default::default()),
        SubnetStore::Leases(_) => HealthSource::Agent(Default::default()),
    };
    let h = health.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("pod-network".into())
        .spawn(move || {
            let result = runtime.block_on(async move {
                let (conn, handle, _) =
                    rtnetlink::new_connection().context("opening a netlink socket")?;
                tokio::spawn(conn);
                match (store, h) {
                    (SubnetStore::Leases(spec), HealthSource::Agent(health)) => {
                        let mut s = spec.open(net_conf.as_deref()).await?;
                        twill_overlay_agent::run_agent(&mut s, &opts, &handle, &health, stop_rx)
                            .await?;
                        Ok(())
                    }
                    (SubnetStore::Kube, HealthSource::Local(health)) => {
                        let client = twill_kube_source::client(kubeconfig.as_deref()).await?;
                        let config = config.expect("checked above");
                        run_kube(client, &node, &config, &opts, &handle, &health, stop_rx).await
                    }
                    _ => unreachable!("health follows the store"),
                }
            });
            let _ = done_tx.send(result);
        })?;
    Ok(PodNetwork { health, stop, done })
}

/// The kube subnet manager loop. Returns only when stopped or on a fatal error.
async fn run_kube(
    client: twill_kube_source::Client,
    node: &str,
    config: &NetworkConfig,
    opts: &AgentOptions,
    handle: &Handle,
    health: &Arc<Mutex<HealthState>>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let update =
        |f: &dyn Fn(&mut HealthState)| f(&mut health.lock().unwrap_or_else(|p| p.into_inner()));
    let kind = config.backend_kind()?;
    if kind == BackendKind::Udp {
        bail!(
            "the udp backend needs a lease store (--subnet-store embedded or etcd): its relay is \
             not run with the kube subnet manager"
        );
    }
    let underlay = describe_underlay(handle, &opts.iface)
        .await
        .context("describing the external interface")?;
    let spec = twill_overlay_agent::node_spec(&underlay, opts.public_ip);
    let device = format!("flannel.{}", config.vni());
    let vtep_mac = match kind {
        BackendKind::Vxlan => Some(existing_or_new_mac(handle, config, &spec, &device).await?),
        _ => None,
    };
    let attrs = LeaseAttrs::for_backend(kind, spec.public_ip, None, config.vni(), vtep_mac, None);
    let mut devices: std::collections::BTreeSet<String> =
        [spec.ext_iface.clone(), device.clone()].into();
    devices.retain(|d| !d.is_empty());

    let mut nodes = std::pin::pin!(twill_kube_source::watch_node_leases(client.clone()));
    let mut latest: Option<Vec<NodeLease>> = None;
    let mut own: Option<SubnetKey> = None;
    let mut tick = tokio::time::interval(opts.resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            item = nodes.next() => match item {
                Some(Ok(list)) => latest = Some(list),
                Some(Err(e)) => {
                    // Logged by the watcher's consumer here; it retries by itself.
                    tracing::warn!(error = %e, "watching Nodes; retrying");
                    update(&|h| { h.store_reachable = false; h.last_error = Some(e.to_string()); });
                    continue;
                }
                None => bail!("the Node watch ended"),
            },
            _ = tick.tick() => {}
            _ = stop.changed() => return Ok(()),
        }
        let Some(list) = &latest else { continue };
        let Some(me) = list.iter().find(|n| n.node == node) else {
            tracing::warn!(node, "this node's Node object is not in the API (yet)");
            update(&|h| {
                h.store_reachable = true;
                h.last_error = Some(format!("Node {node} not found"));
            });
            continue;
        };
        let subnet = match own_subnet(me) {
            // Only containment: the cluster allocates, so the config's SubnetLen and
            // SubnetMin/Max (the lease allocator's bounds) do not apply.
            Ok(s) if config.network.contains(&s.ipv4) => s,
            Ok(s) => {
                let e = format!(
                    "Node {node}: spec.podCIDR {} is outside the network {} of the network config",
                    s.ipv4, config.network
                );
                tracing::error!("{e}");
                update(&|h| h.last_error = Some(e.clone()));
                continue;
            }
            Err(e) => {
                tracing::warn!("{e}");
                update(&|h| h.last_error = Some(e.to_string()));
                continue;
            }
        };
        match own {
            Some(held) if held != subnet => bail!(
                "Node {node}: spec.podCIDR changed from {} to {}; restart the agent (pods keep \
                 addresses of the old subnet)",
                held.ipv4,
                subnet.ipv4
            ),
            Some(_) => {}
            None => {
                write_subnet_files(opts, config, kind, subnet, &spec)?;
                apply_masquerade(opts, config, subnet)?;
                tracing::info!(subnet = %subnet.ipv4, public_ip = %spec.public_ip, backend = kind.name(), "pod CIDR from the Node");
                own = Some(subnet);
                update(&|h| h.subnet = Some(subnet.ipv4.to_string()));
            }
        }
        match twill_kube_source::publish_node_lease(client.clone(), me, &attrs).await {
            Ok(true) => tracing::info!(node, "lease published in the Node's annotations"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "publishing the lease; retrying on the next pass");
                update(&|h| h.last_error = Some(e.to_string()));
                continue;
            }
        }
        let (leases, problems) = peer_leases(list, node);
        for p in &problems {
            tracing::warn!("{p}; peer skipped");
        }
        let peers = PeerTable::from_leases(&leases);
        let plan = plan_backend(config, &spec, &OwnLease { subnet, vtep_mac }, &peers)?;
        for p in &plan.problems {
            tracing::warn!(peer = %p.subnet.segment(), "{}", p.message);
        }
        let scope = Scope {
            network: config.network,
            keep: vec![subnet.ipv4],
            devices: devices.clone(),
        };
        let result = reconcile(handle, &plan.state, &scope).await;
        let sysctl = twill_netlink::apply_sysctls(&plan.state.sysctls);
        let err = match (&result, &sysctl) {
            (Err(e), _) => Some(e.to_string()),
            (_, Err(e)) => Some(e.to_string()),
            _ => None,
        };
        if let Some(e) = &err {
            tracing::error!(error = %e, "pod network did not converge");
        }
        let changes = result.as_ref().map(|p| p.len()).unwrap_or(0);
        tracing::info!(peers = peers.len(), changes, "pod network sync");
        let mut messages: Vec<String> = plan.problems.iter().map(|p| p.message.clone()).collect();
        messages.extend(problems.iter().map(ToString::to_string));
        update(&|h| {
            h.store_reachable = true;
            h.peers = peers.len();
            h.syncs += 1;
            h.last_sync_changes = changes;
            h.total_changes += changes;
            h.last_error = err.clone();
            h.problems = messages.clone();
        });
    }
}

/// The part as the runtime sees it.
pub struct PodNetworkPart {
    inner: PodNetwork,
}

impl PodNetworkPart {
    pub fn new(inner: PodNetwork) -> Self {
        PodNetworkPart { inner }
    }

    pub fn health(&self) -> HealthState {
        self.inner.health()
    }

    pub(crate) fn sync(&mut self) -> Result<bool, super::PartError> {
        if let Some(e) = self.inner.stopped() {
            return Err(super::PartError::fatal(format!(
                "the pod network part: {e:#}"
            )));
        }
        if self.inner.is_healthy() {
            return Ok(false);
        }
        let h = self.inner.health();
        Err(super::PartError::retry(match (&h.subnet, &h.last_error) {
            (None, _) => "the pod network has no subnet lease yet".to_string(),
            (_, Some(e)) => format!("the pod network did not converge: {e}"),
            _ => "the lease store is not reachable".to_string(),
        }))
    }

    pub(crate) fn summary(&self) -> String {
        let h = self.inner.health();
        format!("pod network {} peers", h.peers)
    }
}

/// Default resync when none is given: the overlay agent's.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_store_takes_kube_embedded_and_etcd_spellings() {
        assert_eq!(parse_subnet_store("kube"), Ok(SubnetStore::Kube));
        assert_eq!(
            parse_subnet_store("embedded:/tmp/l.json"),
            Ok(SubnetStore::Leases(StoreSpec::Embedded(
                "/tmp/l.json".into()
            )))
        );
        let etcd = |e: &str| {
            Ok(SubnetStore::Leases(StoreSpec::Etcd {
                endpoint: e.into(),
                prefix: "/coreos.com/network".into(),
            }))
        };
        assert_eq!(
            parse_subnet_store("etcd:http://10.0.0.1:2379"),
            etcd("http://10.0.0.1:2379")
        );
        assert_eq!(
            parse_subnet_store("etcd://10.0.0.1:2379"),
            etcd("etcd://10.0.0.1:2379")
        );
        assert!(parse_subnet_store("consul:x").is_err());
    }
}
