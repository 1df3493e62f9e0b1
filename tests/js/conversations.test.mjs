// Conversations as trees through socket.io-client: two edits, two regenerates and a
// start from a side branch. A fake OpenAI-compatible upstream on loopback records every
// request, so each answer's history is checked to be exactly its branch; then
// chat:history must return the tree the client was told, with the active branch marked.
// With CHATWIRE_TEST_VERBOSE set, the tree test prints what the client sent and was told
// for each answer, the history the model got, and the stored tree.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';

import { startServer, connect, closeAllSockets, uniqueUser, Recorder, FINAL_EVENTS } from './support.mjs';

/** A fake upstream answering "Answer <n>." to its n-th request, keeping each request body. */
function recordingUpstream() {
  const bodies = [];
  const server = http.createServer((req, res) => {
    if (req.method === 'GET') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ object: 'list', data: [] }));
      return;
    }
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      const parsed = JSON.parse(body);
      bodies.push(parsed);
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      const chunk = (delta, finish) =>
        `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 0, model: parsed.model, choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
      for (const t of ['Answer ', `${bodies.length}`, '.']) res.write(chunk({ content: t }, null));
      res.write(chunk({}, 'stop'));
      res.end('data: [DONE]\n\n');
    });
  });
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () => resolve({ server, bodies, url: `http://127.0.0.1:${server.address().port}/v1` })),
  );
}

/** Emits `event` and returns its ack, its chat:user-message (if any) and its chat:end. */
async function turn(socket, event, payload) {
  const rec = new Recorder(socket);
  try {
    const ack = await socket.timeout(15_000).emitWithAck(event, payload);
    assert.equal(ack.ok, true, `${event}: ${JSON.stringify(ack)}`);
    const final = await rec.waitFor((e) => FINAL_EVENTS.includes(e.event) && e.data?.messageId === ack.messageId);
    assert.equal(final.event, 'chat:end', rec.describe());
    const userMessage = rec.events.find((e) => e.event === 'chat:user-message')?.data;
    return { sent: [event, payload], ack, userMessage, content: final.data.content };
  } finally {
    rec.detach();
  }
}

describe('conversation trees', () => {
  let server;
  let upstream;
  before(async () => {
    upstream = await recordingUpstream();
    server = await startServer({ env: { OPENAI_API_KEY: 'sk-test', OPENAI_BASE_URL: upstream.url } });
  });
  after(async () => {
    closeAllSockets();
    await server?.stop();
    upstream?.server.close();
  });

  test('edit twice, regenerate twice, continue from a side branch: each answer sees its branch', async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    const history = () => upstream.bodies.at(-1).messages.map((m) => [m.role, m.content]);
    const told = []; // [id, parentId, role, content] as the client was told
    const show = (t) => {
      if (!process.env.CHATWIRE_TEST_VERBOSE) return t;
      const seen = { sent: t.sent, ack: t.ack, 'chat:user-message': t.userMessage ?? null, 'chat:end content': t.content };
      console.log(JSON.stringify({ ...seen, 'model got': history() }));
      return t;
    };

    const first = show(await turn(socket, 'chat:start', { message: 'q1' }));
    assert.equal(first.ack.parentMessageId, null);
    assert.equal(first.userMessage.parentMessageId, null);
    const conversationId = first.ack.conversationId;
    const [q1, a1] = [first.ack.userMessageId, first.ack.messageId];
    told.push([q1, null, 'user', 'q1'], [a1, q1, 'assistant', first.content]);

    const second = show(await turn(socket, 'chat:start', { message: 'q2', conversationId }));
    assert.equal(second.ack.parentMessageId, a1);
    assert.equal(second.userMessage.parentMessageId, a1);
    const [q2, a2] = [second.ack.userMessageId, second.ack.messageId];
    told.push([q2, a1, 'user', 'q2'], [a2, q2, 'assistant', second.content]);
    assert.deepEqual(history(), [['user', 'q1'], ['assistant', 'Answer 1.'], ['user', 'q2']]);

    const edits = [];
    for (const text of ['q2 edited', 'q2 edited again']) {
      const edit = show(await turn(socket, 'chat:edit', { messageId: q2, message: text }));
      assert.equal(edit.ack.parentMessageId, a1);
      assert.deepEqual([edit.userMessage.messageId, edit.userMessage.parentMessageId, edit.userMessage.content], [edit.ack.userMessageId, a1, text]);
      assert.deepEqual(history(), [['user', 'q1'], ['assistant', 'Answer 1.'], ['user', text]]);
      told.push([edit.ack.userMessageId, a1, 'user', text], [edit.ack.messageId, edit.ack.userMessageId, 'assistant', edit.content]);
      edits.push(edit.ack);
    }

    for (let n = 0; n < 2; n++) {
      const again = show(await turn(socket, 'chat:regenerate', { messageId: edits[0].messageId }));
      assert.equal(again.ack.parentMessageId, edits[0].userMessageId);
      assert.equal(again.userMessage, undefined, 'a regenerate sends no chat:user-message');
      assert.deepEqual(history(), [['user', 'q1'], ['assistant', 'Answer 1.'], ['user', 'q2 edited']]);
      told.push([again.ack.messageId, edits[0].userMessageId, 'assistant', again.content]);
    }

    const side = show(await turn(socket, 'chat:start', { message: 'q3', conversationId, parentMessageId: a2 }));
    assert.equal(side.ack.parentMessageId, a2);
    assert.deepEqual(history(), [['user', 'q1'], ['assistant', 'Answer 1.'], ['user', 'q2'], ['assistant', 'Answer 2.'], ['user', 'q3']]);
    told.push([side.ack.userMessageId, a2, 'user', 'q3'], [side.ack.messageId, side.ack.userMessageId, 'assistant', side.content]);
    assert.deepEqual(
      told.filter(([, , role]) => role === 'assistant').map(([, , , content]) => content),
      ['Answer 1.', 'Answer 2.', 'Answer 3.', 'Answer 4.', 'Answer 5.', 'Answer 6.', 'Answer 7.'],
    );

    const tree = await socket.timeout(10_000).emitWithAck('chat:history', { conversationId });
    if (process.env.CHATWIRE_TEST_VERBOSE) console.log(JSON.stringify(tree, null, 1));
    assert.equal(tree.ok, true);
    assert.equal(tree.conversationId, conversationId);
    assert.equal(tree.activeLeafId, side.ack.messageId);
    assert.deepEqual(
      tree.messages.map((m) => [m.id, m.parentId, m.role, m.content]),
      told,
      'the stored tree is the one the client was told',
    );
    const active = new Set([q1, a1, q2, a2, side.ack.userMessageId, side.ack.messageId]);
    assert.deepEqual(tree.messages.map((m) => m.active), tree.messages.map((m) => active.has(m.id)));
    assert.ok(tree.messages.every((m) => m.status === 'complete' && Array.isArray(m.attachments)));
  });

  test('a start with MAX_ATTACHMENTS (4) images of 5 MiB reaches the model as content parts', async () => {
    const socket = await connect(server, server.token(uniqueUser()));
    const url = `data:image/jpeg;base64,${Buffer.alloc(5 * 1024 * 1024, 7).toString('base64')}`;
    const attachments = [1, 2, 3, 4].map(() => ({ type: 'image', url }));
    // About 28 MB in one packet: past 1 MB and past a WebSocket frame's default 16 MiB.
    assert.ok(JSON.stringify(attachments).length > 16 * 1024 * 1024);
    const answer = await turn(socket, 'chat:start', { message: 'four images', attachments });
    assert.equal(answer.content, `Answer ${upstream.bodies.length}.`);
    const question = upstream.bodies.at(-1).messages.at(-1);
    assert.deepEqual(question, {
      role: 'user',
      content: [{ type: 'text', text: 'four images' }, ...attachments.map(() => ({ type: 'image_url', image_url: { url } }))],
    });
    const tree = await socket.timeout(10_000).emitWithAck('chat:history', { conversationId: answer.ack.conversationId });
    assert.deepEqual(tree.messages[0].attachments, attachments);
  });
});

describe('titles', () => {
  let server;
  before(async () => {
    server = await startServer({ mockResponse: 'Qubits are bits that can be both.' });
  });
  after(async () => {
    closeAllSockets();
    await server?.stop();
  });

  test("a new conversation's title arrives as chat:title after chat:end, and is in the REST list", async () => {
    const user = uniqueUser();
    const socket = await connect(server, server.token(user));
    const order = [];
    socket.onAny((event) => order.push(event));
    const title = new Promise((resolve) => socket.once('chat:title', resolve));
    const first = await turn(socket, 'chat:start', { message: 'Explain how quantum computers use qubits and why' });
    const got = await title;
    // The built-in mock titles a conversation with its question's first six words.
    assert.deepEqual(got, { conversationId: first.ack.conversationId, title: 'Explain how quantum computers use qubits' });
    assert.ok(order.indexOf('chat:end') < order.indexOf('chat:title'), order.join(' '));
    const res = await fetch(`${server.url}/v1/conversations`, { headers: { Authorization: `Bearer ${server.token(user)}` } });
    const list = await res.json();
    assert.deepEqual([list.items[0].id, list.items[0].title], [first.ack.conversationId, got.title]);
  });
});
