use serde_json::json;

use super::*;

fn vars() -> Vars {
    let mut v = Vars::default();
    v.text.insert("NETNS".into(), "/run/netns/x".into());
    v.text.insert("DATADIR".into(), "/tmp/d".into());
    v.json
        .insert("PREV_RESULT".into(), json!({"cniVersion": "1.0.0"}));
    v
}

#[test]
fn placeholders_are_replaced_in_strings_keys_and_whole_json_values() {
    let got = vars().subst(&json!({
        "sandbox": "${NETNS}",
        "${DATADIR}/flannel/pod9": {"dataDir": "${DATADIR}"},
        "prevResult": "${PREV_RESULT}",
        "other": "${UNKNOWN}"
    }));
    assert_eq!(
        got,
        json!({
            "sandbox": "/run/netns/x",
            "/tmp/d/flannel/pod9": {"dataDir": "/tmp/d"},
            "prevResult": {"cniVersion": "1.0.0"},
            "other": "${UNKNOWN}"
        })
    );
}

#[test]
fn store_comparison_checks_contents_absent_files_and_exactness() {
    let dir = std::env::temp_dir().join(format!("twill-cni-store-cmp-{}", std::process::id()));
    let net = dir.join("n");
    std::fs::create_dir_all(&net).unwrap();
    std::fs::write(net.join("10.0.0.2"), "c\r\neth0").unwrap();
    std::fs::write(net.join("lock"), "").unwrap();
    let ok = json!({"network": "n", "files": {"10.0.0.2": "c\r\neth0", "lock": ""}, "exact": true});
    assert!(compare_store(&dir, &ok).is_empty());
    let wrong = json!({"network": "n", "files": {"10.0.0.2": "c\r\neth1"}, "absentFiles": ["lock"], "exact": true});
    assert_eq!(
        compare_store(&dir, &wrong).len(),
        3,
        "{:?}",
        compare_store(&dir, &wrong)
    );
    // A store directory that was never created is empty.
    assert!(
        compare_store(
            &dir,
            &json!({"network": "none", "files": {}, "exact": true})
        )
        .is_empty()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
