//! Taking a snapshot of a live network namespace: `iptables-save`, `ip6tables-save`,
//! `ip -j route show table all` (both families), `ip -j -d addr show`, `ip -j neigh`,
//! `bridge -j fdb show`, `ipset save`, `nft -j list ruleset` (and `nft -a list ruleset` for
//! rule texts), `conntrack -L` and the forwarding sysctls. The only I/O in this crate, kept to reading.
//!
//! Parsing stays in [`Snapshot::from_files`], so a snapshot written with [`write_dir`]
//! traces exactly like the live node it came from. A named namespace is entered with
//! `setns` on a fresh thread (the calling thread keeps its namespace); the tools it runs
//! inherit that namespace, and /proc/sys/net answers for it.
#![allow(clippy::disallowed_methods)] // the collector is this crate's I/O edge, by design

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::{Error, SNAPSHOT_FILES, Snapshot};

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The raw snapshot files of the calling thread's network namespace. A tool that is
/// missing or fails leaves its file out.
pub fn collect_files() -> BTreeMap<String, String> {
    let mut f = BTreeMap::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            f.insert(k.to_string(), v);
        }
    };
    put("iptables-save.txt", output("iptables-save", &[]));
    put("ip6tables-save.txt", output("ip6tables-save", &[]));
    let r4 = output("ip", &["-j", "-4", "route", "show", "table", "all"]);
    let r6 = output("ip", &["-j", "-6", "route", "show", "table", "all"]);
    put(
        "routes.json",
        Some(format!(
            "{}\n{}",
            r4.unwrap_or_else(|| "[]".into()),
            r6.unwrap_or_else(|| "[]".into())
        )),
    );
    put("addrs.json", output("ip", &["-j", "-d", "addr", "show"]));
    put("ipset-save.txt", output("ipset", &["save"]));
    put("neigh.json", output("ip", &["-j", "neigh", "show"]));
    put("nft.json", output("nft", &["-j", "list", "ruleset"]));
    let ct4 = output("conntrack", &["-L"]);
    let ct6 = output("conntrack", &["-L", "-f", "ipv6"]);
    if ct4.is_some() || ct6.is_some() {
        put(
            "conntrack.txt",
            Some(format!(
                "{}{}",
                ct4.unwrap_or_default(),
                ct6.unwrap_or_default()
            )),
        );
    }
    put("nft.txt", output("nft", &["-a", "list", "ruleset"]));
    put("fdb.json", output("bridge", &["-j", "fdb", "show"]));
    put(
        "ip_forward",
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").ok(),
    );
    put(
        "ipv6_forwarding",
        std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding").ok(),
    );
    f
}

/// The raw files of the named network namespace (`/run/netns/NAME`), or of the current
/// one for `None`.
pub fn collect_files_in(netns: Option<&str>) -> Result<BTreeMap<String, String>, Error> {
    let Some(name) = netns else {
        return Ok(collect_files());
    };
    let path = if name.contains('/') {
        name.to_string()
    } else {
        format!("/run/netns/{name}")
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(&path).map_err(|e| Error::Collect {
                what: format!("netns {path}"),
                msg: e.to_string(),
            })?;
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                Error::Collect {
                    what: format!("setns {path}"),
                    msg: e.to_string(),
                }
            })?;
            Ok(collect_files())
        })
        .join()
        .unwrap_or_else(|_| {
            Err(Error::Collect {
                what: "collector thread".into(),
                msg: "panicked".into(),
            })
        })
    })
}

/// A parsed snapshot of the named (or current) network namespace.
pub fn collect(netns: Option<&str>) -> Result<Snapshot, Error> {
    Snapshot::from_files(&collect_files_in(netns)?)
}

/// Read a snapshot folder (the files named in [`SNAPSHOT_FILES`]; missing ones are
/// left out).
pub fn read_dir(dir: &Path) -> Result<BTreeMap<String, String>, Error> {
    if !dir.is_dir() {
        return Err(Error::Collect {
            what: dir.display().to_string(),
            msg: "not a directory".into(),
        });
    }
    let mut f = BTreeMap::new();
    for name in SNAPSHOT_FILES {
        if let Ok(t) = std::fs::read_to_string(dir.join(name)) {
            f.insert(name.to_string(), t);
        }
    }
    Ok(f)
}

/// Write raw snapshot files into `dir` (created if needed).
pub fn write_dir(dir: &Path, files: &BTreeMap<String, String>) -> Result<(), Error> {
    let err = |e: std::io::Error| Error::Collect {
        what: dir.display().to_string(),
        msg: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    for (k, v) in files {
        std::fs::write(dir.join(k), v).map_err(err)?;
    }
    Ok(())
}
