// The voice example (client-examples/realtime) in headless Chromium against the real
// chatwire binary and a fake Realtime upstream (node `ws` on loopback): Chromium's fake
// microphone plays a generated tone (a WAV file made here), the page streams it as PCM16
// at 24 kHz, the fake receives the audio and answers, and the page shows both
// transcripts; the session is stored as a conversation. Screenshot: realtime.png.
//
//   node --test realtime.test.mjs

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { WebSocketServer } from 'ws';

import { CHROMIUM, CHROMIUM_ARGS, Chatwire, REPO, serveStatic } from './support.mjs';

const T = 60_000;
const HEARD = 'Is the river warm enough to swim today?';
const SPOKEN = ['Probably not yet; ', 'the water is still cold in spring.'];
const SCREENSHOT_DIR =
  process.env.UPDATE_SCREENSHOTS === '1' ? path.join(REPO, 'docs/screenshots') : path.join(REPO, 'target/browser-screenshots');

/** A WAV file of `seconds` of a 440 Hz tone, PCM16 mono at 48 kHz, for the fake microphone. */
function toneWav(file, seconds = 3, rate = 48000) {
  const samples = seconds * rate;
  const wav = Buffer.alloc(44 + samples * 2);
  wav.write('RIFF', 0);
  wav.writeUInt32LE(36 + samples * 2, 4);
  wav.write('WAVEfmt ', 8);
  wav.writeUInt32LE(16, 16);
  wav.writeUInt16LE(1, 20);
  wav.writeUInt16LE(1, 22);
  wav.writeUInt32LE(rate, 24);
  wav.writeUInt32LE(rate * 2, 28);
  wav.writeUInt16LE(2, 32);
  wav.writeUInt16LE(16, 34);
  wav.write('data', 36);
  wav.writeUInt32LE(samples * 2, 40);
  for (let i = 0; i < samples; i++) wav.writeInt16LE(Math.round(Math.sin((2 * Math.PI * 440 * i) / rate) * 12000), 44 + i * 2);
  fs.writeFileSync(file, wav);
}

/** The fake upstream: records what each session sends, answers a commit with a spoken response. */
async function fakeRealtime() {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((r) => wss.once('listening', r));
  const fake = { received: [], audioBytes: 0, requests: [], waiters: [] };
  const notify = () => (fake.waiters = fake.waiters.filter((w) => !w()));
  fake.until = (check) => new Promise((resolve) => fake.waiters.push(() => (check() ? (resolve(), true) : false)) && notify());
  wss.on('connection', (ws, request) => {
    fake.requests.push({ url: request.url, authorization: request.headers.authorization });
    const send = (event) => ws.send(JSON.stringify(event));
    send({ type: 'session.created', session: { type: 'realtime' } });
    ws.on('message', (data) => {
      const event = JSON.parse(data.toString());
      fake.received.push(event);
      if (event.type === 'input_audio_buffer.append') fake.audioBytes += Buffer.from(event.audio, 'base64').length;
      if (event.type === 'input_audio_buffer.commit') {
        send({ type: 'input_audio_buffer.committed', item_id: 'item_in' });
        send({ type: 'conversation.item.input_audio_transcription.completed', item_id: 'item_in', content_index: 0, transcript: HEARD });
      }
      if (event.type === 'response.create') {
        const id = 'resp_browser';
        send({ type: 'response.created', response: { id, status: 'in_progress' } });
        const pcm = Buffer.alloc(4800);
        for (let i = 0; i < 2400; i++) pcm.writeInt16LE(Math.round(Math.sin((2 * Math.PI * 330 * i) / 24000) * 8000), i * 2);
        send({ type: 'response.output_audio.delta', response_id: id, item_id: 'item_out', delta: pcm.toString('base64') });
        for (const delta of SPOKEN) send({ type: 'response.output_audio_transcript.delta', response_id: id, item_id: 'item_out', delta });
        send({
          type: 'response.done',
          response: { id, status: 'completed', usage: { total_tokens: 30, input_tokens: 20, output_tokens: 10 } },
        });
      }
      notify();
    });
  });
  fake.url = `ws://127.0.0.1:${wss.address().port}/v1/realtime`;
  fake.close = () => new Promise((r) => wss.close(r));
  return fake;
}

describe('the voice example in Chromium', () => {
  let fake;
  let site;
  let server;
  let browser;
  const wav = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'chatwire-voice-')), 'tone.wav');

  before(async () => {
    toneWav(wav);
    fake = await fakeRealtime();
    site = await serveStatic(path.join(REPO, 'client-examples/realtime'));
    server = await new Chatwire({ corsOrigin: site.origin, env: { OPENAI_REALTIME_URL: fake.url, REALTIME_API_KEY: 'sk-browser' } }).start();
    const { chromium } = await import('playwright-core');
    const media = ['--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream', `--use-file-for-fake-audio-capture=${wav}`, '--autoplay-policy=no-user-gesture-required'];
    browser = await chromium.launch({ executablePath: CHROMIUM, args: [...CHROMIUM_ARGS, ...media], headless: true });
  });

  after(async () => {
    await browser?.close();
    await server?.dispose();
    await site?.close();
    await fake?.close();
  });

  test('streams the microphone, shows both transcripts and the session is stored', { timeout: T }, async () => {
    const token = server.token({ sub: 'voice-user' });
    const page = await browser.newPage({ viewport: { width: 900, height: 640 } });
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(`${site.origin}/?server=${encodeURIComponent(`ws://127.0.0.1:${server.port}/realtime`)}&token=${token}`);
    await page.click('#connect-button');
    await page.waitForSelector('#status[data-state="connected"]');
    assert.match(await page.textContent('#status'), /^Connected as voice-user \(session [0-9a-f-]{36}\)$/);

    await page.click('#mic');
    // A second of the tone reaches the upstream as PCM16 at 24 kHz.
    await fake.until(() => fake.audioBytes >= 48_000);
    await page.click('#send-audio');
    await page.waitForSelector('#transcript li.assistant[data-done="true"]');
    assert.equal(await page.textContent('#transcript li.assistant .text'), SPOKEN.join(''));
    assert.equal(await page.textContent('#transcript li.user .text'), HEARD);
    assert.deepEqual(errors, []);

    assert.equal(fake.requests.length, 1);
    assert.equal(fake.requests[0].url, '/v1/realtime?model=gpt-realtime');
    assert.equal(fake.requests[0].authorization, 'Bearer sk-browser');
    assert.equal(fake.received[0].type, 'session.update');
    const appends = fake.received.filter((e) => e.type === 'input_audio_buffer.append');
    assert.ok(appends.length >= 10, `${appends.length} chunks`);
    for (const a of appends) assert.equal(Buffer.from(a.audio, 'base64').length, 4800, 'each chunk is 100 ms of PCM16 at 24 kHz');
    // The tone is not silence.
    const pcm = Buffer.from(appends[5].audio, 'base64');
    let peak = 0;
    for (let i = 0; i < pcm.length; i += 2) peak = Math.max(peak, Math.abs(pcm.readInt16LE(i)));
    assert.ok(peak > 1000, `peak ${peak}`);
    assert.deepEqual(fake.received.slice(-2).map((e) => e.type), ['input_audio_buffer.commit', 'response.create']);

    fs.mkdirSync(SCREENSHOT_DIR, { recursive: true });
    await page.screenshot({ path: path.join(SCREENSHOT_DIR, 'realtime.png') });

    const auth = { headers: { authorization: `Bearer ${token}` } };
    const list = await (await fetch(`${server.url}/v1/conversations`, auth)).json();
    const id = list.items[0].id;
    const detail = await (await fetch(`${server.url}/v1/conversations/${id}`, auth)).json();
    assert.deepEqual(
      detail.messages.map((m) => [m.role, m.content]),
      [
        ['user', HEARD],
        ['assistant', SPOKEN.join('')],
      ],
      JSON.stringify(detail),
    );
    await page.close();
  });
});
