// The NestJS-documented client flow, end to end: connect with a JwtService token,
// chat:start, and the chat:conversation -> chat:user-message -> chat:message* ->
// chat:end stream.

import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import {
  Recorder,
  assertCompleteStream,
  chat,
  closeAllSockets,
  connect,
  makeSocket,
  mockTokens,
  startServer,
  uniqueUser,
} from './support.mjs';

// Non-ASCII on purpose: `offset` counts UTF-16 code units (JS string length), so
// the emoji (two code units) and accented letters check that the server does not
// count bytes or code points. A newline checks whitespace is kept verbatim.
const TEXT = 'Hello brave new world! Naïve café 🚀 rockets\nfly over €100 and 日本語 text.';

// CHATWIRE_RACE_ITERATIONS raises the count to hunt for a rare race.
const RACE_ITERATIONS = Number(process.env.CHATWIRE_RACE_ITERATIONS || 20);

let server;

before(async () => {
  server = await startServer({ mockResponse: TEXT, tokenDelayMs: 5, firstTokenDelayMs: 20 });
});
after(async () => {
  closeAllSockets();
  await server?.stop();
});
afterEach(() => closeAllSockets());

describe('chat flow', () => {
  test('mock text sanity', () => {
    assert.ok(mockTokens(TEXT).length > 10);
    assert.equal(mockTokens(TEXT).join(''), TEXT);
  });

  test('full stream: conversation, user-message, chunks, end', async () => {
    const user = uniqueUser();
    const socket = await connect(server, server.token(user));
    const events = await chat(socket, { message: 'Explain quantum computing' });
    const r = assertCompleteStream(events, {
      text: TEXT,
      userMessage: 'Explain quantum computing',
      newConversation: true,
    });
    // With a 5 ms delay per token each token arrives as its own chunk.
    assert.ok(r.chunks >= 2, `expected several chunks, got ${r.chunks}`);
  });

  test('numeric sub claim works (stringified user id)', async () => {
    const sub = Math.floor(Math.random() * 1e9) + 1;
    const socket = await connect(server, server.token(sub));
    const events = await chat(socket, { message: 'hi from a numeric user' });
    assertCompleteStream(events, {
      text: TEXT,
      userMessage: 'hi from a numeric user',
      newConversation: true,
    });
    // The React example sends userId; for a numeric sub its string form is the user.
    const again = await chat(socket, { userId: String(sub), message: 'again' });
    assertCompleteStream(again, { text: TEXT, userMessage: 'again', newConversation: true });
  });

  test('numeric sub with a numeric userId in the payload is the same user', async () => {
    const sub = Math.floor(Math.random() * 1e9) + 1;
    const socket = await connect(server, server.token(sub));
    const events = await chat(socket, { userId: sub, message: 'numeric userId' });
    assertCompleteStream(events, { text: TEXT, userMessage: 'numeric userId', newConversation: true });
  });

  test('chat:start emitted inside the connect handler is never lost (20 fresh sockets)', { timeout: 600_000 }, async () => {
    for (let n = 0; n < RACE_ITERATIONS; n++) {
      // A user per socket, so the per-user start rate never interferes.
      const socket = makeSocket(server, server.token(uniqueUser()), { autoConnect: false });
      const rec = new Recorder(socket);
      const message = `race ${n}`;
      socket.on('connect', () => {
        socket.emit('chat:start', { message });
      });
      socket.connect();
      await rec.waitFinal({ timeout: 10_000 }).catch((e) => {
        throw new Error(`iteration ${n}: ${e.message}`);
      });
      assertCompleteStream(rec.events, { text: TEXT, userMessage: message, newConversation: true });
      socket.close();
    }
  });

  test('the React example payload: userId = token user, conversationId: null', async () => {
    const user = uniqueUser();
    const socket = await connect(server, server.token(user));
    let conversationId = null;
    socket.on('chat:conversation', (d) => {
      conversationId = d.conversationId;
    });
    const payload = {
      userId: user,
      message: 'Explain quantum computing',
      conversationId,
      model: 'gpt-4',
      maxTokens: 4096,
      temperature: 0.7,
    };
    const first = await chat(socket, payload);
    const r1 = assertCompleteStream(first, {
      text: TEXT,
      userMessage: payload.message,
      newConversation: true,
    });
    assert.equal(conversationId, r1.conversationId);

    // Second turn, as the component does it: the saved conversationId.
    const second = await chat(socket, { ...payload, message: 'And then?', conversationId });
    assertCompleteStream(second, {
      text: TEXT,
      userMessage: 'And then?',
      newConversation: false,
      conversationId,
    });
  });

  test('continuing a conversation: no chat:conversation, same conversationId', async () => {
    const user = uniqueUser();
    const socket = await connect(server, server.token(user));
    const first = await chat(socket, { message: 'first turn' });
    const r1 = assertCompleteStream(first, {
      text: TEXT,
      userMessage: 'first turn',
      newConversation: true,
    });
    const second = await chat(socket, { message: 'second turn', conversationId: r1.conversationId });
    const r2 = assertCompleteStream(second, {
      text: TEXT,
      userMessage: 'second turn',
      newConversation: false,
      conversationId: r1.conversationId,
    });
    assert.notEqual(r2.messageId, r1.messageId);
    assert.notEqual(r2.userMessageId, r1.userMessageId);

    // The same conversation from a second socket of the same user.
    const other = await connect(server, server.token(user));
    const third = await chat(other, { message: 'third turn', conversationId: r1.conversationId });
    assertCompleteStream(third, {
      text: TEXT,
      userMessage: 'third turn',
      newConversation: false,
      conversationId: r1.conversationId,
    });
  });

  test('model is reported as requested', async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    const events = await chat(socket, { message: 'which model?', model: 'gpt-4o-mini' });
    assertCompleteStream(events, {
      text: TEXT,
      userMessage: 'which model?',
      newConversation: true,
      model: 'gpt-4o-mini',
    });
  });

  test('emitWithAck: { ok, conversationId, userMessageId, messageId } before any chunk', async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    const rec = new Recorder(socket);
    const ack = await socket.timeout(10_000).emitWithAck('chat:start', { message: 'with ack' });
    const seenAtAck = rec.names();
    assert.ok(
      !seenAtAck.includes('chat:message'),
      `ack must come before any chat:message; seen first: ${JSON.stringify(seenAtAck)}`,
    );
    assert.deepEqual(Object.keys(ack).sort(), ['conversationId', 'messageId', 'ok', 'parentMessageId', 'userMessageId']);
    assert.equal(ack.parentMessageId, null, 'a new conversation\'s first question has no parent');
    assert.equal(ack.ok, true);
    await rec.waitFinal();
    const r = assertCompleteStream(rec.events, {
      text: TEXT,
      userMessage: 'with ack',
      newConversation: true,
    });
    assert.equal(ack.conversationId, r.conversationId);
    assert.equal(ack.userMessageId, r.userMessageId);
    assert.equal(ack.messageId, r.messageId);
  });

  test('ack callback runs before the first chat:message (exact packet order)', async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    const rec = new Recorder(socket);
    socket.timeout(10_000).emit('chat:start', { message: 'ordered ack' }, (err, ack) => {
      rec.mark('ack', err ? { error: String(err) } : ack);
    });
    await rec.waitFinal();
    await rec.waitFor('ack');
    const names = rec.names();
    const ackAt = names.indexOf('ack');
    const firstChunk = names.indexOf('chat:message');
    assert.ok(ackAt !== -1 && ackAt < firstChunk, `order: ${JSON.stringify(names)}`);
    assert.equal(rec.events[ackAt].data.ok, true);
    const events = rec.events.filter((e) => e.event !== 'ack');
    const r = assertCompleteStream(events, {
      text: TEXT,
      userMessage: 'ordered ack',
      newConversation: true,
    });
    assert.equal(rec.events[ackAt].data.messageId, r.messageId);
  });

  test('the next chat:start may follow chat:end at once', async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    const rec = new Recorder(socket);
    let ends = 0;
    socket.on('chat:end', (d) => {
      ends++;
      if (ends === 1) {
        socket.emit('chat:start', { message: 'right away', conversationId: d.conversationId });
      }
    });
    socket.emit('chat:start', { message: 'first' });
    const firstEnd = await rec.waitFor(['chat:end', 'chat:error']);
    await rec.waitFor(['chat:end', 'chat:error'], { from: rec.events.indexOf(firstEnd) + 1 });
    const names = rec.names();
    assert.ok(!names.includes('chat:error'), `no error expected: ${rec.describe()}`);
    const split = names.indexOf('chat:end') + 1;
    assertCompleteStream(rec.events.slice(0, split), {
      text: TEXT,
      userMessage: 'first',
      newConversation: true,
    });
    assertCompleteStream(rec.events.slice(split), {
      text: TEXT,
      userMessage: 'right away',
      newConversation: false,
      conversationId: rec.events[split - 1].data.conversationId,
    });
  });

  test('default transports: long-polling first, then upgrade to websocket', async () => {
    const user = uniqueUser();
    const socket = makeSocket(server, server.token(user), {
      transports: undefined, // socket.io-client default: ['polling', 'websocket']
      autoConnect: false,
    });
    const rec = new Recorder(socket);
    socket.on('connect', () => {
      socket.emit('chat:start', { message: 'over polling' });
    });
    socket.connect();
    // The engine opens with long-polling; the client probes websocket right after
    // the handshake, so the upgrade may land before or after the namespace connect.
    const initialTransport = socket.io.engine.transport.name;
    const engineUpgrade = new Promise((resolve) => {
      socket.io.engine.once('upgrade', (t) => resolve(t.name));
    });
    await rec.waitFinal();
    assert.equal(initialTransport, 'polling');
    const r = assertCompleteStream(rec.events, {
      text: TEXT,
      userMessage: 'over polling',
      newConversation: true,
    });

    const name = await Promise.race([
      engineUpgrade,
      new Promise((_, rej) => setTimeout(() => rej(new Error('no upgrade within 10 s')), 10_000)),
    ]);
    assert.equal(name, 'websocket');
    assert.equal(socket.io.engine.transport.name, 'websocket');

    // And the same socket keeps working after the upgrade.
    const second = await chat(socket, { message: 'after upgrade', conversationId: r.conversationId });
    assertCompleteStream(second, {
      text: TEXT,
      userMessage: 'after upgrade',
      newConversation: false,
      conversationId: r.conversationId,
    });
  });

  test('polling only (no upgrade) also streams', async () => {
    const socket = await connect(server, server.token(uniqueUser()), { transports: ['polling'] });
    const events = await chat(socket, { message: 'polling only' });
    assertCompleteStream(events, { text: TEXT, userMessage: 'polling only', newConversation: true });
  });
});
