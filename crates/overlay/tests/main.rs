//! Table-driven over `shared/testdata/overlay`, read in place.

use twill_conformance::overlay::check_case;

#[test]
fn every_shared_overlay_case_passes() {
    let cases = twill_testkit::testdata::json_cases("overlay");
    assert!(!cases.is_empty(), "no overlay cases found");
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(path, case)| {
            check_case(case)
                .err()
                .map(|e| format!("{}: {e}", path.display()))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
