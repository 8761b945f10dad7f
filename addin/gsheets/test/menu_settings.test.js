'use strict';
// The menu, and Settings: the backend URL for the spreadsheet, the token for the user.
const assert = require('node:assert/strict');
const { after, before, test } = require('node:test');
const { loadScript, startBackend } = require('../testing/harness');

let backend;
before(async () => { backend = await startBackend(); });
after(() => backend.stop());

test('onOpen builds the PromptBatch menu with its commands', () => {
  const app = loadScript();
  app.gs.onOpen();
  assert.equal(app.log.menus.length, 1);
  const menu = app.log.menus[0];
  assert.equal(menu.title, 'PromptBatch');
  const items = menu.items.filter((i) => !i.separator);
  assert.deepEqual(items.map((i) => i.caption), ['Open sidebar', 'Run batch', 'Run selected rows', 'Preview',
    'Submit as batch (half price)', 'Collect batch results', 'Freeze answers in the selection', 'Settings']);
  for (const item of items) assert.equal(typeof app.gs[item.fn], 'function', item.fn);
});

test('Settings keeps the URL in document properties, the token in user properties, and checks the connection', () => {
  const app = loadScript();
  app.ui.replies.push({ text: backend.url + '/' }, { text: backend.token });
  app.gs.pbSettings();
  assert.equal(app.docProps.getProperty('PB_BACKEND_URL'), backend.url);
  assert.equal(app.userProps.getProperty('PB_TOKEN'), backend.token);
  assert.equal(app.docProps.getProperty('PB_TOKEN'), null, 'the token is never a document property');
  const alert = app.log.alerts.at(-1).message;
  assert.match(alert, /Connected\. The backend answers with openai-compatible:fake/);
  assert.match(alert, /not HTTPS/);

  app.ui.replies.push({ text: '' }, { text: '' });
  app.gs.pbSettings();
  assert.equal(app.docProps.getProperty('PB_BACKEND_URL'), backend.url, 'empty keeps the URL');
  assert.equal(app.userProps.getProperty('PB_TOKEN'), backend.token, 'empty keeps the token');
  assert.match(app.log.prompts.at(-1).message, /A token is saved/);
  assert.ok(!app.log.prompts.some((p) => p.message.includes(backend.token)), 'token never shown');

  app.ui.replies.push({ text: 'https://elsewhere.example', button: 'CANCEL' });
  app.gs.pbSettings();
  assert.equal(app.docProps.getProperty('PB_BACKEND_URL'), backend.url, 'cancel changes nothing');
});

test('Settings says so when the token is wrong, and refuses a non-http address', () => {
  const app = loadScript();
  app.ui.replies.push({ text: backend.url }, { text: 'not-the-token' });
  app.gs.pbSettings();
  assert.match(app.log.alerts.at(-1).message, /refused the token/);

  app.ui.replies.push({ text: 'ftp://example.com' }, { text: '' });
  app.gs.pbSettings();
  assert.match(app.log.alerts.at(-1).message, /not an http\(s\) address/);
  assert.equal(app.docProps.getProperty('PB_BACKEND_URL'), backend.url);
});
