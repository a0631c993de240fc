/* hyperhive — the terminal: one live, keyed, sticky-bottom log used by the
 * dashboard's message flow, each agent's turn terminal and the journal tail.
 *
 *   const term = window.HiveTerminal.create({
 *     mount,              // element or selector; the terminal is built inside it
 *     streamUrl,          // the SSE stream
 *     snapshot(cursor),   // → Promise<{seq, epoch?, events, reset?}>
 *     keyOf(ev),          // → row key; a shown key is replaced in place, never drawn twice
 *     render(ev, ctx),    // → Node, or null when the event is not a row
 *     onEvent(ev, ctx),   // every event (ctx.source: "snapshot" | "live")
 *     onReset(),          // the world started afresh (epoch changed, numbering restarted, reset)
 *     onStatus(live, why),
 *     cursorOf(ev),       // → number or null; the snapshot is asked for what is newer
 *     older(before),      // optional → Promise<{events}>: adds a "load older" control
 *     parse(msgEvent),    // optional → [event, …] from one SSE message (default: JSON)
 *     maxRows, emptyText, label,
 *   });
 *   term.reconnect(); term.eventSource; term.row(key); term.live; term.close();
 *
 * The snapshot contract (docs/web.md): open the stream, wait until it is
 * open (the server has subscribed us), buffer what arrives, fetch the
 * snapshot (its `seq` was read before it was assembled), render it, then
 * apply the buffered events with a greater seq, then live ones. On any
 * error the terminal closes the stream and does the whole dance again
 * with a backoff — never the browser's own reconnect, which would skip the
 * snapshot and lose whatever happened while we were away.
 */
(function () {
  "use strict";

  const BACKOFF_START = 1000;
  const BACKOFF_MAX = 10000;
  const OPEN_TIMEOUT = 15000; // a stream that never opens counts as a failure
  const PIN_SLACK = 40;       // px from the bottom that still counts as "at the bottom"

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function defaultParse(msg) {
    try {
      const ev = JSON.parse(msg.data);
      return Array.isArray(ev) ? ev : [ev];
    } catch (e) {
      // nothing is dropped silently: the page's render shows unknown kinds raw
      return [{kind: "bad_frame", data: String(msg.data).slice(0, 4000), error: e.message}];
    }
  }

  function seqOf(ev) {
    const s = ev && ev.seq;
    return typeof s === "number" && s > 0 ? s : null;
  }

  function errorRow(err, ev) {
    const row = el("div", "trow raw warn");
    row.appendChild(el("span", "pfx", "!"));
    let json = "";
    try { json = JSON.stringify(ev); } catch (_) { json = String(ev); }
    row.appendChild(el("span", "body", `could not draw this event (${err && err.message}): ${json}`));
    return row;
  }

  class Terminal {
    constructor(opts) {
      this.opts = Object.assign({
        keyOf: (ev) => (seqOf(ev) !== null ? String(ev.seq) : null),
        render: () => null,
        onEvent: () => {},
        onReset: () => {},
        onStatus: () => {},
        cursorOf: (ev) => seqOf(ev),
        parse: defaultParse,
        maxRows: 4000,
        emptyText: "waiting for the first event…",
        label: "live log",
      }, opts || {});

      this.rows = new Map();       // key → row node
      this.cursors = new WeakMap(); // row node → its cursor (for "load older" after trimming)
      this.cursor = null;          // the newest cursor seen: the snapshot asks for what is newer
      this.oldest = null;          // the oldest cursor seen: "load older" asks for what is older
      this.epoch = undefined;      // the server's world; a new one means start afresh
      this.maxSeq = 0;             // the highest stream seq seen (numbering going back = new world)
      this.appliedSeq = 0;         // per connection: stream events at or below this are already shown
      this.eventSource = null;
      this.live = false;
      this.pinned = true;
      this.unseen = 0;
      this.backoff = BACKOFF_START;
      this.generation = 0;         // bumps on every (re)connect; stale callbacks check it and bail
      this._auto = 0;
      this._fail = null;
      this._retryTimer = null;
      this._programmatic = null;
      this._stickQueued = false;
      this._olderDone = false;
      this._loadingOlder = false;

      this._build();
      // A test (or a proxy) may close the EventSource under us without an
      // error event; a local check notices. This asks the server nothing.
      this._watchdog = setInterval(() => {
        if (this._fail && this.eventSource && this.eventSource.readyState === 2) this._fail("stream closed");
      }, 1000);
      if (this.opts.autoStart !== false) this.connect();
    }

    // ---------------------------------------------------------------- DOM

    _build() {
      const mount = typeof this.opts.mount === "string" ? document.querySelector(this.opts.mount) : this.opts.mount;
      if (!mount) throw new Error("HiveTerminal: no mount element");
      this.root = mount;
      mount.classList.add("term", "is-empty");
      mount.dataset.live = "false";

      this.logEl = el("div", "term-log");
      this.logEl.setAttribute("role", "log");
      this.logEl.setAttribute("aria-label", this.opts.label);
      this.logEl.setAttribute("aria-live", this.opts.ariaLive || "off");
      this.logEl.tabIndex = 0; // scrollable with the keyboard

      this.topEl = el("div", "term-top");
      if (this.opts.older) {
        this.olderBtn = el("button", "term-older", "↑ load older");
        this.olderBtn.type = "button";
        this.olderBtn.addEventListener("click", () => this.loadOlder());
        this.topEl.appendChild(this.olderBtn);
      }
      this.rowsEl = el("div", "term-rows");
      this.emptyEl = el("div", "term-empty", this.opts.emptyText);
      this.logEl.append(this.topEl, this.rowsEl, this.emptyEl);

      this.pillEl = el("button", "term-pill", "↓ latest");
      this.pillEl.type = "button";
      this.pillEl.hidden = true;
      this.pillEl.addEventListener("click", () => this.scrollToBottom());

      mount.append(this.logEl, this.pillEl);

      this.logEl.addEventListener("scroll", () => this._onScroll(), {passive: true});
      // Rows that grow (a tool result arriving, a <details> opened) or a
      // resized window keep a pinned terminal at the bottom.
      if (window.ResizeObserver) {
        const ro = new ResizeObserver(() => { if (this.pinned) this._stick(); });
        ro.observe(this.rowsEl);
        ro.observe(this.logEl);
      }
    }

    _onScroll() {
      const log = this.logEl;
      // our own scrollToBottom fires a scroll event too; it is not the operator moving away
      if (this._programmatic !== null && Math.abs(log.scrollTop - this._programmatic) < 2) return;
      this._programmatic = null;
      // a layout shift (new rows, the compose box shrinking) scrolls before our queued
      // stick-to-bottom runs: that is not the operator moving away either
      if (this.pinned && this._stickQueued) return;
      this.pinned = log.scrollHeight - log.scrollTop - log.clientHeight <= PIN_SLACK;
      if (this.pinned) this.unseen = 0;
      this._updatePill();
    }

    scrollToBottom() {
      const log = this.logEl;
      this.pinned = true;
      this.unseen = 0;
      log.scrollTop = log.scrollHeight;
      this._programmatic = log.scrollTop;
      this._updatePill();
    }

    _stick() {
      if (this._stickQueued) return;
      this._stickQueued = true;
      requestAnimationFrame(() => {
        this._stickQueued = false;
        if (this.pinned) this.scrollToBottom();
      });
    }

    _updatePill() {
      const show = !this.pinned && this.rows.size > 0;
      this.pillEl.hidden = !show;
      this.pillEl.textContent = this.unseen > 0 ? `↓ ${this.unseen} new` : "↓ latest";
      this.pillEl.classList.toggle("has-new", this.unseen > 0);
    }

    _updateEmpty() {
      const empty = this.rows.size === 0;
      this.root.classList.toggle("is-empty", empty);
      if (this.olderBtn) this.olderBtn.hidden = empty;
    }

    // ------------------------------------------------------------- rows

    row(key) {
      const node = this.rows.get(String(key));
      return node && node.isConnected ? node : null;
    }

    remove(key) {
      const node = this.rows.get(String(key));
      if (node) node.remove();
      this.rows.delete(String(key));
      this._updateEmpty();
    }

    /* Forget every row and cursor (a new world). The stream stays as it is. */
    clear() {
      this.rows.clear();
      while (this.rowsEl.firstChild) this.rowsEl.removeChild(this.rowsEl.firstChild);
      this.cursor = null;
      this.oldest = null;
      this.maxSeq = 0;
      this.unseen = 0;
      this._olderDone = false;
      if (this.olderBtn) { this.olderBtn.disabled = false; this.olderBtn.textContent = "↑ load older"; }
      this._updateEmpty();
      this._updatePill();
    }

    _keyOf(ev) {
      const k = this.opts.keyOf(ev);
      return k === null || k === undefined ? `auto-${++this._auto}` : String(k);
    }

    _render(ev, ctx) {
      try {
        return this.opts.render(ev, ctx) || null;
      } catch (err) {
        console.error("hive terminal: render failed", err, ev);
        return errorRow(err, ev);
      }
    }

    _track(ev) {
      const s = seqOf(ev);
      if (s !== null && s > this.maxSeq) this.maxSeq = s;
      let c = null;
      try { c = this.opts.cursorOf(ev); } catch (_) { c = null; }
      if (typeof c === "number" && !Number.isNaN(c)) {
        if (this.cursor === null || c > this.cursor) this.cursor = c;
        if (this.oldest === null || c < this.oldest) this.oldest = c;
      }
      return typeof c === "number" ? c : null;
    }

    /* One event, in order: the page's state first, then its row (if any). */
    _apply(ev, source) {
      const ctx = {source, live: source === "live", term: this};
      const cursor = this._track(ev);
      try {
        this.opts.onEvent(ev, ctx);
      } catch (err) {
        console.error("hive terminal: onEvent failed", err, ev);
      }
      const node = this._render(ev, ctx);
      if (!node) return;
      const key = this._keyOf(ev);
      node.dataset.key = key;
      if (cursor !== null) this.cursors.set(node, cursor);
      const old = this.rows.get(key);
      if (old && old.isConnected) {
        old.replaceWith(node); // an update of a row already shown: in place, never twice
        this.rows.set(key, node);
        return;
      }
      this.rows.set(key, node);
      this.rowsEl.appendChild(node);
      this._updateEmpty();
      if (this.pinned) this._stick();
      else { this.unseen++; this._updatePill(); }
      this._trim();
    }

    /* A stream event: drop it when the snapshot (or an earlier frame) already covered its seq. */
    _applyLive(ev) {
      const s = seqOf(ev);
      if (s !== null) {
        if (s <= this.appliedSeq) return;
        this.appliedSeq = s;
      }
      this._apply(ev, "live");
    }

    /* Keep the DOM bounded: the oldest rows go (and "load older" can bring them back). */
    _trim() {
      const max = this.opts.maxRows;
      if (!max || this.rows.size <= max) return;
      const log = this.logEl;
      const before = log.scrollHeight;
      let drop = this.rows.size - max;
      while (drop-- > 0 && this.rowsEl.firstChild) {
        const node = this.rowsEl.firstChild;
        node.remove();
        if (node.dataset && node.dataset.key !== undefined) this.rows.delete(node.dataset.key);
      }
      if (!this.pinned) {
        // rows vanished above the operator's view: move up by as much, so what they read stays put
        log.scrollTop = Math.max(0, log.scrollTop - (before - log.scrollHeight));
        this._programmatic = log.scrollTop;
      }
      const first = this.rowsEl.firstChild;
      const c = first ? this.cursors.get(first) : undefined;
      if (c !== undefined) this.oldest = c;
      this._olderDone = false;
      if (this.olderBtn) { this.olderBtn.disabled = false; this.olderBtn.textContent = "↑ load older"; }
    }

    // ------------------------------------------------------- connection

    _setStatus(live, why) {
      const changed = live !== this.live;
      this.live = live;
      this.root.dataset.live = live ? "true" : "false";
      if (changed || why) {
        try { this.opts.onStatus(live, why); } catch (err) { console.error(err); }
      }
    }

    /* Open the stream and do the snapshot dance (again). */
    connect() {
      this._teardown();
      const gen = ++this.generation;
      const es = new EventSource(window.Hive.streamUrl(this.opts.streamUrl), {withCredentials: false});
      this.eventSource = es;
      let buffer = [];   // stream events that arrive before the snapshot is in; null once live
      let opened = false;

      const fail = (why) => {
        if (gen !== this.generation || this._fail !== fail) return;
        this._fail = null;
        clearTimeout(openTimer);
        es.close();
        this._setStatus(false, why || "stream error");
        const delay = this.backoff;
        this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX);
        this._retryTimer = setTimeout(() => {
          if (gen === this.generation) this.connect();
        }, delay);
      };
      this._fail = fail;
      const openTimer = setTimeout(() => fail("the stream did not open"), OPEN_TIMEOUT);

      es.onmessage = (msg) => {
        if (gen !== this.generation) return;
        let events;
        try { events = this.opts.parse(msg) || []; } catch (err) { events = defaultParse(msg); }
        if (buffer) buffer.push(...events);
        else for (const ev of events) this._applyLive(ev);
      };

      es.onerror = () => fail("stream error");

      es.onopen = async () => {
        // `open` means the server has subscribed us: from here nothing can
        // slip between the snapshot and the stream.
        if (gen !== this.generation || opened) return;
        opened = true;
        clearTimeout(openTimer);
        try {
          const ok = await this._snapshot(gen);
          if (!ok) return;
        } catch (err) {
          console.warn("hive terminal: snapshot failed", err);
          fail(err && err.message ? err.message : "snapshot failed");
          return;
        }
        if (gen !== this.generation) return;
        const pending = buffer;
        buffer = null;
        for (const ev of pending) this._applyLive(ev);
        this.backoff = BACKOFF_START;
        this._setStatus(true);
      };
    }

    async _snapshot(gen) {
      const asked = this.cursor;
      let snap = norm(await this.opts.snapshot(asked));
      if (gen !== this.generation) return false;

      const newEpoch = snap.epoch !== null && this.epoch !== undefined && this.epoch !== null && snap.epoch !== this.epoch;
      const wentBack = typeof snap.seq === "number" && this.maxSeq > 0 && snap.seq < this.maxSeq;
      if (newEpoch || wentBack) {
        // the server restarted its numbering: what we show belongs to another world
        this.clear();
        this._reset();
        if (asked !== null) {
          snap = norm(await this.opts.snapshot(null));
          if (gen !== this.generation) return false;
        }
      } else if (snap.reset) {
        this.clear();
        this._reset();
      }
      if (snap.epoch !== null) this.epoch = snap.epoch;

      this.appliedSeq = snap.seq;
      if (snap.seq > this.maxSeq) this.maxSeq = snap.seq;
      for (const ev of snap.events) {
        this._apply(ev, "snapshot");
        const s = seqOf(ev);
        // an event the snapshot already showed is not applied again from the buffer
        if (s !== null && s > this.appliedSeq) this.appliedSeq = s;
      }
      this._updateEmpty();
      return true;
    }

    _reset() {
      try { this.opts.onReset(); } catch (err) { console.error("hive terminal: onReset failed", err); }
    }

    _teardown() {
      clearTimeout(this._retryTimer);
      this._retryTimer = null;
      this._fail = null;
      if (this.eventSource) this.eventSource.close();
    }

    /* Drop the connection and do the whole dance again, now. */
    reconnect() {
      this.backoff = BACKOFF_START;
      this._setStatus(false, "reconnecting");
      this.connect();
    }

    close() {
      this.generation++;
      this._teardown();
      clearInterval(this._watchdog);
      this._setStatus(false, "closed");
    }

    // ------------------------------------------------------------ older

    async loadOlder() {
      if (!this.opts.older || this._loadingOlder || this._olderDone) return;
      const btn = this.olderBtn;
      this._loadingOlder = true;
      btn.disabled = true;
      btn.textContent = "loading…";
      try {
        const res = await this.opts.older(this.oldest);
        const events = (res && res.events) || [];
        const log = this.logEl;
        const beforeHeight = log.scrollHeight;
        const beforeTop = log.scrollTop;
        const anchor = this.rowsEl.firstChild;
        for (const ev of events) {
          const cursor = this._trackOlder(ev);
          const key = this._keyOf(ev);
          if (this.rows.has(key)) continue;
          const node = this._render(ev, {source: "older", live: false, term: this});
          if (!node) continue;
          node.dataset.key = key;
          if (cursor !== null) this.cursors.set(node, cursor);
          this.rows.set(key, node);
          this.rowsEl.insertBefore(node, anchor);
        }
        // rows grew above the operator's view: move down by as much, so nothing jumps
        log.scrollTop = beforeTop + (log.scrollHeight - beforeHeight);
        this._programmatic = log.scrollTop;
        if (!events.length) {
          this._olderDone = true;
          btn.textContent = "— start of history —";
        } else {
          btn.disabled = false;
          btn.textContent = "↑ load older";
        }
        this._updateEmpty();
      } catch (err) {
        btn.disabled = false;
        btn.textContent = "↑ load older (failed — retry)";
        btn.title = err && err.message ? err.message : "";
      } finally {
        this._loadingOlder = false;
      }
    }

    _trackOlder(ev) {
      let c = null;
      try { c = this.opts.cursorOf(ev); } catch (_) { c = null; }
      if (typeof c !== "number" || Number.isNaN(c)) return null;
      if (this.oldest === null || c < this.oldest) this.oldest = c;
      return c;
    }
  }

  function norm(snap) {
    const s = snap || {};
    return {
      seq: typeof s.seq === "number" ? s.seq : Number(s.seq) || 0,
      epoch: s.epoch === undefined ? null : s.epoch,
      events: Array.isArray(s.events) ? s.events : [],
      reset: !!s.reset,
    };
  }

  window.HiveTerminal = {
    create(opts) { return new Terminal(opts); },
    Terminal,
  };
})();
