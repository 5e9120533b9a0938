use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::*;

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let m: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k: &str| m.get(k).cloned()
}

const FULL: &[(&str, &str)] = &[
    ("CNI_COMMAND", "ADD"),
    ("CNI_CONTAINERID", "c1"),
    ("CNI_NETNS", "/run/netns/x"),
    ("CNI_IFNAME", "eth0"),
    ("CNI_PATH", "/opt/cni/bin"),
];

fn conf() -> Vec<u8> {
    json!({"cniVersion": "1.0.0", "name": "n", "type": "bridge"})
        .to_string()
        .into_bytes()
}

fn err(pairs: &[(&str, &str)], stdin: &[u8]) -> CniError {
    prepare(&env(pairs), stdin).unwrap_err().0
}

struct Echo;

impl Plugin for Echo {
    fn add(&self, a: &CmdArgs) -> Result<Value, CniError> {
        Ok(json!({"cniVersion": a.version, "id": a.container_id}))
    }
    fn del(&self, _: &CmdArgs) -> Result<(), CniError> {
        Ok(())
    }
    fn check(&self, _: &CmdArgs) -> Result<(), CniError> {
        Err(CniError::internal("check failed"))
    }
    fn gc(&self, _: &CmdArgs) -> Result<(), CniError> {
        Ok(())
    }
    fn status(&self, _: &CmdArgs) -> Result<(), CniError> {
        Ok(())
    }
}

#[test]
fn missing_variables_are_listed_in_spec_order_with_code_4() {
    let e = err(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c")], &conf());
    assert_eq!(e.code.code(), 4);
    assert_eq!(
        e.msg,
        "required env variables [CNI_NETNS,CNI_IFNAME,CNI_PATH] missing"
    );
    assert_eq!(
        err(&[], &conf()).msg,
        "required env variables [CNI_COMMAND] missing"
    );
}

#[test]
fn del_needs_no_netns_and_gc_needs_only_the_path() {
    let del: Vec<(&str, &str)> = FULL
        .iter()
        .copied()
        .filter(|(k, _)| *k != "CNI_NETNS")
        .map(|(k, v)| {
            if k == "CNI_COMMAND" {
                (k, "DEL")
            } else {
                (k, v)
            }
        })
        .collect();
    assert!(prepare(&env(&del), &conf()).is_ok());
    let gc = json!({"cniVersion": "1.1.0", "name": "n"}).to_string();
    assert!(
        prepare(
            &env(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/p")]),
            gc.as_bytes()
        )
        .is_ok()
    );
    assert_eq!(err(&[("CNI_COMMAND", "GC")], gc.as_bytes()).code.code(), 4);
}

#[test]
fn unknown_command_is_code_4_naming_it() {
    let e = err(&[("CNI_COMMAND", "FROB")], &conf());
    assert_eq!(
        (e.code.code(), e.msg.as_str()),
        (4, "unknown CNI_COMMAND: FROB")
    );
}

#[test]
fn undecodable_config_is_code_6_and_missing_name_code_7() {
    assert_eq!(err(FULL, b"{\"cniVersion\": ").code.code(), 6);
    let e = err(FULL, json!({"cniVersion": "1.0.0"}).to_string().as_bytes());
    assert_eq!((e.code.code(), e.msg.as_str()), (7, "missing network name"));
}

#[test]
fn unsupported_version_is_code_1_with_details_listing_supported_versions() {
    let e = err(
        FULL,
        json!({"cniVersion": "2.0.0", "name": "n"})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(e.code.code(), 1);
    assert!(
        e.details
            .starts_with("config is \"2.0.0\", plugin supports [\"0.1.0\""),
        "{}",
        e.details
    );
}

#[test]
fn check_needs_0_4_0_and_gc_status_need_1_1_0() {
    let check: Vec<(&str, &str)> = FULL
        .iter()
        .map(|&(k, v)| {
            if k == "CNI_COMMAND" {
                (k, "CHECK")
            } else {
                (k, v)
            }
        })
        .collect();
    let e = err(
        &check,
        json!({"cniVersion": "0.3.1", "name": "n"})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(
        (e.code.code(), e.msg.as_str()),
        (1, "config version does not allow CHECK")
    );
    let e = err(&[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/p")], &conf());
    assert_eq!(
        (e.code.code(), e.msg.as_str()),
        (1, "config version does not allow STATUS")
    );
}

#[test]
fn bad_interface_names_and_container_ids_are_code_4() {
    let bad_if: Vec<(&str, &str)> = FULL
        .iter()
        .map(|&(k, v)| {
            if k == "CNI_IFNAME" {
                (k, "a/b")
            } else {
                (k, v)
            }
        })
        .collect();
    assert_eq!(err(&bad_if, &conf()).code.code(), 4);
    let long: Vec<(&str, &str)> = FULL
        .iter()
        .map(|&(k, v)| {
            if k == "CNI_IFNAME" {
                (k, "abcdefghijklmnop")
            } else {
                (k, v)
            }
        })
        .collect();
    assert_eq!(err(&long, &conf()).code.code(), 4);
    let bad_id: Vec<(&str, &str)> = FULL
        .iter()
        .map(|&(k, v)| {
            if k == "CNI_CONTAINERID" {
                (k, "-x y")
            } else {
                (k, v)
            }
        })
        .collect();
    assert_eq!(err(&bad_id, &conf()).code.code(), 4);
}

#[test]
fn run_prints_the_result_or_the_error_json_and_sets_the_exit_status() {
    let ok = run(&Echo, &env(FULL), &conf());
    assert_eq!(ok.exit, 0);
    let v: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(v, json!({"cniVersion": "1.0.0", "id": "c1"}));
    let check: Vec<(&str, &str)> = FULL
        .iter()
        .map(|&(k, v)| {
            if k == "CNI_COMMAND" {
                (k, "CHECK")
            } else {
                (k, v)
            }
        })
        .collect();
    let bad = run(&Echo, &env(&check), &conf());
    assert_eq!(bad.exit, 1);
    let v: Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(
        (v["code"].as_u64(), v["msg"].as_str()),
        (Some(999), Some("check failed"))
    );
    let version = run(&Echo, &env(&[("CNI_COMMAND", "VERSION")]), b"");
    let v: Value = serde_json::from_slice(&version.stdout).unwrap();
    assert_eq!(v["supportedVersions"][6], "1.1.0");
    let del: Vec<(&str, &str)> = FULL
        .iter()
        .map(|&(k, v)| {
            if k == "CNI_COMMAND" {
                (k, "DEL")
            } else {
                (k, v)
            }
        })
        .collect();
    assert!(run(&Echo, &env(&del), &conf()).stdout.is_empty());
}

#[test]
fn a_container_id_with_invalid_characters_is_code_4_with_the_id_in_details() {
    let mut pairs = FULL.to_vec();
    pairs[1] = ("CNI_CONTAINERID", "bad id/../x");
    let e = err(&pairs, &conf());
    assert_eq!(e.code.code(), 4);
    assert_eq!(e.msg, "invalid characters in containerID");
    assert_eq!(e.details, "bad id/../x");
}
