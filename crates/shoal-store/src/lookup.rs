//! Resolving what a user typed (an id, a name, an id prefix) to one object.
//!
//! The order is fixed so the same words always mean the same object: exact id, then exact name
//! (the hostname for nodes), then a unique id prefix. Words with a meaning outside the store,
//! like a node's `self`, are the caller's business and are not handled here.

use std::ops::Bound;

use crate::record::{Record, Table};

/// A reference that does not resolve to exactly one object.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// No object has this id, name or id prefix.
    #[error("{kind} \"{query}\" not found")]
    NotFound {
        /// The kind looked for (`service`, `node`, ...).
        kind: &'static str,
        /// What the user asked for.
        query: String,
    },
    /// Several objects match: an id prefix shared by several ids, or a hostname several nodes
    /// carry.
    #[error("{kind} \"{query}\" is ambiguous: matches {count} {kind}s; use the id or a longer prefix of it")]
    Ambiguous {
        /// The kind looked for (`service`, `node`, ...).
        kind: &'static str,
        /// What the user asked for.
        query: String,
        /// How many objects match.
        count: usize,
    },
}

/// Resolves `query` in `table`: exact id, exact name, unique id prefix.
pub(crate) fn resolve<'a, T: Record>(table: &'a Table<T>, query: &str) -> Result<&'a T, LookupError> {
    let kind = T::TAG.name();
    let not_found = || LookupError::NotFound { kind, query: query.to_owned() };
    let ambiguous = |count| LookupError::Ambiguous { kind, query: query.to_owned(), count };
    if query.is_empty() {
        return Err(not_found());
    }
    if let Some(rec) = table.get(query) {
        return Ok(rec);
    }
    if T::NAMED {
        if let Some(rec) = table.by_name(query) {
            return Ok(rec);
        }
    } else {
        // Names of unnamed kinds (node hostnames) are not unique and not indexed.
        let mut named = table.items.values().filter(|rec| rec.name() == query);
        if let Some(first) = named.next() {
            let others = named.count();
            return if others == 0 { Ok(first) } else { Err(ambiguous(others + 1)) };
        }
    }
    let mut prefixed = table
        .items
        .range::<str, _>((Bound::Included(query), Bound::Unbounded))
        .take_while(|(id, _)| id.starts_with(query))
        .map(|(_, rec)| rec);
    match prefixed.next() {
        None => Err(not_found()),
        Some(first) => match prefixed.count() {
            0 => Ok(first),
            others => Err(ambiguous(others + 1)),
        },
    }
}
