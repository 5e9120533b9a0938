//! Per-case sandbox: uniquely named network namespaces (a "host" the plugins run in, and
//! container namespaces), a temporary folder for the store, the plugin dir and
//! recordings. Everything is removed on drop, also when a case fails halfway; namespaces
//! of dead runner processes are swept by owner pid.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const PREFIX: &str = "twcni";
static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Delete namespaces (and temp dirs) left by runner processes that are gone.
pub fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
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
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

/// A named network namespace owned by this process.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Result<Netns, String> {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("{PREFIX}{}-{n}{tag}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Run `f` on a thread inside this namespace (sysctls, /proc/sys reads).
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R, String> {
        let file =
            File::open(self.path()).map_err(|e| format!("open {}: {e}", self.path().display()))?;
        std::thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("setns: {e}"))?;
                Ok(f())
            })
            .join()
            .map_err(|_| "thread in netns panicked".to_string())?
        })
    }

    /// A command that starts inside this namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<(Command, File), String> {
        let file =
            File::open(self.path()).map_err(|e| format!("open {}: {e}", self.path().display()))?;
        let fd = file.as_raw_fd();
        let mut c = Command::new(program);
        // SAFETY: setns is async-signal-safe; the fd stays open (returned to the caller)
        // until the child has been spawned.
        unsafe {
            c.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok((c, file))
    }

    /// `sh -c line` inside the namespace (preState hostSetup/containerSetup).
    pub fn shell(&self, line: &str) -> Result<String, String> {
        let (mut c, _fd) = self.command("sh")?;
        let out = c
            .args(["-c", line])
            .output()
            .map_err(|e| format!("{line}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{line}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    pub fn sysctl_get(&self, key: &str) -> Result<String, String> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run(move || {
            std::fs::read_to_string(&path)
                .map(|s| s.trim().to_string())
                .map_err(|e| format!("{key}: {e}"))
        })?
    }

    pub fn sysctl_set(&self, key: &str, value: &str) -> Result<(), String> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_string();
        self.run(move || std::fs::write(&path, value).map_err(|e| format!("{key}: {e}")))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: kill has no memory-safety preconditions.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A temporary directory removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Result<TempDir, String> {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("{PREFIX}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a plugin process did.
#[derive(Debug, Clone)]
pub struct Exec {
    pub stdout: String,
    pub stderr: String,
    pub exit: i32,
}

/// Run `program` in `ns` with exactly `env` (plus PATH), `stdin`, a time limit.
pub fn exec_plugin(
    ns: &Netns,
    program: &Path,
    env: &[(String, String)],
    stdin: &[u8],
    timeout: Duration,
) -> Result<Exec, String> {
    let (mut c, _fd) = ns.command(program)?;
    c.env_clear().env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run {}: {e}", program.display()))?;
    let mut w = child.stdin.take().expect("piped");
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&input);
    });
    let mut so = child.stdout.take().expect("piped");
    let mut se = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = so.read_to_end(&mut s);
        s
    });
    let ereader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = se.read_to_end(&mut s);
        s
    });
    let start = std::time::Instant::now();
    let status = loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(s) => break s,
            None if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{} timed out after {timeout:?}", program.display()));
            }
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    };
    let _ = writer.join();
    let stdout = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&ereader.join().unwrap_or_default()).into_owned();
    Ok(Exec {
        stdout,
        stderr,
        exit: status.code().unwrap_or(-1),
    })
}
