/**
 * PromptBatch for Google Sheets: the sidebar, and the server-side functions its panel calls
 * through google.script.run (promptbatch_sheets/web/host-gas.js maps the panel's operations to
 * them). Sidebar.html is the same panel as `promptbatch app`'s page, inlined by
 * addin/gsheets/write_sidebar.py. Arguments and return values cross google.script.run, so they
 * are only strings, numbers, booleans, null, arrays and plain objects.
 *
 * A run from the sidebar is this user's job in user properties: the sidebar drives its passes
 * one execution after another while it is open (pbPanelWork), a time-based trigger continues it
 * when the sidebar is closed, and pbPanelProgress reads the job, so the progress shown is the
 * same whoever ran the last pass.
 */

/** Menu: opens the sidebar. */
function pbSidebar() {
  SpreadsheetApp.getUi().showSidebar(HtmlService.createHtmlOutputFromFile('Sidebar').setTitle(PB.TITLE));
}

/** The settings as the panel shows them: the token itself never leaves the server side. */
function pbPanelSettings() {
  var url = pbBackendUrl_();
  var token = PropertiesService.getUserProperties().getProperty(PB.KEY_TOKEN);
  var doc = PropertiesService.getDocumentProperties();
  var shared = doc.getProperty(PB.KEY_FORMULA_URL) === url ? doc.getProperty(PB.KEY_FORMULA_TOKEN) : null;
  var state = {
    url: url, has_token: Boolean(token), formulas: Boolean(shared), formulas_mine: Boolean(token && shared === token),
    model: null, sheet: SpreadsheetApp.getActiveSpreadsheet().getActiveSheet().getName(), error: ''
  };
  if (url && token && PropertiesService.getUserProperties().getProperty(PB.KEY_TOKEN_URL) !== url) {
    state.has_token = false; // saved for another backend: never sent to this one
  } else if (url && token) {
    try {
      state.model = pbCall_({ url: url, token: token }, '/v1/health').model;
    } catch (err) {
      state.error = err.message;
    }
  }
  return state;
}

/** Saves the URL (for everyone), this user's token, and whether formulas may use it. */
function pbPanelSave(form) {
  var saved = pbSaveSettings_(form.url, form.token);
  pbShareFormulaToken_(Boolean(form.formulas));
  var state = pbPanelSettings();
  state.message = saved.message;
  return state;
}

/** The preview of the active sheet, in the panel's shape, with the menu's lines. */
function pbPanelPreview() {
  var data = pbPreviewData_();
  return {
    model: data.model, lines: pbPreviewLines_(data), columns: [], outputs: [], rows: [],
    prompts: data.first_prompts.map(function (first) {
      return { row: first[0] + 1, prompt: first[1], system: first[2], system_origin: 'the template' };
    }),
    estimate: data.estimate, counts: { to_send: data.to_send, cached: data.cached, kept: data.kept }
  };
}

/** Starts a run of the active sheet (or its selected rows); pbPanelWork does the passes. */
function pbPanelRun(selected) {
  var ranges = selected ? pbSelection_() : null;
  if (selected && !ranges.length) throw new Error('Select the rows to run first.');
  pbSettings_();
  if (PropertiesService.getUserProperties().getProperty(PB.KEY_JOB)) {
    throw new Error('Your run is still going: wait for it, or Cancel it.');
  }
  pbStart_(ranges, false);
  return pbProgress_();
}

/**
 * One pass of this user's run, when no other execution (a trigger, another sidebar) is running
 * one; then the progress, and whether this call made the pass (`worked`: if not, the sidebar
 * waits a little before it asks again). The sidebar calls it again while the run goes on.
 */
function pbPanelWork() {
  var raw = PropertiesService.getUserProperties().getProperty(PB.KEY_JOB);
  var worked = false;
  if (raw && LockService.getDocumentLock().tryLock(0)) {
    LockService.getDocumentLock().releaseLock();
    pbPass_(JSON.parse(raw), false);
    worked = true;
  }
  var progress = pbProgress_();
  progress.worked = worked;
  return progress;
}

/** The progress of this user's run. */
function pbPanelProgress() {
  return pbProgress_();
}

/** Stops this user's run: a pass under way stops before its next round; nothing more is sent. */
function pbPanelCancel() {
  var props = PropertiesService.getUserProperties();
  var raw = props.getProperty(PB.KEY_JOB);
  if (!raw) return pbProgress_();
  var lock = LockService.getDocumentLock();
  if (lock.tryLock(0)) {
    try {
      pbEnd_(JSON.parse(raw), 'cancelled', '');
    } finally {
      lock.releaseLock();
    }
  } else {
    props.setProperty(PB.KEY_CANCEL, '1');
  }
  return pbProgress_();
}

/** Submit as batch, from the sidebar: the lines the menu shows. */
function pbPanelSubmit() {
  return { lines: pbBatchRun_('/v1/batch/submit', pbSubmitLines_) };
}

/** Collect batch results, from the sidebar. */
function pbPanelCollect() {
  return { lines: pbBatchRun_('/v1/batch/collect', pbCollectLines_) };
}

/** Freeze answers, from the sidebar. */
function pbPanelFreeze() {
  return { lines: [pbFreeze_()] };
}

// ----------------------------------------------------------------------------- freeze

/** Menu: replaces the =PROMPTBATCH formulas in the selection with their answers. */
function pbFreeze() {
  var ui = SpreadsheetApp.getUi();
  ui.alert('PromptBatch', pbFreeze_(), ui.ButtonSet.OK);
}

/**
 * Each =PROMPTBATCH formula in the selection, and the cells its answers spill into, becomes the
 * values it shows, so a recalculation can never bill again or turn them into errors.
 */
function pbFreeze_() {
  var sheet = SpreadsheetApp.getActiveSpreadsheet().getActiveSheet();
  var frozen = 0;
  var list = SpreadsheetApp.getActiveSpreadsheet().getActiveRangeList();
  (list ? list.getRanges() : []).forEach(function (range) {
    var formulas = range.getFormulas();
    var values = range.getValues();
    var cells = [];
    formulas.forEach(function (line, r) {
      line.forEach(function (formula, c) {
        if (!/^=\s*PROMPTBATCH\s*\(/i.test(formula)) return;
        frozen++;
        var bottom = r;
        while (bottom + 1 < formulas.length && !formulas[bottom + 1][c] && values[bottom + 1][c] !== '') bottom++;
        var right = c;
        while (right + 1 < line.length && !line[right + 1] && values[r][right + 1] !== '') right++;
        for (var i = r; i <= bottom; i++) {
          for (var j = c; j <= right; j++) {
            cells.push([range.getRow() - 1 + i, range.getColumn() - 1 + j, values[i][j]]);
          }
        }
      });
    });
    pbWriteCells_(sheet, cells);
  });
  return frozen
    ? 'Froze ' + frozen + ' =PROMPTBATCH formula' + (frozen === 1 ? '' : 's') + ': their answers are values now.'
    : 'No =PROMPTBATCH formula in the selection: select the cells that hold them.';
}
