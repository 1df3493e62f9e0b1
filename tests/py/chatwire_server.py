"""The built `chatwire` binary for the Python suites: started on a free port with the
built-in mock upstream and a JWT secret of its own, and the tokens it accepts.

CHATWIRE_BIN names the binary (default ../../target/debug/chatwire relative to this
file); DATABASE_URL, when set, is the database it uses (else a SQLite file of its own).
"""

import base64
import contextlib
import hashlib
import hmac
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.abspath(os.environ.get("CHATWIRE_BIN")
                      or os.path.join(HERE, "..", "..", "target", "debug", "chatwire"))
SECRET = "py-test-secret-" + uuid.uuid4().hex


def b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def make_jwt(payload, secret=SECRET, ttl=3600):
    """HS256 exactly like jsonwebtoken (NestJS JwtService) signs it."""
    now = int(time.time())
    body = {"iat": now, "exp": now + ttl, **payload}
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    claims = b64url(json.dumps(body, separators=(",", ":")).encode())
    signing_input = f"{header}.{claims}".encode()
    sig = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}.{claims}.{b64url(sig)}"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_log(tmp):
    try:
        with open(os.path.join(tmp, "server.log"), "rb") as f:
            return f.read()[-8000:].decode(errors="replace")
    except OSError:
        return ""


@contextlib.contextmanager
def running_server(settings):
    """Runs `chatwire serve` with these variables (beside the port, host, secret and
    database) until the block ends; yields its base URL once `/health` says ok."""
    if not os.path.exists(BIN):
        pytest.fail(f"chatwire binary not found at {BIN}; build it or set CHATWIRE_BIN")
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="chatwire-py-")
    database_url = os.environ.get("DATABASE_URL") or \
        f"sqlite://{os.path.join(tmp, 'chatwire.db')}?mode=rwc"
    env = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR", "TZ", "LANG", "LC_ALL")
           if k in os.environ}
    env.update({
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "JWT_SECRET": SECRET,
        "DATABASE_URL": database_url,
        "RUST_LOG": "warn",
        # A loaded CI machine running a debug build is no overload.
        "OVERLOAD_LAG_MS": "0",
        **settings,
    })
    log = open(os.path.join(tmp, "server.log"), "wb")
    # cwd is the scratch directory so that no `.env` of the checkout is read.
    proc = subprocess.Popen([BIN, "serve"], env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        problem = "no answer yet"
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"chatwire exited with {proc.returncode}:\n{read_log(tmp)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"chatwire not healthy after 60 s ({problem}):\n{read_log(tmp)}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as res:
                    body = json.loads(res.read())
                    if res.status == 200 and body.get("status") == "ok":
                        break
                    problem = f"HTTP {res.status} {body}"
            except (urllib.error.URLError, OSError, ValueError) as exc:
                problem = str(exc)
            time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
