use std::path::PathBuf;

use twill_model::ClusterState;

use super::{ManifestSource, Update};

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!(
            "twill-agent-src-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        // A different length is enough for the stamp; make the mtime differ too.
        let t = std::time::SystemTime::now() + std::time::Duration::from_secs(rand_secs());
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(t).unwrap();
        p
    }
}

fn rand_secs() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn svc(name: &str, port: u32) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  clusterIP: 10.96.0.{port}\n  ports: [{{port: {port}}}]\n"
    )
}

/// Apply a scan's events; return the problems it reported.
fn feed(state: &mut ClusterState, updates: Vec<Update>) -> Vec<String> {
    let mut problems = Vec::new();
    for u in updates {
        match u {
            Update::Events(es) => {
                for e in es {
                    state.apply(e);
                }
            }
            Update::Report { problems: p, .. } => problems.extend(p),
            Update::Written(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    problems
}

fn names(state: &ClusterState) -> Vec<String> {
    state.services.keys().map(|k| k.to_string()).collect()
}

#[test]
fn an_invalid_or_binary_edit_keeps_the_last_good_objects_and_names_the_problem() {
    let d = Dir::new("invalid");
    let f = d.write(
        "svc.yaml",
        &format!("{}---\n{}", svc("a", 80), svc("b", 81)),
    );
    let mut src = ManifestSource::new(&[f.display().to_string()]);
    let mut state = ClusterState::default();
    assert!(feed(&mut state, src.scan()).is_empty());
    assert!(state.synced);
    assert_eq!(names(&state), ["shop/a", "shop/b"]);

    d.write(
        "svc.yaml",
        &format!(
            "{}---\n{}",
            svc("a", 81),
            "kind: Service\nmetadata: {name: b, namespace: shop}\nspec:\n  ports: [{port: nope}]\n"
        ),
    );
    let problems = feed(&mut state, src.scan());
    assert_eq!(
        names(&state),
        ["shop/a", "shop/b"],
        "b keeps its last good version"
    );
    let a = &state.services[&twill_model::ObjectKey::new("shop", "a")];
    assert_eq!(a.ports[0].port, 81, "the valid object's edit applies");
    assert!(
        problems
            .iter()
            .any(|p| p.contains("svc.yaml") && p.contains("Service shop/b")),
        "{problems:?}"
    );

    d.write("svc.yaml", "\u{0}\u{1}binary\u{ff}");
    std::fs::write(&f, [0xffu8, 0xfe, 0x00, 0x12]).unwrap();
    let problems = feed(&mut state, src.scan());
    assert_eq!(names(&state), ["shop/a", "shop/b"], "kept after binary");
    assert!(!problems.is_empty());

    d.write("svc.yaml", &svc("a", 80));
    let problems = feed(&mut state, src.scan());
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(
        names(&state),
        ["shop/a"],
        "a good edit deletes what it dropped"
    );
}

#[test]
fn a_named_file_that_disappears_keeps_its_objects() {
    let d = Dir::new("gone");
    let f = d.write("svc.yaml", &svc("a", 80));
    let mut src = ManifestSource::new(&[f.display().to_string()]);
    let mut state = ClusterState::default();
    feed(&mut state, src.scan());
    std::fs::remove_file(&f).unwrap();
    let problems = feed(&mut state, src.scan());
    assert_eq!(names(&state), ["shop/a"]);
    assert!(
        problems.iter().any(|p| p.contains("missing")),
        "{problems:?}"
    );
}

#[test]
fn a_folder_is_followed_file_by_file() {
    let d = Dir::new("folder");
    d.write("a.yaml", &svc("a", 80));
    let mut src = ManifestSource::new(&[d.0.display().to_string()]);
    let mut state = ClusterState::default();
    feed(&mut state, src.scan());
    assert_eq!(names(&state), ["shop/a"]);
    d.write("b.yaml", &svc("b", 81));
    feed(&mut state, src.scan());
    assert_eq!(
        names(&state),
        ["shop/a", "shop/b"],
        "a new file inside the folder"
    );
    std::fs::remove_file(d.0.join("a.yaml")).unwrap();
    feed(&mut state, src.scan());
    assert_eq!(
        names(&state),
        ["shop/b"],
        "a removed file takes its objects"
    );
    assert!(src.scan().is_empty(), "nothing changed, nothing sent");
}

#[test]
fn synced_waits_until_every_named_file_exists() {
    let d = Dir::new("later");
    let f = d.0.join("state.yaml");
    let mut src = ManifestSource::new(&[f.display().to_string()]);
    let mut state = ClusterState::default();
    feed(&mut state, src.scan());
    assert!(
        !state.synced,
        "a missing state file is not an empty cluster"
    );
    d.write("state.yaml", &svc("a", 80));
    feed(&mut state, src.scan());
    assert!(state.synced);
    assert_eq!(names(&state), ["shop/a"]);
}

#[test]
fn a_file_with_one_bad_object_gives_its_valid_objects() {
    let d = Dir::new("partial");
    let f = d.write(
        "svc.yaml",
        &format!(
            "{}---\nkind: Service\nmetadata: {{name: b}}\nspec: {{ports: [{{port: -1}}]}}\n",
            svc("a", 80)
        ),
    );
    let mut src = ManifestSource::new(&[f.display().to_string()]);
    let mut state = ClusterState::default();
    let problems = feed(&mut state, src.scan());
    assert_eq!(names(&state), ["shop/a"]);
    assert!(!problems.is_empty());
}

#[test]
fn an_edit_of_one_document_sends_only_that_documents_objects() {
    let d = Dir::new("docs");
    let many: Vec<String> = (0..50).map(|i| svc(&format!("s{i}"), 100 + i)).collect();
    let f = d.write("svc.yaml", &many.join("---\n"));
    let mut src = ManifestSource::new(&[f.display().to_string()]);
    let mut state = ClusterState::default();
    feed(&mut state, src.scan());
    assert_eq!(state.services.len(), 50);
    let mut edited = many.clone();
    edited[7] = svc("s7", 200);
    edited.remove(9);
    d.write("svc.yaml", &edited.join("---\n"));
    let updates = src.scan();
    let events: Vec<String> = updates
        .iter()
        .flat_map(|u| match u {
            Update::Events(es) => es.iter().map(|e| format!("{e:?}")).collect(),
            _ => vec![],
        })
        .collect();
    assert_eq!(events.len(), 2, "one Applied, one Deleted: {events:#?}");
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("Applied") && e.contains("s7"))
    );
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("Deleted") && e.contains("s9"))
    );
    feed(&mut state, updates);
    assert_eq!(state.services.len(), 49);
}
