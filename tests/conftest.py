"""Fixtures shared by the test modules: network namespaces for the multi-host tests.

The harness itself (clusters, namespaces, containers, the Plex argv fixtures) is in testbed/.
"""

import pytest

from testbed import netns


@pytest.fixture(scope="module")
def need_netns():
    """Fails (never a silent skip: the suite runs as root) where network namespaces cannot be made."""
    why = netns.available()
    if why:
        pytest.fail(why)


@pytest.fixture
def lan(need_netns):
    """A fresh LAN of network namespaces on one bridge, torn down after the test."""
    with netns.Lan() as lan:
        yield lan
