"""The docs list what the registry says: the service READMEs' consumed and produced entry types,
and the consumer groups they name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from callcenter.contract import streams
from callcenter.contract.types import TYPES

ROOT = Path(__file__).resolve().parents[2]


def _bullet(readme: str, label: str) -> str:
    """The text of the `- **<label>**` bullet of a service README (up to the next bullet)."""
    text = (ROOT / "services" / readme / "README.md").read_text()
    match = re.search(rf"^- \*\*{label}\*\*(.*?)(?=^- |^#|\Z)", text, re.M | re.S)
    assert match, f"services/{readme}/README.md has no '{label}' bullet"
    return match.group(1)


def _types(text: str, family: str) -> set[str]:
    return set(re.findall(rf"`({family}\.[a-z_]+)`", text))


def _family(family: str) -> set[str]:
    return {n for n in TYPES if n.startswith(f"{family}.")}


@pytest.mark.parametrize(("readme", "label", "family", "stream"), [
    ("dispatcher", "Consumes", "report", streams.REPORTS),
    ("dispatcher", "Produces", "command", streams.COMMANDS),
    ("sip-edge", "Produces", "report", streams.REPORTS),
    ("sip-edge", "Consumes", "command", streams.COMMANDS),
])
def test_a_service_readme_lists_every_type_of_its_stream(readme: str, label: str, family: str,
                                                         stream: streams.Stream) -> None:
    bullet = _bullet(readme, label)
    assert family in stream.families
    assert _types(bullet, family) == _family(family)
    if label == "Consumes":
        assert f"(group `{stream.group}`)" in bullet


@pytest.mark.parametrize("stream", [streams.REPORTS, streams.COMMANDS])
def test_the_event_reference_lists_every_internal_type(stream: streams.Stream) -> None:
    doc = (ROOT / "docs" / "events.md").read_text()
    (family,) = stream.families
    match = re.search(rf"^- `{family}\.\*` on `cc:{{t}}:{re.escape(stream.key)}`(.*?)(?=^- |^#|\Z)", doc, re.M | re.S)
    assert match, f"docs/events.md lists no {family}.* types"
    assert _types(match.group(1), family) == _family(family)
    assert f"group `{stream.group}`" in match.group(1)


def test_the_cdr_writer_readme_names_its_group() -> None:
    text = (ROOT / "services" / "cdr-writer" / "README.md").read_text()
    assert f"Stream `cc:{{t}}:{streams.EVENTS.key}`, consumer group `{streams.EVENTS.group}`" in text
