/* hyperhive — the small kit every page shares: a DOM builder that never
 * parses strings as HTML, the one way to POST an action and surface its
 * error sentence, toasts, time and token formatting, diff colouring, the
 * lazily loaded previews of a message's file references, and a single
 * clock that keeps "3m ago" / "12s" labels ticking.
 *
 * Exposed as `window.Hive`. No dependencies; load it before the page script.
 */
(function () {
  "use strict";

  // ------------------------------------------------------------------ DOM

  // set as properties (their attribute is only the initial value); everything else is an attribute
  const PROPS = new Set(["value", "checked", "disabled", "selected", "open", "hidden"]);

  /* h("div", {class: "x", data: {key: "m1"}, on: {click: fn}, title: "…"}, child, "text", [more]) —
   * strings always become text nodes. The only way to insert markup is md(). */
  function h(tag, props, ...kids) {
    const el = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (v === null || v === undefined || v === false) continue;
        if (k === "class") el.className = Array.isArray(v) ? v.flat(Infinity).filter(Boolean).join(" ") : v;
        else if (k === "data") for (const [dk, dv] of Object.entries(v)) { if (dv != null) el.dataset[dk] = String(dv); }
        else if (k === "on") for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
        else if (k === "text") el.textContent = String(v);
        else if (PROPS.has(k)) el[k] = v;
        else el.setAttribute(k, v === true ? "" : String(v));
      }
    }
    append(el, kids);
    return el;
  }

  function append(el, kids) {
    for (const kid of kids) {
      if (kid === null || kid === undefined || kid === false) continue;
      if (Array.isArray(kid)) append(el, kid);
      else if (kid instanceof Node) el.appendChild(kid);
      else el.appendChild(document.createTextNode(String(kid)));
    }
    return el;
  }

  /* Server-rendered markdown (a field ending `_html`) — the one place markup
   * enters a page. The server escapes raw HTML and defangs links. */
  function md(html, cls) {
    const el = document.createElement("div");
    el.className = "md" + (cls ? " " + cls : "");
    el.innerHTML = typeof html === "string" ? html : "";
    return el;
  }

  /* Plain text in a markdown-looking block, for bodies without an _html twin. */
  function plain(text, cls) {
    return h("div", {class: "md plain" + (cls ? " " + cls : "")}, h("p", {class: "pre-wrap"}, text || ""));
  }

  function clear(el) {
    while (el.firstChild) el.removeChild(el.firstChild);
    return el;
  }

  /* Wrap a long body so it shows ~8 lines with a "more" toggle. Decided from
   * the raw text so it needs no layout measurement. */
  function clampable(node, rawText, bg) {
    const text = rawText || "";
    const lines = text.split("\n").length;
    if (lines <= 9 && text.length <= 900) return node;
    node.classList.add("clamp");
    if (bg) node.style.setProperty("--clamp-bg", bg);
    const btn = h("button", {type: "button", class: "clamp-toggle", text: "show more"});
    btn.addEventListener("click", (e) => {
      e.stopPropagation();
      const open = node.classList.toggle("clamp");
      btn.textContent = open ? "show more" : "show less";
    });
    return h("div", {class: "clamp-wrap"}, node, btn);
  }

  // ------------------------------------------------------------- network

  /* The session's key: handed over once in the login redirect's fragment (#hive-key=…), kept in
   * this origin's storage, and sent with every data request. The cookie alone opens only the
   * pages' shells: cookies ignore ports, so a link to another port of this host would carry it
   * along, while storage stays with this exact origin (docs/web.md, "Who can reach the dashboard"). */
  const KEY_STORE = "hive.key";
  (function takeKey() {
    const found = /(?:^#|&)hive-key=([A-Za-z0-9_-]+)/.exec(location.hash);
    if (!found) return;
    try { localStorage.setItem(KEY_STORE, found[1]); } catch (_) { /* storage off: requests will say so */ }
    history.replaceState(null, "", location.pathname + location.search);
  })();

  function key() {
    try { return localStorage.getItem(KEY_STORE) || ""; } catch (_) { return ""; }
  }

  /* An event stream's URL with the key (EventSource cannot send a header). */
  function streamUrl(url) {
    return url + (url.includes("?") ? "&" : "?") + "key=" + encodeURIComponent(key());
  }

  /* The error sentence of a failed response: the wire's `error`, else the status text. */
  async function errorOf(res) {
    try {
      const data = await res.json();
      if (data && typeof data.error === "string" && data.error) return data.error;
    } catch (_) { /* not JSON: fall through */ }
    return res.statusText || `the server answered ${res.status}`;
  }

  async function getJSON(url) {
    let res;
    try {
      res = await fetch(url, {credentials: "same-origin", cache: "no-store",
        headers: {Accept: "application/json", "X-Hive-Key": key()}});
    } catch (e) {
      throw new Error(`could not reach ${url}: ${e.message}`);
    }
    if (!res.ok) throw new Error(await errorOf(res));
    return res.json();
  }

  /* Every action: a JSON POST. The page never changes from the answer (the
   * event the action causes does that); only a failure is shown — inline in
   * `errorEl` when given, else as a toast. Resolves to {ok, data, error}. */
  async function post(url, body, opts) {
    const o = opts || {};
    const btn = o.button;
    if (btn) { btn.disabled = true; btn.setAttribute("aria-busy", "true"); }
    showError(o.errorEl, null);
    let res;
    try {
      res = await fetch(url, {
        method: "POST",
        credentials: "same-origin",
        headers: {"Content-Type": "application/json", Accept: "application/json", "X-Hive-Key": key()},
        body: JSON.stringify(body || {}),
      });
    } catch (e) {
      const msg = `could not reach the server: ${e.message}`;
      report(msg, o.errorEl);
      return {ok: false, error: msg};
    } finally {
      if (btn) { btn.disabled = false; btn.removeAttribute("aria-busy"); }
    }
    if (!res.ok) {
      const msg = await errorOf(res);
      report(msg, o.errorEl);
      return {ok: false, error: msg};
    }
    let data = null;
    try { data = await res.json(); } catch (_) { /* 200 with an empty or text body is still ok */ }
    // done, but a step after it failed (the wire's `warnings`): said, never hidden
    for (const warning of (data && Array.isArray(data.warnings)) ? data.warnings : []) {
      toast(`done, but ${warning}`, "warn");
    }
    return {ok: true, data};
  }

  function report(msg, errorEl) {
    if (errorEl) showError(errorEl, msg);
    else toast(msg, "error");
  }

  function showError(el, msg) {
    if (!el) return;
    el.textContent = msg || "";
    el.hidden = !msg;
  }

  // -------------------------------------------------------------- toasts

  let toastBox = null;

  function toast(msg, kind, ms) {
    if (!toastBox) {
      toastBox = h("div", {class: "toasts", role: "status", "aria-live": "polite"});
      document.body.appendChild(toastBox);
    }
    const close = h("button", {type: "button", "aria-label": "dismiss", text: "✕"});
    const t = h("div", {class: ["toast", kind || "info"], role: kind === "error" ? "alert" : null},
      h("span", {class: "toast-text"}, msg), close);
    const remove = () => t.remove();
    close.addEventListener("click", remove);
    toastBox.appendChild(t);
    if (ms !== 0) setTimeout(remove, ms || (kind === "error" ? 10000 : 5000));  // 0: until dismissed
    while (toastBox.children.length > 5) toastBox.firstChild.remove();
    return t;
  }

  // ---------------------------------------------------------------- time

  /* Milliseconds since the epoch from an ISO string, unix seconds or unix ms. */
  function toMs(v) {
    if (v === null || v === undefined || v === "") return null;
    if (typeof v === "number") return v < 1e12 ? v * 1000 : v;
    const n = Number(v);
    if (!Number.isNaN(n)) return toMs(n);
    const t = Date.parse(v);
    return Number.isNaN(t) ? null : t;
  }

  function duration(sec) {
    sec = Math.max(0, Math.floor(sec));
    if (sec < 60) return `${sec}s`;
    const m = Math.floor(sec / 60), s = sec % 60;
    if (m < 60) return `${m}m ${String(s).padStart(2, "0")}s`;
    const hr = Math.floor(m / 60), mm = m % 60;
    if (hr < 48) return `${hr}h ${String(mm).padStart(2, "0")}m`;
    return `${Math.floor(hr / 24)}d ${hr % 24}h`;
  }

  function ago(ms, now) {
    if (ms == null) return "never";
    const sec = Math.round(((now || Date.now()) - ms) / 1000);
    if (sec < -5) return "in " + until(ms, now);
    if (sec < 5) return "just now";
    if (sec < 60) return `${sec}s ago`;
    const m = Math.floor(sec / 60);
    if (m < 60) return `${m}m ago`;
    const hr = Math.floor(m / 60);
    if (hr < 48) return `${hr}h ago`;
    return `${Math.floor(hr / 24)}d ago`;
  }

  function until(ms, now) {
    const sec = Math.round((ms - (now || Date.now())) / 1000);
    if (sec <= 0) return "now";
    if (sec < 60) return `${sec}s`;
    const m = Math.round(sec / 60);
    if (m < 60) return `${m}m`;
    return `${Math.round(m / 60)}h`;
  }

  function clock(ms) {
    const d = new Date(ms);
    const p = (n) => String(n).padStart(2, "0");
    return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  }

  function stamp(ms) {
    return ms == null ? "" : new Date(ms).toLocaleString();
  }

  /* A live "3m ago" label: the shared clock refreshes every [data-ago]. */
  function agoEl(v, extra) {
    const ms = toMs(v);
    return h("time", {class: ["ago", extra], data: {ago: ms == null ? "" : ms},
      datetime: ms == null ? null : new Date(ms).toISOString(), title: stamp(ms)}, ago(ms));
  }

  /* A live elapsed timer ("12s", "3m 04s") counting from `v`. */
  function elapsedEl(v, extra) {
    const ms = toMs(v);
    return h("span", {class: ["elapsed", extra], data: {elapsed: ms == null ? "" : ms}, title: stamp(ms)},
      ms == null ? "" : duration((Date.now() - ms) / 1000));
  }

  /* The one clock: labels change, the server is never asked anything. */
  function tick() {
    const now = Date.now();
    for (const el of document.querySelectorAll("[data-ago]")) {
      const ms = el.dataset.ago === "" ? null : Number(el.dataset.ago);
      const text = el.dataset.agoPrefix ? el.dataset.agoPrefix + ago(ms, now) : ago(ms, now);
      if (el.textContent !== text) el.textContent = text;
    }
    for (const el of document.querySelectorAll("[data-elapsed]")) {
      if (el.dataset.elapsed === "") continue;
      const text = duration((now - Number(el.dataset.elapsed)) / 1000);
      if (el.textContent !== text) el.textContent = text;
    }
    for (const el of document.querySelectorAll("[data-until]")) {
      const text = "expires in " + until(Number(el.dataset.until), now);
      if (el.textContent !== text) el.textContent = text;
    }
  }
  setInterval(tick, 1000);

  // --------------------------------------------------------------- numbers

  function tokens(n) {
    if (n === null || n === undefined || Number.isNaN(Number(n))) return "–";
    n = Number(n);
    if (Math.abs(n) < 1000) return String(Math.round(n));
    if (Math.abs(n) < 1e6) return (n / 1000).toFixed(n < 1e4 ? 1 : 0).replace(/\.0$/, "") + "k";
    return (n / 1e6).toFixed(n < 1e7 ? 2 : 1).replace(/\.?0+$/, "") + "M";
  }

  function shortSha(sha) {
    return sha ? String(sha).slice(0, 8) : "";
  }

  /* A size for people: "812 B", "4.2 KiB", "1.3 MiB". */
  function bytes(n) {
    n = Number(n);
    if (!Number.isFinite(n) || n < 0) return "? B";
    if (n < 1024) return `${n} B`;
    const units = ["KiB", "MiB", "GiB", "TiB"];
    let i = -1;
    do { n /= 1024; i++; } while (n >= 1024 && i < units.length - 1);
    return `${n.toFixed(n < 10 ? 1 : 0).replace(/\.0$/, "")} ${units[i]}`;
  }

  // ------------------------------------------------------- file references

  const PREVIEW_KIB = 64; // how much of a file the servers send (hyperhive/reach.py PREVIEW_BYTES)

  /* The files a message names, each a collapsed preview "▤ path · size".
   * A preview is fetched the first time it is opened, never before: a page
   * shows many messages and most previews are never looked at. `urlOf(ref,
   * index)` says where the server answers {path, size, truncated, binary, text}. */
  function fileRefs(refs, urlOf) {
    if (!Array.isArray(refs) || !refs.length) return null;
    return h("div", {class: "refs"}, refs.map((ref, i) => fileRef(ref, urlOf(ref, i))));
  }

  function fileRef(ref, url) {
    const path = ref && typeof ref.path === "string" ? ref.path : String(ref);
    const size = ref && typeof ref.size === "number" ? ref.size : null;
    const host = ref && typeof ref.host_path === "string" && ref.host_path !== path ? ref.host_path : null;
    const body = h("div", {class: "fref-body"});
    const el = h("details", {class: "fref", data: {path, state: "unopened"}},
      h("summary", {title: host ? `${path}\non the host: ${host}` : path},
        h("span", {class: "fref-icon", "aria-hidden": "true"}, "▤"),
        // the name never shrinks: a long directory is what gives way to the ellipsis
        h("span", {class: "fref-path"}, h("span", {class: "fref-dir"}, path.slice(0, path.lastIndexOf("/") + 1)),
          h("span", {class: "fref-name"}, path.slice(path.lastIndexOf("/") + 1))),
        size === null ? null : h("span", {class: "fref-size"}, "· " + bytes(size))),
      body);
    el.addEventListener("toggle", () => {
      // loaded once; a failed load is asked again when the preview is next opened
      if (!el.open || el.dataset.state === "loading" || el.dataset.state === "loaded") return;
      el.dataset.state = "loading";
      body.replaceChildren(h("p", {class: "fref-note"}, "loading…"));
      getJSON(url).then((data) => {
        body.replaceChildren(...previewEls(data || {}));
        el.dataset.state = "loaded";
      }, (err) => {
        body.replaceChildren(h("p", {class: "inline-error fref-error", role: "alert"}, err.message));
        el.dataset.state = "error";
      });
    });
    return el;
  }

  function previewEls(p) {
    if (p.binary) return [h("p", {class: "fref-note"}, `binary file, ${p.size} bytes`)];
    const out = [];
    if (p.truncated) out.push(h("p", {class: "fref-note"}, `first ${PREVIEW_KIB} KiB of ${bytes(p.size)}`));
    if (!p.text) out.push(h("p", {class: "fref-note"}, "empty file"));
    else out.push(h("pre", {class: "fref-text"}, p.text)); // a text node: a file is never markup
    return out;
  }

  // ---------------------------------------------------------------- names

  /* A stable colour class per agent name (operator honey, manager teal). */
  function nameClass(name) {
    if (name === "operator") return "nm nm-op";
    if (name === "manager") return "nm nm-mgr";
    let hsh = 0;
    for (const ch of String(name || "")) hsh = (hsh * 31 + ch.codePointAt(0)) >>> 0;
    return "nm nm-" + (hsh % 6);
  }

  function nameEl(name) {
    return h("span", {class: nameClass(name)}, name || "?");
  }

  // ---------------------------------------------------------------- diffs

  const DIFF_MAX_LINES = 1500;

  function diffClass(line) {
    if (line.startsWith("diff --git") || line.startsWith("index ") || line.startsWith("--- ") ||
        line.startsWith("+++ ") || line === "---" || line === "+++" || line.startsWith("new file mode") ||
        line.startsWith("deleted file mode") || line.startsWith("similarity index") ||
        line.startsWith("rename from") || line.startsWith("rename to") || line.startsWith("Binary files")) {
      return "d-hdr";
    }
    if (line.startsWith("@@")) return "d-hunk";
    if (line.startsWith("+")) return "d-add";
    if (line.startsWith("-")) return "d-del";
    return "d-ctx";
  }

  /* A unified diff as coloured lines: + green, - red, @@ teal, headers grey. */
  function diffEl(text, maxLines) {
    const lines = String(text || "").replace(/\n$/, "").split("\n");
    return diffLinesEl(lines.map((l) => [diffClass(l), l]), maxLines);
  }

  /* Pre-classified lines [[cls, text], …] (used for Write/Edit previews). */
  function diffLinesEl(pairs, maxLines) {
    const max = maxLines || DIFF_MAX_LINES;
    const pre = h("pre", {class: "diff"});
    for (const [cls, text] of pairs.slice(0, max)) pre.appendChild(h("span", {class: cls}, text));
    if (pairs.length > max) pre.appendChild(h("span", {class: "d-more"}, `… ${pairs.length - max} more lines`));
    return pre;
  }

  function diffStats(text) {
    let add = 0, del = 0, files = 0;
    for (const l of String(text || "").split("\n")) {
      if (l.startsWith("diff --git")) files++;
      else if (l.startsWith("+++") || l.startsWith("---")) continue;
      else if (l.startsWith("+")) add++;
      else if (l.startsWith("-")) del++;
    }
    return {add, del, files};
  }

  // ------------------------------------------------------------ tool calls

  /* A tool call an agent's permission policy asked the operator about (an approval of kind tool_use), as
   * a card: whose, which tool, the ask rule it matched, and its input as pretty JSON in a <pre> (a text
   * node: the input is the agent's, never markup). The three answers go to the core's own routes as the
   * operator, from the dashboard and the agent's page alike: allow once (/approve), always allow (/approve
   * {always}: the call runs and the manager is asked to allow the rule for good) and deny with a reason
   * (/deny, the reason reaches the model). The page redraws from the event the decision causes; the
   * card's .item-actions and .deny-form are what a resolved card hides. */
  function toolCallCard(a) {
    const id = encodeURIComponent(a.id);
    const errorEl = h("p", {class: "inline-error", role: "alert", hidden: true});
    const once = h("button", {type: "button", class: "btn btn-sm btn-primary", data: {action: "allow-once"},
      title: "run this one call"}, "✓ allow once");
    const always = h("button", {type: "button", class: "btn btn-sm btn-teal", data: {action: "always-allow"},
      disabled: !a.rule, title: a.rule
        ? `run it, and ask the manager to add ${a.rule} to ${a.agent}'s permissions.allow (a config change you approve)`
        : "no ask rule matched this call: allow it once"}, "✓ always allow");
    const deny = h("button", {type: "button", class: "btn btn-sm btn-danger", data: {action: "deny"}}, "✗ deny…");
    const reason = h("input", {type: "text", name: "reason", placeholder: "why? (the agent's model is told)",
      "aria-label": "reason for denying", data: {test: "deny-reason"}});
    const denyForm = h("form", {class: "deny-form", hidden: true},
      reason,
      h("button", {type: "submit", class: "btn btn-sm btn-danger", data: {action: "deny-confirm"}}, "deny"),
      h("button", {type: "button", class: "btn btn-sm btn-ghost", data: {action: "deny-cancel"}}, "cancel"));
    once.addEventListener("click", () => post(`/approve/${id}`, {}, {button: once, errorEl}));
    always.addEventListener("click", () => post(`/approve/${id}`, {always: true}, {button: always, errorEl}));
    deny.addEventListener("click", () => { denyForm.hidden = false; reason.focus(); });
    denyForm.addEventListener("submit", (e) => {
      e.preventDefault();
      post(`/deny/${id}`, {reason: reason.value.trim()}, {button: denyForm.querySelector("[type=submit]"), errorEl});
    });
    const hide = () => { denyForm.hidden = true; deny.focus(); };
    denyForm.querySelector('[data-action="deny-cancel"]').addEventListener("click", hide);
    reason.addEventListener("keydown", (e) => { if (e.key === "Escape") hide(); });
    let input;
    try { input = JSON.stringify(a.input, null, 2); } catch (_) { input = String(a.input); }
    return h("article", {class: ["item", "approval", "tool-call"], data: {approval: a.id, status: a.status || "pending",
      kind: "tool_use"}, "aria-label": `tool call ${a.id}: ${a.tool} for ${a.agent}`},
    h("div", {class: "item-head"},
      h("span", {class: "id"}, "#" + a.id), h("span", {class: "chip honey"}, "tool call"), nameEl(a.agent),
      agoEl(a.requested_at)),
    h("p", {class: "tool-line"}, h("code", {class: "tool-name"}, a.tool || "?"),
      a.rule ? [" matched ", h("code", {class: "tool-rule"}, a.rule)] : " (matched no ask rule)"),
    h("pre", {class: "tool-input", "aria-label": `the input of ${a.tool || "the call"}`}, input === undefined ? "" : input),
    h("div", {class: "item-actions"}, once, always, deny),
    denyForm, errorEl);
  }

  // --------------------------------------------------------------- storage

  function load(key, fallback) {
    try {
      const v = localStorage.getItem(key);
      return v === null ? fallback : v;
    } catch (_) { return fallback; }
  }

  function save(key, value) {
    try {
      if (value === null || value === undefined) localStorage.removeItem(key);
      else localStorage.setItem(key, String(value));
    } catch (_) { /* private mode: remembering is best effort */ }
  }

  // ------------------------------------------------------------ the core down

  /* Asked when a page's stream fails: does the core answer at all? No HTTP answer (the fetch itself
   * fails) is the core down: the whole page greys (body.core-down) under a banner saying what to do,
   * until its stream is live again (setLive). Resolves to the Response, or null. */
  async function probe(url) {
    let res = null;
    try {
      res = await fetch(url, {credentials: "same-origin", cache: "no-store",
        headers: {Accept: "application/json", "X-Hive-Key": key()}});
    } catch (_) {
      res = null; // no answer: that is what we asked
    }
    setCoreDown(res === null);
    return res;
  }

  function setCoreDown(isDown) {
    document.body.classList.toggle("core-down", isDown);
    let banner = document.getElementById("core-down");
    if (isDown && !banner) {
      banner = h("div", {id: "core-down", class: "core-down-banner", role: "alert"},
        h("b", {}, "The hyperhive core does not answer"), ` at ${location.host}: it is stopped or restarting. ` +
        "Start it on the hive's host (its service ", h("code", {}, "hive-c0re"), ", or ", h("code", {}, "hyperhive serve"),
        "); this page reconnects by itself.");
      document.body.prepend(banner);
    }
    if (banner) banner.hidden = !isDown;
    const word = isDown ? document.querySelector("#live .live-text") : null;
    if (word) word.textContent = "core down";
  }

  /* The live indicator (#live): a dot and a word; data-live for tests. */
  function setLive(el, live, what, why) {
    if (live) setCoreDown(false);
    if (!el) return;
    el.dataset.live = live ? "true" : "false";
    const text = el.querySelector(".live-text");
    if (text) text.textContent = live ? (what || "live") : "reconnecting…";
    el.title = live ? "the event stream is connected"
      : `the event stream is down; reconnecting${why && why !== "stream error" ? ` (${why})` : ""}`;
  }

  window.Hive = {
    h, append, md, plain, clear, clampable,
    errorOf, getJSON, post, showError, toast, streamUrl, key,
    toMs, duration, ago, until, clock, stamp, agoEl, elapsedEl, tick,
    tokens, shortSha, bytes, fileRefs, nameClass, nameEl,
    diffClass, diffEl, diffLinesEl, diffStats, toolCallCard,
    load, save, setLive, probe,
  };
})();
