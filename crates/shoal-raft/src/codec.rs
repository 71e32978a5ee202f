//! Byte encodings for the log and the Raft RPCs, chosen so bulk bytes stay cheap.
//!
//! Everything is JSON, except that bulk bytes are never spelled as JSON arrays of numbers
//! (3-4 characters per byte, and slow to parse): command payloads are base64 strings, and a
//! snapshot chunk travels as a JSON header followed by its raw bytes. A slow encoding is not just
//! slower: openraft gives an AppendEntries RPC one heartbeat interval, so an entry that cannot be
//! encoded, sent, decoded and fsynced within it is retried forever.
//!
//! Pure; no I/O.

use openraft::raft::InstallSnapshotRequest;
use openraft::{BasicNode, SnapshotMeta, Vote};
use serde::{Deserialize, Serialize};

use crate::types::TypeConfig;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const INVALID: u8 = 0xff;

const DECODE: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 64 {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Standard base64 (RFC 4648, with padding).
// Plain index loops: this runs over every command payload, also in unoptimized test builds.
pub(crate) fn base64_encode(input: &[u8]) -> String {
    let full = input.len() / 3;
    let rest = input.len() - full * 3;
    let mut out = vec![b'='; input.len().div_ceil(3) * 4];
    for i in 0..full {
        let n = (u32::from(input[3 * i]) << 16) | (u32::from(input[3 * i + 1]) << 8) | u32::from(input[3 * i + 2]);
        out[4 * i] = ALPHABET[(n >> 18) as usize & 63];
        out[4 * i + 1] = ALPHABET[(n >> 12) as usize & 63];
        out[4 * i + 2] = ALPHABET[(n >> 6) as usize & 63];
        out[4 * i + 3] = ALPHABET[n as usize & 63];
    }
    if rest > 0 {
        let b1 = if rest == 2 { input[3 * full + 1] } else { 0 };
        let n = (u32::from(input[3 * full]) << 16) | (u32::from(b1) << 8);
        out[4 * full] = ALPHABET[(n >> 18) as usize & 63];
        out[4 * full + 1] = ALPHABET[(n >> 12) as usize & 63];
        if rest == 2 {
            out[4 * full + 2] = ALPHABET[(n >> 6) as usize & 63];
        }
    }
    // Only alphabet characters and '=' were written.
    String::from_utf8(out).unwrap_or_default()
}

/// Why base64 text was rejected.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid base64: {0}")]
pub(crate) struct Base64Error(&'static str);

/// Decodes standard, padded base64.
pub(crate) fn base64_decode(input: &[u8]) -> Result<Vec<u8>, Base64Error> {
    if !input.chunks_exact(4).remainder().is_empty() {
        return Err(Base64Error("length is not a multiple of 4"));
    }
    let pad = if input.ends_with(b"==") { 2 } else { usize::from(input.ends_with(b"=")) };
    let body = &input[..input.len() - pad];
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    let mut n = 0u32;
    let mut bits = 0;
    for &c in body {
        let v = DECODE[c as usize];
        if v == INVALID {
            return Err(Base64Error("character outside the alphabet or misplaced padding"));
        }
        n = (n << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((n >> bits) as u8);
            n &= (1 << bits) - 1;
        }
    }
    if n != 0 {
        return Err(Base64Error("non-zero bits after the last byte"));
    }
    Ok(out)
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
    fn base64_matches_rfc_4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
            assert_eq!(base64_decode(encoded.as_bytes()).as_deref(), Ok(plain.as_bytes()));
        }
    }

    #[test]
    fn base64_roundtrips_every_byte_at_every_length() {
        let all: Vec<u8> = (0..=255u8).cycle().take(300).collect();
        for len in 0..all.len() {
            let data = &all[..len];
            assert_eq!(base64_decode(base64_encode(data).as_bytes()).as_deref(), Ok(data), "length {len}");
        }
    }

    #[test]
    fn base64_rejects_malformed_text() {
        for bad in ["Zg=", "Zg=a", "Z===", "Zm9v!A==", "Zg==Zg==", "Zm9vYmFy=", "Zh=="] {
            assert!(base64_decode(bad.as_bytes()).is_err(), "{bad:?} must be rejected");
        }
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
