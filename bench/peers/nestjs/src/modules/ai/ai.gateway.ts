import { randomUUID } from 'node:crypto';
import { Logger } from '@nestjs/common';
import { JwtService } from '@nestjs/jwt';
import {
  ConnectedSocket,
  MessageBody,
  OnGatewayConnection,
  OnGatewayDisconnect,
  OnGatewayInit,
  SubscribeMessage,
  WebSocketGateway,
  WebSocketServer,
} from '@nestjs/websockets';
import { APIConnectionTimeoutError, APIError } from 'openai';
import type { ChatCompletionMessageParam } from 'openai/resources/chat/completions';
import { Namespace, Socket } from 'socket.io';
import { config } from '../../config';
import { AiService } from './ai.service';
import { ConversationsService } from './conversations.service';

/** An error told to the client as `chat:error { message, code }`. */
class ChatError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

interface ChatStartRequest {
  message: string;
  conversationId?: string;
  model: string;
  maxTokens: number;
  temperature: number;
}

/** One answer being streamed to one socket. */
interface Generation {
  messageId: string;
  conversationId: string;
  model: string;
  controller: AbortController;
  stopped: boolean;
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

@WebSocketGateway({
  cors: {
    origin: config.corsOrigin,
    credentials: true,
  },
  namespace: '/ai',
  pingInterval: 10000,
  pingTimeout: 5000,
})
export class AiGateway implements OnGatewayInit, OnGatewayConnection, OnGatewayDisconnect {
  @WebSocketServer()
  server: Namespace;

  private readonly logger = new Logger(AiGateway.name);
  private connectedClients = 0;
  /** The running generation of each socket, by socket id. */
  private readonly active = new Map<string, Generation>();

  constructor(
    private readonly jwtService: JwtService,
    private readonly aiService: AiService,
    private readonly conversations: ConversationsService,
  ) {}

  /** Verifies the handshake token before the connection is accepted. */
  afterInit(namespace: Namespace) {
    namespace.use((socket, next) => {
      const token: unknown = socket.handshake.auth?.token;
      try {
        if (typeof token !== 'string' || token.length === 0) throw new Error('no token');
        const payload = this.jwtService.verify<{ sub?: string | number }>(token);
        if (payload.sub === undefined || payload.sub === null || payload.sub === '') {
          throw new Error('no subject');
        }
        socket.data.user = payload;
        socket.data.userId = String(payload.sub);
        next();
      } catch {
        next(new Error('unauthorized'));
      }
    });
  }

  handleConnection(client: Socket) {
    this.connectedClients++;
    this.logger.debug(`Client ${client.id} connected. Total: ${this.connectedClients}`);
  }

  handleDisconnect(client: Socket) {
    this.connectedClients--;
    this.logger.debug(`Client ${client.id} disconnected. Total: ${this.connectedClients}`);
    // Nobody is listening any more: stop the answer (it is stored as stopped).
    const generation = this.active.get(client.id);
    if (generation) {
      generation.stopped = true;
      generation.controller.abort();
    }
  }

  @SubscribeMessage('chat:start')
  async handleChatStart(@MessageBody() data: unknown, @ConnectedSocket() client: Socket) {
    const userId: string = client.data.userId;
    let request: ChatStartRequest;
    try {
      request = this.parseStart(data, userId);
    } catch (err) {
      return this.refuse(client, err);
    }
    if (this.active.has(client.id)) {
      return this.refuse(client, new ChatError('BUSY', 'a response is already streaming on this connection'));
    }

    // Hold the socket's slot while the conversation and user message are stored.
    const generation: Generation = {
      messageId: randomUUID(),
      conversationId: '',
      model: request.model,
      controller: new AbortController(),
      stopped: false,
    };
    this.active.set(client.id, generation);

    let history: ChatCompletionMessageParam[];
    let userMessageId: string;
    try {
      let conversationId = request.conversationId;
      if (conversationId) {
        const conversation = await this.conversations.findForUser(conversationId, userId);
        if (!conversation) throw new ChatError('NOT_FOUND', 'conversation not found');
      } else {
        const conversation = await this.conversations.create(userId, request.message);
        conversationId = conversation.id;
        client.emit('chat:conversation', { conversationId });
      }
      generation.conversationId = conversationId;

      const userMessage = await this.conversations.addUserMessage(conversationId, request.message);
      userMessageId = userMessage.id;
      client.emit('chat:user-message', {
        messageId: userMessage.id,
        content: userMessage.content,
        conversationId,
      });

      const earlier = await this.conversations.history(conversationId, config.maxHistoryMessages);
      history = earlier.map((m) => ({ role: m.role, content: m.content }));
    } catch (err) {
      this.active.delete(client.id);
      return this.refuse(client, err);
    }

    // The answer streams in the background; the ack (if asked) goes out now.
    void this.streamAnswer(client, generation, request, history);
    return {
      ok: true,
      conversationId: generation.conversationId,
      userMessageId,
      messageId: generation.messageId,
    };
  }

  @SubscribeMessage('chat:stop')
  handleChatStop(@MessageBody() data: unknown, @ConnectedSocket() client: Socket) {
    const generation = this.active.get(client.id);
    const wanted =
      data !== null && typeof data === 'object' && typeof (data as { messageId?: unknown }).messageId === 'string'
        ? (data as { messageId: string }).messageId
        : undefined;
    if (!generation || (wanted !== undefined && wanted !== generation.messageId) || generation.stopped) {
      return { ok: true, stopped: false };
    }
    generation.stopped = true;
    generation.controller.abort();
    return { ok: true, stopped: true };
  }

  private async streamAnswer(
    client: Socket,
    generation: Generation,
    request: ChatStartRequest,
    messages: ChatCompletionMessageParam[],
  ) {
    const { messageId, conversationId } = generation;
    let content = '';
    let seq = 0;
    let finishReason: string | null = null;
    let promptTokens = 0;
    let completionTokens = 0;
    let totalTokens = 0;
    let failure: unknown = null;

    try {
      const stream = await this.aiService.streamChat(
        {
          model: request.model,
          messages,
          maxTokens: request.maxTokens,
          temperature: request.temperature,
        },
        generation.controller.signal,
      );
      for await (const chunk of stream) {
        const choice = chunk.choices[0];
        const delta = choice?.delta?.content;
        if (delta) {
          client.emit('chat:message', {
            content: delta,
            isComplete: false,
            messageId,
            conversationId,
            seq: seq++,
            offset: content.length,
          });
          content += delta;
        }
        if (choice?.finish_reason) finishReason = choice.finish_reason;
        if (chunk.usage) {
          promptTokens = chunk.usage.prompt_tokens;
          completionTokens = chunk.usage.completion_tokens;
          totalTokens = chunk.usage.total_tokens;
        }
      }
    } catch (err) {
      failure = err;
    }

    const stopped = generation.stopped && (failure !== null || finishReason === null);
    const outcome = stopped ? 'stopped' : failure !== null ? 'error' : (finishReason ?? 'stop');
    try {
      await this.conversations.addAssistantMessage({
        id: messageId,
        conversationId,
        content,
        model: request.model,
        promptTokens,
        completionTokens,
        totalTokens,
        finishReason: outcome,
      });
    } catch (err) {
      this.logger.error(`storing assistant message ${messageId} failed`, err instanceof Error ? err.stack : String(err));
      this.release(client, generation);
      client.emit('chat:error', { message: 'internal error', code: 'INTERNAL', messageId, conversationId });
      return;
    }

    // Free the socket before the final event, so the next chat:start may follow at once.
    this.release(client, generation);
    if (stopped) {
      client.emit('chat:stopped', { messageId, conversationId, content });
    } else if (failure !== null) {
      const error = this.upstreamError(failure);
      client.emit('chat:error', { message: error.message, code: error.code, messageId, conversationId });
    } else {
      client.emit('chat:end', {
        messageId,
        conversationId,
        totalTokens,
        model: request.model,
        finishReason: outcome,
        promptTokens,
        completionTokens,
        content,
      });
    }
  }

  private release(client: Socket, generation: Generation) {
    if (this.active.get(client.id) === generation) this.active.delete(client.id);
  }

  private parseStart(data: unknown, userId: string): ChatStartRequest {
    if (data === null || typeof data !== 'object' || Array.isArray(data)) {
      throw new ChatError('INVALID_PAYLOAD', 'payload must be an object');
    }
    const d = data as Record<string, unknown>;
    if (typeof d.message !== 'string' || d.message.trim().length === 0) {
      throw new ChatError('INVALID_PAYLOAD', 'message is required');
    }
    if (d.userId !== undefined && d.userId !== null && String(d.userId) !== userId) {
      throw new ChatError('FORBIDDEN', 'userId does not match the authenticated user');
    }
    let conversationId: string | undefined;
    if (d.conversationId !== undefined && d.conversationId !== null) {
      if (typeof d.conversationId !== 'string') throw new ChatError('INVALID_PAYLOAD', 'conversationId must be a string');
      if (!UUID_RE.test(d.conversationId)) throw new ChatError('INVALID_PARAMS', 'conversationId is not a UUID');
      conversationId = d.conversationId;
    }
    let model = config.defaultModel;
    if (d.model !== undefined && d.model !== null) {
      if (typeof d.model !== 'string') throw new ChatError('INVALID_PAYLOAD', 'model must be a string');
      if (d.model.length === 0) throw new ChatError('INVALID_MODEL', 'model name is empty');
      model = d.model;
    }
    let maxTokens = config.defaultMaxTokens;
    if (d.maxTokens !== undefined && d.maxTokens !== null) {
      if (typeof d.maxTokens !== 'number') throw new ChatError('INVALID_PAYLOAD', 'maxTokens must be a number');
      if (!Number.isInteger(d.maxTokens) || d.maxTokens < 1) {
        throw new ChatError('INVALID_PARAMS', 'maxTokens must be a positive integer');
      }
      maxTokens = d.maxTokens;
    }
    let temperature = config.defaultTemperature;
    if (d.temperature !== undefined && d.temperature !== null) {
      if (typeof d.temperature !== 'number') throw new ChatError('INVALID_PAYLOAD', 'temperature must be a number');
      if (!(d.temperature >= 0 && d.temperature <= 2)) {
        throw new ChatError('INVALID_PARAMS', 'temperature must be between 0 and 2');
      }
      temperature = d.temperature;
    }
    return { message: d.message, conversationId, model, maxTokens, temperature };
  }

  /** Tells the client why a chat:start was refused: chat:error, and the ack if one was asked for. */
  private refuse(client: Socket, err: unknown) {
    let error: ChatError;
    if (err instanceof ChatError) {
      error = err;
    } else {
      this.logger.error('chat:start failed', err instanceof Error ? err.stack : String(err));
      error = new ChatError('INTERNAL', 'internal error');
    }
    client.emit('chat:error', { message: error.message, code: error.code });
    return { ok: false, error: { code: error.code, message: error.message } };
  }

  private upstreamError(err: unknown): ChatError {
    if (err instanceof APIConnectionTimeoutError) {
      return new ChatError('UPSTREAM_TIMEOUT', 'the model provider timed out');
    }
    if (err instanceof APIError && err.status === 404) {
      return new ChatError('INVALID_MODEL', 'model not found');
    }
    this.logger.warn(`upstream failed: ${err instanceof Error ? err.message : String(err)}`);
    return new ChatError('UPSTREAM_ERROR', 'the model provider failed');
  }
}
