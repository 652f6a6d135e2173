//! A strict reader for the YAML subset of ChatterBot corpus files (no YAML crate is available
//! offline). It accepts exactly:
//!
//! ```yaml
//! categories:
//! - name
//! conversations:
//! - - first utterance
//!   - reply
//!   - |
//!     literal block (|, |- or |+)
//!   - 'single-quoted, may span lines'
//!   - "double-quoted, with \" escapes"
//!   - plain text that may continue
//!     on more-indented lines
//! ```
//!
//! plus blank lines and `#` comment lines between items, and `- text` items under
//! `conversations:` (a text, not a conversation: kept apart in
//! [`ChatterbotFile::not_conversations`]). Anything else (mappings inside items,
//! flow collections, anchors, tabs, a plain scalar holding `: ` or ` #`) is an error naming the
//! file and line, never silently read as something else.

use crate::load::DataError;
use std::path::Path;

/// YAML's white space: only space and tab (a no-break space is content).
const WS: [char; 2] = [' ', '\t'];

/// One scalar with its 1-based starting line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Utterance {
    /// The text, as YAML defines the scalar's value.
    pub text: String,
    /// Line where the item starts.
    pub line: usize,
}

/// The contents of one ChatterBot YAML file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatterbotFile {
    /// `categories:` items.
    pub categories: Vec<String>,
    /// `conversations:` items, each a list of utterances.
    pub conversations: Vec<Vec<Utterance>>,
    /// `conversations:` items that YAML reads as a single text, not a list (a `- - ` typed as
    /// `- `: english/trivia.yml of chatterbot-corpus 1.3.3 has one, at line 35, whose reply
    /// folds into it). They hold no utterance/reply pair.
    pub not_conversations: Vec<Utterance>,
}

struct Lines<'a> {
    lines: Vec<&'a str>,
    at: usize,
}

/// Parses the text of a ChatterBot YAML file (`path` is for messages).
pub fn parse_chatterbot(path: &Path, text: &str) -> Result<ChatterbotFile, DataError> {
    let err = |line: usize, reason: String| DataError::Malformed {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut src = Lines {
        lines: text.lines().collect(),
        at: 0,
    };
    let mut out = ChatterbotFile::default();
    let mut section: Option<&str> = None;
    let mut seen: Vec<&str> = Vec::new();
    while src.at < src.lines.len() {
        let no = src.at + 1;
        let line = src.lines[src.at];
        if line.trim_matches(WS).is_empty() || line.trim_start().starts_with('#') {
            src.at += 1;
            continue;
        }
        if line.starts_with(char::is_whitespace) && !line.starts_with("  - ") {
            return Err(err(
                no,
                format!("unexpected indentation: {line:?} (only `  - ` items are indented)"),
            ));
        }
        if let Some(key) = line.strip_suffix(':').filter(|k| !k.starts_with('-')) {
            let key = key.trim_end();
            if key != "categories" && key != "conversations" {
                return Err(err(
                    no,
                    format!("unknown key `{key}`; expected `categories:` or `conversations:`"),
                ));
            }
            if seen.contains(&key) {
                return Err(err(no, format!("key `{key}` appears twice")));
            }
            seen.push(key);
            section = Some(if key == "categories" {
                "categories"
            } else {
                "conversations"
            });
            src.at += 1;
            continue;
        }
        match (section, line) {
            (Some("conversations"), l) if l.starts_with("- - ") => {
                let u = scalar(&mut src, 4, 2, &err)?;
                out.conversations.push(vec![u]);
            }
            (Some("conversations"), l) if l.starts_with("  - ") => {
                let u = scalar(&mut src, 4, 2, &err)?;
                match out.conversations.last_mut() {
                    Some(c) => c.push(u),
                    None => {
                        return Err(err(no, "`  - ` item before any `- - ` conversation".into()))
                    }
                }
            }
            (Some("conversations"), l) if l.starts_with("- ") => {
                let u = scalar(&mut src, 2, 0, &err)?;
                out.not_conversations.push(u);
            }
            (Some("categories"), l) if l.starts_with("- ") => {
                out.categories.push(scalar(&mut src, 2, 0, &err)?.text);
            }
            (None, _) => {
                return Err(err(
                    no,
                    format!("{line:?} before `categories:` or `conversations:`"),
                ))
            }
            (Some(s), _) => {
                let want = if s == "categories" {
                    "`- name`"
                } else {
                    "`- - utterance` or `  - reply`"
                };
                return Err(err(
                    no,
                    format!("expected {want} under `{s}:`, got {line:?}"),
                ));
            }
        }
    }
    Ok(out)
}

/// Reads the scalar that starts at column `col` of the current line (a sequence item whose
/// dash is at column `dash`), advancing past its continuation lines.
fn scalar(
    src: &mut Lines,
    col: usize,
    dash: usize,
    err: &dyn Fn(usize, String) -> DataError,
) -> Result<Utterance, DataError> {
    let start = src.at;
    let no = start + 1;
    let first = &src.lines[start][col..];
    src.at += 1;
    let head = first.trim_end_matches(WS);
    if head.is_empty() {
        return Err(err(no, "empty item (a YAML null), expected text".into()));
    }
    if head.contains('\t') || src.lines[start][..col].contains('\t') {
        return Err(err(no, "tab character; use spaces".into()));
    }
    if head == "-" || head.starts_with("- ") {
        return Err(err(
            no,
            "unsupported YAML: a list nested deeper than `- - utterance`".into(),
        ));
    }
    let text = match head.as_bytes()[0] {
        b'|' => block(src, head, dash, no, err)?,
        b'\'' | b'"' => quoted(src, first, dash, no, err)?,
        b'>' | b'[' | b']' | b'{' | b'}' | b'&' | b'*' | b'!' | b'%' | b'@' | b'`' | b'#'
        | b'?' => {
            return Err(err(
                no,
                format!(
                    "unsupported YAML: an item starting with `{}`; quote the text",
                    &head[..1]
                ),
            ))
        }
        _ => plain(src, head, dash, no, err)?,
    };
    Ok(Utterance { text, line: no })
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// Whether line `i` continues the item whose dash is at column `dash` (blank or indented deeper).
fn continues(src: &Lines, i: usize, dash: usize) -> bool {
    src.lines
        .get(i)
        .is_some_and(|l| l.trim_matches(WS).is_empty() || indent(l) > dash)
}

fn plain(
    src: &mut Lines,
    head: &str,
    dash: usize,
    no: usize,
    err: &dyn Fn(usize, String) -> DataError,
) -> Result<String, DataError> {
    let mut parts: Vec<&str> = vec![head];
    while continues(src, src.at, dash) {
        parts.push(src.lines[src.at].trim_matches(WS));
        src.at += 1;
    }
    while parts.last() == Some(&"") {
        parts.pop();
    }
    for (k, p) in parts.iter().enumerate() {
        if p.contains(": ")
            || p.ends_with(':')
            || p.contains(" #")
            || (k == 0 && p.starts_with("- "))
            || (k > 0 && p.starts_with('#'))
        {
            return Err(err(
                no + k,
                format!("unsupported YAML in a plain scalar ({p:?} would be a mapping, comment or list); quote the text"),
            ));
        }
    }
    Ok(fold(&parts))
}

/// YAML line folding: a single line break becomes a space, each empty line a `\n`.
fn fold(parts: &[&str]) -> String {
    let mut out = String::new();
    let mut pending_breaks = 0usize;
    for (k, p) in parts.iter().enumerate() {
        if p.is_empty() {
            pending_breaks += 1;
            continue;
        }
        if k > 0 {
            if pending_breaks == 0 {
                out.push(' ');
            } else {
                out.extend(std::iter::repeat_n('\n', pending_breaks));
            }
        }
        pending_breaks = 0;
        out.push_str(p);
    }
    out
}

fn block(
    src: &mut Lines,
    head: &str,
    dash: usize,
    no: usize,
    err: &dyn Fn(usize, String) -> DataError,
) -> Result<String, DataError> {
    let chomp = match head {
        "|" => ' ',
        "|-" => '-',
        "|+" => '+',
        _ => {
            return Err(err(
                no,
                format!("unsupported block scalar header {head:?}; use |, |- or |+"),
            ))
        }
    };
    let mut body: Vec<&str> = Vec::new();
    let mut width = None;
    while continues(src, src.at, dash) {
        let line = src.lines[src.at];
        if !line.trim_matches(WS).is_empty() {
            let w = *width.get_or_insert(indent(line));
            if indent(line) < w {
                return Err(err(
                    src.at + 1,
                    format!(
                        "block line indented {} spaces, less than the block's {w}",
                        indent(line)
                    ),
                ));
            }
        }
        body.push(line);
        src.at += 1;
    }
    let Some(w) = width else {
        return Err(err(no, "empty block scalar".into()));
    };
    let mut lines: Vec<&str> = body.iter().map(|l| l.get(w..).unwrap_or("")).collect();
    let trailing = lines.iter().rev().take_while(|l| l.is_empty()).count();
    lines.truncate(lines.len() - trailing);
    let mut text = lines.join("\n");
    match chomp {
        '-' => {}
        '+' => text.extend(std::iter::repeat_n('\n', trailing + 1)),
        _ => text.push('\n'),
    }
    Ok(text)
}

fn quoted(
    src: &mut Lines,
    first: &str,
    dash: usize,
    no: usize,
    err: &dyn Fn(usize, String) -> DataError,
) -> Result<String, DataError> {
    let q = first.as_bytes()[0] as char;
    // Gather the raw lines up to the closing quote.
    let mut raw: Vec<&str> = vec![&first[1..]];
    let mut cur = 0usize; // index into raw of the line being scanned
    let mut pos = 0usize;
    let close = loop {
        let line = raw[cur];
        let b = line.as_bytes();
        let mut i = pos;
        let mut found = None;
        while i < b.len() {
            match (q, b[i]) {
                ('\'', b'\'') if b.get(i + 1) == Some(&b'\'') => i += 2,
                ('"', b'\\') => i += 2,
                (_, c) if c as char == q => {
                    found = Some(i);
                    break;
                }
                _ => i += 1,
            }
        }
        if let Some(i) = found {
            break (cur, i);
        }
        if !continues(src, src.at, dash) {
            return Err(err(no, format!("unterminated {q}-quoted scalar")));
        }
        raw.push(src.lines[src.at]);
        src.at += 1;
        cur += 1;
        pos = 0;
    };
    let rest = raw[close.0][close.1 + 1..].trim();
    if !rest.is_empty() && !rest.starts_with('#') {
        return Err(err(
            no + close.0,
            format!("text after the closing quote: {rest:?}"),
        ));
    }
    raw[close.0] = &raw[close.0][..close.1];
    // Fold: trim the whitespace around each line break.
    let n = raw.len();
    let parts: Vec<&str> = raw
        .iter()
        .enumerate()
        .map(|(k, l)| {
            let l = if k > 0 { l.trim_start_matches(WS) } else { l };
            if k + 1 < n {
                l.trim_end_matches(WS)
            } else {
                l
            }
        })
        .collect();
    if q == '\'' {
        return Ok(fold(&parts).replace("''", "'"));
    }
    // Double quotes: an escaped line break (`\` at the end) joins without a space.
    let mut joined = String::new();
    let mut pending = 0usize;
    for (k, p) in parts.iter().enumerate() {
        if k > 0 && p.is_empty() && k + 1 < n {
            pending += 1;
            continue;
        }
        if k > 0 {
            if joined.ends_with('\\') && !joined.ends_with("\\\\") {
                joined.pop();
            } else if pending == 0 {
                joined.push(' ');
            } else {
                joined.extend(std::iter::repeat_n('\n', pending));
            }
        }
        pending = 0;
        joined.push_str(p);
    }
    unescape(&joined).map_err(|e| err(no, e))
}

fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let e = it
            .next()
            .ok_or("`\\` at the end of a double-quoted scalar")?;
        let hex = |n: usize, it: &mut std::str::Chars| -> Result<char, String> {
            let h: String = it.by_ref().take(n).collect();
            u32::from_str_radix(&h, 16)
                .ok()
                .filter(|_| h.len() == n)
                .and_then(char::from_u32)
                .ok_or(format!("bad escape `\\{e}{h}`"))
        };
        out.push(match e {
            '0' => '\0',
            'a' => '\x07',
            'b' => '\x08',
            't' | '\t' => '\t',
            'n' => '\n',
            'v' => '\x0b',
            'f' => '\x0c',
            'r' => '\r',
            'e' => '\x1b',
            ' ' => ' ',
            '"' => '"',
            '/' => '/',
            '\\' => '\\',
            'N' => '\u{85}',
            '_' => '\u{a0}',
            'L' => '\u{2028}',
            'P' => '\u{2029}',
            'x' => hex(2, &mut it)?,
            'u' => hex(4, &mut it)?,
            'U' => hex(8, &mut it)?,
            other => {
                return Err(format!(
                    "unknown escape `\\{other}` in a double-quoted scalar"
                ))
            }
        });
    }
    Ok(out)
}
