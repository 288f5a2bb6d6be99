// Settings → Account: change password (POST /dashboard/password), log out everywhere
// (POST /dashboard/sessions/end-all). Every value from the server is inserted with
// textContent, never as HTML.
"use strict";
const $ = (id) => document.getElementById(id);

async function post(path, body) {
  const res = await fetch(path, {
    method: "POST",
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

$("password-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = ev.target;
  $("password-error").textContent = "";
  $("password-status").textContent = "";
  $("change-password").disabled = true;
  try {
    const data = await post("/dashboard/password", {
      current_password: form.current_password.value,
      new_password: form.new_password.value,
    });
    form.reset();
    $("password-status").textContent = "Password changed. " + data.sessions_ended +
      " other session(s) signed out.";
  } catch (e) {
    $("password-error").textContent = e.message;
  } finally {
    $("change-password").disabled = false;
  }
});

$("end-all").addEventListener("click", async () => {
  $("sessions-error").textContent = "";
  try {
    await post("/dashboard/sessions/end-all");
    window.location.assign("/login");
  } catch (e) {
    $("sessions-error").textContent = e.message;
  }
});

$("logout").addEventListener("click", async () => {
  await fetch("/logout", { method: "POST", credentials: "same-origin" });
  window.location.assign("/login");
});
