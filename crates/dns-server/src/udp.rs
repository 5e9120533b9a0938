//! UDP workers: one `SO_REUSEPORT` socket and thread per worker (the kernel spreads
//! clients across them), each receiving and sending in batches with `recvmmsg` and
//! `sendmmsg`. The syscalls are called through `libc` by hand: neither std nor socket2
//! offers the batched forms, and batching is most of the win at high query rates.
//!
//! Each worker keeps a wire cache: request bytes (id aside) → response bytes, valid for
//! one snapshot generation. Cluster answers are deterministic for a snapshot, so a hit
//! only patches the id. Queries that need the upstream become tasks on the forwarding
//! runtime, which sends their answers from there.
//! Metrics for hits are summed per batch and flushed once, so the per-query path touches
//! no shared cache line.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::engine::{Engine, Step, Transport};
use crate::metrics::{RCODES, Source, TYPES, rcode_index};

const BATCH: usize = 32;
const BUF: usize = 4096;

type HitCounts = [[[u64; RCODES.len()]; TYPES.len()]; 2];

/// A batch's wire-cache hits by size bucket: `[request, response]` × bucket, and sums.
#[derive(Default)]
struct HitSizes {
    buckets: [[u64; crate::metrics::SIZE_BOUNDS.len() + 1]; 2],
    sums: [u64; 2],
}

/// Bind one `SO_REUSEPORT` UDP socket.
pub fn bind_reuseport(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    // Bursts at peak rate must not overflow the queue while a batch is being answered.
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    s.bind(&SockAddr::from(addr))?;
    Ok(s.into())
}

struct WireEntry {
    bytes: Vec<u8>,
    qtype: usize,
    rcode: usize,
}

fn zeroed<T>() -> T {
    // SAFETY: only used for libc's plain-data structs (mmsghdr, sockaddr_storage), for
    // which all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Run one worker until `stop`.
pub fn run_worker(
    socket: Arc<UdpSocket>,
    engine: Arc<Engine>,
    forwarding: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
    cache_entries: usize,
) {
    let fd = socket.as_raw_fd();
    let mut bufs = vec![[0u8; BUF]; BATCH];
    let mut addrs: Vec<libc::sockaddr_storage> = (0..BATCH).map(|_| zeroed()).collect();
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: BUF,
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| zeroed()).collect();
    for i in 0..BATCH {
        msgs[i].msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
        msgs[i].msg_hdr.msg_iov = &mut iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    let mut out_bufs: Vec<Vec<u8>> = vec![Vec::new(); BATCH];
    let mut out_iovs: Vec<libc::iovec> = (0..BATCH)
        .map(|_| libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        })
        .collect();
    let mut out_msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| zeroed()).collect();
    let mut wire: HashMap<Vec<u8>, WireEntry> = HashMap::new();
    let mut generation = engine.generation();
    let mut hits: HitCounts = [[[0; RCODES.len()]; TYPES.len()]; 2];
    let mut hit_sizes = HitSizes::default();
    let [req_hist, resp_hist] = engine.metrics().size_histograms(false);

    while !stop.load(Ordering::Relaxed) {
        for m in msgs.iter_mut() {
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            m.msg_hdr.msg_flags = 0;
            m.msg_len = 0;
        }
        // SAFETY: msgs holds BATCH headers whose name and iovec pointers refer to buffers
        // owned by this frame; the kernel writes at most iov_len and msg_namelen bytes.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            continue; // the read timeout (to notice `stop`) or EINTR
        }
        let batch_start = Instant::now();
        let now_gen = engine.generation();
        if now_gen != generation || wire.len() >= cache_entries.max(1) {
            wire.clear();
            generation = now_gen;
        }
        let mut count = 0;
        for i in 0..n as usize {
            let len = msgs[i].msg_len as usize;
            if msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                continue;
            }
            let req = &bufs[i][..len];
            let v6 = i32::from(addrs[i].ss_family) == libc::AF_INET6;
            let reply = match (len >= 12).then(|| wire.get(&req[2..])).flatten() {
                Some(hit) => {
                    let mut b = hit.bytes.clone();
                    b[0] = req[0];
                    b[1] = req[1];
                    hits[usize::from(v6)][hit.qtype][hit.rcode] += 1;
                    hit_sizes.buckets[0][req_hist.bucket(len as f64)] += 1;
                    hit_sizes.buckets[1][resp_hist.bucket(b.len() as f64)] += 1;
                    hit_sizes.sums[0] += len as u64;
                    hit_sizes.sums[1] += b.len() as u64;
                    Some(b)
                }
                None => {
                    // A panic must cost one query, never the worker.
                    let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        engine.step(req, Transport::Udp, v6)
                    }))
                    .unwrap_or_else(|_| {
                        engine.metrics().panics.inc();
                        Step::Drop
                    });
                    match step {
                        Step::Reply {
                            bytes,
                            cacheable,
                            qtype,
                        } => {
                            if cacheable && cache_entries > 0 && len >= 12 && bytes.len() >= 12 {
                                let rcode = rcode_index(ResponseCode::from_low(bytes[3] & 0x0f));
                                wire.insert(
                                    req[2..].to_vec(),
                                    WireEntry {
                                        bytes: bytes.clone(),
                                        qtype,
                                        rcode,
                                    },
                                );
                            }
                            Some(bytes)
                        }
                        Step::Drop => None,
                        Step::Upstream(pending) => {
                            if let Some(peer) = to_socket_addr(&addrs[i]) {
                                let (engine, socket) = (engine.clone(), socket.clone());
                                forwarding.spawn(async move {
                                    if let Some(bytes) = engine.complete(pending).await {
                                        let _ = socket.send_to(&bytes, peer);
                                    }
                                });
                            }
                            None
                        }
                    }
                }
            };
            let Some(bytes) = reply else { continue };
            out_bufs[count] = bytes;
            out_iovs[count] = libc::iovec {
                iov_base: out_bufs[count].as_mut_ptr().cast(),
                iov_len: out_bufs[count].len(),
            };
            let om = &mut out_msgs[count];
            om.msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            om.msg_hdr.msg_namelen = msgs[i].msg_hdr.msg_namelen;
            om.msg_hdr.msg_iov = &mut out_iovs[count];
            om.msg_hdr.msg_iovlen = 1;
            count += 1;
        }
        flush_hits(&engine, &mut hits, batch_start);
        flush_sizes(&mut hit_sizes, [req_hist, resp_hist]);
        let mut sent = 0;
        while sent < count {
            // SAFETY: out_msgs[sent..count] point at live buffers and addresses above.
            let r = unsafe {
                libc::sendmmsg(fd, out_msgs[sent..].as_mut_ptr(), (count - sent) as u32, 0)
            };
            if r <= 0 {
                break;
            }
            sent += r as usize;
        }
    }
}

/// Add a batch's hit sizes to the shared histograms, once per bucket that has any.
fn flush_sizes(sizes: &mut HitSizes, hists: [&crate::metrics::AtomicHistogram; 2]) {
    for (k, h) in hists.into_iter().enumerate() {
        let mut sum = std::mem::take(&mut sizes.sums[k]) as f64;
        for (i, n) in sizes.buckets[k].iter_mut().enumerate() {
            if *n > 0 {
                // The whole sum rides on the first bucket written; only the total matters.
                h.add_to_bucket(i, *n, std::mem::take(&mut sum));
                *n = 0;
            }
        }
    }
}

/// Count a batch's wire-cache hits in the shared metrics, once per label set.
fn flush_hits(engine: &Engine, hits: &mut HitCounts, start: Instant) {
    let seconds = start.elapsed().as_secs_f64();
    for (v6, by_type) in hits.iter_mut().enumerate() {
        for (qtype, by_rcode) in by_type.iter_mut().enumerate() {
            for (rcode, n) in by_rcode.iter_mut().enumerate() {
                if *n > 0 {
                    engine.metrics().observe_n(
                        false,
                        v6 == 1,
                        qtype,
                        rcode,
                        Source::Kubernetes,
                        seconds,
                        *n,
                    );
                    *n = 0;
                }
            }
        }
    }
}

/// The peer address the kernel wrote into a `sockaddr_storage`.
fn to_socket_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it can contain.
            let a: &libc::sockaddr_in = unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            let port = u16::from_be(a.sin6_port);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                port,
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}
