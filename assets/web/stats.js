/* hyperhive — an agent's stats page, served at /agent/<name>/stats (relative
 * URLs). One fetch of api/stats?window=… per window choice; no stream and no
 * polling (the ↻ button asks again). Charts are chart.js v4, vendored. */
(function () {
  "use strict";

  const H = window.Hive;
  const {h, getJSON} = H;
  const $ = (sel) => document.querySelector(sel);

  const WINDOWS = {"24h": "24 hours", "7d": "7 days", "30d": "30 days"};
  const css = getComputedStyle(document.documentElement);
  const v = (name, fallback) => (css.getPropertyValue(name) || "").trim() || fallback;
  const C = {
    fg: v("--fg", "#efe7d6"), fg2: v("--fg-2", "#cdc2ad"), muted: v("--muted", "#958c7e"), line: v("--line", "#2e281f"),
    honey: v("--honey", "#f4b942"), teal: v("--teal", "#4fd1c1"), red: v("--red", "#ff6b6b"),
    orange: v("--orange", "#ff9f43"), green: v("--green", "#9bd672"), violet: v("--violet", "#c4a7ff"),
  };
  const PALETTE = [C.honey, C.teal, C.violet, C.orange, C.green, "#9ecbff", "#e8a0bf", C.red, "#f2dc7c", C.muted];
  const RESULT_COLORS = {ok: C.teal, success: C.teal, failed: C.red, error: C.red, cancelled: C.orange, too_long: C.orange};

  // the agent's name from the path (/agent/<name>/stats)
  const name = decodeURIComponent((location.pathname.match(/\/agent\/([^/]+)/) || [])[1] || "agent");
  $("#agent-name").textContent = name;
  document.title = `${name} stats · hyperhive`;

  const charts = {};
  let current = null;

  function setupChartDefaults() {
    const d = window.Chart.defaults;
    d.color = C.fg2;
    d.borderColor = C.line;
    d.font.family = v("--font-ui", "system-ui");
    d.font.size = 12;
    d.plugins.legend.labels.boxWidth = 12;
    d.plugins.tooltip.backgroundColor = "#1c1813";
    d.plugins.tooltip.borderColor = "#433a2d";
    d.plugins.tooltip.borderWidth = 1;
    d.plugins.tooltip.titleColor = C.fg;
    d.plugins.tooltip.bodyColor = C.fg2;
    d.maintainAspectRatio = false;
    d.animation.duration = 350;
  }

  // ----------------------------------------------------------- formatting

  function bucketLabel(start, bucketSeconds) {
    const d = new Date(H.toMs(start));
    const p = (n) => String(n).padStart(2, "0");
    if (bucketSeconds < 86400) return `${d.toLocaleDateString(undefined, {weekday: "short"})} ${p(d.getHours())}:${p(d.getMinutes())}`;
    return d.toLocaleDateString(undefined, {month: "short", day: "numeric"});
  }

  const secs = (ms) => (ms === null || ms === undefined ? null : Math.round(ms / 100) / 10);
  const tokenAxis = {ticks: {callback: (x) => H.tokens(x)}};
  const secondAxis = {ticks: {callback: (x) => H.duration(x)}};

  function tile(k, val, cls) {
    return h("div", {class: ["panel tile", cls]}, h("div", {class: "v"}, val), h("div", {class: "k"}, k));
  }

  function ms(x) {
    return x === null || x === undefined ? "–" : H.duration(x / 1000);
  }

  // ---------------------------------------------------------------- charts

  function draw(id, config) {
    if (charts[id]) charts[id].destroy();
    const canvas = document.getElementById(id);
    const box = canvas.parentElement;
    const none = box.querySelector(".none");
    if (none) none.remove();
    charts[id] = new window.Chart(canvas, config);
  }

  function nothingIn(id, text) {
    if (charts[id]) { charts[id].destroy(); delete charts[id]; }
    const box = document.getElementById(id).parentElement;
    if (!box.querySelector(".none")) box.appendChild(h("div", {class: "none"}, text));
  }

  function line(label, data, color, extra) {
    // a lone bucket draws no line: give it a point so a quiet day still shows
    const points = data.filter((v) => v !== null && v !== undefined).length;
    return Object.assign({label, data, borderColor: color, backgroundColor: color + "33",
      pointRadius: points <= 1 ? 4 : 0,
      pointHoverRadius: 4, borderWidth: 2, tension: 0.25, spanGaps: true}, extra || {});
  }

  function pairs(list) {
    return Array.isArray(list) ? list.filter((p) => Array.isArray(p) && p.length >= 2) : [];
  }

  function shortTool(name) {
    const s = String(name);
    if (!s.startsWith("mcp__")) return s;
    const parts = s.slice(5).split("__");
    const base = parts.pop();
    return parts[0] === "hyperhive" ? base : `${parts.join("__")}:${base}`;
  }

  function drawAll(data) {
    const buckets = Array.isArray(data.buckets) ? data.buckets : [];
    const labels = buckets.map((b) => bucketLabel(b.start, data.bucket_seconds || 3600));

    draw("c-turns", {type: "bar", data: {labels, datasets: [{label: "turns", data: buckets.map((b) => b.turns || 0),
      backgroundColor: C.honey, borderRadius: 3, maxBarThickness: 28}]},
    options: {plugins: {legend: {display: false}}, scales: {y: {beginAtZero: true, ticks: {precision: 0}}}}});

    draw("c-duration", {type: "line", data: {labels, datasets: [
      line("p50", buckets.map((b) => secs(b.p50_ms)), C.teal),
      line("p95", buckets.map((b) => secs(b.p95_ms)), C.orange),
      line("avg", buckets.map((b) => secs(b.avg_ms)), C.honey, {borderDash: [5, 4]}),
    ]}, options: {interaction: {mode: "index", intersect: false}, scales: {y: Object.assign({beginAtZero: true}, secondAxis)},
      plugins: {tooltip: {callbacks: {label: (c) => `${c.dataset.label}: ${c.parsed.y === null ? "–" : H.duration(c.parsed.y)}`}}}}});

    draw("c-ctx", {type: "line", data: {labels, datasets: [
      line("avg", buckets.map((b) => b.ctx_avg ?? null), C.teal, {fill: true}),
      line("max", buckets.map((b) => b.ctx_max ?? null), C.violet),
    ]}, options: {interaction: {mode: "index", intersect: false}, scales: {y: Object.assign({beginAtZero: true}, tokenAxis)},
      plugins: {tooltip: {callbacks: {label: (c) => `${c.dataset.label}: ${H.tokens(c.parsed.y)}`}}}}});

    const parts = [["input", C.honey], ["output", C.teal], ["cache_read", C.violet], ["cache_creation", C.orange]];
    draw("c-cost", {type: "bar", data: {labels, datasets: parts.map(([k, color]) => ({
      label: k.replace("_", " "), data: buckets.map((b) => (b.cost && b.cost[k]) || 0), backgroundColor: color, maxBarThickness: 28,
    }))}, options: {interaction: {mode: "index", intersect: false},
      scales: {x: {stacked: true}, y: Object.assign({stacked: true, beginAtZero: true}, tokenAxis)},
      plugins: {tooltip: {callbacks: {label: (c) => `${c.dataset.label}: ${H.tokens(c.parsed.y)}`}}}}});

    const tools = pairs(data.top_tools);
    if (tools.length) {
      draw("c-tools", {type: "bar", data: {labels: tools.map((p) => shortTool(p[0])), datasets: [{label: "calls",
        data: tools.map((p) => p[1]), backgroundColor: C.teal, borderRadius: 3, maxBarThickness: 22}]},
      options: {indexAxis: "y", plugins: {legend: {display: false},
        tooltip: {callbacks: {title: (items) => tools[items[0].dataIndex][0]}}},
      scales: {x: {beginAtZero: true, ticks: {precision: 0}}}}});
    } else nothingIn("c-tools", "no tool calls");

    draw("c-backlog", {type: "line", data: {labels, datasets: [
      line("loose ends", buckets.map((b) => b.open_loose_ends ?? null), C.honey, {stepped: true, tension: 0}),
      line("reminders", buckets.map((b) => b.pending_reminders ?? null), C.teal, {stepped: true, tension: 0}),
    ]}, options: {interaction: {mode: "index", intersect: false},
      scales: {y: {beginAtZero: true, ticks: {precision: 0}}}}});

    doughnut("c-wake", pairs(data.wake_mix), (k, i) => PALETTE[i % PALETTE.length], "no wakes");
    doughnut("c-result", pairs(data.result_mix), (k, i) => RESULT_COLORS[k] || PALETTE[(i + 2) % PALETTE.length], "no results");
  }

  function doughnut(id, list, colorOf, emptyText) {
    if (!list.length) { nothingIn(id, emptyText); return; }
    draw(id, {type: "doughnut", data: {labels: list.map((p) => String(p[0])), datasets: [{
      data: list.map((p) => p[1]), backgroundColor: list.map((p, i) => colorOf(String(p[0]), i)),
      borderColor: "#15120e", borderWidth: 2,
    }]}, options: {cutout: "58%", plugins: {legend: {position: "right"}}}});
  }

  function drawTiles(data) {
    const d = data.duration || {};
    const ctx = data.ctx || {};
    const cost = data.cost || {};
    const backlog = data.backlog || {};
    const count = (n) => (n === null || n === undefined ? "–" : String(n));
    const total = ["input", "output", "cache_read", "cache_creation"].reduce((s, k) => s + (Number(cost[k]) || 0), 0);
    $("#tiles").replaceChildren(
      tile("turns", String(data.turns || 0), "honey"),
      tile("duration p50", ms(d.p50_ms)),
      tile("duration p95", ms(d.p95_ms)),
      tile("duration avg", ms(d.avg_ms)),
      tile("ctx avg", H.tokens(ctx.avg)),
      tile("ctx max", H.tokens(ctx.max)),
      tile("tokens", H.tokens(total)),
      tile("loose ends open", count(backlog.open_loose_ends)),
      tile("reminders pending", count(backlog.pending_reminders)));
  }

  // ----------------------------------------------------------------- load

  async function load(win) {
    current = win;
    for (const b of document.querySelectorAll("#windows [data-window]")) {
      b.setAttribute("aria-pressed", b.dataset.window === win ? "true" : "false");
    }
    if (location.hash.slice(1) !== win) history.replaceState(null, "", "#" + win);
    const err = $("#stats-error");
    H.showError(err, null);
    let data;
    try {
      data = await getJSON(`api/stats?window=${encodeURIComponent(win)}`);
    } catch (e) {
      H.showError(err, e.message);
      return;
    }
    if (win !== current) return; // another window was picked meanwhile
    const empty = !data || !data.turns;
    $("#stats-empty").hidden = !empty;
    $("#stats-empty").textContent = `no turns in the last ${WINDOWS[win] || win}`;
    $("#charts").hidden = empty;
    $("#tiles").hidden = empty;
    if (empty) return;
    drawTiles(data);
    if (!window.Chart) {
      H.showError(err, "the chart library did not load; the numbers above are all there is");
      return;
    }
    drawAll(data);
  }

  $("#windows").addEventListener("click", (e) => {
    const b = e.target.closest("[data-window]");
    if (b) load(b.dataset.window);
  });
  $("#reload").addEventListener("click", () => load(current || "24h"));

  if (window.Chart) setupChartDefaults();
  const fromHash = location.hash.slice(1);
  load(WINDOWS[fromHash] ? fromHash : "24h");

  window.hive = {charts, state: {name, get window() { return current; }}};
})();
