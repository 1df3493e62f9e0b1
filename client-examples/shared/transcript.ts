// The current conversation's transcript, kept in sessionStorage (per tab) so that a
// page reload shows its earlier turns again.
//
// TODO: to be replaced by the REST history once the server has one (load the
// conversation's messages from the server on start); until then the tab keeps its own
// copy: one entry per conversation, plus which conversation is the current one.

export interface StoredMessage {
  role: 'user' | 'assistant';
  content: string;
  status: string;
  meta?: string;
}

export interface StoredTranscript {
  conversationId: string;
  messages: StoredMessage[];
}

/**
 * Whose transcripts: the server and the token's user (`sub`, read without checking the
 * signature: only to keep two users of one tab apart), or `open` without a token.
 */
function owner(serverUrl: string, token?: string): string {
  let user = 'open';
  if (token) {
    try {
      const payload = JSON.parse(atob(token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
      user = `user:${String(payload.sub ?? '?')}`;
    } catch {
      user = 'user:?';
    }
  }
  return `${serverUrl}|${user}`;
}

const currentKey = (o: string) => `chatwire:current:${o}`;
const transcriptKey = (o: string, conversationId: string) => `chatwire:transcript:${o}:${conversationId}`;

const isMessage = (m: unknown): m is StoredMessage =>
  !!m &&
  typeof m === 'object' &&
  ((m as StoredMessage).role === 'user' || (m as StoredMessage).role === 'assistant') &&
  typeof (m as StoredMessage).content === 'string' &&
  typeof (m as StoredMessage).status === 'string';

/**
 * The transcript to show on start: of `conversationId` (e.g. of an answer that was
 * streaming at the reload) or else of the current conversation; null if none.
 */
export function loadTranscript(serverUrl: string, token?: string, conversationId?: string | null): StoredTranscript | null {
  try {
    const o = owner(serverUrl, token);
    const id = conversationId || sessionStorage.getItem(currentKey(o));
    if (!id) return null;
    const messages = JSON.parse(sessionStorage.getItem(transcriptKey(o, id)) ?? '[]');
    if (!Array.isArray(messages)) return { conversationId: id, messages: [] };
    return {
      conversationId: id,
      // A question caught before the server confirmed it was sent (and stored) all the same.
      messages: messages.filter(isMessage).map((m) => (m.status === 'sending' ? { ...m, status: 'sent' } : m)),
    };
  } catch {
    return null; // storage disabled or garbage: start empty
  }
}

/** Stores the transcript of the current conversation; `null` (a new conversation) forgets which one is current. */
export function saveTranscript(serverUrl: string, token: string | undefined, conversationId: string | null, messages: StoredMessage[]) {
  try {
    const o = owner(serverUrl, token);
    if (!conversationId) {
      sessionStorage.removeItem(currentKey(o));
      return;
    }
    const plain = messages.map(({ role, content, status, meta }) => (meta ? { role, content, status, meta } : { role, content, status }));
    sessionStorage.setItem(transcriptKey(o, conversationId), JSON.stringify(plain));
    sessionStorage.setItem(currentKey(o), conversationId);
  } catch {
    /* storage full or disabled: a reload then starts empty, nothing else */
  }
}
