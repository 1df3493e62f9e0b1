import 'reflect-metadata';
import { Logger } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { AppModule } from './app.module';
import { config } from './config';

async function bootstrap() {
  if (!config.jwtSecret) {
    throw new Error('JWT_SECRET must be set');
  }
  // Per-connection lines are debug level, off by default (as in chatwire).
  const app = await NestFactory.create(AppModule, { logger: ['fatal', 'error', 'warn', 'log'] });
  app.enableCors({ origin: config.corsOrigin, credentials: true });
  app.enableShutdownHooks();
  await app.listen(config.port, config.host);
  new Logger('Bootstrap').log(`AI gateway listening on ${await app.getUrl()} (namespace /ai)`);
}

bootstrap().catch((err) => {
  // eslint-disable-next-line no-console
  console.error(err);
  process.exit(1);
});
