//! The node agent runtime: what turns Twill's parts into one agent.
//!
//! - [`source`]: manifest files and folders (inotify) or the Kubernetes API, each keeping
//!   its last good state, feeding one stream of [`source::Update`]s;
//! - [`schedule`]: kube-proxy's bounded-frequency runner as a pure state machine (minimum
//!   interval, periodic resync, retry with backoff after a failure);
//! - [`parts`]: the service proxy (every mode), NetworkPolicy, the pod network and
//!   cluster DNS, a closed set, each syncing from the one state and reporting its health;
//! - [`status`] and [`http`]: health, readiness and metrics (one registry), served
//!   concurrently by one hyper server, with the proxy's health-check node ports;
//! - [`cleanup`]: `--cleanup`, everything Twill or kube-proxy wrote taken out again;
//! - [`runtime`]: the loop that ties them, and [`signals`]: SIGTERM leaves the data plane
//!   as it is.
//!
//! `twill agent`, `twill proxy -f`, `twill netpol` and `twill dns` are front-ends over it.

pub mod cleanup;
pub mod http;
pub mod kube_proxy_config;
pub mod parts;
pub mod runtime;
pub mod schedule;
pub mod signals;
pub mod source;
pub mod status;

pub use parts::{Part, PartError};
pub use runtime::{Ended, Error, Options, Runtime};
pub use schedule::Schedule;
pub use source::{ManifestSource, Update};
pub use status::Status;
