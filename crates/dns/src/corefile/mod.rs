//! CoreDNS's Corefile, read as CoreDNS reads it, for `twill dns --corefile`.
//!
//! Two steps: [`parse`] cuts the text into server blocks and directives (Caddy's syntax:
//! one directive per line, `{ … }` opens a block of sub-directives, `#` comments,
//! quoted tokens), then [`interpret`] turns the one server block into [`Settings`] for the
//! plugins a cluster's CoreDNS uses. A plugin or option Twill does not implement is an
//! error naming its line, never silently dropped: `rewrite`, `hosts`, `template` and
//! friends are refused with the list of what is supported. kubeadm's default Corefile
//! loads unchanged. Hand-written because no maintained Rust crate reads Caddyfiles.

use std::time::Duration;

use crate::PodMode;

/// A problem at a line of the Corefile (1-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Corefile line {line}: {message}")]
pub struct CorefileError {
    pub line: usize,
    pub message: String,
}

fn err(line: usize, message: impl Into<String>) -> CorefileError {
    CorefileError {
        line,
        message: message.into(),
    }
}

/// One line of a block: a name, its arguments and, when the line ends with `{`, the
/// lines of its own block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub name: String,
    pub args: Vec<String>,
    pub line: usize,
    pub block: Vec<Directive>,
}

/// `ZONES… { directives }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerBlock {
    pub keys: Vec<String>,
    pub line: usize,
    pub directives: Vec<Directive>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    text: String,
    line: usize,
    /// Written in quotes: never a brace.
    quoted: bool,
}

fn tokenize(text: &str) -> Result<Vec<Token>, CorefileError> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(&c) = chars.peek() {
        match c {
            '\n' => {
                line += 1;
                chars.next();
            }
            c if c.is_whitespace() => {
                chars.next();
            }
            '#' => {
                while chars.peek().is_some_and(|c| *c != '\n') {
                    chars.next();
                }
            }
            '"' => {
                let start = line;
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err(err(start, "unterminated quoted string")),
                        Some('"') => break,
                        Some('\\') if chars.peek() == Some(&'"') => {
                            chars.next();
                            s.push('"');
                        }
                        Some(c) => {
                            if c == '\n' {
                                line += 1;
                            }
                            s.push(c);
                        }
                    }
                }
                out.push(Token {
                    text: s,
                    line: start,
                    quoted: true,
                });
            }
            _ => {
                let mut s = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() {
                        break;
                    }
                    s.push(c);
                    chars.next();
                }
                if s.starts_with("{$") || s.starts_with("{%") {
                    return Err(err(
                        line,
                        format!("{s}: environment placeholders are not expanded by Twill"),
                    ));
                }
                out.push(Token {
                    text: s,
                    line,
                    quoted: false,
                });
            }
        }
    }
    Ok(out)
}

fn is(t: &Token, brace: &str) -> bool {
    !t.quoted && t.text == brace
}

/// Directives until the `}` that closes the block opened at `open_line`; a block left
/// open at the end of the text is an error at the line that opened it.
fn directives(
    tokens: &[Token],
    i: &mut usize,
    open_line: usize,
) -> Result<Vec<Directive>, CorefileError> {
    let mut out = Vec::new();
    loop {
        let Some(t) = tokens.get(*i) else {
            return Err(err(open_line, "this block is never closed with `}`"));
        };
        if is(t, "}") {
            *i += 1;
            return Ok(out);
        }
        if is(t, "{") {
            return Err(err(t.line, "`{` without a directive before it"));
        }
        let line = t.line;
        let name = t.text.clone();
        *i += 1;
        let mut args = Vec::new();
        let mut block = Vec::new();
        while let Some(t) = tokens.get(*i) {
            if t.line != line || is(t, "}") {
                break;
            }
            *i += 1;
            if is(t, "{") {
                block = directives(tokens, i, line)?;
                break;
            }
            args.push(t.text.clone());
        }
        out.push(Directive {
            name,
            args,
            line,
            block,
        });
    }
}

/// Cut a Corefile into server blocks.
pub fn parse(text: &str) -> Result<Vec<ServerBlock>, CorefileError> {
    let tokens = tokenize(text)?;
    let mut i = 0;
    let mut blocks = Vec::new();
    while i < tokens.len() {
        let line = tokens[i].line;
        let mut keys = Vec::new();
        while i < tokens.len() && !is(&tokens[i], "{") {
            if is(&tokens[i], "}") {
                return Err(err(tokens[i].line, "`}` closes nothing"));
            }
            keys.push(tokens[i].text.trim_end_matches(',').to_string());
            i += 1;
        }
        if i == tokens.len() {
            return Err(err(line, "a server block needs `{ … }` after its zones"));
        }
        let open = tokens[i].line;
        i += 1;
        let directives = directives(&tokens, &mut i, open)?;
        if keys.iter().any(|k| k.starts_with('(')) {
            return Err(err(
                line,
                "snippets and `import` are not supported by Twill",
            ));
        }
        blocks.push(ServerBlock {
            keys,
            line,
            directives,
        });
    }
    Ok(blocks)
}

/// The `kubernetes` plugin's settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Kubernetes {
    /// Zones: the first that is not a reverse zone is the cluster domain.
    pub zones: Vec<String>,
    pub pods: Option<PodMode>,
    pub ttl: Option<u32>,
    pub endpoint_pod_names: bool,
    pub namespaces: Vec<String>,
    pub ignore_empty_service: bool,
    /// `fallthrough [ZONES]`; `Some(vec![])`: every zone.
    pub fallthrough: Option<Vec<String>>,
    pub kubeconfig: Option<String>,
}

/// The `forward` plugin's settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Forward {
    /// Addresses (`IP`, `IP:PORT`, `dns://IP`) or resolv.conf paths.
    pub to: Vec<String>,
    pub policy: Option<String>,
    pub max_concurrent: Option<usize>,
    pub health_check: Option<Duration>,
    pub max_fails: Option<u32>,
}

/// The `cache` plugin's settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cache {
    /// The longest TTL of any cached answer (`cache 30`).
    pub max_ttl: Option<u32>,
    /// `success CAPACITY [TTL]`.
    pub success: Option<(usize, Option<u32>)>,
    /// `denial CAPACITY [TTL]`.
    pub denial: Option<(usize, Option<u32>)>,
}

/// What a Corefile asks of the server.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settings {
    /// The server block's port (`.:53`).
    pub port: u16,
    pub kubernetes: Option<Kubernetes>,
    pub forward: Option<Forward>,
    pub cache: Option<Cache>,
    /// `health [ADDR]`.
    pub health: Option<String>,
    /// `health { lameduck DURATION }`.
    pub lameduck: Option<Duration>,
    /// `ready [ADDR]`.
    pub ready: Option<String>,
    /// `prometheus [ADDR]`.
    pub prometheus: Option<String>,
    /// `loop`: the forwarding-loop probe.
    pub loop_check: bool,
    /// `loadbalance`: A, AAAA and MX answers in random order.
    pub loadbalance: bool,
    /// Accepted plugins whose effect differs from CoreDNS's, one note each.
    pub notes: Vec<String>,
}

const SUPPORTED: &str =
    "errors, health, ready, kubernetes, prometheus, forward, cache, loop, reload, loadbalance";

fn duration(d: &Directive, s: &str) -> Result<Duration, CorefileError> {
    twill_model::parse_go_duration(s).map_err(|e| err(d.line, format!("{}: {e}", d.name)))
}

fn number<T: std::str::FromStr>(d: &Directive, s: &str) -> Result<T, CorefileError> {
    s.parse()
        .map_err(|_| err(d.line, format!("{}: {s:?} is not a number", d.name)))
}

fn no_args(d: &Directive) -> Result<(), CorefileError> {
    if d.args.is_empty() && d.block.is_empty() {
        Ok(())
    } else {
        Err(err(d.line, format!("{} takes no arguments", d.name)))
    }
}

fn one_arg(d: &Directive) -> Result<&str, CorefileError> {
    match d.args.as_slice() {
        [a] => Ok(a),
        _ => Err(err(d.line, format!("{} takes one argument", d.name))),
    }
}

fn kubernetes(d: &Directive) -> Result<Kubernetes, CorefileError> {
    let mut k = Kubernetes {
        zones: d.args.clone(),
        ..Kubernetes::default()
    };
    for o in &d.block {
        match o.name.as_str() {
            "pods" => {
                k.pods = Some(match one_arg(o)? {
                    "disabled" => PodMode::Disabled,
                    "insecure" => PodMode::Insecure,
                    "verified" => PodMode::Verified,
                    m => {
                        return Err(err(
                            o.line,
                            format!("pods {m:?}: must be disabled, insecure or verified"),
                        ));
                    }
                })
            }
            "ttl" => {
                let ttl: u32 = number(o, one_arg(o)?)?;
                if ttl > 3600 {
                    return Err(err(o.line, "ttl: at most 3600, as CoreDNS"));
                }
                k.ttl = Some(ttl);
            }
            "endpoint_pod_names" => {
                no_args(o)?;
                k.endpoint_pod_names = true;
            }
            "namespaces" => k.namespaces = o.args.clone(),
            "ignore" => match o.args.as_slice() {
                [a] if a == "empty_service" => k.ignore_empty_service = true,
                _ => return Err(err(o.line, "ignore: only `ignore empty_service`")),
            },
            "fallthrough" => k.fallthrough = Some(o.args.clone()),
            "kubeconfig" => match o.args.as_slice() {
                [path] => k.kubeconfig = Some(path.clone()),
                _ => {
                    return Err(err(
                        o.line,
                        "kubeconfig: one path (a context other than the current one is not supported by Twill)",
                    ));
                }
            },
            other => {
                return Err(err(
                    o.line,
                    format!(
                        "kubernetes option {other:?} is not supported by Twill (supported: pods, ttl, endpoint_pod_names, namespaces, ignore empty_service, fallthrough, kubeconfig)"
                    ),
                ));
            }
        }
    }
    Ok(k)
}

fn forward(d: &Directive) -> Result<Forward, CorefileError> {
    let (from, to) = d
        .args
        .split_first()
        .ok_or_else(|| err(d.line, "forward: FROM and at least one TO"))?;
    if from != "." {
        return Err(err(
            d.line,
            format!("forward {from}: Twill forwards only the root zone (`forward . …`)"),
        ));
    }
    if to.is_empty() {
        return Err(err(d.line, "forward: at least one upstream"));
    }
    let mut f = Forward {
        to: to.to_vec(),
        ..Forward::default()
    };
    for u in &f.to {
        if u.starts_with("tls://") || u.starts_with("https://") || u.starts_with("grpc://") {
            return Err(err(
                d.line,
                format!("forward to {u}: only plain DNS upstreams are supported by Twill"),
            ));
        }
    }
    for o in &d.block {
        match o.name.as_str() {
            "max_concurrent" => f.max_concurrent = Some(number(o, one_arg(o)?)?),
            "policy" => {
                let p = one_arg(o)?;
                if !matches!(p, "random" | "round_robin" | "sequential") {
                    return Err(err(
                        o.line,
                        format!("policy {p:?}: must be random, round_robin or sequential"),
                    ));
                }
                f.policy = Some(p.to_string());
            }
            "health_check" => {
                let a = o
                    .args
                    .first()
                    .ok_or_else(|| err(o.line, "health_check: a duration"))?;
                f.health_check = Some(duration(o, a)?);
            }
            "max_fails" => f.max_fails = Some(number(o, one_arg(o)?)?),
            other => {
                return Err(err(
                    o.line,
                    format!(
                        "forward option {other:?} is not supported by Twill (supported: max_concurrent, policy, health_check, max_fails)"
                    ),
                ));
            }
        }
    }
    Ok(f)
}

fn cache(d: &Directive, cluster_zones: &[String]) -> Result<Cache, CorefileError> {
    let mut c = Cache::default();
    match d.args.as_slice() {
        [] => {}
        [ttl, zones @ ..] => {
            c.max_ttl = Some(number(d, ttl)?);
            if !zones.is_empty() && zones.iter().any(|z| z != ".") {
                return Err(err(d.line, "cache ZONES: Twill caches only the root zone"));
            }
        }
    }
    let cap_ttl = |o: &Directive| -> Result<(usize, Option<u32>), CorefileError> {
        match o.args.as_slice() {
            [cap] => Ok((number(o, cap)?, None)),
            [cap, ttl] => Ok((number(o, cap)?, Some(number(o, ttl)?))),
            _ => Err(err(o.line, format!("{}: CAPACITY [TTL]", o.name))),
        }
    };
    for o in &d.block {
        match o.name.as_str() {
            "success" => c.success = Some(cap_ttl(o)?),
            "denial" => c.denial = Some(cap_ttl(o)?),
            // Twill's cache holds forwarded answers only: the cluster's own zones are
            // never cached, which is what kubeadm asks with these lines.
            "disable" => match o.args.split_first() {
                Some((kind, zones))
                    if (kind == "success" || kind == "denial")
                        && !zones.is_empty()
                        && zones.iter().all(|z| {
                            cluster_zones
                                .iter()
                                .any(|c| c.trim_end_matches('.') == z.trim_end_matches('.'))
                        }) => {}
                _ => {
                    return Err(err(
                        o.line,
                        "disable: Twill never caches the kubernetes zones and always caches forwarded answers; only `disable success|denial <kubernetes zones>` is accepted",
                    ));
                }
            },
            other => {
                return Err(err(
                    o.line,
                    format!(
                        "cache option {other:?} is not supported by Twill (supported: success, denial, disable for the kubernetes zones)"
                    ),
                ));
            }
        }
    }
    Ok(c)
}

/// The settings of a Corefile's one server block.
pub fn interpret(blocks: &[ServerBlock]) -> Result<Settings, CorefileError> {
    let block = match blocks {
        [b] => b,
        [] => return Err(err(1, "no server block")),
        [_, second, ..] => {
            return Err(err(
                second.line,
                "Twill serves one server block (`.:53 { … }`); merge the others into it",
            ));
        }
    };
    let mut s = Settings {
        port: 53,
        ..Settings::default()
    };
    for key in &block.keys {
        let key = key.trim_start_matches("dns://");
        let (zone, port) = match key.rsplit_once(':') {
            Some((z, p)) => (z, Some(p)),
            None => (key, None),
        };
        if zone != "." {
            return Err(err(
                block.line,
                format!(
                    "server block {key:?}: Twill serves the root zone (`.:PORT`); the cluster zones come from `kubernetes`"
                ),
            ));
        }
        if let Some(p) = port {
            s.port = p
                .parse()
                .map_err(|_| err(block.line, format!("{p:?} is not a port")))?;
        }
    }
    let cluster_zones: Vec<String> = block
        .directives
        .iter()
        .filter(|d| d.name == "kubernetes")
        .flat_map(|d| d.args.clone())
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    for d in &block.directives {
        if !seen.insert(d.name.clone()) {
            return Err(err(d.line, format!("{} given twice", d.name)));
        }
        match d.name.as_str() {
            // Errors are always logged.
            "errors" => {}
            "health" => {
                s.health = Some(d.args.first().cloned().unwrap_or_default());
                for o in &d.block {
                    match o.name.as_str() {
                        "lameduck" => s.lameduck = Some(duration(o, one_arg(o)?)?),
                        other => {
                            return Err(err(o.line, format!("health option {other:?} is not supported")));
                        }
                    }
                }
            }
            "ready" => s.ready = Some(d.args.first().cloned().unwrap_or_default()),
            "prometheus" => s.prometheus = Some(d.args.first().cloned().unwrap_or_default()),
            "kubernetes" => s.kubernetes = Some(kubernetes(d)?),
            "forward" => s.forward = Some(forward(d)?),
            "cache" => s.cache = Some(cache(d, &cluster_zones)?),
            "loop" => {
                no_args(d)?;
                s.loop_check = true;
            }
            "reload" => s.notes.push(format!(
                "line {}: reload: the Corefile is read at start; restart (roll the pods) to apply a change",
                d.line
            )),
            "loadbalance" => match d.args.as_slice() {
                [] => s.loadbalance = true,
                [p] if p == "round_robin" => s.loadbalance = true,
                _ => return Err(err(d.line, "loadbalance: only the round_robin policy")),
            },
            other => {
                return Err(err(
                    d.line,
                    format!("plugin {other:?} is not supported by Twill (supported: {SUPPORTED})"),
                ));
            }
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests;
