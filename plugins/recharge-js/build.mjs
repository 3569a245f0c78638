// Builds this handler into a paynotify component: `node build.mjs [--out FILE]`.
//
// Reads `paynotify` in package.json: `type` (the order type the handler reports), `source`
// (the module exporting handlePaid/runTask), `wit` (the directory holding plugin.wit).
// The module is wrapped by the SDK's `exportHandler` into the `handler` world, so the
// author's code sees plain objects and numbers, not raw WIT records.
import { componentize } from '@bytecodealliance/componentize-js';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = dirname(fileURLToPath(import.meta.url));
const pkg = JSON.parse(await readFile(join(root, 'package.json'), 'utf8'));
const cfg = pkg.paynotify ?? {};
for (const key of ['type', 'source', 'wit']) {
  if (typeof cfg[key] !== 'string') {
    console.error(`build.mjs: package.json needs "paynotify": { "${key}": ... }`);
    process.exit(1);
  }
}
const outFlag = process.argv.indexOf('--out');
const out = resolve(outFlag > 0 ? process.argv[outFlag + 1] : join(root, 'dist', `${cfg.type}.wasm`));

// The entry lives next to the source so its relative imports resolve as the author wrote them.
const source = join(root, cfg.source);
const entry = join(dirname(source), '.paynotify-entry.js');
const sdk = `./${relative(dirname(source), join(root, cfg.sdk ?? 'src/paynotify.js'))}`;
await writeFile(
  entry,
  `import * as handler from './${relative(dirname(source), source)}';
import { exportHandler } from '${sdk}';
const exported = exportHandler(handler, ${JSON.stringify({ name: cfg.type, version: pkg.version })});
export function metadata() { return exported.metadata(); }
export function handlePaid(order, notification) { return exported.handlePaid(order, notification); }
export function runTask(task) { return exported.runTask(task); }
`,
);

const started = Date.now();
const { component } = await componentize({
  sourcePath: entry,
  witPath: resolve(root, cfg.wit),
  worldName: 'handler',
  // A handler talks to the world only through the paynotify imports: no WASI clocks,
  // random, stdio or fetch (Date.now() and Math.random() are unavailable; setTimeout traps).
  disableFeatures: ['stdio', 'random', 'clocks', 'http', 'fetch-event'],
});
await mkdir(dirname(out), { recursive: true });
await writeFile(`${out}.partial`, component);
await rename(`${out}.partial`, out);
console.log(`${relative(process.cwd(), out) || out}: ${component.length} bytes in ${Date.now() - started} ms`);
