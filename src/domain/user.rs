use std::fmt;

/// An email address, trimmed and lower-cased: one account per address whatever its case.
/// The check is deliberately modest (one `@`, a dot in the domain, no spaces, ≤ 254 bytes):
/// the only real proof of an address is mail that reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let s = s.trim().to_lowercase();
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

/// A person's display name: 1–100 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(String);

impl UserName {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let t = s.trim();
        if t.is_empty() || t.chars().count() > 100 {
            return Err("must be 1 to 100 characters");
        }
        if t.chars().any(char::is_control) {
            return Err("must not contain control characters");
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

impl Password {
    /// 8 to 1024 characters: long enough to mean something, short enough that hashing a
    /// hostile input stays cheap.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let n = s.chars().count();
        if n < 8 {
            return Err("must be at least 8 characters");
        }
        if s.len() > 1024 {
            return Err("must be at most 1024 bytes");
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
        for bad in [
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
    fn passwords_are_redacted_in_debug() {
        let p = Password::parse("correct horse").unwrap();
        assert!(!format!("{p:?}").contains("horse"));
        assert!(Password::parse("short").is_err());
    }

    #[test]
    fn hashes_verify_only_their_password() {
        let p = Password::parse("correct horse").unwrap();
        let h = p.hash().unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(!h.contains("horse"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("correct horsf", &h));
        assert!(!verify_password("correct horse", "not a hash"));
    }
}
