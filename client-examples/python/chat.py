#!/usr/bin/env python3
"""A terminal chat with a chatwire server over python-socketio's asyncio client.

    CHATWIRE_URL    server address, default http://localhost:8000
    CHATWIRE_TOKEN  a JWT for the handshake (omit for a server in open mode)

Type a line and press Enter; the answer streams in as it is written. Ctrl-C while
an answer streams stops it (chat:stop); Ctrl-C again, Ctrl-C when idle, or end of
input (Ctrl-D) quits. Lines can also be piped in:

    printf 'Hello\\nAnd then?\\n' | python chat.py
"""

import asyncio
import os
import signal
import sys
import threading
import uuid

import socketio

NAMESPACE = "/ai"
URL = os.environ.get("CHATWIRE_URL", "http://localhost:8000").rstrip("/")
TOKEN = os.environ.get("CHATWIRE_TOKEN") or None
INTERACTIVE = sys.stdin.isatty()
COLOR = sys.stderr.isatty() and not os.environ.get("NO_COLOR")


def status(text):
    """Status lines go to stderr, dimmed on a terminal; the answer goes to stdout."""
    print(f"\x1b[2m{text}\x1b[0m" if COLOR else text, file=sys.stderr, flush=True)


def out(text):
    sys.stdout.write(text)
    sys.stdout.flush()


class Turn:
    """One chat:start and its answer."""

    def __init__(self):
        self.message_id = None
        self.stop_requested = False
        self.done = asyncio.Event()


async def main():
    loop = asyncio.get_running_loop()
    sio = socketio.AsyncClient(reconnection=True, reconnection_attempts=5)
    lines = asyncio.Queue()
    state = {"turn": None, "conversation_id": None, "unauthorized": False,
             "quitting": False, "exit_code": 0, "last_ack_error": None}

    # stdin is read on a daemon thread so that a blocked read never keeps the
    # program alive, and the lines are handed to the event loop.
    def read_stdin():
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read_stdin, daemon=True).start()

    def end_turn(note=None):
        turn = state["turn"]
        if turn is None:
            return
        state["turn"] = None
        if note:
            status(note)
        turn.done.set()

    def quit(code):
        state["quitting"] = True
        state["exit_code"] = code
        lines.put_nowait(None)
        end_turn()

    def on_interrupt():
        turn = state["turn"]
        if turn is not None and not turn.stop_requested:
            turn.stop_requested = True
            status("\n[stopping; Ctrl-C again to quit]")
            loop.create_task(sio.emit("chat:stop", namespace=NAMESPACE))
        else:
            out("\n")
            quit(130)

    @sio.on("connect", namespace=NAMESPACE)
    async def on_connect():
        status(f"connected to {URL}{NAMESPACE}")

    @sio.on("connect_error", namespace=NAMESPACE)
    async def on_connect_error(data=None):
        message = data.get("message") if isinstance(data, dict) else data
        if message == "unauthorized":
            state["unauthorized"] = True
        else:
            status(f"cannot connect to {URL}: {message}")

    @sio.on("disconnect", namespace=NAMESPACE)
    async def on_disconnect(*_reason):
        status("disconnected")
        end_turn("the answer was cut off by the disconnect")

    @sio.on("chat:conversation", namespace=NAMESPACE)
    async def on_conversation(data):
        state["conversation_id"] = data["conversationId"]
        status(f"conversation {data['conversationId']}")

    @sio.on("chat:message", namespace=NAMESPACE)
    async def on_message(data):
        out(data["content"])

    @sio.on("chat:end", namespace=NAMESPACE)
    async def on_end(data):
        out("\n")
        end_turn(f"[{data['model']}, {data['totalTokens']} tokens, {data['finishReason']}]")

    @sio.on("chat:stopped", namespace=NAMESPACE)
    async def on_stopped(_data):
        out("\n")
        end_turn("[stopped]")

    @sio.on("chat:error", namespace=NAMESPACE)
    async def on_error(data):
        text = f"{data.get('code')}: {data.get('message')}"
        turn = state["turn"]
        if turn is not None and (turn.message_id is None
                                 or data.get("messageId") in (None, turn.message_id)):
            out("\n")
            end_turn(f"error {text}")
        elif turn is None and text != state["last_ack_error"]:
            status(f"error {text}")
        state["last_ack_error"] = None

    try:
        await sio.connect(URL, auth={"token": TOKEN} if TOKEN else None,
                          namespaces=[NAMESPACE], wait_timeout=10)
    except socketio.exceptions.ConnectionError as exc:
        if state["unauthorized"]:
            status("the server refused the connection: unauthorized "
                   "(set CHATWIRE_TOKEN to a valid JWT)")
        else:
            status(f"cannot connect to {URL}: {exc}")
        return 1

    # Installed after connecting: python-engineio puts in a SIGINT handler of its
    # own (disconnect and cancel everything) the first time it connects.
    loop.add_signal_handler(signal.SIGINT, on_interrupt)

    while not state["quitting"]:
        if INTERACTIVE:
            out("you> ")
        line = await lines.get()
        if line is None:
            break
        message = line.strip()
        if not message:
            continue

        turn = Turn()
        state["turn"] = turn
        out("ai> ")
        payload = {"message": message, "conversationId": state["conversation_id"],
                   # makes a retry after a reconnect safe: never started twice
                   "clientMessageId": str(uuid.uuid4())}
        try:
            ack = await sio.call("chat:start", payload, namespace=NAMESPACE, timeout=15)
        except socketio.exceptions.TimeoutError:
            end_turn("no answer from the server")
            continue
        except socketio.exceptions.BadNamespaceError:
            end_turn("not connected")
            continue
        if not ack or not ack.get("ok"):
            error = (ack or {}).get("error") or {}
            state["last_ack_error"] = f"{error.get('code')}: {error.get('message')}"
            out("\n")
            end_turn(f"error {state['last_ack_error']}")
            continue
        state["conversation_id"] = ack["conversationId"]
        turn.message_id = ack["messageId"]
        await turn.done.wait()

    await sio.disconnect()
    return state["exit_code"]


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
