// Discovery and routing through socket.io-client: two OpenAI-compatible fakes on
// loopback (one lists its models, one is discovered from GET /models), chat:providers,
// GET /v1/models with the same token, and an answer routed by `provider/model`.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { startServer, connect, closeAllSockets, chat, uniqueUser } from './support.mjs';

/** A fake provider answering "Hi from <name>." and listing `models` on GET /v1/models. */
function fakeProvider(name, models) {
  const server = http.createServer((req, res) => {
    if (req.method === 'GET' && req.url === '/v1/models') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ object: 'list', data: models.map((id) => ({ id, object: 'model' })) }));
      return;
    }
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      const { model } = JSON.parse(body);
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      const chunk = (delta, finish) =>
        `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 0, model, choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
      for (const t of ['Hi ', 'from ', name, '.']) res.write(chunk({ content: t }, null));
      res.write(chunk({}, 'stop'));
      res.end('data: [DONE]\n\n');
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, url: `http://127.0.0.1:${server.address().port}/v1` })));
}

describe('providers', () => {
  let server;
  let fakes;
  before(async () => {
    fakes = [await fakeProvider('alpha', ['a-1']), await fakeProvider('beta', ['b-1', 'b-2'])];
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chatwire-providers-'));
    const file = path.join(dir, 'providers.toml');
    fs.writeFileSync(
      file,
      `default = "beta"\n[[providers]]\nname = "alpha"\ndisplay_name = "Alpha"\nbase_url = "${fakes[0].url}"\nmodels = ["a-1"]\n` +
        `[[providers]]\nname = "beta"\nbase_url = "${fakes[1].url}"\n`,
    );
    server = await startServer({ env: { PROVIDERS_FILE: file } });
  });
  after(async () => {
    closeAllSockets();
    await server?.stop();
    for (const f of fakes ?? []) f.server.close();
  });

  test('chat:providers acks every provider with its bare models', async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    const ack = await socket.timeout(10_000).emitWithAck('chat:providers', {});
    assert.deepEqual(ack, {
      ok: true,
      providers: [
        { id: 'alpha', name: 'Alpha', default: false, models: [{ id: 'a-1' }] },
        { id: 'beta', name: 'beta', default: true, models: [{ id: 'b-1' }, { id: 'b-2' }] },
      ],
    });
  });

  test('GET /v1/models lists provider/model ids behind the same token', async () => {
    assert.equal((await fetch(`${server.url}/v1/models`)).status, 401);
    const res = await fetch(`${server.url}/v1/models`, { headers: { authorization: `Bearer ${server.token(uniqueUser())}` } });
    assert.equal(res.status, 200);
    const body = await res.json();
    assert.equal(body.object, 'list');
    assert.deepEqual(body.data.map((m) => m.id), ['alpha/a-1', 'beta/b-1', 'beta/b-2']);
  });

  test('a picked model is answered by its provider, and a bare discovered one too', async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    // Each fake answers with its own text; chat:end keeps the NestJS field set (no provider).
    for (const [payload, model, text] of [
      [{ model: 'alpha/a-1' }, 'a-1', 'Hi from alpha.'],
      [{ provider: 'beta', model: 'b-2' }, 'b-2', 'Hi from beta.'],
      [{ model: 'b-1' }, 'b-1', 'Hi from beta.'],
    ]) {
      const events = await chat(socket, { message: "hi", ...payload });
      const end = events.find((e) => e.event === 'chat:end');
      assert.ok(end, JSON.stringify(events));
      assert.deepEqual([end.data.model, end.data.content, 'provider' in end.data], [model, text, false]);
    }
    const refused = await socket.timeout(10_000).emitWithAck('chat:start', { message: 'hi', model: 'nope/x' });
    assert.equal(refused.error.code, 'INVALID_MODEL');
  });
});

describe('embeddings', () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(async () => {
    closeAllSockets();
    await server?.stop();
  });

  test('embed acks one vector per input in order, the same as POST /v1/embeddings gives', async () => {
    const user = uniqueUser();
    const socket = await connect(server, server.token(user));
    const ack = await socket.timeout(10_000).emitWithAck('embed', { input: ['north', 'south', 'north'] });
    assert.deepEqual(Object.keys(ack).sort(), ['embeddings', 'model', 'ok']);
    assert.equal(ack.ok, true);
    assert.equal(ack.model, 'text-embedding-3-small');
    assert.equal(ack.embeddings.length, 3);
    for (const v of ack.embeddings) assert.equal(v.length, 8);
    // The mock's vector is a function of the text: the same text, the same vector.
    assert.deepEqual(ack.embeddings[0], ack.embeddings[2]);
    assert.notDeepEqual(ack.embeddings[0], ack.embeddings[1]);
    const res = await fetch(`${server.url}/v1/embeddings`, {
      method: 'POST',
      headers: { authorization: `Bearer ${server.token(user)}`, 'content-type': 'application/json' },
      body: JSON.stringify({ input: 'south', model: 'text-embedding-3-small' }),
    });
    assert.equal(res.status, 200);
    const body = await res.json();
    assert.deepEqual(body.data, [{ object: 'embedding', index: 0, embedding: ack.embeddings[1] }]);
    const refused = await socket.timeout(10_000).emitWithAck('embed', { input: [] });
    assert.deepEqual(Object.keys(refused).sort(), ['error', 'ok']);
    assert.equal(refused.error.code, 'INVALID_PARAMS');
  });
});
