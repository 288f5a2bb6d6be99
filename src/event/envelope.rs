use super::{upcast::Upcasters, Event};
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
    pub fn decode_with(
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
        let Some(current) = Event::current_version(kind) else {
            return Err(DecodeError::UnknownType {
                seq,
                kind: kind.to_owned(),
            });
        };
        let data_err = |reason: String| DecodeError::Data {
            seq,
            kind: kind.to_owned(),
            version: raw.version,
            reason,
        };
        let event = if raw.version == current {
            Event::decode_data(kind, raw.data.get()).map_err(data_err)?
        } else if raw.version > current || raw.version == 0 {
            return Err(DecodeError::UnknownVersion {
                seq,
                kind: kind.to_owned(),
                version: raw.version,
                max: current,
            });
        } else {
            let value: serde_json::Value =
                serde_json::from_str(raw.data.get()).map_err(|e| data_err(e.to_string()))?;
            let upcast = upcasters
                .upcast(kind, raw.version, current, value)
                .map_err(data_err)?;
            let text = upcast.to_string();
            Event::decode_data(kind, &text).map_err(data_err)?
        };
        Ok(Envelope {
            event_id: raw.event_id,
            seq,
            occurred_at: raw.occurred_at,
            node_id: raw.node_id,
            event,
        })
    }
}
