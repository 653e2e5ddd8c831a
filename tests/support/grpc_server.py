"""A real gRPC server (grpcio's asyncio server) for the transcoding tests.

The descriptor set is compiled from tests/support/protos/shop.proto with
grpcio-tools at test time; the server's message classes come from it too
(no generated code checked in). `GetItem` answers by the request's id:
  "missing"          NOT_FOUND
  "status-<CODE>"    that gRPC status (e.g. status-PERMISSION_DENIED)
  "slow"             waits 2 s (past a short deadline)
  anything else      the item, with the call's metadata under `metadata`, and a
                     trailing metadata entry x-served-by: grpc-test
`ListItems` streams `count:N` items (one otherwise); `SumItems` (client streaming)
answers the quantities' sum; `EchoItems` (bidirectional) answers each item as it comes.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import threading

PROTO_DIR = os.path.join(os.path.dirname(__file__), "protos")


def compile_descriptors(out_dir: str) -> str:
    """shop.proto -> a FileDescriptorSet file (protoc from grpcio-tools)."""
    out = os.path.join(out_dir, "shop.pb")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}", f"--descriptor_set_out={out}",
                    "--include_imports", "shop.proto"], check=True)
    return out


class GrpcServer:
    def __init__(self, port: int = 0):
        self.bind_port = port
        self.dir = tempfile.mkdtemp(prefix="tollhouse-grpc-")
        self.descriptors = compile_descriptors(self.dir)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = None
        self.calls: list = []

    def _messages(self):
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        pool = descriptor_pool.DescriptorPool()
        with open(self.descriptors, "rb") as f:
            for proto in descriptor_pb2.FileDescriptorSet.FromString(f.read()).file:
                pool.Add(proto)
        return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"shop.{n}"))
                for n in ("GetItemRequest", "Item", "ListRequest")}

    async def _start(self):
        import grpc

        m = self._messages()

        async def get_item(request, context):
            meta = {k: v for k, v in context.invocation_metadata() if not k.startswith(("grpc-", "user-agent"))
                    and not k.startswith(":")}
            self.calls.append((request.id, meta))
            if request.id == "missing":
                await context.abort(grpc.StatusCode.NOT_FOUND, "no item missing")
            if request.id.startswith("status-"):
                code = grpc.StatusCode[request.id[len("status-"):]]
                await context.abort(code, f"told to answer {code.name}")
            if request.id == "slow":
                await asyncio.sleep(2)
            context.set_trailing_metadata((("x-served-by", "grpc-test"),))
            return m["Item"](id=request.id, name=f"item {request.id}", quantity=request.quantity,
                             tags=list(request.tags), metadata=meta, price=9.5, in_stock=True)

        async def put_item(request, context):
            return request

        async def list_items(request, context):
            count = int(request.prefix[6:]) if request.prefix.startswith("count:") else 1
            for i in range(count):
                yield m["Item"](id=f"item-{i}", quantity=i)

        async def sum_items(requests, context):
            total = n = 0
            async for item in requests:
                total += item.quantity
                n += 1
            return m["Item"](id=f"sum of {n}", quantity=total)

        async def echo_items(requests, context):
            async for item in requests:
                yield m["Item"](id=f"echo {item.id}", quantity=item.quantity)

        handler = grpc.method_handlers_generic_handler("shop.Inventory", {
            "GetItem": grpc.unary_unary_rpc_method_handler(get_item, m["GetItemRequest"].FromString,
                                                           m["Item"].SerializeToString),
            "PutItem": grpc.unary_unary_rpc_method_handler(put_item, m["Item"].FromString,
                                                           m["Item"].SerializeToString),
            "ListItems": grpc.unary_stream_rpc_method_handler(list_items, m["ListRequest"].FromString,
                                                              m["Item"].SerializeToString),
            "SumItems": grpc.stream_unary_rpc_method_handler(sum_items, m["Item"].FromString,
                                                             m["Item"].SerializeToString),
            "EchoItems": grpc.stream_stream_rpc_method_handler(echo_items, m["Item"].FromString,
                                                               m["Item"].SerializeToString),
        })
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port(f"127.0.0.1:{self.bind_port}")
        await self.server.start()

    def start(self) -> "GrpcServer":
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
