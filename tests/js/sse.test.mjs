// The HTTP/SSE wire: POST /v1/chat (an answer as text/event-stream), GET
// /v1/answers/{id}/events (resume or watch, Last-Event-ID or ?offset=, ?token=),
// POST /v1/answers/{id}/stop, refusals as JSON with their HTTP status, and how it
// meets the /ai socket.io namespace.

import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';

import { EventSource } from 'eventsource';

import {
  FINAL_EVENTS,
  Recorder,
  assertKeys,
  closeAllSockets,
  connect,
  freePort,
  makeSocket,
  mockTokens,
  sleep,
  startServer,
  uniqueUser,
  waitConnected,
} from './support.mjs';
import {
  abortAllStreams,
  assertAck,
  assertAnswerEvents,
  assertRefused,
  assertSseChat,
  assertStream,
  getEvents,
  postChat,
  replay,
  serverInfo,
  stopAnswer,
} from './sse-support.mjs';

// 40 tokens, 40 ms apart (about 1.6 s), with characters outside the BMP so that
// UTF-16 offsets differ from code points and bytes.
const SAMPLES = ['alpha', '😀beta', 'naïve', '𝄞clef', '日本語'];
const TEXT = Array.from({ length: 40 }, (_, i) => `${SAMPLES[i % SAMPLES.length]}${i}`).join(' ');
const MAX_CHARS = 2000;

let server;

before(async () => {
  server = await startServer({
    mockResponse: TEXT,
    tokenDelayMs: 40,
    firstTokenDelayMs: 20,
    env: { MAX_MESSAGE_CHARS: String(MAX_CHARS), ALLOWED_MODELS: 'gpt-4,gpt-4o-mini' },
  });
});
after(async () => {
  abortAllStreams();
  closeAllSockets();
  await server?.stop();
});
afterEach(() => {
  abortAllStreams();
  closeAllSockets();
});

/** The last SSE id seen on a stream (what an EventSource would send as Last-Event-ID). */
function lastId(sse) {
  return sse.events.findLast((e) => e.id !== null)?.id ?? null;
}

/** Index of the first answer event (after chat:ack, chat:conversation, chat:user-message). */
function answerStart(events) {
  const i = events.findIndex((e) => e.event === 'chat:user-message');
  assert.ok(i !== -1, `no chat:user-message: ${JSON.stringify(events).slice(0, 1000)}`);
  return i + 1;
}

/** Starts an answer over SSE; resolves with { res, ack } once chat:ack is read. */
async function start(user, payload = { message: 'tell me a story' }, srv = server) {
  const res = await postChat(srv, srv.token(user), payload);
  assertStream(res, 'POST /v1/chat');
  const ack = assertAck(await res.sse.waitFor('chat:ack'));
  return { res, ack };
}

/** Resolves once `GET /` reports no running generation (the answer is stored). */
async function allStored(srv = server, ms = 15_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    if ((await serverInfo(srv)).generations === 0) return;
    if (Date.now() > deadline) throw new Error('generations still registered');
    await sleep(20);
  }
}

// ---------------------------------------------------------------------------

describe('POST /v1/chat', () => {
  test('a whole chat: chat:ack, chat:conversation, chat:user-message, chunks with SSE ids, chat:end; then the response ends', async () => {
    const user = uniqueUser();
    const res = await postChat(server, server.token(user), { message: 'hello over sse', userId: user, temperature: 0.3, maxTokens: 500 });
    assertStream(res);
    assert.match(res.contentType, /^text\/event-stream/);
    assert.equal(await res.sse.waitEnded(), 'end');
    const first = assertSseChat(res.sse, { text: TEXT, userMessage: 'hello over sse', newConversation: true });
    assert.equal(first.end.promptTokens, mockTokens('hello over sse').length, 'the model saw the question only');

    // A second turn in the same conversation: no chat:conversation; the history went to the model.
    const res2 = await postChat(server, server.token(user), { message: 'and then?', conversationId: first.conversationId });
    assertStream(res2);
    await res2.sse.waitEnded();
    const second = assertSseChat(res2.sse, { text: TEXT, userMessage: 'and then?', newConversation: false, conversationId: first.conversationId });
    assert.notEqual(second.messageId, first.messageId);
    assert.equal(
      second.end.promptTokens,
      mockTokens('hello over sse').length + mockTokens(TEXT).length + mockTokens('and then?').length,
      'the stored question and answer were sent as context',
    );

    // Both answers are stored as they ended.
    for (const turn of [first, second]) {
      const r = await replay(server, server.token(user), turn.ack, { final: 'chat:end' });
      assert.equal(r.text, TEXT);
      assert.deepEqual(r.final.data, turn.end);
    }
  });

  test('POST /v1/answers/{id}/stop mid-answer: { ok: true, stopped: true }, the stream ends with chat:stopped, the partial answer is stored', async () => {
    const user = uniqueUser();
    const { res, ack } = await start(user);
    await res.sse.waitFor((e) => e.event === 'chat:message' && e.data.seq === 2);
    const stop = await stopAnswer(server, server.token(user), ack.messageId);
    assert.equal(stop.status, 200, JSON.stringify(stop.body));
    assert.deepEqual(stop.body, { ok: true, stopped: true });
    assert.equal(await res.sse.waitEnded(), 'end');

    const events = res.sse.events;
    const got = assertAnswerEvents(events.slice(answerStart(events)), {
      messageId: ack.messageId,
      conversationId: ack.conversationId,
      final: 'chat:stopped',
      label: 'stopped stream',
    });
    assert.ok(got.chunks >= 3);
    assert.ok(got.text.length < TEXT.length && TEXT.startsWith(got.text), 'a strict prefix of the answer');
    assert.equal(got.final.data.content, got.text);

    const again = await stopAnswer(server, server.token(user), ack.messageId);
    assert.equal(again.status, 200);
    assert.deepEqual(again.body, { ok: true, stopped: false }, 'nothing left to stop');

    const r = await replay(server, server.token(user), ack, { final: 'chat:stopped' });
    assert.equal(r.text, got.text, 'the stored partial answer');
    assert.deepEqual(r.final.data, got.final.data);
  });

  test('stop as soon as chat:ack is read: chat:stopped with what was sent, stored the same', async () => {
    const user = uniqueUser();
    const res = await postChat(server, server.token(user), { message: 'never mind' });
    assertStream(res);
    // Stop as soon as the ack is read (before the mock's first token at 20 ms is likely).
    const ack = assertAck(await res.sse.waitFor('chat:ack'));
    const stop = await stopAnswer(server, server.token(user), ack.messageId);
    assert.deepEqual(stop.body, { ok: true, stopped: true });
    await res.sse.waitEnded();
    const events = res.sse.events;
    const got = assertAnswerEvents(events.slice(answerStart(events)), {
      messageId: ack.messageId,
      conversationId: ack.conversationId,
      final: 'chat:stopped',
    });
    assert.ok(TEXT.startsWith(got.final.data.content));
    const r = await replay(server, server.token(user), ack, { final: 'chat:stopped' });
    assert.equal(r.final.data.content, got.final.data.content);
  });
});

// ---------------------------------------------------------------------------

describe('GET /v1/answers/{id}/events: resuming', () => {
  const points = [
    { label: 'right after chat:ack (no Last-Event-ID: from 0)', cut: (sse) => sse.events.length >= 1 },
    { label: 'after the first chunk', cut: (sse) => sse.events.some((e) => e.event === 'chat:message') },
    { label: 'mid-answer', cut: (sse) => sse.events.filter((e) => e.event === 'chat:message').length >= 15 },
  ];
  for (const { label, cut } of points) {
    for (const how of ['Last-Event-ID', '?offset=']) {
      test(`response dropped ${label}, resumed with ${how}: the rest exactly, live, then chat:end`, async () => {
        const user = uniqueUser();
        const res = await postChat(server, server.token(user), { message: 'resume me' });
        assertStream(res);
        await res.sse.waitFor((e) => cut(res.sse));
        res.sse.abort();
        assert.equal(await res.sse.waitEnded(), 'abort');
        const ack = assertAck(res.sse.events[0]);
        const had = res.sse.events
          .filter((e) => e.event === 'chat:message')
          .map((e) => e.data.content)
          .join('');
        const id = lastId(res.sse);
        const from = res.sse.events.findLast((e) => e.event === 'chat:message')?.id ?? null;
        if (from !== null) assert.equal(id, from, 'the last id seen is the last chunk\'s');
        const offset = from === null ? 0 : Number(from);
        assert.equal(offset, had.length, 'the id is the UTF-16 length received');
        assert.ok(had.length < TEXT.length, 'dropped before the end');

        const opts = how === 'Last-Event-ID' ? { lastEventId: from ?? undefined } : { offset };
        const again = await getEvents(server, server.token(user), ack.messageId, opts);
        assertStream(again, 'GET events');
        assert.equal(await again.sse.waitEnded(), 'end');
        assert.ok(!again.sse.names().includes('chat:ack'), 'no chat:ack on GET');
        const rest = assertAnswerEvents(again.sse.events, { messageId: ack.messageId, conversationId: ack.conversationId, offset, final: 'chat:end', label });
        assert.equal(had + rest.text, TEXT, 'nothing lost, nothing repeated');
        assert.equal(rest.final.data.content, TEXT);
        assert.equal(rest.final.data.completionTokens, mockTokens(TEXT).length);
      });
    }
  }

  test('a finished answer replayed from the stored row at offset 0, mid, inside a surrogate pair, and its whole length', async () => {
    const user = uniqueUser();
    const { res, ack } = await start(user);
    await res.sse.waitEnded();
    const end = res.sse.events.at(-1);
    assert.equal(end.event, 'chat:end');
    await allStored();
    const token = server.token(user);

    const mid = TEXT.indexOf(' ', Math.floor(TEXT.length / 2));
    const emoji = TEXT.indexOf('😀', 10);
    assert.ok(emoji > 0 && TEXT.charCodeAt(emoji) >= 0xd800 && TEXT.charCodeAt(emoji) <= 0xdbff, 'a high surrogate at that index');
    const cases = [
      { ask: 0, expect: 0, label: 'offset 0' },
      { ask: mid, expect: mid, label: 'mid-answer' },
      { ask: emoji + 1, expect: emoji, label: 'inside a surrogate pair (moved back to the character)' },
      { ask: TEXT.length, expect: TEXT.length, label: 'the whole length' },
    ];
    for (const c of cases) {
      for (const how of ['Last-Event-ID', '?offset=']) {
        const r = await getEvents(server, token, ack.messageId, how === 'Last-Event-ID' ? { lastEventId: c.ask } : { offset: c.ask });
        assertStream(r, `${c.label} ${how}`);
        assert.equal(await r.sse.waitEnded(), 'end', `${c.label} ${how}: the replay ends`);
        const got = assertAnswerEvents(r.sse.events, {
          messageId: ack.messageId,
          conversationId: ack.conversationId,
          offset: c.expect,
          final: 'chat:end',
          label: `${c.label} ${how}`,
        });
        assert.equal(got.text, TEXT.slice(c.expect), `${c.label} ${how}`);
        assert.deepEqual(got.final.data, end.data, `${c.label} ${how}: the stored chat:end`);
        if (c.ask === TEXT.length) {
          assert.deepEqual(r.sse.names(), ['chat:end'], `${c.label} ${how}: only the final event`);
          assert.equal(r.sse.events[0].id, String(TEXT.length));
        }
        if (c.expect === emoji) {
          assert.ok(got.text.startsWith('😀'), 'the replay starts with the whole emoji');
          assert.equal(r.sse.events[0].data.offset, emoji);
        }
      }
    }
  });

  test('a malformed Last-Event-ID or offset is 400 INVALID_PARAMS; a malformed message id is 400 INVALID_PARAMS', async () => {
    const user = uniqueUser();
    const { res, ack } = await start(user);
    await res.sse.waitEnded();
    const token = server.token(user);
    assertRefused(await getEvents(server, token, ack.messageId, { lastEventId: 'abc' }), 400, 'INVALID_PARAMS', 'Last-Event-ID abc');
    assertRefused(await getEvents(server, token, ack.messageId, { offset: -1 }), 400, 'INVALID_PARAMS', 'offset -1');
    assertRefused(await getEvents(server, token, 'not-a-uuid'), 400, 'INVALID_PARAMS', 'message id not-a-uuid');
    assertRefused(await stopAnswer(server, token, 'not-a-uuid'), 400, 'INVALID_PARAMS', 'stop not-a-uuid');
  });
});

// ---------------------------------------------------------------------------

describe('EventSource (the eventsource package)', () => {
  test('?token= instead of a header (EventSource cannot set one): the stored answer, then the client closes', async () => {
    const user = uniqueUser();
    const { res, ack } = await start(user);
    await res.sse.waitEnded();
    const url = `${server.url}/v1/answers/${ack.messageId}/events?token=${encodeURIComponent(server.token(user))}`;
    const got = await new Promise((resolve, reject) => {
      const es = new EventSource(url);
      const seen = { text: '', ids: [], chunks: [], final: null, errors: [] };
      const timer = setTimeout(() => {
        es.close();
        reject(new Error(`no final event: ${JSON.stringify(seen).slice(0, 1000)}`));
      }, 15_000);
      es.addEventListener('chat:message', (e) => {
        const m = JSON.parse(e.data);
        seen.chunks.push(m);
        seen.text += m.content;
        seen.ids.push(e.lastEventId);
      });
      for (const name of FINAL_EVENTS) {
        es.addEventListener(name, (e) => {
          clearTimeout(timer);
          es.close();
          seen.final = { event: name, data: JSON.parse(e.data), id: e.lastEventId };
          resolve(seen);
        });
      }
      es.addEventListener('error', (e) => seen.errors.push({ code: e.code, message: e.message }));
    });
    assert.equal(got.final.event, 'chat:end');
    assert.equal(got.text, TEXT);
    assert.equal(got.final.data.content, TEXT);
    assert.equal(got.final.id, String(TEXT.length));
    assert.deepEqual(got.errors, []);
    let at = 0;
    got.chunks.forEach((m, i) => {
      assert.equal(m.offset, at);
      at += m.content.length;
      assert.equal(got.ids[i], String(at));
    });
  });

  test('a bad ?token= fails the EventSource with 401 (no reconnect loop)', async () => {
    const user = uniqueUser();
    const { res, ack } = await start(user);
    await res.sse.waitEnded();
    const err = await new Promise((resolve) => {
      const es = new EventSource(`${server.url}/v1/answers/${ack.messageId}/events?token=not.a.jwt`);
      es.addEventListener('error', (e) => {
        resolve({ code: e.code, readyState: es.readyState });
        es.close();
      });
    });
    assert.deepEqual(err, { code: 401, readyState: EventSource.CLOSED });
  });

  test('a connection cut mid-event: EventSource reconnects by itself with Last-Event-ID, and the text goes on exactly', { timeout: 30_000 }, async () => {
    const user = uniqueUser();
    const token = server.token(user);
    const { res, ack } = await start(user);
    res.sse.abort(); // the POST response goes away; the answer goes on

    // A fetch that adds the header, records Last-Event-ID, and cuts the first response
    // in the middle of its fourth chat:message event.
    const requests = [];
    const cutFetch = async (url, init) => {
      const headers = { ...init.headers, Authorization: `Bearer ${token}` };
      requests.push({ url: String(url), lastEventId: headers['Last-Event-ID'] ?? null });
      const real = await fetch(url, { ...init, headers });
      if (requests.length > 1 || real.status !== 200) return real;
      const reader = real.body.getReader();
      const dec = new TextDecoder();
      const enc = new TextEncoder();
      let seen = '';
      let delivered = 0;
      const body = new ReadableStream({
        async pull(controller) {
          const { done, value } = await reader.read();
          if (done) {
            controller.close();
            return;
          }
          seen += dec.decode(value, { stream: true });
          const starts = [...seen.matchAll(/event: ?chat:message/g)].map((m) => m.index);
          if (starts.length >= 4) {
            const cutAt = starts[3] + 24; // inside the 4th event's lines
            controller.enqueue(enc.encode(seen.slice(delivered, cutAt)));
            controller.close();
            reader.cancel().catch(() => {});
            return;
          }
          controller.enqueue(enc.encode(seen.slice(delivered)));
          delivered = seen.length;
        },
        cancel() {
          reader.cancel().catch(() => {});
        },
      });
      return new Response(body, { status: real.status, headers: real.headers });
    };

    const got = await new Promise((resolve, reject) => {
      const es = new EventSource(`${server.url}/v1/answers/${ack.messageId}/events`, { fetch: cutFetch });
      const seen = { text: '', chunks: [], ids: [], perConnection: [], final: null, errors: 0, contiguous: true };
      const timer = setTimeout(() => {
        es.close();
        reject(new Error(`no final event: ${JSON.stringify({ requests, seen }).slice(0, 1500)}`));
      }, 25_000);
      es.addEventListener('chat:message', (e) => {
        const m = JSON.parse(e.data);
        if (m.offset !== seen.text.length) seen.contiguous = false;
        seen.text += m.content;
        seen.chunks.push({ ...m, connection: requests.length });
        seen.ids.push(e.lastEventId);
      });
      for (const name of FINAL_EVENTS) {
        es.addEventListener(name, (e) => {
          clearTimeout(timer);
          es.close();
          seen.final = { event: name, data: JSON.parse(e.data), id: e.lastEventId };
          resolve(seen);
        });
      }
      es.addEventListener('error', () => seen.errors++);
    });

    assert.equal(requests.length, 2, `one reconnect: ${JSON.stringify(requests)}`);
    assert.equal(requests[0].lastEventId, null, 'the first request has no Last-Event-ID');
    const before = got.chunks.filter((c) => c.connection === 1);
    assert.equal(before.length, 3, 'three whole chunks before the cut (the fourth was cut and dropped)');
    const expectId = String(before.reduce((n, c) => n + c.content.length, 0));
    assert.equal(got.ids[2], expectId);
    assert.equal(requests[1].lastEventId, expectId, 'the reconnect sends the id of the last whole event');
    const afterCut = got.chunks.filter((c) => c.connection === 2);
    assert.ok(afterCut.length > 0);
    assert.equal(afterCut[0].offset, Number(expectId), 'the server goes on from Last-Event-ID');
    assert.equal(afterCut[0].seq, 0, 'seq counts from 0 on the new response');
    assert.ok(got.contiguous, 'no gap, no duplicate');
    assert.equal(got.text, TEXT);
    assert.equal(got.final.event, 'chat:end');
    assert.equal(got.final.data.content, TEXT);
    assert.equal(got.final.id, String(TEXT.length));
    assert.equal(got.errors, 1, 'one error event (the cut), then the reconnect');
  });
});

// ---------------------------------------------------------------------------

describe('keep-alive while the model is silent', () => {
  const KEEPALIVE_MS = 100;
  const SILENCE_MS = 1500;
  let quiet;
  before(async () => {
    quiet = await startServer({
      mockResponse: 'after a long pause',
      tokenDelayMs: 5,
      firstTokenDelayMs: SILENCE_MS,
      env: { SSE_KEEPALIVE_MS: String(KEEPALIVE_MS) },
    });
  });
  after(async () => {
    abortAllStreams();
    await quiet?.stop();
  });

  /** Keep-alive comments between the ack and the first chunk, and the longest quiet gap there. */
  function keepAlives(sse, fromEvent) {
    const t0 = sse.events[fromEvent].t;
    const firstChunk = sse.events.find((e) => e.event === 'chat:message');
    const inSilence = sse.comments.filter((c) => c.t >= t0 && c.t <= firstChunk.t);
    const times = [t0, ...inSilence.map((c) => c.t), firstChunk.t];
    const gaps = times.slice(1).map((t, i) => t - times[i]);
    return { count: inSilence.length, texts: [...new Set(inSilence.map((c) => c.text))], maxGap: Math.max(...gaps), silence: firstChunk.t - t0 };
  }

  test(`POST /v1/chat: ": keep-alive" comments every ~${KEEPALIVE_MS} ms until the first token; the answer is untouched`, async () => {
    const user = uniqueUser();
    const res = await postChat(quiet, quiet.token(user), { message: 'take your time' });
    assertStream(res);
    await res.sse.waitEnded(SILENCE_MS + 15_000);
    assertSseChat(res.sse, { text: 'after a long pause', userMessage: 'take your time', newConversation: true });
    const k = keepAlives(res.sse, 0);
    assert.ok(k.silence >= SILENCE_MS * 0.8, `the model was silent ${k.silence} ms`);
    assert.deepEqual(k.texts, ['keep-alive'], `the comment is ": keep-alive": ${JSON.stringify(k)}`);
    assert.ok(k.count >= Math.floor(SILENCE_MS / KEEPALIVE_MS / 3), `keep-alives in ${k.silence} ms of silence: ${k.count}`);
    assert.ok(k.maxGap <= KEEPALIVE_MS * 5, `longest quiet stretch ${k.maxGap} ms (period ${KEEPALIVE_MS} ms)`);
  });

  test('GET /v1/answers/{id}/events on a silent running answer gets keep-alives too', async () => {
    const user = uniqueUser();
    const { res, ack } = await start(user, { message: 'watch the silence' }, quiet);
    const watch = await getEvents(quiet, quiet.token(user), ack.messageId);
    assertStream(watch);
    await watch.sse.waitEnded(SILENCE_MS + 15_000);
    await res.sse.waitEnded();
    const got = assertAnswerEvents(watch.sse.events, { messageId: ack.messageId, conversationId: ack.conversationId, final: 'chat:end' });
    assert.equal(got.text, 'after a long pause');
    const comments = watch.sse.comments.filter((c) => c.afterEvents === 0);
    assert.ok(comments.length >= 3, `keep-alives before the first chunk on GET: ${comments.length}`);
    assert.ok(comments.every((c) => c.text === 'keep-alive'));
  });
});

// ---------------------------------------------------------------------------

describe('refusals: HTTP status and { ok: false, error: { code, message } }, nothing stored', () => {
  test('401 UNAUTHORIZED: no token, a malformed one, a foreign signature, expired; on every route', async () => {
    const user = uniqueUser();
    const { res, ack } = await start(user);
    await res.sse.waitEnded();
    const now = Math.floor(Date.now() / 1000);
    const { JwtService } = await import('@nestjs/jwt');
    const foreign = new JwtService({ secret: 'not-the-server-secret', signOptions: { expiresIn: '1h' } }).sign({ sub: user });
    const expired = server.jwt.sign({ sub: user, iat: now - 7200 }, { expiresIn: '1h' });
    for (const [label, token] of [
      ['no token', undefined],
      ['malformed', 'garbage'],
      ['foreign signature', foreign],
      ['expired', expired],
    ]) {
      assertRefused(await postChat(server, token, { message: 'hi' }), 401, 'UNAUTHORIZED', `POST /v1/chat, ${label}`);
      assertRefused(await getEvents(server, token, ack.messageId), 401, 'UNAUTHORIZED', `GET events, ${label}`);
      assertRefused(await stopAnswer(server, token, ack.messageId), 401, 'UNAUTHORIZED', `stop, ${label}`);
      if (token !== undefined) {
        assertRefused(await getEvents(server, undefined, ack.messageId, { queryToken: token }), 401, 'UNAUTHORIZED', `GET events ?token=, ${label}`);
      }
    }
    // A "Basic" scheme is not a bearer token.
    const basic = await postChat(server, undefined, { message: 'hi' }, { headers: { Authorization: `Basic ${server.token(user)}` } });
    assertRefused(basic, 401, 'UNAUTHORIZED', 'Basic scheme');
  });

  test('400 INVALID_PAYLOAD, MESSAGE_TOO_LONG, INVALID_PARAMS, INVALID_MODEL; 403 FORBIDDEN; 404 NOT_FOUND: nothing reaches the conversation', async () => {
    const user = uniqueUser();
    const token = server.token(user);
    // A conversation with one stored turn.
    const first = await postChat(server, token, { message: 'first question' });
    assertStream(first);
    await first.sse.waitEnded();
    const turn = assertSseChat(first.sse, { text: TEXT, userMessage: 'first question', newConversation: true });
    const conversationId = turn.conversationId;
    const otherUser = uniqueUser('other');
    const theirs = await postChat(server, server.token(otherUser), { message: 'not yours' });
    assertStream(theirs);
    await theirs.sse.waitEnded();
    const theirConversation = assertAck(theirs.sse.events[0]).conversationId;

    const cases = [
      [{ conversationId }, 400, 'INVALID_PAYLOAD', 'no message'],
      [{ message: '', conversationId }, 400, 'INVALID_PAYLOAD', 'empty message'],
      [{ message: 42, conversationId }, 400, 'INVALID_PAYLOAD', 'message not a string'],
      [{ message: 'hi', temperature: 'hot', conversationId }, 400, 'INVALID_PAYLOAD', 'temperature not a number'],
      [{ message: 'x'.repeat(MAX_CHARS + 1), conversationId }, 400, 'MESSAGE_TOO_LONG', 'one character over'],
      [{ message: 'hi', temperature: 2.5, conversationId }, 400, 'INVALID_PARAMS', 'temperature over 2'],
      [{ message: 'hi', maxTokens: -5, conversationId }, 400, 'INVALID_PARAMS', 'negative maxTokens'],
      [{ message: 'hi', conversationId: 'not-a-uuid' }, 400, 'INVALID_PARAMS', 'malformed conversationId'],
      [{ message: 'hi', model: 'not-allowed-model', conversationId }, 400, 'INVALID_MODEL', 'model not in ALLOWED_MODELS'],
      [{ message: 'hi', userId: otherUser, conversationId }, 403, 'FORBIDDEN', 'userId of another user'],
      [{ message: 'hi', conversationId: randomUUID() }, 404, 'NOT_FOUND', 'unknown conversation'],
      [{ message: 'hi', conversationId: theirConversation }, 404, 'NOT_FOUND', "another user's conversation"],
    ];
    for (const [payload, status, code, label] of cases) {
      assertRefused(await postChat(server, token, payload), status, code, label);
    }
    for (const [raw, label] of [
      ['{"message": "hi"', 'truncated JSON'],
      ['"just a string"', 'a JSON string'],
      ['[{"message": "hi"}]', 'a JSON array'],
      ['null', 'null'],
    ]) {
      assertRefused(await postChat(server, token, undefined, { raw }), 400, 'INVALID_PAYLOAD', label);
    }
    assertRefused(await getEvents(server, token, randomUUID()), 404, 'NOT_FOUND', 'GET events of an unknown id');
    assertRefused(await stopAnswer(server, token, randomUUID()), 404, 'NOT_FOUND', 'stop of an unknown id');
    assertRefused(await getEvents(server, token, turn.userMessageId), 404, 'NOT_FOUND', 'GET events of a user message');
    assert.equal((await serverInfo(server)).generations, 0, 'no refusal started a generation');

    // The limit itself is fine, and the conversation holds only the first turn:
    // the model gets exactly its history plus the new question.
    const ok = await postChat(server, token, { message: 'y'.repeat(MAX_CHARS), conversationId, userId: user, model: 'gpt-4o-mini' });
    assertStream(ok);
    await ok.sse.waitEnded();
    const next = assertSseChat(ok.sse, { text: TEXT, userMessage: 'y'.repeat(MAX_CHARS), newConversation: false, conversationId, model: 'gpt-4o-mini' });
    assert.equal(next.end.promptTokens, mockTokens('first question').length + mockTokens(TEXT).length + 1, 'no refused message was stored');
  });

  describe('429 RATE_LIMIT', () => {
    let limited;
    let perMinute;
    before(async () => {
      [limited, perMinute] = await Promise.all([
        startServer({ mockResponse: TEXT, tokenDelayMs: 40, env: { MAX_CONCURRENT_STREAMS_PER_USER: '1', RATE_LIMIT_PER_MINUTE: '0' } }),
        startServer({ mockResponse: 'short', tokenDelayMs: 5, env: { RATE_LIMIT_PER_MINUTE: '1' } }),
      ]);
    });
    after(async () => {
      abortAllStreams();
      await Promise.all([limited?.stop(), perMinute?.stop()]);
    });

    test('MAX_CONCURRENT_STREAMS_PER_USER=1: a second start while the first streams is 429; others and later starts are fine', async () => {
      const user = uniqueUser();
      const { res, ack } = await start(user, { message: 'one' }, limited);
      await res.sse.waitFor('chat:message');
      assertRefused(await postChat(limited, limited.token(user), { message: 'two' }), 429, 'RATE_LIMIT', 'second concurrent start');
      // Another user is not limited by this one.
      const other = await postChat(limited, limited.token(uniqueUser()), { message: 'elsewhere' });
      assertStream(other);
      // The first answer was not disturbed; once it ended the user may start again.
      await res.sse.waitEnded();
      assertSseChat(res.sse, { text: TEXT, userMessage: 'one', newConversation: true });
      await other.sse.waitEnded();
      const again = await postChat(limited, limited.token(user), { message: 'three', conversationId: ack.conversationId });
      assertStream(again, 'after the first ended');
      await again.sse.waitEnded();
      const third = assertSseChat(again.sse, { text: TEXT, userMessage: 'three', newConversation: false, conversationId: ack.conversationId });
      assert.equal(third.end.promptTokens, 1 + mockTokens(TEXT).length + 1, 'the refused "two" was not stored');
    });

    test('RATE_LIMIT_PER_MINUTE=1: the second start within the minute is 429', async () => {
      const user = uniqueUser();
      const first = await postChat(perMinute, perMinute.token(user), { message: 'once' });
      assertStream(first);
      await first.sse.waitEnded();
      assertSseChat(first.sse, { text: 'short', userMessage: 'once', newConversation: true });
      assertRefused(await postChat(perMinute, perMinute.token(user), { message: 'twice' }), 429, 'RATE_LIMIT', 'second start');
      const other = await postChat(perMinute, perMinute.token(uniqueUser()), { message: 'me too' });
      assertStream(other, 'another user has a bucket of its own');
      await other.sse.waitEnded();
    });
  });
});

// ---------------------------------------------------------------------------

describe('failures after chat:ack end the stream with chat:error (HTTP 200)', () => {
  let broken;
  let silent;
  before(async () => {
    // A port nobody listens on: the upstream connection is refused.
    const closed = await freePort();
    [broken, silent] = await Promise.all([
      startServer({ env: { OPENAI_BASE_URL: `http://127.0.0.1:${closed}/v1`, OPENAI_API_KEY: 'test', UPSTREAM_ATTEMPTS: '1' } }),
      startServer({ mockResponse: 'too late', firstTokenDelayMs: 5000, env: { UPSTREAM_FIRST_TOKEN_TIMEOUT_MS: '400', UPSTREAM_ATTEMPTS: '1' } }),
    ]);
  });
  after(async () => {
    abortAllStreams();
    await Promise.all([broken?.stop(), silent?.stop()]);
  });

  for (const [label, srv, code] of [
    ['upstream unreachable (closed port, UPSTREAM_ATTEMPTS=1): UPSTREAM_ERROR', () => broken, 'UPSTREAM_ERROR'],
    ['upstream silent past UPSTREAM_FIRST_TOKEN_TIMEOUT_MS: UPSTREAM_TIMEOUT', () => silent, 'UPSTREAM_TIMEOUT'],
  ]) {
    test(label, async () => {
      const s = srv();
      const user = uniqueUser();
      const res = await postChat(s, s.token(user), { message: 'will fail' });
      assertStream(res, 'a failure after the ack is not a refusal');
      assert.equal(await res.sse.waitEnded(), 'end');
      const ack = assertAck(res.sse.events[0]);
      assert.deepEqual(res.sse.names().slice(0, 3), ['chat:ack', 'chat:conversation', 'chat:user-message']);
      const got = assertAnswerEvents(res.sse.events.slice(3), { messageId: ack.messageId, conversationId: ack.conversationId, final: 'chat:error', label });
      assert.equal(got.final.data.code, code);
      assert.equal(got.text, '');
      assert.equal(got.final.id, '0');

      // Stored with its code: the replay ends with the same chat:error.
      const r = await replay(s, s.token(user), ack, { final: 'chat:error' });
      assert.deepEqual(r.events.map((e) => e.event), ['chat:error']);
      assert.equal(r.final.data.code, code);
      assert.equal(r.final.data.messageId, ack.messageId);
    });
  }
});

// ---------------------------------------------------------------------------

describe("another user's answer", () => {
  test('GET events and stop are 404 NOT_FOUND, running or finished; the owner loses nothing', async () => {
    const owner = uniqueUser('owner');
    const intruder = server.token(uniqueUser('intruder'));
    const { res, ack } = await start(owner);
    await res.sse.waitFor('chat:message');

    const tryAll = async (when) => {
      assertRefused(await getEvents(server, intruder, ack.messageId), 404, 'NOT_FOUND', `GET events (${when})`);
      assertRefused(await getEvents(server, intruder, ack.messageId, { lastEventId: 5 }), 404, 'NOT_FOUND', `GET events from 5 (${when})`);
      assertRefused(await getEvents(server, undefined, ack.messageId, { queryToken: intruder }), 404, 'NOT_FOUND', `GET events ?token= (${when})`);
      assertRefused(await stopAnswer(server, intruder, ack.messageId), 404, 'NOT_FOUND', `stop (${when})`);
    };
    await tryAll('running');
    await res.sse.waitEnded();
    const turn = assertSseChat(res.sse, { text: TEXT, userMessage: 'tell me a story', newConversation: true });
    assert.equal(turn.end.content, TEXT, 'the foreign stop did not stop it');
    await allStored();
    await tryAll('stored');
  });
});

// ---------------------------------------------------------------------------

describe('cross-wire: SSE and socket.io', () => {
  test('an SSE client watches (GET events) an answer a socket.io client started', async () => {
    const user = uniqueUser();
    const socket = await connect(server, server.token(user));
    const rec = new Recorder(socket);
    const ack = await socket.timeout(10_000).emitWithAck('chat:start', { message: 'started on socket.io' });
    assert.equal(ack.ok, true, JSON.stringify(ack));
    await rec.waitFor((e) => e.event === 'chat:message' && e.data.seq === 4);

    const watch = await getEvents(server, server.token(user), ack.messageId);
    assertStream(watch);
    // Not finished yet when the watch began: it follows live.
    const firstChunk = await watch.sse.waitFor('chat:message');
    assert.equal(firstChunk.data.offset, 0, 'from the start');
    await watch.sse.waitEnded();
    const socketEnd = await rec.waitFor('chat:end');
    const got = assertAnswerEvents(watch.sse.events, { messageId: ack.messageId, conversationId: ack.conversationId, final: 'chat:end', label: 'SSE watcher' });
    assert.ok(got.chunks > 1, 'live chunks after the catch-up');
    assert.equal(got.text, TEXT);
    assert.deepEqual(got.final.data, socketEnd.data, 'the same chat:end on both wires');

    // And later, from the stored row, from the middle.
    await allStored();
    const tail = await getEvents(server, server.token(user), ack.messageId, { lastEventId: 10 });
    assertStream(tail);
    await tail.sse.waitEnded();
    const t = assertAnswerEvents(tail.sse.events, { messageId: ack.messageId, conversationId: ack.conversationId, offset: 10, final: 'chat:end' });
    assert.equal(t.text, TEXT.slice(10));
  });

  test('a socket.io client chat:join-s a conversation whose answer an SSE client started: from offset 0, then live', async () => {
    const user = uniqueUser();
    const { res, ack } = await start(user);
    await res.sse.waitFor((e) => e.event === 'chat:message' && e.data.seq === 4);

    const socket = await connect(server, server.token(user));
    const rec = new Recorder(socket);
    const joined = await socket.timeout(10_000).emitWithAck('chat:join', { conversationId: ack.conversationId });
    assertKeys(joined, ['ok', 'conversationId', 'generations']);
    assert.equal(joined.ok, true);
    assert.equal(joined.conversationId, ack.conversationId);
    assert.equal(joined.generations.length, 1, JSON.stringify(joined));
    assertKeys(joined.generations[0], ['conversationId', 'messageId', 'offset'], [], 'generation');
    assert.equal(joined.generations[0].messageId, ack.messageId);

    const end = await rec.waitFor((e) => e.event === 'chat:end' && e.data.messageId === ack.messageId, { timeout: 15_000 });
    await res.sse.waitEnded();
    const chunks = rec.events.filter((e) => e.event === 'chat:message').map((e) => e.data);
    assert.ok(chunks.length > 1, 'catch-up, then live chunks');
    let at = 0;
    chunks.forEach((c, i) => {
      assert.equal(c.messageId, ack.messageId);
      assert.equal(c.offset, at, `joiner chunk ${i} offset`);
      assert.equal(c.seq, i);
      at += c.content.length;
    });
    assert.equal(chunks.map((c) => c.content).join(''), TEXT);
    const sseEnd = res.sse.events.at(-1);
    assert.equal(sseEnd.event, 'chat:end');
    assert.deepEqual(end.data, sseEnd.data, 'the same chat:end on both wires');
  });

  test('chat:active on connect lists an answer started over SSE', async () => {
    const user = uniqueUser();
    const { res, ack } = await start(user);
    await res.sse.waitFor((e) => e.event === 'chat:message' && e.data.seq === 2);
    const had = Number(lastId(res.sse));

    const socket = makeSocket(server, server.token(user), { autoConnect: false });
    const active = new Promise((resolve) => socket.once('chat:active', resolve));
    socket.connect();
    await waitConnected(socket);
    const listed = await active;
    assertKeys(listed, ['generations']);
    assert.equal(listed.generations.length, 1, JSON.stringify(listed));
    const g = listed.generations[0];
    assertKeys(g, ['conversationId', 'messageId', 'offset'], [], 'chat:active entry');
    assert.equal(g.messageId, ack.messageId);
    assert.equal(g.conversationId, ack.conversationId);
    assert.ok(Number.isInteger(g.offset) && g.offset >= had && g.offset <= TEXT.length, `offset ${g.offset}, SSE had ${had}`);
    await res.sse.waitEnded();
  });

  test('a client that aborts its POST /v1/chat mid-answer loses nothing: the answer finishes and is stored', async () => {
    const user = uniqueUser();
    const { res, ack } = await start(user);
    await res.sse.waitFor((e) => e.event === 'chat:message' && e.data.seq === 3);
    res.sse.abort();
    assert.equal(await res.sse.waitEnded(), 'abort');
    const had = res.sse.events.filter((e) => e.event === 'chat:message').map((e) => e.data.content).join('');
    assert.ok(had.length > 0 && had.length < TEXT.length, 'aborted mid-answer');

    // Nobody is listening now; the answer runs to its end and is stored.
    await allStored();
    const r = await replay(server, server.token(user), ack, { final: 'chat:end' });
    assert.equal(r.text, TEXT);
    assert.equal(r.final.data.content, TEXT);
    assert.equal(r.final.data.finishReason, 'stop');
    assert.equal(r.final.data.completionTokens, mockTokens(TEXT).length);

    // socket.io sees it as stored and complete too.
    const socket = await connect(server, server.token(user));
    const resumed = await socket.timeout(10_000).emitWithAck('chat:resume', { messageId: ack.messageId, offset: had.length });
    assert.equal(resumed.ok, true, JSON.stringify(resumed));
    assert.equal(resumed.status, 'complete');
    assert.equal(resumed.offset, had.length);
  });
});
