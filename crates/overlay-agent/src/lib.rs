//! The overlay agent: what flanneld does on a node, wired from Twill's parts.
//!
//! 1. Read the network config from the lease store; describe the external interface.
//! 2. vxlan: reuse the existing `flannel.<VNI>` device's MAC (so a restarted agent keeps the
//!    VtepMAC its peers already programmed), else pick one.
//! 3. Acquire a lease ([`twill_overlay::alloc::plan_allocation`]): our previous live lease,
//!    else the subnet of the previous subnet.env, else a free one; create-if-absent, and
//!    retry when another node won the race.
//! 4. Write subnet.env (and the twill-bridge CNI config when asked), masquerade rules.
//! 5. Loop: renew before expiry; list leases; plan the backend's kernel state; reconcile it
//!    through netlink. A store that cannot be reached leaves the data plane as it is, and
//!    the agent retries with backoff, logging it and saying so in [`Health`]. Losing the own
//!    lease stops the agent (flannel: "Lease has been revoked").
//!
//! Each pass recomputes the whole desired state and diffs it, so a restarted agent adopts
//! what the kernel already holds without deleting and re-adding anything.

pub mod udp;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rtnetlink::Handle;
use tokio::sync::watch;
use twill_lease::Store;
use twill_netlink::{Scope, describe_underlay, observe, reconcile};
use twill_overlay::alloc::plan_allocation;
use twill_overlay::backend::{NodeSpec, OwnLease, PeerTable, UnderlayRoute, plan_backend};
use twill_overlay::masq::{MasqOptions, render_masquerade, render_restore};
use twill_overlay::renewal::{RETRY_AFTER_FAILURE_SECS, plan_renewal};
use twill_overlay::subnet_env::{SubnetEnv, previous_subnet, render_cni_config, render_subnet_env};
use twill_overlay::{BackendKind, LEASE_TTL_SECS, LeaseAttrs, Mac, NetworkConfig, SubnetKey};

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("network config: {0}")]
    Config(#[source] twill_overlay::Error),
    #[error("lease store: {0}")]
    Store(#[source] twill_lease::Error),
    #[error("kernel: {0}")]
    Netlink(#[source] twill_netlink::Error),
    #[error("{path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("lease {key} has been revoked (deleted or expired); stopping")]
    LeaseRevoked { key: String },
    #[error("subnet allocation: {0}")]
    Allocation(#[source] twill_overlay::Error),
    #[error("{0}")]
    Backend(#[source] twill_overlay::Error),
    #[error("masquerade rules: {0}")]
    Netfilter(#[source] twill_netfilter::Error),
    #[error("udp backend: starting the relay (TUN {tun}, UDP {listen}): {source}")]
    UdpRelay {
        tun: String,
        listen: String,
        #[source]
        source: std::io::Error,
    },
}

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The external interface, as flanneld's `--iface`, `--iface-regex` and
    /// `--iface-can-reach` choose it (none given: the default route's).
    pub iface: twill_netlink::IfaceChoice,
    /// `--public-ip`: the address peers reach this node at (default: the interface's).
    /// host-gw refuses one that differs from the interface's (a node behind NAT).
    pub public_ip: Option<std::net::Ipv4Addr>,
    pub ip_masq: bool,
    pub masq_random_fully: bool,
    pub forward_rules: bool,
    pub subnet_env_path: PathBuf,
    /// Write a twill-bridge CNI config here too.
    pub cni_conf_path: Option<PathBuf>,
    pub renew_margin_minutes: u32,
    /// Full reconcile (and, for the embedded store, lease poll) interval.
    pub resync: Duration,
    /// Lease lifetime (24 h in production; tests shorten it).
    pub lease_ttl: u64,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            iface: twill_netlink::IfaceChoice::default(),
            public_ip: None,
            ip_masq: false,
            masq_random_fully: true,
            forward_rules: true,
            subnet_env_path: twill_overlay::subnet_env::SUBNET_ENV_PATH.into(),
            cni_conf_path: None,
            renew_margin_minutes: twill_overlay::renewal::DEFAULT_RENEW_MARGIN_MINUTES,
            resync: Duration::from_secs(10),
            lease_ttl: LEASE_TTL_SECS,
        }
    }
}

/// What the agent reports about itself (for a health endpoint and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthState {
    pub subnet: Option<String>,
    pub store_reachable: bool,
    pub last_error: Option<String>,
    pub peers: usize,
    pub syncs: u64,
    /// Kernel changes made by the last sync (0 when the kernel already matched).
    pub last_sync_changes: usize,
    /// Kernel changes made since the agent started.
    pub total_changes: usize,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Health(Arc<Mutex<HealthState>>);

impl Health {
    /// The body and status of the health endpoint.
    pub fn render(&self) -> (u16, String) {
        let h = self.get();
        let ok = h.store_reachable && h.last_error.is_none();
        let body = serde_json::json!({
            "ok": ok,
            "subnet": h.subnet,
            "storeReachable": h.store_reachable,
            "lastError": h.last_error,
            "peers": h.peers,
            "syncs": h.syncs,
            "lastSyncChanges": h.last_sync_changes,
            "problems": h.problems,
        });
        (if ok { 200 } else { 503 }, body.to_string())
    }

    pub fn get(&self) -> HealthState {
        self.0.lock().expect("health lock").clone()
    }

    fn update(&self, f: impl FnOnce(&mut HealthState)) {
        f(&mut self.0.lock().expect("health lock"));
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Run until `stop` turns true or a fatal error. Runs in the calling thread's netns.
pub async fn run_agent(
    store: &mut Store,
    opts: &AgentOptions,
    handle: &Handle,
    health: &Health,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Error> {
    let mut backoff = Duration::from_secs(1);
    let config_text = loop {
        match store.config().await {
            Ok(t) => break t,
            Err(e) => {
                if store_backoff(health, &mut stop, &mut backoff, e).await? {
                    return Ok(());
                }
            }
        }
    };
    let config = NetworkConfig::parse("network config", &config_text).map_err(Error::Config)?;
    let kind = config.backend_kind().map_err(Error::Config)?;
    let underlay = describe_underlay(handle, &opts.iface)
        .await
        .map_err(Error::Netlink)?;
    let node = node_spec(&underlay, opts.public_ip);
    let device = format!("flannel.{}", config.vni());
    let vtep_mac = match kind {
        BackendKind::Vxlan => Some(existing_or_new_mac(handle, &config, &node, &device).await?),
        _ => None,
    };
    let attrs = LeaseAttrs::for_backend(kind, node.public_ip, None, config.vni(), vtep_mac, None);

    let Some((own_key, mut expires_at)) =
        acquire(store, opts, health, &mut stop, &config, &node, &attrs).await?
    else {
        return Ok(());
    };
    tracing::info!(subnet = %own_key.ipv4, public_ip = %node.public_ip, backend = kind.name(), "lease acquired");
    health.update(|h| h.subnet = Some(own_key.ipv4.to_string()));
    write_subnet_files(opts, &config, kind, own_key, &node)?;
    apply_masquerade(opts, &config, own_key)?;

    let own = OwnLease {
        subnet: own_key,
        vtep_mac,
    };
    let relay = match kind {
        BackendKind::Udp => {
            let listen = std::net::SocketAddrV4::new(node.public_ip, config.port(kind));
            let mtu = config.pod_mtu(kind, node.ext_mtu) as usize;
            let r = udp::UdpRelay::start("flannel0", listen, mtu).map_err(|source| {
                Error::UdpRelay {
                    tun: "flannel0".into(),
                    listen: listen.to_string(),
                    source,
                }
            })?;
            Some(r)
        }
        _ => None,
    };
    let mut devices: std::collections::BTreeSet<String> =
        [node.ext_iface.clone(), device.clone(), "flannel0".into()].into();
    devices.retain(|d| !d.is_empty());
    let scope = Scope {
        network: config.network,
        keep: vec![own_key.ipv4],
        devices,
    };
    let mut renew_at = renew_time(expires_at, opts);
    let mut backoff = Duration::from_secs(1);
    let mut revision = 0;
    loop {
        let t = now();
        if t >= renew_at {
            match store.update(own_key, &attrs, opts.lease_ttl, t).await {
                Ok(e) => {
                    expires_at = e;
                    renew_at = renew_time(expires_at, opts);
                    tracing::info!(subnet = %own_key.ipv4, expires_at, "lease renewed");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lease renewal failed; retrying in 1 min");
                    renew_at = t + RETRY_AFTER_FAILURE_SECS;
                }
            }
        }
        let wait = match store.list(now()).await {
            Ok(listing) => {
                revision = listing.revision;
                if !listing
                    .leases
                    .iter()
                    .any(|l| l.subnet == own_key && l.attrs.public_ip == node.public_ip)
                {
                    return Err(Error::LeaseRevoked {
                        key: own_key.segment(),
                    });
                }
                for (key, why) in &listing.skipped {
                    tracing::warn!(key, error = %why, "corrupt lease skipped");
                }
                let peers =
                    PeerTable::from_leases(listing.leases.iter().filter(|l| l.subnet != own_key));
                let plan = plan_backend(&config, &node, &own, &peers).map_err(Error::Backend)?;
                for p in &plan.problems {
                    tracing::warn!(peer = %p.subnet.segment(), "{}", p.message);
                }
                if let (Some(r), Some(u)) = (&relay, &plan.state.udp) {
                    r.set_peers(&u.peers);
                }
                let result = reconcile(handle, &plan.state, &scope).await;
                let sysctl = twill_netlink::apply_sysctls(&plan.state.sysctls);
                let err = match (&result, &sysctl) {
                    (Err(e), _) => Some(e.to_string()),
                    (_, Err(e)) => Some(e.to_string()),
                    _ => None,
                };
                if let Some(e) = &err {
                    tracing::error!(error = %e, "data plane did not converge");
                }
                let changes = result.as_ref().map(|p| p.len()).unwrap_or(0);
                tracing::info!(peers = peers.len(), changes, "sync");
                health.update(|h| {
                    h.store_reachable = true;
                    h.peers = peers.len();
                    h.syncs += 1;
                    h.last_sync_changes = changes;
                    h.total_changes += changes;
                    h.last_error = err;
                    h.problems = plan.problems.iter().map(|p| p.message.clone()).collect();
                });
                backoff = Duration::from_secs(1);
                opts.resync
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "lease store unreachable; data plane left as is");
                health.update(|h| {
                    h.store_reachable = false;
                    h.last_error = Some(e.to_string());
                });
                let w = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                w
            }
        };
        let until_renew = Duration::from_secs(renew_at.saturating_sub(now()));
        let wait = wait.min(until_renew.max(Duration::from_millis(200)));
        tokio::select! {
            r = store.wait_change(revision, wait) => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "lease watch failed; polling");
                    tokio::time::sleep(wait).await;
                }
            }
            _ = stop.changed() => return Ok(()),
        }
        if *stop.borrow() {
            return Ok(());
        }
    }
}

fn renew_time(expires_at: u64, opts: &AgentOptions) -> u64 {
    // A margin longer than a (shortened, test) TTL would renew continuously: cap it at half.
    let margin_secs = u64::from(opts.renew_margin_minutes) * 60;
    if margin_secs >= opts.lease_ttl {
        return expires_at.saturating_sub(opts.lease_ttl / 2);
    }
    plan_renewal(expires_at, opts.renew_margin_minutes)
        .map(|p| p.renew_at)
        .unwrap_or(expires_at.saturating_sub(opts.lease_ttl / 2))
}

/// After a failed store call: fatal errors pass through; for an unreachable store, log,
/// mark health, wait with backoff. Ok(true) when stopped meanwhile.
async fn store_backoff(
    health: &Health,
    stop: &mut watch::Receiver<bool>,
    backoff: &mut Duration,
    e: twill_lease::Error,
) -> Result<bool, Error> {
    if !e.is_unavailable() {
        return Err(Error::Store(e));
    }
    tracing::warn!(error = %e, retry_in = ?*backoff, "lease store unreachable");
    health.update(|h| {
        h.store_reachable = false;
        h.last_error = Some(e.to_string());
    });
    let stopped = tokio::select! {
        _ = tokio::time::sleep(*backoff) => false,
        _ = stop.changed() => true,
    };
    *backoff = (*backoff * 2).min(Duration::from_secs(30));
    Ok(stopped)
}

/// The existing vxlan device's MAC (peers already route to it), else a new one.
pub async fn existing_or_new_mac(
    handle: &Handle,
    config: &NetworkConfig,
    node: &NodeSpec,
    device: &str,
) -> Result<Mac, Error> {
    let scope = Scope {
        network: config.network,
        keep: vec![],
        devices: Default::default(),
    };
    let observed = observe(handle, &scope).await.map_err(Error::Netlink)?;
    if let Some(mac) = observed.links.get(device).and_then(|l| l.mac) {
        return Ok(mac);
    }
    let seed = now() ^ (u64::from(std::process::id()) << 32) ^ u64::from(u32::from(node.public_ip));
    Ok(Mac::from_seed(seed))
}

#[allow(clippy::too_many_arguments)]
async fn acquire(
    store: &mut Store,
    opts: &AgentOptions,
    health: &Health,
    stop: &mut watch::Receiver<bool>,
    config: &NetworkConfig,
    node: &NodeSpec,
    attrs: &LeaseAttrs,
) -> Result<Option<(SubnetKey, u64)>, Error> {
    let previous = std::fs::read_to_string(&opts.subnet_env_path)
        .ok()
        .as_deref()
        .and_then(previous_subnet);
    let mut attempt = 0u64;
    loop {
        let mut backoff = Duration::from_secs(1);
        let listing = loop {
            match store.list(now()).await {
                Ok(l) => break l,
                Err(e) => {
                    if store_backoff(health, stop, &mut backoff, e).await? {
                        return Ok(None);
                    }
                }
            }
        };
        let t = now();
        let seed = t ^ attempt.wrapping_mul(0x9e37_79b9) ^ u64::from(u32::from(node.public_ip));
        let plan = plan_allocation(config, node.public_ip, &listing.leases, previous, t, seed)
            .map_err(Error::Allocation)?;
        for k in &plan.delete {
            tracing::info!(key = %k.segment(), "deleting own lease that no longer fits the config");
            store.delete(*k, t).await.map_err(Error::Store)?;
        }
        if plan.reuses_existing {
            let e = store
                .update(plan.subnet, attrs, opts.lease_ttl, t)
                .await
                .map_err(Error::Store)?;
            return Ok(Some((plan.subnet, e)));
        }
        if let Some(e) = store
            .create(plan.subnet, attrs, opts.lease_ttl, t)
            .await
            .map_err(Error::Store)?
        {
            return Ok(Some((plan.subnet, e)));
        }
        tracing::debug!(subnet = %plan.subnet.ipv4, "subnet taken meanwhile; retrying");
        attempt += 1;
    }
}

fn write_file(path: &std::path::Path, text: &str) -> Result<(), Error> {
    let io = |source| Error::File {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// subnet.env (what the CNI plugin reads) and, when asked, a twill-bridge CNI config.
/// This node as the backends plan for it, from its external interface.
pub fn node_spec(
    underlay: &twill_netlink::Underlay,
    public_ip: Option<std::net::Ipv4Addr>,
) -> NodeSpec {
    NodeSpec {
        public_ip: public_ip.unwrap_or(underlay.address.addr()),
        ext_iface: underlay.name.clone(),
        ext_mtu: underlay.mtu,
        ext_address: underlay.address,
        underlay_routes: underlay
            .routes
            .iter()
            .map(|(dst, gw)| UnderlayRoute { dst: *dst, gw: *gw })
            .collect(),
    }
}

pub fn write_subnet_files(
    opts: &AgentOptions,
    config: &NetworkConfig,
    kind: BackendKind,
    own: SubnetKey,
    node: &NodeSpec,
) -> Result<(), Error> {
    let env = SubnetEnv::new(
        config,
        own,
        config.pod_mtu(kind, node.ext_mtu),
        opts.ip_masq,
    );
    write_file(&opts.subnet_env_path, &render_subnet_env(&env))?;
    if let Some(p) = &opts.cni_conf_path {
        let conf = render_cni_config(&env, "twill", "cni0");
        write_file(p, &serde_json::to_string_pretty(&conf).expect("json"))?;
    }
    Ok(())
}

/// Chains via one `iptables-restore --noflush`; each jump from a built-in chain appended
/// only when `iptables-save` does not show it yet (so re-running never duplicates it).
pub fn apply_masquerade(
    opts: &AgentOptions,
    config: &NetworkConfig,
    own: SubnetKey,
) -> Result<(), Error> {
    let rules = render_masquerade(
        config.network,
        own.ipv4,
        MasqOptions {
            ip_masq: opts.ip_masq,
            random_fully: opts.masq_random_fully,
            forward_rules: opts.forward_rules,
        },
    );
    let text = render_restore(&rules);
    if text.is_empty() {
        return Ok(());
    }
    use twill_netfilter::Family;
    twill_netfilter::iptables_restore(Family::V4, &text).map_err(Error::Netfilter)?;
    for (table, t) in [("nat", &rules.nat), ("filter", &rules.filter)] {
        if t.jumps.is_empty() {
            continue;
        }
        let saved =
            twill_netfilter::iptables_save(Family::V4, Some(table)).map_err(Error::Netfilter)?;
        let missing: Vec<&String> = t
            .jumps
            .iter()
            .filter(|j| !saved.lines().any(|l| l == j.as_str()))
            .collect();
        if !missing.is_empty() {
            let mut input = format!("*{table}\n");
            for j in missing {
                input += j;
                input.push('\n');
            }
            input += "COMMIT\n";
            twill_netfilter::iptables_restore(Family::V4, &input).map_err(Error::Netfilter)?;
        }
    }
    Ok(())
}

/// Where the leases live, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreSpec {
    Embedded(PathBuf),
    Etcd { endpoint: String, prefix: String },
}

impl StoreSpec {
    /// Open the store; with `config`, seed the network config (embedded: always; etcd:
    /// only when `<prefix>/config` is absent, so a running cluster's config wins).
    pub async fn open(&self, config: Option<&str>) -> Result<Store, Error> {
        match self {
            StoreSpec::Embedded(path) => {
                let s = twill_lease::EmbeddedStore::new(path);
                if let Some(text) = config {
                    s.set_config(text).map_err(Error::Store)?;
                }
                Ok(Store::Embedded(s))
            }
            StoreSpec::Etcd { endpoint, prefix } => {
                let mut s = twill_lease::EtcdStore::connect(endpoint, prefix)
                    .await
                    .map_err(Error::Store)?;
                if let Some(text) = config
                    && s.put_config_if_absent(text).await.map_err(Error::Store)?
                {
                    tracing::info!(prefix, "network config stored");
                }
                Ok(Store::Etcd(Box::new(s)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_unavailable_until_the_store_answered_and_after_a_store_error() {
        let h = Health::default();
        assert_eq!(h.render().0, 503);
        h.update(|s| s.store_reachable = true);
        let (code, body) = h.render();
        assert_eq!(code, 200);
        assert!(body.contains("\"storeReachable\":true"), "{body}");
        h.update(|s| {
            s.store_reachable = false;
            s.last_error = Some("etcd http://10.0.0.1:2379: connecting: refused".into());
        });
        let (code, body) = h.render();
        assert_eq!(code, 503);
        assert!(body.contains("refused"), "{body}");
    }

    #[test]
    fn short_test_ttls_renew_at_half_life_and_real_ones_at_the_margin() {
        let mut o = AgentOptions {
            lease_ttl: 4,
            ..AgentOptions::default()
        };
        assert_eq!(renew_time(100, &o), 98);
        o.lease_ttl = LEASE_TTL_SECS;
        assert_eq!(renew_time(100_000, &o), 100_000 - 3600);
    }
}
