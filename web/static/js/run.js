// The run page: the graph (Cytoscape.js, dagre left to right), kept current from the run's
// SSE stream without a reload; a side panel for one task (facts, attempts, its events and its
// log tailed live); cancel and rerun buttons; and a history slider that shows the graph as it
// stood at any of the run's events (GET .../states?at_seq=N folds the log up to N).
(function () {
  "use strict";
  var el = cx.el;
  var detail = JSON.parse(document.getElementById("run-data").textContent);
  var runId = detail.run.run_id;
  var base = "/api/v1/runs/" + encodeURIComponent(runId);
  var TERMINAL = ["succeeded", "failed", "cancelled"];
  var ACTIVE_TASK = ["pending", "queued", "running", "evaluating", "up_for_retry"];
  var COLOURS = {
    pending: "#6c757d", queued: "#17a2b8", running: "#e08a2e", evaluating: "#8e6cc7",
    up_for_retry: "#c9a227", succeeded: "#2e9d4a", failed: "#d64545", skipped: "#a3a9b0",
    cancelled: "#4b4f55", absent: "#d0d4d9"
  };
  // Above this many tasks the graph is drawn for speed, not beauty: dagre's crossing
  // minimisation takes seconds on thousands of nodes, so big runs get a precomputed layered
  // layout instead (column = longest dependency chain, long columns wrapped), no animation,
  // only the selected task's edges, the canvas cached while panning, and labels only once
  // zoomed in.
  var BIG = 300;
  var WRAP = 40; // nodes per column of a big graph's layer

  var tasks = {};   // node id -> TaskRunRow (live)
  var nodes = {};   // node id -> TaskNode (the run's graph snapshot)
  var run = detail.run;
  var cy = null;
  var selected = null;
  var viewing = null; // null: live; else the index of the event shown
  var events = [];    // the run's events {seq, type, task_ids, ts}, oldest first
  var seenSeq = {};
  var lastSeq = detail.as_of_seq;

  function index(d) {
    tasks = {}; nodes = {};
    d.tasks.forEach(function (t) { tasks[t.task_id] = t; });
    d.graph.forEach(function (n) { nodes[n.id] = n; });
  }

  // -- the graph ------------------------------------------------------------------------------

  function layered(graph) {
    var level = {};
    function depth(id, guard) {
      if (level[id] !== undefined) return level[id];
      if (guard > graph.length) return 0; // a cycle cannot happen in a run; never loop anyway
      var n = nodes[id], d = 0;
      (n ? n.dependencies : []).forEach(function (dep) {
        if (nodes[dep]) d = Math.max(d, depth(dep, guard + 1) + 1);
      });
      level[id] = d;
      return d;
    }
    var byLevel = [];
    graph.forEach(function (n) {
      var l = depth(n.id, 0);
      (byLevel[l] = byLevel[l] || []).push(n.id);
    });
    var positions = {}, x = 0;
    byLevel.forEach(function (ids) {
      ids = ids || [];
      ids.forEach(function (id, i) {
        positions[id] = { x: x + Math.floor(i / WRAP) * 170, y: (i % WRAP) * 46 };
      });
      x += Math.max(1, Math.ceil(ids.length / WRAP)) * 170 + 80;
    });
    return positions;
  }

  function elements(graph, big) {
    var out = [];
    graph.forEach(function (n) {
      var row = tasks[n.id];
      out.push({ group: "nodes", data: {
        id: n.id, label: n.name || n.id, status: row ? row.status : "pending"
      } });
    });
    if (big) return out; // (its edges: those of the task selected, see edgesOf)
    graph.forEach(function (n) {
      n.dependencies.forEach(function (dep) { if (nodes[dep]) out.push(edge(dep, n.id)); });
    });
    return out;
  }

  function edge(from, to) {
    return { group: "edges", data: { id: from + "\u2192" + to, source: from, target: to } };
  }

  // A big graph is drawn without its thousands of edges (styling them was half of the first
  // draw, and they cannot be followed at that size anyway): its columns show the depth, and
  // the task selected shows its own edges, to what it needs and to what needs it.
  function edgesOf(id) {
    if (!cy || detail.graph.length <= BIG) return;
    cy.batch(function () {
      cy.edges().remove();
      if (!id || !nodes[id]) return;
      var out = [];
      nodes[id].dependencies.forEach(function (dep) { if (nodes[dep]) out.push(edge(dep, id)); });
      detail.graph.forEach(function (n) {
        if (n.dependencies.indexOf(id) >= 0) out.push(edge(id, n.id));
      });
      cy.add(out);
    });
  }

  function style(big) {
    var s = [
      { selector: "node", style: {
        shape: "round-rectangle", width: 150, height: 34, label: "data(label)",
        "text-valign": "center", "text-halign": "center", "font-size": 12, color: "#fff",
        "text-wrap": "ellipsis", "text-max-width": 140, "background-color": COLOURS.pending,
        "min-zoomed-font-size": 7
      } },
      { selector: "edge", style: {
        width: 1.5, "line-color": "#8a9099", "target-arrow-color": "#8a9099",
        "target-arrow-shape": "triangle", "curve-style": "bezier"
      } },
      { selector: "node:selected", style: { "border-width": 3, "border-color": "#3b82f6" } }
    ];
    if (big) {
      // Measuring 2,000 labels for ellipses and routing 4,000 bezier curves is most of the
      // drawing time: big graphs get clipped labels and straight, arrowless edges (the
      // layout runs left to right, so direction still reads).
      s.push({ selector: "node", style: { "text-wrap": "none" } });
      s.push({ selector: "edge", style: { "curve-style": "haystack", "haystack-radius": 0, "target-arrow-shape": "none", width: 1 } });
    }
    Object.keys(COLOURS).forEach(function (k) {
      s.push({ selector: 'node[status = "' + k + '"]', style: { "background-color": COLOURS[k] } });
    });
    s.push({ selector: 'node[status = "skipped"], node[status = "absent"]', style: { color: "#222" } });
    return s;
  }

  function draw() {
    var graph = detail.graph;
    var big = graph.length > BIG;
    var positions = big ? layered(graph) : null;
    if (cy) cy.destroy();
    cy = cytoscape({
      container: document.getElementById("graph"),
      elements: elements(graph, big),
      style: style(big),
      layout: big
        ? { name: "preset", positions: function (n) { return positions[n.id()]; }, fit: true, padding: 20 }
        : { name: "dagre", rankDir: "LR", nodeSep: 20, rankSep: 60, fit: true, padding: 30, animate: false },
      minZoom: 0.05, maxZoom: 2.5, wheelSensitivity: 0.3,
      boxSelectionEnabled: false, autoungrabify: true,
      hideEdgesOnViewport: big, textureOnViewport: big, pixelRatio: big ? 1 : "auto"
    });
    fitSmall();
    cy.on("tap", "node", function (e) { openTask(e.target.id()); });
    cy.on("tap", function (e) { if (e.target === cy) closePanel(); });
    document.getElementById("graph").setAttribute("data-ready", "yes");
  }

  // The canvas changes size when the panel opens or closes. A small graph is fitted again,
  // but never drawn larger than readable; a big one keeps the user's zoom and pan.
  function fitSmall() {
    cy.resize();
    if (detail.graph.length > BIG) return;
    cy.fit(undefined, 30);
    if (cy.zoom() > 1.1) { cy.zoom(1.1); cy.center(); }
  }

  // What the page shows of each node: its live status, or its status at the event viewed.
  function colour(statuses) {
    cy.batch(function () {
      cy.nodes().forEach(function (n) {
        var s = statuses ? (statuses[n.id()] || "absent") : (tasks[n.id()] ? tasks[n.id()].status : "pending");
        if (n.data("status") !== s) n.data("status", s);
      });
    });
  }

  // -- the run's header ------------------------------------------------------------------------

  function showRun() {
    var slot = document.getElementById("run-status");
    slot.textContent = "";
    slot.appendChild(cx.badge(run.status));
    document.querySelectorAll("#task-counts [data-count]").forEach(function (chip) {
      chip.querySelector("b").textContent = String(run.counts[chip.getAttribute("data-count")] || 0);
    });
    document.getElementById("cancel").disabled = TERMINAL.indexOf(run.status) >= 0;
  }

  function flash(message) {
    var f = document.getElementById("flash");
    f.textContent = message || "";
    f.hidden = !message;
  }

  // -- live changes ----------------------------------------------------------------------------

  function addEvent(e) {
    if (seenSeq[e.seq]) return false;
    seenSeq[e.seq] = true;
    events.push(e);
    if (events.length > 1 && events[events.length - 2].seq > e.seq) {
      events.sort(function (a, b) { return a.seq - b.seq; });
    }
    return true;
  }

  function reload() {
    return cx.api("GET", base).then(function (r) {
      if (!r.ok) return;
      detail = r.data; run = detail.run; index(detail); draw(); fillFinder(); showRun();
      if (viewing === null) colour(null); else showAt(viewing);
      if (selected && nodes[selected]) openTask(selected, true);
    });
  }

  function onChange(c) {
    if (c.seq > lastSeq) lastSeq = c.seq;
    run = c.run;
    var grew = false;
    c.tasks.forEach(function (t) {
      tasks[t.task_id] = t;
      if (!nodes[t.task_id]) grew = true;
    });
    if (grew || run.tasks_total !== detail.graph.length) { reload(); }
    else if (viewing === null) {
      cy.batch(function () {
        c.tasks.forEach(function (t) { var n = cy.getElementById(t.task_id); if (n) n.data("status", t.status); });
      });
    }
    showRun();
    addEvent({ seq: c.seq, type: c.type, task_ids: c.tasks.map(function (t) { return t.task_id; }), ts: when(c) });
    slider();
    if (selected && c.tasks.some(function (t) { return t.task_id === selected; })) openTask(selected, true);
  }

  // The time of a change, from the row it changed (a change carries rows, not the event).
  function when(c) {
    var t = c.tasks.length ? c.tasks[0] : null;
    if (/^Run(Succeeded|Failed|Cancelled)$/.test(c.type)) return c.run.ended_at;
    if (!t) return null;
    if (c.type === "TaskQueued" || c.type === "TasksQueued") return t.queued_at;
    if (c.type === "TaskStarted") return t.started_at;
    if (/^Task(Succeeded|Failed|Cancelled|Skipped)$/.test(c.type)) return t.ended_at;
    return null;
  }

  var source = null;
  function liveState(text) { document.getElementById("live-state").textContent = text; }

  function listen() {
    if (!window.EventSource) { liveState("(no live updates in this browser)"); return; }
    if (TERMINAL.indexOf(run.status) >= 0) { liveState(""); return; } // nothing more will come
    // Resume from the sequence the page was rendered at: nothing in between is missed. The
    // browser reconnects by itself (sending Last-Event-ID) after a dropped connection.
    source = new EventSource(base + "/stream?after_seq=" + detail.as_of_seq);
    source.onopen = function () { liveState("● live"); };
    source.onerror = function () { if (source) liveState("reconnecting…"); };
    source.addEventListener("change", function (e) {
      var c = JSON.parse(e.data);
      onChange(c);
      // Closed after the run's own last event only: a change may carry the run's row as it is
      // after a burst of events (already ended) while the burst's other changes still come.
      if (/^Run(Succeeded|Failed|Cancelled)$/.test(c.type) && source) { source.close(); source = null; liveState(""); }
    });
  }

  // -- the history slider ---------------------------------------------------------------------

  var range = document.getElementById("history");
  var label = document.getElementById("history-label");
  var liveButton = document.getElementById("history-live");

  function describe(i) {
    var e = events[i - 1];
    if (!e) return "";
    var which = e.task_ids.length === 1 ? " " + e.task_ids[0] : e.task_ids.length > 1 ? " (" + e.task_ids.length + " tasks)" : "";
    return "event " + i + " of " + events.length + ": " + e.type + which +
      (e.ts ? " at " + e.ts.replace("T", " ").slice(0, 19) : "");
  }

  function slider() {
    range.max = String(events.length);
    range.min = events.length ? "1" : "0";
    range.disabled = events.length === 0;
    if (viewing === null) {
      range.value = String(events.length);
      label.textContent = events.length ? "live (" + events.length + " events)" : "no events yet";
    }
  }

  var pending = null;
  function showAt(i) {
    var e = events[i - 1];
    if (!e) return;
    label.textContent = describe(i) + " …";
    var asked = i;
    cx.api("GET", base + "/states?at_seq=" + e.seq).then(function (r) {
      if (viewing !== asked) return; // moved on meanwhile
      if (!r.ok) { label.textContent = r.data.message; return; }
      colour(r.data.summary.tasks);
      label.textContent = describe(asked);
      document.getElementById("graph").setAttribute("data-viewing", String(e.seq));
    });
  }

  range.addEventListener("input", function () {
    var i = parseInt(range.value, 10);
    if (i >= events.length) { goLive(); return; }
    viewing = i;
    liveButton.hidden = false;
    clearTimeout(pending);
    pending = setTimeout(function () { showAt(i); }, 60); // one request per pause in dragging
  });

  function goLive() {
    viewing = null;
    liveButton.hidden = true;
    document.getElementById("graph").removeAttribute("data-viewing");
    colour(null);
    slider();
  }
  liveButton.addEventListener("click", goLive);

  // The tasks a stored event concerns: its own, or every attempt of a TasksQueued.
  function taskIds(e) {
    if (e.task_id) return [e.task_id];
    if (e.type !== "TasksQueued") return [];
    try { return JSON.parse(e.body).tasks.map(function (t) { return t.task_id; }); } catch (err) { return []; }
  }

  function loadEvents(after) {
    return cx.api("GET", base + "/events?limit=1000&after_seq=" + after).then(function (r) {
      if (!r.ok) { label.textContent = r.data.message; return; }
      r.data.forEach(function (e) {
        if (seenSeq[e.seq]) { // known from the stream: keep the stored row's details
          events.forEach(function (k) { if (k.seq === e.seq) { k.ts = e.ts; k.task_ids = taskIds(e); } });
          return;
        }
        addEvent({ seq: e.seq, type: e.type, task_ids: taskIds(e), ts: e.ts });
      });
      slider();
      if (r.data.length === 1000) return loadEvents(r.data[r.data.length - 1].seq);
    });
  }

  // -- the task panel -------------------------------------------------------------------------

  var panel = document.getElementById("panel");
  var logToken = 0;

  function text(id, value) { document.getElementById(id).textContent = value === null || value === undefined ? "" : String(value); }

  function fill(tbody, rows) {
    tbody.textContent = "";
    rows.forEach(function (cells) {
      tbody.appendChild(el.apply(null, ["tr", null].concat(cells.map(function (c) {
        return typeof c === "object" && c !== null ? el("td", null, c) : el("td", null, c === null || c === undefined ? "-" : String(c));
      }))));
    });
  }

  function openTask(id, refresh) {
    var n = nodes[id];
    if (!n) return;
    var row = tasks[id] || {};
    var fresh = selected !== id || !refresh;
    selected = id;
    if (panel.hidden) { panel.hidden = false; if (cy) fitSmall(); }
    panel.setAttribute("data-task", id);
    if (cy) { cy.nodes(":selected").unselect(); cy.getElementById(id).select(); edgesOf(id); }
    text("panel-title", n.name || n.id);
    text("panel-task", n.id);
    text("panel-queue", n.queue);
    text("panel-command", n.command);
    text("panel-message", [row.reason, row.message].filter(Boolean).join(": "));
    var status = document.getElementById("panel-status");
    status.textContent = "";
    status.appendChild(cx.badge(row.status || "pending"));
    if (row.attempt) status.appendChild(el("span", { class: "muted small" }, " attempt " + row.attempt + " of " + row.max_attempts));
    fill(document.querySelector("#panel-params tbody"), Object.keys(n.parameters).sort().map(function (k) {
      return [el("span", { class: "mono" }, k), el("span", { class: "mono" }, n.parameters[k])];
    }));
    cx.api("GET", base + "/tasks/" + encodeURIComponent(id) + "/attempts").then(function (r) {
      if (!r.ok || selected !== id) return;
      fill(document.querySelector("#panel-attempts tbody"), r.data.map(function (a) {
        return [a.attempt, cx.badge(a.status), a.agent_id || "-", a.exit_code, cx.seconds(a.duration_ms)];
      }));
    });
    var list = document.getElementById("panel-events");
    list.textContent = "";
    events.forEach(function (e) {
      if (e.task_ids.indexOf(id) >= 0) list.appendChild(el("li", null, "#" + e.seq + " " + e.type + (e.ts ? " " + e.ts.slice(11, 23) : "")));
    });
    if (fresh) tailLog(id);
    if (window.location.hash !== "#task=" + encodeURIComponent(id)) {
      history.replaceState(null, "", "#task=" + encodeURIComponent(id));
    }
  }

  // Polls the log endpoint from the offset it reached: every second while the task can still
  // write, at once while more is stored than one answer holds, stops when it ended and all
  // was read (or another task is opened).
  function tailLog(id) {
    var token = ++logToken;
    var offset = 0;
    var out = document.getElementById("panel-log");
    var state = document.getElementById("log-state");
    out.textContent = "";
    state.textContent = "(loading)";
    function step() {
      if (token !== logToken) return;
      cx.api("GET", base + "/tasks/" + encodeURIComponent(id) + "/log?offset=" + offset).then(function (r) {
        if (token !== logToken) return;
        if (!r.ok) { state.textContent = "(" + r.data.message + ")"; return; }
        if (r.data.text) {
          out.appendChild(document.createTextNode(r.data.text));
          if (out.textContent.length > 400000) out.textContent = out.textContent.slice(-300000);
          out.scrollTop = out.scrollHeight;
        }
        offset = r.data.next_offset;
        var row = tasks[id] || {};
        var writing = ACTIVE_TASK.indexOf(row.status || "pending") >= 0;
        if (!r.data.complete) { setTimeout(step, 0); return; }
        if (writing) { state.textContent = "(live)"; setTimeout(step, 1000); return; }
        state.textContent = out.textContent ? "(ended)" : "(no output)";
      });
    }
    step();
  }

  function closePanel() {
    selected = null;
    logToken++;
    panel.hidden = true;
    panel.removeAttribute("data-task");
    if (cy) { cy.nodes(":selected").unselect(); edgesOf(null); fitSmall(); }
    history.replaceState(null, "", window.location.pathname);
  }
  document.getElementById("panel-close").addEventListener("click", closePanel);
  document.addEventListener("keydown", function (e) { if (e.key === "Escape") closePanel(); });

  // -- finding a task (a big graph's labels are not readable until zoomed in) ---------------

  var find = document.getElementById("find-task");
  function fillFinder() {
    var list = document.getElementById("task-ids");
    list.textContent = "";
    detail.graph.forEach(function (n) { list.appendChild(el("option", { value: n.id }, n.name && n.name !== n.id ? n.name : null)); });
  }
  function goTo() {
    var id = find.value.trim();
    if (!nodes[id]) { find.classList.toggle("invalid", id !== ""); return; }
    find.classList.remove("invalid");
    openTask(id);
    var node = cy.getElementById(id);
    if (cy.zoom() < 0.8) cy.zoom({ level: 0.8, renderedPosition: node.renderedPosition() });
    cy.center(node);
  }
  find.addEventListener("change", goTo);
  find.addEventListener("keydown", function (e) { if (e.key === "Enter") goTo(); });

  // -- buttons --------------------------------------------------------------------------------

  function rerun(body) {
    flash("");
    cx.api("POST", base + "/rerun", body).then(function (r) {
      if (r.ok) window.location.assign("/runs/" + encodeURIComponent(r.data.run_id));
      else flash(r.data.message);
    });
  }
  document.getElementById("rerun").addEventListener("click", function () { rerun({}); });
  document.getElementById("rerun-task").addEventListener("click", function () {
    if (selected) rerun({ from_task: selected });
  });

  // Cancel asks twice (a second click within 4 s): a stray click must not stop a run.
  var cancel = document.getElementById("cancel");
  var armed = null;
  cancel.addEventListener("click", function () {
    if (!armed) {
      cancel.textContent = "Really cancel?";
      armed = setTimeout(function () { armed = null; cancel.textContent = "Cancel run"; }, 4000);
      return;
    }
    clearTimeout(armed); armed = null;
    cancel.textContent = "Cancelling…";
    cancel.disabled = true;
    cx.api("POST", base + "/cancel", { reason: "cancelled from the UI" }).then(function (r) {
      cancel.textContent = "Cancel run";
      if (!r.ok) { flash(r.data.message); cancel.disabled = TERMINAL.indexOf(run.status) >= 0; }
    });
  });

  // -- start ----------------------------------------------------------------------------------

  // Read-only view of the drawn graph, for the browser tests and for debugging in a console.
  window.cxRun = {
    edges: function () { return cy.edges().map(function (e) { return e.id(); }); },
    statuses: function () {
      var out = {};
      cy.nodes().forEach(function (n) { out[n.id()] = n.data("status"); });
      return out;
    },
    // where a node is drawn, in page coordinates (to click it)
    at: function (id) {
      var box = document.getElementById("graph").getBoundingClientRect();
      var p = cy.getElementById(id).renderedPosition();
      return { x: box.left + p.x, y: box.top + p.y };
    }
  };

  index(detail);
  draw();
  fillFinder();
  listen();
  loadEvents(0);
  var m = /^#task=(.+)$/.exec(window.location.hash);
  if (m && nodes[decodeURIComponent(m[1])]) openTask(decodeURIComponent(m[1]));
})();
