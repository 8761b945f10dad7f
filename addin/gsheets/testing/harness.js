// Test harness for the Apps Script files: small fakes of the Apps Script services they use, a
// loader that evaluates every .gs file unmodified in one vm context, and a real `promptbatch
// serve` backend in front of the fake LLM (or the fake Batch APIs). UrlFetchApp is synchronous in Apps Script, so the fake runs each batch of
// requests in a child node process (execFileSync) that uses fetch.
'use strict';

const assert = require('node:assert/strict');
const { spawn, execFileSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');
const vm = require('node:vm');

const ADDIN = path.resolve(__dirname, '..');
const REPO = path.resolve(ADDIN, '..', '..');
const FETCH_SYNC = path.join(__dirname, 'fetch_sync.js');
const VENV_BIN = process.env.PROMPTBATCH_VENV_BIN || path.join(REPO, '.venv', 'bin');

// ------------------------------------------------------------------------- processes

/** A line-oriented child process: `next()` resolves with its next stdout line. */
function lines(child) {
  const waiting = [];
  const ready = [];
  let stderr = '';
  child.stderr.on('data', (part) => { stderr += part; });
  readline.createInterface({ input: child.stdout }).on('line', (line) => {
    if (waiting.length) waiting.shift().resolve(line);
    else ready.push(line);
  });
  child.on('exit', (code) => {
    while (waiting.length) waiting.shift().reject(new Error(`exited ${code}: ${stderr}`));
  });
  return {
    next(timeoutMs = 20000) {
      if (ready.length) return Promise.resolve(ready.shift());
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no output in time: ${stderr}`)), timeoutMs);
        waiting.push({
          resolve: (line) => { clearTimeout(timer); resolve(line); },
          reject: (err) => { clearTimeout(timer); reject(err); }
        });
      });
    }
  };
}

/**
 * A fake model server and `promptbatch serve` on 127.0.0.1, each on a free port: the fake LLM
 * (an openai-compatible model), or with `{ batch: true }` the fake Batch APIs behind an
 * openai: model. `ask(line)` sends the fake a command and resolves with its JSON reply.
 */
async function startBackend({ batch = false } = {}) {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'pb-gs-'));
  const fake = spawn(path.join(VENV_BIN, 'python'), [path.join(__dirname, batch ? 'fake_batch.py' : 'fake_llm.py')],
    { cwd: REPO, stdio: ['pipe', 'pipe', 'pipe'] });
  const fakeLines = lines(fake);
  const { base_url: baseUrl } = JSON.parse(await fakeLines.next());
  const env = {
    ...process.env, PROMPTBATCH_HOME: home, PROMPTBATCH_CONFIG: path.join(home, 'config.toml'),
    PROMPTBATCH_RETRIES: '1', OPENAI_API_KEY: 'sk-test-batch-key'
  };
  const model = batch ? 'openai:gpt-4o-mini' : 'openai-compatible:fake';
  const server = spawn(path.join(VENV_BIN, 'promptbatch'),
    ['serve', '--port', '0', '--model', model, '--base-url', baseUrl],
    { cwd: REPO, env, stdio: ['ignore', 'pipe', 'pipe'] });
  const serverLines = lines(server);
  let url = null;
  while (!url) {
    const match = /listening on (http:\/\/\S+)/.exec(await serverLines.next());
    if (match) url = match[1];
  }
  const token = fs.readFileSync(path.join(home, 'serve-token'), 'utf8').trim();
  return {
    url,
    token,
    /** The fake model server's address, which the backend names as its server. */
    baseUrl,
    async ask(command) {
      fake.stdin.write(command + '\n');
      return JSON.parse(await fakeLines.next());
    },
    /** Counters of the fake LLM: `ok` answers and all `requests`. */
    llmStats() { return this.ask('stats'); },
    stop() {
      fake.stdin.end();
      fake.kill();
      server.kill();
      fs.rmSync(home, { recursive: true, force: true });
    }
  };
}

// ------------------------------------------------------------------------- fakes

class FakeRange {
  constructor(sheet, row, col, rows, cols) {
    Object.assign(this, { sheet, row, col, rows, cols });
  }
  getRow() { return this.row; }
  getLastRow() { return this.row + this.rows - 1; }
  getColumn() { return this.col; }
  getLastColumn() { return this.col + this.cols - 1; }
  /** Merged ranges within this range or crossing it, as Apps Script's getMergedRanges. */
  getMergedRanges() {
    return this.sheet.merged.filter(([top, left, bottom, right]) => top <= this.getLastRow() &&
      bottom >= this.row && left <= this.getLastColumn() && right >= this.col)
      .map(([top, left, bottom, right]) => new FakeRange(this.sheet, top, left, bottom - top + 1, right - left + 1));
  }
  getValues() {
    const out = [];
    for (let r = 0; r < this.rows; r++) {
      const line = [];
      for (let c = 0; c < this.cols; c++) line.push(this.sheet.cell(this.row + r - 1, this.col + c - 1));
      out.push(line);
    }
    return out;
  }
  getDisplayValues() { return this.getValues().map((line) => line.map((v) => String(v))); }
  getValue() { return this.getValues()[0][0]; }
  getDisplayValue() { return this.getDisplayValues()[0][0]; }
  setValues(values) { this.write(values); return this; }
  setRichTextValues(values) { this.write(values.map((line) => line.map((v) => v.getText()))); return this; }
  write(values) {
    assert.equal(values.length, this.rows, 'row count of the range');
    values.forEach((line, r) => {
      assert.equal(line.length, this.cols, 'column count of the range');
      line.forEach((v, c) => this.sheet.set(this.row + r - 1, this.col + c - 1, v));
    });
    this.sheet.writes++;
  }
}

class FakeSheet {
  constructor(name, grid, id = 1) {
    this.name = name;
    this.grid = grid.map((line) => line.slice());
    this.id = id;
    this.writes = 0;
    /** 1-based rows hidden by a person, and by a filter. */
    this.hiddenByUser = new Set();
    this.hiddenByFilter = new Set();
    /** Merged ranges as [top, left, bottom, right], 1-based; the value sits in the top-left cell. */
    this.merged = [];
  }
  isRowHiddenByUser(row) { return this.hiddenByUser.has(row); }
  isRowHiddenByFilter(row) { return this.hiddenByFilter.has(row); }
  getName() { return this.name; }
  getSheetId() { return this.id; }
  cell(r, c) { return (this.grid[r] && this.grid[r][c] !== undefined) ? this.grid[r][c] : ''; }
  set(r, c, v) {
    while (this.grid.length <= r) this.grid.push([]);
    while (this.grid[r].length <= c) this.grid[r].push('');
    this.grid[r][c] = v;
  }
  getLastRow() {
    for (let r = this.grid.length - 1; r >= 0; r--) if (this.grid[r].some((v) => v !== '')) return r + 1;
    return 0;
  }
  getLastColumn() { return Math.max(0, ...this.grid.map((line) => line.length)); }
  getDataRange() { return new FakeRange(this, 1, 1, Math.max(1, this.getLastRow()), Math.max(1, this.getLastColumn())); }
  getRange(row, col, rows = 1, cols = 1) { return new FakeRange(this, row, col, rows, cols); }
  column(c) { return this.grid.map((line) => (line[c] === undefined ? '' : line[c])); }
}

function fakeUi(log) {
  const ButtonSet = { OK: 'OK', OK_CANCEL: 'OK_CANCEL' };
  const Button = { OK: 'OK', CANCEL: 'CANCEL' };
  return {
    ButtonSet,
    Button,
    replies: [],
    createMenu(title) {
      const menu = { title, items: [] };
      const builder = {
        addItem(caption, fn) { menu.items.push({ caption, fn }); return builder; },
        addSeparator() { menu.items.push({ separator: true }); return builder; },
        addToUi() { log.menus.push(menu); }
      };
      return builder;
    },
    alert(title, message) { log.alerts.push({ title, message }); return Button.OK; },
    prompt(title, message) {
      log.prompts.push({ title, message });
      const reply = this.replies.shift();
      assert.ok(reply, `unexpected prompt: ${title}`);
      return { getSelectedButton: () => reply.button || Button.OK, getResponseText: () => reply.text || '' };
    }
  };
}

function fakeProperties() {
  const data = new Map();
  return {
    data,
    getProperty: (k) => (data.has(k) ? data.get(k) : null),
    setProperty(k, v) { data.set(k, String(v)); return this; },
    setProperties(values) { Object.entries(values).forEach(([k, v]) => data.set(k, String(v))); return this; },
    deleteProperty(k) { data.delete(k); return this; },
    getProperties: () => Object.fromEntries(data)
  };
}

/** CacheService's document cache, with its limits on keys and values. */
function fakeCache() {
  const data = new Map();
  const check = (k, v) => {
    assert.ok(k.length <= 250, 'cache key too long');
    assert.ok(Buffer.byteLength(v) <= 100 * 1024, 'cache value too large');
    assert.equal(typeof v, 'string');
  };
  return {
    data,
    get: (k) => (data.has(k) ? data.get(k) : null),
    getAll: (keys) => Object.fromEntries(keys.filter((k) => data.has(k)).map((k) => [k, data.get(k)])),
    put(k, v) { check(k, v); data.set(k, v); },
    putAll(values) { Object.entries(values).forEach(([k, v]) => { check(k, v); data.set(k, v); }); }
  };
}

/**
 * Everything the script may touch, loaded with the script itself. `clock.now` replaces pbNow_; each
 * UrlFetchApp.fetchAll advances it by `fetchAllMs` (a simulated round trip).
 */
function loadScript({ sheets, settings, fetchAllMs = 0 } = {}) {
  const log = { menus: [], alerts: [], prompts: [], toasts: [], fetches: [] };
  const clock = { now: 1700000000000 };
  const ui = fakeUi(log);
  const sheetList = sheets || [new FakeSheet('Sheet1', [[]])];
  const named = {};
  const spreadsheet = {
    active: sheetList[0],
    selection: [],
    getActiveSheet() { return this.active; },
    getSheets: () => sheetList,
    getRangeByName: (name) => named[name] || null,
    getActiveRangeList() {
      return { getRanges: () => this.selection.map(([a, b]) => new FakeRange(this.active, a, 1, b - a + 1, 1)) };
    },
    getSpreadsheetTimeZone: () => 'Etc/UTC',
    toast(message) { log.toasts.push(message); }
  };
  const userProps = fakeProperties();
  if (settings) {
    userProps.setProperties({ PB_BACKEND_URL: settings.url, PB_TOKEN: settings.token });
  }
  const lock = { held: false };
  const triggers = [];
  let triggerIds = 0;
  let cache = fakeCache();
  const http = { intercept: null };

  function fetchAll(requests) {
    const plain = requests.map((r) => ({
      url: r.url,
      method: (r.method || 'get').toUpperCase(),
      headers: { ...(r.headers || {}), ...(r.contentType ? { 'Content-Type': r.contentType } : {}) },
      body: r.payload
    }));
    plain.forEach((r) => log.fetches.push({ path: new URL(r.url).pathname, body: r.body ? JSON.parse(r.body) : null }));
    const out = execFileSync(process.execPath, [FETCH_SYNC],
      { input: JSON.stringify(plain), maxBuffer: 1 << 28 });
    return JSON.parse(out).map((reply, i) => {
      const forced = http.intercept && http.intercept(plain[i], i);
      if (forced) reply = forced;
      if (reply.error) throw new Error(`Address unavailable: ${plain[i].url} (${reply.error})`);
      return {
        getResponseCode: () => reply.status,
        getContentText: () => reply.body,
        getHeaders: () => reply.headers || {}
      };
    });
  }

  const context = {
    console,
    SpreadsheetApp: {
      getActiveSpreadsheet: () => spreadsheet,
      getActive: () => spreadsheet,
      getUi: () => ui,
      newRichTextValue() {
        let text = '';
        const builder = { setText(t) { text = t; return builder; }, build: () => ({ getText: () => text }) };
        return builder;
      }
    },
    UrlFetchApp: {
      fetch(url, params) { return fetchAll([{ ...params, url }])[0]; },
      fetchAll(requests) {
        const replies = fetchAll(requests);
        clock.now += fetchAllMs;
        return replies;
      }
    },
    PropertiesService: { getUserProperties: () => userProps, getDocumentProperties: () => fakeProperties() },
    LockService: {
      getDocumentLock: () => ({
        tryLock() { if (lock.held) return false; lock.held = true; return true; },
        releaseLock() { lock.held = false; },
        hasLock: () => lock.held
      })
    },
    ScriptApp: {
      newTrigger(handler) {
        let at = null;
        const builder = {
          timeBased: () => builder,
          after(ms) { at = clock.now + ms; return builder; },
          create() {
            const trigger = { handler, at, id: ++triggerIds, getHandlerFunction: () => handler, getUniqueId: () => String(trigger.id) };
            triggers.push(trigger);
            return trigger;
          }
        };
        return builder;
      },
      getProjectTriggers: () => triggers.slice(),
      deleteTrigger(trigger) {
        const i = triggers.indexOf(trigger);
        if (i >= 0) triggers.splice(i, 1);
      }
    },
    CacheService: { getDocumentCache: () => cache, getScriptCache: () => cache },
    Utilities: {
      DigestAlgorithm: { SHA_256: 'sha256' },
      Charset: { UTF_8: 'utf8' },
      computeDigest: (alg, text) => Array.from(crypto.createHash(alg).update(text, 'utf8').digest(), (b) => (b > 127 ? b - 256 : b)),
      base64EncodeWebSafe: (bytes) => Buffer.from(bytes.map((b) => b & 255)).toString('base64').replace(/\+/g, '-').replace(/\//g, '_'),
      formatDate(date, zone, format) {
        assert.equal(format, 'yyyy-MM-dd HH:mm:ss');
        return date.toISOString().slice(0, 19).replace('T', ' ');
      }
    }
  };
  vm.createContext(context);
  // Apps Script runs every .gs file of a project in one global scope.
  fs.readdirSync(ADDIN).filter((name) => name.endsWith('.gs')).sort().forEach((name) => {
    vm.runInContext(fs.readFileSync(path.join(ADDIN, name), 'utf8'), context, { filename: name });
  });
  context.pbNow_ = () => clock.now;
  return {
    gs: context,
    ui,
    log,
    clock,
    lock,
    triggers,
    spreadsheet,
    userProps,
    named,
    http,
    get cache() { return cache; },
    /** A new, empty script cache: as after six hours, or on another user's first call. */
    clearCache() { cache = fakeCache(); },
    /** The requests to one route of the backend, e.g. '/v1/run'. */
    calls(route) { return log.fetches.filter((f) => f.path === route); },
    completeCalls() { return this.calls('/v1/complete'); }
  };
}

const SIX_MINUTES = 6 * 60 * 1000;

/** Fires continuation triggers as Apps Script would, checking each pass fits in 6 minutes. */
function drainTriggers(app) {
  let passes = 0;
  while (app.triggers.length) {
    assert.equal(app.triggers.length, 1, 'one continuation at a time');
    const trigger = app.triggers[0];
    assert.equal(trigger.handler, 'pbContinue');
    app.clock.now = Math.max(app.clock.now, trigger.at);
    const start = app.clock.now;
    app.gs[trigger.handler]();
    assert.ok(app.clock.now - start < SIX_MINUTES, `pass took ${(app.clock.now - start) / 1000} s`);
    assert.equal(app.lock.held, false, 'the lock is released after each pass');
    assert.ok(++passes < 20, 'the run ends');
  }
  return passes;
}

module.exports = { FakeSheet, SIX_MINUTES, drainTriggers, loadScript, startBackend };
