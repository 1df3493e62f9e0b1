// Makes a socket.io-client socket of chatwire's /ai namespace resume answers by itself:
// the app sees each answer's text once and in order, across drops and page reloads.
/** @typedef {{ messageId: string, conversationId?: string, offset: number, seq?: number }} ChunkMeta offset: UTF-16 units before the text */
/** @typedef {{ offset: number, conversationId?: string, sid: string | null, done?: boolean, repairing?: boolean }} Answer */
/** @typedef {{ onChunk?: (text: string, meta: ChunkMeta) => void, onEnd?: (end: any) => void, onStopped?: (stopped: any) => void,
 *   onError?: (error: any) => void, onResume?: (req: { messageId: string, offset: number }) => void, onResumed?: (ack: any) => void }} Handlers */
/** @param {import('socket.io-client').Socket} socket @param {Handlers} [handlers] */
export function resumable(socket, handlers = {}) {
  const answers = /** @type {Map<string, Answer>} */ (new Map());
  const joined = new Set(); // conversations watched with join(), joined again after a reconnect
  const followed = new Set(); // conversations whose answers listed by chat:active are resumed
  const swallow = /** @type {string[]} */ ([]); // codes of the bare chat:error repeating a refused chat:resume
  const stats = { resumes: 0, trimmed: 0, dropped: 0, gaps: 0 };

  const track = (/** @type {string} */ id, offset = 0, /** @type {string=} */ conversationId, sid = socket.id ?? null) => {
    if (conversationId) followed.add(conversationId);
    return /** @type {Answer} */ (answers.get(id) ?? answers.set(id, { offset, conversationId, sid }).get(id));
  };
  const resume = (/** @type {string} */ messageId, /** @type {Answer} */ a) => {
    (a.sid = socket.id ?? null), stats.resumes++;
    handlers.onResume?.({ messageId, offset: a.offset });
    socket.emit('chat:resume', { messageId, offset: a.offset }, (/** @type {any} */ ack) => {
      handlers.onResumed?.(ack);
      if (ack?.ok) followed.add((a.conversationId ??= ack.conversationId));
      if (!ack || ack.ok) return;
      swallow.push(ack.error?.code);
      if (ack.error?.code === 'UNAVAILABLE') // the database is busy: ask again shortly
        return void setTimeout(() => !a.done && a.sid === socket.id && socket.connected && resume(messageId, a), 1000);
      a.done = true;
      handlers.onError?.({ ...ack.error, messageId, conversationId: a.conversationId });
    });
  };
  /** @type {Record<string, (p: any) => void>} */
  const on = {
    connect() {
      for (const conversationId of joined) socket.emit('chat:join', { conversationId });
      for (const [id, a] of answers) if (!a.done && a.sid !== socket.id) resume(id, a);
    },
    'chat:active'(p) {
      for (const { messageId, conversationId } of p?.generations ?? []) {
        const a = answers.get(messageId);
        if (a ? !a.done && a.sid !== socket.id : followed.has(conversationId))
          resume(messageId, track(messageId, 0, conversationId, null));
      }
    },
    'chat:user-message': (p) => p?.conversationId && followed.add(p.conversationId),
    'chat:message'(m) {
      if (typeof m?.messageId !== 'string' || typeof m.offset !== 'number' || typeof m.content !== 'string') return;
      const a = track(m.messageId, 0, m.conversationId);
      const end = m.offset + m.content.length;
      if (a.done || end <= a.offset) return void (a.done || stats.dropped++);
      if (m.offset > a.offset) { // text is missing before this chunk: ask again from what we have, once
        if (!a.repairing) resume(m.messageId, Object.assign(a, { repairing: true }));
        return void stats.gaps++;
      }
      if (m.offset < a.offset) stats.trimmed++;
      const meta = { messageId: m.messageId, conversationId: m.conversationId, offset: a.offset, seq: m.seq };
      const text = m.content.slice(a.offset - m.offset);
      Object.assign(a, { offset: end, repairing: false });
      handlers.onChunk?.(text, meta);
    },
  };
  for (const [event, name] of [['chat:end', 'onEnd'], ['chat:stopped', 'onStopped'], ['chat:error', 'onError']]) {
    on[event] = (p) => {
      const i = event === 'chat:error' && !p?.messageId ? swallow.indexOf(p?.code) : -1;
      if (i >= 0) return void swallow.splice(i, 1);
      const a = p?.messageId ? track(p.messageId, 0, p.conversationId) : undefined;
      if (a?.done) return; // a repeat (e.g. after two catch-ups)
      if (a) a.done = true;
      /** @type {any} */ (handlers)[name]?.(p);
    };
  }
  for (const [event, fn] of Object.entries(on)) socket.on(event, fn);

  return {
    answers, stats,
    /** chat:start with an ack; the answer it starts is followed (and resumed after a drop). */
    start(/** @type {object} */ payload, /** @type {(ack: any) => void} */ ack = () => {}) {
      socket.emit('chat:start', payload, (/** @type {any} */ r) => void (r?.ok && track(r.messageId, 0, r.conversationId), ack(r)));
    },
    /** Follows an answer known from elsewhere (e.g. saved before a reload) from `offset` on. */
    follow(/** @type {string} */ messageId, { offset = 0, conversationId = /** @type {string=} */ (undefined) } = {}) {
      const a = track(messageId, offset, conversationId, null);
      if (socket.connected && !a.done && a.sid !== socket.id) resume(messageId, a);
    },
    /** Watches a conversation (answers of other tabs too; kept across reconnects), or stops with `watch` false. */
    join(/** @type {string} */ conversationId, watch = true, /** @type {(ack: any) => void} */ ack = () => {}) {
      for (const set of [joined, followed]) watch ? set.add(conversationId) : set.delete(conversationId);
      socket.emit(watch ? 'chat:join' : 'chat:leave', { conversationId }, ack);
    },
    /** Removes the listeners; the socket stays open. */
    close: () => Object.entries(on).forEach(([event, fn]) => socket.off(event, fn)),
  };
}
