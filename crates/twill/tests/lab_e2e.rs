//! End to end on real kernels: `twill lab` clusters with the real agents, driven the way
//! a user drives them (the `twill` binary), checked with real clients.
//!
//! Each test owns a lab named `e<pid>x<n>`; a guard tears it down even when the test
//! fails, and labs left by a killed run (whose pid is gone) are swept first.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

static N: AtomicUsize = AtomicUsize::new(0);

fn twill() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_twill"));
    // Tests must not leave state where a user's labs live.
    c.env("TWILL_LAB_ROOT", lab_root());
    c
}

fn lab_root() -> String {
    "/run/twill-lab-tests".to_string()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Remove labs of test processes that no longer exist.
fn sweep() {
    let mut names: Vec<String> = std::fs::read_dir(lab_root())
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if let Ok(d) = std::fs::read_dir("/run/netns") {
        for e in d.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(rest) = n.strip_prefix("tl-e")
                && let Some((lab, _)) = rest.split_once('-')
            {
                names.push(format!("e{lab}"));
            }
        }
    }
    names.sort();
    names.dedup();
    for name in names {
        let Some(pid) = name
            .strip_prefix('e')
            .and_then(|r| r.split('x').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = twill()
                .args(["lab", "down", "--force", "--name", &name])
                .output();
        }
    }
}

struct Lab {
    name: String,
}

impl Lab {
    fn up(extra: &[&str]) -> Lab {
        sweep();
        let name = format!(
            "e{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let lab = Lab { name };
        let out = twill()
            .args(["lab", "up", "--name", &lab.name])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "lab up failed: {}", text(&out));
        lab
    }

    fn run(&self, args: &[&str]) -> Output {
        twill()
            .args(["lab"])
            .args(args)
            .args(["--name", &self.name])
            .output()
            .unwrap()
    }

    fn exec(&self, target: &[&str], cmd: &[&str]) -> Output {
        twill()
            .args(["lab", "exec", "--name", &self.name])
            .args(target)
            .arg("--")
            .args(cmd)
            .output()
            .unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = twill()
            .args(["lab", "down", "--force", "--name", &self.name])
            .output();
    }
}

fn manifest(name: &str, yaml: &str) -> String {
    let dir = std::env::temp_dir().join(format!("twill-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, yaml).unwrap();
    p.display().to_string()
}

const PODS: &str = "
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      nodeSelector: {kubernetes.io/hostname: node-1}
      containers: [{name: web, image: nginx, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeName: node-1
  containers: [{name: c, image: busybox, command: [sleep, infinity]}]
";

#[test]
fn pods_on_one_node_reach_each_other_and_down_leaves_nothing() {
    if !twill_testkit::require_root("pods_on_one_node_reach_each_other_and_down_leaves_nothing") {
        return;
    }
    let f = manifest("pods.yaml", PODS);
    let lab = Lab::up(&["--nodes", "2", "--no-dns", "-f", &f]);
    let pods = text(&lab.run(&["get", "pods", "-o", "wide"]));
    let web_ips: Vec<String> = pods
        .lines()
        .filter(|l| l.starts_with("web-"))
        .map(|l| l.split_whitespace().nth(5).unwrap().to_string())
        .collect();
    assert_eq!(web_ips.len(), 2, "{pods}");
    for ip in &web_ips {
        let out = lab.exec(
            &["client"],
            &["curl", "-s", "-m", "3", &format!("http://{ip}/")],
        );
        let body = text(&out);
        assert!(
            body.starts_with("web-") && body.contains(&format!("ip={ip}")),
            "{body}"
        );
    }
    let hostname = text(&lab.exec(&["client"], &["hostname"]));
    assert_eq!(hostname.trim(), "client");
    let name = lab.name.clone();
    drop(lab);
    let leftovers: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !leftovers
            .iter()
            .any(|n| n.starts_with(&format!("tl-{name}-"))),
        "{leftovers:?}"
    );
    assert!(!Path::new(&lab_root()).join(&name).exists());
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    assert!(
        !text(&ps).contains(&format!("--name {name}")),
        "a lab process survived down"
    );
}

#[test]
fn bad_manifests_deploy_the_rest_and_name_the_problem() {
    if !twill_testkit::require_root("bad_manifests_deploy_the_rest_and_name_the_problem") {
        return;
    }
    let f = manifest(
        "bad.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: ok}\nspec:\n  containers: [{name: c, image: i, command: [sleep, infinity]}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: broken}\nspec:\n  ports: [{port: 99999}]\n---\napiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\n",
    );
    let name = format!(
        "e{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let out = twill()
        .args(["lab", "up", "--name", &name, "--no-dns", "-f", &f])
        .output()
        .unwrap();
    let _guard = Lab { name: name.clone() };
    let t = text(&out);
    assert!(
        !out.status.success(),
        "an invalid object makes up exit non-zero: {t}"
    );
    assert!(t.contains("bad.yaml doc 2 (line 7): Service default/broken: spec.ports[0].port: 99999 is out of range 1-65535"), "{t}");
    assert!(
        t.contains("warning: ") && t.contains("Job default/j"),
        "{t}"
    );
    assert!(
        t.contains("1/1 pods ready"),
        "the valid pod still deploys: {t}"
    );
    let again = twill()
        .args(["lab", "up", "--name", &name, "--no-dns"])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        text(&again).contains("already exists; use --replace"),
        "{}",
        text(&again)
    );
    let apply = twill()
        .args(["lab", "apply", "--name", &name, "-f", &f])
        .output()
        .unwrap();
    assert!(
        text(&apply).contains("spec.ports[0].port: 99999"),
        "{}",
        text(&apply)
    );
}

#[test]
fn commands_on_a_missing_lab_say_so() {
    let out = twill()
        .args(["lab", "get", "pods", "--name", "nosuchlab"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("lab \"nosuchlab\" does not exist"),
        "{}",
        text(&out)
    );
}
