/* hyperhive — one agent's page, served at /agent/<name>/ (so every URL here
 * is relative).
 *
 * The terminal's snapshot is api/state (the state row, the inbox) plus
 * events/history after the newest seq shown; then events/stream moves
 * everything. Rows are keyed by seq. Claude's stream-json lines are drawn
 * as prose, tool calls (collapsible, their result folded in when it
 * arrives), and small grey system/result lines; anything this page does not
 * know is shown raw in the warning colour, never dropped. A sub-agent (the
 * Agent/Task tool) is one ⌁ row holding its own lines (those carrying
 * `parent_tool_use_id`), and its end is another ⌁ row.
 */
(function () {
  "use strict";

  const H = window.Hive;
  const {h, md, plain, post, getJSON, toMs, nameEl} = H;
  const $ = (sel) => document.querySelector(sel);

  const CATCHUP = 1000;        // events a reconnect splices in; more than that starts afresh
  const OLDER_PAGE = 200;
  const OPEN_TOOLS = new Set(["send", "ask", "answer", "recv"]); // message tools start open
  const MSG_TOOLS = new Set(["send", "ask", "answer"]);          // their body is markdown (input_html)
  const TEXT_MAX = 20000;      // characters of a tool result drawn before "… N more"
  const MAP_MAX = 4000;        // tool_use ids remembered for folding results in

  const state = {
    seq: 0, name: null, role: null, rev: null, status: null,
    turnState: "idle", turnSince: null, model: null, models: [],
    ctx: null, cost: null, armed: false, statusText: null, statusSetAt: null,
    inbox: [], looseEnds: [],
  };

  let term = null;

  // ============================================================ state row

  const STATUS_WORDS = {  // every login status but online (states.LOGIN_STATUSES)
    needs_login_idle: "needs login",
    needs_login_in_progress: "logging in…",
    claude_missing: "claude not found",
  };

  function applyState(st) {
    state.seq = st.seq;
    state.name = st.name || state.name;
    state.role = st.role || state.role;
    state.rev = st.rev || state.rev;
    state.status = st.status === undefined ? state.status : st.status;
    state.turnState = st.turn_state || "idle";
    state.turnSince = st.turn_state_since === undefined ? state.turnSince : st.turn_state_since;
    state.model = st.model || state.model;
    state.models = Array.isArray(st.models) ? st.models : state.models;
    state.ctx = st.ctx === undefined ? state.ctx : st.ctx;
    state.cost = st.cost === undefined ? state.cost : st.cost;
    state.armed = !!st.new_session_armed;
    state.claude = st.claude_process || null;
    if (st.status_text !== undefined) {
      state.statusText = st.status_text;
      state.statusSetAt = st.status_set_at;
    }
    state.inbox = Array.isArray(st.inbox) ? st.inbox : [];
    paintState();
    renderInbox();
  }

  /* The engine's process: a session's long-lived claude (pid, age, turns, memory), or the spawn mode. */
  function paintClaude() {
    const chip = $("#claude-chip");
    const c = state.claude;
    chip.hidden = !c;
    if (!c) return;
    chip.dataset.mode = c.mode;
    chip.dataset.pid = c.pid === null || c.pid === undefined ? "" : String(c.pid);
    if (c.mode !== "session") {
      chip.textContent = "claude per turn";
      chip.title = "spawn mode: one claude process per turn";
      return;
    }
    if (!c.pid) {
      chip.textContent = "claude not running";
      chip.title = "the session's claude starts with the next turn (or once claude's login is there)";
      return;
    }
    const started = toMs(c.started_at);
    const age = started === null ? "" : ` · up ${H.duration((Date.now() - started) / 1000)}`;
    const mib = c.rss_bytes ? ` · ${Math.round(c.rss_bytes / 1048576)} MiB` : "";
    chip.textContent = `claude ${c.pid}${age} · ${c.turns} turn${c.turns === 1 ? "" : "s"}${mib}`;
    chip.title = `claude's long-lived process, pid ${c.pid}; replaced between turns after ${c.recycle_turns} turns, ` +
      `above ${c.recycle_rss_mb} MiB or after ${H.duration(c.recycle_idle_seconds)} idle (${c.recycled} so far); ` +
      `a turn silent for ${H.duration(c.hang_seconds)} is ended as hung`;
  }

  function paintState() {
    const name = state.name || "agent";
    $("#agent-name").textContent = name;
    $("#role-chip").hidden = state.role !== "manager";
    if (state.rev) $("#rev").textContent = state.rev;
    document.title = `${state.turnState === "thinking" ? "⋯ " : ""}${name} · hyperhive`;

    const ts = $("#turn-state");
    ts.dataset.state = state.turnState;
    ts.querySelector(".ts-word").textContent = state.turnState;
    const time = ts.querySelector(".ts-time");
    const since = toMs(state.turnSince);
    time.dataset.elapsed = since === null ? "" : String(since);
    time.textContent = since === null ? "" : H.duration((Date.now() - since) / 1000);
    ts.title = since === null ? state.turnState : `${state.turnState} since ${H.stamp(since)}`;

    const status = $("#status-chip");
    const word = state.status && state.status !== "online" ? (STATUS_WORDS[state.status] || state.status.replace(/_/g, " ")) : "";
    status.hidden = !word;
    status.textContent = word;
    // login.js (loaded after this file) shows its panel from this
    document.dispatchEvent(new CustomEvent("hive:status", {detail: state.status}));

    const line = $("#status-line");
    line.hidden = !state.statusText;
    line.textContent = state.statusText || "";
    line.title = state.statusSetAt ? `its status, set ${H.stamp(state.statusSetAt)}` : "its status";

    $("#model-chip").textContent = state.model || "–";
    paintClaude();
    const input = $("#model-input");
    input.placeholder = state.model || "model";
    $("#model-list").replaceChildren(...(state.models || []).map((m) => h("option", {value: m})));

    $("#ctx-badge").textContent = `${H.tokens(state.ctx)} ctx`;
    const cost = state.cost;
    const badge = $("#cost-badge");
    if (cost && typeof cost === "object") {
      const total = cost.total !== undefined ? cost.total
        : ["input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"].reduce((s, k) => s + (Number(cost[k]) || 0), 0);
      badge.textContent = `${H.tokens(total)} tok`;
      badge.title = "tokens of the last turn\n" +
        `input ${fmtInt(cost.input_tokens)}\noutput ${fmtInt(cost.output_tokens)}\n` +
        `cache read ${fmtInt(cost.cache_read_input_tokens)}\ncache creation ${fmtInt(cost.cache_creation_input_tokens)}`;
    } else {
      badge.textContent = "– tok";
      badge.title = "tokens of the last turn (none yet)";
    }
    $("#armed-chip").hidden = !state.armed;
  }

  function fmtInt(n) {
    return n === null || n === undefined ? "–" : Number(n).toLocaleString();
  }

  function onEvent(ev, ctx) {
    switch (ev.kind) {
      case "turn_state_changed":
        state.turnState = ev.state || "idle";
        state.turnSince = ev.since_unix === undefined ? Date.now() : ev.since_unix;
        paintState();
        break;
      case "model_changed":
        state.model = ev.model;
        paintState();
        break;
      case "token_usage_changed":
        state.ctx = ev.ctx;
        state.cost = ev.cost;
        paintState();
        break;
      case "status_text_changed":
        state.statusText = ev.text;
        state.statusSetAt = ev.set_at;
        paintState();
        break;
      case "status_changed":
        state.status = ev.status;
        paintState();
        break;
      case "turn_start":
        if (ctx.live) {
          state.armed = false; // the armed fresh session is this turn
          paintState();
        }
        break;
      case "turn_end":
        if (ctx.live) scheduleRefresh(true);
        break;
      default:
        break;
    }
  }

  // ============================================================ rows

  function row(cls, pfx, at, ...body) {
    return h("div", {class: ["trow"].concat(cls)},
      h("span", {class: "pfx", title: at ? H.stamp(at) : null, "aria-hidden": "true"}, pfx),
      h("div", {class: "body"}, body));
  }

  function group(nodes, cls) {
    const list = nodes.filter(Boolean);
    if (!list.length) return null;
    if (list.length === 1 && !cls) return list[0];
    return h("div", {class: ["tgroup", cls]}, list);
  }

  function json(v, max) {
    let s;
    try { s = JSON.stringify(v); } catch (_) { s = String(v); }
    return max && s.length > max ? s.slice(0, max) + ` … (${s.length - max} more)` : s;
  }

  function rawRow(ev, why, obj) {
    return row("raw warn", "?", ev.at, `${why}: ${json(obj === undefined ? ev : obj, 6000)}`);
  }

  function firstLine(s, max) {
    const line = String(s === null || s === undefined ? "" : s).split("\n")[0];
    const m = max || 120;
    return line.length > m ? line.slice(0, m) + "…" : line;
  }

  // turn durations: the turn_end row says how long since its turn_start
  const turnStarts = {live: null, older: null};

  function render(ev, ctx) {
    switch (ev.kind) {
      case "turn_start": return turnStartRow(ev, ctx);
      case "turn_end": return turnEndRow(ev, ctx);
      case "stream": return streamRows(ev);
      case "note": return noteRow(ev);
      case "turn_state_changed":
        if (ev.state === "compacting") return row("dim", "⇣", ev.at, "compacting the session…");
        if (ev.state === "paused") return row("dim", "‖", ev.at, "paused: the turn loop is parked");
        return null;
      case "model_changed":
        return row("dim", "∙", ev.at, "model → ", h("span", {class: "mono"}, ev.model || "?"));
      case "status_changed":
        return row(ev.status === "online" ? "dim" : "warn", "∙", ev.at, `status → ${STATUS_WORDS[ev.status] || ev.status}`);
      case "status_text_changed":
        return row("dim", "∙", ev.at, ev.text ? `status line → ${ev.text}` : "status line cleared");
      case "token_usage_changed":
        return null; // the badges show it
      default:
        return rawRow(ev, `unknown event ${ev.kind}`);
    }
  }

  function turnStartRow(ev, ctx) {
    const slot = ctx.source === "older" ? "older" : "live";
    turnStarts[slot] = ev;
    const body = typeof ev.body_html === "string" ? md(ev.body_html) : plain(ev.body);
    const n = Array.isArray(ev.ids) ? ev.ids.length : 0;
    return row("turn-start", "▶", ev.at,
      h("span", {class: "rtime", title: H.stamp(ev.at)}, ev.at ? H.clock(ev.at) : ""),
      h("span", {class: "lead"}, "from ", nameEl(ev.from)),
      n > 1 ? h("span", {class: "tag"}, `${n} messages`) : null,
      ev.unread > 0 ? h("span", {class: "tag"}, `${ev.unread} more unread`) : null,
      ev.redelivered ? h("span", {class: "tag warn", title: "a turn failed on it before"}, "↺ redelivered") : null,
      H.clampable(body, ev.body), fileRefs(ev.file_refs));
  }

  /* File references, previewed through this page (the files this agent may reach, checked on reading). */
  function fileRefs(refs) {
    return H.fileRefs(refs, (ref) => `api/file?path=${encodeURIComponent(ref.path)}`);
  }

  function turnEndRow(ev, ctx) {
    const slot = ctx.source === "older" ? "older" : "live";
    const start = turnStarts[slot];
    const took = start && start.seq < ev.seq && ev.at && start.at ? H.duration((ev.at - start.at) / 1000) : null;
    turnStarts[slot] = null;
    const ok = !!ev.ok;
    const cancelled = ev.outcome === "cancelled";
    const outcome = ev.outcome && ev.outcome !== "ok" && !cancelled ? ev.outcome : null;
    const ids = Array.isArray(ev.ids) ? ev.ids.filter((i) => Number.isInteger(i)) : [];
    return row(["turn-end", ok ? "ok" : cancelled ? "cancelled" : "fail"], ok ? "■" : "✗", ev.at,
      h("span", {class: "lead"}, ok ? "turn done" : cancelled ? "turn cancelled" : "turn failed"),
      took ? h("span", {class: "meta"}, took) : null,
      outcome ? h("span", {class: "meta"}, outcome) : null,
      ev.note ? h("span", {class: "meta"}, `— ${ev.note}`) : null,
      cancelled && ids.length ? retryButton(ids) : null);
  }

  /* A cancelled turn's messages are handled as cancelled; the operator may queue them again on purpose. */
  function retryButton(ids) {
    const btn = h("button", {type: "button", class: "retry", title: `queue ${ids.map((i) => "#" + i).join(", ")} again`},
      "retry");
    btn.addEventListener("click", async () => {
      const r = await post("api/retry", {ids}, {button: btn});
      if (r.ok) { btn.disabled = true; btn.textContent = "queued again"; }
    });
    return btn;
  }

  function noteRow(ev) {
    const text = ev.text === undefined ? "" : String(ev.text);
    switch (ev.stream) {
      case "stderr": return row("note note-stderr", "!", ev.at, text);
      case "operator": return row("note note-operator", "»", ev.at, text);
      case "stdout": return row("note note-stdout", "·", ev.at, text);
      default: return row("note dim", "·", ev.at, text);
    }
  }

  // ------------------------------------------------------- stream-json

  function streamRows(ev) {
    const line = ev.line;
    if (!line || typeof line !== "object") return rawRow(ev, "stream line");
    let node;
    switch (line.type) {
      case "assistant": node = assistantRows(ev, line); break;
      case "user": node = userRows(ev, line); break;
      case "system": node = systemRow(ev, line); break;
      case "result": node = resultRows(ev, line); break;
      default: return rawRow(ev, `stream ${line.type || "line"}`, line);
    }
    // a sub-agent's (Task) traffic goes into its ⌁ row, not the session's flow
    if (node && line.parent_tool_use_id) return nestUnder(ev, line, String(line.parent_tool_use_id), node);
    return node;
  }

  function assistantRows(ev, line) {
    const msg = line.message || {};
    const content = msg.content;
    const out = [];
    if (line.error) out.push(row("warn", "!", ev.at, `assistant error: ${typeof line.error === "string" ? line.error : json(line.error)}`));
    if (typeof content === "string") {
      if (content.trim()) out.push(row("say", "◆", ev.at, plain(content)));
    } else if (Array.isArray(content)) {
      for (const b of content) out.push(assistantBlock(ev, b));
    } else if (!line.error) {
      return rawRow(ev, "assistant line", line);
    }
    return group(out);
  }

  function assistantBlock(ev, b) {
    if (!b || typeof b !== "object") return rawRow(ev, "assistant block", b);
    switch (b.type) {
      case "text":
        if (!b.text || !String(b.text).trim()) return null;
        return row("say", "◆", ev.at, typeof b.html === "string" ? md(b.html) : plain(b.text));
      case "tool_use":
      case "server_tool_use":
        return toolRow(b);
      case "thinking": {
        const text = b.thinking || "";
        return h("details", {class: "trow thinking"},
          h("summary", {}, h("span", {class: "pfx"}), h("span", {}, "thinking · " + firstLine(text, 90))),
          h("div", {class: "detail"}, text));
      }
      case "redacted_thinking":
        return row("dim", "∙", ev.at, "thinking (redacted)");
      default:
        return rawRow(ev, `assistant block ${b.type}`, b);
    }
  }

  function userRows(ev, line) {
    const content = line.message && line.message.content;
    if (typeof content === "string") return row("dim", "∙", ev.at, firstLine(content, 400));
    if (!Array.isArray(content)) return rawRow(ev, "user line", line);
    const out = [];
    for (const b of content) {
      if (b && b.type === "tool_result") out.push(attachResult(b, ev));
      else if (b && b.type === "text") out.push(row("dim", "∙", ev.at, b.text || ""));
      else out.push(rawRow(ev, `user block ${b && b.type}`, b));
    }
    return group(out);
  }

  function systemRow(ev, line) {
    const sub = line.subtype || "";
    if (sub === "init") {
      const tools = Array.isArray(line.tools) ? line.tools.length : 0;
      const servers = Array.isArray(line.mcp_servers) ? line.mcp_servers : [];
      const bad = servers.filter((s) => s && s.status && s.status !== "connected");
      return row(bad.length ? "warn" : "dim", "∙", ev.at,
        `session ${String(line.session_id || "").slice(0, 8)}`,
        line.model ? ` · ${line.model}` : "",
        ` · ${tools} tools`,
        servers.length ? ` · mcp ${servers.map((s) => `${s.name}: ${s.status}`).join(", ")}` : "");
    }
    if (sub === "task_started") return taskStarted(ev, line);
    if (sub === "task_notification") return taskNotification(ev, line);
    if (sub === "task_progress" || sub === "task_updated") return taskProgress(ev, line);
    if (sub === "compact_boundary") {
      const meta = line.compact_metadata || {};
      return row("dim", "⇣", ev.at, "session compacted",
        meta.trigger ? ` · ${meta.trigger}` : "",
        meta.pre_tokens ? ` · was ${H.tokens(meta.pre_tokens)} tokens` : "");
    }
    const rest = {};
    for (const [k, v] of Object.entries(line)) {
      if (!["type", "subtype", "session_id", "uuid"].includes(k)) rest[k] = v;
    }
    const detail = Object.keys(rest).length ? " · " + json(rest, 300) : "";
    return row("dim", "∙", ev.at, `system ${sub}${detail}`);
  }

  function resultRows(ev, line) {
    const ok = !line.is_error;
    const bits = [];
    if (line.duration_ms !== undefined) bits.push(H.duration(line.duration_ms / 1000));
    if (line.num_turns !== undefined) bits.push(`${line.num_turns} turn${line.num_turns === 1 ? "" : "s"}`);
    if (line.usage) {
      const u = line.usage;
      const total = ["input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"]
        .reduce((s, k) => s + (Number(u[k]) || 0), 0);
      bits.push(`${H.tokens(total)} tok`);
    }
    if (line.total_cost_usd) bits.push(`$${Number(line.total_cost_usd).toFixed(4)}`);
    const out = [row(ok ? "dim" : "err", "∙", ev.at,
      ok ? "result" : `result: ${line.subtype || "error"}`, bits.length ? " · " + bits.join(" · ") : "",
      !ok && line.result ? h("pre", {class: "out"}, String(line.result).slice(0, TEXT_MAX)) : null)];
    const denied = Array.isArray(line.permission_denials) ? line.permission_denials : [];
    if (denied.length) {
      const names = [...new Set(denied.map((d) => (d && d.tool_name) || "?"))];
      out.push(row("warn", "!", ev.at, `permission denied: ${names.join(", ")}`));
    }
    return group(out);
  }

  // ------------------------------------------------------- sub-agents

  /* A sub-agent of claude's Agent (Task) tool: one ⌁ row, found by the tool_use id of its call (the
   * `parent_tool_use_id` of its lines) or by its task_id, whose flow holds its own lines. */
  const tasks = new Map();
  const TASK_WORDS = {running: "running", completed: "✓ done", failed: "✗ failed", stopped: "stopped", killed: "stopped"};

  function taskOf(...ids) {
    for (const id of ids) {
      const t = id === undefined || id === null ? null : tasks.get(String(id));
      if (t && t.node.isConnected) return t;
    }
    return null;
  }

  function taskRow(ev, id, info) {
    const title = h("span", {class: "task-title"});
    const word = h("span", {class: "task-status"});
    const stats = h("span", {class: "meta task-stats"});
    const flow = h("div", {class: "subflow"});
    const node = h("details", {class: "task", open: true, data: {task: id}},
      h("summary", {class: "trow task-head"}, h("span", {class: "pfx", title: ev.at ? H.stamp(ev.at) : null}, "⌁"),
        h("div", {class: "body"}, h("span", {class: "lead"}, "sub-agent "), title, word, stats)),
      flow);
    const t = {node, flow, title, word, stats, info: {}, prompted: false};
    remember(tasks, id, t);
    updateTask(t, info);
    return t;
  }

  /* What a task line says of it (its strings are text, never markup): the row follows. */
  function updateTask(t, info) {
    for (const [k, v] of Object.entries(info)) if (v !== undefined && v !== null && v !== "") t.info[k] = v;
    const i = t.info;
    if (i.taskId) remember(tasks, String(i.taskId), t);
    t.title.textContent = [i.type, i.description].filter(Boolean).map(String).join(" · ") || "a task";
    const status = String(i.status || "running");
    t.node.dataset.status = status;
    t.word.textContent = TASK_WORDS[status] || status;
    t.stats.textContent = taskStats(i.usage, status === "running" ? i.lastTool : null);
    if (i.prompt && !t.prompted) {
      t.prompted = true;
      const text = String(i.prompt);
      t.flow.prepend(h("details", {class: "trow task-prompt"},
        h("summary", {}, h("span", {class: "pfx"}), h("span", {}, "prompt · " + firstLine(text, 90))),
        h("div", {class: "detail"}, plain(text))));
    }
  }

  function taskStats(usage, lastTool) {
    const u = usage && typeof usage === "object" ? usage : {};
    const bits = [];
    if (u.tool_uses !== undefined) bits.push(`${fmtInt(u.tool_uses)} tool use${Number(u.tool_uses) === 1 ? "" : "s"}`);
    if (u.total_tokens !== undefined) bits.push(`${H.tokens(u.total_tokens)} tok`);
    if (u.duration_ms !== undefined) bits.push(H.duration(Number(u.duration_ms) / 1000));
    if (lastTool) bits.push(`last ${splitTool(lastTool).base}`);
    return bits.join(" · ");
  }

  function taskInfo(line) {
    return {taskId: line.task_id, type: line.subagent_type, description: line.description, prompt: line.prompt,
      status: line.status, usage: line.usage, lastTool: line.last_tool_name};
  }

  function taskStarted(ev, line) {
    const id = line.tool_use_id || line.task_id;
    if (!id) return rawRow(ev, "task_started without an id", line);
    const shown = taskOf(line.tool_use_id, line.task_id);
    if (shown) { // its lines came first and drew it
      updateTask(shown, taskInfo(line));
      return null;
    }
    return taskRow(ev, String(id), taskInfo(line)).node;
  }

  /* A sub-agent's end: its ⌁ row says so, and so does a row of its own (a background one ends much later). */
  function taskNotification(ev, line) {
    const t = taskOf(line.tool_use_id, line.task_id);
    const info = taskInfo(line);
    delete info.description; // `summary` says what it did; the row keeps what it was asked
    if (t) updateTask(t, info);
    const status = String(line.status || "completed");
    const what = t ? t.title.textContent : String(line.summary || line.task_id || "a task");
    return row(["task-end", status === "completed" ? "ok" : "warn"], "⌁", ev.at,
      h("span", {class: "lead"}, `sub-agent ${TASK_WORDS[status] || status}`), " ",
      h("span", {class: "task-title"}, what),
      h("span", {class: "meta"}, taskStats(line.usage)),
      line.summary && String(line.summary) !== what && !what.endsWith(String(line.summary))
        ? plain(String(line.summary)) : null);
  }

  /* Progress moves its row; without one on screen it is a small row of its own. */
  function taskProgress(ev, line) {
    const info = line.subtype === "task_updated" ? patchInfo(line.patch) : taskInfo(line);
    const t = taskOf(line.tool_use_id, line.task_id);
    if (t) {
      if (line.subtype === "task_progress") delete info.description; // what it does now, not its task
      updateTask(t, info);
      return null;
    }
    return row("dim", "⌁", ev.at, `sub-agent ${line.subtype === "task_updated" ? "updated" : "at work"}`,
      line.description ? ` · ${line.description}` : "", info.status ? ` · ${info.status}` : "",
      ` · ${taskStats(info.usage, info.lastTool) || json(line.patch || {}, 300)}`);
  }

  function patchInfo(patch) {
    const p = patch && typeof patch === "object" ? patch : {};
    return {status: p.status, description: p.description};
  }

  /* A sub-agent's own line, into its ⌁ row; without one on screen (its start is older than what is
   * loaded) the line draws one from what it carries. Keyed by seq, so a line is never there twice. */
  function nestUnder(ev, line, parent, node) {
    let t = taskOf(parent);
    let fresh = null;
    if (!t) {
      const call = tools.get(parent);
      t = taskRow(ev, parent, {type: line.subagent_type,
        description: line.task_description || (call && call.input && call.input.description)});
      fresh = t.node;
    }
    const key = String(ev.seq);
    node.dataset.subKey = key;
    const old = t.flow.querySelector(`:scope > [data-sub-key="${CSS.escape(key)}"]`);
    if (old) old.replaceWith(node);
    else {
      // in seq order: "load older" brings a sub-agent's earlier lines after its later ones
      const later = [...t.flow.children].find((c) => c.dataset.subKey !== undefined && Number(c.dataset.subKey) > ev.seq);
      t.flow.insertBefore(node, later || null);
    }
    return fresh;
  }

  // ----------------------------------------------------------- tools

  const tools = new Map();   // tool_use id → {details, result, status}
  const results = new Map(); // tool_use id → its tool_result block (for calls drawn later)

  function remember(map, key, value) {
    map.set(key, value);
    if (map.size > MAP_MAX) map.delete(map.keys().next().value);
  }

  /* mcp__hyperhive__send → {base: "send"}; mcp__other__x → {server: "other", base: "x"} */
  function splitTool(full) {
    const name = String(full || "?");
    if (name.startsWith("mcp__")) {
      const parts = name.slice(5).split("__");
      const base = parts.pop();
      return {base, server: parts.join("__") || null};
    }
    return {base: name, server: null};
  }

  function toolRow(b) {
    const {base, server} = splitTool(b.name);
    const input = b.input && typeof b.input === "object" ? b.input : {};
    const msgTool = MSG_TOOLS.has(base);
    const status = h("span", {class: "tool-status", title: "waiting for the result"}, "…");
    const result = h("div", {class: "tool-result"});
    const nameNode = h("span", {class: "tool-name"},
      server && server !== "hyperhive" ? h("span", {class: "srv"}, server + ":") : null, base);
    const details = h("details", {class: ["trow tool", msgTool && "msg-tool"], data: {toolId: b.id, tool: base},
      open: OPEN_TOOLS.has(base)},
    h("summary", {}, h("span", {class: "pfx"}),
      h("span", {class: "tool-line"}, nameNode, h("span", {class: "tool-gist"}, gist(base, input)), status)),
    h("div", {class: "detail"}, toolBody(base, input, b, msgTool), result));
    const t = {details, result, status, base, input};
    if (b.id) {
      remember(tools, b.id, t);
      const known = results.get(b.id);
      if (known) {
        fillResult(t, known);
        dropOrphan(b.id);
      }
    }
    return details;
  }

  function gist(base, input) {
    const s = (v) => (v === null || v === undefined ? "" : String(v));
    switch (base) {
      case "send": return `→ ${s(input.to) || "?"}  ${firstLine(input.body)}`;
      case "ask": return `${input.to ? "→ " + input.to + "  " : ""}${firstLine(input.question)}`;
      case "answer": return `#${s(input.id)}  ${firstLine(input.answer)}`;
      case "Bash": return firstLine(input.command, 160);
      case "Read": return s(input.file_path) + (input.offset ? ` @${input.offset}` : "") + (input.limit ? ` +${input.limit}` : "");
      case "Write": return `${s(input.file_path)}  (${s(input.content).split("\n").length} lines)`;
      case "Edit": return s(input.file_path) + (input.replace_all ? "  (all)" : "");
      case "MultiEdit": return `${s(input.file_path)}  (${Array.isArray(input.edits) ? input.edits.length : 0} edits)`;
      case "NotebookEdit": return s(input.notebook_path);
      case "Glob": return s(input.pattern) + (input.path ? `  in ${input.path}` : "");
      case "Grep": return `/${s(input.pattern)}/` + (input.path ? `  in ${input.path}` : "") + (input.glob ? `  ${input.glob}` : "");
      case "WebFetch": return s(input.url);
      case "WebSearch": return s(input.query);
      case "Task": case "Agent": return s(input.description || input.subagent_type);
      case "TodoWrite": return `${Array.isArray(input.todos) ? input.todos.length : 0} todos`;
      default: return compactArgs(input);
    }
  }

  function compactArgs(input) {
    const parts = Object.entries(input).map(([k, v]) => {
      const text = typeof v === "string" ? firstLine(v, 50) : json(v, 50);
      return `${k}: ${text}`;
    });
    const all = parts.join(", ");
    return all.length > 160 ? all.slice(0, 160) + "…" : all;
  }

  function toolBody(base, input, b, msgTool) {
    if (msgTool) return messageToolBody(base, input, b);
    switch (base) {
      case "Write": return [meta("file ", mono(input.file_path)), writeDiff(input.content)];
      case "Edit": return [meta("file ", mono(input.file_path), input.replace_all ? " · every occurrence" : ""),
        editDiff(input.old_string, input.new_string)];
      case "MultiEdit": {
        const edits = Array.isArray(input.edits) ? input.edits : [];
        return [meta("file ", mono(input.file_path), ` · ${edits.length} edits`),
          edits.map((e, i) => [h("div", {class: "edit-sep"}, `edit ${i + 1}/${edits.length}${e && e.replace_all ? " · every occurrence" : ""}`),
            editDiff(e && e.old_string, e && e.new_string)])];
      }
      default: return argsList(input);
    }
  }

  function messageToolBody(base, input, b) {
    const field = base === "send" ? "body" : base === "ask" ? "question" : "answer";
    const head = [];
    if (base === "send") head.push("to ", nameEl(input.to));
    if (base === "ask") head.push("to ", nameEl(input.to || "operator"));
    if (base === "answer") head.push(`answering #${input.id === undefined ? "?" : input.id}`);
    const rest = {};
    for (const [k, v] of Object.entries(input)) {
      if (![field, "to", "id"].includes(k)) rest[k] = v;
    }
    const text = input[field];
    return [
      meta(...head),
      typeof b.input_html === "string" ? md(b.input_html) : plain(text === undefined ? "" : String(text)),
      Object.keys(rest).length ? argsList(rest) : null,
    ];
  }

  function meta(...kids) {
    return h("div", {class: "tool-meta"}, kids);
  }

  function mono(text) {
    return h("span", {class: "mono"}, text === undefined || text === null ? "?" : String(text));
  }

  /* key: value lines; long or multi-line strings and objects in <pre>. */
  function argsList(input) {
    const entries = Object.entries(input || {});
    if (!entries.length) return h("div", {class: "tool-meta"}, "no arguments");
    return h("dl", {class: "args"}, entries.map(([k, v]) => [h("dt", {}, k), h("dd", {}, argValue(v))]));
  }

  function argValue(v) {
    if (typeof v === "string") {
      if (v.length > 100 || v.includes("\n")) return h("pre", {class: "out"}, clip(v));
      return v;
    }
    if (v && typeof v === "object") {
      let text;
      try { text = JSON.stringify(v, null, 2); } catch (_) { text = String(v); }
      return h("pre", {class: "out"}, clip(text));
    }
    return String(v);
  }

  function clip(text) {
    return text.length > TEXT_MAX ? text.slice(0, TEXT_MAX) + `\n… ${text.length - TEXT_MAX} more characters` : text;
  }

  function lines(text) {
    const s = text === undefined || text === null ? "" : String(text);
    return s === "" ? [] : s.replace(/\n$/, "").split("\n");
  }

  function writeDiff(content) {
    return H.diffLinesEl(lines(content).map((l) => ["d-add", "+" + l]), 400);
  }

  function editDiff(oldText, newText) {
    const pairs = lines(oldText).map((l) => ["d-del", "-" + l]).concat(lines(newText).map((l) => ["d-add", "+" + l]));
    return H.diffLinesEl(pairs, 400);
  }

  // ----------------------------------------------------------- results

  function attachResult(block, ev) {
    const id = block.tool_use_id;
    if (id) remember(results, id, block);
    const t = id ? tools.get(id) : null;
    if (t && t.details.isConnected) {
      fillResult(t, block);
      return null; // folded into the call's row
    }
    // the call is not on screen (it is older than what is loaded): show the result on its own
    // (as text: without the call we cannot tell it answered a recv, the one result with html)
    const err = !!block.is_error;
    return h("div", {class: ["trow", err ? "err" : "dim", "orphan"], data: {orphanResult: id || ""}},
      h("span", {class: "pfx", title: H.stamp(ev.at)}, "↳"),
      h("div", {class: "body"}, `result of ${id ? "…" + String(id).slice(-8) : "a tool call"}${err ? " (error)" : ""}`, resultBody(block, null)));
  }

  /* Once the call is drawn (e.g. by "load older"), its stand-alone result row goes. */
  function dropOrphan(id) {
    const node = document.querySelector(`[data-orphan-result="${CSS.escape(String(id))}"]`);
    if (!node) return;
    if (node.dataset.key !== undefined && term) term.remove(node.dataset.key);
    else node.remove();
  }

  function fillResult(t, block) {
    const err = !!block.is_error;
    t.details.classList.add("done");
    t.details.classList.toggle("is-error", err);
    t.status.textContent = err ? "✗ error" : "✓";
    t.status.title = err ? "the tool answered with an error" : "done";
    t.result.classList.toggle("is-error", err);
    t.result.replaceChildren(h("div", {class: "label"}, err ? "error" : "result"), h("div", {}, resultBody(block, t.base)));
  }

  /* The server renders markdown only into a recv result's `html`; any other result is text. */
  function resultBody(block, base) {
    if (base === "recv" && typeof block.html === "string") return md(block.html);
    const c = block.content;
    if (c === undefined || c === null || c === "") return h("div", {class: "tool-meta"}, "(empty)");
    if (typeof c === "string") return h("pre", {class: "out"}, clip(c));
    if (Array.isArray(c)) {
      return c.map((part) => {
        if (part && part.type === "text") return h("pre", {class: "out"}, clip(String(part.text || "")));
        if (part && part.type === "image") return h("div", {class: "tool-meta"}, "[image]");
        return h("pre", {class: "out"}, clip(json(part)));
      });
    }
    return h("pre", {class: "out"}, clip(json(c)));
  }

  // ============================================================ inbox

  let inboxRefs = new Map(); // message id -> its file references' element (or null)

  function renderInbox() {
    const box = $("#inbox");
    const items = [...state.inbox].sort((a, b) => (b.id || 0) - (a.id || 0));
    $("#inbox-count").textContent = String(items.length);
    if (!items.length) {
      box.replaceChildren(h("p", {class: "empty"}, "no messages"));
      return;
    }
    // the inbox is redrawn after every turn: a message's previews are kept, so an open one stays open
    const kept = new Map();
    box.replaceChildren(...items.map((m) => {
      const body = typeof m.body_html === "string" ? md(m.body_html) : plain(m.body);
      const unread = !m.acked_at;
      const refs = inboxRefs.has(m.id) ? inboxRefs.get(m.id) : fileRefs(m.file_refs);
      kept.set(m.id, refs);
      return h("article", {class: ["inbox-item", unread && "unread"], data: {message: m.id}},
        h("div", {class: "item-head"}, "from", nameEl(m.from),
          unread ? h("span", {class: "chip honey", title: "not yet handled by a finished turn"}, m.delivered_at ? "in a turn" : "queued") : null,
          m.redelivered ? h("span", {class: "chip orange"}, "↺") : null,
          H.agoEl(m.sent_at)),
        H.clampable(body, m.body, "var(--bg-2)"), refs);
    }));
    inboxRefs = kept;
  }

  // ======================================================== loose ends

  async function refreshLoose() {
    const box = $("#loose-ends");
    try {
      const data = await getJSON("api/loose-ends");
      state.looseEnds = (data && data.loose_ends) || [];
      renderLoose();
    } catch (e) {
      box.replaceChildren(h("p", {class: "inline-error"}, `loose ends: ${e.message}`));
    }
  }

  function renderLoose() {
    const box = $("#loose-ends");
    const items = state.looseEnds;
    $("#loose-count").textContent = String(items.length);
    $("#loose-count").classList.toggle("hot", items.length > 0);
    if (!items.length) {
      box.replaceChildren(h("p", {class: "empty"}, "nothing left open"));
      return;
    }
    box.replaceChildren(...items.map(looseItem));
  }

  /* Each loose end's rows (wire.QUESTION_FIELDS, REMINDER_FIELDS, APPROVAL_FIELDS): its prose and its age. */
  const LOOSE = {
    question: {text: "question", time: "asked_at"},
    reminder: {text: "message", time: "created_at"},
    approval: {text: "description", time: "requested_at"},
  };

  /* What this agent may withdraw (the core decides; this only offers the button): its own questions and
   * reminders; the manager anything. */
  function mayWithdraw(x, kind) {
    if (state.role === "manager") return ["question", "reminder", "approval"].includes(kind);
    if (kind === "question") return x.asker === state.name;
    if (kind === "reminder") return x.owner === state.name;
    return false;
  }

  function looseSummary(x, kind) {
    if (kind === "question") {
      return `${x.asker} asked ${x.target === "operator" ? "the operator" : x.target}` +
        (x.expires_at ? ` · expires ${H.stamp(x.expires_at)}` : "");
    }
    if (kind === "reminder") {
      return (x.failed_at ? `failed ${H.stamp(x.failed_at)}: ${x.error}` : `due ${H.stamp(x.due_at)}`) +
        (x.file_path ? ` · ${x.file_path}` : "");
    }
    return `${String(x.kind || "").replace(/_/g, " ")} of ${x.agent} · ${x.status}`;  // an approval
  }

  /* A loose end: its kind, id, prose and age, who and when; a kind this page does not know is shown whole. */
  function looseItem(x) {
    const kind = x.loose_end;
    const known = LOOSE[kind];
    if (!known) return rawRow(x, `unknown loose end ${kind}`);
    const id = x.id;
    const summary = looseSummary(x, kind);
    const text = x[known.text] || "";
    const error = h("p", {class: "inline-error", role: "alert", hidden: true});
    const withdraw = mayWithdraw(x, kind) && id !== undefined
      ? h("button", {type: "button", class: "btn btn-sm btn-ghost loose-cancel", title: `withdraw this ${kind}`,
        on: {click: async (e) => {
          const button = e.currentTarget;
          const what = kind === "question" ? "its asker is told it was cancelled" : "it will not come back";
          if (!window.confirm(`Withdraw ${kind} #${id}? ${what}.`)) return;
          const res = await H.post("api/loose-ends/cancel", {kind, id}, {button, errorEl: error});
          if (res.ok) refreshLoose();
        }}}, "withdraw")
      : null;
    return h("article", {class: ["loose", x.failed_at ? "failed" : null], data: {kind, id: id === undefined ? null : id}},
      h("div", {class: "item-head"}, h("span", {class: ["chip", x.failed_at ? "orange" : "honey"]}, String(kind).replace(/_/g, " ")),
        id !== undefined ? h("span", {class: "id"}, "#" + id) : null,
        x[known.time] ? H.agoEl(x[known.time]) : null, withdraw),
      text ? h("p", {}, firstLine(text, 300)) : null,
      h("p", {class: "hint"}, summary),
      kind === "question" ? answerBox(x, error) : null,
      error);
  }

  /* A question put to the operator is answered here, as the operator: through the core's own route
   * (/answer-question/<id>, this page's origin and session key), never through this agent's harness,
   * which is the agent's to rewrite. The asker gets the answer in its inbox; the row goes. */
  function answerBox(x, error) {
    if (x.target !== "operator" || x.answered_at || x.id === undefined) return null;
    const answer = async (text, button) => {
      const res = await H.post(`/answer-question/${encodeURIComponent(x.id)}`, {answer: text}, {button, errorEl: error});
      if (res.ok) refreshLoose();
    };
    const input = h("input", {type: "text", name: "answer", placeholder: "answer as the operator…", "aria-label": `answer question #${x.id}`});
    const submit = h("button", {type: "submit", class: "btn btn-sm btn-primary", data: {action: "answer"}}, "answer");
    const form = h("form", {class: "answer-form", autocomplete: "off", on: {submit: (e) => {
      e.preventDefault();
      const text = input.value.trim();
      if (!text) { H.showError(error, "type an answer, or pick one of the options"); input.focus(); return; }
      answer(text, submit);
    }}}, input, submit);
    const options = Array.isArray(x.options) && x.options.length
      ? h("div", {class: "options"}, x.options.map((o) => h("button", {type: "button", class: "btn btn-sm btn-teal",
        data: {action: "option", answer: o}, on: {click: (e) => answer(String(o), e.currentTarget)}}, String(o))))
      : null;
    return [options, form];
  }

  /* On a finished turn (an event, not a timer): the inbox and loose ends move. */
  let refreshTimer = null;
  function scheduleRefresh(withInbox) {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(async () => {
      refreshLoose();
      if (!withInbox) return;
      try {
        const st = await getJSON("api/state");
        // only what no event carries: turn state, model and usage come from events
        state.inbox = Array.isArray(st.inbox) ? st.inbox : state.inbox;
        state.armed = !!st.new_session_armed;
        state.claude = st.claude_process || state.claude;
        renderInbox();
        paintState();
      } catch (e) { console.warn("refreshing the inbox failed; the next turn_end tries again:", e); }
    }, 300);
  }

  // ============================================ tool calls waiting for the operator

  /* This agent's tool calls its permission policy asked the operator about, near the top: from the
   * core's own routes (/api/tool-calls/<name>, then its stream of their approval events), never this
   * agent's harness, which is the agent's to rewrite; decided as the operator through /approve and /deny
   * (hive.js toolCallCard). The agent is the one in this page's address, not whatever its harness says.
   * Each (re)connect takes the snapshot anew; events that come while it loads are kept and replayed past
   * its seq, so none is lost between the two. */
  const toolCalls = {rows: new Map(), seq: null, held: null};
  const ownName = decodeURIComponent((location.pathname.match(/\/agent\/([^/]+)/) || [])[1] || "");

  function renderToolCalls() {
    const box = $("#tool-calls");
    const items = [...toolCalls.rows.values()].sort((a, b) => a.id - b.id);
    $("#tool-calls-panel").hidden = !items.length;
    $("#tool-calls-count").textContent = String(items.length);
    // a card still waiting is kept as it is: a reason half typed survives another call's coming or going
    const drawn = new Map([...box.children].map((el) => [el.dataset.approval, el]));
    box.replaceChildren(...items.map((a) => drawn.get(String(a.id)) || H.toolCallCard(a)));
  }

  function applyToolCall(ev) {
    if (toolCalls.seq !== null && ev.seq <= toolCalls.seq) return; // the snapshot has it already
    const a = ev.approval || {};
    if (ev.kind === "approval_added" && (!a.status || a.status === "pending")) toolCalls.rows.set(a.id, a);
    else if (ev.kind === "approval_resolved") toolCalls.rows.delete(a.id);
  }

  async function loadToolCalls() {
    toolCalls.held = [];
    try {
      const data = await getJSON(`/api/tool-calls/${encodeURIComponent(ownName)}`);
      toolCalls.rows = new Map((data.approvals || []).map((a) => [a.id, a]));
      toolCalls.seq = data.seq;
      H.showError($("#tool-calls-error"), null);
    } catch (e) {
      H.showError($("#tool-calls-error"), `the tool calls waiting for you could not be read: ${e.message}`);
    }
    const held = toolCalls.held;
    toolCalls.held = null;
    for (const ev of held) applyToolCall(ev);
    renderToolCalls();
  }

  function watchToolCalls() {
    if (!ownName) return;
    const source = new EventSource(H.streamUrl(`/api/tool-calls/${encodeURIComponent(ownName)}/stream`));
    source.onopen = () => { toolCalls.seq = null; loadToolCalls(); };
    source.onmessage = (m) => {
      let ev;
      try { ev = JSON.parse(m.data); } catch (e) { console.warn("a tool-call event that is not JSON:", e); return; }
      if (toolCalls.held) { toolCalls.held.push(ev); return; }
      applyToolCall(ev);
      renderToolCalls();
    };
  }

  // ========================================================= snapshot

  async function snapshot(cursor) {
    // state first: its seq is read before the history, so nothing falls in between
    const st = await getJSON("api/state");
    applyState(st);
    let events;
    let reset = false;
    if (cursor === null || cursor === undefined) {
      events = (await getJSON("events/history")).events || [];
    } else {
      events = (await getJSON(`events/history?after=${encodeURIComponent(cursor)}&limit=${CATCHUP}`)).events || [];
      if (events.length >= CATCHUP) {
        // too much happened while away to splice in: start again from the newest page
        events = (await getJSON("events/history")).events || [];
        reset = true;
      }
    }
    scheduleRefresh(false);
    return {seq: st.seq, events, reset};
  }

  async function older(before) {
    const q = before === null || before === undefined ? "" : `before=${encodeURIComponent(before)}&`;
    return getJSON(`events/history?${q}limit=${OLDER_PAGE}`);
  }

  // ========================================================== actions

  const controlsErr = $("#controls-error");

  $("#cancel-turn").addEventListener("click", (e) => post("api/cancel", {}, {button: e.currentTarget, errorEl: controlsErr}));
  $("#compact").addEventListener("click", (e) => post("api/compact", {}, {button: e.currentTarget, errorEl: controlsErr}));
  $("#new-session").addEventListener("click", (e) => post("api/new-session", {}, {button: e.currentTarget, errorEl: controlsErr}));
  $("#model-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const input = $("#model-input");
    const model = input.value.trim();
    if (!model) { H.showError(controlsErr, "type or pick a model name"); input.focus(); return; }
    const res = await post("api/model", {model}, {button: $("#model-set"), errorEl: controlsErr});
    if (res.ok) input.value = ""; // the chip changes when model_changed arrives
  });
  $("#loose-refresh").addEventListener("click", refreshLoose);

  const composeEl = $("#agent-compose");
  const composeErr = $("#agent-compose-error");

  async function send() {
    const body = composeEl.value.trim();
    if (!body) { H.showError(composeErr, "write a message first"); return; }
    const res = await post("send", {body}, {button: $("#agent-send"), errorEl: composeErr});
    if (res.ok) {
      composeEl.value = "";
      autogrow();
    }
  }

  function autogrow() {
    composeEl.style.height = "auto";
    composeEl.style.height = Math.min(composeEl.scrollHeight + 2, window.innerHeight * 0.4) + "px";
  }

  composeEl.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  composeEl.addEventListener("input", () => { H.showError(composeErr, null); autogrow(); });
  $("#agent-compose-form").addEventListener("submit", (e) => { e.preventDefault(); send(); });

  // ================================================= when the page is down

  /* The stream failed: the page asks once why (each reconnect of the terminal asks again). No answer
   * at all is the core being down (hive.js greys the page); a 503 from the core is this agent's
   * harness not listening, with the sentence and the agent's state: a stopped or failed agent is
   * offered a Start (the core's own lifecycle route, as the operator), instead of a forever
   * "reconnecting…". Live again, everything of it goes. */
  const DOWN_STATES = new Set(["stopped", "failed"]);
  let down = null; // the last 503 of a page not up: {error, state, transient}

  async function whyDown() {
    const res = await H.probe("api/state");
    if (!res || term.live) return; // the core is down (hive.js says so), or it came back meanwhile
    if (res.status !== 503) { showDown(null); return; }
    let data = null;
    try { data = await res.json(); } catch (_) { /* not the core's answer: nothing to say but reconnecting */ }
    showDown(data && typeof data.error === "string" ? data : null);
  }

  /* This page's agent: from the address, for its state may never have come. */
  function pageName() {
    return state.name || decodeURIComponent((location.pathname.match(/\/agent\/([^/]+)/) || [])[1] || "");
  }

  function showDown(data) {
    down = data;
    if (!state.name) $("#agent-name").textContent = pageName();
    document.body.classList.toggle("agent-down", !!data);
    $("#down-panel").hidden = !data;
    if (!data) return;
    const stopped = DOWN_STATES.has(data.state) && !data.transient;
    // a `command` in the sentence is shown as code (as text: the sentence is never markup)
    $("#down-sentence").replaceChildren(...String(data.error).split("`").map((part, i) => (i % 2 ? h("code", {}, part) : part)));
    $("#down-state").textContent = data.transient || data.state || "not up";
    $("#down-start").hidden = !stopped;
    const live = $("#live .live-text");
    if (live) live.textContent = stopped ? "not running" : data.transient || "starting…";
  }

  $("#down-start").addEventListener("click", async (e) => {
    const res = await post(`/start/${encodeURIComponent(pageName())}`, {}, {button: e.currentTarget, errorEl: $("#down-error")});
    if (res.ok) term.reconnect(); // its page may take a moment: the terminal keeps trying, and says why
  });

  function onStatus(live, why) {
    H.setLive($("#live"), live, "alive", why);
    if (live) showDown(null);
    else {
      if (down) showDown(down); // keep saying why while it asks again, not "reconnecting…"
      whyDown();
    }
  }

  // ========================================================= terminal

  term = window.HiveTerminal.create({
    mount: "#terminal",
    streamUrl: "events/stream",
    label: "turns",
    emptyText: "no turns yet — waiting for the first message",
    snapshot,
    older,
    keyOf: (ev) => (typeof ev.seq === "number" ? String(ev.seq) : null),
    cursorOf: (ev) => (typeof ev.seq === "number" && ev.seq > 0 ? ev.seq : null),
    render,
    onEvent,
    onReset: () => {
      tools.clear();
      results.clear();
      tasks.clear();
      turnStarts.live = turnStarts.older = null;
    },
    onStatus,
  });

  watchToolCalls();

  window.hive = {term, state, send, toolCalls};
})();
