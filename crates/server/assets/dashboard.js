// Palisade dashboard: reads the snapshot feed (GET /dashboard/feed, Server-Sent Events) with
// fetch(), so that the admin token can travel as a bearer header, and renders it.
// Every value from the server is inserted with textContent or as an attribute value, never as HTML.
"use strict";

(() => {
  const TOKEN_KEY = "palisade.adminToken";
  const HISTORY_MS = 5 * 60 * 1000;
  const STALE_MS = 5000;
  const RETRY_MS = 2000;
  const SVG_NS = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);
  const byTestId = (name) => document.querySelector(`[data-testid="${name}"]`);

  // ---- Script errors are counted on the page, so that people and tests can see them. ----

  let pageErrors = 0;
  function countError() {
    pageErrors += 1;
    $("page-errors").textContent = String(pageErrors);
  }
  window.addEventListener("error", countError);
  window.addEventListener("unhandledrejection", countError);
  document.addEventListener("securitypolicyviolation", countError);

  // ---- The admin token: this tab's sessionStorage only, sent as a bearer header. ----

  function storedToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || "";
    } catch {
      return "";
    }
  }

  function storeToken(value) {
    try {
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      // Storage disabled: the token lives as long as this page.
    }
    memoryToken = value;
    $("forget-token").hidden = !value;
  }

  let memoryToken = storedToken();

  function authHeaders() {
    return memoryToken ? { Authorization: `Bearer ${memoryToken}` } : {};
  }

  function showLogin(message) {
    $("login").hidden = false;
    $("main").hidden = true;
    $("login-message").textContent = message;
    $("token-input").focus();
  }

  function hideLogin() {
    $("login").hidden = true;
    $("main").hidden = false;
    $("login-message").textContent = "";
  }

  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token-input").value.trim();
    $("token-input").value = "";
    if (!value) return;
    storeToken(value);
    connect();
  });

  $("forget-token").addEventListener("click", () => {
    storeToken("");
    clearData();
    connect();
  });

  // ---- The feed. ----

  let controller = null;
  let retryTimer = 0;
  let staleTimer = 0;

  function setStatus(state, text) {
    const el = $("feed-status");
    el.textContent = text;
    el.dataset.state = state;
  }

  function retryLater(text) {
    setStatus("retrying", text);
    clearTimeout(retryTimer);
    retryTimer = setTimeout(connect, RETRY_MS);
  }

  function armStaleTimer(ctl) {
    clearTimeout(staleTimer);
    staleTimer = setTimeout(() => {
      if (ctl !== controller) return;
      ctl.abort();
      retryLater("stalled, reconnecting");
    }, STALE_MS);
  }

  function connect() {
    run().catch(() => {
      countError();
      retryLater("reconnecting");
    });
  }

  async function run() {
    clearTimeout(retryTimer);
    clearTimeout(staleTimer);
    if (controller) controller.abort();
    const ctl = new AbortController();
    controller = ctl;
    setStatus("connecting", "connecting");
    let response;
    try {
      response = await fetch("/dashboard/feed", {
        headers: { ...authHeaders(), Accept: "text/event-stream" },
        cache: "no-store",
        credentials: "omit",
        signal: ctl.signal,
      });
    } catch {
      if (ctl === controller && !ctl.signal.aborted) retryLater("offline, retrying");
      return;
    }
    if (ctl !== controller) return;
    if (response.status === 401) {
      ctl.abort();
      const refused = Boolean(memoryToken);
      storeToken("");
      clearData();
      setStatus("locked", "token required");
      showLogin(refused ? "That token was refused." : "");
      return;
    }
    if (!response.ok || !response.body) {
      ctl.abort();
      retryLater(`feed answered ${response.status}, retrying`);
      return;
    }
    hideLogin();
    setStatus("connecting", "waiting for data");
    armStaleTimer(ctl);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const event = parseEvent(block);
          if (event.name === "snapshot") {
            armStaleTimer(ctl);
            render(JSON.parse(event.data));
            setStatus("live", "live");
          }
        }
      }
    } catch (error) {
      if (ctl.signal.aborted) return;
      throw error;
    }
    if (ctl === controller) retryLater("feed ended, reconnecting");
  }

  // One SSE event block: `event:` names it, `data:` lines are joined with newlines.
  function parseEvent(block) {
    let name = "message";
    const data = [];
    for (const raw of block.split("\n")) {
      const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
      if (line === "" || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") name = value;
      else if (field === "data") data.push(value);
    }
    return { name, data: data.join("\n") };
  }

  // ---- Formatting. ----

  function integer(n) {
    return String(Math.trunc(Number(n) || 0));
  }

  function rate(n) {
    if (n === null) return "–";
    return `${n < 10 ? n.toFixed(1) : String(Math.round(n))}/s`;
  }

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = Number(n) || 0;
    let i = 0;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i += 1;
    }
    return i === 0 ? `${Math.round(v)} B` : `${v.toFixed(1)} ${units[i]}`;
  }

  function clock(unixSecs) {
    return new Date(unixSecs * 1000).toLocaleTimeString();
  }

  function untilText(unixSecs, nowMs) {
    if (unixSecs === null || unixSecs === undefined) return "never";
    const secs = Math.round(unixSecs - nowMs / 1000);
    if (secs <= 0) return "expired";
    return `in ${duration(secs)}`;
  }

  function duration(secs) {
    if (secs < 120) return `${secs} s`;
    if (secs < 7200) return `${Math.round(secs / 60)} min`;
    if (secs < 172800) return `${Math.round(secs / 3600)} h`;
    return `${Math.round(secs / 86400)} d`;
  }

  // Sets a number's text and its raw value (data-value), for people and for tooling.
  function setValue(testId, raw, text) {
    const el = byTestId(testId);
    el.textContent = text;
    if (raw === null) delete el.dataset.value;
    else el.dataset.value = String(raw);
  }

  // ---- Rendering. ----

  let previous = null;
  let history = [];

  function perSecond(now, before, seconds) {
    if (before === undefined || seconds <= 0) return null;
    return Math.max(0, (now - before) / seconds);
  }

  function render(snapshot) {
    const m = snapshot.metrics;
    const p = previous && snapshot.time_ms > previous.time_ms ? previous : null;
    const seconds = p ? (snapshot.time_ms - p.time_ms) / 1000 : 0;
    const pm = p ? p.metrics : {};
    const r = {
      msgIn: perSecond(m.messages_in_total, pm.messages_in_total, seconds),
      msgOut: perSecond(m.messages_out_total, pm.messages_out_total, seconds),
      bytesIn: perSecond(m.bytes_in_total, pm.bytes_in_total, seconds),
      bytesOut: perSecond(m.bytes_out_total, pm.bytes_out_total, seconds),
      errors: perSecond(m.errors_total, pm.errors_total, seconds),
      refused: perSecond(m.handshakes_refused_total, pm.handshakes_refused_total, seconds),
    };

    setValue("connections-open", m.connections_open, integer(m.connections_open));
    setValue("connections-total", m.connections_total, integer(m.connections_total));
    setValue("messages-in-total", m.messages_in_total, integer(m.messages_in_total));
    setValue("messages-out-total", m.messages_out_total, integer(m.messages_out_total));
    setValue("bytes-in-total", m.bytes_in_total, bytes(m.bytes_in_total));
    setValue("bytes-out-total", m.bytes_out_total, bytes(m.bytes_out_total));
    setValue("errors-total", m.errors_total, integer(m.errors_total));
    setValue("handshakes-refused-total", m.handshakes_refused_total, integer(m.handshakes_refused_total));
    setValue("sessions-active", m.sessions_active, integer(m.sessions_active));
    setValue("bans-active", m.bans_active, integer(m.bans_active));
    setValue("messages-in-rate", r.msgIn, rate(r.msgIn));
    setValue("messages-out-rate", r.msgOut, rate(r.msgOut));
    setValue("bytes-in-rate", r.bytesIn, r.bytesIn === null ? "–" : `${bytes(r.bytesIn)}/s`);
    setValue("bytes-out-rate", r.bytesOut, r.bytesOut === null ? "–" : `${bytes(r.bytesOut)}/s`);
    setValue("errors-rate", r.errors, rate(r.errors));
    const updated = $("last-update");
    updated.textContent = new Date(snapshot.time_ms).toLocaleTimeString();
    updated.dateTime = new Date(snapshot.time_ms).toISOString();

    history.push({ t: snapshot.time_ms, open: m.connections_open, ...r });
    history = history.filter((point) => point.t > snapshot.time_ms - HISTORY_MS);
    drawCharts(snapshot.time_ms);

    renderEndpoints(m.endpoints || {}, pm.endpoints || {}, seconds);
    renderPairs("refused-by-reason", m.handshakes_refused_by_reason);
    renderPairs("errors-by-kind", m.errors_by_kind);
    renderPairs("closes-sent", m.closes_by_code);
    renderPairs("closes-received", m.closes_received_by_code);
    renderPairs("auth-outcomes", m.auth_by_outcome);
    renderSessions(snapshot.sessions || [], snapshot.sessions_total || 0, snapshot.time_ms);
    renderBans(snapshot.bans || [], snapshot.bans_total || 0);
    renderChannels(snapshot.channels || [], snapshot.channels_total || 0);
    previous = snapshot;
  }

  function clearData() {
    previous = null;
    history = [];
    for (const el of document.querySelectorAll(".card .value, .card .rate")) {
      el.textContent = "–";
      delete el.dataset.value;
    }
    for (const id of ["endpoints-body", "sessions-body", "bans-body", "channels-body", "refused-by-reason",
      "errors-by-kind", "closes-sent", "closes-received", "auth-outcomes"]) {
      $(id).replaceChildren();
    }
    sessionRows.clear();
    banRows.clear();
    $("sessions-shown").textContent = "";
    $("bans-shown").textContent = "";
    $("channels-shown").textContent = "";
    $("last-update").textContent = "never";
    drawCharts(Date.now());
  }

  function cell(text, testId) {
    const td = document.createElement("td");
    td.textContent = text;
    if (testId) td.dataset.testid = testId;
    return td;
  }

  function renderEndpoints(now, before, seconds) {
    const rows = Object.keys(now).sort().map((name) => {
      const e = now[name];
      const b = before[name] || {};
      const tr = document.createElement("tr");
      tr.dataset.testid = "endpoint-row";
      tr.dataset.endpoint = name;
      tr.append(
        cell(name),
        cell(integer(e.connections_open), "endpoint-open"),
        cell(integer(e.connections_total)),
        cell(rate(perSecond(e.messages_in_total, b.messages_in_total, seconds))),
        cell(rate(perSecond(e.messages_out_total, b.messages_out_total, seconds))),
        cell(bytesRate(perSecond(e.bytes_in_total, b.bytes_in_total, seconds))),
        cell(bytesRate(perSecond(e.bytes_out_total, b.bytes_out_total, seconds))),
      );
      return tr;
    });
    $("endpoints-body").replaceChildren(...rows);
  }

  // The busiest channels, most subscribers first (the server orders and caps the list).
  function renderChannels(list, total) {
    const rows = list.map((c) => {
      const tr = document.createElement("tr");
      tr.dataset.testid = "channel-row";
      tr.dataset.channel = c.channel;
      tr.append(
        cell(c.channel, "channel-name"),
        cell(integer(c.subscribers), "channel-subscribers"),
        cell(integer(c.users)),
        cell(integer(c.publications), "channel-publications"),
      );
      return tr;
    });
    $("channels-body").replaceChildren(...rows);
    $("channels-shown").textContent = total > list.length ? `(top ${list.length} of ${total})` : `(${total})`;
  }

  function bytesRate(n) {
    return n === null ? "–" : `${bytes(n)}/s`;
  }

  function renderPairs(id, map) {
    const entries = Object.entries(map || {}).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
    const nodes = [];
    for (const [key, count] of entries) {
      const dt = document.createElement("dt");
      dt.textContent = key;
      const dd = document.createElement("dd");
      dd.textContent = integer(count);
      nodes.push(dt, dd);
    }
    if (nodes.length === 0) {
      const dt = document.createElement("dt");
      dt.className = "muted";
      dt.textContent = "none";
      nodes.push(dt);
    }
    $(id).replaceChildren(...nodes);
  }

  // Rows are kept per id and updated in place, so a button is not replaced under the pointer.
  const sessionRows = new Map();
  const banRows = new Map();

  function placeRows(body, rows, keep, ordered) {
    for (const [key, row] of rows) {
      if (!keep.has(key)) {
        row.remove();
        rows.delete(key);
      }
    }
    ordered.forEach((row, i) => {
      if (body.children[i] !== row) body.insertBefore(row, body.children[i] || null);
    });
  }

  function renderSessions(list, total, nowMs) {
    const keep = new Set();
    const ordered = list.map((s) => {
      keep.add(s.id);
      let row = sessionRows.get(s.id);
      if (!row) {
        row = sessionRow(s.id);
        sessionRows.set(s.id, row);
      }
      const cells = row.children;
      cells[1].textContent = s.user_id;
      cells[2].textContent = s.peer;
      cells[3].textContent = s.endpoint;
      cells[4].textContent = clock(s.started);
      cells[5].textContent = untilText(s.expires, nowMs);
      return row;
    });
    placeRows($("sessions-body"), sessionRows, keep, ordered);
    $("sessions-shown").textContent = total > list.length ? `(newest ${list.length} of ${total})` : `(${total})`;
  }

  function sessionRow(id) {
    const tr = document.createElement("tr");
    tr.dataset.testid = "session-row";
    tr.dataset.sessionId = id;
    const idCell = cell(id.slice(0, 12), "session-id");
    idCell.title = id;
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "Revoke";
    button.dataset.testid = "session-revoke";
    button.addEventListener("click", () => act(button, "Revoke", "DELETE", `/sessions/${encodeURIComponent(id)}`));
    const actions = document.createElement("td");
    actions.append(button);
    tr.append(idCell, cell("", "session-user"), cell("", "session-peer"), cell("", "session-endpoint"),
      cell("", "session-started"), cell("", "session-expires"), actions);
    return tr;
  }

  function renderBans(list, total) {
    const keep = new Set();
    const ordered = list.map((b) => {
      keep.add(b.ip);
      let row = banRows.get(b.ip);
      if (!row) {
        row = banRow(b.ip);
        banRows.set(b.ip, row);
      }
      row.children[1].textContent = duration(b.remaining_secs);
      return row;
    });
    placeRows($("bans-body"), banRows, keep, ordered);
    $("bans-shown").textContent = total > list.length ? `(${list.length} of ${total})` : `(${total})`;
  }

  function banRow(ip) {
    const tr = document.createElement("tr");
    tr.dataset.testid = "ban-row";
    tr.dataset.ip = ip;
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "Lift";
    button.dataset.testid = "ban-lift";
    button.addEventListener("click", () => act(button, "Lift", "DELETE", `/bans/${encodeURIComponent(ip)}`));
    const actions = document.createElement("td");
    actions.append(button);
    tr.append(cell(ip, "ban-ip"), cell("", "ban-remaining"), actions);
    return tr;
  }

  $("ban-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const body = { ip: $("ban-ip").value.trim() };
    const secs = Number.parseInt($("ban-secs").value, 10);
    if (Number.isFinite(secs) && secs > 0) body.secs = secs;
    const button = byTestId("ban-submit");
    act(button, "Ban", "POST", "/bans", body).then((ok) => {
      if (ok) {
        $("ban-ip").value = "";
        $("ban-secs").value = "";
      }
    });
  });

  // Calls the admin API; the feed shows the result on its next snapshot.
  async function act(button, label, method, path, body) {
    button.disabled = true;
    button.textContent = "…";
    const message = $("action-message");
    try {
      const init = { method, headers: authHeaders(), cache: "no-store", credentials: "omit" };
      if (body !== undefined) {
        init.headers = { ...init.headers, "Content-Type": "application/json" };
        init.body = JSON.stringify(body);
      }
      const response = await fetch(path, init);
      if (response.status === 401) {
        connect();
        return false;
      }
      if (!response.ok) {
        const text = (await response.text()).trim();
        message.textContent = `${method} ${path} failed (${response.status}): ${text}`;
        return false;
      }
      message.textContent = "";
      return true;
    } catch (error) {
      message.textContent = `${method} ${path} failed: ${error.message}`;
      return false;
    } finally {
      button.disabled = false;
      button.textContent = label;
    }
  }

  // ---- Charts: plain SVG, the last five minutes. ----

  const CHART_W = 600;
  const CHART_H = 150;
  const TOP = 16;
  const BOTTOM = 16;

  function svg(name, attrs) {
    const el = document.createElementNS(SVG_NS, name);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    return el;
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  function drawChart(id, series, nowMs, format) {
    const el = $(id);
    // The window is the last five minutes, or the time since the page opened when shorter.
    const first = history.length > 0 ? history[0].t : nowMs;
    const start = Math.min(Math.max(nowMs - HISTORY_MS, first), nowMs - 10000);
    const span = nowMs - start;
    let max = 0;
    for (const s of series) for (const point of history) max = Math.max(max, point[s.key] || 0);
    max = niceMax(max);
    const y = (v) => TOP + (CHART_H - TOP - BOTTOM) * (1 - v / max);
    const x = (t) => ((t - start) / span) * CHART_W;
    const nodes = [];
    for (const f of [0, 0.5, 1]) {
      nodes.push(svg("line", { x1: 0, x2: CHART_W, y1: y(max * f), y2: y(max * f), class: "grid" }));
    }
    const top = svg("text", { x: 4, y: 12, class: "axis" });
    top.textContent = format(max);
    const left = svg("text", { x: 4, y: CHART_H - 3, class: "axis" });
    left.textContent = `${duration(Math.round(span / 1000))} ago`;
    const right = svg("text", { x: CHART_W - 4, y: CHART_H - 3, class: "axis end" });
    right.textContent = "now";
    nodes.push(top, left, right);
    for (const s of series) {
      const points = history
        .filter((point) => point[s.key] !== null && point[s.key] !== undefined)
        .map((point) => `${x(point.t).toFixed(1)},${y(point[s.key]).toFixed(1)}`);
      if (points.length > 0) nodes.push(svg("polyline", { points: points.join(" "), class: `line ${s.cls}` }));
    }
    el.replaceChildren(...nodes);
  }

  function drawCharts(nowMs) {
    const perSec = (v) => `${v}/s`;
    drawChart("chart-messages", [{ key: "msgIn", cls: "in" }, { key: "msgOut", cls: "out" }], nowMs, perSec);
    drawChart("chart-bytes", [{ key: "bytesIn", cls: "in" }, { key: "bytesOut", cls: "out" }], nowMs,
      (v) => `${bytes(v)}/s`);
    drawChart("chart-connections", [{ key: "open", cls: "in" }], nowMs, String);
    drawChart("chart-errors", [{ key: "errors", cls: "bad" }, { key: "refused", cls: "warn" }], nowMs, perSec);
  }

  $("forget-token").hidden = !memoryToken;
  drawCharts(Date.now());
  connect();
})();
