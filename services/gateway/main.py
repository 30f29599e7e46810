"""`gongji gateway`: serve the national interface over HTTP (uvicorn) in front of the bureau."""
from __future__ import annotations

import argparse
import os

from services.shared.entry import DEFAULT_AMQP_URL


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--amqp-url", default=os.environ.get("AMQP_URL", DEFAULT_AMQP_URL),
                   help="RabbitMQ URL (env AMQP_URL; default %(default)s)")
    p.add_argument("--namespace", default=os.environ.get("GONGJI_NAMESPACE", "gongji"),
                   help="the workers' namespace (env GONGJI_NAMESPACE)")
    p.add_argument("--host", default=os.environ.get("GONGJI_GATEWAY_HOST", "127.0.0.1"),
                   help="address to listen on (default %(default)s; 0.0.0.0 in a container)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GONGJI_GATEWAY_PORT", "8080")),
                   help="port (0: any free one; the chosen port is printed)")
    p.add_argument("--reply-timeout", type=float, default=30.0,
                   help="seconds to wait for the bureau before answering E_TIMEOUT (the client then sends 2601)")
    p.add_argument("--compensate-grace", type=float, default=60.0,
                   help="seconds after a timed-out settle before a missing 2601 is reported as a finding")
    p.add_argument("--instance", default=os.environ.get("GONGJI_GATEWAY_INSTANCE", "1"),
                   help="names this gateway's reply queue; give each replica its own")
    p.add_argument("--no-admin", action="store_true",
                   help="refuse gongji's G-codes (loading facilities, people, accounts) even from gongji-admin")


def main(args: argparse.Namespace) -> int:
    import asyncio
    import socket

    import uvicorn

    from services.shared.logging import configure

    from .app import Settings, create_app
    configure("gateway")
    settings = Settings(amqp_url=args.amqp_url, namespace=args.namespace, reply_timeout_s=args.reply_timeout,
                        compensate_grace_s=args.compensate_grace, instance=args.instance, admin=not args.no_admin)
    # Bind the socket ourselves so that --port 0 can say which port it got before uvicorn starts serving.
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    print(f"gongji gateway listening on http://{args.host}:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(create_app(settings), log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started:  # the broker link is up and the socket accepts connections
            print(f"gongji gateway ready (namespace {args.namespace})", flush=True)
        await task

    asyncio.run(serve())
    return 0
