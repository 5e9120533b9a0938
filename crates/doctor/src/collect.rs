//! Taking a [`Snapshot`] of the network namespace the calling thread is in: sysctls
//! from /proc/sys, `iptables-save`, `ip -j -d link`, `conntrack -L`, and a host-local
//! store folder. Each source that is unavailable is left empty and the checks that need
//! it stay silent, rather than guessing.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;

use crate::Unreadable;

use crate::{ConntrackEntry, IpamReservation, IptablesDump, Link, Snapshot};

pub const SYSCTLS: &[&str] = &[
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.forwarding",
];

fn read_sysctl(key: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/{}", key.replace('.', "/")))
        .ok()
        .map(|s| s.trim().to_string())
}

/// A tool's stdout, or why it could not be had (not installed, needs root, failed).
fn run(program: &str, args: &[&str]) -> Result<String, Unreadable> {
    let source = format!("{program} {}", args.join(" ")).trim().to_string();
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| Unreadable {
            source: source.clone(),
            why: if e.kind() == std::io::ErrorKind::NotFound {
                format!("{program} is not installed")
            } else {
                e.to_string()
            },
            needs_root: false,
        })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let denied = [
        "Permission denied",
        "must be root",
        "Operation not permitted",
    ]
    .iter()
    .any(|m| stderr.contains(m));
    Err(Unreadable {
        source,
        why: if denied {
            format!("needs root ({})", stderr.lines().next().unwrap_or_default())
        } else {
            format!(
                "{} ({})",
                out.status,
                stderr.lines().next().unwrap_or_default()
            )
        },
        needs_root: denied,
    })
}

/// Links from `ip -j -d link show`.
pub fn parse_links(json: &str) -> Vec<Link> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    v.as_array()
        .map(|links| {
            links
                .iter()
                .map(|l| Link {
                    name: l["ifname"].as_str().unwrap_or_default().to_string(),
                    kind: l
                        .pointer("/linkinfo/info_kind")
                        .and_then(|k| k.as_str())
                        .map(str::to_string),
                    mtu: l["mtu"].as_u64().unwrap_or(0) as u32,
                    up: l["flags"]
                        .as_array()
                        .is_some_and(|f| f.iter().any(|x| x == "UP")),
                    master: l["master"].as_str().map(str::to_string),
                    vxlan_port: l
                        .pointer("/linkinfo/info_data/port")
                        .and_then(|p| p.as_u64())
                        .map(|p| p as u16),
                    lower: l
                        .pointer("/linkinfo/info_data/link")
                        .and_then(|p| p.as_str())
                        .map(str::to_string),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Entries from `conntrack -L` output, read with the tracer's parser.
pub fn parse_conntrack(text: &str) -> Vec<ConntrackEntry> {
    twill_trace::conntrack::parse(text)
        .into_iter()
        .map(|e| ConntrackEntry {
            protocol: e.proto,
            orig_dst: SocketAddr::new(e.original.dst, e.original.dport),
            reply_src: SocketAddr::new(e.reply.src, e.reply.sport),
        })
        .collect()
}

/// The dump could not be read: the iptables checks are skipped; say why on stderr
/// (the doctor's output is its findings).
fn warn_unparsed(msg: &str) {
    eprintln!("doctor: rules not understood ({msg}); the checks that read them are skipped");
}

/// A host-local store: `<dir>/<network>/<ip>` files holding `containerid\nifname`.
pub fn read_ipam(dir: &Path) -> Vec<IpamReservation> {
    let mut out = Vec::new();
    let Ok(nets) = std::fs::read_dir(dir) else {
        return out;
    };
    for net in nets.flatten().filter(|e| e.path().is_dir()) {
        let network = net.file_name().to_string_lossy().into_owned();
        let Ok(files) = std::fs::read_dir(net.path()) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let Ok(ip) = name.parse::<IpAddr>() else {
                continue;
            };
            let text = std::fs::read_to_string(f.path()).unwrap_or_default();
            let mut lines = text.lines();
            out.push(IpamReservation {
                network: network.clone(),
                ip,
                container_id: lines.next().unwrap_or_default().trim().to_string(),
                ifname: lines.next().unwrap_or_default().trim().to_string(),
            });
        }
    }
    out.sort_by(|a, b| (a.network.as_str(), a.ip).cmp(&(b.network.as_str(), b.ip)));
    out
}

/// Everything but the cluster objects, IPAM and live containers (the caller adds those).
pub fn collect_node() -> Snapshot {
    let mut unreadable = Vec::new();
    let mut output = |program: &str, args: &[&str]| match run(program, args) {
        Ok(t) => Some(t),
        Err(u) => {
            unreadable.push(u);
            None
        }
    };
    let sysctls: BTreeMap<String, Option<String>> = SYSCTLS
        .iter()
        .map(|k| (k.to_string(), read_sysctl(k)))
        .collect();
    let iptables = output("iptables-save", &[]).and_then(|t| {
        IptablesDump::parse("iptables-save", &t)
            .map_err(|e| warn_unparsed(&e.to_string()))
            .ok()
    });
    let links = output("ip", &["-j", "-d", "link", "show"])
        .map(|j| parse_links(&j))
        .unwrap_or_default();
    let node_ips = output("ip", &["-j", "addr", "show"])
        .and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
        .map(|v| {
            v.as_array()
                .into_iter()
                .flatten()
                .filter(|l| l["ifname"] != "lo")
                .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
                .filter_map(|a| a["local"].as_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default();
    let conntrack = output("conntrack", &["-L", "-p", "udp"])
        .map(|t| parse_conntrack(&t))
        .unwrap_or_default();
    let nft = output("nft", &["-j", "list", "ruleset"])
        .and_then(|j| {
            let text = output("nft", &["-a", "list", "ruleset"]);
            twill_trace::nft::NftRuleset::parse("nft -j list ruleset", &j, text.as_deref())
                .map_err(|e| warn_unparsed(&e.to_string()))
                .ok()
        })
        .unwrap_or_default();
    Snapshot {
        sysctls,
        iptables,
        links,
        node_ips,
        conntrack,
        nft,
        unreadable,
        ..Default::default()
    }
}
