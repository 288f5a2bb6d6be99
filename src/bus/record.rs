//! The records of the sled log: what one sled value holds.
//!
//! A record holds a run of consecutive events; its key is the first one's sequence number
//! (8 bytes, big-endian, so sled's order is log order). Two forms:
//!
//! ```text
//! batch:  crc32(rest) u32 LE | 0xB1 | count u32 LE | count × (len u32 LE | binary envelope)
//! legacy: crc32(json) u32 LE | one JSON envelope (first byte `{`), as logs before the binary
//!         form were written; still read, never written
//! ```
//!
//! The binary envelope is [`Envelope::encode_binary`]: the sequence number is the record's
//! key plus the event's place in it. An entry of length 0 holds no event: in cluster mode,
//! a stream position taken by a message no trusted node signed ([`Entry::Foreign`]). A
//! binary envelope is never empty, so the two cannot be confused.

use super::LogError;
use crate::event::{upcast::Upcasters, Envelope};

/// The tag of a batch record, after the checksum. A legacy record has `{` there.
const BATCH: u8 = 0xB1;
/// Bytes before the first event of a batch record: checksum, tag, count.
const BATCH_HEADER: usize = 9;

/// What one position of the log holds.
// Nearly every entry is an event, read by the million at replay: boxing it for the rare
// foreign marker would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Entry {
    Event(Envelope),
    /// A stream position that holds no event of this service (cluster mode: a message that
    /// no trusted node signed, skipped and never applied).
    Foreign(u64),
}

/// Consecutive events in their binary form, ready to become one record.
#[derive(Default)]
pub(super) struct Events {
    /// Sequence number of the first event (meaningless while `count` is 0).
    pub first: u64,
    pub count: u32,
    /// Each event as its length (u32 LE) and binary form.
    pub bytes: Vec<u8>,
}

impl Events {
    /// Adds `env`, which must follow the last event added. On an error nothing is added.
    pub fn push(&mut self, env: &Envelope) -> Result<(), String> {
        let body = env.encode_binary()?;
        let len = u32::try_from(body.len()).map_err(|_| "event too large".to_owned())?;
        if self.count == 0 {
            self.first = env.seq;
        }
        self.bytes.extend_from_slice(&len.to_le_bytes());
        self.bytes.extend_from_slice(&body);
        self.count += 1;
        Ok(())
    }

    /// Adds a foreign position (see [`Entry::Foreign`]), which must follow the last one.
    pub fn push_foreign(&mut self, seq: u64) {
        if self.count == 0 {
            self.first = seq;
        }
        self.bytes.extend_from_slice(&0u32.to_le_bytes());
        self.count += 1;
    }

    /// The events of a batch record, checked (`None` for a legacy record).
    pub fn from_record(first: u64, value: sled::IVec) -> Result<Option<Events>, LogError> {
        let reader = Reader::open(first, value)?;
        if reader.legacy {
            return Ok(None);
        }
        Ok(Some(Events {
            first,
            count: reader.left,
            bytes: reader.value[BATCH_HEADER..].to_vec(),
        }))
    }

    /// Adds `later`, whose first event must follow the last event here.
    pub fn extend(&mut self, later: Events) {
        if later.count == 0 {
            return;
        }
        if self.count == 0 {
            self.first = later.first;
        }
        self.count += later.count;
        self.bytes.extend_from_slice(&later.bytes);
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Sequence number of the last event.
    pub fn last(&self) -> u64 {
        self.first + u64::from(self.count) - 1
    }

    /// The batch record of these events.
    pub fn record(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(BATCH_HEADER + self.bytes.len());
        out.extend_from_slice(&[0; 4]);
        out.push(BATCH);
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.bytes);
        let crc = crc32fast::hash(&out[4..]);
        out[..4].copy_from_slice(&crc.to_le_bytes());
        out
    }
}

/// One checked record, read event by event.
pub(super) struct Reader {
    value: sled::IVec,
    /// Sequence number of the next event.
    next_seq: u64,
    /// Events not yet read.
    left: u32,
    /// Offset of the next event (batch records only).
    offset: usize,
    legacy: bool,
}

impl Reader {
    /// Checks the record at `first` (checksum and form) and positions it at its first event.
    pub fn open(first: u64, value: sled::IVec) -> Result<Reader, LogError> {
        let corrupt = |reason: &str| LogError::Corrupt {
            seq: first,
            reason: reason.into(),
        };
        if value.len() < 5 {
            return Err(corrupt("record shorter than its header"));
        }
        let crc = u32::from_le_bytes([value[0], value[1], value[2], value[3]]);
        if crc32fast::hash(&value[4..]) != crc {
            return Err(corrupt("checksum mismatch"));
        }
        match value[4] {
            b'{' => Ok(Reader {
                value,
                next_seq: first,
                left: 1,
                offset: 4,
                legacy: true,
            }),
            BATCH if value.len() >= BATCH_HEADER => {
                let count = u32::from_le_bytes([value[5], value[6], value[7], value[8]]);
                if count == 0 {
                    return Err(corrupt("record holds no events"));
                }
                if first.checked_add(u64::from(count)).is_none() {
                    return Err(corrupt("record runs past the last sequence number"));
                }
                Ok(Reader {
                    value,
                    next_seq: first,
                    left: count,
                    offset: BATCH_HEADER,
                    legacy: false,
                })
            }
            _ => Err(corrupt("unknown record form")),
        }
    }

    /// One past the sequence number of the record's last event.
    pub fn end(&self) -> u64 {
        self.next_seq + u64::from(self.left)
    }

    /// The next event's bytes, advancing past it; `None` at the end of the record.
    fn take(&mut self) -> Option<Result<(u64, &[u8]), LogError>> {
        if self.left == 0 {
            return None;
        }
        let seq = self.next_seq;
        self.left -= 1;
        self.next_seq += 1;
        if self.legacy {
            return Some(Ok((seq, &self.value[4..])));
        }
        let corrupt = |reason: &str| LogError::Corrupt {
            seq,
            reason: reason.into(),
        };
        let at = self.offset;
        let Some(len) = self.value.get(at..at + 4) else {
            return Some(Err(corrupt("record ends inside an event's length")));
        };
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let end = (at + 4).saturating_add(len);
        let Some(body) = self.value.get(at + 4..end) else {
            return Some(Err(corrupt("record ends inside an event")));
        };
        self.offset = end;
        if self.left == 0 && self.offset != self.value.len() {
            return Some(Err(corrupt("bytes after the record's last event")));
        }
        Some(Ok((seq, body)))
    }

    /// Skips events up to (not including) `seq`, without decoding them.
    pub fn skip_to(&mut self, seq: u64) -> Result<(), LogError> {
        while self.next_seq < seq {
            match self.take() {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        Ok(())
    }

    /// Decodes the next entry; `None` at the end of the record.
    pub fn next_entry(&mut self, upcasters: &Upcasters) -> Option<Result<Entry, LogError>> {
        let legacy = self.legacy;
        Some(self.take()?.and_then(|(seq, bytes)| {
            if legacy {
                let env = Envelope::decode_with(bytes, seq, upcasters)?;
                if env.seq != seq {
                    return Err(LogError::Corrupt {
                        seq,
                        reason: format!("record says seq {}", env.seq),
                    });
                }
                Ok(Entry::Event(env))
            } else if bytes.is_empty() {
                Ok(Entry::Foreign(seq))
            } else {
                Ok(Entry::Event(Envelope::decode_binary(
                    bytes, seq, upcasters,
                )?))
            }
        }))
    }
}
