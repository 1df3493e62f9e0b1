import { useEffect, useState } from 'react';
import { io, type Socket } from 'socket.io-client';
import { handshakeAuth } from '../../shared/config';

/**
 * connecting    first attempt under way
 * connected     ready to chat
 * reconnecting  the link dropped (or the server is down); socket.io-client retries by itself
 * unauthorized  the server refused the token (`connect_error` "unauthorized"): no retry
 * disconnected  closed for good (by us, or by the server): no retry
 */
export type ConnectionState = 'connecting' | 'connected' | 'reconnecting' | 'unauthorized' | 'disconnected';

export interface AiSocket {
  socket: Socket | null;
  state: ConnectionState;
  /** Message of the last `connect_error` ("unauthorized", "websocket error", ...). */
  connectError: string | null;
  /** Try again after `unauthorized` or `disconnected` (e.g. after refreshing the token). */
  reconnect: () => void;
}

/**
 * One socket to the `/ai` namespace per (server, token). The guide's hook, plus the
 * connection state a user needs to see, and without leaking listeners: everything
 * registered here is removed when the socket is closed.
 */
export function useAiSocket(
  serverUrl: string,
  accessToken?: string,
  transports: ('websocket' | 'polling')[] = ['websocket'],
): AiSocket {
  const [socket, setSocket] = useState<Socket | null>(null);
  const [state, setState] = useState<ConnectionState>('connecting');
  const [connectError, setConnectError] = useState<string | null>(null);
  const transportKey = transports.join(',');

  useEffect(() => {
    const s = io(`${serverUrl}/ai`, {
      // No token: open mode, where the tab names its own user (see handshakeAuth).
      auth: handshakeAuth(accessToken),
      transports: transportKey.split(',') as ('websocket' | 'polling')[],
      // Connected below, one task later (see there).
      autoConnect: false,
    });
    setState('connecting');
    setConnectError(null);

    const onConnect = () => {
      setState('connected');
      setConnectError(null);
    };
    const onDisconnect = () => {
      // `active` is false only when the socket will not reconnect by itself
      // ("io server disconnect" or our own close()).
      setState(s.active ? 'reconnecting' : 'disconnected');
    };
    const onConnectError = (err: Error) => {
      setConnectError(err.message);
      if (err.message === 'unauthorized') setState('unauthorized');
      else setState(s.active ? 'reconnecting' : 'disconnected');
    };
    const onReconnectAttempt = () => setState('reconnecting');

    s.on('connect', onConnect);
    s.on('disconnect', onDisconnect);
    s.on('connect_error', onConnectError);
    s.io.on('reconnect_attempt', onReconnectAttempt);
    setSocket(s);
    // Connect on the next task, not in the effect itself: in development React's
    // StrictMode mounts, unmounts and mounts again at once, and a socket connected by the
    // first mount would be closed while its WebSocket is still opening, which the browser
    // reports as a console error ("WebSocket is closed before the connection is
    // established"). The throwaway first socket is cleaned up before it ever connects.
    const timer = setTimeout(() => s.connect(), 0);

    return () => {
      clearTimeout(timer);
      s.off('connect', onConnect);
      s.off('disconnect', onDisconnect);
      s.off('connect_error', onConnectError);
      s.io.off('reconnect_attempt', onReconnectAttempt);
      s.close();
      setSocket(null);
    };
  }, [serverUrl, accessToken, transportKey]);

  const reconnect = () => {
    if (socket && !socket.connected) {
      setState('connecting');
      socket.connect();
    }
  };

  return { socket, state, connectError, reconnect };
}
