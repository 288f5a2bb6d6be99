//! Core tests: the event contract, the sled log, the rules, and replay == live.

mod commands;
mod crash;
mod fixtures;
mod log;
mod props;

use snaptrack_auth::actors::Writer;
use snaptrack_auth::bus::SledLog;
use snaptrack_auth::state::State;
use std::sync::Arc;

/// A log in a temporary directory, a state and a writer over them (not started as an actor:
/// tests call its synchronous path).
pub struct Core {
    pub dir: tempfile::TempDir,
    pub log: Arc<SledLog>,
    pub state: Arc<State>,
    pub writer: Writer,
}

impl Default for Core {
    fn default() -> Self {
        Self::new()
    }
}

impl Core {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(SledLog::open(dir.path()).unwrap());
        let state = Arc::new(State::new("n1"));
        let writer = Writer::new(state.clone(), log.clone(), "n1".into());
        Core {
            dir,
            log,
            state,
            writer,
        }
    }

    /// A fresh state rebuilt from this log.
    pub fn replayed(&self) -> State {
        self.log.flush_blocking().unwrap();
        let s = State::new("n1");
        self.log.replay_into(&s).unwrap();
        s
    }
}
