"""`python -m haven.stripe_local --port N`: the local Stripe server as its own process."""

from __future__ import annotations

import argparse
import signal
import threading

from . import LocalStripe


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m haven.stripe_local",
                                     description="A local Stripe-compatible server (test mode).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111, help="0 picks a free port")
    parser.add_argument("--api-key", default="sk_test_haven_local",
                        help="the key to print (any sk_test_... key is accepted)")
    parser.add_argument("--webhook-url", help="register this webhook endpoint at start")
    parser.add_argument("--webhook-secret", default="whsec_haven_local")
    parser.add_argument("--no-seed", action="store_true", help="no dev account nor balance")
    args = parser.parse_args(argv)

    server = LocalStripe(host=args.host, port=args.port, api_key=args.api_key,
                         seed_dev=not args.no_seed, log_level="info").start()
    if args.webhook_url:
        server.control.register_webhook(args.webhook_url, args.webhook_secret)
    print(f"local Stripe server: {server.url}", flush=True)
    print(f"api key:             {server.api_key}", flush=True)
    if args.webhook_url:
        print(f"webhooks:            {args.webhook_url} (secret {args.webhook_secret})",
              flush=True)
    if not args.no_seed:
        print("seeded:              acct_devpayee; balance EUR/USD/GBP 1,000,000.00 each",
              flush=True)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop()


if __name__ == "__main__":
    main()
