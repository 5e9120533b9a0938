//! kube-proxy's ipvs mode (`pkg/proxy/ipvs/proxier.go`), as a pure planner plus the
//! generic-netlink encoding a kernel applier needs.
//!
//! - [`plan`]: from a [`ProxyModel`](twill_proxy_core::ProxyModel), the virtual servers
//!   (cluster IPs, external IPs, load-balancer IPs, node ports on node addresses) with a
//!   real server per endpoint, persistence for ClientIP affinity, the addresses to bind
//!   on `kube-ipvs0`, and the sysctls the mode needs.
//! - [`ipset`]: upstream's sets (`KUBE-CLUSTER-IP`, `KUBE-LOOP-BACK`, `KUBE-NODE-PORT-*`,
//!   ...) with their types and entry formats, rendered for `ipset restore`.
//! - [`rules`]: the iptables rules that match those sets (`KUBE-SERVICES`,
//!   `KUBE-MARK-MASQ`, `KUBE-POSTROUTING`, `KUBE-NODE-PORT`, ...).
//! - [`diff`]: from the virtual/real servers read back from the kernel to the plan, with
//!   upstream's graceful deletion (weight 0 first, removal once connections drain).
//! - [`netlink`]: IPVS generic-netlink messages, byte for byte as the kernel's UAPI
//!   (`include/uapi/linux/ip_vs.h`) defines them.
//! - [`detect`]: whether this kernel can run the mode at all.
//!
//! Everything but [`detect::check_kernel`] is pure (no I/O, no clock).

pub mod config;
pub mod detect;
pub mod diff;
pub mod ipset;
pub mod kernel;
pub mod netlink;
pub mod plan;
pub mod rules;

pub use config::{Config, Scheduler};
pub use detect::{Missing, check_kernel};
pub use plan::{Plan, RealServer, VirtualServer, VsKey, plan};

/// Everything the mode would program for `model`, as text: the virtual servers in
/// `ipvsadm -Ln` layout, the `kube-ipvs0` addresses, the sysctls, the `ipset restore`
/// input and the `iptables-restore` input. What `twill proxy rules --mode ipvs` prints.
pub fn render_text(cfg: &Config, model: &twill_proxy_core::ProxyModel) -> String {
    use std::fmt::Write as _;
    let p = plan(cfg, model);
    let mut s = String::from("# IPVS virtual servers (ipvsadm -Ln layout)\n");
    for vs in p.virtual_servers.values() {
        let persist = if vs.spec.flags & plan::F_PERSISTENT != 0 {
            format!(" persistent {}", vs.spec.timeout)
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "{:<5}{} {}{persist}  # {}",
            vs.key.protocol.as_str(),
            std::net::SocketAddr::new(vs.key.addr, vs.key.port),
            vs.spec.scheduler,
            vs.service
        );
        for rs in &vs.real_servers {
            let _ = writeln!(s, "  -> {:<40} Masq    {}", rs.addr, rs.weight);
        }
    }
    s.push_str("# addresses on kube-ipvs0\n");
    for a in &p.bind_addresses {
        let _ = writeln!(s, "{a}");
    }
    s.push_str("# sysctls\n");
    for (k, v) in &p.sysctls {
        let _ = writeln!(s, "{k} = {v}");
    }
    s.push_str("# ipset restore -exist\n");
    s.push_str(&ipset::render_restore(&p.sets));
    s.push_str("# iptables-restore --noflush\n");
    s.push_str(&rules::render(cfg, &p));
    s
}
