//! The kubeconfig path end to end: a loopback HTTP server answering from the recording,
//! a kubeconfig naming it, and the source built from that file (async and blocking).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use kube::client::Body;
use twill_kube_source::{Error, SourceConfig, client, spawn};
use twill_model::{ClusterState, ObjectEvent};

use crate::replay::{
    assert_final_state_matches_manifests, fast, initial_lists_state, load, run_client,
};
use crate::support::replay::Replay;

/// Serve `replay` over HTTP/1.1 on a loopback port.
async fn serve(replay: Replay) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let replay = replay.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let replay = replay.clone();
                    async move {
                        let req = req.map(|_| Body::from(Vec::new()));
                        Ok::<_, Infallible>(replay.serve(req).await)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A kubeconfig file for `server` with a bearer token, removed on drop.
struct Kubeconfig(PathBuf);

impl Kubeconfig {
    fn new(server: SocketAddr) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "twill-kube-source-{}-{}.kubeconfig",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let text = format!(
            "apiVersion: v1\nkind: Config\n\
             clusters:\n- name: replay\n  cluster:\n    server: http://{server}\n\
             users:\n- name: agent\n  user:\n    token: replay-token\n\
             contexts:\n- name: replay\n  context:\n    cluster: replay\n    user: agent\n\
             current-context: replay\n"
        );
        std::fs::write(&path, text).unwrap();
        Kubeconfig(path)
    }
}

impl Drop for Kubeconfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test]
async fn a_source_from_a_kubeconfig_talks_to_its_server_with_its_credentials() {
    let recording = load("node-agent.json");
    let replay = Replay::load(&recording);
    let addr = serve(replay.clone()).await;
    let kc = Kubeconfig::new(addr);
    let client = client(Some(&kc.0)).await.expect("client from kubeconfig");
    let run = run_client(
        replay,
        client,
        &fast(SourceConfig::node_agent().local_pods_only("node-a")),
    )
    .await;
    let calls = run.replay.calls();
    assert!(!calls.is_empty());
    for c in &calls {
        assert_eq!(
            c.authorization.as_deref(),
            Some("Bearer replay-token"),
            "{c:?}"
        );
    }
    assert_final_state_matches_manifests(&run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_hands_the_synced_state_to_a_blocking_consumer() {
    let recording = load("node-agent.json");
    let replay = Replay::load(&recording);
    let addr = serve(replay.clone()).await;
    let kc = Kubeconfig::new(addr);
    let rx = spawn(
        Some(kc.0.clone()),
        fast(SourceConfig::node_agent().local_pods_only("node-a")),
    )
    .unwrap();
    let state = tokio::task::spawn_blocking(move || {
        let mut state = ClusterState::default();
        for item in rx {
            match item {
                Ok(e) => {
                    let synced = e == ObjectEvent::Synced;
                    state.apply(e);
                    if synced {
                        return state;
                    }
                }
                Err(e) => assert!(e.is_transient(), "{e}"),
            }
        }
        panic!("the channel closed before sync");
    })
    .await
    .unwrap();
    assert_eq!(state, initial_lists_state(&recording));
}

#[test]
fn a_missing_kubeconfig_is_reported_with_its_path_and_ends_the_stream() {
    let path = PathBuf::from("/nonexistent/twill/kubeconfig");
    let rx = spawn(
        Some(path),
        SourceConfig::node_agent().local_pods_only("node-a"),
    )
    .unwrap();
    let items: Vec<_> = rx.into_iter().collect();
    assert_eq!(items.len(), 1, "{items:?}");
    match &items[0] {
        Err(e @ Error::Kubeconfig { .. }) => {
            assert!(!e.is_transient());
            assert!(
                e.to_string().contains("/nonexistent/twill/kubeconfig"),
                "{e}"
            );
        }
        other => panic!("expected a kubeconfig error, got {other:?}"),
    }
}
