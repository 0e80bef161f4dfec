// The status page, as one HTML document in raw string pieces (each well
// under the 16 KiB a compiler may allow for one literal), joined on first use.
// Everything taken from the API is put into the page with `textContent` or
// `setAttribute`, never as markup.
#include "protocol/status_page.hpp"

namespace mg {

namespace {

// clang-format off
const char* const page_pieces[] = {
// -- document head -----------------------------------------------------------
R"mgui(<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<meta name="referrer" content="no-referrer">
<title>modelgate status</title>
<link rel="icon" href="data:,">
<style>
)mgui",
// -- stylesheet --------------------------------------------------------------
R"mgui(:root {
  color-scheme: light dark;
  --bg: #f6f7f9; --fg: #1b1f24; --muted: #5b636e; --card: #ffffff; --line: #d5d9df;
  --ok: #116329; --ok-bg: #dcf5e3; --bad: #b3161e; --bad-bg: #ffe3e1;
  --unk: #7a5300; --unk-bg: #fff1c2; --off: #59606a; --off-bg: #e6e8eb;
  --accent: #0b5cad;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #111418; --fg: #e7eaee; --muted: #9aa3ad; --card: #1a1f25; --line: #333b45;
    --ok: #5fd38a; --ok-bg: #12351f; --bad: #ff8a84; --bad-bg: #451518;
    --unk: #f2c04f; --unk-bg: #3d2f08; --off: #a5adb7; --off-bg: #2a3038;
    --accent: #6fb1ff;
  }
}
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; text-size-adjust: 100%; }
body {
  margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
}
code, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "DejaVu Sans Mono", monospace; font-size: 0.88em; }
.wrap { max-width: 1400px; margin: 0 auto; padding: 12px 16px 24px; }
header.top { display: flex; flex-wrap: wrap; align-items: baseline; gap: 6px 16px; margin-bottom: 10px; }
header.top h1 { font-size: 1.35rem; margin: 0; letter-spacing: 0.01em; }
header.top h1 .sub { color: var(--muted); font-weight: 400; }
.conn { font-size: 0.9rem; color: var(--muted); }
.conn.live .dot { color: var(--ok); }
.conn.down { color: var(--bad); font-weight: 600; }
.conn.wait { color: var(--unk); font-weight: 600; }
.panel { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; margin-bottom: 12px; }
.checker { display: flex; flex-wrap: wrap; gap: 4px 18px; align-items: baseline; font-size: 0.93rem; }
.checker .state { font-weight: 700; display: inline-flex; gap: 5px; }
.checker .state.on { color: var(--ok); }
.checker .state.off { color: var(--unk); }
.checker .fig { color: var(--muted); }
.checker .fig b { color: var(--fg); font-weight: 600; }
.summary { display: flex; flex-wrap: wrap; gap: 8px; margin-bottom: 12px; }
.pill { display: inline-flex; align-items: center; gap: 6px; padding: 4px 12px; border-radius: 999px; font-weight: 600; font-size: 0.95rem; border: 1px solid transparent; }
.pill .n { font-size: 1.1rem; }
.pill.zero { opacity: 0.55; font-weight: 400; }
.badge { display: inline-flex; align-items: center; gap: 5px; padding: 2px 9px; border-radius: 6px; font-weight: 700; white-space: nowrap; border: 1px solid transparent; }
.sym { font-weight: 700; display: inline-block; min-width: 1em; text-align: center; }
.st-healthy { color: var(--ok); background: var(--ok-bg); border-color: var(--ok); }
.st-unhealthy { color: var(--bad); background: var(--bad-bg); border-color: var(--bad); }
.st-unknown { color: var(--unk); background: var(--unk-bg); border-color: var(--unk); border-style: dashed; }
.st-inactive { color: var(--off); background: var(--off-bg); border-color: var(--off); border-style: dotted; }
.auth form { display: grid; gap: 8px; max-width: 420px; }
.auth label { font-weight: 600; }
.auth input[type=password] { font: inherit; font-size: 16px; padding: 8px 10px; border: 1px solid var(--line); border-radius: 6px; background: var(--bg); color: var(--fg); width: 100%; }
.auth .remember { font-weight: 400; display: flex; gap: 6px; align-items: center; }
.auth button { font: inherit; font-weight: 600; padding: 8px 14px; border-radius: 6px; border: 1px solid var(--accent); background: var(--accent); color: #fff; justify-self: start; cursor: pointer; }
.hint { color: var(--muted); margin: 0; font-size: 0.9rem; }
.hint code { white-space: nowrap; }
.auth-error { color: var(--bad); font-weight: 600; margin: 0; }
table.servers { width: 100%; border-collapse: separate; border-spacing: 0; background: var(--card); border: 1px solid var(--line); border-radius: 8px; overflow: hidden; }
table.servers th { text-align: left; font-size: 0.78rem; text-transform: uppercase; letter-spacing: 0.05em; color: var(--muted); padding: 8px 10px; border-bottom: 1px solid var(--line); background: var(--bg); }
table.servers td { padding: 9px 10px; vertical-align: top; border-bottom: 1px solid var(--line); }
table.servers tr:last-child td { border-bottom: 0; }
table.servers td.c-status { box-shadow: inset 5px 0 0 var(--stripe, transparent); padding-left: 14px; white-space: nowrap; }
tr.s-healthy { --stripe: var(--ok); }
tr.s-unhealthy { --stripe: var(--bad); }
tr.s-unknown { --stripe: var(--unk); }
tr.inactive { --stripe: var(--off); background: repeating-linear-gradient(135deg, transparent 0 10px, var(--off-bg) 10px 12px); }
tr.inactive .c-server .name, tr.inactive .c-server .url { text-decoration: line-through; text-decoration-color: var(--off); }
tr.inactive td > * { opacity: 0.85; }
.status-stack { display: flex; flex-direction: column; align-items: flex-start; gap: 4px; }
.why { font-size: 0.82rem; color: var(--muted); white-space: normal; }
.v { min-width: 0; }
.name { font-weight: 700; }
.url { overflow-wrap: break-word; }
.why { max-width: 15em; }
.id { color: var(--muted); font-size: 0.8rem; }
.models { display: flex; flex-wrap: wrap; gap: 4px; }
.model { background: var(--bg); border: 1px solid var(--line); border-radius: 4px; padding: 0 6px; font-size: 0.85rem; }
.num { font-variant-numeric: tabular-nums; }
.fails-bad { color: var(--bad); font-weight: 700; }
.small { font-size: 0.82rem; color: var(--muted); }
.err { color: var(--bad); font-size: 0.85rem; word-break: break-word; }
.errkind { font-weight: 700; }
ol.events { list-style: none; margin: 0; padding: 0; font-size: 0.85rem; }
ol.events li { display: flex; flex-wrap: wrap; gap: 0 8px; padding: 1px 0; align-items: baseline; }
ol.events .t { color: var(--muted); font-variant-numeric: tabular-nums; white-space: nowrap; }
ol.events .e { font-weight: 700; white-space: nowrap; }
ol.events .d { color: var(--muted); overflow-wrap: anywhere; min-width: 0; }
.ev-healthy { color: var(--ok); }
.ev-unhealthy, .ev-deregistered { color: var(--bad); }
.ev-registered, .ev-reactivated { color: var(--accent); }
.empty { padding: 24px; text-align: center; color: var(--muted); }
footer { margin-top: 14px; font-size: 0.85rem; color: var(--muted); display: flex; gap: 14px; flex-wrap: wrap; }
footer a { color: var(--accent); }
[hidden] { display: none !important; }
@media (max-width: 820px) {
  .wrap { padding: 10px 10px 20px; }
  table.servers, table.servers tbody, table.servers tr, table.servers td { display: block; width: 100%; }
  table.servers { background: transparent; border: 0; border-radius: 0; overflow: visible; }
  table.servers thead { display: none; }
  table.servers tr { background: var(--card); border: 1px solid var(--line); border-left: 6px solid var(--stripe, var(--line)); border-radius: 8px; margin-bottom: 10px; padding: 6px 0; }
  tr.inactive { background: repeating-linear-gradient(135deg, var(--card) 0 10px, var(--off-bg) 10px 12px); }
  table.servers td { border: 0; padding: 4px 12px; display: grid; grid-template-columns: 6.5em minmax(0, 1fr); gap: 8px; }
  .url, .id { overflow-wrap: anywhere; }
  table.servers td::before { content: attr(data-label); color: var(--muted); font-size: 0.8rem; text-transform: uppercase; letter-spacing: 0.04em; padding-top: 2px; }
  table.servers td.c-status { box-shadow: none; padding-left: 12px; }
  .why { max-width: none; }
  table.servers td.c-status::before, table.servers td.c-server::before { content: none; }
  table.servers td.c-status, table.servers td.c-server { grid-template-columns: minmax(0, 1fr); }
  table.servers td.c-status .status-stack { flex-direction: row; flex-wrap: wrap; align-items: center; }
  .badge { font-size: 1rem; }
}
)mgui",
R"mgui(</style>
</head>
<body>
<div class="wrap">
<header class="top">
  <h1>modelgate <span class="sub">status</span></h1>
  <div id="conn" class="conn" role="status" aria-live="polite">connecting&#8230;</div>
</header>
<noscript><div class="panel">This page needs JavaScript: it reads the admin API every 2 seconds.</div></noscript>
<section id="auth" class="panel auth" hidden>
  <form id="auth-form">
    <label for="token">Admin token</label>
    <p class="hint">This modelgate asks for an admin token (<code>--admin-token</code>). It stays in this browser and is sent as <code>Authorization: Bearer</code> to the admin API only.</p>
    <input id="token" name="token" type="password" autocomplete="current-password" required spellcheck="false" autocapitalize="off">
    <label class="remember"><input id="remember" type="checkbox"> remember on this device (otherwise until this tab closes)</label>
    <button type="submit">Show status</button>
    <p id="auth-error" class="auth-error" role="alert" hidden></p>
  </form>
</section>
<section id="checker" class="panel checker" aria-label="Health checker" hidden></section>
<section id="summary" class="summary" aria-label="Servers by status" hidden></section>
<main>
  <table id="servers" class="servers" hidden>
    <thead><tr>
      <th scope="col">Status</th><th scope="col">Server</th><th scope="col">Models</th>
      <th scope="col">Failures</th><th scope="col">Last check</th><th scope="col">Response</th>
      <th scope="col">Recent events</th>
    </tr></thead>
    <tbody id="rows"></tbody>
  </table>
  <div id="empty" class="panel empty" hidden>No servers registered yet. Register one with <code>modelgatectl register URL --model NAME</code> or <code>POST /v1/servers</code>.</div>
</main>
<footer>
  <span>Refreshes every 2 s from the admin API. Times are this browser's local time.</span>
  <a href="#" id="forget" hidden>forget the admin token</a>
</footer>
</div>
<script>
)mgui",
// -- script: settings, token, admin API --------------------------------------
R"mgui((function () {
  'use strict';

  // -- settings ---------------------------------------------------------------
  var REFRESH_MS = 2000;          // one poll every 2 s
  var EVENTS_SHOWN = 5;           // the last five events of each server
  var EVENTS_MAX_AGE_MS = 30000;  // refetch unchanged servers' events this often
  var EVENTS_AGED_PER_POLL = 4;   // ... at most this many per poll
  var EVENTS_PARALLEL = 4;        // event requests in flight at once
  var STALE_MS = 6000;            // no fresh data for this long: say so
  var TOKEN_KEY = 'modelgate.admin_token';

  var STATUS = {
    healthy: { sym: '\u2713', label: 'healthy' },
    unhealthy: { sym: '\u2717', label: 'unhealthy' },
    unknown: { sym: '?', label: 'unknown' }
  };
  var EVENT_SYM = {
    registered: '+', healthy: '\u2713', unhealthy: '\u2717',
    deregistered: '\u2298', reactivated: '\u21bb'
  };

  var state = {
    token: loadToken(),
    servers: null,      // last list received
    checker: null,      // last health-checker status received
    events: {},         // id -> {sig, at, list}
    lastOk: 0,          // Date.now() of the last complete poll
    error: '',          // why the last poll failed
    waitingForToken: false,
    timer: 0,
    inFlight: false
  };

  var $ = function (id) { return document.getElementById(id); };

  // -- token --------------------------------------------------------------------
  function loadToken() {
    try {
      return window.sessionStorage.getItem(TOKEN_KEY) || window.localStorage.getItem(TOKEN_KEY) || '';
    } catch (e) {
      return '';
    }
  }

  function saveToken(token, remember) {
    try {
      window.sessionStorage.setItem(TOKEN_KEY, token);
      if (remember)
        window.localStorage.setItem(TOKEN_KEY, token);
      else
        window.localStorage.removeItem(TOKEN_KEY);
    } catch (e) { /* storage disabled: the token lives in this page only */ }
    state.token = token;
  }

  function forgetToken() {
    try {
      window.sessionStorage.removeItem(TOKEN_KEY);
      window.localStorage.removeItem(TOKEN_KEY);
    } catch (e) { /* nothing stored */ }
    state.token = '';
  }

  function askForToken(message) {
    state.waitingForToken = true;
    $('auth').hidden = false;
    var err = $('auth-error');
    err.textContent = message || '';
    err.hidden = !message;
    renderConnection();
    $('token').focus();
  }

  // -- the admin API ------------------------------------------------------------
  function ApiError(message, unauthorized) {
    this.message = message;
    this.unauthorized = !!unauthorized;
  }

  // Paths are relative (no leading '/'), so the page also works behind a
  // reverse proxy that serves modelgate under a prefix.
  function api(path) {
    var headers = { 'Accept': 'application/json' };
    if (state.token)
      headers['Authorization'] = 'Bearer ' + state.token;
    return fetch(path, { headers: headers, cache: 'no-store', credentials: 'same-origin' })
      .catch(function (e) {
        throw new ApiError('cannot reach modelgate (' + (e && e.message ? e.message : 'network error') + ')');
      })
      .then(function (r) {
        if (r.status === 401)
          throw new ApiError('unauthorized', true);
        return r.text().then(function (text) {
          var body = null;
          try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
          if (!r.ok) {
            var why = body && body.error && body.error.message ? ': ' + body.error.message : '';
            throw new ApiError('HTTP ' + r.status + ' from ' + path + why);
          }
          if (body === null)
            throw new ApiError('unreadable answer from ' + path);
          return body;
        });
      });
  }

  // Events change only on transitions, so a server's events are fetched again
  // only when what would cause one changed, plus now and then a few at a time.
  function eventSignature(s) {
    return [s.status, s.is_active, s.registered_at, s.deregistered_at || ''].join('|');
  }

  function loadEvents(servers) {
    var now = Date.now();
    var changed = [];
    var aged = [];
    servers.forEach(function (s) {
      var cached = state.events[s.id];
      if (!cached || cached.sig !== eventSignature(s))
        changed.push(s);
      else if (now - cached.at > EVENTS_MAX_AGE_MS)
        aged.push(s);
    });
    aged.sort(function (a, b) { return state.events[a.id].at - state.events[b.id].at; });
    var todo = changed.concat(aged.slice(0, EVENTS_AGED_PER_POLL));
    var next = 0;
    function worker() {
      if (next >= todo.length)
        return Promise.resolve();
      var s = todo[next++];
      var sig = eventSignature(s);
      return api('v1/servers/' + encodeURIComponent(s.id) + '/events')
        .then(function (body) {
          var list = Array.isArray(body.data) ? body.data : [];
          state.events[s.id] = { sig: sig, at: Date.now(), list: list.slice(-EVENTS_SHOWN).reverse() };
        }, function (e) {
          if (e.unauthorized)
            throw e;
          // Keep what we had; try again next poll.
        })
        .then(worker);
    }
    var workers = [];
    for (var i = 0; i < Math.min(EVENTS_PARALLEL, todo.length); ++i)
      workers.push(worker());
    return Promise.all(workers);
  }

  function poll() {
    if (state.waitingForToken || state.inFlight)
      return;
    state.inFlight = true;
    Promise.all([api('v1/servers?include_inactive=true'), api('v1/health-checker')])
      .then(function (answers) {
        var servers = Array.isArray(answers[0].data) ? answers[0].data : [];
        return loadEvents(servers).then(function () {
          state.servers = servers;
          state.checker = answers[1];
          state.lastOk = Date.now();
          state.error = '';
          var known = {};
          servers.forEach(function (s) { known[s.id] = true; });
          Object.keys(state.events).forEach(function (id) { if (!known[id]) delete state.events[id]; });
          render();
        });
      })
      .catch(function (e) {
        if (e && e.unauthorized) {
          var had = state.token;
          forgetToken();
          askForToken(had ? 'That token was not accepted. Enter the admin token again.' : '');
          return;
        }
        state.error = e && e.message ? e.message : String(e);
        renderConnection();
      })
      .then(function () {
        state.inFlight = false;
        schedule();
      });
  }

  function schedule() {
    clearTimeout(state.timer);
    if (!state.waitingForToken)
      state.timer = setTimeout(poll, REFRESH_MS);
  }

)mgui",
// -- script: formatting and DOM helpers --------------------------------------
R"mgui(  // -- formatting -----------------------------------------------------------------
  function pad(n, w) {
    var s = String(n);
    while (s.length < (w || 2)) s = '0' + s;
    return s;
  }

  function parseTime(text) {
    if (!text) return null;
    var t = Date.parse(text);
    return isNaN(t) ? null : t;
  }

  function clockTime(t) {
    var d = new Date(t);
    var hms = pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds());
    var today = new Date();
    if (d.toDateString() === today.toDateString())
      return hms;
    return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' + hms;
  }

  function ago(t) {
    var s = Math.max(0, (Date.now() - t) / 1000);
    if (s < 1) return 'just now';
    if (s < 60) return Math.floor(s) + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    if (s < 86400) return Math.floor(s / 3600) + ' h ago';
    return Math.floor(s / 86400) + ' d ago';
  }

  function duration(ms) {
    if (ms === null || ms === undefined) return '\u2014';
    if (ms < 1) return '< 1 ms';
    if (ms < 1000) return Math.round(ms) + ' ms';
    return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + ' s';
  }

  function seconds(x) {
    return (Math.round(x * 1000) / 1000) + ' s';
  }

  // -- DOM helpers: text only, never markup from data --------------------------
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function add(parent) {
    for (var i = 1; i < arguments.length; ++i) {
      var c = arguments[i];
      if (c === null || c === undefined || c === false) continue;
      parent.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
    }
    return parent;
  }

  function statusOf(s) {
    return STATUS[s] ? s : 'unknown';
  }

  function badge(status) {
    var info = STATUS[statusOf(status)];
    var b = el('span', 'badge st-' + statusOf(status));
    b.setAttribute('data-role', 'status');
    add(b, el('span', 'sym', info.sym), info.label);
    return b;
  }

  function inactiveBadge() {
    var b = el('span', 'badge st-inactive');
    b.setAttribute('data-role', 'inactive');
    add(b, el('span', 'sym', '\u2298'), 'inactive');
    return b;
  }

  // A table cell holding one box: on narrow screens the cell is a grid of
  // its label (::before) and that box.
  function cell(tr, label, cls) {
    var td = el('td', cls);
    td.setAttribute('data-label', label);
    var box = el('div', 'v');
    add(tr, add(td, box));
    return box;
  }

  function timeNode(text) {
    var t = parseTime(text);
    if (t === null) return el('span', 'small', 'never');
    var span = el('span', null, ago(t));
    span.title = text + ' (' + clockTime(t) + ' local)';
    return span;
  }

)mgui",
// -- script: rendering and wiring --------------------------------------------
R"mgui(  // -- rendering ------------------------------------------------------------------
  function serverRow(s) {
    var status = statusOf(s.status);
    var active = s.is_active !== false;
    var tr = el('tr', 's-' + status + (active ? '' : ' inactive'));
    tr.setAttribute('data-server-id', String(s.id));
    tr.setAttribute('data-status', status);
    tr.setAttribute('data-active', active ? 'true' : 'false');

    var stack = add(cell(tr, 'Status', 'c-status'), badge(status));
    stack.className = 'v status-stack';
    if (!active) {
      add(stack, inactiveBadge());
      var why = 'deregistered' + (s.deregistered_reason ? ' (' + s.deregistered_reason + ')' : '');
      var at = parseTime(s.deregistered_at);
      if (at !== null) why += ' ' + ago(at);
      add(stack, el('span', 'why', why));
    }

    var sv = cell(tr, 'Server', 'c-server');
    add(sv, el('div', 'name', s.name ? s.name : '(no name)'));
    add(sv, el('div', 'url mono', s.url));
    add(sv, el('div', 'id mono', s.id));

    var models = cell(tr, 'Models', 'c-models');
    models.className = 'v models';
    (Array.isArray(s.models) ? s.models : []).forEach(function (m) {
      add(models, el('span', 'model', m));
    });

    var fails = Number(s.consecutive_failures) || 0;
    var fc = cell(tr, 'Failures', 'c-fails num');
    add(fc, el('span', fails > 0 ? 'fails-bad' : null, fails));
    var max = state.checker && state.checker.max_consecutive_failures;
    if (max && state.checker.auto_deregister && active)
      add(fc, el('span', 'small', ' / ' + max));

    var lc = cell(tr, 'Last check', 'c-check');
    add(lc, timeNode(s.last_check_at));
    if (status === 'unhealthy' && (s.last_error || s.last_error_kind)) {
      var e = el('div', 'err');
      if (s.last_error_kind) add(e, el('span', 'errkind', s.last_error_kind), s.last_error ? ': ' : '');
      if (s.last_error) add(e, String(s.last_error));
      add(lc, e);
    }

    add(cell(tr, 'Response', 'c-resp num'), duration(s.last_response_time_ms));

    var ev = cell(tr, 'Events', 'c-events');
    var cached = state.events[s.id];
    if (!cached) {
      add(ev, el('span', 'small', 'loading\u2026'));
    } else if (!cached.list.length) {
      add(ev, el('span', 'small', 'none'));
    } else {
      var ol = el('ol', 'events');
      cached.list.forEach(function (x) {
        var li = el('li');
        li.setAttribute('data-event', String(x.event));
        var t = parseTime(x.at);
        var tspan = el('span', 't', t === null ? String(x.at) : clockTime(t));
        if (t !== null) tspan.title = String(x.at);
        var sym = EVENT_SYM[x.event] || '\u2022';
        add(li, tspan, el('span', 'e ev-' + String(x.event).replace(/[^a-z_]/g, ''), sym + ' ' + x.event),
            el('span', 'd', x.detail === null || x.detail === undefined ? '' : x.detail));
        add(ol, li);
      });
      add(ev, ol);
    }
    return tr;
  }

  function compareServers(a, b) {
    var aa = a.is_active !== false, ba = b.is_active !== false;
    if (aa !== ba) return aa ? -1 : 1;
    var an = (a.name || a.url || '').toLowerCase(), bn = (b.name || b.url || '').toLowerCase();
    if (an !== bn) return an < bn ? -1 : 1;
    return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
  }

  function renderSummary(servers) {
    var counts = { healthy: 0, unhealthy: 0, unknown: 0, inactive: 0 };
    servers.forEach(function (s) {
      if (s.is_active === false) counts.inactive++;
      else counts[statusOf(s.status)]++;
    });
    var box = $('summary');
    var pills = [];
    ['healthy', 'unhealthy', 'unknown'].forEach(function (k) {
      var p = el('span', 'pill st-' + k + (counts[k] ? '' : ' zero'));
      p.setAttribute('data-count', k);
      add(p, el('span', 'sym', STATUS[k].sym), el('span', 'n', counts[k]), STATUS[k].label);
      pills.push(p);
    });
    var off = el('span', 'pill st-inactive' + (counts.inactive ? '' : ' zero'));
    off.setAttribute('data-count', 'inactive');
    add(off, el('span', 'sym', '\u2298'), el('span', 'n', counts.inactive), 'inactive');
    pills.push(off);
    box.replaceChildren.apply(box, pills);
    box.hidden = false;
  }

  function renderChecker(c) {
    var box = $('checker');
    if (!c) { box.hidden = true; return; }
    var parts = [];
    var running = !!c.running;
    var st = el('span', 'state ' + (running ? 'on' : 'off'));
    st.setAttribute('data-role', 'checker-state');
    add(st, el('span', 'sym', running ? '\u2713' : '\u2016'),
        running ? 'Health checker running' : 'Health checker paused');
    parts.push(st);
    function fig(label, value) {
      return add(el('span', 'fig'), label + ' ', el('b', null, value));
    }
    if (c.interval_seconds !== undefined) parts.push(fig('every', seconds(c.interval_seconds)));
    if (c.timeout_seconds !== undefined) parts.push(fig('timeout', seconds(c.timeout_seconds)));
    if (c.auto_deregister !== undefined)
      parts.push(fig('auto-deregister', c.auto_deregister
        ? 'after ' + c.max_consecutive_failures + ' failures' : 'off'));
    if (c.probers !== undefined) parts.push(fig('probers', c.probers));
    if (c.checks_total !== undefined) parts.push(fig('checks', c.checks_total));
    if (c.failures_total !== undefined) parts.push(fig('failed', c.failures_total));
    if (c.deregistrations_total !== undefined) parts.push(fig('deregistered', c.deregistrations_total));
    box.replaceChildren.apply(box, parts);
    box.hidden = false;
  }

  function renderConnection() {
    var c = $('conn');
    c.replaceChildren();
    if (state.waitingForToken) {
      c.className = 'conn wait';
      add(c, '\u26a0 waiting for the admin token');
    } else if (state.error) {
      c.className = 'conn down';
      add(c, '\u2717 ' + state.error + (state.lastOk ? ' \u2014 showing data from ' + clockTime(state.lastOk) : '') + ', retrying');
    } else if (state.lastOk) {
      var stale = Date.now() - state.lastOk > STALE_MS;
      c.className = 'conn ' + (stale ? 'down' : 'live');
      add(c, el('span', 'dot', stale ? '\u26a0' : '\u25cf'),
          (stale ? ' stale, last updated ' : ' live, updated ') + clockTime(state.lastOk));
    } else {
      c.className = 'conn';
      add(c, 'connecting\u2026');
    }
    $('forget').hidden = !state.token;
  }

  function render() {
    var servers = (state.servers || []).slice().sort(compareServers);
    renderConnection();
    renderChecker(state.checker);
    renderSummary(servers);
    var rows = servers.map(serverRow);
    var tbody = $('rows');
    tbody.replaceChildren.apply(tbody, rows);
    $('servers').hidden = rows.length === 0;
    $('empty').hidden = rows.length !== 0;
    document.title = titleFor(servers);
  }

  function titleFor(servers) {
    var bad = servers.filter(function (s) { return s.is_active !== false && s.status === 'unhealthy'; }).length;
    return (bad ? '\u2717 ' + bad + ' unhealthy \u2014 ' : '') + 'modelgate status';
  }

  // -- wiring -------------------------------------------------------------------
  $('auth-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    var token = $('token').value.trim();
    if (!token) return;
    saveToken(token, $('remember').checked);
    $('token').value = '';
    $('auth').hidden = true;
    state.waitingForToken = false;
    renderConnection();
    poll();
  });

  $('forget').addEventListener('click', function (ev) {
    ev.preventDefault();
    forgetToken();
    state.events = {};
    clearTimeout(state.timer);
    poll(); // asks for a token if the daemon wants one
  });

  // Catch up at once when the tab comes back to the foreground.
  document.addEventListener('visibilitychange', function () {
    if (document.visibilityState === 'visible' && !state.waitingForToken && !state.inFlight) {
      clearTimeout(state.timer);
      poll();
    }
  });

  renderConnection();
  poll();
})();
)mgui",
R"mgui(</script>
</body>
</html>
)mgui",
};
// clang-format on

} // namespace

const std::string& status_page_html() {
  static const std::string page = [] {
    std::string text;
    for (const char* piece : page_pieces)
      text += piece;
    return text;
  }();
  return page;
}

} // namespace mg
