// Payloads of the chatwire /ai namespace (the NestJS AiGateway protocol plus
// chatwire's additive fields). See docs/PROTOCOL.md in the repository.

export interface ChatStartPayload {
  message: string;
  conversationId?: string;
  model?: string;
  maxTokens?: number;
  temperature?: number;
  clientMessageId?: string;
}

export type ChatStartAck =
  | { ok: true; conversationId: string; userMessageId: string; messageId: string }
  | { ok: false; error: { code: string; message: string } };

export interface ConversationEvent {
  conversationId: string;
}

export interface UserMessageEvent {
  messageId: string;
  content: string;
  conversationId?: string;
}

export interface ChunkEvent {
  content: string;
  isComplete: boolean;
  messageId?: string;
  conversationId?: string;
  seq?: number;
  offset?: number;
}

export interface EndEvent {
  messageId: string;
  conversationId: string;
  totalTokens: number;
  model: string;
  finishReason: string;
  promptTokens?: number;
  completionTokens?: number;
  /** The whole answer as stored (chatwire); older servers may omit it. */
  content?: string;
}

export interface StoppedEvent {
  messageId?: string;
  conversationId?: string;
  /** The partial answer as stored. */
  content?: string;
}

export interface ErrorEvent {
  message: string;
  code?: string;
  messageId?: string;
  conversationId?: string;
}

/** What resumable.js passes with each piece of new text: `offset` is the answer's length (UTF-16 units) before it. */
export interface ChunkMeta {
  messageId: string;
  conversationId?: string;
  offset: number;
  seq?: number;
}
