// Compatibility matrix: one chat (chat:start -> chat:message chunks -> chat:end) with
// the newest socket.io-client 4.8, the oldest 4.x (4.0.0), 3.1 and 2.5 (Engine.IO 3,
// served through socketioxide's `v4` feature), over each transport setting. Prints the
// result as a markdown table.
//
//   node --test compat.test.mjs        (or: npm run test:compat)

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';

import * as sio48 from 'sio48';
import * as sio40 from 'sio40';

import { Chatwire, MOCK_RESPONSE, UUID_RE } from './support.mjs';

const require = createRequire(import.meta.url);
/** socket.io-client 3.x and 4.x send the token in the handshake's `auth`. */
const authPayload = (token) => ({ auth: { token } });
/** 2.x has no `auth`: the token goes in a Bearer header (Node clients; `query` is not served). */
const bearerHeader = (token) => {
  const extraHeaders = { Authorization: `Bearer ${token}` };
  return { extraHeaders, transportOptions: { polling: { extraHeaders }, websocket: { extraHeaders } } };
};
const CLIENTS = [
  { name: 'socket.io-client', version: require('sio48/package.json').version, io: sio48.io, creds: authPayload },
  { name: 'socket.io-client', version: require('sio40/package.json').version, io: sio40.io, creds: authPayload },
  { name: 'socket.io-client', version: require('sio31/package.json').version, io: require('sio31'), creds: authPayload },
  { name: 'socket.io-client', version: require('sio25/package.json').version, io: require('sio25'), creds: bearerHeader },
];
const TRANSPORTS = [
  { label: "`transports: ['websocket']`", transports: ['websocket'] },
  { label: 'default (polling, then upgrade)', transports: undefined },
  { label: "`transports: ['polling']`", transports: ['polling'] },
];

/** One chat; resolves with what was seen, rejects on a protocol break or after 20 s. */
function runChat(io, url, creds, transports) {
  return new Promise((resolve, reject) => {
    const opts = { ...creds, reconnection: false, forceNew: true };
    if (transports) opts.transports = transports;
    const socket = io(`${url}/ai`, opts);
    // The engine's first transport, before any upgrade.
    socket.io.on('open', () => {
      noteTransport();
      socket.io.engine.on('upgrade', noteTransport);
    });
    const seen = { chunks: [], events: [], transportsUsed: new Set(), ack: null, end: null };
    const done = (err) => {
      clearTimeout(timer);
      socket.close();
      if (err) reject(Object.assign(err, { seen }));
      else resolve(seen);
    };
    const timer = setTimeout(() => done(new Error(`timed out; events so far: ${seen.events.join(', ')}`)), 20_000);
    const noteTransport = () => {
      const name = socket.io.engine?.transport?.name;
      if (name) seen.transportsUsed.add(name);
    };

    socket.on('connect_error', (e) => done(new Error(`connect_error: ${e.message}`)));
    socket.on('connect', () => {
      noteTransport();
      socket.emit('chat:start', { message: 'Compatibility check' }, (ack) => {
        seen.ack = ack;
        seen.events.push('ack');
      });
    });
    for (const ev of ['chat:conversation', 'chat:user-message', 'chat:stopped']) {
      socket.on(ev, () => seen.events.push(ev));
    }
    socket.on('chat:message', (m) => {
      seen.events.push('chat:message');
      seen.chunks.push(m);
      noteTransport();
    });
    socket.on('chat:error', (e) => done(new Error(`chat:error ${JSON.stringify(e)}`)));
    socket.on('chat:end', (e) => {
      seen.events.push('chat:end');
      seen.end = e;
      noteTransport();
      // Let the engine settle an upgrade that was under way (for the table only).
      setTimeout(() => {
        noteTransport();
        done();
      }, 50);
    });
  });
}

describe('socket.io-client compatibility matrix', () => {
  let server;
  const rows = [];

  before(async () => {
    server = new Chatwire({ corsOrigin: 'http://127.0.0.1', tokenDelayMs: 10 });
    await server.start();
  });

  after(async () => {
    await server?.dispose();
    const lines = [
      '| client | transport setting | transports used | chunks | chat:end.content = chunks joined | result |',
      '|---|---|---|---:|---|---|',
      ...rows.map(
        (r) =>
          `| ${r.client} | ${r.transport} | ${r.used || '-'} | ${r.chunks ?? '-'} | ${r.equal ?? '-'} | ${r.ok ? 'pass' : `**FAIL**: ${r.error}`} |`,
      ),
    ];
    console.log(`\nsocket.io-client compatibility (chatwire /ai, ${MOCK_RESPONSE.split(' ').length}-word mock answer):\n\n${lines.join('\n')}\n`);
  });

  for (const c of CLIENTS) {
    for (const t of TRANSPORTS) {
      const client = `${c.name} ${c.version}`;
      test(`${client}, ${t.label}`, { timeout: 30_000 }, async () => {
        const row = { client, transport: t.label };
        rows.push(row);
        try {
          const seen = await runChat(c.io, server.url, c.creds(server.token()), t.transports);
          row.used = [...seen.transportsUsed].join(' → ');
          row.chunks = seen.chunks.length;
          const joined = seen.chunks.map((m) => m.content).join('');
          row.equal = joined === seen.end.content ? 'yes' : 'no';

          assert.equal(seen.ack?.ok, true, `ack ${JSON.stringify(seen.ack)}`);
          assert.match(seen.ack.conversationId, UUID_RE);
          assert.deepEqual(seen.events.slice(0, 3), ['ack', 'chat:conversation', 'chat:user-message']);
          assert.ok(seen.chunks.length > 0, 'chunks streamed');
          let offset = 0;
          seen.chunks.forEach((m, i) => {
            assert.equal(m.seq, i, 'seq counts from 0 without gaps');
            assert.equal(m.offset, offset, 'offset = length before the chunk');
            assert.equal(m.isComplete, false);
            assert.equal(m.messageId, seen.ack.messageId);
            offset += m.content.length;
          });
          assert.equal(seen.end.content, joined, 'chat:end.content is the chunks joined');
          assert.equal(seen.end.content, MOCK_RESPONSE);
          assert.equal(seen.end.messageId, seen.ack.messageId);
          assert.equal(seen.end.conversationId, seen.ack.conversationId);
          assert.equal(seen.events.at(-1), 'chat:end');
          if (!t.transports) {
            assert.deepEqual([...seen.transportsUsed], ['polling', 'websocket'], 'starts on polling, upgrades to websocket');
          }
          if (t.transports?.length === 1) {
            assert.deepEqual([...seen.transportsUsed], t.transports, 'only the forced transport is used');
          }
          row.ok = true;
        } catch (e) {
          row.error = e.message.split('\n')[0].replace(/\|/g, '\\|');
          throw e;
        }
      });
    }
  }
});
