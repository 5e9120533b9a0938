//! The `twill` command as a user runs it: `manifests check` over the bad-input corpus,
//! and `cluster render` over the shared examples and ours.
//!
//! Each file in `tests/bad-input/` carries its own expectations as comments:
//! `# expect-exit: N`, `# expect-objects: N` and any number of `# expect: TEXT` lines,
//! each of which must appear in one line of the output.

use std::path::{Path, PathBuf};
use std::process::Command;

fn twill() -> Command {
    Command::new(env!("CARGO_BIN_EXE_twill"))
}

fn here() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

#[test]
fn bad_input_corpus_reports_every_problem_with_file_object_and_field() {
    let dir = here().join("tests/bad-input");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 8);
    let mut failures = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let meta = |key: &str| -> Vec<String> {
            text.lines()
                .filter_map(|l| l.strip_prefix(&format!("# {key}: ")).map(str::to_string))
                .collect()
        };
        // Run from the folder so messages name the file as the user typed it.
        let name = f.file_name().unwrap().to_str().unwrap();
        let out = twill()
            .current_dir(&dir)
            .args(["manifests", "check", "-f", name])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let want_exit: i32 = meta("expect-exit")[0].parse().unwrap();
        if out.status.code() != Some(want_exit) {
            failures.push(format!(
                "{name}: exit {:?}, want {want_exit}\n{stdout}",
                out.status.code()
            ));
        }
        let want_objects = format!("{} objects loaded", meta("expect-objects")[0]);
        if !stdout.contains(&want_objects) {
            failures.push(format!("{name}: want {want_objects:?}\n{stdout}"));
        }
        for e in meta("expect") {
            if !stdout.lines().any(|l| l.contains(&e)) {
                failures.push(format!("{name}: no line contains {e:?}\n{stdout}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

fn render(dirs: &[&Path]) -> String {
    let mut cmd = twill();
    cmd.args(["cluster", "render", "--simulate-ips", "--strict"]);
    for d in dirs {
        cmd.arg("-f").arg(d);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "render failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// What render prints loads back cleanly and says what the control plane decided.
fn check_rendered(yaml: &str) -> twill_model::ClusterState {
    let r = twill_manifest::parse_str("render.yaml", yaml);
    assert!(
        r.problems.is_empty(),
        "rendered YAML does not load back: {:?}",
        r.problems
    );
    let state = twill_model::ClusterState::from_objects(r.into_objects());
    for svc in state.services.values().filter(|s| s.is_proxied()) {
        assert!(!svc.cluster_ips.is_empty(), "{} has no cluster IP", svc.key);
        let ready: usize = state
            .slices_for(&svc.key)
            .flat_map(|s| &s.endpoints)
            .filter(|e| e.conditions.is_ready())
            .count();
        let selected = state
            .pods
            .values()
            .filter(|p| {
                p.key.namespace == svc.key.namespace
                    && svc
                        .selector
                        .as_ref()
                        .is_some_and(|sel| sel.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
            })
            .count();
        assert_eq!(
            ready, selected,
            "{}: every selected, simulated pod is a ready endpoint",
            svc.key
        );
    }
    for p in state.pods.values() {
        assert!(
            p.spec.node_name.is_some() && !p.pod_ips.is_empty(),
            "{} not placed",
            p.key
        );
    }
    state
}

#[test]
fn render_of_shared_examples_allocates_and_builds_endpoints() {
    let shared = here().join("../../../shared/examples");
    let yaml = render(&[&shared]);
    let state = check_rendered(&yaml);
    let web = state
        .services
        .get(&twill_model::ObjectKey::new("shop", "web"))
        .unwrap();
    assert_eq!(web.ports[0].node_port, Some(30080));
    assert_eq!(
        state
            .pods
            .values()
            .filter(|p| p.key.namespace == "shop")
            .count(),
        3
    );
    assert_eq!(yaml, render(&[&shared]), "render is deterministic");
}

#[test]
fn render_of_our_examples_allocates_and_builds_endpoints() {
    let ours = here().join("../../examples");
    let state = check_rendered(&render(&[&ours]));
    assert!(state.services.len() >= 3);
}

#[test]
fn render_reads_stdin_and_reports_problems_without_failing_unless_strict() {
    use std::io::Write;
    let input = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 0}]}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n";
    for (strict, code) in [(false, 0), (true, 1)] {
        let mut cmd = twill();
        cmd.args(["cluster", "render", "-f", "-"]);
        if strict {
            cmd.arg("--strict");
        }
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(code));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("<stdin> doc 1 (line 1): Service default/s: spec.ports[0].port: 0 is out of range 1-65535"), "{stderr}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("name: a"));
    }
}

/// A large manifest (N Services, each with a slice), so printing commands write far more
/// than a pipe holds.
fn large_manifest(dir: &Path, n: usize) -> PathBuf {
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: default}}\n\
             spec: {{clusterIP: 10.96.{}.{}, ports: [{{name: http, port: 80}}]}}\n",
            i / 250,
            i % 250 + 1
        ));
    }
    let p = dir.join("large.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn printing_commands_end_quietly_when_the_reader_goes_away() {
    let dir = std::env::temp_dir().join(format!("twill-cli-pipe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let big = large_manifest(&dir, 2000);
    let big = big.to_str().unwrap();
    for args in [
        vec!["cluster", "render", "-f", big, "--simulate-ips"],
        vec!["manifests", "check", "-f", big],
        vec!["proxy", "rules", "-f", big, "--node", "n0"],
        vec!["completion", "bash"],
        vec!["man"],
    ] {
        // `| head -c1`: read one byte, then close the pipe.
        let mut child = twill()
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut one = [0u8; 1];
        std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut one).unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{args:?}: {stderr}"
        );
        // Ended by SIGPIPE (as `cat` is) or finished first: never a panic's 101.
        assert_ne!(out.status.code(), Some(101), "{args:?}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn completions_and_man_pages_come_from_the_command_definitions() {
    for shell in ["bash", "zsh", "fish"] {
        let out = twill().args(["completion", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        for sub in ["proxy", "agent", "lab", "conformance"] {
            assert!(text.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    let dir = std::env::temp_dir().join(format!("twill-man-{}", std::process::id()));
    let out = twill()
        .args(["man", "--dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let page = std::fs::read_to_string(dir.join("twill-proxy.1")).unwrap();
    assert!(page.contains(".TH twill-proxy 1"), "{page}");
    assert!(page.contains("hostname\\-override"), "flags are documented");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn enumerated_options_and_the_log_filter_refuse_typos() {
    for args in [
        vec!["doctor", "-o", "jsno"],
        vec!["trace", "--to", "10.0.0.1:80", "-o", "yaml"],
        vec!["dns", "--pods", "verifed"],
        vec!["dns", "--policy", "roundrobin"],
        vec!["agent", "--proxy-mode", "iptable"],
        vec!["--log-format", "xml", "manifests", "check", "-f", "x.yaml"],
    ] {
        let out = twill().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("invalid value"), "{args:?}: {stderr}");
    }
    let out = twill()
        .args(["--log", "twill=[", "manifests", "check", "-f", "x.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid filter"));
}

/// Allocator settings that cannot work are refused before anything is rendered, with or
/// without `--strict`, each naming the flag.
#[test]
fn cluster_settings_that_cannot_work_are_errors() {
    let example = here().join("tests/bad-input/duplicates-and-namespaces.yaml");
    let cases: [(&[&str], &str); 6] = [
        (
            &["--nodes", "300"],
            "has room for 256 nodes with /24 each; 300 need one",
        ),
        (
            &["--node-subnet-len", "33"],
            "--node-subnet-len 33: at most 30 for IPv4",
        ),
        (
            &["--node-subnet-len", "8"],
            "--node-subnet-len 8: a node's subnet must fit inside the pod CIDR 10.244.0.0/16",
        ),
        (
            &["--pod-cidr", "10.96.0.0/16"],
            "the pod CIDR 10.96.0.0/16 overlaps the service CIDR 10.96.0.0/12",
        ),
        (
            &[
                "--service-cidr",
                "10.96.0.0/12",
                "--service-cidr",
                "10.200.0.0/16",
            ],
            "--service-cidr 10.96.0.0/12 and 10.200.0.0/16 are both IPv4",
        ),
        (
            &[
                "--service-cidr",
                "10.96.0.0/12",
                "--service-cidr",
                "fd00:96::/112",
                "--nodes",
                "256",
            ],
            "",
        ),
    ];
    for (args, want) in cases {
        for cmd in [
            &["cluster", "render", "--strict"][..],
            &["cluster", "render"],
            &["manifests", "check"],
        ] {
            let out = twill()
                .args(cmd)
                .arg("-f")
                .arg(&example)
                .args(args)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            if want.is_empty() {
                assert!(out.status.success(), "{cmd:?} {args:?}: {stderr}");
            } else {
                assert_eq!(out.status.code(), Some(2), "{cmd:?} {args:?}: {stderr}");
                assert!(stderr.contains(want), "{cmd:?} {args:?}: {stderr}");
                assert!(out.stdout.is_empty(), "nothing rendered");
            }
        }
    }
}
