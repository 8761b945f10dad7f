'use strict';
// Sheets with several prompt columns (chained) and structured answers, from the menu and the
// formula, against a real `promptbatch serve`.
const assert = require('node:assert/strict');
const { after, before, test } = require('node:test');
const { FakeSheet, drainTriggers, loadScript, startBackend } = require('../testing/harness');

let backend;
before(async () => { backend = await startBackend(); });
after(() => backend.stop());

const plain = (value) => JSON.parse(JSON.stringify(value));
const FIELDS = 'sentiment (positive|negative), score (number), urgent (boolean)';

/** A row of templates above the answers headers: the reply uses the summary. */
function feedbackSheet(rows) {
  const grid = [['Templates', '', 'Summarize {{ feedback }}', 'Reply to {{ customer }}: {{ summary }}'],
    ['Customer', 'Feedback', 'summary', 'reply']];
  for (let i = 0; i < rows; i++) grid.push([`c${i}`, i === 5 ? 'FAIL here' : `fb ${i}`, '', '']);
  return new FakeSheet('Feedback', grid);
}

test('chained columns: a row\'s reply is asked as soon as its summary is back, in the same window', async () => {
  const sheet = feedbackSheet(300);
  sheet.grid[2 + 7][2] = 'kept summary';
  const app = loadScript({ sheets: [sheet], settings: backend, fetchAllMs: 250 * 1000 });
  const before = await backend.llmStats();
  app.gs.pbRunBatch();
  const job = JSON.parse(app.userProps.getProperty('PB_JOB'));
  assert.ok(job.cursor > 2 && job.cursor < 302, 'the first pass stopped part way');
  assert.equal(sheet.column(3)[2], 'Answer: Reply to c0: Answer: Summarize fb 0', 'replies come with their summaries');
  assert.ok(drainTriggers(app) >= 1);
  const summary = sheet.column(2);
  const reply = sheet.column(3);
  assert.equal(summary[2], 'Answer: Summarize fb 0');
  assert.equal(summary[9], 'kept summary');
  assert.equal(reply[9], 'Answer: Reply to c7: kept summary', 'an answer in the sheet is used');
  assert.match(summary[7], /^#ERROR: /);
  assert.equal(reply[7], "#ERROR: uses the answer in 'Feedback'!C8, which failed; a rerun retries both");
  assert.equal(reply[301], 'Answer: Reply to c299: Answer: Summarize fb 299');
  const llm = await backend.llmStats();
  assert.equal(llm.ok - before.ok, 299 + 299 - 1, 'each prompt asked once');
  assert.match(app.log.toasts.at(-1), /^Done: 597 new answers, 0 from the cache, 2 errors/);

  sheet.grid[7][1] = 'better feedback';
  const again = await backend.llmStats();
  app.gs.pbRunBatch();
  drainTriggers(app);
  const after = await backend.llmStats();
  assert.equal(after.ok - again.ok, 2, 'a rerun retries the failed summary, then its reply');
  assert.equal(sheet.column(3)[7], 'Answer: Reply to c5: Answer: Summarize better feedback');
});

test('fields from the conf sheet land typed in their own columns, and chain on', () => {
  const conf = new FakeSheet('promptbatch.conf', [['key', 'value'], ['fields', FIELDS],
    ['template.note', 'Note on a {{ sentiment }} review: {{ review }}']], 2);
  const sheet = new FakeSheet('Reviews', [['template', 'Judge {{ review }}'], [], ['Review'],
    ['great'], ['FAIL this'], [''], ['=1+1 meh']]);
  const app = loadScript({ sheets: [sheet, conf], settings: backend });
  app.gs.pbRunBatch();
  assert.deepEqual(sheet.grid[2], ['Review', 'sentiment', 'score', 'urgent', 'note']);
  for (const r of [3, 6]) {
    const [, sentiment, score, urgent, note] = sheet.grid[r];
    assert.equal(sentiment, 'positive');
    assert.equal(typeof score, 'number', 'numbers land as numbers');
    assert.equal(urgent, true, 'booleans land as booleans');
    assert.equal(note, `Answer: Note on a positive review: ${sheet.grid[r][0]}`);
  }
  assert.match(sheet.grid[4][1], /^#ERROR: /);
  assert.deepEqual(sheet.grid[4].slice(2, 4), ['', '']);
  assert.equal(sheet.grid[4][4], "#ERROR: uses the answer in 'Reviews'!B5, which failed; a rerun retries both");
  assert.deepEqual(sheet.grid[5].filter((v) => v !== ''), [], 'a blank row stays blank');
});

test('=PROMPTBATCH with fields spills one typed row per data row, cached as such', async () => {
  const app = loadScript({ settings: backend });
  const table = [['Product'], ['kettle'], [''], ['lamp']];
  const first = plain(app.gs.PROMPTBATCH('Judge {{ product }}', table, undefined, FIELDS));
  assert.equal(first.length, 3);
  assert.deepEqual(first[1], ['', '', '']);
  assert.equal(first[0][0], 'positive');
  assert.equal(typeof first[0][1], 'number');
  assert.equal(first[2][2], true);
  const llm = await backend.llmStats();
  const again = plain(app.gs.PROMPTBATCH('Judge {{ product }}', table, undefined, [['sentiment (positive|negative)', 'score (number)', 'urgent (boolean)']]));
  assert.deepEqual(again, first, 'a range of header cells means the same fields');
  assert.deepEqual(await backend.llmStats(), llm, 'no model call the second time');
  const failed = plain(app.gs.PROMPTBATCH('Judge {{ product }}', [['FAIL it']], [['Product']], FIELDS));
  assert.equal(failed.length, 1);
  assert.match(failed[0][0], /^#ERROR: /);
  assert.deepEqual(failed[0].slice(1), ['', '']);
  assert.match(app.gs.PROMPTBATCH('Judge {{ product }}', table, undefined, 'score (weight)'),
    /^#ERROR: .*none of string, number/);
});

test('Preview counts every prompt column, the later ones once the answers they use are back', () => {
  const sheet = feedbackSheet(4);
  const app = loadScript({ sheets: [sheet], settings: backend });
  app.gs.pbPreview();
  const lines = app.log.alerts.at(-1).message.split('\n');
  assert.equal(lines[1], "\"summary\": template 'Feedback'!C1; answers go to \"summary\" at 'Feedback'!C2.");
  assert.equal(lines[2], "\"reply\": template 'Feedback'!D1, uses the answers of \"summary\"; answers go to \"reply\" at 'Feedback'!D2.");
  assert.match(lines[3], /^Rows: 4 in the table, 0 already answered, \d answered from cache, \d to send \(\d distinct prompts now, 4 once the answers they use are back\)\.$/);
  assert.match(app.log.alerts.at(-1).message, /Prompt for row 3:\nSummarize fb 0/);
});
