// Login: a one-time link (/login#code=...) is exchanged for a token; or paste a token.
// The code travels in the URL fragment, which browsers never send to servers or proxies.
"use strict";

async function loginWithCode(code) {
  const out = await api.call("POST", "/api/login", { code });
  api.setToken(out.token);
  window.location.replace(out.role === "admin" ? "/admin" : "/");
}

function showError(msg) {
  document.getElementById("login-error").textContent = msg;
}

document.addEventListener("DOMContentLoaded", () => {
  const params = new URLSearchParams(window.location.hash.slice(1));
  const code = params.get("code");
  if (code) {
    history.replaceState(null, "", "/login"); // drop the used code from the address bar
    loginWithCode(code).catch((e) => showError("login link not accepted: " + e.message));
  }
  document.getElementById("token-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const token = document.getElementById("token-input").value.trim();
    api.setToken(token);
    try {
      const me = await api.call("GET", "/api/me");
      window.location.replace(me.role === "admin" ? "/admin" : "/");
    } catch (e) {
      showError("token not accepted: " + e.message);
    }
  });
});
