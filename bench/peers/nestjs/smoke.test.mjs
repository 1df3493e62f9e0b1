// Smoke test of the NestJS peer: the built peer (dist/main.js) against chatwire's
// OpenAI-compatible mock upstream, driven by socket.io-client.
//
//   npm run build && npm test
//
// CHATWIRE_BIN overrides the mock binary (default: ../../../target/debug/chatwire).
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { io } from 'socket.io-client';

const require = createRequire(import.meta.url);
const { JwtService } = require('@nestjs/jwt');
const Database = require('better-sqlite3');

const here = dirname(fileURLToPath(import.meta.url));
const CHATWIRE_BIN = process.env.CHATWIRE_BIN ?? resolve(here, '../../../target/debug/chatwire');
const JWT_SECRET = 'smoke-test-secret';
const MOCK_TEXT = 'hello from the mock';

const children = [];
const tempDirs = [];

function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once('error', rej);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

/** Spawns a process and resolves once a line of its output contains `listening`. */
function startProcess(name, command, args, env) {
  return new Promise((res, rej) => {
    const child = spawn(command, args, {
      cwd: here,
      env: { ...process.env, NO_COLOR: '1', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.push(child);
    let output = '';
    const timer = setTimeout(() => rej(new Error(`${name} did not start:\n${output}`)), 20000);
    const onData = (buf) => {
      output += buf.toString();
      if (/listening/.test(output)) {
        clearTimeout(timer);
        res(child);
      }
    };
    // Keep draining so a chatty child never blocks on a full pipe.
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(timer);
      rej(new Error(`${name} exited with ${code}:\n${output}`));
    });
  });
}

/** A mock upstream and a peer pointed at it; returns the peer's /ai URL and database path. */
async function startPair(mockEnv) {
  assert.ok(existsSync(CHATWIRE_BIN), `mock binary not found at ${CHATWIRE_BIN} (set CHATWIRE_BIN)`);
  const mockPort = await freePort();
  await startProcess('mock upstream', CHATWIRE_BIN, ['mock-upstream', '--port', String(mockPort)], mockEnv);
  const dir = mkdtempSync(join(tmpdir(), 'nestjs-peer-'));
  tempDirs.push(dir);
  const databasePath = join(dir, 'peer.db');
  const port = await freePort();
  await startProcess('peer', process.execPath, ['dist/main.js'], {
    PORT: String(port),
    HOST: '127.0.0.1',
    JWT_SECRET,
    OPENAI_BASE_URL: `http://127.0.0.1:${mockPort}/v1`,
    OPENAI_API_KEY: 'mock-key',
    DATABASE_PATH: databasePath,
    CORS_ORIGIN: 'http://localhost:5173',
  });
  return { url: `http://127.0.0.1:${port}/ai`, databasePath };
}

function token(payload = { sub: 'u1' }, secret = JWT_SECRET) {
  return new JwtService({ secret }).sign(payload);
}

function connect(url, auth, opts = {}) {
  return io(url, { auth, transports: ['websocket'], reconnection: false, forceNew: true, ...opts });
}

const FINAL = ['chat:end', 'chat:stopped', 'chat:error'];
const EVENTS = ['chat:conversation', 'chat:user-message', 'chat:message', ...FINAL];

/**
 * Emits chat:start (with an ack callback) as soon as the socket connects, or at once if
 * it already is, and records every chat event up to the final one. Resolves when both
 * the final event and the ack have arrived; `ackAt` is how many events preceded the ack.
 */
function runChat(socket, payload, { onMessage } = {}) {
  return new Promise((res, rej) => {
    const events = [];
    let ack;
    let ackAt = -1;
    let done = false;
    const timer = setTimeout(() => rej(new Error(`no final event or ack; got ${JSON.stringify({ events, ack })}`)), 15000);
    const finish = () => {
      if (done && ackAt >= 0) {
        clearTimeout(timer);
        res({ events, ack, ackAt });
      }
    };
    const listeners = EVENTS.map((name) => {
      const fn = (data) => {
        events.push({ name, data });
        if (name === 'chat:message' && onMessage) onMessage(data, socket);
        if (FINAL.includes(name)) {
          for (const [n, f] of listeners) socket.off(n, f);
          done = true;
          finish();
        }
      };
      socket.on(name, fn);
      return [name, fn];
    });
    const start = () =>
      socket.emit('chat:start', payload, (a) => {
        ack = a;
        ackAt = events.length;
        finish();
      });
    if (socket.connected) start();
    else socket.once('connect', start);
    socket.once('connect_error', (err) => {
      clearTimeout(timer);
      rej(err);
    });
  });
}

function connectError(url, auth) {
  return new Promise((res, rej) => {
    const socket = connect(url, auth);
    const timer = setTimeout(() => rej(new Error('neither connect nor connect_error')), 10000);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.close();
      rej(new Error('connected with a bad token'));
    });
    socket.once('connect_error', (err) => {
      clearTimeout(timer);
      socket.close();
      res(err);
    });
  });
}

function assertChunks(events, messageId, conversationId) {
  const chunks = events.filter((e) => e.name === 'chat:message').map((e) => e.data);
  let text = '';
  chunks.forEach((c, i) => {
    assert.deepEqual(Object.keys(c).sort(), ['content', 'conversationId', 'isComplete', 'messageId', 'offset', 'seq']);
    assert.equal(c.isComplete, false);
    assert.equal(c.messageId, messageId);
    assert.equal(c.conversationId, conversationId);
    assert.equal(c.seq, i);
    assert.equal(c.offset, text.length);
    text += c.content;
  });
  return text;
}

after(() => {
  for (const child of children) if (child.exitCode === null) child.kill('SIGTERM');
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

describe('NestJS peer against the mock upstream', () => {
  let peer;
  before(async () => {
    peer = await startPair({ MOCK_RESPONSE: MOCK_TEXT, MOCK_TOKEN_DELAY_MS: '5' });
  });

  test('chat:start on connect streams the mock answer, acks, and stores both messages', async () => {
    const socket = connect(peer.url, { token: token() });
    try {
      const { events, ack, ackAt } = await runChat(socket, { message: 'Hello', maxTokens: 64, temperature: 0.3 });
      const names = events.map((e) => e.name);
      assert.equal(names[0], 'chat:conversation');
      assert.equal(names[1], 'chat:user-message');
      assert.equal(names.at(-1), 'chat:end');
      assert.ok(names.slice(2, -1).length > 0, 'at least one chat:message');
      assert.ok(names.slice(2, -1).every((n) => n === 'chat:message'), names.join(','));

      const { conversationId } = events[0].data;
      assert.match(conversationId, /^[0-9a-f-]{36}$/);
      const userMessage = events[1].data;
      assert.equal(userMessage.content, 'Hello');
      assert.equal(userMessage.conversationId, conversationId);

      const end = events.at(-1).data;
      assert.deepEqual(ack, { ok: true, conversationId, userMessageId: userMessage.messageId, messageId: end.messageId });
      assert.ok(ackAt <= names.indexOf('chat:message'), `ack before streaming (ack after ${ackAt} events)`);
      assert.equal(assertChunks(events, end.messageId, conversationId), MOCK_TEXT);
      assert.equal(end.content, MOCK_TEXT);
      assert.equal(end.conversationId, conversationId);
      assert.equal(end.model, 'gpt-4');
      assert.equal(end.finishReason, 'stop');
      assert.equal(end.completionTokens, 4);
      assert.equal(typeof end.promptTokens, 'number');
      assert.equal(end.totalTokens, end.promptTokens + end.completionTokens);

      // Next turn in the same conversation, right after chat:end: no chat:conversation.
      const second = await runChat(socket, { message: 'Again', conversationId, userId: 'u1' });
      const names2 = second.events.map((e) => e.name);
      assert.equal(names2[0], 'chat:user-message');
      assert.equal(names2.at(-1), 'chat:end');
      assert.equal(second.events.at(-1).data.content, MOCK_TEXT);
      assert.equal(second.ack.conversationId, conversationId);

      const db = new Database(peer.databasePath, { readonly: true });
      try {
        const rows = db
          .prepare('SELECT id, role, content, finishReason, completionTokens FROM messages WHERE conversationId = ? ORDER BY createdAt')
          .all(conversationId);
        assert.deepEqual(
          rows.map((r) => [r.role, r.content, r.finishReason]),
          [
            ['user', 'Hello', null],
            ['assistant', MOCK_TEXT, 'stop'],
            ['user', 'Again', null],
            ['assistant', MOCK_TEXT, 'stop'],
          ],
        );
        assert.equal(rows[1].id, end.messageId);
        assert.equal(rows[1].completionTokens, 4);
        const conv = db.prepare('SELECT userId FROM conversations WHERE id = ?').get(conversationId);
        assert.equal(conv.userId, 'u1');
      } finally {
        db.close();
      }
    } finally {
      socket.close();
    }
  });

  test('a bad token is refused with connect_error "unauthorized"', async () => {
    const wrongSecret = await connectError(peer.url, { token: token({ sub: 'u1' }, 'not-the-secret') });
    assert.equal(wrongSecret.message, 'unauthorized');
    const garbage = await connectError(peer.url, { token: 'not.a.jwt' });
    assert.equal(garbage.message, 'unauthorized');
    const none = await connectError(peer.url, {});
    assert.equal(none.message, 'unauthorized');
  });

  test('invalid requests get chat:error with a code, and the socket stays usable', async () => {
    const socket = connect(peer.url, { token: token() });
    try {
      const empty = await runChat(socket, { message: '' });
      assert.deepEqual(empty.events.map((e) => e.name), ['chat:error']);
      assert.equal(empty.events[0].data.code, 'INVALID_PAYLOAD');
      assert.equal(empty.ack.ok, false);
      assert.equal(empty.ack.error.code, 'INVALID_PAYLOAD');

      const forbidden = await runChat(socket, { message: 'hi', userId: 'someone-else' });
      assert.equal(forbidden.events[0].data.code, 'FORBIDDEN');

      const missing = await runChat(socket, { message: 'hi', conversationId: '00000000-0000-4000-8000-000000000000' });
      assert.equal(missing.events[0].data.code, 'NOT_FOUND');

      const unknownModel = await runChat(socket, { message: 'hi', model: 'unknown-model' });
      assert.equal(unknownModel.events.at(-1).name, 'chat:error');
      assert.equal(unknownModel.events.at(-1).data.code, 'INVALID_MODEL');

      const ok = await runChat(socket, { message: 'still there?' });
      assert.equal(ok.events.at(-1).name, 'chat:end');
      assert.equal(ok.events.at(-1).data.content, MOCK_TEXT);
    } finally {
      socket.close();
    }
  });
});

describe('chat:stop', () => {
  let peer;
  before(async () => {
    const words = Array.from({ length: 200 }, (_, i) => `w${i}`).join(' ');
    peer = await startPair({ MOCK_RESPONSE: words, MOCK_TOKEN_DELAY_MS: '20' });
  });

  test('stops the stream, emits chat:stopped with the partial answer, and stores it', async () => {
    const socket = connect(peer.url, { token: token() });
    try {
      let stopAck;
      const { events } = await runChat(
        socket,
        { message: 'long one' },
        {
          onMessage: (data, s) => {
            if (data.seq === 2) s.emit('chat:stop', { messageId: data.messageId }, (a) => (stopAck = a));
          },
        },
      );
      const last = events.at(-1);
      assert.equal(last.name, 'chat:stopped');
      assert.ok(!events.some((e) => e.name === 'chat:end'));
      const text = assertChunks(events, last.data.messageId, last.data.conversationId);
      assert.equal(last.data.content, text);
      assert.ok(text.length > 0 && text.split(' ').length < 200, `partial answer expected, got ${text.length} chars`);
      assert.deepEqual(stopAck, { ok: true, stopped: true });

      const db = new Database(peer.databasePath, { readonly: true });
      try {
        const row = db.prepare('SELECT content, finishReason FROM messages WHERE id = ?').get(last.data.messageId);
        assert.deepEqual(row, { content: text, finishReason: 'stopped' });
      } finally {
        db.close();
      }

      // Nothing running any more: a second stop says so.
      const again = await socket.timeout(5000).emitWithAck('chat:stop');
      assert.deepEqual(again, { ok: true, stopped: false });
    } finally {
      socket.close();
    }
  });
});
