//! What a lab is: its name, nodes, addresses and where its files live.
//!
//! Everything a lab owns carries the prefix `tl-<name>-` (network namespaces) or lives
//! under `<root>/<name>/` (files), so `down --force` can find leftovers after a crash.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::LabError;

/// Where labs keep their state unless `TWILL_LAB_ROOT` says otherwise. Under /run, so
/// a reboot (which also drops every namespace) leaves nothing stale behind.
pub const DEFAULT_ROOT: &str = "/run/twill-lab";

pub fn root() -> PathBuf {
    std::env::var_os("TWILL_LAB_ROOT").map_or_else(|| PathBuf::from(DEFAULT_ROOT), PathBuf::from)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    Vxlan,
    HostGw,
    Udp,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Vxlan => "vxlan",
            Backend::HostGw => "host-gw",
            Backend::Udp => "udp",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "vxlan" => Some(Backend::Vxlan),
            "host-gw" => Some(Backend::HostGw),
            "udp" => Some(Backend::Udp),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    /// The veth end in the switch namespace.
    pub switch_port: String,
    /// The pod network MTU the overlay agent chose (FLANNEL_MTU), once known.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// `topology.kubernetes.io/zone` of its Node (`lab up --zones`).
    #[serde(default)]
    pub zone: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSpec {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub switch_port: String,
}

/// Options given to `lab up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub name: String,
    pub nodes: usize,
    pub backend: Backend,
    pub proxy_mode: String,
    pub pod_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
    pub underlay: Ipv4Net,
    pub with_client: bool,
    pub dns: bool,
    /// The crash-loop back-off base in milliseconds (kubelet: 10 s, doubling to 5 min).
    pub restart_backoff_ms: u64,
    /// Zones given to the nodes in turn (none: no zone labels).
    pub zones: Vec<String>,
    /// What the nodes' NetworkPolicy flow logs record: `all`, `drops` or `off`.
    pub flow_log: String,
}

impl Default for UpOptions {
    fn default() -> Self {
        Self {
            name: "twill".into(),
            nodes: 2,
            backend: Backend::Vxlan,
            proxy_mode: "iptables".into(),
            pod_cidr: "10.244.0.0/16".parse().expect("literal"),
            service_cidr: "10.96.0.0/12".parse().expect("literal"),
            underlay: "192.168.50.0/24".parse().expect("literal"),
            with_client: true,
            dns: true,
            restart_backoff_ms: 10_000,
            zones: Vec::new(),
            flow_log: "all".into(),
        }
    }
}

/// The lab as built; written to `lab.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabSpec {
    pub name: String,
    pub dir: PathBuf,
    pub switch_netns: String,
    pub underlay: Ipv4Net,
    pub nodes: Vec<NodeSpec>,
    pub client: Option<HostSpec>,
    pub backend: Backend,
    pub proxy_mode: String,
    pub pod_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
    /// LoadBalancer addresses on the underlay, answered for by one node.
    pub lb_pool: Ipv4Net,
    pub dns: bool,
    /// The twill binary the lab runs for plugins and agents.
    pub twill: PathBuf,
    /// The crash-loop back-off base in milliseconds (see [`UpOptions`]).
    #[serde(default = "kubelet_backoff_ms")]
    pub restart_backoff_ms: u64,
    /// The nodes' `twill netpol --flow-log` (see [`UpOptions`]).
    #[serde(default = "every_decision")]
    pub flow_log: String,
}

fn every_decision() -> String {
    "all".into()
}

fn kubelet_backoff_ms() -> u64 {
    10_000
}

/// Lab names become parts of namespace and interface names: keep them short and plain.
pub fn check_name(name: &str) -> Result<(), LabError> {
    let ok = !name.is_empty()
        && name.len() <= 12
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.as_bytes()[0].is_ascii_lowercase();
    if ok {
        Ok(())
    } else {
        Err(LabError::Invalid(format!(
            "lab name {name:?} must be 1-12 characters of a-z, 0-9 and '-', starting with a letter"
        )))
    }
}

impl LabSpec {
    pub fn plan(o: &UpOptions, twill: PathBuf) -> Result<Self, LabError> {
        check_name(&o.name)?;
        if o.nodes == 0 || o.nodes > 50 {
            return Err(LabError::Invalid(format!(
                "--nodes {} must be between 1 and 50",
                o.nodes
            )));
        }
        let prefix = format!("tl-{}-", o.name);
        let hosts: Vec<Ipv4Addr> = o.underlay.hosts().collect();
        if hosts.len() < 128 {
            return Err(LabError::Invalid(format!(
                "underlay {} is too small (want a /25 or wider)",
                o.underlay
            )));
        }
        let unfit = twill_control::Settings {
            service_cidrs: vec![IpNet::V4(o.service_cidr)],
            pod_cidr: IpNet::V4(o.pod_cidr),
            node_subnet_len: 24,
            ..twill_control::Settings::default()
        }
        .check(o.nodes);
        if !unfit.is_empty() {
            return Err(LabError::Invalid(unfit.join("; ")));
        }
        let mut subnets = o
            .pod_cidr
            .subnets(24)
            .map_err(|e| LabError::Invalid(format!("--pod-cidr: {e}")))?;
        let nodes = (0..o.nodes)
            .map(|i| {
                let pod_cidr = subnets.next().ok_or_else(|| {
                    LabError::Invalid(format!("--pod-cidr {} has too few /24s", o.pod_cidr))
                })?;
                Ok(NodeSpec {
                    name: format!("node-{}", i + 1),
                    netns: format!("{prefix}node-{}", i + 1),
                    ip: hosts[10 + i],
                    pod_cidr,
                    switch_port: format!("n{}", i + 1),
                    mtu: None,
                    zone: (!o.zones.is_empty()).then(|| o.zones[i % o.zones.len()].clone()),
                })
            })
            .collect::<Result<Vec<_>, LabError>>()?;
        let client = o.with_client.then(|| HostSpec {
            name: "client".into(),
            netns: format!("{prefix}client"),
            ip: hosts[99],
            switch_port: "client".into(),
        });
        // The last /28 of the underlay.
        let last = u32::from(o.underlay.broadcast()) & !0xf;
        let lb_pool = Ipv4Net::new(Ipv4Addr::from(last), 28).expect("valid /28");
        Ok(Self {
            name: o.name.clone(),
            dir: root().join(&o.name),
            switch_netns: format!("{prefix}sw"),
            underlay: o.underlay,
            nodes,
            client,
            backend: o.backend,
            proxy_mode: o.proxy_mode.clone(),
            pod_cidr: o.pod_cidr,
            service_cidr: o.service_cidr,
            lb_pool,
            dns: o.dns,
            twill,
            restart_backoff_ms: o.restart_backoff_ms.max(1),
            flow_log: o.flow_log.clone(),
        })
    }

    pub fn prefix(&self) -> String {
        format!("tl-{}-", self.name)
    }

    pub fn load(name: &str) -> Result<Self, LabError> {
        check_name(name)?;
        let path = root().join(name).join("lab.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                LabError::NoSuchLab(name.to_string())
            } else {
                LabError::Io(path.display().to_string(), e)
            }
        })?;
        serde_json::from_str(&text)
            .map_err(|e| LabError::Invalid(format!("{}: {e}", path.display())))
    }

    pub fn save(&self) -> Result<(), LabError> {
        let text = serde_json::to_string_pretty(self).expect("serializable");
        write_atomic(&self.dir.join("lab.json"), text.as_bytes())
    }

    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn service_cidr_net(&self) -> IpNet {
        IpNet::V4(self.service_cidr)
    }

    pub fn applied_dir(&self) -> PathBuf {
        self.dir.join("applied")
    }
    pub fn cluster_file(&self) -> PathBuf {
        self.dir.join("cluster.yaml")
    }
    pub fn status_file(&self) -> PathBuf {
        self.dir.join("status.json")
    }
    pub fn pods_dir(&self) -> PathBuf {
        self.dir.join("pods")
    }
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.dir.join("nodes").join(node)
    }
    pub fn cni_bin(&self) -> PathBuf {
        self.dir.join("cni").join("bin")
    }
    pub fn controller_pid_file(&self) -> PathBuf {
        self.dir.join("controller.pid")
    }
}

/// Write through a temporary file and rename, so readers never see half a file.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), LabError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| LabError::Io(path.display().to_string(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_refuse_cidrs_that_cannot_work() {
        let twill = PathBuf::from("/bin/true");
        let overlap = UpOptions {
            pod_cidr: "10.96.0.0/16".parse().unwrap(),
            ..UpOptions::default()
        };
        let e = LabSpec::plan(&overlap, twill.clone())
            .unwrap_err()
            .to_string();
        assert!(e.contains("overlaps the service CIDR 10.96.0.0/12"), "{e}");
        let small = UpOptions {
            pod_cidr: "10.244.0.0/24".parse().unwrap(),
            ..UpOptions::default()
        };
        let e = LabSpec::plan(&small, twill.clone())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("has room for 1 node with /24 each; 2 need one"),
            "{e}"
        );
        assert!(LabSpec::plan(&UpOptions::default(), twill).is_ok());
    }
}
