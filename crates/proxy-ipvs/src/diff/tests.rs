use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use proptest::prelude::*;
use twill_model::{IpFamily, Protocol};

use super::*;
use crate::plan::{Kind, RealServer, VirtualServer};
use twill_proxy_core::ServicePortName;

fn cfg() -> Config {
    Config::new(
        IpFamily::V4,
        vec![IpAddr::from([192, 168, 0, 2])],
        crate::config::LocalDetector::None,
    )
}

fn key(last: u8, protocol: Protocol) -> VsKey {
    VsKey {
        addr: IpAddr::from([172, 30, 0, last]),
        protocol,
        port: 80,
    }
}

fn spec(timeout: u32) -> ServiceSpec {
    ServiceSpec {
        scheduler: "rr".into(),
        flags: if timeout > 0 {
            crate::plan::F_PERSISTENT
        } else {
            0
        },
        timeout,
        netmask: u32::MAX,
    }
}

fn ep(last: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, last], 8080))
}

fn plan_of(vss: &[(VsKey, u32, Vec<u8>)]) -> Plan {
    let mut p = Plan::default();
    for (k, t, eps) in vss {
        p.virtual_servers.insert(
            *k,
            VirtualServer {
                key: *k,
                spec: spec(*t),
                real_servers: eps
                    .iter()
                    .map(|e| RealServer {
                        addr: ep(*e),
                        weight: 1,
                    })
                    .collect(),
                service: ServicePortName {
                    service: twill_model::ObjectKey::new("ns", "svc"),
                    port: String::new(),
                    protocol: k.protocol,
                },
                kind: Kind::ClusterIp,
            },
        );
    }
    p
}

#[test]
fn an_empty_kernel_gets_services_before_their_real_servers() {
    let p = plan_of(&[(key(1, Protocol::Tcp), 0, vec![1, 2])]);
    let ops = diff(&cfg(), &p, &KernelState::default());
    assert_eq!(
        ops,
        vec![
            Op::AddService(key(1, Protocol::Tcp), spec(0)),
            Op::AddDest(key(1, Protocol::Tcp), ep(1), 1),
            Op::AddDest(key(1, Protocol::Tcp), ep(2), 1),
        ]
    );
}

#[test]
fn a_converged_kernel_needs_nothing_even_with_the_hashed_flag_set() {
    let p = plan_of(&[(key(1, Protocol::Tcp), 30, vec![1])]);
    let k = apply(
        &KernelState::default(),
        &diff(&cfg(), &p, &KernelState::default()),
    );
    assert_ne!(
        k.services[&key(1, Protocol::Tcp)].spec.flags & crate::plan::F_HASHED,
        0
    );
    assert!(diff(&cfg(), &p, &k).is_empty());
}

#[test]
fn a_removed_tcp_endpoint_drains_at_weight_zero_then_goes_when_idle() {
    let k1 = key(1, Protocol::Tcp);
    let before = plan_of(&[(k1, 0, vec![1, 2])]);
    let mut kernel = apply(
        &KernelState::default(),
        &diff(&cfg(), &before, &KernelState::default()),
    );
    kernel
        .services
        .get_mut(&k1)
        .unwrap()
        .dests
        .get_mut(&ep(2))
        .unwrap()
        .active_conns = 4;
    let after = plan_of(&[(k1, 0, vec![1])]);
    let ops = diff(&cfg(), &after, &kernel);
    assert_eq!(ops, vec![Op::UpdateDest(k1, ep(2), 0)]);
    let mut kernel = apply(&kernel, &ops);
    // Still busy: wait.
    assert!(diff(&cfg(), &after, &kernel).is_empty());
    // Drained: delete.
    kernel
        .services
        .get_mut(&k1)
        .unwrap()
        .dests
        .get_mut(&ep(2))
        .unwrap()
        .active_conns = 0;
    assert_eq!(diff(&cfg(), &after, &kernel), vec![Op::DelDest(k1, ep(2))]);
}

#[test]
fn a_draining_endpoint_that_comes_back_gets_its_weight_again() {
    let k1 = key(1, Protocol::Tcp);
    let p = plan_of(&[(k1, 0, vec![1])]);
    let mut kernel = apply(
        &KernelState::default(),
        &diff(&cfg(), &p, &KernelState::default()),
    );
    kernel
        .services
        .get_mut(&k1)
        .unwrap()
        .dests
        .get_mut(&ep(1))
        .unwrap()
        .weight = 0;
    assert_eq!(
        diff(&cfg(), &p, &kernel),
        vec![Op::UpdateDest(k1, ep(1), 1)]
    );
}

#[test]
fn udp_real_servers_are_deleted_at_once() {
    let k1 = key(1, Protocol::Udp);
    let before = plan_of(&[(k1, 0, vec![1, 2])]);
    let kernel = apply(
        &KernelState::default(),
        &diff(&cfg(), &before, &KernelState::default()),
    );
    let after = plan_of(&[(k1, 0, vec![1])]);
    assert_eq!(diff(&cfg(), &after, &kernel), vec![Op::DelDest(k1, ep(2))]);
}

#[test]
fn an_affinity_change_updates_the_service_in_place() {
    let k1 = key(1, Protocol::Tcp);
    let kernel = apply(
        &KernelState::default(),
        &diff(
            &cfg(),
            &plan_of(&[(k1, 0, vec![1])]),
            &KernelState::default(),
        ),
    );
    let ops = diff(&cfg(), &plan_of(&[(k1, 10800, vec![1])]), &kernel);
    assert_eq!(ops, vec![Op::UpdateService(k1, spec(10800))]);
}

#[test]
fn unwanted_services_are_deleted_unless_excluded() {
    let mut kernel = KernelState::default();
    for k in [key(1, Protocol::Tcp), key(2, Protocol::Tcp)] {
        kernel.services.insert(
            k,
            KernelService {
                spec: spec(0),
                dests: BTreeMap::new(),
            },
        );
    }
    let mut c = cfg();
    c.exclude_cidrs = vec!["172.30.0.2/32".parse().unwrap()];
    assert_eq!(
        diff(&c, &Plan::default(), &kernel),
        vec![Op::DelService(key(1, Protocol::Tcp))]
    );
}

fn arb_plan() -> impl Strategy<Value = Vec<(VsKey, u32, Vec<u8>)>> {
    prop::collection::btree_map(
        (1u8..6, prop::bool::ANY),
        (
            prop::sample::select(vec![0u32, 30, 10800]),
            prop::collection::btree_set(1u8..8, 0..5),
        ),
        0..5,
    )
    .prop_map(|m| {
        m.into_iter()
            .map(|((last, udp), (t, eps))| {
                let p = if udp { Protocol::Udp } else { Protocol::Tcp };
                (key(last, p), t, eps.into_iter().collect())
            })
            .collect()
    })
}

proptest! {
    /// From any earlier plan's kernel state, one diff reaches the new plan's services
    /// and real servers; only draining TCP real servers (weight 0) may remain, and a
    /// second diff then has nothing to add or update.
    #[test]
    fn one_diff_converges_from_any_previous_state(before in arb_plan(), after in arb_plan()) {
        let c = cfg();
        let pb = plan_of(&before);
        let pa = plan_of(&after);
        let k0 = apply(&KernelState::default(), &diff(&c, &pb, &KernelState::default()));
        let k1 = apply(&k0, &diff(&c, &pa, &k0));
        prop_assert_eq!(k1.services.keys().collect::<Vec<_>>(), pa.virtual_servers.keys().collect::<Vec<_>>());
        for (k, vs) in &pa.virtual_servers {
            let ks = &k1.services[k];
            prop_assert_eq!(ks.spec.flags & !crate::plan::F_HASHED, vs.spec.flags);
            for rs in &vs.real_servers {
                prop_assert_eq!(ks.dests.get(&rs.addr).map(|d| d.weight), Some(1));
            }
            for (a, d) in &ks.dests {
                if !vs.real_servers.iter().any(|r| r.addr == *a) {
                    prop_assert_eq!(k.protocol, Protocol::Tcp);
                    prop_assert_eq!(d.weight, 0);
                }
            }
        }
        let again = diff(&c, &pa, &k1);
        prop_assert!(again.iter().all(|op| matches!(op, Op::DelDest(..))), "{:?}", again);
        // And with no connections left, that round removes the drained ones for good.
        let k2 = apply(&k1, &again);
        prop_assert!(diff(&c, &pa, &k2).is_empty());
    }
}
