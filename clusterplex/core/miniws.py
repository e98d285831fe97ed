"""A minimal blocking WebSocket client (RFC 6455), standard library only.

The shim runs on every play and seek, so it cannot afford aiohttp's import
time. It needs text frames, ping/pong and close; nothing else.
"""

import base64
import hashlib
import os
import socket
import struct

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_FRAME = 1 << 24


class WebSocketError(Exception):
    pass


def _mask(payload, key):
    n = len(payload)
    if not n:
        return b""
    k = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ k).to_bytes(n, "big")


class WebSocket:
    def __init__(self, sock):
        self.sock = sock
        self._buf = bytearray()
        self.close_code = None

    @classmethod
    def connect(cls, host, port, path, timeout):
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ws = cls(sock)
        try:
            ws._handshake(host, port, path)
        except BaseException:
            sock.close()
            raise
        return ws

    def _handshake(self, host, port, path):
        key = base64.b64encode(os.urandom(16))
        hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        req = (f"GET {path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        self.sock.sendall(req.encode())
        while b"\r\n\r\n" not in self._buf:
            if len(self._buf) > 16384:
                raise WebSocketError("oversized handshake response")
            self._fill()
        head, _, rest = bytes(self._buf).partition(b"\r\n\r\n")
        self._buf = bytearray(rest)
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or parts[1] != "101":
            raise WebSocketError(f"server answered {lines[0]!r} instead of switching protocols")
        headers = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            headers[k.strip().lower()] = v.strip()
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != accept:
            raise WebSocketError("bad Sec-WebSocket-Accept")

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionResetError("connection closed by peer")
        self._buf += data

    def _read(self, n):
        while len(self._buf) < n:
            self._fill()
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def _send_frame(self, opcode, payload):
        key = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        self.sock.sendall(header + key + _mask(payload, key))

    def send_text(self, text):
        self._send_frame(OP_TEXT, text.encode("utf-8"))

    def settimeout(self, timeout):
        self.sock.settimeout(timeout)

    def recv_text(self):
        """Next text message, or None when the peer closed. Answers pings itself."""
        parts = []
        while True:
            b1, b2 = self._read(2)
            fin, opcode, n = b1 & 0x80, b1 & 0x0F, b2 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            if n > MAX_FRAME:
                raise WebSocketError("frame too large")
            key = self._read(4) if b2 & 0x80 else None
            payload = self._read(n)
            if key:
                payload = _mask(payload, key)
            if opcode == OP_PING:
                self._send_frame(OP_PONG, payload)
            elif opcode == OP_PONG:
                pass
            elif opcode == OP_CLOSE:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                try:
                    self._send_frame(OP_CLOSE, payload[:2])
                except OSError:
                    pass
                return None
            else:
                parts.append(payload)
                if fin:
                    return b"".join(parts).decode("utf-8")

    def close(self):
        try:
            self._send_frame(OP_CLOSE, struct.pack("!H", 1000))
        except OSError:
            pass
        self.sock.close()
