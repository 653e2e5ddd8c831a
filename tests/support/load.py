"""Many requests in flight at once, over real sockets."""
from __future__ import annotations

import asyncio


async def _one(port: int, request: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        line = await reader.readline()
        return int(line.split()[1])
    finally:
        writer.close()


def concurrent_statuses(ports: list[int], requests_per_port: int, request: bytes) -> list[int]:
    """Open every connection first, then fire all requests together; return the statuses."""
    async def main():
        conns = []
        for port in ports:
            for _ in range(requests_per_port):
                conns.append(await asyncio.open_connection("127.0.0.1", port))
        for _, writer in conns:
            writer.write(request)
        await asyncio.gather(*(w.drain() for _, w in conns))
        statuses = []
        for reader, writer in conns:
            line = await reader.readline()
            statuses.append(int(line.split()[1]))
            writer.close()
        return statuses

    return asyncio.run(main())
