//! Where cluster state comes from: manifest files and folders (followed with inotify
//! through `notify`) or the Kubernetes API (`twill_kube_source`). Both send the same
//! [`Update`]s down one channel to the runtime, which owns the one `ClusterState`.
//!
//! Every source keeps its last good state. For manifests, as `kubectl apply -f` treats a
//! file:
//!
//! - a file that reads and parses without errors replaces what it gave before (objects it
//!   no longer holds are deleted);
//! - a file with errors gives its valid objects (one bad object does not stop the
//!   others) and deletes nothing: an invalid object keeps its last good version, and an
//!   unreadable, binary or half-written file keeps everything it gave, and so does one
//!   that is empty (zero bytes or blanks: a save in progress; an empty cluster is written
//!   as `---`). Its problems (file, line, object, field) are reported. One typo or a
//!   non-atomic save never takes Services off a node;
//! - a file named on the command line that disappears keeps what it gave (editors and
//!   `mv` replace files); a file removed from a followed folder takes its objects with it,
//!   as a static pod's file does for kubelet;
//! - the first `Synced` is sent once every named file exists and was read, so a state
//!   file not written yet does not look like an empty cluster.
//!
//! An object defined in two files is the last one read; deleting it from either deletes it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, SystemTime};

use notify::{RecursiveMode, Watcher as _};
use twill_manifest::Severity;
use twill_model::{Kind, ObjectEvent, ObjectKey, ObjectRef};

/// What a source tells the runtime.
#[derive(Debug)]
pub enum Update {
    /// Apply these to the state (the first `Synced` ends the initial listing).
    Events(Vec<ObjectEvent>),
    /// The current problems of one input origin (a file, `api`), replacing what that
    /// origin reported before (empty: clean again). NetworkPolicies that could not be
    /// read are listed apart: the policy part fails closed for them.
    Report {
        origin: String,
        problems: Vec<String>,
        rejected_policies: BTreeMap<ObjectKey, String>,
    },
    /// When the input behind the next events was written (a manifest's mtime): network
    /// programming latency counts from there, as kube-proxy's counts from an
    /// EndpointSlice's last-change-trigger-time.
    Written(SystemTime),
    /// One object the API sent was invalid and left out (logged, counted).
    Invalid(String),
    /// A source error the source retries after by itself.
    SourceError(String),
    /// The source cannot go on.
    Fatal(String),
}

#[derive(Debug, Default)]
struct FileRecord {
    /// (mtime, length) when last read.
    stamp: Option<(Option<SystemTime>, u64)>,
    /// What this file gave to the state.
    accepted: BTreeSet<ObjectRef>,
    /// Error-free documents of the last read, by text hash, with the objects they gave.
    clean_docs: HashMap<u64, Vec<ObjectRef>>,
    /// Problems reported for this file last.
    reported: bool,
}

/// Manifest files and folders, read on demand ([`ManifestSource::scan`]).
#[derive(Debug)]
pub struct ManifestSource {
    paths: Vec<PathBuf>,
    files: BTreeMap<PathBuf, FileRecord>,
    synced: bool,
    /// `-`: standard input, read once at the first scan.
    stdin_read: bool,
}

fn stamp(p: &Path) -> Option<(Option<SystemTime>, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok(), m.len()))
}

/// A parse of one file: what changed documents gave, and the objects of the documents
/// that did not change (already in the state).
struct Loaded {
    result: twill_manifest::LoadResult,
    unchanged: BTreeSet<ObjectRef>,
}

fn text_hash(text: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

fn rejected_policy(p: &twill_manifest::Problem) -> Option<ObjectKey> {
    if p.severity != Severity::Error {
        return None;
    }
    let rest = p.object.as_deref()?.strip_prefix("NetworkPolicy ")?;
    let (ns, name) = rest.split_once('/')?;
    Some(ObjectKey::new(ns, name))
}

impl ManifestSource {
    pub fn new<S: AsRef<str>>(paths: &[S]) -> Self {
        ManifestSource {
            paths: paths.iter().map(|p| PathBuf::from(p.as_ref())).collect(),
            files: BTreeMap::new(),
            synced: false,
            stdin_read: false,
        }
    }

    /// For one-shot runs: the named paths that do not exist (a follower waits for them).
    pub fn missing(&self) -> Vec<String> {
        self.paths
            .iter()
            .filter(|p| p.as_os_str() != "-" && !p.exists())
            .map(|p| p.display().to_string())
            .collect()
    }

    /// The paths this source follows (files and folders as given).
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Read what changed since the last scan (everything, the first time).
    pub fn scan(&mut self) -> Vec<Update> {
        let mut events = Vec::new();
        let mut reports = Vec::new();
        let mut written: Option<SystemTime> = None;
        // The files now: named ones (whether or not they exist) and folders' contents.
        let mut now: BTreeMap<PathBuf, bool> = BTreeMap::new();
        for p in &self.paths {
            if p.as_os_str() == "-" {
                if !self.stdin_read {
                    self.stdin_read = true;
                    let loaded = twill_manifest::files::load_paths(&["-"]);
                    for p in &loaded.problems {
                        tracing::warn!("{p}");
                    }
                    events.extend(loaded.into_objects().into_iter().map(ObjectEvent::Applied));
                }
                continue;
            }
            if p.is_dir() {
                // A folder's problems (a symlink loop, an unreadable subfolder) are
                // logged; its readable files still load.
                let (found, problems) = twill_manifest::files::manifest_files(p);
                for problem in problems {
                    tracing::warn!("{problem}");
                }
                for f in found {
                    now.entry(f).or_insert(false);
                }
            } else {
                now.insert(p.clone(), true);
            }
        }
        let mut all_named_read = true;
        for (path, named) in &now {
            let rec = self.files.entry(path.clone()).or_default();
            let st = stamp(path);
            if st.is_none() {
                if *named {
                    all_named_read &= rec.stamp.is_some();
                    if rec.stamp.is_some() || !rec.reported {
                        let what = if !rec.accepted.is_empty() {
                            "keeping what it gave before"
                        } else {
                            "nothing loaded from it yet"
                        };
                        tracing::warn!(file = %path.display(), "manifest file is missing; {what}");
                        reports.push(Update::Report {
                            origin: path.display().to_string(),
                            problems: vec![format!("{}: file is missing; {what}", path.display())],
                            rejected_policies: BTreeMap::new(),
                        });
                        rec.reported = true;
                    }
                    rec.stamp = None;
                }
                continue;
            }
            if rec.stamp == st {
                continue;
            }
            rec.stamp = st;
            if let Some((Some(mtime), _)) = st {
                written = Some(written.map_or(mtime, |w: SystemTime| w.min(mtime)));
            }
            let name = path.display().to_string();
            let text = std::fs::File::open(path)
                .map_err(|e| format!("{name}: {e}"))
                .and_then(|f| {
                    twill_manifest::files::read_capped(&name, f).map_err(|p| p.to_string())
                });
            // Zero bytes (or only blanks) is what a non-atomic save or `> file` leaves
            // for a moment: not an empty cluster. That is written as `---`, a comment or
            // an empty List, which parses as a valid file with no objects.
            let text = text.and_then(|t| {
                if t.trim().is_empty() && !rec.accepted.is_empty() {
                    Err(format!(
                        "{name}: the file is empty (a save in progress?); an empty cluster is written as `---`"
                    ))
                } else {
                    Ok(t)
                }
            });
            let text = match text {
                Ok(t) => t,
                Err(problem) => {
                    tracing::warn!(file = %name, "{problem}; keeping what it gave before");
                    reports.push(Update::Report {
                        origin: name,
                        problems: vec![problem],
                        rejected_policies: BTreeMap::new(),
                    });
                    rec.reported = true;
                    continue;
                }
            };
            // Only the documents that changed are parsed: a one-endpoint edit of a
            // 10k-Service file costs one document, not the file (documents are known by
            // a 64-bit hash of their text; only error-free ones are remembered).
            let loaded = match twill_manifest::yaml_document_texts(&name, &text) {
                Some(docs) => {
                    let mut out = twill_manifest::LoadResult::default();
                    let mut kept = HashMap::with_capacity(docs.len());
                    let mut unchanged = BTreeSet::new();
                    for d in &docs {
                        let h = text_hash(&d.text);
                        if let Some(refs) = rec.clean_docs.get(&h) {
                            unchanged.extend(refs.iter().cloned());
                            kept.insert(h, refs.clone());
                            continue;
                        }
                        let l = twill_manifest::parse_document(&name, d);
                        if !l.has_errors() {
                            kept.insert(
                                h,
                                l.objects.iter().map(|o| o.object.object_ref()).collect(),
                            );
                        }
                        out.extend(l);
                    }
                    rec.clean_docs = kept;
                    Loaded {
                        result: out,
                        unchanged,
                    }
                }
                None => {
                    rec.clean_docs.clear();
                    Loaded {
                        result: twill_manifest::parse_str(&name, &text),
                        unchanged: BTreeSet::new(),
                    }
                }
            };
            let Loaded {
                result: loaded,
                unchanged,
            } = loaded;
            let has_errors = loaded.has_errors();
            let mut problems = Vec::new();
            let mut rejected = BTreeMap::new();
            for p in &loaded.problems {
                tracing::warn!("{p}");
                if p.severity == Severity::Error {
                    problems.push(p.to_string());
                }
                if let Some(key) = rejected_policy(p) {
                    rejected.insert(key, p.to_string());
                }
            }
            let objects = loaded.into_objects();
            let mut refs: BTreeSet<ObjectRef> = objects.iter().map(|o| o.object_ref()).collect();
            refs.extend(unchanged);
            if has_errors {
                // Valid objects apply; nothing is deleted on the word of an invalid file.
                tracing::warn!(file = %name, errors = problems.len(), "invalid manifest: its valid objects apply, nothing it held before is deleted");
                rec.accepted.extend(refs);
            } else {
                for gone in rec.accepted.difference(&refs) {
                    events.push(ObjectEvent::Deleted(gone.clone()));
                }
                rec.accepted = refs;
            }
            events.extend(objects.into_iter().map(ObjectEvent::Applied));
            if !problems.is_empty() || rec.reported {
                rec.reported = !problems.is_empty();
                reports.push(Update::Report {
                    origin: name,
                    problems,
                    rejected_policies: rejected,
                });
            }
        }
        // Files gone from a followed folder take their objects with them.
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !now.contains_key(*p))
            .cloned()
            .collect();
        for p in gone {
            if let Some(rec) = self.files.remove(&p) {
                tracing::info!(file = %p.display(), objects = rec.accepted.len(), "manifest removed from its folder");
                events.extend(rec.accepted.into_iter().map(ObjectEvent::Deleted));
                if rec.reported {
                    reports.push(Update::Report {
                        origin: p.display().to_string(),
                        problems: vec![],
                        rejected_policies: BTreeMap::new(),
                    });
                }
            }
        }
        if !self.synced && all_named_read {
            self.synced = true;
            events.push(ObjectEvent::Synced);
        }
        let mut out = reports;
        if !events.is_empty() {
            if let Some(t) = written {
                out.push(Update::Written(t));
            }
            out.push(Update::Events(events));
        }
        out
    }

    /// Follow the paths on a thread of its own: a scan at start, then one after every
    /// burst of file system events (inotify), and a slow safety scan every `poll`.
    pub fn follow(mut self, tx: Sender<Update>, poll: Duration) -> std::io::Result<()> {
        let (ev_tx, ev_rx) = std::sync::mpsc::channel::<()>();
        let watcher = notify::recommended_watcher(move |r: notify::Result<notify::Event>| {
            if r.is_ok() {
                let _ = ev_tx.send(());
            }
        });
        let mut watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "no inotify; manifests are polled every {poll:?}");
                None
            }
        };
        if let Some(w) = watcher.as_mut() {
            for p in &self.paths {
                if p.as_os_str() == "-" {
                    continue;
                }
                // A folder recursively; a file through its parent folder, so a file
                // replaced by rename (or created later) is seen.
                let (target, mode) = if p.is_dir() {
                    (p.clone(), RecursiveMode::Recursive)
                } else {
                    let parent = p
                        .parent()
                        .filter(|d| !d.as_os_str().is_empty())
                        .unwrap_or(Path::new("."));
                    (parent.to_path_buf(), RecursiveMode::NonRecursive)
                };
                if let Err(e) = w.watch(&target, mode) {
                    tracing::warn!(path = %target.display(), error = %e, "cannot watch; polled every {poll:?}");
                }
            }
        }
        std::thread::Builder::new()
            .name("manifest-source".into())
            .spawn(move || {
                let _keep = watcher;
                loop {
                    for u in self.scan() {
                        if tx.send(u).is_err() {
                            return;
                        }
                    }
                    if !wait_for_change(&ev_rx, poll) {
                        return;
                    }
                }
            })?;
        Ok(())
    }
}

/// Wait for file system events (then a short quiet spell, so a burst is one scan) or for
/// `poll`. `false` when the watcher is gone and polling is all that is left... which
/// still returns `true` after the poll interval: only a closed channel with no poll ends.
fn wait_for_change(rx: &Receiver<()>, poll: Duration) -> bool {
    match rx.recv_timeout(poll) {
        Ok(()) => {
            // Coalesce: a save is often several events (truncate, write, close; a rename
            // is two). 3 ms of quiet is enough for one writer's burst.
            while rx.recv_timeout(Duration::from_millis(3)).is_ok() {}
            true
        }
        Err(RecvTimeoutError::Timeout) => true,
        Err(RecvTimeoutError::Disconnected) => {
            std::thread::sleep(poll);
            true
        }
    }
}

/// Keep the NetworkPolicies the API source rejected as invalid in step with its stream:
/// an `Invalid` adds one, a valid version or its deletion removes it. Returns whether the
/// set changed.
pub fn track_rejected_policies(
    rejected: &mut BTreeMap<ObjectKey, String>,
    item: &Result<ObjectEvent, twill_kube_source::Error>,
) -> bool {
    use twill_kube_source::Error as SourceError;
    match item {
        Err(SourceError::Invalid { object, errors }) if object.kind == Kind::NetworkPolicy => {
            let why: Vec<String> = errors.iter().map(ToString::to_string).collect();
            let reason = format!("{object}: {}", why.join("; "));
            rejected.insert(object.key.clone(), reason.clone()) != Some(reason)
        }
        Ok(ObjectEvent::Applied(twill_model::Object::NetworkPolicy(p))) => {
            rejected.remove(&p.key).is_some()
        }
        Ok(ObjectEvent::Deleted(r)) if r.kind == Kind::NetworkPolicy => {
            rejected.remove(&r.key).is_some()
        }
        _ => false,
    }
}

/// Follow the Kubernetes API (`twill_kube_source`) on a thread of its own, turning its
/// stream into [`Update`]s: what arrives together is one batch of events.
pub fn follow_kube(
    kubeconfig: Option<PathBuf>,
    config: twill_kube_source::SourceConfig,
    tx: Sender<Update>,
) -> std::io::Result<()> {
    let events = twill_kube_source::spawn(kubeconfig, config)?;
    std::thread::Builder::new()
        .name("kube-updates".into())
        .spawn(move || {
            let mut rejected: BTreeMap<ObjectKey, String> = BTreeMap::new();
            while let Ok(first) = events.recv() {
                let mut batch = Vec::new();
                let mut out = Vec::new();
                let mut rejected_changed = false;
                for item in std::iter::once(first).chain(events.try_iter()) {
                    rejected_changed |= track_rejected_policies(&mut rejected, &item);
                    match item {
                        Ok(e) => batch.push(e),
                        Err(twill_kube_source::Error::Invalid { object, errors }) => {
                            let why: Vec<String> = errors.iter().map(ToString::to_string).collect();
                            out.push(Update::Invalid(format!("{object}: {}", why.join("; "))));
                        }
                        Err(e) if e.is_transient() => out.push(Update::SourceError(e.to_string())),
                        Err(e) => out.push(Update::Fatal(format!("the Kubernetes source: {e}"))),
                    }
                }
                if rejected_changed {
                    out.push(Update::Report {
                        origin: "api".into(),
                        problems: rejected.values().cloned().collect(),
                        rejected_policies: rejected.clone(),
                    });
                }
                if !batch.is_empty() {
                    out.push(Update::Events(batch));
                }
                for u in out {
                    if tx.send(u).is_err() {
                        return;
                    }
                }
            }
            let _ = tx.send(Update::Fatal("the Kubernetes source stopped".into()));
        })?;
    Ok(())
}

#[cfg(test)]
mod tests;
