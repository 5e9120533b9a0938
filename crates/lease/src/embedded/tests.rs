use std::net::Ipv4Addr;

use twill_overlay::BackendKind;

use super::*;

/// A store in a fresh temporary directory, removed on drop.
struct TmpStore(EmbeddedStore);

impl std::ops::Deref for TmpStore {
    type Target = EmbeddedStore;
    fn deref(&self) -> &EmbeddedStore {
        &self.0
    }
}

impl Drop for TmpStore {
    fn drop(&mut self) {
        if let Some(dir) = self.0.path().parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn tmp_store(tag: &str) -> TmpStore {
    let dir = std::env::temp_dir().join(format!("twill-lease-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    TmpStore(EmbeddedStore::new(dir.join("leases.json")))
}

fn attrs(last: u8) -> LeaseAttrs {
    LeaseAttrs::for_backend(
        BackendKind::HostGw,
        Ipv4Addr::new(10, 0, 0, last),
        None,
        1,
        None,
        None,
    )
}

fn key(s: &str) -> SubnetKey {
    SubnetKey::v4(s.parse().unwrap())
}

#[test]
fn create_is_refused_when_the_key_is_held() {
    let s = tmp_store("create");
    assert_eq!(
        s.create(key("10.1.2.0/24"), &attrs(1), 100, 10).unwrap(),
        Some(110)
    );
    assert_eq!(
        s.create(key("10.1.2.0/24"), &attrs(2), 100, 20).unwrap(),
        None
    );
    let l = s.list(30).unwrap();
    assert_eq!(l.leases.len(), 1);
    assert_eq!(l.leases[0].attrs.public_ip, Ipv4Addr::new(10, 0, 0, 1));
}

#[test]
fn expired_lease_disappears_and_its_key_can_be_taken() {
    let s = tmp_store("expire");
    s.create(key("10.1.2.0/24"), &attrs(1), 5, 0).unwrap();
    assert_eq!(s.list(4).unwrap().leases.len(), 1);
    assert!(s.list(5).unwrap().leases.is_empty());
    assert_eq!(
        s.create(key("10.1.2.0/24"), &attrs(2), 5, 6).unwrap(),
        Some(11)
    );
}

#[test]
fn corrupt_value_is_skipped_and_others_still_listed() {
    let s = tmp_store("corrupt");
    s.create(key("10.1.3.0/24"), &attrs(3), 100, 0).unwrap();
    s.put_raw("10.1.4.0-24", "{not json", 100).unwrap();
    let l = s.list(1).unwrap();
    assert_eq!(l.leases.len(), 1);
    assert_eq!(l.skipped.len(), 1);
    assert_eq!(l.skipped[0].0, "10.1.4.0-24");
}

#[test]
fn revision_moves_on_every_change() {
    let s = tmp_store("rev");
    let r0 = s.list(0).unwrap().revision;
    s.create(key("10.1.5.0/24"), &attrs(5), 100, 0).unwrap();
    let r1 = s.list(0).unwrap().revision;
    s.delete(key("10.1.5.0/24"), 0).unwrap();
    let r2 = s.list(0).unwrap().revision;
    assert!(r0 < r1 && r1 < r2);
}

#[test]
fn concurrent_creates_from_threads_never_grant_one_key_twice() {
    let s = tmp_store("race");
    let wins: usize = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..8u8)
            .map(|i| {
                let s = s.0.clone();
                sc.spawn(move || {
                    s.create(key("10.1.9.0/24"), &attrs(i), 100, 0)
                        .unwrap()
                        .is_some() as usize
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(wins, 1);
}
