"""Process lifecycle shared by the services: signal handlers that only flip a flag."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable


def on_stop_signals(stop: Callable[[], None]) -> None:
    """Call `stop` on SIGTERM or SIGINT; the service then drains and returns from its main loop."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
