//! The API token format of the contract: `snpt_` + 40 base62 characters from a CSPRNG +
//! 6 base62 characters of CRC32 over everything before them. 51 characters in all.
//!
//! The checksum lets the verify path reject typos and garbage before any hashing or lookup,
//! and lets secret scanners recognise a SnapTrack token by shape.

use rand::Rng;
use sha2::{Digest, Sha256};
use std::fmt;

/// The fixed prefix every token starts with.
pub const PREFIX: &str = "snpt_";
/// Random base62 characters: 40 × log2(62) ≈ 238 bits of entropy.
const RANDOM_LEN: usize = 40;
/// Base62 characters of the CRC32 checksum (62^6 > 2^32).
const CHECK_LEN: usize = 6;
/// Total length of a token.
pub const TOKEN_LEN: usize = PREFIX.len() + RANDOM_LEN + CHECK_LEN;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a string is not a well-formed token. Callers map every variant to the same 401:
/// the reason is for tests and metrics, never for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenFormatError {
    #[error("token has the wrong length")]
    Length,
    #[error("token lacks the snpt_ prefix")]
    Prefix,
    #[error("token has a character outside base62")]
    Alphabet,
    #[error("token checksum does not match")]
    Checksum,
}

/// A plaintext API token. It exists only between generation and the one response that shows
/// it, and while a request that carries it is being verified. `Debug` redacts it, so it cannot
/// leak through a log line or a panic message by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiToken({})", self.hint())
    }
}

impl ApiToken {
    /// A fresh token from the operating system's CSPRNG (`rand::thread_rng` is a ChaCha
    /// generator seeded from the OS and reseeded periodically).
    pub fn generate() -> Self {
        let mut rng = rand::thread_rng();
        let mut s = String::with_capacity(TOKEN_LEN);
        s.push_str(PREFIX);
        for _ in 0..RANDOM_LEN {
            s.push(BASE62[rng.gen_range(0..62)] as char);
        }
        let crc = crc32fast::hash(s.as_bytes());
        push_base62_fixed(&mut s, crc);
        ApiToken(s)
    }

    /// Parses a candidate token: length, prefix, alphabet and checksum.
    pub fn parse(s: &str) -> Result<Self, TokenFormatError> {
        check_shape(s)?;
        Ok(ApiToken(s.to_owned()))
    }

    /// The plaintext, for the one response that shows it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The SHA-256 under which the token is stored.
    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }

    /// What lists show: `snpt_…` and the last 4 characters.
    pub fn hint(&self) -> String {
        hint_of(&self.0)
    }
}

/// `snpt_…` and the last four characters of a token.
fn hint_of(s: &str) -> String {
    let tail = s.get(s.len().saturating_sub(4)..).unwrap_or("");
    format!("{PREFIX}…{tail}")
}

/// Checks a token's shape without allocating. This is the first step of the verify path.
pub fn check_shape(s: &str) -> Result<(), TokenFormatError> {
    let b = s.as_bytes();
    if b.len() != TOKEN_LEN {
        return Err(TokenFormatError::Length);
    }
    if &b[..PREFIX.len()] != PREFIX.as_bytes() {
        return Err(TokenFormatError::Prefix);
    }
    if !b[PREFIX.len()..].iter().all(u8::is_ascii_alphanumeric) {
        return Err(TokenFormatError::Alphabet);
    }
    let body = &b[..PREFIX.len() + RANDOM_LEN];
    let mut expected = [0u8; CHECK_LEN];
    encode_base62_fixed(crc32fast::hash(body), &mut expected);
    if b[PREFIX.len() + RANDOM_LEN..] != expected {
        return Err(TokenFormatError::Checksum);
    }
    Ok(())
}

/// Checks shape and checksum, then hashes: the whole "header to hash" part of the verify path.
pub fn hash_if_well_formed(s: &str) -> Result<TokenHash, TokenFormatError> {
    check_shape(s)?;
    Ok(TokenHash::of(s))
}

fn encode_base62_fixed(mut n: u32, out: &mut [u8; CHECK_LEN]) {
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
}

fn push_base62_fixed(s: &mut String, n: u32) {
    let mut buf = [0u8; CHECK_LEN];
    encode_base62_fixed(n, &mut buf);
    for c in buf {
        s.push(c as char);
    }
}

/// The SHA-256 of a token: the only form in which a token is stored, logged or sent.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TokenHash([u8; 32]);

/// Hashes as its first 8 bytes: a SHA-256 digest is already uniformly distributed, and no
/// one can choose it (choosing a token does not choose its digest), so maps keyed by it use
/// [`crate::domain::RandomKeys`] and skip a second hash.
impl std::hash::Hash for TokenHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(first));
    }
}

impl TokenHash {
    /// The first 8 bytes: enough to tell tokens apart where a false match costs little.
    pub fn prefix(&self) -> u64 {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(first)
    }

    /// Hashes a token's text.
    pub fn of(token: &str) -> Self {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// Parses 64 lowercase or uppercase hex digits. Hand-rolled with a lookup table: replay
    /// parses one of these per `token_issued` event.
    pub fn parse(hex_str: &str) -> Result<Self, HashParseError> {
        const fn table() -> [u8; 256] {
            let mut t = [0xffu8; 256];
            let mut i = 0;
            while i < 10 {
                t[b'0' as usize + i] = i as u8;
                i += 1;
            }
            let mut i = 0;
            while i < 6 {
                t[b'a' as usize + i] = 10 + i as u8;
                t[b'A' as usize + i] = 10 + i as u8;
                i += 1;
            }
            t
        }
        static HEX: [u8; 256] = table();
        let b = hex_str.as_bytes();
        if b.len() != 64 {
            return Err(HashParseError);
        }
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            let (hi, lo) = (HEX[pair[0] as usize], HEX[pair[1] as usize]);
            if (hi | lo) & 0xf0 != 0 {
                return Err(HashParseError);
            }
            out[i] = hi << 4 | lo;
        }
        Ok(TokenHash(out))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({})", &self.to_hex()[..12])
    }
}

/// 64 hex digits in JSON; the 32 bytes themselves in the local log's binary form.
impl serde::Serialize for TokenHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !s.is_human_readable() {
            return s.serialize_bytes(&self.0);
        }
        let mut buf = [0u8; 64];
        // Infallible: the buffer is exactly twice the input's length.
        hex::encode_to_slice(self.0, &mut buf).map_err(serde::ser::Error::custom)?;
        s.serialize_str(std::str::from_utf8(&buf).map_err(serde::ser::Error::custom)?)
    }
}

/// A string that is not 64 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("expected a SHA-256 as 64 hex digits")]
pub struct HashParseError;

impl<'de> serde::Deserialize<'de> for TokenHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = TokenHash;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a SHA-256 as 64 hex digits")
            }
            // Borrowed or not, no allocation.
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<TokenHash, E> {
                TokenHash::parse(s).map_err(E::custom)
            }
            fn visit_bytes<E: serde::de::Error>(self, b: &[u8]) -> Result<TokenHash, E> {
                b.try_into()
                    .map(TokenHash)
                    .map_err(|_| E::invalid_length(b.len(), &"32 bytes"))
            }
        }
        if d.is_human_readable() {
            d.deserialize_str(V)
        } else {
            d.deserialize_bytes(V)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_tokens_have_the_contract_shape() {
        let t = ApiToken::generate();
        assert_eq!(t.expose().len(), 51);
        assert!(t.expose().starts_with("snpt_"));
        assert_eq!(ApiToken::parse(t.expose()), Ok(t.clone()));
        assert_eq!(t.hint().chars().count(), "snpt_…".chars().count() + 4);
        assert!(t.expose().ends_with(&t.hint()[t.hint().len() - 4..]));
    }

    #[test]
    fn two_tokens_differ() {
        assert_ne!(ApiToken::generate(), ApiToken::generate());
    }

    #[test]
    fn debug_never_shows_the_token() {
        let t = ApiToken::generate();
        assert!(!format!("{t:?}").contains(&t.expose()[5..45]));
    }

    #[test]
    fn hash_round_trips_through_hex() {
        let h = ApiToken::generate().hash();
        assert_eq!(TokenHash::parse(&h.to_hex()).unwrap(), h);
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<TokenHash>(&json).unwrap(), h);
        assert!(TokenHash::parse("zz").is_err());
    }

    #[test]
    fn rejects_each_kind_of_malformation() {
        let t = ApiToken::generate();
        let s = t.expose();
        assert_eq!(check_shape(&s[..50]), Err(TokenFormatError::Length));
        assert_eq!(
            check_shape(&format!("snpx_{}", &s[5..])),
            Err(TokenFormatError::Prefix)
        );
        assert_eq!(
            check_shape(&format!("{}-{}", &s[..20], &s[21..])),
            Err(TokenFormatError::Alphabet)
        );
        // Change one random character: the checksum catches it.
        let mut bytes = s.as_bytes().to_vec();
        bytes[10] = if bytes[10] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(bytes).unwrap();
        assert_eq!(check_shape(&typo), Err(TokenFormatError::Checksum));
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic(s in ".{0,80}") {
            let _ = check_shape(&s);
            let _ = hash_if_well_formed(&s);
        }

        #[test]
        fn any_single_substitution_in_the_random_part_is_caught(pos in 5usize..45, c in "[0-9A-Za-z]") {
            let t = ApiToken::generate();
            let mut s = t.expose().to_owned();
            let c = c.chars().next().unwrap();
            prop_assume!(s.as_bytes()[pos] as char != c);
            s.replace_range(pos..pos + 1, &c.to_string());
            prop_assert_eq!(check_shape(&s), Err(TokenFormatError::Checksum));
        }
    }
}
