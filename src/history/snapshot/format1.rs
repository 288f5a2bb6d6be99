//! Format 1, written before token restrictions (#15): read into today's [`Image`], every
//! token unrestricted and none replaced, exactly what a replay of that log gives. Kept so
//! that a node (above all a cluster node seeded from a shared snapshot, whose log starts
//! after it) restarts on the new binary from the snapshot the old one left.

use crate::domain::{TokenHash, TokenId, UserId};
use crate::state::image::{EndingsImage, Image, RecordImage, Ts, UserImage};
use crate::state::BucketImage;
use serde::Deserialize;

/// A token record as format 1 held it: no scopes, allowlist or successor.
#[derive(Deserialize)]
struct RecordImageV1 {
    id: TokenId,
    user_id: UserId,
    name: String,
    hint: String,
    hash: TokenHash,
    created_at: Ts,
    last_used_at: Option<Ts>,
    expires_at: Option<Ts>,
    revoked_at: Option<Ts>,
    requests: u64,
}

/// [`Image`] as format 1 laid it out (postcard is positional: every field, in order).
#[derive(Deserialize)]
struct ImageV1 {
    applied_seq: u64,
    users: Vec<UserImage>,
    emails: Vec<(String, UserId)>,
    last_user_id: u64,
    tokens: Vec<(TokenHash, TokenId, UserId, i64)>,
    records: Vec<RecordImageV1>,
    sessions: Vec<(TokenHash, UserId, Ts)>,
    session_expiry: Vec<(Ts, TokenHash)>,
    evicted: Vec<u64>,
    endings: Vec<EndingsImage>,
    buckets: Vec<BucketImage>,
}

/// Today's image from a format-1 body.
pub fn decode(body: &[u8]) -> Result<Image, postcard::Error> {
    let v1: ImageV1 = postcard::from_bytes(body)?;
    Ok(Image {
        applied_seq: v1.applied_seq,
        users: v1.users,
        emails: v1.emails,
        last_user_id: v1.last_user_id,
        tokens: v1.tokens,
        records: v1
            .records
            .into_iter()
            .map(|r| RecordImage {
                id: r.id,
                user_id: r.user_id,
                name: r.name,
                hint: r.hint,
                hash: r.hash,
                created_at: r.created_at,
                last_used_at: r.last_used_at,
                expires_at: r.expires_at,
                revoked_at: r.revoked_at,
                requests: r.requests,
                scopes: None,
                allowed_ips: None,
                replaced_by: None,
            })
            .collect(),
        sessions: v1.sessions,
        session_expiry: v1.session_expiry,
        evicted: v1.evicted,
        endings: v1.endings,
        buckets: v1.buckets,
    })
}

#[cfg(test)]
mod tests {
    use super::super::decode as decode_file;

    /// Written by the binary before #15 (see `tests/fixtures/format1/tokens.json`).
    const PINNED: &[u8] =
        include_bytes!("../../../tests/fixtures/format1/data/snapshots/00000000000000000004.snap");

    #[test]
    fn a_pinned_format_1_snapshot_reads_as_unrestricted_tokens() {
        let (image, taken_at) = decode_file(PINNED).unwrap();
        assert!(taken_at > 1_700_000_000);
        assert_eq!(image.applied_seq, 4);
        assert_eq!(image.users.len(), 1);
        assert_eq!(image.users[0].email, "old@example.com");
        assert!(image.users[0].password_hash.is_some());
        let names: Vec<&str> = image.records.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["ci", "gone"]);
        assert!(image.records[0].revoked_at.is_none());
        assert!(image.records[1].revoked_at.is_some());
        // A revoked token stays in the index, marked, so its check stays a lookup.
        let revoked = image.tokens.iter().find(|t| t.1 == image.records[1].id);
        assert_eq!(revoked.map(|t| t.3), Some(crate::state::LiveToken::REVOKED));
        assert!(image
            .records
            .iter()
            .all(|r| r.scopes.is_none() && r.allowed_ips.is_none() && r.replaced_by.is_none()));
        // Today's state is built from it, and its own image is format 2's.
        let state = crate::state::State::from_image("n1", false, image.clone());
        assert_eq!(state.image(), image);
    }
}
