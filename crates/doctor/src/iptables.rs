//! `iptables-save` output, parsed just enough to read chains, policies and rules.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    /// `ACCEPT`/`DROP` for built-in chains, `None` for user chains.
    pub policy: Option<String>,
    /// Rule text after `-A CHAIN `, in order.
    pub rules: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IptablesDump {
    tables: BTreeMap<String, BTreeMap<String, Chain>>,
}

impl IptablesDump {
    pub fn parse(text: &str) -> Self {
        let mut d = IptablesDump::default();
        let mut table = String::new();
        for line in text.lines() {
            let line = line.trim_end();
            if let Some(t) = line.strip_prefix('*') {
                table = t.to_string();
                d.tables.entry(table.clone()).or_default();
            } else if let Some(decl) = line.strip_prefix(':') {
                let mut f = decl.split_whitespace();
                let name = f.next().unwrap_or_default().to_string();
                let policy = f.next().filter(|p| *p != "-").map(str::to_string);
                d.tables
                    .entry(table.clone())
                    .or_default()
                    .entry(name)
                    .or_default()
                    .policy = policy;
            } else if let Some(rule) = line.strip_prefix("-A ") {
                let (chain, rest) = rule.split_once(' ').unwrap_or((rule, ""));
                d.tables
                    .entry(table.clone())
                    .or_default()
                    .entry(chain.to_string())
                    .or_default()
                    .rules
                    .push(rest.to_string());
            }
        }
        d
    }

    pub fn chain(&self, table: &str, chain: &str) -> Option<&Chain> {
        self.tables.get(table)?.get(chain)
    }

    pub fn chains<'a>(&'a self, table: &str) -> impl Iterator<Item = (&'a String, &'a Chain)> + 'a {
        self.tables.get(table).into_iter().flat_map(|t| t.iter())
    }

    pub fn rule_count(&self) -> usize {
        self.tables
            .values()
            .flat_map(|t| t.values())
            .map(|c| c.rules.len())
            .sum()
    }
}
