// Settings → Security log: the user's own events from GET /dashboard/events, newest first,
// a page at a time. Every value from the server is inserted with textContent, never as HTML.
"use strict";
const $ = (id) => document.getElementById(id);

const LABELS = {
  user_registered: "Account created",
  subscription_changed: "Plan changed",
  token_issued: "Token generated",
  token_revoked: "Token revoked",
  token_rotated: "Token regenerated",
  login_succeeded: "Signed in",
  login_failed: "Failed sign-in",
  session_ended: "Signed out",
  password_changed: "Password changed",
};

const BY = { user: "by you", operator: "by an operator", leak_report: "by a leak report" };

function details(e) {
  switch (e.type) {
    case "token_issued":
      return e.name + " (" + e.hint + ")" + (e.expires_at ? ", expires " + new Date(e.expires_at).toLocaleString() : "") +
        (e.scopes ? ", scopes " + e.scopes.join(" ") : "") +
        (e.allowed_ips ? ", from " + e.allowed_ips.join(", ") : "");
    case "token_rotated":
      return "the old token stops at " + new Date(e.expires_at).toLocaleString() + " · " + e.token_id;
    case "token_revoked":
      if (e.reason === "leaked") {
        return "revoked: found public at " + (e.url || "an unknown address") +
          (e.source ? " (reported by " + e.source + ")" : "") + " · " + e.token_id;
      }
      return (e.reason === "regenerated" ? "replaced by a regenerated token" : "revoked") +
        (BY[e.by] ? " " + BY[e.by] : "") + " · " + e.token_id;
    case "password_changed":
      return e.sessions_ended ? e.sessions_ended + " other session(s) signed out" : "";
    case "login_succeeded":
    case "login_failed":
      return e.client_ip ? "from " + e.client_ip : "";
    case "subscription_changed":
      return e.tier + ", " + e.status + (e.expires_at ? " until " + new Date(e.expires_at).toLocaleString() : "");
    case "user_registered":
      return e.tier + " plan";
    default:
      return "";
  }
}

let next = null;
async function load(before) {
  const path = "/dashboard/events" + (before ? "?before=" + before : "");
  const res = await fetch(path, { credentials: "same-origin" });
  if (res.status === 401) {
    window.location.assign("/login");
    return;
  }
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(data.error || "Request failed (" + res.status + ")");
  const body = $("events-body");
  for (const e of data.events) {
    const tr = document.createElement("tr");
    tr.className = "event " + e.type;
    for (const text of [new Date(e.occurred_at).toLocaleString(), LABELS[e.type] || e.type, details(e)]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    body.append(tr);
  }
  next = data.next;
  $("more").hidden = next === null;
}

$("more").addEventListener("click", () => {
  load(next).catch((e) => { $("events-error").textContent = e.message; });
});
$("logout").addEventListener("click", async () => {
  await fetch("/logout", { method: "POST", credentials: "same-origin" });
  window.location.assign("/login");
});
load(null).catch((e) => { $("events-error").textContent = e.message; });
