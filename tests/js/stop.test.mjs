// chat:stop against a slow mock upstream.

import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import {
  Recorder,
  assertCompleteStream,
  assertKeys,
  chat,
  closeAllSockets,
  connect,
  sleep,
  startServer,
  uniqueUser,
} from './support.mjs';

// 60 tokens at 60 ms each: about 3.6 s per answer, plenty of time to stop it.
const WORDS = Array.from({ length: 60 }, (_, i) => `word${i}`);
const TEXT = WORDS.join(' ');

let server;

before(async () => {
  server = await startServer({ mockResponse: TEXT, tokenDelayMs: 60, firstTokenDelayMs: 60 });
});
after(async () => {
  closeAllSockets();
  await server?.stop();
});
afterEach(() => closeAllSockets());

/** Check the events of a stopped generation; returns the chat:stopped payload. */
function assertStopped(events) {
  const names = events.map((e) => e.event);
  const trail = JSON.stringify(events).slice(0, 3000);
  const at = names.indexOf('chat:stopped');
  assert.ok(at !== -1, `expected chat:stopped: ${trail}`);
  assert.ok(!names.includes('chat:end'), `no chat:end may follow a stop: ${trail}`);
  assert.ok(!names.includes('chat:error'), `no chat:error expected: ${trail}`);
  const stopped = events[at].data;
  assertKeys(stopped, ['messageId', 'conversationId', 'content'], [], 'chat:stopped');

  const chunks = events.slice(0, at).filter((e) => e.event === 'chat:message');
  const received = chunks.map((e) => e.data.content).join('');
  assert.equal(stopped.content, received, 'chat:stopped.content === the chunks received');
  assert.ok(TEXT.startsWith(stopped.content), 'stopped content is a prefix of the mock text');
  assert.ok(stopped.content.length < TEXT.length, 'stopped before the end');
  for (const c of chunks) {
    assert.equal(c.data.messageId, stopped.messageId);
    assert.equal(c.data.conversationId, stopped.conversationId);
  }
  // Nothing about that generation after chat:stopped.
  const later = events.slice(at + 1).filter((e) => e.data?.messageId === stopped.messageId);
  assert.deepEqual(later, [], `events after chat:stopped: ${JSON.stringify(later)}`);
  return stopped;
}

describe('chat:stop', () => {
  test('chat:stop mid-answer: chat:stopped with the partial content, no chat:end', async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    const rec = new Recorder(socket);
    socket.emit('chat:start', { message: 'tell me a long story' });
    // Let three chunks through, then stop, exactly as the docs do it.
    await rec.waitFor((e) => e.event === 'chat:message' && e.data.seq === 2);
    socket.emit('chat:stop');
    await rec.waitFor(['chat:stopped', 'chat:end', 'chat:error']);
    // Give a would-be late chunk or chat:end time to show up.
    await sleep(400);
    const names = rec.names();
    assert.deepEqual(names.slice(0, 2), ['chat:conversation', 'chat:user-message']);
    const stopped = assertStopped(rec.events);
    assert.ok(stopped.content.length >= 'word0 word1 word2'.length);
    assert.equal(stopped.conversationId, rec.events[0].data.conversationId);
  });

  test('chat:stop with ack: { ok: true, stopped: true }', async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    const rec = new Recorder(socket);
    socket.emit('chat:start', { message: 'stop me with an ack' });
    await rec.waitFor((e) => e.event === 'chat:message' && e.data.seq === 1);
    const ack = await socket.timeout(5000).emitWithAck('chat:stop');
    assert.deepEqual(ack, { ok: true, stopped: true });
    await rec.waitFor(['chat:stopped', 'chat:end', 'chat:error']);
    await sleep(300);
    assertStopped(rec.events);
  });

  test('chat:stop with the messageId', async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    const rec = new Recorder(socket);
    const start = await socket.timeout(5000).emitWithAck('chat:start', { message: 'by id' });
    assert.equal(start.ok, true);
    await rec.waitFor('chat:message');
    const ack = await socket.timeout(5000).emitWithAck('chat:stop', { messageId: start.messageId });
    assert.deepEqual(ack, { ok: true, stopped: true });
    await rec.waitFor(['chat:stopped', 'chat:end', 'chat:error']);
    await sleep(300);
    const stopped = assertStopped(rec.events);
    assert.equal(stopped.messageId, start.messageId);
    assert.equal(stopped.conversationId, start.conversationId);
  });

  test('chat:stop right after the chat:start ack, before any chunk', async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    const rec = new Recorder(socket);
    const start = await socket.timeout(5000).emitWithAck('chat:start', { message: 'never mind' });
    assert.equal(start.ok, true);
    const ack = await socket.timeout(5000).emitWithAck('chat:stop');
    assert.deepEqual(ack, { ok: true, stopped: true });
    await rec.waitFor(['chat:stopped', 'chat:end', 'chat:error']);
    await sleep(300);
    const stopped = assertStopped(rec.events);
    assert.equal(stopped.messageId, start.messageId);
  });

  test('chat:stop with ack when nothing runs: { ok: true, stopped: false }', async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    assert.deepEqual(await socket.timeout(5000).emitWithAck('chat:stop'), {
      ok: true,
      stopped: false,
    });
    assert.deepEqual(await socket.timeout(5000).emitWithAck('chat:stop', {}), {
      ok: true,
      stopped: false,
    });
  });

  test('chat:stop for an unknown messageId stops nothing', async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    const rec = new Recorder(socket);
    const start = await socket.timeout(5000).emitWithAck('chat:start', { message: 'keep going' });
    assert.equal(start.ok, true);
    await rec.waitFor('chat:message');
    const ack = await socket
      .timeout(5000)
      .emitWithAck('chat:stop', { messageId: '00000000-0000-4000-8000-000000000000' });
    assert.deepEqual(ack, { ok: true, stopped: false });
    // It keeps streaming; then stop it for real to keep the test short.
    await rec.waitFor('chat:message', { from: rec.events.length });
    assert.deepEqual(await socket.timeout(5000).emitWithAck('chat:stop'), { ok: true, stopped: true });
    await rec.waitFor(['chat:stopped', 'chat:end', 'chat:error']);
    await sleep(200);
    assertStopped(rec.events);
  });

  test('after chat:stopped the socket is free at once and the conversation continues', async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    const rec = new Recorder(socket);
    let next;
    socket.once('chat:stopped', (d) => {
      // Next chat:start straight from the chat:stopped handler.
      next = socket.timeout(5000).emitWithAck('chat:start', {
        message: 'continue',
        conversationId: d.conversationId,
      });
    });
    socket.emit('chat:start', { message: 'first' });
    await rec.waitFor('chat:message');
    socket.emit('chat:stop');
    await rec.waitFor('chat:stopped');
    const ack = await next;
    assert.equal(ack.ok, true, `second chat:start refused: ${JSON.stringify(ack)}`);
    const stoppedEv = rec.events.find((e) => e.event === 'chat:stopped');
    assert.equal(ack.conversationId, stoppedEv.data.conversationId);
    await rec.waitFor('chat:message', { from: rec.events.indexOf(stoppedEv) + 1 });
    assert.deepEqual(await socket.timeout(5000).emitWithAck('chat:stop'), { ok: true, stopped: true });
    await rec.waitFor('chat:stopped', { from: rec.events.indexOf(stoppedEv) + 1 });
    assert.ok(!rec.names().includes('chat:error'), rec.describe());
  });

  test('disconnecting mid-answer leaves the server healthy', async () => {
    const user = uniqueUser();
    const socket = await connect(server, server.token(user));
    const rec = new Recorder(socket);
    const start = await socket.timeout(5000).emitWithAck('chat:start', { message: 'bye' });
    await rec.waitFor('chat:message');
    socket.close();
    await sleep(200);
    const res = await fetch(`${server.url}/health`);
    assert.equal(res.status, 200);

    // The conversation is still this user's and usable, on a fast path: stop quickly.
    const again = await connect(server, server.token(user));
    const rec2 = new Recorder(again);
    const ack = await again
      .timeout(5000)
      .emitWithAck('chat:start', { message: 'back', conversationId: start.conversationId });
    assert.equal(ack.ok, true, JSON.stringify(ack));
    await rec2.waitFor('chat:message');
    assert.deepEqual(await again.timeout(5000).emitWithAck('chat:stop'), { ok: true, stopped: true });
    await rec2.waitFor('chat:stopped');
  });
});

describe('a complete slow answer', () => {
  test('streams every token as its own chunk', { timeout: 20_000 }, async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    const events = await chat(socket, { message: 'the whole thing' });
    const r = assertCompleteStream(events, {
      text: TEXT,
      userMessage: 'the whole thing',
      newConversation: true,
    });
    assert.equal(r.chunks, WORDS.length);
  });
});
