//! The openraft type configuration and the application data that travels through the log.
//!
//! [`Request`] and [`Response`] wrap the prost messages of `shoal-api`. Their serde form is the
//! protobuf encoding (base64 text in JSON, a byte string in binary formats; a JSON array of
//! integers is accepted too), so the log and the Raft RPCs carry exactly what the proto defines
//! and there is no second schema to keep in sync.
//!
//! An entry of one command is that `Command`'s bytes, as ever. An entry of several is
//! [`BATCH_TAG`] followed by a `CommandBatch`: the tag is a protobuf key with wire type 7, which
//! no protobuf message can start with, so a manager that knows only single commands refuses
//! such an entry (a decode error stops its Raft) instead of applying it as an empty command.
//! This module does no I/O.

use std::fmt;

use prost::Message;
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use shoal_api::v1::{Command, CommandBatch, CommandResult, CommandResults};

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

/// The commands of a normal log entry: one, or several proposed at about the same time (each is
/// applied on its own, in order, with its own result).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Request(pub Vec<Command>);

impl Request {
    /// An entry of one command.
    pub fn one(cmd: Command) -> Self {
        Request(vec![cmd])
    }
}

/// The results of applying a [`Request`], one per command in order, returned to the proposer by
/// `client_write`. Blank and membership entries have none.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Response(pub Vec<CommandResult>);

/// The first byte of an entry of several commands: protobuf field 3 with wire type 7 (invalid).
pub const BATCH_TAG: u8 = (3 << 3) | 7;

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ops: usize = self.0.iter().map(|c| c.ops.len()).sum();
        write!(f, "{} command(s), {ops} ops", self.0.len())
    }
}

/// Protobuf bytes: base64 text in human-readable formats (JSON), bytes otherwise.
fn serialize_bytes<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    if serializer.is_human_readable() {
        use base64::Engine;
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    } else {
        serializer.serialize_bytes(bytes)
    }
}

/// Bytes written by [`serialize_bytes`], or a sequence of integers.
fn deserialize_bytes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    if deserializer.is_human_readable() {
        deserializer.deserialize_any(BytesVisitor)
    } else {
        deserializer.deserialize_bytes(BytesVisitor)
    }
}

impl Request {
    /// The entry's bytes: a single command as its protobuf, several as a tagged batch.
    fn encode(&self) -> Vec<u8> {
        match self.0.as_slice() {
            [one] => one.encode_to_vec(),
            commands => {
                // A `CommandBatch` written field by field, without copying the commands into one.
                let mut out = vec![BATCH_TAG];
                for c in commands {
                    prost::encoding::message::encode(1, c, &mut out);
                }
                out
            }
        }
    }

    fn decode(bytes: &[u8]) -> Result<Self, prost::DecodeError> {
        match bytes.split_first() {
            Some((&BATCH_TAG, batch)) => Ok(Request(CommandBatch::decode(batch)?.commands)),
            _ => Ok(Request::one(Command::decode(bytes)?)),
        }
    }
}

impl Serialize for Request {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_bytes(&self.encode(), serializer)
    }
}

impl<'de> Deserialize<'de> for Request {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Request::decode(&deserialize_bytes(deserializer)?).map_err(de::Error::custom)
    }
}

impl Serialize for Response {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_bytes(&CommandResults { results: self.0.clone() }.encode_to_vec(), serializer)
    }
}

impl<'de> Deserialize<'de> for Response {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = deserialize_bytes(deserializer)?;
        CommandResults::decode(bytes.as_slice()).map(|r| Response(r.results)).map_err(de::Error::custom)
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
        let req = Request::one(sample_command());
        let json = serde_json::to_vec(&req).expect("encode");
        let back: Request = serde_json::from_slice(&json).expect("decode");
        assert_eq!(back, req);
    }

    #[test]
    fn response_roundtrips_through_json() {
        let resp = Response(vec![
            CommandResult {
                error: "conflict".into(),
                refusal: shoal_api::v1::Refusal::Conflict as i32,
                objects: vec![Object { kind: None }],
                version: 7,
            },
            CommandResult { version: 7, ..Default::default() },
        ]);
        let json = serde_json::to_vec(&resp).expect("encode");
        let back: Response = serde_json::from_slice(&json).expect("decode");
        assert_eq!(back, resp);
    }

    #[test]
    fn entry_roundtrips_through_json() {
        let entry = openraft::Entry::<TypeConfig> {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(3, 1), 9),
            payload: openraft::EntryPayload::Normal(Request::one(sample_command())),
        };
        let json = serde_json::to_vec(&entry).expect("encode");
        let back: openraft::Entry<TypeConfig> = serde_json::from_slice(&json).expect("decode");
        assert_eq!(back.log_id, entry.log_id);
        match back.payload {
            openraft::EntryPayload::Normal(r) => assert_eq!(r, Request::one(sample_command())),
            other => panic!("unexpected payload {other:?}"),
        }
    }

    #[test]
    fn json_carries_base64_and_accepts_integer_arrays() {
        let req = Request::one(sample_command());
        let json = serde_json::to_string(&req).expect("encode");
        assert!(json.starts_with('"'), "expected a base64 string, got {json}");
        let as_array = serde_json::to_string(&req.0[0].encode_to_vec()).expect("encode array");
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

    #[test]
    fn one_command_is_written_as_that_command() {
        // What managers that know only single commands read: the bytes of a `Command`.
        let req = Request::one(sample_command());
        assert_eq!(req.encode(), sample_command().encode_to_vec());
        assert_eq!(Request::decode(&sample_command().encode_to_vec()).expect("decode"), req);
    }

    #[test]
    fn a_batch_round_trips_and_is_no_command() {
        let second = Command { now_ms: 43, ops: vec![shoal_api::v1::Op { kind: None }; 3] };
        let req = Request(vec![sample_command(), second.clone(), Command::default()]);
        let bytes = req.encode();
        assert_eq!(bytes[0], BATCH_TAG);
        assert_eq!(Request::decode(&bytes).expect("decode"), req);
        let batch = CommandBatch::decode(&bytes[1..]).expect("a CommandBatch after the tag");
        assert_eq!(batch.commands, vec![sample_command(), second, Command::default()]);
        // A reader that knows only single commands refuses it rather than applying nothing.
        assert!(Command::decode(bytes.as_slice()).is_err());
        let json = serde_json::to_vec(&req).expect("json");
        assert_eq!(serde_json::from_slice::<Request>(&json).expect("from json"), req);
        let bin = postcard::to_allocvec(&req).expect("postcard");
        assert_eq!(postcard::from_bytes::<Request>(&bin).expect("from postcard"), req);
    }
}
