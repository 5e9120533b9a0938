//! The shared proxy corpus's packet flows through the userspace mode, in real kernels.
//!
//! The topology is `twill_conformance::proxy::flows`'s (client, node, one namespace per endpoint, sink);
//! the node runs a [`Proxier`] instead of the iptables rules. Judging differs from the
//! iptables mode in one way that is the nature of a userspace proxy: the backend always
//! sees a node address as the source (the proxy opens the backend connection), so an
//! answer passes when it comes from an allowed endpoint and names a node address as its
//! peer, whatever the flow's `masq` says.
//!
//! Skipped flows, with the reason in [`FlowOutcome::Skipped`]:
//! - SCTP: the userspace mode proxies TCP and UDP only.
//! - externalTrafficPolicy Local, traffic to a node port / external IP / LB IP from
//!   outside the cluster, where the expected endpoints are the local ones (or DROP
//!   for none): eTP Local exists to keep the client's source address, which a proxy
//!   that terminates connections cannot do, and upstream's userspace mode never had it.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::corpus::{Fixture, Flow, FlowOutcome, Outcome, Prepared, parse_ip};
use super::flows::{self as lab, Ns, Seen, Sender, send_flow, serve};
use twill_model::IpFamily;
use twill_proxy_core::LocalDetector;
use twill_proxy_core::ProxyModel;

use twill_proxy_userspace::Config;
use twill_proxy_userspace::proxier::{Options, Proxier};

/// The userspace settings of a prepared fixture.
pub fn config_of(p: &Prepared) -> Config {
    let mut c = p.config.clone();
    c.local_addresses = p.local_addresses.clone();
    c
}

/// Why the userspace mode cannot be judged on `flow`, if so.
pub fn skip_reason(flow: &Flow, prepared: &Prepared, local: &[IpAddr]) -> Option<String> {
    let model: &ProxyModel = &prepared.model;
    if flow.protocol.eq_ignore_ascii_case("sctp") {
        return Some("SCTP: the userspace mode proxies TCP and UDP only".into());
    }
    let dst = parse_ip(&flow.dest_ip)?;
    let src = parse_ip(&flow.source_ip)?;
    let want = flow.expected.outcome().ok()?;
    if !matches!(want, Outcome::Endpoints(_) | Outcome::Drop) {
        return None;
    }
    let proto = flow.protocol.to_ascii_uppercase();
    let etp_local_external = model.services.values().any(|s| {
        s.external_policy_local
            && s.protocol.as_str() == proto
            && (s.node_port == Some(flow.dest_port) && local.contains(&dst)
                || s.port == flow.dest_port
                    && (s.external_ips.contains(&dst) || s.load_balancer_vips.contains(&dst)))
    });
    // Pod and node sources short-circuit to every endpoint; the rest is eTP Local proper.
    let is_pod = match &prepared.config.local_detector {
        LocalDetector::ClusterCidr(n) | LocalDetector::NodeCidr(n) => n.contains(&src),
        // No detector: no pod short-circuit either, so every outside source gets eTP
        // Local proper. Interface-based detectors cannot be judged from an address.
        _ => false,
    };
    if etp_local_external && !local.contains(&src) && !is_pod {
        return Some(
            "externalTrafficPolicy Local: keeping the client's source address is impossible \
             through a userspace proxy (upstream's userspace mode never had eTP Local)"
                .into(),
        );
    }
    None
}

/// Run every flow of `fx` through a userspace proxier in namespaces; one outcome per
/// flow, in order. Needs root (see [`lab::available`]).
pub fn run_fixture(fx: &Fixture) -> Vec<FlowOutcome> {
    match run_inner(fx) {
        Ok(v) => v,
        Err(e) => fx
            .flows
            .iter()
            .map(|_| FlowOutcome::Failed(format!("topology: {e}")))
            .collect(),
    }
}

fn node_addresses() -> BTreeSet<IpAddr> {
    let mut out = BTreeSet::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(sa) = a.address else { continue };
            if let Some(v4) = sa.as_sockaddr_in() {
                out.insert(IpAddr::V4(v4.ip()));
            } else if let Some(v6) = sa.as_sockaddr_in6() {
                out.insert(IpAddr::V6(v6.ip()));
            }
        }
    }
    out
}

fn run_inner(fx: &Fixture) -> Result<Vec<FlowOutcome>, String> {
    let prepared = fx.prepare(false)?;
    let v6 = prepared.family == IpFamily::V6;
    let fam = |ip: &IpAddr| ip.is_ipv6() == v6;
    let mut node_local: BTreeSet<IpAddr> = prepared
        .local_addresses
        .iter()
        .copied()
        .filter(fam)
        .collect();
    let mut endpoint_addrs: BTreeSet<(IpAddr, u16, bool)> = BTreeSet::new();
    for eps in prepared.model.endpoints.values() {
        for e in eps {
            endpoint_addrs.insert((e.ip, e.port, true));
            endpoint_addrs.insert((e.ip, e.port, false));
        }
    }
    let endpoint_ips: BTreeSet<IpAddr> = endpoint_addrs.iter().map(|(ip, _, _)| *ip).collect();
    let mut senders = Vec::new();
    let mut client_ips = BTreeSet::new();
    for f in &fx.flows {
        let src = parse_ip(&f.source_ip).ok_or("bad sourceIP")?;
        let dst = parse_ip(&f.dest_ip).ok_or("bad destIP")?;
        let s = if node_local.contains(&src) || src == dst {
            node_local.insert(src);
            Sender::Node
        } else if endpoint_ips.contains(&src) {
            Sender::Endpoint(src)
        } else {
            client_ips.insert(src);
            Sender::Client
        };
        senders.push(s);
    }
    let topo = lab::build(v6, &node_local, &endpoint_ips, &client_ips)?;

    let cfg = config_of(&prepared);
    let model = prepared.model.clone();
    let (proxier, node_addrs) = topo
        .node
        .spawn(move || {
            let mut p = Proxier::new(cfg, Options::default());
            p.sync(&model).map(|_| (p, node_addresses()))
        })
        .join()
        .map_err(|_| "proxier thread panicked".to_string())??
        .map_err(|e| e.to_string())?;

    let stop = Arc::new(AtomicBool::new(false));
    let mut servers = Vec::new();
    let result = (|| {
        for (ip, port, tcp) in &endpoint_addrs {
            let sa = SocketAddr::new(*ip, *port);
            let ns = topo.endpoint(*ip).ok_or("endpoint namespace missing")?;
            servers.push(serve(ns, sa, *tcp, sa.to_string(), stop.clone())?);
        }
        let any: IpAddr = if v6 {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        };
        let accept_ports: BTreeSet<u16> = fx
            .flows
            .iter()
            .filter(|f| matches!(f.expected.outcome(), Ok(Outcome::Accept)))
            .map(|f| f.dest_port)
            .collect();
        for p in accept_ports {
            servers.push(serve(
                &topo.node,
                SocketAddr::new(any, p),
                true,
                "node".into(),
                stop.clone(),
            )?);
        }
        let local: Vec<IpAddr> = node_local.iter().copied().collect();
        let mut handles = Vec::new();
        for (f, s) in fx.flows.iter().zip(&senders) {
            if let Some(why) = skip_reason(f, &prepared, &local) {
                handles.push(Err(why));
                continue;
            }
            let ns: &Ns = match s {
                Sender::Node => &topo.node,
                Sender::Endpoint(ip) => topo.endpoint(*ip).ok_or("endpoint namespace missing")?,
                Sender::Client => &topo.cli,
            };
            let flow = f.clone();
            let node_addrs = node_addrs.clone();
            handles.push(Ok(ns.spawn(move || {
                let src = parse_ip(&flow.source_ip).ok_or("bad sourceIP")?;
                let dst = parse_ip(&flow.dest_ip).ok_or("bad destIP")?;
                let tcp = flow.protocol.eq_ignore_ascii_case("tcp");
                let seen = send_flow(src, SocketAddr::new(dst, flow.dest_port), tcp);
                judge(&flow, &seen, &node_addrs)
            })));
        }
        Ok::<_, String>(
            handles
                .into_iter()
                .map(|h| match h {
                    Err(why) => FlowOutcome::Skipped(why),
                    Ok(h) => match h.join() {
                        Ok(Ok(Ok(()))) => FlowOutcome::Passed,
                        Ok(Ok(Err(e))) | Ok(Err(e)) => FlowOutcome::Failed(e),
                        Err(_) => FlowOutcome::Failed("flow thread panicked".into()),
                    },
                })
                .collect(),
        )
    })();
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        let _ = s.join();
    }
    proxier.shutdown();
    result
}

fn judge(flow: &Flow, seen: &Seen, node_addrs: &BTreeSet<IpAddr>) -> Result<(), String> {
    let want = flow.expected.outcome()?;
    match (&want, seen) {
        (Outcome::Endpoints(eps), Seen::Answer { identity, peer }) => {
            if !eps.contains(identity) {
                return Err(format!("answered by {identity}, expected one of {eps:?}"));
            }
            let peer_ip = parse_ip(peer);
            if !peer_ip.is_some_and(|p| node_addrs.contains(&p)) {
                return Err(format!(
                    "{identity} saw source {peer}, expected a node address (the proxy's)"
                ));
            }
            Ok(())
        }
        (Outcome::Accept, Seen::Answer { identity, .. }) if identity == "node" => Ok(()),
        (Outcome::Reject, Seen::Refused) => Ok(()),
        (Outcome::Drop, Seen::Timeout) => Ok(()),
        (Outcome::None, s) if !matches!(s, Seen::Answer { identity, .. } if identity != "node") => {
            Ok(())
        }
        (w, s) => Err(format!("expected {w:?}, saw {s:?}")),
    }
}

/// Tally outcomes: `(passed, failed, skipped)`.
pub fn tally(outcomes: &[FlowOutcome]) -> (usize, usize, usize) {
    let mut t = (0, 0, 0);
    for o in outcomes {
        match o {
            FlowOutcome::Passed => t.0 += 1,
            FlowOutcome::Failed(_) => t.1 += 1,
            FlowOutcome::Skipped(_) => t.2 += 1,
        }
    }
    t
}
