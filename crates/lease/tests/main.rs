//! The etcd store against a real etcd (Debian's etcd-server), started inside its own
//! network namespace on loopback with a temporary data dir, and killed afterwards.

#![cfg(feature = "etcd")]

use std::net::Ipv4Addr;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use twill_lease::{EtcdStore, Store};
use twill_overlay::{BackendKind, LeaseAttrs, Mac, SubnetKey};
use twill_testkit::netns::Netns;

struct Etcd {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_etcd(ns: &Netns) -> Etcd {
    let dir = std::env::temp_dir().join(format!("twill-etcd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let child = ns
        .command("etcd")
        .args([
            "--name",
            "t",
            "--data-dir",
            dir.to_str().unwrap(),
            "--listen-client-urls",
            "http://127.0.0.1:2379",
            "--advertise-client-urls",
            "http://127.0.0.1:2379",
            "--listen-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-cluster",
            "t=http://127.0.0.1:2380",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcd");
    Etcd { child, dir }
}

fn attrs(last: u8) -> LeaseAttrs {
    LeaseAttrs::for_backend(
        BackendKind::Vxlan,
        Ipv4Addr::new(192, 168, 50, last),
        None,
        1,
        Some(Mac([0x0e, 0, 0, 0, 0, last])),
        None,
    )
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn etcd_store_keeps_flannel_layout_creates_once_watches_and_expires() {
    let name = "etcd_store_keeps_flannel_layout_creates_once_watches_and_expires";
    if !twill_testkit::require_root(name) || !twill_testkit::require_tool(name, "etcd") {
        return;
    }
    let ns = Netns::new("etcd");
    let _etcd = start_etcd(&ns);
    ns.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let start = Instant::now();
            let store = loop {
                let err = match EtcdStore::connect("etcd://127.0.0.1:2379", "/coreos.com/network")
                    .await
                {
                    Ok(mut s) => match s.list().await {
                        Ok(_) => break s,
                        Err(e) => e,
                    },
                    Err(e) => e,
                };
                assert!(
                    start.elapsed() < Duration::from_secs(15),
                    "etcd did not come up: {err}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            let mut raw = etcd_client::Client::connect(["http://127.0.0.1:2379"], None)
                .await
                .unwrap();
            let mut s = Store::Etcd(Box::new(store.clone()));
            let mut e = store;

            // Config at <prefix>/config, written only when absent.
            assert!(
                e.put_config_if_absent(r#"{"Network":"10.244.0.0/16"}"#)
                    .await
                    .unwrap()
            );
            assert!(
                !e.put_config_if_absent(r#"{"Network":"10.9.0.0/16"}"#)
                    .await
                    .unwrap()
            );
            assert_eq!(s.config().await.unwrap(), r#"{"Network":"10.244.0.0/16"}"#);

            // Create-if-absent, with flannel's key and exact value bytes.
            let k = SubnetKey::v4("10.244.1.0/24".parse().unwrap());
            assert!(s.create(k, &attrs(11), 2, now()).await.unwrap().is_some());
            assert!(
                s.create(k, &attrs(12), 60, now()).await.unwrap().is_none(),
                "second create must lose"
            );
            let got = raw
                .get("/coreos.com/network/subnets/10.244.1.0-24", None)
                .await
                .unwrap();
            assert_eq!(got.kvs()[0].value_str().unwrap(), attrs(11).to_json());
            assert_ne!(
                got.kvs()[0].lease(),
                0,
                "lease value bound to an etcd lease"
            );

            // A corrupt value is skipped, the rest listed.
            raw.put("/coreos.com/network/subnets/10.244.7.0-24", "{oops", None)
                .await
                .unwrap();
            let l = s.list(now()).await.unwrap();
            assert_eq!(l.leases.len(), 1);
            assert_eq!(l.leases[0].attrs, attrs(11));
            assert_eq!(l.skipped.len(), 1);
            raw.delete("/coreos.com/network/subnets/10.244.7.0-24", None)
                .await
                .unwrap();

            // A watch wakes on another writer's change.
            let rev = s.list(now()).await.unwrap().revision;
            let k2 = SubnetKey::v4("10.244.2.0/24".parse().unwrap());
            let other_store = EtcdStore::connect("etcd://127.0.0.1:2379", "/coreos.com/network")
                .await
                .unwrap();
            let mut other = Store::Etcd(Box::new(other_store));
            let writer = async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                other.create(k2, &attrs(12), 60, now()).await.unwrap()
            };
            let (changed, created) =
                tokio::join!(s.wait_change(rev, Duration::from_secs(5)), writer);
            assert!(changed.unwrap(), "watch must report the new lease");
            assert!(created.is_some());

            // Renewal re-grants; a lease that is not renewed expires in etcd.
            s.update(k2, &attrs(12), 60, now()).await.unwrap();
            tokio::time::sleep(Duration::from_secs(4)).await;
            let l = s.list(now()).await.unwrap();
            let keys: Vec<_> = l.leases.iter().map(|x| x.subnet).collect();
            assert_eq!(
                keys,
                vec![k2],
                "the 2 s lease of 10.244.1.0/24 expired, the renewed one lives"
            );
            s.delete(k2, now()).await.unwrap();
            assert!(s.list(now()).await.unwrap().leases.is_empty());
        });
    });
}
