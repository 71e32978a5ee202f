//! The openraft type configuration and the application data that travels through the log.
//!
//! [`Request`] and [`Response`] wrap the prost messages of `shoal-api`. Their serde form is the
//! protobuf encoding (base64 text in JSON, a byte string in binary formats; a JSON array of
//! integers is accepted too), so the log and the Raft RPCs carry exactly what the proto defines
//! and there is no second schema to keep in sync. This module does no I/O.

use std::fmt;

use prost::Message;
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use shoal_api::v1::{Command, CommandResult};

openraft::declare_raft_types!(
    /// openraft types of shoal's Raft group.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A running Raft instance of shoal.
pub type RaftNode = openraft::Raft<TypeConfig>;

/// A command proposed through Raft (the application data of a normal log entry).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Request(pub Command);

/// The outcome of applying a [`Request`], returned to the proposer by `client_write`.
///
/// Blank and membership entries produce an empty (default) result.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Response(pub CommandResult);

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "command({} ops)", self.0.ops.len())
    }
}

/// Serializes prost bytes: a base64 string in human-readable formats (JSON), bytes otherwise.
fn serialize_proto<S: Serializer>(msg: &impl Message, serializer: S) -> Result<S::Ok, S::Error> {
    let bytes = msg.encode_to_vec();
    if serializer.is_human_readable() {
        use base64::Engine;
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&bytes))
    } else {
        serializer.serialize_bytes(&bytes)
    }
}

/// Deserializes prost bytes written by [`serialize_proto`], or as a sequence of integers.
fn deserialize_proto<'de, M: Message + Default, D: Deserializer<'de>>(deserializer: D) -> Result<M, D::Error> {
    let bytes = if deserializer.is_human_readable() {
        deserializer.deserialize_any(BytesVisitor)?
    } else {
        deserializer.deserialize_bytes(BytesVisitor)?
    };
    M::decode(bytes.as_slice()).map_err(de::Error::custom)
}

impl Serialize for Request {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_proto(&self.0, serializer)
    }
}

impl<'de> Deserialize<'de> for Request {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_proto(deserializer).map(Request)
    }
}

impl Serialize for Response {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_proto(&self.0, serializer)
    }
}

impl<'de> Deserialize<'de> for Response {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_proto(deserializer).map(Response)
    }
}

/// Accepts base64 text, a byte string, or a sequence of integers.
struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("protobuf bytes (base64 text, bytes or a sequence of integers)")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(v.as_bytes()).map_err(E::custom)
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::v1::Object;

    fn sample_command() -> Command {
        Command { now_ms: 42, ops: vec![shoal_api::v1::Op { kind: None }] }
    }

    #[test]
    fn request_roundtrips_through_json() {
        let req = Request(sample_command());
        let json = serde_json::to_vec(&req).expect("encode");
        let back: Request = serde_json::from_slice(&json).expect("decode");
        assert_eq!(back, req);
    }

    #[test]
    fn response_roundtrips_through_json() {
        let resp = Response(CommandResult {
            error: "conflict".into(),
            refusal: shoal_api::v1::Refusal::Conflict as i32,
            objects: vec![Object { kind: None }],
            version: 7,
        });
        let json = serde_json::to_vec(&resp).expect("encode");
        let back: Response = serde_json::from_slice(&json).expect("decode");
        assert_eq!(back, resp);
    }

    #[test]
    fn entry_roundtrips_through_json() {
        let entry = openraft::Entry::<TypeConfig> {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(3, 1), 9),
            payload: openraft::EntryPayload::Normal(Request(sample_command())),
        };
        let json = serde_json::to_vec(&entry).expect("encode");
        let back: openraft::Entry<TypeConfig> = serde_json::from_slice(&json).expect("decode");
        assert_eq!(back.log_id, entry.log_id);
        match back.payload {
            openraft::EntryPayload::Normal(r) => assert_eq!(r, Request(sample_command())),
            other => panic!("unexpected payload {other:?}"),
        }
    }

    #[test]
    fn json_carries_base64_and_accepts_integer_arrays() {
        let req = Request(sample_command());
        let json = serde_json::to_string(&req).expect("encode");
        assert!(json.starts_with('"'), "expected a base64 string, got {json}");
        let as_array = serde_json::to_string(&req.0.encode_to_vec()).expect("encode array");
        let back: Request = serde_json::from_str(&as_array).expect("decode array");
        assert_eq!(back, req);
    }

    #[test]
    fn garbage_is_rejected() {
        // 0x0a = field 1, length-delimited, with a length that runs past the end.
        assert!(serde_json::from_slice::<Request>(b"[10, 200]").is_err());
        assert!(serde_json::from_slice::<Request>(b"\"not base64!\"").is_err());
        assert!(serde_json::from_slice::<Request>(b"{}").is_err());
    }
}
