// Types of @chatwire/resumable (hand-written; the code is resumable.js).
// Payload shapes follow docs/PROTOCOL.md of chatwire ("Extensions: resuming and
// watching answers"). Fields the helper does not read are typed loosely, so that an
// app can pass its own, stricter payload types.

/**
 * What the helper needs of a socket: a socket.io-client `Socket` of the `/ai`
 * namespace fits (no dependency on socket.io-client's own types).
 */
export interface ResumableSocket {
  readonly id: string | undefined;
  readonly connected: boolean;
  emit(event: string, ...args: any[]): unknown;
  on(event: string, listener: (...args: any[]) => void): unknown;
  off(event: string, listener?: (...args: any[]) => void): unknown;
}

/** Passed with each piece of new text. */
export interface ChunkMeta {
  messageId: string;
  conversationId?: string;
  /** UTF-16 units of the answer before this text. */
  offset: number;
  /** The server's `seq` of the chunk the text came from. */
  seq?: number;
}

/** What the helper keeps for one answer. */
export interface Answer {
  /** UTF-16 units received so far. */
  offset: number;
  conversationId?: string;
  /** Id of the socket connection that reads the answer now (null: none yet). */
  sid: string | null;
  /** A final event was passed on (or a resume was refused for good). */
  done?: boolean;
  /** A gap was seen and a catch-up `chat:resume` is under way. */
  repairing?: boolean;
}

export interface ResumableStats {
  /** `chat:resume` requests sent. */
  resumes: number;
  /** Chunks that overlapped what was received and were cut. */
  trimmed: number;
  /** Chunks wholly received before, dropped. */
  dropped: number;
  /** Chunks that would have left a hole, held back (the answer is resumed instead). */
  gaps: number;
}

export interface ResumeRequest {
  messageId: string;
  offset: number;
}

/** `chat:resume` acknowledgement. */
export type ResumeAck =
  | {
      ok: true;
      status: 'streaming' | 'complete' | 'stopped' | 'error';
      messageId: string;
      conversationId: string;
      offset: number;
    }
  | { ok: false; error: { code: string; message: string } };

/** `chat:error`, or a refused `chat:resume` reported with its `messageId`. */
export interface ResumableError {
  code?: string;
  message?: string;
  messageId?: string;
  conversationId?: string;
  [field: string]: unknown;
}

export interface Handlers {
  /** New text of an answer, once and in order. */
  onChunk?: (text: string, meta: ChunkMeta) => void;
  /** `chat:end`, once per answer. */
  onEnd?: (end: any) => void;
  /** `chat:stopped`, once per answer. */
  onStopped?: (stopped: any) => void;
  /** `chat:error`, or a refused `chat:resume` (`NOT_FOUND`, ...), once per answer. */
  onError?: (error: any) => void;
  /** Just before each `chat:resume` is sent. */
  onResume?: (req: ResumeRequest) => void;
  /** With each `chat:resume` acknowledgement. */
  onResumed?: (ack: ResumeAck) => void;
}

export interface FollowOptions {
  /** UTF-16 units already shown (default 0: from the start). */
  offset?: number;
  conversationId?: string;
}

export interface Resumable {
  /** `messageId` to what is known of that answer. */
  readonly answers: Map<string, Answer>;
  readonly stats: ResumableStats;
  /** Emits `chat:start` with an ack; the answer it starts is followed (and resumed after a drop). */
  start(payload: object, ack?: (ack: any) => void): void;
  /** Follows an answer known from elsewhere (e.g. saved before a page reload) from `offset` on. */
  follow(messageId: string, options?: FollowOptions): void;
  /** `chat:join` (watch a conversation, kept across reconnects), or `chat:leave` with `watch` false. */
  join(conversationId: string, watch?: boolean, ack?: (ack: any) => void): void;
  /** Removes the helper's listeners; the socket stays open. */
  close(): void;
}

/** Makes `socket` (chatwire's `/ai` namespace) resume answers by itself. */
export function resumable(socket: ResumableSocket, handlers?: Handlers): Resumable;
