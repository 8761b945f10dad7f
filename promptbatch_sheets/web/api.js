/* The panel's one link to the backend: each operation the panel needs, as a route of the
 * promptbatch backend, carried by whatever host the panel lives in (host.request / send /
 * download). The panel calls these and never knows whether fetch or google.script.run
 * carries them. A sheet host (host.sheet: the Google Sheets sidebar) answers the active
 * sheet, keeps settings, runs selected rows, batches and freezes formulas; the browser page
 * has none of these, and the panel shows them only when api.sheet is true. */
(function (global) {
  "use strict";

  function create(host) {
    return {
      canUpload: Boolean(host.send),
      canDownload: Boolean(host.download),
      sheet: Boolean(host.sheet),
      pollMs: host.pollMs,
      settings: function () { return host.request("GET", "/api/settings"); },
      saveSettings: function (form) { return host.request("POST", "/api/settings", form); },
      submit: function () { return host.request("POST", "/api/submit", {}); },
      collect: function () { return host.request("POST", "/api/collect", {}); },
      freeze: function () { return host.request("POST", "/api/freeze", {}); },
      upload: function (name, bytes) { return host.send("/api/upload", name, bytes); },
      paste: function (template, table) {
        return host.request("POST", "/api/paste", { template: template, table: table });
      },
      preview: function (options) { return host.request("POST", "/api/preview", options); },
      run: function (options) { return host.request("POST", "/api/run", options); },
      progress: function (since) {
        return host.request("GET", "/api/progress?since=" + encodeURIComponent(since));
      },
      cancel: function () { return host.request("POST", "/api/cancel", {}); },
      download: function () { return host.download("/api/download"); }
    };
  }

  global.PromptBatchApi = { create: create };
})(this);
