/**
 * PromptBatch for Google Sheets: one prompt template over every row of a table.
 *
 * Apps Script cannot run the Python engine, so this script reads the sheet, sends its rows in
 * windows to a `promptbatch serve` backend (which holds the model, the API keys and the answer
 * cache, and plans each window by the command line's rules) and writes the cells it returns.
 * It decides nothing about rows or answers itself. Long runs continue through a time-based
 * trigger before Apps Script's 6-minute limit.
 *
 * Who sets up what: the backend URL is a document property (every editor of the spreadsheet uses
 * the same backend); each editor's token is that editor's user property, and no other editor's
 * execution can read it. Custom functions run anonymously and, inside them, getUserProperties()
 * returns the spreadsheet owner's store (the custom functions guide, "Using Apps Script
 * services"), so =PROMPTBATCH never reads user properties: it calls the backend only with a token
 * an editor chose to share for formulas (PB_FORMULA_TOKEN, a document property), and otherwise
 * says so.
 */

var PB = {
  /** Rows a window starts with: their answers come within ROUND_WAIT_S. */
  CHUNK_ROWS: 50,
  /** Rows a window grows to while the backend finds little to ask (a rerun keeps most rows). */
  MAX_WINDOW_ROWS: 1000,
  /** Chunks per UrlFetchApp.fetchAll round: the backend answers them in parallel. */
  PARALLEL: 4,
  /** No new round after this: a round takes at most ~60 s and Apps Script stops at 6 min. */
  RUN_BUDGET_MS: 4 * 60 * 1000,
  /** The backend returns a chunk within this; UrlFetchApp gives up at about 60 s. */
  ROUND_WAIT_S: 45,
  /** Custom functions are stopped at 30 s. */
  FORMULA_WAIT_S: 20,
  /** Delay before the next pass of a long run. */
  CONTINUE_MS: 60 * 1000,
  /** A safety net: continues a pass that Apps Script killed before it could reschedule. */
  RESCUE_MS: 7 * 60 * 1000,
  /** Rounds in a row that may bring no answer before a run gives up. */
  MAX_STALLS: 3,
  /** Rows sent to find the template and header row. */
  HEAD_ROWS: 50,
  /** Rows a preview sends (the request stays under the backend's 5 MB); counts are scaled to the rest. */
  PREVIEW_ROWS: 2000,
  /**
   * CacheService keeps values at most 6 hours and 100 KB, about 1,000 items, and may drop any
   * sooner ("expiry is only a suggestion"): it only spares backend calls, the backend's cache is
   * where answers live. A formula over more rows than CACHE_ROWS skips it (it would evict itself).
   */
  CACHE_SECONDS: 6 * 60 * 60,
  CACHE_ROWS: 500,
  /** How long the backend's model name is trusted for the formula's cache key. */
  MODEL_SECONDS: 5 * 60,
  /** A formula asks again after this when the backend cannot be reached (a tunnel's hiccup). */
  RETRY_MS: 2000,
  CACHE_MAX_CHARS: 25000,
  CACHE_BATCH: 100,
  ERROR: '#ERROR:',
  TITLE: 'PromptBatch',
  CONTINUE: 'pbContinue',
  /** Document property: the backend every editor uses. */
  KEY_URL: 'PB_BACKEND_URL',
  /** User properties: this editor's token, and the backend URL it was given for. */
  KEY_TOKEN: 'PB_TOKEN',
  KEY_TOKEN_URL: 'PB_TOKEN_URL',
  /** Document properties: a token an editor shared so =PROMPTBATCH can call the backend, and its URL. */
  KEY_FORMULA_TOKEN: 'PB_FORMULA_TOKEN',
  KEY_FORMULA_URL: 'PB_FORMULA_URL',
  /** User properties: this editor's run, the last run's outcome, and a cancel request. */
  KEY_JOB: 'PB_JOB',
  KEY_LAST: 'PB_LAST',
  KEY_CANCEL: 'PB_CANCEL',
  CONF_SHEET: 'promptbatch.conf'
};

/** Adds the PromptBatch menu; its first item opens the sidebar, the default way in. */
function onOpen() {
  SpreadsheetApp.getUi()
    .createMenu(PB.TITLE)
    .addItem('Open sidebar', 'pbSidebar')
    .addSeparator()
    .addItem('Run batch', 'pbRunBatch')
    .addItem('Run selected rows', 'pbRunSelected')
    .addItem('Preview', 'pbPreview')
    .addSeparator()
    .addItem('Submit as batch (half price)', 'pbSubmitBatch')
    .addItem('Collect batch results', 'pbCollectBatch')
    .addItem('Freeze answers in the selection', 'pbFreeze')
    .addSeparator()
    .addItem('Settings', 'pbSettings')
    .addToUi();
}

function onInstall() {
  onOpen();
}

/** The clock; a function of its own so tests can simulate time. */
function pbNow_() {
  return Date.now();
}

// ----------------------------------------------------------------------------- settings

/**
 * Asks for the backend URL (kept for every editor of this spreadsheet) and this editor's token
 * (kept for them alone), then checks them.
 */
function pbSettings() {
  var ui = SpreadsheetApp.getUi();
  var url = pbBackendUrl_();
  var token = PropertiesService.getUserProperties().getProperty(PB.KEY_TOKEN) || '';
  var answer = ui.prompt('PromptBatch settings (1 of 2)',
    'Backend URL, the HTTPS address of `promptbatch serve`, for every editor of this spreadsheet' +
    (url ? '.\nNow: ' + url + ' (leave empty to keep it)' : ', e.g. https://example.trycloudflare.com'),
    ui.ButtonSet.OK_CANCEL);
  if (answer.getSelectedButton() !== ui.Button.OK) return;
  var newUrl = answer.getResponseText();
  answer = ui.prompt('PromptBatch settings (2 of 2)',
    'Your bearer token (the person who runs `promptbatch serve` has it: it prints it on its first ' +
    'start and keeps it in its serve-token file). It is kept for you alone' +
    (token ? '.\nA token is saved: leave empty to keep it.' : '.'),
    ui.ButtonSet.OK_CANCEL);
  if (answer.getSelectedButton() !== ui.Button.OK) return;
  try {
    ui.alert('PromptBatch', pbSaveSettings_(newUrl, answer.getResponseText()).message, ui.ButtonSet.OK);
  } catch (err) {
    ui.alert('PromptBatch', err.message, ui.ButtonSet.OK);
  }
}

/** The spreadsheet's backend URL, or ''. */
function pbBackendUrl_() {
  return PropertiesService.getDocumentProperties().getProperty(PB.KEY_URL) || '';
}

/**
 * Keeps a new URL (empty keeps the old one) as the document's and a new token (empty keeps the
 * old one) as this user's, then asks the backend for its model. Throws on a mistake.
 */
function pbSaveSettings_(newUrl, newToken) {
  var doc = PropertiesService.getDocumentProperties();
  var user = PropertiesService.getUserProperties();
  var url = String(newUrl || '').trim().replace(/\/+$/, '') || pbBackendUrl_();
  if (!/^https?:\/\/[^\s/]+/i.test(url)) {
    throw new Error(url ? 'That is not an http(s) address: ' + url : 'The backend URL is needed.');
  }
  // A token kept goes on only to the backend it was saved for: another editor may have put a new
  // URL here, and clicking OK must not hand them the token unasked.
  var kept = user.getProperty(PB.KEY_TOKEN_URL) === url ? user.getProperty(PB.KEY_TOKEN) : '';
  var token = String(newToken || '').trim() || kept || '';
  if (!token) {
    throw new Error('Your token for ' + url + ' is needed: ask the person who runs `promptbatch serve` ' +
      'there for it.');
  }
  doc.setProperty(PB.KEY_URL, url);
  user.setProperty(PB.KEY_TOKEN, token);
  user.setProperty(PB.KEY_TOKEN_URL, url);
  var model = null;
  var message;
  try {
    model = pbCall_({ url: url, token: token }, '/v1/health').model;
    message = 'Connected. The backend answers with ' + model + '.';
  } catch (err) {
    message = 'Saved, but the backend did not answer: ' + err.message;
  }
  if (!/^https:/i.test(url)) {
    message += '\nWarning: the address is not HTTPS, so the token travels in clear text.';
  }
  return { message: message, model: model };
}

/** The backend and this editor's token, for the menu, the sidebar and their triggers. */
function pbSettings_() {
  var url = pbBackendUrl_();
  if (!url) throw new Error('No backend is set up for this spreadsheet yet: open PromptBatch > Settings.');
  var user = PropertiesService.getUserProperties();
  var token = user.getProperty(PB.KEY_TOKEN);
  if (!token) {
    throw new Error('You have no token for the backend at ' + url + ' yet: ask the person who runs ' +
      '`promptbatch serve` for it and paste it in PromptBatch > Settings (it is kept for you alone).');
  }
  // Any editor may change the spreadsheet's URL: a token goes only where its owner saved it for.
  if (user.getProperty(PB.KEY_TOKEN_URL) !== url) {
    throw new Error('The backend of this spreadsheet is now ' + url + ', and your token was saved for ' +
      user.getProperty(PB.KEY_TOKEN_URL) + ': if you trust the new backend, paste your token for it in ' +
      'PromptBatch > Settings.');
  }
  return { url: url, token: token };
}

/**
 * The backend for =PROMPTBATCH: document properties only, as a custom function runs without
 * knowing who you are and sees the owner's user properties (custom functions guide).
 */
function pbFormulaSettings_() {
  var doc = PropertiesService.getDocumentProperties();
  var url = doc.getProperty(PB.KEY_URL);
  if (!url) throw new Error('No backend is set up for this spreadsheet yet: open PromptBatch > Settings.');
  var token = doc.getProperty(PB.KEY_FORMULA_TOKEN);
  if (!token || doc.getProperty(PB.KEY_FORMULA_URL) !== url) {
    throw new Error('no answer in the cache, and =PROMPTBATCH may not call the backend in this ' +
      'spreadsheet: Google runs formulas without knowing who you are, so they cannot use your token. ' +
      'Use PromptBatch > Run batch (it uses yours), or ask an editor with a token to tick ' +
      '"Let =PROMPTBATCH use my token for every editor" in the sidebar\'s settings.');
  }
  return { url: url, token: token };
}

/** Lets every editor's formulas use this user's token (shared: editors can read document properties). */
function pbShareFormulaToken_(share) {
  var doc = PropertiesService.getDocumentProperties();
  if (!share) {
    doc.deleteProperty(PB.KEY_FORMULA_TOKEN);
    doc.deleteProperty(PB.KEY_FORMULA_URL);
    return;
  }
  var settings = pbSettings_();
  doc.setProperties({ PB_FORMULA_TOKEN: settings.token, PB_FORMULA_URL: settings.url });
}

// ----------------------------------------------------------------------------- HTTP

/**
 * An Error with what its catcher decides by: the backend's HTTP status, or that the backend
 * could not be reached, or that a Google quota is used up.
 * @typedef {Error & {status?: number, unreachable?: boolean, quota?: boolean}} PbError
 */

/**
 * @param {string} message
 * @param {{status?: number, unreachable?: boolean, quota?: boolean}} facts
 * @return {PbError}
 */
function pbError_(message, facts) {
  return Object.assign(new Error(message), facts);
}

/**
 * @return {GoogleAppsScript.URL_Fetch.URLFetchRequest}
 * @param {{url: string, token: string}} settings
 * @param {string} path
 */
function pbRequest_(settings, path, payload) {
  /** @type {GoogleAppsScript.URL_Fetch.URLFetchRequest} */
  var request = {
    url: settings.url + path,
    method: payload === undefined ? 'get' : 'post',
    headers: { Authorization: 'Bearer ' + settings.token },
    muteHttpExceptions: true
  };
  if (payload !== undefined) {
    request.contentType = 'application/json';
    request.payload = JSON.stringify(payload);
  }
  return request;
}

/**
 * The parsed JSON of a reply, or an Error that says what to do about it.
 * @param {GoogleAppsScript.URL_Fetch.HTTPResponse} response
 * @return {any}
 */
function pbParse_(response) {
  var status = response.getResponseCode();
  var data = null;
  try {
    data = JSON.parse(response.getContentText());
  } catch (ignored) {
    data = null;
  }
  if (status === 200 && data) return data;
  var detail = data && data.error ? data.error : 'HTTP ' + status;
  return pbError_(status === 401
    ? 'The backend refused the token: open PromptBatch > Settings.'
    : 'The backend answered ' + status + ': ' + detail, { status: status });
}

/**
 * @param {{url: string, token: string}} settings
 * @param {string} path
 */
function pbCall_(settings, path, payload) {
  var request = pbRequest_(settings, path, payload);
  var url = request.url;
  delete request.url;
  var response;
  try {
    response = UrlFetchApp.fetch(url, request);
  } catch (err) {
    throw pbUnreachable_(settings, err);
  }
  var data = pbParse_(response);
  if (data instanceof Error) throw data;
  return data;
}

/**
 * What a failed fetch means. Google's daily quotas (consumer accounts: 20,000 UrlFetch calls,
 * 90 minutes of trigger runtime; Workspace accounts more) end in "Service invoked too many
 * times" or "Service using too much computer time": nothing to retry until the quota resets.
 * @param {{url: string, token: string}} settings
 * @param {Error} err
 */
function pbUnreachable_(settings, err) {
  var quota = pbQuota_(err);
  if (quota) return quota;
  return pbError_('Cannot reach the backend at ' + settings.url + ': ' + err.message, { unreachable: true });
}

/** Google's words for a used-up daily quota, as an Error that says what happened; else null. */
function pbQuota_(err) {
  var text = String(err && err.message);
  var what = /too much computer time/i.test(text)
    ? 'the time triggers of your account may run today (90 minutes a day for a consumer account)'
    : /too many times/i.test(text)
      ? 'the calls your account may make today (20,000 UrlFetch calls a day for a consumer account)'
      : '';
  if (!what) return null;
  return pbError_('Google stopped this run: it used up ' + what + ' (Google said: ' + text + '). ' +
    'The answers so far are in the sheet. Google resets the quota 24 hours after its first use, ' +
    'so run again tomorrow: rows with answers are kept, nothing is paid twice.', { quota: true });
}

// ----------------------------------------------------------------------------- the sheet

/**
 * The sheet as the backend reads it: rows from the first (`grid`), the promptbatch.conf rows,
 * the named template and the merged ranges. The backend finds the table, the rows to send and
 * the cells to write by the command line's rules; the script decides none of it.
 * @param {GoogleAppsScript.Spreadsheet.Spreadsheet} spreadsheet
 * @param {GoogleAppsScript.Spreadsheet.Sheet} sheet
 */
function pbSheetPayload_(spreadsheet, sheet, grid, merged) {
  var payload = { sheet: sheet.getName(), grid: grid, conf: pbConfRows_(spreadsheet), merged: merged };
  var named = spreadsheet.getRangeByName('prompt_template');
  if (named) {
    payload.template = String(named.getValue());
    payload.origin = 'the named range prompt_template';
  }
  return payload;
}

/**
 * The key/value rows of a sheet named promptbatch.conf (any case).
 * @param {GoogleAppsScript.Spreadsheet.Spreadsheet} spreadsheet
 */
function pbConfRows_(spreadsheet) {
  var sheets = spreadsheet.getSheets();
  for (var i = 0; i < sheets.length; i++) {
    if (sheets[i].getName().toLowerCase() === PB.CONF_SHEET) {
      return sheets[i].getDataRange().getDisplayValues().map(function (row) { return row.slice(0, 2); });
    }
  }
  return [];
}

/**
 * The sheet's merged ranges as [top, left, bottom, right, value], 0-based.
 * @param {GoogleAppsScript.Spreadsheet.Sheet} sheet
 */
function pbMerged_(sheet) {
  return sheet.getDataRange().getMergedRanges().map(function (range) {
    return [range.getRow() - 1, range.getColumn() - 1, range.getLastRow() - 1,
      range.getLastColumn() - 1, range.getDisplayValue()];
  });
}

/**
 * Display values of `count` rows from row `first` (0-based), every column of the sheet.
 * @param {GoogleAppsScript.Spreadsheet.Sheet} sheet
 * @param {number} first
 * @param {number} count
 */
function pbRows_(sheet, first, count) {
  return sheet.getRange(first + 1, 1, Math.max(1, count), Math.max(1, sheet.getLastColumn())).getDisplayValues();
}

/** Rows numbered `first` to `end` - 1. */
function pbRowNumbers_(first, end) {
  var rows = [];
  for (var r = first; r < end; r++) rows.push(r);
  return rows;
}

/**
 * The rows among `rows` (0-based) that a person or a filter hides.
 * @param {GoogleAppsScript.Spreadsheet.Sheet} sheet
 * @param {Array<number>} rows
 */
function pbHidden_(sheet, rows) {
  return rows.filter(function (r) { return sheet.isRowHiddenByUser(r + 1) || sheet.isRowHiddenByFilter(r + 1); });
}

/**
 * Where the table is, by the first rows: its header row, its prompt columns, and whether a run
 * leaves hidden rows out (then the script sends which of its rows are hidden).
 * @param {{url: string, token: string}} settings
 * @param {GoogleAppsScript.Spreadsheet.Spreadsheet} spreadsheet
 * @param {GoogleAppsScript.Spreadsheet.Sheet} sheet
 */
function pbLocate_(settings, spreadsheet, sheet, merged) {
  var head = pbRows_(sheet, 0, Math.min(PB.HEAD_ROWS, sheet.getLastRow()));
  return pbCall_(settings, '/v1/locate', pbSheetPayload_(spreadsheet, sheet, head, merged));
}

/**
 * [row, col, value] cells (0-based), as the backend returns them, column by column in blocks.
 * A sheet does not grow by itself (getRange beyond its last column throws "The coordinates of
 * the range are outside the dimensions of the sheet."), so a new answers column is inserted first.
 * @param {GoogleAppsScript.Spreadsheet.Sheet} sheet
 * @param {Array<Array<*>>} cells
 */
function pbWriteCells_(sheet, cells) {
  var byColumn = {};
  var width = 0;
  var height = 0;
  cells.forEach(function (cell) {
    (byColumn[cell[1]] = byColumn[cell[1]] || []).push([cell[0], cell[2]]);
    width = Math.max(width, cell[1] + 1);
    height = Math.max(height, cell[0] + 1);
  });
  if (width > sheet.getMaxColumns()) sheet.insertColumnsAfter(sheet.getMaxColumns(), width - sheet.getMaxColumns());
  if (height > sheet.getMaxRows()) sheet.insertRowsAfter(sheet.getMaxRows(), height - sheet.getMaxRows());
  Object.keys(byColumn).forEach(function (col) { pbWriteColumn_(sheet, Number(col), byColumn[col]); });
}

/**
 * Writes [row, value] cells of one column in blocks of neighbouring rows. Text lands as text:
 * its cells get the plain-text number format "@" first (Range.setNumberFormat; "@" is the text
 * pattern of the Sheets API's number formats, developers.google.com/sheets/api/guides/formats),
 * so `12`, `TRUE` or `2025-01-01` stay text; and Range.setValue documents that a value starting
 * with "=" is read as a formula, so such text gets Sheets' text prefix, an apostrophe, which the
 * cell does not show or hold. Numbers and booleans from structured answers land as values, so the
 * sheet can sum and filter them.
 * @param {GoogleAppsScript.Spreadsheet.Sheet} sheet
 * @param {number} column
 * @param {Array<Array<*>>} cells
 */
function pbWriteColumn_(sheet, column, cells) {
  cells.sort(function (a, b) { return a[0] - b[0]; });
  var isText = function (v) { return typeof v === 'string' || v === null || v === undefined; };
  var i = 0;
  while (i < cells.length) {
    var text = isText(cells[i][1]);
    var j = i;
    while (j + 1 < cells.length && cells[j + 1][0] === cells[j][0] + 1 && isText(cells[j + 1][1]) === text) j++;
    var block = cells.slice(i, j + 1);
    var range = sheet.getRange(cells[i][0] + 1, column + 1, block.length, 1);
    if (text) {
      range.setNumberFormat('@').setValues(block.map(function (cell) { return [pbText_(cell[1])]; }));
    } else {
      range.setNumberFormat('General').setValues(block.map(function (cell) { return [cell[1]]; }));
    }
    i = j + 1;
  }
}

/** A text as a cell keeps it: never a formula. */
function pbText_(value) {
  var text = value === null || value === undefined ? '' : String(value);
  return /^[=']/.test(text) ? "'" + text : text;
}

/**
 * @param {GoogleAppsScript.Spreadsheet.Spreadsheet} spreadsheet
 * @param {number} id
 */
function pbSheetById_(spreadsheet, id) {
  var sheets = spreadsheet.getSheets();
  for (var i = 0; i < sheets.length; i++) {
    if (sheets[i].getSheetId() === id) return sheets[i];
  }
  return null;
}

// ----------------------------------------------------------------------------- runs

/** Menu: answer every row of the active sheet that has no answer yet. */
function pbRunBatch() {
  pbStart_(null, true);
}

/** Menu: the same, limited to the rows of the current selection. */
function pbRunSelected() {
  var ranges = pbSelection_();
  if (!ranges.length) {
    SpreadsheetApp.getUi().alert('PromptBatch', 'Select the rows to run first.',
      SpreadsheetApp.getUi().ButtonSet.OK);
    return;
  }
  pbStart_(ranges, true);
}

/** The selected rows as [first, last] spans, 0-based. */
function pbSelection_() {
  var list = SpreadsheetApp.getActiveSpreadsheet().getActiveRangeList();
  var ranges = list ? list.getRanges() : [];
  return ranges.map(function (range) { return [range.getRow() - 1, range.getLastRow() - 1]; });
}

/**
 * A run's state between passes: the next row to send (`cursor`), rows whose answers came in
 * part (`again`, sent again as such), rows of requests that failed (`retry`, sent again as
 * new), the rows a new window takes (`window`) and the counts so far, which the sidebar shows.
 * The menu runs the first pass at once; the sidebar saves the job and drives the passes itself.
 */
function pbStart_(ranges, interactive) {
  var sheet = SpreadsheetApp.getActiveSpreadsheet().getActiveSheet();
  var job = {
    sheetId: sheet.getSheetId(), sheet: sheet.getName(), ranges: ranges, cursor: -1, again: [], retry: [],
    window: PB.CHUNK_ROWS, stalls: 0, passes: 0, answered: 0, cached: 0, failed: 0, kept: 0, total: 0,
    prompt_tokens: 0, completion_tokens: 0, cost_usd: 0, started: pbNow_()
  };
  var props = PropertiesService.getUserProperties();
  props.deleteProperty(PB.KEY_CANCEL);
  props.deleteProperty(PB.KEY_LAST);
  if (!interactive) {
    props.setProperty(PB.KEY_JOB, JSON.stringify(job));
    pbSchedule_(PB.CONTINUE_MS);
    return;
  }
  pbPass_(job, true);
}

/** The time-based trigger's entry point: the next pass of a long run. */
function pbContinue() {
  var raw = PropertiesService.getUserProperties().getProperty(PB.KEY_JOB);
  if (!raw) {
    pbUnschedule_();
    return;
  }
  pbPass_(JSON.parse(raw), false);
}

/** One execution's share of a run, under the document lock; the job is saved every round. */
function pbPass_(job, interactive) {
  var lock = LockService.getDocumentLock();
  if (!lock.tryLock(interactive ? 5000 : 30000)) {
    if (interactive) {
      pbTell_('Another PromptBatch run is writing to this spreadsheet. Try again when it ends.', true);
    } else {
      pbSchedule_(PB.CONTINUE_MS);
    }
    return;
  }
  var props = PropertiesService.getUserProperties();
  try {
    job.passes++;
    pbSchedule_(PB.RESCUE_MS);
    props.setProperty(PB.KEY_JOB, JSON.stringify(job));
    if (pbWork_(job, pbNow_(), function () { props.setProperty(PB.KEY_JOB, JSON.stringify(job)); })) {
      pbEnd_(job, props.getProperty(PB.KEY_CANCEL) ? 'cancelled' : 'done', '');
      pbTell_(props.getProperty(PB.KEY_CANCEL) ? 'Cancelled.' : 'Done: ' + job.answered + ' new answers, ' +
        job.cached + ' from the cache, ' + job.failed + ' errors' +
        (job.failed ? ' (cells starting with #ERROR:; run again to retry them)' : '') + '.', false);
    } else {
      pbSchedule_(PB.CONTINUE_MS);
      pbTell_('Answered ' + (job.answered + job.cached + job.failed) + ' answers so far. The run ' +
        'continues through a trigger, which Apps Script starts a minute or more from now (it may run ' +
        'later, and triggers count against your daily quota); PromptBatch > Open sidebar shows its progress.', false);
    }
  } catch (err) {
    var message = (pbQuota_(err) || err).message;
    pbEnd_(job, 'failed', message);
    pbTell_('The run stopped: ' + message, interactive);
  } finally {
    lock.releaseLock();
  }
}

/** Ends a run: the job is forgotten, its outcome kept for the sidebar, its trigger deleted. */
function pbEnd_(job, state, error) {
  var props = PropertiesService.getUserProperties();
  props.deleteProperty(PB.KEY_JOB);
  props.deleteProperty(PB.KEY_CANCEL);
  pbUnschedule_();
  props.setProperty(PB.KEY_LAST, JSON.stringify(pbReport_(job, state, error)));
}

/**
 * A job as the panel's progress: prompts done of the total, from cache, failed, tokens, cost so
 * far and time left at the pace so far (trigger waits included).
 */
function pbReport_(job, state, error) {
  var fresh = job.answered + job.cached + job.failed;
  var done = fresh + job.kept;
  var total = state === 'done' ? done : Math.max(job.total, done);
  var elapsed = (pbNow_() - job.started) / 1000;
  return {
    state: state, sheet: job.sheet, total: total, done: done, cached: job.cached, failed: job.failed,
    kept: job.kept, unsent: state === 'cancelled' ? total - done : 0, passes: job.passes,
    prompt_tokens: job.prompt_tokens, completion_tokens: job.completion_tokens, cost_usd: job.cost_usd,
    elapsed: elapsed, eta: state === 'running' && fresh ? elapsed / fresh * (total - done) : null,
    error: error, results: [], next: 0
  };
}

/** This user's run as the panel shows it: running, or how the last one ended, or idle. */
function pbProgress_() {
  var props = PropertiesService.getUserProperties();
  var raw = props.getProperty(PB.KEY_JOB);
  if (raw) return pbReport_(JSON.parse(raw), 'running', '');
  var last = props.getProperty(PB.KEY_LAST);
  if (last) return JSON.parse(last);
  return pbReport_({ answered: 0, cached: 0, failed: 0, kept: 0, total: 0, passes: 0, prompt_tokens: 0,
    completion_tokens: 0, cost_usd: 0, started: pbNow_(), sheet: '' }, 'idle', '');
}

/**
 * Sends the sheet's rows in windows from the job's cursor on and writes the cells the backend
 * returns: answers headers, answers, #ERROR cells, and a row's later prompt columns once the
 * answers they use are back. True when the run is complete, false to continue in the next pass.
 */
function pbWork_(job, started, save) {
  var spreadsheet = SpreadsheetApp.getActiveSpreadsheet();
  var sheet = pbSheetById_(spreadsheet, job.sheetId);
  if (!sheet) throw new Error('The sheet of this run no longer exists.');
  var settings = pbSettings_();
  var merged = pbMerged_(sheet);
  var layout = pbLocate_(settings, spreadsheet, sheet, merged);
  if (job.cursor < 0) job.cursor = layout.header_row + 1;
  var props = PropertiesService.getUserProperties();
  var failure = '';
  for (;;) {
    var lastRow = sheet.getLastRow();
    job.total = pbPrompts_(job, layout, lastRow);
    if (!pbMore_(job, lastRow) || props.getProperty(PB.KEY_CANCEL)) return true;
    if (pbNow_() - started > PB.RUN_BUDGET_MS) return false;
    var chunks = pbChunks_(job, lastRow);
    // the rows down to the header row, read again: a new answers header is there now
    var head = pbSheetPayload_(spreadsheet, sheet, pbRows_(sheet, 0, layout.header_row + 1), merged);
    var requests = chunks.map(function (chunk) {
      return pbRequest_(settings, '/v1/run', pbWindow_(head, sheet, chunk, layout.skip_hidden));
    });
    var responses;
    try {
      responses = UrlFetchApp.fetchAll(requests);
    } catch (err) {
      throw pbUnreachable_(settings, err);
    }
    var progressed = false;
    var work = 0;
    chunks.forEach(function (chunk, k) {
      var data = pbParse_(responses[k]);
      if (data instanceof Error) {
        var status = /** @type {PbError} */ (data).status;
        if (status === 400 || status === 401 || status === 413) throw data;
        failure = data.message;
        Array.prototype.push.apply(chunk.resent ? job.again : job.retry, chunk.rows);
        return;
      }
      pbWriteCells_(sheet, data.cells);
      job.answered += data.answered;
      job.cached += data.cached;
      job.failed += data.failed;
      if (!chunk.resent) job.kept += data.kept;
      job.prompt_tokens += data.prompt_tokens || 0;
      job.completion_tokens += data.completion_tokens || 0;
      job.cost_usd = job.cost_usd === null || data.cost_usd === null ? null : job.cost_usd + (data.cost_usd || 0);
      progressed = progressed || data.pending.length < chunk.rows.length;
      Array.prototype.push.apply(job.again, data.pending);
      work = Math.max(work, data.answered + data.failed + data.pending.length);
    });
    // Windows grow while the rows need few calls, so a rerun of a long sheet takes few rounds.
    job.window = work < PB.CHUNK_ROWS / 2 ? Math.min(PB.MAX_WINDOW_ROWS, job.window * 4) : PB.CHUNK_ROWS;
    job.stalls = progressed ? 0 : job.stalls + 1;
    if (job.stalls >= PB.MAX_STALLS) {
      throw new Error('the backend answered no row in ' + PB.MAX_STALLS + ' rounds' +
        (failure ? ' (' + failure + ')' : '') + '. Is the model slow or down? The answers so far ' +
        'are in the sheet: run again to continue.');
    }
    save();
    spreadsheet.toast((job.answered + job.cached + job.failed) + ' cells answered...', PB.TITLE, 5);
  }
}

/**
 * The next round's windows of rows: those of failed requests, those whose answers came in part
 * (sent as `resent`: their #ERROR cells are this run's answers), then new rows from the cursor,
 * within the selection when there is one.
 */
function pbChunks_(job, lastRow) {
  var chunks = [];
  var take = function (rows, resent) {
    while (rows.length && chunks.length < PB.PARALLEL) chunks.push({ rows: rows.splice(0, PB.CHUNK_ROWS), resent: resent });
  };
  take(job.retry, false);
  take(job.again, true);
  while (chunks.length < PB.PARALLEL && job.cursor < lastRow) {
    var rows = [];
    for (; rows.length < job.window && job.cursor < lastRow; job.cursor++) {
      if (pbSelected_(job.ranges, job.cursor)) rows.push(job.cursor);
    }
    if (rows.length) chunks.push({ rows: rows, resent: false });
  }
  return chunks;
}

/** The prompts of the run's rows: one per row and prompt column (blank rows included). */
function pbPrompts_(job, layout, lastRow) {
  var first = layout.header_row + 1;
  var rows = !job.ranges ? lastRow - first : job.ranges.reduce(function (n, span) {
    return n + Math.max(0, Math.min(span[1], lastRow - 1) - Math.max(span[0], first) + 1);
  }, 0);
  return Math.max(0, rows) * layout.steps.length;
}

/** Whether any row is left to send. */
function pbMore_(job, lastRow) {
  return job.retry.length > 0 || job.again.length > 0 || (job.cursor < lastRow &&
    (!job.ranges || job.ranges.some(function (span) { return span[1] >= job.cursor; })));
}

function pbSelected_(ranges, row) {
  return !ranges || ranges.some(function (span) { return row >= span[0] && row <= span[1]; });
}

/**
 * The /v1/run request for a window: the rows down to the header row, then the window's rows.
 * @param {Object} head
 * @param {GoogleAppsScript.Spreadsheet.Sheet} sheet
 */
function pbWindow_(head, sheet, chunk, skipHidden) {
  var rows = chunk.rows.slice().sort(function (a, b) { return a - b; });
  var values = pbRows_(sheet, rows[0], rows[rows.length - 1] - rows[0] + 1);
  var payload = Object.assign({}, head, {
    row_numbers: rows, rows: rows.map(function (r) { return values[r - rows[0]]; }),
    resent: chunk.resent, wait_seconds: PB.ROUND_WAIT_S
  });
  if (skipHidden) payload.hidden = pbHidden_(sheet, rows);
  return payload;
}

function pbSchedule_(ms) {
  pbUnschedule_();
  ScriptApp.newTrigger(PB.CONTINUE).timeBased().after(ms).create();
}

function pbUnschedule_() {
  ScriptApp.getProjectTriggers().forEach(function (trigger) {
    if (trigger.getHandlerFunction() === PB.CONTINUE) ScriptApp.deleteTrigger(trigger);
  });
}

/** A dialog when someone clicked; a toast from a trigger, which may show no dialog. */
function pbTell_(message, interactive) {
  if (interactive) {
    var ui = SpreadsheetApp.getUi();
    ui.alert('PromptBatch', message, ui.ButtonSet.OK);
  } else {
    SpreadsheetApp.getActiveSpreadsheet().toast(message, PB.TITLE, 30);
  }
}

// ----------------------------------------------------------------------------- preview

/**
 * Menu: what a run would send and cost, as `promptbatch preview` says it (the backend plans the
 * sheet, with its cache and its calibration); calls no model. A sheet longer than PREVIEW_ROWS
 * sends its first rows, and the backend scales the counts to the rest.
 */
function pbPreview() {
  var ui = SpreadsheetApp.getUi();
  try {
    ui.alert('PromptBatch preview', pbPreviewLines_(pbPreviewData_()).join('\n'), ui.ButtonSet.OK);
  } catch (err) {
    ui.alert('PromptBatch', err.message, ui.ButtonSet.OK);
  }
}

/** The backend's preview of the active sheet (/v1/preview). */
function pbPreviewData_() {
  var spreadsheet = SpreadsheetApp.getActiveSpreadsheet();
  var sheet = spreadsheet.getActiveSheet();
  var settings = pbSettings_();
  var merged = pbMerged_(sheet);
  var layout = pbLocate_(settings, spreadsheet, sheet, merged);
  var count = Math.min(sheet.getLastRow(), PB.PREVIEW_ROWS);
  var payload = pbSheetPayload_(spreadsheet, sheet, pbRows_(sheet, 0, count), merged);
  payload.last_row = sheet.getLastRow() - 1;
  payload.first = 3;
  if (layout.skip_hidden) payload.hidden = pbHidden_(sheet, pbRowNumbers_(layout.header_row + 1, count));
  return pbCall_(settings, '/v1/preview', payload);
}

/** The preview's lines, in the order `promptbatch preview` prints them. */
function pbPreviewLines_(data) {
  var money = function (usd) { return usd === null ? 'unknown' : '$' + usd.toFixed(4); };
  var quoted = function (names) { return names.map(function (n) { return '"' + n + '"'; }).join(', '); };
  var chained = data.steps.length > 1;
  var lines = ['Sheet ' + data.sheet + ', model ' + data.model + ' at ' + data.server + '.'];
  data.steps.forEach(function (step) {
    lines.push((chained ? '"' + step.name + '": ' : '') + 'template ' + step.origin +
      (step.uses.length ? ', uses the answers of ' + quoted(step.uses) : '') + '; answers go to ' +
      step.outputs.map(function (o) { return '"' + o.header + '" at ' + o.cell + (o.exists ? '' : ' (new column)'); }).join(', ') + '.');
  });
  lines.push('Rows: ' + data.rows + ' in the table, ' + data.kept + ' already answered, ' + data.cached +
    ' answered from cache, ' + data.to_send + ' to send (' + data.unique_prompts + ' distinct prompts' +
    (data.waiting ? ' now, ' + data.waiting + ' once the answers they use are back' : '') + ').' +
    (data.sampled ? ' Counted on the first ' + PB.PREVIEW_ROWS + ' rows, scaled to the sheet.' : ''));
  data.refusals.forEach(function (refusal) {
    lines.push('Row ' + (refusal[0] + 1) + (chained ? ' ("' + refusal[1] + '")' : '') + ' will not be sent: ' + refusal[2] + '.');
  });
  var e = data.estimate;
  var most = e.cost_max_usd !== null && e.cost_max_usd > (e.cost_usd || 0) ? ' (at most ' + money(e.cost_max_usd) + ')' : '';
  lines.push('Estimate: ~' + e.prompt_tokens + ' prompt tokens + ~' + e.completion_tokens + ' answer tokens (up to ' +
    e.completion_tokens_max + (data.max_tokens ? ' at max_tokens ' + data.max_tokens : '') + '), cost ' +
    money(e.cost_usd) + most + ', about ' + Math.ceil(e.seconds) + ' s. No model was called.');
  if (e.batch_cost_usd !== null) {
    lines.push('Through the provider\'s Batch API (Submit as batch: half price, answers within a day) it would cost ' +
      money(e.batch_cost_usd) + '.');
  }
  lines.push('Token counts estimated from ' + e.basis + '.');
  data.first_prompts.forEach(function (first) {
    var prompt = first[1];
    lines.push('', 'Prompt for row ' + (first[0] + 1) + ':', prompt.length > 500 ? prompt.slice(0, 500) + '...' : prompt);
  });
  return lines;
}

// ----------------------------------------------------------------------------- =PROMPTBATCH

/**
 * Answers a prompt template for every data row of a table, or for one row.
 *
 * @param {string} template The prompt template, e.g. "Describe {{ product }} in one line."
 * @param {Array<Array<*>>} table The table with its header row first; or data rows, with headers.
 * @param {Array<Array<*>>|string} [headers] The header row, when the second argument holds data rows only.
 * @param {string|Array<Array<string>>} [fields] Answer in columns, e.g.
 *   "sentiment (positive|negative), score (number), reason"; or a range of such header cells.
 * @return One answer per data row, as a column (one answer for one row with headers); with
 *   fields, one row of typed cells per data row.
 * @customfunction
 */
function PROMPTBATCH(template, table, headers, fields) {
  try {
    if (typeof template !== 'string' || !template.trim()) {
      return PB.ERROR + ' the first argument must be the prompt template.';
    }
    var grid = pbGrid_(table);
    var withHeaders = headers !== undefined && headers !== null && headers !== '';
    var head = (withHeaders ? pbGrid_(headers)[0] : grid[0]).map(function (h) { return String(pbCell_(h)); });
    var rows = withHeaders ? grid : grid.slice(1);
    var spec = pbFieldsSpec_(fields);
    var answers = pbAnswerRows_(template, head, rows, spec);
    if (spec) return answers.length ? answers : '';
    if (withHeaders && answers.length === 1) return answers[0];
    return answers.length ? answers.map(function (a) { return [a]; }) : '';
  } catch (err) {
    return PB.ERROR + ' ' + err.message;
  }
}

/** The fields argument as one text: a text, or the non-empty cells of a range, joined. */
function pbFieldsSpec_(fields) {
  if (fields === undefined || fields === null) return '';
  var parts = Array.isArray(fields) ? pbGrid_(fields).reduce(function (all, row) { return all.concat(row); }, []) : [fields];
  return parts.map(function (f) { return String(f).trim(); }).filter(Boolean).join(', ');
}

function pbGrid_(value) {
  if (!Array.isArray(value)) return [[value]];
  return Array.isArray(value[0]) ? value : [value];
}

/** A value as JSON carries it; dates as the sheet shows them in its time zone. */
function pbCell_(value) {
  if (value === null || value === undefined) return '';
  if (Object.prototype.toString.call(value) === '[object Date]') {
    var zone = SpreadsheetApp.getActiveSpreadsheet().getSpreadsheetTimeZone();
    return Utilities.formatDate(value, zone, 'yyyy-MM-dd HH:mm:ss').replace(/ 00:00:00$/, '');
  }
  return value;
}

/**
 * Answers from the document cache first, then one backend call for the rest (within 30 s): the
 * backend plans the rows by the command line's rules (blank rows, #N/A cells, fields) and
 * returns each row's cells. With `fields` an answer is a list of typed values (the reason in
 * the first when it failed), kept in the cache as JSON; failures are not kept. The cache key
 * holds the backend's URL, model and model server, so a backend restarted with another model
 * answers anew. CacheService may drop any answer at any time: the backend's own cache has them
 * all, and a backend that cannot be reached is asked once more before the formula says so.
 */
function pbAnswerRows_(template, head, rows, fields) {
  var cache = rows.length <= PB.CACHE_ROWS ? CacheService.getDocumentCache() : null;
  var url = pbBackendUrl_();
  var model = cache && url ? cache.get('pbmodel:' + url) : null;
  var cells = rows.map(function (row) { return row.map(pbCell_); });
  var keyOf = function (row, backend) {
    var question = [url, backend, template, head, row].concat(fields ? [fields] : []);
    var digest = Utilities.computeDigest(Utilities.DigestAlgorithm.SHA_256,
      JSON.stringify(question), Utilities.Charset.UTF_8);
    return 'pb2:' + Utilities.base64EncodeWebSafe(digest);
  };
  var answers = cells.map(function () { return null; });
  if (model) {
    var keys = cells.map(function (row) { return keyOf(row, model); });
    for (var i = 0; i < keys.length; i += PB.CACHE_BATCH) {
      var found = cache.getAll(keys.slice(i, i + PB.CACHE_BATCH));
      keys.slice(i, i + PB.CACHE_BATCH).forEach(function (k, j) {
        if (Object.prototype.hasOwnProperty.call(found, k)) answers[i + j] = fields ? JSON.parse(found[k]) : found[k];
      });
    }
  }
  var missing = [];
  answers.forEach(function (a, n) { if (a === null) missing.push(n); });
  if (!missing.length) return answers;
  var payload = {
    template: template, origin: 'the PROMPTBATCH formula', headers: head,
    rows: missing.map(function (n) { return cells[n]; }), wait_seconds: PB.FORMULA_WAIT_S
  };
  if (fields) payload.fields = fields;
  var settings = pbFormulaSettings_();
  var data;
  try {
    data = pbCall_(settings, '/v1/complete', payload);
  } catch (err) {
    // unreachable, or a tunnel's gateway without its backend: worth one more try
    if (!err.unreachable && [502, 503, 504].indexOf(err.status) < 0) throw err;
    Utilities.sleep(PB.RETRY_MS);
    data = pbCall_(settings, '/v1/complete', payload);
  }
  var backend = data.model + ' at ' + data.server;
  var late = PB.ERROR + ' no answer within ' + PB.FORMULA_WAIT_S + ' s (answers so far are saved: ' +
    're-enter the formula to continue, or use PromptBatch > Run batch for a big table).';
  var fresh = {};
  missing.forEach(function (n, j) {
    var answer = data.answers[j];
    if (answer === null) {
      answer = data.fields ? [late].concat(data.fields.slice(1).map(function () { return ''; })) : late;
    } else {
      var first = String(Array.isArray(answer) ? answer[0] : answer);
      var kept = fields ? JSON.stringify(answer) : answer;
      if (first.indexOf(PB.ERROR) !== 0 && kept.length <= PB.CACHE_MAX_CHARS) fresh[keyOf(cells[n], backend)] = kept;
    }
    answers[n] = answer;
  });
  if (cache) {
    cache.put('pbmodel:' + url, backend, PB.MODEL_SECONDS);
    var freshKeys = Object.keys(fresh);
    for (var m = 0; m < freshKeys.length; m += PB.CACHE_BATCH) {
      var batch = {};
      freshKeys.slice(m, m + PB.CACHE_BATCH).forEach(function (k) { batch[k] = fresh[k]; });
      cache.putAll(batch, PB.CACHE_SECONDS);
    }
  }
  return answers;
}
