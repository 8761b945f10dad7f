'use strict';
// Run batch, Run selected rows and Preview against a real `promptbatch serve`.
const assert = require('node:assert/strict');
const { after, before, test } = require('node:test');
const { FakeSheet, SIX_MINUTES, drainTriggers, loadScript, startBackend } = require('../testing/harness');

let backend;
before(async () => { backend = await startBackend(); });
after(() => backend.stop());

/** A sheet as a user lays it out: template label, blank row, header row, data rows. */
function productSheet(rows, name = 'Products') {
  const grid = [['template', 'Write a tagline for {{ product }} aimed at {{ audience }}.'], [],
    ['Product', 'Audience', 'response']];
  for (let i = 0; i < rows; i++) grid.push([`${name} item ${i}`, i % 2 ? 'cooks' : 'runners', '']);
  return new FakeSheet(name, grid);
}

test('Run batch answers 2,000 rows over several trigger continuations', async (t) => {
  const sheet = productSheet(2000);
  const answeredBefore = new Map();
  for (let i = 0; i < 2000; i += 20) {
    sheet.grid[3 + i][2] = `kept answer ${i}`;
    answeredBefore.set(3 + i, `kept answer ${i}`);
  }
  const failing = [3 + 7, 3 + 1507];
  failing.forEach((r) => { sheet.grid[r][0] = 'FAIL widget'; });
  sheet.grid[3 + 901] = ['', '', '']; // a blank row inside the table stays blank
  const app = loadScript({ sheets: [sheet], settings: backend, fetchAllMs: 90 * 1000 });
  const llmBefore = await backend.llmStats();

  const start = app.clock.now;
  app.gs.pbRunBatch();
  assert.ok(app.clock.now - start < SIX_MINUTES);
  assert.equal(app.triggers.length, 1, 'the first pass schedules a continuation');
  assert.ok(app.userProps.getProperty('PB_JOB'), 'the job is saved for the next pass');
  const passes = 1 + drainTriggers(app);

  assert.ok(passes >= 3, `expected several passes, got ${passes}`);
  // what the run costs of Google's daily quotas (consumer accounts: 20,000 UrlFetch calls, 90
  // minutes of trigger runtime): each request of a fetchAll counts as one call
  const urlFetches = app.log.fetches.length;
  assert.ok(urlFetches < 100, `${urlFetches} UrlFetch calls`);
  t.diagnostic(`2,000 rows: ${urlFetches} UrlFetch calls, ${passes} passes (${passes - 1} trigger continuations)`);
  assert.equal(app.userProps.getProperty('PB_JOB'), null, 'the finished job is forgotten');
  const out = sheet.column(2);
  for (let r = 3; r < 2003; r++) {
    if (answeredBefore.has(r)) assert.equal(out[r], answeredBefore.get(r), `row ${r + 1} kept`);
    else if (failing.includes(r)) assert.match(out[r], /^#ERROR: /, `row ${r + 1} failed`);
    else if (r === 3 + 901) assert.equal(out[r], '');
    else assert.equal(out[r], `Answer: Write a tagline for Products item ${r - 3} aimed at ${(r - 3) % 2 ? 'cooks' : 'runners'}.`);
  }
  const runs = app.calls('/v1/run');
  const firstTime = runs.filter((c) => !c.body.resent).flatMap((c) => c.body.row_numbers);
  assert.deepEqual(firstTime, Array.from({ length: 2000 }, (_, i) => 3 + i), 'each row is sent once, in order');
  assert.ok(runs.every((c) => c.body.rows.length <= 50), 'windows of 50 rows while most rows need the model');
  assert.ok(runs.every((c) => c.body.grid.length === 3), 'with the rows down to the header row');
  const llm = await backend.llmStats();
  assert.equal(llm.ok - llmBefore.ok, 2000 - 100 - 1 - failing.length, 'the backend asks only the rows without answers');
  assert.match(app.log.toasts.at(-1), /^Done: 1897 new answers, 0 from the cache, 2 errors/);

  // A second run asks the model only for the failed rows: answered rows are kept, and its
  // windows grow as the backend finds nothing to ask, so it ends in one pass.
  const again = await backend.llmStats();
  app.log.fetches.length = 0;
  app.gs.pbRunBatch();
  assert.equal(app.triggers.length, 0);
  assert.ok(app.calls('/v1/run').length <= 12, `${app.calls('/v1/run').length} requests`);
  const after = await backend.llmStats();
  assert.deepEqual([after.requests - again.requests, after.ok - again.ok], [2, 0]);
  assert.match(app.log.toasts.at(-1), /^Done: 0 new answers, 0 from the cache, 2 errors/);
});

test('a model error lands as an #ERROR: cell; a request that failed is sent again', async () => {
  const sheet = productSheet(120, 'Errors');
  sheet.grid[3 + 4][0] = 'FAIL me';
  const app = loadScript({ sheets: [sheet], settings: backend });
  let failed = 0;
  app.http.intercept = (request, i) => (request.url.endsWith('/v1/run') && i === 1 && !failed++
    ? { status: 502, body: '<html>Bad gateway</html>' } : null);
  app.gs.pbRunBatch();
  const out = sheet.column(2);
  assert.equal(failed, 1);
  assert.match(out[3 + 4], /^#ERROR: .*500/, 'the model failed');
  for (let r = 3; r < 3 + 120; r++) if (r !== 3 + 4) assert.equal(out[r], `Answer: Write a tagline for Errors item ${r - 3} aimed at ${(r - 3) % 2 ? 'cooks' : 'runners'}.`);
  // the backend answered the failed request before the gateway failed: its answers are cached
  assert.match(app.log.toasts.at(-1), /^Done: 69 new answers, 50 from the cache, 1 errors/);
});

test('a backend that keeps failing stops the run, and what came back stays', () => {
  const sheet = productSheet(60, 'Down');
  const app = loadScript({ sheets: [sheet], settings: backend });
  app.http.intercept = (request) => (request.url.endsWith('/v1/run') && request.body.includes('"row_numbers":[53')
    ? { status: 502, body: '<html>Bad gateway</html>' } : null);
  app.gs.pbRunBatch();
  assert.match(app.log.alerts.at(-1).message,
    /^The run stopped: the backend answered no row in 3 rounds \(The backend answered 502: HTTP 502\)\. .*run again to continue\.$/);
  assert.ok(sheet.column(2).slice(3, 53).every((v) => v.startsWith('Answer: ')), 'the first window is written');
  assert.ok(sheet.column(2).slice(53).every((v) => v === ''));
  assert.equal(app.triggers.length, 0);
});

test('a template that fails on a row stops the run at its window, naming the row', () => {
  const sheet = productSheet(20, 'Zero');
  sheet.grid[0][1] = '{{ product }} {% if product.endswith("13") %}{{ 1 // 0 }}{% endif %}';
  const app = loadScript({ sheets: [sheet], settings: backend });
  app.gs.pbRunBatch();
  assert.equal(app.log.alerts.at(-1).message, "The run stopped: The backend answered 400: The template in " +
    "'Zero'!B1 failed on row 17 ('Zero'!C17): ZeroDivisionError: integer division or modulo by zero");
  assert.ok(sheet.column(2).slice(3).every((v) => v === ''), 'nothing is sent');
});

test('a template mistake stops the run with a message and writes nothing', () => {
  const sheet = productSheet(5, 'Broken');
  sheet.grid[0][1] = 'Describe {{ colour }}';
  const app = loadScript({ sheets: [sheet], settings: backend });
  app.gs.pbRunBatch();
  assert.match(app.log.alerts.at(-1).message, /The run stopped: .*\{\{ colour \}\}.*Columns present/);
  assert.equal(app.completeCalls().length, 0);
  assert.deepEqual(sheet.column(2).slice(3), ['', '', '', '', '']);
  assert.equal(app.triggers.length, 0);
  assert.equal(app.lock.held, false);
});

test('Run selected rows sends only the selected rows; a held lock sends nothing', () => {
  const sheet = productSheet(30, 'Selected');
  const app = loadScript({ sheets: [sheet], settings: backend });
  app.spreadsheet.selection = [[5, 7], [20, 20]]; // sheet rows, 1-based
  app.gs.pbRunSelected();
  const out = sheet.column(2);
  const filled = out.map((v, r) => (v && r > 2 ? r + 1 : null)).filter(Boolean);
  assert.deepEqual(filled, [5, 6, 7, 20]);

  app.lock.held = true;
  app.log.fetches.length = 0;
  app.gs.pbRunBatch();
  assert.match(app.log.alerts.at(-1).message, /Another PromptBatch run/);
  assert.equal(app.log.fetches.length, 0);
});

test('a named range prompt_template wins, and answers land as text', () => {
  const sheet = new FakeSheet('Named', [['Name'], ['=1+1'], ['12']]);
  const app = loadScript({ sheets: [sheet], settings: backend });
  app.named.prompt_template = { getValue: () => '{{ name }}' };
  app.gs.pbRunBatch();
  assert.deepEqual(sheet.column(1), ['response', 'Answer: =1+1', 'Answer: 12']);
});

test('Preview says what promptbatch preview says, and calls no model', async () => {
  const sheet = productSheet(40, 'Preview');
  sheet.grid[3][2] = 'already there';
  sheet.grid[5][1] = '#N/A';
  const app = loadScript({ sheets: [sheet], settings: backend });
  const before = await backend.llmStats();
  app.gs.pbPreview();
  const { title, message } = app.log.alerts.at(-1);
  assert.equal(title, 'PromptBatch preview');
  const lines = message.split('\n');
  assert.equal(lines[0], `Sheet Preview, model openai-compatible:fake at ${backend.baseUrl}.`);
  assert.equal(lines[1], "template 'Preview'!B1; answers go to \"response\" at 'Preview'!C3.");
  assert.equal(lines[2], 'Rows: 40 in the table, 1 already answered, 0 answered from cache, 38 to send (38 distinct prompts).');
  assert.equal(lines[3], "Row 6 will not be sent: 'Preview'!B6 holds #N/A; fix that cell and run again.");
  assert.match(lines[4], /^Estimate: ~\d+ prompt tokens \+ ~\d+ answer tokens \(up to \d+\), cost unknown, about \d+ s\. No model was called\.$/);
  assert.match(lines[5], /^Token counts estimated from (defaults for|your last [\d,]+ answers from) openai-compatible/);
  assert.match(message, /Prompt for row 5:\nWrite a tagline for Preview item 1 aimed at cooks\./);
  assert.deepEqual(await backend.llmStats(), before);
  assert.ok(sheet.column(2).slice(4).every((v) => v === ''), 'preview writes nothing');
});

test('a continuation that finds the lock taken tries again later and loses nothing', () => {
  const sheet = productSheet(300, 'Busy');
  const app = loadScript({ sheets: [sheet], settings: backend, fetchAllMs: 250 * 1000 });
  app.gs.pbRunBatch();
  const job = JSON.parse(app.userProps.getProperty('PB_JOB'));
  assert.ok(job.cursor > 3 && job.cursor < 303, 'the first pass stopped part way');
  app.lock.held = true; // someone else's run holds the document
  app.clock.now = app.triggers[0].at;
  app.gs.pbContinue();
  assert.equal(app.triggers.length, 1, 'rescheduled');
  assert.equal(app.userProps.getProperty('PB_JOB'), JSON.stringify(job), 'job untouched');
  app.lock.held = false;
  drainTriggers(app);
  assert.ok(sheet.column(2).slice(3).every((v) => v.startsWith('Answer: ')));
});

test('skip_hidden in the conf sheet leaves hidden rows out; a merged cell gives every row its value', async () => {
  const sheet = productSheet(6, 'Shown');
  sheet.grid[3 + 1][1] = '';
  sheet.merged.push([4, 2, 5, 2]); // B4:B5, 1-based: "runners" in B4 covers row 5 too
  sheet.hiddenByUser.add(7);
  sheet.hiddenByFilter.add(8);
  const conf = new FakeSheet('promptbatch.conf', [['key', 'value'], ['skip_hidden', 'TRUE']], 2);
  const app = loadScript({ sheets: [sheet, conf], settings: backend });
  app.gs.pbRunBatch();
  const out = sheet.column(2);
  assert.equal(out[4], 'Answer: Write a tagline for Shown item 1 aimed at runners.', 'the merged value');
  assert.deepEqual([out[6], out[7]], ['', ''], 'hidden rows stay unanswered');
  assert.match(out[8], /^Answer: /);
  const sent = app.calls('/v1/run')[0].body;
  assert.deepEqual(sent.hidden, [6, 7]);
  assert.deepEqual(sent.merged, [[3, 1, 4, 1, 'runners']]);
});
