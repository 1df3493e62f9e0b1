import { Column, Entity, Index, OneToMany, PrimaryColumn } from 'typeorm';
import { Message } from './message.entity';

@Entity('conversations')
export class Conversation {
  @PrimaryColumn('varchar', { length: 36 })
  id: string;

  @Index()
  @Column('varchar')
  userId: string;

  @Column('varchar', { nullable: true })
  title: string | null;

  // Set by the service (millisecond precision; SQLite's CURRENT_TIMESTAMP has seconds only).
  @Column('datetime')
  createdAt: Date;

  @Column('datetime')
  updatedAt: Date;

  @OneToMany(() => Message, (message) => message.conversation)
  messages: Message[];
}
