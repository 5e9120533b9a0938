//! One question → one answer, the way CoreDNS's kubernetes plugin decides it.
//!
//! The structure follows `handler.go` `ServeDNS`: pick the zone, dispatch on the query
//! type, and let a *name error* (the internal `errNoItems`) become NXDOMAIN (SERVFAIL
//! before the first sync, or a fallthrough to the upstream), while an empty result with
//! no error becomes NODATA. Types the plugin does not handle are classified by an
//! internal A lookup. Every negative answer carries the zone's SOA, spelled as the
//! question spells the zone.

use std::collections::HashSet;
use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::labels::{is_reverse, pod_label_ip, reverse_ip};
use crate::snapshot::{Snapshot, SvcKind};
use crate::{PodMode, SCHEMA_VERSION, SCHEMA_VERSION_TTL};

/// An authoritative response, minus header bits the server owns (id, RD, EDNS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub rcode: ResponseCode,
    pub authoritative: bool,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub additional: Vec<Record>,
}

impl Reply {
    fn refused() -> Self {
        Reply {
            rcode: ResponseCode::Refused,
            authoritative: false,
            answers: vec![],
            authority: vec![],
            additional: vec![],
        }
    }
}

/// What the server must do with a question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Send this.
    Reply(Reply),
    /// The answer ends in a CNAME to `target`, outside the cluster zone: ask the upstream
    /// for (`target`, `qtype`) and append its answer section (any rcode, TTLs as given).
    /// If the upstream cannot be reached, send the reply with its answer emptied (NODATA).
    Chase {
        reply: Reply,
        target: Name,
        qtype: RecordType,
    },
    /// Not ours (or a name error inside a `fallthrough` zone): forward it.
    Forward,
}

/// CoreDNS's internal "name error": no such name.
#[derive(Debug)]
struct NameError;

/// What a lookup found (CoreDNS's `msg.Service`).
#[derive(Debug, Clone)]
enum Item {
    Addr {
        ip: IpAddr,
        /// `None`: a portless endpoint (CoreDNS's port -1, skipped by SRV but counted).
        port: Option<u16>,
        /// Domain relative to the zone (`ep.svc.ns.svc`), target of SRV records.
        key: String,
    },
    Cname(String),
    Txt,
}

/// `recordRequest` from `parse.go`: labels in front of the zone, lower case.
#[derive(Debug, Default)]
struct Request<'a> {
    pod_or_svc: Option<&'a str>,
    namespace: Option<&'a str>,
    service: Option<&'a str>,
    endpoint: Option<&'a str>,
    port: Option<&'a str>,
    protocol: Option<&'a str>,
}

fn strip_underscore(s: &str) -> &str {
    s.strip_prefix('_').unwrap_or(s)
}

fn parse_request<'a>(rel: &[&'a str]) -> Result<Request<'a>, NameError> {
    let mut r = Request::default();
    if rel.is_empty() || rel == ["svc"] || rel == ["pod"] {
        return Ok(r);
    }
    let n = rel.len();
    let kind = rel[n - 1];
    if kind != "svc" && kind != "pod" {
        return Err(NameError);
    }
    r.pod_or_svc = Some(kind);
    if n >= 2 {
        r.namespace = Some(rel[n - 2]);
    }
    if n >= 3 {
        r.service = Some(rel[n - 3]);
    }
    match n {
        0..=3 => {}
        4 => r.endpoint = Some(rel[0]),
        5 => {
            r.port = Some(strip_underscore(rel[0]));
            r.protocol = Some(strip_underscore(rel[1]));
        }
        _ => return Err(NameError),
    }
    Ok(r)
}

/// `match` from `kubernetes.go`: an unset request field matches anything.
fn matches(want: Option<&str>, have: &str) -> bool {
    want.is_none_or(|w| w.eq_ignore_ascii_case(have))
}

/// Per-question state: the zone as the question spells it.
struct Ctx<'s> {
    snap: &'s Snapshot,
    /// The matched zone, lower case.
    zone: &'s Name,
    /// The zone with the question's spelling.
    zone_spelled: Name,
    ttl: u32,
}

fn lower_labels(name: &Name) -> Vec<String> {
    name.iter()
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect()
}

impl Ctx<'_> {
    /// `name` under the zone, relative labels left to right, lower case.
    fn relative(&self, name: &Name) -> Option<Vec<String>> {
        if !self.zone.zone_of(name) {
            return None;
        }
        let mut labels = lower_labels(name);
        labels.truncate(labels.len() - self.zone.num_labels() as usize);
        Some(labels)
    }

    fn name(&self, relative: &str) -> Name {
        // Relative names are built from validated object names; a bad one (too long)
        // degrades to the zone itself rather than failing the answer.
        Name::from_ascii(relative)
            .and_then(|n| n.append_domain(&self.zone_spelled))
            .unwrap_or_else(|_| self.zone_spelled.clone())
    }

    fn exposed(&self, ns: &str) -> bool {
        self.snap.exposed.contains(ns)
    }

    /// `Kubernetes.Records`.
    fn records(&self, rel: &[&str]) -> Result<Vec<Item>, NameError> {
        let r = parse_request(rel)?;
        let Some(kind) = r.pod_or_svc else {
            return Ok(vec![]);
        };
        // The whole name, without allocating: `rel` then the (lower-case) zone's labels.
        let zone_labels = self
            .zone
            .iter()
            .map(|l| std::str::from_utf8(l).unwrap_or(""));
        let all: Vec<&str> = rel.iter().copied().chain(zone_labels).collect();
        if is_reverse(&all) {
            return Err(NameError);
        }
        let ns = r.namespace.unwrap_or_default();
        if !self.exposed(ns) {
            return Err(NameError);
        }
        if kind == "pod" {
            self.find_pods(&r, ns)
        } else {
            self.find_services(&r, ns)
        }
    }

    fn find_pods(&self, r: &Request<'_>, ns: &str) -> Result<Vec<Item>, NameError> {
        let mode = self.snap.config.pods;
        if mode == PodMode::Disabled {
            return Err(NameError);
        }
        let Some(podname) = r.service else {
            return Ok(vec![]);
        };
        let key = format!("{podname}.{ns}.pod");
        match mode {
            PodMode::Disabled => Err(NameError),
            PodMode::Insecure => match pod_label_ip(podname) {
                Some(ip) => Ok(vec![Item::Addr {
                    ip,
                    port: Some(0),
                    key,
                }]),
                None => Err(NameError),
            },
            PodMode::Verified => {
                // CoreDNS compares the rewritten label with `status.podIP` as text.
                let text = if podname.bytes().filter(|b| *b == b'-').count() == 3
                    && !podname.contains("--")
                {
                    podname.replace('-', ".")
                } else {
                    podname.replace('-', ":")
                };
                match text.parse::<IpAddr>() {
                    Ok(ip) if self.snap.pod_ips.contains(&(ns.to_string(), text.clone())) => {
                        Ok(vec![Item::Addr {
                            ip,
                            port: Some(0),
                            key,
                        }])
                    }
                    _ => Err(NameError),
                }
            }
        }
    }

    fn find_services(&self, r: &Request<'_>, ns: &str) -> Result<Vec<Item>, NameError> {
        let Some(service) = r.service else {
            return Ok(vec![]);
        };
        let Some(svc) = self
            .snap
            .services
            .get(ns)
            .and_then(|by_name| by_name.get(service))
        else {
            return Err(NameError);
        };
        let headless = matches!(svc.kind, SvcKind::Headless);
        if self.snap.config.ignore_empty_service
            && !headless
            && !matches!(svc.kind, SvcKind::External(_))
            && svc.endpoints.is_empty()
        {
            return Err(NameError);
        }
        let mut items = Vec::new();
        if let SvcKind::External(target) = &svc.kind {
            // ExternalName services have no endpoint, port or protocol names.
            if r.endpoint.is_some() || r.port.is_some() || r.protocol.is_some() {
                return Err(NameError);
            }
            if target.parse::<IpAddr>().is_ok() {
                return Err(NameError);
            }
            return Ok(vec![Item::Cname(target.to_string())]);
        }
        let mut found = false;
        if headless || r.endpoint.is_some() {
            for ep in svc.endpoints.iter() {
                let label = ep.label();
                if let Some(want) = r.endpoint
                    && !want.eq_ignore_ascii_case(&label)
                {
                    continue;
                }
                let key = format!("{label}.{service}.{ns}.svc");
                let ports = &svc.slice_ports[ep.slice as usize];
                for p in ports.iter() {
                    if matches(r.port, &p.name) && matches(r.protocol, p.protocol.as_str()) {
                        found = true;
                        items.push(Item::Addr {
                            ip: ep.ip,
                            port: Some(p.port),
                            key: key.clone(),
                        });
                    }
                }
                if ports.is_empty() {
                    found = true;
                    items.push(Item::Addr {
                        ip: ep.ip,
                        port: None,
                        key,
                    });
                }
            }
        } else if let SvcKind::ClusterIp(ips) = &svc.kind {
            let key = format!("{service}.{ns}.svc");
            for p in svc.ports.iter() {
                if matches(r.port, &p.name) && matches(r.protocol, p.protocol.as_str()) {
                    found = true;
                    for ip in ips.iter() {
                        items.push(Item::Addr {
                            ip: *ip,
                            port: Some(p.port),
                            key: key.clone(),
                        });
                    }
                }
            }
        }
        if found { Ok(items) } else { Err(NameError) }
    }

    /// `Kubernetes.Services`: type-specific shortcuts, then `Records`.
    fn services(&self, name: &Name, qtype: RecordType) -> Result<Vec<Item>, NameError> {
        let rel = self.relative(name).ok_or(NameError)?;
        let rel: Vec<&str> = rel.iter().map(String::as_str).collect();
        if qtype == RecordType::TXT {
            if rel == ["dns-version"] {
                return Ok(vec![Item::Txt]);
            }
            // quirk: TXT at a name that exists but holds nothing (the apex, svc.<zone>)
            // is NXDOMAIN, because only a non-empty lookup counts as existing.
            return match self.records(&rel) {
                Ok(items) if !items.is_empty() => Ok(vec![]),
                _ => Err(NameError),
            };
        }
        if rel == ["ns", "dns"] {
            let want_v4 = match qtype {
                RecordType::A => true,
                RecordType::AAAA => false,
                _ => return Ok(vec![]),
            };
            return Ok(self
                .snap
                .ns_addrs
                .iter()
                .filter(|(_, ip)| ip.is_ipv4() == want_v4)
                .map(|(_, ip)| Item::Addr {
                    ip: *ip,
                    port: None,
                    key: "ns.dns".into(),
                })
                .collect());
        }
        let items = self.records(&rel)?;
        if qtype == RecordType::SRV {
            return Ok(items
                .into_iter()
                .filter(|i| !matches!(i, Item::Cname(_)))
                .collect());
        }
        Ok(items)
    }

    /// `plugin.A` / `plugin.AAAA`: addresses, following in-zone CNAMEs. Returns the
    /// records and, if the chain leaves the zone, the name to chase upstream.
    fn addresses(
        &self,
        name: &Name,
        qtype: RecordType,
        previous: &[Name],
    ) -> Result<(Vec<Record>, Option<Name>), NameError> {
        let items = self.services(name, qtype)?;
        let want_v4 = qtype == RecordType::A;
        let mut out = Vec::new();
        let mut chase = None;
        let mut seen = HashSet::new();
        for item in items {
            match item {
                Item::Addr { ip, .. } => {
                    if ip.is_ipv4() == want_v4 && seen.insert(ip) {
                        out.push(self.address_record(name.clone(), ip));
                    }
                }
                Item::Cname(target) => {
                    let Ok(mut target) = Name::from_ascii(&target) else {
                        continue;
                    };
                    target.set_fqdn(true);
                    // x CNAME x is a loop; chains longer than 8 are cut.
                    if target.eq(name) || previous.len() > 7 || previous.contains(&target) {
                        continue;
                    }
                    let cname = Record::from_rdata(
                        name.clone(),
                        self.ttl,
                        RData::CNAME(CNAME(target.clone())),
                    );
                    if self.zone.zone_of(&target) {
                        let mut chain = previous.to_vec();
                        chain.push(target.clone());
                        if let Ok((next, next_chase)) = self.addresses(&target, qtype, &chain)
                            && !next.is_empty()
                        {
                            out.push(cname);
                            out.extend(next);
                            chase = chase.or(next_chase);
                        }
                        continue;
                    }
                    out.push(cname);
                    chase = chase.or(Some(target));
                }
                Item::Txt => {}
            }
        }
        Ok((out, chase))
    }

    fn address_record(&self, owner: Name, ip: IpAddr) -> Record {
        let data = match ip {
            IpAddr::V4(v4) => RData::A(A(v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
        };
        Record::from_rdata(owner, self.ttl, data)
    }

    /// `plugin.SRV`: weights over every candidate, duplicates merged after.
    fn srv(&self, name: &Name) -> Result<(Vec<Record>, Vec<Record>), NameError> {
        let items = self.services(name, RecordType::SRV)?;
        let n = items.len().max(1) as u32;
        let weight = (100 / n).max(1) as u16;
        let mut answers = Vec::new();
        let mut extra = Vec::new();
        let mut seen_srv = HashSet::new();
        let mut seen_addr = HashSet::new();
        for item in items {
            let Item::Addr {
                ip,
                port: Some(port),
                key,
            } = item
            else {
                continue;
            };
            let target = self.name(&key);
            if seen_srv.insert((key.clone(), port)) {
                let srv = SRV::new(0, weight, port, target.clone());
                answers.push(Record::from_rdata(name.clone(), self.ttl, RData::SRV(srv)));
            }
            if seen_addr.insert((key, ip)) {
                extra.push(self.address_record(target, ip));
            }
        }
        Ok((answers, extra))
    }

    fn ptr(&self, name: &Name) -> Result<Vec<Record>, NameError> {
        let all = lower_labels(name);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let Some(ip) = reverse_ip(&all) else {
            self.services(name, RecordType::PTR)?;
            return Ok(vec![]);
        };
        let zone = &self.snap.config.zone;
        let targets: Vec<&str> = match self.snap.ptr_cluster.get(&ip) {
            Some(t) => vec![t],
            None => self
                .snap
                .ptr_endpoints
                .get(&ip)
                .map(|v| v.split(' ').collect())
                .unwrap_or_default(),
        };
        if targets.is_empty() {
            return Err(NameError);
        }
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for t in targets {
            if !seen.insert(t) {
                continue;
            }
            let Ok(target) = Name::from_ascii(t).and_then(|n| n.append_domain(zone)) else {
                continue;
            };
            out.push(Record::from_rdata(
                name.clone(),
                self.ttl,
                RData::PTR(PTR(target)),
            ));
        }
        Ok(out)
    }

    /// `plugin.NS` at the apex: one NS per distinct target, glue for every address.
    fn ns(&self, owner: &Name) -> (Vec<Record>, Vec<Record>) {
        let mut answers = Vec::new();
        let mut extra = Vec::new();
        let mut seen = HashSet::new();
        for (rel, ip) in &self.snap.ns_addrs {
            let target = self.name(rel);
            extra.push(self.address_record(target.clone(), *ip));
            if seen.insert(rel) {
                answers.push(Record::from_rdata(
                    owner.clone(),
                    self.ttl,
                    RData::NS(NS(target)),
                ));
            }
        }
        (answers, extra)
    }

    fn soa(&self) -> Record {
        let prefixed = |p: &str| self.name(p);
        let soa = SOA::new(
            prefixed("ns.dns"),
            prefixed("hostmaster"),
            self.snap.serial,
            7200,
            1800,
            86400,
            self.ttl,
        );
        Record::from_rdata(
            self.zone_spelled.clone(),
            self.ttl.min(300),
            RData::SOA(soa),
        )
    }

    fn negative(&self, rcode: ResponseCode) -> Reply {
        Reply {
            rcode,
            authoritative: true,
            answers: vec![],
            authority: vec![self.soa()],
            additional: vec![],
        }
    }
}

/// Answer `qname`/`qtype` (class IN) from `snap`.
pub fn resolve(snap: &Snapshot, qname: &Name, qtype: RecordType) -> Resolution {
    let config = &snap.config;
    let zone = std::iter::once(&config.zone)
        .chain(&config.reverse_zones)
        .filter(|z| z.zone_of(qname))
        .max_by_key(|z| z.num_labels());
    let Some(zone) = zone else {
        return Resolution::Forward;
    };
    let mut qname = qname.clone();
    qname.set_fqdn(true);
    let zone_spelled = qname.trim_to(zone.num_labels() as usize);
    let ctx = Ctx {
        snap,
        zone,
        zone_spelled,
        ttl: config.ttl,
    };
    let at_apex = qname.num_labels() == zone.num_labels();

    let mut additional = Vec::new();
    let mut chase = None;
    let result: Result<Vec<Record>, NameError> = match qtype {
        RecordType::AXFR | RecordType::IXFR => return Resolution::Reply(Reply::refused()),
        RecordType::A | RecordType::AAAA => {
            ctx.addresses(&qname, qtype, &[]).map(|(records, c)| {
                chase = c;
                records
            })
        }
        RecordType::TXT => ctx.services(&qname, qtype).map(|items| {
            items
                .iter()
                .filter(|i| matches!(i, Item::Txt))
                .take(1)
                .map(|_| {
                    let txt = TXT::new(vec![SCHEMA_VERSION.to_string()]);
                    Record::from_rdata(qname.clone(), SCHEMA_VERSION_TTL, RData::TXT(txt))
                })
                .collect()
        }),
        RecordType::CNAME => ctx
            .services(&qname, qtype)
            .map(|items| match items.first() {
                Some(Item::Cname(t)) => Name::from_ascii(t)
                    .map(|mut target| {
                        target.set_fqdn(true);
                        vec![Record::from_rdata(
                            qname.clone(),
                            ctx.ttl,
                            RData::CNAME(CNAME(target)),
                        )]
                    })
                    .unwrap_or_default(),
                _ => vec![],
            }),
        RecordType::PTR => ctx.ptr(&qname),
        RecordType::SRV => ctx.srv(&qname).map(|(answers, extra)| {
            additional = extra;
            answers
        }),
        RecordType::MX => ctx.services(&qname, qtype).map(|_| vec![]),
        // quirk: SOA below the apex is NODATA without an existence check.
        RecordType::SOA => Ok(if at_apex { vec![ctx.soa()] } else { vec![] }),
        RecordType::NS if at_apex => {
            let (answers, extra) = ctx.ns(&qname);
            additional = extra;
            Ok(answers)
        }
        // Everything else (NS below the apex, ANY, HINFO, ...) is classified by an A lookup.
        _ => ctx.addresses(&qname, RecordType::A, &[]).map(|_| vec![]),
    };

    let reply = match result {
        Err(NameError) => {
            if let Some(zones) = &config.fallthrough
                && (zones.is_empty() || zones.iter().any(|z| z.zone_of(&qname)))
            {
                return Resolution::Forward;
            }
            let rcode = if snap.synced {
                ResponseCode::NXDomain
            } else {
                ResponseCode::ServFail
            };
            ctx.negative(rcode)
        }
        Ok(answers) if answers.is_empty() => ctx.negative(ResponseCode::NoError),
        Ok(answers) => Reply {
            rcode: ResponseCode::NoError,
            authoritative: true,
            answers,
            authority: vec![],
            additional,
        },
    };
    match chase {
        Some(target) => Resolution::Chase {
            reply,
            target,
            qtype,
        },
        None => Resolution::Reply(reply),
    }
}
