/* The panel's host when it is the page of `promptbatch app`: same-origin fetch, a session
 * cookie the page got for its one-time token, and the browser's own downloads. A Google
 * Sheets sidebar gives the panel another host with the same three functions over
 * google.script.run. */
(function (global) {
  "use strict";

  function answer(response) {
    return response.json().catch(function () { return {}; }).then(function (body) {
      if (!response.ok) {
        throw new Error(body.error || ("The backend answered HTTP " + response.status + "."));
      }
      return body;
    });
  }

  function browser() {
    return {
      /* JSON in, JSON out; an error's message is the backend's own words. */
      request: function (method, path, body) {
        /** @type {RequestInit & {headers: Object<string, string>}} */
        var init = { method: method, credentials: "same-origin", headers: {} };
        if (method !== "GET") {
          init.headers["content-type"] = "application/json";
          init.body = JSON.stringify(body || {});
        }
        return fetch(path, init).then(answer);
      },
      /* A file's bytes as the request body, its name in the address. */
      send: function (path, name, bytes) {
        return fetch(path + "?name=" + encodeURIComponent(name), {
          method: "POST", credentials: "same-origin", body: bytes,
          headers: { "content-type": "application/octet-stream" }
        }).then(answer);
      },
      download: function (path) {
        var link = document.createElement("a");
        link.href = path;
        link.download = "";
        document.body.appendChild(link);
        link.click();
        link.remove();
      }
    };
  }

  global.PromptBatchHost = { browser: browser };
  document.addEventListener("DOMContentLoaded", function () {
    global.PromptBatchPanel.mount(document.getElementById("panel"),
                                  global.PromptBatchApi.create(browser()));
  });
})(this);
