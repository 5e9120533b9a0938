//! kube-proxy's settings past the basics, under kube-proxy's flag names, and its
//! `--config` file: shared by `twill proxy` and `twill agent` so both read a
//! `KubeProxyConfiguration` the same way (flags given on the command line win over the
//! file, the file over kube-proxy's defaults).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use twill_agent::kube_proxy_config::{self, FromFile, parse_duration};
use twill_agent::parts::proxy::{Conntrack, DetectLocal, Tuning};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
#[value(rename_all = "verbatim")]
pub enum DetectLocalMode {
    ClusterCIDR,
    NodeCIDR,
    BridgeInterface,
    InterfaceNamePrefix,
}

#[derive(clap::Args, Clone, Debug, Default)]
pub struct TuningFlags {
    /// A KubeProxyConfiguration file (kube-proxy's `--config`); flags given on the
    /// command line win. Fields Twill does not implement are named in one warning.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// How traffic from pods is recognised (default ClusterCIDR, with --cluster-cidr).
    #[arg(long, value_enum)]
    pub detect_local_mode: Option<DetectLocalMode>,
    /// The pod bridge, for `--detect-local-mode BridgeInterface`.
    #[arg(long)]
    pub pod_bridge_interface: Option<String>,
    /// The pods' interface name prefix, for `--detect-local-mode InterfaceNamePrefix`.
    #[arg(long)]
    pub pod_interface_name_prefix: Option<String>,
    /// The fwmark bit that marks packets for SNAT (0-31; default 14).
    #[arg(long = "iptables-masquerade-bit", alias = "masquerade-bit", value_parser = clap::value_parser!(u8).range(0..=31))]
    pub masquerade_bit: Option<u8>,
    /// Accept NodePort connections to 127.0.0.1 (iptables mode, IPv4; default true).
    #[arg(long = "iptables-localhost-nodeports")]
    pub localhost_nodeports: Option<bool>,
    /// Conntrack entries per CPU (nf_conntrack_max = max(this × CPUs, --conntrack-min);
    /// default 32768, 0 leaves the kernel's limit). Host-wide: set only from the host's
    /// network namespace.
    #[arg(long)]
    pub conntrack_max_per_core: Option<u32>,
    /// The least nf_conntrack_max (default 131072).
    #[arg(long)]
    pub conntrack_min: Option<u32>,
    /// Idle timeout of established TCP entries (default 24h; 0 leaves the kernel's).
    #[arg(long)]
    pub conntrack_tcp_timeout_established: Option<String>,
    /// Timeout of TCP entries in CLOSE_WAIT (default 1h; 0 leaves the kernel's).
    #[arg(long)]
    pub conntrack_tcp_timeout_close_wait: Option<String>,
    /// Do not mark out-of-window TCP packets INVALID (and so do not drop them).
    #[arg(long)]
    pub conntrack_tcp_be_liberal: bool,
    /// Timeout of unreplied UDP entries (default: the kernel's).
    #[arg(long)]
    pub conntrack_udp_timeout: Option<String>,
    /// Timeout of assured UDP entries (default: the kernel's).
    #[arg(long)]
    pub conntrack_udp_timeout_stream: Option<String>,
    /// The cluster's service CIDR (repeatable, one per family), for sources without
    /// ServiceCIDR objects: nftables mode drops traffic to its addresses that no Service
    /// holds (upstream's `cluster-ips-check`).
    #[arg(long = "service-cidr", value_name = "CIDR")]
    pub service_cidrs: Vec<ipnet::IpNet>,
}

fn duration(flag: &str, v: &Option<String>) -> anyhow::Result<Option<std::time::Duration>> {
    v.as_deref()
        .map(|s| parse_duration(s).map_err(|e| anyhow::anyhow!("--{flag}: {e}")))
        .transpose()
}

impl TuningFlags {
    /// The `--config` file, with its one warning logged.
    pub fn load_file(&self) -> anyhow::Result<Option<FromFile>> {
        let Some(path) = &self.config else {
            return Ok(None);
        };
        let f = kube_proxy_config::load(path).map_err(anyhow::Error::msg)?;
        if let Some(w) = f.warning() {
            tracing::warn!(file = %path.display(), "{w}");
        }
        Ok(Some(f))
    }

    /// Flags over the file over kube-proxy's defaults.
    pub fn tuning(&self, file: Option<&FromFile>) -> anyhow::Result<Tuning> {
        let d = Tuning::default();
        let detect_local = match self.detect_local_mode {
            None => file
                .and_then(|f| f.detect_local.clone())
                .unwrap_or_default(),
            Some(DetectLocalMode::ClusterCIDR) => DetectLocal::ClusterCidr,
            Some(DetectLocalMode::NodeCIDR) => DetectLocal::NodeCidr,
            Some(DetectLocalMode::BridgeInterface) => DetectLocal::BridgeInterface(
                self.pod_bridge_interface
                    .clone()
                    .context("--detect-local-mode BridgeInterface needs --pod-bridge-interface")?,
            ),
            Some(DetectLocalMode::InterfaceNamePrefix) => {
                DetectLocal::InterfaceNamePrefix(self.pod_interface_name_prefix.clone().context(
                    "--detect-local-mode InterfaceNamePrefix needs --pod-interface-name-prefix",
                )?)
            }
        };
        let fc = file.map(|f| f.conntrack.clone()).unwrap_or_default();
        let kp = Conntrack::kube_proxy_defaults();
        let conntrack = Conntrack {
            max_per_core: self
                .conntrack_max_per_core
                .or(fc.max_per_core)
                .or(kp.max_per_core),
            min: self.conntrack_min.or(fc.min).or(kp.min),
            tcp_established_timeout: duration(
                "conntrack-tcp-timeout-established",
                &self.conntrack_tcp_timeout_established,
            )?
            .or(fc.tcp_established_timeout)
            .or(kp.tcp_established_timeout),
            tcp_close_wait_timeout: duration(
                "conntrack-tcp-timeout-close-wait",
                &self.conntrack_tcp_timeout_close_wait,
            )?
            .or(fc.tcp_close_wait_timeout)
            .or(kp.tcp_close_wait_timeout),
            tcp_be_liberal: self.conntrack_tcp_be_liberal || fc.tcp_be_liberal,
            udp_timeout: duration("conntrack-udp-timeout", &self.conntrack_udp_timeout)?
                .or(fc.udp_timeout),
            udp_stream_timeout: duration(
                "conntrack-udp-timeout-stream",
                &self.conntrack_udp_timeout_stream,
            )?
            .or(fc.udp_stream_timeout),
        };
        Ok(Tuning {
            detect_local,
            masquerade_bit: self
                .masquerade_bit
                .or(file.and_then(|f| f.masquerade_bit))
                .unwrap_or(d.masquerade_bit),
            localhost_node_ports: self
                .localhost_nodeports
                .or(file.and_then(|f| f.localhost_node_ports))
                .unwrap_or(d.localhost_node_ports),
            conntrack,
            service_cidrs: self.service_cidrs.clone(),
        })
    }
}

/// The settings `twill proxy` and `twill agent` both take from a KubeProxyConfiguration,
/// as places in each command's own flags; [`Basics::fold`] fills those the command
/// line left unset.
pub struct Basics<'a> {
    pub hostname_override: &'a mut Option<String>,
    pub cluster_cidr: &'a mut Option<String>,
    pub node_ips: &'a mut Vec<IpAddr>,
    pub masquerade_all: &'a mut bool,
    pub nodeport_addresses: &'a mut Vec<String>,
    pub sync_period: &'a mut Option<String>,
    pub min_sync_period: &'a mut Option<String>,
    pub healthz_bind_address: &'a mut Option<SocketAddr>,
    pub metrics_bind_address: &'a mut Option<SocketAddr>,
}

impl Basics<'_> {
    /// Flags win: only what the command line left unset is taken from the file.
    pub fn fold(self, f: &FromFile) {
        fn fill<T: Clone>(slot: &mut Option<T>, from: &Option<T>) {
            if slot.is_none() {
                slot.clone_from(from);
            }
        }
        fill(self.hostname_override, &f.hostname_override);
        fill(self.cluster_cidr, &f.cluster_cidr);
        if self.node_ips.is_empty() {
            self.node_ips.extend(f.node_ip);
        }
        *self.masquerade_all |= f.masquerade_all;
        if self.nodeport_addresses.is_empty() {
            self.nodeport_addresses.clone_from(&f.nodeport_addresses);
        }
        let ms = |d: &Option<std::time::Duration>| d.map(|d| format!("{}ms", d.as_millis()));
        fill(self.sync_period, &ms(&f.sync_period));
        fill(self.min_sync_period, &ms(&f.min_sync_period));
        fill(self.healthz_bind_address, &f.healthz_bind_address);
        fill(self.metrics_bind_address, &f.metrics_bind_address);
    }
}
