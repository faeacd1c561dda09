"""moto's server, with one request at a time inside moto.

DynamoDB applies each write to an item atomically, its condition included.
moto checks a condition and then writes, with no lock in between, over plain
dictionaries, while its server runs each connection in a thread of its own:
two writers (two processes, or one that was killed with requests still in
moto, and its restart) can both pass one item's condition. Serialising the
calls into moto gives the emulator DynamoDB's atomicity; connections are
still accepted and read concurrently, and moto is one Python process bound by
its interpreter lock either way.

Usage: python moto_server.py HOST PORT
"""

import os
import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple


def one_at_a_time(app):
    lock = threading.Lock()

    def serve(environ, start_response):
        with lock:
            # The whole answer is made under the lock, not just its start.
            return list(app(environ, start_response))

    return serve


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    os.environ.setdefault("MOTO_PORT", str(port))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(host, port, one_at_a_time(app), threaded=True)


if __name__ == "__main__":
    main()
