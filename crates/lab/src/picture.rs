//! The lab as a picture (`twill lab get topology -o dot|mermaid`): the underlay switch,
//! each node with its address, `cni0` and pod subnet, the pods on it with their
//! addresses, the outside host, and each Service with its cluster IP and ports pointing
//! at its endpoint pods (ready solid, not ready dashed). Pure text, for documents.

use std::fmt::Write;

use twill_model::ClusterState;

use crate::spec::LabSpec;

/// Graph languages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Graph {
    Dot,
    Mermaid,
}

fn id(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn q(s: &str) -> String {
    s.replace('"', "'")
}

/// Draw the lab.
pub fn topology(spec: &LabSpec, state: &ClusterState, g: Graph) -> String {
    let mut s = String::new();
    let br = |lines: &[String]| match g {
        Graph::Dot => lines.join("\\n"),
        Graph::Mermaid => lines.join("<br/>"),
    };
    match g {
        Graph::Dot => {
            let _ = writeln!(s, "digraph lab {{\n  compound=true;\n  node [shape=box];");
            let _ = writeln!(
                s,
                "  switch [label=\"{}\", shape=hexagon];",
                br(&[format!("underlay {}", spec.underlay), "switch br0".into()])
            );
        }
        Graph::Mermaid => {
            let _ = writeln!(s, "flowchart TB");
            let _ = writeln!(
                s,
                "  switch{{{{\"{}\"}}}}",
                br(&[format!("underlay {}", spec.underlay), "switch br0".into()])
            );
        }
    }
    for n in &spec.nodes {
        let nid = format!("node_{}", id(&n.name));
        let mut title = vec![
            n.name.clone(),
            format!("{} (eth0)", n.ip),
            format!("cni0 {}", n.pod_cidr),
        ];
        if let Some(z) = &n.zone {
            title.push(format!("zone {z}"));
        }
        match g {
            Graph::Dot => {
                let _ = writeln!(
                    s,
                    "  subgraph cluster_{nid} {{\n    label=\"{}\";\n    {nid} [label=\"{}\", shape=component];",
                    q(&n.name),
                    br(&title)
                );
            }
            Graph::Mermaid => {
                let _ = writeln!(
                    s,
                    "  subgraph {nid}_box[\"{}\"]\n    {nid}[\"{}\"]",
                    q(&n.name),
                    br(&title)
                );
            }
        }
        for p in state
            .pods
            .values()
            .filter(|p| p.spec.node_name.as_deref() == Some(n.name.as_str()))
        {
            let pid = format!("pod_{}_{}", id(&p.key.namespace), id(&p.key.name));
            let ip = p
                .pod_ips
                .first()
                .map_or("no address".to_string(), ToString::to_string);
            let label = br(&[p.key.to_string(), ip]);
            match g {
                Graph::Dot => {
                    let _ = writeln!(s, "    {pid} [label=\"{label}\", shape=ellipse];");
                    let _ = writeln!(s, "    {nid} -> {pid} [arrowhead=none];");
                }
                Graph::Mermaid => {
                    let _ = writeln!(s, "    {pid}([\"{label}\"])\n    {nid} --- {pid}");
                }
            }
        }
        match g {
            Graph::Dot => {
                let _ = writeln!(s, "  }}\n  switch -> {nid} [arrowhead=none];");
            }
            Graph::Mermaid => {
                let _ = writeln!(s, "  end\n  switch --- {nid}");
            }
        }
    }
    if let Some(c) = &spec.client {
        let label = br(&[c.name.clone(), c.ip.to_string()]);
        match g {
            Graph::Dot => {
                let _ = writeln!(
                    s,
                    "  client [label=\"{label}\", shape=house];\n  switch -> client [arrowhead=none];"
                );
            }
            Graph::Mermaid => {
                let _ = writeln!(s, "  client[/\"{label}\"/]\n  switch --- client");
            }
        }
    }
    for svc in state.services.values() {
        let sid = format!("svc_{}_{}", id(&svc.key.namespace), id(&svc.key.name));
        let mut lines = vec![format!("Service {}", svc.key)];
        if let Some(ip) = svc.cluster_ips.first() {
            lines.push(format!("cluster IP {ip}"));
        }
        for p in &svc.ports {
            lines.push(match p.node_port {
                Some(np) => format!("{}/{} node port {np}", p.port, p.protocol.as_str()),
                None => format!("{}/{}", p.port, p.protocol.as_str()),
            });
        }
        let label = br(&lines);
        match g {
            Graph::Dot => {
                let _ = writeln!(s, "  {sid} [label=\"{label}\", shape=note];");
            }
            Graph::Mermaid => {
                let _ = writeln!(s, "  {sid}[[\"{label}\"]]");
            }
        }
        for e in state
            .slices_for(&svc.key)
            .flat_map(|sl| sl.endpoints.iter())
        {
            let Some(r) = &e.target_ref else { continue };
            let pid = format!("pod_{}_{}", id(&r.key.namespace), id(&r.key.name));
            let ready = e.conditions.is_ready();
            match (g, ready) {
                (Graph::Dot, true) => {
                    let _ = writeln!(s, "  {sid} -> {pid};");
                }
                (Graph::Dot, false) => {
                    let _ = writeln!(s, "  {sid} -> {pid} [style=dashed, label=\"not ready\"];");
                }
                (Graph::Mermaid, true) => {
                    let _ = writeln!(s, "  {sid} --> {pid}");
                }
                (Graph::Mermaid, false) => {
                    let _ = writeln!(s, "  {sid} -.->|not ready| {pid}");
                }
            }
        }
    }
    if g == Graph::Dot {
        s.push_str("}\n");
    }
    s
}
