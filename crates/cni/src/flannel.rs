//! The `flannel` CNI plugin (flannel-io/cni-plugin `flannel_linux.go`): reads the node's
//! lease from `subnet.env` (written by the overlay agent) and delegates to a main plugin,
//! `bridge` by default, filling in only what the user's `delegate` did not set:
//! `name`, `cniVersion`, `ipMasq = !FLANNEL_IPMASQ`, `mtu = FLANNEL_MTU`,
//! `isGateway = true` (bridge), and a host-local `ipam` whose range is the network of
//! `FLANNEL_SUBNET` and whose routes point at `FLANNEL_NETWORK`. The delegate config is
//! saved under `dataDir/<containerID>` so DEL runs the same delegate with the same config.

use std::path::PathBuf;

use ipnet::IpNet;
use serde_json::{Map, Value, json};

use crate::delegate;
use crate::skel::{CmdArgs, Command, Plugin};
use crate::spec::{CniError, ErrorCode};

pub struct Flannel;

const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";

/// The parts of `subnet.env` the plugin uses.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    pub networks: Vec<IpNet>,
    pub subnet: Option<IpNet>,
    pub ipv6_networks: Vec<IpNet>,
    pub ipv6_subnet: Option<IpNet>,
    pub mtu: Option<u32>,
    pub ipmasq: Option<bool>,
}

/// Parse `KEY=value` lines; unknown keys are ignored.
pub fn parse_subnet_env(text: &str) -> Result<SubnetEnv, String> {
    let mut env = SubnetEnv::default();
    let nets = |v: &str, k: &str| -> Result<Vec<IpNet>, String> {
        v.split(',')
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.trim()
                    .parse()
                    .map_err(|_| format!("{k}: invalid CIDR {s:?}"))
            })
            .collect()
    };
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim();
        match k.trim() {
            "FLANNEL_NETWORK" => env.networks = nets(v, k)?,
            "FLANNEL_IPV6_NETWORK" => env.ipv6_networks = nets(v, k)?,
            "FLANNEL_SUBNET" => {
                env.subnet = Some(v.parse().map_err(|_| format!("{k}: invalid CIDR {v:?}"))?)
            }
            "FLANNEL_IPV6_SUBNET" => {
                env.ipv6_subnet = Some(v.parse().map_err(|_| format!("{k}: invalid CIDR {v:?}"))?)
            }
            "FLANNEL_MTU" => {
                env.mtu = Some(
                    v.parse()
                        .map_err(|_| format!("{k}: invalid number {v:?}"))?,
                )
            }
            "FLANNEL_IPMASQ" => env.ipmasq = Some(v == "true"),
            _ => {}
        }
    }
    Ok(env)
}

/// The delegate's network config (pure).
pub fn plan_delegate(conf: &Value, env: &SubnetEnv) -> Result<Value, String> {
    let mut d: Map<String, Value> = conf
        .get("delegate")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    d.entry("name")
        .or_insert_with(|| conf.get("name").cloned().unwrap_or(Value::Null));
    d.entry("cniVersion")
        .or_insert_with(|| conf.get("cniVersion").cloned().unwrap_or(json!("0.3.0")));
    d.entry("type").or_insert_with(|| json!("bridge"));
    if !d.contains_key("ipMasq")
        && let Some(m) = env.ipmasq
    {
        d.insert("ipMasq".into(), json!(!m));
    }
    if !d.contains_key("mtu")
        && let Some(m) = env.mtu
    {
        d.insert("mtu".into(), json!(m));
    }
    if d.get("type") == Some(&json!("bridge")) {
        d.entry("isGateway").or_insert(json!(true));
    }
    let mut ipam: Map<String, Value> = conf
        .get("ipam")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    ipam.entry("type").or_insert(json!("host-local"));
    if !ipam.contains_key("ranges") && !ipam.contains_key("subnet") {
        let mut ranges = Vec::new();
        for sn in [env.subnet, env.ipv6_subnet].into_iter().flatten() {
            ranges.push(json!([{"subnet": sn.trunc().to_string()}]));
        }
        if ranges.is_empty() {
            return Err("subnet.env has neither FLANNEL_SUBNET nor FLANNEL_IPV6_SUBNET".into());
        }
        ipam.insert("ranges".into(), Value::Array(ranges));
    }
    if !ipam.contains_key("routes") {
        let routes: Vec<Value> = env
            .networks
            .iter()
            .chain(&env.ipv6_networks)
            .map(|n| json!({"dst": n.to_string()}))
            .collect();
        ipam.insert("routes".into(), Value::Array(routes));
    }
    d.insert("ipam".into(), Value::Object(ipam));
    Ok(Value::Object(d))
}

fn data_dir(conf: &Value) -> PathBuf {
    PathBuf::from(
        conf.get("dataDir")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or(DEFAULT_DATA_DIR),
    )
}

fn internal<E: std::fmt::Display>(e: E) -> CniError {
    CniError::internal(e.to_string())
}

fn delegate_type(d: &Value) -> String {
    d.get("type")
        .and_then(Value::as_str)
        .unwrap_or("bridge")
        .to_string()
}

impl Plugin for Flannel {
    fn add(&self, a: &CmdArgs) -> Result<Value, CniError> {
        let file = a
            .conf
            .get("subnetFile")
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_SUBNET_FILE);
        let text = std::fs::read_to_string(file).map_err(|e| {
            CniError::new(
                ErrorCode::TryAgainLater,
                format!("failed to read {file}: {e} (is the overlay agent running?)"),
            )
        })?;
        let env = parse_subnet_env(&text).map_err(|e| internal(format!("{file}: {e}")))?;
        let d = plan_delegate(&a.conf, &env).map_err(|e| internal(format!("{file}: {e}")))?;
        let dir = data_dir(&a.conf);
        std::fs::create_dir_all(&dir).map_err(|e| internal(format!("{}: {e}", dir.display())))?;
        let saved = dir.join(&a.container_id);
        let bytes = serde_json::to_vec(&d).map_err(internal)?;
        std::fs::write(&saved, &bytes)
            .map_err(|e| internal(format!("{}: {e}", saved.display())))?;
        match delegate::exec(&delegate_type(&d), a, Command::Add, &bytes) {
            Ok(r) => Ok(r.unwrap_or_default().to_json(&a.version)),
            Err(e) => {
                let _ = std::fs::remove_file(&saved);
                Err(e)
            }
        }
    }

    fn del(&self, a: &CmdArgs) -> Result<(), CniError> {
        let saved = data_dir(&a.conf).join(&a.container_id);
        let bytes = match std::fs::read(&saved) {
            Ok(b) => b,
            // Nothing saved: ADD never got that far, or DEL already ran.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(internal(format!("{}: {e}", saved.display()))),
        };
        let d: Value = serde_json::from_slice(&bytes)
            .map_err(|e| internal(format!("{}: {e}", saved.display())))?;
        delegate::exec(&delegate_type(&d), a, Command::Del, &bytes)?;
        let _ = std::fs::remove_file(&saved);
        Ok(())
    }

    fn check(&self, a: &CmdArgs) -> Result<(), CniError> {
        let saved = data_dir(&a.conf).join(&a.container_id);
        let bytes =
            std::fs::read(&saved).map_err(|e| internal(format!("{}: {e}", saved.display())))?;
        let mut d: Value = serde_json::from_slice(&bytes).map_err(internal)?;
        if let (Some(m), Some(p)) = (d.as_object_mut(), a.conf.get("prevResult")) {
            m.insert("prevResult".into(), p.clone());
        }
        let bytes = serde_json::to_vec(&d).map_err(internal)?;
        delegate::exec(&delegate_type(&d), a, Command::Check, &bytes).map(|_| ())
    }

    fn gc(&self, _a: &CmdArgs) -> Result<(), CniError> {
        Ok(())
    }

    fn status(&self, a: &CmdArgs) -> Result<(), CniError> {
        let file = a
            .conf
            .get("subnetFile")
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_SUBNET_FILE);
        if std::path::Path::new(file).exists() {
            Ok(())
        } else {
            Err(CniError::new(
                ErrorCode::PluginNotAvailable,
                format!("{file} does not exist yet"),
            ))
        }
    }
}

#[cfg(test)]
mod tests;
