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

test('Run batch answers 2,000 rows over several trigger continuations', async () => {
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
  assert.equal(app.userProps.getProperty('PB_JOB'), null, 'the finished job is forgotten');
  const out = sheet.column(2);
  for (let r = 3; r < 2003; r++) {
    if (answeredBefore.has(r)) assert.equal(out[r], answeredBefore.get(r), `row ${r + 1} kept`);
    else if (failing.includes(r)) assert.match(out[r], /^#ERROR: /, `row ${r + 1} failed`);
    else if (r === 3 + 901) assert.equal(out[r], '');
    else assert.equal(out[r], `Answer: Write a tagline for Products item ${r - 3} aimed at ${(r - 3) % 2 ? 'cooks' : 'runners'}.`);
  }
  const sent = app.completeCalls().flatMap((c) => c.body.rows.map((row) => row[0]));
  assert.equal(sent.length, 2000 - 100 - 1, 'each row needing an answer is sent once');
  assert.ok(app.completeCalls().every((c) => c.body.rows.length <= 50), 'chunks of 50 rows');
  const llm = await backend.llmStats();
  assert.equal(llm.ok - llmBefore.ok, 2000 - 100 - 1 - failing.length);
  assert.match(app.log.toasts.at(-1), /^Done: 1897 new answers, 0 from the cache, 2 errors/);

  // A second run sends only the failed rows: answered rows are skipped.
  app.log.fetches.length = 0;
  app.gs.pbRunBatch();
  assert.equal(app.triggers.length, 0);
  const again = app.completeCalls().flatMap((c) => c.body.rows);
  assert.deepEqual(again.map((row) => row[0]), ['FAIL widget', 'FAIL widget']);
});

test('errors land as #ERROR: cells: a failed request, a template error, a model error', async () => {
  const sheet = productSheet(120, 'Errors');
  sheet.grid[0][1] = '{{ product }} {% if audience == "cooks" and product.endswith("3") %}{{ 1 // 0 }}{% endif %}';
  sheet.grid[3 + 4][0] = 'FAIL me';
  const app = loadScript({ sheets: [sheet], settings: backend });
  app.http.intercept = (request, i) => (request.url.endsWith('/v1/complete') && i === 1
    ? { status: 502, body: '<html>Bad gateway</html>' } : null);
  app.gs.pbRunBatch();
  const out = sheet.column(2);
  assert.match(out[3 + 4], /^#ERROR: .*500/, 'the model failed');
  assert.match(out[3 + 3], /^#ERROR: The template .* failed on this row: ZeroDivisionError/);
  for (let r = 3 + 50; r < 3 + 100; r++) assert.equal(out[r], '#ERROR: The backend answered 502: HTTP 502');
  assert.equal(out[3 + 0], 'Answer: Errors item 0', 'answers are trimmed');
  assert.equal(out[3 + 119], 'Answer: Errors item 119');
  const errors = out.filter((v) => v.startsWith('#ERROR: ')).length;
  assert.equal(errors, 50 + 1 + 7);
  assert.match(app.log.toasts.at(-1), new RegExp(`, ${errors} errors`));
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

test('Preview shows counts, first prompts and an estimate, and calls no model', async () => {
  const sheet = productSheet(40, 'Preview');
  sheet.grid[3][2] = 'already there';
  const app = loadScript({ sheets: [sheet], settings: backend });
  const before = await backend.llmStats();
  app.gs.pbPreview();
  const { title, message } = app.log.alerts.at(-1);
  assert.equal(title, 'PromptBatch preview');
  assert.match(message, /Model: openai-compatible:fake/);
  assert.match(message, /Rows to answer: 39 \(1 already answered are kept\)/);
  assert.match(message, /to send: 39/);
  assert.match(message, /Estimate: \d+ tokens in, \d+ out, cost unknown, about \d+ s/);
  assert.match(message, /Prompt 1:\nWrite a tagline for Preview item 1 aimed at cooks\./);
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
