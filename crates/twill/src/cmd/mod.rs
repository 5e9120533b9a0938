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

/// `-o` of the commands that print a report: text for people, `json` for tools.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

impl Output {
    pub fn as_str(self) -> &'static str {
        match self {
            Output::Text => "text",
            Output::Json => "json",
        }
    }
}
