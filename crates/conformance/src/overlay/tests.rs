use super::*;

fn case(kind: &str, extra: Value) -> Value {
    let mut v = json!({"name": "t", "kind": kind});
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    v
}

#[test]
fn wrong_subnet_env_content_is_reported() {
    let good = case(
        "subnet-env",
        json!({"network": {"Network": "10.1.0.0/16", "Backend": {"Type": "host-gw"}},
               "node": {"publicIP": "10.0.0.1", "extIface": {"name": "eth0", "mtu": 9000, "address": "10.0.0.1/24"}},
               "lease": {"subnet": "10.1.5.0/24"},
               "expected": {"content": "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.5.1/24\nFLANNEL_MTU=9000\nFLANNEL_IPMASQ=false\n"}}),
    );
    assert_eq!(check_case(&good), Ok(()));
    let mut bad = good.clone();
    bad["expected"]["content"] = json!("FLANNEL_MTU=8950\n");
    assert!(check_case(&bad).is_err());
}

#[test]
fn regex_strings_match_whole_values_only() {
    assert!(matches(&json!("re:^[0-9a-f]{2}$"), &json!("0e"), false));
    assert!(!matches(&json!("re:[0-9a-f]{2}"), &json!("0e:00"), false));
    assert!(matches(&json!({"a": 1}), &json!({"a": 1, "b": 2}), true));
    assert!(!matches(&json!({"a": 1}), &json!({"a": 1, "b": 2}), false));
}

#[test]
fn expected_error_must_actually_occur() {
    let c = case(
        "config",
        json!({"network": {"Network": "10.0.0.0/16"}, "expected": {"error": {"msgContains": "x"}}}),
    );
    assert!(check_case(&c).is_err());
}

#[test]
fn timestamps_round_trip_through_unix_seconds() {
    for s in [
        "1970-01-01T00:00:00Z",
        "2000-02-29T23:59:59Z",
        "2025-03-02T12:00:00Z",
        "2100-12-31T00:00:01Z",
    ] {
        assert_eq!(format_rfc3339(parse_rfc3339(s).unwrap()), s);
    }
    assert_eq!(
        parse_rfc3339("2025-03-02T12:00:00Z").unwrap(),
        1_740_916_800
    );
}
