//! Snapshots: the whole state ([`Image`]) at a sequence number S, in a file of its own, so
//! that a start restores it and replays only the events after S.
//!
//! ```text
//! file:   magic "SNAPTRKS" | format u32 LE | seq u64 LE | taken_at i64 LE (epoch seconds)
//!         | length u64 LE | crc32(image) u32 LE | image (postcard)
//! name:   <data>/snapshots/<seq, 20 digits>.snap
//! ```
//!
//! A snapshot is written to a temporary file, synced, renamed into place and the directory
//! synced, so a crash leaves the old set or the new one, never a torn file under a real
//! name. It is only written once the log is durable up to its S. At start the newest readable
//! one wins; one with another format, a wrong length or checksum, or an image that does not
//! decode is passed over with one warning naming it, for the one before it or for a full
//! replay: nothing is lost, only time. A readable snapshot ahead of the log means the log was
//! lost or replaced, and the node refuses to start rather than serve a state the log cannot
//! back.

mod legacy;

pub use legacy::Legacy;

use crate::state::Image;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

const MAGIC: &[u8; 8] = b"SNAPTRKS";
/// The format this binary writes.
///
/// 2: token records carry scopes, allowlists and the token that replaced them.
/// 3: users carry the id of their credential, not the password hash; revoked tokens why
///    and by whom.
pub const FORMAT: u32 = 3;
/// The older formats it still reads ([`legacy`]), so that a node seeded from a snapshot
/// restarts on a new binary. Any other format is passed over with a warning.
pub const READS: &[u32] = &[1, 2, FORMAT];
const HEADER: usize = 8 + 4 + 8 + 8 + 8 + 4;

/// Why start-up cannot use the snapshots.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("the snapshot {path} stands at seq {seq}, but the event log ends at seq {log_end}: the log was lost or replaced. Restore the log, or move the snapshots directory away to start from the log alone")]
    AheadOfLog {
        path: String,
        seq: u64,
        log_end: u64,
    },
    #[error("snapshot I/O in {path}: {reason}")]
    Io { path: String, reason: String },
}

/// Why one snapshot file cannot be used (start-up passes over it).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Unreadable {
    #[error("not a snapshot (bad magic)")]
    Magic,
    #[error("format {0}, this binary reads formats {READS:?}")]
    Format(u32),
    #[error("truncated: {found} bytes of {expected}")]
    Truncated { expected: u64, found: u64 },
    #[error("checksum mismatch")]
    Checksum,
    #[error("image does not decode: {0}")]
    Decode(String),
}

/// The snapshot a node stands on, for `/metrics`.
#[derive(Default)]
pub struct SnapshotStatus {
    seq: AtomicU64,
    /// Epoch seconds; 0 before the first.
    taken_at: AtomicI64,
}

impl SnapshotStatus {
    pub fn set(&self, seq: u64, taken_at: i64) {
        self.seq.store(seq, Ordering::Relaxed);
        self.taken_at.store(taken_at, Ordering::Relaxed);
    }

    /// Sequence number and time (epoch seconds) of the newest snapshot, if any.
    pub fn get(&self) -> Option<(u64, i64)> {
        let taken_at = self.taken_at.load(Ordering::Relaxed);
        (taken_at != 0).then(|| (self.seq.load(Ordering::Relaxed), taken_at))
    }
}

/// A snapshot read back.
pub struct Loaded {
    pub image: Image,
    pub taken_at: i64,
    pub path: PathBuf,
    /// The password hashes an older format held, for the credential store.
    pub credentials: Legacy,
}

/// The snapshots of one data directory.
pub struct SnapshotStore {
    dir: PathBuf,
    kept: usize,
    pub status: SnapshotStatus,
}

/// The bytes of a snapshot of `image` taken at `taken_at`.
pub fn encode(image: &Image, taken_at: i64) -> Result<Vec<u8>, String> {
    let body = postcard::to_allocvec(image).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&image.applied_seq.to_le_bytes());
    out.extend_from_slice(&taken_at.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// Reads a snapshot's bytes: the image and when it was taken.
pub fn decode(bytes: &[u8]) -> Result<(Image, i64), Unreadable> {
    decode_with_credentials(bytes).map(|(image, at, _)| (image, at))
}

/// Reads a snapshot's bytes: the image, when it was taken, and the password hashes an old
/// format held (for the credential store; none from today's format).
pub fn decode_with_credentials(bytes: &[u8]) -> Result<(Image, i64, Legacy), Unreadable> {
    if bytes.len() < 12 || &bytes[..8] != MAGIC {
        return Err(Unreadable::Magic);
    }
    let format = u32_at(bytes, 8);
    if !READS.contains(&format) {
        return Err(Unreadable::Format(format));
    }
    if bytes.len() < HEADER {
        return Err(Unreadable::Truncated {
            expected: HEADER as u64,
            found: bytes.len() as u64,
        });
    }
    let seq = u64_at(bytes, 12);
    let taken_at = u64_at(bytes, 20) as i64;
    let len = u64_at(bytes, 28);
    let crc = u32_at(bytes, 36);
    let body = &bytes[HEADER..];
    if body.len() as u64 != len {
        return Err(Unreadable::Truncated {
            expected: HEADER as u64 + len,
            found: bytes.len() as u64,
        });
    }
    if crc32fast::hash(body) != crc {
        return Err(Unreadable::Checksum);
    }
    let (image, legacy) = match format {
        1 => legacy::decode_format1(body),
        2 => legacy::decode_format2(body),
        _ => postcard::from_bytes::<Image>(body).map(|i| (i, Vec::new())),
    }
    .map_err(|e| Unreadable::Decode(e.to_string()))?;
    if image.applied_seq != seq {
        return Err(Unreadable::Decode(format!(
            "header says seq {seq}, image seq {}",
            image.applied_seq
        )));
    }
    Ok((image, taken_at, legacy))
}

impl SnapshotStore {
    /// The snapshots of the data directory `data`; `kept` of them stay on disk.
    pub fn new(data: &Path, kept: usize) -> Self {
        SnapshotStore {
            dir: data.join("snapshots"),
            kept: kept.max(1),
            status: SnapshotStatus::default(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io_err(&self, e: impl std::fmt::Display) -> SnapshotError {
        SnapshotError::Io {
            path: self.dir.display().to_string(),
            reason: e.to_string(),
        }
    }

    /// Every snapshot file, newest (highest seq) first, by name.
    pub fn list(&self) -> Result<Vec<(u64, PathBuf)>, SnapshotError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io_err(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| self.io_err(e))?.path();
            let seq = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".snap"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(seq) = seq {
                out.push((seq, path));
            }
        }
        out.sort_by_key(|s| std::cmp::Reverse(s.0));
        Ok(out)
    }

    /// The newest snapshot that reads back whole, passing over (with a warning each) those
    /// that do not. `log_end`: the last sequence number of the log.
    pub fn newest_valid(&self, log_end: u64) -> Result<Option<Loaded>, SnapshotError> {
        for (_, path) in self.list()? {
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "snapshot unreadable; passing over it");
                    continue;
                }
            };
            match decode_with_credentials(&bytes) {
                Ok((image, taken_at, credentials)) => {
                    if image.applied_seq > log_end {
                        return Err(SnapshotError::AheadOfLog {
                            path: path.display().to_string(),
                            seq: image.applied_seq,
                            log_end,
                        });
                    }
                    self.status.set(image.applied_seq, taken_at);
                    return Ok(Some(Loaded {
                        image,
                        taken_at,
                        path,
                        credentials,
                    }));
                }
                Err(why) => tracing::warn!(
                    path = %path.display(),
                    reason = %why,
                    "snapshot unusable; falling back to an older one or the log"
                ),
            }
        }
        Ok(None)
    }

    /// Writes `bytes` (from [`encode`]) as the snapshot at `seq`, then prunes all but the
    /// newest `kept`. Blocking. The caller made sure the log is durable up to `seq`.
    pub fn write(&self, seq: u64, taken_at: i64, bytes: &[u8]) -> Result<PathBuf, SnapshotError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| self.io_err(e))?;
        let path = self.dir.join(format!("{seq:020}.snap"));
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir).map_err(|e| self.io_err(e))?;
        tmp.write_all(bytes).map_err(|e| self.io_err(e))?;
        tmp.as_file().sync_all().map_err(|e| self.io_err(e))?;
        tmp.persist(&path).map_err(|e| self.io_err(e.error))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io_err(e))?;
        self.status.set(seq, taken_at);
        for (_, old) in self.list()?.into_iter().skip(self.kept) {
            if let Err(e) = std::fs::remove_file(&old) {
                tracing::warn!(path = %old.display(), error = %e, "could not prune an old snapshot");
            }
        }
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::State;

    fn image(seq: u64) -> Image {
        let mut img = State::new("n1").image();
        img.applied_seq = seq;
        img.last_user_id = seq;
        img
    }

    #[test]
    fn round_trips_and_refuses_what_it_cannot_read() {
        let bytes = encode(&image(7), 1_700_000_000).unwrap();
        let (back, at) = decode(&bytes).unwrap();
        assert_eq!((back, at), (image(7), 1_700_000_000));
        assert_eq!(
            decode(&bytes[..bytes.len() - 1]).unwrap_err(),
            Unreadable::Truncated {
                expected: bytes.len() as u64,
                found: bytes.len() as u64 - 1
            }
        );
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(decode(&flipped).unwrap_err(), Unreadable::Checksum);
        let mut future = bytes.clone();
        future[8..12].copy_from_slice(&(FORMAT + 1).to_le_bytes());
        assert_eq!(decode(&future).unwrap_err(), Unreadable::Format(FORMAT + 1));
        let mut never = bytes.clone();
        never[8..12].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(decode(&never).unwrap_err(), Unreadable::Format(0));
        assert_eq!(decode(b"junk").unwrap_err(), Unreadable::Magic);
    }

    #[test]
    fn keeps_the_newest_falls_back_past_bad_ones_and_refuses_one_ahead_of_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path(), 2);
        for seq in [3, 5, 9] {
            store
                .write(seq, 1, &encode(&image(seq), 1).unwrap())
                .unwrap();
        }
        let seqs: Vec<u64> = store.list().unwrap().iter().map(|s| s.0).collect();
        assert_eq!(seqs, vec![9, 5], "pruned to the newest two");
        std::fs::write(store.dir().join(format!("{:020}.snap", 9)), b"SNAPTRKS").unwrap();
        let loaded = store.newest_valid(100).unwrap().unwrap();
        assert_eq!(
            loaded.image.applied_seq, 5,
            "the bad newest one is passed over"
        );
        assert!(matches!(
            store.newest_valid(4),
            Err(SnapshotError::AheadOfLog {
                seq: 5,
                log_end: 4,
                ..
            })
        ));
    }
}
