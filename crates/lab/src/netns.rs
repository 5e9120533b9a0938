//! Named network namespaces and commands run inside them.
//!
//! The lab drives links and addresses with `ip -batch`: one process per namespace
//! applies a whole topology step, which is what an operator would type and keeps the
//! lab's own plumbing readable. (The data-plane components it hosts, CNI plugins and
//! agents, program the kernel through netlink themselves.)

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use crate::LabError;

pub const NETNS_DIR: &str = "/run/netns";

pub fn path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

pub fn exists(name: &str) -> bool {
    path(name).exists()
}

fn check(what: &str, out: std::io::Result<Output>) -> Result<String, LabError> {
    let out = out.map_err(|e| LabError::Io(what.to_string(), e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::Command(
            what.to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// `ip netns add NAME` and bring its loopback up.
pub fn add(name: &str) -> Result<(), LabError> {
    check(
        &format!("ip netns add {name}"),
        Command::new("ip").args(["netns", "add", name]).output(),
    )?;
    batch(name, "link set lo up\n")
}

/// Kill every process in the namespace, then delete it. Missing is fine.
pub fn delete(name: &str) -> Result<(), LabError> {
    if !exists(name) {
        return Ok(());
    }
    kill_all(name);
    check(
        &format!("ip netns del {name}"),
        Command::new("ip").args(["netns", "del", name]).output(),
    )
    .map(|_| ())
}

/// SIGKILL whatever still runs in the namespace.
pub fn kill_all(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Every namespace whose name starts with `prefix`.
pub fn list(prefix: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(NETNS_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Run `ip -n NS -batch -` with `commands` (one `ip` command per line, without `ip`).
pub fn batch(ns: &str, commands: &str) -> Result<(), LabError> {
    let what = format!("ip -n {ns} -batch -");
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| LabError::Io(what.clone(), e))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(commands.as_bytes())
        .map_err(|e| LabError::Io(what.clone(), e))?;
    check(
        &format!("{what} <<< {}", commands.trim().replace('\n', "; ")),
        child.wait_with_output(),
    )
    .map(|_| ())
}

/// Write a sysctl of the namespace (through its own /proc/sys view).
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<(), LabError> {
    check(
        &format!("sysctl -w {key}={value} in {ns}"),
        in_netns(ns, "sysctl")
            .args(["-q", "-w", &format!("{key}={value}")])
            .output(),
    )
    .map(|_| ())
}

/// A command that will run inside the namespace (entered between fork and exec, so
/// the child alone is moved).
pub fn in_netns(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    let file = File::open(path(ns));
    // SAFETY: the closure only calls setns(2) on an fd opened before fork, which is
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let f = file
                .as_ref()
                .map_err(|e| std::io::Error::new(e.kind(), e.to_string()))?;
            if libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Run a command inside the namespace and return its stdout, or its stderr as error.
pub fn run(ns: &str, program: &str, args: &[&str]) -> Result<String, LabError> {
    check(
        &format!("{program} {} in {ns}", args.join(" ")),
        in_netns(ns, program).args(args).output(),
    )
}

/// Enter network namespace `name` on the calling thread, then run `f`. Call it on a
/// thread of its own that ends with `f` (a probe's, a flow query's): the thread stays in
/// that namespace.
pub fn in_netns_thread<T>(name: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let path = path(name);
    let fd = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: setns on an fd we hold; it changes only this thread's namespace.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "entering {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    f()
}
