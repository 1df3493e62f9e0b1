// The admin view in headless Chromium against the real chatwire binary:
// - the official @socket.io/admin-ui (its ui/dist from npm, served here) logs in to
//   chatwire's /admin namespace through its connection form and lists the test's /ai
//   sockets, with their users;
// - chatwire's own /admin page (HTTP Basic) shows a running answer, and its Stop button
//   stops it: the row goes, the owner gets chat:stopped, the stored row is `stopped`.
//
//   node --test admin.test.mjs        (or: npm run test:admin)

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';

import { io } from 'sio48';

import { BIN, Chatwire, MOCK_RESPONSE, REPO, UUID_RE, launchBrowser, serveStatic } from './support.mjs';

const require = createRequire(import.meta.url);
const T = 60_000;
const ADMIN = 'ops';
const PASSWORD = 'correct horse battery';
// Into docs/screenshots/ with UPDATE_SCREENSHOTS=1, else into target/ (ignored by git).
const SCREENSHOT_DIR =
  process.env.UPDATE_SCREENSHOTS === '1' ? path.join(REPO, 'docs/screenshots') : path.join(REPO, 'target/browser-screenshots');

/** ADMIN_PASSWORD, made the way the README says: `chatwire hash-password`. */
function bcryptHash(password) {
  const cwd = fs.mkdtempSync(path.join(os.tmpdir(), 'chatwire-hash-'));
  const out = spawnSync(BIN, ['hash-password', '--cost', '4'], { input: `${password}\n`, cwd, encoding: 'utf8' });
  fs.rmSync(cwd, { recursive: true, force: true });
  assert.equal(out.status, 0, out.stderr);
  return out.stdout.trim();
}

/** An /ai socket of `user`, connected. */
function aiSocket(server, user) {
  return new Promise((resolve, reject) => {
    const socket = io(`${server.url}/ai`, { auth: { token: server.token({ sub: user }) }, transports: ['websocket'], forceNew: true, reconnection: false });
    socket.once('connect', () => resolve(socket));
    socket.once('connect_error', reject);
  });
}

/** Only the page's own servers: the UI's web fonts and icons come from CDNs, and there is no network here. */
async function localOnly(page) {
  await page.route('**/*', (route) => {
    const { hostname } = new URL(route.request().url());
    return hostname === '127.0.0.1' ? route.continue() : route.abort();
  });
}

describe('the admin view in Chromium', () => {
  let browser;
  const sockets = [];
  const hash = () => bcryptHash(PASSWORD);

  before(async () => {
    browser = await launchBrowser();
  });

  after(async () => {
    for (const s of sockets) s.close();
    await browser?.close();
  });

  test('the official @socket.io/admin-ui logs in to /admin and lists the /ai sockets', { timeout: T }, async () => {
    const dist = path.join(path.dirname(require.resolve('@socket.io/admin-ui/package.json')), 'ui/dist');
    const ui = await serveStatic(dist);
    const server = new Chatwire({ corsOrigin: ui.origin, env: { ADMIN_USERNAME: ADMIN, ADMIN_PASSWORD: hash() } });
    await server.start();
    const context = await browser.newContext({ locale: 'en-US', viewport: { width: 1280, height: 800 } });
    try {
      const users = [`alice-${Date.now()}`, `bob-${Date.now()}`];
      const mine = await Promise.all(users.map((u) => aiSocket(server, u)));
      sockets.push(...mine);

      const page = await context.newPage();
      await localOnly(page);
      await page.goto(`${ui.origin}/`);
      // The connection form: server URL, credentials, then the advanced options (namespace, path).
      await page.getByLabel('Server URL').fill(server.url);
      await page.getByLabel('Username').fill(ADMIN);
      await page.getByLabel('Password').fill('wrong');
      await page.getByText('Advanced options').click();
      await page.getByLabel('Admin namespace').fill('/admin');
      await page.getByLabel('Path').fill('/socket.io');
      await page.getByRole('button', { name: 'Connect' }).click();
      await page.getByText('Error: unauthorized').waitFor({ timeout: 10_000 });

      await page.getByLabel('Password').fill(PASSWORD);
      await page.getByRole('button', { name: 'Connect' }).click();
      // The dialog slides away once the socket is connected.
      await page.locator('.v-dialog').waitFor({ state: 'hidden', timeout: 10_000 });

      await page.goto(`${ui.origin}/#/sockets/`);
      for (const s of mine) {
        await page.getByRole('cell', { name: s.id, exact: true }).waitFor({ timeout: 10_000 });
      }
      const rows = await page.locator('tbody tr').allInnerTexts();
      assert.equal(rows.filter((r) => mine.some((s) => r.includes(s.id))).length, 2, rows.join('\n'));
      assert.ok(rows.every((r) => !mine.some((s) => r.includes(s.id)) || (r.includes('127.0.0.1') && /websocket/i.test(r))), rows.join('\n'));
      fs.mkdirSync(SCREENSHOT_DIR, { recursive: true });
      await page.screenshot({ path: path.join(SCREENSHOT_DIR, 'admin-ui.png'), animations: 'disabled' });

      // A socket's page shows its user, from the token.
      await page.getByRole('cell', { name: mine[0].id, exact: true }).click();
      await page.getByText(`"user": "${users[0]}"`).waitFor({ timeout: 10_000 });
    } finally {
      await context.close();
      await server.dispose();
      await ui.close();
    }
  });

  test('the /admin page shows a running answer and its Stop button stops it', { timeout: T }, async () => {
    // 120 words at 150 ms: the answer runs 18 s, long enough to chart and stop.
    const long = [MOCK_RESPONSE, MOCK_RESPONSE, MOCK_RESPONSE].join(' ');
    const env = { ADMIN_USERNAME: ADMIN, ADMIN_PASSWORD: hash(), MOCK_RESPONSE: long };
    const server = new Chatwire({ corsOrigin: 'http://127.0.0.1:9', tokenDelayMs: 150, env });
    await server.start();
    const context = await browser.newContext({ httpCredentials: { username: ADMIN, password: PASSWORD }, viewport: { width: 1200, height: 900 } });
    try {
      const user = `carol-${Date.now()}`;
      const owner = await aiSocket(server, user);
      sockets.push(owner);
      let streamed = '';
      owner.on('chat:message', (m) => (streamed += m.content));
      const ended = new Promise((resolve) => owner.once('chat:stopped', resolve));
      const ack = await owner.emitWithAck('chat:start', { message: 'a long story please' });
      assert.equal(ack.ok, true);
      assert.match(ack.messageId, UUID_RE);

      const page = await context.newPage();
      const problems = [];
      page.on('pageerror', (e) => problems.push(e.message));
      page.on('console', (m) => m.type() === 'error' && problems.push(m.text()));
      await page.goto(`${server.url}/admin`);
      const row = page.locator(`tr[data-message-id="${ack.messageId}"]`);
      await row.waitFor({ timeout: 10_000 });
      const cells = await row.locator('td').allInnerTexts();
      assert.deepEqual(cells.slice(0, 2), [user, 'gpt-4']);
      assert.equal(cells[4], ack.messageId);
      // The chart has four seconds of tokens before the picture is taken.
      await page.waitForFunction(() => Number(document.getElementById('chart-canvas').dataset.seconds) >= 4, null, { timeout: 15_000 });
      assert.match(await page.locator('#rate').innerText(), /[1-9][0-9]*\.\d tokens\/s now/);
      assert.ok(Number(await row.locator('td').nth(2).innerText()) > 0);
      assert.match(await page.locator('#nodes-body').innerText(), /\bpid\b|\d+/);
      fs.mkdirSync(SCREENSHOT_DIR, { recursive: true });
      await page.screenshot({ path: path.join(SCREENSHOT_DIR, 'admin-page.png'), fullPage: true, animations: 'disabled' });

      await row.getByRole('button', { name: 'Stop' }).click();
      await row.waitFor({ state: 'detached', timeout: 10_000 });
      const stopped = await ended;
      assert.equal(stopped.messageId, ack.messageId);
      assert.equal(stopped.content, streamed);
      assert.ok(streamed.length > 0 && streamed.length < long.length, 'stopped midway');
      // The stored row: a fresh socket resumes it, and the server reads it as stopped.
      const reader = await aiSocket(server, user);
      sockets.push(reader);
      const resumed = await reader.emitWithAck('chat:resume', { messageId: ack.messageId, offset: 0 });
      assert.equal(resumed.status, 'stopped');
      await page.getByText('No answer is running.').waitFor();
      assert.deepEqual(problems, []);
    } finally {
      await context.close();
      await server.dispose();
    }
  });
});
