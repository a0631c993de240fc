/* hyperhive — /journal/<name>: the agent's log, tailed live.
 *
 * The stream sends `{line}` or `{lines: […]}` per SSE message. A reconnect
 * gets the tail again from the server, so the terminal starts afresh each
 * time (its snapshot says reset) instead of guessing which lines it has.
 */
(function () {
  "use strict";

  const H = window.Hive;
  const {h} = H;
  const $ = (sel) => document.querySelector(sel);

  // the shell's {{name}}; the path is the fallback (/journal/<name>)
  const fromPath = decodeURIComponent((location.pathname.match(/\/journal\/([^/]+)/) || [])[1] || "");
  const dataName = document.body.dataset.name || "";
  const name = dataName && !dataName.includes("{{") ? dataName : fromPath;
  $("#journal-name").textContent = name;
  $("#agent-link").href = `/agent/${encodeURIComponent(name)}/`;
  document.title = `${name} journal · hyperhive`;

  const ERR = /\b(error|err|fatal|failed|failure|panic|traceback|exception|critical|denied)\b/i;
  const WARN = /\b(warn|warning|deprecated|retry|retrying|timeout|timed out)\b/i;

  let counter = 0;
  let lastId = null;

  /* One SSE message → one event per line, keyed by the event id (and the index in a batch). */
  function parse(msg) {
    let data;
    try { data = JSON.parse(msg.data); } catch (_) { data = {line: String(msg.data)}; }
    const lines = Array.isArray(data.lines) ? data.lines : data.line !== undefined ? [data.line] : [];
    // EventSource repeats the previous id on a message without one: only a new id is a key
    const id = msg.lastEventId && msg.lastEventId !== lastId ? msg.lastEventId : `n${++counter}`;
    lastId = msg.lastEventId || lastId;
    return lines.map((line, i) => ({line: String(line), key: lines.length > 1 ? `${id}.${i}` : id}));
  }

  let filter = "";

  function render(ev) {
    const line = ev.line;
    const lvl = ERR.test(line) ? "lvl-err" : WARN.test(line) ? "lvl-warn" : null;
    const row = h("div", {class: ["trow jline", lvl]},
      h("span", {class: "pfx", "aria-hidden": "true"}, lvl === "lvl-err" ? "!" : lvl === "lvl-warn" ? "‼" : "│"),
      h("span", {class: "body"}, line));
    applyFilter(row);
    return row;
  }

  function applyFilter(row) {
    const text = row.querySelector(".body").textContent;
    row.classList.toggle("filtered-out", !!filter && !text.toLowerCase().includes(filter));
  }

  function refilter() {
    filter = $("#filter").value.trim().toLowerCase();
    let shown = 0, total = 0;
    for (const row of document.querySelectorAll("#journal .trow.jline")) {
      applyFilter(row);
      total++;
      if (!row.classList.contains("filtered-out")) shown++;
    }
    $("#filter-count").textContent = filter ? `${shown} / ${total}` : "";
  }

  $("#filter").addEventListener("input", refilter);
  $("#filter-form").addEventListener("submit", (e) => e.preventDefault());

  const wrapBtn = $("#wrap");
  wrapBtn.addEventListener("click", () => {
    const on = wrapBtn.getAttribute("aria-pressed") !== "true";
    wrapBtn.setAttribute("aria-pressed", on ? "true" : "false");
    $("#journal").classList.toggle("nowrap", !on);
  });

  const term = window.HiveTerminal.create({
    mount: "#journal",
    streamUrl: `/journal/${encodeURIComponent(name)}/stream`,
    label: `${name} journal`,
    emptyText: "waiting for log lines…",
    maxRows: 10000,
    parse,
    keyOf: (ev) => ev.key,
    cursorOf: () => null,
    snapshot: async () => ({seq: 0, events: [], reset: true}),
    render,
    onStatus: (live, why) => H.setLive($("#live"), live, "tailing", why),
  });

  window.hive = {term, state: {name}};
})();
