// Shared helpers for the chatwire end-to-end suite.
//
// Each test file starts its own `chatwire serve` child process (with the mock
// upstream configured for that file), mints tokens the way a NestJS app does
// (`JwtService` from @nestjs/jwt, HS256) and talks to the `/ai` namespace with the
// official socket.io-client.

import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';

import { JwtService } from '@nestjs/jwt';
import { io } from 'socket.io-client';

const HERE = path.dirname(fileURLToPath(import.meta.url));

export const BIN = process.env.CHATWIRE_BIN
  ? path.resolve(process.env.CHATWIRE_BIN)
  : path.resolve(HERE, '../../target/debug/chatwire');

export const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** A user id nobody else in the run uses. */
export function uniqueUser(prefix = 'user') {
  return `${prefix}-${randomUUID()}`;
}

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

/**
 * The tokens the built-in mock upstream streams for `text`: each token is a word
 * plus the whitespace that follows it.
 */
export function mockTokens(text) {
  return text.match(/\S+\s*/g) ?? [];
}

/**
 * Asserts that streamed `chunks` are `text`'s mock tokens in order, each chunk one or
 * more whole tokens: a reader that fell behind gets the deltas that waited joined into
 * one frame, which is the protocol's own behaviour under load, never a split token.
 */
export function assertWholeTokens(chunks, text) {
  assert.equal(chunks.join(''), text);
  const tokens = mockTokens(text);
  let i = 0;
  for (const chunk of chunks) {
    let joined = '';
    while (joined.length < chunk.length && i < tokens.length) joined += tokens[i++];
    assert.equal(joined, chunk, `a chunk that is not whole tokens: ${JSON.stringify(chunk)}`);
  }
  assert.equal(i, tokens.length);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export { sleep };

const running = new Set();
process.on('exit', () => {
  for (const child of running) {
    try {
      child.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
});

/**
 * Start `chatwire serve` and wait until GET /health answers 200 {"status":"ok"}.
 *
 * options: mockResponse, tokenDelayMs, firstTokenDelayMs, env (extra variables), port
 * and secret (several nodes of one cluster share a secret, on ports of their own).
 * Returns { url, port, secret, jwt, token(), stop(), log(), child }.
 */
export async function startServer(options = {}) {
  const {
    mockResponse = 'Hello brave new world',
    tokenDelayMs = 5,
    firstTokenDelayMs = 20,
    env: extraEnv = {},
  } = options;

  if (!fs.existsSync(BIN)) {
    throw new Error(
      `chatwire binary not found at ${BIN}; build it (cargo build) or set CHATWIRE_BIN`,
    );
  }

  const port = options.port ?? (await freePort());
  const secret = options.secret ?? `test-secret-${randomUUID()}`;
  const tmpdir = fs.mkdtempSync(path.join(os.tmpdir(), 'chatwire-js-'));
  const databaseUrl =
    process.env.DATABASE_URL || `sqlite://${path.join(tmpdir, 'chatwire.db')}?mode=rwc`;

  // A clean environment: no real upstream, no stray JWT, limit or mock setting
  // from the developer's shell may change what is tested.
  const env = {};
  for (const k of ['PATH', 'HOME', 'TMPDIR', 'TZ', 'LANG', 'LC_ALL', 'SYSTEMROOT']) {
    if (process.env[k] !== undefined) env[k] = process.env[k];
  }
  Object.assign(env, {
    PORT: String(port),
    HOST: '127.0.0.1',
    JWT_SECRET: secret,
    DATABASE_URL: databaseUrl,
    MOCK_RESPONSE: mockResponse,
    MOCK_TOKEN_DELAY_MS: String(tokenDelayMs),
    MOCK_FIRST_TOKEN_DELAY_MS: String(firstTokenDelayMs),
    RUST_LOG: process.env.CHATWIRE_TEST_RUST_LOG || 'warn',
    // Every test client comes from 127.0.0.1: the per-address cap would count the
    // jitter run's 400 clients as one attacker.
    MAX_CONNECTIONS_PER_IP: '100000',
    // A loaded test machine's scheduling lag is no overload (the overload tests set
    // their own limits).
    OVERLOAD_LAG_MS: '0',
    ...extraEnv,
  });

  // cwd is the scratch directory so that no `.env` file of the checkout is read.
  const child = spawn(BIN, ['serve'], { env, cwd: tmpdir, stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);

  // Keep the tail of the server's output for failure messages.
  let output = '';
  const keep = (chunk) => {
    output += chunk.toString();
    if (output.length > 64 * 1024) output = output.slice(-64 * 1024);
    if (process.env.CHATWIRE_TEST_VERBOSE) process.stderr.write(chunk);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);

  let exited = null;
  const exitPromise = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      exited = { code, signal };
      running.delete(child);
      resolve(exited);
    });
  });

  const base = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 60_000;
  let lastProblem = 'no answer yet';
  for (;;) {
    if (exited) {
      throw new Error(
        `chatwire exited before becoming healthy (${JSON.stringify(exited)}); output:\n${output}`,
      );
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`chatwire not healthy after 60 s (${lastProblem}); output:\n${output}`);
    }
    try {
      const res = await fetch(`${base}/health`);
      const body = await res.text();
      if (res.status === 200) {
        const json = JSON.parse(body);
        if (json.status === 'ok') break;
        lastProblem = `status field ${JSON.stringify(json.status)}`;
      } else {
        lastProblem = `HTTP ${res.status} ${body}`;
      }
    } catch (e) {
      lastProblem = e.message;
    }
    await sleep(50);
  }

  const jwt = new JwtService({ secret, signOptions: { expiresIn: '1h' } });

  return {
    url: base,
    port,
    secret,
    jwt,
    /** A token for `sub` (string or number), signed like a NestJS AuthService does. */
    token(sub, extra = {}) {
      return jwt.sign({ sub, email: `${sub}@example.test`, ...extra });
    },
    log: () => output,
    child,
    async stop() {
      if (!exited) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => {
          if (!exited) child.kill('SIGKILL');
        }, 5000);
        await exitPromise;
        clearTimeout(timer);
      }
      fs.rmSync(tmpdir, { recursive: true, force: true });
    },
  };
}

/**
 * GET /v1/status with a token of the server's: `{ connections, generations }`, the live
 * counts (not public: `GET /` tells only the name and version).
 */
export async function serverStatus(server) {
  const res = await fetch(`${server.url}/v1/status`, { headers: { Authorization: `Bearer ${server.token('status-reader')}` } });
  if (res.status !== 200) throw new Error(`GET /v1/status: HTTP ${res.status} ${await res.text()}`);
  return res.json();
}

// ---------------------------------------------------------------------------
// socket.io-client helpers

const openSockets = new Set();

/**
 * A socket to the `/ai` namespace. Not yet connected when returned if
 * `autoConnect: false` is passed; by default it starts connecting at once.
 */
export function makeSocket(server, token, opts = {}) {
  const socket = io(`${server.url}/ai`, {
    auth: token === undefined ? undefined : { token },
    transports: ['websocket'],
    reconnection: false,
    forceNew: true,
    timeout: 10_000,
    ...opts,
  });
  openSockets.add(socket);
  return socket;
}

/** Close every socket made by makeSocket so far (use in afterEach). */
export function closeAllSockets() {
  for (const s of openSockets) s.close();
  openSockets.clear();
}

/** Resolve on `connect`, reject on `connect_error`. */
export function waitConnected(socket, ms = 10_000) {
  if (socket.connected) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('connect timed out')), ms);
    socket.once('connect', () => {
      clearTimeout(timer);
      resolve();
    });
    socket.once('connect_error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/** Connect and wait. */
export async function connect(server, token, opts = {}) {
  const socket = makeSocket(server, token, opts);
  await waitConnected(socket);
  return socket;
}

/**
 * Records every incoming event of a socket, in arrival order, and lets a test
 * wait for one. Attach before emitting.
 */
export class Recorder {
  constructor(socket) {
    this.socket = socket;
    this.events = [];
    /** chat:title announcements, kept apart: they come after an answer, outside its flow. */
    this.titles = [];
    this.waiters = [];
    this.listener = (event, ...args) => {
      // chat:active is announced on every connect, outside any chat's flow.
      if (event === 'chat:active') return;
      if (event === 'chat:title') {
        this.titles.push(args[0]);
        return;
      }
      this.events.push({ event, data: args[0] });
      this.check();
    };
    socket.onAny(this.listener);
  }

  /** Put a marker (e.g. an ack) into the event list. */
  mark(event, data) {
    this.events.push({ event, data });
    this.check();
  }

  check() {
    for (const w of [...this.waiters]) {
      const i = this.events.findIndex((e, idx) => idx >= w.from && w.pred(e));
      if (i !== -1) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        clearTimeout(w.timer);
        w.resolve(this.events[i]);
      }
    }
  }

  /**
   * Wait for the first event (at index >= from) matching `pred`, which is an event
   * name or an array of names or a function of { event, data }.
   */
  waitFor(pred, { from = 0, timeout = 15_000 } = {}) {
    const fn =
      typeof pred === 'function'
        ? pred
        : Array.isArray(pred)
          ? (e) => pred.includes(e.event)
          : (e) => e.event === pred;
    return new Promise((resolve, reject) => {
      const w = { pred: fn, from, resolve };
      w.timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        reject(
          new Error(
            `timed out after ${timeout} ms waiting for ${
              typeof pred === 'function' ? 'a matching event' : JSON.stringify(pred)
            }; got: ${this.describe()}`,
          ),
        );
      }, timeout);
      this.waiters.push(w);
      this.check();
    });
  }

  /** Wait for the final event of a generation (chat:end, chat:stopped or chat:error). */
  waitFinal(opts) {
    return this.waitFor(FINAL_EVENTS, opts);
  }

  names() {
    return this.events.map((e) => e.event);
  }

  describe() {
    const s = JSON.stringify(this.events);
    return s.length > 4000 ? `${s.slice(0, 4000)}...` : s;
  }

  clear() {
    this.events = [];
  }

  detach() {
    this.socket.offAny(this.listener);
  }
}

export const FINAL_EVENTS = ['chat:end', 'chat:stopped', 'chat:error'];

/** Emit chat:start and return the events up to and including the final one. */
export async function chat(socket, payload, { timeout = 20_000 } = {}) {
  const rec = new Recorder(socket);
  socket.emit('chat:start', payload);
  try {
    await rec.waitFinal({ timeout });
  } finally {
    rec.detach();
  }
  return rec.events;
}

function keysOf(obj) {
  return Object.keys(obj).sort();
}

/** Assert that `obj` has exactly `keys` (plus any of `optional`). */
export function assertKeys(obj, keys, optional = [], label = 'payload') {
  assert.ok(obj && typeof obj === 'object', `${label} must be an object, got ${JSON.stringify(obj)}`);
  const got = keysOf(obj).filter((k) => !optional.includes(k));
  assert.deepEqual(got, [...keys].sort(), `${label} fields: ${JSON.stringify(obj)}`);
}

/** Assert a chat:error payload: { code, message, messageId?, conversationId? }. */
export function assertError(ev, code) {
  assert.equal(ev.event, 'chat:error', `expected chat:error ${code}, got ${JSON.stringify(ev)}`);
  assertKeys(ev.data, ['code', 'message'], ['messageId', 'conversationId'], 'chat:error');
  assert.equal(ev.data.code, code, `chat:error code: ${JSON.stringify(ev.data)}`);
  assert.equal(typeof ev.data.message, 'string');
  assert.ok(ev.data.message.length > 0, 'chat:error message must not be empty');
}

/**
 * Check one complete chat:start -> chat:end exchange against the protocol.
 *
 * events: what the socket received, in order (only this exchange).
 * expect: { text, userMessage, newConversation, conversationId?, model? }
 * Returns { conversationId, userMessageId, messageId, end }.
 */
export function assertCompleteStream(events, expect) {
  const { text, userMessage, newConversation, model = 'gpt-4' } = expect;
  const names = events.map((e) => e.event);
  const trail = `events: ${JSON.stringify(events).slice(0, 3000)}`;

  let i = 0;
  let conversationId = expect.conversationId;
  if (newConversation) {
    assert.equal(names[i], 'chat:conversation', `first event must be chat:conversation; ${trail}`);
    assertKeys(events[i].data, ['conversationId'], [], 'chat:conversation');
    assert.match(events[i].data.conversationId, UUID_RE);
    if (conversationId !== undefined) assert.equal(events[i].data.conversationId, conversationId);
    conversationId = events[i].data.conversationId;
    i++;
  } else {
    assert.ok(!names.includes('chat:conversation'), `no chat:conversation expected; ${trail}`);
  }

  assert.equal(names[i], 'chat:user-message', `expected chat:user-message at ${i}; ${trail}`);
  const um = events[i].data;
  assertKeys(um, ['messageId', 'content', 'conversationId', 'parentMessageId'], [], 'chat:user-message');
  assert.equal(typeof um.messageId, 'string');
  assert.ok(um.messageId.length > 0);
  assert.equal(um.content, userMessage);
  assert.equal(um.conversationId, conversationId);
  i++;

  let acc = '';
  let seq = 0;
  let messageId;
  while (names[i] === 'chat:message') {
    const m = events[i].data;
    assertKeys(
      m,
      ['content', 'isComplete', 'messageId', 'conversationId', 'seq', 'offset'],
      [],
      'chat:message',
    );
    assert.equal(m.isComplete, false);
    assert.equal(typeof m.content, 'string');
    assert.ok(m.content.length > 0, `chat:message content must not be empty: ${JSON.stringify(m)}`);
    assert.equal(m.conversationId, conversationId);
    if (messageId === undefined) messageId = m.messageId;
    assert.equal(m.messageId, messageId, 'every chunk carries the same messageId');
    assert.equal(m.seq, seq, `seq of chunk ${seq}: ${JSON.stringify(m)}`);
    assert.equal(m.offset, acc.length, `offset of chunk ${seq}: ${JSON.stringify(m)}`);
    acc += m.content;
    seq++;
    i++;
  }
  assert.ok(seq > 0, `expected at least one chat:message; ${trail}`);

  assert.equal(names[i], 'chat:end', `expected chat:end after the chunks; ${trail}`);
  assert.equal(i, events.length - 1, `chat:end must be the last event; ${trail}`);
  const end = events[i].data;
  assertKeys(
    end,
    [
      'messageId',
      'conversationId',
      'totalTokens',
      'model',
      'finishReason',
      'promptTokens',
      'completionTokens',
      'content',
    ],
    [],
    'chat:end',
  );
  assert.equal(end.messageId, messageId);
  assert.notEqual(end.messageId, um.messageId, 'assistant and user messages have distinct ids');
  assert.equal(end.conversationId, conversationId);
  assert.equal(end.model, model);
  assert.equal(end.finishReason, 'stop');
  assert.equal(end.content, acc, 'chat:end.content === concatenated chunks');
  assert.equal(end.content, text, 'chat:end.content === MOCK_RESPONSE');
  assert.ok(Number.isInteger(end.promptTokens) && end.promptTokens >= 0, 'promptTokens');
  assert.equal(end.completionTokens, mockTokens(text).length, 'completionTokens = mock tokens');
  assert.equal(end.totalTokens, end.promptTokens + end.completionTokens, 'totalTokens');

  return { conversationId, userMessageId: um.messageId, messageId, end, chunks: seq };
}
