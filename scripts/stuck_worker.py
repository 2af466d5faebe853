#!/usr/bin/env python3
"""The stuck-worker experiment of the README's "Worker health": a pool of 4 workers, the one that
answers a first request from 127.0.0.1 stopped with SIGSTOP, then 200 requests one after another,
each on a new connection with a 2 s timeout. Prints failures/total.

usage: stuck_worker.py CLUSTER_BINARY PORT MODE [cluster run options...]
e.g.   stuck_worker.py target/release/cluster 18610 round-robin --stall-after 3600 --hang-timeout 0
"""
import json, os, signal, socket, subprocess, sys, time
binary, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
extra = sys.argv[4:]
sup = subprocess.Popen([binary, "run", "--workers", "4", "--listen", f"127.0.0.1:{port}", "--steering", mode] + extra,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
def status():
    out = subprocess.run([binary, "status", "--json", "--pid", str(sup.pid)], capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else None
def get(timeout):
    """One GET / on a new connection; the whole answer (raises OSError on a failure)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        c.settimeout(timeout)
        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := c.recv(4096):
            data += chunk
        return data
try:
    for _ in range(100):
        s = status()
        if s and s["serving"] == 4: break
        time.sleep(0.1)
    # Stop the worker that answers 127.0.0.1 (the one sticky sends this client to).
    head = get(5)
    pid = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"x-worker-pid")][0])
    os.kill(pid, signal.SIGSTOP)
    failed = 0
    start = time.time()
    for i in range(200):
        try:
            if not get(2).startswith(b"HTTP/1.1 200"): failed += 1
        except OSError:
            failed += 1
    print(f"{mode} {' '.join(extra)}: failed {failed}/200 in {time.time()-start:.1f}s")
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass  # killed as hung, and replaced
finally:
    sup.terminate(); sup.wait()
