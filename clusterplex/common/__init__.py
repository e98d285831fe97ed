"""Plumbing the daemons share: daemon (command line, logging, sd_notify, signals), link
(authenticated WebSocket peers), discovery (mDNS), token (join tokens, the secret file) and
metrics basics. Never imported by the shim.
"""
