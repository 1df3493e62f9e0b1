import { randomUUID } from 'node:crypto';
import { Injectable } from '@nestjs/common';
import { InjectRepository } from '@nestjs/typeorm';
import { Repository } from 'typeorm';
import { Conversation } from './entities/conversation.entity';
import { Message } from './entities/message.entity';

export interface AssistantMessageInput {
  id: string;
  conversationId: string;
  content: string;
  model: string;
  promptTokens: number;
  completionTokens: number;
  totalTokens: number;
  finishReason: string;
}

@Injectable()
export class ConversationsService {
  constructor(
    @InjectRepository(Conversation) private readonly conversations: Repository<Conversation>,
    @InjectRepository(Message) private readonly messages: Repository<Message>,
  ) {}

  /** The conversation if it exists and belongs to this user, else null. */
  findForUser(id: string, userId: string): Promise<Conversation | null> {
    return this.conversations.findOne({ where: { id, userId } });
  }

  create(userId: string, firstMessage: string): Promise<Conversation> {
    const now = new Date();
    return this.conversations.save(
      this.conversations.create({
        id: randomUUID(),
        userId,
        title: firstMessage.slice(0, 100),
        createdAt: now,
        updatedAt: now,
      }),
    );
  }

  /** The last `limit` messages of the conversation, oldest first. */
  async history(conversationId: string, limit: number): Promise<Message[]> {
    const latest = await this.messages.find({
      where: { conversationId },
      order: { createdAt: 'DESC' },
      take: limit,
    });
    return latest.reverse();
  }

  addUserMessage(conversationId: string, content: string): Promise<Message> {
    return this.messages.save(
      this.messages.create({
        id: randomUUID(),
        conversationId,
        role: 'user',
        content,
        model: null,
        promptTokens: null,
        completionTokens: null,
        totalTokens: null,
        finishReason: null,
        createdAt: new Date(),
      }),
    );
  }

  async addAssistantMessage(input: AssistantMessageInput): Promise<Message> {
    const now = new Date();
    const saved = await this.messages.save(
      this.messages.create({ ...input, role: 'assistant', createdAt: now }),
    );
    await this.conversations.update({ id: input.conversationId }, { updatedAt: now });
    return saved;
  }
}
