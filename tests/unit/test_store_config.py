"""The call-handling parameter registry (callcenter.store.config)."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from callcenter.settings import DispatchSettings
from callcenter.store.config import CALL_HANDLING, PARAMS, Param, lua_defaults_table, lua_value, param


def test_names_are_unique_and_looked_up() -> None:
    assert len(PARAMS) == len(CALL_HANDLING) == 22
    assert param("ring_timeout_s").default == 20
    with pytest.raises(KeyError):
        param("no_such_param")


def test_defaults_lie_in_their_ranges() -> None:
    for p in CALL_HANDLING:
        if p.ge is not None:
            assert p.default >= p.ge, p.name
        if p.le is not None:
            assert p.default <= p.le, p.name
        if p.pattern is not None:
            assert re.fullmatch(p.pattern, str(p.default)), p.name
        if p.choices is not None:
            assert p.default in p.choices, p.name


def test_dispatcher_settings_share_the_defaults() -> None:
    """The parameters a dispatcher writes from its environment default to the registry's values."""
    fields = DispatchSettings.model_fields
    env = {p.name for p in CALL_HANDLING if p.dispatcher_env}
    assert env == {name for name in fields if name in PARAMS}
    for name in env:
        assert fields[name].default == param(name).default, name


def test_a_default_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(TypeError):
        Param("x", int, True, "a bool is no int")
    with pytest.raises(TypeError):
        Param("x", bool, 1, "an int is no bool")
    with pytest.raises(TypeError):
        Param("x", str, "a", "bounds on a str", ge=1)


def test_lua_table() -> None:
    table = lua_defaults_table()
    assert table.startswith("local CONFIG_DEFAULTS = {")
    assert "reject_on_no_agents = 1" in table
    assert "chat_dispatch_policy = 'balancing'" in table
    assert table.count(" = ") == len(CALL_HANDLING) + 1
    assert lua_value(False) == "0"
    with pytest.raises(ValueError):
        lua_value("it's")


def test_every_number_has_both_bounds_redis_takes() -> None:
    """No parameter without a range: a stream MAXLEN of 1e30 is an error in every XADD (issue 10)."""
    for p in CALL_HANDLING:
        if p.type is int:
            assert p.ge is not None and p.le is not None, p.name
    for name in ("events_maxlen", "commands_maxlen", "reports_maxlen"):
        assert param(name).le is not None and param(name).le <= 100_000_000


@pytest.mark.parametrize(("name", "value"), [("wrapup_s", 86_401), ("ring_timeout_s", 601),
                                             ("offer_lease_grace_s", 0), ("queue_pos_param", ""),
                                             ("no_agents_code", 700)])
def test_the_environment_cannot_seed_what_patch_refuses(name: str, value: object) -> None:
    """DispatchSettings checks its call-handling fields against the registry's ranges."""
    param(name).check(param(name).default)
    with pytest.raises(ValueError, match=name):
        param(name).check(value)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        DispatchSettings(**{name: value})


def test_check_refuses_the_wrong_type() -> None:
    with pytest.raises(ValueError, match="events_maxlen"):
        param("events_maxlen").check(True)
    with pytest.raises(ValueError, match="chat_dispatch_policy"):
        param("chat_dispatch_policy").check("greedy")
    param("events_maxlen").check(100_000_000)
    with pytest.raises(ValueError, match="events_maxlen"):
        param("events_maxlen").check(100_000_001)
