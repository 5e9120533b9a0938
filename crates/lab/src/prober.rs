//! kubelet's prober for lab pods: startup, liveness and readiness probes (`httpGet`,
//! `tcpSocket`, `exec`; `grpc` is reported as unsupported), each on its own period,
//! with the thresholds, delays and timeouts the pod declares.
//!
//! A probe runs on a thread of its own so a slow target never stalls the controller's
//! loop; network probes enter the pod's network namespace first (the pod's address is
//! local there, as the kubelet reaches it from the node), exec probes run in the
//! container's namespaces through `nsenter`. The decisions (when a probe is due, what
//! its results mean) are [`ProbeTrack`], pure and unit-tested.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use twill_model::{ObjectKey, Pod, Probe, ProbeAction, Protocol, TargetPort};

use crate::lifecycle::{self, ContainerStatus};
use crate::netns;
use crate::pod::RunningPod;

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

/// One probe's counters for the current run of its container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeTrack {
    /// When the container (re)started, ms.
    pub started_ms: u64,
    pub last_run_ms: Option<u64>,
    pub successes: u32,
    pub failures: u32,
    /// The probe's verdict so far: `None` before it has decided either way.
    pub passing: Option<bool>,
}

impl ProbeTrack {
    pub fn new(started_ms: u64) -> Self {
        ProbeTrack {
            started_ms,
            ..Default::default()
        }
    }

    /// Due at `now_ms`: past the initial delay and a period after the last run.
    pub fn due(&self, p: &Probe, now_ms: u64) -> bool {
        let first = self.started_ms + u64::from(p.initial_delay_seconds) * 1000;
        match self.last_run_ms {
            None => now_ms >= first,
            Some(t) => now_ms >= t + u64::from(p.period_seconds) * 1000,
        }
    }

    /// Count one result; returns the verdict when it flips (success threshold reached
    /// after failing or unknown, failure threshold reached after passing or unknown).
    pub fn record(&mut self, p: &Probe, ok: bool) -> Option<bool> {
        if ok {
            self.successes += 1;
            self.failures = 0;
            if self.successes >= p.success_threshold && self.passing != Some(true) {
                self.passing = Some(true);
                return Some(true);
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.failures >= p.failure_threshold && self.passing != Some(false) {
                self.passing = Some(false);
                return Some(false);
            }
        }
        None
    }
}

/// What the controller must do after a prober pass.
#[derive(Debug, Default)]
pub struct Verdicts {
    /// Containers to kill (liveness or startup failed), with the event message.
    pub kill: Vec<(usize, String)>,
    /// Whether anything changed.
    pub changed: bool,
}

type Key = (ObjectKey, usize, Kind);

/// The probes of every running pod.
#[derive(Default)]
pub struct Prober {
    tracks: BTreeMap<Key, ProbeTrack>,
    running: BTreeMap<Key, JoinHandle<Result<(), String>>>,
}

impl Prober {
    /// Readiness of container `i` by its readiness probe: `None` when it declares none.
    pub fn ready(&self, pod: &ObjectKey, i: usize) -> Option<bool> {
        self.tracks
            .get(&(pod.clone(), i, Kind::Readiness))
            .map(|t| t.passing == Some(true))
    }

    /// Forget a pod that is gone.
    pub fn forget(&mut self, pod: &ObjectKey) {
        self.tracks.retain(|(k, _, _), _| k != pod);
        self.running.retain(|(k, _, _), _| k != pod);
    }

    /// One pass over a pod: collect finished probes, act on them, start due ones.
    pub fn step(&mut self, pod: &Pod, r: &mut RunningPod, now_ms: u64) -> Verdicts {
        let mut v = Verdicts::default();
        for (i, c) in pod.spec.containers.iter().enumerate() {
            let Some(cs) = r.containers.get(i) else {
                continue;
            };
            let started_ms = match cs.state {
                lifecycle::State::Running { started_at } => started_at * 1000,
                _ => {
                    // Not running: its probes start over with the next run.
                    for kind in [Kind::Startup, Kind::Liveness, Kind::Readiness] {
                        let key = (pod.key.clone(), i, kind);
                        v.changed |= self
                            .tracks
                            .remove(&key)
                            .is_some_and(|t| t.passing == Some(true));
                        self.running.remove(&key);
                    }
                    continue;
                }
            };
            let startup_done = c.startup_probe.is_none()
                || self
                    .tracks
                    .get(&(pod.key.clone(), i, Kind::Startup))
                    .is_some_and(|t| t.passing == Some(true) && t.started_ms == started_ms);
            for (kind, probe) in [
                (Kind::Startup, &c.startup_probe),
                (Kind::Liveness, &c.liveness_probe),
                (Kind::Readiness, &c.readiness_probe),
            ] {
                let Some(probe) = probe else { continue };
                if kind != Kind::Startup && !startup_done {
                    continue;
                }
                let key = (pod.key.clone(), i, kind);
                let track = self
                    .tracks
                    .entry(key.clone())
                    .or_insert_with(|| ProbeTrack::new(started_ms));
                if track.started_ms != started_ms {
                    *track = ProbeTrack::new(started_ms);
                    self.running.remove(&key);
                }
                if kind == Kind::Startup && track.passing == Some(true) {
                    continue;
                }
                // A finished run: its result.
                if self.running.get(&key).is_some_and(JoinHandle::is_finished) {
                    let result = self
                        .running
                        .remove(&key)
                        .expect("checked above")
                        .join()
                        .unwrap_or_else(|_| Err("the probe panicked".into()));
                    let flipped = track.record(probe, result.is_ok());
                    if let Err(msg) = &result {
                        let text = format!("{} probe failed: {msg}", kind.name());
                        lifecycle::record_event(
                            &mut r.events,
                            now_ms / 1000,
                            "Warning",
                            "Unhealthy",
                            "kubelet",
                            text,
                        );
                        v.changed = true;
                    }
                    match (kind, flipped) {
                        (Kind::Readiness, Some(_)) => v.changed = true,
                        (Kind::Startup, Some(true)) => v.changed = true,
                        (Kind::Liveness | Kind::Startup, Some(false)) => {
                            let why = if kind == Kind::Liveness {
                                "liveness"
                            } else {
                                "startup"
                            };
                            v.kill.push((
                                i,
                                format!(
                                    "Container {} failed {why} probe, will be restarted",
                                    c.name
                                ),
                            ));
                            v.changed = true;
                        }
                        _ => {}
                    }
                }
                if !self.running.contains_key(&key) && track.due(probe, now_ms) {
                    track.last_run_ms = Some(now_ms);
                    let target = Target::of(pod, r, cs);
                    let action = probe.action.clone();
                    let timeout = Duration::from_secs(u64::from(probe.timeout_seconds));
                    self.running.insert(
                        key,
                        std::thread::spawn(move || run_probe(&action, &target, timeout)),
                    );
                }
            }
        }
        v
    }
}

/// Where a probe goes: the pod's namespace and address, the container's process, and
/// the pod's named ports.
#[derive(Debug, Clone)]
struct Target {
    netns: String,
    ip: Option<IpAddr>,
    pid: Option<i32>,
    named_ports: Vec<(String, u16)>,
}

impl Target {
    fn of(pod: &Pod, r: &RunningPod, cs: &ContainerStatus) -> Target {
        Target {
            netns: r.netns.clone(),
            ip: r.ip,
            pid: cs.pid,
            named_ports: pod
                .spec
                .containers
                .iter()
                .flat_map(|c| &c.ports)
                .filter(|p| p.protocol == Protocol::Tcp)
                .filter_map(|p| p.name.clone().map(|n| (n, p.container_port)))
                .collect(),
        }
    }

    fn port(&self, p: &TargetPort) -> Result<u16, String> {
        match p {
            TargetPort::Number(n) => Ok(*n),
            TargetPort::Name(name) => self
                .named_ports
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, port)| *port)
                .ok_or_else(|| format!("port {name:?} is not a named TCP container port")),
        }
    }
}

fn run_probe(action: &ProbeAction, t: &Target, timeout: Duration) -> Result<(), String> {
    match action {
        ProbeAction::Exec { command } => exec_probe(command, t, timeout),
        ProbeAction::Grpc { .. } => Err("gRPC probes are not supported by the lab".into()),
        ProbeAction::TcpSocket { port } => {
            let addr = SocketAddr::new(t.ip.ok_or("the pod has no address")?, t.port(port)?);
            netns::in_netns_thread(&t.netns, || {
                TcpStream::connect_timeout(&addr, timeout)
                    .map(drop)
                    .map_err(|e| format!("dial tcp {addr}: {e}"))
            })
        }
        ProbeAction::HttpGet { path, port, https } => {
            if *https {
                return Err("HTTPS probes are not supported by the lab".into());
            }
            let addr = SocketAddr::new(t.ip.ok_or("the pod has no address")?, t.port(port)?);
            netns::in_netns_thread(&t.netns, || http_get(addr, path, timeout))
        }
    }
}

/// kubelet's HTTP probe: a GET with `User-Agent: kube-probe`; 200-399 is success.
fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("Get \"http://{addr}{path}\": dial tcp {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.34\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("Get \"http://{addr}{path}\": {e}")),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("Get \"http://{addr}{path}\": malformed HTTP response"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

/// An exec probe: the command in the container's namespaces; exit 0 is success.
fn exec_probe(command: &[String], t: &Target, timeout: Duration) -> Result<(), String> {
    let pid = t.pid.ok_or("the container has no process")?;
    let mut child = std::process::Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "-u", "-m", "--"])
        .args(command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("running nsenter: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) if s.success() => return Ok(()),
            Ok(Some(s)) => {
                return Err(format!(
                    "command {:?} exited with {}",
                    command.join(" "),
                    s.code().unwrap_or(-1)
                ));
            }
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "command {:?} timed out after {timeout:?}",
                    command.join(" ")
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(period: u32, delay: u32, success: u32, failure: u32) -> Probe {
        Probe {
            action: ProbeAction::TcpSocket {
                port: TargetPort::Number(80),
            },
            initial_delay_seconds: delay,
            period_seconds: period,
            timeout_seconds: 1,
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    #[test]
    fn a_probe_waits_its_initial_delay_then_runs_once_per_period() {
        let p = probe(10, 5, 1, 3);
        let mut t = ProbeTrack::new(1_000);
        assert!(!t.due(&p, 5_999));
        assert!(t.due(&p, 6_000));
        t.last_run_ms = Some(6_000);
        assert!(!t.due(&p, 15_999));
        assert!(t.due(&p, 16_000));
    }

    #[test]
    fn thresholds_decide_when_the_verdict_flips() {
        let p = probe(1, 0, 2, 3);
        let mut t = ProbeTrack::new(0);
        assert_eq!(t.record(&p, true), None, "one success of two");
        assert_eq!(t.record(&p, true), Some(true));
        assert_eq!(t.record(&p, true), None, "no flip while it stays");
        assert_eq!(t.record(&p, false), None);
        assert_eq!(t.record(&p, false), None);
        assert_eq!(t.record(&p, true), None, "a success resets the failures");
        for _ in 0..2 {
            assert_eq!(t.record(&p, false), None);
        }
        assert_eq!(
            t.record(&p, false),
            Some(false),
            "the third failure in a row"
        );
        assert_eq!(t.passing, Some(false));
    }
}
