//! The lab's control plane and kubelet in one loop.
//!
//! Each tick: read what the user applied (`applied.json`), carry over what earlier
//! ticks decided (cluster IPs, node ports, pod names, placements), run the standalone
//! control loop, start pods that are scheduled and not running, stop pods that are no
//! longer wanted, probe readiness, and write the cluster as the API server would hold
//! it to `cluster.yaml`, which every node agent watches. Pod status (address, Ready)
//! flows back into the next reconcile, so EndpointSlices follow pods as they start,
//! become ready and go away.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::unix::process::ExitStatusExt;
use std::process::Child;
use std::time::Duration;

use twill_control::Settings;
use twill_model::{ClusterState, Node, Object, ObjectEvent, ObjectKey, PodPhase};

use crate::lifecycle::{self, Backoff, Exit, Runtime, State};
use crate::pod::{self, RunningPod};
use crate::prober::Prober;
use crate::spec::{LabSpec, write_atomic};
use crate::{LabError, dns, status};

/// How often a Ready pod's declared ports are read again (a pod not yet Ready is read
/// every tick).
const READY_RECHECK_MS: u64 = 5_000;

pub struct Controller {
    spec: LabSpec,
    settings: Settings,
    watcher: twill_manifest::files::Watcher,
    /// The last reconciled state (what the API server holds).
    state: ClusterState,
    running: BTreeMap<ObjectKey, RunningPod>,
    /// Container processes this controller started, by pid (a restarted controller
    /// finds earlier ones only as pids in status.json).
    children: BTreeMap<i32, Child>,
    backoff: Backoff,
    prober: Prober,
    /// When each pod's declared ports were last read (ms).
    port_checked: BTreeMap<ObjectKey, u64>,
    /// The last full pass started every placed pod: a tick with no applied change and
    /// no runtime movement can skip the control loop.
    settled: bool,
    last_written: String,
    /// Underlay service addresses and the node holding each.
    vips: BTreeMap<std::net::Ipv4Addr, String>,
    pub problems: Vec<String>,
}

/// The lab's nodes as Node objects.
pub fn node_objects(spec: &LabSpec) -> Vec<Node> {
    spec.nodes
        .iter()
        .map(|n| Node {
            name: n.name.clone(),
            labels: [
                ("kubernetes.io/hostname".to_string(), n.name.clone()),
                ("kubernetes.io/os".to_string(), "linux".to_string()),
            ]
            .into_iter()
            .chain(
                n.zone
                    .clone()
                    .map(|z| ("topology.kubernetes.io/zone".to_string(), z)),
            )
            .collect(),
            internal_ips: vec![IpAddr::V4(n.ip)],
            pod_cidrs: vec![ipnet::IpNet::V4(n.pod_cidr)],
            unschedulable: false,
        })
        .collect()
}

impl Controller {
    pub fn new(spec: LabSpec) -> Self {
        let settings = Settings {
            service_cidrs: vec![spec.service_cidr_net()],
            pod_cidr: ipnet::IpNet::V4(spec.pod_cidr),
            load_balancer_pool: vec![ipnet::IpNet::V4(spec.lb_pool)],
            ..Settings::default()
        };
        let applied = spec.dir.join("applied.json").display().to_string();
        let system = spec.dir.join("system.yaml").display().to_string();
        let running = status::load(&spec).unwrap_or_default().pods;
        Self {
            watcher: twill_manifest::files::Watcher::new(&[system, applied]),
            settings,
            state: ClusterState::default(),
            running: running
                .into_iter()
                .map(|p| (ObjectKey::new(p.namespace.clone(), p.name.clone()), p))
                .collect(),
            children: BTreeMap::new(),
            backoff: Backoff::with_base(Duration::from_millis(spec.restart_backoff_ms)),
            prober: Prober::default(),
            port_checked: BTreeMap::new(),
            settled: false,
            last_written: String::new(),
            vips: BTreeMap::new(),
            spec,
            problems: Vec::new(),
        }
    }

    /// One pass; returns whether anything changed.
    pub fn tick(&mut self) -> Result<bool, LabError> {
        let now_ms = unix_ms();
        let (events, problems) = self.watcher.poll();
        if !problems.is_empty() {
            self.problems = problems.iter().map(ToString::to_string).collect();
        }
        // Nothing applied and every placed pod started: only the runtime can move. When
        // it does not, the control loop would compute what it computed last time, so
        // the tick ends here (an idle lab then costs a few syscalls per pod).
        if events.is_empty() && self.settled {
            let state = std::mem::take(&mut self.state);
            let moved = self.step_runtime(&state, now_ms);
            self.state = state;
            if !moved {
                return Ok(false);
            }
        }
        let user = self.watcher.state();
        // Start from what the user wants, then carry over earlier decisions.
        let mut input = user.clone();
        for n in node_objects(&self.spec) {
            input.apply(ObjectEvent::Applied(Object::Node(n)));
        }
        for (key, svc) in input.services.iter_mut() {
            if let Some(prev) = self.state.services.get(key) {
                if svc.cluster_ips.is_empty() && !svc.headless {
                    svc.cluster_ips = prev.cluster_ips.clone();
                }
                for p in svc.ports.iter_mut() {
                    if p.node_port.is_none() {
                        p.node_port = prev
                            .ports
                            .iter()
                            .find(|q| q.port == p.port && q.protocol == p.protocol)
                            .and_then(|q| q.node_port);
                    }
                }
                if svc.load_balancer_ingress.is_empty() {
                    svc.load_balancer_ingress = prev.load_balancer_ingress.clone();
                }
                if svc.health_check_node_port.is_none() {
                    svc.health_check_node_port = prev.health_check_node_port;
                }
            }
        }
        for (key, pod) in &self.state.pods {
            if pod.owner.is_some() && !input.pods.contains_key(key) {
                input.pods.insert(key.clone(), pod.clone());
            }
        }
        // A pod placed once stays on its node (the scheduler binds it; a later tick must
        // not schedule it again, or the table would name another node than the one it
        // runs on).
        for (key, pod) in input.pods.iter_mut() {
            if pod.spec.node_name.is_none()
                && let Some(prev) = self.state.pods.get(key)
            {
                pod.spec.node_name = prev.spec.node_name.clone();
            }
        }
        input.apply(ObjectEvent::Synced);
        // Runtime status feeds the controllers.
        for (key, r) in &self.running {
            if let Some(p) = input.pods.get_mut(key) {
                apply_status(p, r);
            }
        }
        let mut out = twill_control::reconcile(&input, &self.settings);
        if !out.problems.is_empty() {
            self.problems
                .extend(out.problems.iter().map(ToString::to_string));
            self.problems.sort();
            self.problems.dedup();
        }
        let mut changed = !events.is_empty();

        // Pods that are gone terminate as kubelet does it: SIGTERM to every container,
        // the pod shown Terminating (its endpoints `terminating`) until its processes
        // have ended or `terminationGracePeriodSeconds` (30) has passed, then SIGKILL
        // and the sandbox removed.
        let gone: Vec<ObjectKey> = self
            .running
            .keys()
            .filter(|k| !out.state.pods.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            let Some(prev) = self.state.pods.get(&key).cloned() else {
                changed |= self.remove_pod(&key);
                continue;
            };
            let grace_ms = prev
                .spec
                .termination_grace_period_seconds
                .unwrap_or(30)
                .max(0) as u64
                * 1000;
            let r = self.running.get_mut(&key).expect("listed above");
            let since = match r.terminating_since_ms {
                Some(t) => t,
                None => {
                    for c in &r.containers {
                        if let Some(pid) = c.pid {
                            // SAFETY: kill(2) on the container's own process group.
                            unsafe {
                                libc::kill(-pid, libc::SIGTERM);
                                libc::kill(pid, libc::SIGTERM);
                            }
                            let msg = format!("Stopping container {}", c.name);
                            lifecycle::record_event(
                                &mut r.events,
                                now_ms / 1000,
                                "Normal",
                                "Killing",
                                "kubelet",
                                msg,
                            );
                        }
                    }
                    r.terminating_since_ms = Some(now_ms);
                    changed = true;
                    now_ms
                }
            };
            let ended = r
                .pids
                .iter()
                .all(|p| !crate::agents::pid_running(*p as u32));
            if ended || now_ms >= since + grace_ms {
                changed |= self.remove_pod(&key);
            } else {
                let mut shown = prev;
                shown.terminating = true;
                out.state.pods.insert(key, shown);
            }
        }
        // Start pods that are placed and not running.
        let to_start: Vec<twill_model::Pod> = out
            .state
            .pods
            .values()
            .filter(|p| !self.running.contains_key(&p.key) && p.spec.node_name.is_some())
            .cloned()
            .collect();
        for p in to_start {
            let Some(node) = p
                .spec
                .node_name
                .as_ref()
                .and_then(|n| self.spec.node(n))
                .cloned()
            else {
                continue;
            };
            let resolv = dns::resolv_conf(&self.spec, &p);
            let conflist = pod::node_conflist(&self.spec, &node);
            match pod::start(&self.spec, &node, &p, &resolv, &conflist, now_ms / 1000) {
                Ok(mut r) => {
                    let now = now_ms / 1000;
                    let msg = format!("Successfully assigned {} to {}", p.key, node.name);
                    lifecycle::record_event(
                        &mut r.events,
                        now,
                        "Normal",
                        "Scheduled",
                        "default-scheduler",
                        msg,
                    );
                    if let Some(ip) = r.ip.filter(|_| !r.host_network) {
                        let msg = format!("Add eth0 [{ip}] from the bridge plugin (CNI ADD)");
                        let ev = &mut r.events;
                        lifecycle::record_event(
                            ev,
                            now,
                            "Normal",
                            "AddedInterface",
                            "kubelet",
                            msg,
                        );
                    }
                    self.running.insert(p.key.clone(), r);
                    changed = true;
                }
                Err(e) => {
                    let msg = format!("Pod {}: could not start: {e}", p.key);
                    tracing::warn!("{msg}");
                    if !self.problems.contains(&msg) {
                        self.problems.push(msg);
                    }
                }
            }
        }
        self.settled = out
            .state
            .pods
            .values()
            .filter(|p| p.spec.node_name.is_some())
            .all(|p| self.running.contains_key(&p.key))
            && self
                .running
                .values()
                .all(|r| r.terminating_since_ms.is_none());
        // Containers: notice exits, start what is due (kubelet's restart policy and
        // back-off), then readiness.
        changed |= self.step_runtime(&out.state, unix_ms());

        // Publish: status into pods, then the slices that follow from it.
        for (key, r) in &self.running {
            if let Some(p) = out.state.pods.get_mut(key) {
                apply_status(p, r);
            }
        }
        let out2 = twill_control::reconcile(&out.state, &self.settings);
        out.state = out2.state;
        self.state = out.state;
        self.sync_vips();
        let text = twill_manifest::render_yaml(&self.state);
        if text != self.last_written {
            write_atomic(&self.spec.cluster_file(), text.as_bytes())?;
            self.last_written = text;
            changed = true;
        }
        if changed {
            status::save(
                &self.spec,
                &status::Status {
                    pods: self.running.values().cloned().collect(),
                    problems: self.problems.clone(),
                },
            )?;
        }
        Ok(changed)
    }

    /// Kill what is left of a pod and remove its sandbox (CNI DEL, namespace, files).
    fn remove_pod(&mut self, key: &ObjectKey) -> bool {
        self.prober.forget(key);
        self.port_checked.remove(key);
        let Some(r) = self.running.remove(key) else {
            return false;
        };
        for pid in &r.pids {
            self.children.remove(pid);
        }
        if let Some(node) = self.spec.node(&r.node)
            && let Err(e) = pod::stop(&self.spec, node, &r)
        {
            tracing::warn!(pod = %key, error = %e, "stopping pod");
        }
        true
    }

    /// The kubelet half of a tick for every running pod of `state`: container exits
    /// and restarts, probes, readiness. Returns whether anything moved. Repeating it
    /// within one tick is harmless (what was started has a pid, what was recorded is
    /// not recorded again).
    fn step_runtime(&mut self, state: &ClusterState, now_ms: u64) -> bool {
        let mut changed = false;
        for (key, r) in self.running.iter_mut() {
            let Some(p) = state.pods.get(key) else {
                continue;
            };
            changed |= step_containers(&self.spec, p, r, &mut self.children, &self.backoff, now_ms);
            let verdicts = self.prober.step(p, r, now_ms);
            changed |= verdicts.changed;
            for (i, why) in verdicts.kill {
                if let Some(pid) = r.containers[i].pid {
                    // SAFETY: kill(2) on the container's own process group.
                    unsafe {
                        libc::kill(-pid, libc::SIGKILL);
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
                let now = now_ms / 1000;
                lifecycle::record_event(&mut r.events, now, "Normal", "Killing", "kubelet", why);
            }
            let prober = &self.prober;
            // Reading a pod's socket tables is the loop's main cost: a Ready pod whose
            // containers all still run is re-read every READY_RECHECK_MS, a pod on its
            // way up every tick.
            let last = self.port_checked.get(key).copied().unwrap_or(0);
            let all_running = r.containers.iter().all(lifecycle::ContainerStatus::running);
            let probes_ok =
                (0..p.spec.containers.len()).all(|i| prober.ready(key, i) != Some(false));
            let ready = if r.ready && all_running && probes_ok && now_ms < last + READY_RECHECK_MS {
                true
            } else {
                self.port_checked.insert(key.clone(), now_ms);
                pod::probe_ready(r, p, |i| prober.ready(key, i))
            };
            if ready != r.ready {
                r.ready = ready;
                changed = true;
            }
        }
        changed
    }

    /// Run until `stop` returns true.
    pub fn run(&mut self, interval: Duration, stop: impl Fn() -> bool) -> Result<(), LabError> {
        while !stop() {
            if let Err(e) = self.tick() {
                tracing::error!(error = %e, "lab controller tick failed");
            }
            std::thread::sleep(interval);
        }
        Ok(())
    }
}

impl Controller {
    /// Move underlay service addresses to the nodes that should hold them.
    fn sync_vips(&mut self) {
        let nodes: Vec<String> = self.spec.nodes.iter().map(|n| n.name.clone()).collect();
        let want = crate::vip::plan(&self.state, &nodes, self.spec.underlay);
        for (ip, node) in &self.vips {
            if want.get(ip) != Some(node)
                && let Some(n) = self.spec.node(node)
            {
                let _ = crate::netns::batch(&n.netns, &format!("addr del {ip}/32 dev eth0\n"));
            }
        }
        for (ip, node) in &want {
            if self.vips.get(ip) != Some(node)
                && let Some(n) = self.spec.node(node)
            {
                // `replace` is idempotent (a restarted controller finds it there).
                if let Err(e) =
                    crate::netns::batch(&n.netns, &format!("addr replace {ip}/32 dev eth0\n"))
                {
                    tracing::warn!(%ip, node = %node, error = %e, "announcing service address");
                }
            }
        }
        self.vips = want;
    }
}

fn apply_status(p: &mut twill_model::Pod, r: &RunningPod) {
    if r.terminating_since_ms.is_some() {
        p.terminating = true;
    }
    p.pod_ips = r.ip.into_iter().collect();
    p.phase = lifecycle::finished_phase(&r.containers).unwrap_or(PodPhase::Running);
    p.ready = r.ready && p.phase == PodPhase::Running;
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One kubelet pass over a pod's containers: record the ones whose process ended,
/// then start the ones that are new or whose back-off has passed, with the events
/// kubelet would emit. Returns whether anything changed.
fn step_containers(
    spec: &LabSpec,
    pod: &twill_model::Pod,
    r: &mut RunningPod,
    children: &mut BTreeMap<i32, Child>,
    backoff: &Backoff,
    now_ms: u64,
) -> bool {
    // A terminating pod's containers are not started again, whatever the policy.
    let policy = if r.terminating_since_ms.is_some() {
        twill_model::RestartPolicy::Never
    } else {
        pod.spec.restart_policy
    };
    let now = now_ms / 1000;
    let mut changed = false;
    for i in 0..r.containers.len().min(pod.spec.containers.len()) {
        if let Some(pid) = r.containers[i].pid {
            let ended = match children.get_mut(&pid).map(Child::try_wait) {
                Some(Ok(None)) => None,
                Some(Ok(Some(status))) => {
                    children.remove(&pid);
                    // A signal shows as 128 + its number, as container runtimes report.
                    let code = status
                        .code()
                        .or_else(|| status.signal().map(|s| 128 + s))
                        .unwrap_or(-1);
                    Some((code, None, String::new()))
                }
                // Not our child (the controller restarted): only its absence is known.
                _ if !crate::agents::pid_running(pid as u32) => Some((
                    137,
                    Some("Error"),
                    "the process ended while no controller watched it".to_string(),
                )),
                _ => None,
            };
            if let Some((code, reason, message)) = ended {
                let exit = Exit {
                    code,
                    reason,
                    message: &message,
                };
                exited(r, i, exit, policy, backoff, &pod.key, now_ms);
                changed = true;
            }
        }
        if r.terminating_since_ms.is_some() {
            continue;
        }
        let c = &r.containers[i];
        let first_start = c.pid.is_none()
            && matches!(&c.state, State::Waiting { reason, .. } if reason == "ContainerCreating");
        if !(first_start || (c.pid.is_none() && c.restart_due(now_ms))) {
            continue;
        }
        changed = true;
        match pod::start_container(spec, pod, r, i) {
            Ok(child) => {
                let pid = child.id() as i32;
                children.insert(pid, child);
                let c = &mut r.containers[i];
                lifecycle::container_started(c, pid, now_ms);
                let what = match &c.runtime {
                    Runtime::Command { argv, .. } => format!("command {:?}", argv.join(" ")),
                    Runtime::Responder { .. } => "the lab's responder".to_string(),
                };
                let msg = format!("Started container {} ({what})", c.name);
                lifecycle::record_event(&mut r.events, now, "Normal", "Started", "kubelet", msg);
            }
            Err(message) => {
                tracing::warn!(pod = %pod.key, container = %r.containers[i].name, "{message}");
                // A start that failed at once still counts as a restart attempt.
                let c = &mut r.containers[i];
                if c.restart_at_ms.take().is_some() {
                    c.restart_count += 1;
                    c.last_restart = Some(now);
                }
                let msg = format!("Error: {message}");
                lifecycle::record_event(&mut r.events, now, "Warning", "Failed", "kubelet", msg);
                let exit = Exit {
                    code: 128,
                    reason: Some("StartError"),
                    message: &message,
                };
                exited(r, i, exit, policy, backoff, &pod.key, now_ms);
            }
        }
    }
    r.refresh_pids();
    changed
}

/// Container `i` ended: its new state under the restart policy, and a `BackOff`
/// event when it now waits out a back-off.
fn exited(
    r: &mut RunningPod,
    i: usize,
    exit: Exit<'_>,
    policy: twill_model::RestartPolicy,
    backoff: &Backoff,
    pod: &ObjectKey,
    now_ms: u64,
) {
    let c = &mut r.containers[i];
    lifecycle::container_exited(c, exit, policy, backoff, &pod.name, now_ms);
    if matches!(&c.state, State::Waiting { reason, .. } if reason == "CrashLoopBackOff") {
        let msg = format!(
            "Back-off restarting failed container {} in pod {pod}",
            c.name
        );
        lifecycle::record_event(
            &mut r.events,
            now_ms / 1000,
            "Warning",
            "BackOff",
            "kubelet",
            msg,
        );
    }
}
