//! The shared corpus through the pure core (the server's wire path is tested in
//! `twill-dns-server` and by `twill conformance dns`).

use hickory_proto::op::{Message, MessageType, OpCode};
use hickory_proto::rr::{Name, RecordType};
use twill_conformance::dns::{
    QueryFile, check_resolv, check_response, parse_query_file, parse_resolv_file, upstream_answer,
};
use twill_dns::{Reply, Resolution, Snapshot, resolve};

/// Build the message the server would send, chasing CNAMEs through the corpus upstream.
fn respond(file: &QueryFile, snap: &Snapshot, qname: &Name, qtype: RecordType) -> Message {
    let mut msg = Message::new(1, MessageType::Response, OpCode::Query);
    let reply = match resolve(snap, qname, qtype) {
        Resolution::Reply(r) => r,
        Resolution::Chase {
            mut reply,
            target,
            qtype,
        } => {
            let (_, records) = upstream_answer(&file.upstream, &target, qtype);
            reply.answers.extend(records);
            reply
        }
        Resolution::Forward => {
            let (rcode, records) = upstream_answer(&file.upstream, qname, qtype);
            Reply {
                rcode,
                authoritative: false,
                answers: records,
                authority: vec![],
                additional: vec![],
            }
        }
    };
    msg.metadata.response_code = reply.rcode;
    msg.metadata.authoritative = reply.authoritative;
    msg.answers = reply.answers;
    msg.authorities = reply.authority;
    msg.additionals = reply.additional;
    msg
}

fn is_resolv(path: &std::path::Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("resolvconf"))
}

#[test]
fn shared_corpus_query_files_answer_as_coredns_does() {
    let mut failures = Vec::new();
    let mut passed = 0;
    for (path, value) in twill_testkit::testdata::json_cases("dns") {
        if is_resolv(&path) {
            continue;
        }
        let file = parse_query_file(&value).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let snap = Snapshot::build(&file.state, &file.config, 1);
        for case in &file.queries {
            let qname = Name::from_ascii(&case.qname).unwrap();
            let msg = respond(&file, &snap, &qname, case.qtype);
            let problems = check_response(case, &msg);
            if problems.is_empty() {
                passed += 1;
            } else {
                failures.push(format!(
                    "{} {}: {}",
                    path.display(),
                    case.name,
                    problems.join("; ")
                ));
            }
        }
    }
    eprintln!("{passed} passed, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "{} passed, {} failed:\n{}",
        passed,
        failures.len(),
        failures.join("\n")
    );
    assert!(passed > 100, "only {passed} cases ran");
}

#[test]
fn shared_corpus_resolv_conf_cases_match_kubelet() {
    let mut failures = Vec::new();
    let mut passed = 0;
    for (path, value) in twill_testkit::testdata::json_cases("dns") {
        if !is_resolv(&path) {
            continue;
        }
        let cases = parse_resolv_file(&value).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for case in &cases {
            let (_, problems) = check_resolv(case);
            if problems.is_empty() {
                passed += 1;
            } else {
                failures.push(format!(
                    "{} {}: {}",
                    path.display(),
                    case.name,
                    problems.join("; ")
                ));
            }
        }
    }
    eprintln!("{passed} passed, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "{} passed, {} failed:\n{}",
        passed,
        failures.len(),
        failures.join("\n")
    );
    assert!(passed >= 10, "only {passed} cases ran");
}

#[test]
fn comparison_rejects_a_wrong_response() {
    let (path, value) = twill_testkit::testdata::json_cases("dns")
        .into_iter()
        .find(|(p, _)| p.ends_with("srv-records.json"))
        .expect("srv-records.json in the corpus");
    let file = parse_query_file(&value).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let snap = Snapshot::build(&file.state, &file.config, 1);
    let case = file
        .queries
        .iter()
        .find(|q| !q.answer.is_empty())
        .expect("a positive case");
    let qname = Name::from_ascii(&case.qname).unwrap();
    let mut msg = respond(&file, &snap, &qname, case.qtype);
    assert!(check_response(case, &msg).is_empty());
    msg.answers[0].ttl += 1;
    assert!(
        !check_response(case, &msg).is_empty(),
        "a changed TTL must fail"
    );
    msg.answers.clear();
    assert!(
        !check_response(case, &msg).is_empty(),
        "an empty answer must fail"
    );
}

mod options {
    use std::net::IpAddr;

    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::{Name, RData, RecordType};
    use twill_dns::{Config, PodMode, Resolution, Snapshot, resolve};
    use twill_model::{
        ClusterState, Endpoint, EndpointSlice, Kind, Namespace, Object, ObjectKey, ObjectRef, Pod,
        Service, ServiceType,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn state() -> ClusterState {
        let ns = Object::Namespace(Namespace {
            name: "app".into(),
            ..Default::default()
        });
        let pod = Object::Pod(Pod {
            key: ObjectKey::new("app", "web-0"),
            pod_ips: vec![ip("10.244.0.5")],
            ..Default::default()
        });
        let hdls = Object::Service(Service {
            key: ObjectKey::new("app", "web"),
            headless: true,
            ..Default::default()
        });
        let slice = Object::EndpointSlice(EndpointSlice {
            key: ObjectKey::new("app", "web-1"),
            service_name: Some("web".into()),
            endpoints: vec![Endpoint {
                addresses: vec![ip("10.244.0.5")],
                target_ref: Some(ObjectRef {
                    kind: Kind::Pod,
                    key: ObjectKey::new("app", "web-0"),
                }),
                ..Default::default()
            }],
            ..Default::default()
        });
        let ext = Object::Service(Service {
            key: ObjectKey::new("app", "ext"),
            service_type: ServiceType::ExternalName,
            external_name: Some("db.example.org".into()),
            ..Default::default()
        });
        // A pod being deleted and one that has completed: `pods verified` no longer
        // answers for them. A 66-character name is a valid pod name.
        let gone = Object::Pod(Pod {
            key: ObjectKey::new("app", "old-0"),
            pod_ips: vec![ip("10.244.0.7")],
            terminating: true,
            ..Default::default()
        });
        let done = Object::Pod(Pod {
            key: ObjectKey::new("app", "a".repeat(66)),
            pod_ips: vec![ip("10.244.0.8")],
            phase: twill_model::PodPhase::Succeeded,
            ..Default::default()
        });
        ClusterState::from_objects([ns, pod, gone, done, hdls, slice, ext])
    }

    fn answer(config: &Config, q: &str, t: RecordType) -> Resolution {
        resolve(
            &Snapshot::build(&state(), config, 1),
            &Name::from_ascii(q).unwrap(),
            t,
        )
    }

    fn reply(r: Resolution) -> twill_dns::Reply {
        match r {
            Resolution::Reply(r) => r,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn verified_pod_mode_answers_only_addresses_of_pods_in_that_namespace() {
        let mut c = Config::new("cluster.local").unwrap();
        c.pods = PodMode::Verified;
        let yes = reply(answer(
            &c,
            "10-244-0-5.app.pod.cluster.local.",
            RecordType::A,
        ));
        assert_eq!(yes.answers.len(), 1);
        let no = reply(answer(
            &c,
            "10-244-0-6.app.pod.cluster.local.",
            RecordType::A,
        ));
        assert_eq!(no.rcode, ResponseCode::NXDomain);
        for (what, q) in [
            ("terminating", "10-244-0-7.app.pod.cluster.local."),
            ("succeeded", "10-244-0-8.app.pod.cluster.local."),
        ] {
            let r = reply(answer(&c, q, RecordType::A));
            assert_eq!(r.rcode, ResponseCode::NXDomain, "{what}");
            assert!(!r.authority.is_empty(), "{what}: NXDOMAIN with the SOA");
        }
        // `pods insecure` does not look at pods at all.
        c.pods = PodMode::Insecure;
        let r = reply(answer(
            &c,
            "10-244-0-7.app.pod.cluster.local.",
            RecordType::A,
        ));
        assert_eq!(r.answers.len(), 1);
    }

    #[test]
    fn endpoint_pod_names_names_endpoints_after_their_pod() {
        let mut c = Config::new("cluster.local").unwrap();
        let dashed = reply(answer(
            &c,
            "10-244-0-5.web.app.svc.cluster.local.",
            RecordType::A,
        ));
        assert_eq!(dashed.answers.len(), 1);
        c.endpoint_pod_names = true;
        let named = reply(answer(
            &c,
            "web-0.web.app.svc.cluster.local.",
            RecordType::A,
        ));
        assert_eq!(named.answers.len(), 1);
        let old = reply(answer(
            &c,
            "10-244-0-5.web.app.svc.cluster.local.",
            RecordType::A,
        ));
        assert_eq!(old.rcode, ResponseCode::NXDomain);
    }

    #[test]
    fn fallthrough_forwards_name_errors_but_not_nodata() {
        let mut c = Config::new("cluster.local").unwrap();
        c.fallthrough = Some(vec![]);
        assert_eq!(
            answer(&c, "nope.app.svc.cluster.local.", RecordType::A),
            Resolution::Forward
        );
        let nodata = reply(answer(&c, "web.app.svc.cluster.local.", RecordType::AAAA));
        assert_eq!(nodata.rcode, ResponseCode::NoError);
    }

    #[test]
    fn externalname_out_of_zone_asks_the_caller_to_chase_the_target() {
        let c = Config::new("cluster.local").unwrap();
        match answer(&c, "ext.app.svc.cluster.local.", RecordType::A) {
            Resolution::Chase {
                reply,
                target,
                qtype,
            } => {
                assert_eq!(target, Name::from_ascii("db.example.org.").unwrap());
                assert_eq!(qtype, RecordType::A);
                assert!(matches!(reply.answers[0].data, RData::CNAME(_)));
            }
            other => panic!("expected a chase, got {other:?}"),
        }
    }

    #[test]
    fn names_outside_every_served_zone_are_forwarded() {
        let c = Config::new("cluster.local").unwrap();
        assert_eq!(
            answer(&c, "example.org.", RecordType::A),
            Resolution::Forward
        );
        assert_eq!(
            answer(&c, "5.0.244.10.in-addr.arpa.", RecordType::PTR),
            Resolution::Forward
        );
    }
}
