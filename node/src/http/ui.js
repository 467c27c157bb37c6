  // Every value from the server is rendered with textContent (tenant ids are
  // user input); no server value is ever parsed as HTML.
  var TOKEN_KEY = "llmtrace-admin-token";
  var POLL_MS = 1500;
  // null: not connected; "": the admin API answers without a token (a node
  // without --admin-token); else the token sent as a bearer.
  var token = null;
  var timer = null;
  var previous = null; // last /metrics sample {t, counters}

  function $(id) { return document.getElementById(id); }
  function text(id, value) { $(id).textContent = show(value); }
  function show(v) {
    if (v === null || v === undefined || v === "" || (typeof v === "number" && !isFinite(v))) return "\u2014";
    return String(v);
  }
  function cell(value, cls) {
    var td = document.createElement("td");
    if (cls) td.className = cls;
    td.textContent = show(value);
    return td;
  }
  function num(v) { return typeof v === "number" && isFinite(v) ? v : null; }
  function ms(v) {
    v = num(v);
    if (v === null) return null;
    return v < 1000 ? v.toFixed(0) + " ms" : (v / 1000).toFixed(1) + " s";
  }
  function rate(v) { return v === null ? null : (v >= 100 ? v.toFixed(0) : v.toFixed(1)); }

  function Unauthorized() {}

  function api(path, accept) {
    var headers = { "Accept": accept || "application/json" };
    if (token) headers["Authorization"] = "Bearer " + token;
    return fetch(path, {
      headers: headers,
      cache: "no-store",
      credentials: "omit",
      redirect: "error"
    }).then(function (resp) {
      if (resp.status === 401) throw new Unauthorized();
      return resp;
    });
  }

  function askToken(message) {
    stop();
    token = null;
    try { sessionStorage.removeItem(TOKEN_KEY); } catch (e) { /* storage disabled */ }
    $("app").hidden = true;
    $("logout").hidden = true;
    $("login").hidden = false;
    $("login-msg").textContent = message || "";
    $("status").textContent = "not connected";
    $("token").value = "";
    $("token").focus();
  }

  function start(t) {
    token = t;
    if (t) {
      try { sessionStorage.setItem(TOKEN_KEY, t); } catch (e) { /* storage disabled */ }
    }
    previous = null;
    $("login").hidden = true;
    $("login-msg").textContent = "";
    $("app").hidden = false;
    $("logout").hidden = !t;
    stop();
    tick();
  }

  // Without a saved token, tries the admin API without one: a node that has
  // no admin token (the loopback default) opens the dashboard at once; only
  // a 401 asks for the token.
  function probe() {
    token = "";
    $("status").textContent = "connecting\u2026";
    api("/admin/cluster").then(function (resp) {
      if (!resp.ok) throw new Error("GET /admin/cluster: HTTP " + resp.status);
      start("");
    }).catch(function (err) {
      if (err instanceof Unauthorized) { askToken(""); return; }
      askToken("Could not reach the admin API without a token: " + (err && err.message ? err.message : String(err)));
    });
  }

  function stop() { if (timer !== null) { clearTimeout(timer); timer = null; } }

  function failed(err) {
    if (err instanceof Unauthorized) {
      askToken(token ? "The node refused the token (401). Enter it again." : "The node now asks for an admin token (401).");
      return true;
    }
    $("status").textContent = "error: " + (err && err.message ? err.message : String(err));
    return false;
  }

  function tick() {
    timer = null;
    Promise.all([refreshCluster(), refreshMetrics(), refreshLimits(), refreshTopRefused()]).then(function () {
      $("status").textContent = "updated " + new Date().toLocaleTimeString();
      if (token !== null) timer = setTimeout(tick, POLL_MS);
    }, function (err) {
      if (!failed(err) && token !== null) timer = setTimeout(tick, POLL_MS);
    });
  }

  // ---- cluster view -------------------------------------------------------
  function refreshCluster() {
    return api("/admin/cluster").then(function (resp) {
      if (!resp.ok) throw new Error("GET /admin/cluster: HTTP " + resp.status);
      return resp.json();
    }).then(renderCluster);
  }

  function renderCluster(view) {
    view = view && typeof view === "object" ? view : {};
    var members = Array.isArray(view.members) ? view.members : [];
    text("self-node", view.node_id);
    text("fingerprint", view.fingerprint);
    text("vnodes", view.vnodes);
    text("member-count", members.length);
    var agreed = view.agreed;
    if (typeof agreed !== "boolean") {
      // Older shape: compare the members' published fingerprints.
      var fps = members.map(function (m) { return m && m.fingerprint; }).filter(function (f) { return f !== undefined; });
      agreed = fps.length && fps.length === members.length
        ? fps.every(function (f) { return f === fps[0]; }) : null;
    }
    var badge = $("agreement");
    badge.textContent = agreed === true ? "agreed" : agreed === false ? "not agreed" : "\u2014";
    badge.className = "badge" + (agreed === true ? " ok" : agreed === false ? " bad" : "");

    var sum = 0, anyShare = false;
    var body = $("members");
    var rows = members.map(function (m) {
      m = m && typeof m === "object" ? m : {};
      var tr = document.createElement("tr");
      tr.className = "member";
      var id = cell(m.node_id, "mono member-id");
      if (m.node_id === view.node_id) id.textContent += " (this node)";
      tr.appendChild(id);
      var st = document.createElement("td");
      var b = document.createElement("span");
      b.className = "badge member-state" + (m.state === "ready" ? " ok" : m.state === "leaving" ? " warn" : m.state === "joining" ? " warn" : "");
      b.textContent = show(m.state);
      st.appendChild(b);
      tr.appendChild(st);
      var share = num(m.share);
      var sh = document.createElement("td");
      sh.className = "member-share";
      if (share !== null) {
        anyShare = true;
        sum += share;
        var bar = document.createElement("span");
        bar.className = "bar";
        var fill = document.createElement("span");
        fill.style.width = Math.max(0, Math.min(100, share * 100)).toFixed(1) + "%";
        bar.appendChild(fill);
        sh.appendChild(bar);
        var pct = document.createElement("span");
        pct.className = "share-value";
        pct.dataset.share = String(share);
        pct.textContent = (share * 100).toFixed(1) + "%";
        sh.appendChild(pct);
      } else {
        sh.textContent = "\u2014";
      }
      tr.appendChild(sh);
      tr.appendChild(cell(m.public_addr, "mono"));
      tr.appendChild(cell(m.cluster_addr, "mono"));
      tr.appendChild(cell(m.admin_addr, "mono"));
      tr.appendChild(cell(ms(m.last_seen_ms), "num"));
      tr.appendChild(cell(m.generation, "num mono"));
      return tr;
    });
    body.replaceChildren.apply(body, rows);
    $("share-sum").textContent = anyShare ? sum.toFixed(3) : "\u2014";
  }

  // ---- metrics and rates --------------------------------------------------
  function refreshMetrics() {
    return api("/metrics", "text/plain").then(function (resp) {
      if (!resp.ok) throw new Error("GET /metrics: HTTP " + resp.status);
      return resp.text();
    }).then(renderMetrics);
  }

  // Parses Prometheus text into [{name, labels, value}].
  function parseMetrics(body) {
    var out = [];
    var line_re = /^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
    var label_re = /([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
    String(body).split("\n").forEach(function (line) {
      if (!line || line.charAt(0) === "#") return;
      var m = line_re.exec(line);
      if (!m) return;
      var labels = {};
      var l;
      label_re.lastIndex = 0;
      while (m[2] && (l = label_re.exec(m[2])) !== null) labels[l[1]] = l[2];
      var v = parseFloat(m[3]);
      if (isFinite(v)) out.push({ name: m[1], labels: labels, value: v });
    });
    return out;
  }

  // Sums the samples of `name` whose labels match every key of `want`.
  function total(samples, name, want) {
    var found = false, sum = 0;
    samples.forEach(function (s) {
      if (s.name !== name) return;
      for (var k in want) { if (s.labels[k] !== want[k]) return; }
      found = true;
      sum += s.value;
    });
    return found ? sum : null;
  }

  function renderMetrics(body) {
    var samples = parseMetrics(body);
    var now = performance.now();
    var c = {
      allowed: total(samples, "llmtrace_checks_total", { decision: "allowed" }),
      refused: total(samples, "llmtrace_checks_total", { decision: "refused" }),
      forwarded: total(samples, "llmtrace_forwarded_checks_total", {}),
      received: total(samples, "llmtrace_rpc_checks_total", {})
    };
    c.decided = c.allowed === null && c.refused === null ? null : (c.allowed || 0) + (c.refused || 0);
    text("buckets", total(samples, "llmtrace_buckets_resident", {}));
    if (previous !== null) {
      var dt = (now - previous.t) / 1000;
      ["decided", "allowed", "refused", "forwarded", "received"].forEach(function (k) {
        var a = previous.c[k], b = c[k];
        // A counter that went down means the node restarted: no rate this round.
        var r = a === null || b === null || dt <= 0 || b < a ? null : (b - a) / dt;
        var el = $("rate-" + k);
        el.textContent = show(rate(r));
        el.dataset.rate = r === null ? "" : String(r);
      });
      $("rate-window").textContent = "(over " + dt.toFixed(1) + " s)";
    }
    previous = { t: now, c: c };
    chartSample(samples, now);
  }

  // ---- tenant lookup ------------------------------------------------------
  function lookup(tenant) {
    $("lookup-msg").textContent = "";
    if (!tenant) { $("lookup-msg").textContent = "Enter a tenant id."; return; }
    api("/admin/tenants/" + encodeURIComponent(tenant)).then(function (resp) {
      return resp.text().then(function (body) {
        var data = null;
        try { data = JSON.parse(body); } catch (e) { data = null; }
        if (!resp.ok) {
          var err = data && data.error ? data.error : {};
          throw new Error("HTTP " + resp.status + (err.message ? ": " + err.message : ""));
        }
        return data;
      });
    }).then(renderTenant, function (err) {
      if (err instanceof Unauthorized) { failed(err); return; }
      $("tenant-result").hidden = true;
      $("lookup-msg").textContent = err && err.message ? err.message : String(err);
    });
  }

  function renderTenant(t) {
    t = t && typeof t === "object" ? t : {};
    text("tenant-id", t.tenant_id);
    text("tenant-owner", t.owner);
    var limits = Array.isArray(t.limits) ? t.limits : [];
    var rows = limits.map(function (l) {
      l = l && typeof l === "object" ? l : {};
      var tr = document.createElement("tr");
      tr.className = "tenant-limit";
      tr.appendChild(cell(l.limit, "mono"));
      // Each limit's rate in its own unit.
      var rate = num(l.requests_per_second) !== null ? l.requests_per_second + " /s"
        : num(l.tokens_per_minute) !== null ? l.tokens_per_minute + " /min" : null;
      tr.appendChild(cell(rate, "num"));
      tr.appendChild(cell(l.burst_size, "num"));
      tr.appendChild(cell(l.source));
      tr.appendChild(cell(l.remaining, "num limit-remaining"));
      tr.appendChild(cell(ms(l.full_in_ms), "num"));
      tr.appendChild(cell(typeof l.degraded === "boolean" ? (l.degraded ? "yes" : "no") : null));
      tr.appendChild(cell(ms(l.snapshot_age_ms), "num"));
      return tr;
    });
    var body = $("tenant-limits");
    body.replaceChildren.apply(body, rows);
    $("tenant-result").hidden = false;
  }

  // ---- wiring -------------------------------------------------------------
  // Runs once every part of the script is defined.
  function boot() {
    $("login-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      var t = $("token").value.trim();
      if (!t) { $("login-msg").textContent = "Enter the admin token."; return; }
      start(t);
    });
    $("lookup-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      lookup($("tenant").value.trim());
    });
    $("logout").addEventListener("click", function () { askToken(""); });

    var saved = null;
    try { saved = sessionStorage.getItem(TOKEN_KEY); } catch (e) { saved = null; }
    if (saved) start(saved); else probe();
  }
