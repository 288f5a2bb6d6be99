use super::{upcast::Upcasters, DataSeed, Event};
use chrono::{DateTime, Utc};
use serde::{ser::SerializeStruct, Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// An event with its place in the log: what is stored, sent on NATS and printed by `replay`.
///
/// ```json
/// {"event_id": "uuid", "seq": 42, "occurred_at": "RFC3339 UTC", "node_id": "n1",
///  "type": "token_revoked", "version": 1, "data": {...}}
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub event_id: Uuid,
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    pub occurred_at: DateTime<Utc>,
    /// The node whose writer created the event.
    pub node_id: String,
    pub event: Event,
}

impl Envelope {
    /// Wraps `events` in envelopes numbered from `after + 1`, with fresh event ids: what the
    /// embedded log appends and what a cluster node publishes.
    pub fn numbered(
        events: Vec<Event>,
        after: u64,
        node_id: &str,
        at: DateTime<Utc>,
    ) -> Vec<Envelope> {
        events
            .into_iter()
            .enumerate()
            .map(|(i, event)| Envelope {
                event_id: Uuid::new_v4(),
                seq: after + 1 + i as u64,
                occurred_at: at,
                node_id: node_id.to_owned(),
                event,
            })
            .collect()
    }
}

/// Why bytes from the log or the bus are not an event. Always names the sequence number when
/// it is known, so an operator can find the record.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("event at seq {seq}: not a valid envelope: {reason}")]
    Envelope { seq: u64, reason: String },
    #[error("event at seq {seq}: unknown type {kind:?}")]
    UnknownType { seq: u64, kind: String },
    #[error("event at seq {seq}: type {kind} version {version} is newer than this binary understands (max {max})")]
    UnknownVersion {
        seq: u64,
        kind: String,
        version: u32,
        max: u32,
    },
    #[error("event at seq {seq}: {kind} v{version} data does not decode: {reason}")]
    Data {
        seq: u64,
        kind: String,
        version: u32,
        reason: String,
    },
}

impl Serialize for Envelope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Data<'a>(&'a Event);
        impl Serialize for Data<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.0.serialize_data(s)
            }
        }
        let kind = self.event.kind();
        let mut st = s.serialize_struct("Envelope", 7)?;
        st.serialize_field("event_id", &self.event_id)?;
        st.serialize_field("seq", &self.seq)?;
        st.serialize_field("occurred_at", &self.occurred_at)?;
        st.serialize_field("node_id", &self.node_id)?;
        st.serialize_field("type", kind)?;
        st.serialize_field("version", &Event::current_version(kind).unwrap_or(1))?;
        st.serialize_field("data", &Data(&self.event))?;
        st.end()
    }
}

/// The envelope with `data` still raw: the first decoding step, before upcasting.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvelope<'a> {
    event_id: Uuid,
    seq: u64,
    occurred_at: DateTime<Utc>,
    node_id: String,
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    version: u32,
    #[serde(borrow)]
    data: &'a RawValue,
}

impl Envelope {
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising these types cannot fail: every key is a string and no value is a map
        // with non-string keys.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes one envelope with the built-in upcasters. `seq_hint` names the record in errors
    /// when the envelope itself is unreadable.
    pub fn decode(bytes: &[u8], seq_hint: u64) -> Result<Envelope, DecodeError> {
        Self::decode_with(bytes, seq_hint, &Upcasters::builtin())
    }

    /// Decodes one envelope: raw envelope, then upcast `data` to the current version on raw
    /// JSON, then typed decoding.
    ///
    /// The common case (current version, `type` and `version` before `data`, as this binary
    /// writes them) takes a single pass straight into the typed event. Anything else (an old
    /// version, another key order, or any error) takes the general path, which also produces
    /// the precise error.
    pub fn decode_with(
        bytes: &[u8],
        seq_hint: u64,
        upcasters: &Upcasters,
    ) -> Result<Envelope, DecodeError> {
        if let Ok(env) = serde_json::from_slice::<FastEnvelope>(bytes) {
            return Ok(env.0);
        }
        Self::decode_general(bytes, seq_hint, upcasters)
    }

    fn decode_general(
        bytes: &[u8],
        seq_hint: u64,
        upcasters: &Upcasters,
    ) -> Result<Envelope, DecodeError> {
        let raw: RawEnvelope<'_> =
            serde_json::from_slice(bytes).map_err(|e| DecodeError::Envelope {
                seq: seq_hint,
                reason: e.to_string(),
            })?;
        let seq = raw.seq;
        let kind = raw.kind.as_ref();
        let event = decode_version(
            seq,
            kind,
            raw.version,
            upcasters,
            || Event::decode_data(kind, raw.data.get()),
            || serde_json::from_str(raw.data.get()).map_err(|e| e.to_string()),
        )?;
        Ok(Envelope {
            event_id: raw.event_id,
            seq,
            occurred_at: raw.occurred_at,
            node_id: raw.node_id,
            event,
        })
    }
}

/// The version rule of both forms of an envelope (JSON here, binary in `binary.rs`): the
/// current version decodes straight into the typed event (`current`); a newer one, or 0, is
/// an error; an older one is read into JSON (`old`) and taken up by the upcasters first.
pub(super) fn decode_version(
    seq: u64,
    kind: &str,
    version: u32,
    upcasters: &Upcasters,
    current: impl FnOnce() -> Result<Event, String>,
    old: impl FnOnce() -> Result<serde_json::Value, String>,
) -> Result<Event, DecodeError> {
    let data_err = |reason: String| DecodeError::Data {
        seq,
        kind: kind.to_owned(),
        version,
        reason,
    };
    let latest = Event::current_version(kind).ok_or_else(|| DecodeError::UnknownType {
        seq,
        kind: kind.to_owned(),
    })?;
    if version == latest {
        return current().map_err(data_err);
    }
    if version > latest || version == 0 {
        return Err(DecodeError::UnknownVersion {
            seq,
            kind: kind.to_owned(),
            version,
            max: latest,
        });
    }
    let value = upcasters
        .upcast(kind, version, latest, old().map_err(data_err)?)
        .map_err(data_err)?;
    Event::decode_data(kind, &value.to_string()).map_err(data_err)
}

/// The single-pass decoding of a current-version envelope (see [`Envelope::decode_with`]).
struct FastEnvelope(Envelope);

impl<'de> Deserialize<'de> for FastEnvelope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(FastVisitor)
    }
}

struct FastVisitor;

/// `occurred_at`, parsed without chrono's general parser when it has the shape this binary
/// writes (`YYYY-MM-DDTHH:MM:SS[.fraction]Z`); anything else goes through RFC 3339 parsing.
struct FastTime(DateTime<Utc>);

impl<'de> Deserialize<'de> for FastTime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = FastTime;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an RFC 3339 time")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<FastTime, E> {
                if let Some(t) = parse_utc_fast(s) {
                    return Ok(FastTime(t));
                }
                DateTime::parse_from_rfc3339(s)
                    .map(|t| FastTime(t.with_timezone(&Utc)))
                    .map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

fn parse_utc_fast(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || *b.last()? != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let date = chrono::NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)?;
    let mut nanos = 0;
    let rest = &b[19..b.len() - 1];
    if !rest.is_empty() {
        if rest[0] != b'.' || rest.len() < 2 || rest.len() > 10 {
            return None;
        }
        let digits = num(20..b.len() - 1)?;
        nanos = digits * 10u32.pow(10 - rest.len() as u32);
    }
    let time =
        chrono::NaiveTime::from_hms_nano_opt(num(11..13)?, num(14..16)?, num(17..19)?, nanos)?;
    Some(date.and_time(time).and_utc())
}

impl<'de> serde::de::Visitor<'de> for FastVisitor {
    type Value = FastEnvelope;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an event envelope")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<FastEnvelope, A::Error> {
        use serde::de::Error;
        let mut event_id = None;
        let mut seq = None;
        let mut occurred_at = None;
        let mut node_id = None;
        let mut kind: Option<std::borrow::Cow<'de, str>> = None;
        let mut version_ok = false;
        let mut event = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "event_id" => event_id = Some(map.next_value::<Uuid>()?),
                "seq" => seq = Some(map.next_value::<u64>()?),
                "occurred_at" => occurred_at = Some(map.next_value::<FastTime>()?.0),
                "node_id" => node_id = Some(map.next_value::<String>()?),
                "type" => kind = Some(map.next_value::<std::borrow::Cow<'de, str>>()?),
                "version" => {
                    let v = map.next_value::<u32>()?;
                    let current = kind.as_deref().and_then(Event::current_version);
                    version_ok = current == Some(v);
                }
                "data" => match (&kind, version_ok) {
                    (Some(k), true) => event = Some(map.next_value_seed(DataSeed(k))?),
                    _ => return Err(A::Error::custom("not the fast path")),
                },
                _ => return Err(A::Error::custom("unknown field")),
            }
        }
        match (event_id, seq, occurred_at, node_id, event) {
            (Some(event_id), Some(seq), Some(occurred_at), Some(node_id), Some(event)) => {
                Ok(FastEnvelope(Envelope {
                    event_id,
                    seq,
                    occurred_at,
                    node_id,
                    event,
                }))
            }
            _ => Err(A::Error::custom("missing field")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_time_parser_agrees_with_chrono() {
        for s in [
            "2024-01-27T16:00:00Z",
            "2024-01-27T16:00:00.5Z",
            "2026-11-30T07:15:28.213959698Z",
            "2000-02-29T23:59:59.000001Z",
        ] {
            let chrono = DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
            assert_eq!(parse_utc_fast(s), Some(chrono), "{s}");
        }
        for s in [
            "2024-02-30T00:00:00Z",
            "2024-01-27T16:00:00+01:00",
            "2024-01-27 16:00:00Z",
            "2024-01-27T16:00:00.Z",
        ] {
            assert_eq!(parse_utc_fast(s), None, "{s}");
        }
    }

    #[test]
    fn fast_and_general_paths_decode_the_same() {
        let json = br#"{"event_id":"00000000-0000-4000-8000-000000000003","seq":3,"occurred_at":"2024-01-27T16:00:00.25Z","node_id":"n1","type":"token_revoked","version":2,"data":{"token_id":"6f1c1a52-5d8e-4a3c-9a53-2f3c8f0b9e11","user_id":1,"reason":"revoked","by":null,"url":null,"source":null}}"#;
        let fast = serde_json::from_slice::<FastEnvelope>(json).unwrap().0;
        let general = Envelope::decode_general(json, 3, &Upcasters::builtin()).unwrap();
        assert_eq!(fast, general);
        // Data before type: the general path still decodes it.
        let reordered = br#"{"data":{"token_id":"6f1c1a52-5d8e-4a3c-9a53-2f3c8f0b9e11","user_id":1,"reason":"revoked","by":null,"url":null,"source":null},"event_id":"00000000-0000-4000-8000-000000000003","seq":3,"occurred_at":"2024-01-27T16:00:00.25Z","node_id":"n1","type":"token_revoked","version":2}"#;
        assert!(serde_json::from_slice::<FastEnvelope>(reordered).is_err());
        assert_eq!(Envelope::decode(reordered, 3).unwrap(), general);
    }
}
