// Helpers for the HTTP/SSE wire (POST /v1/chat, GET /v1/answers/{id}/events,
// POST /v1/answers/{id}/stop) and a scriptable OpenAI-compatible upstream.
//
// The SSE parser below follows the WHATWG "event stream interpretation" rules
// (lines end in CRLF, LF or CR; `field: value` with one optional space; comments
// start with a colon; a blank line dispatches), but keeps what a browser hides:
// the `id:` field of each event (null when the event had none) and the comments,
// each with the time it arrived.

import http from 'node:http';
import assert from 'node:assert/strict';

import { FINAL_EVENTS, UUID_RE, assertKeys, mockTokens, serverStatus } from './support.mjs';

// ---------------------------------------------------------------------------
// SSE parsing

export class SseParser {
  constructor({ onEvent, onComment }) {
    this.onEvent = onEvent;
    this.onComment = onComment;
    this.buf = '';
    this.skipLf = false;
    this.reset();
  }

  reset() {
    this.type = '';
    this.data = [];
    this.id = null;
    this.retry = null;
    this.fields = 0;
  }

  feed(text) {
    let s = this.buf + text;
    this.buf = '';
    let start = 0;
    for (let i = 0; i < s.length; i++) {
      const ch = s[i];
      if (ch === '\n' && this.skipLf && i === start) {
        // The LF of a CRLF split over two reads.
        this.skipLf = false;
        start = i + 1;
        continue;
      }
      this.skipLf = false;
      if (ch === '\r' || ch === '\n') {
        this.line(s.slice(start, i));
        if (ch === '\r') {
          if (i + 1 < s.length) {
            if (s[i + 1] === '\n') i++;
          } else {
            this.skipLf = true;
          }
        }
        start = i + 1;
      }
    }
    this.buf = s.slice(start);
  }

  line(line) {
    if (line === '') {
      if (this.fields > 0 || this.data.length > 0) {
        const ev = { event: this.type || 'message', rawData: this.data.join('\n'), id: this.id, retry: this.retry, hasData: this.data.length > 0 };
        this.reset();
        this.onEvent(ev);
      } else {
        this.reset();
      }
      return;
    }
    if (line[0] === ':') {
      this.onComment?.(line.slice(1).replace(/^ /, ''));
      return;
    }
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value[0] === ' ') value = value.slice(1);
    this.fields++;
    switch (field) {
      case 'event':
        this.type = value;
        break;
      case 'data':
        this.data.push(value);
        break;
      case 'id':
        if (!value.includes('\0')) this.id = value;
        break;
      case 'retry':
        if (/^\d+$/.test(value)) this.retry = Number(value);
        break;
      default:
        break;
    }
  }
}

/**
 * Reads an SSE response body: every event (with its data parsed as JSON when it is
 * JSON) and every comment, in arrival order, with `waitFor` like support.mjs's Recorder.
 */
export class SseStream {
  constructor(response, controller, t0 = Date.now()) {
    this.response = response;
    this.controller = controller;
    this.status = response.status;
    this.headers = response.headers;
    this.t0 = t0;
    this.events = [];
    this.comments = [];
    this.waiters = [];
    this.closedBy = null; // 'end' (the server ended it), 'abort' (we did), 'error'
    this.error = null;
    this.endedAt = null;
    this.firstEventAt = null;
    this.parser = new SseParser({
      onEvent: (ev) => this.push(ev),
      onComment: (text) => this.comments.push({ text, t: Date.now(), afterEvents: this.events.length }),
    });
    this.ended = this.read();
  }

  async read() {
    const decoder = new TextDecoder();
    const reader = this.response.body.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) {
          this.parser.feed(decoder.decode());
          this.closedBy = 'end';
          break;
        }
        this.parser.feed(decoder.decode(value, { stream: true }));
      }
    } catch (e) {
      if (this.controller?.signal.aborted) {
        this.closedBy = 'abort';
      } else {
        this.closedBy = 'error';
        this.error = e;
      }
    }
    this.endedAt = Date.now();
    this.check(true);
    return this.closedBy;
  }

  push(ev) {
    let data = ev.rawData;
    try {
      data = JSON.parse(ev.rawData);
    } catch {
      /* not JSON: kept as text */
    }
    const e = { event: ev.event, data, id: ev.id, retry: ev.retry, t: Date.now() };
    if (this.firstEventAt === null) this.firstEventAt = e.t;
    this.events.push(e);
    this.onEvent?.(e);
    this.check(false);
  }

  check(ended) {
    for (const w of [...this.waiters]) {
      const i = this.events.findIndex((e, idx) => idx >= w.from && w.pred(e));
      if (i !== -1 || ended || this.endedAt !== null) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        clearTimeout(w.timer);
        if (i !== -1) w.resolve(this.events[i]);
        else w.reject(new Error(`the stream ended (${this.closedBy}${this.error ? `: ${this.error.message}` : ''}) before ${w.what}; got: ${this.describe()}`));
      }
    }
  }

  /** The first event (index >= from) matching `pred` (a name, a list of names or a function). */
  waitFor(pred, { from = 0, timeout = 15_000 } = {}) {
    const fn = typeof pred === 'function' ? pred : Array.isArray(pred) ? (e) => pred.includes(e.event) : (e) => e.event === pred;
    const what = typeof pred === 'function' ? 'a matching event' : JSON.stringify(pred);
    return new Promise((resolve, reject) => {
      const w = { pred: fn, from, resolve, reject, what };
      w.timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        reject(new Error(`timed out after ${timeout} ms waiting for ${what}; got: ${this.describe()}`));
      }, timeout);
      this.waiters.push(w);
      this.check(false);
    });
  }

  waitFinal(opts) {
    return this.waitFor(FINAL_EVENTS, opts);
  }

  /** Resolves with how the body ended; rejects after `timeout`. */
  async waitEnded(timeout = 15_000) {
    let timer;
    const late = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`the response did not end within ${timeout} ms; got: ${this.describe()}`)), timeout);
    });
    try {
      return await Promise.race([this.ended, late]);
    } finally {
      clearTimeout(timer);
    }
  }

  abort() {
    this.controller?.abort();
  }

  names() {
    return this.events.map((e) => e.event);
  }

  /** Events as support.mjs's helpers see them: { event, data }. */
  plain() {
    return this.events.map(({ event, data }) => ({ event, data }));
  }

  describe() {
    const s = JSON.stringify(this.events.map(({ event, data, id }) => ({ event, id, data })));
    return s.length > 4000 ? `${s.slice(0, 4000)}...` : s;
  }
}

// ---------------------------------------------------------------------------
// Requests

const open = new Set();

/** Abort every SSE response still being read (use in afterEach). */
export function abortAllStreams() {
  for (const c of open) c.abort();
  open.clear();
}

function authHeaders(token) {
  return token === undefined || token === null ? {} : { Authorization: `Bearer ${token}` };
}

async function readJson(res) {
  const text = await res.text();
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/**
 * Sends `init` to `url`. An event-stream answer comes back as { status, headers, sse };
 * anything else as { status, headers, body } (JSON-parsed when possible).
 */
export async function request(url, init = {}) {
  const controller = new AbortController();
  open.add(controller);
  const t0 = Date.now();
  const res = await fetch(url, { ...init, signal: controller.signal });
  const type = res.headers.get('content-type') || '';
  if (type.startsWith('text/event-stream')) {
    const sse = new SseStream(res, controller, t0);
    sse.ended.finally(() => open.delete(controller));
    return { status: res.status, headers: res.headers, contentType: type, sse, t0 };
  }
  const body = await readJson(res);
  open.delete(controller);
  return { status: res.status, headers: res.headers, contentType: type, body, t0 };
}

/** POST /v1/chat. `payload` is sent as JSON unless `raw` (a string body) is given. */
export function postChat(server, token, payload, { raw, headers = {} } = {}) {
  return request(`${server.url}/v1/chat`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream', ...authHeaders(token), ...headers },
    body: raw !== undefined ? raw : JSON.stringify(payload),
  });
}

/**
 * GET /v1/answers/{id}/events. options: lastEventId (header), offset (?offset=),
 * queryToken (?token=, then no Authorization header unless `token` is also given).
 */
export function getEvents(server, token, messageId, { lastEventId, offset, queryToken, headers = {} } = {}) {
  const u = new URL(`${server.url}/v1/answers/${encodeURIComponent(messageId)}/events`);
  if (offset !== undefined) u.searchParams.set('offset', String(offset));
  if (queryToken !== undefined) u.searchParams.set('token', queryToken);
  const h = { Accept: 'text/event-stream', ...authHeaders(token), ...headers };
  if (lastEventId !== undefined && lastEventId !== null) h['Last-Event-ID'] = String(lastEventId);
  return request(u.toString(), { method: 'GET', headers: h });
}

/** POST /v1/answers/{id}/stop. */
export function stopAnswer(server, token, messageId) {
  return request(`${server.url}/v1/answers/${encodeURIComponent(messageId)}/stop`, {
    method: 'POST',
    headers: { ...authHeaders(token) },
  });
}

/** GET /v1/status with a token: `{ connections, generations }` registered now. */
export async function serverInfo(server) {
  return serverStatus(server);
}

// ---------------------------------------------------------------------------
// Assertions

/** A refusal before anything started: `status` and a JSON body { ok: false, error: { code, message } }. */
export function assertRefused(res, status, code, label = '') {
  const trail = `${label} ${JSON.stringify({ status: res.status, type: res.contentType, body: res.body ?? res.sse?.describe() })}`;
  assert.equal(res.sse, undefined, `a refusal is not a stream: ${trail}`);
  assert.equal(res.status, status, `HTTP status: ${trail}`);
  assert.match(res.contentType, /^application\/json/, `JSON body: ${trail}`);
  assertKeys(res.body, ['ok', 'error'], [], 'refusal body');
  assert.equal(res.body.ok, false, trail);
  assertKeys(res.body.error, ['code', 'message'], [], 'refusal error');
  assert.equal(res.body.error.code, code, trail);
  assert.equal(typeof res.body.error.message, 'string');
  assert.ok(res.body.error.message.length > 0, 'the error message is not empty');
}

/** A 200 event-stream answer. */
export function assertStream(res, label = '') {
  assert.equal(res.status, 200, `${label} expected a 200 stream, got ${res.status} ${JSON.stringify(res.body)}`);
  assert.ok(res.sse, `${label} expected text/event-stream, got ${res.contentType} ${JSON.stringify(res.body)}`);
}

/** The chat:ack event: exactly { ok: true, conversationId, userMessageId, messageId }. */
export function assertAck(ev) {
  assert.equal(ev?.event, 'chat:ack', `the first event must be chat:ack, got ${JSON.stringify(ev)}`);
  assertKeys(ev.data, ['ok', 'conversationId', 'userMessageId', 'messageId', 'parentMessageId'], [], 'chat:ack');
  assert.equal(ev.data.ok, true);
  assert.match(ev.data.conversationId, UUID_RE);
  assert.equal(typeof ev.data.userMessageId, 'string');
  assert.equal(typeof ev.data.messageId, 'string');
  assert.notEqual(ev.data.userMessageId, ev.data.messageId);
  return ev.data;
}

const END_KEYS = ['messageId', 'conversationId', 'totalTokens', 'model', 'finishReason', 'promptTokens', 'completionTokens', 'content'];
const CHUNK_KEYS = ['content', 'isComplete', 'messageId', 'conversationId', 'seq', 'offset'];

/**
 * The answer part of an SSE stream (events[from..]): chat:message chunks that go on
 * exactly from `offset`, seq from 0, each with SSE id = its offset after it, then
 * exactly one final event (the last event), whose SSE id is the answer's whole length.
 * `final` is the expected final event's name (or a list). Returns { text, final, chunks }.
 */
export function assertAnswerEvents(events, { messageId, conversationId, offset = 0, final = FINAL_EVENTS, label = '' }) {
  const trail = `${label}; events: ${JSON.stringify(events.map(({ event, id, data }) => ({ event, id, data }))).slice(0, 3000)}`;
  let at = offset;
  let text = '';
  let seq = 0;
  let i = 0;
  for (; i < events.length && events[i].event === 'chat:message'; i++) {
    const { data, id } = events[i];
    assertKeys(data, CHUNK_KEYS, [], 'chat:message');
    assert.equal(data.isComplete, false);
    assert.equal(data.messageId, messageId, `chunk of another answer; ${trail}`);
    assert.equal(data.conversationId, conversationId);
    assert.equal(typeof data.content, 'string');
    assert.ok(data.content.length > 0, `empty chunk; ${trail}`);
    assert.equal(data.seq, seq, `seq of chunk ${i}; ${trail}`);
    assert.equal(data.offset, at, `offset of chunk ${i} (no gap, no overlap); ${trail}`);
    at += data.content.length;
    assert.equal(id, String(at), `SSE id of chunk ${i} = UTF-16 offset after it; ${trail}`);
    text += data.content;
    seq++;
  }
  assert.equal(i, events.length - 1, `exactly one final event after the chunks, and nothing after it; ${trail}`);
  const fin = events[i];
  const finals = Array.isArray(final) ? final : [final];
  assert.ok(finals.includes(fin.event), `final event ${fin.event}, expected ${finals}; ${trail}`);
  assert.equal(fin.data.messageId, messageId);
  assert.equal(fin.data.conversationId, conversationId);
  if (fin.event === 'chat:end' || fin.event === 'chat:stopped') {
    if (fin.event === 'chat:end') assertKeys(fin.data, END_KEYS, [], 'chat:end');
    else assertKeys(fin.data, ['messageId', 'conversationId', 'content'], [], 'chat:stopped');
    assert.equal(fin.id, String(fin.data.content.length), `final SSE id = whole length (UTF-16); ${trail}`);
    assert.equal(at, fin.data.content.length, `the chunks reach the end of the answer; ${trail}`);
    assert.equal(text, fin.data.content.slice(offset), `the chunks are the answer from offset ${offset}; ${trail}`);
  } else {
    assertKeys(fin.data, ['message', 'code', 'messageId', 'conversationId'], [], 'chat:error');
    assert.equal(typeof fin.data.message, 'string');
    assert.ok(fin.data.message.length > 0);
    assert.equal(fin.id, String(at), `final SSE id = whole length (UTF-16); ${trail}`);
  }
  return { text, final: fin, chunks: seq, end: at };
}

/**
 * A whole POST /v1/chat stream ending in chat:end, checked event by event.
 * expect: { text, userMessage, newConversation, conversationId?, model? }.
 * Returns { ack, conversationId, messageId, userMessageId, end }.
 */
export function assertSseChat(sse, expect) {
  const { text, userMessage, newConversation, model = 'gpt-4' } = expect;
  const events = sse.events;
  const trail = `events: ${sse.describe().slice(0, 3000)}`;
  const ack = assertAck(events[0]);
  if (expect.conversationId) assert.equal(ack.conversationId, expect.conversationId);
  let i = 1;
  if (newConversation) {
    assert.equal(events[i]?.event, 'chat:conversation', `chat:conversation after the ack; ${trail}`);
    assert.deepEqual(events[i].data, { conversationId: ack.conversationId });
    i++;
  }
  assert.equal(events[i]?.event, 'chat:user-message', `chat:user-message; ${trail}`);
  assert.deepEqual(events[i].data, {
    messageId: ack.userMessageId,
    content: userMessage,
    conversationId: ack.conversationId,
    parentMessageId: ack.parentMessageId,
  });
  if (newConversation) assert.equal(ack.parentMessageId, null, 'a first question has no parent');
  i++;
  const answer = assertAnswerEvents(events.slice(i), {
    messageId: ack.messageId,
    conversationId: ack.conversationId,
    final: 'chat:end',
    label: 'POST /v1/chat',
  });
  assert.ok(answer.chunks > 0, `at least one chunk; ${trail}`);
  const end = answer.final.data;
  assert.equal(end.content, answer.text, 'chat:end.content === the chunks');
  assert.equal(end.content, text, 'chat:end.content === the model answer');
  assert.equal(end.model, model);
  assert.equal(end.finishReason, 'stop');
  assert.equal(end.completionTokens, mockTokens(text).length);
  assert.ok(Number.isInteger(end.promptTokens) && end.promptTokens >= 0);
  assert.equal(end.totalTokens, end.promptTokens + end.completionTokens);
  assert.equal(sse.closedBy, 'end', 'the server ended the response after the final event');
  return { ack, conversationId: ack.conversationId, messageId: ack.messageId, userMessageId: ack.userMessageId, end };
}

/** Whole stored answer through GET events from offset 0: { text, final, events }. */
export async function replay(server, token, ack, { final = FINAL_EVENTS, timeout = 15_000 } = {}) {
  const res = await getEvents(server, token, ack.messageId);
  assertStream(res, 'replay');
  await res.sse.waitEnded(timeout);
  const got = assertAnswerEvents(res.sse.events, { messageId: ack.messageId, conversationId: ack.conversationId, final, label: 'replay' });
  return { ...got, events: res.sse.events };
}

export function percentile(sorted, p) {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

// ---------------------------------------------------------------------------
// A scriptable OpenAI-compatible upstream on loopback (POST /v1/chat/completions,
// streaming; GET /v1/models), for answers that depend on the question and for
// bursty delivery. Point a server at it with OPENAI_BASE_URL=<upstream.baseUrl>.

/**
 * options:
 *   answer(body) -> string     the answer's text (default: echoes the last user message)
 *   burst                      tokens written in one write (default 1)
 *   gapMs                      pause between writes (default 10)
 *   firstDelayMs               pause before the first token (default 0)
 * Returns { baseUrl, requests, close() }.
 */
export async function startUpstream(options = {}) {
  const {
    answer = (body) => `echo ${[...(body.messages ?? [])].reverse().find((m) => m.role === 'user')?.content ?? ''}`,
    burst = 1,
    gapMs = 10,
    firstDelayMs = 0,
  } = options;
  const requests = [];
  const sockets = new Set();
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://x');
    if (req.method === 'GET' && url.pathname.endsWith('/models')) {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ object: 'list', data: [{ id: 'gpt-4', object: 'model', owned_by: 'js-upstream' }] }));
      return;
    }
    if (req.method !== 'POST' || !url.pathname.endsWith('/chat/completions')) {
      res.writeHead(404, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ error: { message: 'not found', type: 'invalid_request_error', code: null, param: null } }));
      return;
    }
    let raw = '';
    for await (const chunk of req) raw += chunk;
    const body = JSON.parse(raw);
    requests.push(body);
    const model = body.model ?? 'gpt-4';
    const created = Math.floor(Date.now() / 1000);
    const frame = (delta, finish) =>
      `data: ${JSON.stringify({ id: 'chatcmpl-js', object: 'chat.completion.chunk', created, model, choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
    const tokens = mockTokens(answer(body));
    res.socket?.setNoDelay(true);
    res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
    let gone = false;
    res.on('close', () => (gone = true));
    const pause = (ms) => new Promise((r) => setTimeout(r, ms));
    if (firstDelayMs) await pause(firstDelayMs);
    res.write(frame({ role: 'assistant', content: '' }, null));
    for (let i = 0; i < tokens.length && !gone; i += burst) {
      if (i > 0) await pause(gapMs);
      res.write(tokens.slice(i, i + burst).map((t) => frame({ content: t }, null)).join(''));
    }
    if (gone) return;
    const prompt = (body.messages ?? []).reduce((n, m) => n + mockTokens(String(m.content ?? '')).length, 0);
    let tail = frame({}, 'stop');
    if (body.stream_options?.include_usage) {
      tail += `data: ${JSON.stringify({ id: 'chatcmpl-js', object: 'chat.completion.chunk', created, model, choices: [], usage: { prompt_tokens: prompt, completion_tokens: tokens.length, total_tokens: prompt + tokens.length } })}\n\n`;
    }
    res.end(`${tail}data: [DONE]\n\n`);
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address();
  return {
    baseUrl: `http://127.0.0.1:${port}/v1`,
    requests,
    close: () =>
      new Promise((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}
