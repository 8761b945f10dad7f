/**
 * PromptBatch for Google Sheets: the provider's Batch API from the menu (half price, answers
 * within a day). "Submit as batch" sends the sheet's unanswered prompts as one job; "Collect
 * batch results" writes what has come back. The backend keeps the jobs in its journal, so a
 * collect works days later, after either side restarted. Only a backend whose model is
 * openai:... or anthropic:... has a Batch API; any other says so.
 *
 * The whole sheet goes to the backend in one request (up to 5 MB), which plans it by the same
 * rules as `promptbatch run --via batch` and returns the cells to write.
 */

/** Menu: collect what is done, then send what neither the cache nor a running job holds. */
function pbSubmitBatch() {
  pbBatchCall_('/v1/batch/submit', pbSubmitLines_);
}

/** Menu: write the answers of finished jobs; rows of running jobs stay as they are. */
function pbCollectBatch() {
  pbBatchCall_('/v1/batch/collect', pbCollectLines_);
}

/** What a submit did. */
function pbSubmitLines_(data) {
  var lines = [];
  if (data.sent) {
    lines.push('Sent ' + data.sent + ' requests in batch job ' + data.new_jobs.join(', ') +
      ' (estimated ' + (data.estimate_usd === null ? 'cost unknown' : '$' + data.estimate_usd.toFixed(4)) +
      ' at half the realtime price).',
    'Answers come within 24 hours: then use PromptBatch > Collect batch results.');
  } else {
    lines.push('Nothing new to send: every prompt is answered or in a running job.');
  }
  return lines.concat(pbBatchCounts_(data));
}

/** What a collect wrote, and each job's state. */
function pbCollectLines_(data) {
  var lines = pbBatchCounts_(data);
  if (!data.answered && !data.failed && data.waiting) lines.unshift('No answer has come back yet.');
  data.jobs.forEach(function (job) {
    lines.push(job.id + ': ' + job.status + (job.collected ? ', collected' : '') + ', ' + job.progress + '.');
  });
  if (!data.jobs.length) lines.push('No batch job holds this sheet\'s prompts: use PromptBatch > Submit as batch.');
  return lines;
}

/** A batch route from the menu: its lines in a dialog. */
function pbBatchCall_(path, report) {
  var ui = SpreadsheetApp.getUi();
  try {
    ui.alert('PromptBatch batch', pbBatchRun_(path, report).join('\n'), ui.ButtonSet.OK);
  } catch (err) {
    ui.alert('PromptBatch', err.message, ui.ButtonSet.OK);
  }
}

/** Sends the active sheet to a batch route under the document lock, writes the cells back. */
function pbBatchRun_(path, report) {
  var lock = LockService.getDocumentLock();
  if (!lock.tryLock(5000)) {
    throw new Error('Another PromptBatch run is writing to this spreadsheet. Try again when it ends.');
  }
  try {
    var spreadsheet = SpreadsheetApp.getActiveSpreadsheet();
    var sheet = spreadsheet.getActiveSheet();
    var settings = pbSettings_();
    var merged = pbMerged_(sheet);
    var layout = pbLocate_(settings, spreadsheet, sheet, merged);
    var payload = pbSheetPayload_(spreadsheet, sheet, pbRows_(sheet, 0, sheet.getLastRow()), merged);
    if (layout.skip_hidden) payload.hidden = pbHidden_(sheet, pbRowNumbers_(layout.header_row + 1, sheet.getLastRow()));
    var data = pbCall_(settings, path, payload);
    pbWriteCells_(sheet, data.cells);
    return report(data);
  } finally {
    lock.releaseLock();
  }
}

/** What the sheet now holds, and what is still to come. */
function pbBatchCounts_(data) {
  var lines = [];
  if (data.answered || data.failed) {
    lines.push('Written: ' + data.answered + ' answers, ' + data.failed + ' errors' +
      (data.failed ? ' (cells starting with #ERROR:; submit again to resend them)' : '') + '.');
  }
  if (data.waiting) lines.push(data.waiting + ' answers wait for running jobs.');
  if (data.unsent) {
    lines.push(data.unsent + ' prompts are not sent yet (a prompt column that uses another one goes ' +
      'once those answers are in): use Submit as batch again.');
  }
  return lines;
}
