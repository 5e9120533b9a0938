use serde_json::json;

use super::*;

#[test]
fn derived_config_keeps_only_declared_capabilities_the_runtime_has() {
    let p = json!({"type": "tuning", "capabilities": {"mac": true, "portMappings": true}});
    let rc = json!({"portMappings": [{"hostPort": 1}]});
    let c = derive_config(&p, "net", "1.0.0", &rc, Some(&json!({"x": 1})), None);
    assert_eq!(
        c,
        json!({"type": "tuning", "name": "net", "cniVersion": "1.0.0",
               "runtimeConfig": {"portMappings": [{"hostPort": 1}]}, "prevResult": {"x": 1}})
    );
    let none = derive_config(
        &json!({"type": "t", "capabilities": {"mac": true}}),
        "n",
        "1.0.0",
        &rc,
        None,
        None,
    );
    assert!(none.get("runtimeConfig").is_none());
}

#[test]
fn version_is_the_highest_listed_and_supported() {
    assert_eq!(
        pick_version(&json!({"cniVersion": "0.4.0", "cniVersions": ["1.0.0", "9.9.9"]})),
        "1.0.0"
    );
}
