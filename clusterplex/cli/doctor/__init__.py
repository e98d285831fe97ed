"""clusterplex doctor: finds what keeps transcodes off the workers and says how to fix it.

On the Plex host it checks the shim's dpkg diversion, Plex's transcode directory against the
workers' ``transcode_root``, the orchestrator (a real authenticated handshake), and asks every
connected worker, through the orchestrator, for a probe (media, transcode root, relay, codecs,
uid, clock). On a worker host it checks that worker locally.

``checks`` is pure (facts in, findings out); ``plexhost`` and ``workerhost`` gather the facts,
``ask`` talks to the orchestrator, ``command`` is the subcommand. What a worker answers to a probe,
and the filesystem checks both sides share, are in ``clusterplex.worker.probe``.
"""
