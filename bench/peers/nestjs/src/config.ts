// Settings come from the environment only (the benchmark harness sets them).
// Empty values count as unset, as in chatwire.

function env(name: string): string | undefined {
  const value = process.env[name];
  return value === undefined || value.trim() === '' ? undefined : value.trim();
}

function intEnv(name: string, fallback: number): number {
  const raw = env(name);
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0 || n > 65535) {
    throw new Error(`${name} must be a port number, got "${raw}"`);
  }
  return n;
}

export const config = {
  port: intEnv('PORT', 3000),
  host: env('HOST') ?? '0.0.0.0',
  jwtSecret: env('JWT_SECRET'),
  openaiBaseUrl: env('OPENAI_BASE_URL'),
  openaiApiKey: env('OPENAI_API_KEY') ?? 'not-needed',
  databasePath: env('DATABASE_PATH') ?? 'nestjs-peer.db',
  corsOrigin: (() => {
    const list = (env('CORS_ORIGIN') ?? 'http://localhost:5173')
      .split(',')
      .map((o) => o.trim())
      .filter((o) => o.length > 0);
    return list.length === 1 ? list[0] : list;
  })(),
  defaultModel: 'gpt-4',
  defaultMaxTokens: 4096,
  defaultTemperature: 0.7,
  maxHistoryMessages: 50,
};
