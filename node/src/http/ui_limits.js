  // ---- limits, refusals per limit, most refused keys ----------------------
  // Limit names come from configuration, keys from clients: both are shown
  // with textContent only. Chart rows are cloned from the inline SVG
  // prototype in the page, their points set as attributes.
  var HISTORY_MS = 5 * 60 * 1000;
  var CHART_W = 600, CHART_H = 100;
  var charts = {}; // limit name -> {row, allowed, refused, points: [{t, allowed, refused}]}
  var lastChecks = null; // {t, counts: {limit: {allowed, refused}}}
  var shadow = {}; // limit name -> true when in shadow mode (refusals not enforced)

  function getJson(path) {
    return api(path).then(function (resp) {
      if (!resp.ok) throw new Error("GET " + path + ": HTTP " + resp.status);
      return resp.json();
    });
  }

  function refreshLimits() { return getJson("/admin/limits").then(renderLimits); }

  // The numbers of a limit in the words of its kind.
  function numbers(l) {
    if (l.unlimited === true) return "unlimited";
    if (num(l.max) !== null) return "max " + l.max + (l.lease_ttl ? ", lease ttl " + l.lease_ttl : "");
    if (num(l.amount) !== null) return l.amount + " per " + show(l.period);
    if (num(l.rate) !== null) return l.rate + " per " + show(l.per) + ", burst " + show(l.burst);
    return null;
  }

  function renderLimits(data) {
    data = data && typeof data === "object" ? data : {};
    var limits = Array.isArray(data.limits) ? data.limits : [];
    var runtime = Array.isArray(data.overrides) ? data.overrides : [];
    shadow = {};
    var rows = limits.map(function (l) {
      l = l && typeof l === "object" ? l : {};
      if (l.shadow === true) shadow[l.name] = true;
      var tr = document.createElement("tr");
      tr.className = "limit";
      tr.appendChild(cell(l.name, "mono limit-name"));
      tr.appendChild(cell(l.shadow === true ? show(l.kind) + " (shadow)" : l.kind, "limit-kind"));
      tr.appendChild(cell(numbers(l), "limit-numbers"));
      var configured = l.overrides && typeof l.overrides === "object" ? Object.keys(l.overrides).length : null;
      tr.appendChild(cell(configured, "num"));
      tr.appendChild(cell(runtime.filter(function (o) { return o && o.limit === l.name; }).length, "num"));
      return tr;
    });
    var body = $("limits");
    body.replaceChildren.apply(body, rows);
  }

  // One chart row per limit, made when the limit first shows in /metrics.
  function chartOf(limit) {
    if (charts[limit]) return charts[limit];
    var row = document.createElement("div");
    row.className = "limit-chart";
    row.dataset.limit = limit;
    var label = document.createElement("div");
    var name = document.createElement("code");
    name.textContent = limit;
    label.appendChild(name);
    var allowed = document.createElement("div");
    allowed.className = "muted chart-allowed";
    var refused = document.createElement("div");
    refused.className = "muted chart-refused";
    label.appendChild(allowed);
    label.appendChild(refused);
    var svg = $("chart-proto").cloneNode(true);
    svg.removeAttribute("id");
    svg.removeAttribute("hidden");
    row.appendChild(label);
    row.appendChild(svg);
    $("charts").appendChild(row);
    charts[limit] = { row: row, svg: svg, allowed: allowed, refused: refused, points: [] };
    return charts[limit];
  }

  // Adds one point per limit from the /metrics counters `samples` read at `now`.
  function chartSample(samples, now) {
    var counts = {};
    samples.forEach(function (s) {
      if (s.name !== "llmtrace_checks_total") return;
      var limit = s.labels.limit, decision = s.labels.decision;
      if (!limit || limit === "any" || (decision !== "allowed" && decision !== "refused")) return;
      counts[limit] = counts[limit] || { allowed: 0, refused: 0 };
      counts[limit][decision] += s.value;
    });
    var before = lastChecks;
    lastChecks = { t: now, counts: counts };
    if (before === null) return;
    var dt = (now - before.t) / 1000;
    Object.keys(counts).sort().forEach(function (limit) {
      var a = before.counts[limit], b = counts[limit];
      var c = chartOf(limit);
      // A counter that went down means the node restarted: no point this round.
      if (!a || dt <= 0 || b.allowed < a.allowed || b.refused < a.refused) return;
      c.points.push({ t: now, allowed: (b.allowed - a.allowed) / dt, refused: (b.refused - a.refused) / dt });
      c.points = c.points.filter(function (p) { return now - p.t <= HISTORY_MS; });
      drawChart(c, now);
    });
  }

  function drawChart(c, now) {
    var max = 1, peak = 0;
    c.points.forEach(function (p) {
      max = Math.max(max, p.allowed, p.refused);
      peak = Math.max(peak, p.refused);
    });
    // The x axis spans the history kept (at least 30 s, at most 5 min).
    var span = Math.min(HISTORY_MS, Math.max(30000, now - c.points[0].t));
    function line(key) {
      return c.points.map(function (p) {
        var x = CHART_W * (1 - (now - p.t) / span);
        var y = CHART_H - (CHART_H - 4) * p[key] / max;
        return x.toFixed(1) + "," + y.toFixed(1);
      }).join(" ");
    }
    c.svg.querySelector(".allowed").setAttribute("points", line("allowed"));
    c.svg.querySelector(".refused").setAttribute("points", line("refused"));
    var last = c.points[c.points.length - 1];
    c.allowed.textContent = "allowed " + rate(last.allowed) + " /s";
    c.refused.textContent = (shadow[c.row.dataset.limit] ? "shadow-refused (not enforced) " : "refused ") +
      rate(last.refused) + " /s (peak " + rate(peak) + " /s)";
    c.row.dataset.points = String(c.points.length);
    c.row.dataset.allowed = String(last.allowed);
    c.row.dataset.refused = String(last.refused);
    c.row.dataset.peakRefused = String(peak);
  }

  function refreshTopRefused() { return getJson("/admin/limits/top-refused").then(renderTopRefused); }

  function renderTopRefused(data) {
    data = data && typeof data === "object" ? data : {};
    var keys = Array.isArray(data.keys) ? data.keys : [];
    var nodes = Array.isArray(data.nodes) ? data.nodes : [];
    var w = Array.isArray(data.window_s) ? data.window_s : [];
    $("top-window").textContent = w.length === 2 ? "(last " + w[0] + "\u2013" + w[1] + " s)" : "";
    var answered = nodes.filter(function (n) { return n && n.answered === true; }).length;
    var note = "from " + answered + " of " + nodes.length + " nodes; " + show(data.total) +
      " refusals counted; a key not listed was refused at most " + show(data.floor) + " times";
    var missing = nodes.filter(function (n) { return n && n.answered !== true; })
      .map(function (n) { return show(n.node); });
    if (missing.length) note += "; partial: no answer from " + missing.join(", ");
    $("top-note").textContent = note;
    $("top-partial").hidden = data.partial !== true;
    var rows = keys.map(function (k, i) {
      k = k && typeof k === "object" ? k : {};
      var tr = document.createElement("tr");
      tr.className = "top-refused";
      tr.appendChild(cell(i + 1, "num"));
      tr.appendChild(cell(k.limit, "mono top-limit"));
      tr.appendChild(cell(k.key, "mono top-key"));
      tr.appendChild(cell(k.count, "num top-count"));
      var lower = num(k.count) !== null && num(k.error) !== null ? k.count - k.error : null;
      tr.appendChild(cell(lower, "num"));
      return tr;
    });
    if (!rows.length) {
      var tr = document.createElement("tr");
      var td = cell("no refusals in the window", "muted");
      td.colSpan = 5;
      tr.appendChild(td);
      rows.push(tr);
    }
    var body = $("top-refused");
    body.replaceChildren.apply(body, rows);
  }

