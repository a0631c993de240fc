/* hyperhive — /agent-config/<name>: the files of an agent's deployed config, as text.
 *
 * The shell holds no data; the files come from /api/agent-config/<name> with
 * the session's key, and are shown as text only (they are the manager's to
 * write).
 */
(function () {
  "use strict";

  const H = window.Hive;
  const {h} = H;
  const $ = (sel) => document.querySelector(sel);

  const fromPath = decodeURIComponent((location.pathname.match(/\/agent-config\/([^/]+)/) || [])[1] || "");
  const dataName = document.body.dataset.name || "";
  const name = dataName && !dataName.includes("{{") ? dataName : fromPath;
  $("#config-name").textContent = name;
  $("#agent-link").href = `/agent/${encodeURIComponent(name)}/`;

  async function load() {
    let data;
    try {
      data = await H.getJSON(`/api/agent-config/${encodeURIComponent(name)}`);
    } catch (e) {
      H.showError($("#config-error"), e.message);
      return;
    }
    if (data.sha) {
      const sha = $("#config-sha");
      sha.textContent = "@" + H.shortSha(data.sha);
      sha.title = `deployed config ${data.sha}`;
      sha.hidden = false;
    }
    const files = Object.entries(data.files || {}).sort(([a], [b]) => a.localeCompare(b));
    $("#config-empty").hidden = files.length > 0;
    $("#config-files").replaceChildren(...files.map(([path, text]) =>
      h("details", {class: "config-file", open: true, data: {path}},
        h("summary", {}, h("span", {class: "mono"}, path)),
        h("pre", {class: "config-text"}, String(text)))));
  }

  load();
})();
