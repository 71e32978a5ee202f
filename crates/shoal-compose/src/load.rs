//! Loading stack files: each file parsed with positions, its values interpolated, the files
//! merged in order by service name (a later file's value over an earlier one's), then decoded.

use crate::decode::{self, Error, Project, Res};
use crate::interp;
use crate::yaml::{self, Node, Pos, Value};

/// A stack file as read: its name (as given, for messages) and text.
pub struct File {
    pub name: String,
    pub text: String,
}

/// What loading needs from outside: variables and the files an `env_file` names.
pub struct Env<'a> {
    /// A variable of the deploying shell or of `.env`.
    pub var: &'a dyn Fn(&str) -> Option<String>,
    /// Reads a file named relative to the first stack file.
    pub read: &'a dyn Fn(&str) -> Result<String, String>,
}

/// The loaded project and the warnings found on the way.
#[derive(Debug)]
pub struct Loaded {
    pub project: Project,
    pub warnings: Vec<String>,
}

/// Keys whose lists a later file extends instead of replacing.
const APPENDED: &[&str] =
    &["ports", "volumes", "secrets", "configs", "env_file", "tmpfs", "constraints", "preferences"];
/// Keys whose `KEY=VALUE` lists are mappings for merging.
const KEYED: &[&str] = &["environment", "labels"];

/// Loads `files` in order.
pub fn load(files: &[File], env: &Env<'_>) -> Result<Loaded, Error> {
    let root = merged(files, env)?;
    let mut warnings = Vec::new();
    let env_file = |n: &Node, path: &str| -> Res<Vec<(String, String)>> {
        let text =
            (env.read)(path).map_err(|e| Error { pos: n.pos.clone(), message: format!("env_file {path:?}: {e}") })?;
        interp::parse_env_file(&text).map_err(|(line, why)| Error {
            pos: n.pos.clone(),
            message: format!("env_file {path:?}, line {line}: {why}"),
        })
    };
    let project = decode::project(&root, &env_file, env.var, &mut |pos, w| warnings.push(format!("{pos}: {w}")))?;
    Ok(Loaded { project, warnings })
}

/// The files interpolated and merged, before decoding (`stack config` prints it).
pub fn merged(files: &[File], env: &Env<'_>) -> Result<Node, Error> {
    let mut merged: Option<Node> = None;
    for f in files {
        let mut root = yaml::parse(&f.name, &f.text).map_err(|e| Error { pos: e.pos, message: e.message })?;
        interpolate(&mut root, env.var)?;
        normalize(&mut root);
        merged = Some(match merged {
            None => root,
            Some(base) => merge(base, root, ""),
        });
    }
    Ok(merged.unwrap_or(Node { pos: Pos::default(), value: Value::Null }))
}

/// Interpolates every value (not keys) of the tree.
fn interpolate(n: &mut Node, var: &dyn Fn(&str) -> Option<String>) -> Result<(), Error> {
    match &mut n.value {
        Value::Scalar(s, _) if s.contains('$') => {
            *s = interp::interpolate(s, var).map_err(|e| Error { pos: n.pos.clone(), message: e.to_string() })?;
        }
        Value::Seq(items) => {
            for i in items {
                interpolate(i, var)?;
            }
        }
        Value::Map(entries) => {
            for (_, v) in entries {
                interpolate(v, var)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Turns `KEY=VALUE` lists of environment and labels into mappings, so files merge by key.
fn normalize(n: &mut Node) {
    let Value::Map(entries) = &mut n.value else { return };
    for (k, v) in entries.iter_mut() {
        let key = k.as_str().unwrap_or("");
        if KEYED.contains(&key) {
            if let Value::Seq(items) = &v.value {
                let pairs = items
                    .iter()
                    .map(|i| {
                        let s = i.as_str().unwrap_or("");
                        let (name, value) = match s.split_once('=') {
                            Some((a, b)) => (a, Node { pos: i.pos.clone(), value: Value::Scalar(b.to_string(), true) }),
                            None => (s, Node { pos: i.pos.clone(), value: Value::Null }),
                        };
                        (Node::scalar(i.pos.clone(), name), value)
                    })
                    .collect();
                v.value = Value::Map(pairs);
                continue;
            }
        }
        normalize(v);
    }
}

/// `over` merged onto `base`: mappings key by key, lists of [`APPENDED`] keys extended, anything
/// else replaced.
fn merge(base: Node, over: Node, key: &str) -> Node {
    match (base.value, over.value) {
        (Value::Map(mut b), Value::Map(o)) => {
            for (k, v) in o {
                match b.iter().position(|(bk, _)| bk.as_str().is_some() && bk.as_str() == k.as_str()) {
                    Some(i) => {
                        let (bk, bv) = b.remove(i);
                        let name = bk.as_str().unwrap_or("").to_string();
                        b.insert(i, (bk, merge(bv, v, &name)));
                    }
                    None => b.push((k, v)),
                }
            }
            Node { pos: base.pos, value: Value::Map(b) }
        }
        (Value::Seq(mut b), Value::Seq(o)) if APPENDED.contains(&key) => {
            b.extend(o);
            Node { pos: base.pos, value: Value::Seq(b) }
        }
        (_, o) => Node { pos: over.pos, value: o },
    }
}
