//! The shared DNS corpus schema (`shared/testdata/dns/README.md`) and its comparison
//! rules, so the conformance runner and tests judge responses the same way.

use std::collections::BTreeMap;
use std::net::IpAddr;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde_json::Value;
use twill_manifest::Decoded;
use twill_model::{ClusterState, Object, Pod};

use twill_dns::resolvconf::{KubeletDns, PodResolvConf, pod_resolv_conf};
use twill_dns::{Config, parse_zone};

/// A record in the corpus's presentation form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseRecord {
    pub name: String,
    pub rtype: String,
    pub ttl: u32,
    pub data: String,
}

#[derive(Debug, Clone)]
pub struct QueryCase {
    pub name: String,
    pub qname: String,
    pub qtype: RecordType,
    pub rcode: String,
    pub answer: Vec<CaseRecord>,
    pub answer_unordered: bool,
    pub authority_types: Option<Vec<String>>,
    pub authority: Option<Vec<CaseRecord>>,
    pub additional: Option<Vec<CaseRecord>>,
    pub aa: Option<bool>,
    pub preserve_case: bool,
}

/// One query file: the server setup and its questions.
#[derive(Debug, Clone)]
pub struct QueryFile {
    pub name: String,
    pub config: Config,
    pub state: ClusterState,
    /// Records the fake upstream holds.
    pub upstream: Vec<CaseRecord>,
    pub queries: Vec<QueryCase>,
}

fn s<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn records(v: Option<&Value>, what: &str) -> Result<Vec<CaseRecord>, String> {
    let Some(v) = v else { return Ok(vec![]) };
    let list = v
        .as_array()
        .ok_or_else(|| format!("{what}: must be a list"))?;
    list.iter()
        .enumerate()
        .map(|(i, r)| {
            let field = |k: &str| s(r, k).ok_or_else(|| format!("{what}[{i}].{k}: missing string"));
            Ok(CaseRecord {
                name: field("name")?.to_string(),
                rtype: field("type")?.to_string(),
                ttl: r
                    .get("ttl")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| format!("{what}[{i}].ttl: missing number"))?
                    as u32,
                data: field("data")?.to_string(),
            })
        })
        .collect()
}

/// Decode Kubernetes objects the way the server loads manifests.
pub fn decode_objects(values: &[Value]) -> Result<Vec<Object>, String> {
    let mut out = Vec::new();
    let mut queue: Vec<Value> = values.iter().rev().cloned().collect();
    while let Some(v) = queue.pop() {
        match twill_manifest::decode_value(&v) {
            Ok(Decoded::Object(o)) => out.push(o),
            Ok(Decoded::Ignored { .. }) => {}
            Ok(Decoded::List(items)) => queue.extend(items.into_iter().rev()),
            Err(e) => {
                let errs: Vec<String> = e
                    .errors
                    .iter()
                    .map(|f| format!("{}: {}", f.path, f.message))
                    .collect();
                return Err(format!(
                    "{}: {} {}",
                    e.object.unwrap_or_default(),
                    e.message,
                    errs.join("; ")
                ));
            }
        }
    }
    Ok(out)
}

/// Parse a query file.
pub fn parse_query_file(v: &Value) -> Result<QueryFile, String> {
    let name = s(v, "name").unwrap_or("?").to_string();
    let c = v.get("config").ok_or("config: missing")?;
    let mut config =
        Config::new(s(c, "zone").ok_or("config.zone: missing")?).map_err(|e| e.to_string())?;
    if let Some(p) = s(c, "pods") {
        config.pods = p
            .parse()
            .map_err(|e: twill_dns::ConfigError| e.to_string())?;
    }
    if let Some(t) = c.get("ttl").and_then(Value::as_u64) {
        config.ttl = t as u32;
    }
    config.endpoint_pod_names = c
        .get("endpointPodNames")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let other = c.get("other").cloned().unwrap_or(Value::Null);
    let strings = |key: &str| -> Option<Vec<String>> {
        other.get(key).and_then(Value::as_array).map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
    };
    config.namespaces = strings("namespaces");
    if let Some(z) = strings("reverseZones") {
        config = config.with_reverse_zones(&z).map_err(|e| e.to_string())?;
    }
    config.ignore_empty_service = other
        .get("ignoreEmptyService")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if let Some(ips) = strings("serverIPs") {
        config.server_ips = ips
            .iter()
            .map(|ip| {
                ip.parse::<IpAddr>()
                    .map_err(|e| format!("config.other.serverIPs: {ip}: {e}"))
            })
            .collect::<Result<_, _>>()?;
    }
    if let Some(f) = other.get("fallthrough") {
        config.fallthrough = Some(match f {
            Value::Array(zones) => zones
                .iter()
                .filter_map(Value::as_str)
                .map(|z| parse_zone("fallthrough", z).map_err(|e| e.to_string()))
                .collect::<Result<_, _>>()?,
            _ => vec![],
        });
    }
    let synced = other.get("synced").and_then(Value::as_bool).unwrap_or(true);
    let upstream = records(other.get("upstream"), "config.other.upstream")?;
    let objects = decode_objects(
        v.get("objects")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]),
    )?;
    let mut state = ClusterState::from_objects(objects);
    state.synced = synced;
    let mut queries = Vec::new();
    for (i, q) in v
        .get("queries")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let what = format!("queries[{i}]");
        let qtype_text = s(q, "qtype").ok_or(format!("{what}.qtype: missing"))?;
        let qtype: RecordType = qtype_text
            .parse()
            .map_err(|_| format!("{what}.qtype: unknown {qtype_text}"))?;
        let list = |k: &str| -> Option<Vec<String>> {
            q.get(k).and_then(Value::as_array).map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
        };
        queries.push(QueryCase {
            name: s(q, "name").unwrap_or("?").to_string(),
            qname: s(q, "qname")
                .ok_or(format!("{what}.qname: missing"))?
                .to_string(),
            qtype,
            rcode: s(q, "rcode").unwrap_or("NOERROR").to_string(),
            answer: records(q.get("answer"), &format!("{what}.answer"))?,
            answer_unordered: q
                .get("answerUnordered")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            authority_types: list("authorityTypes"),
            authority: q
                .get("authority")
                .map(|a| records(Some(a), &format!("{what}.authority")))
                .transpose()?,
            additional: q
                .get("additional")
                .map(|a| records(Some(a), &format!("{what}.additional")))
                .transpose()?,
            aa: q.get("aa").and_then(Value::as_bool),
            preserve_case: q
                .get("preserveCase")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        });
    }
    Ok(QueryFile {
        name,
        config,
        state,
        upstream,
        queries,
    })
}

/// The presentation form of a record's data, as the corpus writes it.
pub fn present(r: &Record) -> CaseRecord {
    let data = match &r.data {
        RData::A(a) => a.0.to_string(),
        RData::AAAA(a) => a.0.to_string(),
        RData::CNAME(n) => n.0.to_string(),
        RData::PTR(n) => n.0.to_string(),
        RData::NS(n) => n.0.to_string(),
        RData::SRV(s) => format!("{} {} {} {}", s.priority, s.weight, s.port, s.target),
        RData::TXT(t) => t
            .txt_data
            .iter()
            .map(|b| format!("\"{}\"", String::from_utf8_lossy(b)))
            .collect::<Vec<_>>()
            .join(" "),
        RData::SOA(s) => format!(
            "{} {} {} {} {} {} {}",
            s.mname, s.rname, s.serial, s.refresh, s.retry, s.expire, s.minimum
        ),
        other => other.to_string(),
    };
    CaseRecord {
        name: r.name.to_string(),
        rtype: r.record_type().to_string(),
        ttl: r.ttl,
        data,
    }
}

fn same_record(want: &CaseRecord, got: &CaseRecord, exact_case: bool) -> bool {
    let eq = |a: &str, b: &str| {
        if exact_case {
            a == b
        } else {
            a.eq_ignore_ascii_case(b)
        }
    };
    if !eq(&want.name, &got.name)
        || !want.rtype.eq_ignore_ascii_case(&got.rtype)
        || want.ttl != got.ttl
    {
        return false;
    }
    let (w, g): (Vec<&str>, Vec<&str>) = (
        want.data.split(' ').collect(),
        got.data.split(' ').collect(),
    );
    w.len() == g.len()
        && w.iter()
            .zip(&g)
            .enumerate()
            .all(|(i, (w, g))| (want.rtype == "SOA" && i == 2 && *w == "*") || eq(w, g))
}

fn show(rs: &[CaseRecord]) -> String {
    let parts: Vec<String> = rs
        .iter()
        .map(|r| format!("{} {} {} {}", r.name, r.ttl, r.rtype, r.data))
        .collect();
    format!("[{}]", parts.join(", "))
}

fn same_multiset(want: &[CaseRecord], got: &[CaseRecord], exact_case: bool) -> bool {
    if want.len() != got.len() {
        return false;
    }
    let mut used = vec![false; got.len()];
    want.iter().all(|w| {
        let hit = got
            .iter()
            .enumerate()
            .find(|(i, g)| !used[*i] && same_record(w, g, exact_case));
        hit.map(|(i, _)| used[i] = true).is_some()
    })
}

fn same_list(want: &[CaseRecord], got: &[CaseRecord], exact_case: bool) -> bool {
    want.len() == got.len()
        && want
            .iter()
            .zip(got)
            .all(|(w, g)| same_record(w, g, exact_case))
}

/// The corpus name for a response code.
pub fn rcode_name(r: ResponseCode) -> String {
    match r {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        other => format!("{other:?}").to_uppercase(),
    }
}

/// Problems with `msg` as the response to `case` (empty when it passes).
pub fn check_response(case: &QueryCase, msg: &Message) -> Vec<String> {
    let mut problems = Vec::new();
    let exact = case.preserve_case;
    let got_rcode = rcode_name(msg.metadata.response_code);
    if got_rcode != case.rcode {
        problems.push(format!("rcode {got_rcode}, want {}", case.rcode));
    }
    if let Some(aa) = case.aa
        && msg.metadata.authoritative != aa
    {
        problems.push(format!("aa {}, want {aa}", msg.metadata.authoritative));
    }
    let answer: Vec<CaseRecord> = msg.answers.iter().map(present).collect();
    let ok = if case.answer_unordered {
        same_multiset(&case.answer, &answer, exact) && cname_first(&answer)
    } else {
        same_list(&case.answer, &answer, exact)
    };
    if !ok {
        problems.push(format!(
            "answer {}, want {}",
            show(&answer),
            show(&case.answer)
        ));
    }
    let authority: Vec<CaseRecord> = msg.authorities.iter().map(present).collect();
    if let Some(types) = &case.authority_types {
        let got: Vec<String> = authority.iter().map(|r| r.rtype.clone()).collect();
        if &got != types {
            problems.push(format!("authority types {got:?}, want {types:?}"));
        }
    }
    if let Some(want) = &case.authority
        && !same_list(want, &authority, exact)
    {
        problems.push(format!(
            "authority {}, want {}",
            show(&authority),
            show(want)
        ));
    }
    if let Some(want) = &case.additional {
        let got: Vec<CaseRecord> = msg
            .additionals
            .iter()
            .filter(|r| r.record_type() != RecordType::OPT)
            .map(present)
            .collect();
        if !same_multiset(want, &got, exact) {
            problems.push(format!("additional {}, want {}", show(&got), show(want)));
        }
    }
    problems
}

/// A CNAME must come before any record owned by its target.
fn cname_first(answer: &[CaseRecord]) -> bool {
    answer.iter().enumerate().all(|(i, r)| {
        r.rtype != "CNAME"
            || answer[..i]
                .iter()
                .all(|earlier| !earlier.name.eq_ignore_ascii_case(&r.data))
    })
}

/// What the corpus's fake upstream answers for (`qname`, `qtype`): the listed records of
/// that type, NOERROR-empty for a listed name with other types only, else NXDOMAIN.
pub fn upstream_answer(
    upstream: &[CaseRecord],
    qname: &Name,
    qtype: RecordType,
) -> (ResponseCode, Vec<Record>) {
    let same_name = |r: &&CaseRecord| {
        Name::from_ascii(&r.name)
            .map(|n| n.eq(qname))
            .unwrap_or(false)
    };
    let listed: Vec<&CaseRecord> = upstream.iter().filter(same_name).collect();
    if listed.is_empty() {
        return (ResponseCode::NXDomain, vec![]);
    }
    let records = listed
        .iter()
        .filter(|r| r.rtype.parse::<RecordType>().ok() == Some(qtype))
        .filter_map(|r| {
            let rdata = RData::try_from_str(qtype, &r.data).ok()?;
            Some(Record::from_rdata(qname.clone(), r.ttl, rdata))
        })
        .collect();
    (ResponseCode::NoError, records)
}

/// One resolv.conf case.
#[derive(Debug, Clone)]
pub struct ResolvCase {
    pub name: String,
    pub kubelet: KubeletDns,
    pub pod: Pod,
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
    pub options_unordered: bool,
    pub resolv_conf: Option<String>,
    pub events: Vec<String>,
}

fn kubelet_from(v: &Value, base: &KubeletDns) -> Result<KubeletDns, String> {
    let mut k = base.clone();
    let Some(map) = v.as_object() else {
        return Ok(k);
    };
    let strings = |x: &Value| -> Vec<String> {
        x.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    if let Some(d) = map.get("clusterDomain") {
        k.cluster_domain = d.as_str().unwrap_or_default().to_string();
    }
    if let Some(d) = map.get("clusterDNS") {
        k.cluster_dns = strings(d);
    }
    if let Some(d) = map.get("nodeIPs") {
        k.node_ips = strings(d)
            .iter()
            .map(|ip| {
                ip.parse()
                    .map_err(|e| format!("kubelet.nodeIPs: {ip}: {e}"))
            })
            .collect::<Result<_, _>>()?;
    }
    if let Some(d) = map.get("hostResolvConf") {
        k.host_resolv_conf = d.as_str().map(String::from);
    }
    Ok(k)
}

/// Parse a resolv.conf file into its cases.
pub fn parse_resolv_file(v: &Value) -> Result<Vec<ResolvCase>, String> {
    let base = kubelet_from(
        v.get("kubelet").unwrap_or(&Value::Null),
        &KubeletDns::default(),
    )?;
    let mut out = Vec::new();
    for (i, c) in v
        .get("cases")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = s(c, "name").unwrap_or("?").to_string();
        let kubelet = kubelet_from(c.get("kubelet").unwrap_or(&Value::Null), &base)?;
        let pod = match decode_objects(std::slice::from_ref(
            c.get("pod").ok_or(format!("cases[{i}].pod: missing"))?,
        ))?
        .pop()
        {
            Some(Object::Pod(p)) => p,
            _ => return Err(format!("cases[{i}].pod: not a Pod")),
        };
        let e = c
            .get("expected")
            .ok_or(format!("cases[{i}].expected: missing"))?;
        let strings = |k: &str| -> Vec<String> {
            e.get(k)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        out.push(ResolvCase {
            name,
            kubelet,
            pod,
            nameservers: strings("nameservers"),
            searches: strings("searches"),
            options: strings("options"),
            options_unordered: e
                .get("optionsUnordered")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            resolv_conf: s(e, "resolvConf").map(String::from),
            events: strings("events"),
        });
    }
    Ok(out)
}

fn same_options(want: &[String], got: &[String], unordered: bool) -> bool {
    if !unordered {
        return want == got;
    }
    let count = |l: &[String]| {
        let mut m = BTreeMap::new();
        for o in l {
            *m.entry(o.clone()).or_insert(0) += 1;
        }
        m
    };
    count(want) == count(got)
}

/// Compare a rendered file, treating the options line's tokens as a set when asked.
fn same_file(want: &str, got: &str, unordered: bool) -> bool {
    let (wl, gl): (Vec<&str>, Vec<&str>) = (
        want.split_inclusive('\n').collect(),
        got.split_inclusive('\n').collect(),
    );
    wl.len() == gl.len()
        && wl.iter().zip(&gl).all(|(w, g)| {
            match (w.strip_prefix("options "), g.strip_prefix("options ")) {
                (Some(w), Some(g)) => {
                    let split =
                        |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
                    w.ends_with('\n') == g.ends_with('\n')
                        && same_options(&split(w), &split(g), unordered)
                }
                _ => w == g,
            }
        })
}

/// Run `case` through the resolv.conf function; problems (empty when it passes).
pub fn check_resolv(case: &ResolvCase) -> (PodResolvConf, Vec<String>) {
    let got = pod_resolv_conf(&case.kubelet, &case.pod);
    let mut problems = Vec::new();
    if got.nameservers != case.nameservers {
        problems.push(format!(
            "nameservers {:?}, want {:?}",
            got.nameservers, case.nameservers
        ));
    }
    if got.searches != case.searches {
        problems.push(format!(
            "searches {:?}, want {:?}",
            got.searches, case.searches
        ));
    }
    if !same_options(&case.options, &got.options, case.options_unordered) {
        problems.push(format!(
            "options {:?}, want {:?}",
            got.options, case.options
        ));
    }
    if got.events != case.events {
        problems.push(format!("events {:?}, want {:?}", got.events, case.events));
    }
    let file = got.render();
    let file_ok = match (&case.resolv_conf, &file) {
        (None, None) => true,
        (Some(w), Some(g)) => same_file(w, g, case.options_unordered),
        _ => false,
    };
    if !file_ok {
        problems.push(format!("resolv.conf {file:?}, want {:?}", case.resolv_conf));
    }
    (got, problems)
}
