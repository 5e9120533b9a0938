//! kube-proxy's configuration file, typed: `KubeProxyConfiguration`
//! (`kubeproxy.config.k8s.io/v1alpha1`), as `kube-proxy --config` reads it.
//!
//! Every field upstream has is either honoured (folded into [`FromFile`]) or, when set to
//! anything but its zero value, named in one warning line ([`FromFile::warning`]):
//! kubeadm's generated file, which spells out every field with zero values, loads with
//! no warning. Fields upstream does not have are named too, as kube-proxy's lenient
//! decoding does after its strict decoding fails. Values that cannot be right (a mode
//! that does not exist, a duration or address that does not parse, a masquerade bit
//! outside 0–31) are errors naming the field.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::parts::proxy::{Conntrack, DetectLocal, Mode};

pub const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";

/// Unknown fields of one section, kept to be named.
type Rest = BTreeMap<String, Value>;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct File {
    api_version: Option<String>,
    kind: Option<String>,
    feature_gates: Option<BTreeMap<String, bool>>,
    client_connection: Option<ClientConnection>,
    logging: Option<Value>,
    hostname_override: Option<String>,
    bind_address: Option<String>,
    healthz_bind_address: Option<String>,
    metrics_bind_address: Option<String>,
    bind_address_hard_fail: Option<bool>,
    enable_profiling: Option<bool>,
    show_hidden_metrics_for_version: Option<String>,
    service_proxy_name: Option<String>,
    mode: Option<String>,
    iptables: Option<Iptables>,
    ipvs: Option<BTreeMap<String, Value>>,
    nftables: Option<Nftables>,
    winkernel: Option<BTreeMap<String, Value>>,
    detect_local_mode: Option<String>,
    detect_local: Option<DetectLocalSection>,
    #[serde(rename = "clusterCIDR")]
    cluster_cidr: Option<String>,
    node_port_addresses: Option<Vec<String>>,
    oom_score_adj: Option<i32>,
    conntrack: Option<ConntrackSection>,
    config_sync_period: Option<String>,
    port_range: Option<String>,
    #[serde(flatten)]
    rest: Rest,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClientConnection {
    kubeconfig: Option<String>,
    accept_content_types: Option<String>,
    content_type: Option<String>,
    qps: Option<f64>,
    burst: Option<i64>,
    #[serde(flatten)]
    rest: Rest,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Iptables {
    masquerade_bit: Option<i32>,
    masquerade_all: Option<bool>,
    localhost_node_ports: Option<bool>,
    sync_period: Option<String>,
    min_sync_period: Option<String>,
    #[serde(flatten)]
    rest: Rest,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Nftables {
    masquerade_bit: Option<i32>,
    masquerade_all: Option<bool>,
    sync_period: Option<String>,
    min_sync_period: Option<String>,
    table_name: Option<String>,
    #[serde(flatten)]
    rest: Rest,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DetectLocalSection {
    bridge_interface: Option<String>,
    interface_name_prefix: Option<String>,
    #[serde(flatten)]
    rest: Rest,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConntrackSection {
    max_per_core: Option<i32>,
    min: Option<i32>,
    tcp_established_timeout: Option<String>,
    tcp_close_wait_timeout: Option<String>,
    tcp_be_liberal: Option<bool>,
    udp_timeout: Option<String>,
    udp_stream_timeout: Option<String>,
    #[serde(flatten)]
    rest: Rest,
}

/// What the file says, in Twill's terms. `None`: the file leaves it to the flags and
/// defaults.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FromFile {
    pub mode: Option<Mode>,
    pub hostname_override: Option<String>,
    /// `bindAddress`: the node's primary IP (a historical name; nothing binds to it).
    pub node_ip: Option<IpAddr>,
    pub healthz_bind_address: Option<SocketAddr>,
    pub metrics_bind_address: Option<SocketAddr>,
    pub cluster_cidr: Option<String>,
    pub detect_local: Option<DetectLocal>,
    pub nodeport_addresses: Vec<String>,
    pub masquerade_all: bool,
    pub masquerade_bit: Option<u8>,
    pub localhost_node_ports: Option<bool>,
    pub sync_period: Option<Duration>,
    pub min_sync_period: Option<Duration>,
    pub conntrack: Conntrack,
    /// `clientConnection.kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
    /// Fields set to something Twill does not do, with why when it helps.
    pub ignored: Vec<String>,
    /// Fields `KubeProxyConfiguration` does not have.
    pub unknown: Vec<String>,
}

impl FromFile {
    /// The one start-up warning line, when there is anything to say.
    pub fn warning(&self) -> Option<String> {
        let mut parts = Vec::new();
        if !self.ignored.is_empty() {
            parts.push(format!(
                "ignored (not implemented by Twill): {}",
                self.ignored.join(", ")
            ));
        }
        if !self.unknown.is_empty() {
            parts.push(format!(
                "unknown fields (not in {API_VERSION}): {}",
                self.unknown.join(", ")
            ));
        }
        (!parts.is_empty()).then(|| format!("KubeProxyConfiguration: {}", parts.join("; ")))
    }
}

pub use twill_model::parse_go_duration as parse_duration;

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty() || parse_duration(s) == Ok(Duration::ZERO),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_zero),
    }
}

fn unknown_fields(prefix: &str, rest: &Rest, out: &mut Vec<String>) {
    out.extend(rest.keys().map(|k| format!("{prefix}{k}")));
}

/// Parse a `KubeProxyConfiguration` (YAML or JSON). `Err`: every problem, each naming
/// its field.
pub fn parse(text: &str) -> Result<FromFile, Vec<String>> {
    let value: Value =
        serde_saphyr::from_str(text).map_err(|e| vec![format!("not YAML or JSON: {e}")])?;
    if !value.is_object() {
        return Err(vec!["expected a KubeProxyConfiguration mapping".into()]);
    }
    let file: File = serde_path_to_error::deserialize(&value)
        .map_err(|e| vec![format!("{}: {}", e.path(), e.inner())])?;
    let mut errors = Vec::new();
    let mut out = FromFile::default();
    match file.kind.as_deref() {
        Some("KubeProxyConfiguration") => {}
        other => errors.push(format!(
            "kind: {other:?}, expected \"KubeProxyConfiguration\""
        )),
    }
    match file.api_version.as_deref() {
        Some(API_VERSION) | None => {}
        Some(v) => errors.push(format!("apiVersion: {v:?}, expected {API_VERSION:?}")),
    }
    let nonempty = |s: &Option<String>| s.as_ref().filter(|s| !s.trim().is_empty()).cloned();
    let duration = |field: &str, s: &Option<String>, errors: &mut Vec<String>| {
        let s = nonempty(s)?;
        match parse_duration(&s) {
            Ok(d) if d.is_zero() => None,
            Ok(d) => Some(d),
            Err(e) => {
                errors.push(format!("{field}: {e}"));
                None
            }
        }
    };

    if let Some(m) = nonempty(&file.mode) {
        match Mode::parse(&m) {
            Some(mode) => out.mode = Some(mode),
            None => errors.push(format!(
                "mode: {m:?} is not a kube-proxy mode (iptables, nftables, ipvs)"
            )),
        }
    }
    out.hostname_override = nonempty(&file.hostname_override);
    if let Some(b) = nonempty(&file.bind_address) {
        match b.parse::<IpAddr>() {
            Ok(ip) if ip.is_unspecified() => {}
            Ok(ip) => out.node_ip = Some(ip),
            Err(_) => errors.push(format!("bindAddress: {b:?} is not an IP address")),
        }
    }
    let addr = |field: &str, s: &Option<String>, errors: &mut Vec<String>| {
        let s = nonempty(s)?;
        match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                errors.push(format!("{field}: {s:?} is not an IP:port address"));
                None
            }
        }
    };
    out.healthz_bind_address = addr(
        "healthzBindAddress",
        &file.healthz_bind_address,
        &mut errors,
    );
    out.metrics_bind_address = addr(
        "metricsBindAddress",
        &file.metrics_bind_address,
        &mut errors,
    );
    out.cluster_cidr = nonempty(&file.cluster_cidr);
    if let Some(c) = &out.cluster_cidr {
        for part in c.split(',') {
            if twill_model::parse_net_lenient(part.trim()).is_none() {
                errors.push(format!("clusterCIDR: {part:?} is not a CIDR"));
            }
        }
    }
    out.nodeport_addresses = file.node_port_addresses.clone().unwrap_or_default();
    for (i, a) in out.nodeport_addresses.iter().enumerate() {
        if a != "primary" && twill_model::parse_net_lenient(a).is_none() {
            errors.push(format!(
                "nodePortAddresses[{i}]: {a:?} is neither a CIDR nor \"primary\""
            ));
        }
    }
    if out.nodeport_addresses.iter().any(|a| a == "primary") && out.nodeport_addresses.len() > 1 {
        errors.push("nodePortAddresses: \"primary\" must be the only entry".into());
    }

    // The section of the mode in use; the other's settings do not apply.
    let ipt = file.iptables.unwrap_or_default();
    let nft = file.nftables.unwrap_or_default();
    unknown_fields("iptables.", &ipt.rest, &mut out.unknown);
    unknown_fields("nftables.", &nft.rest, &mut out.unknown);
    let nft_mode = out.mode == Some(Mode::Nftables);
    let (bit, all, sync, min_sync, section) = if nft_mode {
        (
            nft.masquerade_bit,
            nft.masquerade_all,
            &nft.sync_period,
            &nft.min_sync_period,
            "nftables",
        )
    } else {
        (
            ipt.masquerade_bit,
            ipt.masquerade_all,
            &ipt.sync_period,
            &ipt.min_sync_period,
            "iptables",
        )
    };
    if let Some(b) = bit {
        match u8::try_from(b) {
            Ok(b) if b <= 31 => out.masquerade_bit = Some(b),
            _ => errors.push(format!("{section}.masqueradeBit: {b} is outside 0-31")),
        }
    }
    out.masquerade_all = all.unwrap_or(false);
    out.sync_period = duration(&format!("{section}.syncPeriod"), sync, &mut errors);
    out.min_sync_period = duration(&format!("{section}.minSyncPeriod"), min_sync, &mut errors);
    if nft_mode {
        out.localhost_node_ports = None;
        if ipt.localhost_node_ports == Some(true) {
            out.ignored
                .push("iptables.localhostNodePorts (nftables mode has none)".into());
        }
        if nonempty(&nft.table_name).is_some_and(|t| t != "kube-proxy") {
            out.ignored.push("nftables.tableName".into());
        }
    } else {
        out.localhost_node_ports = ipt.localhost_node_ports;
        let set = nft.masquerade_bit.is_some()
            || nft.masquerade_all == Some(true)
            || nonempty(&nft.sync_period).is_some_and(|s| parse_duration(&s) != Ok(Duration::ZERO))
            || nonempty(&nft.min_sync_period)
                .is_some_and(|s| parse_duration(&s) != Ok(Duration::ZERO));
        if set {
            out.ignored
                .push("nftables.* (the mode is not nftables)".into());
        }
    }

    // Local traffic: kube-proxy's detectLocalMode, ClusterCIDR by default.
    let dl = file.detect_local.unwrap_or_default();
    unknown_fields("detectLocal.", &dl.rest, &mut out.unknown);
    match nonempty(&file.detect_local_mode).as_deref() {
        None => {}
        Some("ClusterCIDR") => out.detect_local = Some(DetectLocal::ClusterCidr),
        Some("NodeCIDR") => out.detect_local = Some(DetectLocal::NodeCidr),
        Some("BridgeInterface") => match nonempty(&dl.bridge_interface) {
            Some(b) => out.detect_local = Some(DetectLocal::BridgeInterface(b)),
            None => errors.push(
                "detectLocal.bridgeInterface: required with detectLocalMode BridgeInterface".into(),
            ),
        },
        Some("InterfaceNamePrefix") => match nonempty(&dl.interface_name_prefix) {
            Some(p) => out.detect_local = Some(DetectLocal::InterfaceNamePrefix(p)),
            None => errors.push(
                "detectLocal.interfaceNamePrefix: required with detectLocalMode InterfaceNamePrefix"
                    .into(),
            ),
        },
        Some(m) => errors.push(format!(
            "detectLocalMode: {m:?} is not one of ClusterCIDR, NodeCIDR, BridgeInterface, InterfaceNamePrefix"
        )),
    }

    let ct = file.conntrack.unwrap_or_default();
    unknown_fields("conntrack.", &ct.rest, &mut out.unknown);
    for (field, v) in [
        ("conntrack.maxPerCore", ct.max_per_core),
        ("conntrack.min", ct.min),
    ] {
        if v.is_some_and(|v| v < 0) {
            errors.push(format!("{field}: must not be negative"));
        }
    }
    out.conntrack = Conntrack {
        max_per_core: ct.max_per_core.map(|v| v.max(0) as u32),
        min: ct.min.map(|v| v.max(0) as u32),
        tcp_established_timeout: duration(
            "conntrack.tcpEstablishedTimeout",
            &ct.tcp_established_timeout,
            &mut errors,
        ),
        tcp_close_wait_timeout: duration(
            "conntrack.tcpCloseWaitTimeout",
            &ct.tcp_close_wait_timeout,
            &mut errors,
        ),
        tcp_be_liberal: ct.tcp_be_liberal.unwrap_or(false),
        udp_timeout: duration("conntrack.udpTimeout", &ct.udp_timeout, &mut errors),
        udp_stream_timeout: duration(
            "conntrack.udpStreamTimeout",
            &ct.udp_stream_timeout,
            &mut errors,
        ),
    };

    let cc = file.client_connection.unwrap_or_default();
    unknown_fields("clientConnection.", &cc.rest, &mut out.unknown);
    out.kubeconfig = nonempty(&cc.kubeconfig).map(PathBuf::from);
    for (field, set) in [
        (
            "clientConnection.acceptContentTypes",
            nonempty(&cc.accept_content_types).is_some(),
        ),
        (
            "clientConnection.contentType",
            nonempty(&cc.content_type).is_some(),
        ),
        ("clientConnection.qps", cc.qps.is_some_and(|q| q != 0.0)),
        ("clientConnection.burst", cc.burst.is_some_and(|b| b != 0)),
    ] {
        if set {
            out.ignored.push(field.into());
        }
    }

    // Set, but nothing Twill does: named, never silently dropped.
    let mut named = |field: &str, set: bool, why: &str| {
        if set {
            out.ignored.push(if why.is_empty() {
                field.to_string()
            } else {
                format!("{field} ({why})")
            });
        }
    };
    if let Some(g) = file.feature_gates.as_ref().filter(|g| !g.is_empty()) {
        let names: Vec<&str> = g.keys().map(String::as_str).collect();
        named(
            &format!("featureGates {}", names.join(" ")),
            true,
            "Twill follows each gate's GA default",
        );
    }
    named(
        "logging",
        file.logging.as_ref().is_some_and(|l| !is_zero(l)),
        "use --log and --log-format",
    );
    named(
        "bindAddressHardFail",
        file.bind_address_hard_fail == Some(true),
        "binding always fails hard",
    );
    named("enableProfiling", file.enable_profiling == Some(true), "");
    named(
        "showHiddenMetricsForVersion",
        nonempty(&file.show_hidden_metrics_for_version).is_some(),
        "",
    );
    named(
        "serviceProxyName",
        nonempty(&file.service_proxy_name).is_some(),
        "",
    );
    named(
        "oomScoreAdj",
        file.oom_score_adj.is_some(),
        "set it in the pod spec",
    );
    named(
        "configSyncPeriod",
        nonempty(&file.config_sync_period)
            .is_some_and(|s| parse_duration(&s) != Ok(Duration::ZERO)),
        "watches are not relisted on a timer",
    );
    named(
        "portRange",
        nonempty(&file.port_range).is_some(),
        "unused upstream too",
    );
    for (section, map) in [("ipvs", &file.ipvs), ("winkernel", &file.winkernel)] {
        for (k, v) in map.iter().flatten() {
            named(&format!("{section}.{k}"), !is_zero(v), "");
        }
    }
    unknown_fields("", &file.rest, &mut out.unknown);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Read and parse a file; errors name the file and the field.
pub fn load(path: &std::path::Path) -> Result<FromFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text).map_err(|errs| {
        errs.iter()
            .map(|e| format!("{}: {e}", path.display()))
            .collect::<Vec<_>>()
            .join("\n")
    })
}

#[cfg(test)]
mod tests;
