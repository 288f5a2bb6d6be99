//! Black-box tests: each starts the real `snaptrack-auth` binary on port 0 and talks HTTP.

mod account;
mod admin;
mod browser;
mod claims;
mod cli;
mod cluster;
mod crash;
mod dashboard;
mod forward;
mod hardening;
mod helpers;
mod history;
mod hostile;
mod leaks;
mod nats;
mod nats_auth;
mod ops;
mod pages;
mod public;
mod ratelimit;
mod restrictions;
mod retention;
mod secrets;
mod security_log;
mod tls;
mod trust;
