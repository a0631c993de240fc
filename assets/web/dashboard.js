/* hyperhive — the dashboard at `/`.
 *
 * Cold load through the terminal's snapshot callback (GET /api/state, then
 * /dashboard/history after the flow's cursor); from then on every section
 * changes only from /dashboard/stream events. Nothing polls. Actions POST
 * JSON and show only a failure: the event the action causes updates the page.
 *
 * Sections: containers (cards), message flow (the terminal) + compose,
 * approvals, questions, operator inbox, tombstones, meta inputs, spawn.
 */
(function () {
  "use strict";

  const H = window.Hive;
  const {h, md, plain, post, getJSON, toast, agoEl, nameEl, toMs} = H;
  const $ = (sel) => document.querySelector(sel);
  const enc = encodeURIComponent;

  const LAST_TO_KEY = "hive.compose.to";
  const NOTIFY_KEY = "hive.notify";
  const INBOX_MAX = 500;        // messages kept on the page (paging back adds to them)
  const INBOX_PAGE = 50;        // what /api/state and /api/inbox answer at a time
  const LINGER_MS = 4000;       // a resolved approval/question shows its outcome this long
  const DIFF_OPEN_LINES = 60;   // smaller diffs start open
  const STATE_KINDS = new Set(["sent", "delivered", "approval_added", "approval_resolved", "question_added",
    "question_resolved", "transient_set", "transient_cleared", "container_state_changed",
    "container_removed", "tombstones_changed", "meta_inputs_changed", "cancelled", "requeued", "read", "nodes_changed"]);

  /* The page's model of the hive: seeded by /api/state, then moved by events. */
  const state = {
    seq: 0, epoch: null, rev: null, backend: null,
    containers: new Map(),  // name → containers row
    transients: new Map(),  // name → "restarting" …
    approvals: new Map(),   // id → pending approval
    questions: new Map(),   // id → open question
    inbox: new Map(),       // id → message addressed to the operator (acked_at: read)
    senders: [],            // [{name, unread, last_hour}] of the inbox
    sendersThrough: 0,      // the highest message id those counts include: a live one above it is counted here
    inboxFrom: null,        // the one sender the inbox shows, or null for all
    inboxEnd: false,        // paged back to the first message
    delivered: new Set(),   // message ids a `delivered` event marked
    cancelled: new Set(),   // message ids a cancelled turn had (until retried)
    tombstones: [],
    metaInputs: null,
    node: null,             // this dashboard's core, in a hive of several
    nodes: new Map(),       // name → {name, url, alive, silent_seconds, me, …}
  };

  let term = null; // the message flow terminal, created last

  const els = {
    containers: $("#containers"),
    approvals: $("#approvals"),
    questions: $("#questions"),
    inbox: $("#inbox"),
    tombstones: $("#tombstones"),
    live: $("#live"),
  };

  // ================================================================ helpers

  function isManager(c) {
    return c && (c.role === "manager" || c.name === "manager");
  }

  function isDelivered(m) {
    return !!(m.delivered_at || state.delivered.has(m.id));
  }

  function setEmpty(box, text) {
    if (!box.children.length) box.appendChild(h("p", {class: "empty"}, text));
  }

  /* Keep box's children in step with items (in order), reusing nodes by key so
   * an open form, a typed reason or an expanded diff survives other items
   * coming and going. Nodes marked .resolved linger until their timer ends. */
  function syncList(box, items, keyOf, build, attr) {
    const existing = new Map();
    for (const node of [...box.children]) {
      const k = node.dataset ? node.dataset[attr] : undefined;
      if (k === undefined) node.remove(); // the "empty" placeholder
      else existing.set(k, node);
    }
    const keep = new Set();
    let prev = null;
    for (const item of items) {
      const k = String(keyOf(item));
      keep.add(k);
      let node = existing.get(k);
      if (!node) node = build(item);
      const want = prev ? prev.nextSibling : box.firstChild;
      if (node !== want) box.insertBefore(node, want);
      prev = node;
    }
    for (const [k, node] of existing) {
      if (!keep.has(k) && !node.classList.contains("resolved")) node.remove();
    }
  }

  function linger(node, box, emptyText, after) {
    node.classList.add("resolved");
    setTimeout(() => {
      node.classList.add("leaving");
      setTimeout(() => {
        node.remove();
        setEmpty(box, emptyText);
        if (after) after();
      }, 400);
    }, LINGER_MS);
  }

  function count(id, n) {
    const el = $(id);
    if (!el) return;
    el.textContent = String(n);
    // only what waits for the operator glows
    el.classList.toggle("hot", n > 0 && (id === "#approvals-count" || id === "#questions-count"));
  }

  // ============================================================ snapshot

  async function snapshot(cursor) {
    // state first: its seq is the lower of the two, so dedupe never skips an event
    const st = await getJSON("/api/state");
    applyState(st);
    const q = cursor === null || cursor === undefined ? "" : `?after=${enc(cursor)}&limit=1000`;
    const hist = await getJSON("/dashboard/history" + q);
    return {seq: st.seq, epoch: st.epoch, events: (hist && hist.events) || []};
  }

  function applyState(st) {
    state.seq = st.seq;
    state.epoch = st.epoch;
    state.rev = st.rev;
    state.backend = st.backend;
    state.containers = new Map((st.containers || []).map((c) => [c.name, c]));
    state.transients = new Map(Object.entries(st.transients || {}));
    state.approvals = new Map((st.approvals || []).filter((a) => !a.status || a.status === "pending").map((a) => [a.id, a]));
    state.questions = new Map((st.questions || []).map((q) => [q.id, q]));
    state.inbox = new Map();
    for (const m of st.inbox || []) if (m && m.id !== undefined) state.inbox.set(m.id, m);
    setSenders(st.inbox_senders, st.inbox_senders_through);
    state.inboxFrom = null;
    state.inboxEnd = (st.inbox || []).length < INBOX_PAGE;
    state.tombstones = st.tombstones || [];
    state.metaInputs = st.meta_inputs === undefined ? null : st.meta_inputs;
    state.node = st.node || null;
    state.nodes = new Map((st.nodes || []).map((n) => [n.name, n]));

    renderHeader();
    renderContainers();
    renderApprovals();
    renderQuestions();
    renderInbox();
    renderTombstones();
    renderMeta();
    updateAttention();
  }

  function renderHeader() {
    if (state.rev) $("#rev").textContent = state.rev;
    const backend = $("#backend");
    backend.hidden = !state.backend;
    backend.textContent = state.backend ? `backend: ${state.backend}` : "";
    renderNodes();
  }

  // A hive of several cores: each node and whether it beats; one core alone shows nothing.
  function renderNodes() {
    const box = $("#nodes");
    if (!box) return;
    const nodes = [...state.nodes.values()];
    box.hidden = nodes.length < 2;
    box.replaceChildren(...nodes.map((n) => h(n.url && !n.me ? "a" : "span", {
      class: ["chip", "node", n.alive ? "green" : "red", n.me && "me"], href: n.url && !n.me ? n.url + "/" : null,
      data: {node: n.name, alive: n.alive ? "yes" : "no"},
      title: n.alive ? `node ${n.name}: live${n.me ? " (this dashboard's)" : ""}`
        : `node ${n.name}: silent for ${n.silent_seconds} s (its core is down or cut off)`},
    `${n.alive ? "●" : "○"} ${n.name}`)));
  }

  function nodeAlive(c) {
    const n = c.node && state.nodes.get(c.node);
    return n ? n.alive : c.node_alive !== false;
  }

  // ============================================================== events

  function onEvent(ev, ctx) {
    switch (ev.kind) {
      case "sent": {
        const m = ev.message || {};
        if (m.to === "operator") addInbox(m, ctx.live);
        break;
      }
      case "delivered":
        markDelivered(ev.ids || []);
        break;
      case "read":
        if (ev.recipient === "operator") markRead(ev.ids || []);
        break;
      case "cancelled":
        markCancelled(ev.ids || [], true);
        break;
      case "requeued":
        markCancelled(ev.ids || [], false);
        break;
      case "approval_added":
        addApproval(ev.approval, ctx.live);
        break;
      case "approval_resolved":
        resolveApproval(ev.approval || {});
        break;
      case "question_added":
        addQuestion(ev.question, ctx.live);
        break;
      case "question_resolved":
        resolveQuestion(ev.question || {});
        break;
      case "transient_set":
        state.transients.set(ev.name, ev.transient);
        setRowTransient(ev.name, ev.transient);
        refreshContainer(ev.name);
        break;
      case "transient_cleared":
        state.transients.delete(ev.name);
        setRowTransient(ev.name, null); // the row's own copy must not keep the overlay alive
        refreshContainer(ev.name);
        break;
      case "container_state_changed":
        if (ev.container && ev.container.name) {
          state.containers.set(ev.container.name, ev.container);
          refreshContainer(ev.container.name, ctx.live);
        }
        break;
      case "container_removed":
        state.containers.delete(ev.name);
        state.transients.delete(ev.name);
        removeContainer(ev.name);
        break;
      case "tombstones_changed":
        if (ev.node && state.node && ev.node !== state.node) break; // another node's disk: its dashboard's
        state.tombstones = ev.tombstones || [];
        renderTombstones();
        break;
      case "meta_inputs_changed":
        if (ev.node && state.node && ev.node !== state.node) break; // another node's meta flake
        state.metaInputs = ev.meta_inputs === undefined ? null : ev.meta_inputs;
        renderMeta();
        break;
      case "nodes_changed":
        state.nodes = new Map((ev.nodes || []).map((n) => [n.name, n]));
        renderNodes();
        renderContainers();
        break;
      default:
        break; // the flow shows it raw (renderFlow), so it is not lost
    }
  }

  // ========================================================== containers

  function setRowTransient(name, transient) {
    const c = state.containers.get(name);
    if (c) c.transient = transient;
  }

  function compareContainers(a, b) {
    const ma = a === "manager" || isManager(state.containers.get(a)) ? 0 : 1;
    const mb = b === "manager" || isManager(state.containers.get(b)) ? 0 : 1;
    return ma - mb || (a < b ? -1 : a > b ? 1 : 0);
  }

  function renderContainers() {
    for (const card of [...els.containers.children]) {
      if (!card.dataset.agent || !state.containers.has(card.dataset.agent)) card.remove();
    }
    // each card is redrawn in place (new ones slot into order), so focus survives a reconnect
    const names = [...state.containers.keys()].sort(compareContainers);
    for (const name of names) refreshContainer(name);
    setEmpty(els.containers, "no agents yet — spawn one below");
    count("#containers-count", names.length);
  }

  function cardOf(name) {
    return els.containers.querySelector(`[data-agent="${CSS.escape(name)}"]`);
  }

  /* Redraw one card in place (keeping focus on the same control). */
  function refreshContainer(name, flash) {
    const c = state.containers.get(name);
    if (!c) return;
    const fresh = containerCard(c);
    const old = cardOf(name);
    if (old) {
      const active = document.activeElement;
      const focusAction = active && old.contains(active) ? (active.dataset.action || (active.classList.contains("agent-name") ? "@name" : null)) : null;
      old.replaceWith(fresh);
      if (focusAction) {
        const target = focusAction === "@name" ? fresh.querySelector(".agent-name")
          : fresh.querySelector(`[data-action="${CSS.escape(focusAction)}"]`);
        if (target) target.focus();
      }
      if (flash && old.dataset.state !== fresh.dataset.state) fresh.classList.add("flash");
    } else {
      const placeholder = els.containers.querySelector(".empty");
      if (placeholder) placeholder.remove();
      const next = [...els.containers.children].find((n) => n.dataset.agent && compareContainers(name, n.dataset.agent) < 0);
      els.containers.insertBefore(fresh, next || null);
      if (flash) fresh.classList.add("flash");
      count("#containers-count", state.containers.size);
    }
  }

  function removeContainer(name) {
    const card = cardOf(name);
    if (card) card.remove();
    purgeChecked.delete(name);
    setEmpty(els.containers, "no agents yet — spawn one below");
    count("#containers-count", state.containers.size);
  }

  const purgeChecked = new Set(); // "also purge" ticks survive a card redraw

  /* A harness that died on its own, which the core starts again (backing off); the title says why. */
  function restartChip(c) {
    const r = c.restart, at = toMs(r.next_at);
    const deaths = `${r.deaths} death${r.deaths === 1 ? "" : "s"} in a row`;
    const text = !c.running && at ? `↻ restarts at ${H.clock(at)}` : "↻ restarted";
    return h("span", {class: "chip orange restart", title: `${deaths}; the last: ${r.reason}`}, `${text} · ${deaths}`);
  }

  function containerCard(c) {
    const st = c.state;
    const transient = state.transients.get(c.name) || c.transient || null;
    const mgr = isManager(c);
    const url = c.url || `/agent/${enc(c.name)}/`;
    const base = url.endsWith("/") ? url : url + "/";
    // another node's agent: its pages are that node's dashboard's
    const origin = /^https?:/.test(url) ? new URL(url).origin : "";
    const alive = nodeAlive(c);

    const head = h("div", {class: "card-head"},
      h("span", {class: "state-dot", "aria-hidden": "true"}),
      h("a", {class: "agent-name", href: base, title: `open ${c.name}'s page`}, c.name),
      mgr && h("span", {class: "chip teal", title: "the manager: edits the others' configs"}, "manager"),
      h("span", {class: "state-badge", data: {state: st}}, st),
      transient && h("span", {class: "transient", role: "status"}, h("span", {class: "spinner", "aria-hidden": "true"}), `${transient}…`),
      c.last_turn_at ? lastTurn(c.last_turn_at) : h("span", {class: "ago", title: "no turn yet"}, "no turns"));

    const chips = h("div", {class: "card-chips"},
      c.active_model && h("span", {class: "chip mono", title: "model"}, c.active_model),
      c.deployed_sha && h("span", {class: "chip mono", title: `deployed config ${c.deployed_sha}`}, "@" + H.shortSha(c.deployed_sha)),
      c.pending_reminders > 0 && h("span", {class: "chip honey", title: `${c.pending_reminders} pending reminder(s)`}, `⏰ ${c.pending_reminders}`),
      c.needs_login && h("a", {class: "chip orange", href: base, title: "claude is not logged in here: log in on its page"}, "needs login"),
      c.claude_missing && h("span", {class: "chip red", title: c.claude_missing}, "claude not found"),
      c.needs_update && h("span", {class: "chip orange", title: "the deployed config is behind: rebuild to apply it"}, "needs update"),
      c.restart && restartChip(c),
      c.forge && c.forge.error && h("span", {class: "chip orange forge", title: `${c.forge.error} (retry at ${c.forge.retry_at})`}, "forge behind"),
      c.parent && c.parent !== "operator" && h("span", {class: "chip", title: "spawned by"}, `by ${c.parent}`),
      c.node && state.nodes.size > 1 && h("span", {class: ["chip", "node-of", !alive && "red"], data: {node: c.node},
        title: alive ? `runs on node ${c.node}` : `node ${c.node} is silent: its core is down or cut off, so this is how it last was`},
      alive ? `on ${c.node}` : `${c.node} silent`));

    const status = c.claude_missing
      ? h("p", {class: "status-text problem", role: "status"}, c.claude_missing)
      : c.status_text
        ? h("p", {class: "status-text"}, c.status_text, c.status_set_at ? agoEl(c.status_set_at) : null)
        : null;

    const links = h("nav", {class: "card-links", "aria-label": `${c.name} links`},
      h("a", {href: base}, "page"),
      h("a", {href: `${origin}/journal/${enc(c.name)}`}, "journal"),
      h("a", {href: `${origin}/agent-config/${enc(c.name)}`}, "config"),
      h("a", {href: base + "stats"}, "stats"));

    return h("article", {class: ["agent-card", mgr && "is-manager"],
      data: {agent: c.name, state: st, transient: transient || null, role: mgr ? "manager" : (c.role || "agent")},
      "aria-label": `${c.name}: ${st}${transient ? ", " + transient : ""}`},
    head, chips.children.length ? chips : null, status, links, cardActions(c, st, mgr));
  }

  function lastTurn(at) {
    const el = agoEl(at);
    el.title = "last turn " + el.title;
    return el;
  }

  function actionBtn(action, label, cls, title) {
    return h("button", {type: "button", class: ["btn btn-sm", cls], data: {action}, title}, label);
  }

  function cardActions(c, st, mgr) {
    const running = !!c.running;
    const btns = [];
    if (running) btns.push(actionBtn("stop", "■ stop", null, "stop the container"));
    else btns.push(actionBtn("start", "▶ start", "btn-teal", "start the container"));
    btns.push(actionBtn("restart", "↻ restart", null, "restart the container"));
    btns.push(actionBtn("rebuild", "⚒ rebuild", null, "rebuild from the deployed config and restart"));
    if (running) {
      if (c.paused) btns.push(actionBtn("resume", "▷ resume", "btn-teal", "resume the turn loop"));
      else btns.push(actionBtn("pause", "‖ pause", null, "park the turn loop after the current turn"));
    }
    // the dangerous ones sit apart, at the end
    const danger = [];
    if (running || st === "failed") danger.push(actionBtn("kill", "✕ kill", "btn-warn", "kill the container now"));
    if (!mgr) {
      danger.push(actionBtn("destroy", "destroy", "btn-danger", "destroy the container"));
      const box = h("input", {type: "checkbox", data: {action: "purge-toggle"}, checked: purgeChecked.has(c.name)});
      danger.push(h("label", {class: "purge-toggle", title: "destroy also deletes its state for good (no tombstone)"}, box, "purge"));
    }
    return h("div", {class: "card-actions"}, btns, danger.length ? h("span", {class: "danger"}, danger) : null);
  }

  async function lifecycle(name, action, btn) {
    if (action === "kill" && !window.confirm(`Kill ${name} now? A running turn is cut off.`)) return;
    if (action === "destroy") {
      const purge = purgeChecked.has(name);
      const what = purge
        ? `Destroy ${name} and purge its state for good? This cannot be undone.`
        : `Destroy ${name}? Its state is kept as a tombstone you can purge later.`;
      if (!window.confirm(what)) return;
      await post(`/destroy/${enc(name)}`, {purge}, {button: btn});
      return;
    }
    await post(`/${action}/${enc(name)}`, {}, {button: btn});
  }

  els.containers.addEventListener("click", (e) => {
    const btn = e.target.closest("button[data-action]");
    if (!btn) return;
    const card = btn.closest("[data-agent]");
    if (card) lifecycle(card.dataset.agent, btn.dataset.action, btn);
  });
  els.containers.addEventListener("change", (e) => {
    const box = e.target.closest('input[data-action="purge-toggle"]');
    if (!box) return;
    const name = box.closest("[data-agent]").dataset.agent;
    if (box.checked) purgeChecked.add(name); else purgeChecked.delete(name);
  });

  // ======================================================== message flow

  function renderFlow(ev, ctx) {
    if (ev.kind === "sent") return messageRow(ev.message || {}, ctx.live);
    if (STATE_KINDS.has(ev.kind)) return null;
    return rawRow(ev);
  }

  function messageRow(m, live) {
    const t = toMs(m.sent_at);
    const delivered = isDelivered(m);
    const body = typeof m.body_html === "string" ? md(m.body_html) : plain(m.body);
    const tags = [];
    if (m.redelivered) tags.push(h("span", {class: "chip orange", title: "delivered again after a failed turn"}, "↺ redelivered"));
    if (m.cancelled_at || state.cancelled.has(m.id)) tags.push(cancelledChip());
    const refs = fileRefs(m);
    return h("div", {class: ["trow msg", m.to === "operator" && "to-operator", live && "fresh"],
      data: {delivered: String(delivered), from: m.from, to: m.to, id: m.id}},
    h("span", {class: "time", title: H.stamp(t)}, t ? H.clock(t) : ""),
    h("span", {class: "route", title: `${m.from} → ${m.to}`}, nameEl(m.from), h("span", {class: "arrow"}, "→"), nameEl(m.to),
      tags.length ? h("span", {class: "tags"}, tags) : null),
    h("div", {class: "mbody"}, H.clampable(body, m.body), refs),
    deliveredMark(delivered, m));
  }

  function deliveredMark(delivered, m) {
    const when = m && m.delivered_at ? " " + H.stamp(toMs(m.delivered_at)) : "";
    return h("span", {class: "mark", title: delivered ? "delivered" + when : "queued: not delivered yet",
      "aria-label": delivered ? "delivered" : "queued"}, delivered ? "✓" : "○");
  }

  /* A message's file references, previewed through the core (which checks each again on reading). */
  function fileRefs(m) {
    return H.fileRefs(m.file_refs, (ref, i) => `/file-ref/${enc(m.id)}/${i}`);
  }

  function rawRow(ev) {
    let json;
    try { json = JSON.stringify(ev); } catch (_) { json = String(ev); }
    return h("div", {class: "trow raw warn"}, h("span", {class: "pfx"}, "?"),
      h("span", {class: "body"}, `unknown event ${ev && ev.kind}: ${json}`));
  }

  function cancelledChip() {
    return h("span", {class: "chip red cancelled", title: "the operator cancelled the turn that had it: handled, not done"},
      "✕ cancelled");
  }

  /* Mark (or, once retried, unmark) the rows of messages a cancelled turn had. */
  function markCancelled(ids, cancelled) {
    for (const id of ids) {
      if (cancelled) state.cancelled.add(id); else state.cancelled.delete(id);
      const row = term && term.row("m" + id);
      if (!row) continue;
      const chip = row.querySelector(".chip.cancelled");
      if (cancelled && !chip) {
        let tags = row.querySelector(".tags");
        if (!tags) { tags = h("span", {class: "tags"}); row.querySelector(".route").appendChild(tags); }
        tags.appendChild(cancelledChip());
      } else if (!cancelled && chip) {
        chip.replaceWith(h("span", {class: "chip orange", title: "the operator queued it again"}, "↺ retried"));
      }
    }
  }

  function markDelivered(ids) {
    for (const id of ids) {
      state.delivered.add(id);
      const row = term && term.row("m" + id);
      if (row && row.dataset.delivered !== "true") {
        row.dataset.delivered = "true";
        const mark = row.querySelector(".mark");
        if (mark) mark.replaceWith(deliveredMark(true, null));
      }
      const m = state.inbox.get(id);
      if (m && !m.delivered_at) m.delivered_at = new Date().toISOString();
    }
  }

  // ============================================================== inbox

  function addInbox(m, live) {
    if (!m || m.id === undefined) return;
    const known = state.inbox.has(m.id);
    const sender = state.senders.find((s) => s.name === m.from);
    if (live && m.id > state.sendersThrough && !m.acked_at) {  // the counts fetched include every earlier one
      state.sendersThrough = m.id;
      if (sender) { sender.unread += 1; sender.last_hour += 1; } else state.senders.push({name: m.from, unread: 1, last_hour: 1});
    }
    if (state.inboxFrom && state.inboxFrom !== m.from) { renderSenders(); return; }  // filtered to another sender
    state.inbox.set(m.id, m);
    const ids = [...state.inbox.keys()].sort((a, b) => a - b);
    while (ids.length > INBOX_MAX) { state.inbox.delete(ids.shift()); state.inboxEnd = false; }
    renderInbox();
    if (live && !known) {
      const node = els.inbox.querySelector(`[data-message="${CSS.escape(String(m.id))}"]`);
      if (node) node.classList.add("fresh");
    }
  }

  function renderInbox() {
    const items = [...state.inbox.values()].sort((a, b) => b.id - a.id); // newest first
    syncList(els.inbox, items, inboxKey, inboxItem, "inboxKey");  // a message read is drawn anew
    setEmpty(els.inbox, state.inboxFrom ? `no messages from ${state.inboxFrom}` : "no messages for you yet");
    count("#inbox-count", state.senders.reduce((n, s) => n + (s.unread || 0), 0));
    $("#inbox-older").hidden = state.inboxEnd || !items.length;
    renderSenders();
  }

  /* Who sent how many: a flood shows, and one click shows a quiet sender's report the flood buried. */
  function renderSenders() {
    const box = $("#inbox-senders");
    const chips = state.senders.filter((s) => s.unread || s.last_hour).map((s) => {
      const chip = h("button", {type: "button", class: ["chip", "sender-chip", state.inboxFrom === s.name && "active"],
        data: {sender: s.name}, title: `${s.unread} unread, ${s.last_hour} in the last hour: show only ${s.name}'s`},
      nameEl(s.name), ` ${s.unread} unread · ${s.last_hour}/h`);
      chip.addEventListener("click", () => showFrom(state.inboxFrom === s.name ? null : s.name));
      return chip;
    });
    if (state.inboxFrom) {
      const all = h("button", {type: "button", class: "chip", title: "every sender again"}, "× all senders");
      all.addEventListener("click", () => showFrom(null));
      chips.unshift(all);
    }
    box.replaceChildren(...chips);
    box.hidden = !chips.length;
  }

  async function loadInbox(before) {
    const q = new URLSearchParams();
    if (before) q.set("before", before);
    if (state.inboxFrom) q.set("sender", state.inboxFrom);
    const page = await getJSON(`/api/inbox?${q}`);
    for (const m of page.messages || []) state.inbox.set(m.id, m);
    setSenders(page.senders, page.senders_through);
    state.inboxEnd = (page.messages || []).length < INBOX_PAGE;
    renderInbox();
  }

  async function showFrom(name) {
    state.inboxFrom = name;
    state.inbox = new Map();
    try { await loadInbox(null); } catch (e) { toast(`the inbox could not be loaded: ${e.message}`, "error"); }
  }

  /* Counts fetched before a live message this page already counted would lose it: fetch again instead. */
  function setSenders(senders, through) {
    if (!senders) return;
    if ((through || 0) < state.sendersThrough) { refreshSenders(); return; }
    state.senders = senders;
    state.sendersThrough = through || 0;
  }

  let sendersAsked = 0;
  function refreshSenders() {
    const asked = ++sendersAsked;
    getJSON("/api/inbox?limit=1").then((page) => {
      if (asked !== sendersAsked) return;  // a later refresh is on its way
      setSenders(page.senders, page.senders_through);
      renderInbox();
    }).catch((e) => console.warn("refreshing the inbox's senders failed:", e));
  }

  function markRead(ids) {
    const read = new Set(ids);
    for (const id of ids) {
      const m = state.inbox.get(id);
      if (m && !m.acked_at) m.acked_at = new Date().toISOString();
    }
    refreshSenders();
    if (read.size) renderInbox();
  }

  function inboxKey(m) {
    return `${m.id}:${m.acked_at ? "read" : "unread"}`;
  }

  function inboxItem(m) {
    const body = typeof m.body_html === "string" ? md(m.body_html) : plain(m.body);
    const reply = h("button", {type: "button", class: "btn btn-sm btn-ghost", data: {action: "reply"},
      title: `reply to ${m.from}`}, "↩ reply");
    reply.addEventListener("click", () => composeTo(m.from));
    let read = null;
    if (!m.acked_at) {
      read = h("button", {type: "button", class: "btn btn-sm btn-ghost", data: {action: "read"}, title: "mark it read"}, "✓ read");
      read.addEventListener("click", () => post("/inbox/read", {ids: [m.id]}, {button: read}));
    }
    return h("article", {class: ["inbox-item", !m.acked_at && "unread"],
      data: {message: m.id, inboxKey: inboxKey(m), read: m.acked_at ? "true" : "false"}},
      h("div", {class: "item-head"}, "from", nameEl(m.from), agoEl(m.sent_at), read, reply),
      H.clampable(body, m.body, "var(--bg-2)"), fileRefs(m));
  }

  // ========================================================== approvals

  function addApproval(a, live) {
    if (!a || a.id === undefined) return;
    if (a.status && a.status !== "pending") return;
    state.approvals.set(a.id, a);
    renderApprovals();
    if (live) {
      const card = approvalCardOf(a.id);
      if (card) card.classList.add("new");
      notify(`approval needed: ${a.kind}`, `${a.agent}: ${a.description || ""}`, `approval-${a.id}`);
    }
    updateAttention();
  }

  function approvalCardOf(id) {
    return els.approvals.querySelector(`[data-approval="${CSS.escape(String(id))}"]`);
  }

  function renderApprovals() {
    const items = [...state.approvals.values()].sort((a, b) => a.id - b.id); // oldest first: a queue
    syncList(els.approvals, items, (a) => a.id, approvalCard, "approval");
    setEmpty(els.approvals, "nothing waiting for approval");
    count("#approvals-count", items.length);
  }

  const OUTCOME = {  // every resolved status (states.RESOLVED)
    approved: ["✓ approved", "ok"], denied: ["✗ denied", "bad"], failed: ["✗ failed", "bad"],
    cancelled: ["⊘ withdrawn", "warn"],
  };

  function resolveApproval(a) {
    state.approvals.delete(a.id);
    count("#approvals-count", state.approvals.size);
    updateAttention();
    const [label, tone] = OUTCOME[a.status] || [a.status || "resolved", "warn"];
    const card = approvalCardOf(a.id);
    if (!card || card.classList.contains("resolved")) {
      // its card is gone already (resolved in another tab, or before this page loaded it): say it once
      const who = a.agent ? ` (${a.agent})` : "";
      toast(`approval #${a.id}${who}: ${label}${a.note ? " — " + a.note : ""}`, tone === "bad" ? "error" : "info");
      return;
    }
    card.dataset.status = a.status || "resolved";
    for (const b of card.querySelectorAll("button")) b.disabled = true;
    const form = card.querySelector(".deny-form");
    if (form) form.hidden = true;
    const actions = card.querySelector(".item-actions");
    actions.replaceChildren(h("span", {class: ["outcome", tone], role: "status"}, label, a.note ? ` — ${a.note}` : ""));
    linger(card, els.approvals, "nothing waiting for approval");
  }

  function approvalCard(a) {
    if (a.kind === "tool_use") return H.toolCallCard(a);  // a tool call: its input, and allow once / always / deny
    const diff = typeof a.diff === "string" ? a.diff : "";
    const errorEl = h("p", {class: "inline-error", role: "alert", hidden: true});
    const approve = h("button", {type: "button", class: "btn btn-sm btn-primary", data: {action: "approve"}}, "✓ approve");
    const deny = h("button", {type: "button", class: "btn btn-sm btn-danger", data: {action: "deny"}}, "✗ deny…");
    const reason = h("input", {type: "text", name: "reason", placeholder: "why? (the agent is told)", "aria-label": "reason for denying",
      data: {test: "deny-reason"}});
    const denyForm = h("form", {class: "deny-form", hidden: true},
      reason,
      h("button", {type: "submit", class: "btn btn-sm btn-danger", data: {action: "deny-confirm"}}, "deny"),
      h("button", {type: "button", class: "btn btn-sm btn-ghost", data: {action: "deny-cancel"}}, "cancel"));

    approve.addEventListener("click", () => post(`/approve/${enc(a.id)}`, {}, {button: approve, errorEl}));
    deny.addEventListener("click", () => {
      denyForm.hidden = false;
      reason.focus();
    });
    denyForm.addEventListener("submit", (e) => {
      e.preventDefault();
      post(`/deny/${enc(a.id)}`, {reason: reason.value.trim()}, {button: denyForm.querySelector("[type=submit]"), errorEl});
    });
    denyForm.querySelector('[data-action="deny-cancel"]').addEventListener("click", () => {
      denyForm.hidden = true;
      deny.focus();
    });
    reason.addEventListener("keydown", (e) => {
      if (e.key === "Escape") { denyForm.hidden = true; deny.focus(); }
    });

    const refs = h("div", {class: "refs"},
      a.commit_ref && h("span", {class: "chip mono", title: `commit ref ${a.commit_ref}`}, H.shortSha(a.commit_ref)),
      a.fetched_sha && h("span", {class: "chip mono", title: `fetched ${a.fetched_sha}`}, "@" + H.shortSha(a.fetched_sha)));

    return h("article", {class: "item approval", data: {approval: a.id, status: a.status || "pending", kind: a.kind},
      "aria-label": `approval ${a.id}: ${a.kind} for ${a.agent}`},
    h("div", {class: "item-head"},
      h("span", {class: "id"}, "#" + a.id), h("span", {class: "chip honey"}, a.kind || "approval"), nameEl(a.agent),
      agoEl(a.requested_at)),
    a.description ? H.clampable(h("p", {class: "desc"}, a.description), a.description, "var(--bg-2)") : null,
    refs.children.length ? refs : null,
    diff ? diffBox(a.id, diff) : null,
    h("div", {class: "item-actions"}, approve, deny),
    denyForm, errorEl);
  }

  /* The raw diff in a new tab: fetched with the session's key (a plain link would carry only the
   * cookie, which opens no data), shown from a blob of this origin. */
  function rawDiffLink(id) {
    const link = h("a", {class: "raw-link", href: "#", title: "the diff as plain text, in a new tab"}, "raw ↗");
    link.addEventListener("click", async (e) => {
      e.preventDefault();
      e.stopPropagation();
      try {
        const res = await fetch(`/approval/${enc(id)}/diff`, {credentials: "same-origin", cache: "no-store",
          headers: {"X-Hive-Key": H.key()}});
        if (!res.ok) throw new Error(await H.errorOf(res));
        const url = URL.createObjectURL(new Blob([await res.text()], {type: "text/plain;charset=utf-8"}));
        window.open(url, "_blank", "noopener");
        setTimeout(() => URL.revokeObjectURL(url), 60000);
      } catch (err) {
        toast(`the raw diff could not be opened: ${err.message}`, "error");
      }
    });
    return link;
  }

  /* A collapsible coloured diff; a big one is drawn only when first opened. */
  function diffBox(id, diff) {
    const st = H.diffStats(diff);
    const lines = diff.split("\n").length;
    const open = lines <= DIFF_OPEN_LINES;
    const box = h("details", {class: "diff-box", open},
      h("summary", {},
        h("span", {}, "diff"),
        h("span", {class: "add"}, `+${st.add}`),
        h("span", {class: "del"}, `−${st.del}`),
        st.files ? h("span", {class: "hint"}, `${st.files} file${st.files === 1 ? "" : "s"}`) : null,
        rawDiffLink(id)));
    let drawn = false;
    const draw = () => {
      if (drawn || !box.open) return;
      drawn = true;
      box.appendChild(H.diffEl(diff));
    };
    box.addEventListener("toggle", draw);
    draw();
    return box;
  }

  // ========================================================== questions

  function addQuestion(q, live) {
    if (!q || q.id === undefined) return;
    state.questions.set(q.id, q);
    renderQuestions();
    if (live) {
      const card = questionCardOf(q.id);
      if (card) card.classList.add("new");
      notify(`${q.asker} asks`, q.question || "", `question-${q.id}`);
    }
    updateAttention();
  }

  function questionCardOf(id) {
    return els.questions.querySelector(`[data-question="${CSS.escape(String(id))}"]`);
  }

  function renderQuestions() {
    const items = [...state.questions.values()].sort((a, b) => a.id - b.id);
    syncList(els.questions, items, (q) => q.id, questionCard, "question");
    setEmpty(els.questions, "no open questions");
    count("#questions-count", items.length);
  }

  function resolveQuestion(q) {
    state.questions.delete(q.id);
    count("#questions-count", state.questions.size);
    updateAttention();
    const card = questionCardOf(q.id);
    if (!card || card.classList.contains("resolved")) return;
    for (const b of card.querySelectorAll("button, input")) b.disabled = true;
    const by = q.answered_by && q.answered_by !== "operator" ? ` (by ${q.answered_by})` : "";
    const cancelled = typeof q.answer === "string" && q.answer.startsWith("[cancelled by ");
    const answer = q.answer === null || q.answer === undefined ? "closed" : cancelled ? "cancelled" : `answered: ${q.answer}`;
    const form = card.querySelector(".answer-form");
    const outcome = h("p", {class: ["outcome", cancelled ? "cancelled" : "ok"], role: "status"},
      `${cancelled ? "✕" : "✓"} ${answer}${by}`);
    if (form) form.replaceWith(outcome); else card.appendChild(outcome);
    const opts = card.querySelector(".options");
    if (opts) opts.remove();
    linger(card, els.questions, "no open questions");
  }

  function questionCard(q) {
    const errorEl = h("p", {class: "inline-error", role: "alert", hidden: true});
    const input = h("input", {type: "text", name: "answer", placeholder: "answer in your own words…", "aria-label": "answer"});
    const submit = h("button", {type: "submit", class: "btn btn-sm btn-primary", data: {action: "answer"}}, "answer");
    const form = h("form", {class: "answer-form"}, input, submit);
    const answer = (text, btn) => post(`/answer-question/${enc(q.id)}`, {answer: text}, {button: btn, errorEl});

    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const text = input.value.trim();
      if (!text) { H.showError(errorEl, "type an answer, or pick one of the options"); input.focus(); return; }
      answer(text, submit);
    });

    const options = Array.isArray(q.options) && q.options.length
      ? h("div", {class: "options"}, q.options.map((o) => {
        const b = h("button", {type: "button", class: "btn btn-sm btn-teal", data: {action: "option", answer: o}}, o);
        b.addEventListener("click", () => answer(o, b));
        return b;
      }))
      : null;

    // withdrawn as the operator (the host verb cancel_question): its asker is told it has no answer
    const cancel = h("button", {type: "button", class: "btn btn-sm btn-ghost", data: {action: "cancel-question"},
      title: "withdraw this question: its asker is told it was cancelled"}, "cancel");
    cancel.addEventListener("click", () => {
      if (!window.confirm(`Cancel question #${q.id} from ${q.asker}? It is told the question has no answer.`)) return;
      post(`/cancel-question/${enc(q.id)}`, {}, {button: cancel, errorEl});
    });

    const expires = toMs(q.expires_at);
    return h("article", {class: "item question", data: {question: q.id}, "aria-label": `question ${q.id} from ${q.asker}`},
      h("div", {class: "item-head"},
        h("span", {class: "id"}, "#" + q.id), nameEl(q.asker), "asks",
        expires ? h("span", {class: "expires", data: {until: expires}}, "expires in " + H.until(expires)) : null,
        agoEl(q.asked_at), cancel),
      typeof q.question_html === "string" ? md(q.question_html) : plain(q.question),
      options, form, errorEl);
  }

  // ================================================ tombstones, meta, spawn

  function renderTombstones() {
    const names = (state.tombstones || []).map((t) => (typeof t === "string" ? t : t && t.name)).filter(Boolean);
    $("#tombstones-panel").hidden = names.length === 0;
    count("#tombstones-count", names.length);
    els.tombstones.replaceChildren(...names.map((name) => {
      const btn = h("button", {type: "button", class: "btn btn-sm btn-danger", data: {action: "purge", name}}, "purge");
      btn.addEventListener("click", () => {
        if (!window.confirm(`Purge ${name}'s kept state for good? This cannot be undone.`)) return;
        post(`/purge-tombstone/${enc(name)}`, {}, {button: btn});
      });
      return h("li", {data: {tombstone: name}}, nameEl(name), btn);
    }));
  }

  function renderMeta() {
    const meta = state.metaInputs;
    const panel = $("#meta-panel");
    panel.hidden = meta === null || meta === undefined;
    if (panel.hidden) return;
    const box = $("#meta-inputs");
    box.replaceChildren(metaView(meta));
  }

  /* meta_inputs' shape is the core's; show any object as key → value lines. */
  function metaView(meta) {
    if (Array.isArray(meta)) {
      if (!meta.length) return h("p", {class: "empty"}, "no inputs");
      return h("dl", {class: "kv"}, meta.map((item, i) => {
        const name = item && typeof item === "object" ? (item.name || item.input || String(i)) : String(i);
        return [h("dt", {}, name), h("dd", {}, metaValue(item))];
      }));
    }
    if (meta && typeof meta === "object") {
      const entries = Object.entries(meta);
      if (!entries.length) return h("p", {class: "empty"}, "no inputs");
      return h("dl", {class: "kv"}, entries.map(([k, v]) => [h("dt", {}, k), h("dd", {title: typeof v === "string" ? v : null}, metaValue(v))]));
    }
    return h("p", {}, String(meta));
  }

  function metaValue(v) {
    if (v === null || v === undefined) return "–";
    if (typeof v === "string") return /^[0-9a-f]{40}$/.test(v) ? H.shortSha(v) : v;
    if (typeof v === "object") {
      const rev = v.rev || v.locked_rev || v.sha;
      if (rev) return H.shortSha(rev) + (v.lastModified ? " · " + H.ago(toMs(v.lastModified)) : "");
      return JSON.stringify(v);
    }
    return String(v);
  }

  $("#meta-update").addEventListener("click", (e) => post("/meta-update", {}, {button: e.currentTarget}));
  $("#inbox-read-all").addEventListener("click", (e) => post("/inbox/read", {}, {button: e.currentTarget}));

  // ========================================================== sessions

  async function renderSessions() {
    let data;
    try { data = await getJSON("/api/sessions"); } catch (e) { toast(`the sessions could not be loaded: ${e.message}`, "error"); return; }
    $("#sessions-list").replaceChildren(...(data.sessions || []).map((s) => {
      const end = h("button", {type: "button", class: "btn btn-sm btn-ghost", data: {session: s.id}},
        s.current ? "log out" : "end");
      end.addEventListener("click", async () => {
        const r = await post(s.current ? "/logout" : `/logout/${enc(s.id)}`, {}, {button: end});
        if (r.ok && s.current) loggedOut(); else if (r.ok) renderSessions();
      });
      return h("li", {class: ["session", s.current && "current"], data: {session: s.id}},
        h("span", {class: "mono"}, `#${s.id}`), s.current ? h("span", {class: "chip teal"}, "this browser") : null,
        h("span", {class: "hint", title: s.user_agent || ""}, `${s.remote || "?"} · since ${H.stamp(toMs(s.created_at))}`),
        agoEl(s.last_seen_at), end);
    }));
  }

  function loggedOut() {
    try { localStorage.removeItem("hive.key"); } catch (_) { /* nothing kept */ }
    if (term) term.close();
    document.body.classList.add("logged-out");
    toast("logged out: run `hyperhive login-url` on the hive's host to log in again", "warn", 0);
  }

  $("#sessions").addEventListener("toggle", (e) => { if (e.currentTarget.open) renderSessions(); });
  $("#logout").addEventListener("click", async (e) => {
    const r = await post("/logout", {}, {button: e.currentTarget});
    if (r.ok) loggedOut();
  });
  $("#inbox-older").addEventListener("click", async (e) => {
    const oldest = Math.min(...state.inbox.keys());
    e.currentTarget.disabled = true;
    try { await loadInbox(oldest); } catch (err) { toast(`older messages could not be loaded: ${err.message}`, "error"); }
    finally { e.currentTarget.disabled = false; }
  });

  $("#spawn-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const input = $("#spawn-name");
    const name = input.value.trim();
    const errorEl = $("#spawn-error");
    if (!name) { H.showError(errorEl, "give the new agent a name"); input.focus(); return; }
    const res = await post("/spawn", {name}, {button: $("#spawn-btn"), errorEl});
    if (res.ok) input.value = "";
  });

  // ============================================================ attention

  function updateAttention() {
    const a = state.approvals.size, q = state.questions.size;
    const n = a + q;
    document.title = (n ? `(${n}) ` : "") + "hyperhive";
    const box = $("#attention");
    box.hidden = n === 0;
    // replaceChildren would print a null as the text "null": pass only the chips there are
    box.replaceChildren(...[
      a ? h("a", {class: "chip honey", href: "#approvals-panel"}, `⚑ ${a} approval${a === 1 ? "" : "s"}`) : null,
      q ? h("a", {class: "chip honey", href: "#questions-panel"}, `? ${q} question${q === 1 ? "" : "s"}`) : null,
    ].filter(Boolean));
  }

  // ======================================================= notifications

  const notifyBtn = $("#notify");
  let notifyOn = H.load(NOTIFY_KEY) === "1" && "Notification" in window && Notification.permission === "granted";

  function paintNotify() {
    notifyBtn.setAttribute("aria-pressed", notifyOn ? "true" : "false");
    notifyBtn.textContent = notifyOn ? "◉ notifying" : "○ notify me";
  }

  notifyBtn.addEventListener("click", async () => {
    if (notifyOn) {
      notifyOn = false;
      H.save(NOTIFY_KEY, "0");
      paintNotify();
      return;
    }
    if (!("Notification" in window)) { toast("this browser has no notifications", "warn"); return; }
    let perm = Notification.permission;
    if (perm !== "granted") {
      try { perm = await Notification.requestPermission(); } catch (_) { perm = "denied"; }
    }
    if (perm === "granted") {
      notifyOn = true;
      H.save(NOTIFY_KEY, "1");
      toast("you will be notified of new approvals and questions while this tab is hidden", "info");
    } else {
      toast("the browser blocks notifications for this page; allow them in its site settings", "warn");
    }
    paintNotify();
  });
  paintNotify();

  function notify(title, body, tag) {
    if (!notifyOn || !document.hidden || !("Notification" in window) || Notification.permission !== "granted") return;
    try {
      const n = new Notification(title, {body: String(body || "").slice(0, 240), tag, icon: "/static/favicon.svg"});
      n.addEventListener("click", () => { window.focus(); n.close(); });
    } catch (e) { console.warn("this browser refused a page notification:", e); }
  }

  // ============================================================== compose

  const compose = {
    el: $("#compose"),
    list: $("#compose-suggest"),
    err: $("#compose-error"),
    btn: $("#compose-send"),
    items: [],
    index: 0,
  };

  function recipients() {
    const names = new Set(["manager", ...state.containers.keys()]);
    return [...names].sort(compareContainers);
  }

  /* The @word being typed at the very start, up to the caret; null when not there. */
  function mentionAtCaret() {
    const el = compose.el;
    if (el.selectionStart !== el.selectionEnd) return null;
    const m = /^@([a-z0-9-]*)$/i.exec(el.value.slice(0, el.selectionStart));
    return m ? m[1].toLowerCase() : null;
  }

  function suggestOpen() {
    return !compose.list.hidden;
  }

  function closeSuggest() {
    compose.list.hidden = true;
    compose.el.setAttribute("aria-expanded", "false");
    compose.el.removeAttribute("aria-activedescendant");
  }

  function updateSuggest() {
    const q = mentionAtCaret();
    if (q === null) return closeSuggest();
    const all = recipients();
    const items = all.filter((n) => n.startsWith(q)).concat(all.filter((n) => !n.startsWith(q) && n.includes(q)));
    if (!items.length) return closeSuggest();
    compose.items = items;
    compose.index = Math.min(compose.index, items.length - 1);
    paintSuggest();
  }

  function paintSuggest() {
    compose.list.replaceChildren(...compose.items.map((name, i) => {
      const c = state.containers.get(name);
      const note = isManager(c) || name === "manager" ? "manager" : c ? c.state : "";
      const li = h("li", {id: `suggest-${i}`, role: "option", "aria-selected": i === compose.index ? "true" : "false"},
        nameEl(name), note ? h("span", {class: "note"}, note) : null);
      li.addEventListener("mousedown", (e) => { e.preventDefault(); acceptSuggest(name); });
      return li;
    }));
    compose.list.hidden = false;
    compose.el.setAttribute("aria-expanded", "true");
    compose.el.setAttribute("aria-activedescendant", `suggest-${compose.index}`);
  }

  function acceptSuggest(name) {
    const el = compose.el;
    const rest = el.value.slice(el.selectionStart).replace(/^\S*\s*/, "");
    el.value = `@${name} ${rest}`;
    const caret = name.length + 2;
    el.setSelectionRange(caret, caret);
    compose.index = 0;
    closeSuggest();
    autogrow();
  }

  function autogrow() {
    const el = compose.el;
    el.style.height = "auto";
    el.style.height = Math.min(el.scrollHeight + 2, window.innerHeight * 0.4) + "px";
  }

  function composeTo(name) {
    const el = compose.el;
    const body = el.value.replace(/^\s*@\S*\s*/, "");
    el.value = `@${name} ${body}`;
    el.focus();
    el.setSelectionRange(el.value.length, el.value.length);
    autogrow();
  }

  async function send() {
    const el = compose.el;
    const m = /^\s*@([A-Za-z0-9_.-]+)(?:\s+([\s\S]*))?$/.exec(el.value);
    if (!m) {
      H.showError(compose.err, "start with @name to choose who gets the message");
      return;
    }
    const to = m[1];
    const body = (m[2] || "").trim();
    if (!body) {
      H.showError(compose.err, `write something after @${to}`);
      return;
    }
    const res = await post("/op-send", {to, body}, {button: compose.btn, errorEl: compose.err});
    if (!res.ok) return;
    // the row appears when the `sent` event arrives; the box is ready for the next one
    H.save(LAST_TO_KEY, to);
    el.value = `@${to} `;
    autogrow();
    el.focus();
  }

  compose.el.addEventListener("keydown", (e) => {
    if (suggestOpen()) {
      if (e.key === "ArrowDown" || e.key === "ArrowUp") {
        e.preventDefault();
        const n = compose.items.length;
        compose.index = (compose.index + (e.key === "ArrowDown" ? 1 : n - 1)) % n;
        paintSuggest();
        return;
      }
      if (e.key === "Tab" || (e.key === "Enter" && !e.shiftKey)) {
        e.preventDefault();
        acceptSuggest(compose.items[compose.index]);
        return;
      }
      if (e.key === "Escape") { e.preventDefault(); closeSuggest(); return; }
    }
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  compose.el.addEventListener("input", () => {
    compose.index = 0;
    H.showError(compose.err, null);
    autogrow();
    updateSuggest();
  });
  compose.el.addEventListener("click", updateSuggest);
  compose.el.addEventListener("keyup", (e) => {
    if (["ArrowLeft", "ArrowRight", "Home", "End"].includes(e.key)) updateSuggest();
  });
  compose.el.addEventListener("blur", () => setTimeout(closeSuggest, 120));
  $("#compose-form").addEventListener("submit", (e) => { e.preventDefault(); send(); });

  // "/" anywhere outside a field jumps to the compose line
  document.addEventListener("keydown", (e) => {
    if (e.key !== "/" || e.ctrlKey || e.metaKey || e.altKey) return;
    const t = e.target;
    if (t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName))) return;
    e.preventDefault();
    compose.el.focus();
    compose.el.setSelectionRange(compose.el.value.length, compose.el.value.length);
  });

  const lastTo = H.load(LAST_TO_KEY, null);
  if (lastTo) compose.el.value = `@${lastTo} `;

  // ============================================================ terminal

  let hadLive = false;
  term = window.HiveTerminal.create({
    mount: "#msgflow",
    streamUrl: "/dashboard/stream",
    label: "message flow",
    emptyText: "no messages yet — the hive is quiet",
    snapshot,
    keyOf: (ev) => (ev.kind === "sent" && ev.message ? "m" + ev.message.id : null),
    cursorOf: (ev) => (ev.kind === "sent" && ev.message && typeof ev.message.id === "number" ? ev.message.id : null),
    render: renderFlow,
    onEvent,
    onReset: () => {
      if (hadLive) toast("the core restarted: the dashboard reloaded its state", "warn");
    },
    onStatus: (live, why) => {
      if (live) hadLive = true;
      H.setLive(els.live, live, "live", why);
      if (!live) H.probe("/api/sessions"); // no answer at all: the core is down, and the page greys
    },
  });

  window.hive = {term, state, send, composeTo};
})();
