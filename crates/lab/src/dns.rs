//! Cluster DNS wiring for lab pods: the resolver file each pod gets, and the system
//! objects that put the DNS server behind `kube-system/kube-dns`.

use twill_dns::resolvconf::{KubeletDns, pod_resolv_conf};
use twill_model::Pod;

use crate::spec::LabSpec;

pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// The cluster DNS address: the tenth address of the service CIDR, where the control
/// loop puts `kube-system/kube-dns`.
pub fn cluster_dns(spec: &LabSpec) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(u32::from(spec.service_cidr.network()) + 10)
}

/// The pod's `/etc/resolv.conf` per its dnsPolicy, computed by kubelet's rules
/// (`twill_dns::resolvconf`) for the lab's nodes, whose own resolver is the host's.
pub fn resolv_conf(spec: &LabSpec, pod: &Pod) -> String {
    let host = std::fs::read_to_string("/etc/resolv.conf").ok();
    let kubelet = KubeletDns {
        cluster_domain: CLUSTER_DOMAIN.to_string(),
        cluster_dns: if spec.dns {
            vec![cluster_dns(spec).to_string()]
        } else {
            Vec::new()
        },
        node_ips: Vec::new(),
        host_resolv_conf: host.clone(),
    };
    // `None` means "the runtime decides": a runtime hands the host's file through.
    pod_resolv_conf(&kubelet, pod)
        .render()
        .or(host)
        .unwrap_or_default()
}
