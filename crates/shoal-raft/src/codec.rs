//! Byte encodings for the log and the Raft RPCs.
//!
//! Entries and RPC messages are binary: a format byte, then postcard (a compact serde format)
//! of openraft's types, in which a command is its protobuf bytes as they are (no base64, no
//! JSON). A snapshot chunk travels as a JSON header followed by its raw bytes. Entries and RPCs
//! written as JSON by earlier versions (they start with `{`) are still read.
//!
//! Speed matters beyond throughput: openraft gives an AppendEntries RPC one heartbeat interval,
//! so an entry that cannot be encoded, sent, decoded and fsynced within it is retried forever.
//!
//! Pure; no I/O.

use openraft::raft::InstallSnapshotRequest;
use openraft::{BasicNode, SnapshotMeta, Vote};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::types::TypeConfig;

/// The first byte of a binary (postcard) message.
const BINARY: u8 = 1;

/// Why bytes could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Binary form.
    #[error("binary form: {0}")]
    Binary(#[from] postcard::Error),
    /// The JSON form of earlier versions.
    #[error("JSON form: {0}")]
    Json(#[from] serde_json::Error),
    /// No bytes at all, or an unknown format byte.
    #[error("unknown format (first byte {0:?})")]
    Format(Option<u8>),
}

/// Encodes `v` in the binary form.
pub fn to_bytes<T: Serialize>(v: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![BINARY];
    postcard::to_io(v, &mut out).map_err(CodecError::Binary)?;
    Ok(out)
}

/// Decodes what [`to_bytes`] produced, or the JSON of earlier versions.
pub fn from_bytes<T: DeserializeOwned>(raw: &[u8]) -> Result<T, CodecError> {
    match raw.first() {
        Some(&BINARY) => Ok(postcard::from_bytes(&raw[1..])?),
        Some(b'{') | Some(b'[') | Some(b'"') => Ok(serde_json::from_slice(raw)?),
        other => Err(CodecError::Format(other.copied())),
    }
}

/// A snapshot chunk without its data: the JSON part of an InstallSnapshot message.
#[derive(Serialize, Deserialize)]
struct ChunkHeader {
    vote: Vote<u64>,
    meta: SnapshotMeta<u64, BasicNode>,
    offset: u64,
    done: bool,
}

/// Encodes a snapshot chunk as a big-endian `u32` header length, the JSON header, the raw data.
pub(crate) fn encode_chunk(req: &InstallSnapshotRequest<TypeConfig>) -> Result<Vec<u8>, serde_json::Error> {
    let header = ChunkHeader { vote: req.vote, meta: req.meta.clone(), offset: req.offset, done: req.done };
    let json = serde_json::to_vec(&header)?;
    let len = u32::try_from(json.len()).map_err(serde::ser::Error::custom)?;
    let mut out = Vec::with_capacity(4 + json.len() + req.data.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&req.data);
    Ok(out)
}

/// Decodes what [`encode_chunk`] produced.
pub(crate) fn decode_chunk(mut msg: Vec<u8>) -> Result<InstallSnapshotRequest<TypeConfig>, String> {
    let len_bytes: [u8; 4] = msg.get(..4).and_then(|b| b.try_into().ok()).ok_or("snapshot chunk is truncated")?;
    let header_end = 4 + u32::from_be_bytes(len_bytes) as usize;
    let json = msg.get(4..header_end).ok_or("snapshot chunk header is truncated")?;
    let header: ChunkHeader = serde_json::from_slice(json).map_err(|e| format!("snapshot chunk header: {e}"))?;
    let data = msg.split_off(header_end);
    Ok(InstallSnapshotRequest { vote: header.vote, meta: header.meta, offset: header.offset, data, done: header.done })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_binary_and_read_back_both_forms() {
        let cmd = shoal_api::v1::Command { now_ms: 42, ops: Vec::new() };
        let entry = openraft::Entry::<TypeConfig> {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(3, 1), 17),
            payload: openraft::EntryPayload::Normal(crate::Request::one(cmd)),
        };
        let bin = to_bytes(&entry).expect("encode");
        assert_eq!(bin[0], BINARY);
        assert!(bin.len() < 32, "binary entry is small: {} bytes", bin.len());
        let back: openraft::Entry<TypeConfig> = from_bytes(&bin).expect("decode");
        assert_eq!(back.log_id, entry.log_id);
        let json = serde_json::to_vec(&entry).expect("json");
        let old: openraft::Entry<TypeConfig> = from_bytes(&json).expect("legacy decode");
        assert_eq!(old.log_id, entry.log_id);
        assert!(from_bytes::<openraft::Entry<TypeConfig>>(&[]).is_err());
        assert!(from_bytes::<openraft::Entry<TypeConfig>>(&[9, 9]).is_err());
        assert!(from_bytes::<openraft::Entry<TypeConfig>>(&bin[..bin.len() - 1]).is_err(), "truncated");
    }

    #[test]
    fn snapshot_chunk_roundtrips_with_raw_data() {
        let req = InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            meta: SnapshotMeta { snapshot_id: "3-40-1".into(), ..Default::default() },
            offset: 1 << 20,
            data: (0..=255u8).collect(),
            done: true,
        };
        let msg = encode_chunk(&req).expect("encode");
        assert!(msg.len() < 4 + 300 + req.data.len(), "data must travel raw");
        let back = decode_chunk(msg).expect("decode");
        assert_eq!(
            (back.vote, back.meta, back.offset, back.data, back.done),
            (req.vote, req.meta, req.offset, req.data, req.done)
        );
    }

    #[test]
    fn truncated_snapshot_chunks_are_rejected() {
        let req = InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            meta: SnapshotMeta::default(),
            offset: 0,
            data: vec![1, 2, 3],
            done: false,
        };
        let msg = encode_chunk(&req).expect("encode");
        assert!(decode_chunk(msg[..2].to_vec()).is_err());
        assert!(decode_chunk(msg[..10].to_vec()).is_err());
        assert!(decode_chunk(b"\0\0\0\x02{}".to_vec()).is_err(), "header lacks fields");
    }
}
