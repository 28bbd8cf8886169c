"""A minimal HTTP/2 client for the module's tests: cleartext with prior
knowledge, GET requests as concurrent streams of one connection, all sent at
once. It reads back each stream's status and body, which is all the tests
need; it is not a general-purpose HTTP/2 implementation (no HPACK decoder: the
status is the first field nginx writes, and nginx writes it in one of two
simple forms)."""
import socket
import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
# HPACK's static table entries for :status (RFC 7541, appendix A).
STATIC_STATUS = {8: 200, 9: 204, 10: 206, 11: 304, 12: 400, 13: 404, 14: 500}


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def literal(name, value):
    """A header field as a literal without indexing, new name, no Huffman coding."""
    name, value = name.encode(), value.encode()
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def status_of(block):
    first = block[0]
    if first & 0x80:
        return STATIC_STATUS.get(first & 0x7F)
    if first & 0x0F == 8 and first & 0xF0 in (0x00, 0x10, 0x40):  # literal, indexed name :status
        length = block[1] & 0x7F
        return int(block[2:2 + length])
    raise ValueError("unexpected first header field: %r" % block[:8])


class Stream:
    def __init__(self, sid):
        self.id = sid
        self.status = None
        self.body = b""
        self.ended = False
        self.reset = None


class H2Connection:
    def __init__(self, port, host="127.0.0.1", timeout=30):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.authority = "%s:%d" % (host, port)
        self.buf = b""
        self.streams = {}
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0))

    def get_many(self, path, count):
        """Sends `count` GETs at once (streams 1, 3, 5, ...) in one write."""
        out = b""
        for i in range(count):
            sid = 2 * (len(self.streams)) + 1
            self.streams[sid] = Stream(sid)
            block = b"".join([b"\x82", literal(":path", path), b"\x86", literal(":authority", self.authority),
                              literal("user-agent", "ondemand-test-h2")])  # 0x82 GET, 0x86 http
            out += frame(HEADERS, END_STREAM | END_HEADERS, sid, block)
        self.sock.sendall(out)

    def post_many(self, path, bodies, piece=4096):
        """Sends one POST per body (streams 1, 3, 5, ...), each body in DATA
        frames of `piece` bytes, the streams' frames interleaved. The bodies
        together must fit the connection's first flow-control window (64 KiB)."""
        assert sum(len(b) for b in bodies) < 65535 and all(len(b) < 65535 for b in bodies)
        sids = []
        out = b""
        for body in bodies:
            sid = 2 * (len(self.streams)) + 1
            self.streams[sid] = Stream(sid)
            sids.append(sid)
            block = b"".join([b"\x83", literal(":path", path), b"\x86", literal(":authority", self.authority),
                              literal("content-type", "application/json"),
                              literal("content-length", str(len(body)))])  # 0x83 POST, 0x86 http
            out += frame(HEADERS, END_HEADERS, sid, block)
        for at in range(0, max(len(b) for b in bodies), piece):
            for sid, body in zip(sids, bodies):
                if at < len(body):
                    last = at + piece >= len(body)
                    out += frame(DATA, END_STREAM if last else 0, sid, body[at:at + piece])
        self.sock.sendall(out)

    def _read_frame(self):
        while True:
            if len(self.buf) >= 9:
                length = struct.unpack(">I", b"\x00" + self.buf[:3])[0]
                if len(self.buf) >= 9 + length:
                    head, payload = self.buf[:9], self.buf[9:9 + length]
                    self.buf = self.buf[9 + length:]
                    return head[3], head[4], struct.unpack(">I", head[5:9])[0] & 0x7FFFFFFF, payload
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buf += chunk

    def wait_all(self):
        """Reads frames until every stream has ended (or was reset); returns the streams in order."""
        while not all(s.ended or s.reset is not None for s in self.streams.values()):
            kind, flags, sid, payload = self._read_frame()
            stream = self.streams.get(sid)
            if kind == SETTINGS and not flags & ACK:
                self.sock.sendall(frame(SETTINGS, ACK, 0))
            elif kind == PING and not flags & ACK:
                self.sock.sendall(frame(PING, ACK, 0, payload))
            elif kind == GOAWAY:
                raise ConnectionError("GOAWAY from the server: %r" % payload)
            elif kind == HEADERS and stream is not None:
                if stream.status is None:
                    stream.status = status_of(payload)
                stream.ended = stream.ended or bool(flags & END_STREAM)
            elif kind == DATA and stream is not None:
                stream.body += payload
                stream.ended = stream.ended or bool(flags & END_STREAM)
            elif kind == RST_STREAM and stream is not None:
                stream.reset = struct.unpack(">I", payload)[0]
        return [self.streams[k] for k in sorted(self.streams)]

    def close(self):
        self.sock.close()
