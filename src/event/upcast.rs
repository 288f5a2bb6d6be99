//! Upcasters: functions from version n to n+1 of one event type, on raw JSON, run before
//! typed decoding. v1 is the first version of every type, so the built-in table is empty; the
//! mechanism is tested with a table of its own, and the next version bump adds its entry here.

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
    /// The upcasters this binary ships: none yet, every type is at v1.
    pub fn builtin() -> Self {
        Self::default()
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
