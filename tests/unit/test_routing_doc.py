"""docs/routing.md lists the call-handling parameters exactly as the registry declares them."""

from __future__ import annotations

from pathlib import Path

from callcenter.store.config import CALL_HANDLING, ConfigValue, Param

ROUTING_MD = Path(__file__).resolve().parents[2] / "docs" / "routing.md"


def _shown(value: ConfigValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"`{value}`" if isinstance(value, str) else str(value)


def _range(p: Param) -> str:
    if p.choices is not None:
        return ", ".join(f"`{choice}`" for choice in p.choices)
    if p.pattern is not None:
        return f"`{p.pattern}`"
    if p.ge is not None and p.le is not None:
        return f"{p.ge}-{p.le}"
    if p.ge is not None:
        return f"≥ {p.ge}"
    return "true, false" if p.type is bool else "any"


def config_table() -> str:
    """The markdown table of the registry, one row per parameter, in the registry's order."""
    rows = ["| parameter | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    rows += [f"| `{p.name}` | {p.type.__name__} | {_shown(p.default)} | {_range(p)} | {p.doc} |"
             for p in CALL_HANDLING]
    return "\n".join(rows)


def test_routing_md_has_the_registrys_table() -> None:
    assert config_table() in ROUTING_MD.read_text(), "regenerate: print(tests.unit.test_routing_doc.config_table())"
