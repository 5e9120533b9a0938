//! The corpus' matching rules (README "Matching rules"): same key sets (an empty `dns`
//! equals a missing one, an empty `routes` too; `cni.dev/` keys ignored where allowed),
//! arrays element-wise, `re:` strings as whole-string regular expressions, `"*"` = any.

use serde_json::Value;

/// Whole-string regex match; an invalid pattern never matches.
pub fn re_full_match(pattern: &str, s: &str) -> bool {
    regex_lite::Regex::new(&format!("^(?:{pattern})$")).is_ok_and(|re| re.is_match(s))
}

/// A string expectation: `re:...`, `*`, or literal.
pub fn str_matches(expected: &str, actual: &str) -> bool {
    match expected.strip_prefix("re:") {
        Some(p) => re_full_match(p, actual),
        None => expected == "*" || expected == actual,
    }
}

fn is_empty_equivalent(key: &str, v: Option<&Value>) -> bool {
    match (key, v) {
        (_, None) => true,
        ("dns", Some(Value::Object(m))) => m.is_empty(),
        ("routes", Some(Value::Array(a))) => a.is_empty(),
        _ => false,
    }
}

/// Compare `actual` against `expected`; `Err` names the first difference by JSON path.
pub fn json_matches(
    expected: &Value,
    actual: &Value,
    ignore_cni_dev_keys: bool,
) -> Result<(), String> {
    walk(expected, actual, "", ignore_cni_dev_keys)
}

fn walk(e: &Value, a: &Value, path: &str, ignore: bool) -> Result<(), String> {
    match (e, a) {
        (Value::String(s), _) if s == "*" => Ok(()),
        (Value::String(s), Value::String(t)) => {
            if str_matches(s, t) {
                Ok(())
            } else {
                Err(format!("{}: expected {s:?}, got {t:?}", at(path)))
            }
        }
        (Value::Object(em), Value::Object(am)) => {
            for (k, ev) in em {
                let p = format!("{path}.{k}");
                match am.get(k) {
                    Some(av)
                        if !(is_empty_equivalent(k, Some(ev))
                            && is_empty_equivalent(k, Some(av))) =>
                    {
                        walk(ev, av, &p, ignore)?
                    }
                    Some(_) => {}
                    None if is_empty_equivalent(k, Some(ev))
                        && matches!(k.as_str(), "dns" | "routes") => {}
                    None => return Err(format!("{}: missing", at(&p))),
                }
            }
            for (k, av) in am {
                if em.contains_key(k) || (ignore && k.starts_with("cni.dev/")) {
                    continue;
                }
                if matches!(k.as_str(), "dns" | "routes") && is_empty_equivalent(k, Some(av)) {
                    continue;
                }
                return Err(format!("{}: unexpected key {k:?}", at(path)));
            }
            Ok(())
        }
        (Value::Array(ea), Value::Array(aa)) => {
            if ea.len() != aa.len() {
                return Err(format!(
                    "{}: expected {} elements, got {}: {}",
                    at(path),
                    ea.len(),
                    aa.len(),
                    a
                ));
            }
            for (i, (x, y)) in ea.iter().zip(aa).enumerate() {
                walk(x, y, &format!("{path}[{i}]"), ignore)?;
            }
            Ok(())
        }
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => Ok(()),
        _ if e == a => Ok(()),
        _ => Err(format!("{}: expected {e}, got {a}", at(path))),
    }
}

fn at(path: &str) -> &str {
    if path.is_empty() { "(top)" } else { path }
}

#[cfg(test)]
mod tests;
