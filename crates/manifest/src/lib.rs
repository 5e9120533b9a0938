//! Kubernetes manifests → Twill model objects.
//!
//! Text plus a source name goes in; objects plus problems come out. One bad document or
//! object never stops the others: the good ones load and every problem names where it
//! is: `shop/web.yaml doc 2 (line 14): Service shop/web: spec.ports[0].port: 70000 is
//! out of range 1-65535`.
//!
//! Accepted input: multi-document YAML, JSON (one value or several concatenated), and
//! `kind: List` at any of those. Kinds: Namespace, Node, Pod, Service, EndpointSlice,
//! Deployment, ReplicaSet, DaemonSet, NetworkPolicy, ServiceCIDR; ConfigMaps are accepted and
//! ignored; anything else is a warning.
//!
//! [`parse_str`] and [`decode_value`] are pure. [`files`] is the thin shell that reads
//! paths and stdin.

pub mod checks;
mod decode;
pub mod files;
mod render;
mod split;

pub use render::{render_json, render_yaml};
pub use split::{DocText, yaml_document_texts};
use std::fmt;

pub use decode::{DecodeError, Decoded, decode_value};
use twill_model::Object;
pub use twill_model::k8s::FieldError;

/// Where a document sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file as the user named it, or `<stdin>`.
    pub source: String,
    /// 1-based index of the document within the source (empty documents not counted).
    pub doc: usize,
    /// 1-based line where the document starts (or where a parse error was found).
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} doc {} (line {})", self.source, self.doc, self.line)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

/// One problem with the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    pub location: Option<Location>,
    /// `Service shop/web`, when the object could be identified.
    pub object: Option<String>,
    /// Field path (`spec.ports[0].port`); empty when the problem is not about one field.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        if let Some(l) = &self.location {
            write!(f, "{l}: ")?;
        }
        if let Some(o) = &self.object {
            write!(f, "{o}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// An object and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub object: Object,
    pub location: Location,
    /// The object as written, for stores that keep what the user applied; only kept
    /// when asked ([`parse_str_keep_raw`], [`files::load_paths_keep_raw`]): a daemon
    /// loading 10k Services would otherwise hold every document twice.
    pub raw: Option<serde_json::Value>,
}

/// What a load produced: the good objects, in input order, and every problem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadResult {
    pub objects: Vec<Loaded>,
    pub problems: Vec<Problem>,
}

impl LoadResult {
    pub fn errors(&self) -> impl Iterator<Item = &Problem> {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
    }
    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }
    pub fn extend(&mut self, other: LoadResult) {
        self.objects.extend(other.objects);
        self.problems.extend(other.problems);
    }
    /// The objects alone.
    pub fn into_objects(self) -> Vec<Object> {
        self.objects.into_iter().map(|l| l.object).collect()
    }
}

/// Parse one source's text (YAML or JSON, any number of documents).
pub fn parse_str(source: &str, text: &str) -> LoadResult {
    parse(source, text, false)
}

/// Parse one document of a YAML stream cut by [`yaml_document_texts`]; problems and
/// objects carry the document's place in the stream, as [`parse_str`] gives them.
pub fn parse_document(source: &str, doc: &DocText) -> LoadResult {
    let mut out = LoadResult::default();
    if let Some((line, value)) = split::parse_yaml_document(doc) {
        let location = Location {
            source: source.to_string(),
            doc: doc.index,
            line,
        };
        document_into(value, location, false, &mut out);
    }
    out
}

/// One parsed document (or its parse error) into `out`, at `location`.
fn document_into(value: split::Parsed, location: Location, keep_raw: bool, out: &mut LoadResult) {
    match value {
        Err((line, message)) => out.problems.push(Problem {
            severity: Severity::Error,
            location: Some(Location { line, ..location }),
            object: None,
            path: String::new(),
            message,
        }),
        Ok(value) => decode_into(value, "", &location, keep_raw, out),
    }
}

/// [`parse_str`], also keeping each object's document as written ([`Loaded::raw`]).
pub fn parse_str_keep_raw(source: &str, text: &str) -> LoadResult {
    parse(source, text, true)
}

fn parse(source: &str, text: &str, keep_raw: bool) -> LoadResult {
    let mut out = LoadResult::default();
    split::for_each_document(source, text, &mut |doc| {
        let location = Location {
            source: source.to_string(),
            doc: doc.index,
            line: doc.line,
        };
        document_into(doc.value, location, keep_raw, &mut out);
    });
    out
}

/// Decode one document's value (following `kind: List` items) into `out`.
fn decode_into(
    value: serde_json::Value,
    prefix: &str,
    location: &Location,
    keep_raw: bool,
    out: &mut LoadResult,
) {
    match decode_value(&value) {
        Ok(Decoded::Object(object)) => out.objects.push(Loaded {
            object,
            location: location.clone(),
            raw: keep_raw.then_some(value),
        }),
        Ok(Decoded::Ignored { .. }) => {}
        Ok(Decoded::List(items)) => {
            for (i, item) in items.into_iter().enumerate() {
                decode_into(
                    item,
                    &format!("{prefix}items[{i}]."),
                    location,
                    keep_raw,
                    out,
                );
            }
        }
        Err(e) => {
            let severity = if e.unknown_kind {
                Severity::Warning
            } else {
                Severity::Error
            };
            if e.errors.is_empty() {
                out.problems.push(Problem {
                    severity,
                    location: Some(location.clone()),
                    object: e.object.clone(),
                    path: prefix.trim_end_matches('.').to_string(),
                    message: e.message.clone(),
                });
            }
            for f in &e.errors {
                out.problems.push(Problem {
                    severity,
                    location: Some(location.clone()),
                    object: e.object.clone(),
                    path: format!("{prefix}{}", f.path)
                        .trim_end_matches('.')
                        .to_string(),
                    message: f.message.clone(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
