//! The built-in responder: what runs in a lab pod whose image cannot run here (nginx,
//! serve_hostname, a `java -jar`). It serves every declared container port:
//! HTTP (or a plain line for non-HTTP TCP clients) answering with the pod's name,
//! namespace, address and the client address it saw, and a UDP echo of the same line.
//! The answer starts with the pod name, like `serve_hostname`, so `curl` loops read
//! naturally.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use twill_model::Protocol;

fn line(pod: &str, namespace: &str, local: SocketAddr, peer: SocketAddr) -> String {
    format!(
        "{pod} namespace={namespace} ip={} client={peer}\n",
        local.ip()
    )
}

fn serve_tcp(conn: TcpStream, pod: &str, namespace: &str) -> std::io::Result<()> {
    let (local, peer) = (conn.local_addr()?, conn.peer_addr()?);
    let body = line(pod, namespace, local, peer);
    let mut conn = conn;
    conn.set_read_timeout(Some(Duration::from_millis(300)))?;
    let mut buf = [0u8; 4096];
    let mut req = Vec::new();
    // Read the request head if the client sends one; a silent client gets the line.
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 64 * 1024 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let is_http = ["GET ", "HEAD ", "POST ", "PUT "]
        .iter()
        .any(|m| req.starts_with(m.as_bytes()));
    if is_http {
        let head = req.starts_with(b"HEAD ");
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\nX-Twill-Responder: {pod}\r\n\r\n{}",
            body.len(),
            if head { "" } else { &body }
        );
        conn.write_all(resp.as_bytes())
    } else {
        conn.write_all(body.as_bytes())
    }
}

/// Serve `ports` until killed. Binding failures are returned at once.
pub fn run(pod: &str, namespace: &str, ports: &[(u16, Protocol)]) -> std::io::Result<()> {
    let mut threads = Vec::new();
    for &(port, proto) in ports {
        let (pod, namespace) = (pod.to_string(), namespace.to_string());
        match proto {
            Protocol::Tcp => {
                let l = TcpListener::bind(("0.0.0.0", port))?;
                threads.push(std::thread::spawn(move || {
                    for conn in l.incoming().flatten() {
                        let (pod, namespace) = (pod.clone(), namespace.clone());
                        std::thread::spawn(move || {
                            let _ = serve_tcp(conn, &pod, &namespace);
                        });
                    }
                }));
            }
            Protocol::Udp => {
                let s = UdpSocket::bind(("0.0.0.0", port))?;
                threads.push(std::thread::spawn(move || {
                    let mut buf = [0u8; 2048];
                    while let Ok((_, peer)) = s.recv_from(&mut buf) {
                        if let Ok(local) = s.local_addr() {
                            let _ = s.send_to(line(&pod, &namespace, local, peer).as_bytes(), peer);
                        }
                    }
                }));
            }
            // No SCTP sockets in std; such ports are declared but not served.
            Protocol::Sctp => {}
        }
    }
    if threads.is_empty() {
        // Nothing to serve: stay up like a sleeping container.
        loop {
            std::thread::park();
        }
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// `9376/TCP,53/UDP` → ports.
pub fn parse_ports(s: &str) -> Result<Vec<(u16, Protocol)>, String> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (port, proto) = p.split_once('/').unwrap_or((p, "TCP"));
            let port: u16 = port.parse().map_err(|e| format!("{p}: {e}"))?;
            let proto = Protocol::parse(&proto.to_ascii_uppercase())
                .ok_or_else(|| format!("{p}: unknown protocol"))?;
            Ok((port, proto))
        })
        .collect()
}
