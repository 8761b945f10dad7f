'use strict';
// The sidebar's server-side functions, as host-gas.js calls them: a run driven pass by pass,
// its progress, Cancel, Run selected rows, skip_hidden, settings (batch.test.js: Submit, Collect).
const assert = require('node:assert/strict');
const { after, before, test } = require('node:test');
const { FakeSheet, loadScript, startBackend } = require('../testing/harness');

let backend;
before(async () => { backend = await startBackend(); });
after(() => backend.stop());

const plain = (value) => JSON.parse(JSON.stringify(value));

function sheet(rows) {
  const grid = [['template', 'Hi {{ name }}'], ['Name', 'response']];
  for (let i = 0; i < rows; i++) grid.push([`n${i}`, '']);
  return new FakeSheet('Panel', grid);
}

test('the sidebar drives a run pass by pass; progress counts prompts, cost and time left; Cancel stops it', () => {
  const products = sheet(600);
  const app = loadScript({ sheets: [products], settings: backend, fetchAllMs: 250 * 1000 });
  assert.equal(app.gs.pbPanelRun(false).state, 'running');
  assert.equal(app.triggers.length, 1, 'a trigger continues the run if the sidebar closes');
  assert.equal(app.calls('/v1/run').length, 0, 'the start sends nothing: pbPanelWork does');
  let progress = plain(app.gs.pbPanelWork());
  assert.deepEqual([progress.state, progress.done, progress.total, progress.passes], ['running', 200, 600, 1]);
  assert.ok(progress.eta > 0 && progress.prompt_tokens > 0 && progress.completion_tokens > 0);
  assert.equal(progress.cost_usd, null, 'a model without a price has no cost');
  assert.equal(progress.worked, true, 'this call made the pass');
  delete progress.worked;
  assert.deepEqual(plain(app.gs.pbPanelProgress()), progress, 'progress reads the saved job');
  app.lock.held = true;
  assert.equal(app.gs.pbPanelWork().worked, false, 'another execution holds the run: the sidebar waits');
  app.lock.held = false;
  assert.throws(() => app.gs.pbPanelRun(false), /Your run is still going/);

  progress = plain(app.gs.pbPanelCancel());
  assert.deepEqual([progress.state, progress.done, progress.unsent], ['cancelled', 200, 400]);
  assert.equal(app.triggers.length, 0);
  assert.equal(plain(app.gs.pbPanelWork()).state, 'cancelled', 'nothing more is sent');
  assert.equal(app.calls('/v1/run').length, 4);

  // a cancel while another execution holds the lock is a request the pass sees before its next round
  app.gs.pbPanelRun(false);
  app.lock.held = true;
  assert.equal(plain(app.gs.pbPanelCancel()).state, 'running');
  app.lock.held = false;
  assert.equal(plain(app.gs.pbPanelWork()).state, 'cancelled');
});

test('Run selected rows and skip_hidden go through the sidebar as through the menu', () => {
  const products = sheet(30);
  products.hiddenByUser.add(6);
  const conf = new FakeSheet('promptbatch.conf', [['key', 'value'], ['skip_hidden', 'TRUE']], 2);
  const app = loadScript({ sheets: [products, conf], settings: backend });
  app.spreadsheet.selection = [[4, 8]];
  app.gs.pbPanelRun(true);
  const progress = plain(app.gs.pbPanelWork());
  assert.deepEqual([progress.state, progress.done], ['done', 4]);
  const filled = products.column(1).map((v, r) => (r > 1 && v ? r + 1 : null)).filter(Boolean);
  assert.deepEqual(filled, [4, 5, 7, 8], 'the selected rows but the hidden one');
  assert.deepEqual(plain(app.calls('/v1/run')[0].body.hidden), [5]);
  app.spreadsheet.selection = [];
  assert.throws(() => app.gs.pbPanelRun(true), /Select the rows to run first/);
});

test('the sidebar\'s settings show the backend\'s model, never the token; a refusal is an Error for the panel', () => {
  const app = loadScript({ sheets: [sheet(3)], settings: backend });
  assert.throws(() => app.gs.pbPanelSubmit(), /has no Batch API/);
  assert.equal(JSON.stringify(plain(app.gs.pbPanelSettings())).includes(backend.token), false);
  const state = plain(app.gs.pbPanelSettings());
  assert.deepEqual([state.sheet, state.has_token, state.formulas, state.model], ['Panel', true, true, 'openai-compatible:fake']);
});
