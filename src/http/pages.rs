//! The dashboard's pages: `GET /login` and `GET /settings/api-keys` (Settings → API Keys),
//! with their CSS and JavaScript embedded in the binary. No build step, no CDN. Pages are
//! served with a Content-Security-Policy that allows only this origin's own scripts and
//! styles, so an injected `<script>` would not run; user data is escaped in HTML and inserted
//! with `textContent` by the scripts.

use super::auth::SessionUser;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

const CSS: &str = include_str!("assets/app.css");
const LOGIN_JS: &str = include_str!("assets/login.js");
const API_KEYS_JS: &str = include_str!("assets/api-keys.js");
const SECURITY_LOG_JS: &str = include_str!("assets/security-log.js");
const ACCOUNT_JS: &str = include_str!("assets/account.js");

/// Allows this origin's scripts, styles and fetches, nothing else; no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; \
    base-uri 'none'";

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(title: &str, body: &str, script: &str) -> HttpResponse {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title} · SnapTrack</title>\n<link rel=\"stylesheet\" href=\"/assets/app.css\">\n\
         </head>\n<body>\n{body}\n<script src=\"/assets/{script}\"></script>\n</body>\n</html>\n"
    );
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(html)
}

/// `GET /login`. A visitor who already has a session goes straight to the API keys.
pub async fn login_page(req: HttpRequest) -> HttpResponse {
    if SessionUser::from_cookie(&req).is_some() {
        return redirect("/settings/api-keys");
    }
    page(
        "Log in",
        r#"<main class="login">
<a class="logo" href="/login">Snap<span>Track</span></a>
<div class="card">
<h1>Log in</h1>
<form id="login-form" method="post" action="/login" novalidate>
<label for="email">Email</label>
<input id="email" name="email" type="email" autocomplete="username" required>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">Log in</button>
<p id="login-error" class="error" role="alert" aria-live="assertive"></p>
</form>
</div>
</main>"#,
        "login.js",
    )
}

fn redirect(to: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

/// `GET /settings/api-keys`: Settings → API Keys. Without a session: to `/login`.
/// The settings pages' top bar: the logo, the pages (`current` marked), who is signed in.
fn settings_header(user: &crate::state::UserView, current: &str) -> String {
    let link = |path: &str, label: &str| {
        let mark = if path == current {
            r#" aria-current="page""#
        } else {
            ""
        };
        format!(r#"<a href="{path}"{mark}>{label}</a>"#)
    };
    format!(
        r#"<header class="top"><div class="bar">
<a class="logo" href="/settings/api-keys">Snap<span>Track</span></a>
<nav>{keys} {log} {account}</nav>
<span class="spacer"></span>
<span class="who">{name} · {email}</span>
<button type="button" class="secondary small" id="logout">Log out</button>
</div></header>
"#,
        keys = link("/settings/api-keys", "API Keys"),
        log = link("/settings/security-log", "Security log"),
        account = link("/settings/account", "Account"),
        name = escape(&user.name),
        email = escape(&user.email),
    )
}

pub async fn api_keys_page(req: HttpRequest) -> HttpResponse {
    let Some(s) = SessionUser::from_cookie(&req) else {
        return redirect("/login");
    };
    let user = &s.user;
    let tier = user.subscription.tier;
    let free_notice = if tier == crate::domain::Tier::Free {
        r#"<p class="notice" id="plan-notice">Your plan does not include API access. API tokens work on the Starter plan or higher: upgrade to use them.</p>"#
    } else {
        ""
    };
    let body = format!(
        r#"{header}<main>
<div class="crumbs">Settings</div>
<h1>API Keys</h1>
<section class="card">
<div class="plan"><h2>Plan</h2><span class="badge" id="plan">{tier}</span></div>
{free_notice}
</section>
<section class="once" id="once" hidden aria-live="polite">
<h2>Your new API token: <span id="new-token-name"></span></h2>
<div class="tokenbox"><code id="new-token"></code><button type="button" id="copy">Copy</button></div>
<p class="warning"><strong>Copy it now.</strong> You won't be able to see it again: it is stored only as a SHA-256 hash.</p>
<p class="sr-only" id="copy-status" aria-live="polite"></p>
<button type="button" class="secondary small" id="done">I have stored it</button>
</section>
<section class="card">
<h2>Generate API Token</h2>
<form id="generate-form" class="inline">
<div><label for="token-name">Name</label><input id="token-name" name="name" required maxlength="100" placeholder="e.g. production server"></div>
<div><label for="expires">Expires</label><select id="expires" name="expires">
<option value="">Never</option><option value="7">In 7 days</option><option value="30">In 30 days</option>
<option value="90">In 90 days</option><option value="365">In 1 year</option></select></div>
{scopes}<div class="wide"><label for="allowed-ips">Allowed addresses</label><input id="allowed-ips" name="allowed_ips" placeholder="Anywhere" aria-describedby="allowed-ips-help">
<small id="allowed-ips-help">Optional: IP addresses or CIDR networks, separated by commas (e.g. 203.0.113.0/24, 2001:db8::1).</small></div>
<button type="submit" id="generate">Generate API Token</button>
</form>
<p id="generate-error" class="error" role="alert"></p>
</section>
<section class="card">
<h2>Your tokens</h2>
<table>
<thead><tr><th>Name</th><th>Token</th><th>Access</th><th>Created</th><th>Last used</th><th>Expires</th><th>Status</th><th><span class="sr-only">Actions</span></th></tr></thead>
<tbody id="tokens-body"></tbody>
</table>
<p id="list-error" class="error" role="alert"></p>
</section>
</main>
<dialog id="revoke-dialog" aria-labelledby="revoke-title">
<h2 id="revoke-title">Revoke this token?</h2>
<p>Requests using <strong id="revoke-name"></strong> will fail immediately. This cannot be undone.</p>
<div class="buttons"><button type="button" class="secondary" id="revoke-cancel">Cancel</button>
<button type="button" class="danger" id="revoke-confirm">Revoke Token</button></div>
</dialog>
<dialog id="regenerate-dialog" aria-labelledby="regenerate-title">
<h2 id="regenerate-title">Regenerate this token?</h2>
<p>A new token replaces <strong id="regenerate-name"></strong>, with the same name, lifetime and access.</p>
<label for="grace">The old token</label>
<select id="grace"><option value="0">stops working at once</option><option value="3600">keeps working for 1 hour</option>
<option value="86400">keeps working for 24 hours</option><option value="604800">keeps working for 7 days</option></select>
<div class="buttons"><button type="button" class="secondary" id="regenerate-cancel">Cancel</button>
<button type="button" id="regenerate-confirm">Regenerate</button></div>
</dialog>"#,
        header = settings_header(user, "/settings/api-keys"),
        tier = tier.as_str(),
        scopes = scope_choices(&req),
    );
    page("API Keys", &body, "api-keys.js")
}

/// The catalogue's scopes as checkboxes (none checked: every scope); nothing when the
/// service has no scopes. Names are letters, digits and `:._-` only, so they need no
/// escaping; they are escaped anyway.
fn scope_choices(req: &HttpRequest) -> String {
    let Some(app) = req.app_data::<actix_web::web::Data<super::AppState>>() else {
        return String::new();
    };
    let names = app.settings.scopes.names();
    if names.is_empty() {
        return String::new();
    }
    let boxes: String = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let n = escape(n);
            format!(
                r#"<label class="check"><input type="checkbox" name="scope" id="scope-{i}" value="{n}"> {n}</label>"#
            )
        })
        .collect();
    format!(
        r#"<fieldset class="wide" id="scopes"><legend>Scopes</legend>{boxes}<small>None checked: the token has every scope.</small></fieldset>"#
    )
}

/// `GET /settings/security-log`: the signed-in user's own security events, newest first.
pub async fn security_log_page(req: HttpRequest) -> HttpResponse {
    let Some(s) = SessionUser::from_cookie(&req) else {
        return redirect("/login");
    };
    let body = format!(
        r#"{header}<main>
<div class="crumbs">Settings</div>
<h1>Security log</h1>
<section class="card">
<p class="muted">Sign-ins to your account, your tokens and your plan, newest first.</p>
<table>
<thead><tr><th>When</th><th>Event</th><th>Details</th></tr></thead>
<tbody id="events-body"></tbody>
</table>
<button type="button" class="secondary small" id="more" hidden>Load more</button>
<p id="events-error" class="error" role="alert"></p>
</section>
</main>"#,
        header = settings_header(&s.user, "/settings/security-log"),
    );
    page("Security log", &body, "security-log.js")
}

/// `GET /settings/account`: change password, log out everywhere.
pub async fn account_page(req: HttpRequest) -> HttpResponse {
    let Some(s) = SessionUser::from_cookie(&req) else {
        return redirect("/login");
    };
    let body = format!(
        r#"{header}<main>
<div class="crumbs">Settings</div>
<h1>Account</h1>
<section class="card">
<h2>Change password</h2>
<form id="password-form" class="stack" novalidate>
<label for="current-password">Current password</label>
<input id="current-password" name="current_password" type="password" autocomplete="current-password" required>
<label for="new-password">New password</label>
<input id="new-password" name="new_password" type="password" autocomplete="new-password" required aria-describedby="new-password-help">
<small id="new-password-help">Long and not easy to guess. Your other sessions are signed out.</small>
<button type="submit" id="change-password">Change password</button>
</form>
<p id="password-status" class="ok" role="status" aria-live="polite"></p>
<p id="password-error" class="error" role="alert"></p>
</section>
<section class="card">
<h2>Sessions</h2>
<p class="muted">Signs you out on every device and browser, this one included.</p>
<button type="button" class="danger" id="end-all">Log out everywhere</button>
<p id="sessions-error" class="error" role="alert"></p>
</section>
</main>"#,
        header = settings_header(&s.user, "/settings/account"),
    );
    page("Account", &body, "account.js")
}

/// `GET /assets/{name}`: the embedded CSS and scripts.
pub async fn asset(name: web::Path<String>) -> HttpResponse {
    let (body, ctype) = match name.as_str() {
        "app.css" => (CSS, "text/css; charset=utf-8"),
        "login.js" => (LOGIN_JS, "text/javascript; charset=utf-8"),
        "api-keys.js" => (API_KEYS_JS, "text/javascript; charset=utf-8"),
        "security-log.js" => (SECURITY_LOG_JS, "text/javascript; charset=utf-8"),
        "account.js" => (ACCOUNT_JS, "text/javascript; charset=utf-8"),
        _ => return super::error::ApiError::new(super::error::Code::NotFound).into_response(),
    };
    HttpResponse::Ok()
        .content_type(ctype)
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(body)
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_html() {
        assert_eq!(
            super::escape("<a href='x'>&\""),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;"
        );
    }
}
