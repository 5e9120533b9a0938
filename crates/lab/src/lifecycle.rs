//! The lab's kubelet rules, pure: which process stands in for a container (the runtime
//! rule), what a container's state is after it exits (restart policy and kubelet's
//! crash-loop back-off), and the `STATUS` / `RESTARTS` columns as kubectl prints them.
//!
//! The runtime rule must not depend on what is installed on the host: the same
//! manifest gives the same cluster on every machine. So the *image* decides:
//! - images of the tool kind ([`TOOL_IMAGES`]: busybox, alpine, debian, ubuntu,
//!   netshoot, dnsutils, curl, python, bash) run their command with the host's
//!   programs, as a debugging pod would; a program the host lacks fails the way a
//!   missing executable fails in a container (`StartError`, then back-off);
//! - any other image (an application: nginx, a Java service, …) gets the built-in
//!   responder on the container's declared ports, whatever its command says;
//! - the pod annotation [`RUNTIME_ANNOTATION`] (`command` or `responder`) overrides
//!   both.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use twill_model::{Container, Pod, RestartPolicy};

/// Pod annotation forcing the runtime: `command` or `responder`.
pub const RUNTIME_ANNOTATION: &str = "lab.twill.dev/runtime";

/// Tool images by name (the last path component without tag or digest, or its suffix
/// after a `-`, so `jessie-dnsutils` is `dnsutils`), with the command the image runs
/// when the pod gives none (its entrypoint and default arguments).
pub const TOOL_IMAGES: &[(&str, &[&str])] = &[
    ("busybox", &["sh"]),
    ("alpine", &["/bin/sh"]),
    ("debian", &["bash"]),
    ("ubuntu", &["bash"]),
    ("netshoot", &["zsh"]),
    ("dnsutils", &["sh"]),
    ("curl", &["curl"]),
    ("python", &["python3"]),
    ("bash", &["bash"]),
];

/// What runs for one container, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Runtime {
    /// The container's command, run with the host's programs.
    Command { argv: Vec<String>, reason: String },
    /// The built-in responder on the pod's declared ports.
    Responder { reason: String },
}

impl Runtime {
    pub fn reason(&self) -> &str {
        match self {
            Runtime::Command { reason, .. } | Runtime::Responder { reason } => reason,
        }
    }

    /// `command` or `responder`, for tables.
    pub fn kind(&self) -> &'static str {
        match self {
            Runtime::Command { .. } => "command",
            Runtime::Responder { .. } => "responder",
        }
    }
}

/// `nicolaka/netshoot:v0.13` → `netshoot`; `registry.k8s.io/e2e-test-images/jessie-dnsutils:1.3`
/// → `jessie-dnsutils`; `python@sha256:…` → `python`.
pub fn image_name(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    last.split(':').next().unwrap_or(last)
}

/// The tool image entry `image` is, if any.
fn tool_image(image: &str) -> Option<(&'static str, &'static [&'static str])> {
    let name = image_name(image);
    TOOL_IMAGES.iter().copied().find(|(tool, _)| {
        name == *tool
            || name
                .strip_suffix(tool)
                .is_some_and(|rest| rest.ends_with('-'))
    })
}

/// The argv a tool image runs: the pod's `command` (plus `args`), else the image's
/// default command with `args` replacing its arguments, as a container runtime does
/// for images without an entrypoint.
fn tool_argv(c: &Container, default: &[&str]) -> Vec<String> {
    if !c.command.is_empty() {
        c.command.iter().chain(&c.args).cloned().collect()
    } else if !c.args.is_empty() {
        c.args.clone()
    } else {
        default.iter().map(|s| s.to_string()).collect()
    }
}

/// The runtime rule (see the module docs).
pub fn runtime_for(pod: &Pod, c: &Container) -> Runtime {
    let image = if c.image.is_empty() {
        "<none>"
    } else {
        c.image.as_str()
    };
    let forced = pod.annotations.get(RUNTIME_ANNOTATION).map(String::as_str);
    let tool = tool_image(&c.image);
    match forced {
        Some("responder") => {
            return Runtime::Responder {
                reason: format!("annotation {RUNTIME_ANNOTATION}=responder"),
            };
        }
        Some("command") => {
            let default = tool.map_or(&[][..], |(_, d)| d);
            let argv = tool_argv(c, default);
            return if argv.is_empty() {
                Runtime::Responder {
                    reason: format!(
                        "annotation {RUNTIME_ANNOTATION}=command, but image {image} has no known default command and the pod gives none"
                    ),
                }
            } else {
                Runtime::Command {
                    argv,
                    reason: format!("annotation {RUNTIME_ANNOTATION}=command"),
                }
            };
        }
        _ => {}
    }
    let unknown = forced
        .map(|v| {
            format!(" (annotation {RUNTIME_ANNOTATION}={v:?} is neither command nor responder)")
        })
        .unwrap_or_default();
    match tool {
        Some((name, default)) => Runtime::Command {
            argv: tool_argv(c, default),
            reason: format!(
                "{name} is a tool image: its command runs with the host's programs{unknown}"
            ),
        },
        None => Runtime::Responder {
            reason: format!(
                "image {image} is not a tool image: the responder serves its declared ports{unknown}"
            ),
        },
    }
}

/// kubelet's crash-loop back-off: the first restart is immediate, then 10 s doubling
/// up to 5 min; a container that ran 10 min (twice the maximum) before exiting starts
/// over. The base is configurable so tests can use a short one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// kubelet's figures.
    pub const KUBELET: Backoff = Backoff {
        base: Duration::from_secs(10),
        max: Duration::from_secs(300),
    };

    /// The same shape from another base (max stays 30 × base, as 10 s → 5 min).
    pub fn with_base(base: Duration) -> Self {
        Backoff {
            base,
            max: base * 30,
        }
    }

    /// The delay before the next start, after `crashes` consecutive crashes (counting
    /// the one that just happened).
    pub fn delay(&self, crashes: u32) -> Duration {
        if crashes <= 1 {
            return Duration::ZERO;
        }
        let doublings = (crashes - 2).min(31);
        self.base.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// How long a container must run for its crash count to start over.
    pub fn reset_after(&self) -> Duration {
        self.max * 2
    }
}

/// A container's state as the API shows it (`status.containerStatuses[].state`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    Waiting {
        reason: String,
        message: String,
    },
    Running {
        /// Unix time, seconds.
        started_at: u64,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        message: String,
        started_at: Option<u64>,
        finished_at: u64,
    },
}

/// One container of a running pod: what runs, its state and restart history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub name: String,
    pub runtime: Runtime,
    pub pid: Option<i32>,
    pub state: State,
    /// The previous termination (`lastState`).
    pub last_state: Option<State>,
    pub restart_count: u32,
    /// Consecutive crashes since the back-off last started over.
    #[serde(default)]
    pub crashes: u32,
    /// Unix time of the last restart.
    pub last_restart: Option<u64>,
    /// Unix time (ms) before which the container is not started again.
    #[serde(default)]
    pub restart_at_ms: Option<u64>,
}

impl ContainerStatus {
    pub fn new(name: &str, runtime: Runtime) -> Self {
        ContainerStatus {
            name: name.to_string(),
            runtime,
            pid: None,
            state: State::Waiting {
                reason: "ContainerCreating".into(),
                message: String::new(),
            },
            last_state: None,
            restart_count: 0,
            crashes: 0,
            last_restart: None,
            restart_at_ms: None,
        }
    }

    pub fn running(&self) -> bool {
        matches!(self.state, State::Running { .. })
    }

    /// Waiting for a restart that is due at or before `now_ms`.
    pub fn restart_due(&self, now_ms: u64) -> bool {
        self.restart_at_ms.is_some_and(|t| t <= now_ms)
    }
}

/// How a container's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit<'a> {
    pub code: i32,
    /// Overrides `Completed`/`Error` (e.g. `StartError`).
    pub reason: Option<&'a str>,
    pub message: &'a str,
}

impl Exit<'_> {
    /// A process that exited with `code`.
    pub fn code(code: i32) -> Exit<'static> {
        Exit {
            code,
            reason: None,
            message: "",
        }
    }
}

/// Record that the container's process ended, and decide what comes next under
/// `policy`: terminated for good, restarted at once, or `CrashLoopBackOff` until the
/// back-off delay has passed.
pub fn container_exited(
    c: &mut ContainerStatus,
    exit: Exit<'_>,
    policy: RestartPolicy,
    backoff: &Backoff,
    pod: &str,
    now_ms: u64,
) {
    let Exit {
        code: exit_code,
        reason,
        message,
    } = exit;
    let now = now_ms / 1000;
    let started_at = match c.state {
        State::Running { started_at } => Some(started_at),
        _ => None,
    };
    let ran_long =
        started_at.is_some_and(|s| now.saturating_sub(s) >= backoff.reset_after().as_secs());
    if ran_long {
        c.crashes = 0;
    }
    let reason = reason
        .map(str::to_string)
        .unwrap_or_else(|| if exit_code == 0 { "Completed" } else { "Error" }.to_string());
    let terminated = State::Terminated {
        exit_code,
        reason,
        message: message.to_string(),
        started_at,
        finished_at: now,
    };
    c.pid = None;
    if !policy.restarts(exit_code) {
        c.state = terminated;
        c.restart_at_ms = None;
        return;
    }
    c.crashes += 1;
    let delay = backoff.delay(c.crashes);
    c.last_state = Some(terminated.clone());
    c.restart_at_ms = Some(now_ms + delay.as_millis() as u64);
    c.state = if delay.is_zero() {
        terminated
    } else {
        State::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: format!(
                "back-off {} restarting failed container={} pod={pod}",
                crate::kubectl::age(delay.as_secs()),
                c.name
            ),
        }
    };
}

/// Record a (re)start of the container's process.
pub fn container_started(c: &mut ContainerStatus, pid: i32, now_ms: u64) {
    let now = now_ms / 1000;
    if c.restart_at_ms.take().is_some() {
        c.restart_count += 1;
        c.last_restart = Some(now);
    }
    c.pid = Some(pid);
    c.state = State::Running { started_at: now };
}

/// Every container has terminated for good: the pod's phase (`Succeeded` when all
/// exited 0, else `Failed`). `None` while any runs or will run again.
pub fn finished_phase(containers: &[ContainerStatus]) -> Option<twill_model::PodPhase> {
    if containers.is_empty() {
        return None;
    }
    let mut all_zero = true;
    for c in containers {
        match &c.state {
            State::Terminated { exit_code, .. } if c.restart_at_ms.is_none() => {
                all_zero &= *exit_code == 0;
            }
            _ => return None,
        }
    }
    Some(if all_zero {
        twill_model::PodPhase::Succeeded
    } else {
        twill_model::PodPhase::Failed
    })
}

/// kubectl's `STATUS` column (`printPod` in kubectl's printers): the phase, replaced
/// by a container's waiting or terminated reason (the last such container wins), and
/// `Terminating` while the pod is being deleted.
pub fn status_text(phase: &str, terminating: bool, containers: &[ContainerStatus]) -> String {
    let mut reason = phase.to_string();
    for c in containers {
        match &c.state {
            State::Waiting { reason: r, .. } if !r.is_empty() => reason = r.clone(),
            State::Terminated {
                reason: r,
                exit_code,
                ..
            } => {
                reason = if r.is_empty() {
                    format!("ExitCode:{exit_code}")
                } else {
                    r.clone()
                };
            }
            _ => {}
        }
    }
    if terminating {
        reason = "Terminating".into();
    }
    reason
}

/// kubectl's `RESTARTS` column: the sum, with the time since the last restart
/// (`3 (12s ago)`).
pub fn restarts_text(containers: &[ContainerStatus], now: u64) -> String {
    let total: u32 = containers.iter().map(|c| c.restart_count).sum();
    match containers.iter().filter_map(|c| c.last_restart).max() {
        Some(t) if total > 0 => format!(
            "{total} ({} ago)",
            crate::kubectl::age(now.saturating_sub(t))
        ),
        _ => total.to_string(),
    }
}

#[cfg(test)]
mod tests;

/// An event about a pod, as `kubectl describe` lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// `Normal` or `Warning`.
    pub kind: String,
    pub reason: String,
    /// `default-scheduler` or `kubelet`.
    pub source: String,
    pub message: String,
    /// Unix seconds of the first and the last time it happened.
    pub first: u64,
    pub last: u64,
    pub count: u32,
}

/// How many events a pod keeps (kubelet's are kept for an hour; a lab pod keeps the
/// latest ones).
const MAX_EVENTS: usize = 30;

/// Record an event; the same reason and message again counts up the last one
/// (`(x4 over 2m)`), as the API's event series do.
pub fn record_event(
    events: &mut Vec<Event>,
    now: u64,
    kind: &str,
    reason: &str,
    source: &str,
    message: String,
) {
    if let Some(e) = events
        .iter_mut()
        .rev()
        .find(|e| e.reason == reason && e.message == message)
    {
        e.count += 1;
        e.last = now;
        return;
    }
    events.push(Event {
        kind: kind.into(),
        reason: reason.into(),
        source: source.into(),
        message,
        first: now,
        last: now,
        count: 1,
    });
    if events.len() > MAX_EVENTS {
        events.remove(0);
    }
}

/// `2026-12-07T19:05:03Z` from unix seconds (UTC; civil-from-days, so no time crate
/// is needed for one format).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}
