#!/usr/bin/env node
'use strict';
// The CLI lives in dist/ (built by `npm install` via the prepare script, or `npm run build`).
let cli;
try {
  cli = require('../dist/cli/index.js');
} catch (e) {
  if (e && e.code === 'MODULE_NOT_FOUND' && /dist[\\/]cli/.test(String(e.message))) {
    process.stderr.write('gpt2-tfjs: not built yet — run `npm run build` (or `npm install`) in the package folder first\n');
    process.exit(1);
  }
  throw e;
}
cli.main(process.argv).then((code) => {
  process.exitCode = code;
});
