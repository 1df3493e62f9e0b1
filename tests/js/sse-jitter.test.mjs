// The SSE jitter run: many clients each start an answer with POST /v1/chat; every
// 1-4 s a client's response is cut (AbortController) and resumed with GET
// /v1/answers/{id}/events and Last-Event-ID, until the answer's final event. Every
// answer must arrive intact: the text the client pieced together == the final
// chat:end.content == what a replay from offset 0 returns == the mock answer.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { mockTokens, sleep, startServer, uniqueUser } from './support.mjs';
import { abortAllStreams, assertAnswerEvents, getEvents, percentile, postChat, serverInfo } from './sse-support.mjs';

const CLIENTS = Number(process.env.CHATWIRE_SSE_JITTER_CLIENTS || 100);
const TOKENS = Number(process.env.CHATWIRE_SSE_JITTER_TOKENS || 150);
const RAMP_MS = Number(process.env.CHATWIRE_SSE_JITTER_RAMP_MS || 20);
// Every client gives up after this long; the test fails then.
const DEADLINE_MS = 45_000;
const MAX_RESUMES = 40;

const SAMPLES = ['alpha', '😀beta', 'naïve', '𝄞clef', '日本語'];
const LONG_TEXT = Array.from({ length: TOKENS }, (_, i) => `${SAMPLES[i % SAMPLES.length]}${i}`).join(' ');

let server;
before(async () => {
  server = await startServer({
    mockResponse: LONG_TEXT,
    tokenDelayMs: 20,
    firstTokenDelayMs: 20,
    env: { RATE_LIMIT_PER_MINUTE: '0' },
  });
});
after(async () => {
  abortAllStreams();
  await server?.stop();
});

describe('SSE jitter run', () => {
  test(`${CLIENTS} SSE clients, responses cut every 1-4 s and resumed with Last-Event-ID: every answer intact`, { timeout: 90_000 }, async () => {
    const t0 = Date.now();
    const stopAt = t0 + DEADLINE_MS;
    const latencies = []; // GET sent -> first event of the resumed response
    let drops = 0;
    let unavailable = 0; // 503 UNAVAILABLE (database busy), retried
    let resumedFromStored = 0; // resumes whose first event was the final one

    /** POST or GET, again after a 503 UNAVAILABLE (as that code asks). */
    const retrying = async (send, what) => {
      for (let attempt = 1; ; attempt++) {
        const res = await send();
        if (res.sse && res.status === 200) return res;
        if (res.status === 503 && res.body?.error?.code === 'UNAVAILABLE' && attempt < 5) {
          unavailable++;
          await sleep(200 * attempt);
          continue;
        }
        throw new Error(`${what}: HTTP ${res.status} ${JSON.stringify(res.body)}`);
      }
    };

    const client = async (i) => {
      await sleep(i * RAMP_MS);
      const user = uniqueUser('ssejit');
      const token = server.token(user);
      const c = { user, token, ack: null, text: '', lastId: null, final: null, contiguous: true, idsOk: true, drops: 0, resumes: 0 };
      let res = await retrying(() => postChat(server, token, { message: `jitter ${i}` }), 'POST /v1/chat');
      let fresh = false; // true for a GET response (the first event measured)
      for (;;) {
        const sse = res.sse;
        const cutIn = 1000 + Math.random() * 3000;
        let timer;
        const cut = new Promise((r) => (timer = setTimeout(r, cutIn, 'cut')));
        const outcome = await Promise.race([sse.waitFinal({ timeout: DEADLINE_MS }).then(() => 'final', (e) => e), cut]);
        clearTimeout(timer);
        if (outcome === 'cut') {
          sse.abort();
        }
        await sse.waitEnded(10_000);
        if (fresh && sse.firstEventAt !== null) {
          latencies.push(sse.firstEventAt - res.t0);
          if (sse.events[0] && sse.events[0].event !== 'chat:message') resumedFromStored++;
        }
        // What the app received on this response, in order.
        for (const e of sse.events) {
          if (e.event === 'chat:ack') {
            c.ack = e.data;
          } else if (e.event === 'chat:message') {
            if (e.data.offset !== c.text.length || e.data.messageId !== c.ack?.messageId) c.contiguous = false;
            c.text += e.data.content;
            if (e.id !== String(c.text.length)) c.idsOk = false;
          } else if (e.event === 'chat:end' || e.event === 'chat:stopped' || e.event === 'chat:error') {
            c.final = e;
          }
          if (e.id !== null) c.lastId = e.id;
        }
        if (c.final) break;
        if (outcome instanceof Error) throw outcome;
        assert.ok(c.ack, `client ${i}: the response was cut before chat:ack arrived`);
        if (Date.now() > stopAt || c.resumes >= MAX_RESUMES) {
          throw new Error(`client ${i}: no final event after ${c.resumes} resumes (${c.text.length}/${LONG_TEXT.length})`);
        }
        drops++;
        c.drops++;
        c.resumes++;
        res = await retrying(() => getEvents(server, token, c.ack.messageId, { lastEventId: c.lastId ?? undefined }), 'GET events');
        fresh = true;
      }
      return c;
    };

    let clients;
    try {
      clients = await Promise.all(Array.from({ length: CLIENTS }, (_, i) => client(i)));
    } catch (e) {
      abortAllStreams();
      console.error(`server log (tail):\n${server.log().slice(-6000)}`);
      throw e;
    }
    const runMs = Date.now() - t0;

    // What is stored: each answer replayed from offset 0.
    const stored = new Map();
    for (let k = 0; k < clients.length; k += 25) {
      await Promise.all(
        clients.slice(k, k + 25).map(async (c) => {
          const res = await retrying(() => getEvents(server, c.token, c.ack.messageId), 'replay');
          await res.sse.waitEnded(15_000);
          stored.set(c.ack.messageId, assertAnswerEvents(res.sse.events, { messageId: c.ack.messageId, conversationId: c.ack.conversationId, final: 'chat:end', label: 'replay' }));
        }),
      );
    }

    const broken = clients.filter((c) => {
      const s = stored.get(c.ack.messageId);
      return !(
        c.contiguous &&
        c.idsOk &&
        c.final?.event === 'chat:end' &&
        c.final.data.content === c.text &&
        c.text === s.text &&
        s.text === LONG_TEXT &&
        c.final.id === String(LONG_TEXT.length)
      );
    });
    for (const c of broken.slice(0, 10)) {
      console.log(
        `# not intact: ${c.final?.event} ${c.final?.data?.code ?? ''} text ${c.text.length}/${LONG_TEXT.length} contiguous=${c.contiguous} ids=${c.idsOk} drops=${c.drops}`,
      );
    }
    const sorted = [...latencies].sort((x, y) => x - y);
    const cutClients = clients.filter((c) => c.drops > 0).length;
    const info = await serverInfo(server);
    console.log(
      `# sse jitter run: ${CLIENTS} clients, ${TOKENS}-token answers at 20 ms, ${drops} drops (${cutClients} clients cut at least once, ` +
        `max ${Math.max(...clients.map((c) => c.drops))} for one), ${(runMs / 1000).toFixed(1)} s`,
    );
    console.log(
      `resume latency p50=${percentile(sorted, 50)}ms p99=${percentile(sorted, 99)}ms over ${sorted.length} resumes ` +
        `(${resumedFromStored} after the answer had ended), answers intact=${CLIENTS - broken.length}/${CLIENTS}`,
    );
    console.log(`# 503 UNAVAILABLE retried: ${unavailable}; generations still registered: ${info.generations}`);

    assert.equal(broken.length, 0, `every answer intact (${broken.length} not)`);
    assert.ok(drops > 0, 'responses were cut');
    assert.equal(latencies.length, drops, 'every resume got an event');
    for (const s of stored.values()) assert.equal(s.final.data.completionTokens, mockTokens(LONG_TEXT).length);
    assert.equal(info.generations, 0, 'finished answers are released from memory');
  });
});
