//! Calling CNI plugins exactly as a container runtime does (libcni's conflist rules):
//! each plugin of the list in order for ADD with the previous result as `prevResult`,
//! in reverse order for DEL with the cached ADD result, capabilities passed as
//! `runtimeConfig`, plugins found on `CNI_PATH`, executed in the node's namespace.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Value, json};

use crate::LabError;
use crate::netns;

/// One pod attachment.
pub struct Attachment<'a> {
    pub node_netns: &'a str,
    pub container_id: &'a str,
    pub netns_path: PathBuf,
    pub ifname: &'a str,
    /// `K8S_POD_NAMESPACE=..;K8S_POD_NAME=..` as kubelet passes.
    pub args: String,
    pub cni_path: Vec<PathBuf>,
    /// `portMappings` capability input.
    pub port_mappings: Vec<Value>,
}

fn find_plugin(dirs: &[PathBuf], name: &str) -> Result<PathBuf, LabError> {
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| LabError::Cni(format!("plugin {name:?} not found in CNI_PATH {dirs:?}")))
}

fn exec(a: &Attachment<'_>, command: &str, plugin: &str, conf: &Value) -> Result<Value, LabError> {
    let bin = find_plugin(&a.cni_path, plugin)?;
    let cni_path = std::env::join_paths(&a.cni_path).expect("paths without ':'");
    let mut child = netns::in_netns(a.node_netns, &bin)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", a.container_id)
        .env("CNI_NETNS", &a.netns_path)
        .env("CNI_IFNAME", a.ifname)
        .env("CNI_ARGS", &a.args)
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| LabError::Io(bin.display().to_string(), e))?;
    let input = serde_json::to_vec(conf).expect("json");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(&input)
        .map_err(|e| LabError::Io(bin.display().to_string(), e))?;
    let out = child
        .wait_with_output()
        .map_err(|e| LabError::Io(bin.display().to_string(), e))?;
    let stdout: Value = if out.stdout.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    if !out.status.success() {
        let msg = stdout.get("msg").and_then(Value::as_str).unwrap_or("");
        let details = stdout.get("details").and_then(Value::as_str).unwrap_or("");
        return Err(LabError::Cni(format!(
            "{plugin} {command} failed (code {}): {msg} {details} {}",
            stdout
                .get("code")
                .map(ToString::to_string)
                .unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(stdout)
}

/// The config one plugin of the list receives.
fn plugin_conf(list: &Value, plugin: &Value, prev: Option<&Value>, a: &Attachment<'_>) -> Value {
    let mut conf = plugin.clone();
    let obj = conf.as_object_mut().expect("plugin is an object");
    obj.insert("cniVersion".into(), list["cniVersion"].clone());
    obj.insert("name".into(), list["name"].clone());
    if let Some(p) = prev {
        obj.insert("prevResult".into(), p.clone());
    }
    let wants_ports = plugin
        .pointer("/capabilities/portMappings")
        .and_then(Value::as_bool)
        == Some(true);
    if wants_ports && !a.port_mappings.is_empty() {
        obj.insert(
            "runtimeConfig".into(),
            json!({"portMappings": a.port_mappings}),
        );
    }
    conf
}

/// ADD through the whole list; returns the final result.
pub fn add(list: &Value, a: &Attachment<'_>) -> Result<Value, LabError> {
    let plugins = list["plugins"]
        .as_array()
        .ok_or_else(|| LabError::Cni("conflist has no plugins".into()))?;
    let mut prev: Option<Value> = None;
    for (i, p) in plugins.iter().enumerate() {
        let ty = p["type"].as_str().unwrap_or_default();
        let conf = plugin_conf(list, p, prev.as_ref(), a);
        match exec(a, "ADD", ty, &conf) {
            Ok(r) => prev = Some(r),
            Err(e) => {
                // libcni: a failed ADD is followed by DEL of what was added so far.
                let _ = del_plugins(list, &plugins[..=i], prev.as_ref(), a);
                return Err(e);
            }
        }
    }
    prev.ok_or_else(|| LabError::Cni("no result".into()))
}

fn del_plugins(
    list: &Value,
    plugins: &[Value],
    prev: Option<&Value>,
    a: &Attachment<'_>,
) -> Result<(), LabError> {
    let mut first = None;
    for p in plugins.iter().rev() {
        let ty = p["type"].as_str().unwrap_or_default();
        if let Err(e) = exec(a, "DEL", ty, &plugin_conf(list, p, prev, a)) {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// DEL through the list in reverse with the cached ADD result.
pub fn del(list: &Value, a: &Attachment<'_>, cached: Option<&Value>) -> Result<(), LabError> {
    let plugins = list["plugins"].as_array().cloned().unwrap_or_default();
    del_plugins(list, &plugins, cached, a)
}

/// The lab node's network configuration: `twill-bridge` on `cni0` with
/// `twill-host-local` for the node's subnet, then the reference `portmap` for hostPort.
pub fn node_conflist(pod_cidr: &str, mtu: u32, ipam_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "twill-lab",
        "plugins": [
            {
                "type": "twill-bridge",
                "bridge": "cni0",
                "isGateway": true,
                "isDefaultGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "mtu": mtu,
                "ipam": {
                    "type": "twill-host-local",
                    "ranges": [[{"subnet": pod_cidr}]],
                    "dataDir": ipam_dir,
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
        ]
    })
}

/// The pod's IPv4 address from a CNI result.
pub fn result_ip(result: &Value) -> Option<std::net::IpAddr> {
    result["ips"].as_array()?.iter().find_map(|ip| {
        let addr = ip["address"].as_str()?;
        addr.split('/').next()?.parse().ok()
    })
}
