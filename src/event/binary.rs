//! The local log's binary form of an envelope: what the sled log stores, where replay reads
//! a million events a second. NATS subscribers, `replay` output, the schemas and fixtures in
//! `events/` all stay JSON; this form never leaves the node.
//!
//! ```text
//! header (postcard): event_id [16 bytes], secs i64, nanos u32, node_id str, type u8, version u32
//! data   (postcard): the payload struct of that type and version, fields in declaration order
//! ```
//!
//! The sequence number is not stored: the log record holding the event knows it (see
//! `bus::sled_log`).
//!
//! Versions: postcard is not self-describing, so reading a payload needs the struct it was
//! written from. Records of the current version decode straight into the typed event. When a
//! type moves to v2, its v1 struct stays, registered as a binary reader
//! ([`Upcasters::with_reader`]) that turns v1 bytes into JSON; the JSON upcasters then take it
//! to v2 exactly as they do for a JSON log. A version with no reader is a clear error naming
//! the record, never a skipped event.

use super::{
    envelope::decode_version, upcast::Upcasters, DataSeed, DecodeError, Envelope, Event, TYPES,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Serialize, Deserialize)]
struct Header<'a> {
    event_id: [u8; 16],
    secs: i64,
    nanos: u32,
    node_id: &'a str,
    kind: u8,
    version: u32,
}

impl Envelope {
    /// The binary form of this envelope (without its `seq`). An error is a bug in a payload
    /// type's serde attributes; in debug builds every encoding is also decoded back, so a
    /// form that does not read back as written fails the tests.
    pub fn encode_binary(&self) -> Result<Vec<u8>, String> {
        use postcard::ser_flavors::{ExtendFlavor, Flavor};
        let kind = self.event.kind();
        let header = Header {
            event_id: *self.event_id.as_bytes(),
            secs: self.occurred_at.timestamp(),
            nanos: self.occurred_at.timestamp_subsec_nanos(),
            node_id: &self.node_id,
            kind: TYPES
                .iter()
                .position(|t| *t == kind)
                .and_then(|i| u8::try_from(i).ok())
                .ok_or_else(|| format!("no type code for {kind}"))?,
            version: Event::current_version(kind).ok_or_else(|| format!("no version of {kind}"))?,
        };
        let mut ser = postcard::Serializer {
            output: ExtendFlavor::new(Vec::with_capacity(128)),
        };
        header.serialize(&mut ser).map_err(|e| e.to_string())?;
        self.event
            .serialize_data(&mut ser)
            .map_err(|e| e.to_string())?;
        let out = ser.output.finalize().map_err(|e| e.to_string())?;
        #[cfg(debug_assertions)]
        {
            let back = Envelope::decode_binary(&out, self.seq, &Upcasters::builtin());
            assert!(
                back.as_ref().is_ok_and(|b| b == self),
                "the binary form of {kind} does not read back as written: {back:?}"
            );
        }
        Ok(out)
    }

    /// Decodes the binary form of the envelope at `seq`.
    pub fn decode_binary(
        bytes: &[u8],
        seq: u64,
        upcasters: &Upcasters,
    ) -> Result<Envelope, DecodeError> {
        let envelope_err = |reason: String| DecodeError::Envelope { seq, reason };
        let (header, data) = postcard::take_from_bytes::<Header<'_>>(bytes)
            .map_err(|e| envelope_err(e.to_string()))?;
        let kind =
            *TYPES
                .get(usize::from(header.kind))
                .ok_or_else(|| DecodeError::UnknownType {
                    seq,
                    kind: format!("#{}", header.kind),
                })?;
        let occurred_at = DateTime::<Utc>::from_timestamp(header.secs, header.nanos)
            .ok_or_else(|| envelope_err("occurred_at out of range".into()))?;
        let event = decode_version(
            seq,
            kind,
            header.version,
            upcasters,
            || {
                use serde::de::DeserializeSeed;
                let mut de = postcard::Deserializer::from_bytes(data);
                let event = DataSeed(kind)
                    .deserialize(&mut de)
                    .map_err(|e| e.to_string())?;
                if !de.finalize().map_err(|e| e.to_string())?.is_empty() {
                    return Err("trailing bytes after the data".into());
                }
                Ok(event)
            },
            || upcasters.read_binary(kind, header.version, data),
        )?;
        Ok(Envelope {
            event_id: Uuid::from_bytes(header.event_id),
            seq,
            occurred_at,
            node_id: header.node_id.to_owned(),
            event,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(kind: &str) -> Envelope {
        let path = format!(
            "{}/events/fixtures/{kind}.v1.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let bytes = std::fs::read(&path).unwrap();
        Envelope::decode(&bytes, 0).unwrap()
    }

    #[test]
    fn damaged_binary_is_an_error_naming_the_seq() {
        let env = fixture("token_issued");
        let bin = env.encode_binary().unwrap();
        for cut in [0, 5, bin.len() - 1] {
            let err = Envelope::decode_binary(&bin[..cut], 9, &Upcasters::builtin()).unwrap_err();
            assert!(err.to_string().contains("seq 9"), "{err}");
        }
        let mut longer = bin.clone();
        longer.push(0);
        let err = Envelope::decode_binary(&longer, 9, &Upcasters::builtin()).unwrap_err();
        assert!(err.to_string().contains("trailing"), "{err}");
    }

    /// Re-encodes `env`'s header with another type code or version.
    fn with_header(env: &Envelope, kind: u8, version: u32) -> Vec<u8> {
        let bin = env.encode_binary().unwrap();
        let (_, data) = postcard::take_from_bytes::<Header<'_>>(&bin).unwrap();
        let header = Header {
            event_id: *env.event_id.as_bytes(),
            secs: env.occurred_at.timestamp(),
            nanos: env.occurred_at.timestamp_subsec_nanos(),
            node_id: &env.node_id,
            kind,
            version,
        };
        let mut out = postcard::to_allocvec(&header).unwrap();
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn unknown_types_and_versions_are_errors_naming_the_seq() {
        let env = fixture("token_revoked");
        let err = Envelope::decode_binary(&with_header(&env, 200, 1), 4, &Upcasters::builtin())
            .unwrap_err();
        assert!(
            matches!(err, DecodeError::UnknownType { seq: 4, .. }),
            "{err}"
        );
        for version in [0, 3] {
            let bin = with_header(&env, 3, version);
            let err = Envelope::decode_binary(&bin, 4, &Upcasters::builtin()).unwrap_err();
            assert!(
                matches!(err, DecodeError::UnknownVersion { seq: 4, .. }),
                "{err}"
            );
        }
    }
}
