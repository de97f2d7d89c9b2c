// Token handling and JSON calls shared by the pages. The token lives in localStorage and is
// sent as a Bearer header (no cookies, so no cross-site request can act as the annotator).
"use strict";

const TOKEN_KEY = "prefloop-token";

const api = {
  token() {
    return localStorage.getItem(TOKEN_KEY);
  },
  setToken(token) {
    localStorage.setItem(TOKEN_KEY, token);
  },
  logout() {
    localStorage.removeItem(TOKEN_KEY);
    if (window.location.pathname !== "/login") window.location.assign("/login");
  },
  // JSON request; throws an Error carrying .status and the server's message.
  async call(method, path, body) {
    const headers = { Accept: "application/json" };
    const token = api.token();
    if (token) headers.Authorization = "Bearer " + token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const resp = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (resp.status === 401) {
      api.logout();
      throw Object.assign(new Error("please log in again"), { status: 401 });
    }
    const data = resp.status === 204 ? null : await resp.json().catch(() => null);
    if (!resp.ok) {
      const msg = data && data.detail ? String(typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail)) : resp.statusText;
      throw Object.assign(new Error(msg), { status: resp.status });
    }
    return data;
  },
  requireLogin() {
    if (!api.token()) {
      window.location.assign("/login");
      return false;
    }
    return true;
  },
};

window.api = api;
