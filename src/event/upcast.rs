//! Upcasters: functions from version n to n+1 of one event type, on raw JSON, run before
//! typed decoding. Built in: `token_issued` v1 → v2 (scopes and allowlists: a v1 token has
//! every scope, from anywhere), `token_revoked` v1 → v2 (who, unknown before),
//! `usage_recorded` v1 → v2 (each token's last address, unknown before) and
//! `user_registered` v1 → v2 (the password hash leaves the
//! event for the credential store; only its id stays), each with the binary reader of v1.
//!
//! A node reads old events with a credential sink ([`Upcasters::with_credential_sink`]): the
//! hashes that v1 events carried are handed to it on the way (idempotently, under an id
//! derived from the user), so logins keep working; `replay` reads without one, and the hash
//! goes nowhere.

use serde_json::Value;
use std::sync::Arc;

/// Rewrites the `data` of `kind` at version `from` into version `from + 1`.
pub type UpcastFn = fn(Value) -> Result<Value, String>;

/// Reads the binary (postcard) `data` of an old version of a type from the local log into
/// JSON, for the upcasters to take further. When a type moves to v2, its v1 payload struct
/// stays in the code, and its reader is `postcard::take_from_bytes::<V1>` (refusing any
/// bytes left over, as the current version's decoding does) then `serde_json::to_value`.
pub type BinaryReader = fn(&[u8]) -> Result<Value, String>;

/// Receives (credential id, argon2id PHC string) from old events that carried the hash.
pub type CredentialSink = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// A table of upcasters keyed by (type, from-version), and of binary readers for old
/// versions.
#[derive(Default, Clone)]
pub struct Upcasters {
    steps: Vec<(&'static str, u32, UpcastFn)>,
    readers: Vec<(&'static str, u32, BinaryReader)>,
    /// Where the hashes of v1 `user_registered` events go (none: dropped).
    sink: Option<CredentialSink>,
}

impl Upcasters {
    /// The upcasters this binary ships.
    pub fn builtin() -> Self {
        Self::default()
            .with("token_issued", 1, token_issued_v1_to_v2)
            .with_reader("token_issued", 1, |b| {
                read_postcard::<super::TokenIssuedV1>(b)
            })
            .with("token_revoked", 1, token_revoked_v1_to_v2)
            .with_reader("token_revoked", 1, |b| {
                read_postcard::<super::TokenRevokedV1>(b)
            })
            .with("usage_recorded", 1, usage_recorded_v1_to_v2)
            .with_reader("usage_recorded", 1, |b| {
                read_postcard::<super::UsageRecordedV1>(b)
            })
            .with("user_registered", 1, user_registered_v1_to_v2)
            .with_reader("user_registered", 1, |b| {
                read_postcard::<super::UserRegisteredV1>(b)
            })
    }

    /// Hands the hashes of v1 `user_registered` events to `sink` as they are upcast.
    pub fn with_credential_sink(mut self, sink: CredentialSink) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Hands a credential taken out of something old (a snapshot format that held hashes)
    /// to the sink, as the upcaster does with the events that carried them.
    pub fn hand_over(&self, credential_id: &str, phc: &str) {
        if let Some(sink) = &self.sink {
            sink(credential_id, phc);
        }
    }

    /// Adds a step from `from` to `from + 1` for `kind`.
    pub fn with(mut self, kind: &'static str, from: u32, f: UpcastFn) -> Self {
        self.steps.push((kind, from, f));
        self
    }

    /// Adds the binary reader of `kind` at `version`.
    pub fn with_reader(mut self, kind: &'static str, version: u32, f: BinaryReader) -> Self {
        self.readers.push((kind, version, f));
        self
    }

    /// Reads old-version binary `data` into JSON; a version without a reader is an error.
    pub fn read_binary(&self, kind: &str, version: u32, data: &[u8]) -> Result<Value, String> {
        let reader = self
            .readers
            .iter()
            .find(|(k, v, _)| *k == kind && *v == version)
            .ok_or_else(|| format!("no binary reader for {kind} v{version}"))?;
        (reader.2)(data)
    }

    /// Runs the chain from `version` up to `target`; a missing step is an error.
    pub fn upcast(
        &self,
        kind: &str,
        mut version: u32,
        target: u32,
        mut data: Value,
    ) -> Result<Value, String> {
        while version < target {
            let step = self
                .steps
                .iter()
                .find(|(k, from, _)| *k == kind && *from == version)
                .ok_or_else(|| format!("no upcaster from {kind} v{version}"))?;
            if let (Some(sink), "user_registered", 1) = (&self.sink, kind, version) {
                if let (Some(id), Some(hash)) = (
                    data.get("user_id").and_then(Value::as_u64),
                    data.get("password_hash").and_then(Value::as_str),
                ) {
                    sink(&v1_credential_id(id), hash);
                }
            }
            data = (step.2)(data)?;
            version += 1;
        }
        Ok(data)
    }
}

/// `token_issued` v2 added `scopes` and `allowed_ips`; a v1 token has every scope and works
/// from anywhere, which is what `null` says.
fn token_issued_v1_to_v2(mut v: Value) -> Result<Value, String> {
    let obj = v
        .as_object_mut()
        .ok_or("token_issued data is not an object")?;
    obj.insert("scopes".into(), Value::Null);
    obj.insert("allowed_ips".into(), Value::Null);
    Ok(v)
}

/// `token_revoked` v2 says who revoked the token and, for a leak, where it was found; v1
/// did not record who (`null`).
fn token_revoked_v1_to_v2(mut v: Value) -> Result<Value, String> {
    let obj = v
        .as_object_mut()
        .ok_or("token_revoked data is not an object")?;
    for k in ["by", "url", "source"] {
        obj.insert(k.into(), Value::Null);
    }
    Ok(v)
}

/// `usage_recorded` v2 gives each token's share the address of its last use; v1 did not
/// record it (`null`).
fn usage_recorded_v1_to_v2(mut v: Value) -> Result<Value, String> {
    let tokens = v
        .get_mut("tokens")
        .and_then(Value::as_array_mut)
        .ok_or("usage_recorded without tokens")?;
    for t in tokens {
        t.as_object_mut()
            .ok_or("a token share is not an object")?
            .insert("last_ip".into(), Value::Null);
    }
    Ok(v)
}

/// The credential id a v1 user's hash is kept under: derived from the user, so every node
/// and every re-read of the event agree on it.
pub fn v1_credential_id(user_id: u64) -> String {
    format!("v1-user-{user_id}")
}

/// `user_registered` v2 carries the id of the password's hash, not the hash.
fn user_registered_v1_to_v2(mut v: Value) -> Result<Value, String> {
    let obj = v
        .as_object_mut()
        .ok_or("user_registered data is not an object")?;
    let id = obj
        .get("user_id")
        .and_then(Value::as_u64)
        .ok_or("user_registered without a user_id")?;
    obj.remove("password_hash")
        .ok_or("user_registered v1 without a password_hash")?;
    obj.insert("credential_id".into(), Value::String(v1_credential_id(id)));
    Ok(v)
}

/// An old version's binary data through its kept struct, refusing bytes left over.
fn read_postcard<T: serde::de::DeserializeOwned + serde::Serialize>(
    b: &[u8],
) -> Result<Value, String> {
    let (v, rest) = postcard::take_from_bytes::<T>(b).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err("trailing bytes after the data".into());
    }
    serde_json::to_value(v).map_err(|e| e.to_string())
}
