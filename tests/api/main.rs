//! Black-box tests: each starts the real `snaptrack-auth` binary on port 0 and talks HTTP.

mod admin;
mod cli;
mod dashboard;
mod helpers;
mod ops;
mod public;
mod secrets;
mod tls;
