"""One app, six scenarios: the leak (if any) is chosen by LEAK_SCENARIO.

Every scenario has the same busy, harmless traffic: /health is the busiest,
/heavy allocates ~4 MB and frees it, /work churns JSON. Only the leaker differs.
The leaking lines are marked `# LEAK` so tests can find their line numbers.
"""

import asyncio
import ctypes
import os
import socket
from collections import OrderedDict

from fastapi import FastAPI

from leakyspanner import leakyspanner

SCENARIO = os.environ.get("LEAK_SCENARIO", "control")
BYTES_PER_CALL = int(os.environ.get("LEAK_BYTES", "40000"))

app = FastAPI()
HISTORY: list = []
CACHE: dict = {}
LRU: OrderedDict = OrderedDict()
TASKS: set = set()
CONNECTIONS: list = []
NATIVE: list = []
_libc = ctypes.CDLL(None)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]


@app.get("/health")
async def health():
    return {"ok": True}


@app.get("/heavy")
async def heavy():
    chunks = [bytes(4096) for _ in range(1000)]  # ~4 MB, freed on return
    return {"n": len(chunks)}


@app.post("/work")
async def work(payload: dict):
    rows = [{"i": i, "text": str(payload) * 3} for i in range(300)]
    return {"rows": len(rows)}


@app.post("/items/{item_id}")
async def item(item_id: int):
    if SCENARIO == "global_list":
        HISTORY.append(bytearray(BYTES_PER_CALL))  # LEAK global_list
    elif SCENARIO == "cache":
        CACHE[f"item-{item_id}"] = "x" * BYTES_PER_CALL  # LEAK cache
    elif SCENARIO == "tasks":
        task = asyncio.get_running_loop().create_task(_wait_forever(bytearray(BYTES_PER_CALL)))  # LEAK tasks
        TASKS.add(task)  # the usual keep-a-reference idiom; the task never finishes, so never leaves
        task.add_done_callback(TASKS.discard)
    elif SCENARIO == "connections":
        CONNECTIONS.append(_Connection())
    elif SCENARIO == "native":
        ptr = _libc.malloc(BYTES_PER_CALL)  # LEAK native (outside tracemalloc)
        ctypes.memset(ptr, 1, BYTES_PER_CALL)
        NATIVE.append(ptr)
    else:  # control: a bounded cache that fills during warm-up, then stays flat
        LRU[item_id % 100] = bytearray(BYTES_PER_CALL)
        LRU.move_to_end(item_id % 100)
        while len(LRU) > 100:
            LRU.popitem(last=False)
    return {"id": item_id}


async def _wait_forever(buffer: bytearray) -> None:
    await asyncio.Event().wait()


class _Connection:
    """A client connection that is opened and never closed, with its read buffer."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.buffer = bytearray(BYTES_PER_CALL)  # LEAK connections


profiler = leakyspanner(app, log_path=os.environ.get("LEAK_LOG_DIR", "logs"),
                        level=os.environ.get("LEAK_LEVEL", "mid"), interval_seconds=0.25,
                        leak_threshold_mb=20)
