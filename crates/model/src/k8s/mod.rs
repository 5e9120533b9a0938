//! Conversion between k8s-openapi objects and the model.
//!
//! `from_*` validates what the API server would reject whatever the cluster's settings
//! (names, port ranges, protocols, selectors, address syntax) and applies the API
//! server's defaults for the fields Twill uses. Checks that depend on the cluster's own
//! settings (service CIDR, node-port range, conflicts between objects) belong to the
//! control loop, because upstream's own test fixtures use node ports like 3001 and
//! cluster IPs outside any default CIDR, and those must still load.
//!
//! Every problem carries the field path (`spec.ports[0].port`), and one call reports
//! all problems of an object, not just the first.

mod cnp;
mod from;
mod names;
mod to;

pub use cnp::*;

pub use from::*;
pub use names::{
    is_dns1035_label, is_dns1123_label, is_dns1123_subdomain, is_iana_svc_name, validate_label_key,
    validate_label_value,
};
pub use to::*;

use std::fmt;

/// One problem with one field of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// `spec.ports[0].port`; empty for the object as a whole.
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Collects field errors while a conversion walks an object.
#[derive(Debug, Default)]
pub(crate) struct Errors(pub Vec<FieldError>);

impl Errors {
    pub fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }
    pub fn finish<T>(self, value: T) -> Result<T, Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }
}
