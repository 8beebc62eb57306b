// The agents and queues tables (dashboard, /agents, /queues) refreshed every few seconds from
// /api/v1/agents and /api/v1/queues: heartbeat ages tick, agents come and go, depths move.
(function () {
  "use strict";
  var el = cx.el;
  var STALE_S = 30; // as web/pages/fleet.py: an older heartbeat is shown as late
  var EVERY_MS = 5000;
  var agents = document.querySelector("#agents tbody");
  var queues = document.querySelector("#queues tbody");
  if (!agents && !queues) return;

  function agentRows(list) {
    agents.textContent = "";
    if (!list.length) {
      agents.appendChild(el("tr", null, el("td", { colspan: 5, class: "muted" }, "No agent is alive.")));
      return;
    }
    var now = Date.now();
    list.forEach(function (a) {
      var age = Math.max(0, (now - Date.parse(a.seen_at)) / 1000);
      agents.appendChild(el("tr", { "data-agent": a.id },
        el("td", { class: "mono" }, a.id),
        el("td", null, a.host + " ", el("span", { class: "muted small" }, "pid " + a.pid)),
        el("td", null, a.queues.join(", ")),
        el("td", null, String(a.running.length)),
        el("td", null, el("span", { class: "dot " + (age > STALE_S ? "late" : "ok") }), " " + Math.round(age) + " s ago")));
    });
  }

  function queueRows(list) {
    queues.textContent = "";
    if (!list.length) {
      queues.appendChild(el("tr", null, el("td", { colspan: 3, class: "muted" }, "No queue has work or agents.")));
      return;
    }
    list.forEach(function (q) {
      queues.appendChild(el("tr", { "data-queue": q.name },
        el("td", { class: "mono" }, q.name),
        el("td", null, String(q.depth)),
        el("td", q.agents === 0 && q.depth > 0 ? { class: "error" } : null, String(q.agents))));
    });
  }

  function refresh() {
    if (document.hidden) return; // a background tab asks nothing
    if (agents) cx.api("GET", "/api/v1/agents").then(function (r) { if (r.ok) agentRows(r.data); });
    if (queues) cx.api("GET", "/api/v1/queues").then(function (r) { if (r.ok) queueRows(r.data); });
  }
  setInterval(refresh, EVERY_MS);
})();
