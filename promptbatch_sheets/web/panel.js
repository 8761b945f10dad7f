/* The PromptBatch panel: choose a table, see how its columns meet the template, preview the
 * prompts and the cost, run with live progress, watch the answers arrive, download.
 * It talks only to the api object it is given (api.js) and knows nothing of its host. In a
 * sheet host (api.sheet, the Google Sheets sidebar) the table is the active sheet, answers land
 * in it, and the panel adds settings, Run selected rows, the Batch API and Freeze answers. */
(function (global) {
  "use strict";

  var POLL_MS = 400;

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === "text") { node.textContent = attrs[key]; } else { node.setAttribute(key, attrs[key]); }
    });
    (children || []).forEach(function (child) { if (child) { node.appendChild(child); } });
    return node;
  }

  function clear(node) { while (node.firstChild) { node.removeChild(node.firstChild); } }

  function number(n) { return Number(n || 0).toLocaleString("en-US"); }

  function money(usd) {
    return usd === null || usd === undefined ? "unknown (model not in the price table)"
      : "$" + usd.toFixed(4);
  }

  function seconds(s) {
    if (s === null || s === undefined) { return ""; }
    return s < 90 ? Math.round(s) + " s" : Math.round(s / 60) + " min";
  }

  function mount(root, api) {
    var state = { preview: null, next: 0, timer: null, debounce: null };
    var inSheet = api.sheet;
    var pollMs = api.pollMs || POLL_MS; // each poll of a sidebar is an Apps Script execution
    clear(root);

    var file = el("input", { id: "file", type: "file", accept: ".xlsx,.xlsm,.csv" });
    var drop = el("div", { id: "drop", "class": "pb-drop" }, [
      el("p", { text: "Drop an .xlsx or .csv file here, or " }), file]);
    var pasteTemplate = el("textarea", { id: "paste-template", rows: "4",
      placeholder: "Template, e.g. Describe {{ product_name }} in one sentence." });
    var pasteTable = el("textarea", { id: "paste-table", rows: "4",
      placeholder: "Paste cells from a spreadsheet here, header row first." });
    var pasteUse = el("button", { id: "paste-use", type: "button", text: "Use pasted table" });
    var previewButton = el("button", { id: "preview", type: "button", text: "Preview" });
    var source = inSheet ? el("section", { "class": "pb-source" }, [
      el("h2", { text: "1. Your sheet" }),
      el("p", { id: "source-name", "class": "pb-muted" }), previewButton])
      : el("section", { "class": "pb-source" }, [
        el("h2", { text: "1. Your table" }),
        api.canUpload ? drop : null,
        el("details", {}, [el("summary", { text: "or paste a template and a table" }),
          pasteTemplate, pasteTable, pasteUse]),
        el("p", { id: "source-name", "class": "pb-muted" })]);

    var backendUrl = el("input", { id: "backend-url", type: "url",
      placeholder: "https://....trycloudflare.com" });
    var token = el("input", { id: "token", type: "password", autocomplete: "off" });
    var formulas = el("input", { id: "formulas", type: "checkbox" });
    var save = el("button", { id: "save", type: "button", text: "Save" });
    var settingsState = el("p", { id: "settings-state", "class": "pb-muted" });
    var settings = el("section", { "class": "pb-settings" }, [
      el("h2", { text: "Settings" }),
      el("label", {}, [document.createTextNode("Backend URL (for every editor) "), backendUrl]),
      el("label", {}, [document.createTextNode("Your token (kept for you alone) "), token]),
      el("label", {}, [formulas,
        document.createTextNode(" Let =PROMPTBATCH use my token for every editor")]),
      save, settingsState]);

    var variations = el("input", { id: "variations", type: "number", min: "1", max: "100",
      value: "1" });
    var column = el("input", { id: "output-column", type: "text", value: "response" });
    var options = el("section", { "class": "pb-options" }, [
      el("h2", { text: "2. Answers" }),
      el("label", {}, [document.createTextNode("Variations per row "), variations]),
      el("label", {}, [document.createTextNode("Answers column "), column])]);

    var error = el("p", { id: "error", "class": "pb-error", role: "alert" });
    var variables = el("table", { id: "variables", "class": "pb-grid" });
    var prompts = el("div", { id: "prompts" });
    var estimate = el("p", { id: "estimate" });
    var lines = el("pre", { id: "preview-lines", "class": "pb-lines" });
    var preview = el("section", { "class": "pb-preview" }, [
      el("h2", { text: (inSheet ? "2" : "3") + ". Preview (no model is called)" }), error,
      inSheet ? lines : variables, prompts, estimate]);

    var run = el("button", { id: "run", type: "button", disabled: "", text: "Run" });
    var cancel = el("button", { id: "cancel", type: "button", disabled: "", text: "Cancel" });
    var download = el("button", { id: "download", type: "button", disabled: "",
      text: "Download" });
    var bar = el("progress", { id: "bar", max: "1", value: "0" });
    var stats = el("p", { id: "stats", "data-state": "idle" });
    var answers = el("table", { id: "answers", "class": "pb-grid pb-answers" });
    var runSelected = el("button", { id: "run-selected", type: "button", disabled: "",
      text: "Run selected rows" });
    var submit = el("button", { id: "submit", type: "button", text: "Submit as batch" });
    var collect = el("button", { id: "collect", type: "button", text: "Collect" });
    var freeze = el("button", { id: "freeze", type: "button", text: "Freeze answers" });
    var message = el("pre", { id: "message", "class": "pb-lines" });
    var running = el("section", { "class": "pb-run" }, [
      el("h2", { text: (inSheet ? "3" : "4") + ". Run" }), el("div", { "class": "pb-buttons" },
        inSheet ? [run, runSelected, cancel] : [run, cancel, api.canDownload ? download : null]),
      bar, stats, inSheet ? el("div", { "class": "pb-buttons" }, [submit, collect, freeze]) : null,
      inSheet ? message : answers]);

    (inSheet ? [settings, source, preview, running] : [source, options, preview, running])
      .forEach(function (part) { root.appendChild(part); });

    function choices() {
      return { variations: Math.max(1, parseInt(variations.value, 10) || 1),
               output_column: column.value.trim() || "response" };
    }

    function fail(text) {
      error.textContent = text;
      clear(variables);
      clear(prompts);
      lines.textContent = "";
      estimate.textContent = "";
      run.disabled = true;
      runSelected.disabled = true;
    }

    function showVariables(data) {
      clear(variables);
      variables.appendChild(el("tr", {}, ["Column", "Variable", "Used by the template"].map(
        function (h) { return el("th", { text: h }); })));
      data.columns.forEach(function (c) {
        variables.appendChild(el("tr", { "data-header": c.header }, [
          el("td", { text: c.header }), el("td", { text: "{{ " + c.variable + " }}" }),
          el("td", { text: c.used ? "yes" : "-" })]));
      });
    }

    function showPrompts(data) {
      clear(prompts);
      data.prompts.forEach(function (p) {
        var box = el("div", { "class": "pb-prompt" });
        if (p.system) {
          box.appendChild(el("h3", { text: "System prompt for row " + p.row + ", from " +
            p.system_origin }));
          box.appendChild(el("pre", { "class": "pb-system", text: p.system }));
        }
        box.appendChild(el("h3", { text: "Prompt for row " + p.row }));
        box.appendChild(el("pre", { text: p.prompt }));
        prompts.appendChild(box);
      });
      var e = data.estimate, c = data.counts;
      estimate.textContent = number(c.to_send) + " requests to send (" + number(c.cached) +
        " answered from cache, " + number(c.kept) + " already answered) with " + data.model +
        ": ~" + number(e.prompt_tokens) + " prompt tokens + ~" + number(e.completion_tokens) +
        " answer tokens (up to " + number(e.completion_tokens_max) + "), cost " +
        money(e.cost_usd) + " (at most " + money(e.cost_max_usd) + "), about " +
        seconds(e.seconds) + ".";
    }

    function showAnswerTable(data) {
      clear(answers);
      var key = data.columns.length ? data.columns[0].header : "Row";
      answers.appendChild(el("tr", {}, ["Row", key].concat(data.outputs).map(
        function (h) { return el("th", { text: h }); })));
      data.rows.forEach(function (r) {
        var tr = el("tr", { "data-row": String(r.row) }, [el("td", { text: String(r.row) }),
          el("td", { text: r.label })]);
        data.outputs.forEach(function (h) { tr.appendChild(el("td", { "data-col": h })); });
        answers.appendChild(tr);
      });
    }

    function refresh() {
      error.textContent = "";
      return api.preview(choices()).then(function (data) {
        state.preview = data;
        if (inSheet) {
          lines.textContent = data.lines.join("\n");
        } else {
          showVariables(data);
          showAnswerTable(data);
        }
        showPrompts(data);
        run.disabled = false;
        runSelected.disabled = false;
      }, function (err) { fail(err.message); });
    }

    function later() {
      clearTimeout(state.debounce);
      state.debounce = setTimeout(refresh, 300);
    }

    function chosen(name, work) {
      document.getElementById("source-name").textContent = name;
      download.disabled = true;
      work.then(refresh, function (err) { fail(err.message); });
    }

    function upload(picked) {
      if (!picked) { return; }
      chosen(picked.name, picked.arrayBuffer().then(function (bytes) {
        return api.upload(picked.name, bytes);
      }));
    }

    function fill(result) {
      var tr = answers.querySelector('tr[data-row="' + result.row + '"]');
      if (!tr) { return; }
      Object.keys(result.cells).forEach(function (header) {
        var cells = tr.querySelectorAll("td[data-col]");
        Array.prototype.forEach.call(cells, function (td) {
          if (td.getAttribute("data-col") === header) {
            var value = result.cells[header];
            td.textContent = value === null || value === undefined ? "" : String(value);
            td.className = result.ok ? (result.cached ? "pb-cached" : "pb-ok") : "pb-failed";
          }
        });
      });
    }

    function showProgress(p) {
      bar.max = Math.max(1, p.total);
      bar.value = p.done;
      stats.setAttribute("data-state", p.state);
      stats.setAttribute("data-done", String(p.done));
      stats.setAttribute("data-total", String(p.total));
      var words = [number(p.done) + " of " + number(p.total) + " done",
        number(p.cached) + " from cache", number(p.failed) + " failed",
        number(p.prompt_tokens) + " tokens in, " + number(p.completion_tokens) + " out",
        money(p.cost_usd) + " so far"];
      if (p.eta !== null && p.eta !== undefined) { words.push("about " + seconds(p.eta) + " left"); }
      var end = { done: "Done.", cancelled: "Cancelled: " + number(p.unsent) +
        " prompts were not sent; run again to send them.", failed: "Stopped: " + p.error };
      stats.textContent = words.join(" · ") + (end[p.state] ? ". " + end[p.state] : "");
    }

    function poll() {
      api.progress(state.next).then(function (p) {
        p.results.forEach(fill);
        state.next = p.next;
        showProgress(p);
        if (p.state === "running") {
          cancel.disabled = false;
          run.disabled = true;
          runSelected.disabled = true;
          state.timer = setTimeout(poll, pollMs);
        } else {
          run.disabled = false;
          runSelected.disabled = false;
          cancel.disabled = true;
          download.disabled = p.done === 0;
        }
      }, function (err) {
        stats.textContent = err.message;
        state.timer = setTimeout(poll, pollMs * 5);
      });
    }

    file.addEventListener("change", function () { upload(file.files[0]); });
    drop.addEventListener("dragover", function (event) { event.preventDefault(); });
    drop.addEventListener("drop", function (event) {
      event.preventDefault();
      upload(event.dataTransfer.files[0]);
    });
    pasteUse.addEventListener("click", function () {
      chosen("pasted table", api.paste(pasteTemplate.value, pasteTable.value));
    });
    variations.addEventListener("input", later);
    column.addEventListener("input", later);
    function start(options) {
      run.disabled = true;
      runSelected.disabled = true;
      download.disabled = true;
      error.textContent = "";
      if (state.preview && !inSheet) { showAnswerTable(state.preview); }
      showProgress({ state: "starting", total: 0, done: 0, cached: 0, failed: 0,
                     prompt_tokens: 0, completion_tokens: 0, cost_usd: 0, eta: null });
      api.run(options).then(function () {
        cancel.disabled = false;
        state.next = 0;
        poll();
      }, function (err) {
        run.disabled = false;
        runSelected.disabled = false;
        error.textContent = err.message;
      });
    }

    /* A sheet host's one-shot actions: their lines, or the reason they failed. */
    function act(work) {
      message.textContent = "...";
      work().then(function (data) { message.textContent = data.lines.join("\n"); },
        function (err) { message.textContent = err.message; });
    }

    function showSettings(data) {
      backendUrl.value = data.url || "";
      token.value = "";
      token.placeholder = data.has_token ? "saved: leave empty to keep it" : "from whoever runs the backend";
      formulas.checked = Boolean(data.formulas_mine);
      document.getElementById("source-name").textContent = "Sheet: " + data.sheet;
      settingsState.textContent = data.message || (data.error ? data.error
        : data.model ? "Connected: the backend answers with " + data.model + "."
          : "No backend yet: paste its URL and your token.");
      settingsState.setAttribute("data-model", data.model || "");
      return data.url && data.has_token && !data.error;
    }

    run.addEventListener("click", function () { start(inSheet ? { selected: false } : choices()); });
    runSelected.addEventListener("click", function () { start({ selected: true }); });
    previewButton.addEventListener("click", refresh);
    submit.addEventListener("click", function () { act(api.submit); });
    collect.addEventListener("click", function () { act(api.collect); });
    freeze.addEventListener("click", function () { act(api.freeze); });
    save.addEventListener("click", function () {
      settingsState.textContent = "...";
      api.saveSettings({ url: backendUrl.value, token: token.value, formulas: formulas.checked })
        .then(function (data) { if (showSettings(data)) { refresh(); } },
          function (err) { settingsState.textContent = err.message; });
    });
    if (inSheet) {
      api.settings().then(function (data) {
        if (showSettings(data)) { refresh(); }
        poll(); // a run this user started earlier shows, and goes on
      }, function (err) { settingsState.textContent = err.message; });
    }
    cancel.addEventListener("click", function () {
      cancel.disabled = true;
      api.cancel();
    });
    download.addEventListener("click", function () { api.download(); });
  }

  global.PromptBatchPanel = { mount: mount };
})(this);
