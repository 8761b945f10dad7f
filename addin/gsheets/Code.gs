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
 * Where the table and its prompt columns are, by the CLI's own rules (the backend reads them):
 * `steps` lists every prompt column in running order, with its template, answers columns,
 * the earlier answers it reads and its fields.
 */
function pbLocate_(settings, spreadsheet, sheet, values) {
  return pbCall_(settings, '/v1/locate', pbSheetPayload_(spreadsheet, sheet, values.slice(0, PB.HEAD_ROWS)));
}

/** A sheet as the backend reads it: a grid, the promptbatch.conf rows, the named template. */
function pbSheetPayload_(spreadsheet, sheet, grid) {
  var payload = { sheet: sheet.getName(), grid: grid, conf: pbConfRows_(spreadsheet) };
  var named = spreadsheet.getRangeByName('prompt_template');
  if (named) {
    payload.template = String(named.getValue());
    payload.origin = 'the named range prompt_template';
  }
  return payload;
}

/** The key/value rows of a sheet named promptbatch.conf (any case), as the CLI reads them. */
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
 * Data rows (0-based) whose cells of this prompt column need an answer: the row is not blank,
 * and its answers cells are all empty or the first holds an error.
 */
function pbPendingRows_(values, layout, step, ranges) {
  var rows = [];
  var kept = 0;
  for (var r = layout.header_row + 1; r < values.length; r++) {
    if (ranges && !ranges.some(function (span) { return r >= span[0] && r <= span[1]; })) continue;
    var cells = values[r];
    var blank = layout.columns.every(function (c) { return String(cells[c[0]] || '').trim() === ''; });
    if (blank) continue;
    var current = step.outputs.map(function (o) { return String(cells[o.col] || ''); });
    var empty = current.every(function (v) { return v.trim() === ''; });
    if (!empty && current[0].indexOf(PB.ERROR) !== 0) {
      kept++;
      continue;
    }
    rows.push(r);
  }
  return { rows: rows, kept: kept };
}

/** The columns a prompt column's template sees: the inputs, then earlier answers. */
function pbStepColumns_(layout, step) {
  return layout.columns.concat(step.reads);
}

function pbRowValues_(values, columns, r) {
  return columns.map(function (c) { return values[r][c[0]] === undefined ? '' : values[r][c[0]]; });
}

/** The /v1/complete (or /v1/preview) request for rows of one prompt column. */
function pbStepPayload_(layout, step, values, rows) {
  var columns = pbStepColumns_(layout, step);
  var payload = {
    template: step.template, origin: step.origin, uses: step.uses, options: layout.options,
    headers: columns.map(function (c) { return c[1]; }),
    rows: rows.map(function (r) { return pbRowValues_(values, columns, r); })
  };
  if (step.schema) payload.schema = step.schema;
  return payload;
}

/** Creates the answers headers the sheet lacks, as text. */
function pbWriteHeaders_(sheet, layout) {
  layout.steps.forEach(function (step) {
    step.outputs.forEach(function (o) {
      if (!o.exists) pbWriteColumn_(sheet, o.col, [[layout.header_row, o.header]]);
    });
  });
}

/**
 * Writes one prompt column's answers: text, or one typed value per field (an error string
 * goes to the first field's cell, and empties the others).
 */
function pbWriteAnswers_(sheet, step, cells) {
  step.outputs.forEach(function (o, k) {
    pbWriteColumn_(sheet, o.col, cells.map(function (cell) {
      var answer = cell[1];
      return [cell[0], Array.isArray(answer) ? answer[k] : (k === 0 ? answer : '')];
    }));
  });
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

function pbStart_(ranges) {
  var sheet = SpreadsheetApp.getActiveSpreadsheet().getActiveSheet();
  var job = {
    sheetId: sheet.getSheetId(), ranges: ranges, step: 0, cursor: 0, stalls: 0, passes: 0,
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
 * Answers the sheet's prompt columns in running order, from the job's step and cursor on; a
 * later column reads the answers the earlier ones wrote. True when the run is complete,
 * false to continue in the next pass.
 */
function pbWork_(job, started, save) {
  var spreadsheet = SpreadsheetApp.getActiveSpreadsheet();
  var sheet = pbSheetById_(spreadsheet, job.sheetId);
  if (!sheet) throw new Error('The sheet of this run no longer exists.');
  var settings = pbSettings_();
  var layout = pbLocate_(settings, spreadsheet, sheet, sheet.getDataRange().getDisplayValues());
  pbWriteHeaders_(sheet, layout);
  var run = { sheet: sheet, settings: settings, layout: layout };
  job.step = job.step || 0;
  while (job.step < layout.steps.length) {
    var values = sheet.getDataRange().getDisplayValues();
    if (!pbWorkStep_(job, run, layout.steps[job.step], values, started, save)) return false;
    job.step++;
    job.cursor = 0;
    save();
  }
  return true;
}

/** Answers one prompt column's rows from the cursor on; false when the pass runs out of time. */
function pbWorkStep_(job, run, step, values, started, save) {
  var spreadsheet = SpreadsheetApp.getActiveSpreadsheet();
  var queue = pbPendingRows_(values, run.layout, step, job.ranges).rows
    .filter(function (r) { return r >= job.cursor; });
  while (queue.length) {
    if (pbNow_() - started > PB.RUN_BUDGET_MS) return false;
    var round = queue.splice(0, PB.CHUNK_ROWS * PB.PARALLEL);
    var chunks = [];
    for (var i = 0; i < round.length; i += PB.CHUNK_ROWS) chunks.push(round.slice(i, i + PB.CHUNK_ROWS));
    var requests = chunks.map(function (chunk) {
      var payload = pbStepPayload_(run.layout, step, values, chunk);
      payload.wait_seconds = PB.ROUND_WAIT_S;
      return pbRequest_(run.settings, '/v1/complete', payload);
    });
    var responses;
    try {
      responses = UrlFetchApp.fetchAll(requests);
    } catch (err) {
      throw new Error('Cannot reach the backend at ' + run.settings.url + ': ' + err.message);
    }
    var unanswered = [];
    chunks.forEach(function (chunk, k) {
      var answers = pbChunkAnswers_(job, responses[k], chunk.length);
      var cells = [];
      chunk.forEach(function (r, n) {
        if (answers[n] === null) unanswered.push(r);
        else cells.push([r, answers[n]]);
      });
      pbWriteAnswers_(run.sheet, step, cells);
    });
    job.stalls = unanswered.length === round.length ? job.stalls + 1 : 0;
    if (job.stalls >= PB.MAX_STALLS) {
      throw new Error('the backend answered no row in ' + PB.MAX_STALLS + ' rounds. Is the model slow or down?');
    }
    queue = unanswered.concat(queue);
    job.cursor = queue.length ? Math.min.apply(null, queue) : round[round.length - 1] + 1;
    save();
    spreadsheet.toast((job.answered + job.cached + job.failed) + ' cells answered (' + step.name + ')...', PB.TITLE, 5);
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
    var step = layout.steps[0];
    var pending = pbPendingRows_(values, layout, step, null);
    var payload = pbStepPayload_(layout, step, values, pending.rows.slice(0, PB.PREVIEW_ROWS));
    payload.total = pending.rows.length;
    payload.first = 3;
    var data = pbCall_(settings, '/v1/preview', payload);
    var e = data.estimate;
    var lines = [
      'Template: ' + step.origin + '; answers go to ' + pbColumnNames_(step) + '.',
      'Model: ' + data.model,
      'Rows to answer: ' + data.rows + ' (' + pending.kept + ' already answered are kept).',
      'From the cache: ' + data.cached + (data.sample < data.rows ? ' of the first ' + data.sample : '') +
        '; to send: ' + data.to_send + '.',
      'Estimate: ' + e.prompt_tokens + ' tokens in, ' + e.completion_tokens + ' out, ' +
        (e.cost_usd === null ? 'cost unknown' : '$' + e.cost_usd.toFixed(4)) +
        ', about ' + Math.ceil(e.seconds) + ' s.'
    ];
    if (layout.steps.length > 1) {
      lines.push('These counts are for "' + step.name + '"; then come ' + layout.steps.slice(1).map(function (later) {
        return '"' + later.name + '"' + (later.uses.length ? ' (uses ' + later.uses.join(', ') + ')' : '');
      }).join(', ') + '.');
    }
    if (data.render_errors) lines.push(data.render_errors + ' rows fail to render, e.g. ' + data.first_error);
    data.first_prompts.forEach(function (prompt, n) {
      lines.push('', 'Prompt ' + (n + 1) + ':', prompt.length > 500 ? prompt.slice(0, 500) + '...' : prompt);
    });
    ui.alert('PromptBatch preview', lines.join('\n'), ui.ButtonSet.OK);
  } catch (err) {
    ui.alert('PromptBatch', err.message, ui.ButtonSet.OK);
  }
}

function pbColumnNames_(step) {
  var names = step.outputs.map(function (o) { return '"' + o.header + '"'; });
  return (names.length > 1 ? 'columns ' : 'column ') + names.join(', ');
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
    if (spec) return answers.length ? answers.map(function (a) { return pbFieldCells_(a, spec); }) : '';
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

/** A row of cells for one structured answer: its values, or the reason in the first cell. */
function pbFieldCells_(answer, spec) {
  if (Array.isArray(answer)) return answer;
  var width = spec.split(/,(?![^(]*\))/).length;
  var row = [answer];
  while (row.length < width) row.push('');
  return row;
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
 * Answers from the script cache first, then one backend call for the rest (within 30 s). With
 * `fields` an answer is a list of typed values, kept in the cache as JSON.
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
  var answers = keys.map(function (k, n) {
    if (cells[n].every(function (v) { return String(v).trim() === ''; })) return '';
    return Object.prototype.hasOwnProperty.call(hits, k) ? hits[k] : null;
  });
  var missing = [];
  answers.forEach(function (a, n) { if (a === null) missing.push(n); });
  if (!missing.length) return answers;
  var payload = {
    template: template, origin: 'the PROMPTBATCH formula', headers: head,
    rows: missing.map(function (n) { return cells[n]; }), wait_seconds: PB.FORMULA_WAIT_S
  };
  if (fields) payload.fields = fields;
  var data = pbCall_(settings, '/v1/complete', payload);
  var fresh = {};
  missing.forEach(function (n, j) {
    var answer = data.answers[j];
    if (answer === null) {
      answer = PB.ERROR + ' no answer within ' + PB.FORMULA_WAIT_S + ' s (answers so far are saved: ' +
        're-enter the formula to continue, or use PromptBatch > Run batch for a big table).';
    } else {
      var kept = Array.isArray(answer) ? JSON.stringify(answer) : answer;
      if (kept && kept.indexOf(PB.ERROR) !== 0 && kept.length <= PB.CACHE_MAX_CHARS) fresh[keys[n]] = kept;
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
