//! DNS over TCP (RFC 7766): two-byte length frames, several queries per connection,
//! an idle timeout. One thread per connection: TCP carries the rare truncated retries
//! and zone-transfer attempts, not the bulk of the traffic.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::engine::{Engine, Step, Transport};

/// Connections beyond this are closed at once.
const MAX_CONNECTIONS: usize = 512;
const IDLE: Duration = Duration::from_secs(10);

pub fn run_listener(
    listener: TcpListener,
    engine: Arc<Engine>,
    forwarding: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
) {
    let live = Arc::new(AtomicUsize::new(0));
    // Non-blocking accept with a short sleep lets the loop notice `stop`.
    let _ = listener.set_nonblocking(true);
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                if live.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                    continue;
                }
                let _ = stream.set_nonblocking(false);
                live.fetch_add(1, Ordering::Relaxed);
                let (engine, live, stop) = (engine.clone(), live.clone(), stop.clone());
                let forwarding = forwarding.clone();
                std::thread::spawn(move || {
                    serve(stream, &engine, &forwarding, &stop);
                    live.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => {
                tracing::warn!(error = %e, "tcp accept failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn serve(
    mut s: TcpStream,
    engine: &Engine,
    forwarding: &tokio::runtime::Handle,
    stop: &AtomicBool,
) {
    let _ = s.set_read_timeout(Some(IDLE));
    let _ = s.set_write_timeout(Some(IDLE));
    let _ = s.set_nodelay(true);
    let v6 = s.peer_addr().map(|a| a.is_ipv6()).unwrap_or(false);
    while !stop.load(Ordering::Relaxed) {
        let mut len = [0u8; 2];
        if s.read_exact(&mut len).is_err() {
            return;
        }
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if s.read_exact(&mut buf).is_err() {
            return;
        }
        let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            match engine.step(&buf, Transport::Tcp, v6) {
                Step::Reply { bytes, .. } => Some(bytes),
                // The connection's own thread waits; the exchange runs on the runtime.
                Step::Upstream(p) => forwarding.block_on(engine.complete(p)),
                Step::Drop => None,
            }
        }));
        let reply = match handled {
            Ok(Some(reply)) => reply,
            Ok(None) => continue,
            Err(_) => {
                engine.metrics().panics.inc();
                return;
            }
        };
        let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        if s.write_all(&framed).is_err() {
            return;
        }
    }
}
