//! The node agent's loop: sources feed [`Update`]s into one [`ClusterState`]; when the
//! [`Schedule`] says a sync is due, every part syncs from that state; the outcome goes to
//! the [`Status`] the HTTP server reads.
//!
//! Nothing is synced before the source's first `Synced` (a half-listed cluster would
//! look like deleted services and policies). A failed sync is retried after the retry
//! interval, backing off to the sync period; a change is synced at most once per minimum
//! interval; with nothing changing, every part still syncs once per sync period (the
//! proxy's periodic resync, the policy deny counters, health).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use twill_model::{ClusterState, ObjectEvent, ObjectKey};

use crate::http::HttpServer;
use crate::parts::{Part, PartError, SyncContext};
use crate::schedule::Schedule;
use crate::signals;
use crate::source::Update;
use crate::status::Status;

#[derive(Debug, Clone)]
pub struct Options {
    pub min_sync_period: Duration,
    pub sync_period: Duration,
    /// The first retry after a failed sync (then doubling, up to the sync period).
    pub retry_period: Duration,
    /// Return after the first sync pass (exit status: whether it converged).
    pub once: bool,
    /// Print every event on stdout (`applied KIND NAME`, `deleted KIND NAME`).
    pub dump_events: bool,
    /// Print `synced: …` when the source has listed everything and, with `once`,
    /// `programmed: …` after the pass.
    pub report: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            min_sync_period: Duration::from_secs(1),
            sync_period: Duration::from_secs(30),
            retry_period: Duration::from_secs(1),
            once: false,
            dump_events: false,
            report: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{part}: {source}")]
    Part {
        part: &'static str,
        #[source]
        source: PartError,
    },
    #[error("{0}")]
    Source(String),
    #[error("the first sync did not converge: {0}")]
    NotConverged(String),
}

/// How a run ended (other than by an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// SIGTERM or SIGINT; the data plane was left as it is.
    Stopped,
    /// `once`: the first pass converged; its summary.
    Once(String),
    /// `once` with no parts: the source listed everything.
    Listed,
}

pub struct Runtime {
    pub status: Arc<Status>,
    http: Option<HttpServer>,
    parts: Vec<Part>,
    updates: Receiver<Update>,
    options: Options,
    state: ClusterState,
    generation: u64,
    rejected: BTreeMap<String, BTreeMap<ObjectKey, String>>,
    rejected_policies: BTreeMap<ObjectKey, String>,
    /// When the input behind the pending changes was written, if a source said.
    written: Option<Instant>,
}

impl Runtime {
    pub fn new(
        status: Arc<Status>,
        http: Option<HttpServer>,
        parts: Vec<Part>,
        updates: Receiver<Update>,
        options: Options,
    ) -> Self {
        {
            let mut st = status.lock();
            st.sync_period = options.sync_period;
            for p in &parts {
                st.parts.insert(p.name(), Default::default());
            }
        }
        Runtime {
            status,
            http,
            parts,
            updates,
            options,
            state: ClusterState::default(),
            generation: 0,
            rejected: BTreeMap::new(),
            rejected_policies: BTreeMap::new(),
            written: None,
        }
    }

    /// The state as the sources have given it so far.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// Take one update into the state; `true` when a sync is wanted for it.
    fn take(&mut self, u: Update) -> Result<bool, Error> {
        match u {
            Update::Events(events) => {
                let mut changed = false;
                for e in events {
                    if self.options.dump_events {
                        match &e {
                            ObjectEvent::Applied(o) => println!("applied {} {}", o.kind(), o.key()),
                            ObjectEvent::Deleted(r) => println!("deleted {r}"),
                            ObjectEvent::Synced => {}
                        }
                    }
                    let synced = e == ObjectEvent::Synced && !self.state.synced;
                    changed |= self.state.apply(e);
                    if synced {
                        self.status.lock().source_synced = true;
                        self.status.metrics.synced.set(1);
                        if self.options.report {
                            println!("synced: {}", twill_kube_source::state_summary(&self.state));
                        }
                    }
                }
                Ok(changed)
            }
            Update::Report {
                origin,
                problems,
                rejected_policies,
            } => {
                let mut st = self.status.lock();
                if problems.is_empty() {
                    st.rejected_input.remove(&origin);
                } else {
                    self.status
                        .metrics
                        .rejected_inputs
                        .inc_by(problems.len() as u64);
                    st.rejected_input.insert(origin.clone(), problems);
                }
                drop(st);
                let before = self.rejected.get(&origin).cloned().unwrap_or_default();
                if before == rejected_policies {
                    return Ok(false);
                }
                if rejected_policies.is_empty() {
                    self.rejected.remove(&origin);
                } else {
                    self.rejected.insert(origin, rejected_policies);
                }
                self.rejected_policies = self
                    .rejected
                    .values()
                    .flat_map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())))
                    .collect();
                Ok(true)
            }
            Update::Written(t) => {
                let age = SystemTime::now().duration_since(t).unwrap_or_default();
                let at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
                self.written = Some(self.written.map_or(at, |w| w.min(at)));
                Ok(false)
            }
            Update::Invalid(message) => {
                tracing::warn!("{message}");
                self.status.metrics.rejected_inputs.inc();
                Ok(false)
            }
            Update::SourceError(message) => {
                tracing::warn!("{message}");
                self.status.metrics.source_errors.inc();
                Ok(false)
            }
            Update::Fatal(message) => Err(Error::Source(message)),
        }
    }

    /// Run until stopped (SIGTERM/SIGINT), a fatal error, or with `once` the first pass.
    pub fn run(mut self) -> Result<Ended, Error> {
        let o = self.options.clone();
        let mut schedule = Schedule::new(o.min_sync_period, o.sync_period, o.retry_period);
        let mut changed_at: Option<Instant> = None;
        // Every source has ended (a one-time load): no more input, the parts still sync.
        let mut closed = false;
        loop {
            // Wait for input until the next sync is due; wake at least every 200 ms to
            // notice a stop signal.
            let wait = if self.state.synced {
                schedule.wait(Instant::now())
            } else {
                Duration::from_secs(1)
            }
            .min(Duration::from_millis(200));
            let first = if closed {
                std::thread::sleep(wait);
                None
            } else {
                match self.updates.recv_timeout(wait) {
                    Ok(u) => Some(u),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => {
                        if !self.state.synced {
                            return Err(Error::Source(
                                "every source stopped before listing everything".into(),
                            ));
                        }
                        closed = true;
                        None
                    }
                }
            };
            let mut any = false;
            if let Some(first) = first {
                let mut batch = vec![first];
                batch.extend(self.updates.try_iter());
                for u in batch {
                    any |= self.take(u)?;
                }
            }
            if any {
                self.generation += 1;
                schedule.changed();
                let written = self.written.take();
                changed_at.get_or_insert_with(|| written.unwrap_or_else(Instant::now));
                let mut st = self.status.lock();
                let now = Instant::now();
                for h in st.parts.values_mut() {
                    h.pending_since.get_or_insert(now);
                }
            }
            if signals::stop_requested() {
                tracing::info!("stopping; the data plane is left as it is");
                return Ok(Ended::Stopped);
            }
            if !self.state.synced {
                continue;
            }
            if self.parts.is_empty() && o.once {
                return Ok(Ended::Listed);
            }
            let started = Instant::now();
            if !schedule.is_due(started) {
                continue;
            }
            let (ok, first_error) = self.sync_parts(started, changed_at)?;
            schedule.finished(started, ok);
            self.status.metrics.syncs.inc();
            if ok {
                changed_at = None;
            } else {
                self.status.metrics.sync_failures.inc();
                tracing::warn!(
                    retry_in = ?schedule.backoff().max(o.min_sync_period),
                    "sync failed; retrying"
                );
            }
            if let Some(http) = &self.http {
                http.serve_service_health_ports();
            }
            if o.once {
                if let Some(e) = first_error {
                    // The pod network converges on its own thread: give it time.
                    if self.parts.iter().any(|p| matches!(p, Part::PodNetwork(_)))
                        && e.contains("pod network")
                    {
                        continue;
                    }
                    return Err(Error::NotConverged(e));
                }
                let summary: Vec<String> = self.parts.iter().map(Part::summary).collect();
                let summary = summary.join(", ");
                if o.report {
                    println!("programmed: {summary}");
                }
                return Ok(Ended::Once(summary));
            }
        }
    }

    /// One pass over every part. Returns whether all converged and the first error.
    fn sync_parts(
        &mut self,
        now: Instant,
        changed_at: Option<Instant>,
    ) -> Result<(bool, Option<String>), Error> {
        let ctx = SyncContext {
            state: &self.state,
            generation: self.generation,
            rejected_policies: &self.rejected_policies,
            now,
            changed_at,
        };
        let mut ok = true;
        let mut first_error = None;
        for part in &mut self.parts {
            let name = part.name();
            let result = part.sync(&ctx, &self.status);
            let mut st = self.status.lock();
            let h = st.parts.entry(name).or_default();
            h.last_attempt = Some(now);
            match result {
                Ok(wrote) => {
                    if wrote {
                        tracing::info!(part = name, "{name} sync");
                    }
                    h.last_success = Some(now);
                    h.consecutive_failures = 0;
                    h.last_error = None;
                    h.pending_since = None;
                }
                Err(e) if e.fatal => {
                    return Err(Error::Part {
                        part: name,
                        source: e,
                    });
                }
                Err(e) => {
                    tracing::error!(part = name, error = %e, "sync failed");
                    h.failures_total += 1;
                    h.consecutive_failures += 1;
                    h.pending_since.get_or_insert(now);
                    first_error.get_or_insert_with(|| format!("{name}: {e}"));
                    h.last_error = Some(e.message);
                    ok = false;
                }
            }
        }
        Ok((ok, first_error))
    }
}
