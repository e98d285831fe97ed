"""What the orchestrator's web page and ``/api/v1/events`` show, besides its tables.

``Recent``: a bounded list of recent failures, refusals and runs that fell
back to Plex's own transcoder, with their reasons (pure: events and the
time in). ``Hub``: fans live snapshots out to Server-Sent-Events clients,
each with a small bounded queue: a slow client loses old snapshots (the
next one is complete anyway), never makes the orchestrator wait or grow.
"""

import asyncio
import collections

# Kinds of entries in the recent list.
NO_WORKER = "no_worker"            # no worker could take the job
REMOTE_FAILED = "remote_failed"    # it ran on a worker and failed (exit code, worker lost)
REFUSED = "refused"                # a worker would not start it (another one was tried)
FELL_BACK_LOCAL = "fell_back_local"  # the shim ran Plex's own transcoder instead
RESUMED = "resumed"                # its worker was lost; it continues from the last segment elsewhere
KINDS = (NO_WORKER, REMOTE_FAILED, REFUSED, FELL_BACK_LOCAL, RESUMED)

MAX_REASON = 500
CLIENT_QUEUE = 4                   # snapshots waiting per client before the oldest is dropped


class Recent:
    """The last ``size`` notable events, oldest first."""

    def __init__(self, size=100):
        self._items = collections.deque(maxlen=size)
        self._seq = 0

    def add(self, kind, job, reason, wall_time):
        """Record ``kind`` for ``job`` (a ``jobs.Job``) at ``wall_time`` (seconds since the epoch)."""
        assert kind in KINDS, kind
        self._seq += 1
        self._items.append({
            "seq": self._seq,
            "time": round(wall_time, 3),
            "kind": kind,
            "job": job.id,
            "session": job.session,
            "worker": job.worker_name or (job.tried[-1][0] if job.tried else ""),
            "reason": str(reason)[:MAX_REASON],
        })

    def items(self):
        return list(self._items)

    def __len__(self):
        return len(self._items)


class Client:
    """One SSE listener: a bounded queue of encoded events."""

    def __init__(self, size=CLIENT_QUEUE):
        self.queue = asyncio.Queue(maxsize=size)
        self.dropped = 0

    def offer(self, item):
        while True:
            try:
                self.queue.put_nowait(item)
                return
            except asyncio.QueueFull:
                self.queue.get_nowait()      # drop the oldest: the newest snapshot is complete
                self.dropped += 1


class Hub:
    """Clients come and go; ``publish`` never blocks. ``close`` ends every stream (``None``)."""

    def __init__(self):
        self.clients = set()
        self.closed = False

    def join(self):
        client = Client()
        if self.closed:
            client.offer(None)
        self.clients.add(client)
        return client

    def leave(self, client):
        self.clients.discard(client)

    def publish(self, item):
        for client in self.clients:
            client.offer(item)

    def close(self):
        self.closed = True
        for client in self.clients:
            client.offer(None)


def sse(event, data):
    """One Server-Sent Event (``data`` is a JSON text without newlines)."""
    return f"event: {event}\ndata: {data}\n\n".encode()
