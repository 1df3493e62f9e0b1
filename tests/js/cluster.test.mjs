// Three chatwire nodes (127.0.0.1:8001-8003) on one PostgreSQL and one Redis, behind
// nginx with deploy/nginx/chatwire.conf on 127.0.0.1:8080. Needs nginx, PostgreSQL
// (TEST_POSTGRES_URL) and redis-server (a private one is started on a free port, so
// that the jitter run can restart it); without them it is skipped, except under
// CI=true, where it fails.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomUUID } from 'node:crypto';

import { io } from 'socket.io-client';

import { resumable } from '../../client-examples/resumable/resumable.js';
import { Recorder, closeAllSockets, serverStatus, sleep, startServer, uniqueUser, waitConnected } from './support.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const PG = process.env.TEST_POSTGRES_URL || 'postgres://postgres@127.0.0.1:5432/test';
const NGINX = 'http://127.0.0.1:8080';
const WORDS = Array.from({ length: 80 }, (_, i) => `w${i}`);
const JITTER_CLIENTS = Number(process.env.CHATWIRE_JITTER_CLIENTS || 200);
const TEXT = WORDS.join(' ');

function reachable(url) {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const s = net.connect(Number(port), hostname, () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });
}

function hasNginx() {
  return spawnSync('nginx', ['-v']).status === 0;
}

function hasRedisServer() {
  return spawnSync('redis-server', ['--version']).status === 0;
}

async function freePort() {
  const srv = net.createServer();
  await new Promise((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address();
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

/** A private redis-server, restarted empty on the same port (the worst case: no persistence). */
class PrivateRedis {
  async start() {
    this.port ??= await freePort();
    const args = ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'];
    this.child = spawn('redis-server', args, { stdio: 'ignore' });
    this.exited = new Promise((resolve) => this.child.once('exit', resolve));
    for (let i = 0; i < 200 && !(await reachable(this.url)); i++) await sleep(10);
    if (!(await reachable(this.url))) throw new Error('redis-server did not start');
  }
  get url() {
    return `redis://127.0.0.1:${this.port}`;
  }
  async kill() {
    this.child?.kill('SIGKILL');
    await this.exited;
  }
}

const missing = [];
if (!hasNginx()) missing.push('nginx');
if (!(await reachable(PG))) missing.push(`PostgreSQL at ${PG}`);
if (!hasRedisServer()) missing.push('redis-server');
if (missing.length && process.env.CI === 'true') throw new Error(`CI needs ${missing.join(', ')} for the cluster test`);

const secret = `cluster-${randomUUID()}`;
const nodes = [];
let nginx;
let prefix;
const redis = new PrivateRedis();

function socket(url, token, opts = {}) {
  return io(`${url}/ai`, { auth: { token }, reconnection: false, forceNew: true, withCredentials: true, ...opts });
}

/** The text of the chat:message events a recorder holds. */
function text(rec) {
  return rec.events.filter((e) => e.event === 'chat:message').map((e) => e.data.content).join('');
}

async function connected(s) {
  await waitConnected(s);
  return s;
}

describe('three nodes behind nginx', { skip: missing.length ? `needs ${missing.join(', ')}` : false }, () => {
  before(async () => {
    await redis.start();
    const schema = `cw_js_${randomUUID().replaceAll('-', '').slice(0, 12)}`;
    for (const [i, port] of [8001, 8002, 8003].entries()) {
      const env = { DATABASE_URL: PG, DATABASE_SCHEMA: schema, REDIS_URL: redis.url, NODE_ID: `node${i + 1}`, NODE_LEASE_MS: '1000' };
      // The first node migrates the fresh schema; the others find it done.
      nodes.push(await startServer({ port, secret, env, mockResponse: TEXT, tokenDelayMs: 40 }));
    }
    prefix = fs.mkdtempSync(path.join(os.tmpdir(), 'chatwire-nginx-'));
    nginx = spawn('nginx', ['-p', prefix, '-c', path.join(ROOT, 'deploy/nginx/chatwire.conf'), '-g', 'daemon off;'], { stdio: 'inherit' });
    for (let i = 0; i < 100 && !(await reachable(NGINX)); i++) await sleep(50);
  });
  after(async () => {
    closeAllSockets();
    nginx?.kill('SIGTERM');
    for (const n of nodes) await n.stop();
    await redis.kill();
  });

  test('a second socket joins through nginx, a stop through node 3 stops the answer, a resume elsewhere replays the row', async () => {
    const user = uniqueUser();
    const token = nodes[0].token(user);
    const first = await connected(socket(nodes[0].url, token, { transports: ['websocket'] }));
    const one = new Recorder(first);
    const ack = await first.emitWithAck('chat:start', { message: 'hello cluster' });
    assert.equal(ack.ok, true);
    await one.waitFor('chat:message');

    // Long-polling through nginx: every request of its session must reach one node.
    const second = await connected(socket(NGINX, token, { transports: ['polling'] }));
    const two = new Recorder(second);
    const joined = await second.emitWithAck('chat:join', { conversationId: ack.conversationId });
    assert.equal(joined.ok, true, JSON.stringify(joined));
    await two.waitFor('chat:message');

    const third = await connected(socket(nodes[2].url, token, { transports: ['websocket'] }));
    assert.deepEqual(await third.emitWithAck('chat:stop', { messageId: ack.messageId }), { ok: true, stopped: true });
    const a = (await one.waitFor('chat:stopped')).data;
    const b = (await two.waitFor('chat:stopped')).data;
    assert.equal(a.content, b.content);
    assert.ok(a.content.length > 0 && a.content.length < TEXT.length);

    const replay = new Recorder(third);
    assert.equal((await third.emitWithAck('chat:resume', { messageId: ack.messageId, offset: 0 })).status, 'stopped');
    assert.equal((await replay.waitFor('chat:stopped')).data.content, a.content, 'the stored row is what both sockets got');
    assert.equal(text(one), a.content);
  });

  test(`the jitter run through nginx: ${JITTER_CLIENTS} clients, transports closed every 1-4 s, reconnecting to any node, Redis restarted empty midway`, { timeout: 120_000 }, async () => {
    const opts = { transports: ['websocket'], reconnection: true, reconnectionDelay: 250, reconnectionDelayMax: 1000 };
    let drops = 0;
    let refusedStarts = 0;
    let refusedResumes = 0;
    let started = 0;
    let halfStarted;
    const half = new Promise((resolve) => (halfStarted = resolve));
    const client = async (i) => {
      await sleep(i * 20);
      const user = uniqueUser('cluster-jitter');
      const token = nodes[0].token(user);
      const s = socket(NGINX, token, opts);
      const c = { user, token, text: '', contiguous: true, final: null };
      const done = new Promise((resolve) => {
        c.rs = resumable(s, {
          onChunk(text, meta) {
            if (meta.offset !== c.text.length) c.contiguous = false;
            c.text += text;
          },
          onEnd: (p) => resolve((c.final = { event: 'chat:end', data: p })),
          onStopped: (p) => resolve((c.final = { event: 'chat:stopped', data: p })),
          onError: (p) => p?.messageId && resolve((c.final = { event: 'chat:error', data: p })),
          onResumed: (ack) => ack?.error?.code === 'UNAVAILABLE' && refusedResumes++,
        });
      });
      await waitConnected(s, 30_000);
      // While Redis is down a start is refused with UNAVAILABLE (as documented): ask again.
      let ack;
      for (;;) {
        ack = await new Promise((resolve) => c.rs.start({ message: `jitter ${i}` }, resolve));
        if (ack?.error?.code !== 'UNAVAILABLE') break;
        refusedStarts++;
        await sleep(250);
      }
      assert.equal(ack.ok, true, JSON.stringify(ack));
      c.messageId = ack.messageId;
      if (++started === Math.ceil(JITTER_CLIENTS / 2)) halfStarted();
      const jitter = (async () => {
        while (!c.final) {
          await sleep(1000 + Math.random() * 3000);
          if (!c.final && s.connected) {
            drops++;
            s.io.engine.close();
          }
        }
      })();
      await Promise.all([done, jitter]);
      s.close();
      return c;
    };
    const t0 = Date.now();
    // Midway, every node holds some of the sockets: reconnects spread over the nodes.
    const spread = sleep(4000).then(() => Promise.all(nodes.map((n) => serverStatus(n))));
    // Once half the answers run, Redis dies and comes back empty 1.5 s later.
    const outage = half.then(async () => {
      await redis.kill();
      await sleep(1500);
      await redis.start();
    });
    const clients = await Promise.all(Array.from({ length: JITTER_CLIENTS }, (_, i) => client(i)));
    await outage;
    const midway = (await spread).map((st) => st.connections);
    let intact = 0;
    for (let k = 0; k < clients.length; k += 25) {
      await Promise.all(
        clients.slice(k, k + 25).map(async (c) => {
          const s = await connected(socket(NGINX, c.token, { transports: ['websocket'] }));
          const rec = new Recorder(s);
          const res = await s.emitWithAck('chat:resume', { messageId: c.messageId, offset: 0 });
          const fin = await rec.waitFinal({ timeout: 20_000 });
          const stored = text(rec);
          const ok = res.status === 'complete' && fin.event === 'chat:end' && c.final?.event === 'chat:end' && c.contiguous && c.text === stored && stored === TEXT;
          if (ok) intact++;
          else console.log(`# not intact: ${c.final?.event} ${c.final?.data?.code ?? ''} ${c.text.length}/${TEXT.length} contiguous=${c.contiguous} stored=${res.status}`);
          s.close();
        }),
      );
    }
    console.log(
      `# cluster jitter run: ${JITTER_CLIENTS} clients through nginx on 3 nodes, ${drops} transport drops, ` +
        `sockets per node midway ${midway.join('/')}, Redis restarted empty midway: ${refusedStarts} starts and ` +
        `${refusedResumes} resumes refused UNAVAILABLE and asked again, answers intact=${intact}/${JITTER_CLIENTS}, ${((Date.now() - t0) / 1000).toFixed(1)} s`,
    );
    assert.equal(intact, JITTER_CLIENTS, 'every answer intact');
    // The nodes recovered by themselves: each one reports its Redis and starts answers again.
    for (const n of nodes) {
      const health = await (await fetch(`${n.url}/health`)).json();
      assert.equal(health.redis, 'ok', JSON.stringify(health));
      const s = await connected(socket(n.url, n.token(uniqueUser('after-restart')), { transports: ['websocket'] }));
      const rec = new Recorder(s);
      const ack = await s.emitWithAck('chat:start', { message: 'after the restart' });
      assert.equal(ack.ok, true, JSON.stringify(ack));
      assert.equal((await rec.waitFinal({ timeout: 20_000 })).data.content, TEXT);
      s.close();
    }
    assert.ok(midway.every((n) => n > 0), `every node served sockets: ${midway}`);
  });

  test('kill -9 of the node running an answer: the client resumes through nginx and ends with the stored text', async () => {
    const user = uniqueUser();
    const token = nodes[0].token(user);
    const doomed = await connected(socket(nodes[0].url, token, { transports: ['websocket'] }));
    const rec = new Recorder(doomed);
    const ack = await doomed.emitWithAck('chat:start', { message: 'die midway' });
    await rec.waitFor('chat:message', { from: 14 });
    const gone = new Promise((resolve) => doomed.once('disconnect', resolve));
    nodes[0].child.kill('SIGKILL');
    await gone;
    const head = text(rec);

    const again = await connected(socket(NGINX, token));
    const rest = new Recorder(again);
    const resumed = await again.emitWithAck('chat:resume', { messageId: ack.messageId, offset: head.length });
    assert.equal(resumed.ok, true, JSON.stringify(resumed));
    const error = (await rest.waitFor('chat:error', { timeout: 15_000 })).data;
    assert.equal(error.code, 'UNAVAILABLE');
    assert.equal(error.messageId, ack.messageId);
    const got = head + text(rest);
    assert.ok(TEXT.startsWith(got));

    const late = await connected(socket(NGINX, token));
    const replay = new Recorder(late);
    await late.emitWithAck('chat:resume', { messageId: ack.messageId, offset: 0 });
    await replay.waitFor('chat:error');
    const stored = text(replay);
    assert.equal(stored, got, 'the stored row is exactly what the client got');
    const tokens = (t) => t.split(' ').filter(Boolean).length;
    console.log(`kill -9 through nginx: ${tokens(head)} tokens before the kill, ${tokens(got)} received in all, ${tokens(stored)} stored`);
  });
});
