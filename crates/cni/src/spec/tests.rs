use serde_json::json;

use super::*;

#[test]
fn result_for_0_3_x_carries_ip_version_and_1_x_does_not() {
    let r = CniResult::from_json(&json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/run/netns/x"}],
        "ips": [{"interface": 0, "address": "10.0.0.2/24", "gateway": "10.0.0.1"}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {}
    }))
    .unwrap();
    let old = r.to_json("0.3.1");
    assert_eq!(old["ips"][0]["version"], "4");
    assert_eq!(old["cniVersion"], "0.3.1");
    let new = r.to_json("1.1.0");
    assert!(new["ips"][0].get("version").is_none());
    assert_eq!(new["interfaces"][0]["sandbox"], "/run/netns/x");
    assert_eq!(CniResult::from_json(&new).unwrap(), r);
}

#[test]
fn result_for_0_2_0_uses_ip4_and_drops_interfaces() {
    let r = CniResult::from_json(&json!({
        "ips": [{"address": "10.0.0.2/24", "gateway": "10.0.0.1"}, {"address": "fd00::2/64"}],
        "routes": [{"dst": "10.1.0.0/16", "gw": "10.0.0.9"}]
    }))
    .unwrap();
    let v = r.to_json("0.2.0");
    assert_eq!(v["ip4"]["ip"], "10.0.0.2/24");
    assert_eq!(v["ip4"]["routes"][0]["gw"], "10.0.0.9");
    assert_eq!(v["ip6"]["ip"], "fd00::2/64");
    assert!(v.get("interfaces").is_none());
    let back = CniResult::from_json(&v).unwrap();
    assert_eq!(back.ips.len(), 2);
}

#[test]
fn versions_compare_numerically() {
    assert!(version_at_least("0.10.0", "0.4.0"));
    assert!(!version_at_least("0.3.1", "0.4.0"));
    assert!(!version_at_least("junk", "0.1.0"));
}

#[test]
fn error_json_has_code_msg_and_optional_details() {
    let e = CniError::new(ErrorCode::IncompatibleVersion, "incompatible CNI versions")
        .with_details("d");
    let v = e.to_json("1.0.0");
    assert_eq!(v["code"], 1);
    assert_eq!(v["details"], "d");
    assert_eq!(CniError::from_json(&v).unwrap(), e);
    assert!(
        CniError::internal("x")
            .to_json("1.0.0")
            .get("details")
            .is_none()
    );
    assert_eq!(errno_text(libc::EEXIST), "file exists");
}
