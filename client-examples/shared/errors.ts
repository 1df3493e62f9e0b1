// What to tell the user for each error code (chat:error `code`, a refused ack's
// `error.code`, or the connect_error message `unauthorized`). Unknown codes fall
// back to the server's own message.
const TEXT: Record<string, string> = {
  unauthorized: 'The server refused the token. Sign in again (or check the token / JWT_SECRET).',
  INVALID_PAYLOAD: 'The request was malformed.',
  MESSAGE_TOO_LONG: 'That message is too long.',
  INVALID_PARAMS: 'A parameter is out of range.',
  INVALID_MODEL: 'That model is not available.',
  FORBIDDEN: 'Not allowed for this user.',
  NOT_FOUND: 'That conversation does not exist (any more). Start a new one.',
  BUSY: 'An answer is still streaming.',
  RATE_LIMIT: 'Too many requests. Please wait a moment.',
  UPSTREAM_ERROR: 'The model provider failed. Any partial answer was kept.',
  UPSTREAM_TIMEOUT: 'The model provider went silent. Any partial answer was kept.',
  UNAVAILABLE: 'The service is unavailable right now. Try again shortly.',
  INTERNAL: 'Something went wrong on the server.',
  DISCONNECTED: 'The connection dropped during the answer.',
};

export function describeError(code: string, serverMessage?: string): string {
  return TEXT[code] ?? serverMessage ?? 'An error occurred.';
}
