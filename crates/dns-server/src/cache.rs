//! The response cache for forwarded answers (CoreDNS's `cache` plugin): separate
//! capacities for positive answers and denials, TTLs clamped to `[min, max]`, and TTLs
//! counted down on the way out.
//!
//! Cluster answers are not cached here: they are computed from the in-memory snapshot
//! faster than a cache lookup, and the UDP workers keep their own per-thread wire cache.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Record, RecordType};

use crate::metrics::Metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    pub success_capacity: usize,
    pub denial_capacity: usize,
    pub success_max_ttl: u32,
    pub denial_max_ttl: u32,
    pub min_ttl: u32,
}

impl Default for CacheConfig {
    /// CoreDNS's defaults (`cache` with no arguments).
    fn default() -> Self {
        CacheConfig {
            success_capacity: 9984,
            denial_capacity: 9984,
            success_max_ttl: 3600,
            denial_max_ttl: 1800,
            min_ttl: 5,
        }
    }
}

/// A cached upstream response.
#[derive(Debug, Clone)]
pub struct Entry {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub additional: Vec<Record>,
}

struct Stored {
    entry: Entry,
    stored: Instant,
    expires: Instant,
}

#[derive(Default)]
struct Shelf {
    map: HashMap<(String, u16), Stored>,
    order: VecDeque<(String, u16)>,
}

impl Shelf {
    fn insert(&mut self, key: (String, u16), value: Stored, capacity: usize) {
        if self.map.insert(key.clone(), value).is_none() {
            self.order.push_back(key);
        }
        while self.map.len() > capacity {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.map.remove(&old);
        }
    }
}

pub struct Cache {
    config: CacheConfig,
    success: Mutex<Shelf>,
    denial: Mutex<Shelf>,
}

fn key(qname: &str, qtype: RecordType) -> (String, u16) {
    (qname.to_ascii_lowercase(), u16::from(qtype))
}

impl Cache {
    pub fn new(config: CacheConfig) -> Self {
        Cache {
            config,
            success: Mutex::default(),
            denial: Mutex::default(),
        }
    }

    /// A fresh entry with TTLs reduced by its age, counting hits and misses.
    pub fn get(
        &self,
        qname: &str,
        qtype: RecordType,
        now: Instant,
        metrics: &Metrics,
    ) -> Option<Entry> {
        let k = key(qname, qtype);
        for (shelf, hits) in [
            (&self.success, &metrics.cache_hits_success),
            (&self.denial, &metrics.cache_hits_denial),
        ] {
            let mut shelf = shelf.lock().unwrap_or_else(|e| e.into_inner());
            match shelf.map.get(&k) {
                Some(s) if s.expires > now => {
                    hits.inc();
                    let age = now.duration_since(s.stored).as_secs() as u32;
                    let mut e = s.entry.clone();
                    for r in e
                        .answers
                        .iter_mut()
                        .chain(&mut e.authority)
                        .chain(&mut e.additional)
                    {
                        r.ttl = r.ttl.saturating_sub(age);
                    }
                    return Some(e);
                }
                Some(_) => {
                    shelf.map.remove(&k);
                }
                None => {}
            }
        }
        metrics.cache_misses.inc();
        None
    }

    /// Store an upstream answer. SERVFAIL and other failures are not cached.
    pub fn put(
        &self,
        qname: &str,
        qtype: RecordType,
        entry: Entry,
        now: Instant,
        metrics: &Metrics,
    ) {
        let c = &self.config;
        let denial = entry.rcode == ResponseCode::NXDomain
            || (entry.rcode == ResponseCode::NoError && entry.answers.is_empty());
        if entry.rcode != ResponseCode::NoError && entry.rcode != ResponseCode::NXDomain {
            return;
        }
        let ttl = if denial {
            entry
                .authority
                .iter()
                .find(|r| r.record_type() == RecordType::SOA)
                .map(|r| r.ttl)
                .unwrap_or(c.min_ttl)
                .clamp(c.min_ttl, c.denial_max_ttl.max(c.min_ttl))
        } else {
            entry
                .answers
                .iter()
                .map(|r| r.ttl)
                .min()
                .unwrap_or(c.min_ttl)
                .clamp(c.min_ttl, c.success_max_ttl.max(c.min_ttl))
        };
        let stored = Stored {
            entry,
            stored: now,
            expires: now + Duration::from_secs(u64::from(ttl)),
        };
        let (shelf, cap, gauge) = if denial {
            (
                &self.denial,
                c.denial_capacity,
                &metrics.cache_entries_denial,
            )
        } else {
            (
                &self.success,
                c.success_capacity,
                &metrics.cache_entries_success,
            )
        };
        if cap == 0 {
            return;
        }
        let mut shelf = shelf.lock().unwrap_or_else(|e| e.into_inner());
        shelf.insert(key(qname, qtype), stored, cap);
        gauge.set(shelf.map.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData};

    use super::*;

    fn a(ttl: u32) -> Entry {
        let r = Record::from_rdata(
            Name::from_ascii("x.example.").unwrap(),
            ttl,
            RData::A(A(Ipv4Addr::LOCALHOST)),
        );
        Entry {
            rcode: ResponseCode::NoError,
            answers: vec![r],
            authority: vec![],
            additional: vec![],
        }
    }

    #[test]
    fn entries_expire_after_their_ttl_and_count_down_meanwhile() {
        let m = Metrics::new("test");
        let c = Cache::new(CacheConfig::default());
        let t0 = Instant::now();
        c.put("X.example.", RecordType::A, a(30), t0, &m);
        let hit = c
            .get(
                "x.example.",
                RecordType::A,
                t0 + Duration::from_secs(10),
                &m,
            )
            .expect("hit");
        assert_eq!(hit.answers[0].ttl, 20);
        assert!(
            c.get(
                "x.example.",
                RecordType::A,
                t0 + Duration::from_secs(31),
                &m
            )
            .is_none()
        );
        assert!(c.get("x.example.", RecordType::AAAA, t0, &m).is_none());
    }

    #[test]
    fn ttls_are_capped_and_capacity_evicts_the_oldest() {
        let m = Metrics::new("test");
        let c = Cache::new(CacheConfig {
            success_capacity: 1,
            success_max_ttl: 10,
            ..CacheConfig::default()
        });
        let t0 = Instant::now();
        c.put("a.example.", RecordType::A, a(86400), t0, &m);
        assert!(
            c.get(
                "a.example.",
                RecordType::A,
                t0 + Duration::from_secs(11),
                &m
            )
            .is_none()
        );
        c.put("a.example.", RecordType::A, a(60), t0, &m);
        c.put("b.example.", RecordType::A, a(60), t0, &m);
        assert!(c.get("a.example.", RecordType::A, t0, &m).is_none());
        assert!(c.get("b.example.", RecordType::A, t0, &m).is_some());
    }
}
