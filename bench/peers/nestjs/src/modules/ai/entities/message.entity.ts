import { Column, Entity, Index, JoinColumn, ManyToOne, PrimaryColumn } from 'typeorm';
import { Conversation } from './conversation.entity';

export type MessageRole = 'user' | 'assistant';

@Entity('messages')
@Index(['conversationId', 'createdAt'])
export class Message {
  @PrimaryColumn('varchar', { length: 36 })
  id: string;

  @Column('varchar', { length: 36 })
  conversationId: string;

  @ManyToOne(() => Conversation, (conversation) => conversation.messages, { onDelete: 'CASCADE' })
  @JoinColumn({ name: 'conversationId' })
  conversation: Conversation;

  @Column('varchar')
  role: MessageRole;

  @Column('text')
  content: string;

  @Column('varchar', { nullable: true })
  model: string | null;

  @Column('integer', { nullable: true })
  promptTokens: number | null;

  @Column('integer', { nullable: true })
  completionTokens: number | null;

  @Column('integer', { nullable: true })
  totalTokens: number | null;

  // The upstream's finish reason ('stop', 'length', ...), 'stopped' after chat:stop,
  // 'error' when the upstream failed mid-answer.
  @Column('varchar', { nullable: true })
  finishReason: string | null;

  @Column('datetime')
  createdAt: Date;
}
