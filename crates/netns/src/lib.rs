//! Network namespaces owned by this process, for conformance runners, harnesses and
//! tests (the test kit wraps this with panicking helpers).
//!
//! Names are `<prefix><pid>-<n><tag>`: a later run tells its own namespaces from a dead
//! run's by the pid and sweeps the dead ones ([`sweep_stale`], called by
//! [`Netns::create`]). Dropping a [`Netns`] kills whatever still runs inside and deletes
//! it, so a runner killed halfway leaves nothing a later run trips over. Named (not
//! anonymous) namespaces, because CNI plugins and `ip netns exec` take a path.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

pub const NETNS_DIR: &str = "/run/netns";
static COUNTER: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetnsError {
    #[error("{command} (in {netns}): {message}")]
    Command {
        netns: String,
        command: String,
        message: String,
    },
    #[error("entering netns {netns}: {message}")]
    Enter { netns: String, message: String },
}

/// A named network namespace owned by this process.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Kill every process inside the named namespace.
pub fn kill_all_in(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Delete namespaces named `<prefix><pid>-…` whose owning process is gone.
pub fn sweep_stale(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !pid_alive(pid) {
            kill_all_in(&name);
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

/// Move the calling thread into the namespace at `path`.
pub fn enter(path: &Path) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))
}

fn run(netns: &str, program: &str, args: &[&str]) -> Result<String, NetnsError> {
    let err = |message: String| NetnsError::Command {
        netns: netns.into(),
        command: format!("{program} {}", args.join(" ")),
        message,
    };
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| err(e.to_string()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}

/// A command that starts inside a namespace; keeps the namespace handle open until the
/// child has been spawned.
#[derive(Debug)]
pub struct NsCommand {
    pub command: Command,
    _handle: File,
}

impl std::ops::Deref for NsCommand {
    type Target = Command;
    fn deref(&self) -> &Command {
        &self.command
    }
}

impl std::ops::DerefMut for NsCommand {
    fn deref_mut(&mut self) -> &mut Command {
        &mut self.command
    }
}

impl Netns {
    /// Create `<prefix><pid>-<n><tag>` with loopback up, after sweeping namespaces of
    /// the same prefix left by dead processes. Keep `prefix` and `tag` short: interface
    /// and namespace names show up in error messages and `ip netns list`.
    pub fn create(prefix: &str, tag: &str) -> Result<Self, NetnsError> {
        sweep_stale(prefix);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("{prefix}{}-{n}{tag}", std::process::id());
        run("", "ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, what CNI_NETNS takes.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// Run a program inside the namespace the way an operator would (`ip netns exec`,
    /// which also gives it the namespace's own /sys); its stdout on success.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, NetnsError> {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(args);
        run(&self.name, "ip", &full)
    }

    /// Like [`Netns::exec`] but returns the whole output, whatever the exit status.
    pub fn output(&self, program: &str, args: &[&str]) -> std::io::Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
    }

    /// `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<String, NetnsError> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run(&self.name, "ip", &full)
    }

    /// `sh -c line` inside the namespace (entered directly, see [`Netns::command`]);
    /// stdout on success.
    pub fn shell(&self, line: &str) -> Result<String, NetnsError> {
        let err = |message: String| NetnsError::Command {
            netns: self.name.clone(),
            command: line.to_string(),
            message,
        };
        let out = self
            .command("sh")?
            .args(["-c", line])
            .output()
            .map_err(|e| err(e.to_string()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()))
        }
    }

    /// A command whose child enters the namespace just before exec: no extra `ip`
    /// process per call, for runners that start many (CNI plugins, servers).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<NsCommand, NetnsError> {
        let file = File::open(self.path()).map_err(|e| NetnsError::Enter {
            netns: self.name.clone(),
            message: format!("open {}: {e}", self.path().display()),
        })?;
        let fd = file.as_raw_fd();
        let mut c = Command::new(program);
        // SAFETY: setns is async-signal-safe; the fd stays open (held by NsCommand)
        // until the child has been spawned.
        unsafe {
            c.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(NsCommand {
            command: c,
            _handle: file,
        })
    }

    /// Run `f` on a fresh thread that has entered the namespace (so sockets, netlink
    /// handles and `/proc/sys/net` reads it makes are the namespace's).
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R, NetnsError> {
        let path = self.path();
        let name = self.name.clone();
        std::thread::scope(|s| {
            s.spawn(move || {
                enter(&path).map_err(|message| NetnsError::Enter {
                    netns: name,
                    message,
                })?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| {
                Err(NetnsError::Enter {
                    netns: self.name.clone(),
                    message: "thread panicked".into(),
                })
            })
        })
    }

    /// Read a sysctl of this namespace (`net.ipv4.ip_forward`).
    pub fn sysctl_get(&self, key: &str) -> Result<String, NetnsError> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run(move || std::fs::read_to_string(&path))?
            .map(|s| s.trim().to_string())
            .map_err(|e| self.sysctl_error(key, e))
    }

    /// Set a sysctl of this namespace only.
    pub fn sysctl_set(&self, key: &str, value: &str) -> Result<(), NetnsError> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_string();
        self.run(move || std::fs::write(&path, value))?
            .map_err(|e| self.sysctl_error(key, e))
    }

    fn sysctl_error(&self, key: &str, e: std::io::Error) -> NetnsError {
        NetnsError::Command {
            netns: self.name.clone(),
            command: format!("sysctl {key}"),
            message: e.to_string(),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_all_in(&self.name);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Connect two namespaces with a veth pair: `a_if` in `a`, `b_if` in `b`, both up.
pub fn veth_pair(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<(), NetnsError> {
    // A temporary peer name, so `b_if` may equal `a_if` (both `eth0`).
    let tmp = format!(
        "tv{}-{}",
        std::process::id() % 100_000,
        COUNTER.fetch_add(1, Ordering::SeqCst)
    );
    a.ip(&["link", "add", a_if, "type", "veth", "peer", "name", &tmp])?;
    a.ip(&["link", "set", &tmp, "netns", b.name()])?;
    b.ip(&["link", "set", &tmp, "name", b_if])?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn a_namespace_is_isolated_usable_and_gone_after_drop() {
        if !root() {
            eprintln!("skipped: needs root");
            return;
        }
        let a = Netns::create("twnt", "a").unwrap();
        let b = Netns::create("twnt", "b").unwrap();
        veth_pair(&a, "eth0", &b, "eth0").unwrap();
        a.ip(&["addr", "add", "10.9.0.1/24", "dev", "eth0"])
            .unwrap();
        b.ip(&["addr", "add", "10.9.0.2/24", "dev", "eth0"])
            .unwrap();
        assert!(a.exec("ping", &["-c1", "-W2", "10.9.0.2"]).is_ok());
        a.sysctl_set("net.ipv4.ip_forward", "1").unwrap();
        assert_eq!(a.sysctl_get("net.ipv4.ip_forward").unwrap(), "1");
        assert_eq!(b.sysctl_get("net.ipv4.ip_forward").unwrap(), "0");
        let out = a
            .command("ip")
            .unwrap()
            .args(["-br", "addr"])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("10.9.0.1"));
        let err = a.ip(&["link", "set", "nosuchdev", "up"]).unwrap_err();
        assert!(err.to_string().contains(a.name()), "{err}");
        let path = a.path();
        drop(a);
        assert!(!path.exists());
    }
}
