"""The Lua sources of the steps, assembled by rule: one Redis Function library, or one script.

Every step is a file of `callcenter/store/lua/` (header checked by tests/unit/test_lua_headers.py)
and uses modules of `lua/lib/` (its `-- LIB:` line, with what they name in their `-- NEEDS:`
lines, in `LIB_ORDER`). Nothing else is expanded.

- `library()` (what the Store runs, issue 15): one Redis Functions library holding the generated
  library prelude (`store.prelude.library_prelude`), every module of `lua/lib/` and every step as a
  registered function. Module code runs once, at FUNCTION LOAD; each function's entry sets the
  per-call state (KEYS, ARGV, the tenant prefix P, NOW, the tenant's key table K) into
  library-level locals, then runs the `<module>_begin()` of each module the step uses (config:
  forget the config read by the last call; report: read the report R). Library and functions are
  named by a hash of the source (`cc_<sha12>`, `cc_<sha12>_<step>`), so two versions run side by
  side during a rolling upgrade. No function declares `allow-cross-slot-keys`: on Redis Cluster,
  Redis refuses a step touching a key outside the slot of its declared key (the tenant's events
  stream), which makes "every key in the tenant's slot" Redis' own check.
- `APPENDED_REPORTS`: the report steps the library also registers as `cc_<sha12>_appended_<step>`,
  which first append the report to the reports stream (XADD) and then apply it: the sip-edge runs
  them in the transaction that reports a call's end, so its agent is free for the next call at once.
- `load_source(name)`: the same step as one standalone EVAL script (prelude, its modules, the begin
  calls, the body): for tests and for `bench/lua_step_costs.py`, which compares both ways.
"""

from __future__ import annotations

import hashlib
import re
from functools import cache
from importlib import resources
from typing import NamedTuple

from callcenter.contract.reports import REPORTS
from callcenter.store.prelude import library_prelude, prelude


def report_script(report_type: str) -> str:
    """The script that applies a report type, by rule: `report.call_arrived` -> `report_call_arrived`."""
    return report_type.replace(".", "_")


OTHER_SCRIPTS = (
    "agent_login", "agent_logout", "agent_upsert", "agent_delete", "agent_pause", "agent_unpause",
    "agent_release", "dispatch_call", "flow_upsert", "flow_delete", "fire_timers", "reconcile", "stats_reset",
    "edge_lost", "edge_beat", "edge_release", "sip_register", "registration_lapse",
)


# Report steps the sip-edge may run itself, in the transaction that reports them (`library()`'s
# `appended` functions): the end of a call frees its agent, whose next call is then rung one hop
# sooner (issue 15: agent BYE -> next INVITE). The dispatcher still reads the report and finds it
# DUPLICATE, or applies it when the edge's try came OUT_OF_ORDER.
APPENDED_REPORTS = ("report.call_ended",)


def step_names() -> tuple[str, ...]:
    """Every step: one per report type, then the others."""
    return (*map(report_script, REPORTS), *OTHER_SCRIPTS)


# the modules of lua/lib/ in the order they are concatenated: each uses only functions of the
# modules before it (Lua locals must be defined before they are referenced)
LIB_ORDER = ("config", "core", "stats", "chat", "agents", "queue", "offer", "calls", "report")


def header_field(source: str, field: str) -> list[str]:
    """The comma-separated names of a `-- FIELD: a, b` header line (empty when absent or `-`)."""
    for line in source.splitlines():
        if line.startswith(f"-- {field}:"):
            value = line.split(":", 1)[1].strip()
            return [] if value in ("", "-") else [name.strip() for name in value.split(",")]
    return []


def _lua_file(path: str) -> str:
    return resources.files("callcenter.store.lua").joinpath(path).read_text()


def script_libs(name: str) -> list[str]:
    """The library modules a script loads: those its LIB line names and what they need, in LIB_ORDER."""
    wanted: set[str] = set()
    todo = header_field(_lua_file(f"{name}.lua"), "LIB")
    while todo:
        module = todo.pop()
        if module not in LIB_ORDER:
            raise ValueError(f"{name}.lua: unknown library module {module!r}")
        if module not in wanted:
            wanted.add(module)
            todo += header_field(_lua_file(f"lib/{module}.lua"), "NEEDS")
    return [module for module in LIB_ORDER if module in wanted]


def _begins(libs: list[str]) -> str:
    """The per-call start of the modules a step uses: `local function <module>_begin()` of a
    module runs before the step's body; a begin that returns a value ends the step with it."""
    lines = []
    for module in libs:
        if re.search(rf"^local function {module}_begin\(", _lua_file(f"lib/{module}.lua"), re.M):
            lines.append(f"do local stop = {module}_begin() if stop then return stop end end")
    return "\n".join(lines)


def _body(name: str, libs: list[str]) -> str:
    """The step's body as `local function step()`, and the call that runs it. The body of a report
    step runs inside `run_report_step` (lib/report.lua), which catches a Lua error after its first
    write and marks the report failed on its call (Redis has no rollback)."""
    run = "run_report_step(step)" if "report" in libs else "step()"
    return f"local function step()\n{_lua_file(f'{name}.lua')}\nend\n{_begins(libs)}\nreturn {run}\n"


def load_source(name: str) -> str:
    """The full source of one step as a standalone script: prelude, the library modules it needs,
    their begin calls, the step."""
    libs = script_libs(name)
    return "\n".join([prelude(), *(_lua_file(f"lib/{module}.lua") for module in libs), _body(name, libs)])


class Library(NamedTuple):
    """The function library: its name, the FUNCTION LOAD source, the function of each step, and
    the function that appends a report of `APPENDED_REPORTS` and applies it, by report type."""

    name: str
    source: str
    functions: dict[str, str]
    appended: dict[str, str]


_NAME = "__CC_LIBRARY__"


@cache
def library() -> Library:
    """Every module once, then every step registered as `<library>_<step>` (see the module doc)."""
    parts = [library_prelude(), *(_lua_file(f"lib/{module}.lua") for module in LIB_ORDER)]
    for name in step_names():
        parts.append(_function(name, name, _body(name, script_libs(name))))
    for report_type in APPENDED_REPORTS:
        name = report_script(report_type)
        parts.append(_function(name, f"appended_{name}", _APPEND + _body(name, script_libs(name))))
    template = "\n".join(parts) + "\n"
    lib = "cc_" + hashlib.sha1(template.encode()).hexdigest()[:12]
    source = f"#!lua name={lib}\n" + template.replace(_NAME, lib)
    return Library(lib, source, {name: f"{lib}_{name}" for name in step_names()},
                   {t: f"{lib}_appended_{report_script(t)}" for t in APPENDED_REPORTS})


# The head of an `appended_<step>`: ARGV 1 now_ms, 2 type, 3 v, 4 data (a report's stream fields).
# The report is appended to the reports stream first, as the edge would append it, then the step
# runs on it as the dispatcher would run it (ARGV now_ms, its entry id, data): whatever the step
# answers, the report is on the stream for the dispatcher.
_APPEND = """\
ARGV = { ARGV[1], redis.call('XADD', K.reports, '*', 'type', ARGV[2], 'v', ARGV[3], 'data', ARGV[4]), ARGV[4] }
"""


def _function(step: str, name: str, body: str) -> str:
    """One registered function `<library>_<name>` running `body` (a step's) after `enter`."""
    return (f"do\n  -- {step}.lua\n"
            f"  redis.register_function{{ function_name = '{_NAME}_{name}', callback = function(keys, args)\n"
            f"do local stop = enter(keys, args) if stop then return stop end end\n{body}"
            "end }\nend")
