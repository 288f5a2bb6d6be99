//! Upcasters: functions from version n to n+1 of one event type, on raw JSON, run before
//! typed decoding. v1 is the first version of every type, so the built-in table is empty; the
//! mechanism is tested with a table of its own, and the next version bump adds its entry here.

use serde_json::Value;

/// Rewrites the `data` of `kind` at version `from` into version `from + 1`.
pub type UpcastFn = fn(Value) -> Result<Value, String>;

/// A table of upcasters keyed by (type, from-version).
#[derive(Default, Clone)]
pub struct Upcasters {
    steps: Vec<(&'static str, u32, UpcastFn)>,
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
