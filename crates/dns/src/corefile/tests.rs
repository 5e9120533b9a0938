use std::time::Duration;

use super::*;

/// A Corefile of the corpus in `tests/corefiles`.
fn corpus_file(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corefiles")
        .join(name);
    #[allow(clippy::disallowed_methods)] // reading the corpus is the test's own I/O
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn settings(text: &str) -> Settings {
    interpret(&parse(text).unwrap()).unwrap()
}

#[test]
fn kubeadms_default_corefile_loads_with_each_plugin_understood() {
    let s = settings(&corpus_file("kubeadm.Corefile"));
    assert_eq!(s.port, 53);
    assert_eq!(s.lameduck, Some(Duration::from_secs(5)));
    assert_eq!(s.health.as_deref(), Some(""));
    assert_eq!(s.prometheus.as_deref(), Some(":9153"));
    let k = s.kubernetes.unwrap();
    assert_eq!(k.zones, ["cluster.local", "in-addr.arpa", "ip6.arpa"]);
    assert_eq!(k.pods, Some(PodMode::Insecure));
    assert_eq!(k.ttl, Some(30));
    assert_eq!(
        k.fallthrough,
        Some(vec!["in-addr.arpa".into(), "ip6.arpa".into()])
    );
    let f = s.forward.unwrap();
    assert_eq!(f.to, ["/etc/resolv.conf"]);
    assert_eq!(f.max_concurrent, Some(1000));
    assert_eq!(s.cache.unwrap().max_ttl, Some(30));
    assert!(s.loop_check && s.loadbalance);
    assert_eq!(s.notes.len(), 1, "reload is said: {:?}", s.notes);
}

#[test]
fn syntax_quotes_comments_and_braces() {
    let blocks = parse(
        "# a comment\n.:5353 { # trailing\n  forward . \"10.0.0.1\" {\n    policy sequential\n  }\n}\n",
    )
    .unwrap();
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].keys, [".:5353"]);
    let f = &blocks[0].directives[0];
    assert_eq!((f.name.as_str(), f.line), ("forward", 3));
    assert_eq!(f.args, [".", "10.0.0.1"]);
    assert_eq!(f.block[0].args, ["sequential"]);
    for (bad, want) in [
        (".:53 {\n  errors\n", "line 1: this block is never closed"),
        ("}\n", "line 1: `}` closes nothing"),
        (".:53\n", "needs `{ … }`"),
        (
            ".:53 {\n  forward . {$UPSTREAM}\n}\n",
            "line 2: {$UPSTREAM}: environment placeholders",
        ),
        (
            ".:53 {\n  log \"x\n}\n",
            "line 2: unterminated quoted string",
        ),
    ] {
        let e = parse(bad).unwrap_err().to_string();
        assert!(e.contains(want), "{bad:?}: {e}");
    }
}

/// Every Corefile in `tests/corefiles` says what it must give in its first line:
/// `# expect: ok` or `# expect-error: TEXT`.
#[test]
fn the_corefile_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corefiles");
    #[allow(clippy::disallowed_methods)] // reading the corpus is the test's own I/O
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 8, "{files:?}");
    for f in files {
        #[allow(clippy::disallowed_methods)]
        let text = std::fs::read_to_string(&f).unwrap();
        let first = text.lines().next().unwrap();
        let got = parse(&text).and_then(|b| interpret(&b));
        if first == "# expect: ok" {
            assert!(got.is_ok(), "{}: {got:?}", f.display());
        } else {
            let want = first.strip_prefix("# expect-error: ").unwrap();
            let e = got.expect_err(&f.display().to_string()).to_string();
            assert!(e.contains(want), "{}: {e}", f.display());
        }
    }
}
