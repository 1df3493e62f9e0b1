// Handshake authentication: NestJS JwtService tokens in, everything else out with
// connect_error 'unauthorized'.

import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { JwtService } from '@nestjs/jwt';

import {
  assertCompleteStream,
  chat,
  closeAllSockets,
  connect,
  makeSocket,
  startServer,
  uniqueUser,
} from './support.mjs';

const TEXT = 'Authenticated hello';

let server;

before(async () => {
  server = await startServer({ mockResponse: TEXT, tokenDelayMs: 5, firstTokenDelayMs: 5 });
});
after(async () => {
  closeAllSockets();
  await server?.stop();
});
afterEach(() => closeAllSockets());

/** Expect the handshake to be refused with exactly 'unauthorized'. */
async function expectUnauthorized(token, opts = {}) {
  const socket = makeSocket(server, token, opts);
  const outcome = await new Promise((resolve) => {
    const timer = setTimeout(() => resolve({ kind: 'timeout' }), 10_000);
    socket.once('connect', () => {
      clearTimeout(timer);
      resolve({ kind: 'connected' });
    });
    socket.once('connect_error', (err) => {
      clearTimeout(timer);
      resolve({ kind: 'error', err });
    });
  });
  socket.close();
  assert.equal(outcome.kind, 'error', `expected connect_error, got ${outcome.kind}`);
  assert.equal(outcome.err.message, 'unauthorized');
  return outcome.err;
}

async function expectWorks(socket) {
  const events = await chat(socket, { message: 'am I in?' });
  assertCompleteStream(events, { text: TEXT, userMessage: 'am I in?', newConversation: true });
}

describe('accepted tokens', () => {
  test('JwtService token with a string sub via auth.token', async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    await expectWorks(socket);
  });

  test('JwtService configured the NestJS way (module secret, signAsync, expiresIn)', async () => {
    const jwt = new JwtService({ secret: server.secret, signOptions: { expiresIn: '15m' } });
    const token = await jwt.signAsync({ sub: uniqueUser(), username: 'jane', roles: ['user'] });
    const socket = await connect(server, token);
    await expectWorks(socket);
  });

  test('token without expiry', async () => {
    const jwt = new JwtService({ secret: server.secret });
    const socket = await connect(server, jwt.sign({ sub: uniqueUser() }));
    await expectWorks(socket);
  });

  test('Authorization: Bearer header', async () => {
    const socket = await connect(server, undefined, {
      extraHeaders: { Authorization: `Bearer ${server.token(uniqueUser())}` },
    });
    await expectWorks(socket);
  });

  test('?token= query parameter', async () => {
    const socket = await connect(server, undefined, {
      query: { token: server.token(uniqueUser()) },
    });
    await expectWorks(socket);
  });

  test('auth.token wins over a bad header', async () => {
    const socket = await connect(server, server.token(uniqueUser()), {
      extraHeaders: { Authorization: 'Bearer not-a-token' },
    });
    await expectWorks(socket);
  });

  test('token over long-polling', async () => {
    const socket = await connect(server, server.token(uniqueUser()), { transports: ['polling'] });
    await expectWorks(socket);
  });
});

describe('refused with connect_error "unauthorized"', () => {
  test('token signed with the wrong secret', async () => {
    const other = new JwtService({ secret: 'not-the-server-secret', signOptions: { expiresIn: '1h' } });
    await expectUnauthorized(other.sign({ sub: uniqueUser() }));
  });

  test('expired token', async () => {
    const now = Math.floor(Date.now() / 1000);
    // Issued two hours ago, valid for one: expired an hour ago.
    const token = server.jwt.sign({ sub: uniqueUser(), iat: now - 7200 }, { expiresIn: '1h' });
    await expectUnauthorized(token);
  });

  test('token not valid yet (nbf)', async () => {
    const token = server.jwt.sign({ sub: uniqueUser() }, { notBefore: '1h' });
    await expectUnauthorized(token);
  });

  test('no token at all', async () => {
    await expectUnauthorized(undefined);
  });

  test('empty auth object and empty token', async () => {
    await expectUnauthorized(undefined, { auth: {} });
    await expectUnauthorized('');
  });

  test('garbage token', async () => {
    await expectUnauthorized('not.a.jwt');
    await expectUnauthorized('hello');
  });

  test('unsigned token (alg none)', async () => {
    const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const token = `${b64({ alg: 'none', typ: 'JWT' })}.${b64({ sub: uniqueUser() })}.`;
    await expectUnauthorized(token);
  });

  test('token without a sub claim', async () => {
    await expectUnauthorized(server.jwt.sign({ email: 'nosub@example.test' }));
  });

  test('bad auth.token is not rescued by a good header', async () => {
    await expectUnauthorized('not.a.jwt', {
      extraHeaders: { Authorization: `Bearer ${server.token(uniqueUser())}` },
    });
  });

  test('wrong secret over long-polling', async () => {
    const other = new JwtService({ secret: 'nope' });
    await expectUnauthorized(other.sign({ sub: uniqueUser() }), { transports: ['polling'] });
  });

  test('the server still serves good clients afterwards', async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    await expectWorks(socket);
  });
});
