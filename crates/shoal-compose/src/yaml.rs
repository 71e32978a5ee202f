//! YAML as the stack loader needs it: a tree whose every node knows where it was written
//! (file, line, column), with anchors and aliases resolved and merge keys (`<<`) applied.
//! Scalars stay text (with whether they were quoted); the decoder gives them types.

use std::fmt;
use std::sync::Arc;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// Where a node was written: file, line and column (both from 1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pos {
    pub file: Arc<str>,
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
    }
}

/// A node's content.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    /// Text, and whether it was quoted (then never a number, a boolean or null).
    Scalar(String, bool),
    Seq(Vec<Node>),
    /// Entries in the order written.
    Map(Vec<(Node, Node)>),
}

/// A node and where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

impl Node {
    /// A scalar node.
    pub fn scalar(pos: Pos, text: impl Into<String>) -> Node {
        Node { pos, value: Value::Scalar(text.into(), true) }
    }

    /// The text of a scalar node (numbers and booleans included).
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar(s, _) => Some(s),
            _ => None,
        }
    }

    /// What kind of node this is, for messages.
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Null => "nothing",
            Value::Scalar(..) => "a single value",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The value of `key` in a mapping node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// A YAML syntax error, with its place.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.pos, self.message)
    }
}

enum Frame {
    Seq { pos: Pos, anchor: usize, items: Vec<Node> },
    Map { pos: Pos, anchor: usize, entries: Vec<(Node, Node)>, key: Option<Node> },
}

fn null_text(s: &str) -> bool {
    matches!(s, "" | "~" | "null" | "Null" | "NULL")
}

/// Parses the first document of `text` (the file `file`); an empty file is `Null`.
pub fn parse(file: &str, text: &str) -> Result<Node, SyntaxError> {
    let file: Arc<str> = Arc::from(file);
    let at = |span: &Span| Pos { file: file.clone(), line: span.start.line(), col: span.start.col() + 1 };
    let mut anchors: std::collections::HashMap<usize, Node> = std::collections::HashMap::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Node> = None;
    for ev in Parser::new_from_str(text) {
        let (ev, span) = ev.map_err(|e| SyntaxError {
            pos: Pos { file: file.clone(), line: e.marker().line(), col: e.marker().col() + 1 },
            message: e.info().to_string(),
        })?;
        let done = match ev {
            Event::Scalar(v, style, anchor, tag) => {
                let quoted = style != ScalarStyle::Plain || tag.is_some();
                let value = if !quoted && null_text(&v) { Value::Null } else { Value::Scalar(v.into_owned(), quoted) };
                let node = Node { pos: at(&span), value };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                Some(node)
            }
            Event::Alias(id) => Some(anchors.get(&id).cloned().ok_or_else(|| SyntaxError {
                pos: at(&span),
                message: "an alias to an anchor not defined before it".into(),
            })?),
            Event::SequenceStart(anchor, _) => {
                stack.push(Frame::Seq { pos: at(&span), anchor, items: Vec::new() });
                None
            }
            Event::MappingStart(anchor, _) => {
                stack.push(Frame::Map { pos: at(&span), anchor, entries: Vec::new(), key: None });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match stack.pop() {
                    Some(Frame::Seq { pos, anchor, items }) => (Node { pos, value: Value::Seq(items) }, anchor),
                    Some(Frame::Map { pos, anchor, entries, .. }) => {
                        (Node { pos: pos.clone(), value: Value::Map(apply_merge(entries)?) }, anchor)
                    }
                    None => continue,
                };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                Some(node)
            }
            Event::DocumentEnd => break,
            _ => None,
        };
        let Some(node) = done else { continue };
        match stack.last_mut() {
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                Some(k) => entries.push((k, node)),
                None => *key = Some(node),
            },
            None => {
                root = Some(node);
                break;
            }
        }
    }
    Ok(root.unwrap_or(Node { pos: Pos { file, line: 1, col: 1 }, value: Value::Null }))
}

/// Applies merge keys: `<<: *a` or `<<: [*a, *b]` adds the entries of the mappings named that
/// the mapping does not set itself (an earlier one wins over a later one).
fn apply_merge(entries: Vec<(Node, Node)>) -> Result<Vec<(Node, Node)>, SyntaxError> {
    let is_merge = |k: &Node| matches!(&k.value, Value::Scalar(s, false) if s == "<<");
    if !entries.iter().any(|(k, _)| is_merge(k)) {
        return Ok(entries);
    }
    let mut own: Vec<(Node, Node)> = Vec::new();
    let mut merged: Vec<Node> = Vec::new();
    for (k, v) in entries {
        if is_merge(&k) {
            match v.value {
                Value::Map(_) => merged.push(v),
                Value::Seq(items) => merged.extend(items),
                _ => {
                    return Err(SyntaxError {
                        pos: v.pos,
                        message: "a merge key (<<) takes a mapping or a list of them".into(),
                    })
                }
            }
        } else {
            own.push((k, v));
        }
    }
    for m in merged {
        let Value::Map(entries) = m.value else {
            return Err(SyntaxError {
                pos: m.pos,
                message: "a merge key (<<) takes a mapping or a list of them".into(),
            });
        };
        for (k, v) in entries {
            if !own.iter().any(|(o, _)| o.as_str().is_some() && o.as_str() == k.as_str()) {
                own.push((k, v));
            }
        }
    }
    Ok(own)
}

/// Writes the tree back as YAML (block style; scalars quoted where a plain one would read
/// differently).
pub fn emit(n: &Node) -> String {
    let mut out = String::new();
    match &n.value {
        Value::Map(e) if !e.is_empty() => emit_map(e, 0, &mut out),
        Value::Seq(v) if !v.is_empty() => emit_seq(v, 0, &mut out),
        _ => {
            out.push_str(&inline(n));
            out.push('\n');
        }
    }
    out
}

fn inline(n: &Node) -> String {
    match &n.value {
        Value::Null => "null".into(),
        Value::Scalar(s, quoted) => scalar(s, *quoted),
        Value::Seq(_) => "[]".into(),
        Value::Map(_) => "{}".into(),
    }
}

fn block(n: &Node) -> bool {
    matches!(&n.value, Value::Map(e) if !e.is_empty()) || matches!(&n.value, Value::Seq(v) if !v.is_empty())
}

fn emit_map(entries: &[(Node, Node)], indent: usize, out: &mut String) {
    for (k, v) in entries {
        out.push_str(&" ".repeat(indent));
        out.push_str(&inline(k));
        out.push(':');
        match &v.value {
            Value::Map(e) if !e.is_empty() => {
                out.push('\n');
                emit_map(e, indent + 2, out);
            }
            Value::Seq(items) if !items.is_empty() => {
                out.push('\n');
                emit_seq(items, indent + 2, out);
            }
            _ => {
                out.push(' ');
                out.push_str(&inline(v));
                out.push('\n');
            }
        }
    }
}

fn emit_seq(items: &[Node], indent: usize, out: &mut String) {
    for i in items {
        out.push_str(&" ".repeat(indent));
        out.push('-');
        if block(i) {
            // The first entry on the dash's line, the rest under it.
            let mut inner = String::new();
            match &i.value {
                Value::Map(e) => emit_map(e, indent + 2, &mut inner),
                Value::Seq(v) => emit_seq(v, indent + 2, &mut inner),
                _ => {}
            }
            out.push(' ');
            out.push_str(inner.trim_start());
        } else {
            out.push(' ');
            out.push_str(&inline(i));
            out.push('\n');
        }
    }
}

fn scalar(s: &str, quoted: bool) -> String {
    let typed = null_text(s)
        || matches!(s, "true" | "false" | "True" | "False" | "TRUE" | "FALSE" | "yes" | "no" | "on" | "off")
        || s.parse::<f64>().is_ok();
    let special = s.is_empty()
        || s.starts_with(|c: char| " -?:,[]{}#&*!|>'\"%@`".contains(c))
        || s.ends_with(' ')
        || s.contains(": ")
        || s.contains(" #")
        || s.contains('\n')
        || s.contains('\t');
    if (quoted && typed) || special {
        let mut q = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => q.push_str("\\\""),
                '\\' => q.push_str("\\\\"),
                '\n' => q.push_str("\\n"),
                '\t' => q.push_str("\\t"),
                c => q.push(c),
            }
        }
        q.push('"');
        q
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_know_their_place() {
        let n = parse("a.yml", "services:\n  web:\n    image: \"x\"\n    replicas: 3\n").expect("parse");
        let web = n.get("services").and_then(|s| s.get("web")).expect("web");
        let image = web.get("image").expect("image");
        assert_eq!((image.pos.line, image.pos.col, image.value.clone()), (3, 12, Value::Scalar("x".into(), true)));
        assert_eq!(web.get("replicas").map(|r| r.value.clone()), Some(Value::Scalar("3".into(), false)));
        assert_eq!(image.pos.to_string(), "a.yml:3:12");
    }

    #[test]
    fn anchors_aliases_and_merge_keys() {
        let text = "x-base: &base\n  image: img\n  environment: {A: '1'}\nx-more: &more\n  user: app\n  image: other\nservices:\n  a:\n    <<: [*base, *more]\n    image: mine\n  b: *base\n";
        let n = parse("f", text).expect("parse");
        let a = n.get("services").and_then(|s| s.get("a")).expect("a");
        assert_eq!(a.get("image").and_then(Node::as_str), Some("mine"), "its own key wins");
        assert_eq!(a.get("user").and_then(Node::as_str), Some("app"));
        assert_eq!(a.get("environment").and_then(|e| e.get("A")).and_then(Node::as_str), Some("1"));
        let b = n.get("services").and_then(|s| s.get("b")).expect("b");
        assert_eq!(b.get("image").and_then(Node::as_str), Some("img"));
    }

    /// The node without its places, to compare content.
    fn content(n: &Node) -> Value {
        match &n.value {
            Value::Seq(v) => Value::Seq(v.iter().map(|i| Node { pos: Pos::default(), value: content(i) }).collect()),
            Value::Map(e) => Value::Map(
                e.iter()
                    .map(|(k, v)| {
                        (
                            Node { pos: Pos::default(), value: content(k) },
                            Node { pos: Pos::default(), value: content(v) },
                        )
                    })
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    #[test]
    fn emitted_yaml_reads_back_the_same() {
        let text = "a:\n  b: [1, \"2\", x]\n  c: {d: \"it's: here\", e: null, f: ''}\nlist:\n  - {k: v, w: [1]}\n  - plain\n  - \"-dash\"\nempty: {}\n";
        let n = parse("f", text).expect("parse");
        let out = emit(&n);
        let back = parse("f", &out).expect("reparse");
        assert_eq!(content(&back), content(&n), "{out}");
        assert!(out.contains("\"2\""), "a quoted number stays quoted: {out}");
    }

    #[test]
    fn nulls_and_syntax_errors() {
        let n = parse("f", "a: ~\nb:\nc: 'null'\n").expect("parse");
        assert_eq!(n.get("a").map(|v| v.value.clone()), Some(Value::Null));
        assert_eq!(n.get("b").map(|v| v.value.clone()), Some(Value::Null));
        assert_eq!(n.get("c").and_then(Node::as_str), Some("null"));
        let e = parse("f.yml", "a: [1, 2\nb: 3\n").expect_err("unclosed");
        assert!(e.to_string().starts_with("f.yml:"), "{e}");
        assert_eq!(parse("f", "").expect("empty").value, Value::Null);
        let e = parse("f", "a: *nope\n").expect_err("unknown alias");
        assert!(e.to_string().starts_with("f:1:"), "{e}");
    }
}
