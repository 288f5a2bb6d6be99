// Settings → API Keys: list, generate (shown once), revoke (with confirmation), regenerate.
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
    td.colSpan = 7;
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
    const actions = document.createElement("td");
    actions.className = "actions";
    if (st === "active") {
      actions.append(
        button("Regenerate", "secondary small regenerate", () => regenerate(t)),
        button("Revoke Token", "danger small revoke", () => confirmRevoke(t)),
      );
    }
    tr.append(
      cell(t.name, "name"), cell(t.hint, "hint"), cell(fmt(t.created_at)),
      cell(t.last_used_at ? fmt(t.last_used_at) + " (" + t.requests + " requests)" : "never"),
      cell(t.expires_at ? fmt(t.expires_at) : "never"), stCell, actions,
    );
    body.append(tr);
  }
}

function showOnce(data) {
  $("new-token").textContent = data.token;
  $("new-token-name").textContent = data.name;
  $("once").hidden = false;
  $("copy-status").textContent = "";
  $("once").scrollIntoView({ behavior: "smooth", block: "center" });
}

async function regenerate(t) {
  try {
    showOnce(await api("POST", "/dashboard/tokens/" + t.id + "/regenerate"));
    await refresh();
  } catch (e) {
    $("list-error").textContent = e.message;
  }
}

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
