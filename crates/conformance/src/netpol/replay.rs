//! Replaying truth-table scenarios through the real enforcement path in the harness.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use twill_model::Protocol;

use super::corpus::{
    Connection, CorpusFile, Probe, Scenario, World, expand_probes, file_label, verdict_word,
};
use super::harness::{Harness, HarnessError, HarnessOptions, ProbePlan};

/// When policies reach the nodes relative to the pods' network setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyOrder {
    /// Rules are applied, then pod netns, veths and listeners come up.
    BeforePods,
    /// Pods come up, then rules are applied.
    AfterPods,
}

impl PolicyOrder {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyOrder::BeforePods => "policies-before-pods",
            PolicyOrder::AfterPods => "policies-after-pods",
        }
    }
}

/// The kernel run of one scenario.
#[derive(Debug, Default)]
pub struct KernelReport {
    pub passed: usize,
    /// One line per failing probe, then a diff matrix per failing matrix.
    pub failures: Vec<String>,
    pub failed: usize,
    /// Probes the kernel run does not cover (self-probes, SCTP without kernel support).
    pub not_run: usize,
    pub sctp_not_run: usize,
    pub elapsed: Duration,
}

/// Every resolved connection of every step, for planning listeners and addresses.
fn plan(label: &str, spec_world: &World, sc: &Scenario) -> ProbePlan {
    let mut plan = ProbePlan::default();
    let mut world = spec_world.clone();
    plan.add_pods(&world);
    for (si, step) in sc.steps.iter().enumerate() {
        for (ai, a) in step.actions.iter().enumerate() {
            let _ = world.apply(label, &sc.name, &format!("steps[{si}].actions[{ai}]"), a);
        }
        plan.add_pods(&world);
        for p in expand_probes(label, &sc.name, &step.probes).unwrap_or_default() {
            if let Ok(c) = world.resolve(&p) {
                plan.add(&world, &c);
            }
        }
    }
    plan
}

/// Run one scenario in a fresh harness.
pub fn run_scenario(
    path: &Path,
    file: &CorpusFile,
    sc: &Scenario,
    order: PolicyOrder,
    opts: &HarnessOptions,
) -> Result<KernelReport, HarnessError> {
    let start = Instant::now();
    let label = file_label(path);
    let spec = sc.cluster.as_ref().unwrap_or(&file.cluster);
    let mut world = World::new(&label, &sc.name, spec, &sc.policies)
        .map_err(|e| HarnessError::Setup(e.to_string()))?;
    let plan = plan(&label, &world, sc);
    let mut h = Harness::new(&world, &plan, opts.clone())?;
    let mut report = KernelReport::default();
    for (si, step) in sc.steps.iter().enumerate() {
        for (ai, a) in step.actions.iter().enumerate() {
            world
                .apply(&label, &sc.name, &format!("steps[{si}].actions[{ai}]"), a)
                .map_err(|e| HarnessError::Setup(e.to_string()))?;
        }
        match order {
            PolicyOrder::BeforePods => {
                h.apply(&world)?;
                h.sync_pods(&world)?;
            }
            PolicyOrder::AfterPods => {
                h.sync_pods(&world)?;
                h.apply(&world)?;
            }
        }
        let probes = expand_probes(&label, &sc.name, &step.probes)
            .map_err(|e| HarnessError::Setup(e.to_string()))?;
        let mut conns: Vec<Connection> = Vec::new();
        let mut kept: Vec<&Probe> = Vec::new();
        for p in &probes {
            match world.resolve(p) {
                Ok(c) => {
                    conns.push(c);
                    kept.push(p);
                }
                Err(e) => {
                    report.failed += 1;
                    report.failures.push(format!(
                        "FAIL {label}: {} step {si} [{}]: {e}",
                        sc.name,
                        order.as_str()
                    ));
                }
            }
        }
        let got = h.probe_all(&world, &conns);
        let mut bad_matrices: BTreeMap<usize, ()> = BTreeMap::new();
        for ((p, c), g) in kept.iter().zip(&conns).zip(&got) {
            match g {
                None => {
                    report.not_run += 1;
                    if c.protocol == Protocol::Sctp {
                        report.sctp_not_run += 1;
                    }
                }
                Some(g) if *g == p.expected => report.passed += 1,
                Some(g) => {
                    report.failed += 1;
                    report.failures.push(format!(
                        "FAIL {label}: {} step {si} [{}]: {} -> {} {}/{}: expected {}, kernel {}",
                        sc.name,
                        order.as_str(),
                        p.from,
                        p.to,
                        p.port,
                        p.protocol,
                        verdict_word(p.expected),
                        verdict_word(*g)
                    ));
                    if let Some(m) = p.matrix {
                        bad_matrices.insert(m, ());
                    }
                }
            }
        }
        for m in bad_matrices.keys() {
            let cells: Vec<(&Probe, Option<bool>)> = kept
                .iter()
                .zip(&got)
                .filter(|(p, _)| p.matrix == Some(*m))
                .map(|(p, g)| (*p, *g))
                .collect();
            report.failures.push(diff_matrix(
                &format!("{label}: {} step {si} [{}]", sc.name, order.as_str()),
                &cells,
            ));
        }
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Upstream's reachability-table style: `.` allowed, `X` blocked, `-` not probed; a
/// wrong cell shows expected then observed (`.X`: should pass, was blocked).
pub fn diff_matrix(title: &str, cells: &[(&Probe, Option<bool>)]) -> String {
    let mut rows: Vec<&str> = Vec::new();
    let mut cols: Vec<&str> = Vec::new();
    for (p, _) in cells {
        if !rows.contains(&p.from.as_str()) {
            rows.push(&p.from);
        }
        if !cols.contains(&p.to.as_str()) {
            cols.push(&p.to);
        }
    }
    let mark = |b: bool| if b { '.' } else { 'X' };
    let (port, proto) = cells
        .first()
        .map(|(p, _)| (p.port.to_string(), p.protocol.as_str()))
        .unwrap_or_default();
    let w = rows
        .iter()
        .chain(&cols)
        .map(|s| s.len())
        .max()
        .unwrap_or(1)
        .max(3);
    let mut out =
        format!("  diff {title} port {port}/{proto} (expected+observed where they differ)\n");
    let _ = write!(out, "  {:w$}", "");
    for c in &cols {
        let _ = write!(out, " {c:>w$}");
    }
    out.push('\n');
    for r in &rows {
        let _ = write!(out, "  {r:w$}");
        for c in &cols {
            let cell = cells.iter().find(|(p, _)| p.from == *r && p.to == *c);
            let s = match cell {
                None => " ".to_string(),
                Some((_, None)) => "-".to_string(),
                Some((p, Some(g))) if *g == p.expected => mark(*g).to_string(),
                Some((p, Some(g))) => format!("{}{}", mark(p.expected), mark(*g)),
            };
            let _ = write!(out, " {s:>w$}");
        }
        out.push('\n');
    }
    out
}
