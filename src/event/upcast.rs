//! Upcasters: functions from version n to n+1 of one event type, on raw JSON, run before
//! typed decoding. Built in: `token_issued` v1 → v2 (scopes and allowlists: a v1 token has
//! every scope, from anywhere), with the binary reader of v1.

use serde_json::Value;

/// Rewrites the `data` of `kind` at version `from` into version `from + 1`.
pub type UpcastFn = fn(Value) -> Result<Value, String>;

/// Reads the binary (postcard) `data` of an old version of a type from the local log into
/// JSON, for the upcasters to take further. When a type moves to v2, its v1 payload struct
/// stays in the code, and its reader is `postcard::take_from_bytes::<V1>` (refusing any
/// bytes left over, as the current version's decoding does) then `serde_json::to_value`.
pub type BinaryReader = fn(&[u8]) -> Result<Value, String>;

/// A table of upcasters keyed by (type, from-version), and of binary readers for old
/// versions.
#[derive(Default, Clone)]
pub struct Upcasters {
    steps: Vec<(&'static str, u32, UpcastFn)>,
    readers: Vec<(&'static str, u32, BinaryReader)>,
}

impl Upcasters {
    /// The upcasters this binary ships.
    pub fn builtin() -> Self {
        Self::default()
            .with("token_issued", 1, token_issued_v1_to_v2)
            .with_reader("token_issued", 1, |b| {
                read_postcard::<super::TokenIssuedV1>(b)
            })
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
