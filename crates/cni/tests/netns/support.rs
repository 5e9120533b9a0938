//! Helpers for the privileged CNI tests: the plugin binary, plugin directories mixing
//! Twill's plugins with the reference ones, and invoking a plugin like a runtime would.
//!
//! The plugins are the `twill` binary run under plugin names. It is found through
//! `TWILL_BIN`, else `<workspace>/target/debug/twill` (CI builds it before the tests;
//! locally: `cargo build -p twill`). A binary built without the `cni` feature does not
//! answer as a plugin; the tests then stop with that explanation.

use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;
use twill_testkit::netns::Netns;

pub const REFERENCE_DIR: &str = "/usr/lib/cni";
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Root, the reference plugins and the twill binary; false (skip) when missing and
/// skipping is allowed.
pub fn ready(test: &str) -> Option<PathBuf> {
    if !twill_testkit::require_root(test)
        || !twill_testkit::require_tool(test, "/usr/lib/cni/bridge")
    {
        return None;
    }
    let bin = match std::env::var_os("TWILL_BIN") {
        Some(b) => PathBuf::from(b),
        None => twill_testkit::testdata::workspace_root().join("target/debug/twill"),
    };
    let bin = std::fs::canonicalize(&bin).unwrap_or(bin);
    if !bin.is_file() {
        if std::env::var("TWILL_REQUIRE_ROOT").as_deref() == Ok("1") {
            panic!(
                "{test}: {} is missing: build it first (cargo build -p twill) or set TWILL_BIN",
                bin.display()
            );
        }
        eprintln!(
            "{test}: skipped: {} is missing (cargo build -p twill, or set TWILL_BIN)",
            bin.display()
        );
        return None;
    }
    let dir = TempDir::new();
    symlink(&bin, dir.0.join("twill-host-local")).unwrap();
    let out = Command::new(dir.0.join("twill-host-local"))
        .env("CNI_COMMAND", "VERSION")
        .output()
        .unwrap();
    let v: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    assert!(
        v.as_ref()
            .is_some_and(|v| v.get("supportedVersions").is_some()),
        "{test}: {} does not act as a CNI plugin (built without the `cni` feature?): {}",
        bin.display(),
        String::from_utf8_lossy(&out.stdout)
    );
    Some(bin)
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "twill-cni-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Which implementation serves a plugin name in a CNI_PATH directory.
#[derive(Clone, Copy, Debug)]
pub enum Impl {
    Twill,
    Reference,
}

/// A CNI_PATH with `bridge` and `host-local` from the chosen implementations and every
/// other reference plugin (portmap, tuning, ...).
pub fn plugin_dir(twill: &Path, bridge: Impl, host_local: Impl) -> TempDir {
    let d = TempDir::new();
    for e in std::fs::read_dir(REFERENCE_DIR).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let choice = match name.as_str() {
            "bridge" => bridge,
            "host-local" => host_local,
            _ => Impl::Reference,
        };
        let target = match choice {
            Impl::Twill => twill.to_path_buf(),
            Impl::Reference => e.path(),
        };
        symlink(target, d.0.join(&name)).unwrap();
    }
    d
}

/// What a plugin printed and how it exited.
#[derive(Debug)]
pub struct Out {
    pub ok: bool,
    pub json: Value,
    pub raw: String,
}

/// One plugin invocation in `host` (the node namespace).
pub struct Call<'a> {
    pub host: &'a Netns,
    pub cni_path: &'a Path,
    pub container_id: &'a str,
    pub netns: Option<&'a Path>,
    pub ifname: &'a str,
}

impl Call<'_> {
    pub fn run(&self, plugin: &str, command: &str, conf: &Value) -> Out {
        self.run_env(plugin, command, conf, &[])
    }

    pub fn run_env(
        &self,
        plugin: &str,
        command: &str,
        conf: &Value,
        extra: &[(&str, &str)],
    ) -> Out {
        let mut c = self
            .host
            .command(self.cni_path.join(plugin).to_str().unwrap());
        c.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", self.container_id)
            .env("CNI_IFNAME", self.ifname)
            .env("CNI_PATH", self.cni_path)
            .env_remove("CNI_ARGS")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match self.netns {
            Some(p) => c.env("CNI_NETNS", p),
            None => c.env_remove("CNI_NETNS"),
        };
        for (k, v) in extra {
            c.env(k, v);
        }
        let mut child = c.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let raw = String::from_utf8_lossy(&out.stdout).into_owned();
        Out {
            ok: out.status.success(),
            json: serde_json::from_str(&raw).unwrap_or(Value::Null),
            raw: format!("{raw}{}", String::from_utf8_lossy(&out.stderr)),
        }
    }
}

/// Files of a host-local store directory, sorted, without `lock`.
pub fn store_files(data: &Path, network: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(data.join(network))
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        std::fs::read_to_string(e.path()).unwrap_or_default(),
                    )
                })
                .filter(|(n, _)| n != "lock")
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The address (`ip/prefix`) of `ifname` in a namespace, IPv4 only.
pub fn ipv4_of(ns: &Netns, ifname: &str) -> Vec<String> {
    let out = ns.ip(&["-j", "-4", "addr", "show", "dev", ifname]);
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .map(|a| {
            format!(
                "{}/{}",
                a["local"].as_str().unwrap_or_default(),
                a["prefixlen"]
            )
        })
        .collect()
}

/// Host links whose name starts with `veth`.
pub fn veths(ns: &Netns) -> Vec<String> {
    ns.ip(&["-o", "link", "show", "type", "veth"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}
