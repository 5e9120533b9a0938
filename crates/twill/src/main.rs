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
    /// Log lines as text (colour on a terminal, unless `NO_COLOR`) or one JSON object each.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "TWILL_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
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
    /// Print the shell completion script (`source <(twill completion bash)`).
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages: `twill.1` and one per subcommand (`twill-proxy.1`, …) into DIR,
    /// or `twill.1` alone to stdout.
    Man {
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
}

/// `twill completion` and `twill man`, from the clap definitions themselves.
fn generate_docs(c: &Command) -> std::io::Result<()> {
    use clap::CommandFactory;
    let mut cli = Cli::command();
    match c {
        Command::Completion { shell } => {
            clap_complete::generate(*shell, &mut cli, "twill", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { dir: None } => clap_mangen::Man::new(cli).render(&mut std::io::stdout()),
        Command::Man { dir: Some(dir) } => {
            std::fs::create_dir_all(dir)?;
            clap_mangen::generate_to(cli, dir)
        }
        _ => Ok(()),
    }
}

/// Logs go to stderr; colour only on a terminal and without `NO_COLOR` (so `kubectl
/// logs` and files get plain text). An invalid filter is an error, not a silent `warn`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(filter: &str, format: LogFormat) -> Result<(), String> {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| format!("--log {filter:?} is not a valid filter: {e}"))?;
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => fmt.with_ansi(colour).init(),
        LogFormat::Json => fmt.json().init(),
    }
    Ok(())
}

/// Whether the command only prints a report: such commands end quietly when their reader
/// goes away (`twill cluster render … | head`), as Unix tools do. Daemons and commands
/// that feed tools on stdin keep SIGPIPE ignored (Rust's default): a tool that exits
/// before reading its input must be an error, not the agent's death.
fn prints_only(c: &Command) -> bool {
    match c {
        Command::Manifests(_)
        | Command::Cluster(_)
        | Command::Doctor(_)
        | Command::Trace(_)
        | Command::Completion { .. }
        | Command::Man { .. } => true,
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
    if let Err(e) = init_logging(&cli.log, cli.log_format) {
        eprintln!("twill: {e}");
        return ExitCode::from(2);
    }
    if matches!(
        cli.command,
        Command::Completion { .. } | Command::Man { .. }
    ) {
        return match generate_docs(&cli.command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("twill: {e}");
                ExitCode::from(2)
            }
        };
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
        Command::Completion { .. } | Command::Man { .. } => unreachable!("answered above"),
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
