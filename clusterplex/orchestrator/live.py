"""The web page's live streams: fans snapshots out to Server-Sent-Events clients.

Each client has a small bounded queue: a slow client loses old snapshots (the
next one is complete anyway), never makes the orchestrator wait or grow.
"""

import asyncio

CLIENT_QUEUE = 4                   # snapshots waiting per client before the oldest is dropped


class Client:
    """One SSE listener: a bounded queue of encoded events."""

    def __init__(self, peer="", size=CLIENT_QUEUE):
        self.peer = peer
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

    def join(self, peer=""):
        client = Client(peer)
        if self.closed:
            client.offer(None)
        self.clients.add(client)
        return client

    def count(self, peer):
        """How many streams ``peer`` has open."""
        return sum(1 for c in self.clients if c.peer == peer)

    def leave(self, client):
        self.clients.discard(client)

    def publish(self, item):
        for client in self.clients:
            client.offer(item)

    def close(self):
        self.closed = True
        for client in self.clients:
            client.offer(None)
