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
  /** A formula cell's formula, '' for a value, as Range.getFormulas. */
  getFormulas() {
    return this.getValues().map((line, r) => line.map((_, c) => this.sheet.formulas.get(`${this.row + r - 1},${this.col + c - 1}`) || ''));
  }
  getNumberFormats() {
    return this.getValues().map((line, r) => line.map((_, c) => this.sheet.formats.get(`${this.row + r - 1},${this.col + c - 1}`) || 'General'));
  }
  setNumberFormat(format) {
    this.sheet.editable('setNumberFormat');
    for (let r = 0; r < this.rows; r++) {
      for (let c = 0; c < this.cols; c++) this.sheet.formats.set(`${this.row + r - 1},${this.col + c - 1}`, format);
    }
    return this;
  }
  /**
   * As Sheets stores what setValues writes: a string starting with "=" becomes a formula
   * (Range.setValue), a leading apostrophe marks text and is not kept, and unless the cell's
   * format is plain text ("@") a string that reads as a number or boolean becomes one.
   */
  setValues(values) {
    this.sheet.editable('setValues');
    assert.equal(values.length, this.rows, 'row count of the range');
    values.forEach((line, r) => {
      assert.equal(line.length, this.cols, 'column count of the range');
      line.forEach((v, c) => {
        const key = `${this.row + r - 1},${this.col + c - 1}`;
        this.sheet.formulas.delete(key);
        let value = v;
        if (typeof v === 'string' && v.startsWith("'")) value = v.slice(1);
        else if (typeof v === 'string' && v.startsWith('=')) { this.sheet.formulas.set(key, v); value = '#FORMULA'; }
        else if (typeof v === 'string' && this.sheet.formats.get(key) !== '@') {
          if (/^-?\d+(\.\d+)?$/.test(v.trim())) value = Number(v);
          else if (/^(true|false)$/i.test(v.trim())) value = v.trim().toLowerCase() === 'true';
        }
        this.sheet.set(this.row + r - 1, this.col + c - 1, value);
      });
    });
    this.sheet.writes++;
    return this;
  }
}

const OUTSIDE = 'The coordinates of the range are outside the dimensions of the sheet.';

class FakeSheet {
  /** A sheet as big as its grid (Sheets' own new sheet is 1000 x 26: pass `size` for that). */
  constructor(name, grid, id = 1, size = null) {
    this.name = name;
    this.grid = grid.map((line) => line.slice());
    this.id = id;
    this.writes = 0;
    this.maxRows = size ? size[0] : Math.max(1, this.grid.length);
    this.maxColumns = size ? size[1] : Math.max(1, ...this.grid.map((line) => line.length));
    /** 'row,col' (0-based) -> formula text; and -> number format. */
    this.formulas = new Map();
    this.formats = new Map();
    /** Set by the harness while a custom function runs: Spreadsheet is read only there. */
    this.readOnly = false;
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
  getLastColumn() {
    let last = 0;
    this.grid.forEach((line) => line.forEach((v, c) => { if (v !== '') last = Math.max(last, c + 1); }));
    return last;
  }
  getMaxRows() { return this.maxRows; }
  getMaxColumns() { return this.maxColumns; }
  insertColumnsAfter(after, howMany) {
    this.editable('insertColumnsAfter');
    assert.ok(after >= 1 && after <= this.maxColumns && howMany >= 1, 'insertColumnsAfter arguments');
    this.grid.forEach((line) => { if (line.length > after) line.splice(after, 0, ...Array(howMany).fill('')); });
    this.maxColumns += howMany;
    return this;
  }
  insertRowsAfter(after, howMany) {
    this.editable('insertRowsAfter');
    assert.ok(after >= 1 && after <= this.maxRows && howMany >= 1, 'insertRowsAfter arguments');
    this.maxRows += howMany;
    return this;
  }
  editable(method) {
    if (this.readOnly) throw new Error(`You do not have permission to call ${method}`);
  }
  getDataRange() { return new FakeRange(this, 1, 1, Math.max(1, this.getLastRow()), Math.max(1, this.getLastColumn())); }
  /** Sheets does not grow a sheet for a range beyond it: it throws. */
  getRange(row, col, rows = 1, cols = 1) {
    if (row < 1 || col < 1 || rows < 1 || cols < 1 || row + rows - 1 > this.maxRows || col + cols - 1 > this.maxColumns) {
      throw new Error(OUTSIDE);
    }
    return new FakeRange(this, row, col, rows, cols);
  }
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

/** A property store; `readOnly()` says whether a write is refused (inside a custom function). */
function fakeProperties(readOnly = () => false) {
  const data = new Map();
  const write = (method) => { if (readOnly()) throw new Error(`You do not have permission to call ${method}`); };
  return {
    data,
    getProperty: (k) => (data.has(k) ? data.get(k) : null),
    setProperty(k, v) { write('setProperty'); data.set(k, String(v)); return this; },
    setProperties(values) { write('setProperties'); Object.entries(values).forEach(([k, v]) => data.set(k, String(v))); return this; },
    deleteProperty(k) { write('deleteProperty'); data.delete(k); return this; },
    getProperties: () => Object.fromEntries(data)
  };
}

/**
 * CacheService's document cache as Google documents it: keys up to 250 characters, values up
 * to 100 KB, about 1,000 items (beyond that it drops the oldest down to 900), and expiry "only
 * a suggestion": `dropAll()` forgets everything, as Google may at any time.
 */
function fakeCache() {
  const data = new Map();
  const check = (k, v) => {
    assert.ok(k.length <= 250, 'cache key too long');
    assert.ok(Buffer.byteLength(v) <= 100 * 1024, 'cache value too large');
    assert.equal(typeof v, 'string');
  };
  const store = (k, v) => {
    check(k, v);
    data.delete(k);
    data.set(k, v);
    if (data.size > 1000) for (const old of Array.from(data.keys()).slice(0, data.size - 900)) data.delete(old);
  };
  return {
    data,
    get: (k) => (data.has(k) ? data.get(k) : null),
    getAll: (keys) => Object.fromEntries(keys.filter((k) => data.has(k)).map((k) => [k, data.get(k)])),
    put(k, v) { store(k, v); },
    putAll(values) { Object.entries(values).forEach(([k, v]) => store(k, v)); },
    dropAll() { data.clear(); }
  };
}

/**
 * Everything the script may touch, loaded with the script itself. `clock.now` replaces pbNow_; each
 * UrlFetchApp.fetchAll advances it by `fetchAllMs` (a simulated round trip).
 *
 * Users: `owner` owns the spreadsheet; `app.as(user)` makes another editor the one at the
 * keyboard. Each user has their own user properties; document properties are shared. As Google
 * documents for custom functions, =PROMPTBATCH runs anonymously (Session gives no email), its
 * getUserProperties() is the owner's store, and it may not write to properties or the sheet.
 * A time-based trigger runs as the user who created it. `settings` sets the backend URL, the
 * owner's token and (unless `formulas: false`) the token shared for formulas.
 */
function loadScript({ sheets, settings, fetchAllMs = 0, owner = 'owner@example.com', formulas = true } = {}) {
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
  const who = { user: owner, custom: false };
  const readOnly = () => who.custom;
  const stores = new Map();
  const userStore = (user) => {
    if (!stores.has(user)) stores.set(user, fakeProperties(readOnly));
    return stores.get(user);
  };
  const docProps = fakeProperties(readOnly);
  if (settings) {
    docProps.setProperty('PB_BACKEND_URL', settings.url);
    userStore(owner).setProperties({ PB_TOKEN: settings.token, PB_TOKEN_URL: settings.url });
    if (formulas) docProps.setProperties({ PB_FORMULA_TOKEN: settings.token, PB_FORMULA_URL: settings.url });
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
    plain.forEach((r) => log.fetches.push({
      path: new URL(r.url).pathname, body: r.body ? JSON.parse(r.body) : null,
      user: who.custom ? null : who.user, token: (r.headers.Authorization || '').replace(/^Bearer /, '')
    }));
    const out = execFileSync(process.execPath, [FETCH_SYNC],
      { input: JSON.stringify(plain), maxBuffer: 1 << 28 });
    return JSON.parse(out).map((reply, i) => {
      const forced = http.intercept && http.intercept(plain[i], i);
      if (forced) reply = forced;
      if (reply.error) throw new Error(`Address unavailable: ${plain[i].url} (${reply.error})`);
      if (reply.quota) throw new Error(reply.quota);
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
      getUi: () => ui
    },
    HtmlService: {
      createHtmlOutputFromFile(name) {
        const content = fs.readFileSync(path.join(ADDIN, `${name}.html`), 'utf8');
        const output = { name, title: '', getContent: () => content, setTitle(t) { output.title = t; return output; } };
        return output;
      }
    },
    Session: {
      getActiveUser: () => ({ getEmail: () => (who.custom ? '' : who.user) }),
      getEffectiveUser: () => ({ getEmail: () => (who.custom ? '' : who.user) })
    },
    UrlFetchApp: {
      fetch(url, params) { return fetchAll([{ ...params, url }])[0]; },
      fetchAll(requests) {
        const replies = fetchAll(requests);
        clock.now += fetchAllMs;
        return replies;
      }
    },
    PropertiesService: {
      getUserProperties: () => userStore(who.custom ? owner : who.user),
      getDocumentProperties: () => docProps
    },
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
            const trigger = { handler, at, user: who.user, id: ++triggerIds, getHandlerFunction: () => handler, getUniqueId: () => String(trigger.id) };
            triggers.push(trigger);
            return trigger;
          }
        };
        return builder;
      },
      /** The triggers of this project that the user at the keyboard made. */
      getProjectTriggers: () => triggers.filter((t) => t.user === who.user),
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
      sleep: (ms) => { clock.now += ms; },
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
  // Sheets calls PROMPTBATCH only as a custom function: anonymously, read only.
  const formula = context.PROMPTBATCH;
  context.PROMPTBATCH = (...args) => {
    who.custom = true;
    sheetList.forEach((sheet) => { sheet.readOnly = true; });
    try {
      return formula(...args);
    } finally {
      who.custom = false;
      sheetList.forEach((sheet) => { sheet.readOnly = false; });
    }
  };
  return {
    gs: context,
    ui,
    log,
    clock,
    lock,
    triggers,
    spreadsheet,
    docProps,
    /** The user properties of the user at the keyboard. */
    get userProps() { return userStore(who.user); },
    propsOf: userStore,
    /** Makes `user` the one at the keyboard (an editor of the spreadsheet). */
    as(user) { who.user = user; return this; },
    get user() { return who.user; },
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
    app.as(trigger.user);
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
