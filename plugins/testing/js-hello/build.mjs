// Builds plugin.js into a component: node build.mjs OUT.wasm
// APIARY_COMPONENTIZE_JS points at componentize-js's entry module (cargo xtask plugins
// installs it under target/js-toolchain and sets it).
import { writeFile } from 'node:fs/promises';
import { fileURLToPath, pathToFileURL } from 'node:url';

const out = process.argv[2];
const { componentize } = await import(pathToFileURL(process.env.APIARY_COMPONENTIZE_JS).href);
const here = (p) => fileURLToPath(new URL(p, import.meta.url));
const { component } = await componentize({
  sourcePath: here('./plugin.js'),
  witPath: here('../../../wit'),
  worldName: 'http-plugin',
  disableFeatures: ['stdio', 'random', 'clocks', 'http', 'fetch-event'],
});
await writeFile(out, component);
