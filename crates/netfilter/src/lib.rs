//! Thin appliers for netfilter state.
//!
//! Each call runs the distribution's tool with the whole input on stdin, so a change is
//! one atomic transaction per table (`iptables-restore`) or per script (`nft -f -`).
//! The tools run in the network namespace of the calling thread: a thread that has
//! entered a node's namespace programs that node.

use std::io::Write;
use std::os::unix::process::CommandExt;
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

/// Stack limit for the tools: iptables-nft-save 1.8.9 dies with SIGSEGV on a 10k-service
/// nat table (110k chains) under the default 8 MB stack, and completes with a larger
/// one. Only address space is reserved; pages are used as the tool recurses.
const TOOL_STACK_BYTES: libc::rlim_t = 1 << 30;

/// Raise the soft stack limit of the process about to exec (never above the hard limit).
fn raise_stack_limit() -> std::io::Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit are async-signal-safe and only touch `lim`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_STACK, &mut lim) != 0 {
            return Ok(());
        }
        let want = TOOL_STACK_BYTES.min(lim.rlim_max);
        if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < want {
            lim.rlim_cur = want;
            libc::setrlimit(libc::RLIMIT_STACK, &lim);
        }
    }
    Ok(())
}

/// Run `program args` with `input` on stdin; return stdout.
pub fn run_with_input(program: &str, args: &[&str], input: &[u8]) -> Result<String, Error> {
    let mut cmd = Command::new(program);
    // SAFETY: the hook only calls async-signal-safe functions (see raise_stack_limit).
    unsafe {
        cmd.pre_exec(raise_stack_limit);
    }
    let mut child = cmd
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

/// The `iptables-restore --noflush` input that removes every chain `owned` selects
/// from an `iptables-save` dump: first every rule elsewhere that jumps or goes to one
/// (`-D`, the rule as saved), then the chains themselves (declared, which flushes them,
/// then `-X`). `None` when the dump holds nothing owned. Pure, so it is tested on text.
pub fn removal_input(save: &str, owned: impl Fn(&str) -> bool) -> Option<String> {
    let mut out = String::new();
    let mut table: Option<&str> = None;
    let mut chains: Vec<&str> = Vec::new();
    let mut deletes: Vec<String> = Vec::new();
    let flush =
        |out: &mut String, table: &str, chains: &mut Vec<&str>, deletes: &mut Vec<String>| {
            if chains.is_empty() && deletes.is_empty() {
                return;
            }
            out.push_str(&format!("*{table}\n"));
            for d in deletes.drain(..) {
                out.push_str(&d);
                out.push('\n');
            }
            for c in chains.iter() {
                out.push_str(&format!(":{c} - [0:0]\n"));
            }
            for c in chains.drain(..) {
                out.push_str(&format!("-X {c}\n"));
            }
            out.push_str("COMMIT\n");
        };
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = Some(t);
        } else if line == "COMMIT" {
            if let Some(t) = table.take() {
                flush(&mut out, t, &mut chains, &mut deletes);
            }
        } else if let Some(rest) = line.strip_prefix(':') {
            let name = rest.split(' ').next().unwrap_or_default();
            if owned(name) {
                chains.push(name);
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let mut words = rest.split_whitespace();
            let chain = words.next().unwrap_or_default();
            if owned(chain) {
                continue;
            }
            let mut prev = "";
            let targets_owned = words.any(|w| {
                let hit = (prev == "-j" || prev == "-g") && owned(w);
                prev = w;
                hit
            });
            if targets_owned {
                deletes.push(format!("-D {rest}"));
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_deletes_jumps_into_owned_chains_then_the_chains_and_nothing_else() {
        let save = "# Generated by iptables-save\n*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-ABC - [0:0]\n:MINE - [0:0]\n-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n-A PREROUTING -j MINE\n-A MINE -j ACCEPT\n-A KUBE-SERVICES -d 10.96.0.1/32 -j KUBE-SVC-ABC\nCOMMIT\n*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n";
        let input = removal_input(save, |c| c.starts_with("KUBE-")).unwrap();
        assert_eq!(
            input,
            "*nat\n-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-ABC - [0:0]\n-X KUBE-SERVICES\n-X KUBE-SVC-ABC\nCOMMIT\n"
        );
        assert_eq!(
            removal_input(
                "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n",
                |c| c.starts_with("KUBE-")
            ),
            None
        );
    }

    #[test]
    fn tools_run_with_a_large_stack_limit() {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes `lim`.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut lim) }, 0);
        let out = run_with_input("sh", &["-c", "ulimit -s"], b"").unwrap();
        let out = out.trim();
        if out == "unlimited" {
            return;
        }
        let kib: u64 = out
            .parse()
            .unwrap_or_else(|_| panic!("ulimit -s said {out:?}"));
        let expected = if lim.rlim_cur == libc::RLIM_INFINITY {
            u64::MAX
        } else {
            lim.rlim_cur.max(TOOL_STACK_BYTES.min(lim.rlim_max))
        };
        assert_eq!(
            kib * 1024,
            expected,
            "soft {} hard {}",
            lim.rlim_cur,
            lim.rlim_max
        );
    }

    #[test]
    fn a_failing_tool_is_named_with_its_arguments_and_stderr() {
        let err = run_with_input("sh", &["-c", "echo bad input >&2; exit 3"], b"").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("sh -c") && msg.contains("bad input"), "{msg}");
    }
}
