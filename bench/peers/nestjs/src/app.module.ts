import { Module } from '@nestjs/common';
import { TypeOrmModule } from '@nestjs/typeorm';
import { config } from './config';
import { AiModule } from './modules/ai/ai.module';
import { Conversation } from './modules/ai/entities/conversation.entity';
import { Message } from './modules/ai/entities/message.entity';

@Module({
  imports: [
    TypeOrmModule.forRoot({
      type: 'better-sqlite3',
      database: config.databasePath,
      entities: [Conversation, Message],
      synchronize: true,
      enableWAL: true,
    }),
    AiModule,
  ],
})
export class AppModule {}
