"""A hostile stand-in for etcd's JSON gateway on loopback: every request gets
the answer named by MODE. Writes its port to PORT_FILE once it listens.

  hostile_etcd_gateway.py MODE PORT_FILE [UPSTREAM_PORT]
    deep     a body of 100,000 nested arrays
    endless  a chunked body that never ends
    drip     a body announced as 1000 bytes, sent one byte a second
    silent   no answer at all (a member cut off after the connection was made)
    swallow  the request is handed to the etcd at UPSTREAM_PORT on loopback,
             which applies it; its answer is dropped and none is sent (an answer
             lost with a member)
"""
import socket
import sys
import threading
import time


def read_request(conn, data):
    """The whole request whose head starts `data` (its body by Content-Length)."""
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head, body


def swallow(conn, data, upstream_port):
    head, body = read_request(conn, data)
    lines = [l for l in head.split(b"\r\n") if not l.lower().startswith((b"connection:", b"content-length:"))]
    request = b"\r\n".join(lines) + b"\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    with socket.create_connection(("127.0.0.1", upstream_port)) as upstream:
        upstream.sendall(request)
        while upstream.recv(65536):
            pass
    time.sleep(120)


def serve(conn, mode, upstream_port):
    try:
        conn.settimeout(120)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        if mode == "silent":
            time.sleep(120)
        elif mode == "swallow":
            swallow(conn, data, upstream_port)
        elif mode == "deep":
            body = b"[" * 100000 + b"]" * 100000
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            time.sleep(5)
        elif mode == "endless":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"[" + b"1," * 32767 + b"1"
            frame = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
            while True:
                conn.sendall(frame)
        elif mode == "drip":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
            for _ in range(1000):
                conn.sendall(b" ")
                time.sleep(1)
    except OSError:
        pass
    finally:
        conn.close()


def main():
    mode, port_file = sys.argv[1], sys.argv[2]
    upstream_port = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(listener.getsockname()[1]))
    import os
    os.rename(port_file + ".tmp", port_file)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn, mode, upstream_port), daemon=True).start()


if __name__ == "__main__":
    main()
