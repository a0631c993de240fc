/* hyperhive — the login panel of one agent's page (agent.html loads it after
 * agent.js).
 *
 * Shown while the harness says its claude needs a login. "log in" starts
 * `claude auth login` inside the agent (login/start); the URL it prints
 * becomes a link, the pasted code goes back through login/code, and what
 * the CLI printed is shown as text. The status comes from agent.js's
 * "hive:status" event (fed by the snapshot and status_changed events); the
 * session's output is polled from api/state only while a session runs,
 * everything else stays event-driven. Nothing the CLI prints is parsed as
 * HTML, and only an https: URL becomes a link.
 */
(function () {
  "use strict";

  const H = window.Hive;
  const {post, getJSON, showError} = H;
  const $ = (sel) => document.querySelector(sel);

  const POLL_MS = 1000;
  const STATE_WORDS = {needs_login_idle: "not logged in", needs_login_in_progress: "logging in…"};

  const panel = $("#login-panel");
  const errorEl = $("#login-error");
  const codeInput = $("#login-code");
  const output = $("#login-output");
  let status = null;
  let session = null;  // {url, output, finished, exit_code, exit_note} as api/state gives it
  let pollTimer = null;
  let codeSent = false;

  function httpsUrl(text) {
    if (typeof text !== "string") return null;
    try {
      const url = new URL(text);
      return url.protocol === "https:" ? url.href : null;
    } catch (_) {
      return null;
    }
  }

  function paint() {
    // a login to make: not while online, and not while claude's binary is missing (no login fixes that)
    const needs = !!status && status.startsWith("needs_login");
    panel.hidden = !needs;
    if (!needs) {
      session = null;
      codeSent = false;
      stopPolling();
      return;
    }
    if (status !== "needs_login_in_progress") session = null;  // cancelled: nothing to show
    const running = !!session && !session.finished;
    $("#login-state").textContent = STATE_WORDS[status] || status.replace(/_/g, " ");
    const start = $("#login-start");
    start.hidden = running;
    start.textContent = session ? "log in again" : "log in";
    $("#login-cancel").hidden = !running;
    $("#login-session").hidden = !session;
    if (!session) return;

    const url = httpsUrl(session.url);
    const link = $("#login-url");
    $("#login-url-row").hidden = !url || !running;  // an ended session's link is spent
    $("#login-url-wait").hidden = !!url || !running;
    if (url && link.href !== url) {
      link.href = url;
      link.title = url;
    }
    $("#login-code-form").hidden = !running;
    const atBottom = output.scrollTop + output.clientHeight >= output.scrollHeight - 4;
    output.textContent = session.output || "";
    if (atBottom) output.scrollTop = output.scrollHeight;

    const result = $("#login-result");
    let text = "";
    let kind = "";
    if (session.finished && session.exit_code === 0) {
      text = "✓ claude auth login succeeded; the agent checks its login and goes online in a moment";
      kind = "ok";
    } else if (session.finished) {
      text = session.exit_note || `claude auth login ended with exit ${session.exit_code}`;
      kind = "bad";
    } else if (codeSent) {
      text = "code sent; waiting for claude…";
    }
    result.hidden = !text;
    result.textContent = text;
    result.dataset.kind = kind;
  }

  // ------------------------------------------------------------ polling

  function stopPolling() {
    clearTimeout(pollTimer);
    pollTimer = null;
  }

  function schedulePoll() {
    stopPolling();
    if (status === "needs_login_in_progress" && (!session || !session.finished)) {
      pollTimer = setTimeout(refresh, POLL_MS);
    }
  }

  async function refresh() {
    stopPolling();
    try {
      const st = await getJSON("api/state");
      take(st.status, st.session);
    } catch (e) {
      showError(errorEl, `the login could not be refreshed: ${e.message}`);
      schedulePoll();
    }
  }

  function take(newStatus, newSession) {
    if (typeof newStatus === "string") status = newStatus;
    session = newSession || null;
    if (!session || session.finished) codeSent = false;
    paint();
    schedulePoll();
  }

  document.addEventListener("hive:status", (e) => {
    const next = e.detail;
    if (next === status) return;
    status = next;
    if (status === "needs_login_in_progress") refresh();  // the snapshot's session, then polls while it runs
    else take(status, null);
  });

  // ------------------------------------------------------------ actions

  async function act(path, body, button) {
    const res = await post(path, body, {button, errorEl});
    if (res.ok && res.data) take(res.data.status, res.data.session);
    return res;
  }

  $("#login-start").addEventListener("click", async (e) => {
    codeSent = false;
    const res = await act("login/start", {}, e.currentTarget);
    if (res.ok) codeInput.focus();
  });

  $("#login-cancel").addEventListener("click", (e) => act("login/cancel", {}, e.currentTarget));

  $("#login-code-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const code = codeInput.value.trim();
    if (!code) { showError(errorEl, "paste the code the sign-in page showed"); codeInput.focus(); return; }
    const res = await act("login/code", {code}, $("#login-code-send"));
    if (res.ok) {
      codeInput.value = "";
      codeSent = true;
      paint();
    }
  });
  codeInput.addEventListener("input", () => showError(errorEl, null));

  // agent.js painted before this file ran only if its snapshot was already back: catch up
  const known = window.hive && window.hive.state && window.hive.state.status;
  if (known) document.dispatchEvent(new CustomEvent("hive:status", {detail: known}));
})();
