"""Each Lua command script's header block agrees with what the script and its library really do.

The header (see `src/callcenter/store/lua/README.md`) names the key families a script reads and
writes, its ARGV, the RC names it returns, the events it emits, the commands it sends and the
library modules it calls. This test derives the same facts from the Lua source, the script's body
plus every library function it calls (transitively), and compares both ways: nothing missing,
nothing extra. It also checks that each library module's NEEDS line names exactly the modules it
calls and that a Lua local is never used before the module that defines it is loaded.

The source analysis is textual and made for this code base's habits: keys are built only by the
prelude's `K.<name>` and `k_<family>(...)`, or by a local assigned from one (`local akey =
k_agent(id)`); a key is written when it is the key argument of a write command
(`redis.call('HSET', key, ...)`, every argument of DEL), read otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources

import pytest

from callcenter.contract.reports import REPORTS
from callcenter.store.codes import RC
from callcenter.store.keys import FAMILIES, NAMES
from callcenter.store.prelude import prelude
from callcenter.store.scripts import LIB_ORDER, OTHER_SCRIPTS, header_field, report_script, script_libs

SCRIPTS = sorted((*map(report_script, REPORTS), *OTHER_SCRIPTS))
HEADER = ("KEYS", "ARGV", "READS", "WRITES", "RETURNS", "EVENTS", "COMMANDS", "LIB")
WRITE_COMMANDS = {"HSET", "HDEL", "HINCRBY", "SADD", "SREM", "ZADD", "ZREM", "DEL", "EXPIRE", "XADD", "SET", "LPUSH"}
# a key function that is no family of its own: the queue a call waits in
KEY_HELPERS = {"k_queue_of": {"queue", "chat_queue"}}


def _read(path: str) -> str:
    return resources.files("callcenter.store.lua").joinpath(path).read_text()


def _code(source: str) -> str:
    return re.sub(r"--[^\n]*", "", source)


def _families(text: str) -> set[str]:
    """Key families named in a piece of Lua (K.<name>, k_<family>, k_queue_of)."""
    found = {m for m in re.findall(r"\bK\.(\w+)", text)}
    for name in re.findall(r"\bk_\w+", text):
        found |= KEY_HELPERS.get(name, {name[2:]})
    return found


def _call_args(text: str, start: int) -> tuple[str, int]:
    """The text between the parenthesis at `start` and its match, and the index after it."""
    depth, i, quote = 0, start, ""
    while True:
        ch = text[i]
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return text[start + 1:i], i + 1
        i += 1


def _split_top(args: str) -> list[str]:
    out, depth, cur, quote = [], 0, "", ""
    for ch in args:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "({":
            depth += 1
        elif ch in ")}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(cur)
            cur = ""
            continue
        cur += ch
    return [*out, cur]


@dataclass
class Facts:
    reads: set[str] = field(default_factory=set)
    writes: set[str] = field(default_factory=set)
    returns: set[str] = field(default_factory=set)
    events: set[str] = field(default_factory=set)
    commands: set[str] = field(default_factory=set)
    # library functions and constants used (a name followed by `=` is a table field being set)
    calls: set[str] = field(default_factory=set)
    argv: set[int] = field(default_factory=set)
    variadic: bool = False


def analyse(source: str, lib_functions: set[str]) -> Facts:
    """What one piece of Lua (a function or a script body) does by itself."""
    text = _code(source)
    facts = Facts()
    aliases: dict[str, set[str]] = {}
    for m in re.finditer(r"^\s*local (\w+) = ((?:\w+ and )?(?:k_\w+|K\.\w+).*)$", text, re.M):
        aliases[m.group(1)] = _families(m.group(2))
        text = text.replace(m.group(0), "")

    def families(part: str) -> set[str]:
        found = _families(part)
        for name, fams in aliases.items():
            if re.search(rf"(?<![.\w]){name}\b", part):
                found |= fams
        return found

    rest, pos = "", 0
    for m in re.finditer(r"redis\.p?call\(", text):  # pcall: a write whose error the step answers itself
        if m.start() < pos:
            continue
        args, end = _call_args(text, m.end() - 1)
        parts = _split_top(args)
        command = parts[0].strip().strip("'")
        if command in WRITE_COMMANDS:
            keys = parts[1:] if command == "DEL" else parts[1:2]
            for key in keys:
                facts.writes |= families(key)
            others = parts[1:] if command == "DEL" else parts[2:]
            rest += text[pos:m.start()] + " ".join(others) if command != "DEL" else text[pos:m.start()]
        else:
            rest += text[pos:m.start()] + args
        pos = end
    rest += text[pos:]
    facts.reads = families(rest)
    # a key handed to a function of the script itself (e.g. stats_reset's reset(key)) is read and written
    own = set(re.findall(r"local function (\w+)", text)) - lib_functions
    for name in own:
        for m in re.finditer(rf"(?<![.\w]){name}\(", rest):
            facts.writes |= families(_call_args(rest, m.end() - 1)[0])
    facts.returns = set(re.findall(r"\bRC\.(\w+)", text))
    facts.events = set(re.findall(r"\bemit\('([\w.]+)'", text))
    facts.commands = set(re.findall(r"\bcommand\([^,]+,\s*'([\w.]+)'", text))
    facts.calls = {name for name in re.findall(r"(?<![.:\w])(\w+)\b(?!\s*=[^=])", text) if name in lib_functions}
    facts.argv = {int(n) for n in re.findall(r"ARGV\[(\d+)\]", text)}
    facts.variadic = "#ARGV" in text
    return facts


@dataclass
class Library:
    functions: dict[str, str]  # name -> source
    module_of: dict[str, str]  # function name -> module
    order: dict[str, int]  # function name -> position in the concatenated library
    top: dict[str, str]  # module -> its code outside functions
    constants: set[str]  # top-level locals of the modules that are no functions (R, CHAT_SCORE_STEP, ...)


def load_library() -> Library:
    functions: dict[str, str] = {}
    module_of: dict[str, str] = {}
    order: dict[str, int] = {}
    top: dict[str, str] = {}
    for module in LIB_ORDER:
        lines = _read(f"lib/{module}.lua").splitlines()
        outside: list[str] = []
        i = 0
        while i < len(lines):
            m = re.match(r"local function (\w+)", lines[i])
            if not m:
                constant = re.match(r"local (\w+) =", lines[i])
                if constant:
                    module_of[constant.group(1)] = module
                    order[constant.group(1)] = len(order)
                outside.append(lines[i])
                i += 1
                continue
            body = [lines[i]]
            if not lines[i].rstrip().endswith(" end"):
                while lines[i] != "end":
                    i += 1
                    body.append(lines[i])
            functions[m.group(1)] = "\n".join(body)
            module_of[m.group(1)] = module
            order[m.group(1)] = len(order)
            i += 1
        top[module] = "\n".join(outside)
    return Library(functions, module_of, order, top, set(module_of) - set(functions))


LIB = load_library()
NAMES_OF_LIB = set(LIB.module_of) - set(KEY_HELPERS)


def script_facts(name: str) -> tuple[Facts, Facts]:
    """(the body's own facts, the facts of the body and everything it runs)."""
    body = analyse(_read(f"{name}.lua"), NAMES_OF_LIB)
    total = Facts(**{k: set(v) if isinstance(v, set) else v for k, v in body.__dict__.items()})
    parts = [analyse(LIB.top[module], NAMES_OF_LIB) for module in script_libs(name)]
    seen: set[str] = set()
    # the assembly (store.sources) runs `<module>_begin()` of each module the step uses before its body
    todo = set(body.calls) | {f"{module}_begin" for module in script_libs(name) if f"{module}_begin" in LIB.functions}
    while todo:
        fn = todo.pop()
        if fn in seen or fn in LIB.constants:
            continue
        seen.add(fn)
        facts = analyse(LIB.functions[fn], NAMES_OF_LIB)
        todo |= facts.calls
        parts.append(facts)
    for facts in parts:
        total.reads |= facts.reads
        total.writes |= facts.writes
        total.returns |= facts.returns
        total.events |= facts.events
        total.commands |= facts.commands
        total.argv |= facts.argv
    return body, total


def header(name: str) -> dict[str, str]:
    lines = _read(f"{name}.lua").splitlines()
    assert lines[0].startswith(f"-- {name}: "), f"{name}.lua must open with '-- {name}: <what it does>'"
    fields = {}
    for line, key in zip(lines[1:1 + len(HEADER)], HEADER, strict=True):
        assert line.startswith(f"-- {key}: "), f"{name}.lua header line {key!r} expected, got {line!r}"
        fields[key] = line.split(":", 1)[1].strip()
    return fields


def _names(value: str) -> set[str]:
    return set() if value == "-" else {v.strip() for v in value.split(",")}


@pytest.mark.parametrize("name", SCRIPTS)
def test_header_matches_the_script(name: str) -> None:
    fields = header(name)
    body, total = script_facts(name)
    assert _names(fields["READS"]) == total.reads, "READS"
    assert _names(fields["WRITES"]) == total.writes, "WRITES"
    assert set(re.findall(r"\b[A-Z][A-Z_]+\b", fields["RETURNS"])) == total.returns, "RETURNS"
    assert _names(fields["EVENTS"]) == total.events, "EVENTS"
    assert _names(fields["COMMANDS"]) == total.commands, "COMMANDS"
    assert _names(fields["LIB"]) == {LIB.module_of[fn] for fn in body.calls}, "LIB"
    assert header_field(_read(f"{name}.lua"), "LIB") == [m for m in LIB_ORDER if m in _names(fields["LIB"])], \
        "LIB in library order"
    numbers = [int(n) for n in re.findall(r"(?:^|,\s*)(\d+)", fields["ARGV"])]
    assert numbers == list(range(1, len(numbers) + 1)), "ARGV entries numbered 1, 2, ..."
    variadic = re.search(rf"\b{numbers[-1]}\.\.\. ", fields["ARGV"]) is not None
    assert body.variadic == variadic, "ARGV: 'N... name' for a variable number of arguments"
    if variadic:
        assert max(total.argv | {1}) < numbers[-1], "ARGV: the variable part comes last"
    else:
        assert max(total.argv | {1}) == numbers[-1], "ARGV: the last entry is the last one used"


def test_every_key_family_and_rc_name_exists() -> None:
    known = set(NAMES) | set(FAMILIES)
    for name in SCRIPTS:
        _, total = script_facts(name)
        assert total.reads | total.writes <= known, name
        assert total.returns <= set(RC.__members__), name
        for etype in total.events | total.commands:
            assert f'["{etype}"]' in prelude(), f"{name}: {etype} has no version"


@pytest.mark.parametrize("module", LIB_ORDER)
def test_library_needs_are_exact_and_ordered(module: str) -> None:
    source = _read(f"lib/{module}.lua")
    assert source.startswith(f"-- {module}.lua: ")
    used = analyse(LIB.top[module], NAMES_OF_LIB).calls - {n for n, m in LIB.module_of.items() if m == module}
    for fn in LIB.functions:
        if LIB.module_of[fn] != module:
            continue
        calls = analyse(LIB.functions[fn], NAMES_OF_LIB).calls
        for callee in calls - {fn}:  # a local function may call itself
            # a Lua local is visible only after its definition
            assert LIB.order[callee] < LIB.order[fn], f"{fn} calls {callee}, defined after it"
        used |= calls
    needs = header_field(source, "NEEDS")
    assert set(needs) == {LIB.module_of[fn] for fn in used} - {module}
    assert needs == [m for m in LIB_ORDER if m in needs], "NEEDS in library order"


def test_a_drifted_header_is_caught() -> None:
    """The analysis sees an emit, a command, a key write and an RC that a header would have to name."""
    facts = analyse("local akey = k_agent(id)\nredis.call('HSET', akey, 'x', 1)\n"
                    "command(e, 'command.ring', {})\nemit('call.offered', {})\nreturn { RC.STALE }\n", set())
    assert (facts.writes, facts.reads, facts.events, facts.commands, facts.returns) == (
        {"agent"}, set(), {"call.offered"}, {"command.ring"}, {"STALE"})


if __name__ == "__main__":  # print what each header must say (a start for a new script)
    for script in SCRIPTS:
        b, t = script_facts(script)
        print(script, "\n  READS:", ", ".join(sorted(t.reads)), "\n  WRITES:", ", ".join(sorted(t.writes)),
              "\n  RETURNS:", sorted(t.returns), "\n  EVENTS:", ", ".join(sorted(t.events)),
              "\n  COMMANDS:", ", ".join(sorted(t.commands)),
              "\n  LIB:", ", ".join(m for m in LIB_ORDER if m in {LIB.module_of[f] for f in b.calls}),
              "\n  ARGV:", sorted(t.argv), b.variadic)
