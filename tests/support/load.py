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


def concurrent_statuses(ports: list[int], requests_per_port: int, request: bytes | list[bytes]) -> list[int]:
    """Open every connection first, then fire all requests together; return the statuses.
    `request` may be a list: connection i (in order) sends request[i % len(request)]."""
    sent = request if isinstance(request, list) else [request]
    async def main():
        conns = []
        for port in ports:
            for _ in range(requests_per_port):
                conns.append(await asyncio.open_connection("127.0.0.1", port))
        for i, (_, writer) in enumerate(conns):
            writer.write(sent[i % len(sent)])
        await asyncio.gather(*(w.drain() for _, w in conns))
        statuses = []
        for reader, writer in conns:
            # A bounded wait: a gateway that never answers fails the test instead of hanging it.
            line = await asyncio.wait_for(reader.readline(), 30)
            statuses.append(int(line.split()[1]))
            writer.close()
        return statuses

    return asyncio.run(main())
