//! A strict RFC 4180 CSV reader (no CSV crate is available offline): comma-separated fields,
//! `"`-quoted fields that may hold commas, `""` and line breaks, LF or CRLF records, a header
//! row. Errors name the file and the line.

use crate::load::DataError;
use std::path::Path;

/// A CSV table: the header and the records, each with its 1-based starting line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Csv {
    /// Column names.
    pub header: Vec<String>,
    /// `(line, fields)` per record, `fields.len() == header.len()`.
    pub rows: Vec<(usize, Vec<String>)>,
}

impl Csv {
    /// The index of column `name`, or an error naming the columns there are.
    pub fn column(&self, path: &Path, name: &str) -> Result<usize, DataError> {
        self.header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| DataError::Malformed {
                path: path.to_path_buf(),
                line: 1,
                reason: format!("no column `{name}` in the header {:?}", self.header),
            })
    }
}

/// Parses `text` (the contents of `path`).
pub fn parse_csv(path: &Path, text: &str) -> Result<Csv, DataError> {
    let err = |line: usize, reason: String| DataError::Malformed {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records: Vec<(usize, Vec<String>)> = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1usize;
    while chars.peek().is_some() {
        let start = line;
        let mut fields = Vec::new();
        loop {
            let mut field = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                let opened = line;
                loop {
                    match chars.next() {
                        None => {
                            return Err(err(opened, "unterminated quoted field".into()));
                        }
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            field.push('"');
                        }
                        Some('"') => break,
                        Some(c) => {
                            if c == '\n' {
                                line += 1;
                            }
                            field.push(c);
                        }
                    }
                }
                match chars.peek() {
                    None | Some(',') | Some('\n') | Some('\r') => {}
                    Some(c) => {
                        return Err(err(
                            line,
                            format!(
                            "{c:?} after a closing quote (a quote inside a field must be doubled)"
                        ),
                        ))
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if matches!(c, ',' | '\n' | '\r') {
                        break;
                    }
                    if c == '"' {
                        return Err(err(
                            line,
                            "`\"` inside an unquoted field (quote the field and double the quote)"
                                .into(),
                        ));
                    }
                    field.push(c);
                    chars.next();
                }
            }
            fields.push(field);
            match chars.next() {
                Some(',') => continue,
                Some('\r') => {
                    if chars.next_if_eq(&'\n').is_none() {
                        return Err(err(line, "a bare carriage return ends the record".into()));
                    }
                    line += 1;
                    break;
                }
                Some('\n') => {
                    line += 1;
                    break;
                }
                None => break,
                Some(_) => unreachable!("fields end at a separator"),
            }
        }
        if fields.len() == 1 && fields[0].is_empty() {
            continue; // an empty line
        }
        records.push((start, fields));
    }
    let mut it = records.into_iter();
    let Some((_, header)) = it.next() else {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            reason: "no header row".into(),
        });
    };
    let rows: Vec<(usize, Vec<String>)> = it.collect();
    if let Some((l, f)) = rows.iter().find(|(_, f)| f.len() != header.len()) {
        return Err(err(
            *l,
            format!(
                "{} fields, the header has {} ({:?})",
                f.len(),
                header.len(),
                header
            ),
        ));
    }
    Ok(Csv { header, rows })
}
