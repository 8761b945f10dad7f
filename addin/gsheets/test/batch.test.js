'use strict';
// Submit as batch and Collect batch results, against a real `promptbatch serve` whose model
// (openai:) goes to the fake Batch APIs; and a clear refusal from a model without one.
const assert = require('node:assert/strict');
const { after, before, test } = require('node:test');
const { FakeSheet, loadScript, startBackend } = require('../testing/harness');

let batchBackend;
let realtimeBackend;
before(async () => {
  [batchBackend, realtimeBackend] = await Promise.all([startBackend({ batch: true }), startBackend()]);
});
after(() => { batchBackend.stop(); realtimeBackend.stop(); });

const FIELDS_CONF = () => new FakeSheet('promptbatch.conf', [['key', 'value'],
  ['template.tagline', 'Tagline for {{ product }}']], 2);

test('submit sends the unanswered prompts once; collect writes them on their rows', async () => {
  const sheet = new FakeSheet('Products', [['template', 'Describe {{ product }}'], [],
    ['Product', 'response'], ['kettle', ''], ['lamp', 'kept answer'], ['kettle', ''], ['', ''], ['mug', '']]);
  const app = loadScript({ sheets: [sheet, FIELDS_CONF()], settings: batchBackend });
  app.gs.pbSubmitBatch();
  const sent = app.log.alerts.at(-1).message;
  assert.match(sent, /^Sent 5 requests in batch job batch_\d+ \(estimated \$0\.\d{4} at half the realtime price\)\./);
  assert.match(sent, /Collect batch results/);
  assert.match(sent, /7 answers wait for running jobs\./);
  assert.deepEqual(sheet.grid[2], ['Product', 'response', 'tagline'], 'the new answers header');
  const fake = await batchBackend.ask('status');
  assert.deepEqual(fake.prompts.slice().sort(), ['Describe kettle', 'Describe mug', 'Tagline for kettle',
    'Tagline for lamp', 'Tagline for mug']);

  app.gs.pbCollectBatch();
  assert.match(app.log.alerts.at(-1).message, /^No answer has come back yet\.\n7 answers wait/);
  assert.match(app.log.alerts.at(-1).message, /batch_\d+: (validating|in_progress), 0\/5 done\./);
  assert.equal(sheet.grid[3][1], '');

  await batchBackend.ask('finish');
  app.gs.pbCollectBatch();
  const done = app.log.alerts.at(-1).message;
  assert.match(done, /^Written: 7 answers, 0 errors\./);
  assert.match(done, /completed, collected, 5\/5 done\./);
  assert.deepEqual(sheet.column(1).slice(3), ['ANS Describe kettle', 'kept answer', 'ANS Describe kettle', '', 'ANS Describe mug']);
  assert.deepEqual(sheet.column(2).slice(3), ['ANS Tagline for kettle', 'ANS Tagline for lamp',
    'ANS Tagline for kettle', '', 'ANS Tagline for mug']);

  app.gs.pbSubmitBatch();
  assert.match(app.log.alerts.at(-1).message, /^Nothing new to send/);
  assert.equal((await batchBackend.ask('status')).batches, 1, 'no second job');
  assert.equal(app.lock.held, false);
});

test('a backend whose model has no Batch API says so and writes nothing', () => {
  const sheet = new FakeSheet('Plain', [['template', '{{ q }}'], ['q'], ['a']]);
  const app = loadScript({ sheets: [sheet], settings: realtimeBackend });
  app.gs.pbSubmitBatch();
  assert.match(app.log.alerts.at(-1).message,
    /The backend answered 400: This server runs openai-compatible:fake, which has no Batch API\./);
  assert.deepEqual(sheet.grid, [['template', '{{ q }}'], ['q'], ['a']]);
  assert.equal(app.lock.held, false);
});

test('Submit as batch and Collect from the sidebar: the same lines, for the panel to show', async () => {
  const sheet = new FakeSheet('Side', [['Product'], ['teapot'], ['cup']]);
  const app = loadScript({ sheets: [sheet], settings: batchBackend });
  app.named.prompt_template = { getValue: () => 'Sum up {{ product }}' };
  const sent = JSON.parse(JSON.stringify(app.gs.pbPanelSubmit()));
  assert.match(sent.lines[0], /^Sent 2 requests in batch job batch_\d+/);
  await batchBackend.ask('finish');
  const collected = JSON.parse(JSON.stringify(app.gs.pbPanelCollect()));
  assert.equal(collected.lines[0], 'Written: 2 answers, 0 errors.');
  assert.equal(sheet.getMaxColumns(), 2, 'a new column, inserted');
  assert.deepEqual(sheet.column(1), ['response', 'ANS Sum up teapot', 'ANS Sum up cup']);
});
