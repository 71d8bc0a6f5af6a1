#!/usr/bin/env python3
"""A real gRPC server and client (grpcio) for the L7 tests (tests/tests/mesh_l7.rs), with no
protoc: generic handlers with raw-bytes messages (no (de)serializers), service meshtest.Echo.

    grpc_peer.py server HOST:PORT NAME   serve until killed; prints "listening" when bound
    grpc_peer.py client HOST:PORT        run every check; exit 0 and print "ok instances=A,B"
                                         (who answered 21 unary calls on one channel), or
                                         exit 1 with what differed on stderr

Methods:
    Unary  echoes its request; initial metadata x-instance: NAME; trailing metadata
           x-echo-trailer: unary
    Bidi   echoes every message as it arrives (the client sends the next only after the echo
           of the previous one: a proxy that buffers a whole stream fails it)
    Fail   aborts with UNAVAILABLE "backend unavailable on purpose" and trailing metadata
           x-fail-reason: on-purpose
"""

import os
import queue
import sys
import time
from concurrent import futures

import grpc

SERVICE = "meshtest.Echo"
FAIL_DETAILS = "backend unavailable on purpose"
DEADLINE = 20.0
# Never through an HTTP proxy from the environment: the test means the mesh.
OPTIONS = [
    ("grpc.enable_http_proxy", 0),
    ("grpc.max_receive_message_length", 8 << 20),
    ("grpc.max_send_message_length", 8 << 20),
]


def serve(addr, name):
    def unary(request, context):
        context.send_initial_metadata((("x-instance", name),))
        context.set_trailing_metadata((("x-echo-trailer", "unary"),))
        return request

    def bidi(request_iterator, context):
        context.send_initial_metadata((("x-instance", name),))
        for message in request_iterator:
            yield message

    def fail(request, context):
        context.set_trailing_metadata((("x-fail-reason", "on-purpose"),))
        context.abort(grpc.StatusCode.UNAVAILABLE, FAIL_DETAILS)

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    if server.add_insecure_port(addr) == 0:
        sys.exit(f"grpc_peer server: cannot bind {addr}")
    server.start()
    print("listening", flush=True)
    server.wait_for_termination()


class Mismatch(Exception):
    pass


def expect(what, got, want):
    if got != want:
        raise Mismatch(f"{what}: got {got!r}, want {want!r}")


def client(addr):
    channel = grpc.insecure_channel(addr, options=OPTIONS)
    grpc.channel_ready_future(channel).result(timeout=DEADLINE)

    unary = channel.unary_unary(f"/{SERVICE}/Unary")
    for payload in (b"hello through the mesh", os.urandom(1 << 20)):
        reply, call = unary.with_call(payload, timeout=DEADLINE)
        expect(f"unary echo of {len(payload)} bytes", reply == payload, True)
        trailers = dict(call.trailing_metadata() or ())
        expect("unary trailing metadata x-echo-trailer", trailers.get("x-echo-trailer"), "unary")
        initial = dict(call.initial_metadata() or ())
        if not initial.get("x-instance"):
            raise Mismatch(f"unary initial metadata has no x-instance: {initial!r}")
    instance = initial["x-instance"]

    # Lockstep: message i+1 goes out only once the echo of message i came back.
    outgoing = queue.Queue()
    count = 50

    def requests():
        while True:
            m = outgoing.get()
            if m is None:
                return
            yield m

    bidi = channel.stream_stream(f"/{SERVICE}/Bidi")
    outgoing.put(b"message-0")
    responses = bidi(requests(), timeout=DEADLINE)
    got = 0
    for reply in responses:
        expect(f"bidi echo {got}", reply, f"message-{got}".encode())
        got += 1
        outgoing.put(f"message-{got}".encode() if got < count else None)
    expect("bidi echoes", got, count)
    expect("bidi status", responses.code(), grpc.StatusCode.OK)

    fail = channel.unary_unary(f"/{SERVICE}/Fail")
    try:
        fail(b"x", timeout=DEADLINE)
        raise Mismatch("Fail succeeded; want status UNAVAILABLE")
    except grpc.RpcError as e:
        expect("Fail status", e.code(), grpc.StatusCode.UNAVAILABLE)
        expect("Fail details", e.details(), FAIL_DETAILS)
        trailers = dict(e.trailing_metadata() or ())
        expect("Fail trailing metadata x-fail-reason", trailers.get("x-fail-reason"), "on-purpose")
    # Every call of one channel (one HTTP/2 connection): which instances answered.
    instances = {instance}
    for i in range(20):
        _, call = unary.with_call(b"which", timeout=DEADLINE)
        instances.add(dict(call.initial_metadata() or ()).get("x-instance", "?"))
    print(f"ok instances={','.join(sorted(instances))}", flush=True)


def main(argv):
    if len(argv) >= 4 and argv[1] == "server":
        serve(argv[2], argv[3])
        return 0
    if len(argv) >= 3 and argv[1] == "client":
        started = time.monotonic()
        try:
            client(argv[2])
        except Mismatch as e:
            print(f"grpc_peer client: {e}", file=sys.stderr)
            return 1
        except grpc.RpcError as e:
            print(f"grpc_peer client: unexpected RPC error {e.code()}: {e.details()}", file=sys.stderr)
            return 1
        except grpc.FutureTimeoutError:
            print(f"grpc_peer client: {argv[2]} not ready after {DEADLINE} s", file=sys.stderr)
            return 1
        print(f"took {time.monotonic() - started:.2f} s", file=sys.stderr)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
