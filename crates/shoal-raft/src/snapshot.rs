//! The snapshot format and its file.
//!
//! A snapshot is `MAGIC`, a big-endian `u32` header length, the header (openraft's
//! `SnapshotMeta` as JSON: last applied log id, membership, snapshot id) and then the store image
//! from `Store::encode_snapshot`. The same bytes are the file on disk and the data streamed to
//! followers, so a follower can install what it received without re-encoding.
//!
//! The file is replaced atomically (write a temporary file, fsync, rename, fsync the directory):
//! after a crash there is either the old or the new snapshot, never a torn one.
//!
//! Architecture Invariant: this module never interprets the store image.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use openraft::SnapshotMeta;

use crate::error::StorageError;

/// Metadata of a snapshot in openraft's terms.
pub(crate) type Meta = SnapshotMeta<u64, openraft::BasicNode>;

const MAGIC: &[u8; 8] = b"SHOALSN1";
const FILE_NAME: &str = "snapshot.bin";
const TMP_NAME: &str = "snapshot.bin.tmp";

/// Encodes a snapshot: header + store image.
pub(crate) fn encode(meta: &Meta, store_image: &[u8]) -> Result<Vec<u8>, StorageError> {
    let header = serde_json::to_vec(meta).map_err(|e| StorageError::corrupt("snapshot header cannot be encoded", e))?;
    let header_len =
        u32::try_from(header.len()).map_err(|e| StorageError::corrupt("snapshot header is larger than 4 GiB", e))?;
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + header.len() + store_image.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&header_len.to_be_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(store_image);
    Ok(out)
}

/// Splits a snapshot into its metadata and its store image.
pub(crate) fn decode(data: &[u8]) -> Result<(Meta, &[u8]), StorageError> {
    let corrupt = |what: &str| StorageError::Corrupt { what: format!("snapshot {what}"), source: None };
    let rest = data.strip_prefix(MAGIC.as_slice()).ok_or_else(|| corrupt("does not start with the shoal magic"))?;
    let (len, rest) = rest.split_at_checked(4).ok_or_else(|| corrupt("is truncated before its header"))?;
    let mut len_bytes = [0u8; 4];
    len_bytes.copy_from_slice(len);
    let header_len = u32::from_be_bytes(len_bytes) as usize;
    let (header, image) = rest.split_at_checked(header_len).ok_or_else(|| corrupt("is truncated in its header"))?;
    let meta: Meta = serde_json::from_slice(header).map_err(|e| StorageError::corrupt("snapshot header", e))?;
    Ok((meta, image))
}

/// The snapshot file of a data directory.
#[derive(Clone, Debug)]
pub(crate) struct SnapshotFile {
    dir: PathBuf,
}

impl SnapshotFile {
    pub(crate) fn new(dir: &Path) -> Self {
        SnapshotFile { dir: dir.to_path_buf() }
    }

    pub(crate) fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// Reads the current snapshot, if there is one.
    pub(crate) fn read(&self) -> Result<Option<Vec<u8>>, StorageError> {
        let path = self.path();
        match fs::read(&path) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::io("read", path)(e)),
        }
    }

    /// Removes a temporary file left by a crash during `write`.
    pub(crate) fn remove_leftovers(&self) -> Result<(), StorageError> {
        let tmp = self.dir.join(TMP_NAME);
        match fs::remove_file(&tmp) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::io("remove", tmp)(e)),
        }
    }

    /// Atomically replaces the snapshot file with `data` (blocking; call off the async threads).
    pub(crate) fn write(&self, data: &[u8]) -> Result<(), StorageError> {
        let tmp = self.dir.join(TMP_NAME);
        let path = self.path();
        let mut f = fs::File::create(&tmp).map_err(StorageError::io("create", &tmp))?;
        f.write_all(data).map_err(StorageError::io("write", &tmp))?;
        f.sync_all().map_err(StorageError::io("fsync", &tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(StorageError::io("rename into place", &path))?;
        let dir = fs::File::open(&self.dir).map_err(StorageError::io("open", &self.dir))?;
        dir.sync_all().map_err(StorageError::io("fsync", &self.dir))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{BasicNode, CommittedLeaderId, LogId, Membership, StoredMembership};
    use std::collections::{BTreeMap, BTreeSet};

    fn meta() -> Meta {
        let log_id = LogId::new(CommittedLeaderId::new(2, 1), 17);
        let nodes = BTreeMap::from([(1, BasicNode::new("a:1")), (2, BasicNode::new("b:2"))]);
        let membership = Membership::new(vec![BTreeSet::from([1, 2])], nodes);
        Meta {
            last_log_id: Some(log_id),
            last_membership: StoredMembership::new(Some(log_id), membership),
            snapshot_id: "2-17-x".into(),
        }
    }

    #[test]
    fn encode_then_decode_gives_back_meta_and_image() {
        let data = encode(&meta(), b"store image").expect("encode");
        let (m, image) = decode(&data).expect("decode");
        assert_eq!(m, meta());
        assert_eq!(image, b"store image");
    }

    #[test]
    fn truncated_or_foreign_data_is_rejected() {
        let data = encode(&meta(), b"img").expect("encode");
        assert!(decode(&data[..10]).is_err());
        assert!(decode(&data[..20]).is_err());
        assert!(decode(b"not a snapshot at all").is_err());
        assert!(decode(&[]).is_err());
    }

    #[test]
    fn write_replaces_the_file_and_removes_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = SnapshotFile::new(dir.path());
        assert!(file.read().expect("read").is_none());
        file.write(b"one").expect("write");
        file.write(b"two").expect("write");
        assert_eq!(file.read().expect("read").as_deref(), Some(&b"two"[..]));
        fs::write(dir.path().join(TMP_NAME), b"partial").expect("tmp");
        file.remove_leftovers().expect("cleanup");
        assert!(!dir.path().join(TMP_NAME).exists());
        assert_eq!(file.read().expect("read").as_deref(), Some(&b"two"[..]));
    }
}
