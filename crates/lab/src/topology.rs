//! The lab's wires: an underlay switch (a bridge in its own namespace), one namespace
//! per node with `eth0` on it, and an optional outside host.
//!
//! Nothing in the root namespace changes beyond the namespace handles in /run/netns.

use crate::LabError;
use crate::netns;
use crate::spec::LabSpec;

fn attach(spec: &LabSpec, ns: &str, port: &str, ip: std::net::Ipv4Addr) -> Result<(), LabError> {
    netns::add(ns)?;
    netns::batch(
        &spec.switch_netns,
        &format!(
            "link add {port} type veth peer name eth0 netns {ns}\nlink set {port} master br0\nlink set {port} up\n"
        ),
    )?;
    netns::batch(
        ns,
        &format!(
            "addr add {ip}/{} dev eth0\nlink set eth0 up\n",
            spec.underlay.prefix_len()
        ),
    )
}

/// Build the switch, the nodes and the client. On failure, whatever was built is torn
/// down again.
pub fn build(spec: &LabSpec) -> Result<(), LabError> {
    let r = (|| {
        netns::add(&spec.switch_netns)?;
        netns::batch(
            &spec.switch_netns,
            "link add br0 type bridge\nlink set br0 up\n",
        )?;
        for n in &spec.nodes {
            attach(spec, &n.netns, &n.switch_port, n.ip)?;
            // A node routes for its pods; the settings are the node namespace's own.
            netns::sysctl(&n.netns, "net.ipv4.ip_forward", "1")?;
            netns::sysctl(&n.netns, "net.ipv4.conf.all.rp_filter", "0")?;
            netns::sysctl(&n.netns, "net.ipv4.conf.default.rp_filter", "0")?;
            // Bridged pod traffic must traverse iptables for Services and policies
            // (br_netfilter's per-namespace switch; absent on kernels without it).
            let _ = netns::sysctl(&n.netns, "net.bridge.bridge-nf-call-iptables", "1");
            let _ = netns::sysctl(&n.netns, "net.bridge.bridge-nf-call-ip6tables", "1");
        }
        if let Some(c) = &spec.client {
            attach(spec, &c.netns, &c.switch_port, c.ip)?;
        }
        Ok(())
    })();
    if r.is_err() {
        let _ = destroy_namespaces(&spec.prefix());
    }
    r
}

/// Delete every namespace whose name starts with `prefix` (nodes, switch, client,
/// pods), killing what runs inside. Returns how many were removed.
pub fn destroy_namespaces(prefix: &str) -> Result<usize, LabError> {
    let all = netns::list(prefix);
    let mut first_err = None;
    for ns in &all {
        if let Err(e) = netns::delete(ns) {
            first_err.get_or_insert(e);
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(all.len()),
    }
}
