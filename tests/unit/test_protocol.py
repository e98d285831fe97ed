import pytest

from clusterplex.core import protocol

SECRET = b"k" * 40


def handshake(client_secret=SECRET, server_secret=SECRET, client_role="shim", accept=("shim",)):
    server = protocol.ServerHandshake(server_secret, "orchestrator", accept)
    client = protocol.ClientHandshake(client_secret, client_role, "orchestrator")
    auth = client.on_hello(server.hello())
    role, welcome = server.check(auth, {"v": 1})
    return role, client.on_welcome(welcome)


def test_mutual_handshake():
    assert handshake() == ("shim", {"v": 1})


def test_secret_never_on_the_wire():
    server = protocol.ServerHandshake(SECRET, "worker", ("orchestrator",))
    client = protocol.ClientHandshake(SECRET, "orchestrator", "worker")
    wire = protocol.encode(server.hello()) + protocol.encode(client.on_hello(server.hello()))
    assert SECRET.decode() not in wire


def test_wrong_secret_refused():
    with pytest.raises(protocol.AuthError, match="wrong cluster secret"):
        handshake(client_secret=b"x" * 40)


def test_server_without_secret_is_detected_by_client():
    server = protocol.ServerHandshake(b"y" * 40, "orchestrator", ("shim",))
    client = protocol.ClientHandshake(SECRET, "shim", "orchestrator")
    client.on_hello(server.hello())
    forged = {"type": "welcome", "mac": "0" * 64, "info": {}}
    with pytest.raises(protocol.AuthError, match="does not know"):
        client.on_welcome(forged)


def test_replayed_auth_is_refused():
    server1 = protocol.ServerHandshake(SECRET, "orchestrator", ("shim",))
    client = protocol.ClientHandshake(SECRET, "shim", "orchestrator")
    auth = client.on_hello(server1.hello())
    server1.check(auth)
    server2 = protocol.ServerHandshake(SECRET, "orchestrator", ("shim",))
    with pytest.raises(protocol.AuthError):
        server2.check(auth)


def test_role_is_bound():
    with pytest.raises(protocol.AuthError, match="not accepted"):
        handshake(client_role="worker")


@pytest.mark.parametrize("msg", [
    {"type": "auth"}, {"type": "auth", "proto": 99}, {"type": "hello"},
    {"type": "auth", "proto": 1, "role": "shim", "nonce": "x", "mac": "y"},
    {"type": "auth", "proto": 1, "role": "shim", "nonce": "a" * 32, "mac": 5},
])
def test_malformed_auth(msg):
    server = protocol.ServerHandshake(SECRET, "orchestrator", ("shim",))
    with pytest.raises(protocol.AuthError):
        server.check(msg)


@pytest.mark.parametrize("frame", ["", "[]", "{}", '{"type": 1}', "nul\x00", b"\xff\xfe", "x" * (2 << 20),
                                   "[" * 100000, '{"a":' * 50000])
def test_decode_rejects_garbage(frame):
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(frame)


def good_job():
    return {"id": "ab12" * 8, "argv": ["-i", "x"], "cwd": "/t/s", "env": {"A": "b"}, "session": "s"}


@pytest.mark.parametrize("change", [
    {"id": "../../etc"}, {"id": "short"}, {"argv": "rm -rf /"}, {"argv": [1, 2]}, {"argv": ["a\x00b"]},
    {"argv": ["x"] * (protocol.MAX_ARGV + 1)}, {"cwd": "relative"}, {"cwd": 5}, {"env": {"A=B": "c"}},
    {"env": {"A": 1}}, {"env": ["A"]}, {"session": {"x": 1}},
])
def test_check_job_rejects_hostile_jobs(change):
    job = good_job()
    job.update(change)
    with pytest.raises(protocol.ProtocolError):
        protocol.check_job(job)


def test_check_job_keeps_only_known_fields():
    job = good_job()
    job["transcoder"] = "/bin/sh"
    assert "transcoder" not in protocol.check_job(job)


def test_relay_capability():
    prefix = protocol.relay_prefix(SECRET, "a1" * 16)
    _, cp, job, mac = prefix.split("/")
    assert protocol.check_relay_capability(SECRET, job, mac)
    assert not protocol.check_relay_capability(b"z" * 40, job, mac)
    assert not protocol.check_relay_capability(SECRET, "b1" * 16, mac)
