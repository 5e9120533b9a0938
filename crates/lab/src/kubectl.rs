//! `twill lab get`: tables with kubectl's columns, so habits carry over.

use std::fmt::Write;

use twill_model::{ClusterState, ServiceType};

use crate::lifecycle;
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

/// `get pods`. `age` is shown for pods the runtime has not started; started pods show
/// their own, from `now` (unix seconds).
pub fn pods(
    state: &ClusterState,
    running: &[RunningPod],
    scope: &Scope<'_>,
    wide: bool,
    age: &str,
    now: u64,
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
        let (restarts, pod_age) = match r {
            Some(r) => (
                lifecycle::restarts_text(&r.containers, now),
                crate::kubectl::age(now.saturating_sub(r.created_at)),
            ),
            None => ("0".into(), age.into()),
        };
        // Readiness is per pod here (declared ports bound, or probes), so all or none.
        let ready = if p.ready { containers } else { 0 };
        let status = pod_status(p, r);
        let mut row = vec![
            p.key.name.clone(),
            format!("{ready}/{containers}"),
            status,
            restarts,
            pod_age,
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
            // The lab's runtime per container (`describe pod` says why).
            row.push(match r {
                Some(r) if !r.containers.is_empty() => r
                    .containers
                    .iter()
                    .map(|c| c.runtime.kind())
                    .collect::<Vec<_>>()
                    .join(","),
                _ => "<none>".into(),
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

/// The CRD's printer columns: NAME, TIER, PRIORITY, AGE (cluster-scoped).
pub fn cluster_network_policies(state: &ClusterState, age: &str) -> String {
    let mut rows = vec![vec![
        "NAME".to_string(),
        "TIER".into(),
        "PRIORITY".into(),
        "AGE".into(),
    ]];
    for p in state.cluster_network_policies.values() {
        rows.push(vec![
            p.name.clone(),
            p.tier.as_str().into(),
            p.priority.to_string(),
            age.into(),
        ]);
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

/// A pod's STATUS column: from its containers once the runtime has it, else
/// `Pending` (not scheduled) or `ContainerCreating`.
pub fn pod_status(p: &twill_model::Pod, r: Option<&RunningPod>) -> String {
    match r {
        Some(r) => lifecycle::status_text(p.phase.as_str(), p.terminating, &r.containers),
        None if p.spec.node_name.is_none() => "Pending".into(),
        None => "ContainerCreating".into(),
    }
}

/// One requirement of a label selector (`-l`), kubectl's syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `k=v`, `k==v`
    Equals(String, String),
    /// `k!=v` (also true when `k` is absent)
    NotEquals(String, String),
    /// `k in (a,b)`
    In(String, Vec<String>),
    /// `k notin (a,b)` (also true when `k` is absent)
    NotIn(String, Vec<String>),
    /// `k`
    Exists(String),
    /// `!k`
    DoesNotExist(String),
}

/// Parse `-l app=web,tier!=db,env in (a,b),!legacy`.
pub fn parse_selector(s: &str) -> Result<Vec<Requirement>, String> {
    // Split at commas outside parentheses.
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, ch) in s.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    let set = |rest: &str| -> Result<Vec<String>, String> {
        let inner = rest
            .trim()
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(|| format!("{s:?}: expected a (value, ...) list"))?;
        Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
    };
    let mut out = Vec::new();
    for part in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
        let req = if let Some((k, v)) = part.split_once("!=") {
            Requirement::NotEquals(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            Requirement::Equals(k.trim().into(), v.trim().into())
        } else if words.len() == 2 && words[1].trim_start().starts_with("notin") {
            Requirement::NotIn(words[0].into(), set(&words[1].trim_start()[5..])?)
        } else if words.len() == 2 && words[1].trim_start().starts_with("in") {
            Requirement::In(words[0].into(), set(&words[1].trim_start()[2..])?)
        } else if let Some(k) = part.strip_prefix('!') {
            Requirement::DoesNotExist(k.trim().into())
        } else if words.len() == 1 {
            Requirement::Exists(part.into())
        } else {
            return Err(format!(
                "{s:?}: cannot read {part:?} as a label requirement"
            ));
        };
        out.push(req);
    }
    Ok(out)
}

/// Whether `labels` satisfy every requirement.
pub fn selects(reqs: &[Requirement], labels: &twill_model::Labels) -> bool {
    reqs.iter().all(|r| match r {
        Requirement::Equals(k, v) => labels.get(k) == Some(v),
        Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
        Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
        Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
        Requirement::Exists(k) => labels.contains_key(k),
        Requirement::DoesNotExist(k) => !labels.contains_key(k),
    })
}

/// Keep only the objects whose labels `reqs` select.
pub fn filter_by_labels(state: &mut ClusterState, reqs: &[Requirement]) {
    state.nodes.retain(|_, n| selects(reqs, &n.labels));
    state.pods.retain(|_, p| selects(reqs, &p.labels));
    state.services.retain(|_, s| selects(reqs, &s.labels));
    state
        .endpoint_slices
        .retain(|_, s| selects(reqs, &s.labels));
    state
        .network_policies
        .retain(|_, p| selects(reqs, &p.labels));
}

/// `get events`: every pod's events, oldest first, kubectl's columns.
pub fn events(running: &[RunningPod], scope: &Scope<'_>, now: u64) -> String {
    let mut all: Vec<(&RunningPod, &lifecycle::Event)> = running
        .iter()
        .filter(|r| scope.matches(&r.namespace))
        .flat_map(|r| r.events.iter().map(move |e| (r, e)))
        .collect();
    all.sort_by_key(|(r, e)| (e.last, r.namespace.clone(), r.name.clone()));
    if all.is_empty() {
        return String::new();
    }
    let mut rows = vec![header(
        scope,
        &["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
    )];
    for (r, e) in all {
        let row = vec![
            age(now.saturating_sub(e.last)),
            e.kind.clone(),
            e.reason.clone(),
            format!("pod/{}", r.name),
            e.message.clone(),
        ];
        rows.push(with_ns(scope, &r.namespace, row));
    }
    table(&rows)
}

/// `describe pod`, in kubectl's layout: the pod, each container with the lab's runtime
/// and why, its state, last state and restarts, the conditions, and the events.
pub fn describe_pod(pod: &twill_model::Pod, running: Option<&RunningPod>, now: u64) -> String {
    use lifecycle::State;
    use std::fmt::Write as _;
    let mut o = String::new();
    let field = |o: &mut String, indent: usize, k: &str, v: &str| {
        let key = if k.is_empty() {
            String::new()
        } else {
            format!("{k}:")
        };
        // kubectl aligns values in a column, with at least one space after a long key.
        let pad = 18usize.saturating_sub(indent).max(key.len() + 1);
        let _ = writeln!(o, "{:indent$}{key:<pad$}{v}", "");
    };
    field(&mut o, 0, "Name", &pod.key.name);
    field(&mut o, 0, "Namespace", &pod.key.namespace);
    let node = match (&pod.spec.node_name, pod.host_ip) {
        (Some(n), Some(ip)) => format!("{n}/{ip}"),
        (Some(n), None) => n.clone(),
        (None, _) => "<none>".into(),
    };
    field(&mut o, 0, "Node", &node);
    if let Some(r) = running {
        field(&mut o, 0, "Start Time", &lifecycle::rfc3339(r.created_at));
    }
    let kv = |m: &twill_model::Labels, sep: &str| -> Vec<String> {
        m.iter().map(|(k, v)| format!("{k}{sep}{v}")).collect()
    };
    for (name, lines) in [
        ("Labels", kv(&pod.labels, "=")),
        ("Annotations", kv(&pod.annotations, ": ")),
    ] {
        let mut lines = lines.into_iter();
        field(
            &mut o,
            0,
            name,
            &lines.next().unwrap_or_else(|| "<none>".into()),
        );
        for l in lines {
            field(&mut o, 0, "", &l);
        }
    }
    let status = match running {
        Some(_) => pod_status(pod, running),
        // describe says Pending where get says ContainerCreating, as kubectl does.
        None => "Pending".into(),
    };
    field(&mut o, 0, "Status", &status);
    let ip = pod
        .pod_ips
        .first()
        .map_or_else(|| "<none>".to_string(), ToString::to_string);
    field(&mut o, 0, "IP", &ip);
    field(
        &mut o,
        0,
        "Restart Policy",
        pod.spec.restart_policy.as_str(),
    );
    o.push_str("Containers:\n");
    for (i, c) in pod.spec.containers.iter().enumerate() {
        let cs = running.and_then(|r| r.containers.get(i));
        let _ = writeln!(o, "  {}:", c.name);
        field(
            &mut o,
            4,
            "Image",
            if c.image.is_empty() {
                "<none>"
            } else {
                &c.image
            },
        );
        if let Some(cs) = cs {
            let rt = format!("{} ({})", cs.runtime.kind(), cs.runtime.reason());
            field(&mut o, 4, "Lab runtime", &rt);
        }
        let ports: Vec<String> = c
            .ports
            .iter()
            .map(|p| format!("{}/{}", p.container_port, p.protocol.as_str()))
            .collect();
        field(
            &mut o,
            4,
            "Port",
            &if ports.is_empty() {
                "<none>".into()
            } else {
                ports.join(", ")
            },
        );
        if !c.command.is_empty() {
            field(&mut o, 4, "Command", &c.command.join(" "));
        }
        if !c.args.is_empty() {
            field(&mut o, 4, "Args", &c.args.join(" "));
        }
        let state_lines = |o: &mut String, label: &str, st: &State| match st {
            State::Running { started_at } => {
                field(o, 4, label, "Running");
                field(o, 6, "Started", &lifecycle::rfc3339(*started_at));
            }
            State::Waiting { reason, message } => {
                field(o, 4, label, "Waiting");
                field(o, 6, "Reason", reason);
                if !message.is_empty() {
                    field(o, 6, "Message", message);
                }
            }
            State::Terminated {
                exit_code,
                reason,
                message,
                started_at,
                finished_at,
            } => {
                field(o, 4, label, "Terminated");
                field(o, 6, "Reason", reason);
                if !message.is_empty() {
                    field(o, 6, "Message", message);
                }
                field(o, 6, "Exit Code", &exit_code.to_string());
                if let Some(s) = started_at {
                    field(o, 6, "Started", &lifecycle::rfc3339(*s));
                }
                field(o, 6, "Finished", &lifecycle::rfc3339(*finished_at));
            }
        };
        match cs {
            Some(cs) => {
                state_lines(&mut o, "State", &cs.state);
                if let Some(last) = &cs.last_state {
                    state_lines(&mut o, "Last State", last);
                }
                let ready = running.is_some_and(|r| r.ready) && cs.running();
                field(&mut o, 4, "Ready", if ready { "True" } else { "False" });
                field(&mut o, 4, "Restart Count", &cs.restart_count.to_string());
            }
            None => {
                let waiting = State::Waiting {
                    reason: if pod.spec.node_name.is_some() {
                        "ContainerCreating".into()
                    } else {
                        String::new()
                    },
                    message: String::new(),
                };
                state_lines(&mut o, "State", &waiting);
                field(&mut o, 4, "Ready", "False");
                field(&mut o, 4, "Restart Count", "0");
            }
        }
    }
    o.push_str("Conditions:\n  Type              Status\n");
    let scheduled = pod.spec.node_name.is_some();
    let ready = pod.ready;
    for (t, v) in [
        ("PodScheduled", scheduled),
        ("Ready", ready),
        ("ContainersReady", ready),
    ] {
        let _ = writeln!(o, "  {t:<18}{}", if v { "True" } else { "False" });
    }
    let events = running.map(|r| r.events.as_slice()).unwrap_or_default();
    if events.is_empty() {
        o.push_str("Events:            <none>\n");
    } else {
        o.push_str("Events:\n");
        let mut rows = vec![
            ["Type", "Reason", "Age", "From", "Message"]
                .map(String::from)
                .to_vec(),
            ["----", "------", "----", "----", "-------"]
                .map(String::from)
                .to_vec(),
        ];
        for e in events {
            let age = if e.count > 1 {
                format!(
                    "{} (x{} over {})",
                    age(now.saturating_sub(e.last)),
                    e.count,
                    age(now.saturating_sub(e.first))
                )
            } else {
                age(now.saturating_sub(e.first))
            };
            rows.push(vec![
                e.kind.clone(),
                e.reason.clone(),
                age,
                e.source.clone(),
                e.message.clone(),
            ]);
        }
        for line in table(&rows).lines() {
            let _ = writeln!(o, "  {line}");
        }
    }
    o
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

    #[test]
    fn label_selectors_read_kubectls_syntax() {
        let reqs = parse_selector("app=web,tier!=db, env in (prod, staging),!legacy,team").unwrap();
        assert_eq!(
            reqs,
            [
                Requirement::Equals("app".into(), "web".into()),
                Requirement::NotEquals("tier".into(), "db".into()),
                Requirement::In("env".into(), vec!["prod".into(), "staging".into()]),
                Requirement::DoesNotExist("legacy".into()),
                Requirement::Exists("team".into()),
            ]
        );
        let labels = |kv: &[(&str, &str)]| -> twill_model::Labels {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let yes = labels(&[("app", "web"), ("env", "prod"), ("team", "a")]);
        assert!(selects(&reqs, &yes));
        let no = labels(&[("app", "web"), ("env", "dev"), ("team", "a")]);
        assert!(!selects(&reqs, &no));
        let notin = parse_selector("env notin (prod)").unwrap();
        assert!(selects(&notin, &labels(&[])), "absent satisfies notin");
        assert!(!selects(&notin, &labels(&[("env", "prod")])));
        assert!(parse_selector("env in prod").is_err());
        assert!(parse_selector("a b c").is_err());
    }
}
