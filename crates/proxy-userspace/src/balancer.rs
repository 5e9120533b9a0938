//! Endpoint choice for one listener: round-robin, with ClientIP session affinity, after
//! upstream's userspace `roundrobin.go` (`LoadBalancerRR`). Pure: time comes in as an
//! argument, so the rules (affinity expiry, failover on a dead backend) are unit-tested.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
struct Sticky {
    endpoint: SocketAddr,
    last_used: Instant,
}

/// Round-robin state of one listener.
#[derive(Debug, Clone, Default)]
pub struct Balancer {
    endpoints: Vec<SocketAddr>,
    next: usize,
    affinity: Option<Duration>,
    sticky: BTreeMap<IpAddr, Sticky>,
}

impl Balancer {
    pub fn new(endpoints: Vec<SocketAddr>, affinity_timeout: Option<u32>) -> Self {
        Balancer {
            endpoints,
            next: 0,
            affinity: affinity_timeout.map(|s| Duration::from_secs(u64::from(s))),
            sticky: BTreeMap::new(),
        }
    }

    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }

    /// Replace the endpoint set. Round-robin restarts only when the set changed, and
    /// affinity entries pointing at a removed endpoint are forgotten (upstream resets
    /// affinity for the whole service; keeping the survivors is kinder to clients).
    pub fn update(&mut self, endpoints: Vec<SocketAddr>, affinity_timeout: Option<u32>) {
        let affinity = affinity_timeout.map(|s| Duration::from_secs(u64::from(s)));
        if affinity != self.affinity {
            self.sticky.clear();
        }
        self.affinity = affinity;
        if endpoints != self.endpoints {
            self.sticky.retain(|_, s| endpoints.contains(&s.endpoint));
            self.endpoints = endpoints;
            self.next = 0;
        }
    }

    /// The endpoint for a new connection from `client`, skipping `failed` (endpoints
    /// that refused this same connection a moment ago). `None` when none is left.
    pub fn pick(
        &mut self,
        client: IpAddr,
        now: Instant,
        failed: &[SocketAddr],
    ) -> Option<SocketAddr> {
        if let Some(timeout) = self.affinity
            && let Some(s) = self.sticky.get_mut(&client)
            && now.saturating_duration_since(s.last_used) < timeout
            && !failed.contains(&s.endpoint)
        {
            s.last_used = now;
            return Some(s.endpoint);
        }
        let n = self.endpoints.len();
        let ep = (0..n)
            .map(|i| self.endpoints[(self.next + i) % n])
            .find(|e| !failed.contains(e))?;
        let at = self.endpoints.iter().position(|e| *e == ep).unwrap_or(0);
        self.next = (at + 1) % n;
        if self.affinity.is_some() {
            self.sticky.insert(
                client,
                Sticky {
                    endpoint: ep,
                    last_used: now,
                },
            );
        }
        Some(ep)
    }

    /// Drop affinity entries idle longer than the timeout (called now and then).
    pub fn expire(&mut self, now: Instant) {
        if let Some(t) = self.affinity {
            self.sticky
                .retain(|_, s| now.saturating_duration_since(s.last_used) < t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 80)))
            .collect()
    }
    fn client(i: u8) -> IpAddr {
        IpAddr::from([192, 168, 7, i])
    }

    #[test]
    fn round_robin_cycles_through_every_endpoint_in_order() {
        let mut b = Balancer::new(eps(3), None);
        let t = Instant::now();
        let got: Vec<_> = (0..6).map(|_| b.pick(client(1), t, &[]).unwrap()).collect();
        let e = eps(3);
        assert_eq!(got, vec![e[0], e[1], e[2], e[0], e[1], e[2]]);
    }

    #[test]
    fn client_ip_affinity_sticks_until_the_timeout_passes() {
        let mut b = Balancer::new(eps(3), Some(10));
        let t = Instant::now();
        let first = b.pick(client(1), t, &[]).unwrap();
        for s in 1..5 {
            assert_eq!(
                b.pick(client(1), t + Duration::from_secs(s), &[]),
                Some(first)
            );
        }
        // Another client gets the next endpoint, not the sticky one.
        assert_ne!(b.pick(client(2), t, &[]), Some(first));
        // Idle for longer than the timeout: round-robin again.
        let later = t + Duration::from_secs(4 + 11);
        assert_ne!(b.pick(client(1), later, &[]), Some(first));
    }

    #[test]
    fn a_failed_endpoint_is_skipped_and_affinity_moves_away_from_it() {
        let mut b = Balancer::new(eps(2), Some(100));
        let t = Instant::now();
        let first = b.pick(client(1), t, &[]).unwrap();
        let second = b.pick(client(1), t, &[first]).unwrap();
        assert_ne!(first, second);
        assert_eq!(b.pick(client(1), t, &[]), Some(second));
        assert_eq!(b.pick(client(1), t, &eps(2)), None);
    }

    #[test]
    fn update_forgets_affinity_to_removed_endpoints_only() {
        let mut b = Balancer::new(eps(3), Some(100));
        let t = Instant::now();
        let a = b.pick(client(1), t, &[]).unwrap();
        let c = b.pick(client(2), t, &[]).unwrap();
        let kept: Vec<_> = eps(3).into_iter().filter(|e| *e != a).collect();
        b.update(kept.clone(), Some(100));
        assert_eq!(b.pick(client(2), t, &[]), Some(c));
        assert!(kept.contains(&b.pick(client(1), t, &[]).unwrap()));
        assert_eq!(b.endpoints(), kept.as_slice());
    }

    #[test]
    fn no_endpoints_means_no_pick() {
        let mut b = Balancer::new(Vec::new(), None);
        assert_eq!(b.pick(client(1), Instant::now(), &[]), None);
    }
}
