//! Per-case sandbox: uniquely named network namespaces (a "host" the plugins run in, and
//! container namespaces), a temporary folder for the store, the plugin dir and
//! recordings. Everything is removed on drop, also when a case fails halfway; namespaces
//! of dead runner processes are swept by owner pid.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const PREFIX: &str = "twcni";
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The runner's namespaces: `twcni<pid>-<n><tag>` from the shared `twill-netns`.
pub use twill_netns::Netns;

/// A namespace owned by this runner.
pub fn netns(tag: &str) -> Result<Netns, String> {
    Netns::create(PREFIX, tag).map_err(|e| e.to_string())
}

/// Delete namespaces left by runner processes that are gone.
pub fn sweep_stale() {
    twill_netns::sweep_stale(PREFIX);
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
    let mut c = ns.command(program).map_err(|e| e.to_string())?;
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
