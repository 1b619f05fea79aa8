"""Which edges can ring a registered contact (`Binding.reachable_from`): any edge over UDP or through
a Path; over a connection the phone opened (TCP, TLS, WS, WSS), only the edge that took its REGISTER."""

from __future__ import annotations

import pytest

from callcenter_sip_edge.registrations import Binding


def _binding(transport: str, edge: str, path: tuple[str, ...] = ()) -> Binding:
    return Binding(uri="sip:a1@10.0.0.7:5060", received="203.0.113.9:41234", transport=transport, expiry_ms=0,
                   path=path, edge=edge)


@pytest.mark.parametrize("transport", ["tcp", "tls", "ws", "wss"])
def test_a_connection_is_reachable_only_from_the_edge_holding_it(transport: str) -> None:
    binding = _binding(transport, "edge-1")
    assert binding.reachable_from("edge-1")
    assert not binding.reachable_from("edge-2")


def test_udp_and_path_contacts_are_reachable_from_every_edge() -> None:
    assert _binding("udp", "edge-1").reachable_from("edge-2")
    assert _binding("tcp", "edge-1", path=("<sip:198.51.100.1;lr>",)).reachable_from("edge-2")


def test_a_binding_that_names_no_edge_is_taken_as_reachable() -> None:
    assert _binding("tcp", "").reachable_from("edge-2")
