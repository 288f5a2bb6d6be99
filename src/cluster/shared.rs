//! Snapshots shared through JetStream, so a node with an empty data directory starts from
//! the newest snapshot any node took instead of reading the stream from sequence 1.
//!
//! The bucket is the JetStream object store `SNAPTRACK_AUTH_SNAPSHOTS`, holding one object,
//! `latest`: a node that took a snapshot newer than it replaces it (the object store drops
//! the old one's chunks: pruning is built in). The snapshot file is the one of
//! [`crate::history::snapshot`], byte for byte. Its metadata carries the sequence number, the
//! stream it stands on (its creation time), the file's SHA-256, and this node's signature
//! over all three (`Snaptrack-Signature` form, subject `snaptrack.auth.snapshot`): the bucket
//! is as much a trust boundary as the stream, and a snapshot no trusted node signed, or one
//! of another stream, is never restored.

use super::Cluster;
use crate::bus::{JetStreamBus, SledLog};
use crate::credentials::Credentials;
use crate::history::{snapshot, SnapshotStore};
use crate::signing::Verifier;
use async_nats::jetstream::object_store;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::AsyncReadExt;

pub const BUCKET: &str = "SNAPTRACK_AUTH_SNAPSHOTS";
const OBJECT: &str = "latest";
/// What the signature is made for (never published on: it names what is signed).
const SIGNED_AS: &str = "snaptrack.auth.snapshot";

/// The signed statement: which snapshot of which stream, and its bytes' digest.
fn statement(seq: u64, stream_created: &str, sha256: &str) -> Vec<u8> {
    format!("{seq}\n{stream_created}\n{sha256}").into_bytes()
}

async fn bucket(bus: &JetStreamBus) -> Result<object_store::ObjectStore, String> {
    let (js, _, replicas) = bus.jetstream();
    match js.get_object_store(BUCKET).await {
        Ok(b) => Ok(b),
        Err(_) => js
            .create_object_store(object_store::Config {
                bucket: BUCKET.into(),
                description: Some("SnapTrack Auth: the newest snapshot of the state".into()),
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot open the snapshot bucket {BUCKET}: {e}")),
    }
}

/// Shares the snapshot file `bytes` at `seq` unless the bucket holds one at least as new.
/// Returns whether it was shared.
pub async fn share(
    bus: &JetStreamBus,
    stream_created: &str,
    seq: u64,
    bytes: &[u8],
) -> Result<bool, String> {
    let b = bucket(bus).await?;
    if let Ok(info) = b.info(OBJECT).await {
        let theirs = info.metadata.get("seq").and_then(|s| s.parse::<u64>().ok());
        if theirs.is_some_and(|s| s >= seq) {
            return Ok(false);
        }
    }
    let sha = hex::encode(Sha256::digest(bytes));
    let (_, signer, _) = bus.jetstream();
    let signature = signer.sign(SIGNED_AS, &statement(seq, stream_created, &sha));
    let metadata = HashMap::from([
        ("seq".to_owned(), seq.to_string()),
        ("stream_created".to_owned(), stream_created.to_owned()),
        ("sha256".to_owned(), sha),
        ("signature".to_owned(), signature),
    ]);
    b.put(
        object_store::ObjectMetadata {
            name: OBJECT.into(),
            metadata,
            ..Default::default()
        },
        &mut &bytes[..],
    )
    .await
    .map_err(|e| format!("cannot share the snapshot: {e}"))?;
    Ok(true)
}

/// The shared snapshot of the stream created at `stream_created`, if there is one a trusted
/// node signed: its sequence number and file bytes (to be decoded as any local one is).
pub async fn fetch(
    bus: &JetStreamBus,
    verifier: &Verifier,
    stream_created: &str,
) -> Result<Option<(u64, Vec<u8>)>, String> {
    let (js, _, _) = bus.jetstream();
    let Ok(b) = js.get_object_store(BUCKET).await else {
        return Ok(None);
    };
    let Ok(mut object) = b.get(OBJECT).await else {
        return Ok(None);
    };
    let meta = object.info().metadata.clone();
    let field = |k: &str| meta.get(k).cloned().unwrap_or_default();
    let seq: u64 = field("seq")
        .parse()
        .map_err(|_| "the shared snapshot has no sequence number".to_owned())?;
    if field("stream_created") != stream_created {
        return Err(format!(
            "the shared snapshot at seq {seq} is of another stream (created {}, this one {stream_created})",
            field("stream_created")
        ));
    }
    let signature = field("signature");
    let sha = field("sha256");
    verifier
        .verify(
            SIGNED_AS,
            &statement(seq, stream_created, &sha),
            Some(&signature),
        )
        .map_err(|e| {
            format!("the shared snapshot at seq {seq} is not signed by a trusted node: {e}")
        })?;
    let mut bytes = Vec::new();
    object
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| format!("cannot read the shared snapshot: {e}"))?;
    if hex::encode(Sha256::digest(&bytes)) != sha {
        return Err(format!(
            "the shared snapshot at seq {seq} does not match its digest"
        ));
    }
    Ok(Some((seq, bytes)))
}

/// Seeds an empty data directory from the shared snapshot: writes it among the local
/// snapshots and makes the log start after it. Anything short of a trusted, readable
/// snapshot of this stream leaves the directory as it was (the node then reads the stream
/// from sequence 1), with a warning saying why. Returns the seq it was seeded at.
pub async fn seed(
    bus: &JetStreamBus,
    verifier: &Verifier,
    log: &SledLog,
    store: &SnapshotStore,
    wait: std::time::Duration,
) -> Option<u64> {
    if log.last_seq() > 0 {
        return None;
    }
    let local = store.list().unwrap_or_default();
    if !local.is_empty() {
        return finish_seed(log, store);
    }
    let attempt = async {
        // No bucket yet (a new cluster, or no node has taken a snapshot): nothing to say.
        let (js, _, _) = bus.jetstream();
        if js.get_object_store(BUCKET).await.is_err() {
            return Ok(None);
        }
        let (_, created) = bus.identity().await?;
        let fetched = fetch(bus, verifier, &created).await?;
        Ok::<_, String>(fetched.map(|f| (created, f)))
    };
    let (created, (seq, bytes)) = match tokio::time::timeout(wait, attempt).await {
        Ok(Ok(Some(found))) => found,
        Ok(Ok(None)) => return None,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "shared snapshot not used; reading the stream from the start");
            return None;
        }
        Err(_) => {
            tracing::warn!("no shared snapshot in time; reading the stream from the start");
            return None;
        }
    };
    match snapshot::decode(&bytes) {
        Ok((image, _)) if image.applied_seq == seq => {}
        Ok((image, _)) => {
            tracing::warn!(seq, image_seq = image.applied_seq, "shared snapshot's image is not at its signed seq; reading the stream from the start");
            return None;
        }
        Err(why) => {
            tracing::warn!(seq, reason = %why, "shared snapshot unusable; reading the stream from the start");
            return None;
        }
    }
    // In this order, so that a crash in between leaves what `finish_seed` completes.
    let seeded = log
        .set_meta("stream_created", &created)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            store
                .write(seq, chrono::Utc::now().timestamp(), &bytes)
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .and_then(|()| log.start_after(seq).map_err(|e| e.to_string()));
    match seeded {
        Ok(()) => {
            tracing::info!(seq, "seeded from the shared snapshot");
            Some(seq)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot seed from the shared snapshot");
            None
        }
    }
}

/// Completes a seed a crash interrupted: the log is empty and starts at 1, but the stream is
/// known and a snapshot was written (see the order in [`seed`]). The log then starts after
/// the newest readable one. Without a known stream (the log was lost, not half-seeded) the
/// start refuses the snapshot as ahead of the log, as it would in embedded mode.
fn finish_seed(log: &SledLog, store: &SnapshotStore) -> Option<u64> {
    if log.base().ok()? > 0 || log.meta("stream_created").ok()??.is_empty() {
        return None;
    }
    let newest = store.newest_valid(u64::MAX).ok()??;
    let seq = newest.image.applied_seq;
    match log.start_after(seq) {
        Ok(()) => {
            tracing::info!(seq, "finished seeding from the shared snapshot");
            Some(seq)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot finish seeding from the shared snapshot");
            None
        }
    }
}

/// Shares every snapshot this node takes (checked every few seconds), and returns when
/// aborted.
pub async fn share_periodically(
    cluster: Arc<Cluster>,
    store: Arc<SnapshotStore>,
    credentials: Arc<Credentials>,
) {
    let mut shared = 0u64;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        tick.tick().await;
        if let Err(e) = share_newest(&cluster, &store, &credentials, &mut shared).await {
            tracing::warn!(error = %e, "snapshot not shared");
        }
    }
}

/// Shares the newest local snapshot if it is newer than `shared`. First the credentials old
/// events carried: a node seeded from the snapshot never reads those events, and finds the
/// hashes of the users they registered only in the bucket.
pub async fn share_newest(
    cluster: &Cluster,
    store: &SnapshotStore,
    credentials: &Credentials,
    shared: &mut u64,
) -> Result<(), String> {
    let Some((seq, _)) = store.status.get() else {
        return Ok(());
    };
    if seq <= *shared {
        return Ok(());
    }
    let Some((_, path)) = store
        .list()
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|(s, _)| *s == seq)
    else {
        return Ok(());
    };
    let legacy = credentials
        .share_legacy()
        .await
        .map_err(|e| e.to_string())?;
    if legacy > 0 {
        tracing::info!(credentials = legacy, "shared the credentials of old events");
    }
    let bytes = tokio::fs::read(&path).await.map_err(|e| e.to_string())?;
    let (_, created) = cluster.bus.identity().await?;
    if share(&cluster.bus, &created, seq, &bytes).await? {
        tracing::info!(seq, "snapshot shared");
    }
    *shared = seq;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::State;

    #[test]
    fn a_seed_cut_short_by_a_crash_is_finished_and_a_lost_log_is_not_taken_for_one() {
        let dir = tempfile::tempdir().unwrap();
        let log = SledLog::open(dir.path()).unwrap();
        let store = SnapshotStore::new(dir.path(), 2);
        let mut image = State::new("n1").image();
        image.applied_seq = 7;
        store
            .write(7, 1, &snapshot::encode(&image, 1).unwrap())
            .unwrap();
        // The stream was never recorded: a log lost beside its snapshot, not a seed.
        assert_eq!(finish_seed(&log, &store), None);
        assert_eq!(log.last_seq(), 0);
        // Recorded first by a seed, then the crash: the seed is finished.
        log.set_meta("stream_created", "2026-12-04T00:00:00Z")
            .unwrap();
        assert_eq!(finish_seed(&log, &store), Some(7));
        assert_eq!((log.last_seq(), log.base().unwrap()), (7, 7));
        assert_eq!(finish_seed(&log, &store), None, "once");
    }
}
