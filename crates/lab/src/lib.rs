//! `twill lab`: a multi-node Kubernetes cluster made of network namespaces on one
//! machine, running ordinary manifests with real processes and Twill's real agents.
//! Only the API server (the standalone control loop) and the container runtime (this
//! crate's pod runtime) are stand-ins.
//!
//! Layout of one lab `NAME`:
//! - namespaces `tl-NAME-sw` (the underlay switch, bridge `br0`), `tl-NAME-node-N`
//!   (nodes, `eth0` on the underlay), `tl-NAME-client` (an outside host) and
//!   `tl-NAME-p-HASH` (pods);
//! - files under `/run/twill-lab/NAME/`: `lab.json` (the topology), `applied.json`
//!   (what the user applied), `system.yaml` (cluster DNS), `cluster.yaml` (the cluster
//!   as the API server would hold it; node agents watch it), `status.json` (the
//!   runtime's view), logs and pid files.
//!
//! Everything is found again by name, so every command works from any shell and
//! `down --force` cleans up after a crash.

pub mod agents;
pub mod cni;
pub mod controller;
pub mod dns;
pub mod flows;
pub mod kubectl;
pub mod lifecycle;
pub mod netns;
pub mod ops;
pub mod picture;
pub mod pod;
pub mod prober;
pub mod responder;
pub mod spec;
pub mod status;
pub mod topology;
pub mod ui;
pub mod vip;

pub use spec::{Backend, LabSpec, UpOptions};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    #[error("lab {0:?} does not exist (twill lab up --name {0})")]
    NoSuchLab(String),
    #[error(
        "lab {0:?} already exists; use --replace to rebuild it, or `twill lab down --name {0}`"
    )]
    Exists(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("{0} failed: {1}")]
    Command(String, String),
    #[error("CNI: {0}")]
    Cni(String),
    #[error("{0}")]
    NotFound(String),
}
