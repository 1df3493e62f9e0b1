// The NestJS guide's own client, literally as the guide writes it: `userId` in every
// chat:start, chunks appended until chat:end. Only the URL changes. In open mode the
// connection is the user it names; with JWTs the token's user wins and a different
// payload userId is FORBIDDEN.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';

import { startServer, uniqueUser, assertWholeTokens } from './support.mjs';

const TEXT = 'Hello from the guide client';

/** The guide's "should stream chat response" test body, with the URL changed. */
function guideClient(url, payload, auth) {
  const socket = io(`${url}/ai`, { transports: ['websocket'], ...(auth ? { auth } : {}) });
  return new Promise((resolve, reject) => {
    const chunks = [];
    const timer = setTimeout(() => reject(new Error('no chat:end within 10 s')), 10_000);
    socket.on('chat:message', (data) => chunks.push(data.content));
    socket.on('chat:end', (end) => {
      clearTimeout(timer);
      socket.close();
      resolve({ chunks, end });
    });
    socket.on('chat:error', (error) => {
      clearTimeout(timer);
      socket.close();
      resolve({ chunks, error });
    });
    socket.emit('chat:start', payload);
  });
}

describe('the guide client in open mode', () => {
  let server;
  before(async () => {
    server = await startServer({ mockResponse: TEXT, env: { JWT_SECRET: '' } });
  });
  after(() => server.stop());

  test('streams and ends as the guide expects, stored as the userId it names', async () => {
    const { chunks, end } = await guideClient(server.url, { userId: 'test-user', message: 'Hello' });
    assert.ok(chunks.length > 0);
    assertWholeTokens(chunks, TEXT);
    assert.equal(end.content, TEXT);
    // The same user, on another connection, can read that answer back; another cannot.
    const mine = io(`${server.url}/ai`, { transports: ['websocket'], auth: { userId: 'test-user' } });
    const resumed = await mine.emitWithAck('chat:resume', { messageId: end.messageId, offset: 0 });
    assert.equal(resumed.status, 'complete');
    mine.close();
    const stranger = io(`${server.url}/ai`, { transports: ['websocket'] });
    const refused = await stranger.emitWithAck('chat:resume', { messageId: end.messageId, offset: 0 });
    assert.equal(refused.error.code, 'NOT_FOUND', 'two open-mode testers share nothing');
    stranger.close();
  });
});

describe('the guide client with JWTs', () => {
  let server;
  before(async () => {
    server = await startServer({ mockResponse: TEXT });
  });
  after(() => server.stop());

  test('with its own user in userId it works unchanged', async () => {
    const user = uniqueUser('guide');
    const { chunks, end } = await guideClient(server.url, { userId: user, message: 'Hello' }, { token: server.token(user) });
    assertWholeTokens(chunks, TEXT);
    assert.equal(end.content, TEXT);
  });

  test('a userId other than the token user is FORBIDDEN: the token wins', async () => {
    const user = uniqueUser('guide');
    const { chunks, error } = await guideClient(server.url, { userId: 'user-uuid', message: 'Hello' }, { token: server.token(user) });
    assert.deepEqual(chunks, []);
    assert.equal(error.code, 'FORBIDDEN');
  });
});
