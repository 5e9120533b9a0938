//! Thin appliers for netfilter state.
//!
//! Each call runs the distribution's tool with the whole input on stdin, so a change is
//! one atomic transaction per table (`iptables-restore`) or per script (`nft -f -`).
//! The tools run in the network namespace of the calling thread: a thread that has
//! entered a node's namespace programs that node.

use std::io::Write;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("could not run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: String,
        stderr: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// Run `program args` with `input` on stdin; return stdout.
pub fn run_with_input(program: &str, args: &[&str], input: &[u8]) -> Result<String, Error> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            program: program.into(),
            source,
        })?;
    // Write on another thread so a tool that answers while reading cannot deadlock us.
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().map_err(|source| Error::Spawn {
        program: program.into(),
        source,
    })?;
    let _ = writer.join();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Failed {
            program: format!("{program} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn restore_program(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables-restore",
        Family::V6 => "ip6tables-restore",
    }
}

/// `iptables-restore --noflush -w` (or ip6tables-restore): chains declared in the input
/// are flushed and rewritten; every other chain and table is left alone.
pub fn iptables_restore(family: Family, input: &str) -> Result<(), Error> {
    run_with_input(
        restore_program(family),
        &["--noflush", "-w", "5"],
        input.as_bytes(),
    )
    .map(|_| ())
}

/// `iptables-save` (or ip6tables-save), optionally of one table.
pub fn iptables_save(family: Family, table: Option<&str>) -> Result<String, Error> {
    let program = match family {
        Family::V4 => "iptables-save",
        Family::V6 => "ip6tables-save",
    };
    let args: Vec<&str> = match table {
        Some(t) => vec!["-t", t],
        None => vec![],
    };
    run_with_input(program, &args, b"")
}

/// `nft -f -`: one transaction.
pub fn nft_apply(script: &str) -> Result<(), Error> {
    run_with_input("nft", &["-f", "-"], script.as_bytes()).map(|_| ())
}

/// `ipset restore -exist`.
pub fn ipset_restore(script: &str) -> Result<(), Error> {
    run_with_input("ipset", &["restore", "-exist"], script.as_bytes()).map(|_| ())
}
