//! `twill conformance <area> DIR`: each area's runner lives with its area's command module.

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum Command {
    /// CNI plugin cases (shared/testdata/cni schema).
    #[cfg(feature = "cni")]
    Cni(super::cni::ConformanceArgs),
    /// Overlay cases (shared/testdata/overlay schema).
    #[cfg(feature = "overlay")]
    Overlay(super::overlay::ConformanceArgs),
    /// Service proxy cases (shared/testdata/proxy schema).
    #[cfg(feature = "proxy")]
    Proxy(super::proxy::ConformanceArgs),
    /// Cluster DNS cases (shared/testdata/dns schema).
    #[cfg(feature = "dns")]
    Dns(super::dns::ConformanceArgs),
    /// NetworkPolicy truth tables (shared/testdata/netpol schema).
    #[cfg(feature = "netpol")]
    Netpol(super::netpol::ConformanceArgs),
}

pub fn run(c: Command) -> anyhow::Result<ExitCode> {
    match c {
        #[cfg(feature = "cni")]
        Command::Cni(a) => super::cni::run_conformance(a),
        #[cfg(feature = "overlay")]
        Command::Overlay(a) => super::overlay::run_conformance(a),
        #[cfg(feature = "proxy")]
        Command::Proxy(a) => super::proxy::run_conformance(a),
        #[cfg(feature = "dns")]
        Command::Dns(a) => super::dns::run_conformance(a),
        #[cfg(feature = "netpol")]
        Command::Netpol(a) => super::netpol::run_conformance(a),
    }
}

/// The closing line every runner prints, and the exit code that goes with it.
// Unused only in builds with no conformance area at all.
#[allow(dead_code)]
pub fn summary(passed: usize, failed: usize) -> ExitCode {
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
