//! The credential store: each password's argon2id hash by credential id, beside the event log
//! and never in it. Events (`user_registered` v2, `password_changed`) name a credential by its
//! id only, so subscribers of `snaptrack.auth.v1.>`, `replay` readers and shared snapshots
//! never hold a hash.
//!
//! - Every node keeps the hashes it knows in the sled tree `credentials` of its data
//!   directory (the service's own store).
//! - Cluster mode: also the JetStream KV bucket `SNAPTRACK_AUTH_CREDENTIALS`, which only the
//!   nodes' NATS user may read or write (`deploy/nats-server.conf`). A credential is put
//!   there before the event naming it is published; a node that lacks one fetches it on
//!   first use and keeps it. A credential id is never reused for another hash (a new password
//!   is a new id), so a kept copy can never be stale.
//! - Old events that carried the hash (`user_registered` v1) hand it over as they are read
//!   ([`Credentials::sink`]), under an id derived from the user.

use crate::bus::{JetStreamBus, LogError, SledLog};
use crate::event::upcast::CredentialSink;
use async_nats::jetstream::{kv, stream};
use std::sync::Arc;

pub const BUCKET: &str = "SNAPTRACK_AUTH_CREDENTIALS";
const TREE: &str = "credentials";
/// The ids of the legacy credentials already shared through the bucket.
const SHARED_TREE: &str = "credentials_shared";
/// What [`crate::event::upcast::v1_credential_id`] starts with.
const LEGACY_PREFIX: &str = "v1-user-";

/// Why a credential could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("credential store I/O failed: {0}")]
    Local(#[from] sled::Error),
    #[error("credential bucket {BUCKET}: {0}")]
    Remote(String),
    #[error("credential store flush did not finish: {0}")]
    Flush(String),
}

/// The hashes this node knows, and in cluster mode the bucket all nodes share.
pub struct Credentials {
    tree: sled::Tree,
    shared: sled::Tree,
    /// Set once the cluster connection is up (cluster mode only).
    remote: tokio::sync::OnceCell<kv::Store>,
}

impl Credentials {
    /// The store of `log`'s data directory; from now on the log hands it the hashes of old
    /// events it reads.
    pub fn open(log: &SledLog) -> Result<Arc<Self>, LogError> {
        let me = Arc::new(Credentials {
            tree: log.tree(TREE)?,
            shared: log.tree(SHARED_TREE)?,
            remote: tokio::sync::OnceCell::new(),
        });
        log.set_credential_sink(me.sink());
        Ok(me)
    }

    /// A fresh credential id (a new password never reuses one).
    pub fn new_id() -> String {
        uuid::Uuid::new_v4().simple().to_string()
    }

    /// Where old events put the hashes they carried: kept unless already known.
    pub fn sink(&self) -> CredentialSink {
        let tree = self.tree.clone();
        Arc::new(move |id: &str, phc: &str| {
            let put = tree.compare_and_swap(id, None as Option<&[u8]>, Some(phc.as_bytes()));
            if let Err(e) = put {
                tracing::error!(error = %e, "cannot keep a credential read from an old event");
            }
        })
    }

    /// Makes what the sink kept durable.
    pub fn flush(&self) -> Result<(), CredentialError> {
        self.tree.flush()?;
        Ok(())
    }

    /// Cluster mode: share credentials through the bucket of `bus`'s JetStream, created if
    /// missing with the stream's replica count.
    pub async fn connect(&self, bus: &JetStreamBus) -> Result<(), CredentialError> {
        let (js, _, replicas) = bus.jetstream();
        // The bucket's stream, made as `create_key_value` would make it: that call first
        // reads the account's info, which older servers (2.9) answer in a form this client
        // cannot parse.
        if js.get_key_value(BUCKET).await.is_err() {
            js.get_or_create_stream(stream::Config {
                name: format!("KV_{BUCKET}"),
                description: Some("SnapTrack Auth: password hashes by credential id".into()),
                subjects: vec![format!("$KV.{BUCKET}.>")],
                max_messages_per_subject: 1,
                allow_rollup: true,
                deny_delete: true,
                // Reads go to the stream's leader: a replica that lags could miss a credential
                // whose event this node already applied.
                allow_direct: false,
                discard: stream::DiscardPolicy::New,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| CredentialError::Remote(e.to_string()))?;
        }
        let store = js
            .get_key_value(BUCKET)
            .await
            .map_err(|e| CredentialError::Remote(e.to_string()))?;
        let _ = self.remote.set(store);
        Ok(())
    }

    /// Stores `phc` under `id`: durable here, and in cluster mode acknowledged by the bucket,
    /// before the event that names it is written.
    pub async fn put(&self, id: &str, phc: &str) -> Result<(), CredentialError> {
        self.tree.insert(id, phc.as_bytes())?;
        flush(&self.tree).await?;
        if let Some(store) = self.remote.get() {
            store
                .put(id, phc.as_bytes().to_vec().into())
                .await
                .map_err(|e| CredentialError::Remote(e.to_string()))?;
        }
        Ok(())
    }

    /// The hash stored under `id`: this node's copy, else the bucket's (then kept here).
    pub async fn get(&self, id: &str) -> Result<Option<String>, CredentialError> {
        if let Some(v) = self.tree.get(id)? {
            return Ok(Some(String::from_utf8_lossy(&v).into_owned()));
        }
        let Some(store) = self.remote.get() else {
            return Ok(None);
        };
        let Some(v) = store
            .get(id)
            .await
            .map_err(|e| CredentialError::Remote(e.to_string()))?
        else {
            return Ok(None);
        };
        self.tree.insert(id, v.as_ref())?;
        Ok(Some(String::from_utf8_lossy(&v).into_owned()))
    }

    /// Cluster mode: shares the credentials old events carried (ids `v1-user-…`, read from
    /// the local log, a snapshot or the stream) that this node has not shared yet, so that
    /// a node seeded later from a snapshot finds them. Each is shared once per data
    /// directory; every node derives the same id and hash from the same event, so two
    /// nodes sharing one is harmless.
    pub async fn share_legacy(&self) -> Result<usize, CredentialError> {
        let Some(store) = self.remote.get() else {
            return Ok(0);
        };
        let mut shared = 0;
        for item in self.tree.scan_prefix(LEGACY_PREFIX) {
            let (k, v) = item?;
            if self.shared.contains_key(&k)? {
                continue;
            }
            let id = String::from_utf8_lossy(&k).into_owned();
            store
                .put(&id, v.to_vec().into())
                .await
                .map_err(|e| CredentialError::Remote(e.to_string()))?;
            self.shared.insert(&k, &[])?;
            shared += 1;
        }
        flush(&self.shared).await?;
        Ok(shared)
    }
}

/// Flushes `tree` on the blocking pool. Not sled's `flush_async`: concurrent calls of it can
/// wait for ever (spacejam/sled#1241, #1308), and 32 registrations at once did.
async fn flush(tree: &sled::Tree) -> Result<(), CredentialError> {
    let tree = tree.clone();
    tokio::task::spawn_blocking(move || tree.flush())
        .await
        .map_err(|e| CredentialError::Flush(e.to_string()))??;
    Ok(())
}
