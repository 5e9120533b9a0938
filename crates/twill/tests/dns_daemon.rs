#![cfg(feature = "dns")]
//! `twill dns --corefile` as a daemon in a network namespace: kubeadm's Corefile (with
//! the namespace's port) serves the cluster's names, and SIGTERM starts the lameduck:
//! /ready fails at once, queries are still answered, then the process exits 0.

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ask(ns: &twill_testkit::netns::Netns, name: &str) -> Option<Message> {
    ns.run(|| {
        let s = UdpSocket::bind("127.0.0.1:0").ok()?;
        s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).ok()?, RecordType::A));
        s.send_to(&m.to_vec().ok()?, "127.0.0.1:1053").ok()?;
        let mut buf = [0u8; 1500];
        let n = s.recv(&mut buf).ok()?;
        Message::from_vec(&buf[..n]).ok()
    })
}

fn ready(ns: &twill_testkit::netns::Netns) -> String {
    ns.run(|| {
        let Ok(mut s) = TcpStream::connect("127.0.0.1:8181") else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = write!(
            s,
            "GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
}

#[test]
fn kubeadms_corefile_serves_and_sigterm_answers_through_the_lameduck_with_ready_failing() {
    let test = "kubeadms_corefile_serves_and_sigterm_answers_through_the_lameduck";
    if !twill_testkit::require_root(test) {
        return;
    }
    let ns = twill_testkit::netns::Netns::new("dnsld");
    assert!(ns.exec("ip", &["link", "set", "lo", "up"]).status.success());
    let dir = std::env::temp_dir().join(format!("twill-dns-daemon-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let corefile = dir.join("Corefile");
    // kubeadm's (from the Corefile corpus), with a port of its own and a 2 s lameduck.
    let kubeadm = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../dns/tests/corefiles/kubeadm.Corefile"),
    )
    .unwrap();
    assert!(kubeadm.contains(".:53 {") && kubeadm.contains("lameduck 5s"));
    std::fs::write(
        &corefile,
        kubeadm
            .replace(".:53 {", ".:1053 {")
            .replace("lameduck 5s", "lameduck 2s"),
    )
    .unwrap();
    let state = dir.join("cluster.yaml");
    std::fs::write(
        &state,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
         spec: {clusterIP: 10.96.0.20, ports: [{port: 80}]}\n",
    )
    .unwrap();
    let log = dir.join("dns.log");
    let child = ns
        .command(env!("CARGO_BIN_EXE_twill"))
        .args(["--log", "info", "dns", "--corefile"])
        .arg(&corefile)
        .arg("-f")
        .arg(&state)
        .args(["--upstream", "127.0.0.1:1"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut child = Killed(child);
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready(&ns).starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "never ready:\n{}", logged());
        std::thread::sleep(Duration::from_millis(100));
    }
    let m = ask(&ns, "web.shop.svc.cluster.local.").expect("an answer");
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers[0].ttl, 30, "the Corefile's ttl");
    assert!(
        logged().contains("reload: the Corefile is read at start"),
        "reload is said:\n{}",
        logged()
    );

    let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let stopped = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(1);
    while !ready(&ns).starts_with("HTTP/1.1 503") {
        assert!(
            Instant::now() < deadline,
            "/ready did not fail:\n{}",
            logged()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let during = ask(&ns, "web.shop.svc.cluster.local.").expect("answered in the lameduck");
    assert_eq!(during.metadata.response_code, ResponseCode::NoError);
    assert!(
        stopped.elapsed() < Duration::from_secs(2),
        "still in the lameduck"
    );
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(stopped.elapsed() < Duration::from_secs(10), "never exited");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}:\n{}", logged());
    assert!(
        stopped.elapsed() >= Duration::from_secs(2),
        "exited only after the lameduck ({:?})",
        stopped.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
