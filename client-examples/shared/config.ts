// Where to connect and with which token: `?server=`, `?token=` and `?transport=` in
// the page URL win over the Vite env (VITE_CHATWIRE_URL, VITE_CHATWIRE_TOKEN,
// VITE_CHATWIRE_TRANSPORT), which win over the defaults (http://localhost:8000,
// no token = open mode, websocket only).
//
// A token in the URL is a development convenience; a real app takes it from its
// auth store.

export interface ChatConfig {
  serverUrl: string;
  token: string | undefined;
  transports: ('websocket' | 'polling')[];
}

export function readConfig(search: string = window.location.search): ChatConfig {
  const q = new URLSearchParams(search);
  const env = import.meta.env;
  const serverUrl = (q.get('server') || env.VITE_CHATWIRE_URL || 'http://localhost:8000').replace(/\/+$/, '');
  const token = q.get('token') || env.VITE_CHATWIRE_TOKEN || undefined;
  const transport = q.get('transport') || env.VITE_CHATWIRE_TRANSPORT || 'websocket';
  return {
    serverUrl,
    token,
    // `polling` means socket.io-client's default: long-polling first, then upgrade.
    transports: transport === 'polling' ? ['polling', 'websocket'] : ['websocket'],
  };
}

/**
 * The handshake `auth` payload. With a token, the token. Without one (open mode) the
 * server makes every unnamed connection a user of its own, so this tab names itself
 * with an id kept in sessionStorage: a reload is the same user and finds its
 * conversation and running answer again.
 */
export function handshakeAuth(token: string | undefined): Record<string, string> {
  if (token) return { token };
  const key = 'chatwire:open-mode-user';
  let user = window.sessionStorage.getItem(key);
  if (!user) {
    user = `tab-${crypto.randomUUID()}`;
    window.sessionStorage.setItem(key, user);
  }
  return { userId: user };
}
