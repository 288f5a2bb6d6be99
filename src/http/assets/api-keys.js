// Settings → API Keys: list, generate (shown once; with scopes and allowed addresses),
// revoke (with confirmation), regenerate (with a grace period for the old token),
// and each token's usage chart (requests per hour over 7 days, per day over 90), drawn here
// as SVG from GET /dashboard/tokens/{id}/usage.
// Every value from the server is inserted with textContent, never as HTML.
"use strict";
const $ = (id) => document.getElementById(id);
const fmt = (t) => (t ? new Date(t).toLocaleString() : "—");

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    credentials: "same-origin",
    headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  if (res.status === 401) {
    window.location.assign("/login");
    throw new Error("session expired");
  }
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(data.error || "Request failed (" + res.status + ")");
  return data;
}

function status(t) {
  if (t.revoked_at) return "revoked";
  if (t.expires_at && new Date(t.expires_at) <= new Date()) return "expired";
  return "active";
}

function revocation(t) {
  const r = t.revocation;
  if (!r) return "";
  if (r.reason === "leaked") return "revoked: found public at " + (r.url || "an unknown address");
  if (r.reason === "regenerated") return "replaced by a regenerated token";
  if (r.by === "operator") return "by an operator";
  return "";
}

// What the token may do: its scopes and where from.
function access(t) {
  const scopes = t.scopes ? t.scopes.join(", ") : "all scopes";
  const from = t.allowed_ips ? "from " + t.allowed_ips.join(", ") : "from anywhere";
  return scopes + "; " + from;
}

// When it stops: "stops at …" for a regenerated token in its grace period.
function expires(t) {
  if (!t.expires_at) return "never";
  if (t.replaced_by && !t.revoked_at) return "stops at " + fmt(t.expires_at);
  return fmt(t.expires_at);
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function button(label, cls, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = cls;
  b.textContent = label;
  b.addEventListener("click", onClick);
  return b;
}

async function refresh() {
  const { tokens } = await api("GET", "/dashboard/tokens");
  const body = $("tokens-body");
  body.replaceChildren();
  if (tokens.length === 0) {
    const tr = document.createElement("tr");
    const td = cell("No API tokens yet. Generate one above.", "empty");
    td.colSpan = 8;
    tr.append(td);
    body.append(tr);
    return;
  }
  for (const t of tokens) {
    const tr = document.createElement("tr");
    tr.dataset.tokenId = t.id;
    const st = status(t);
    const badge = document.createElement("span");
    badge.className = "badge " + st;
    badge.textContent = st;
    const stCell = document.createElement("td");
    stCell.append(badge);
    // Who revoked it, and for a leak report where the token was found.
    const why = revocation(t);
    if (why) {
      const note = document.createElement("small");
      note.className = "revocation";
      note.textContent = why;
      stCell.append(" ", note);
    }
    const actions = document.createElement("td");
    actions.className = "actions";
    actions.append(button("Usage", "secondary small usage", () => toggleUsage(t, tr)));
    if (st === "active") {
      if (!t.replaced_by) {
        actions.append(button("Regenerate", "secondary small regenerate", () => confirmRegenerate(t)));
      }
      actions.append(button("Revoke Token", "danger small revoke", () => confirmRevoke(t)));
    }
    tr.append(
      cell(t.name, "name"), cell(t.hint, "hint"), cell(access(t), "access"), cell(fmt(t.created_at)),
      cell(t.last_used_at ? fmt(t.last_used_at) + (t.last_used_from ? " from " + t.last_used_from : "") +
        " (" + t.requests + " requests)" : "never", "last-used"),
      cell(expires(t), "expires"), stCell, actions,
    );
    body.append(tr);
  }
}

const SVG = "http://www.w3.org/2000/svg";
const HOUR = 3600;

// Buckets of `size` seconds covering the last `count` of them, from the hourly counts.
function buckets(hours, size, count) {
  const now = Math.floor(Date.now() / 1000);
  const end = now - (now % size) + size;
  const start = end - size * count;
  const out = new Array(count).fill(0);
  for (const h of hours) {
    if (h.start >= start && h.start < end) out[Math.floor((h.start - start) / size)] += h.requests;
  }
  return { out, start };
}

function chart(hours, daily) {
  const size = daily ? 24 * HOUR : HOUR;
  const count = daily ? 90 : 7 * 24;
  const { out, start } = buckets(hours, size, count);
  const total = out.reduce((a, b) => a + b, 0);
  const max = Math.max(1, ...out);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 " + count + " 40");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  const period = daily ? "the last 90 days, per day" : "the last 7 days, per hour";
  svg.setAttribute("aria-label", "Requests in " + period + ": " + total + " in all");
  out.forEach((n, i) => {
    if (n === 0) return;
    const r = document.createElementNS(SVG, "rect");
    const h = Math.max(1, (n / max) * 38);
    r.setAttribute("x", i + 0.1);
    r.setAttribute("width", 0.8);
    r.setAttribute("y", 40 - h);
    r.setAttribute("height", h);
    const title = document.createElementNS(SVG, "title");
    const when = new Date((start + i * size) * 1000);
    title.textContent = (daily ? when.toLocaleDateString() : when.toLocaleString()) + ": " + n;
    r.append(title);
    svg.append(r);
  });
  const caption = document.createElement("p");
  caption.className = "usage-total";
  caption.textContent = total + (total === 1 ? " request" : " requests") +
    (daily ? " in the last 90 days" : " in the last 7 days");
  return [caption, svg];
}

async function toggleUsage(t, tr) {
  const next = tr.nextElementSibling;
  if (next && next.classList.contains("usage-row")) {
    next.remove();
    return;
  }
  const row = document.createElement("tr");
  row.className = "usage-row";
  const td = document.createElement("td");
  td.colSpan = 8;
  td.className = "usage";
  row.append(td);
  tr.after(row);
  try {
    const { hours } = await api("GET", "/dashboard/tokens/" + t.id + "/usage");
    let daily = false;
    const draw = () => {
      const toggle = button(daily ? "Last 7 days" : "Last 90 days", "secondary small range", () => {
        daily = !daily;
        draw();
      });
      td.replaceChildren(...chart(hours, daily), toggle);
    };
    draw();
  } catch (e) {
    td.textContent = e.message;
  }
}

function showOnce(data) {
  $("new-token").textContent = data.token;
  $("new-token-name").textContent = data.name;
  $("once").hidden = false;
  $("copy-status").textContent = "";
  $("once").scrollIntoView({ behavior: "smooth", block: "center" });
}

let pendingRegenerate = null;
function confirmRegenerate(t) {
  pendingRegenerate = t;
  $("regenerate-name").textContent = t.name + " (" + t.hint + ")";
  $("grace").value = "0";
  $("regenerate-dialog").showModal();
}

$("regenerate-confirm").addEventListener("click", async () => {
  const t = pendingRegenerate;
  $("regenerate-dialog").close();
  if (!t) return;
  try {
    const grace = Number($("grace").value);
    showOnce(await api("POST", "/dashboard/tokens/" + t.id + "/regenerate", { grace_secs: grace }));
    await refresh();
  } catch (e) {
    $("list-error").textContent = e.message;
  }
});
$("regenerate-cancel").addEventListener("click", () => $("regenerate-dialog").close());

let pendingRevoke = null;
function confirmRevoke(t) {
  pendingRevoke = t;
  $("revoke-name").textContent = t.name + " (" + t.hint + ")";
  $("revoke-dialog").showModal();
}

$("revoke-confirm").addEventListener("click", async () => {
  const t = pendingRevoke;
  $("revoke-dialog").close();
  if (!t) return;
  try {
    await api("DELETE", "/dashboard/tokens/" + t.id);
    await refresh();
  } catch (e) {
    $("list-error").textContent = e.message;
  }
});
$("revoke-cancel").addEventListener("click", () => $("revoke-dialog").close());

$("generate-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = ev.target;
  $("generate-error").textContent = "";
  const body = { name: form.name.value };
  if (form.expires.value) body.expires_in_days = Number(form.expires.value);
  const scopes = [...form.querySelectorAll("input[name=scope]:checked")].map((c) => c.value);
  if (scopes.length > 0) body.scopes = scopes;
  const ips = form.allowed_ips.value.split(/[\s,]+/).filter((s) => s !== "");
  if (ips.length > 0) body.allowed_ips = ips;
  try {
    showOnce(await api("POST", "/dashboard/tokens", body));
    form.reset();
    await refresh();
  } catch (e) {
    $("generate-error").textContent = e.message;
  }
});

$("copy").addEventListener("click", async () => {
  const text = $("new-token").textContent;
  try {
    await navigator.clipboard.writeText(text);
    $("copy-status").textContent = "Copied.";
  } catch (e) {
    const range = document.createRange();
    range.selectNodeContents($("new-token"));
    const sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
    $("copy-status").textContent = "Selected: press Ctrl+C to copy.";
  }
});

$("done").addEventListener("click", () => {
  $("new-token").textContent = "";
  $("once").hidden = true;
});

$("logout").addEventListener("click", async () => {
  await fetch("/logout", { method: "POST", credentials: "same-origin" });
  window.location.assign("/login");
});

refresh().catch((e) => { $("list-error").textContent = e.message; });
