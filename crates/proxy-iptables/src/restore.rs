//! Reading `iptables-restore` text back: tables, declared chains and ordered rules, and
//! the canonical comparison upstream's tests use (`sortIPTablesRules`).

use std::collections::BTreeMap;

use crate::render::{
    KUBE_EXTERNAL_SERVICES, KUBE_NODEPORTS, KUBE_PROXY_FIREWALL, KUBE_SERVICES, chain_order,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    #[error("line {line}: {what} outside a table (missing `*table`)")]
    OutsideTable { line: usize, what: &'static str },
    #[error("line {line}: rule for undeclared chain {chain}")]
    UndeclaredChain { line: usize, chain: String },
    #[error("line {line}: cannot parse {text:?}")]
    Unparsable { line: usize, text: String },
}

/// One table: chains in declaration order and each chain's rules (full `-A` lines).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    pub chains: Vec<String>,
    pub rules: BTreeMap<String, Vec<String>>,
}

/// Tables by name.
pub type Ruleset = BTreeMap<String, Table>;

/// Parse restore input. `-X` lines and comments are ignored; rules may use chains that
/// are not declared when `strict` is false (iptables-save of base chains).
pub fn parse(text: &str, strict: bool) -> Result<Ruleset, ParseError> {
    let mut out = Ruleset::new();
    let mut current: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let n = i + 1;
        if line.is_empty() || line.starts_with('#') || line == "COMMIT" {
            if line == "COMMIT" {
                current = None;
            }
            continue;
        }
        if let Some(t) = line.strip_prefix('*') {
            out.entry(t.to_string()).or_default();
            current = Some(t.to_string());
            continue;
        }
        let Some(table) = current.as_ref().and_then(|t| out.get_mut(t)) else {
            return Err(ParseError::OutsideTable {
                line: n,
                what: "a chain or rule",
            });
        };
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            if !table.chains.contains(&name) {
                table.chains.push(name.clone());
            }
            table.rules.entry(name).or_default();
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let chain = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            if strict && !table.chains.contains(&chain) {
                return Err(ParseError::UndeclaredChain { line: n, chain });
            }
            table.rules.entry(chain).or_default().push(line.to_string());
        } else if line.starts_with("-X ") {
            continue;
        } else {
            return Err(ParseError::Unparsable {
                line: n,
                text: line.to_string(),
            });
        }
    }
    Ok(out)
}

/// The first word of a rule's comment (the service port name for per-service rules).
fn comment_key(rule: &str) -> String {
    let Some(i) = rule.find("--comment ") else {
        return String::new();
    };
    let rest = &rule[i + "--comment ".len()..];
    let rest = rest.strip_prefix('"').unwrap_or(rest);
    rest.split([' ', '"'])
        .next()
        .unwrap_or_default()
        .to_string()
}

fn is_nodeports_tail(rule: &str) -> bool {
    rule.contains("-j KUBE-NODEPORTS") && rule.starts_with("-A KUBE-SERVICES")
}

/// Put a table in upstream's canonical order: chains KUBE-NODEPORTS, KUBE-SERVICES, the
/// rest sorted; in the service-dispatch chains, rules sorted stably by service name with
/// the node-ports tail call last.
pub fn canonical(table: &Table) -> Vec<(String, Vec<String>)> {
    let mut chains: Vec<&String> = table.chains.iter().collect();
    for c in table.rules.keys() {
        if !chains.contains(&c) {
            chains.push(c);
        }
    }
    chains.sort_by_key(|c| chain_order(c));
    chains
        .into_iter()
        .map(|c| {
            let mut rules = table.rules.get(c).cloned().unwrap_or_default();
            if [
                KUBE_SERVICES,
                KUBE_NODEPORTS,
                KUBE_EXTERNAL_SERVICES,
                KUBE_PROXY_FIREWALL,
            ]
            .contains(&c.as_str())
            {
                rules.sort_by_key(|r| (is_nodeports_tail(r), comment_key(r)));
            }
            (c.clone(), rules)
        })
        .collect()
}

/// Differences between two rulesets compared per chain in canonical order; empty when
/// they are equivalent. Only tables present in `expected` are compared.
pub fn diff_rulesets(expected: &Ruleset, actual: &Ruleset) -> Vec<String> {
    let mut out = Vec::new();
    for (name, exp) in expected {
        let Some(act) = actual.get(name) else {
            out.push(format!("table {name}: missing"));
            continue;
        };
        let (e, a) = (canonical(exp), canonical(act));
        let en: Vec<&String> = e.iter().map(|(c, _)| c).collect();
        let an: Vec<&String> = a.iter().map(|(c, _)| c).collect();
        for c in en.iter().filter(|c| !an.contains(c)) {
            out.push(format!("table {name}: chain {c} missing"));
        }
        for c in an.iter().filter(|c| !en.contains(c)) {
            out.push(format!("table {name}: unexpected chain {c}"));
        }
        for (c, er) in &e {
            if let Some((_, ar)) = a.iter().find(|(ac, _)| ac == c) {
                out.extend(diff_rules(name, c, er, ar));
            }
        }
    }
    out
}

/// Differences of one chain's ordered rules.
pub fn diff_rules(table: &str, chain: &str, expected: &[String], actual: &[String]) -> Vec<String> {
    if expected == actual {
        return Vec::new();
    }
    let mut out = Vec::new();
    let n = expected.len().max(actual.len());
    for i in 0..n {
        match (expected.get(i), actual.get(i)) {
            (Some(e), Some(a)) if e == a => {}
            (e, a) => {
                out.push(format!(
                    "table {table} chain {chain} rule {i}: expected {:?}, got {:?}",
                    e.map(String::as_str).unwrap_or("<none>"),
                    a.map(String::as_str).unwrap_or("<none>")
                ));
                break;
            }
        }
    }
    out
}
