//! `twill lab get`: tables with kubectl's columns, so habits carry over.

use std::fmt::Write;

use twill_model::{ClusterState, ServiceType};

use crate::pod::RunningPod;

/// Which namespaces to show.
pub enum Scope<'a> {
    Namespace(&'a str),
    All,
}

impl Scope<'_> {
    fn matches(&self, ns: &str) -> bool {
        match self {
            Scope::Namespace(n) => *n == ns,
            Scope::All => true,
        }
    }
    fn all(&self) -> bool {
        matches!(self, Scope::All)
    }
}

/// Left-aligned columns separated by three spaces, as kubectl prints them.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}   ", w = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn with_ns(scope: &Scope<'_>, ns: &str, mut row: Vec<String>) -> Vec<String> {
    if scope.all() {
        row.insert(0, ns.to_string());
    }
    row
}

fn header(scope: &Scope<'_>, cols: &[&str]) -> Vec<String> {
    let mut h: Vec<String> = cols.iter().map(|s| s.to_string()).collect();
    if scope.all() {
        h.insert(0, "NAMESPACE".into());
    }
    h
}

pub fn nodes(state: &ClusterState, wide: bool, age: &str) -> String {
    let mut rows = vec![if wide {
        [
            "NAME",
            "STATUS",
            "ROLES",
            "AGE",
            "VERSION",
            "INTERNAL-IP",
            "EXTERNAL-IP",
            "OS-IMAGE",
            "KERNEL-VERSION",
            "CONTAINER-RUNTIME",
        ]
        .map(String::from)
        .to_vec()
    } else {
        ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
            .map(String::from)
            .to_vec()
    }];
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    for n in state.nodes.values() {
        let mut r = vec![
            n.name.clone(),
            "Ready".into(),
            "<none>".into(),
            age.into(),
            "twill-lab".into(),
        ];
        if wide {
            r.push(
                n.internal_ips
                    .first()
                    .map(ToString::to_string)
                    .unwrap_or_else(|| "<none>".into()),
            );
            r.extend([
                "<none>".to_string(),
                "netns".into(),
                kernel.clone(),
                "twill-lab".into(),
            ]);
        }
        rows.push(r);
    }
    table(&rows)
}

pub fn pods(
    state: &ClusterState,
    running: &[RunningPod],
    scope: &Scope<'_>,
    wide: bool,
    age: &str,
) -> String {
    let mut cols = vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"];
    if wide {
        cols.extend(["IP", "NODE", "NOMINATED NODE", "READINESS GATES", "RUNTIME"]);
    }
    let mut rows = vec![header(scope, &cols)];
    for p in state
        .pods
        .values()
        .filter(|p| scope.matches(&p.key.namespace))
    {
        let r = running
            .iter()
            .find(|r| r.namespace == p.key.namespace && r.name == p.key.name);
        let containers = p.spec.containers.len().max(1);
        let status = match r {
            Some(_) => "Running",
            None if p.spec.node_name.is_none() => "Pending",
            None => "ContainerCreating",
        };
        let mut row = vec![
            p.key.name.clone(),
            format!("{}/{containers}", if p.ready { containers } else { 0 }),
            status.into(),
            "0".into(),
            age.into(),
        ];
        if wide {
            row.push(
                p.pod_ips
                    .first()
                    .map(ToString::to_string)
                    .unwrap_or_else(|| "<none>".into()),
            );
            row.push(p.spec.node_name.clone().unwrap_or_else(|| "<none>".into()));
            row.extend(["<none>".to_string(), "<none>".into()]);
            row.push(match r {
                Some(r) if r.responder => "responder".into(),
                Some(_) => "process".into(),
                None => "<none>".into(),
            });
        }
        rows.push(with_ns(scope, &p.key.namespace, row));
    }
    table(&rows)
}

pub fn services(state: &ClusterState, scope: &Scope<'_>, wide: bool, age: &str) -> String {
    let mut cols = vec![
        "NAME",
        "TYPE",
        "CLUSTER-IP",
        "EXTERNAL-IP",
        "PORT(S)",
        "AGE",
    ];
    if wide {
        cols.push("SELECTOR");
    }
    let mut rows = vec![header(scope, &cols)];
    for s in state
        .services
        .values()
        .filter(|s| scope.matches(&s.key.namespace))
    {
        let cluster_ip = if s.headless {
            "None".to_string()
        } else if s.cluster_ips.is_empty() {
            "<none>".to_string()
        } else {
            s.cluster_ips
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let external: Vec<String> = s
            .load_balancer_ingress
            .iter()
            .map(|i| i.ip.to_string())
            .chain(s.external_ips.iter().map(ToString::to_string))
            .chain(s.external_name.clone())
            .collect();
        let external = if external.is_empty() {
            if s.service_type == ServiceType::LoadBalancer {
                "<pending>".into()
            } else {
                "<none>".into()
            }
        } else {
            external.join(",")
        };
        let ports: Vec<String> = s
            .ports
            .iter()
            .map(|p| match p.node_port {
                Some(n) => format!("{}:{n}/{}", p.port, p.protocol),
                None => format!("{}/{}", p.port, p.protocol),
            })
            .collect();
        let mut row = vec![
            s.key.name.clone(),
            s.service_type.as_str().into(),
            cluster_ip,
            external,
            if ports.is_empty() {
                "<none>".into()
            } else {
                ports.join(",")
            },
            age.into(),
        ];
        if wide {
            row.push(
                s.selector
                    .as_ref()
                    .map(|sel| {
                        sel.iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_else(|| "<none>".into()),
            );
        }
        rows.push(with_ns(scope, &s.key.namespace, row));
    }
    table(&rows)
}

pub fn endpoint_slices(state: &ClusterState, scope: &Scope<'_>, age: &str) -> String {
    let mut rows = vec![header(
        scope,
        &["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"],
    )];
    for s in state
        .endpoint_slices
        .values()
        .filter(|s| scope.matches(&s.key.namespace))
    {
        let ports: Vec<String> = s
            .ports
            .iter()
            .filter_map(|p| p.port.map(|n| n.to_string()))
            .collect();
        let addrs: Vec<String> = s
            .endpoints
            .iter()
            .flat_map(|e| e.addresses.iter().map(ToString::to_string))
            .collect();
        let eps = match addrs.len() {
            0 => "<unset>".to_string(),
            1..=3 => addrs.join(","),
            n => format!("{} + {} more...", addrs[..3].join(","), n - 3),
        };
        let row = vec![
            s.key.name.clone(),
            s.address_type.as_str().into(),
            if ports.is_empty() {
                "<unset>".into()
            } else {
                ports.join(",")
            },
            eps,
            age.into(),
        ];
        rows.push(with_ns(scope, &s.key.namespace, row));
    }
    table(&rows)
}

pub fn network_policies(state: &ClusterState, scope: &Scope<'_>, age: &str) -> String {
    let mut rows = vec![header(scope, &["NAME", "POD-SELECTOR", "AGE"])];
    for p in state
        .network_policies
        .values()
        .filter(|p| scope.matches(&p.key.namespace))
    {
        let sel = p.pod_selector.to_string();
        let row = vec![
            p.key.name.clone(),
            if sel.is_empty() { "<none>".into() } else { sel },
            age.into(),
        ];
        rows.push(with_ns(scope, &p.key.namespace, row));
    }
    table(&rows)
}

/// `5s`, `3m12s`, `2h5m` like kubectl's AGE.
pub fn age(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs}s"),
        120..=3599 => format!("{}m{}s", secs / 60, secs % 60),
        _ => format!("{}h{}m", secs / 3600, (secs % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_padded_like_kubectl() {
        let t = table(&[
            vec!["NAME".into(), "READY".into()],
            vec!["web-1".into(), "1/1".into()],
        ]);
        assert_eq!(t, "NAME    READY\nweb-1   1/1\n");
    }

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(192), "3m12s");
        assert_eq!(age(7500), "2h5m");
    }
}
