// The sidebar in a browser, against the harness's Code.gs and a real `promptbatch serve`: serves
// Sidebar.html with a stand-in for google.script.run (google_script_run.js), runs each call as an
// Apps Script execution of the user at the keyboard, and fires the run's time-based trigger
// when the sidebar has gone quiet (closed), as Apps Script would. Prints its address, then
// serves until stdin closes. Used by tests/test_sidebar.py.
'use strict';

const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const { FakeSheet, loadScript, startBackend } = require('./harness');

const ROWS = Number(process.env.SIDEBAR_ROWS || 500);
const IDLE_MS = 1500;
const ROUND_MS = 1000;

/** Two chained prompt columns: the reply uses the summary. */
function chainedSheet(rows) {
  const grid = [['Templates', '', 'Summarize {{ feedback }}', 'Reply to {{ customer }}: {{ summary }}'],
    ['Customer', 'Feedback', 'summary', 'reply']];
  for (let i = 0; i < rows; i++) grid.push([`c${i}`, `fb ${i}`, '', '']);
  return new FakeSheet('Feedback', grid);
}

/** Only what google.script.run may return: primitives, null, arrays and plain objects. */
function returnable(value) {
  if (value === undefined) return null;
  if (value === null || ['string', 'number', 'boolean'].includes(typeof value)) return value;
  if (Array.isArray(value)) return value.map(returnable);
  const kind = Object.prototype.toString.call(value);
  if (kind !== '[object Object]') throw new Error(`A server function returned ${kind}, which google.script.run cannot carry.`);
  return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, returnable(v)]));
}

async function main() {
  const backend = await startBackend();
  const sheet = chainedSheet(ROWS);
  const app = loadScript({ sheets: [sheet], settings: backend, fetchAllMs: 250 * 1000 });
  // Windows of 25 rows, one at a time: the run takes some 40 passes, as a sheet many times this
  // size would, so closing the sidebar midway always leaves passes for the trigger (with the
  // script's windows the 1,000 prompts took three passes, and one in flight as the page closed
  // could finish the run).
  Object.assign(app.gs.PB, { CHUNK_ROWS: 25, MAX_WINDOW_ROWS: 25, PARALLEL: 1 });
  const stats = { calls: {}, triggerPasses: 0 };
  // a round trip takes a second of real time too, so a person (or the test) sees the run go
  const fetchAll = app.gs.UrlFetchApp.fetchAll;
  const pause = new Int32Array(new SharedArrayBuffer(4));
  app.gs.UrlFetchApp.fetchAll = (requests) => {
    Atomics.wait(pause, 0, 0, ROUND_MS);
    return fetchAll(requests);
  };
  let lastCall = 0;

  const page = fs.readFileSync(path.join(__dirname, '..', 'Sidebar.html'), 'utf8')
    .replace('<head>', '<head>\n<script src="/google-script-run.js"></script>');
  const standIn = fs.readFileSync(path.join(__dirname, 'google_script_run.js'), 'utf8');

  function execute(name, args) {
    const fn = app.gs[name];
    // Google runs only top-level functions whose names do not end in an underscore.
    if (typeof fn !== 'function' || name.endsWith('_')) throw new Error(`Script function not found: ${name}`);
    stats.calls[name] = (stats.calls[name] || 0) + 1;
    return returnable(fn(...args));
  }

  const timer = setInterval(() => {
    if (!app.triggers.length || Date.now() - lastCall < IDLE_MS || app.lock.held) return;
    const trigger = app.triggers[0];
    app.as(trigger.user);
    app.clock.now = Math.max(app.clock.now, trigger.at);
    stats.triggerPasses++;
    app.gs[trigger.handler]();
    lastCall = Date.now(); // one pass per quiet spell: a sidebar opened again finds the run going
  }, 200);

  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (part) => { body += part; });
    req.on('end', () => {
      const send = (status, type, text) => { res.writeHead(status, { 'content-type': type }); res.end(text); };
      const json = (value) => send(200, 'application/json', JSON.stringify(value));
      if (req.method === 'GET' && req.url === '/') return send(200, 'text/html; charset=utf-8', page);
      if (req.method === 'GET' && req.url === '/google-script-run.js') return send(200, 'text/javascript', standIn);
      if (req.method === 'GET' && req.url === '/state') {
        return json({ stats, triggers: app.triggers.length, grid: sheet.grid, llm: null });
      }
      if (req.method === 'POST' && req.url === '/select') {
        app.spreadsheet.selection = JSON.parse(body);
        return json({ ok: true });
      }
      if (req.method === 'POST' && req.url === '/call') {
        lastCall = Date.now();
        const { name, args } = JSON.parse(body);
        try {
          const value = execute(name, args);
          lastCall = Date.now();
          return json({ value });
        } catch (err) {
          lastCall = Date.now();
          return json({ error: err.message });
        }
      }
      return send(404, 'text/plain', 'not found');
    });
  });
  server.listen(0, '127.0.0.1', () => {
    process.stdout.write(`sidebar on http://127.0.0.1:${server.address().port}/ backend ${backend.url}\n`);
  });
  process.stdin.resume();
  process.stdin.on('end', () => {
    clearInterval(timer);
    server.close();
    backend.stop();
    process.exit(0);
  });
}

main().catch((err) => { process.stderr.write(String(err && err.stack) + '\n'); process.exit(1); });
