/**
 * PromptBatch for Google Sheets: one prompt template over every row of a table.
 *
 * Apps Script cannot run the Python engine, so this script reads the sheet, sends rows in
 * chunks to a `promptbatch serve` backend (which holds the model, the API keys and the answer
 * cache) and writes the answers back as text. Long runs continue through a time-based trigger
 * before Apps Script's 6-minute limit. Settings (backend URL and token) are user properties:
 * other editors of the spreadsheet never see your token.
 */

var PB = {
  CHUNK_ROWS: 50,
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
  /** Rows sent to find the template and header row (the rest are read locally). */
  HEAD_ROWS: 50,
  /** Rows rendered for a preview; the estimate is scaled to all rows to send. */
  PREVIEW_ROWS: 1000,
  /** CacheService keeps values at most 6 hours and 100 KB. */
  CACHE_SECONDS: 6 * 60 * 60,
  CACHE_MAX_CHARS: 25000,
  CACHE_BATCH: 100,
  ERROR: '#ERROR:',
  TITLE: 'PromptBatch',
  CONTINUE: 'pbContinue',
  KEY_URL: 'PB_BACKEND_URL',
  KEY_TOKEN: 'PB_TOKEN',
  KEY_JOB: 'PB_JOB'
};

/** Adds the PromptBatch menu. */
function onOpen() {
  SpreadsheetApp.getUi()
    .createMenu(PB.TITLE)
    .addItem('Run batch', 'pbRunBatch')
    .addItem('Run selected rows', 'pbRunSelected')
    .addItem('Preview', 'pbPreview')
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

/** Where the template, header row, input and output columns are, by the CLI's own rules. */
function pbLocate_(settings, spreadsheet, sheet, values) {
  var payload = { sheet: sheet.getName(), grid: values.slice(0, PB.HEAD_ROWS) };
  var named = spreadsheet.getRangeByName('prompt_template');
  if (named) {
    payload.template = String(named.getValue());
    payload.origin = 'the named range prompt_template';
  }
  return pbCall_(settings, '/v1/locate', payload);
}

/** Data rows (0-based) that need an answer: not blank, and no answer yet (or an error). */
function pbPendingRows_(values, layout, ranges) {
  var rows = [];
  var kept = 0;
  for (var r = layout.header_row + 1; r < values.length; r++) {
    if (ranges && !ranges.some(function (span) { return r >= span[0] && r <= span[1]; })) continue;
    var cells = values[r];
    var blank = layout.columns.every(function (c) { return String(cells[c[0]] || '').trim() === ''; });
    if (blank) continue;
    var current = String(cells[layout.output_col] || '');
    if (current.trim() !== '' && current.indexOf(PB.ERROR) !== 0) {
      kept++;
      continue;
    }
    rows.push(r);
  }
  return { rows: rows, kept: kept };
}

function pbRowValues_(values, layout, r) {
  return layout.columns.map(function (c) { return values[r][c[0]] === undefined ? '' : values[r][c[0]]; });
}

/** Writes answers as rich text, so `=...` or `12` lands as text, never as a formula or number. */
function pbWriteAnswers_(sheet, column, cells) {
  cells.sort(function (a, b) { return a[0] - b[0]; });
  var i = 0;
  while (i < cells.length) {
    var j = i;
    while (j + 1 < cells.length && cells[j + 1][0] === cells[j][0] + 1) j++;
    var block = cells.slice(i, j + 1).map(function (cell) {
      return [SpreadsheetApp.newRichTextValue().setText(cell[1]).build()];
    });
    sheet.getRange(cells[i][0] + 1, column + 1, block.length, 1).setRichTextValues(block);
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

function pbStart_(ranges) {
  var sheet = SpreadsheetApp.getActiveSpreadsheet().getActiveSheet();
  var job = {
    sheetId: sheet.getSheetId(), ranges: ranges, cursor: 0, stalls: 0, passes: 0,
    answered: 0, cached: 0, failed: 0
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
      pbTell_('Answered ' + (job.answered + job.cached + job.failed) + ' rows so far; ' +
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

/** Answers rows from the job's cursor on; true when the run is complete, false to continue. */
function pbWork_(job, started, save) {
  var spreadsheet = SpreadsheetApp.getActiveSpreadsheet();
  var sheet = pbSheetById_(spreadsheet, job.sheetId);
  if (!sheet) throw new Error('The sheet of this run no longer exists.');
  var settings = pbSettings_();
  var values = sheet.getDataRange().getDisplayValues();
  var layout = pbLocate_(settings, spreadsheet, sheet, values);
  if (!layout.output_exists) {
    pbWriteAnswers_(sheet, layout.output_col, [[layout.header_row, layout.output_header]]);
  }
  var headers = layout.columns.map(function (c) { return c[1]; });
  var queue = pbPendingRows_(values, layout, job.ranges).rows
    .filter(function (r) { return r >= job.cursor; });
  while (queue.length) {
    if (pbNow_() - started > PB.RUN_BUDGET_MS) return false;
    var round = queue.splice(0, PB.CHUNK_ROWS * PB.PARALLEL);
    var chunks = [];
    for (var i = 0; i < round.length; i += PB.CHUNK_ROWS) chunks.push(round.slice(i, i + PB.CHUNK_ROWS));
    var requests = chunks.map(function (chunk) {
      return pbRequest_(settings, '/v1/complete', {
        template: layout.template, origin: layout.origin, headers: headers,
        rows: chunk.map(function (r) { return pbRowValues_(values, layout, r); }),
        wait_seconds: PB.ROUND_WAIT_S
      });
    });
    var responses;
    try {
      responses = UrlFetchApp.fetchAll(requests);
    } catch (err) {
      throw new Error('Cannot reach the backend at ' + settings.url + ': ' + err.message);
    }
    var unanswered = [];
    chunks.forEach(function (chunk, k) {
      var answers = pbChunkAnswers_(job, responses[k], chunk.length);
      var cells = [];
      chunk.forEach(function (r, n) {
        if (answers[n] === null) unanswered.push(r);
        else cells.push([r, answers[n]]);
      });
      pbWriteAnswers_(sheet, layout.output_col, cells);
    });
    job.stalls = unanswered.length === round.length ? job.stalls + 1 : 0;
    if (job.stalls >= PB.MAX_STALLS) {
      throw new Error('the backend answered no row in ' + PB.MAX_STALLS + ' rounds. Is the model slow or down?');
    }
    queue = unanswered.concat(queue);
    job.cursor = queue.length ? Math.min.apply(null, queue) : round[round.length - 1] + 1;
    save();
    spreadsheet.toast((job.answered + job.cached + job.failed) + ' rows answered...', PB.TITLE, 5);
  }
  return true;
}

/** One chunk's answers (null: not ready, ask again); a failed request fails its rows only. */
function pbChunkAnswers_(job, response, size) {
  var data = pbParse_(response);
  var answers = [];
  if (data instanceof Error) {
    if (data.status === 400 || data.status === 401 || data.status === 413) throw data;
    for (var i = 0; i < size; i++) answers.push(PB.ERROR + ' ' + data.message);
    job.failed += size;
    return answers;
  }
  job.answered += data.answered;
  job.cached += data.cached;
  job.failed += data.failed;
  return data.answers;
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

/** Menu: rows to send, rows kept, the first prompts and the estimated cost; calls no model. */
function pbPreview() {
  var ui = SpreadsheetApp.getUi();
  try {
    var spreadsheet = SpreadsheetApp.getActiveSpreadsheet();
    var sheet = spreadsheet.getActiveSheet();
    var settings = pbSettings_();
    var values = sheet.getDataRange().getDisplayValues();
    var layout = pbLocate_(settings, spreadsheet, sheet, values);
    var pending = pbPendingRows_(values, layout, null);
    var sample = pending.rows.slice(0, PB.PREVIEW_ROWS);
    var data = pbCall_(settings, '/v1/preview', {
      template: layout.template, origin: layout.origin,
      headers: layout.columns.map(function (c) { return c[1]; }),
      rows: sample.map(function (r) { return pbRowValues_(values, layout, r); }),
      total: pending.rows.length, first: 3
    });
    var e = data.estimate;
    var lines = [
      'Template: ' + layout.origin + '; answers go to column "' + layout.output_header + '".',
      'Model: ' + data.model,
      'Rows to answer: ' + data.rows + ' (' + pending.kept + ' already answered are kept).',
      'From the cache: ' + data.cached + (data.sample < data.rows ? ' of the first ' + data.sample : '') +
        '; to send: ' + data.to_send + '.',
      'Estimate: ' + e.prompt_tokens + ' tokens in, ' + e.completion_tokens + ' out, ' +
        (e.cost_usd === null ? 'cost unknown' : '$' + e.cost_usd.toFixed(4)) +
        ', about ' + Math.ceil(e.seconds) + ' s.'
    ];
    if (data.render_errors) lines.push(data.render_errors + ' rows fail to render, e.g. ' + data.first_error);
    data.first_prompts.forEach(function (prompt, n) {
      lines.push('', 'Prompt ' + (n + 1) + ':', prompt.length > 500 ? prompt.slice(0, 500) + '...' : prompt);
    });
    ui.alert('PromptBatch preview', lines.join('\n'), ui.ButtonSet.OK);
  } catch (err) {
    ui.alert('PromptBatch', err.message, ui.ButtonSet.OK);
  }
}

// ----------------------------------------------------------------------------- =PROMPTBATCH

/**
 * Answers a prompt template for every data row of a table, or for one row.
 *
 * @param {string} template The prompt template, e.g. "Describe {{ product }} in one line."
 * @param {Array<Array<*>>} table The table with its header row first; or data rows, with headers.
 * @param {Array<Array<*>>} [headers] The header row, when the second argument holds data rows only.
 * @return One answer per data row, as a column (one answer for one row with headers).
 * @customfunction
 */
function PROMPTBATCH(template, table, headers) {
  try {
    if (typeof template !== 'string' || !template.trim()) {
      return PB.ERROR + ' the first argument must be the prompt template.';
    }
    var grid = pbGrid_(table);
    var withHeaders = headers !== undefined && headers !== null && headers !== '';
    var head = (withHeaders ? pbGrid_(headers)[0] : grid[0]).map(function (h) { return String(pbCell_(h)); });
    var rows = withHeaders ? grid : grid.slice(1);
    var answers = pbAnswerRows_(pbSettings_(), template, head, rows);
    if (withHeaders && answers.length === 1) return answers[0];
    return answers.length ? answers.map(function (a) { return [a]; }) : '';
  } catch (err) {
    return PB.ERROR + ' ' + err.message;
  }
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

/** Answers from the script cache first, then one backend call for the rest (within 30 s). */
function pbAnswerRows_(settings, template, head, rows) {
  var cache = CacheService.getDocumentCache() || CacheService.getScriptCache();
  var cells = rows.map(function (row) { return row.map(pbCell_); });
  var keys = cells.map(function (row) {
    var digest = Utilities.computeDigest(Utilities.DigestAlgorithm.SHA_256,
      JSON.stringify([settings.url, template, head, row]), Utilities.Charset.UTF_8);
    return 'pb1:' + Utilities.base64EncodeWebSafe(digest);
  });
  var hits = {};
  for (var i = 0; i < keys.length; i += PB.CACHE_BATCH) {
    var found = cache.getAll(keys.slice(i, i + PB.CACHE_BATCH));
    Object.keys(found).forEach(function (k) { hits[k] = found[k]; });
  }
  var answers = keys.map(function (k, n) {
    if (cells[n].every(function (v) { return String(v).trim() === ''; })) return '';
    return Object.prototype.hasOwnProperty.call(hits, k) ? hits[k] : null;
  });
  var missing = [];
  answers.forEach(function (a, n) { if (a === null) missing.push(n); });
  if (!missing.length) return answers;
  var data = pbCall_(settings, '/v1/complete', {
    template: template, origin: 'the PROMPTBATCH formula', headers: head,
    rows: missing.map(function (n) { return cells[n]; }), wait_seconds: PB.FORMULA_WAIT_S
  });
  var fresh = {};
  missing.forEach(function (n, j) {
    var text = data.answers[j];
    if (text === null) {
      text = PB.ERROR + ' no answer within ' + PB.FORMULA_WAIT_S + ' s (answers so far are saved: ' +
        're-enter the formula to continue, or use PromptBatch > Run batch for a big table).';
    } else if (text && text.indexOf(PB.ERROR) !== 0 && text.length <= PB.CACHE_MAX_CHARS) {
      fresh[keys[n]] = text;
    }
    answers[n] = text;
  });
  var freshKeys = Object.keys(fresh);
  for (var m = 0; m < freshKeys.length; m += PB.CACHE_BATCH) {
    var batch = {};
    freshKeys.slice(m, m + PB.CACHE_BATCH).forEach(function (k) { batch[k] = fresh[k]; });
    cache.putAll(batch, PB.CACHE_SECONDS);
  }
  return answers;
}
