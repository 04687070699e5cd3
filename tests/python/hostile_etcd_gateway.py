"""A hostile stand-in for etcd's JSON gateway on loopback: every request gets
the answer named by MODE. Writes its port to PORT_FILE once it listens.

  hostile_etcd_gateway.py MODE PORT_FILE
    deep     a body of 100,000 nested arrays
    endless  a chunked body that never ends
    drip     a body announced as 1000 bytes, sent one byte a second
"""
import socket
import sys
import threading
import time


def serve(conn, mode):
    try:
        conn.settimeout(120)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        if mode == "deep":
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
        threading.Thread(target=serve, args=(conn, mode), daemon=True).start()


if __name__ == "__main__":
    main()
