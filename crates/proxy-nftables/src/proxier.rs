//! The nftables-mode applier: one `nft -f -` transaction per sync, in the calling
//! thread's network namespace.
//!
//! The first sync (and a periodic one, every `sync_period`) is full: it reads the
//! table's chains and sets with `nft list table` and rewrites everything in place,
//! deleting stale service chains and affinity sets, or builds the table from scratch
//! when it is missing. Every other sync applies [`diff_script`]: only the map elements,
//! chains and sets of services that changed. A failed incremental transaction is
//! retried at once as a full one; a failed in-place full one as a rebuild (delete and
//! recreate the table). The change tracker only advances on success, so nothing is lost,
//! and a failure forces the next sync to be full. Only table `kube-proxy` of the
//! proxier's family is ever touched.

#![allow(clippy::disallowed_methods)] // the applier: I/O and the clock are its job

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{
    Config, Desired, Existing, TABLE, diff_script, full_script, parse_existing, render,
    render_changed,
};
use twill_model::{ClusterState, IpFamily};
use twill_proxy_core::{ChangeTracker, ModelConfig, ProxyModel, StaleConntrack, SyncChanges};

use twill_proxy::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NftSyncError {
    #[error("nft -f ({kind} sync) failed: {source}")]
    Apply {
        kind: &'static str,
        #[source]
        source: twill_netfilter::Error,
    },
    #[error("listing table {TABLE}: {0}")]
    List(#[source] twill_netfilter::Error),
}

/// Where transactions go: the kernel or a test double.
pub trait NftBackend {
    fn apply(&mut self, script: &str) -> Result<(), twill_netfilter::Error>;
    /// `nft list table FAMILY kube-proxy`, or `None` when the table does not exist.
    fn list_table(&mut self, family: IpFamily) -> Result<Option<String>, twill_netfilter::Error>;
    fn clear_conntrack(
        &mut self,
        stale: &[StaleConntrack],
    ) -> Result<usize, twill_proxy::conntrack::ConntrackError>;
}

/// The real kernel, in the calling thread's network namespace.
#[derive(Debug, Clone, Copy, Default)]
pub struct NftKernel;

pub(crate) fn nft_family(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
    }
}

impl NftBackend for NftKernel {
    fn apply(&mut self, script: &str) -> Result<(), twill_netfilter::Error> {
        twill_netfilter::nft_apply(script)
    }
    fn list_table(&mut self, family: IpFamily) -> Result<Option<String>, twill_netfilter::Error> {
        match twill_netfilter::run_with_input(
            "nft",
            &["list", "table", nft_family(family), TABLE],
            b"",
        ) {
            Ok(text) => Ok(Some(text)),
            Err(twill_netfilter::Error::Failed { stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
    fn clear_conntrack(
        &mut self,
        stale: &[StaleConntrack],
    ) -> Result<usize, twill_proxy::conntrack::ConntrackError> {
        twill_proxy::conntrack::clear_stale(stale)
    }
}

/// What one sync did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftSyncReport {
    pub full: bool,
    pub services_changed: usize,
    /// Size of the transaction applied.
    pub script_bytes: usize,
    /// Lines (nft commands) in the transaction.
    pub commands: usize,
    /// Per-service chains, rules and map elements of the whole table.
    pub chains: usize,
    pub rules: usize,
    pub elements: usize,
    pub stale_udp: Vec<StaleConntrack>,
    pub skipped_services: usize,
    pub duration: Duration,
}

pub struct NftProxier<B: NftBackend> {
    model_config: ModelConfig,
    config: Config,
    sync_period: Duration,
    pub metrics: Metrics,
    backend: B,
    tracker: ChangeTracker,
    desired: Option<Desired>,
    need_full_sync: bool,
    last_full: Option<Instant>,
    last_success: Option<Instant>,
}

impl<B: NftBackend> NftProxier<B> {
    pub fn new(
        model_config: ModelConfig,
        config: Config,
        sync_period: Duration,
        backend: B,
    ) -> Self {
        NftProxier {
            model_config,
            config,
            sync_period,
            metrics: Metrics::new(),
            backend,
            tracker: ChangeTracker::new(),
            desired: None,
            need_full_sync: true,
            last_full: None,
            last_success: None,
        }
    }

    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// The model of the last successful sync.
    pub fn synced_model(&self) -> Option<&ProxyModel> {
        self.tracker.last()
    }

    /// Time of the last successful sync (for /healthz).
    pub fn last_success(&self) -> Option<Instant> {
        self.last_success
    }

    /// Force the next sync to be full.
    pub fn request_full_sync(&mut self) {
        self.need_full_sync = true;
    }

    /// Full transaction: in place when the table exists, else a rebuild. On failure of
    /// the in-place one, a rebuild.
    fn apply_full(&mut self, desired: &Desired) -> Result<String, NftSyncError> {
        let existing: Option<Existing> = self
            .backend
            .list_table(self.config.family)
            .map_err(NftSyncError::List)?
            .map(|t| parse_existing(&t));
        let script = full_script(desired, existing.as_ref());
        match self.backend.apply(&script) {
            Ok(()) => Ok(script),
            Err(e) if existing.is_some() => {
                self.metrics.restore_failures.inc();
                tracing::warn!(error = %e, "in-place full nft sync failed; rebuilding the table");
                let script = full_script(desired, None);
                self.backend
                    .apply(&script)
                    .map(|()| script)
                    .map_err(|source| NftSyncError::Apply {
                        kind: "rebuild",
                        source,
                    })
            }
            Err(source) => Err(NftSyncError::Apply {
                kind: "full",
                source,
            }),
        }
    }

    /// Who this proxier models the cluster for.
    pub fn model_config(&self) -> &ModelConfig {
        &self.model_config
    }

    /// Bring the kernel in line with `state`. `now` drives the periodic full resync.
    /// Returns `None` when nothing changed and no full sync was due.
    pub fn sync(
        &mut self,
        state: &ClusterState,
        now: Instant,
    ) -> Result<Option<NftSyncReport>, NftSyncError> {
        let t = Instant::now();
        let (model, skipped) =
            twill_proxy::metrics::node_model(state, &self.model_config, &self.metrics);
        let built = t.elapsed();
        Ok(self.sync_model(model, now)?.map(|mut r| {
            r.skipped_services = skipped;
            r.duration += built;
            r
        }))
    }

    /// [`Self::sync`] from a model already built for this node (with
    /// `self.model_config` and [`twill_proxy::metrics::node_model`], which counts what it
    /// skipped). The same `Arc` again costs no diff: only a due full sync writes.
    pub fn sync_model(
        &mut self,
        model: Arc<ProxyModel>,
        now: Instant,
    ) -> Result<Option<NftSyncReport>, NftSyncError> {
        let started = Instant::now();
        let periodic = self
            .last_full
            .is_none_or(|t| now.duration_since(t) >= self.sync_period);
        let mut full = self.need_full_sync || periodic || self.desired.is_none();
        let changes = if self.tracker.is_last(&model) {
            SyncChanges::default()
        } else {
            self.tracker.diff(&model)
        };
        if !full && changes.is_empty() {
            return Ok(None);
        }
        let desired = match (&self.desired, full) {
            (Some(prev), false) => render_changed(&self.config, &model, prev, &changes.services),
            _ => render(&self.config, &model),
        };
        let applied = if full {
            self.apply_full(&desired)
        } else {
            let prev = self
                .desired
                .as_ref()
                .expect("partial syncs have a previous state");
            match diff_script(prev, &desired) {
                None => Ok(String::new()),
                Some(script) => match self.backend.apply(&script) {
                    Ok(()) => Ok(script),
                    Err(e) => {
                        self.metrics.restore_failures.inc();
                        self.metrics.partial_restore_failures.inc();
                        tracing::warn!(error = %e, "incremental nft sync failed; full sync");
                        full = true;
                        self.apply_full(&desired)
                    }
                },
            }
        };
        let script = match applied {
            Ok(s) => s,
            Err(e) => {
                self.metrics.restore_failures.inc();
                self.need_full_sync = true;
                tracing::error!(error = %e, "nft sync failed; next sync is full");
                return Err(e);
            }
        };
        if full {
            self.last_full = Some(now);
        }
        self.need_full_sync = false;
        let stale: Vec<StaleConntrack> = changes.stale_udp.iter().cloned().collect();
        self.metrics.stale_conntrack.inc_by(stale.len() as u64);
        // After the rules: new packets must already take the new path.
        match self.backend.clear_conntrack(&stale) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(entries = n, "deleted stale UDP conntrack entries"),
            Err(e) => tracing::warn!(error = %e, "could not delete stale UDP conntrack entries"),
        }
        self.tracker.commit(model);
        self.last_success = Some(now);
        if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            self.metrics.last_sync_timestamp.set(t.as_secs() as i64);
        }
        let d = started.elapsed();
        self.metrics.sync_duration.observe(d.as_secs_f64());
        if full {
            self.metrics.sync_full_duration.observe(d.as_secs_f64());
        } else {
            self.metrics.sync_partial_duration.observe(d.as_secs_f64());
        }
        let (no_local_internal, no_local_external) = desired.no_local_endpoints();
        for (p, v) in [
            ("internal", no_local_internal),
            ("external", no_local_external),
        ] {
            self.metrics
                .no_local_endpoints
                .get_or_create(&vec![("traffic_policy".to_string(), p.to_string())])
                .set(v as i64);
        }
        let (chains, rules, elements) = desired.counts();
        let kind = if full { "full" } else { "partial" };
        let commands = script.lines().count();
        tracing::info!(
            kind,
            services_changed = changes.services.len(),
            commands,
            ms = d.as_secs_f64() * 1000.0,
            "synced nftables rules"
        );
        self.desired = Some(desired);
        Ok(Some(NftSyncReport {
            full,
            services_changed: changes.services.len(),
            script_bytes: script.len(),
            commands,
            chains,
            rules,
            elements,
            stale_udp: stale,
            skipped_services: 0,
            duration: d,
        }))
    }
}

/// Every address of `family` on this namespace's interfaces (what `nodeport-ips` is
/// chosen from; nftables has no `--dst-type LOCAL` shortcut for a set).
pub fn local_addresses(family: IpFamily) -> Vec<std::net::IpAddr> {
    let mut out: Vec<std::net::IpAddr> = match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => addrs
            .filter_map(|a| a.address)
            .filter_map(|sa| {
                if let Some(v4) = sa.as_sockaddr_in() {
                    Some(std::net::IpAddr::V4(v4.ip()))
                } else {
                    sa.as_sockaddr_in6().map(|v6| std::net::IpAddr::V6(v6.ip()))
                }
            })
            .filter(|ip| IpFamily::of(ip) == family)
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "could not list local addresses");
            Vec::new()
        }
    };
    out.sort();
    out.dedup();
    out
}
