import { onScopeDispose, ref, shallowRef, toValue, watch, type MaybeRefOrGetter, type Ref, type ShallowRef } from 'vue';
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
  socket: ShallowRef<Socket | null>;
  state: Ref<ConnectionState>;
  /** Message of the last `connect_error` ("unauthorized", "websocket error", ...). */
  connectError: Ref<string | null>;
  /** Try again after `unauthorized` or `disconnected` (e.g. after refreshing the token). */
  reconnect: () => void;
}

/**
 * One socket to the `/ai` namespace; a new one whenever the server URL or the token
 * changes, closed (with all the listeners registered here) when the component that
 * called this is unmounted.
 */
export function useAiSocket(
  serverUrl: MaybeRefOrGetter<string>,
  accessToken?: MaybeRefOrGetter<string | undefined>,
  transports: ('websocket' | 'polling')[] = ['websocket'],
): AiSocket {
  const socket = shallowRef<Socket | null>(null);
  const state = ref<ConnectionState>('connecting');
  const connectError = ref<string | null>(null);

  watch(
    () => [toValue(serverUrl), toValue(accessToken)] as const,
    ([url, token], _old, onCleanup) => {
      const s = io(`${url}/ai`, {
        // No token: open mode, where the tab names its own user (see handshakeAuth).
        auth: handshakeAuth(token),
        transports,
      });
      state.value = 'connecting';
      connectError.value = null;

      const onConnect = () => {
        state.value = 'connected';
        connectError.value = null;
      };
      const onDisconnect = () => {
        // `active` is false only when the socket will not reconnect by itself.
        state.value = s.active ? 'reconnecting' : 'disconnected';
      };
      const onConnectError = (err: Error) => {
        connectError.value = err.message;
        if (err.message === 'unauthorized') state.value = 'unauthorized';
        else state.value = s.active ? 'reconnecting' : 'disconnected';
      };
      const onReconnectAttempt = () => {
        state.value = 'reconnecting';
      };

      s.on('connect', onConnect);
      s.on('disconnect', onDisconnect);
      s.on('connect_error', onConnectError);
      s.io.on('reconnect_attempt', onReconnectAttempt);
      socket.value = s;

      onCleanup(() => {
        s.off('connect', onConnect);
        s.off('disconnect', onDisconnect);
        s.off('connect_error', onConnectError);
        s.io.off('reconnect_attempt', onReconnectAttempt);
        s.close();
        if (socket.value === s) socket.value = null;
      });
    },
    { immediate: true },
  );

  // Closes the socket when the calling component's scope ends (the watcher's
  // onCleanup runs then as well).
  onScopeDispose(() => {
    socket.value?.close();
  });

  const reconnect = () => {
    const s = socket.value;
    if (s && !s.connected) {
      state.value = 'connecting';
      s.connect();
    }
  };

  return { socket, state, connectError, reconnect };
}
