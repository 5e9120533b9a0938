//! The file shell: folders with symlink loops, inputs over the size cap.
#![allow(clippy::disallowed_methods)] // A test of the file shell writes its own files.

use std::io::Cursor;

use twill_manifest::files::{MAX_INPUT_BYTES, load_paths, read_capped};

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("twill-manifest-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_symlink_loop_in_a_folder_is_walked_once_and_reported() {
    let d = scratch("loop");
    std::fs::create_dir(d.join("sub")).unwrap();
    std::fs::write(
        d.join("sub/svc.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec: {ports: [{port: 80}]}\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("..", d.join("sub/back")).unwrap();
    let r = load_paths(&[d.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&d);
    assert_eq!(r.objects.len(), 1, "{:?}", r.problems);
    let text: Vec<String> = r.problems.iter().map(ToString::to_string).collect();
    assert_eq!(text.len(), 1, "{text:?}");
    assert!(
        text[0].starts_with("warning: ") && text[0].contains("symlink loop"),
        "{text:?}"
    );
}

#[test]
fn input_over_the_cap_is_refused_without_reading_it_all() {
    // An endless reader: the cap must stop it.
    let endless = std::io::repeat(b'a');
    let p = read_capped("/dev/zero", endless).unwrap_err();
    assert!(p.to_string().contains("larger than 256 MiB"), "{p}");
    let ok = read_capped("small", Cursor::new(b"a: b\n".to_vec())).unwrap();
    assert_eq!(ok, "a: b\n");
    assert_eq!(MAX_INPUT_BYTES, 256 << 20);
}
