// chat:error codes, and that the socket stays usable after every error.

import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';

import {
  Recorder,
  assertCompleteStream,
  assertError,
  chat,
  closeAllSockets,
  connect,
  sleep,
  startServer,
  uniqueUser,
} from './support.mjs';

// 25 tokens at 20 ms: half a second per answer, long enough to overlap a second start.
const TEXT = Array.from({ length: 25 }, (_, i) => `t${i}`).join(' ');

const MAX_CHARS = 2000;

let server;

before(async () => {
  server = await startServer({
    mockResponse: TEXT,
    tokenDelayMs: 20,
    firstTokenDelayMs: 20,
    env: { MAX_MESSAGE_CHARS: String(MAX_CHARS) },
  });
});
after(async () => {
  closeAllSockets();
  await server?.stop();
});
afterEach(() => closeAllSockets());

/**
 * Emit a bad chat:start; expect exactly one chat:error with `code` and nothing
 * else (no conversation created, no user message stored).
 */
async function expectError(socket, payload, code) {
  const rec = new Recorder(socket);
  if (payload === undefined) socket.emit('chat:start');
  else socket.emit('chat:start', payload);
  const ev = await rec.waitFinal({ timeout: 5000 });
  await sleep(100);
  rec.detach();
  assertError(ev, code);
  assert.deepEqual(rec.names(), ['chat:error'], `only chat:error expected: ${rec.describe()}`);
  return ev.data;
}

/** The socket still works: a valid chat completes. */
async function expectUsable(socket, conversationId) {
  const message = `still usable ${randomUUID()}`;
  const events = await chat(socket, conversationId ? { message, conversationId } : { message });
  return assertCompleteStream(events, {
    text: TEXT,
    userMessage: message,
    newConversation: !conversationId,
    conversationId,
  });
}

describe('INVALID_PAYLOAD', () => {
  test('empty message, then a valid chat works on the same socket', async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    await expectError(socket, { message: '' }, 'INVALID_PAYLOAD');
    assert.ok(socket.connected);
    await expectUsable(socket);
  });

  test('missing message', async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    await expectError(socket, { model: 'gpt-4' }, 'INVALID_PAYLOAD');
    await expectUsable(socket);
  });

  test('message of the wrong type', async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    await expectError(socket, { message: 42 }, 'INVALID_PAYLOAD');
    await expectError(socket, { message: ['a'] }, 'INVALID_PAYLOAD');
    await expectUsable(socket);
  });

  test('payload not an object, or none at all', async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    await expectError(socket, 'hello', 'INVALID_PAYLOAD');
    await expectError(socket, undefined, 'INVALID_PAYLOAD');
    await expectError(socket, null, 'INVALID_PAYLOAD');
    await expectUsable(socket);
  });

  test('temperature of the wrong type', async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    await expectError(socket, { message: 'hi', temperature: 'hot' }, 'INVALID_PAYLOAD');
    await expectUsable(socket);
  });

  test('with an ack: { ok: false, error: { code, message } }', async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    const ack = await socket.timeout(5000).emitWithAck('chat:start', { message: '' });
    assert.equal(ack.ok, false, JSON.stringify(ack));
    assert.deepEqual(Object.keys(ack).sort(), ['error', 'ok']);
    assert.equal(ack.error.code, 'INVALID_PAYLOAD');
    assert.equal(typeof ack.error.message, 'string');
    assert.ok(ack.error.message.length > 0);
    // Whether a chat:error also follows an error ack is not specified; let it pass.
    await sleep(200);
    await expectUsable(socket);
  });
});

describe('MESSAGE_TOO_LONG', () => {
  test('one character over the limit; the limit itself is fine', async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    await expectError(socket, { message: 'x'.repeat(MAX_CHARS + 1) }, 'MESSAGE_TOO_LONG');
    const exact = 'y'.repeat(MAX_CHARS);
    const events = await chat(socket, { message: exact });
    assertCompleteStream(events, { text: TEXT, userMessage: exact, newConversation: true });
  });

  test('a 900 kB message is answered with the code, not a dropped connection', async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    let disconnected = null;
    socket.on('disconnect', (reason) => {
      disconnected = reason;
    });
    await expectError(socket, { message: 'z'.repeat(900_000) }, 'MESSAGE_TOO_LONG');
    assert.equal(disconnected, null, `socket dropped: ${disconnected}`);
    await expectUsable(socket);
  });

  test('also over long-polling', async () => {
    const socket = await connect(server, server.token(uniqueUser()), { transports: ['polling'] });
    await expectError(socket, { message: 'z'.repeat(900_000) }, 'MESSAGE_TOO_LONG');
    assert.ok(socket.connected);
    await expectUsable(socket);
  });
});

describe('INVALID_PARAMS', () => {
  test('malformed conversationId', async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    await expectError(socket, { message: 'hi', conversationId: 'not-a-uuid' }, 'INVALID_PARAMS');
    await expectError(socket, { message: 'hi', conversationId: '12345' }, 'INVALID_PARAMS');
    await expectUsable(socket);
  });

  test('temperature 5 (range is 0 to 2)', async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    await expectError(socket, { message: 'hi', temperature: 5 }, 'INVALID_PARAMS');
    await expectError(socket, { message: 'hi', temperature: -0.5 }, 'INVALID_PARAMS');
    await expectUsable(socket);
  });

  test('temperature 0 and 2 are allowed', async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    for (const temperature of [0, 2]) {
      const events = await chat(socket, { message: `t=${temperature}`, temperature });
      assertCompleteStream(events, { text: TEXT, userMessage: `t=${temperature}`, newConversation: true });
    }
  });

  test('negative maxTokens', async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    await expectError(socket, { message: 'hi', maxTokens: -5 }, 'INVALID_PARAMS');
    await expectUsable(socket);
  });
});

describe('NOT_FOUND', () => {
  test('unknown random UUID conversationId', async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    await expectError(socket, { message: 'hi', conversationId: randomUUID() }, 'NOT_FOUND');
    await expectUsable(socket);
  });

  test("another user's conversation", async () => {
    const alice = await connect(server, server.token(uniqueUser('alice')));
    const { conversationId } = await expectUsable(alice);
    const mallory = await connect(server, server.token(uniqueUser('mallory')));
    await expectError(mallory, { message: 'let me in', conversationId }, 'NOT_FOUND');
    // Alice can still continue it.
    await expectUsable(alice, conversationId);
  });
});

describe('FORBIDDEN', () => {
  test('payload userId differing from the token user', async () => {
    const user = uniqueUser();
    const socket = await connect(server, server.token(user));
    await expectError(socket, { userId: uniqueUser('someone-else'), message: 'hi' }, 'FORBIDDEN');
    await expectError(
      socket,
      { userId: 'user-1', message: 'hi', conversationId: null, model: 'gpt-4' },
      'FORBIDDEN',
    );
    // The same payload with the right userId works.
    const events = await chat(socket, { userId: user, message: 'ok now', conversationId: null });
    assertCompleteStream(events, { text: TEXT, userMessage: 'ok now', newConversation: true });
  });
});

describe('BUSY', () => {
  test('a second chat:start while one runs; the first still completes', async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    const rec = new Recorder(socket);
    socket.emit('chat:start', { message: 'first' });
    await rec.waitFor('chat:message');
    socket.emit('chat:start', { message: 'second' });
    const err = await rec.waitFor('chat:error');
    assertError(err, 'BUSY');
    await rec.waitFor('chat:end');
    // The first generation's stream is intact once the BUSY error is taken out.
    const firstEvents = rec.events.filter((e) => e.event !== 'chat:error');
    assertCompleteStream(firstEvents, { text: TEXT, userMessage: 'first', newConversation: true });
    // No trace of the refused one.
    assert.equal(rec.events.filter((e) => e.event === 'chat:user-message').length, 1);
    // Free again after chat:end.
    await expectUsable(socket, firstEvents[0].data.conversationId);
  });

  test('BUSY through the ack', async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    const rec = new Recorder(socket);
    const first = await socket.timeout(5000).emitWithAck('chat:start', { message: 'first' });
    assert.equal(first.ok, true);
    const second = await socket.timeout(5000).emitWithAck('chat:start', { message: 'second' });
    assert.equal(second.ok, false, JSON.stringify(second));
    assert.equal(second.error.code, 'BUSY');
    await rec.waitFor('chat:end');
    assert.equal(rec.events.find((e) => e.event === 'chat:end').data.messageId, first.messageId);
  });

  test('two sockets of the same user may stream at the same time', async () => {
    const user = uniqueUser();
    const a = await connect(server, server.token(user));
    const b = await connect(server, server.token(user));
    const [ea, eb] = await Promise.all([
      chat(a, { message: 'from a' }),
      chat(b, { message: 'from b' }),
    ]);
    assertCompleteStream(ea, { text: TEXT, userMessage: 'from a', newConversation: true });
    assertCompleteStream(eb, { text: TEXT, userMessage: 'from b', newConversation: true });
  });
});

describe('idempotent retries (clientMessageId)', () => {
  test('a repeat while the first is still streaming gets the first ack, never BUSY', async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    const rec = new Recorder(socket);
    const clientMessageId = randomUUID();
    const payload = { message: 'once', clientMessageId };
    const first = await socket.timeout(5000).emitWithAck('chat:start', payload);
    assert.equal(first.ok, true);
    const again = await socket.timeout(5000).emitWithAck('chat:start', payload);
    assert.deepEqual(again, first);
    await rec.waitFor('chat:end');
    await sleep(300);
    assert.equal(rec.events.filter((e) => e.event === 'chat:user-message').length, 1, rec.describe());
    assert.equal(rec.events.filter((e) => e.event === 'chat:end').length, 1, rec.describe());
    assert.ok(!rec.names().includes('chat:error'), rec.describe());
  });

  test('a repeat after the first ended gets the first ack and starts nothing', async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    const rec = new Recorder(socket);
    const clientMessageId = randomUUID();
    const payload = { message: 'once', clientMessageId };
    const first = await socket.timeout(5000).emitWithAck('chat:start', payload);
    assert.equal(first.ok, true);
    await rec.waitFor('chat:end');
    const late = await socket.timeout(5000).emitWithAck('chat:start', payload);
    assert.deepEqual(late, first);
    await sleep(300);
    assert.equal(rec.events.filter((e) => e.event === 'chat:user-message').length, 1, rec.describe());
    assert.equal(rec.events.filter((e) => e.event === 'chat:end').length, 1, rec.describe());
    assert.ok(!rec.names().includes('chat:error'), rec.describe());
  });

  test('socket.io-client `retries` re-sends a late-acked chat:start: one answer, the first ack', async () => {
    // retries + ackTimeout: socket.io-client re-sends the same packet when its ack is late.
    const socket = await connect(server, server.token(uniqueUser()), { retries: 3, ackTimeout: 20 });
    const rec = new Recorder(socket);
    let sent = 0;
    socket.onAnyOutgoing((event) => {
      if (event === 'chat:start') sent += 1;
    });
    const pending = socket.emitWithAck('chat:start', { message: 'retried', clientMessageId: randomUUID() });
    // Hold the event loop past ackTimeout: the timeout fires before the ack is read, so
    // the client re-sends while the server is already streaming the first attempt.
    const until = Date.now() + 100;
    while (Date.now() < until);
    const ack = await pending;
    assert.equal(ack.ok, true);
    assert.ok(sent >= 2, `the client re-sent chat:start (${sent} sends)`);
    const end = await rec.waitFor('chat:end');
    await sleep(300);
    assert.equal(end.data.messageId, ack.messageId);
    assert.equal(rec.events.filter((e) => e.event === 'chat:conversation').length, 1, rec.describe());
    assert.equal(rec.events.filter((e) => e.event === 'chat:user-message').length, 1, rec.describe());
    assert.equal(rec.events.filter((e) => e.event === 'chat:end').length, 1, rec.describe());
    assert.ok(!rec.names().includes('chat:error'), rec.describe());
  });

  test('a repeat from another socket of the same user gets the first ack', async () => {
    const user = uniqueUser();
    const a = await connect(server, server.token(user));
    const b = await connect(server, server.token(user));
    const rec = new Recorder(a);
    const payload = { message: 'retry elsewhere', clientMessageId: randomUUID() };
    const first = await a.timeout(5000).emitWithAck('chat:start', payload);
    assert.equal(first.ok, true);
    await rec.waitFor('chat:end');
    assert.deepEqual(await b.timeout(5000).emitWithAck('chat:start', payload), first);
  });
});
