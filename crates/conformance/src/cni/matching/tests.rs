use serde_json::json;

use super::*;

#[test]
fn regex_strings_match_whole_values_only() {
    assert!(str_matches("re:^veth[0-9a-f]{8}$", "veth0a1b2c3d"));
    assert!(!str_matches("re:veth[0-9a-f]{8}", "xveth0a1b2c3d"));
    assert!(str_matches("*", "anything"));
}

#[test]
fn empty_dns_and_routes_equal_missing_keys_but_other_keys_must_match() {
    assert!(json_matches(&json!({"a": 1, "dns": {}}), &json!({"a": 1}), false).is_ok());
    assert!(json_matches(&json!({"a": 1}), &json!({"a": 1, "routes": []}), false).is_ok());
    assert!(json_matches(&json!({"a": 1}), &json!({"a": 1, "b": 2}), false).is_err());
    assert!(json_matches(&json!({"a": 1}), &json!({"a": 1, "cni.dev/x": 2}), true).is_ok());
    assert!(json_matches(&json!({"l": [1, 2]}), &json!({"l": [2, 1]}), false).is_err());
}
