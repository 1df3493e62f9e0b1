// A client written for Smriti's WebSocket server, as its README writes the messages,
// with only the URL changed: node's `ws` against the debug binary, whose voice upstream
// is a fake Realtime API (a `ws` server on loopback). Prints the session's event
// transcript, both directions, and the stored rows, with CHATWIRE_TEST_VERBOSE set.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket, { WebSocketServer } from 'ws';

import { startServer, uniqueUser } from './support.mjs';

const SPOKEN = ['Breathe in for four counts, ', 'then out for six.'];
const HEARD = 'And after the talk?';

/** The fake upstream: the text of every frame it gets; a response for each response.create. */
async function fakeRealtime(log) {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((r) => wss.once('listening', r));
  const frames = [];
  wss.on('connection', (ws) => {
    const send = (event) => {
      const text = JSON.stringify(event);
      log.push(['upstream → server', text]);
      ws.send(text);
    };
    ws.on('message', (data) => {
      const text = data.toString();
      frames.push(text);
      log.push(['server → upstream', text]);
      const event = JSON.parse(text);
      if (event.type === 'conversation.item.create') send({ type: 'conversation.item.added', item: { id: 'item_1', ...event.item } });
      if (event.type === 'input_audio_buffer.commit') {
        send({ type: 'input_audio_buffer.committed', item_id: 'item_2' });
        send({ type: 'conversation.item.input_audio_transcription.completed', item_id: 'item_2', content_index: 0, transcript: HEARD });
      }
      if (event.type === 'response.create') {
        send({ type: 'response.created', response: { id: 'resp_1', status: 'in_progress' } });
        for (const delta of SPOKEN) send({ type: 'response.output_audio_transcript.delta', response_id: 'resp_1', delta });
        send({ type: 'response.done', response: { id: 'resp_1', status: 'completed', usage: { total_tokens: 21, input_tokens: 12, output_tokens: 9 } } });
      }
    });
  });
  return { url: `ws://127.0.0.1:${wss.address().port}/v1/realtime`, frames, close: () => new Promise((r) => wss.close(r)) };
}

describe('a Smriti client through node ws', () => {
  const log = [];
  let fake;
  let server;
  before(async () => {
    fake = await fakeRealtime(log);
    server = await startServer({ env: { OPENAI_REALTIME_URL: fake.url, REALTIME_API_KEY: 'sk-js', REALTIME_PATH: '/' } });
  });
  after(async () => {
    await server.stop();
    await fake.close();
  });

  test('welcome, ping/pong, a text turn, an openai_event and a spoken turn, stored as a conversation', async () => {
    const user = uniqueUser('smriti');
    const token = server.token(user);
    // Smriti's URL: the server's root with ?token=.
    const ws = new WebSocket(`${server.url.replace('http', 'ws')}/?token=${token}`);
    const received = [];
    const waiters = [];
    ws.on('message', (data) => {
      const text = data.toString();
      log.push(['server → client', text]);
      const msg = JSON.parse(text);
      received.push(msg);
      for (const w of [...waiters]) if (w.match(msg)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(msg); }
    });
    const until = (match) =>
      received.find(match) ||
      new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('no such message within 10 s')), 10_000);
        waiters.push({ match, resolve: (m) => { clearTimeout(timer); resolve(m); } });
      });
    const send = (msg) => {
      const text = JSON.stringify(msg);
      log.push(['client → server', text]);
      ws.send(text);
    };
    const welcome = await until((m) => m.type === 'welcome');
    assert.deepEqual(Object.keys(welcome.payload).sort(), ['authenticated', 'features', 'message', 'preset', 'sessionId', 'userId']);
    assert.equal(welcome.payload.userId, user);
    assert.equal(welcome.payload.authenticated, true);
    const sessionId = welcome.sessionId;

    send({ type: 'ping' });
    const pong = await until((m) => m.type === 'pong');
    assert.equal(pong.sessionId, sessionId);

    send({ type: 'text_message', payload: { text: 'How do I calm down before a talk?' } });
    const done = await until((m) => m.type === 'openai_event' && m.payload.type === 'response.done');
    assert.equal(done.sessionId, sessionId);
    const spoken = received.filter((m) => m.payload?.type === 'response.output_audio_transcript.delta').map((m) => m.payload.delta);
    assert.deepEqual(spoken, SPOKEN);

    // The primary format: a raw Realtime event, forwarded as its own text.
    const payload = '{"type":"response.create","event_id":"evt_js"}';
    log.push(['client → server', `{"type":"openai_event","payload":${payload}}`]);
    ws.send(`{"type":"openai_event","payload":${payload}}`);
    await until((m) => m.type === 'openai_event' && m.payload.type === 'response.done' && m !== done);
    assert.equal(fake.frames.at(-1), payload);
    assert.equal(JSON.parse(fake.frames[0]).type, 'session.update');

    // A spoken turn: 10 ms of a 440 Hz tone as PCM16 at 24 kHz in audio_data, then audio_commit.
    const pcm = Buffer.alloc(480);
    for (let i = 0; i < 240; i++) pcm.writeInt16LE(Math.round(Math.sin((2 * Math.PI * 440 * i) / 24000) * 8000), i * 2);
    const audio = pcm.toString('base64');
    const sentBefore = fake.frames.length;
    send({ type: 'audio_data', payload: { audio } });
    send({ type: 'audio_commit', payload: {} });
    const answers = () => received.filter((m) => m.type === 'openai_event' && m.payload.type === 'response.done').length;
    await until((m) => m.type === 'openai_event' && m.payload.type === 'response.done' && answers() === 3);
    assert.deepEqual(
      fake.frames.slice(sentBefore).map((f) => JSON.parse(f)),
      [{ type: 'input_audio_buffer.append', audio }, { type: 'input_audio_buffer.commit' }, { type: 'response.create' }],
    );

    const closed = new Promise((r) => ws.on('close', r));
    ws.close();
    await closed;

    const auth = { headers: { authorization: `Bearer ${token}` } };
    const detail = await (await fetch(`${server.url}/v1/conversations/${sessionId}`, auth)).json();
    assert.deepEqual(
      detail.messages.map((m) => [m.role, m.content]),
      [
        ['user', 'How do I calm down before a talk?'],
        ['assistant', SPOKEN.join('')],
        ['assistant', SPOKEN.join('')],
        ['user', HEARD],
        ['assistant', SPOKEN.join('')],
      ],
    );
    if (process.env.CHATWIRE_TEST_VERBOSE) {
      for (const [dir, text] of log) console.log(`${dir}: ${text}`);
      for (const m of detail.messages) console.log(`stored: ${JSON.stringify(m)}`);
    }
  });
});
