import { Injectable } from '@nestjs/common';
import OpenAI from 'openai';
import type { ChatCompletionChunk, ChatCompletionMessageParam } from 'openai/resources/chat/completions';
import type { Stream } from 'openai/streaming';
import { config } from '../../config';

export interface ChatCompletionRequest {
  model: string;
  messages: ChatCompletionMessageParam[];
  maxTokens: number;
  temperature: number;
}

@Injectable()
export class AiService {
  private readonly openai = new OpenAI({
    apiKey: config.openaiApiKey,
    baseURL: config.openaiBaseUrl,
  });

  /** Starts a streamed chat completion; aborting `signal` ends the stream. */
  streamChat(request: ChatCompletionRequest, signal: AbortSignal): Promise<Stream<ChatCompletionChunk>> {
    return this.openai.chat.completions.create(
      {
        model: request.model,
        messages: request.messages,
        max_tokens: request.maxTokens,
        temperature: request.temperature,
        stream: true,
        stream_options: { include_usage: true },
      },
      { signal },
    );
  }
}
