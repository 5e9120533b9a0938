//! `twill`: the one user-facing binary. It only wires sources, cores and appliers
//! together; every behaviour lives in a library crate.
//!
//! It is also a multi-call binary: invoked as `twill-bridge` or `twill-host-local`
//! (links made by `twill cni install`) it behaves as that CNI plugin.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

#[derive(Parser)]
#[command(
    name = "twill",
    version,
    about = "Kubernetes node networking: pod network, services, cluster DNS, network policy, and a lab to see them work"
)]
struct Cli {
    /// Log filter (tracing-subscriber syntax), e.g. `info`, `twill_proxy=debug`.
    #[arg(long, global = true, env = "TWILL_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load and validate manifests.
    #[command(subcommand)]
    Manifests(cmd::manifests::Command),
    /// What the standalone control plane makes of manifests.
    #[command(subcommand)]
    Cluster(cmd::cluster::Command),
    /// Check this node's networking for what operators get wrong, each finding with its fix
    /// (exit 0: none, 1: warnings, 2: errors).
    Doctor(cmd::doctor::Args),
    /// Explain one packet's path through this node: every rule that matches, each
    /// translation, the route, and where and why it is dropped or delivered.
    Trace(cmd::trace::Args),
    /// Run a conformance corpus (`N passed, N failed`, exit 1 on any failure).
    #[command(subcommand)]
    Conformance(cmd::conformance::Command),
    /// CNI plugins: install them into a CNI bin dir.
    #[cfg(feature = "cni")]
    #[command(subcommand)]
    Cni(cmd::cni::Command),
    /// The overlay agent (flannel's job): subnet leases and vxlan/host-gw/udp routes.
    #[cfg(feature = "overlay")]
    Overlay(cmd::overlay::Args),
    /// The service proxy (kube-proxy's job).
    #[cfg(feature = "proxy")]
    Proxy(cmd::proxy::Args),
    /// A multi-node cluster out of network namespaces, running ordinary manifests.
    #[cfg(feature = "lab")]
    Lab(cmd::lab::Args),
    /// The node agent on a real cluster: pod network, service proxy and NetworkPolicy,
    /// fed by the Kubernetes API.
    #[cfg(feature = "kube")]
    Agent(cmd::agent::Args),
    /// The cluster DNS server (CoreDNS's job) and pod resolv.conf.
    #[cfg(feature = "dns")]
    Dns(cmd::dns::Args),
    /// The NetworkPolicy enforcer for one node (iptables chains + ipsets).
    #[cfg(feature = "netpol")]
    Netpol(cmd::netpol::Args),
}

/// Logs go to stderr; colour only on a terminal and without `NO_COLOR` (so `kubectl
/// logs` and files get plain text). An invalid filter is an error, not a silent `warn`.
fn init_logging(filter: &str) -> Result<(), String> {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| format!("--log {filter:?} is not a valid filter: {e}"))?;
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}

/// Whether the command only prints a report: such commands end quietly when their reader
/// goes away (`twill cluster render … | head`), as Unix tools do. Daemons and commands
/// that feed tools on stdin keep SIGPIPE ignored (Rust's default): a tool that exits
/// before reading its input must be an error, not the agent's death.
fn prints_only(c: &Command) -> bool {
    match c {
        Command::Manifests(_) | Command::Cluster(_) | Command::Doctor(_) | Command::Trace(_) => {
            true
        }
        #[cfg(feature = "proxy")]
        Command::Proxy(a) => a.command.is_some(),
        #[cfg(feature = "lab")]
        Command::Lab(a) => cmd::lab::prints_only(a),
        _ => false,
    }
}

fn main() -> ExitCode {
    #[cfg(feature = "cni")]
    if let Some(code) = cmd::cni::dispatch_plugin() {
        return code;
    }
    let cli = Cli::parse();
    if prints_only(&cli.command) {
        // SAFETY: setting a signal disposition before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    if let Err(e) = init_logging(&cli.log) {
        eprintln!("twill: {e}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Manifests(c) => cmd::manifests::run(c),
        Command::Cluster(c) => cmd::cluster::run(c),
        Command::Conformance(c) => cmd::conformance::run(c),
        Command::Doctor(a) => cmd::doctor::run(a),
        Command::Trace(a) => cmd::trace::run(a),
        #[cfg(feature = "cni")]
        Command::Cni(c) => cmd::cni::run(c),
        #[cfg(feature = "overlay")]
        Command::Overlay(a) => cmd::overlay::run(a),
        #[cfg(feature = "proxy")]
        Command::Proxy(a) => cmd::proxy::run(a),
        #[cfg(feature = "dns")]
        Command::Dns(a) => cmd::dns::run(a),
        #[cfg(feature = "lab")]
        Command::Lab(a) => cmd::lab::run(a),
        #[cfg(feature = "kube")]
        Command::Agent(a) => cmd::agent::run(a),
        #[cfg(feature = "netpol")]
        Command::Netpol(a) => cmd::netpol::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("twill: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    /// clap checks a command tree only when it is used; check every subcommand at once
    /// (duplicate argument names, bad defaults, conflicting flags).
    #[test]
    fn every_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
