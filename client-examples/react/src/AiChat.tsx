import { useEffect, useMemo, useRef, useState, type FormEvent } from 'react';
import { resumable } from '@chatwire/resumable';
import { useAiSocket, type ConnectionState } from './useAiSocket';
import { renderMarkdown } from './markdown';
import { describeError } from '../../shared/errors';
import { clearAnswer, loadAnswer, saveAnswer } from '../../shared/savedAnswer';
import { loadTranscript, saveTranscript } from '../../shared/transcript';
import type {
  ChatStartAck,
  ChatStartPayload,
  ChunkMeta,
  ConversationEvent,
  EndEvent,
  ErrorEvent,
  StoppedEvent,
  UserMessageEvent,
} from '../../shared/protocol';

interface Message {
  key: number;
  role: 'user' | 'assistant';
  content: string;
  /** user: sending | sent; assistant: complete | stopped | error | interrupted */
  status: string;
  meta?: string;
}

/** idle, or between our chat:start and its final event (chat:end / chat:stopped / chat:error). */
type Phase = 'idle' | 'waiting' | 'streaming' | 'stopping';

interface ShownError {
  code: string;
  message: string;
}

const STATE_LABEL: Record<ConnectionState, string> = {
  connecting: 'connecting…',
  connected: 'connected',
  reconnecting: 'reconnecting…',
  unauthorized: 'unauthorized',
  disconnected: 'disconnected',
};

let keySeq = 0;
const nextKey = () => ++keySeq;
const newClientMessageId = () => `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 12)}`;

export interface AiChatProps {
  serverUrl: string;
  accessToken?: string;
  transports?: ('websocket' | 'polling')[];
}

export function AiChat({ serverUrl, accessToken, transports }: AiChatProps) {
  const { socket, state, connectError, reconnect } = useAiSocket(serverUrl, accessToken, transports);
  // An answer that was streaming when the page was reloaded continues where it was,
  // after the earlier turns of its conversation (or of the current one).
  const [restored] = useState(() => loadAnswer(serverUrl));
  const [history] = useState(() => loadTranscript(serverUrl, accessToken, restored?.conversationId));
  const [messages, setMessages] = useState<Message[]>(() => (history?.messages ?? []).map((m) => ({ ...m, key: nextKey() })));
  const [input, setInput] = useState('');
  const [phase, setPhaseState] = useState<Phase>(restored ? 'streaming' : 'idle');
  const [conversationId, setConversationIdState] = useState<string | null>(
    restored?.conversationId ?? history?.conversationId ?? null,
  );
  const [currentResponse, setCurrentResponse] = useState(restored?.text ?? '');
  const [error, setError] = useState<ShownError | null>(null);

  // Refs mirror what the socket handlers need to read. The guide's handlers read
  // `currentResponse` from the render in which they were registered (always ''),
  // so its chat:end pushed an empty answer; handlers here read refs instead.
  const phaseRef = useRef<Phase>(restored ? 'streaming' : 'idle');
  const responseRef = useRef(restored?.text ?? '');
  const conversationRef = useRef<string | null>(restored?.conversationId ?? history?.conversationId ?? null);
  const generationRef = useRef<string | null>(restored?.messageId ?? null); // messageId of the answer being streamed
  const chatRef = useRef<ReturnType<typeof resumable> | null>(null);
  const transcriptRef = useRef<HTMLDivElement>(null);

  const setPhase = (p: Phase) => {
    phaseRef.current = p;
    setPhaseState(p);
  };
  const setConversationId = (id: string | null) => {
    conversationRef.current = id;
    setConversationIdState(id);
  };
  const setResponse = (text: string) => {
    responseRef.current = text;
    setCurrentResponse(text);
  };

  /** Ends the running turn once: moves the answer (full or partial) into the transcript. */
  const finishTurn = (content: string, status: string, meta?: string) => {
    if (phaseRef.current === 'idle') return;
    if (content || status === 'complete') {
      const item: Message = { key: nextKey(), role: 'assistant', content, status, meta };
      setMessages((prev) => [...prev, item]);
    }
    setResponse('');
    generationRef.current = null;
    clearAnswer(serverUrl);
    setPhase('idle');
  };

  /** Keeps the running answer in sessionStorage, so that a reload continues it. */
  const persist = () => {
    const messageId = generationRef.current;
    if (!messageId) return;
    const text = responseRef.current;
    saveAnswer(serverUrl, { messageId, conversationId: conversationRef.current, offset: text.length, text });
  };

  // Chat listeners: registered once per socket and removed with it, so a new socket
  // (new token) or a re-render never stacks a second copy of a handler. Reconnects
  // reuse the same socket object and keep these listeners. The answer's events come
  // through resumable.js, which resumes it after a reconnect or a reload and passes
  // on each piece of text exactly once.
  useEffect(() => {
    if (!socket) return;

    const isOther = (messageId?: string) =>
      !!messageId && !!generationRef.current && messageId !== generationRef.current;

    const onConversation = (data: ConversationEvent) => setConversationId(data.conversationId);

    const onUserMessage = (data: UserMessageEvent) => {
      setMessages((prev) => {
        const i = prev.findLastIndex((m) => m.role === 'user' && m.status === 'sending');
        if (i < 0) return prev;
        const next = prev.slice();
        next[i] = { ...next[i], status: 'sent' };
        return next;
      });
      if (data.conversationId) setConversationId(data.conversationId);
    };

    const onChunk = (text: string, meta: ChunkMeta) => {
      if (phaseRef.current === 'idle' || isOther(meta.messageId)) return;
      if (!generationRef.current) generationRef.current = meta.messageId;
      setResponse(responseRef.current + text);
      persist();
      if (phaseRef.current === 'waiting') setPhase('streaming');
    };

    const onEnd = (data: EndEvent) => {
      if (isOther(data.messageId)) return;
      if (data.conversationId) setConversationId(data.conversationId);
      // chat:end.content is the whole answer as stored; fall back to what streamed.
      const meta = [
        data.finishReason === 'stop' ? 'done' : data.finishReason && `finish: ${data.finishReason}`,
        data.totalTokens != null ? `${data.totalTokens} tokens` : null,
      ]
        .filter(Boolean)
        .join(' · ');
      finishTurn(data.content ?? responseRef.current, 'complete', meta);
    };

    const onStopped = (data: StoppedEvent) => {
      if (isOther(data.messageId)) return;
      // Keep the partial answer (the guide threw it away).
      finishTurn(data.content ?? responseRef.current, 'stopped', 'stopped');
    };

    const onError = (data: ErrorEvent) => {
      const code = data.code ?? 'ERROR';
      setError({ code, message: describeError(code, data.message) });
      if (!isOther(data.messageId)) finishTurn(responseRef.current, 'error', code);
    };

    const onDisconnect = () => {
      // A dropped link is reconnected by socket.io-client and the answer resumed by the
      // helper; only a socket closed for good loses the rest of a running answer.
      if (phaseRef.current !== 'idle' && !socket.active) {
        setError({ code: 'DISCONNECTED', message: describeError('DISCONNECTED') });
        finishTurn(responseRef.current, 'interrupted', 'interrupted');
      }
    };

    const onConnect = () => {
      // A chat:stop sent just before the link dropped may be lost: send it again.
      if (phaseRef.current === 'stopping' && generationRef.current) {
        socket.emit('chat:stop', { messageId: generationRef.current });
      }
    };

    const chat = resumable(socket, { onChunk, onEnd, onStopped, onError });
    chatRef.current = chat;
    // A running answer (restored after a reload, or of the previous socket): resume it.
    if (phaseRef.current !== 'idle' && generationRef.current) {
      chat.follow(generationRef.current, {
        offset: responseRef.current.length,
        conversationId: conversationRef.current ?? undefined,
      });
    }
    socket.on('chat:conversation', onConversation);
    socket.on('chat:user-message', onUserMessage);
    socket.on('disconnect', onDisconnect);
    socket.on('connect', onConnect);
    return () => {
      chat.close();
      if (chatRef.current === chat) chatRef.current = null;
      socket.off('chat:conversation', onConversation);
      socket.off('chat:user-message', onUserMessage);
      socket.off('disconnect', onDisconnect);
      socket.off('connect', onConnect);
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [socket]);

  // The transcript survives a reload (sessionStorage until the server has a history endpoint).
  useEffect(() => {
    saveTranscript(serverUrl, accessToken, conversationId, messages);
  }, [serverUrl, accessToken, conversationId, messages]);

  // Keep the newest text in view.
  useEffect(() => {
    const el = transcriptRef.current;
    if (el) el.scrollTop = el.scrollHeight;
  }, [messages, currentResponse]);

  const streamingHtml = useMemo(() => renderMarkdown(currentResponse), [currentResponse]);

  const connected = state === 'connected';
  const busy = phase !== 'idle';

  const sendMessage = (e?: FormEvent) => {
    e?.preventDefault();
    const text = input.trim();
    const chat = chatRef.current;
    if (!socket || !chat || !connected || !text || phaseRef.current !== 'idle') return;

    setError(null);
    setResponse('');
    generationRef.current = null;
    setPhase('waiting');
    setMessages((prev) => [...prev, { key: nextKey(), role: 'user', content: text, status: 'sending' }]);

    // No userId (the server takes the user from the token) and no `conversationId: null`:
    // only a known conversation is sent, so the follow-up continues it.
    const payload: ChatStartPayload = { message: text, clientMessageId: newClientMessageId() };
    if (conversationRef.current) payload.conversationId = conversationRef.current;

    chat.start(payload, (ack: ChatStartAck) => {
      if (!ack) return;
      if (ack.ok) {
        generationRef.current = ack.messageId;
        setConversationId(ack.conversationId);
        persist();
      } else {
        setError({ code: ack.error.code, message: describeError(ack.error.code, ack.error.message) });
        finishTurn(responseRef.current, 'error', ack.error.code);
      }
    });
    setInput('');
  };

  const stopStreaming = () => {
    if (!socket || (phaseRef.current !== 'waiting' && phaseRef.current !== 'streaming')) return;
    // Wait for chat:stopped (with the partial answer) instead of clearing at once.
    setPhase('stopping');
    const messageId = generationRef.current;
    if (messageId) socket.emit('chat:stop', { messageId });
    else socket.emit('chat:stop');
  };

  const newConversation = () => {
    if (busy) return;
    setConversationId(null);
    setMessages([]);
    setError(null);
  };

  const shownError: ShownError | null =
    state === 'unauthorized'
      ? { code: 'unauthorized', message: describeError('unauthorized') }
      : error;

  return (
    <div className="ai-chat" data-testid="ai-chat">
      <header className="chat-header">
        <div className="title">
          <h1>chatwire</h1>
          <span className="subtitle">React · {accessToken ? 'JWT' : 'open mode'} · {serverUrl}</span>
        </div>
        <div className="status-row">
          <span className={`conn conn-${state}`} data-testid="connection-state" data-state={state}>
            <span className="dot" /> {STATE_LABEL[state]}
          </span>
          {state === 'reconnecting' && connectError && <span className="conn-detail">{connectError}</span>}
        </div>
      </header>

      <div className="conversation-bar">
        <span>
          conversation:{' '}
          <code data-testid="conversation-id" data-conversation-id={conversationId ?? ''}>
            {conversationId ?? 'new'}
          </code>
        </span>
        <button type="button" className="link" onClick={newConversation} disabled={busy} data-testid="new-conversation">
          New conversation
        </button>
      </div>

      <div className="messages" data-testid="transcript" ref={transcriptRef}>
        {messages.length === 0 && !busy && <p className="empty">Ask anything to start a conversation.</p>}
        {messages.map((msg) => (
          <div
            key={msg.key}
            className={`message ${msg.role} status-${msg.status}`}
            data-testid="message"
            data-role={msg.role}
            data-status={msg.status}
          >
            <strong className="role">{msg.role}</strong>
            {msg.role === 'assistant' ? (
              <MarkdownContent text={msg.content} />
            ) : (
              <div className="content" data-testid="message-content">{msg.content}</div>
            )}
            {msg.meta && <div className="meta">{msg.meta}</div>}
          </div>
        ))}

        {busy && (
          <div className="message assistant streaming" data-testid="streaming-message" data-phase={phase}>
            <strong className="role">assistant</strong>
            <div className="content">
              {/* Sanitized by renderMarkdown (marked, then DOMPurify): no raw HTML of the model. */}
              <div className="markdown streaming-md" data-testid="streaming-content" dangerouslySetInnerHTML={{ __html: streamingHtml }} />
              <span className="cursor" data-testid="cursor">▊</span>
            </div>
          </div>
        )}
      </div>

      {shownError && (
        <div className="error" role="alert" data-testid="error" data-code={shownError.code}>
          <code data-testid="error-code">{shownError.code}</code>
          <span data-testid="error-message">{shownError.message}</span>
          {state === 'unauthorized' || state === 'disconnected' ? (
            <button type="button" className="link" onClick={reconnect}>Retry</button>
          ) : (
            <button type="button" className="link" onClick={() => setError(null)} aria-label="Dismiss">×</button>
          )}
        </div>
      )}

      <form className="input-area" onSubmit={sendMessage}>
        <input
          type="text"
          value={input}
          onChange={(e) => setInput(e.target.value)}
          disabled={busy}
          placeholder={connected ? 'Type your message…' : 'Waiting for the connection…'}
          data-testid="message-input"
          autoFocus
        />
        {!busy ? (
          <button type="submit" disabled={!input.trim() || !connected} data-testid="send-button">
            Send
          </button>
        ) : (
          <button
            type="button"
            className="stop"
            onClick={stopStreaming}
            disabled={phase === 'stopping'}
            data-testid="stop-button"
          >
            {phase === 'stopping' ? 'Stopping…' : 'Stop'}
          </button>
        )}
      </form>
    </div>
  );
}

/** An answer rendered as Markdown; renderMarkdown sanitizes it (marked, then DOMPurify). */
function MarkdownContent({ text }: { text: string }) {
  const html = useMemo(() => renderMarkdown(text), [text]);
  return <div className="content markdown" data-testid="message-content" dangerouslySetInnerHTML={{ __html: html }} />;
}
