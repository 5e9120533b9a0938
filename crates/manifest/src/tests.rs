use super::*;
use twill_model::{Object, Protocol, ServiceType, TargetPort};

fn messages(r: &LoadResult) -> Vec<String> {
    r.problems.iter().map(ToString::to_string).collect()
}

const WEB: &str = "\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
# the service
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: {app: web}
  ports:
  - port: 70000
---
apiVersion: v1
kind: Service
metadata:
  name: ok
spec:
  ports:
  - port: 80
";

#[test]
fn bad_object_is_reported_with_file_doc_line_object_and_field_and_others_load() {
    let r = parse_str("shop/web.yaml", WEB);
    assert_eq!(
        messages(&r),
        [
            "shop/web.yaml doc 2 (line 7): Service shop/web: spec.ports[0].port: 70000 is out of range 1-65535"
        ]
    );
    let kinds: Vec<String> = r
        .objects
        .iter()
        .map(|o| o.object.object_ref().to_string())
        .collect();
    assert_eq!(kinds, ["Namespace shop", "Service default/ok"]);
    assert_eq!(r.objects[1].location.doc, 3);
    assert_eq!(r.objects[1].location.line, 17);
}

#[test]
fn defaults_are_applied_as_the_api_server_does() {
    let r = parse_str(
        "s.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports: [{port: 53}]\n",
    );
    assert!(r.problems.is_empty(), "{:?}", messages(&r));
    let Object::Service(s) = &r.objects[0].object else {
        panic!()
    };
    assert_eq!(s.key.namespace, "default");
    assert_eq!(s.service_type, ServiceType::ClusterIP);
    assert_eq!(s.ports[0].protocol, Protocol::Tcp);
    assert_eq!(s.ports[0].target_port, TargetPort::Number(53));
    assert_eq!(s.session_affinity, twill_model::SessionAffinity::None);
}

#[test]
fn unknown_kind_is_a_warning_and_configmap_is_silently_accepted() {
    let text = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n";
    let r = parse_str("x.yaml", text);
    assert!(!r.has_errors());
    assert_eq!(
        messages(&r),
        [
            "warning: x.yaml doc 1 (line 1): Job default/j: unsupported kind \"Job\" (batch/v1) ignored"
        ]
    );
    assert!(r.objects.is_empty());
}

#[test]
fn malformed_yaml_in_one_document_leaves_the_next_loading() {
    let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n";
    let r = parse_str("m.yaml", text);
    assert_eq!(r.problems.len(), 1, "{:?}", messages(&r));
    let p = &r.problems[0];
    assert_eq!(p.location.as_ref().unwrap().doc, 1);
    assert!(p.message.starts_with("invalid YAML"), "{}", p.message);
    assert_eq!(r.objects.len(), 1);
}

#[test]
fn wrong_type_names_the_field_path() {
    let text =
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports:\n  - port: eighty\n";
    let r = parse_str("t.yaml", text);
    assert_eq!(r.problems.len(), 1);
    assert_eq!(r.problems[0].path, "spec.ports[0].port");
    assert_eq!(r.problems[0].object.as_deref(), Some("Service default/s"));
}

#[test]
fn json_list_and_concatenated_json_load() {
    let text = r#"{"apiVersion":"v1","kind":"List","items":[
      {"apiVersion":"v1","kind":"Namespace","metadata":{"name":"a"}},
      {"apiVersion":"v1","kind":"Service","metadata":{"name":"s"},"spec":{"ports":[{"port":0}]}}]}
    {"apiVersion":"v1","kind":"Namespace","metadata":{"name":"b"}}"#;
    let r = parse_str("l.json", text);
    assert_eq!(r.objects.len(), 2);
    assert_eq!(
        messages(&r),
        [
            "l.json doc 1 (line 1): Service default/s: items[1].spec.ports[0].port: 0 is out of range 1-65535"
        ]
    );
    assert_eq!(r.objects[1].location.doc, 2);
    assert_eq!(r.objects[1].location.line, 4);
}

#[test]
fn document_markers_with_inline_content_and_end_markers() {
    let text = "--- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n...\n---\n\napiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n";
    let r = parse_str("d.yaml", text);
    assert!(r.problems.is_empty(), "{:?}", messages(&r));
    let lines: Vec<(usize, usize)> = r
        .objects
        .iter()
        .map(|o| (o.location.doc, o.location.line))
        .collect();
    assert_eq!(lines, [(1, 1), (2, 5)]);
}

#[test]
fn every_problem_of_an_object_is_reported_at_once() {
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: Bad_Name}\nspec:\n  type: Weird\n  ports:\n  - {port: 80, protocol: ICMP, targetPort: not_a_name}\n";
    let r = parse_str("e.yaml", text);
    let paths: Vec<&str> = r.problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "metadata.name",
            "spec.type",
            "spec.ports[0].protocol",
            "spec.ports[0].targetPort"
        ]
    );
}

#[test]
fn shared_examples_load_without_problems() {
    let dir = twill_testkit::testdata::examples_dir();
    let r = files::load_paths(&[dir.display().to_string()]);
    assert!(r.problems.is_empty(), "{:?}", messages(&r));
    assert!(r.objects.len() >= 5);
}

/// Every object in the shared dns, proxy and netpol corpora is a valid API object, so
/// the loader must take all of them (upstream fixtures' oddities included).
#[test]
fn shared_corpus_objects_all_decode() {
    fn walk(v: &serde_json::Value, out: &mut Vec<serde_json::Value>) {
        match v {
            serde_json::Value::Object(m) => {
                if m.contains_key("kind")
                    && m.contains_key("apiVersion")
                    && m.contains_key("metadata")
                {
                    out.push(v.clone());
                    return;
                }
                m.values().for_each(|x| walk(x, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut failures = Vec::new();
    let mut count = 0;
    for area in ["dns", "proxy"] {
        for (path, case) in twill_testkit::testdata::json_cases(area) {
            let mut objs = Vec::new();
            walk(&case, &mut objs);
            for o in objs {
                count += 1;
                if let Err(e) = decode_value(&o) {
                    failures.push(format!(
                        "{}: {:?} {} {:?}",
                        path.display(),
                        e.object,
                        e.message,
                        e.errors
                    ));
                }
            }
        }
    }
    assert!(count > 50, "found only {count} objects");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn rendered_state_loads_back_identically() {
    let text = "
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: a}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.96.0.50
  selector: {app: web}
  sessionAffinity: ClientIP
  ports: [{name: http, port: 80, targetPort: http, nodePort: 30080}]
---
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: shop, labels: {app: web}}
spec:
  nodeName: node-1
  containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}]}]
status: {phase: Running, podIP: 10.244.0.2, conditions: [{type: Ready, status: 'True'}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - namespaceSelector: {matchExpressions: [{key: team, operator: In, values: [a, b]}]}
      podSelector: {}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
    ports: [{port: http}, {protocol: UDP, port: 53, endPort: 60}]
  egress: [{}]
";
    let r = parse_str("in.yaml", text);
    assert!(r.problems.is_empty(), "{:?}", messages(&r));
    let state = twill_model::ClusterState::from_objects(r.into_objects());
    let rendered = render_yaml(&state);
    let back = parse_str("out.yaml", &rendered);
    assert!(
        back.problems.is_empty(),
        "{:?}\n{rendered}",
        messages(&back)
    );
    assert_eq!(
        twill_model::ClusterState::from_objects(back.into_objects()),
        state,
        "{rendered}"
    );
}

#[test]
fn restart_policy_and_probes_get_the_api_defaults_and_its_validation() {
    let r = parse_str(
        "p.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  restartPolicy: OnFailure\n  containers:\n  - name: c\n    image: i\n    ports: [{name: http, containerPort: 8080}]\n    readinessProbe: {httpGet: {port: http}}\n    livenessProbe: {tcpSocket: {port: 8080}, periodSeconds: 2, failureThreshold: 1}\n    startupProbe: {exec: {command: [cat, /tmp/ok]}, initialDelaySeconds: 5}\n",
    );
    assert!(r.problems.is_empty(), "{:?}", messages(&r));
    let Object::Pod(p) = &r.objects[0].object else {
        panic!()
    };
    assert_eq!(p.spec.restart_policy, twill_model::RestartPolicy::OnFailure);
    let c = &p.spec.containers[0];
    let ready = c.readiness_probe.as_ref().unwrap();
    assert_eq!(
        ready.action,
        twill_model::ProbeAction::HttpGet {
            path: "/".into(),
            port: TargetPort::Name("http".into()),
            https: false
        }
    );
    assert_eq!(
        (
            ready.period_seconds,
            ready.timeout_seconds,
            ready.success_threshold,
            ready.failure_threshold
        ),
        (10, 1, 1, 3)
    );
    let live = c.liveness_probe.as_ref().unwrap();
    assert_eq!((live.period_seconds, live.failure_threshold), (2, 1));
    assert_eq!(c.startup_probe.as_ref().unwrap().initial_delay_seconds, 5);

    let bad = parse_str(
        "b.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: b}\nspec:\n  restartPolicy: Sometimes\n  containers:\n  - name: c\n    image: i\n    livenessProbe: {tcpSocket: {port: 1}, successThreshold: 2}\n    readinessProbe: {periodSeconds: 0}\n",
    );
    let msgs = messages(&bad).join("\n");
    for want in [
        "spec.restartPolicy: unsupported value \"Sometimes\"",
        "spec.containers[0].livenessProbe.successThreshold: must be 1",
        "spec.containers[0].readinessProbe: must specify a handler type",
    ] {
        assert!(msgs.contains(want), "{want:?} not in:\n{msgs}");
    }
}

#[test]
fn a_terminating_pod_stays_terminating_through_render_and_parse() {
    let r = parse_str(
        "p.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, deletionTimestamp: '2026-12-07T10:00:00Z'}\nspec:\n  containers: [{name: c, image: i}]\n",
    );
    let state = twill_model::ClusterState::from_objects(r.into_objects());
    assert!(state.pods.values().all(|p| p.terminating));
    let again = twill_model::ClusterState::from_objects(
        parse_str("again.yaml", &render_yaml(&state)).into_objects(),
    );
    assert_eq!(again.pods.len(), 1);
    assert!(
        again.pods.values().all(|p| p.terminating),
        "{}",
        render_yaml(&state)
    );
}

const TWO_PORTS_OUT_OF_RANGE: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports:
  - {name: a, port: 65536}
  - {name: b, port: -1}
";

#[test]
fn out_of_range_ports_are_reported_as_such_and_not_as_duplicates_of_port_0() {
    let r = parse_str("s.yaml", TWO_PORTS_OUT_OF_RANGE);
    assert_eq!(
        messages(&r),
        [
            "s.yaml doc 1 (line 1): Service shop/web: spec.ports[0].port: 65536 is out of range 1-65535",
            "s.yaml doc 1 (line 1): Service shop/web: spec.ports[1].port: -1 is out of range 1-65535",
        ]
    );
}

#[test]
fn annotations_over_the_api_servers_256_kib_are_refused_naming_the_field() {
    let big = "x".repeat(256 * 1024);
    let text = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\n  annotations:\n    a: {big}\nspec:\n  ports: [{{port: 80}}]\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: ok\n  namespace: shop\n  annotations:\n    a: {}\nspec:\n  ports: [{{port: 80}}]\n",
        &big[..256 * 1024 - 1]
    );
    let r = parse_str("a.yaml", &text);
    assert_eq!(
        messages(&r),
        [
            "a.yaml doc 1 (line 1): Service shop/web: metadata.annotations: 262145 bytes of keys and values: the API server's limit is 262144 (256 KiB) in total"
        ]
    );
    // Exactly at the limit (one-byte key plus the rest) loads.
    assert_eq!(r.objects.len(), 1);
}

#[test]
fn the_same_object_twice_is_a_warning_naming_both_places_and_the_last_wins() {
    let svc = |port: u16| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\nspec:\n  ports: [{{port: {port}}}]\n"
        )
    };
    let mut r = parse_str("a.yaml", &svc(80));
    r.extend(parse_str("b.yaml", &format!("{}---\n{}", svc(81), svc(82))));
    let dups = checks::duplicates(&r.objects);
    let text: Vec<String> = dups.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "warning: b.yaml doc 1 (line 1): Service shop/web: metadata.name: given again (first at a.yaml doc 1 (line 1)); this later copy replaces it",
            "warning: b.yaml doc 2 (line 7): Service shop/web: metadata.name: given again (first at a.yaml doc 1 (line 1)); this later copy replaces it",
        ]
    );
    let state = twill_model::ClusterState::from_objects(r.into_objects());
    let port = state.services.values().next().unwrap().ports[0].port;
    assert_eq!(port, 82, "the last copy wins");
}

#[test]
fn objects_in_an_undeclared_namespace_warn_once_per_namespace() {
    let text = "\
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: a, namespace: shop}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: shoop}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: c, namespace: shoop}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: d, namespace: default}
spec: {ports: [{port: 80}]}
";
    let r = parse_str("n.yaml", text);
    let w = checks::missing_namespaces(&r.objects, &checks::SYSTEM_NAMESPACES);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].object.as_deref(), Some("Service shoop/b"));
    assert_eq!(w[0].path, "metadata.namespace");
    assert!(w[0].message.contains("NXDOMAIN"), "{}", w[0].message);
    // Without an API server to create `default`, it is missing too.
    let w = checks::missing_namespaces(&r.objects, &[]);
    let names: Vec<_> = w.iter().filter_map(|p| p.object.as_deref()).collect();
    assert_eq!(names, ["Service shoop/b", "Service default/d"]);
}
