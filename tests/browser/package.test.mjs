// client-examples/resumable as the npm package @chatwire/resumable: installed into a
// scratch npm project (by path, as the example apps do, and from its `npm pack`
// tarball, which is what `files` ships), imported there by name, type-checked through
// its hand-written resumable.d.ts, and used against the real chatwire binary (open mode,
// mock model) to resume an answer after a dropped link and after a "reload".

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

import { Chatwire, MOCK_RESPONSE, REPO } from './support.mjs';

const run = promisify(execFile);
const PKG_DIR = path.join(REPO, 'client-examples/resumable');
const PKG = JSON.parse(fs.readFileSync(path.join(PKG_DIR, 'package.json'), 'utf8'));
const T = 60_000;
// What the package ships: `files`, plus what npm always adds.
const SHIPPED = ['LICENSE', 'README.md', 'package.json', 'resumable.d.ts', 'resumable.js'];

const npm = (cwd, args) =>
  run('npm', [...args, '--no-audit', '--no-fund', '--offline', '--loglevel=error'], { cwd, timeout: 60_000 });

/** A scratch npm project (its own temp dir, nothing of the checkout above it). */
function scratchProject(label) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `chatwire-pkg-${label}-`));
  fs.writeFileSync(
    path.join(dir, 'package.json'),
    JSON.stringify({ name: `scratch-${label}`, version: '0.0.0', private: true, type: 'module' }, null, 2),
  );
  return dir;
}

// Runs inside the scratch project: imports the package by name. socket.io-client comes
// from this suite's own node_modules (SIO_URL), so the scratch project needs no registry.
const CONSUMER = String.raw`
import assert from 'node:assert/strict';
import * as mod from '@chatwire/resumable';
import { resumable } from '@chatwire/resumable';

const report = { exports: Object.keys(mod).sort(), resolved: import.meta.resolve('@chatwire/resumable') };
assert.equal(typeof resumable, 'function');
const serverUrl = process.env.CHATWIRE_URL;
if (serverUrl) {
  const { io } = await import(process.env.SIO_URL);
  const timeout = (ms, what) => new Promise((_, no) => setTimeout(() => no(new Error('timed out: ' + what)), ms).unref());

  // 1. An answer started through the helper survives a dropped link: after the
  //    reconnect it is resumed from what was received, with nothing missing or twice.
  // Open mode: the user is auth.userId (an anonymous socket would be a user of its own).
  const auth = { userId: 'package-test' };
  const a = io(serverUrl + '/ai', { auth, transports: ['websocket'], reconnectionDelay: 50, reconnectionDelayMax: 200 });
  let text = '';
  let chunks = 0;
  let cut = false;
  const ended = new Promise((resolve, reject) => {
    const chat = resumable(a, {
      onChunk(t) {
        text += t;
        chunks += 1;
        if (chunks === 4 && !cut) {
          cut = true;
          a.io.engine.close(); // the link drops; socket.io-client reconnects by itself
        }
      },
      onEnd: (end) => resolve({ end, chat }),
      onStopped: () => reject(new Error('stopped')),
      onError: (e) => reject(new Error('chat:error ' + JSON.stringify(e))),
    });
    a.on('connect', () => {
      if (!report.ack) {
        report.ack = 'pending';
        chat.start({ message: 'package test' }, (ack) => (report.ack = ack));
      }
    });
  });
  const { end, chat } = await Promise.race([ended, timeout(30_000, 'chat:end on the first socket')]);
  report.first = { text, end: end.content, stats: { ...chat.stats }, cut };
  chat.close();
  a.close();

  // 2. A fresh socket follows the same answer from an offset (as after a page reload).
  const b = io(serverUrl + '/ai', { auth, transports: ['websocket'] });
  let rest = '';
  const offset = 12;
  const done = new Promise((resolve, reject) => {
    const chat2 = resumable(b, {
      onChunk: (t, meta) => {
        if (rest === '') report.firstOffset = meta.offset;
        rest += t;
      },
      onEnd: (e) => resolve(e),
      onError: (e) => reject(new Error('chat:error ' + JSON.stringify(e))),
    });
    chat2.follow(report.ack.messageId, { offset, conversationId: report.ack.conversationId });
  });
  const end2 = await Promise.race([done, timeout(15_000, 'chat:end on the second socket')]);
  report.second = { offset, rest, end: end2.content };
  b.close();
}
console.log(JSON.stringify(report));
`;

// Type-checked against resumable.d.ts (strict, Node's own module resolution, so the
// `exports` "types" condition is what is found). The @ts-expect-error lines fail the
// check if the types were missing (everything `any`) or too loose.
const TYPED_CONSUMER = `
import { resumable, type ChunkMeta, type Resumable, type ResumableSocket } from '@chatwire/resumable';

declare const socket: ResumableSocket;
const chat: Resumable = resumable(socket, {
  onChunk: (text: string, meta: ChunkMeta) => void [text.length, meta.offset, meta.messageId],
  onEnd: (end) => void end,
});
chat.start({ message: 'hi' }, (ack) => void ack);
chat.follow('id', { offset: 3, conversationId: 'c' });
chat.join('c', false);
const n: number = chat.stats.resumes + (chat.answers.get('id')?.offset ?? 0);
void n;
chat.close();
// @ts-expect-error messageId is a string
chat.follow(42);
// @ts-expect-error not a member of the API
chat.nope();
// @ts-expect-error onChunk gets a string first
resumable(socket, { onChunk: (text: number) => void text });
`;

describe('@chatwire/resumable as an npm package', () => {
  let server;
  const dirs = [];

  before(async () => {
    server = new Chatwire({ secret: null, tokenDelayMs: 40 }); // open mode; ~1.6 s per answer
    await server.start();
  });

  after(async () => {
    await server?.dispose();
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  });

  test('package.json: name, version, ESM, exports with types and default, files, MIT', () => {
    assert.equal(PKG.name, '@chatwire/resumable');
    assert.equal(PKG.version, '0.1.0');
    assert.equal(PKG.type, 'module');
    assert.equal(PKG.license, 'MIT');
    const dot = PKG.exports?.['.'];
    assert.deepEqual(Object.keys(dot ?? {}), ['types', 'default'], 'exports["."]: "types" first, then "default"');
    for (const f of [dot.types, dot.default]) assert.ok(fs.existsSync(path.join(PKG_DIR, f)), `${f} exists`);
    assert.ok(Array.isArray(PKG.files) && PKG.files.includes('resumable.js') && PKG.files.includes('resumable.d.ts'));
    assert.equal(PKG.dependencies, undefined, 'no runtime dependencies');
  });

  test('the example apps depend on it by name, through file:../resumable', () => {
    for (const app of ['react', 'vue', 'node']) {
      const dir = path.join(REPO, 'client-examples', app);
      const pj = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'));
      assert.equal(pj.dependencies?.['@chatwire/resumable'], 'file:../resumable', app);
      const lock = JSON.parse(fs.readFileSync(path.join(dir, 'package-lock.json'), 'utf8'));
      assert.equal(lock.packages?.['node_modules/@chatwire/resumable']?.resolved, '../resumable', `${app} lock file`);
      // Every dependency pinned exactly.
      for (const [name, spec] of Object.entries({ ...pj.dependencies, ...pj.devDependencies })) {
        assert.match(spec, /^(file:|\d+\.\d+\.\d+$)/, `${app}: ${name} is pinned (${spec})`);
      }
      // And no relative import of the helper is left in the sources.
      const sources = fs
        .readdirSync(path.join(dir, app === 'node' ? '.' : 'src'), { withFileTypes: true })
        .filter((e) => e.isFile() && /\.(m?js|ts|tsx|vue)$/.test(e.name))
        .map((e) => fs.readFileSync(path.join(e.parentPath ?? e.path, e.name), 'utf8'));
      assert.ok(sources.some((s) => s.includes("from '@chatwire/resumable'")), `${app} imports @chatwire/resumable`);
      assert.ok(!sources.some((s) => /resumable\/resumable(\.js)?['"]/.test(s)), `${app}: no relative import of resumable.js`);
    }
  });

  test('npm install <path> in a scratch project; imported by name; resumes answers against chatwire', { timeout: T }, async () => {
    const dir = scratchProject('path');
    dirs.push(dir);
    await npm(dir, ['install', PKG_DIR]);
    const pj = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'));
    assert.match(pj.dependencies?.['@chatwire/resumable'] ?? '', /^file:/, 'recorded as a file: dependency');
    assert.ok(fs.existsSync(path.join(dir, 'node_modules/@chatwire/resumable/package.json')));

    fs.writeFileSync(path.join(dir, 'consumer.mjs'), CONSUMER);
    const { stdout } = await run(process.execPath, ['consumer.mjs'], {
      cwd: dir,
      timeout: 50_000,
      env: { ...process.env, CHATWIRE_URL: server.url, SIO_URL: import.meta.resolve('sio48') },
    }).catch((e) => {
      throw new Error(`consumer failed: ${e.message}\n${e.stdout}\n${e.stderr}\nserver log:\n${server.output}`);
    });
    const report = JSON.parse(stdout.trim().split('\n').pop());
    assert.deepEqual(report.exports, ['resumable']);
    assert.match(report.resolved, /\/resumable\.js$/, 'the "default" export is resumable.js');

    assert.equal(report.ack?.ok, true, `chat:start acknowledged: ${JSON.stringify(report.ack)}`);
    assert.ok(report.first.cut, 'the link was cut mid-answer');
    assert.ok(report.first.stats.resumes >= 1, `resumed after the reconnect: ${JSON.stringify(report.first.stats)}`);
    assert.equal(report.first.text, MOCK_RESPONSE, 'the answer arrives whole, nothing missing or twice');
    assert.equal(report.first.end, MOCK_RESPONSE);

    assert.equal(report.firstOffset, report.second.offset, 'follow() resumes from the offset given');
    assert.equal(report.second.rest, MOCK_RESPONSE.slice(report.second.offset));
    assert.equal(report.second.end, MOCK_RESPONSE);
  });

  test('npm pack: the tarball ships exactly the files needed, and installs and imports by name', { timeout: T }, async () => {
    const dir = scratchProject('tarball');
    dirs.push(dir);
    const { stdout } = await run('npm', ['pack', '--silent', '--pack-destination', dir, PKG_DIR], { timeout: 60_000 });
    const tgz = path.join(dir, stdout.trim().split('\n').pop());
    assert.equal(path.basename(tgz), 'chatwire-resumable-0.1.0.tgz');
    await npm(dir, ['install', tgz]);
    const installed = path.join(dir, 'node_modules/@chatwire/resumable');
    assert.ok(!fs.lstatSync(installed).isSymbolicLink(), 'a real copy, not a link');
    assert.deepEqual(fs.readdirSync(installed).sort(), SHIPPED);

    fs.writeFileSync(path.join(dir, 'consumer.mjs'), CONSUMER);
    const out = await run(process.execPath, ['consumer.mjs'], { cwd: dir, timeout: 20_000 });
    const report = JSON.parse(out.stdout.trim());
    assert.deepEqual(report.exports, ['resumable']);
    assert.ok(report.resolved.includes('/node_modules/@chatwire/resumable/'), report.resolved);

    // The types, as a TypeScript user gets them (typescript from the React example).
    const tsc = path.join(REPO, 'client-examples/react/node_modules/typescript/bin/tsc');
    assert.ok(fs.existsSync(tsc), `TypeScript not found at ${tsc}: run npm ci in client-examples/react`);
    fs.writeFileSync(path.join(dir, 'typed.ts'), TYPED_CONSUMER);
    await run(
      process.execPath,
      [tsc, '--noEmit', '--strict', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022', '--skipLibCheck', 'false', 'typed.ts'],
      { cwd: dir, timeout: 60_000 },
    ).catch((e) => {
      throw new Error(`tsc found errors in the typed consumer:\n${e.stdout}${e.stderr}`);
    });
  });
});
