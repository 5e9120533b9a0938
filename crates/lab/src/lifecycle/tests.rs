use std::time::Duration;

use twill_model::{Container, Pod, PodPhase, RestartPolicy};

use super::*;

fn pod_with(annotation: Option<&str>) -> Pod {
    let mut p = Pod {
        key: twill_model::ObjectKey::new("default", "web-1"),
        ..Default::default()
    };
    if let Some(v) = annotation {
        p.annotations.insert(RUNTIME_ANNOTATION.into(), v.into());
    }
    p
}

fn container(image: &str, command: &[&str], args: &[&str]) -> Container {
    Container {
        name: "c".into(),
        image: image.into(),
        command: command.iter().map(|s| s.to_string()).collect(),
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
fn image_names_drop_registry_tag_and_digest() {
    assert_eq!(image_name("nicolaka/netshoot:v0.13"), "netshoot");
    assert_eq!(
        image_name("registry.k8s.io/e2e-test-images/jessie-dnsutils:1.3"),
        "jessie-dnsutils"
    );
    assert_eq!(image_name("python@sha256:abcd"), "python");
    assert_eq!(image_name("localhost:5000/app:1"), "app");
    assert_eq!(image_name("busybox"), "busybox");
}

#[test]
fn an_application_image_gets_the_responder_whatever_its_command() {
    // The hello-world walkthrough: a Java command that exists on some hosts.
    let c = container(
        "myorg/spring-hello:1.0",
        &["java", "-jar", "lib/spring-boot-1.0-SNAPSHOT.jar"],
        &[],
    );
    let r = runtime_for(&pod_with(None), &c);
    assert_eq!(r.kind(), "responder");
    assert!(
        r.reason().contains("myorg/spring-hello:1.0"),
        "{}",
        r.reason()
    );
    assert_eq!(
        runtime_for(&pod_with(None), &container("nginx:1.27", &[], &[])).kind(),
        "responder"
    );
    // A name that merely ends in a tool's name is not that tool.
    assert_eq!(
        runtime_for(&pod_with(None), &container("mycurl", &["curl"], &[])).kind(),
        "responder"
    );
}

#[test]
fn a_tool_image_runs_its_command_or_its_default() {
    let r = runtime_for(
        &pod_with(None),
        &container("busybox:1.36", &["sleep", "3600"], &[]),
    );
    assert_eq!(
        r,
        Runtime::Command {
            argv: vec!["sleep".into(), "3600".into()],
            reason: "busybox is a tool image: its command runs with the host's programs".into(),
        }
    );
    // args without command replace the default arguments.
    let r = runtime_for(&pod_with(None), &container("alpine", &[], &["echo", "hi"]));
    assert!(matches!(r, Runtime::Command { ref argv, .. } if argv == &["echo", "hi"]));
    // Neither: the image's default command.
    let r = runtime_for(
        &pod_with(None),
        &container(
            "registry.k8s.io/e2e-test-images/jessie-dnsutils:1.3",
            &[],
            &[],
        ),
    );
    assert!(
        matches!(r, Runtime::Command { ref argv, .. } if argv == &["sh"]),
        "{r:?}"
    );
    let r = runtime_for(
        &pod_with(None),
        &container("python:3.12-slim", &["python3", "-m", "http.server"], &[]),
    );
    assert_eq!(r.kind(), "command");
}

#[test]
fn the_annotation_overrides_the_image() {
    let c = container("busybox", &["sleep", "1"], &[]);
    let r = runtime_for(&pod_with(Some("responder")), &c);
    assert_eq!(r.kind(), "responder");
    assert!(r.reason().contains("annotation"));
    let c = container("myorg/app", &["./server"], &[]);
    let r = runtime_for(&pod_with(Some("command")), &c);
    assert!(matches!(r, Runtime::Command { ref argv, .. } if argv == &["./server"]));
    // Forced to command with nothing to run: the responder, and the reason says why.
    let r = runtime_for(
        &pod_with(Some("command")),
        &container("myorg/app", &[], &[]),
    );
    assert_eq!(r.kind(), "responder");
    assert!(
        r.reason().contains("no known default command"),
        "{}",
        r.reason()
    );
    // A value that is neither: the image decides, and the reason names the value.
    let r = runtime_for(
        &pod_with(Some("shell")),
        &container("busybox", &["true"], &[]),
    );
    assert_eq!(r.kind(), "command");
    assert!(r.reason().contains("\"shell\""), "{}", r.reason());
}

#[test]
fn backoff_is_immediate_then_doubles_from_the_base_to_thirty_times_it() {
    let b = Backoff::KUBELET;
    let secs: Vec<u64> = (1..=8).map(|n| b.delay(n).as_secs()).collect();
    assert_eq!(secs, [0, 10, 20, 40, 80, 160, 300, 300]);
    assert_eq!(b.reset_after(), Duration::from_secs(600));
    let short = Backoff::with_base(Duration::from_millis(200));
    assert_eq!(short.delay(3), Duration::from_millis(400));
    assert_eq!(short.delay(40), Duration::from_secs(6));
}

fn running(now_ms: u64) -> ContainerStatus {
    let mut c = ContainerStatus::new(
        "app",
        Runtime::Command {
            argv: vec!["false".into()],
            reason: String::new(),
        },
    );
    container_started(&mut c, 42, now_ms);
    c
}

#[test]
fn a_crashing_container_under_always_goes_error_then_crash_loop_back_off() {
    let b = Backoff::KUBELET;
    let mut c = running(1_000_000);
    assert_eq!(c.restart_count, 0, "the first start is not a restart");
    // First crash: restarted at once, shown as Error meanwhile.
    container_exited(
        &mut c,
        Exit::code(1),
        RestartPolicy::Always,
        &b,
        "p",
        1_002_000,
    );
    assert_eq!(
        status_text("Running", false, std::slice::from_ref(&c)),
        "Error"
    );
    assert!(c.restart_due(1_002_000));
    container_started(&mut c, 43, 1_002_100);
    assert_eq!(c.restart_count, 1);
    // Second crash: 10 s of back-off.
    container_exited(
        &mut c,
        Exit::code(1),
        RestartPolicy::Always,
        &b,
        "p",
        1_003_000,
    );
    assert_eq!(
        status_text("Running", false, std::slice::from_ref(&c)),
        "CrashLoopBackOff"
    );
    assert!(!c.restart_due(1_012_999));
    assert!(c.restart_due(1_013_000));
    assert!(
        matches!(&c.last_state, Some(State::Terminated { exit_code: 1, reason, .. }) if reason == "Error")
    );
    match &c.state {
        State::Waiting { message, .. } => assert!(message.contains("back-off 10s"), "{message}"),
        s => panic!("{s:?}"),
    }
    container_started(&mut c, 44, 1_013_000);
    assert_eq!(
        restarts_text(std::slice::from_ref(&c), 1_025),
        "2 (12s ago)"
    );
    assert_eq!(finished_phase(std::slice::from_ref(&c)), None);
}

#[test]
fn a_container_that_ran_long_enough_starts_its_back_off_over() {
    let b = Backoff::KUBELET;
    let mut c = running(0);
    for t in [1_000, 2_000, 30_000] {
        container_exited(&mut c, Exit::code(2), RestartPolicy::Always, &b, "p", t);
        container_started(&mut c, 1, t);
    }
    assert_eq!(c.crashes, 3);
    // Ran 10 minutes: the next crash counts as the first again (immediate restart).
    container_exited(
        &mut c,
        Exit::code(2),
        RestartPolicy::Always,
        &b,
        "p",
        30_000 + 600_000,
    );
    assert_eq!(c.crashes, 1);
    assert!(c.restart_due(630_000));
}

#[test]
fn never_and_on_failure_end_the_pod_with_kubectls_words() {
    let b = Backoff::KUBELET;
    let mut c = running(0);
    container_exited(&mut c, Exit::code(3), RestartPolicy::Never, &b, "p", 5_000);
    assert_eq!(
        status_text("Failed", false, std::slice::from_ref(&c)),
        "Error"
    );
    assert_eq!(
        finished_phase(std::slice::from_ref(&c)),
        Some(PodPhase::Failed)
    );
    let mut c = running(0);
    container_exited(
        &mut c,
        Exit::code(0),
        RestartPolicy::OnFailure,
        &b,
        "p",
        5_000,
    );
    assert_eq!(
        status_text("Succeeded", false, std::slice::from_ref(&c)),
        "Completed"
    );
    assert_eq!(
        finished_phase(std::slice::from_ref(&c)),
        Some(PodPhase::Succeeded)
    );
    // OnFailure restarts a failure.
    let mut c = running(0);
    container_exited(
        &mut c,
        Exit::code(1),
        RestartPolicy::OnFailure,
        &b,
        "p",
        5_000,
    );
    assert!(c.restart_due(5_000));
    assert_eq!(finished_phase(std::slice::from_ref(&c)), None);
    // A missing program is a StartError, restarted like a crash.
    let mut c = ContainerStatus::new(
        "x",
        Runtime::Responder {
            reason: String::new(),
        },
    );
    container_exited(
        &mut c,
        Exit {
            code: 128,
            reason: Some("StartError"),
            message: "exec: \"java\": executable file not found in $PATH",
        },
        RestartPolicy::Always,
        &b,
        "p",
        1_000,
    );
    assert_eq!(
        status_text("Running", false, std::slice::from_ref(&c)),
        "StartError"
    );
    assert_eq!(
        status_text("Running", true, std::slice::from_ref(&c)),
        "Terminating"
    );
}

#[test]
fn repeated_events_count_up_and_times_read_as_rfc3339() {
    let mut ev = Vec::new();
    record_event(&mut ev, 10, "Warning", "BackOff", "kubelet", "x".into());
    record_event(&mut ev, 20, "Normal", "Started", "kubelet", "y".into());
    record_event(&mut ev, 30, "Warning", "BackOff", "kubelet", "x".into());
    assert_eq!(ev.len(), 2);
    assert_eq!((ev[0].count, ev[0].first, ev[0].last), (3 - 1, 10, 30));
    for i in 0..40 {
        record_event(&mut ev, 40 + i, "Normal", "R", "kubelet", format!("{i}"));
    }
    assert_eq!(ev.len(), 30);
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(rfc3339(1_796_670_303), "2026-12-07T19:05:03Z");
}
