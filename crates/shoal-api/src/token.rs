//! Join tokens: `SHTKN-1-<cluster digest>-<secret>`.
//!
//! The digest names the cluster a token belongs to (it becomes the digest of the root CA
//! certificate once the PKI exists, without changing the format); the secret admits a node with
//! the role the token is for. Both parts are lower-case base 36.

use std::fmt;

const PREFIX: &str = "SHTKN";
const VERSION: &str = "1";

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Identifies the cluster (later: the CA certificate) the token is for.
    pub cluster_digest: String,
    /// The secret that admits a node.
    pub secret: String,
}

// The secret must never reach a log line through `{:?}`.
impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("cluster_digest", &self.cluster_digest)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Why a string is not a join token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// The token does not have the `SHTKN-1-<digest>-<secret>` shape.
    #[error("malformed join token: expected SHTKN-1-<digest>-<secret>; copy it again from `shoal cluster join-token`")]
    Malformed,
    /// The token was made by a newer or unknown version of shoal.
    #[error("unsupported join token version {0:?}")]
    Version(String),
}

impl JoinToken {
    /// Parses a token as printed by [`fmt::Display`].
    pub fn parse(s: &str) -> Result<Self, TokenError> {
        let mut parts = s.trim().split('-');
        let (Some(prefix), Some(version), Some(digest), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        if prefix != PREFIX {
            return Err(TokenError::Malformed);
        }
        if version != VERSION {
            return Err(TokenError::Version(version.to_string()));
        }
        let ok = |p: &str| {
            !p.is_empty() && p.len() <= 128 && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        if !ok(digest) || !ok(secret) {
            return Err(TokenError::Malformed);
        }
        Ok(Self { cluster_digest: digest.to_string(), secret: secret.to_string() })
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}-{VERSION}-{}-{}", self.cluster_digest, self.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let t = JoinToken { cluster_digest: "abc123".into(), secret: "s3cr3t".into() };
        let s = t.to_string();
        assert_eq!(s, "SHTKN-1-abc123-s3cr3t");
        assert_eq!(JoinToken::parse(&s), Ok(t));
    }

    #[test]
    fn garbled_tokens_are_rejected() {
        for bad in ["", "SHTKN", "SHTKN-1-abc", "XTKN-1-a-b", "SHTKN-1-a-b-c", "SHTKN-1-A B-c", "SHTKN-1--b"] {
            assert_eq!(JoinToken::parse(bad), Err(TokenError::Malformed), "{bad}");
        }
        assert_eq!(JoinToken::parse("SHTKN-2-a-b"), Err(TokenError::Version("2".into())));
    }

    #[test]
    fn debug_hides_the_secret() {
        let t = JoinToken { cluster_digest: "abc".into(), secret: "topsecret".into() };
        assert!(!format!("{t:?}").contains("topsecret"));
    }
}
