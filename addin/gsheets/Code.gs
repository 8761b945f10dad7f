/**
 * PromptBatch for Google Sheets: one prompt template over every row of a table.
 *
 * Apps Script cannot run the Python engine, so this script reads the sheet, sends its rows in
 * windows to a `promptbatch serve` backend (which holds the model, the API keys and the answer
 * cache, and plans each window by the command line's rules) and writes the cells it returns.
 * It decides nothing about rows or answers itself. Long runs continue through a time-based
 * trigger before Apps Script's 6-minute limit. Settings (backend URL and token) are user properties:
 * other editors of the spreadsheet never see your token.
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
  /** CacheService keeps values at most 6 hours and 100 KB. */
  CACHE_SECONDS: 6 * 60 * 60,
  CACHE_MAX_CHARS: 25000,
  CACHE_BATCH: 100,
  ERROR: '#ERROR:',
  TITLE: 'PromptBatch',
  CONTINUE: 'pbContinue',
  KEY_URL: 'PB_BACKEND_URL',
  KEY_TOKEN: 'PB_TOKEN',
  KEY_JOB: 'PB_JOB',
  CONF_SHEET: 'promptbatch.conf'
};

/** Adds the PromptBatch menu. */
function onOpen() {
  SpreadsheetApp.getUi()
    .createMenu(PB.TITLE)
    .addItem('Run batch', 'pbRunBatch')
    .addItem('Run selected rows', 'pbRunSelected')
    .addItem('Preview', 'pbPreview')
    .addSeparator()
    .addItem('Submit as batch (half price)', 'pbSubmitBatch')
    .addItem('Collect batch results', 'pbCollectBatch')
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

/** Asks for the backend URL and token, keeps them in user properties, then checks them. */
function pbSettings() {
  var ui = SpreadsheetApp.getUi();
  var props = PropertiesService.getUserProperties();
  var url = props.getProperty(PB.KEY_URL) || '';
  var token = props.getProperty(PB.KEY_TOKEN) || '';
  var answer = ui.prompt('PromptBatch settings (1 of 2)',
    'Backend URL, the HTTPS address of `promptbatch serve`' +
    (url ? '.\nNow: ' + url + ' (leave empty to keep it)' : ', e.g. https://example.trycloudflare.com'),
    ui.ButtonSet.OK_CANCEL);
  if (answer.getSelectedButton() !== ui.Button.OK) return;
  var newUrl = answer.getResponseText().trim().replace(/\/+$/, '');
  if (newUrl) {
    if (!/^https?:\/\/[^\s/]+/i.test(newUrl)) {
      ui.alert('PromptBatch', 'That is not an http(s) address: ' + newUrl, ui.ButtonSet.OK);
      return;
    }
    url = newUrl;
  }
  answer = ui.prompt('PromptBatch settings (2 of 2)',
    'Bearer token (printed by `promptbatch serve` on its first start; kept in its ' +
    'serve-token file)' + (token ? '.\nA token is saved: leave empty to keep it.' : '.'),
    ui.ButtonSet.OK_CANCEL);
  if (answer.getSelectedButton() !== ui.Button.OK) return;
  token = answer.getResponseText().trim() || token;
  if (!url || !token) {
    ui.alert('PromptBatch', 'Both the URL and the token are needed.', ui.ButtonSet.OK);
    return;
  }
  var values = {};
  values[PB.KEY_URL] = url;
  values[PB.KEY_TOKEN] = token;
  props.setProperties(values);
  var message;
  try {
    message = 'Connected. The backend answers with ' + pbCall_(pbSettings_(), '/v1/health').model + '.';
  } catch (err) {
    message = 'Saved, but the backend did not answer: ' + err.message;
  }
  if (!/^https:/i.test(url)) {
    message += '\nWarning: the address is not HTTPS, so the token travels in clear text.';
  }
  ui.alert('PromptBatch', message, ui.ButtonSet.OK);
}

function pbSettings_() {
  var props = PropertiesService.getUserProperties();
  var url = props.getProperty(PB.KEY_URL);
  var token = props.getProperty(PB.KEY_TOKEN);
  if (!url || !token) {
    throw new Error('No backend set up yet: open PromptBatch > Settings.');
  }
  return { url: url, token: token };
}

// ----------------------------------------------------------------------------- HTTP

function pbRequest_(settings, path, payload) {
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

/** The parsed JSON of a reply, or an Error that says what to do about it. */
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
  var err = new Error(status === 401
    ? 'The backend refused the token: open PromptBatch > Settings.'
    : 'The backend answered ' + status + ': ' + detail);
  err.status = status;
  return err;
}

function pbCall_(settings, path, payload) {
  var request = pbRequest_(settings, path, payload);
  var url = request.url;
  delete request.url;
  var response;
  try {
    response = UrlFetchApp.fetch(url, request);
  } catch (err) {
    throw new Error('Cannot reach the backend at ' + settings.url + ': ' + err.message);
  }
  var data = pbParse_(response);
  if (data instanceof Error) throw data;
  return data;
}

// ----------------------------------------------------------------------------- the sheet

/**
 * The sheet as the backend reads it: rows from the first (`grid`), the promptbatch.conf rows,
 * the named template and the merged ranges. The backend finds the table, the rows to send and
 * the cells to write by the command line's rules; the script decides none of it.
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

/** The key/value rows of a sheet named promptbatch.conf (any case). */
function pbConfRows_(spreadsheet) {
  var sheets = spreadsheet.getSheets();
  for (var i = 0; i < sheets.length; i++) {
    if (sheets[i].getName().toLowerCase() === PB.CONF_SHEET) {
      return sheets[i].getDataRange().getDisplayValues().map(function (row) { return row.slice(0, 2); });
    }
  }
  return [];
}

/** The sheet's merged ranges as [top, left, bottom, right, value], 0-based. */
function pbMerged_(sheet) {
  return sheet.getDataRange().getMergedRanges().map(function (range) {
    return [range.getRow() - 1, range.getColumn() - 1, range.getLastRow() - 1,
      range.getLastColumn() - 1, range.getDisplayValue()];
  });
}

/** Display values of `count` rows from row `first` (0-based), every column of the sheet. */
function pbRows_(sheet, first, count) {
  return sheet.getRange(first + 1, 1, Math.max(1, count), Math.max(1, sheet.getLastColumn())).getDisplayValues();
}

/** Rows numbered `first` to `end` - 1. */
function pbRowNumbers_(first, end) {
  var rows = [];
  for (var r = first; r < end; r++) rows.push(r);
  return rows;
}

/** The rows among `rows` (0-based) that a person or a filter hides. */
function pbHidden_(sheet, rows) {
  return rows.filter(function (r) { return sheet.isRowHiddenByUser(r + 1) || sheet.isRowHiddenByFilter(r + 1); });
}

/**
 * Where the table is, by the first rows: its header row, its prompt columns, and whether a run
 * leaves hidden rows out (then the script sends which of its rows are hidden).
 */
function pbLocate_(settings, spreadsheet, sheet, merged) {
  var head = pbRows_(sheet, 0, Math.min(PB.HEAD_ROWS, sheet.getLastRow()));
  return pbCall_(settings, '/v1/locate', pbSheetPayload_(spreadsheet, sheet, head, merged));
}

/** [row, col, value] cells (0-based), as the backend returns them, column by column in blocks. */
function pbWriteCells_(sheet, cells) {
  var byColumn = {};
  cells.forEach(function (cell) {
    (byColumn[cell[1]] = byColumn[cell[1]] || []).push([cell[0], cell[2]]);
  });
  Object.keys(byColumn).forEach(function (col) { pbWriteColumn_(sheet, Number(col), byColumn[col]); });
}

/**
 * Writes [row, value] cells of one column in blocks of neighbouring rows. Text goes in as rich
 * text, so `=...` or `12` lands as text, never as a formula or number; numbers and booleans
 * from structured answers go in as values, so the sheet can sum and filter them.
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
      range.setRichTextValues(block.map(function (cell) {
        return [SpreadsheetApp.newRichTextValue().setText(cell[1] === null || cell[1] === undefined ? '' : cell[1]).build()];
      }));
    } else {
      range.setValues(block.map(function (cell) { return [cell[1]]; }));
    }
    i = j + 1;
  }
}

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
  pbStart_(null);
}

/** Menu: the same, limited to the rows of the current selection. */
function pbRunSelected() {
  var list = SpreadsheetApp.getActiveSpreadsheet().getActiveRangeList();
  var ranges = list ? list.getRanges() : [];
  if (!ranges.length) {
    SpreadsheetApp.getUi().alert('PromptBatch', 'Select the rows to run first.',
      SpreadsheetApp.getUi().ButtonSet.OK);
    return;
  }
  pbStart_(ranges.map(function (range) { return [range.getRow() - 1, range.getLastRow() - 1]; }));
}

/**
 * A run's state between passes: the next row to send (`cursor`), rows whose answers came in
 * part (`again`, sent again as such), rows of requests that failed (`retry`, sent again as
 * new), the rows a new window takes (`window`) and the counts so far.
 */
function pbStart_(ranges) {
  var sheet = SpreadsheetApp.getActiveSpreadsheet().getActiveSheet();
  var job = {
    sheetId: sheet.getSheetId(), ranges: ranges, cursor: -1, again: [], retry: [],
    window: PB.CHUNK_ROWS, stalls: 0, passes: 0, answered: 0, cached: 0, failed: 0
  };
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
      props.deleteProperty(PB.KEY_JOB);
      pbUnschedule_();
      pbTell_('Done: ' + job.answered + ' new answers, ' + job.cached + ' from the cache, ' +
        job.failed + ' errors' + (job.failed ? ' (cells starting with #ERROR:; run again to retry them)' : '') +
        '.', false);
    } else {
      pbSchedule_(PB.CONTINUE_MS);
      pbTell_('Answered ' + (job.answered + job.cached + job.failed) + ' answers so far; ' +
        'the run continues by itself in a minute.', false);
    }
  } catch (err) {
    props.deleteProperty(PB.KEY_JOB);
    pbUnschedule_();
    pbTell_('The run stopped: ' + err.message, interactive);
  } finally {
    lock.releaseLock();
  }
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
  var failure = '';
  for (;;) {
    var lastRow = sheet.getLastRow();
    if (!pbMore_(job, lastRow)) return true;
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
      throw new Error('Cannot reach the backend at ' + settings.url + ': ' + err.message);
    }
    var progressed = false;
    var work = 0;
    chunks.forEach(function (chunk, k) {
      var data = pbParse_(responses[k]);
      if (data instanceof Error) {
        if (data.status === 400 || data.status === 401 || data.status === 413) throw data;
        failure = data.message;
        Array.prototype.push.apply(chunk.resent ? job.again : job.retry, chunk.rows);
        return;
      }
      pbWriteCells_(sheet, data.cells);
      job.answered += data.answered;
      job.cached += data.cached;
      job.failed += data.failed;
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

/** Whether any row is left to send. */
function pbMore_(job, lastRow) {
  return job.retry.length > 0 || job.again.length > 0 || (job.cursor < lastRow &&
    (!job.ranges || job.ranges.some(function (span) { return span[1] >= job.cursor; })));
}

function pbSelected_(ranges, row) {
  return !ranges || ranges.some(function (span) { return row >= span[0] && row <= span[1]; });
}

/** The /v1/run request for a window: the rows down to the header row, then the window's rows. */
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
    ui.alert('PromptBatch preview', pbPreviewLines_(pbCall_(settings, '/v1/preview', payload)).join('\n'), ui.ButtonSet.OK);
  } catch (err) {
    ui.alert('PromptBatch', err.message, ui.ButtonSet.OK);
  }
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
 * @param {Array<Array<*>>} [headers] The header row, when the second argument holds data rows only.
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
    var answers = pbAnswerRows_(pbSettings_(), template, head, rows, spec);
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
 * Answers from the script cache first, then one backend call for the rest (within 30 s): the
 * backend plans the rows by the command line's rules (blank rows, #N/A cells, fields) and
 * returns each row's cells. With `fields` an answer is a list of typed values (the reason in
 * the first when it failed), kept in the cache as JSON; failures are not kept.
 */
function pbAnswerRows_(settings, template, head, rows, fields) {
  var cache = CacheService.getDocumentCache() || CacheService.getScriptCache();
  var cells = rows.map(function (row) { return row.map(pbCell_); });
  var keys = cells.map(function (row) {
    var question = fields ? [settings.url, template, head, row, fields] : [settings.url, template, head, row];
    var digest = Utilities.computeDigest(Utilities.DigestAlgorithm.SHA_256,
      JSON.stringify(question), Utilities.Charset.UTF_8);
    return 'pb1:' + Utilities.base64EncodeWebSafe(digest);
  });
  var hits = {};
  for (var i = 0; i < keys.length; i += PB.CACHE_BATCH) {
    var found = cache.getAll(keys.slice(i, i + PB.CACHE_BATCH));
    Object.keys(found).forEach(function (k) { hits[k] = fields ? JSON.parse(found[k]) : found[k]; });
  }
  var answers = keys.map(function (k) { return Object.prototype.hasOwnProperty.call(hits, k) ? hits[k] : null; });
  var missing = [];
  answers.forEach(function (a, n) { if (a === null) missing.push(n); });
  if (!missing.length) return answers;
  var payload = {
    template: template, origin: 'the PROMPTBATCH formula', headers: head,
    rows: missing.map(function (n) { return cells[n]; }), wait_seconds: PB.FORMULA_WAIT_S
  };
  if (fields) payload.fields = fields;
  var data = pbCall_(settings, '/v1/complete', payload);
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
      if (first.indexOf(PB.ERROR) !== 0 && kept.length <= PB.CACHE_MAX_CHARS) fresh[keys[n]] = kept;
    }
    answers[n] = answer;
  });
  var freshKeys = Object.keys(fresh);
  for (var m = 0; m < freshKeys.length; m += PB.CACHE_BATCH) {
    var batch = {};
    freshKeys.slice(m, m + PB.CACHE_BATCH).forEach(function (k) { batch[k] = fresh[k]; });
    cache.putAll(batch, PB.CACHE_SECONDS);
  }
  return answers;
}
