#!/usr/bin/env node
// A terminal chat with a chatwire server (or any server speaking the NestJS
// AiGateway protocol) using the official socket.io-client.
//
//   CHATWIRE_URL    server address, default http://localhost:8000
//   CHATWIRE_TOKEN  a JWT for the handshake (omit for a server in open mode)
//
// Type a line and press Enter to send it; the answer streams in as it is written.
// Ctrl-C while an answer streams stops it (chat:stop); Ctrl-C again, Ctrl-C when
// idle, or end of input (Ctrl-D) quits. Lines can also be piped in:
//   printf 'Hello\nAnd then?\n' | node chat.mjs
//
// The answer's events go through @chatwire/resumable: if the link drops mid-answer,
// socket.io-client reconnects and the answer goes on from where it was, nothing twice.

import { randomUUID } from 'node:crypto';
import readline from 'node:readline';
import { io } from 'socket.io-client';
import { resumable } from '@chatwire/resumable';

const url = (process.env.CHATWIRE_URL || 'http://localhost:8000').replace(/\/+$/, '');
const token = process.env.CHATWIRE_TOKEN || undefined;
const interactive = Boolean(process.stdin.isTTY);
const color = Boolean(process.stdout.isTTY) && !process.env.NO_COLOR;
const dim = (s) => (color ? `\x1b[2m${s}\x1b[0m` : s);
const red = (s) => (color ? `\x1b[31m${s}\x1b[0m` : s);

const socket = io(`${url}/ai`, {
  auth: token ? { token } : undefined,
  // Long-polling first, then websocket: works behind proxies that block websockets.
  transports: ['polling', 'websocket'],
  reconnectionAttempts: 5,
});

let conversationId = null; // kept across turns
let streaming = null; // { messageId, stopRequested } while an answer runs
let inputClosed = false;
let lastAckError = null; // an error already shown from an ack, not to be shown twice
const queue = []; // lines typed (or piped) while an answer is still streaming

const rl = readline.createInterface({
  input: process.stdin,
  output: process.stdout,
  terminal: interactive,
  prompt: 'you> ',
});

function status(line) {
  process.stderr.write(`${dim(line)}\n`);
}

function prompt() {
  if (interactive && !inputClosed) rl.prompt();
}

let quitting = false;
function quit(code = 0) {
  if (quitting) return;
  quitting = true;
  rl.close();
  socket.close();
  process.exit(code);
}

function sendNext() {
  if (streaming || !socket.connected) return;
  const message = queue.shift();
  if (message === undefined) {
    if (inputClosed) quit(0);
    prompt();
    return;
  }
  const turn = { messageId: null, stopRequested: false };
  streaming = turn;
  // The ack comes at once, before any streaming. clientMessageId makes a retry
  // after a reconnect safe: the server never starts the same message twice.
  const timer = setTimeout(() => streaming === turn && !turn.messageId && finish(red('no answer from the server (timed out)')), 15_000);
  const payload = { message, clientMessageId: randomUUID() };
  if (conversationId) payload.conversationId = conversationId;
  chat.start(payload, (ack) => {
    clearTimeout(timer);
    if (streaming !== turn) return;
    if (!ack?.ok) {
      const e = ack?.error ?? {};
      lastAckError = `${e.code}: ${e.message}`;
      finish(red(`error ${e.code ?? ''}: ${e.message ?? 'refused'}`));
      return;
    }
    conversationId = ack.conversationId;
    turn.messageId = ack.messageId;
    process.stdout.write('ai> ');
  });
}

/** The current answer is over: report and go on with the next line. */
function finish(line) {
  if (!streaming) return;
  streaming = null;
  if (line) status(line);
  sendNext();
}

socket.on('connect', () => {
  status(`connected to ${url}/ai`);
  sendNext();
});

socket.on('connect_error', (err) => {
  if (err.message === 'unauthorized') {
    process.stderr.write(
      red('the server refused the connection: unauthorized (set CHATWIRE_TOKEN to a valid JWT)\n'),
    );
    quit(1);
  }
  status(`cannot connect to ${url}: ${err.message}; retrying`);
});

socket.io.on('reconnect_failed', () => {
  process.stderr.write(red(`giving up on ${url}\n`));
  quit(1);
});

socket.on('disconnect', (reason) => {
  // socket.io-client reconnects by itself (`active`) and the helper then resumes the
  // answer; only a socket closed for good cuts it off.
  status(`disconnected (${reason})${socket.active && streaming ? '; the answer resumes after the reconnect' : ''}`);
  if (streaming && !socket.active) finish(red('the answer was cut off by the disconnect'));
});

socket.on('chat:conversation', (d) => {
  conversationId = d.conversationId;
  status(`conversation ${conversationId}`);
});

/** Is this event about the running answer (or about no answer in particular)? */
const ours = (messageId) => !!streaming && (!messageId || !streaming.messageId || messageId === streaming.messageId);

const chat = resumable(socket, {
  // New text of the answer, once and in order (also across a reconnect).
  onChunk(text, meta) {
    if (ours(meta.messageId)) process.stdout.write(text);
  },
  onEnd(d) {
    if (!ours(d.messageId)) return;
    process.stdout.write('\n');
    finish(`[${d.model}, ${d.totalTokens} tokens, ${d.finishReason}]`);
  },
  onStopped(d) {
    if (!ours(d.messageId)) return;
    process.stdout.write('\n');
    finish('[stopped]');
  },
  onError,
});

function onError(e) {
  // An error that belongs to no running answer (for example one that also came
  // through the ack) is only shown.
  if (streaming && (e.messageId == null || e.messageId === streaming.messageId)) {
    process.stdout.write('\n');
    finish(red(`error ${e.code}: ${e.message}`));
  } else if (!streaming && `${e.code}: ${e.message}` !== lastAckError) {
    status(red(`error ${e.code}: ${e.message}`));
  }
  lastAckError = null;
}

rl.on('line', (line) => {
  const text = line.trim();
  if (text) queue.push(text);
  sendNext();
});

rl.on('close', () => {
  inputClosed = true;
  // Let the current answer and any queued lines finish first.
  if (!streaming && queue.length === 0) quit(0);
});

function onInterrupt() {
  if (streaming && !streaming.stopRequested) {
    streaming.stopRequested = true;
    queue.length = 0;
    socket.emit('chat:stop');
    status('\n[stopping; Ctrl-C again to quit]');
    return;
  }
  process.stdout.write('\n');
  quit(130);
}

// With a terminal, readline turns Ctrl-C into its own SIGINT event; without one
// (piped input) the process gets the signal.
rl.on('SIGINT', onInterrupt);
process.on('SIGINT', onInterrupt);
