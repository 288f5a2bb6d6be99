//! # SnapTrack Auth
//!
//! API-token authentication for the SnapTrack API, event-sourced. The event log is the only
//! source of truth; every piece of in-memory state is a fold of it.
//!
//! ## The module map
//!
//! - [`domain`]: plain types that parse, not validate: the token format, hashes, ids, plans.
//! - [`event`]: the versioned event envelope, its JSON (the contract: NATS, `replay`) and
//!   binary (the local log) forms, and upcasters.
//! - [`state`]: the projections and the one pure `apply`; the verify path reads them.
//! - [`command`]: every rule, as `handle(state, command) -> events`.
//! - [`bus`]: the durable, ordered log: sled (embedded; group commit) and the JetStream
//!   stream (cluster mode), which each node mirrors into its sled log.
//! - [`history`]: what keeps history small: the usage checkpoint (open rate-limit windows,
//!   in place), snapshots (start-up replays only what followed the newest), hourly usage
//!   roll-ups with their retention.
//! - [`actors`]: the writer (one per node), the usage flusher, and in cluster mode the
//!   replicator and the announcer.
//! - [`cluster`]: what a node knows of the cluster: applied sequences, live peers,
//!   freshness, the coalesced catch-up; the revocation barrier; shared snapshots.
//! - [`http`]: routes, the Bearer check, the error table, the dashboard and admin APIs.
//! - [`credentials`]: password hashes by credential id, beside the log and never in it
//!   (events name a credential; cluster mode shares them through a nodes-only KV bucket).
//! - [`signing`]: Ed25519 signatures over every message a node puts on NATS, and the keys
//!   a node trusts (cluster mode: the stream is a trust boundary).
//! - [`config`]: layered, typed settings. [`replay`]: the audit log on the command line.
//!   [`client`]: `test-token`'s call to `GET /test`.
//!
//! ## The three flows
//!
//! 1. **Verify** (hot path, no I/O, no actor): `Authorization` header → `Bearer <token>` →
//!    shape and checksum → SHA-256 → token index → plan (403) → rate-limit bucket (429).
//!    See [`http::auth`] and [`state::State::verify`].
//!    In cluster mode a well-formed token the node does not know first makes it catch up with
//!    the stream ([`cluster::Cluster::catch_up`]), and a node too long out of touch answers 503.
//! 2. **Command**: HTTP handler → [`actors::Writer`] → [`command::handle`] (rules) → events →
//!    [`bus::SledLog::append`] → `apply` → wait for the group-commit flush → respond.
//!    Cluster mode: events → [`bus::JetStreamBus::publish`] (expected last sequence) → wait
//!    until the replicator applied them → respond; a revoke also waits for the other nodes
//!    ([`cluster::Cluster::barrier`]).
//! 3. **Apply**: events in sequence order → [`state::State::apply`]; start-up restores the
//!    newest snapshot ([`state::State::from_image`]) and replays the log after it
//!    ([`bus::SledLog::replay_into`]) with the same function. Cluster mode: the replicator
//!    ([`actors::replicator`]) mirrors the stream into the local log and applies each event.

pub mod actors;
pub mod bus;
pub mod client;
pub mod cluster;
pub mod command;
pub mod config;
pub mod credentials;
pub mod domain;
pub mod event;
pub mod history;
pub mod http;
pub mod replay;
pub mod signing;
pub mod state;
