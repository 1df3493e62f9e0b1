// Clients written for the Void, canyon and WADI servers, as their READMEs write them,
// with only the URL changed: node's `ws` package against the debug binary. Each test
// prints its transcript (sent, received, stored row) with CHATWIRE_TEST_VERBOSE set.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import WebSocket from 'ws';

import { startServer, uniqueUser, assertWholeTokens } from './support.mjs';

const TEXT = 'Hello from the dialect tests';

/** A `ws` client that records every message and resolves waits on them. */
function open(url) {
  const ws = new WebSocket(url);
  const received = [];
  const waiters = [];
  ws.on('message', (data) => {
    const msg = JSON.parse(data.toString());
    received.push(msg);
    for (const w of [...waiters]) if (w.match(msg)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(msg); }
  });
  const closed = new Promise((resolve) => ws.on('close', (code) => resolve(code)));
  const opened = new Promise((resolve, reject) => { ws.on('open', resolve); ws.on('error', reject); });
  return {
    ws, received, closed, opened,
    send(msg) { ws.send(typeof msg === 'string' ? msg : JSON.stringify(msg)); },
    until(match) {
      const found = received.find(match);
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('no such message within 10 s')), 10_000);
        waiters.push({ match, resolve: (m) => { clearTimeout(timer); resolve(m); } });
      });
    },
  };
}

async function storedMessage(server, token, id) {
  const res = await fetch(`${server.url}/v1/messages/${id}`, { headers: { Authorization: `Bearer ${token}` } });
  assert.equal(res.status, 200);
  return res.json();
}

function transcript(name, sent, received, row) {
  if (process.env.CHATWIRE_TEST_VERBOSE) console.log(JSON.stringify({ name, sent, received, row }, null, 1));
}

describe('raw WebSocket dialects through node ws', () => {
  let server;
  before(async () => { server = await startServer({ mockResponse: TEXT }); });
  after(() => server.stop());

  test('Void: authenticate, provider_list, a streamed provider_request', async () => {
    const user = uniqueUser('void');
    const token = server.token(user);
    const c = open(`${server.url.replace('http', 'ws')}/ws`);
    await c.opened;
    const sent = [
      { type: 'authenticate', payload: { token } },
      { type: 'provider_list', payload: {} },
      { type: 'provider_request', payload: { provider: 'mock', model: 'gpt-4', prompt: 'Hello, how are you?', temperature: 0.7, maxTokens: 1024, stream: true, requestId: 'r1' } },
    ];
    await c.until((m) => m.type === 'connect_success');
    for (const m of sent) c.send(m);
    const end = await c.until((m) => m.type === 'provider_stream_end');
    const types = c.received.map((m) => m.type);
    assert.deepEqual(types.slice(0, 4), ['connect_success', 'auth_success', 'provider_list', 'provider_stream_start']);
    const chunks = c.received.filter((m) => m.type === 'provider_stream_chunk').map((m) => m.payload.chunk);
    assertWholeTokens(chunks, TEXT);
    assert.equal(end.payload.content, TEXT);
    assert.equal(end.payload.requestId, 'r1');
    const row = await storedMessage(server, token, end.payload.messageId);
    assert.equal(row.content, TEXT);
    assert.equal(row.status, 'complete');
    transcript('void', sent, c.received, row);
    c.ws.close();
    assert.equal(await c.closed, 1005);
  });

  test('canyon: chat_message with history, ping', async () => {
    const user = uniqueUser('canyon');
    const token = server.token(user);
    const c = open(`${server.url.replace('http', 'ws')}/ws/unique-client-id?token=${token}`);
    await c.opened;
    const sent = [
      { type: 'ping' },
      { type: 'chat_message', message: { content: 'Hello, AI!', role: 'user' }, history: [] },
    ];
    for (const m of sent) c.send(m);
    const done = await c.until((m) => m.type === 'response_complete');
    assert.deepEqual(c.received.map((m) => m.type).slice(0, 2), ['pong', 'response_start']);
    assert.equal(c.received.filter((m) => m.type === 'response_chunk').map((m) => m.content).join(''), TEXT);
    assert.equal(done.content, TEXT);
    const row = await storedMessage(server, token, done.messageId);
    assert.equal(row.content, TEXT);
    transcript('canyon', sent, c.received, row);
    c.ws.close();
  });

  test('WADI: connected, auth, message, complete; a bad token closes with 1008', async () => {
    const user = uniqueUser('wadi');
    const token = server.token(user);
    const conversationId = randomUUID();
    const c = open(`${server.url.replace('http', 'ws')}/ws/chat/${conversationId}`);
    await c.opened;
    await c.until((m) => m.type === 'connected');
    const sent = [{ type: 'auth', token }, { type: 'message', content: 'Hi WADI' }];
    for (const m of sent) c.send(m);
    const complete = await c.until((m) => m.type === 'complete');
    assert.deepEqual(c.received.map((m) => m.type).slice(0, 3), ['connected', 'authenticated', 'start']);
    assert.equal(complete.fullOutput, TEXT);
    const row = await storedMessage(server, token, complete.messageId);
    assert.equal(row.conversationId, conversationId);
    transcript('wadi', sent, c.received, row);
    c.ws.close();

    const bad = open(`${server.url.replace('http', 'ws')}/ws/chat/${randomUUID()}`);
    await bad.opened;
    bad.send({ type: 'auth', token: 'nope' });
    assert.equal(await bad.closed, 1008);
  });
});
