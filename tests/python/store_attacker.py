"""Attacks on an elastic-run c10d rendezvous store, speaking its wire protocol
(include/elastic/rendezvous/c10d/wire.hpp). Prints one JSON line of findings.

  store_attacker.py announce PORT CONNECTIONS SIZE HOLD_S
  store_attacker.py wait-count PORT
  store_attacker.py get-many PORT
  store_attacker.py drip PORT INTERVAL_S
  store_attacker.py flood PORT CONNECTIONS HOLD_S
  store_attacker.py no-secret PORT
  store_attacker.py wrong-secret PORT
"""
import json
import os
import socket
import struct
import sys
import time

MAGIC = b"ELASTIC-RDZV\n"
GET, GET_MANY, SET, WAIT = 1, 2, 3, 7


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exact(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise EOFError("closed after %d of %d bytes" % (len(data), n))
        data += chunk
    return data


def handshake(s, ttl_ms=15000):
    s.sendall(MAGIC + struct.pack("<IQ", 1, ttl_ms))
    reply = recv_exact(s, len(MAGIC) + 5)
    assert reply.startswith(MAGIC), reply
    return reply[-1]


def string(b):
    return struct.pack("<I", len(b)) + b


def request(s, body):
    s.sendall(struct.pack("<I", len(body)) + body)
    (length,) = struct.unpack("<I", recv_exact(s, 4))
    return recv_exact(s, length)


def closed_by_peer(s, wait_s):
    """Whether the peer closes the connection within wait_s seconds."""
    s.settimeout(wait_s)
    try:
        return s.recv(1) == b""
    except socket.timeout:
        return False
    except ConnectionResetError:
        return True


def announce(port, count, size, hold):
    conns = []
    for _ in range(count):
        s = connect(port)
        handshake(s)
        s.sendall(struct.pack("<I", size))
        conns.append(s)
    start = time.monotonic()
    closed = 0
    for s in conns:
        left = max(0.0, hold - (time.monotonic() - start))
        closed += closed_by_peer(s, left)
    return {"closed": closed, "connections": count}


def wait_count(port):
    s = connect(port)
    handshake(s)
    # 9 bytes announcing 2^25 keys.
    answer = request(s, bytes([WAIT]) + struct.pack("<I", 1 << 25) + b"\0\0\0\0")
    status = answer[0]
    message = answer[5:].decode(errors="replace") if status == 1 else ""
    # The connection still serves.
    after = request(s, bytes([GET]) + string(b"k"))
    return {"status": status, "message": message, "usable": after[0] == 0}


def get_many(port):
    s = connect(port)
    handshake(s)
    value = b"v" * (1 << 20)
    assert request(s, bytes([SET]) + string(b"k") + string(value))[0] == 0
    names = 7000
    body = bytes([GET_MANY]) + struct.pack("<I", names) + string(b"k") * names
    answer = request(s, body)
    message = answer[5:].decode(errors="replace") if answer[0] == 1 else ""
    return {"request_bytes": len(body), "answer_bytes": len(answer), "status": answer[0], "message": message}


def drip(port, interval):
    s = connect(port)
    handshake(s)
    s.sendall(struct.pack("<I", 100))
    start = time.monotonic()
    sent = 0
    try:
        while sent < 100:
            s.sendall(b"x")
            sent += 1
            if closed_by_peer(s, interval):
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    return {"seconds": round(time.monotonic() - start, 2), "sent": sent}


def flood(port, count, hold):
    conns = []
    for _ in range(count):
        try:
            conns.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError:
            break
    time.sleep(hold)
    for s in conns:
        s.close()
    return {"opened": len(conns)}


def no_secret(port):
    s = connect(port)
    answer = handshake(s)
    nonce = recv_exact(s, 32) if answer == 2 else b""
    # Skip the proof: send a GET as if accepted.
    s.sendall(struct.pack("<I", 6) + bytes([GET]) + string(b"k")[:5])
    got = b""
    s.settimeout(15)
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return {"answer": answer, "nonce_bytes": len(nonce), "bytes_after": len(got)}


def wrong_secret(port):
    s = connect(port)
    answer = handshake(s)
    recv_exact(s, 32)
    s.sendall(os.urandom(64))
    return {"answer": answer, "closed": closed_by_peer(s, 15)}


def main():
    mode, port = sys.argv[1], int(sys.argv[2])
    args = sys.argv[3:]
    if mode == "announce":
        result = announce(port, int(args[0]), int(args[1]), float(args[2]))
    elif mode == "wait-count":
        result = wait_count(port)
    elif mode == "get-many":
        result = get_many(port)
    elif mode == "drip":
        result = drip(port, float(args[0]))
    elif mode == "flood":
        result = flood(port, int(args[0]), float(args[1]))
    elif mode == "no-secret":
        result = no_secret(port)
    elif mode == "wrong-secret":
        result = wrong_secret(port)
    else:
        sys.exit("unknown mode " + mode)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
