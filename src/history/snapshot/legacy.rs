//! The older snapshot formats a new binary still reads, into today's [`Image`], so that a
//! node (above all a cluster node seeded from a shared snapshot, whose log starts after it)
//! restarts on the new binary from the snapshot the old one left:
//!
//! - format 1 (before token restrictions): every token unrestricted and none replaced,
//!   exactly what a replay of that log gives;
//! - formats 1 and 2 hold no revocation details (who, why), as `token_revoked` v1 did not;
//! - formats 1 and 2 held each user's password hash: it leaves the image for the credential
//!   store (returned beside it), under the id the upcaster of `user_registered` v1 gives.

use crate::domain::{Subscription, TokenHash, TokenId, UserId};
use crate::event::upcast::v1_credential_id;
use crate::state::image::{EndingsImage, Image, RecordImage, Ts, UserImage};
use crate::state::BucketImage;
use serde::Deserialize;

/// (credential id, argon2id PHC string) taken out of an old image.
pub type Legacy = Vec<(String, String)>;

/// A user as formats 1 and 2 held it: with the hash.
#[derive(Deserialize)]
struct UserImageWithHash {
    id: UserId,
    name: String,
    email: String,
    subscription: Subscription,
    created_at: Ts,
    password_hash: Option<String>,
}

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

/// A token record as format 2 held it: no revocation details.
#[derive(Deserialize)]
struct RecordImageV2 {
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
    scopes: Option<Vec<String>>,
    allowed_ips: Option<Vec<String>>,
    replaced_by: Option<TokenId>,
}

impl From<RecordImageV2> for RecordImage {
    fn from(r: RecordImageV2) -> Self {
        RecordImage {
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
            scopes: r.scopes,
            allowed_ips: r.allowed_ips,
            replaced_by: r.replaced_by,
            revocation: None,
            last_used_from: None,
        }
    }
}

/// Format 1's record is format 2's without restrictions or successor.
impl From<RecordImageV1> for RecordImage {
    fn from(r: RecordImageV1) -> Self {
        RecordImageV2 {
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
        }
        .into()
    }
}

/// [`Image`] as formats 1 and 2 laid it out (postcard is positional: every field, in
/// order); `R` is the token record of the format.
#[derive(Deserialize)]
struct OldImage<R> {
    applied_seq: u64,
    users: Vec<UserImageWithHash>,
    emails: Vec<(String, UserId)>,
    last_user_id: u64,
    tokens: Vec<(TokenHash, TokenId, UserId, i64)>,
    records: Vec<R>,
    sessions: Vec<(TokenHash, UserId, Ts)>,
    session_expiry: Vec<(Ts, TokenHash)>,
    evicted: Vec<u64>,
    endings: Vec<EndingsImage>,
    buckets: Vec<BucketImage>,
}

impl<R: Into<RecordImage>> OldImage<R> {
    fn into_current(self) -> (Image, Legacy) {
        let mut legacy = Vec::new();
        let users = self
            .users
            .into_iter()
            .map(|u| {
                let credential_id = v1_credential_id(u.id.0);
                if let Some(phc) = u.password_hash {
                    legacy.push((credential_id.clone(), phc));
                }
                UserImage {
                    id: u.id,
                    name: u.name,
                    email: u.email,
                    subscription: u.subscription,
                    created_at: u.created_at,
                    credential_id: Some(credential_id),
                }
            })
            .collect();
        let image = Image {
            applied_seq: self.applied_seq,
            users,
            emails: self.emails,
            last_user_id: self.last_user_id,
            tokens: self.tokens,
            records: self.records.into_iter().map(Into::into).collect(),
            sessions: self.sessions,
            session_expiry: self.session_expiry,
            evicted: self.evicted,
            endings: self.endings,
            buckets: self.buckets,
        };
        (image, legacy)
    }
}

/// Today's image from a format-1 body, and the hashes it held.
pub fn decode_format1(body: &[u8]) -> Result<(Image, Legacy), postcard::Error> {
    Ok(postcard::from_bytes::<OldImage<RecordImageV1>>(body)?.into_current())
}

/// Today's image from a format-2 body, and the hashes it held.
pub fn decode_format2(body: &[u8]) -> Result<(Image, Legacy), postcard::Error> {
    Ok(postcard::from_bytes::<OldImage<RecordImageV2>>(body)?.into_current())
}

#[cfg(test)]
mod tests {
    use super::super::{decode_with_credentials, encode};

    /// Written by the binary before #15 (see `tests/fixtures/format1/tokens.json`).
    const PINNED: &[u8] =
        include_bytes!("../../../tests/fixtures/format1/data/snapshots/00000000000000000004.snap");

    #[test]
    fn a_pinned_format_1_snapshot_reads_as_unrestricted_tokens_and_hands_over_its_hashes() {
        let (image, taken_at, legacy) = decode_with_credentials(PINNED).unwrap();
        assert!(taken_at > 1_700_000_000);
        assert_eq!(image.applied_seq, 4);
        assert_eq!(image.users.len(), 1);
        assert_eq!(image.users[0].email, "old@example.com");
        assert_eq!(image.users[0].credential_id.as_deref(), Some("v1-user-1"));
        assert_eq!(legacy.len(), 1);
        assert_eq!(legacy[0].0, "v1-user-1");
        assert!(legacy[0].1.starts_with("$argon2id$"));
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
        // Today's state is built from it, and its own image (today's format) holds no hash.
        let state = crate::state::State::from_image("n1", false, image.clone());
        assert_eq!(state.image(), image);
        let bytes = encode(&state.image(), taken_at).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("$argon2"));
        let (again, _, none) = decode_with_credentials(&bytes).unwrap();
        assert_eq!((again, none.len()), (image, 0));
    }
}
