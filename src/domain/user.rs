use std::fmt;
use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// Whether `c` is a control (Cc) or an invisible format character (Cf: zero-width spaces,
/// bidirectional overrides, soft hyphens…): text that looks like other text.
fn is_hidden(c: char) -> bool {
    matches!(
        c.general_category(),
        GeneralCategory::Control | GeneralCategory::Format
    )
}

/// The form emails are compared in: NFKC, then lower-cased, then trimmed. `Ｂob@Example.com`
/// and `bob@example.com` are one account. Old events' emails are compared in this form too.
pub fn email_key(s: &str) -> String {
    s.nfkc()
        .collect::<String>()
        .to_lowercase()
        .trim()
        .to_owned()
}

/// An email address in its compared form ([`email_key`]): one account per address whatever
/// its case or Unicode compatibility form. Control and invisible format characters are
/// refused (`bob\u{200b}@example.com` would look like `bob@example.com`). The check is
/// otherwise deliberately modest (one `@`, a dot in the domain, no spaces, ≤ 254 bytes): the
/// only real proof of an address is mail that reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if s.chars().any(is_hidden) {
            return Err("must not contain control or invisible characters");
        }
        let s = email_key(s);
        if s.is_empty() || s.len() > 254 {
            return Err("must be an email address of at most 254 characters");
        }
        let Some((local, domain)) = s.split_once('@') else {
            return Err("must be an email address");
        };
        let ok = !local.is_empty()
            && !domain.contains('@')
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !s.chars().any(|c| c.is_whitespace() || c.is_control());
        if !ok {
            return Err("must be an email address");
        }
        Ok(Email(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A person's display name: 1–100 characters, no control or invisible format characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(String);

impl UserName {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let t = s.trim();
        if t.is_empty() || t.chars().count() > 100 {
            return Err("must be 1 to 100 characters");
        }
        if t.chars().any(is_hidden) {
            return Err("must not contain control or invisible characters");
        }
        Ok(UserName(t.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A plaintext password on its way to argon2id. `Debug` redacts it.
#[derive(Clone)]
pub struct Password(String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Why a new password was refused (the 422's reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WeakPassword {
    #[error("must be at least {0} characters")]
    TooShort(usize),
    #[error("must be at most 1024 bytes")]
    TooLong,
    #[error("must not be only whitespace")]
    Blank,
    #[error("is too common or too easy to guess{0}")]
    Guessable(String),
}

impl Password {
    /// A password being set: at least `min_len` characters (and at most 1024 bytes, so that
    /// hashing a hostile input stays cheap), not whitespace only, and not one that a
    /// guesser tries early: zxcvbn's estimate (its bundled lists of common passwords, words,
    /// names, keyboard patterns, sequences and dates) must reach "safely unguessable" (3 of
    /// 4), given the user's own email and name as words the guesser knows. Takes up to a few
    /// milliseconds: call it off the async executor.
    pub fn parse(s: &str, min_len: usize, user_words: &[&str]) -> Result<Self, WeakPassword> {
        if s.len() > 1024 {
            return Err(WeakPassword::TooLong);
        }
        if s.chars().count() < min_len {
            return Err(WeakPassword::TooShort(min_len));
        }
        if s.trim().is_empty() {
            return Err(WeakPassword::Blank);
        }
        // The estimate's cost grows with the length; past 100 characters a password is as
        // strong as its first 100.
        let head: String = s.chars().take(100).collect();
        let estimate = zxcvbn::zxcvbn(&head, user_words);
        if estimate.score() < zxcvbn::Score::Three {
            let why = estimate
                .feedback()
                .and_then(|f| f.warning())
                .map(|w| format!(" ({w})"))
                .unwrap_or_default();
            return Err(WeakPassword::Guessable(why));
        }
        Ok(Password(s.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// An argon2id PHC string with a fresh random salt. Slow by design (tens of
    /// milliseconds): call it off the async executor.
    pub fn hash(&self) -> Result<String, argon2::password_hash::Error> {
        use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
        let salt = SaltString::generate(&mut OsRng);
        argon2::Argon2::default()
            .hash_password(self.0.as_bytes(), &salt)
            .map(|h| h.to_string())
    }
}

/// Whether `password` matches the argon2 PHC string `phc`. A malformed `phc` never matches.
/// Takes as long as hashing, whichever way it ends.
pub fn verify_password(password: &str, phc: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(phc).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(
            Email::parse(" John@Example.COM ").unwrap().as_str(),
            "john@example.com"
        );
        assert_eq!(
            Email::parse("ＢＯＢ@example.com").unwrap(),
            Email::parse("bob@example.com").unwrap(),
            "compared after NFKC"
        );
        for bad in [
            "bob\u{200b}@example.com",
            "bob@example.com\u{202e}",
            "bo\u{00ad}b@example.com",
            "",
            "john",
            "john@",
            "@example.com",
            "a@b",
            "a b@c.d",
            "a@@b.c",
            "a@.b",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_refuse_hidden_characters() {
        assert!(UserName::parse("Bob").is_ok());
        assert!(UserName::parse("Zoë O'Brien").is_ok());
        for bad in ["Bob\u{200b}", "\u{202e}boB", "Bo\nb", ""] {
            assert!(UserName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn new_passwords_follow_the_policy() {
        let p = Password::parse("correct horse battery staple", 12, &[]).unwrap();
        assert!(!format!("{p:?}").contains("horse"));
        assert_eq!(
            Password::parse("short", 12, &[]).unwrap_err(),
            WeakPassword::TooShort(12)
        );
        assert_eq!(
            Password::parse("            ", 12, &[]).unwrap_err(),
            WeakPassword::Blank
        );
        for common in [
            "password1234",
            "123456789012",
            "qwertyuiop12",
            "iloveyou1234",
        ] {
            assert!(
                matches!(
                    Password::parse(common, 12, &[]),
                    Err(WeakPassword::Guessable(_))
                ),
                "{common}"
            );
        }
        // The user's own email is a word the guesser knows.
        assert!(
            Password::parse("alice.smith@example.com", 12, &["alice.smith@example.com"]).is_err()
        );
        assert!(matches!(
            Password::parse(&"x".repeat(1025), 12, &[]),
            Err(WeakPassword::TooLong)
        ));
    }

    #[test]
    fn hashes_verify_only_their_password() {
        let p = Password::parse("correct horse battery staple", 12, &[]).unwrap();
        let h = p.hash().unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(!h.contains("horse"));
        assert!(verify_password("correct horse battery staple", &h));
        assert!(!verify_password("correct horse battery stapl", &h));
        assert!(!verify_password(
            "correct horse battery staple",
            "not a hash"
        ));
    }
}
