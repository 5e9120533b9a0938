//! Uniquely named network namespaces for tests.
//!
//! Names are `twt<pid>-<n><tag>`, so a later run can tell its own from a dead run's and
//! sweep the dead ones ([`sweep_stale`], called by every [`Netns::new`]). Dropping a
//! [`Netns`] kills the processes left in it and deletes it. Named (not anonymous)
//! namespaces are used because CNI plugins and `ip netns exec` take a path.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

const PREFIX: &str = "twt";
const NETNS_DIR: &str = "/run/netns";
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A named network namespace owned by this test process.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

fn run_ip(args: &[&str]) -> Output {
    Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (install iproute2)")
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Delete test namespaces whose owning process is gone.
pub fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !pid_alive(pid) {
            kill_all_in(&name);
            let _ = run_ip(&["netns", "del", &name]);
        }
    }
}

fn kill_all_in(name: &str) {
    let out = run_ip(&["netns", "pids", name]);
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

impl Netns {
    /// Create `twt<pid>-<n><tag>` with loopback up. `tag` should be short (a few letters).
    pub fn new(tag: &str) -> Self {
        sweep_stale();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("{PREFIX}{}-{n}{tag}", std::process::id());
        let out = run_ip(&["netns", "add", &name]);
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, what CNI_NETNS takes.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// Run a command inside the namespace (`ip netns exec`).
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {} {program}: {e}", self.name))
    }

    /// A command builder that runs inside the namespace (for spawning servers).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// `ip ARGS` inside the namespace; panics with stderr on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = self.exec("ip", args);
        assert!(
            out.status.success(),
            "ip {} in {}: {}",
            args.join(" "),
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run `f` on a fresh thread that has entered this namespace (so netlink sockets and
    /// child processes it opens live there).
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(move || {
                let file = std::fs::File::open(&path).expect("open netns");
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .expect("thread in netns panicked")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_all_in(&self.name);
        let _ = run_ip(&["netns", "del", &self.name]);
    }
}

/// Connect two namespaces with a veth pair `a_if`@a — `b_if`@b.
pub fn veth_pair(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    let tmp = format!("tv{}", COUNTER.fetch_add(1, Ordering::SeqCst));
    a.ip(&["link", "add", a_if, "type", "veth", "peer", "name", &tmp]);
    a.ip(&["link", "set", &tmp, "netns", b.name()]);
    b.ip(&["link", "set", &tmp, "name", b_if]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_is_created_isolated_and_removed() {
        if !crate::require_root("namespace_is_created_isolated_and_removed") {
            return;
        }
        let ns = Netns::new("kt");
        let path = ns.path();
        assert!(path.exists());
        let links = ns.ip(&["-o", "link"]);
        assert_eq!(
            links.lines().count(),
            1,
            "only lo in a fresh namespace: {links}"
        );
        let inside = ns.run(|| std::fs::read_link("/proc/thread-self/ns/net").unwrap());
        let outside = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        assert_ne!(inside, outside);
        drop(ns);
        assert!(!path.exists());
    }
}
