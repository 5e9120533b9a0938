//! ADD and DEL latency of Twill's bridge + host-local against the reference plugins
//! (`/usr/lib/cni`), in the same run, with the same config, in the same node namespace.
//!
//! Each pod gets its own netns (made before timing starts); a measurement is the wall
//! time of one plugin process, from spawn to exit, as a runtime sees it. Twill and the
//! reference alternate in rounds so drift on the machine hits both alike.
//!
//! ```text
//! cargo build --release -p twill
//! sudo TWILL_BIN=target/release/twill cargo bench -p twill-cni --bench add_del
//! ```
//! `TWILL_BENCH_PODS` (default 60) pods per implementation and round; 2 rounds.
//! Custom harness (not criterion): the quantity of interest is a per-pod latency
//! distribution (median, p90) over distinct pods, which criterion's
//! iterate-the-same-closure model does not give.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use twill_testkit::netns::Netns;

fn plugin_dir(dir: &Path, twill: Option<&Path>) {
    std::fs::create_dir_all(dir).unwrap();
    for name in ["bridge", "host-local"] {
        let target = match twill {
            Some(t) => t.to_path_buf(),
            None => Path::new("/usr/lib/cni").join(name),
        };
        let _ = std::fs::remove_file(dir.join(name));
        symlink(target, dir.join(name)).unwrap();
    }
}

fn run(host: &Netns, dir: &Path, cmd: &str, id: &str, pod: &Netns, conf: &[u8]) -> Duration {
    let ns = std::fs::File::open(host.path()).unwrap();
    let fd = ns.as_raw_fd();
    let mut c = Command::new(dir.join("bridge"));
    c.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", pod.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setns is async-signal-safe; `ns` outlives the spawn.
    unsafe {
        c.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let start = Instant::now();
    let mut child = c.spawn().unwrap();
    child.stdin.take().unwrap().write_all(conf).unwrap();
    let out = child.wait_with_output().unwrap();
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{cmd} {id} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout)
    );
    took
}

fn stats(v: &mut [Duration]) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (
        ms(v[v.len() / 2]),
        ms(v[(v.len() * 9 / 10).min(v.len() - 1)]),
    )
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without
    // it, and must not spend a minute creating pods.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("add_del: run with `cargo bench -p twill-cni --bench add_del`");
        return;
    }
    if unsafe { libc::geteuid() } != 0 || !Path::new("/usr/lib/cni/bridge").exists() {
        eprintln!("add_del: skipped: needs root and containernetworking-plugins in /usr/lib/cni");
        return;
    }
    let bin = std::env::var_os("TWILL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| twill_testkit::testdata::workspace_root().join("target/debug/twill"));
    let bin = std::fs::canonicalize(&bin).expect("twill binary (set TWILL_BIN)");
    let pods: usize = std::env::var("TWILL_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let tmp = std::env::temp_dir().join(format!("twill-cni-bench-{}", std::process::id()));
    let (twill_dir, ref_dir, data) = (tmp.join("twill"), tmp.join("reference"), tmp.join("data"));
    plugin_dir(&twill_dir, Some(&bin));
    plugin_dir(&ref_dir, None);

    let host = Netns::new("bh");
    let pod_ns: Vec<Netns> = (0..pods).map(|_| Netns::new("bp")).collect();
    let conf = json!({"cniVersion": "1.0.0", "name": "benchnet", "type": "bridge", "bridge": "cni0",
        "isGateway": true, "ipam": {"type": "host-local", "subnet": "10.200.0.0/16", "dataDir": data}})
    .to_string()
    .into_bytes();

    let impls = [("twill", &twill_dir), ("reference", &ref_dir)];
    let mut add = [Vec::new(), Vec::new()];
    let mut del = [Vec::new(), Vec::new()];
    // Warm-up: bridge creation and page cache for both binaries.
    for (_, dir) in impls {
        run(&host, dir, "ADD", "warm", &pod_ns[0], &conf);
        run(&host, dir, "DEL", "warm", &pod_ns[0], &conf);
    }
    for round in 0..2 {
        for (i, (_, dir)) in impls.iter().enumerate() {
            for (p, ns) in pod_ns.iter().enumerate() {
                add[i].push(run(&host, dir, "ADD", &format!("r{round}p{p}"), ns, &conf));
            }
            for (p, ns) in pod_ns.iter().enumerate() {
                del[i].push(run(&host, dir, "DEL", &format!("r{round}p{p}"), ns, &conf));
            }
        }
    }
    println!(
        "CNI bridge+host-local, {} pods x 2 rounds per implementation, binary {}",
        pods,
        bin.display()
    );
    println!(
        "{:<10} {:>12} {:>12} {:>12} {:>12}",
        "impl", "ADD median", "ADD p90", "DEL median", "DEL p90"
    );
    let mut med = [0.0; 2];
    for (i, (name, _)) in impls.iter().enumerate() {
        let (am, ap) = stats(&mut add[i]);
        let (dm, dp) = stats(&mut del[i]);
        med[i] = am;
        println!("{name:<10} {am:>10.2}ms {ap:>10.2}ms {dm:>10.2}ms {dp:>10.2}ms");
    }
    println!("ADD median speed-up: {:.1}x", med[1] / med[0]);
    // The floor every plugin pays on this machine: spawning a process, and the kernel
    // creating one veth pair (measured through the same harness).
    let mut spawn: Vec<Duration> = (0..pods)
        .map(|_| {
            let start = Instant::now();
            Command::new("/bin/true").status().unwrap();
            start.elapsed()
        })
        .collect();
    let (sm, sp) = stats(&mut spawn);
    println!("baseline: spawning /bin/true median {sm:.2}ms p90 {sp:.2}ms");
    drop(pod_ns);
    drop(host);
    let _ = std::fs::remove_dir_all(&tmp);
}
