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
#[cfg(feature = "proxy")]
pub mod kube_proxy;
#[cfg(feature = "lab")]
pub mod lab;
#[cfg(feature = "netpol")]
pub mod netpol;
#[cfg(feature = "overlay")]
pub mod overlay;
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

/// Print what `--cleanup` removed and what it could not; non-zero when something was
/// left.
#[cfg(feature = "proxy")]
pub fn print_cleanup(r: twill_agent::cleanup::Report) -> std::process::ExitCode {
    if r.removed.is_empty() && r.problems.is_empty() {
        println!("nothing of Twill's or kube-proxy's to remove");
    }
    for line in &r.removed {
        println!("removed {line}");
    }
    for p in &r.problems {
        eprintln!("error: {p}");
    }
    if r.problems.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
