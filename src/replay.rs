//! `snaptrack-auth replay`: the event log as the audit log. Prints every event as one JSON
//! line, oldest first, filtered; or, with `--at T`, the tokens that were valid at T.
//!
//! The server may be running and holds sled's lock on the log, so replay works from a copy of
//! the log's files. sled recovers a copy taken mid-write to a consistent prefix, as it would
//! after a crash.

use crate::bus::{Entry, LogError, SledLog};
use crate::event::TYPES;
use crate::state::State;
use chrono::{DateTime, Utc};
use serde_json::json;
use std::io::Write;
use std::path::Path;

#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub user: Option<u64>,
    pub kind: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub at: Option<DateTime<Utc>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("no event log in {0}")]
    NoLog(String),
    #[error("unknown event type {0:?}; known types: {types}", types = TYPES.join(", "))]
    UnknownType(String),
    #[error("cannot copy the log: {0}")]
    Copy(std::io::Error),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("cannot write output: {0}")]
    Output(std::io::Error),
    #[error("the copy of the log is inconsistent (taken mid-write); try again")]
    Inconsistent,
    #[error("this node's log starts after seq {0}: it was seeded from a shared snapshot and never held what came before. Replay on a node that holds the whole history, or read the stream")]
    Seeded(u64),
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Copies the log of `data` to a temporary directory and opens the copy. A copy taken while
/// the server writes may catch its files at different moments; such a copy is retried a few
/// times, and a failure (even a panic inside sled) is an error, never a crash.
fn open_copy(data: &Path) -> Result<(tempfile::TempDir, SledLog), ReplayError> {
    let events = data.join("events");
    if !events.is_dir() {
        return Err(ReplayError::NoLog(data.display().to_string()));
    }
    let mut last_err = None;
    for _ in 0..3 {
        let tmp = tempfile::tempdir().map_err(ReplayError::Copy)?;
        copy_dir(&events, &tmp.path().join("events")).map_err(ReplayError::Copy)?;
        let path = tmp.path().to_owned();
        // Silence the default hook: a panic here becomes an error line, not a trace.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let opened = std::panic::catch_unwind(move || SledLog::open(&path));
        std::panic::set_hook(hook);
        match opened {
            Ok(Ok(log)) => return Ok((tmp, log)),
            Ok(Err(e)) => last_err = Some(ReplayError::Log(e)),
            Err(_) => last_err = Some(ReplayError::Inconsistent),
        }
    }
    Err(last_err.unwrap_or(ReplayError::Inconsistent))
}

/// Runs the replay over the log in `data`, writing JSON lines to `out`.
pub fn run(data: &Path, f: &Filter, out: &mut dyn Write) -> Result<(), ReplayError> {
    if let Some(k) = &f.kind {
        if !TYPES.contains(&k.as_str()) {
            return Err(ReplayError::UnknownType(k.clone()));
        }
    }
    let (_tmp, log) = open_copy(data)?;
    let base = log.base()?;
    if base > 0 {
        return Err(ReplayError::Seeded(base));
    }
    let w = |out: &mut dyn Write, line: &[u8]| -> Result<(), ReplayError> {
        out.write_all(line)
            .and_then(|_| out.write_all(b"\n"))
            .map_err(ReplayError::Output)
    };
    if let Some(at) = f.at {
        let state = State::new("replay");
        for entry in log.entries_from(1) {
            match entry? {
                Entry::Event(env) if env.occurred_at > at => break,
                Entry::Event(env) => state.apply_owned(env).map_err(LogError::from)?,
                // A stream position that held no event of ours (cluster mode).
                Entry::Foreign(seq) => state.pass_over(seq).map_err(LogError::from)?,
            }
        }
        for t in state.valid_tokens_at(at) {
            if f.user.is_some_and(|u| u != t.user_id.0) {
                continue;
            }
            let r = t.restrictions.as_deref();
            let line = json!({
                "token_id": t.id, "user_id": t.user_id, "name": t.name, "hint": t.hint,
                "created_at": t.created_at, "expires_at": t.expires_at,
                "scopes": r.and_then(|r| r.scope_names()),
                "allowed_ips": r.and_then(|r| r.ip_strings()),
                "replaced_by": t.replaced_by,
            });
            w(out, line.to_string().as_bytes())?;
        }
        return Ok(());
    }
    for env in log.iter_from(1) {
        let env = env?;
        if f.kind.as_deref().is_some_and(|k| k != env.event.kind())
            || f.user
                .is_some_and(|u| !env.event.concerns(crate::domain::UserId(u)))
            || f.since.is_some_and(|s| env.occurred_at < s)
            || f.until.is_some_and(|u| env.occurred_at > u)
        {
            continue;
        }
        w(out, &env.to_json())?;
    }
    Ok(())
}
