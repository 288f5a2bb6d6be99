//! What one account, one address or one operator mistake can make the service do: the
//! throttles' numbers (`[throttle]`) and the admin token's minimum length.

use super::{set, ConfigError};
use serde::Deserialize;

/// The admin token guards every account: shorter ones are refused at start.
pub const MIN_ADMIN_TOKEN_LEN: usize = 24;

/// The throttles, each a count per fixed window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    /// Failed API-token checks allowed per client address per `auth_window_secs`.
    pub auth_failures: u32,
    pub auth_window_secs: u32,
    /// Failed dashboard logins allowed per client address per `login_window_secs`.
    pub login_failures: u32,
    pub login_window_secs: u32,
    /// Failed logins allowed per account (email, whether or not it has an account) per
    /// `account_login_window_secs`, from any addresses.
    pub account_login_failures: u32,
    pub account_login_window_secs: u32,
    /// Token changes (generate, regenerate, revoke) one user may make through the dashboard
    /// per `token_changes_window_secs`.
    pub token_changes: u32,
    pub token_changes_window_secs: u32,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            auth_failures: 60,
            auth_window_secs: 60,
            login_failures: 10,
            login_window_secs: 600,
            account_login_failures: 20,
            account_login_window_secs: 600,
            token_changes: 30,
            token_changes_window_secs: 60,
        }
    }
}

impl Throttle {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        let windows = [
            self.auth_window_secs,
            self.login_window_secs,
            self.account_login_window_secs,
            self.token_changes_window_secs,
        ];
        if windows.contains(&0) {
            return Err(ConfigError::Invalid {
                key: "throttle".into(),
                reason: "windows must be positive".into(),
            });
        }
        Ok(())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileThrottle {
    auth_failures: Option<u32>,
    auth_window_secs: Option<u32>,
    login_failures: Option<u32>,
    login_window_secs: Option<u32>,
    account_login_failures: Option<u32>,
    account_login_window_secs: Option<u32>,
    token_changes: Option<u32>,
    token_changes_window_secs: Option<u32>,
}

impl FileThrottle {
    pub(super) fn apply(self, t: &mut Throttle) {
        set(&mut t.auth_failures, self.auth_failures);
        set(&mut t.auth_window_secs, self.auth_window_secs);
        set(&mut t.login_failures, self.login_failures);
        set(&mut t.login_window_secs, self.login_window_secs);
        set(&mut t.account_login_failures, self.account_login_failures);
        set(
            &mut t.account_login_window_secs,
            self.account_login_window_secs,
        );
        set(&mut t.token_changes, self.token_changes);
        set(
            &mut t.token_changes_window_secs,
            self.token_changes_window_secs,
        );
    }
}
