/* The panel's host when it is the Google Sheets sidebar: each route the panel asks for is a
 * server-side Apps Script function (addin/gsheets/Sidebar.gs), called through
 * google.script.run, which is asynchronous and carries only strings, numbers, booleans, null,
 * arrays and plain objects. While a run goes on, the host keeps asking the server side for its
 * next pass (pbPanelWork); with the sidebar closed, a time-based trigger does that instead. */
(function (global) {
  "use strict";

  var FUNCTIONS = {
    "GET /api/settings": "pbPanelSettings", "POST /api/settings": "pbPanelSave",
    "POST /api/preview": "pbPanelPreview", "POST /api/run": "pbPanelRun",
    "GET /api/progress": "pbPanelProgress", "POST /api/cancel": "pbPanelCancel",
    "POST /api/submit": "pbPanelSubmit", "POST /api/collect": "pbPanelCollect",
    "POST /api/freeze": "pbPanelFreeze"
  };
  var RETRY_MS = 5000;

  /* One server-side function: a promise of what it returns; an Error with its message. */
  function call(name, args) {
    return new Promise(function (resolve, reject) {
      var runner = global.google.script.run.withSuccessHandler(resolve).withFailureHandler(reject);
      runner[name].apply(runner, args);
    });
  }

  function gas() {
    var working = false;

    /* Passes one after another while the run goes on; a failed call is tried again later. */
    function work() {
      if (working) { return; }
      working = true;
      call("pbPanelWork", []).then(function (p) {
        working = false;
        if (p.state === "running") { setTimeout(work, p.worked ? 0 : RETRY_MS); }
      }, function () {
        working = false;
        setTimeout(work, RETRY_MS);
      });
    }

    return {
      sheet: true,
      pollMs: 1000,
      request: function (method, path, body) {
        var route = method + " " + path.split("?")[0];
        var name = FUNCTIONS[route];
        if (!name) { return Promise.reject(new Error("The sidebar cannot do " + route + ".")); }
        var args = route === "POST /api/run" ? [Boolean(body && body.selected)]
          : route === "POST /api/settings" ? [body] : [];
        var result = call(name, args);
        if (route === "POST /api/run" || route === "GET /api/progress") {
          result.then(function (p) { if (p.state === "running") { work(); } }, function () {});
        }
        return result;
      }
    };
  }

  global.PromptBatchHost = { gas: gas };
  document.addEventListener("DOMContentLoaded", function () {
    global.PromptBatchPanel.mount(document.getElementById("panel"),
                                  global.PromptBatchApi.create(gas()));
  });
})(this);
