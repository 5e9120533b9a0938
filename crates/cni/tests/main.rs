//! Unprivileged integration tests: host-local through its plugin entry, on a real
//! filesystem store.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use twill_cni::skel::{CmdArgs, Command};
use twill_cni::{host_local, store::Store};

fn tmp(tag: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("twill-cni-it-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn args(command: Command, id: &str, ifname: &str, conf: &Value) -> CmdArgs {
    CmdArgs {
        command,
        container_id: id.into(),
        netns: String::new(),
        ifname: ifname.into(),
        args: String::new(),
        path: String::new(),
        stdin: conf.to_string().into_bytes(),
        conf: conf.clone(),
        version: "1.0.0".into(),
    }
}

#[test]
fn concurrent_adds_never_hand_out_the_same_address() {
    let data = tmp("conc");
    let conf = json!({"cniVersion": "1.0.0", "name": "conc",
        "ipam": {"type": "host-local", "subnet": "10.70.0.0/24", "dataDir": data}});
    let handles: Vec<_> = (0..6)
        .map(|t| {
            let conf = conf.clone();
            std::thread::spawn(move || {
                (0..5)
                    .map(|i| {
                        let r = host_local::add(&args(
                            Command::Add,
                            &format!("t{t}i{i}"),
                            "eth0",
                            &conf,
                        ))
                        .unwrap();
                        r.ips[0].address.addr()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<_> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let distinct: BTreeSet<_> = all.iter().collect();
    assert_eq!(distinct.len(), 30, "{all:?}");
    let store = Store::open(&data, "conc").unwrap();
    assert_eq!(store.reservations().unwrap().len(), 30);
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn add_writes_the_reference_store_layout_and_del_releases_by_attachment() {
    let data = tmp("layout");
    let conf = json!({"cniVersion": "1.0.0", "name": "lay",
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.71.0.0/24"}], [{"subnet": "fd00:71::/64"}]],
                 "dataDir": data}});
    host_local::add(&args(Command::Add, "c1", "eth0", &conf)).unwrap();
    host_local::add(&args(Command::Add, "c1", "net1", &conf)).unwrap();
    let dir = data.join("lay");
    let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap();
    assert_eq!(read("10.71.0.2"), "c1\r\neth0");
    assert_eq!(read("fd00:71::3"), "c1\r\nnet1");
    assert_eq!(read("last_reserved_ip.0"), "10.71.0.3");
    assert_eq!(read("last_reserved_ip.1"), "fd00:71::3");
    assert_eq!(read("lock"), "");
    host_local::del(&args(Command::Del, "c1", "eth0", &conf)).unwrap();
    assert!(!dir.join("10.71.0.2").exists());
    assert!(!dir.join("fd00:71::2").exists());
    assert!(
        dir.join("10.71.0.3").exists(),
        "the other attachment keeps its addresses"
    );
    // DEL again, and CHECK of the released attachment.
    host_local::del(&args(Command::Del, "c1", "eth0", &conf)).unwrap();
    let e = host_local::check(&args(Command::Check, "c1", "eth0", &conf)).unwrap_err();
    assert!(
        e.msg
            .contains("Failed to find address added by container c1"),
        "{}",
        e.msg
    );
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn exhausted_range_set_fails_and_releases_the_sets_already_allocated() {
    let data = tmp("exh");
    let conf = json!({"cniVersion": "1.0.0", "name": "exh",
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.72.0.0/24"}], [{"subnet": "10.73.0.0/30"}]],
                 "dataDir": data}});
    host_local::add(&args(Command::Add, "a", "eth0", &conf)).unwrap();
    let e = host_local::add(&args(Command::Add, "b", "eth0", &conf)).unwrap_err();
    assert_eq!(e.code.code(), 999);
    assert_eq!(
        e.msg,
        "failed to allocate for range 1: no IP addresses available in range set: 10.73.0.1-10.73.0.2"
    );
    assert!(
        !data.join("exh/10.72.0.3").exists(),
        "range set 0's address is rolled back"
    );
    let _ = std::fs::remove_dir_all(&data);
}

/// CNI 1.1 STATUS: ready while a range set has a free address; code 50 once one is
/// exhausted; ready again after a DEL frees one. GC releases exactly the reservations
/// not in `cni.dev/valid-attachments`.
#[test]
fn status_is_50_when_a_range_is_exhausted_and_gc_keeps_the_valid_attachments() {
    let data = tmp("status");
    // 10.72.0.0/29 holds .2-.6 for pods (.1 is the gateway, .7 broadcast): 5 addresses.
    let conf = json!({"cniVersion": "1.1.0", "name": "st",
        "ipam": {"type": "host-local", "subnet": "10.72.0.0/29", "dataDir": data}});
    let status = || host_local::status(&args(Command::Status, "", "", &conf));
    assert!(status().is_ok());
    for i in 0..5 {
        host_local::add(&args(Command::Add, &format!("c{i}"), "eth0", &conf)).unwrap();
    }
    let e = status().unwrap_err();
    assert_eq!(e.code.code(), 50);
    assert!(e.details.contains("no IP addresses available"), "{e:?}");
    host_local::del(&args(Command::Del, "c0", "eth0", &conf)).unwrap();
    assert!(status().is_ok(), "a free address again");
    // GC with c1 and c3 valid: c2 and c4 go, c1 and c3 stay.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([
        {"containerID": "c1", "ifname": "eth0"},
        {"containerID": "c3", "ifname": "eth0"},
    ]);
    host_local::gc(&args(Command::Gc, "", "", &gc)).unwrap();
    let store = Store::open(&data, "st").unwrap();
    let mut held: Vec<String> = store
        .reservations()
        .unwrap()
        .into_iter()
        .map(|r| r.container_id)
        .collect();
    held.sort();
    assert_eq!(held, ["c1", "c3"]);
    let _ = std::fs::remove_dir_all(&data);
}
