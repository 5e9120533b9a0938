//! The shared proxy corpus (`shared/testdata/proxy`, schema in its README): reading
//! fixtures, and the pure checks (expected restore text, expected chains, traced flows).
//! The real-kernel flow checks are in [`super::flows`].

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;
use twill_model::{ClusterState, IpFamily, Object};
use twill_proxy_core::{FeatureGates, ModelConfig, ProxyModel, build_model, chain};
use twill_proxy_iptables::restore::{self, Ruleset};
use twill_proxy_iptables::trace::{Packet, Tracer};
use twill_proxy_iptables::{Config, LocalDetector, Rendered, SyncMode, render};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CorpusError {
    #[error("{file}: {source}")]
    Json {
        file: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{file}: fixture {fixture:?}: {message}")]
    Fixture {
        file: String,
        fixture: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
pub struct CaseFile {
    pub fixtures: Vec<Fixture>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fixture {
    pub name: String,
    pub config: FixtureConfig,
    #[serde(default)]
    pub objects: Vec<Value>,
    #[serde(default)]
    pub flows: Vec<Flow>,
    pub iptables_restore: Option<Vec<String>>,
    pub iptables_chains: Option<BTreeMap<String, BTreeMap<String, Vec<String>>>>,
    pub expected_chains: Option<Vec<ExpectedChain>>,
    /// Expected `nft list table` lines (each must appear, whitespace-trimmed).
    #[serde(default)]
    pub nftables: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FixtureConfig {
    #[serde(default)]
    pub mode: Option<String>,
    pub ip_family: String,
    pub node_name: String,
    #[serde(default, rename = "nodeIPs")]
    pub node_ips: Vec<String>,
    #[serde(default)]
    pub local_addresses: Vec<String>,
    #[serde(default, rename = "clusterCIDR")]
    pub cluster_cidr: Option<String>,
    #[serde(default, rename = "nodeCIDR")]
    pub node_cidr: Option<String>,
    #[serde(default)]
    pub bridge_interface: Option<String>,
    #[serde(default)]
    pub interface_name_prefix: Option<String>,
    #[serde(default)]
    pub detect_local_mode: Option<String>,
    #[serde(default)]
    pub masquerade_all: bool,
    #[serde(default)]
    pub masquerade_bit: Option<u8>,
    #[serde(default)]
    pub node_port_addresses: Vec<String>,
    #[serde(default = "yes")]
    pub localhost_node_ports: bool,
    #[serde(default)]
    pub feature_gates: BTreeMap<String, bool>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Flow {
    pub name: String,
    #[serde(rename = "sourceIP")]
    pub source_ip: String,
    #[serde(rename = "destIP")]
    pub dest_ip: String,
    pub dest_port: u16,
    pub protocol: String,
    pub expected: Expected,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Expected {
    pub outputs: Value,
    #[serde(default)]
    pub masq: bool,
    #[serde(default)]
    pub masq_per_output: Option<BTreeMap<String, bool>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExpectedChain {
    pub service_port_name: String,
    pub protocol: String,
    #[serde(default)]
    pub endpoint: Option<String>,
    pub chain: String,
    #[serde(default)]
    pub era: Option<String>,
}

/// What a flow must end in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// DNAT to one of these `ip:port` endpoints (as written, canonicalised).
    Endpoints(Vec<String>),
    Reject,
    Drop,
    Accept,
    None,
}

impl Expected {
    pub fn outcome(&self) -> Result<Outcome, String> {
        match &self.outputs {
            Value::String(s) => match s.as_str() {
                "REJECT" => Ok(Outcome::Reject),
                "DROP" => Ok(Outcome::Drop),
                "ACCEPT" => Ok(Outcome::Accept),
                "NONE" => Ok(Outcome::None),
                other => Err(format!("unknown verdict {other:?}")),
            },
            Value::Array(a) => {
                let mut v = Vec::new();
                for x in a {
                    let s = x.as_str().ok_or("outputs must be strings")?;
                    v.push(canonical_endpoint(s).ok_or_else(|| format!("bad endpoint {s:?}"))?);
                }
                v.sort();
                Ok(Outcome::Endpoints(v))
            }
            _ => Err("outputs must be a verdict or a list".into()),
        }
    }
}

/// `ip:port` with the IP in canonical form (leading zeros dropped).
pub fn canonical_endpoint(s: &str) -> Option<String> {
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.to_string());
    }
    let (ip, port) = s.rsplit_once(':')?;
    let ip = twill_model::parse_ip_lenient(ip.trim_start_matches('[').trim_end_matches(']'))?;
    Some(std::net::SocketAddr::new(ip, port.parse().ok()?).to_string())
}

pub fn parse_ip(s: &str) -> Option<IpAddr> {
    twill_model::parse_ip_lenient(s)
}

/// A fixture turned into a model and renderer settings.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub family: IpFamily,
    pub model: ProxyModel,
    pub config: Config,
    pub local_addresses: Vec<IpAddr>,
}

fn decode_all(values: &[Value], out: &mut Vec<Object>) -> Result<(), String> {
    for v in values {
        match twill_manifest::decode_value(v) {
            Ok(twill_manifest::Decoded::Object(o)) => out.push(o),
            Ok(twill_manifest::Decoded::Ignored { .. }) => {}
            Ok(twill_manifest::Decoded::List(items)) => decode_all(&items, out)?,
            Err(e) => {
                let fields: Vec<String> = e
                    .errors
                    .iter()
                    .map(|f| format!("{}: {}", f.path, f.message))
                    .collect();
                return Err(format!(
                    "{}: {} {}",
                    e.object.unwrap_or_default(),
                    e.message,
                    fields.join("; ")
                ));
            }
        }
    }
    Ok(())
}

impl Fixture {
    /// Build the model and renderer settings. `nfacct` as upstream's test proxier has it
    /// (the expected texts carry `-m nfacct` matches).
    pub fn prepare(&self, nfacct: bool) -> Result<Prepared, String> {
        let c = &self.config;
        let family =
            IpFamily::parse(&c.ip_family).ok_or_else(|| format!("ipFamily {:?}", c.ip_family))?;
        let mut objects = Vec::new();
        decode_all(&self.objects, &mut objects)?;
        let state = ClusterState::from_objects(objects);
        let gates = FeatureGates {
            load_balancer_ip_mode: c
                .feature_gates
                .get("LoadBalancerIPMode")
                .copied()
                .unwrap_or(true),
        };
        let mc = ModelConfig {
            family,
            node_name: c.node_name.clone(),
            node_zone: None,
            gates,
        };
        let (model, _skipped) = build_model(&state, &mc);
        let ips = |v: &[String]| -> Result<Vec<IpAddr>, String> {
            v.iter()
                .map(|s| parse_ip(s).ok_or_else(|| format!("bad IP {s:?}")))
                .collect()
        };
        let net = |s: &str| {
            twill_model::parse_net_lenient(s)
                .map(|n| n.trunc())
                .ok_or_else(|| format!("bad CIDR {s:?}"))
        };
        let node_ips = ips(&c.node_ips)?;
        let local_addresses = ips(&c.local_addresses)?;
        let detector = match c.detect_local_mode.as_deref().unwrap_or("ClusterCIDR") {
            "None" => LocalDetector::None,
            "ClusterCIDR" => match &c.cluster_cidr {
                Some(s) => LocalDetector::ClusterCidr(net(s)?),
                None => LocalDetector::None,
            },
            "NodeCIDR" => LocalDetector::NodeCidr(net(c
                .node_cidr
                .as_deref()
                .ok_or("NodeCIDR mode without nodeCIDR")?)?),
            "BridgeInterface" => LocalDetector::BridgeInterface(
                c.bridge_interface.clone().ok_or("no bridgeInterface")?,
            ),
            "InterfaceNamePrefix" => LocalDetector::InterfaceNamePrefix(
                c.interface_name_prefix
                    .clone()
                    .ok_or("no interfaceNamePrefix")?,
            ),
            other => return Err(format!("detectLocalMode {other:?}")),
        };
        let mut config = Config::new(family, node_ips, detector);
        config.local_addresses = local_addresses.clone();
        config.masquerade_all = c.masquerade_all;
        config.masquerade_bit = c.masquerade_bit.unwrap_or(14);
        config.node_port_addresses = c
            .node_port_addresses
            .iter()
            .map(|s| net(s))
            .collect::<Result<Vec<IpNet>, _>>()?;
        config.localhost_node_ports = c.localhost_node_ports;
        config.nfacct = nfacct;
        Ok(Prepared {
            family,
            model,
            config,
            local_addresses,
        })
    }
}

impl Prepared {
    pub fn render(&self) -> Rendered {
        render(&self.config, &self.model, SyncMode::Full { existing: None })
    }
}

/// Which expected lines of `fx.nftables` are missing from an `nft list table` listing
/// (compared whitespace-trimmed). `None` when the fixture states none.
pub fn check_nft_listing(fx: &Fixture, listing: &str) -> Option<Vec<String>> {
    let want = fx.nftables.as_ref()?;
    let have: std::collections::BTreeSet<&str> = listing.lines().map(str::trim).collect();
    Some(
        want.iter()
            .filter(|l| !have.contains(l.trim()))
            .map(|l| format!("nft list table lacks {:?}", l.trim()))
            .collect(),
    )
}

/// Read one case file.
pub fn parse_case_file(file: &str, text: &str) -> Result<CaseFile, CorpusError> {
    serde_json::from_str(text).map_err(|source| CorpusError::Json {
        file: file.into(),
        source,
    })
}

/// Compare rendered text with the fixture's `iptablesRestore`, `iptablesChains` and
/// `expectedChains`. `None` when the fixture states none of them.
pub fn check_text(fx: &Fixture, rendered: &Rendered) -> Option<Vec<String>> {
    if fx.iptables_restore.is_none() && fx.iptables_chains.is_none() && fx.expected_chains.is_none()
    {
        return None;
    }
    let mut problems = Vec::new();
    let actual = match restore::parse(&rendered.text, true) {
        Ok(a) => a,
        Err(e) => return Some(vec![format!("rendered text does not parse: {e}")]),
    };
    if let Some(lines) = &fx.iptables_restore {
        let text = format!("{}\n", lines.join("\n"));
        match restore::parse(&text, false) {
            Ok(expected) => problems.extend(restore::diff_rulesets(&expected, &actual)),
            Err(e) => problems.push(format!("expected iptablesRestore does not parse: {e}")),
        }
    }
    if let Some(tables) = &fx.iptables_chains {
        for (table, chains) in tables {
            for (c, rules) in chains {
                let mut exp = Ruleset::new();
                let t = exp.entry(table.clone()).or_default();
                t.chains.push(c.clone());
                t.rules.insert(c.clone(), rules.clone());
                let got = actual.get(table).and_then(|t| t.rules.get(c));
                match got {
                    None => problems.push(format!("table {table}: chain {c} missing")),
                    Some(g) => {
                        let mut act = Ruleset::new();
                        let at = act.entry(table.clone()).or_default();
                        at.chains.push(c.clone());
                        at.rules.insert(c.clone(), g.clone());
                        problems.extend(restore::diff_rulesets(&exp, &act));
                    }
                }
            }
        }
    }
    for ec in fx.expected_chains.iter().flatten() {
        if ec.era.as_deref().is_some_and(|e| e != "current-upstream") {
            continue;
        }
        let got = match &ec.endpoint {
            Some(ep) => {
                chain::endpoint_chain(&ec.service_port_name, &ec.protocol.to_ascii_lowercase(), ep)
            }
            None => {
                let prefix = ec
                    .chain
                    .get(..ec.chain.len().saturating_sub(16))
                    .unwrap_or("KUBE-SVC-");
                chain::service_chain(
                    prefix,
                    &ec.service_port_name,
                    &ec.protocol.to_ascii_lowercase(),
                )
            }
        };
        if got != ec.chain {
            problems.push(format!(
                "chain for {} {} {:?}: expected {}, got {got}",
                ec.service_port_name, ec.protocol, ec.endpoint, ec.chain
            ));
        }
    }
    Some(problems)
}

/// Trace one flow through the rendered rules; `Err` says how it differs.
pub fn check_flow_traced(flow: &Flow, tracer: &Tracer) -> Result<(), String> {
    let want = flow.expected.outcome()?;
    let packet = Packet {
        source: parse_ip(&flow.source_ip).ok_or("bad sourceIP")?,
        dest: parse_ip(&flow.dest_ip).ok_or("bad destIP")?,
        dest_port: flow.dest_port,
        protocol: flow.protocol.to_ascii_lowercase(),
    };
    let res = tracer.trace(&packet);
    let got = match res.outputs.as_slice() {
        [] => Outcome::None,
        [v] if v == "REJECT" => Outcome::Reject,
        [v] if v == "DROP" => Outcome::Drop,
        [v] if v == "ACCEPT" => Outcome::Accept,
        outs => {
            let mut v: Vec<String> = outs
                .iter()
                .map(|o| canonical_endpoint(o).unwrap_or_else(|| o.clone()))
                .collect();
            v.sort();
            v.dedup();
            Outcome::Endpoints(v)
        }
    };
    if got != want {
        return Err(format!(
            "traced outputs {got:?}, expected {want:?} (matched: {:?})",
            res.matched
        ));
    }
    if res.masq != flow.expected.masq {
        return Err(format!(
            "traced masq {}, expected {} (matched: {:?})",
            res.masq, flow.expected.masq, res.matched
        ));
    }
    if let Some(per) = &flow.expected.masq_per_output {
        for (out, m) in per {
            let key = canonical_endpoint(out).unwrap_or_else(|| out.clone());
            let got = res
                .masq_per_output
                .iter()
                .find(|(k, _)| canonical_endpoint(k).as_deref() == Some(&key))
                .map(|(_, v)| *v);
            if got != Some(*m) {
                return Err(format!("traced masq for {out} is {got:?}, expected {m}"));
            }
        }
    }
    Ok(())
}

/// Every fixture of the shared proxy corpus (`$TWILL_SHARED_DIR/testdata/proxy`), with
/// the file it came from. Panics on a case file that does not parse: the corpus is
/// the tests' input, and a test that skipped it would pass on nothing.
pub fn shared_fixtures() -> Vec<(String, Fixture)> {
    let mut out = Vec::new();
    for (path, v) in twill_testkit::testdata::json_cases("proxy") {
        let case: CaseFile =
            serde_json::from_value(v).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for fx in case.fixtures {
            out.push((path.display().to_string(), fx));
        }
    }
    out
}

/// The fixture named `name` (or, failing an exact match, the first whose name contains
/// it) in the corpus file whose path ends with `file_suffix`. Panics when there is none.
pub fn shared_fixture(file_suffix: &str, name: &str) -> Fixture {
    let in_file: Vec<Fixture> = shared_fixtures()
        .into_iter()
        .filter(|(f, _)| f.ends_with(file_suffix))
        .map(|(_, fx)| fx)
        .collect();
    let exact = in_file.iter().position(|fx| fx.name == name);
    let found = exact.or_else(|| in_file.iter().position(|fx| fx.name.contains(name)));
    match found {
        Some(i) => in_file.into_iter().nth(i).expect("index from position"),
        None => panic!("no fixture {name:?} in {file_suffix}"),
    }
}

/// What became of one flow, in any mode's runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowOutcome {
    Passed,
    Failed(String),
    /// The mode lacks what the flow needs (counted neither passed nor failed).
    Skipped(String),
}
