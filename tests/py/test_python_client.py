"""chatwire end to end through python-socketio's asyncio client.

Starts the `chatwire` binary (CHATWIRE_BIN, default ../../target/debug/chatwire
relative to this file) on a free port with the built-in mock upstream, then chats
over the `/ai` namespace the way a Python client would.
"""

import asyncio
import re
import time
import uuid

import pytest
import socketio

from chatwire_server import make_jwt, running_server

NS = "/ai"
# Non-ASCII on purpose: `offset` counts UTF-16 code units.
MOCK_RESPONSE = ("Hello from the mock! Naïve café 🚀 rockets\nfly over €100 and "
                 "日本語 text, then a few more words to stream slowly enough to stop.")
FINAL = ("chat:end", "chat:stopped", "chat:error")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)


def mock_tokens(text):
    """Each mock token is a word plus the whitespace after it."""
    return re.findall(r"\S+\s*", text)


def utf16_len(text):
    return len(text.encode("utf-16-le")) // 2


@pytest.fixture(scope="module")
def server():
    settings = {"MOCK_RESPONSE": MOCK_RESPONSE, "MOCK_TOKEN_DELAY_MS": "20", "MOCK_FIRST_TOKEN_DELAY_MS": "20"}
    with running_server(settings) as base:
        yield base


class Client:
    """An AsyncClient on /ai that records every chat event in arrival order
    (and the chat:active announcements of each connect, and chat:title, apart)."""

    def __init__(self):
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events = []
        self.active = []
        self.titles = []
        self.changed = asyncio.Event()
        self.connect_errors = []

        @self.sio.on("*", namespace=NS)
        async def any_event(event, data=None):
            if event == "chat:active":
                self.active.append(data)
            elif event == "chat:title":
                # After an answer, outside its flow: kept apart like chat:active.
                self.titles.append(data)
            else:
                self.events.append((event, data))
            self.changed.set()

        @self.sio.on("connect_error", namespace=NS)
        async def connect_error(data=None):
            self.connect_errors.append(data)

    async def connect(self, url, token, transports=None):
        await self.sio.connect(url, namespaces=[NS], transports=transports,
                               auth={"token": token} if token is not None else None,
                               wait_timeout=10)

    async def wait_for(self, pred, start=0, timeout=15):
        async def loop():
            while True:
                for ev in self.events[start:]:
                    if pred(ev):
                        return ev
                self.changed.clear()
                await self.changed.wait()
        return await asyncio.wait_for(loop(), timeout)

    async def wait_final(self, start=0, timeout=15):
        return await self.wait_for(lambda e: e[0] in FINAL, start, timeout)

    async def close(self):
        await self.sio.disconnect()


def assert_complete_stream(events, user_message, new_conversation, conversation_id=None):
    names = [e[0] for e in events]
    i = 0
    if new_conversation:
        assert names[0] == "chat:conversation", events
        assert set(events[0][1]) == {"conversationId"}
        conversation_id = events[0][1]["conversationId"]
        assert UUID_RE.match(conversation_id)
        i = 1
    else:
        assert "chat:conversation" not in names, events
    assert names[i] == "chat:user-message", events
    um = events[i][1]
    assert set(um) == {"messageId", "content", "conversationId", "parentMessageId"}
    assert um["content"] == user_message
    assert um["conversationId"] == conversation_id
    i += 1

    text = ""
    seq = 0
    message_id = None
    while names[i] == "chat:message":
        m = events[i][1]
        assert set(m) == {"content", "isComplete", "messageId", "conversationId", "seq", "offset"}, m
        assert m["isComplete"] is False
        assert m["conversationId"] == conversation_id
        message_id = message_id or m["messageId"]
        assert m["messageId"] == message_id
        assert m["seq"] == seq, m
        assert m["offset"] == utf16_len(text), m
        text += m["content"]
        seq += 1
        i += 1
    assert seq > 0, events

    assert names[i:] == ["chat:end"], events
    end = events[i][1]
    assert set(end) == {"messageId", "conversationId", "totalTokens", "model", "finishReason",
                        "promptTokens", "completionTokens", "content"}, end
    assert end["messageId"] == message_id
    assert end["messageId"] != um["messageId"]
    assert end["conversationId"] == conversation_id
    assert end["model"] == "gpt-4"
    assert end["finishReason"] == "stop"
    assert end["content"] == text == MOCK_RESPONSE
    assert end["completionTokens"] == len(mock_tokens(MOCK_RESPONSE))
    assert end["totalTokens"] == end["promptTokens"] + end["completionTokens"]
    return {"conversation_id": conversation_id, "message_id": message_id,
            "user_message_id": um["messageId"]}


def user_token():
    return make_jwt({"sub": f"py-user-{uuid.uuid4()}", "email": "py@example.test"})


@pytest.mark.parametrize("transports", [["websocket"], None], ids=["websocket", "polling-upgrade"])
def test_chat_stream(server, transports):
    async def run():
        c = Client()
        await c.connect(server, user_token(), transports=transports)
        try:
            await c.sio.emit("chat:start", {"message": "Explain quantum computing"}, namespace=NS)
            await c.wait_final()
            first = assert_complete_stream(c.events, "Explain quantum computing", True)

            # Continue the conversation: no chat:conversation, same id.
            start = len(c.events)
            await c.sio.emit("chat:start", {"message": "And then?",
                                            "conversationId": first["conversation_id"]},
                             namespace=NS)
            await c.wait_final(start)
            assert_complete_stream(c.events[start:], "And then?", False, first["conversation_id"])
            # Each connect announced the user's running answers: none at that moment.
            assert c.active == [{"generations": []}]
        finally:
            await c.close()

    asyncio.run(run())


def test_chat_start_ack(server):
    async def run():
        c = Client()
        await c.connect(server, user_token(), transports=["websocket"])
        try:
            ack = await c.sio.call("chat:start", {"message": "with ack", "conversationId": None},
                                   namespace=NS, timeout=10)
            assert set(ack) == {"ok", "conversationId", "userMessageId", "messageId", "parentMessageId"}, ack
            assert ack["ok"] is True
            await c.wait_final()
            r = assert_complete_stream(c.events, "with ack", True)
            assert ack["conversationId"] == r["conversation_id"]
            assert ack["messageId"] == r["message_id"]
            assert ack["userMessageId"] == r["user_message_id"]
        finally:
            await c.close()

    asyncio.run(run())


def test_chat_stop(server):
    async def run():
        c = Client()
        await c.connect(server, user_token(), transports=["websocket"])
        try:
            await c.sio.emit("chat:start", {"message": "stop me"}, namespace=NS)
            await c.wait_for(lambda e: e[0] == "chat:message" and e[1]["seq"] == 2)
            ack = await c.sio.call("chat:stop", namespace=NS, timeout=10)
            assert ack == {"ok": True, "stopped": True}
            final = await c.wait_final()
            await asyncio.sleep(0.3)
            assert final[0] == "chat:stopped", c.events
            assert "chat:end" not in [e[0] for e in c.events]
            chunks = "".join(d["content"] for n, d in c.events if n == "chat:message")
            assert set(final[1]) == {"messageId", "conversationId", "content"}
            assert final[1]["content"] == chunks
            assert MOCK_RESPONSE.startswith(chunks) and len(chunks) < len(MOCK_RESPONSE)
            # Nothing is running now.
            assert await c.sio.call("chat:stop", namespace=NS, timeout=10) == \
                {"ok": True, "stopped": False}
        finally:
            await c.close()

    asyncio.run(run())


def test_chat_error_then_usable(server):
    async def run():
        c = Client()
        await c.connect(server, user_token(), transports=["websocket"])
        try:
            await c.sio.emit("chat:start", {"message": ""}, namespace=NS)
            name, data = await c.wait_final()
            assert name == "chat:error"
            assert data["code"] == "INVALID_PAYLOAD" and data["message"]
            start = len(c.events)
            await c.sio.emit("chat:start", {"message": "valid now"}, namespace=NS)
            await c.wait_final(start)
            assert_complete_stream(c.events[start:], "valid now", True)
        finally:
            await c.close()

    asyncio.run(run())


@pytest.mark.parametrize("token", [
    make_jwt({"sub": "intruder"}, secret="wrong-secret"),
    make_jwt({"sub": "late", "iat": int(time.time()) - 7200}, ttl=-3600),
    None,
], ids=["wrong-secret", "expired", "no-token"])
def test_bad_token_refused(server, token):
    async def run():
        c = Client()
        with pytest.raises(socketio.exceptions.ConnectionError):
            await c.connect(server, token, transports=["websocket"])
        assert c.connect_errors == [{"message": "unauthorized"}], c.connect_errors
        assert not c.sio.connected

    asyncio.run(run())
