"""The daemons' asyncio exception handler: aiohttp 3.8's failed heartbeat pings are routine."""

import asyncio
import logging

from clusterplex.common import daemon


def test_failed_ping_to_a_vanished_peer_is_one_debug_line(caplog):
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.DEBUG):
            daemon._quiet_closing_pings(loop, {"message": "Task exception was never retrieved",
                                               "exception": ConnectionResetError("Cannot write to closing transport")})
            daemon._quiet_closing_pings(loop, {"message": "Task exception was never retrieved",
                                               "exception": ValueError("a real bug")})
    finally:
        loop.close()
    quiet = [r for r in caplog.records if "closing transport" in r.getMessage()]
    assert [r.levelno for r in quiet] == [logging.DEBUG]
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(loud) == 1 and "Task exception was never retrieved" in loud[0].getMessage()
