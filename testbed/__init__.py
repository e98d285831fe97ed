"""The harness that tests/, bench/ and the demo share (not part of the product, never packaged).

cluster      real daemons on loopback (fake PMS, relay, orchestrator, workers, shims)
netns        a LAN of network namespaces on one bridge; netcluster: a cluster across it
nspawn       booted Debian 12 containers (systemd-nspawn) for the package and Ansible tests
fixtures     the captured Plex argv (tests/data/plex-argv): load, instantiate, edit; test media

The fakes of Plex stay in tests/fakes/; the harness runs them as scripts, by path.
"""
