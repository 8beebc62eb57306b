// The schedule form of a task or DAG page: POST /api/v1/runs, then the new run's page. A 422
// names the field to blame (`field` of the error envelope): its message goes next to it.
(function () {
  "use strict";
  var form = document.getElementById("schedule-form");
  if (!form) return;
  var kind = form.getAttribute("data-kind");
  var target = form.getAttribute("data-target");

  function clear() {
    form.querySelectorAll(".field-error").forEach(function (p) { p.textContent = ""; });
    form.querySelectorAll(".invalid").forEach(function (n) { n.classList.remove("invalid"); });
  }

  function show(field, message) {
    var slot = form.querySelector('[data-error-for="' + field + '"]') || form.querySelector('[data-error-for=""]');
    slot.textContent = message;
    var input = form.elements.namedItem(field);
    if (input && input.classList) input.classList.add("invalid");
  }

  // "KEY=value" lines; values stay text (the orchestrator exports them as environment)
  function parameters(text) {
    var out = {};
    var lines = text.split("\n");
    for (var i = 0; i < lines.length; i++) {
      var line = lines[i].trim();
      if (!line || line.charAt(0) === "#") continue;
      var eq = line.indexOf("=");
      if (eq < 1) throw new Error("line " + (i + 1) + ": expected KEY=value, got " + JSON.stringify(line));
      out[line.slice(0, eq).trim()] = line.slice(eq + 1);
    }
    return out;
  }

  form.addEventListener("submit", function (e) {
    e.preventDefault();
    clear();
    var body = {};
    body[kind] = target;
    var context = form.elements.namedItem("context").value;
    if (context) body.context = context;
    var runId = form.elements.namedItem("run_id").value.trim();
    if (runId) body.run_id = runId;
    try {
      body.parameters = parameters(form.elements.namedItem("parameters").value);
    } catch (err) {
      show("parameters", err.message);
      return;
    }
    var button = document.getElementById("schedule-submit");
    button.disabled = true;
    cx.api("POST", "/api/v1/runs", body).then(function (r) {
      button.disabled = false;
      if (r.ok) {
        window.location.assign("/runs/" + encodeURIComponent(r.data.run_id));
        return;
      }
      var field = r.data.field || (r.status === 409 ? "run_id" : "");
      show(field === "target" ? kind : field, r.data.message);
    });
  });
})();
