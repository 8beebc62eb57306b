// Shared by every page: the theme toggle and small helpers (window.cx).
// Data from the server is put into the page with textContent only, never innerHTML: task
// names, parameters and log lines are text, whatever characters they hold.
(function () {
  "use strict";

  function currentTheme() {
    var set = document.documentElement.getAttribute("data-theme");
    if (set) return set;
    return window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
  }

  var toggle = document.getElementById("theme-toggle");
  if (toggle) {
    toggle.addEventListener("click", function () {
      var next = currentTheme() === "dark" ? "light" : "dark";
      document.documentElement.setAttribute("data-theme", next);
      try { localStorage.setItem("cx-theme", next); } catch (e) { /* not kept */ }
      document.dispatchEvent(new CustomEvent("cx-theme", { detail: next }));
    });
  }

  // el("td", {class: "x", title: "y"}, "text or", childNode, ...)
  function el(tag, attrs) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        if (attrs[k] !== undefined && attrs[k] !== null) node.setAttribute(k, String(attrs[k]));
      });
    }
    for (var i = 2; i < arguments.length; i++) {
      var c = arguments[i];
      if (c === undefined || c === null) continue;
      node.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
    }
    return node;
  }

  function badge(status) {
    return el("span", { class: "badge s-" + status, "data-status": status }, status);
  }

  // fetch JSON; resolves {ok, status, data} (data: the body, or the error envelope's error)
  function api(method, url, body) {
    var init = { method: method, headers: { Accept: "application/json" } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(url, init).then(function (r) {
      return r.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = { message: text }; }
        if (!r.ok) {
          var err = data && data.error ? data.error : { status: r.status, message: (data && data.message) || r.statusText };
          return { ok: false, status: r.status, data: err };
        }
        return { ok: true, status: r.status, data: data };
      });
    }, function (e) {
      return { ok: false, status: 0, data: { status: 0, message: "the server did not answer (" + e + ")" } };
    });
  }

  function seconds(ms) {
    if (ms === null || ms === undefined) return "-";
    if (ms < 1000) return Math.round(ms) + " ms";
    return (ms / 1000).toFixed(1) + " s";
  }

  var DONE = ["succeeded", "failed", "skipped", "cancelled"];

  function progress(counts, total) {
    if (!total) return 0;
    var done = 0;
    DONE.forEach(function (s) { done += counts[s] || 0; });
    return Math.min(100, Math.round(100 * done / total));
  }

  window.cx = { el: el, badge: badge, api: api, seconds: seconds, progress: progress, theme: currentTheme };
})();
