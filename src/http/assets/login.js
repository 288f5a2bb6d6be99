// The login page: submits the form as JSON and goes to the API keys page on success.
"use strict";
document.getElementById("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = ev.target;
  const error = document.getElementById("login-error");
  const button = form.querySelector("button");
  error.textContent = "";
  button.disabled = true;
  try {
    const res = await fetch("/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      credentials: "same-origin",
      body: JSON.stringify({ email: form.email.value, password: form.password.value }),
    });
    if (res.ok) {
      window.location.assign("/settings/api-keys");
      return;
    }
    const body = await res.json().catch(() => ({}));
    error.textContent = res.status === 401
      ? "Invalid email or password."
      : (body.error || "Login failed.") + (res.status === 429 ? " Please wait and try again." : "");
  } catch (e) {
    error.textContent = "Cannot reach the server. Please try again.";
  } finally {
    button.disabled = false;
  }
});
