/// <reference types="vite/client" />

interface ImportMetaEnv {
  /** chatwire base URL, e.g. http://localhost:8000 (the app adds the /ai namespace). */
  readonly VITE_CHATWIRE_URL?: string;
  /** A JWT for a protected server; leave unset for open mode. */
  readonly VITE_CHATWIRE_TOKEN?: string;
  /** `websocket` (default, as in the NestJS guide) or `polling` (long-polling, then upgrade). */
  readonly VITE_CHATWIRE_TRANSPORT?: string;
}

interface ImportMeta {
  readonly env: ImportMetaEnv;
}
