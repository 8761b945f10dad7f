'use strict';
// Where the harness behaves as Google documents and the script must too: the sheet does not
// grow by itself, text must land as text, CacheService drops items, the model changes behind
// a URL, quotas run out, triggers run late, and formulas can be frozen.
const assert = require('node:assert/strict');
const { after, before, test } = require('node:test');
const { FakeSheet, drainTriggers, loadScript, startBackend } = require('../testing/harness');

let backend;
before(async () => { backend = await startBackend(); });
after(() => backend.stop());

const plain = (value) => JSON.parse(JSON.stringify(value));

test('a range beyond the sheet throws, as in Sheets; the script inserts the answers columns it needs', () => {
  const grid = [['template', 'Name {{ name }}'], ['Name']];
  for (let i = 0; i < 5; i++) grid.push([`n${i}`]);
  const sheet = new FakeSheet('Narrow', grid);
  const conf = new FakeSheet('promptbatch.conf', [['key', 'value'], ['variations', '3']], 2);
  assert.throws(() => sheet.getRange(1, 3), /^Error: The coordinates of the range are outside the dimensions of the sheet\.$/);
  const app = loadScript({ sheets: [sheet, conf], settings: backend });
  app.gs.pbRunBatch();
  assert.equal(sheet.getMaxColumns(), 4, 'three columns inserted');
  assert.deepEqual(sheet.grid[1], ['Name', 'response 1', 'response 2', 'response 3']);
  for (let r = 2; r < 7; r++) {
    assert.deepEqual(sheet.grid[r].slice(1), Array(3).fill(`Answer: Name n${r - 2}`), `row ${r + 1}`);
  }
});

test('text lands as text (plain-text format, a formula-looking answer prefixed), numbers and booleans as values', () => {
  const sheet = new FakeSheet('Text', [['a'], [''], [''], [''], [''], ['']]);
  const app = loadScript({ sheets: [sheet] });
  app.gs.pbWriteCells_(sheet, [[0, 0, '=1+1'], [1, 0, '12'], [2, 0, 'TRUE'], [3, 0, 5], [4, 0, false], [5, 0, "'quoted"]]);
  assert.deepEqual(sheet.column(0), ['=1+1', '12', 'TRUE', 5, false, "'quoted"]);
  assert.equal(sheet.formulas.size, 0, 'no formula');
  assert.deepEqual(plain(sheet.getRange(1, 1, 6, 1).getNumberFormats()).map((r) => r[0]),
    ['@', '@', '@', 'General', 'General', '@']);
});

test('=PROMPTBATCH answers although the cache dropped them and the backend was down a moment', async () => {
  const app = loadScript({ settings: backend });
  const table = [['Product'], ['kettle'], ['lamp']];
  const first = plain(app.gs.PROMPTBATCH('Sell {{ product }}.', table));
  app.cache.dropAll(); // "expiry is only a suggestion"
  let down = 0;
  app.http.intercept = (request) => (request.url.endsWith('/v1/complete') && !down++ ? { error: 'connection reset' } : null);
  assert.deepEqual(plain(app.gs.PROMPTBATCH('Sell {{ product }}.', table)), first);
  assert.equal(down, 2, 'asked again after the failure');
  app.cache.dropAll();
  let gateway = 0;
  app.http.intercept = (request) => (request.url.endsWith('/v1/complete') && !gateway++
    ? { status: 502, body: '<html>Bad gateway</html>' } : null);
  assert.deepEqual(plain(app.gs.PROMPTBATCH('Sell {{ product }}.', table)), first, 'a tunnel\'s 502 too');
  app.http.intercept = null;

  // a table over 500 rows does not go through CacheService (its ~1,000 items would evict themselves)
  const big = [['Product']].concat(Array.from({ length: 600 }, (_, i) => [`thing ${i}`]));
  app.cache.dropAll();
  const answers = plain(app.gs.PROMPTBATCH('Sell {{ product }}.', big));
  assert.equal(answers.length, 600);
  assert.equal(answers[599][0], 'Answer: Sell thing 599.');
  assert.equal(app.cache.data.size, 0);
});

test('the formula\'s cache key holds the backend\'s model: another model behind the same URL answers anew', () => {
  const app = loadScript({ settings: backend });
  const table = [['Product'], ['kettle']];
  app.gs.PROMPTBATCH('Sell {{ product }}.', table);
  app.gs.PROMPTBATCH('Sell {{ product }}.', table);
  assert.equal(app.completeCalls().length, 1, 'the second came from the cache');
  const key = `pbmodel:${backend.url}`;
  assert.equal(app.cache.get(key), `openai-compatible:fake at ${backend.baseUrl}`);
  app.cache.put(key, 'openai:gpt-4o at https://api.openai.com/v1'); // what a restarted backend reported
  app.gs.PROMPTBATCH('Sell {{ product }}.', table);
  assert.equal(app.completeCalls().length, 2, 'no answer of another model is reused');
});

test('a used-up UrlFetch quota stops the run with what happened and when it can go on', () => {
  const grid = [['template', 'Hi {{ name }}'], ['Name', 'response']];
  for (let i = 0; i < 300; i++) grid.push([`n${i}`, '']);
  const sheet = new FakeSheet('Quota', grid);
  const app = loadScript({ sheets: [sheet], settings: backend });
  let calls = 0;
  app.http.intercept = (request) => (request.url.endsWith('/v1/run') && ++calls > 4
    ? { quota: 'Service invoked too many times for one day: urlfetch.' } : null);
  app.gs.pbRunBatch();
  const message = app.log.alerts.at(-1).message;
  assert.match(message, /^The run stopped: Google stopped this run: it used up the calls your account may make today \(20,000 UrlFetch calls a day for a consumer account\)/);
  assert.match(message, /Google said: Service invoked too many times for one day: urlfetch\.\).*resets the quota 24 hours after its first use, so run again tomorrow/);
  assert.equal(app.triggers.length, 0, 'no trigger keeps failing');
  const progress = plain(app.gs.pbPanelProgress());
  assert.equal(progress.state, 'failed');
  assert.match(progress.error, /^Google stopped this run/);
  assert.ok(sheet.column(1).slice(2, 202).every((v) => v.startsWith('Answer: ')), 'what came back stays');
});

test('triggers that run late still finish the run; the message promises no minute', () => {
  const grid = [['template', 'Hi {{ name }}'], ['Name', 'response']];
  for (let i = 0; i < 400; i++) grid.push([`n${i}`, '']);
  const sheet = new FakeSheet('Late', grid);
  const app = loadScript({ sheets: [sheet], settings: backend, fetchAllMs: 250 * 1000 });
  app.gs.pbRunBatch();
  assert.match(app.log.toasts.at(-1), /continues through a trigger, which Apps Script starts a minute or more from now \(it may run later/);
  app.triggers.forEach((t) => { t.at += 47 * 60 * 1000; }); // Apps Script ran it 47 minutes late
  drainTriggers(app);
  assert.ok(sheet.column(1).slice(2).every((v) => v.startsWith('Answer: ')));
  const progress = plain(app.gs.pbPanelProgress());
  assert.deepEqual([progress.state, progress.done, progress.total], ['done', 400, 400]);
});

test('Freeze answers turns =PROMPTBATCH formulas in the selection, and their spill, into values', () => {
  const sheet = new FakeSheet('Frozen', [['Product', 'Answer', 'Note'], ['kettle', 'Answer: kettle', '=A2'],
    ['lamp', 'Answer: lamp', ''], ['', '', '']]);
  sheet.formulas.set('1,1', '=PROMPTBATCH("Sell {{ product }}", A1:A3)');
  sheet.formulas.set('1,2', '=A2');
  const app = loadScript({ sheets: [sheet] });
  app.spreadsheet.selection = [[2, 3]];
  app.spreadsheet.getActiveRangeList = () => ({ getRanges: () => [sheet.getRange(2, 2, 2, 1)] });
  app.gs.pbFreeze();
  assert.equal(app.log.alerts.at(-1).message, 'Froze 1 =PROMPTBATCH formula: their answers are values now.');
  assert.deepEqual(sheet.column(1), ['Answer', 'Answer: kettle', 'Answer: lamp', '']);
  assert.deepEqual(Array.from(sheet.formulas.entries()), [['1,2', '=A2']], 'other formulas stay');
  app.gs.pbFreeze();
  assert.match(app.log.alerts.at(-1).message, /^No =PROMPTBATCH formula in the selection/);
});
