//! The shared proxy corpus as the tracer's truth: every flow of every fixture that gives
//! upstream's exact ruleset (`iptablesRestore`) must trace to its expected outputs and
//! masquerade verdict. General over the schema: hidden fixtures run the same way.

use twill_conformance::trace as corpus;

#[test]
fn every_corpus_flow_traces_to_its_expected_outputs_and_masquerade() {
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for (path, file) in twill_testkit::testdata::json_cases("proxy") {
        let label = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (p, failures, s) = corpus::run_file(&label, &file);
        passed += p;
        skipped += s;
        failed += failures.len();
        for f in failures {
            println!("FAIL {f}");
        }
    }
    println!("({skipped} fixtures without iptablesRestore skipped)");
    println!("{passed} passed, {failed} failed");
    assert!(passed > 0, "no corpus flow had rules to trace");
    assert_eq!(failed, 0, "corpus flows traced wrongly (see FAIL lines)");
}

fn first_fixture_with_rules() -> serde_json::Value {
    twill_testkit::testdata::json_cases("proxy")
        .into_iter()
        .map(|(_, v)| v)
        .find(|v| {
            v["fixtures"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x.get("iptablesRestore").is_some()))
        })
        .expect("the corpus has a fixture with iptablesRestore")
}

#[test]
fn the_runner_reports_a_flow_whose_expectation_the_rules_contradict() {
    let mut file = first_fixture_with_rules();
    let fixtures = file["fixtures"].as_array_mut().unwrap();
    fixtures.retain(|f| f.get("iptablesRestore").is_some());
    let fx = &mut fixtures[0];
    let flow_name = fx["flows"][0]["name"].as_str().unwrap().to_string();
    let outputs = fx["flows"][0]["expected"]["outputs"].clone();
    fx["flows"][0]["expected"]["outputs"] = if outputs == "REJECT" {
        serde_json::json!("ACCEPT")
    } else {
        serde_json::json!("REJECT")
    };
    let (_, failures, _) = corpus::run_file("mutated", &file);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].contains(&format!("flow `{flow_name}`")),
        "{}",
        failures[0]
    );
}

#[test]
fn kube_proxy_jumps_are_added_once_and_only_for_chains_that_exist() {
    let mut rs = twill_trace::Ruleset::parse(
        "t",
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\nCOMMIT\n*filter\n:KUBE-SERVICES - [0:0]\nCOMMIT\n",
    )
    .unwrap();
    corpus::add_kube_proxy_jumps(&mut rs).unwrap();
    corpus::add_kube_proxy_jumps(&mut rs).unwrap();
    assert_eq!(rs.chain("nat", "PREROUTING").unwrap().rules.len(), 1);
    assert_eq!(rs.chain("nat", "POSTROUTING").unwrap().rules.len(), 1);
    assert_eq!(rs.chain("filter", "FORWARD").unwrap().rules.len(), 1);
    assert_eq!(rs.chain("filter", "OUTPUT").unwrap().rules.len(), 1);
    assert!(
        rs.chain("filter", "INPUT").is_none(),
        "no KUBE chain INPUT would jump to exists"
    );
}
