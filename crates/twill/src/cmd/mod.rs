//! One module per subcommand; each owns its clap arguments and its `run`.

pub mod cluster;
pub mod conformance;
pub mod doctor;
pub mod manifests;
pub mod trace;

#[cfg(feature = "kube")]
pub mod agent;
#[cfg(feature = "cni")]
pub mod cni;
#[cfg(feature = "dns")]
pub mod dns;
#[cfg(feature = "lab")]
pub mod lab;
#[cfg(feature = "netpol")]
pub mod netpol;
#[cfg(feature = "overlay")]
pub mod overlay;
#[cfg(feature = "proxy")]
pub mod proxy;
