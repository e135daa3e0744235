"""``medfoundationseg serve``: the engine process the Slicer modules talk to (locally, or on a GPU machine)."""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import threading

TOKEN_ENV = "MEDFOUNDATIONSEG_ENGINE_TOKEN"
READY_PREFIX = "MEDFOUNDATIONSEG-ENGINE-READY "


def register(subparsers) -> None:
    parser = subparsers.add_parser("serve", help="run the engine process (models and slice embeddings kept warm)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8765, help="port (0: any free port, printed when ready)")
    parser.add_argument("--token", help=f"secret clients must send (default: ${TOKEN_ENV}; required off loopback)")
    parser.add_argument("--certfile", help="TLS certificate (PEM): serve HTTPS")
    parser.add_argument("--keyfile", help="TLS private key (PEM), if not inside --certfile")
    parser.add_argument("--max-upload-mb", type=int, default=4096, help="largest request body accepted")
    parser.add_argument("--volume-budget-mb", type=int, default=8192, help="memory for uploaded volumes")
    parser.add_argument("--exit-with-stdin", action="store_true",
                        help="stop when standard input closes (how a Slicer session ends its local engine)")
    parser.set_defaults(func=run)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args) -> int:
    from MedFoundationSegLib.server.app import Engine, make_server

    token = args.token or os.environ.get(TOKEN_ENV) or None
    if not is_loopback(args.host) and not token:
        print(f"refusing to serve on {args.host} without a token: pass --token (or set {TOKEN_ENV}); generate one "
              f"with: python -c \"import secrets; print(secrets.token_urlsafe(32))\"", file=sys.stderr)
        return 2
    if args.keyfile and not args.certfile:
        print("--keyfile needs --certfile", file=sys.stderr)
        return 2
    engine = Engine(token=token, max_body_bytes=args.max_upload_mb * 2 ** 20,
                    volume_budget_bytes=args.volume_budget_mb * 2 ** 20)
    server = make_server(args.host, args.port, engine, certfile=args.certfile, keyfile=args.keyfile)
    port = server.server_address[1]
    if args.exit_with_stdin:
        threading.Thread(target=_exit_when_stdin_closes, args=(server,), daemon=True).start()
    scheme = "https" if args.certfile else "http"
    print(READY_PREFIX + json.dumps({"url": f"{scheme}://{args.host}:{port}", "port": port, "pid": os.getpid(),
                                     "token_required": bool(token)}), flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _exit_when_stdin_closes(server) -> None:
    try:
        while sys.stdin.buffer.read(1024):
            pass
    finally:
        server.shutdown()

