//! # SnapTrack Auth
//!
//! API-token authentication for the SnapTrack API, event-sourced. The event log is the only
//! source of truth; every piece of in-memory state is a fold of it.
//!
//! ## The module map
//!
//! - [`domain`]: plain types that parse, not validate: the token format, hashes, ids, plans.
//! - [`event`]: the versioned event envelope, (de)serialisation and upcasters.
//! - [`state`]: the projections and the one pure `apply`; the verify path reads them.
//! - [`command`]: every rule, as `handle(state, command) -> events`.
//! - [`bus`]: the durable, ordered log (sled, group commit).
//! - [`actors`]: the writer (one per node) and the usage flusher.
//! - [`http`]: routes, the Bearer check, the error table, the dashboard and admin APIs.
//! - [`config`]: layered, typed settings. [`replay`]: the audit log on the command line.
//!   [`client`]: `test-token`'s call to `GET /test`.
//!
//! ## The three flows
//!
//! 1. **Verify** (hot path, no I/O, no actor): `Authorization` header → `Bearer <token>` →
//!    shape and checksum → SHA-256 → token index → plan (403) → rate-limit bucket (429).
//!    See [`http::auth`] and [`state::State::verify`].
//! 2. **Command**: HTTP handler → [`actors::Writer`] → [`command::handle`] (rules) → events →
//!    [`bus::SledLog::append`] → `apply` → wait for the group-commit flush → respond.
//! 3. **Apply**: events in sequence order → [`state::State::apply`]; replay at start-up runs
//!    the same function over the whole log.

pub mod actors;
pub mod bus;
pub mod client;
pub mod command;
pub mod config;
pub mod domain;
pub mod event;
pub mod http;
pub mod replay;
pub mod state;
