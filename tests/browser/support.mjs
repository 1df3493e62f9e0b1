// Helpers for the browser and compatibility suites: the real chatwire binary as a
// child process, a tiny static server for the example apps' dist/, NestJS-style
// HS256 tokens, and headless Chromium through playwright-core.

import { spawn, spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import jwt from 'jsonwebtoken';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, '../..');

export const BIN = process.env.CHATWIRE_BIN
  ? path.resolve(process.env.CHATWIRE_BIN)
  : path.resolve(HERE, '../../target/debug/chatwire');

export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** The mock model's answer: 40 words, streamed one word per token. */
export const MOCK_RESPONSE =
  'Socket streams carry every answer word by word, so the reader sees progress at once. ' +
  'A careful client keeps partial text when the user presses stop, remembers the conversation, ' +
  'and shows clear errors whenever the connection or the token fails.';

export const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A free TCP port on the loopback interface. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** An HS256 token as NestJS's JwtService.sign() makes it ({ sub, iat, exp }). */
export function mintToken(secret, payload = { sub: 'user-1' }, options = { expiresIn: '1h' }) {
  return jwt.sign(payload, secret, { algorithm: 'HS256', ...options });
}

const children = new Set();
process.on('exit', () => {
  for (const c of children) {
    try {
      c.kill('SIGKILL');
    } catch {
      /* gone */
    }
  }
});

/**
 * A `chatwire serve` child process. `start()` may be called again after `stop()`:
 * same port, same database, same secret (used by the reconnection test).
 *
 * options: secret (null = open mode), corsOrigin, env (extra variables), tokenDelayMs.
 */
export class Chatwire {
  constructor({ secret = `browser-secret-${randomUUID()}`, corsOrigin, env = {}, tokenDelayMs = 30 } = {}) {
    if (!fs.existsSync(BIN)) {
      throw new Error(`chatwire binary not found at ${BIN}; build it (cargo build) or set CHATWIRE_BIN`);
    }
    this.secret = secret;
    this.corsOrigin = corsOrigin;
    this.extraEnv = env;
    this.tokenDelayMs = tokenDelayMs;
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chatwire-browser-'));
    this.output = '';
    this.child = null;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  token(payload = { sub: 'user-1' }, options) {
    return mintToken(this.secret, payload, options);
  }

  async start() {
    if (!this.port) this.port = await freePort();
    // A clean environment: nothing from the developer's shell (a real OpenAI key, a
    // JWT setting, limits) may change what is tested.
    const env = {};
    for (const k of ['PATH', 'HOME', 'TMPDIR', 'TZ', 'LANG', 'LC_ALL']) {
      if (process.env[k] !== undefined) env[k] = process.env[k];
    }
    Object.assign(env, {
      PORT: String(this.port),
      HOST: '127.0.0.1',
      CORS_ORIGIN: this.corsOrigin,
      DATABASE_URL: process.env.DATABASE_URL || `sqlite://${path.join(this.dir, 'chatwire.db')}?mode=rwc`,
      MOCK_RESPONSE,
      MOCK_TOKEN_DELAY_MS: String(this.tokenDelayMs),
      RUST_LOG: process.env.CHATWIRE_TEST_RUST_LOG || 'warn',
      // A loaded test machine's scheduling lag is no overload (the overload tests set
      // their own limits).
      OVERLOAD_LAG_MS: '0',
      ...this.extraEnv,
    });
    if (this.secret) env.JWT_SECRET = this.secret;

    // cwd = scratch dir, so no .env file of the checkout is read.
    const child = spawn(BIN, ['serve'], { env, cwd: this.dir, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    children.add(child);
    const keep = (chunk) => {
      this.output = (this.output + chunk.toString()).slice(-32 * 1024);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    let exited = null;
    child.on('exit', (code, signal) => {
      exited = { code, signal };
      children.delete(child);
    });

    const deadline = Date.now() + 30_000;
    for (;;) {
      if (exited) {
        throw new Error(`chatwire exited early (${JSON.stringify(exited)}):\n${this.output}`);
      }
      try {
        const res = await fetch(`${this.url}/health`, { signal: AbortSignal.timeout(1000) });
        if (res.status === 200) return this;
      } catch {
        /* not up yet */
      }
      if (Date.now() > deadline) throw new Error(`chatwire did not answer /health within 30 s:\n${this.output}`);
      await sleep(100);
    }
  }

  async stop() {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), 15_000);
    await gone;
    clearTimeout(t);
  }

  async dispose() {
    await this.stop();
    if (!process.env.DATABASE_URL) fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.json': 'application/json',
};

/** Serves `root` (an app's dist/) on 127.0.0.1; unknown paths get index.html. */
export async function serveStatic(root) {
  const server = http.createServer((req, res) => {
    const urlPath = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    let file = path.join(root, path.normalize(urlPath).replace(/^(\.\.[/\\])+/, ''));
    if (!file.startsWith(root) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
      file = path.join(root, 'index.html');
    }
    res.writeHead(200, {
      'content-type': TYPES[path.extname(file)] || 'application/octet-stream',
      'cache-control': 'no-store',
    });
    fs.createReadStream(file).pipe(res);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    origin: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections?.();
        server.close(resolve);
      }),
  };
}

/**
 * The example app's dist/, built first when missing (or when BUILD_APPS=1):
 * `npm ci` if it has no node_modules, then `npm run build`.
 */
export function ensureBuilt(app) {
  const dir = path.join(REPO, 'client-examples', app);
  const dist = path.join(dir, 'dist');
  if (process.env.BUILD_APPS === '1' || !fs.existsSync(path.join(dist, 'index.html'))) {
    const run = (args) => {
      const r = spawnSync('npm', args, { cwd: dir, stdio: 'inherit' });
      if (r.status !== 0) throw new Error(`npm ${args.join(' ')} failed in ${dir}`);
    };
    if (!fs.existsSync(path.join(dir, 'node_modules'))) run(['ci', '--no-audit', '--no-fund']);
    run(['run', 'build']);
  }
  return dist;
}

export async function launchBrowser() {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`Chromium not found at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)`);
  }
  const { chromium } = await import('playwright-core');
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true });
}

/**
 * Decodes the Socket.IO packets in a websocket frame of the /ai namespace:
 * `42/ai,["event",{...}]`, `42/ai,7["event",...]` (with ack id), `43/ai,7[{...}]` (ack).
 * Returns { type: 'event' | 'ack', name?, args } or null.
 */
export function decodeFrame(payload) {
  if (typeof payload !== 'string') return null;
  const m = /^4([23])(?:\/ai,)?(\d*)(\[.*)$/s.exec(payload);
  if (!m) return null;
  try {
    const arr = JSON.parse(m[3]);
    if (m[1] === '2') return { type: 'event', name: arr[0], args: arr.slice(1), ackId: m[2] || null };
    return { type: 'ack', args: arr, ackId: m[2] };
  } catch {
    return null;
  }
}

/** Records the /ai events a page sends and receives over websocket. */
export function recordFrames(page) {
  const frames = [];
  page.on('websocket', (ws) => {
    ws.on('framesent', ({ payload }) => {
      const p = decodeFrame(payload);
      if (p) frames.push({ dir: 'sent', ...p });
    });
    ws.on('framereceived', ({ payload }) => {
      const p = decodeFrame(payload);
      if (p) frames.push({ dir: 'received', ...p });
    });
  });
  return frames;
}

/**
 * The example app's Vite dev server (`npm run dev`, i.e. development builds: React's
 * StrictMode double mount, Vue's dev warnings) on a free port of 127.0.0.1.
 * Needs the app's node_modules (npm ci).
 */
export async function startViteDev(app) {
  const dir = path.join(REPO, 'client-examples', app);
  const vite = path.join(dir, 'node_modules/vite/bin/vite.js');
  if (!fs.existsSync(vite)) throw new Error(`${vite} not found: run npm ci in ${dir}`);
  const port = await freePort();
  const child = spawn(process.execPath, [vite, '--host', '127.0.0.1', '--port', String(port), '--strictPort', '--clearScreen', 'false'], {
    cwd: dir,
    env: { ...process.env, BROWSER: 'none', NO_COLOR: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  let output = '';
  child.stdout.on('data', (c) => (output += c));
  child.stderr.on('data', (c) => (output += c));
  let exited = null;
  child.on('exit', (code, signal) => {
    exited = { code, signal };
    children.delete(child);
  });
  const origin = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (exited) throw new Error(`vite exited early (${JSON.stringify(exited)}):\n${output}`);
    try {
      const res = await fetch(`${origin}/`, { signal: AbortSignal.timeout(2000) });
      if (res.status === 200) break;
    } catch {
      /* not up yet */
    }
    if (Date.now() > deadline) throw new Error(`vite dev server did not answer within 60 s:\n${output}`);
    await sleep(100);
  }
  return {
    origin,
    get output() {
      return output;
    },
    close: async () => {
      if (exited) return;
      const gone = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await gone;
      clearTimeout(t);
    },
  };
}

/** Console errors and warnings, uncaught exceptions and failed requests of a page. */
export function recordProblems(page) {
  const problems = [];
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') problems.push(`[console.${m.type()}] ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`[pageerror] ${e.message}`));
  page.on('requestfailed', (r) => problems.push(`[requestfailed] ${r.url()} ${r.failure()?.errorText ?? ''}`));
  return problems;
}
