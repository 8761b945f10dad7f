'use strict';
// A spreadsheet shared by its owner with two editors: who sets up what, and whose token is used.
const assert = require('node:assert/strict');
const { after, before, test } = require('node:test');
const { FakeSheet, drainTriggers, loadScript, startBackend } = require('../testing/harness');

let backend;
before(async () => { backend = await startBackend(); });
after(() => backend.stop());

const OWNER = 'owner@example.com';
const ANA = 'ana@example.com';
const BO = 'bo@example.com';
/** The owner's own token, kept in the owner's user properties: no one else may ever send it. */
const OWNER_TOKEN = 'owner-private-token';
const TEMPLATE = 'Describe {{ product }}.';

function sheet(rows) {
  const grid = [['template', TEMPLATE], ['Product', 'response']];
  for (let i = 0; i < rows; i++) grid.push([`item ${i}`, '']);
  return new FakeSheet('Team', grid);
}

test('owner, editor with a token, editor without: each run uses its own user\'s token, formulas none of theirs', async () => {
  const products = sheet(300);
  const app = loadScript({ sheets: [products], fetchAllMs: 250 * 1000 });

  // The owner sets the backend URL for the spreadsheet; their token stays theirs.
  app.as(OWNER);
  app.ui.replies.push({ text: backend.url }, { text: OWNER_TOKEN });
  app.gs.pbSettings();
  assert.equal(app.docProps.getProperty('PB_BACKEND_URL'), backend.url);
  assert.equal(app.propsOf(OWNER).getProperty('PB_TOKEN'), OWNER_TOKEN);

  // Bo has no token: a run says exactly what to do and sends nothing.
  app.as(BO);
  app.log.fetches.length = 0;
  app.gs.pbRunBatch();
  assert.match(app.log.alerts.at(-1).message, new RegExp('^The run stopped: You have no token for the backend at ' +
    backend.url.replace(/[.:/]/g, '\\$&') + ' yet: ask the person who runs `promptbatch serve` for it'));
  assert.equal(app.log.fetches.length, 0);

  // Bo's formula: a custom function sees the owner's user properties, and must not use them.
  const table = [['Product'], ['kettle'], ['lamp']];
  const refused = app.gs.PROMPTBATCH(TEMPLATE, table);
  assert.match(refused, /^#ERROR: no answer in the cache, and =PROMPTBATCH may not call the backend .*cannot use your token/);
  assert.equal(app.log.fetches.length, 0, 'the owner\'s token is never sent for another user');

  // Ana pastes her token in the sidebar (the URL is already the spreadsheet's) and runs; the
  // run's continuations are her triggers, with her token.
  app.as(ANA);
  const state = app.gs.pbPanelSave({ url: '', token: backend.token, formulas: false });
  assert.equal(state.url, backend.url);
  assert.equal(state.has_token, true);
  assert.equal(state.model, 'openai-compatible:fake');
  assert.equal(JSON.stringify(state).includes(backend.token), false, 'the token never goes back to the sidebar');
  app.gs.pbRunBatch();
  assert.equal(app.triggers.length, 1, 'Ana\'s run continues in a trigger');
  app.as(BO);
  assert.equal(app.gs.ScriptApp.getProjectTriggers().length, 0, 'Bo sees none of Ana\'s triggers');
  drainTriggers(app);
  assert.ok(products.column(1).slice(2).every((v) => v.startsWith('Answer: Describe item')));
  assert.ok(app.log.fetches.length > 3);
  assert.ok(app.log.fetches.every((f) => f.user === ANA && f.token === backend.token), 'every call of the run is Ana\'s');

  // Ana lets formulas use her token: now every editor's formula answers with it.
  app.as(ANA);
  app.gs.pbPanelSave({ url: '', token: '', formulas: true });
  app.as(BO);
  app.log.fetches.length = 0;
  assert.deepEqual(JSON.parse(JSON.stringify(app.gs.PROMPTBATCH(TEMPLATE, table))),
    [['Answer: Describe kettle.'], ['Answer: Describe lamp.']]);
  assert.deepEqual(app.log.fetches.map((f) => [f.path, f.user, f.token]), [['/v1/complete', null, backend.token]]);

  // She takes it back: cached answers still show, a new row says what to do, and nothing is sent.
  app.as(ANA);
  app.gs.pbPanelSave({ url: '', token: '', formulas: false });
  app.as(BO);
  app.log.fetches.length = 0;
  assert.deepEqual(JSON.parse(JSON.stringify(app.gs.PROMPTBATCH(TEMPLATE, table))),
    [['Answer: Describe kettle.'], ['Answer: Describe lamp.']], 'from the document cache');
  assert.match(app.gs.PROMPTBATCH(TEMPLATE, [['Product'], ['vase']]), /^#ERROR: no answer in the cache/);
  assert.equal(app.log.fetches.length, 0);

  // Bo points the spreadsheet at another server: no one's token follows the URL there.
  app.as(ANA);
  app.gs.pbPanelSave({ url: '', token: '', formulas: true });
  app.as(BO);
  app.gs.PropertiesService.getDocumentProperties().setProperty('PB_BACKEND_URL', 'https://elsewhere.example');
  app.log.fetches.length = 0;
  app.as(ANA);
  app.gs.pbRunBatch();
  assert.match(app.log.alerts.at(-1).message, /^The run stopped: The backend of this spreadsheet is now https:\/\/elsewhere\.example, and your token was saved for http:\/\/127\.0\.0\.1:\d+: if you trust the new backend, paste your token/);
  assert.equal(app.gs.pbPanelSettings().has_token, false);
  app.as(BO);
  assert.match(app.gs.PROMPTBATCH(TEMPLATE, [['Product'], ['cup']]), /^#ERROR: no answer in the cache/);
  assert.equal(app.log.fetches.length, 0, 'nothing went to the new address');

  // Ana opens Settings and clicks OK without pasting a token: hers is not handed to the new URL.
  app.as(ANA);
  assert.throws(() => app.gs.pbPanelSave({ url: '', token: '', formulas: false }),
    /Your token for https:\/\/elsewhere\.example is needed/);
  assert.equal(app.log.fetches.length, 0, 'her token did not go to the new address');
});
