//! Splitting a source into documents, each with its index and first line.
//!
//! YAML streams are cut at `---` lines by hand rather than through the parser's
//! multi-document API, because that API stops at the first broken document and skips
//! empty ones silently; we need every document's own line number and one bad document
//! must not hide the next. A `---` at column 0 can only be a document marker: block
//! scalar content is always indented.

pub(crate) struct Document {
    pub index: usize,
    pub line: usize,
    /// The parsed value, or (line, message) of the parse error.
    pub value: Parsed,
}

/// A document's value, or (line, message) of its parse error.
pub(crate) type Parsed = Result<serde_json::Value, (usize, String)>;

fn is_blank_or_comment(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

fn looks_like_json(text: &str) -> bool {
    text.lines()
        .find(|l| !is_blank_or_comment(l))
        .is_some_and(|l| l.trim_start().starts_with('{') || l.trim_start().starts_with('['))
}

/// Hand each document to `emit` as soon as it is parsed, so a large stream is never
/// held as parsed values all at once (10k Services: ~200 MB of `Value`s otherwise).
pub(crate) fn for_each_document(source: &str, text: &str, emit: &mut dyn FnMut(Document)) {
    let mut sink = Sink { count: 0, emit };
    if source.ends_with(".json") || looks_like_json(text) {
        json_documents(text, &mut sink)
    } else {
        yaml_documents(text, &mut sink)
    }
}

/// Numbers documents (1-based, empty ones not counted) on their way out.
struct Sink<'a> {
    count: usize,
    emit: &'a mut dyn FnMut(Document),
}

impl Sink<'_> {
    fn push(&mut self, line: usize, value: Parsed) {
        self.count += 1;
        (self.emit)(Document {
            index: self.count,
            line,
            value,
        });
    }
}

fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

fn json_documents(text: &str, out: &mut Sink) {
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<serde_json::Value>();
    loop {
        let start = stream.byte_offset();
        let skipped = text[start..].len() - text[start..].trim_start().len();
        match stream.next() {
            None => break,
            Some(Ok(value)) => out.push(line_of_offset(text, start + skipped), Ok(value)),
            Some(Err(e)) => {
                // A JSON syntax error leaves the stream unusable; report it and stop.
                out.push(
                    line_of_offset(text, start + skipped),
                    Err((e.line(), format!("invalid JSON: {e}"))),
                );
                break;
            }
        }
    }
}

fn is_marker(line: &str, marker: &str) -> bool {
    line == marker
        || line
            .strip_prefix(marker)
            .is_some_and(|r| r.starts_with([' ', '\t']))
}

/// One YAML document's text, cut from its stream, with where it stands there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocText {
    /// 1-based index among the stream's non-empty documents.
    pub index: usize,
    /// 1-based line of the document's first line in the stream.
    pub line: usize,
    pub text: String,
}

/// A YAML stream cut into its non-empty documents (`None` for JSON, which is parsed as
/// one stream). Followers of a file use this to re-parse only the documents that
/// changed.
pub fn yaml_document_texts(source: &str, text: &str) -> Option<Vec<DocText>> {
    if source.ends_with(".json") || looks_like_json(text) {
        return None;
    }
    // (line number of the chunk's first line, chunk text)
    let mut chunks: Vec<(usize, String)> = vec![(1, String::new())];
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if is_marker(line, "---") {
            // `--- {a: 1}` keeps content on the marker line.
            let rest = line[3..].trim_start();
            if rest.is_empty() || rest.starts_with('#') {
                chunks.push((n + 1, String::new()));
            } else {
                chunks.push((n, format!("{rest}\n")));
            }
        } else if is_marker(line, "...") {
            chunks.push((n + 1, String::new()));
        } else {
            let last = chunks.last_mut().expect("one chunk at least");
            last.1.push_str(line);
            last.1.push('\n');
        }
    }
    let docs = chunks
        .into_iter()
        .filter(|(_, chunk)| !chunk.lines().all(is_blank_or_comment))
        .enumerate()
        .map(|(i, (line, text))| DocText {
            index: i + 1,
            line,
            text,
        })
        .collect();
    Some(docs)
}

/// Parse one document cut by [`yaml_document_texts`]: (first content line, value or the
/// parse error's line and message). `None` for a document that is only `null`.
pub(crate) fn parse_yaml_document(doc: &DocText) -> Option<(usize, Parsed)> {
    let lead = doc
        .text
        .lines()
        .take_while(|l| is_blank_or_comment(l))
        .count();
    let value = match serde_saphyr::from_str::<serde_json::Value>(&doc.text) {
        Ok(serde_json::Value::Null) => return None,
        Ok(v) => Ok(v),
        Err(e) => {
            let line = e
                .location()
                .map_or(doc.line + lead, |l| doc.line + l.line() as usize - 1);
            Err((
                line,
                format!("invalid YAML: {}", first_line(&e.to_string())),
            ))
        }
    };
    Some((doc.line + lead, value))
}

fn yaml_documents(text: &str, out: &mut Sink) {
    for doc in yaml_document_texts("", text).unwrap_or_default() {
        if let Some((line, value)) = parse_yaml_document(&doc) {
            out.push(line, value);
        }
    }
}

/// The parser's message without its own position (which counts from the document, not
/// the file; the problem's location already has the file line).
fn first_line(s: &str) -> &str {
    let line = s.lines().next().unwrap_or(s).trim();
    let rest = line.strip_prefix("error: ").unwrap_or(line);
    if rest.starts_with("line ")
        && let Some((_, msg)) = rest.split_once(": ")
    {
        return msg;
    }
    rest
}
