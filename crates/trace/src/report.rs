//! Human text for a [`Trace`]: one block per branch, every matched rule with its place,
//! each translation and route, and the fate with its reason.

use std::fmt::Write;

use crate::path::{Path, RoundTrip};
use crate::walk::{Branch, Fate, Step, Trace, sockaddr};

pub fn render_text(t: &Trace) -> String {
    let mut s = String::new();
    let p = &t.probe;
    let _ = writeln!(
        s,
        "{} {} -> {} ({})",
        p.proto,
        sockaddr(p.src, p.sport),
        sockaddr(p.dst, p.dport),
        t.origin
    );
    let n = t.branches.len();
    for (i, b) in t.branches.iter().enumerate() {
        let _ = write!(
            s,
            "\nbranch {}/{n}: probability {:.4}",
            i + 1,
            b.probability
        );
        if let Some(e) = b.endpoint() {
            let _ = write!(s, ", endpoint {e}");
        }
        if b.masqueraded() {
            let _ = write!(s, ", masqueraded");
        }
        s.push('\n');
        s.push_str(&render_branch(b));
    }
    s
}

/// A path across nodes: each hop's branch under the node it happened on.
pub fn render_paths(paths: &[Path]) -> String {
    let mut s = String::new();
    let n = paths.len();
    for (i, p) in paths.iter().enumerate() {
        let _ = writeln!(s, "path {}/{n}: probability {:.4}", i + 1, p.probability);
        for c in &p.conditions {
            let _ = writeln!(s, "  if {c}");
        }
        for h in &p.hops {
            let _ = writeln!(s, "  on {} ({}):", h.node, h.origin);
            for line in render_branch(&h.branch).lines() {
                let _ = writeln!(s, "  {line}");
            }
        }
        if let Some(why) = &p.stopped {
            let _ = writeln!(s, "  (followed no further: {why})");
        }
        s.push('\n');
    }
    s
}

/// Requests and their replies.
pub fn render_round_trips(trips: &[RoundTrip]) -> String {
    let mut s = String::new();
    let n = trips.len();
    for (i, t) in trips.iter().enumerate() {
        let mark = match t.ok {
            Some(true) => "ok",
            Some(false) => "BROKEN",
            None => "?",
        };
        let _ = writeln!(
            s,
            "round trip {}/{n} [{mark}]: probability {:.4}: {}",
            i + 1,
            t.forward.probability,
            t.verdict
        );
        let _ = writeln!(s, "request:");
        for line in render_paths(std::slice::from_ref(&t.forward)).lines() {
            let _ = writeln!(s, "  {line}");
        }
        if !t.replies.is_empty() {
            let _ = writeln!(s, "reply:");
            for line in render_paths(&t.replies).lines() {
                let _ = writeln!(s, "  {line}");
            }
        }
    }
    s
}

/// The steps, warnings and fate of one branch (two-space indented lines).
pub fn render_branch(b: &Branch) -> String {
    let mut s = String::new();
    for c in &b.conditions {
        let _ = writeln!(s, "  if {c}");
    }
    for step in &b.steps {
        match step {
            Step::Hook { hook } => {
                let _ = writeln!(s, "  [{hook}]");
            }
            Step::Rule { at, text } => {
                let _ = writeln!(s, "    {at}: {text}");
            }
            Step::Policy { at, policy } => {
                let _ = writeln!(s, "    {at}: {policy}");
            }
            Step::Route { route, decision } => {
                let _ = writeln!(s, "  route: {route} => {decision}");
            }
            Step::Translate { translation: tr } => {
                let _ = writeln!(s, "    {} {} -> {}", tr.kind, tr.from, tr.to);
            }
            Step::Note { text } => {
                let _ = writeln!(s, "  note: {text}");
            }
        }
    }
    if let Some(l) = &b.link {
        let _ = write!(s, "  link: next hop {} on {}", l.next_hop, l.dev);
        match &l.lladdr {
            Some(mac) => {
                let _ = write!(s, " is {mac}");
                if !l.state.is_empty() {
                    let _ = write!(s, " ({})", l.state.join(","));
                }
            }
            None => {
                let _ = write!(s, ": no neighbour entry (ARP/ND must resolve it first)");
            }
        }
        if let Some(p) = &l.bridge_port {
            let _ = write!(s, ", bridge port {p}");
        }
        if let Some(v) = l.vtep {
            let _ = write!(s, ", vxlan-encapsulated to {v}");
        }
        s.push('\n');
    }
    for w in &b.warnings {
        let _ = writeln!(s, "  warning: {w}");
    }
    let pk = &b.packet;
    let fate = match &b.fate {
        Some(Fate::Delivered { to }) => format!("delivered locally to {to}"),
        Some(Fate::Sent {
            dev,
            next_hop,
            forwarded,
        }) => format!(
            "{} out {} to {next_hop}",
            if *forwarded { "forwarded" } else { "sent" },
            dev.as_deref().unwrap_or("?")
        ),
        Some(Fate::Dropped { reason, .. }) => format!("DROPPED: {reason}"),
        Some(Fate::Rejected { at, with }) => format!(
            "REJECTED by {at}{}",
            with.as_deref()
                .map(|w| format!(" ({w})"))
                .unwrap_or_default()
        ),
        None => "unfinished".into(),
    };
    let _ = writeln!(
        s,
        "  => {fate}; packet now {} -> {}{}",
        sockaddr(pk.src, pk.sport),
        sockaddr(pk.dst, pk.dport),
        if pk.mark != 0 {
            format!(" mark {:#x}", pk.mark)
        } else {
            String::new()
        }
    );
    if let Some(k) = &b.kubernetes {
        if !k.objects.is_empty() || k.verdict.is_some() {
            let _ = writeln!(s, "  in Kubernetes terms:");
        }
        for l in &k.objects {
            let _ = writeln!(s, "    {}: {}", l.object, l.what);
        }
        if let Some(v) = &k.verdict {
            let _ = writeln!(s, "    => {v}");
        }
    }
    s
}

/// Graph languages a path can be drawn in, for documents and slides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Graph {
    /// Graphviz `dot`.
    Dot,
    /// Mermaid `flowchart`.
    Mermaid,
}

fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "'")
}

/// What happened on one hop, in a few words: translations, the Kubernetes objects met,
/// and how the hop ended.
fn hop_label(h: &crate::path::Hop) -> Vec<String> {
    let mut lines = vec![h.node.clone()];
    for t in h.branch.translations() {
        lines.push(format!("{} {} -> {}", t.kind, t.from, t.to));
    }
    if let Some(k) = &h.branch.kubernetes {
        for l in &k.objects {
            lines.push(format!("{}: {}", l.object, l.what));
        }
    }
    lines
}

fn fate_label(b: &Branch) -> (String, bool) {
    let verdict = b.kubernetes.as_ref().and_then(|k| k.verdict.clone());
    match &b.fate {
        Some(Fate::Delivered { to }) => (format!("delivered to {to}"), true),
        Some(Fate::Sent { dev, next_hop, .. }) => (
            format!("sent out {} to {next_hop}", dev.as_deref().unwrap_or("?")),
            true,
        ),
        Some(Fate::Dropped { reason, .. }) => {
            (verdict.unwrap_or(format!("dropped: {reason}")), false)
        }
        Some(Fate::Rejected { at, .. }) => (verdict.unwrap_or(format!("rejected by {at}")), false),
        None => ("unfinished".into(), false),
    }
}

/// The paths as one graph: the source, each hop (node, translations, objects) and how
/// each path ends, with its probability on the first edge; paths that do not get through
/// in red.
pub fn render_graph(paths: &[Path], source: &str, g: Graph) -> String {
    let mut s = String::new();
    match g {
        Graph::Dot => {
            let _ = writeln!(s, "digraph trace {{\n  rankdir=LR;\n  node [shape=box];");
            let _ = writeln!(s, "  src [label=\"{}\", shape=ellipse];", quote(source));
        }
        Graph::Mermaid => {
            let _ = writeln!(s, "flowchart LR\n  src([\"{}\"])", quote(source));
        }
    }
    for (i, p) in paths.iter().enumerate() {
        let mut prev = "src".to_string();
        for (j, h) in p.hops.iter().enumerate() {
            let id = format!("p{i}h{j}");
            let label = hop_label(h).iter().map(|l| quote(l)).collect::<Vec<_>>();
            let edge = if j == 0 {
                format!("{:.2}", p.probability)
            } else {
                String::new()
            };
            match g {
                Graph::Dot => {
                    let _ = writeln!(s, "  {id} [label=\"{}\"];", label.join("\\n"));
                    let _ = writeln!(s, "  {prev} -> {id} [label=\"{edge}\"];");
                }
                Graph::Mermaid => {
                    let _ = writeln!(s, "  {id}[\"{}\"]", label.join("<br/>"));
                    if edge.is_empty() {
                        let _ = writeln!(s, "  {prev} --> {id}");
                    } else {
                        let _ = writeln!(s, "  {prev} -->|{edge}| {id}");
                    }
                }
            }
            prev = id;
        }
        let Some(last) = p.hops.last() else { continue };
        let (text, through) = fate_label(&last.branch);
        let end = format!("p{i}end");
        match g {
            Graph::Dot => {
                let color = if through { "darkgreen" } else { "red" };
                let _ = writeln!(
                    s,
                    "  {end} [label=\"{}\", color={color}, fontcolor={color}];\n  {prev} -> {end} [color={color}];",
                    quote(&text)
                );
            }
            Graph::Mermaid => {
                let _ = writeln!(s, "  {end}[\"{}\"]\n  {prev} --> {end}", quote(&text));
                if !through {
                    let _ = writeln!(s, "  style {end} stroke:#d00,color:#d00");
                }
            }
        }
    }
    if g == Graph::Dot {
        s.push_str("}\n");
    }
    s
}
