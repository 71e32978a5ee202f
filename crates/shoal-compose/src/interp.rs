//! Variable interpolation in values, as Compose does it: `$V`, `${V}`, `${V:-default}` (unset or
//! empty), `${V-default}` (unset), `${V:?message}` / `${V?message}` (required), `${V:+alt}` /
//! `${V+alt}` (set), `$$` for a literal `$`. Defaults and alternatives may hold interpolations.

/// Why a value could not be interpolated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterpError {
    /// `${V?message}` with `V` unset (or empty, with `:?`).
    Required { name: String, message: String },
    /// Not a valid interpolation (an unclosed `${`, a bad name).
    Invalid(String),
}

impl std::fmt::Display for InterpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InterpError::Required { name, message } if message.is_empty() => {
                write!(f, "required variable {name} is not set")
            }
            InterpError::Required { name, message } => write!(f, "required variable {name} is not set: {message}"),
            InterpError::Invalid(s) => write!(f, "invalid interpolation: {s}"),
        }
    }
}

fn name_char(c: char, first: bool) -> bool {
    c == '_' || c.is_ascii_alphabetic() || (!first && c.is_ascii_digit())
}

/// Interpolates `s`, reading variables with `lookup`.
pub fn interpolate(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, InterpError> {
    let mut out = String::with_capacity(s.len());
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c != '$' {
            out.push(c);
            i += 1;
            continue;
        }
        match chars.get(i + 1) {
            Some('$') => {
                out.push('$');
                i += 2;
            }
            Some('{') => {
                // The matching brace, counting nested ones.
                let mut depth = 0;
                let mut end = None;
                for (j, ch) in chars.iter().enumerate().skip(i + 1) {
                    match ch {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = Some(j);
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let end = end.ok_or_else(|| InterpError::Invalid(format!("{s:?} has a ${{ without its }}")))?;
                let inner: String = chars[i + 2..end].iter().collect();
                out.push_str(&braced(&inner, s, lookup)?);
                i = end + 1;
            }
            Some(&n) if name_char(n, true) => {
                let mut j = i + 1;
                while j < chars.len() && name_char(chars[j], false) {
                    j += 1;
                }
                let name: String = chars[i + 1..j].iter().collect();
                out.push_str(&lookup(&name).unwrap_or_default());
                i = j;
            }
            _ => {
                out.push('$');
                i += 1;
            }
        }
    }
    Ok(out)
}

fn braced(inner: &str, whole: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, InterpError> {
    let name_len = inner.char_indices().find(|(k, c)| !name_char(*c, *k == 0)).map_or(inner.len(), |(k, _)| k);
    let (name, rest) = inner.split_at(name_len);
    if name.is_empty() {
        return Err(InterpError::Invalid(format!("{whole:?}: ${{{inner}}} does not start with a variable name")));
    }
    let value = lookup(name);
    let set = value.is_some();
    let non_empty = value.as_deref().is_some_and(|v| !v.is_empty());
    let (op, arg) = if let Some(r) = rest.strip_prefix(":-") {
        (":-", r)
    } else if let Some(r) = rest.strip_prefix(":?") {
        (":?", r)
    } else if let Some(r) = rest.strip_prefix(":+") {
        (":+", r)
    } else if rest.is_empty() {
        ("", "")
    } else {
        rest.split_at(1)
    };
    match op {
        "" => Ok(value.unwrap_or_default()),
        ":-" if !non_empty => interpolate(arg, lookup),
        "-" if !set => interpolate(arg, lookup),
        ":-" | "-" => Ok(value.unwrap_or_default()),
        ":?" if !non_empty => Err(InterpError::Required { name: name.into(), message: interpolate(arg, lookup)? }),
        "?" if !set => Err(InterpError::Required { name: name.into(), message: interpolate(arg, lookup)? }),
        ":?" | "?" => Ok(value.unwrap_or_default()),
        ":+" if non_empty => interpolate(arg, lookup),
        "+" if set => interpolate(arg, lookup),
        ":+" | "+" => Ok(String::new()),
        _ => Err(InterpError::Invalid(format!("{whole:?}: ${{{inner}}} is not a known form"))),
    }
}

/// Parses a `.env` file: `KEY=VALUE` lines, `#` comments, optional `export `, values in single
/// quotes (literal) or double quotes (with `\n` escapes). Returns the pairs, or the first bad
/// line's number and why.
pub fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (k, v) = match line.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => (line, ""),
        };
        if k.is_empty() || !k.chars().enumerate().all(|(i, c)| name_char(c, i == 0) || c == '.' || c == '-') {
            return Err((n + 1, format!("{k:?} is not a variable name")));
        }
        let v = if let Some(q) = v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
            q.to_string()
        } else if let Some(q) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            q.replace("\\n", "\n").replace("\\\"", "\"")
        } else {
            // An unquoted value ends at a ` #` comment.
            v.split(" #").next().unwrap_or("").trim_end().to_string()
        };
        out.push((k.to_string(), v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SET" => Some("yes".into()),
            "EMPTY" => Some(String::new()),
            "TAG" => Some("1.2".into()),
            _ => None,
        }
    }

    fn i(s: &str) -> Result<String, InterpError> {
        interpolate(s, &env)
    }

    #[test]
    fn every_form() {
        let ok = |s: &str| i(s).expect(s);
        assert_eq!(ok("img:$TAG"), "img:1.2");
        assert_eq!(ok("img:${TAG}-x"), "img:1.2-x");
        assert_eq!(ok("${UNSET}"), "");
        assert_eq!(ok("${UNSET:-d}|${EMPTY:-d}|${SET:-d}"), "d|d|yes");
        assert_eq!(ok("${UNSET-d}|${EMPTY-d}|${SET-d}"), "d||yes");
        assert_eq!(ok("${SET:+alt}|${EMPTY:+alt}|${UNSET:+alt}"), "alt||");
        assert_eq!(ok("${SET+alt}|${EMPTY+alt}|${UNSET+alt}"), "alt|alt|");
        assert_eq!(ok("${SET:?m}|${EMPTY?m}"), "yes|");
        assert_eq!(ok("cost: $$5 and $$TAG"), "cost: $5 and $TAG");
        assert_eq!(ok("${UNSET:-${TAG}}"), "1.2", "a default holds an interpolation");
        assert_eq!(ok("100%$ and $ alone"), "100%$ and $ alone");
        assert_eq!(ok("$TAG.x"), "1.2.x");
    }

    #[test]
    fn required_and_invalid() {
        assert_eq!(
            i("${UNSET:?set it in .env}"),
            Err(InterpError::Required { name: "UNSET".into(), message: "set it in .env".into() })
        );
        assert_eq!(i("${EMPTY:?}"), Err(InterpError::Required { name: "EMPTY".into(), message: String::new() }));
        assert_eq!(i("${UNSET?}").map_err(|e| e.to_string()), Err("required variable UNSET is not set".into()));
        assert!(matches!(i("${TAG"), Err(InterpError::Invalid(_))));
        assert!(matches!(i("${:-x}"), Err(InterpError::Invalid(_))));
        assert!(matches!(i("${TAG%x}"), Err(InterpError::Invalid(_))));
    }

    #[test]
    fn env_files() {
        let text = "# comment\nA=1\nexport B = two words # note\nC='$lit'\nD=\"x\\ny\"\nE=\n";
        let v = parse_env_file(text).expect("parse");
        let get = |k: &str| v.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(
            (get("A"), get("B"), get("C"), get("D"), get("E")),
            (Some("1"), Some("two words"), Some("$lit"), Some("x\ny"), Some(""))
        );
        assert_eq!(parse_env_file("ok=1\n9bad=2\n").map_err(|e| e.0), Err(2));
    }
}
