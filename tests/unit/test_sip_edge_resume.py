"""A checkpointed dialog keeps its transport: a leg over TCP/TLS goes on over it after a restart.

Runs sippy's UA in memory (no socket): `resume_dialog` builds the Connected UA from a checkpoint,
`dialog_snapshot` reads it back.
"""

from __future__ import annotations

from typing import Any

import pytest

from callcenter_sip_edge.sippy import resume


class _Transactions:
    """The one method of sippy's transaction manager that `resume_dialog` calls."""

    def regConsumer(self, *args: Any, **kwargs: Any) -> None:
        pass


def _snapshot(**over: Any) -> dict[str, Any]:
    snap: dict[str, Any] = {
        "call_id": "abc@127.0.0.1", "local": "<sip:cc@127.0.0.1>;tag=l1", "remote": "<sip:bob@127.0.0.1>;tag=r1",
        "local_cseq": 3, "remote_cseq": 2, "routes": [], "target": "sip:bob@127.0.0.1:5099;transport=tcp",
        "next_hop": ["127.0.0.1", 5099], "transport": "tcp", "contact": "<sip:cc@127.0.0.1:5060>",
        "local_sdp": None, "remote_sdp": None, "peers": []}
    snap.update(over)
    return snap


@pytest.mark.parametrize("transport", ["tcp", "tls", "udp"])
def test_a_resumed_dialog_keeps_its_transport(transport: str) -> None:
    ua = resume.resume_dialog({"_sip_tm": _Transactions()}, _snapshot(transport=transport), lambda *a: None)
    assert ua.rAddr == (("127.0.0.1", 5099), transport)
    again = resume.dialog_snapshot(ua)
    assert (again["next_hop"], again["transport"]) == (["127.0.0.1", 5099], transport)


def test_a_checkpoint_written_before_the_transport_was_kept_resumes_over_udp() -> None:
    snap = _snapshot()
    del snap["transport"]
    ua = resume.resume_dialog({"_sip_tm": _Transactions()}, snap, lambda *a: None)
    assert ua.rAddr == (("127.0.0.1", 5099), "udp")
