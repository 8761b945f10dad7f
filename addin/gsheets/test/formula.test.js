'use strict';
// =PROMPTBATCH(template, table) and =PROMPTBATCH(template, row, headers).
const assert = require('node:assert/strict');
const { after, before, test } = require('node:test');
const { loadScript, startBackend } = require('../testing/harness');

let backend;
before(async () => { backend = await startBackend(); });
after(() => backend.stop());

/** Arrays made inside the script's vm context, as plain arrays of this realm. */
const plain = (value) => JSON.parse(JSON.stringify(value));
const TEMPLATE = 'Describe {{ product }} at {{ price }} dollars.';
const TABLE = [['Product', 'Price'], ['kettle', 25], ['', ''], ['lamp', 12.5], ['kettle', 25]];

test('a table gives one answer per data row; a second call comes from the script cache', async () => {
  const app = loadScript({ settings: backend });
  const llm0 = await backend.llmStats();
  const first = plain(app.gs.PROMPTBATCH(TEMPLATE, TABLE));
  assert.deepEqual(first, [['Answer: Describe kettle at 25 dollars.'], [''],
    ['Answer: Describe lamp at 12.5 dollars.'], ['Answer: Describe kettle at 25 dollars.']]);
  const llm1 = await backend.llmStats();
  assert.equal(llm1.ok - llm0.ok, 2, 'identical rows are asked once');
  assert.equal(app.completeCalls().length, 1);
  assert.equal(app.completeCalls()[0].body.wait_seconds, 20, 'the backend returns within 30 s');

  const second = plain(app.gs.PROMPTBATCH(TEMPLATE, TABLE));
  assert.deepEqual(second, first);
  assert.equal(app.completeCalls().length, 1, 'the script cache answered: no backend call');
  assert.deepEqual(await backend.llmStats(), llm1, 'zero LLM calls');

  app.clearCache();
  assert.deepEqual(plain(app.gs.PROMPTBATCH(TEMPLATE, TABLE)), first);
  assert.equal(app.completeCalls().length, 2, 'an empty script cache asks the backend...');
  assert.deepEqual(await backend.llmStats(), llm1, '...which answers from its own cache');
});

test('one row with its headers gives one answer, the same one', () => {
  const app = loadScript({ settings: backend });
  const answer = app.gs.PROMPTBATCH(TEMPLATE, [['lamp', 12.5]], [['Product', 'Price']]);
  assert.equal(answer, 'Answer: Describe lamp at 12.5 dollars.');
});

test('dates are sent as the sheet shows them', () => {
  const app = loadScript({ settings: backend });
  const answer = app.gs.PROMPTBATCH('Due {{ due }}', [[new Date(Date.UTC(2025, 2, 1))]], [['Due']]);
  assert.equal(answer, 'Answer: Due 2025-03-01');
});

test('errors are #ERROR: text, and are not cached', async () => {
  const app = loadScript({ settings: backend });
  const table = [['Product', 'Price'], ['FAIL toaster', 3], ['fork', 1]];
  const out = app.gs.PROMPTBATCH(TEMPLATE, table);
  assert.match(out[0][0], /^#ERROR: /);
  assert.equal(out[1][0], 'Answer: Describe fork at 1 dollars.');
  app.gs.PROMPTBATCH(TEMPLATE, table);
  assert.deepEqual(plain(app.completeCalls().at(-1).body.rows), [['FAIL toaster', 3]], 'only the failed row again');

  assert.match(app.gs.PROMPTBATCH('Describe {{ colour }}', table), /^#ERROR: .*\{\{ colour \}\}/);
  assert.match(app.gs.PROMPTBATCH('', table), /^#ERROR: the first argument/);
  assert.match(loadScript().gs.PROMPTBATCH(TEMPLATE, table), /^#ERROR: .*PromptBatch > Settings/);
  const wrong = loadScript({ settings: { url: backend.url, token: 'wrong' } });
  assert.match(wrong.gs.PROMPTBATCH(TEMPLATE, table), /^#ERROR: The backend refused the token/);
});

test('the backend reads the range by the command line rules: #N/A is not sent, blank rows stay blank', async () => {
  const app = loadScript({ settings: backend });
  const llm0 = await backend.llmStats();
  const out = plain(app.gs.PROMPTBATCH(TEMPLATE, [['Product', 'Price'], ['vase', '#N/A'], ['', ''], ['vase', 9]]));
  assert.deepEqual(out, [["#ERROR: 'PROMPTBATCH range'!B2 holds #N/A; fix that cell and run again"], [''],
    ['Answer: Describe vase at 9 dollars.']]);
  assert.equal((await backend.llmStats()).requests - llm0.requests, 1);
  app.gs.PROMPTBATCH(TEMPLATE, [['Product', 'Price'], ['vase', '#N/A'], ['', ''], ['vase', 9]]);
  assert.deepEqual(plain(app.completeCalls().at(-1).body.rows), [['vase', '#N/A']], 'only the refusal is asked again');
});
