"""ClusterPlex for bare metal: spread Plex transcodes across a LAN."""

__version__ = "0.1.0"
