//! The applier: one `iptables-restore --noflush` per sync, partial when it can be.
//!
//! Like upstream's `syncProxyRules`, a sync writes every top-level chain and the chains
//! of services that changed since the last successful sync; a full sync (the first, a
//! periodic one, after a failure, or when the canary chain vanished) writes everything
//! and deletes stale service chains found with `iptables-save`. A failed restore bumps
//! a counter and forces a full sync next time; the change tracker only advances on
//! success, so nothing is lost. Chains and tables Twill does not own are never flushed:
//! only `KUBE-*` chains are declared in the input. A sync that crosses upstream's
//! large-cluster threshold (endpoint comments dropped above 1000 endpoints) is full, so
//! no chain keeps the other form.
//!
//! Cost at 10k services × 10 endpoints: Twill's own share of a one-endpoint partial sync
//! is about 100 ms (model and diff, render, metrics); the rest is `iptables-restore`,
//! whose floor with `--noflush` is reading and rewriting the whole table (legacy) or
//! its cache (nft), about 1.1 s for legacy at that size whatever the input.

#![allow(clippy::disallowed_methods)] // the applier: I/O and the clock are its job

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{
    BaseJump, ChainDigests, Config, Rendered, ServiceChains, SyncMode, base_chain_jumps,
    large_cluster_mode, render,
};
use twill_model::{ClusterState, IpFamily};
use twill_netfilter::Family;
use twill_proxy_core::{
    ChangeTracker, ModelConfig, ProxyModel, ServicePortName, StaleConntrack, SyncChanges,
};

use twill_proxy::metrics::Metrics;

pub const CANARY: &str = "KUBE-PROXY-CANARY";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    #[error("iptables-restore ({kind} sync) failed: {source}")]
    Restore {
        kind: &'static str,
        #[source]
        source: twill_netfilter::Error,
    },
    #[error("reading existing chains: {0}")]
    Save(#[source] twill_netfilter::Error),
    #[error("ensuring base-chain jumps: {0}")]
    Jumps(#[source] twill_netfilter::Error),
}

/// Where rules go: the kernel (through twill-netfilter) or a test double.
pub trait Backend {
    fn restore(&mut self, family: Family, text: &str) -> Result<(), twill_netfilter::Error>;
    /// Chain names in the nat table.
    fn nat_chains(&mut self, family: Family) -> Result<BTreeSet<String>, twill_netfilter::Error>;
    /// Insert each jump at the top of its base chain unless present; create canaries.
    fn ensure_jumps(
        &mut self,
        family: Family,
        jumps: &[BaseJump],
    ) -> Result<(), twill_netfilter::Error>;
    /// Whether the canary chain still exists (a flushed firewall removes it).
    fn canary_present(&mut self, family: Family) -> bool;
    /// Delete stale UDP conntrack entries; returns how many went.
    fn clear_conntrack(
        &mut self,
        stale: &[StaleConntrack],
    ) -> Result<usize, twill_proxy::conntrack::ConntrackError>;
}

/// Which iptables binaries to run. `System` is whatever `iptables` points at (the
/// distribution's choice); the others name a backend explicitly, since legacy and nft
/// rules live in different kernel tables and must not be mixed on one node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Variant {
    #[default]
    System,
    Legacy,
    Nft,
}

/// The real kernel, in the calling thread's network namespace.
#[derive(Debug, Clone, Copy, Default)]
pub struct Kernel {
    pub variant: Variant,
}

impl Kernel {
    pub fn new(variant: Variant) -> Self {
        Kernel { variant }
    }
    fn tool(&self, family: Family, suffix: &str) -> String {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        let v = match self.variant {
            Variant::System => "",
            Variant::Legacy => "-legacy",
            Variant::Nft => "-nft",
        };
        format!("{base}{v}{suffix}")
    }
}

impl Backend for Kernel {
    fn restore(&mut self, family: Family, text: &str) -> Result<(), twill_netfilter::Error> {
        if self.variant == Variant::System {
            return twill_netfilter::iptables_restore(family, text);
        }
        let prog = self.tool(family, "-restore");
        twill_netfilter::run_with_input(&prog, &["--noflush", "-w", "5"], text.as_bytes())
            .map(|_| ())
    }
    fn nat_chains(&mut self, family: Family) -> Result<BTreeSet<String>, twill_netfilter::Error> {
        let text = if self.variant == Variant::System {
            twill_netfilter::iptables_save(family, Some("nat"))?
        } else {
            twill_netfilter::run_with_input(&self.tool(family, "-save"), &["-t", "nat"], b"")?
        };
        Ok(text
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect())
    }
    fn ensure_jumps(
        &mut self,
        family: Family,
        jumps: &[BaseJump],
    ) -> Result<(), twill_netfilter::Error> {
        let t = self.tool(family, "");
        let t = t.as_str();
        for table in ["mangle", "nat", "filter"] {
            // `-N` fails when the chain exists, which is fine.
            let _ =
                twill_netfilter::run_with_input(t, &["-w", "5", "-t", table, "-N", CANARY], b"");
        }
        // Each is inserted at the top, so going backwards leaves them in list order.
        for j in jumps.iter().rev() {
            let mut rule: Vec<&str> = vec![j.from];
            rule.extend(j.args.iter().copied());
            rule.extend(["-j", j.to]);
            let mut check = vec!["-w", "5", "-t", j.table, "-C"];
            check.extend(rule.iter().copied());
            if twill_netfilter::run_with_input(t, &check, b"").is_err() {
                let mut insert = vec!["-w", "5", "-t", j.table, "-I"];
                insert.extend(rule.iter().copied());
                twill_netfilter::run_with_input(t, &insert, b"")?;
            }
        }
        Ok(())
    }
    fn clear_conntrack(
        &mut self,
        stale: &[StaleConntrack],
    ) -> Result<usize, twill_proxy::conntrack::ConntrackError> {
        twill_proxy::conntrack::clear_stale(stale)
    }
    fn canary_present(&mut self, family: Family) -> bool {
        twill_netfilter::run_with_input(
            &self.tool(family, ""),
            &["-w", "5", "-t", "mangle", "-S", CANARY],
            b"",
        )
        .is_ok()
    }
}

/// What a sync did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    pub full: bool,
    pub services_changed: usize,
    pub nat_rules_written: usize,
    pub nat_rules_total: usize,
    pub filter_rules: usize,
    pub deleted_chains: usize,
    pub stale_udp: Vec<StaleConntrack>,
    pub skipped_services: usize,
    pub duration: Duration,
    /// Where the time went.
    pub timings: SyncTimings,
}

/// Phases of one sync, for benchmarks and debug logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncTimings {
    /// `build_model` and the change tracker's diff.
    pub model: Duration,
    pub render: Duration,
    /// The `iptables-restore` process, start to exit.
    pub restore: Duration,
    /// Base-chain jumps (full syncs), conntrack cleanup, metrics.
    pub other: Duration,
}

/// One proxier per IP family.
pub struct Proxier<B: Backend> {
    pub model_config: ModelConfig,
    pub config: Config,
    pub sync_period: Duration,
    pub metrics: Metrics,
    backend: B,
    tracker: ChangeTracker,
    /// Per-service chains after our last successful restore (what partial syncs reuse).
    service_chains: BTreeMap<ServicePortName, Arc<ServiceChains>>,
    need_full_sync: bool,
    /// `(len, hash)` of each top-level chain's rules as the kernel has them after our
    /// last successful restore, by (table, chain).
    applied_top: ChainDigests,
    /// Whether the last successful sync rendered upstream's large-cluster form; when it
    /// flips, every chain is rewritten so no chain keeps the other form.
    last_large_cluster_mode: Option<bool>,
    last_full: Option<Instant>,
    last_success: Option<Instant>,
}

impl<B: Backend> Proxier<B> {
    pub fn new(
        model_config: ModelConfig,
        config: Config,
        sync_period: Duration,
        backend: B,
    ) -> Self {
        Proxier {
            model_config,
            config,
            sync_period,
            metrics: Metrics::new(),
            backend,
            tracker: ChangeTracker::new(),
            service_chains: BTreeMap::new(),
            need_full_sync: true,
            applied_top: BTreeMap::new(),
            last_large_cluster_mode: None,
            last_full: None,
            last_success: None,
        }
    }

    fn family(&self) -> Family {
        match self.config.family {
            IpFamily::V4 => Family::V4,
            IpFamily::V6 => Family::V6,
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

    /// Bring the kernel in line with `state`. `now` drives the periodic full resync.
    /// Returns `None` when nothing changed and no full sync was due.
    pub fn sync(
        &mut self,
        state: &ClusterState,
        now: Instant,
    ) -> Result<Option<SyncReport>, SyncError> {
        let t = Instant::now();
        let (model, skipped) =
            twill_proxy::metrics::node_model(state, &self.model_config, &self.metrics);
        let built = t.elapsed();
        Ok(self.sync_model(model, now)?.map(|mut r| {
            r.skipped_services = skipped;
            r.duration += built;
            r.timings.model += built;
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
    ) -> Result<Option<SyncReport>, SyncError> {
        let started = Instant::now();
        let family = self.family();
        let periodic = self
            .last_full
            .is_none_or(|t| now.duration_since(t) >= self.sync_period);
        if periodic && self.last_full.is_some() && !self.backend.canary_present(family) {
            tracing::warn!("canary chain is gone (firewall flushed?); full resync");
            self.need_full_sync = true;
        }
        let large = large_cluster_mode(&model);
        let full = self.need_full_sync
            || periodic
            || self.last_large_cluster_mode.is_some_and(|l| l != large);
        let changes = if self.tracker.is_last(&model) {
            SyncChanges::default()
        } else {
            self.tracker.diff(&model)
        };
        let t_model = started.elapsed();
        if !full && changes.is_empty() {
            return Ok(None);
        }
        let existing = if full {
            Some(self.backend.nat_chains(family).map_err(SyncError::Save)?)
        } else {
            None
        };
        let mode = match &existing {
            Some(existing) => SyncMode::Full {
                existing: Some(existing),
            },
            None => SyncMode::Partial {
                changed: &changes.services,
                previous: &self.service_chains,
                applied_top: Some(&self.applied_top),
            },
        };
        let t = Instant::now();
        let mut rendered = render(&self.config, &model, mode);
        drop(existing);
        let t_render = t.elapsed();
        let kind = if full { "full" } else { "partial" };
        let t = Instant::now();
        // Nothing to write when only unused fields changed.
        let restored = if rendered.text.is_empty() {
            Ok(())
        } else {
            self.backend.restore(family, &rendered.text)
        };
        let t_restore = t.elapsed();
        if let Err(source) = restored {
            self.applied_top.clear();
            self.metrics.restore_failures.inc();
            if !full {
                self.metrics.partial_restore_failures.inc();
            }
            self.need_full_sync = true;
            tracing::error!(error = %source, kind, "iptables-restore failed; next sync is full");
            return Err(SyncError::Restore { kind, source });
        }
        if full {
            let with_fw = rendered.text.contains(":KUBE-FIREWALL ");
            self.backend
                .ensure_jumps(family, &base_chain_jumps(with_fw))
                .map_err(SyncError::Jumps)?;
            self.last_full = Some(now);
        }
        self.need_full_sync = false;
        self.applied_top = std::mem::take(&mut rendered.top_level);
        self.last_large_cluster_mode = Some(rendered.large_cluster_mode);
        // The restore input is the biggest allocation of a sync (tens of MB at 10k
        // services); nothing needs it after the restore.
        let Rendered {
            text,
            services,
            deleted_chains,
            filter_rules_total,
            nat_rules_total,
            nat_rules_written,
            services_no_local_endpoints_internal,
            services_no_local_endpoints_external,
            ..
        } = rendered;
        drop(text);
        // Drop the old record before keeping the new one.
        self.service_chains = BTreeMap::new();
        self.service_chains = services;
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
        if full {
            // Partial syncs free little beyond the previous model, which the next sync's
            // model reuses; trimming costs about 5 ms at 10k services.
            release_freed_memory();
        }
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
        let set = |t: &str, v: usize| {
            self.metrics
                .iptables_total
                .get_or_create(&vec![("table".to_string(), t.to_string())])
                .set(v as i64);
        };
        set("filter", filter_rules_total);
        set("nat", nat_rules_total);
        let nle = |p: &str, v: usize| {
            self.metrics
                .no_local_endpoints
                .get_or_create(&vec![("traffic_policy".to_string(), p.to_string())])
                .set(v as i64);
        };
        nle("internal", services_no_local_endpoints_internal);
        nle("external", services_no_local_endpoints_external);
        tracing::info!(
            kind,
            services_changed = changes.services.len(),
            nat_rules = nat_rules_written,
            deleted_chains = deleted_chains.len(),
            ms = d.as_secs_f64() * 1000.0,
            "synced proxy rules"
        );
        Ok(Some(SyncReport {
            full,
            services_changed: changes.services.len(),
            nat_rules_written,
            nat_rules_total,
            filter_rules: filter_rules_total,
            deleted_chains: deleted_chains.len(),
            stale_udp: stale,
            skipped_services: 0,
            duration: d,
            timings: SyncTimings {
                model: t_model,
                render: t_render,
                restore: t_restore,
                other: d.saturating_sub(t_model + t_render + t_restore),
            },
        }))
    }
}

/// Hand memory freed by the sync back to the kernel. A sync at 10k services allocates
/// and frees tens of MB (restore input, `iptables-save` output, the previous model);
/// glibc keeps freed heap pages mapped, so without this the daemon's RSS stays at its
/// peak instead of its steady state.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests;

/// Set the sysctls the iptables mode needs, in the calling thread's network namespace:
/// `route_localnet=1` when NodePorts answer on 127.0.0.1 (IPv4). Returns notes for the
/// log, including whether `bridge-nf-call-iptables` is on (bridged pod traffic skips
/// iptables without it; kube-proxy only reports it, and so do we).
pub fn apply_sysctls(cfg: &Config) -> Vec<String> {
    let mut notes = Vec::new();
    let loopback_nodeports = cfg.family == IpFamily::V4
        && cfg.localhost_node_ports
        && (cfg.node_port_addresses.iter().all(|n| n.addr().is_ipv6())
            || cfg
                .node_port_addresses
                .iter()
                .any(|n| n.contains(&IpAddr::from([127, 0, 0, 1]))));
    if loopback_nodeports {
        match std::fs::write("/proc/sys/net/ipv4/conf/all/route_localnet", "1") {
            Ok(()) => {
                notes.push("set net.ipv4.conf.all.route_localnet=1 (NodePorts on localhost)".into())
            }
            Err(e) => notes.push(format!(
                "could not set net.ipv4.conf.all.route_localnet=1: {e}"
            )),
        }
    }
    let key = if cfg.family == IpFamily::V4 {
        "bridge-nf-call-iptables"
    } else {
        "bridge-nf-call-ip6tables"
    };
    match std::fs::read_to_string(format!("/proc/sys/net/bridge/{key}")) {
        Ok(v) if v.trim() == "1" => notes.push(format!("{key} is on")),
        Ok(_) => notes.push(format!(
            "{key} is off: traffic between pods on one bridge bypasses service rules"
        )),
        Err(_) => notes.push(format!("{key} not available (br_netfilter not loaded)")),
    }
    notes
}
