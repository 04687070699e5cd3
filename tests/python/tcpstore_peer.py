"""PyTorch's TCPStore facing our c10d rendezvous store.

client PORT: connect to our store as a TCPStore client and set a key; prints the
             exception's type and message and exits 3 when refused.
server FILE: host a TCPStore on a free port, write the port to FILE, serve 60 s.
"""
import datetime
import sys
import time

import torch.distributed as dist


def main():
    mode, arg = sys.argv[1], sys.argv[2]
    if mode == "client":
        try:
            store = dist.TCPStore("127.0.0.1", int(arg), is_master=False, timeout=datetime.timedelta(seconds=20))
            store.set("key", "value")
            store.get("key")
        except Exception as e:  # the refusal we expect
            print(f"{type(e).__name__}: {e}", flush=True)
            sys.exit(3)
        print("accepted", flush=True)
        sys.exit(0)
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=60))
    with open(arg + ".tmp", "w") as f:
        f.write(str(store.port))
    import os
    os.rename(arg + ".tmp", arg)
    time.sleep(60)


if __name__ == "__main__":
    main()
