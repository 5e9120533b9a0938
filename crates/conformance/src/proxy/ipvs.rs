//! The shared proxy corpus checked against the ipvs plan (no kernel needed).
//!
//! Each flow is followed through the plan the way the kernel would take it: first the
//! filter rules that can drop before IPVS sees the packet (LB source ranges, Twill's
//! no-local-endpoint drops), then the virtual server for `destIP:destPort/protocol`,
//! whose real servers (weight > 0) must be exactly the expected endpoints. A virtual
//! server without real servers makes IPVS answer ICMP port unreachable (`ip_vs_leave`),
//! which is a REJECT. No virtual server means IPVS leaves the packet alone (NONE), except
//! a health-check node port in `KUBE-HEALTH-CHECK-NODE-PORT` (ACCEPT).
//!
//! Skipped flows, with the reason:
//! - localhost NodePorts (`127.0.0.1:nodePort`): an iptables-mode feature
//!   (`route_localnet` DNAT); upstream's ipvs mode never served node ports on loopback.
//! - eTP Local external addresses reached by pods or by the node itself: iptables
//!   short-circuits those to every endpoint; IPVS has one virtual server per address for
//!   every source, so they get the local endpoints (upstream ipvs behaves the same).
//!
//! The masquerade flag is not judged here: it is decided by the iptables/ipset rules in
//! a real kernel, which this machine cannot run with IPVS (reported as skipped).

use std::net::IpAddr;

use super::corpus::{Fixture, Flow, FlowOutcome, Outcome, Prepared, canonical_endpoint, parse_ip};
use twill_model::Protocol;

use twill_proxy_core::{Config, LocalDetector};
use twill_proxy_ipvs::ipset::{Entry, SetName};
use twill_proxy_ipvs::plan::{Kind, Plan, plan};

/// The plan-level result of one fixture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixtureReport {
    /// One per flow, in order.
    pub flows: Vec<FlowOutcome>,
    /// Why the real-kernel half did not run (`None` if it could).
    pub kernel_skipped: Option<String>,
}

/// The ipvs settings of a prepared fixture.
pub fn config_of(p: &Prepared) -> Config {
    let mut c = p.config.clone();
    c.local_addresses = p.local_addresses.clone();
    c
}

/// Check every flow of `fx` against the ipvs plan. `kernel` is the result of
/// `twill_proxy_ipvs::check_kernel` (or a stand-in): on `Err`, the report says why the
/// real-kernel half was skipped.
pub fn run_fixture_plan(fx: &Fixture, kernel: Result<(), String>) -> FixtureReport {
    let kernel_skipped = kernel.err();
    let prepared = match fx.prepare(false) {
        Ok(p) => p,
        Err(e) => {
            return FixtureReport {
                flows: fx
                    .flows
                    .iter()
                    .map(|_| FlowOutcome::Failed(format!("fixture: {e}")))
                    .collect(),
                kernel_skipped,
            };
        }
    };
    let cfg = config_of(&prepared);
    let p = plan(&cfg, &prepared.model);
    FixtureReport {
        flows: fx
            .flows
            .iter()
            .map(|f| match check_flow(f, &prepared, &cfg, &p) {
                Ok(None) => FlowOutcome::Passed,
                Ok(Some(skip)) => FlowOutcome::Skipped(skip),
                Err(e) => FlowOutcome::Failed(e),
            })
            .collect(),
        kernel_skipped,
    }
}

fn is_pod(cfg: &Config, ip: &IpAddr) -> bool {
    match &cfg.local_detector {
        LocalDetector::ClusterCidr(n) | LocalDetector::NodeCidr(n) => n.contains(ip),
        _ => false,
    }
}

/// `Ok(None)`: pass; `Ok(Some(reason))`: skipped; `Err`: how it differs.
pub fn check_flow(
    flow: &Flow,
    prepared: &Prepared,
    cfg: &Config,
    plan: &Plan,
) -> Result<Option<String>, String> {
    let want = flow.expected.outcome()?;
    let src = parse_ip(&flow.source_ip).ok_or("bad sourceIP")?;
    let dst = parse_ip(&flow.dest_ip).ok_or("bad destIP")?;
    let protocol = Protocol::parse(&flow.protocol.to_ascii_uppercase())
        .ok_or_else(|| format!("protocol {:?}", flow.protocol))?;
    let port = flow.dest_port;
    let local = |ip: &IpAddr| prepared.local_addresses.contains(ip) || ip.is_loopback();
    let vs = plan.lookup(dst, protocol, port);

    if dst.is_loopback() && matches!(want, Outcome::Endpoints(_)) {
        return Ok(Some(
            "localhost NodePorts are an iptables-mode feature; ipvs never served node ports \
             on loopback"
                .into(),
        ));
    }
    if let Some(v) = vs
        && v.kind != Kind::ClusterIp
        && prepared
            .model
            .services
            .get(&v.service)
            .is_some_and(|s| s.external_policy_local)
        && (is_pod(cfg, &src) || local(&src))
        && matches!(want, Outcome::Endpoints(_))
    {
        return Ok(Some(
            "eTP Local short-circuit for pod/node sources to external addresses is \
             iptables/nftables-only; an IPVS virtual server serves every source alike"
                .into(),
        ));
    }

    // Filter hooks run before IPVS (LOCAL_IN) and in FORWARD.
    let p = protocol.lower();
    let lb_fw = plan
        .sets
        .contains(SetName::LoadBalancerFw, &Entry::ip_port(dst, p, port));
    if lb_fw {
        let allowed = plan
            .sets
            .members
            .get(&SetName::LoadBalancerSourceCidr)
            .into_iter()
            .flatten()
            .any(|e| {
                let prefix = format!("{dst},{p}:{port},");
                e.0.strip_prefix(&prefix)
                    .and_then(|n| n.parse::<ipnet::IpNet>().ok())
                    .is_some_and(|n| n.contains(&src))
            })
            || plan.sets.contains(
                SetName::LoadBalancerSourceIp,
                &Entry::ip_port_ip(dst, p, port, src),
            );
        if !allowed {
            return judge(&want, Got::Drop, "source outside loadBalancerSourceRanges");
        }
    }
    for nl in &plan.no_local_endpoints {
        if nl.key.addr == dst && nl.key.port == port && nl.key.protocol == protocol {
            let applies = !nl.external_only || (!is_pod(cfg, &src) && !local(&src));
            if applies {
                return judge(&want, Got::Drop, "no local endpoints for this traffic");
            }
        }
    }
    let Some(vs) = vs else {
        if local(&dst)
            && plan
                .sets
                .contains(SetName::HealthCheckNodePort, &Entry::port(port))
        {
            return judge(&want, Got::Accept, "health check node port");
        }
        return judge(&want, Got::None, "no virtual server");
    };
    let mut rs: Vec<String> = vs
        .real_servers
        .iter()
        .filter(|r| r.weight > 0)
        .map(|r| canonical_endpoint(&r.addr.to_string()).unwrap_or_else(|| r.addr.to_string()))
        .collect();
    rs.sort();
    if rs.is_empty() {
        return judge(
            &want,
            Got::Reject,
            &format!("virtual server {} has no real servers", vs.key),
        );
    }
    judge(
        &want,
        Got::Endpoints(rs),
        &format!("virtual server {}", vs.key),
    )
}

enum Got {
    Endpoints(Vec<String>),
    Reject,
    Drop,
    Accept,
    None,
}

fn judge(want: &Outcome, got: Got, why: &str) -> Result<Option<String>, String> {
    let ok = match (want, &got) {
        (Outcome::Endpoints(w), Got::Endpoints(g)) => w == g,
        (Outcome::Reject, Got::Reject)
        | (Outcome::Drop, Got::Drop)
        | (Outcome::Accept, Got::Accept)
        | (Outcome::None, Got::None) => true,
        _ => false,
    };
    if ok {
        return Ok(None);
    }
    let g = match got {
        Got::Endpoints(g) => format!("real servers {g:?}"),
        Got::Reject => "REJECT".into(),
        Got::Drop => "DROP".into(),
        Got::Accept => "ACCEPT".into(),
        Got::None => "NONE".into(),
    };
    Err(format!("expected {want:?}, plan gives {g} ({why})"))
}
