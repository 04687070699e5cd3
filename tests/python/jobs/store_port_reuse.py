"""Can a new rank 0 host its c10d store on the port of the previous attempt's?

A restarted group reuses MASTER_PORT while connections of the killed rank 0's
store still linger there (FIN_WAIT/TIME_WAIT). This hosts a store in a child
process, connects to it, kills the child, and hosts a second store on the same
port at once. Prints one JSON object: how many lingering connections the port
had at that moment, whether a plain listener (no SO_REUSEADDR) was refused it,
and whether the second store served a client.

    store_port_reuse.py PORT
"""
import datetime
import json
import socket
import subprocess
import sys
import time

from torch.distributed import TCPStore

TIMEOUT = datetime.timedelta(seconds=20)
# /proc/net/tcp states: FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSING, LAST_ACK.
LINGERING = {"04", "05", "06", "0B", "09"}


def lingering_connections(port):
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local_port = int(fields[1].rsplit(":", 1)[1], 16)
                    if local_port == port and fields[3] in LINGERING:
                        count += 1
        except FileNotFoundError:
            pass
    return count


def plain_bind_refused(port):
    """Whether a listener without SO_REUSEADDR is refused the port now: the
    situation the store's own listener has to cope with."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            s.bind(("::", port))
        except OSError:
            return True
        return False


def host(port):
    store = TCPStore("127.0.0.1", port, None, True, TIMEOUT, wait_for_workers=False, multi_tenant=True)
    store.set("hosted", "yes")
    print("ready", flush=True)
    time.sleep(60)


def start_host(port):
    child = subprocess.Popen([sys.executable, __file__, "--host", str(port)], stdout=subprocess.PIPE, text=True)
    if child.stdout.readline().strip() != "ready":
        raise RuntimeError("the store host did not start")
    return child


def main():
    if sys.argv[1] == "--host":
        host(int(sys.argv[2]))
        return
    port = int(sys.argv[1])
    first = start_host(port)
    client = TCPStore("127.0.0.1", port, None, False, TIMEOUT)
    client.get("hosted")
    first.kill()  # the host's side closes first, so its end of each connection lingers
    first.wait()
    lingering = lingering_connections(port)
    refused = plain_bind_refused(port)
    second = start_host(port)
    try:
        ok = TCPStore("127.0.0.1", port, None, False, TIMEOUT).get("hosted") == b"yes"
    finally:
        second.kill()
        second.wait()
    print(json.dumps({"lingering": lingering, "plain_bind_refused": refused, "second_store_ok": ok}))


if __name__ == "__main__":
    main()
