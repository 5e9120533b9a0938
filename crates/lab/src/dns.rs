//! Cluster DNS wiring for lab pods: the resolver file each pod gets, and the system
//! objects that put the DNS server behind `kube-system/kube-dns`.

use twill_model::{DnsPolicy, Pod};

use crate::spec::LabSpec;

pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// The cluster DNS address: the tenth address of the service CIDR, where the control
/// loop puts `kube-system/kube-dns`.
pub fn cluster_dns(spec: &LabSpec) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(u32::from(spec.service_cidr.network()) + 10)
}

/// The pod's `/etc/resolv.conf` per its dnsPolicy, as kubelet writes it for the lab's
/// nodes (whose own resolver is the host's).
pub fn resolv_conf(spec: &LabSpec, pod: &Pod) -> String {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let cluster_first = match pod.spec.dns_policy {
        DnsPolicy::ClusterFirst => !pod.spec.host_network,
        DnsPolicy::ClusterFirstWithHostNet => true,
        DnsPolicy::Default | DnsPolicy::None => false,
    };
    let mut nameservers: Vec<String> = Vec::new();
    let mut searches: Vec<String> = Vec::new();
    let mut options: Vec<String> = Vec::new();
    if cluster_first && spec.dns {
        nameservers.push(cluster_dns(spec).to_string());
        let ns = &pod.key.namespace;
        searches.extend([
            format!("{ns}.svc.{CLUSTER_DOMAIN}"),
            format!("svc.{CLUSTER_DOMAIN}"),
            CLUSTER_DOMAIN.to_string(),
        ]);
        options.push("ndots:5".into());
    } else if pod.spec.dns_policy != DnsPolicy::None {
        for line in host.lines() {
            let mut f = line.split_whitespace();
            match f.next() {
                Some("nameserver") => nameservers.extend(f.next().map(str::to_string)),
                Some("search") => searches.extend(f.map(str::to_string)),
                Some("options") => options.extend(f.map(str::to_string)),
                _ => {}
            }
        }
    }
    if let Some(c) = &pod.spec.dns_config {
        nameservers.extend(c.nameservers.iter().cloned());
        searches.extend(c.searches.iter().cloned());
        for (n, v) in &c.options {
            options.retain(|o| o.split(':').next() != Some(n.as_str()));
            options.push(match v {
                Some(v) => format!("{n}:{v}"),
                None => n.clone(),
            });
        }
    }
    let mut out = String::new();
    if !searches.is_empty() {
        out.push_str(&format!("search {}\n", searches.join(" ")));
    }
    for n in nameservers.iter().take(3) {
        out.push_str(&format!("nameserver {n}\n"));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}
