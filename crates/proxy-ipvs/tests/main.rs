//! The shared proxy corpus at plan level, and the kernel check on this machine.

use twill_conformance::proxy::corpus::FlowOutcome;
use twill_conformance::proxy::corpus::shared_fixtures as fixtures;
use twill_conformance::proxy::ipvs::run_fixture_plan;

#[test]
fn shared_corpus_flows_are_routed_by_the_ipvs_plan() {
    let (mut pass, mut skip) = (0, 0);
    let mut failures = Vec::new();
    for (file, fx) in fixtures() {
        let r = run_fixture_plan(&fx, Err("kernel check not run in this test".into()));
        assert_eq!(r.flows.len(), fx.flows.len());
        assert!(r.kernel_skipped.is_some());
        for (flow, o) in fx.flows.iter().zip(r.flows) {
            match o {
                FlowOutcome::Passed => pass += 1,
                FlowOutcome::Skipped(_) => skip += 1,
                FlowOutcome::Failed(e) => {
                    failures.push(format!("{file} [{}] {:?}: {e}", fx.name, flow.name))
                }
            }
        }
    }
    eprintln!(
        "ipvs plan: {pass} passed, {} failed, {skip} skipped",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(pass > 5 * skip, "most flows must be judged, not skipped");
}

#[test]
fn a_kernel_without_ipvs_and_dummy_links_is_reported_by_name() {
    if !twill_testkit::require_root("a_kernel_without_ipvs_and_dummy_links_is_reported_by_name") {
        return;
    }
    match twill_proxy_ipvs::check_kernel() {
        Ok(()) => eprintln!("this kernel has IPVS and dummy links; nothing missing to report"),
        Err(m) => {
            let text = m.to_string();
            eprintln!("{text}");
            if m.ipvs.is_some() {
                assert!(
                    text.contains("the kernel has no IPVS (generic netlink family IPVS not found")
                );
            }
            if m.dummy.is_some() {
                assert!(text.contains("no dummy link support"));
            }
        }
    }
    // Only this process's probe namespaces: other tests create namespaces concurrently.
    let mine = format!("twill-ipvs-probe-{}-", std::process::id());
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&mine))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "probe namespaces left behind: {left:?}");
}

#[test]
fn opening_an_ipvs_socket_on_a_kernel_without_ipvs_names_the_missing_family() {
    if !twill_testkit::require_root("opening_an_ipvs_socket_names_the_missing_family") {
        return;
    }
    let ns = twill_testkit::netns::Netns::new("ipvs-open");
    ns.run(|| match twill_proxy_ipvs::kernel::IpvsSocket::open() {
        Ok(s) => eprintln!("this kernel has IPVS (family {})", s.family()),
        Err(e) => {
            assert!(e.is_no_ipvs(), "{e}");
            assert_eq!(
                e.to_string(),
                "the kernel has no IPVS (generic netlink family IPVS not found)"
            );
        }
    });
}
