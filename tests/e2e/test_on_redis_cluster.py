"""A representative part of the whole-system suite on a Redis Cluster (3 masters, 3 replicas), in
every run: the first call (queue, agent, CDR), a few call paths, ring-all, and nothing left pending
or dead. The same tests, imported from their modules, get a `system` whose services reach Redis by
`redis+cluster://`. The whole suite runs on a cluster with `CC_TEST_REDIS=cluster` (or on
Sentinel with `CC_TEST_REDIS=sentinel`).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from e2e_harness import nothing_pending_or_dead, whole_system
from test_call_paths import (  # noqa: F401 - collected here again, on the cluster
    RING_TIMEOUT_S,
    test_agents_reject_with_486_and_603_the_call_stays_on_queue_media_and_a_third_answers,
    test_caller_hangs_up_while_queued,
    test_ring_all_the_quick_agent_answers_the_slow_one_gets_cancel,
    test_unreachable_agent_fails_and_the_next_agent_answers,
)
from test_first_call import test_call_waits_in_queue_then_reaches_the_agent_logged_in_through_the_api  # noqa: F401

from callcenter_dev.system import WholeSystem

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WholeSystem]:
    # the call paths' tenant; the first call's test names no tenant of its own
    yield from whole_system(tmp_path_factory, "paths", RING_TIMEOUT_S, redis_topology="cluster")


def test_nothing_left_pending_or_dead(system: WholeSystem) -> None:
    nothing_pending_or_dead(system)
