"""A representative part of the whole-system suite on a Redis Cluster (3 masters, 3 replicas), in
every run: the first call (welcome, queue, agent, CDR), a few call paths, ring-all, and nothing left
pending or dead. The same tests, taken from their modules, get a `system` whose services reach
Redis by `redis+cluster://`. The whole suite runs on a cluster with `CC_TEST_REDIS=cluster` (or on
Sentinel with `CC_TEST_REDIS=sentinel`).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import test_call_paths as paths
import test_first_call as first
from e2e_harness import nothing_pending_or_dead, whole_system

from callcenter_dev.system import WholeSystem

pytestmark = pytest.mark.slow

# in this order: the first call expects to be the system's first
test_first_call_on_the_cluster = first.test_call_waits_in_queue_then_reaches_the_agent_logged_in_through_the_api
test_caller_hangs_up_while_queued = paths.test_caller_hangs_up_while_queued
test_agents_reject_then_a_third_answers = \
    paths.test_agents_reject_with_486_and_603_the_call_stays_on_queue_media_and_a_third_answers
test_unreachable_agent_fails_and_the_next_agent_answers = paths.test_unreachable_agent_fails_and_the_next_agent_answers
test_ring_all_the_quick_agent_answers_the_slow_one_gets_cancel = \
    paths.test_ring_all_the_quick_agent_answers_the_slow_one_gets_cancel


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WholeSystem]:
    yield from whole_system(tmp_path_factory, "paths", paths.RING_TIMEOUT_S, redis_topology="cluster")


def test_nothing_left_pending_or_dead(system: WholeSystem) -> None:
    nothing_pending_or_dead(system)
