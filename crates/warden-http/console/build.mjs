// Builds dist/ from src/: one bundled, minified script (esbuild), the stylesheet and the page
// copied. `--check`: build into a temporary folder and fail when dist/ differs (CI runs this,
// so the committed dist/ always matches its sources).
import * as esbuild from 'esbuild';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const check = process.argv.includes('--check');
const out = check ? fs.mkdtempSync(path.join(os.tmpdir(), 'warden-console-')) : path.join(here, 'dist');
fs.mkdirSync(out, { recursive: true });

await esbuild.build({
  entryPoints: [path.join(here, 'src/main.ts')],
  bundle: true,
  minify: true,
  format: 'esm',
  target: ['es2022'],
  legalComments: 'none',
  outfile: path.join(out, 'console.js'),
  logLevel: 'warning',
});
fs.copyFileSync(path.join(here, 'src/index.html'), path.join(out, 'index.html'));
fs.copyFileSync(path.join(here, 'src/console.css'), path.join(out, 'console.css'));

if (check) {
  const stale = ['index.html', 'console.js', 'console.css'].filter(f => {
    const a = fs.readFileSync(path.join(out, f));
    let b;
    try { b = fs.readFileSync(path.join(here, 'dist', f)); } catch { return true; }
    return !a.equals(b);
  });
  fs.rmSync(out, { recursive: true, force: true });
  if (stale.length) {
    console.error(`dist/ is not built from the current sources (${stale.join(', ')} differ): run \`npm run build\` in crates/warden-http/console and commit dist/`);
    process.exit(1);
  }
  console.log('dist/ matches the sources');
}
