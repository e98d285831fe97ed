"""The shared core: what the shim may import (standard library and PyYAML only, no I/O library).

protocol (wire messages, handshake, validation), args (Plex's argv, parsed once), policy,
config, cache, miniws (the stdlib WebSocket client), capabilities (what a job needs) and resume
(where a moved job continues). Pure logic: facts in, values out.
"""
