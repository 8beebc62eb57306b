// The runs table of /runs and of the dashboard, live: every `run` event of /api/v1/stream
// (a RunRow) updates its row, or puts a new run on top where this page would list it.
(function () {
  "use strict";
  var table = document.getElementById("live-runs");
  if (!table || !window.EventSource) return;
  var body = table.tBodies[0];
  var opts = document.getElementById("runs-live");
  var prepend = opts ? opts.getAttribute("data-prepend") === "yes" : true;
  var onlyStatus = opts ? opts.getAttribute("data-status") : "";
  var el = cx.el;

  function when(iso) {
    return iso ? iso.replace("T", " ").slice(0, 19) : "-";
  }

  function progressCell(run) {
    var pct = cx.progress(run.counts, run.tasks_total);
    var bar = el("div", { class: "progress", title: pct + "% of " + run.tasks_total + " tasks done" },
      el("div", { class: "fill", style: "width: " + pct + "%" }));
    return el("td", { class: "progress-cell" }, bar, " ",
      el("span", { class: "muted small" }, (run.counts.succeeded || 0) + "/" + run.tasks_total));
  }

  function row(run) {
    var link = el("a", { href: "/runs/" + encodeURIComponent(run.run_id) }, run.name || run.run_id);
    return el("tr", { "data-run-id": run.run_id },
      el("td", null, link, el("div", { class: "muted small mono" }, run.run_id)),
      el("td", null, run.kind + ": " + run.target),
      el("td", { class: "status" }, cx.badge(run.status)),
      progressCell(run),
      el("td", { class: "small" }, when(run.scheduled_at)),
      el("td", { class: "small" }, run.trigger));
  }

  function bumpCounts(before, after) {
    // dashboard cards: a run that changed status moves from one count to the other
    if (before === after) return;
    [[before, -1], [after, 1]].forEach(function (p) {
      if (!p[0]) return;
      var n = document.querySelector('#run-counts [data-count="' + p[0] + '"]');
      if (n) n.textContent = String(Math.max(0, parseInt(n.textContent, 10) + p[1]));
    });
  }

  var source = new EventSource("/api/v1/stream");
  source.addEventListener("run", function (e) {
    var run = JSON.parse(e.data);
    var existing = body.querySelector('tr[data-run-id="' + CSS.escape(run.run_id) + '"]');
    if (existing) {
      var old = existing.querySelector(".status .badge");
      bumpCounts(old ? old.getAttribute("data-status") : "", run.status);
      if (onlyStatus && run.status !== onlyStatus) { existing.remove(); return; }
      body.replaceChild(row(run), existing);
    } else if (prepend && (!onlyStatus || run.status === onlyStatus)) {
      bumpCounts("", run.status);
      var total = document.querySelector('#run-counts [data-count="total"]');
      if (total) total.textContent = String(parseInt(total.textContent, 10) + 1);
      body.insertBefore(row(run), body.firstChild);
      var none = document.getElementById("no-runs");
      if (none) none.remove();
    }
  });
})();
