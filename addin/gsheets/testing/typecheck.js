// Type-checks the Apps Script project against Google's own types (@types/google-apps-script,
// pinned in ../package.json): tsc --allowJs --checkJs --noEmit over every .gs file as Apps Script
// runs them (one global scope, V8, no DOM), and over the sidebar's scripts as the browser runs
// them (DOM, google.script.run as types/google-script-run.d.ts declares it). tsc reads only
// .js names, so each file is copied verbatim under its name + ".js": the lines are the same,
// and errors are reported under the real names. Exit 1 with tsc's errors when any.
'use strict';

const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const ADDIN = path.resolve(__dirname, '..');
const WEB = path.resolve(ADDIN, '..', '..', 'promptbatch_sheets', 'web');
const TSC = path.join(ADDIN, 'node_modules', 'typescript', 'bin', 'tsc');
const TYPES = path.join(ADDIN, 'node_modules', '@types');

/** One tsc program over `files` (absolute paths) with `lib` and `types`. */
function check(name, files, lib, types, extra = []) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `pb-tsc-${name}-`));
  try {
    const homes = Object.fromEntries(files.map((file) => [path.basename(file), path.dirname(file)]));
    const copies = files.map((file) => {
      const copy = path.join(dir, path.basename(file) + '.js');
      fs.copyFileSync(file, copy);
      return copy;
    });
    extra.forEach((file) => fs.copyFileSync(file, path.join(dir, path.basename(file))));
    fs.writeFileSync(path.join(dir, 'tsconfig.json'), JSON.stringify({
      compilerOptions: {
        allowJs: true, checkJs: true, noEmit: true, target: 'ES2019', lib, types,
        typeRoots: [TYPES], strict: false, noImplicitAny: false, skipLibCheck: true
      },
      files: copies.map((c) => path.basename(c)).concat(extra.map((e) => path.basename(e)))
    }));
    try {
      execFileSync(process.execPath, [TSC, '-p', dir, '--pretty', 'false'], { encoding: 'utf8' });
      return '';
    } catch (err) {
      return String(err.stdout || err.message).split(/\r?\n/)
        .map((line) => line.replace(/^\S*?([^/\s]+)\.js\(/, (_, base) => `${path.relative(process.cwd(), path.join(homes[base] || dir, base))}(`))
        .join('\n');
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const gs = fs.readdirSync(ADDIN).filter((n) => n.endsWith('.gs')).sort().map((n) => path.join(ADDIN, n));
const errors = check('gs', gs, ['ES2019'], ['google-apps-script']) +
  check('sidebar', ['api.js', 'panel.js', 'host-gas.js', 'host-browser.js'].map((n) => path.join(WEB, n)),
    ['ES2019', 'DOM'], [], [path.join(ADDIN, 'types', 'google-script-run.d.ts')]);
if (errors) {
  process.stdout.write(errors);
  process.exit(1);
}
process.stdout.write(`tsc: ${gs.length} .gs files and the sidebar's scripts check against Google's types\n`);
