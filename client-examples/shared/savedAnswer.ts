// The answer being streamed, kept in sessionStorage (per tab) so that a page reload
// continues it: after the reload the app shows `text` and resumes from `offset`
// (resumable.js `follow()`). Cleared when the answer ends.

export interface SavedAnswer {
  messageId: string;
  conversationId: string | null;
  /** UTF-16 units received: always `text.length`. */
  offset: number;
  text: string;
}

const key = (serverUrl: string) => `chatwire:answer:${serverUrl}`;

export function loadAnswer(serverUrl: string): SavedAnswer | null {
  try {
    const saved = JSON.parse(sessionStorage.getItem(key(serverUrl)) ?? 'null');
    const valid = saved && typeof saved.messageId === 'string' && typeof saved.text === 'string' && saved.offset === saved.text.length;
    return valid ? saved : null;
  } catch {
    return null; // storage disabled or garbage: nothing to continue
  }
}

export function saveAnswer(serverUrl: string, answer: SavedAnswer) {
  try {
    sessionStorage.setItem(key(serverUrl), JSON.stringify(answer));
  } catch {
    /* storage full or disabled: a reload then loses the answer, nothing else */
  }
}

export function clearAnswer(serverUrl: string) {
  try {
    sessionStorage.removeItem(key(serverUrl));
  } catch {
    /* see saveAnswer */
  }
}
