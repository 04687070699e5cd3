"""Uses the workers' store at 127.0.0.1:PORT (default: MASTER_PORT) as torch's
TCPStore client, and prints one JSON object of what each call returned.

    agent_store_client.py [PORT]          every call of the Store API
    agent_store_client.py PORT raw        one raw ADD request on a plain socket:
                                          whether the server answered or closed
    agent_store_client.py serve DIR       (as a worker) writes DIR/port, the raw
                                          probe's answer to DIR/inside, then waits
                                          up to 60 s for DIR/done
"""
import datetime
import json
import os
import socket
import struct
import sys
import time


def probe(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = b"/probe"
    # 1.x ADD: type 3, u64 key length, key, i64 delta.
    s.sendall(struct.pack("=BQ", 3, len(key)) + key + struct.pack("=q", 5))
    try:
        answer = s.recv(8)
    except (socket.timeout, ConnectionResetError):
        answer = None
    value = struct.unpack("=q", answer)[0] if answer and len(answer) == 8 else None
    return {"answered": bool(answer), "value": value}


def closed_after(port, request):
    """Whether the server closes the connection, unanswered, after `request`."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(request)
    try:
        return s.recv(1) == b""
    except (socket.timeout, ConnectionResetError):
        return False


def string(data):
    return struct.pack("=Q", len(data)) + data


def v2_session(port):
    """torch 2.x's dialect: VALIDATE, PING, SET, APPEND, MULTI_GET."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(struct.pack("=BI", 0, 0x3C85F7CE) + struct.pack("=BI", 13, 12345))
    pong = struct.unpack("=I", s.recv(4))[0]
    s.sendall(bytes([1]) + string(b"/v2a") + string(b"ab") + bytes([9]) + string(b"/v2a") + string(b"cd"))
    s.sendall(bytes([1]) + string(b"/v2b") + string(b"x"))
    s.sendall(bytes([10]) + struct.pack("=Q", 2) + string(b"/v2a") + string(b"/v2b"))
    got = b""
    while len(got) < 8 + 4 + 8 + 1:
        chunk = s.recv(64)
        if not chunk:
            break
        got += chunk
    return {"pong": pong, "multi_get": got.hex()}


if len(sys.argv) > 2 and sys.argv[1] == "serve":
    out = sys.argv[2]
    port = int(os.environ["MASTER_PORT"])
    seen = probe(port)
    seen["v2"] = v2_session(port)
    # A key length far over the bound, and an unknown request type.
    seen["oversized_closed"] = closed_after(port, struct.pack("=BQ", 2, 1 << 40))
    seen["unknown_closed"] = closed_after(port, bytes([200]))
    with open(os.path.join(out, "inside.tmp"), "w") as f:
        json.dump(seen, f)
    os.rename(os.path.join(out, "inside.tmp"), os.path.join(out, "inside"))
    with open(os.path.join(out, "port.tmp"), "w") as f:
        f.write(str(port))
    os.rename(os.path.join(out, "port.tmp"), os.path.join(out, "port"))
    deadline = time.time() + 60
    while not os.path.exists(os.path.join(out, "done")) and time.time() < deadline:
        time.sleep(0.05)
    sys.exit(0)

port = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ["MASTER_PORT"])

if len(sys.argv) > 2 and sys.argv[2] == "raw":
    print(json.dumps(probe(port)))
    sys.exit(0)

from torch.distributed import PrefixStore, TCPStore

timeout = datetime.timedelta(seconds=10)
store = TCPStore("127.0.0.1", port, 2, False, timeout)
seen = {}
store.set("k", "v1")
seen["get"] = store.get("k").decode()
seen["add_new"] = store.add("counter", 5)
seen["add_again"] = store.add("counter", -2)
seen["get_counter"] = store.get("counter").decode()
seen["cas_swapped"] = store.compare_set("k", "v1", "v2").decode()
seen["cas_not_swapped"] = store.compare_set("k", "v1", "v3").decode()
seen["cas_missing_expected_empty"] = store.compare_set("fresh", "", "new").decode()
seen["cas_missing_expected_given"] = store.compare_set("absent", "x", "y").decode()
store.wait(["k"])
try:
    store.wait(["never"], datetime.timedelta(seconds=1))
    seen["wait_timed_out"] = False
except RuntimeError:
    seen["wait_timed_out"] = True
# A waiting client is answered when another sets the key.
other = TCPStore("127.0.0.1", port, 2, False, timeout)
import threading

setter = threading.Timer(0.5, lambda: other.set("later", "x"))
setter.start()
store2 = TCPStore("127.0.0.1", port, 2, False, timeout)
store2.wait(["later"])
setter.join()
seen["waited_value"] = store2.get("later").decode()
seen["num_keys"] = store2.num_keys()
seen["delete_present"] = store2.delete_key("later")
seen["delete_absent"] = store2.delete_key("later")
prefixed = PrefixStore("/worker/attempt_0", store2)
prefixed.set("x", b"\x00\x01binary")
seen["prefixed"] = list(store2.get("/worker/attempt_0/x"))
print(json.dumps(seen))
