r"""`callcenter`: operate a call center from the shell, over the HTTP api only.

\b
    callcenter agent login 1008            callcenter flow list
    callcenter agent pause --reason lunch  callcenter queue show tech_support
    callcenter events tail --type call.*   callcenter cdr list --since 2026-01-01 --flow sales

The api's URL comes from CC_API_URL (default http://127.0.0.1:8080), the key from CC_API_KEY, the
agent of `agent` commands without an id from CC_AGENT_ID; each can also be set in
~/.config/callcenter/config.toml (`url = ...`, `key = ...`, `agent_id = ...`). Tables for people;
`--json` (before the command) prints the api's JSON for scripts. Exit status 1: the api refused.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from callcenter_cli.client import Api, ApiError, Config

Columns = Sequence[tuple[str, str]]


class Context:
    """What every command shares: the api client and the output format."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self._api: Api | None = None
        self.config = Config.load()

    @property
    def api(self) -> Api:
        if self._api is None:
            self._api = Api(self.config)
        return self._api

    def agent(self, agent_id: str | None) -> str:
        chosen = agent_id or self.config.agent_id
        if not chosen:
            raise click.UsageError("which agent? give its id, or set CC_AGENT_ID / agent_id in the config file")
        return chosen


pass_ctx = click.make_pass_decorator(Context)


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def show(ctx: Context, data: Any, columns: Columns | None = None) -> None:
    """JSON for scripts; for people a table (a list) or key: value lines (an object)."""
    if ctx.as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    if isinstance(data, list):
        cols = columns or [(k, k) for k in (data[0].keys() if data else [])]
        rows = [[h.upper() for h, _ in cols]] + [[cell(row.get(k)) for _, k in cols] for row in data]
        widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
        for r in rows:
            click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    elif isinstance(data, dict):
        width = max((len(k) for k in data), default=0)
        for k, v in data.items():
            click.echo(f"{k.ljust(width)}  {json.dumps(v, default=str) if isinstance(v, dict | list) else cell(v)}")
    elif data is not None:
        click.echo(cell(data))


def run(ctx: Context, method: str, path: str, *, columns: Columns | None = None,
        pick: Callable[[Any], Any] | None = None, **kwargs: Any) -> None:
    data = ctx.api.call(method, path, **kwargs)
    show(ctx, pick(data) if pick and not ctx.as_json else data, columns)


def run_list(ctx: Context, path: str, *, columns: Columns | None = None, params: dict[str, Any] | None = None,
             most: int | None = None) -> None:
    """A paged list of the api, every page (at most `most` items), shown as one list."""
    show(ctx, ctx.api.items(path, params=params, most=most), columns)


def parse_sets(pairs: Sequence[str]) -> dict[str, Any]:
    """KEY=VALUE pairs; a value is read as JSON when it parses (numbers, true, null, lists), else text."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r}: expected KEY=VALUE", param_hint="--set")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


@click.group(help=__doc__)
@click.option("--json", "as_json", is_flag=True, help="print the api's JSON (for scripts)")
@click.pass_context
def cli(click_ctx: click.Context, as_json: bool) -> None:
    click_ctx.obj = Context(as_json)


# -- agents ---------------------------------------------------------------------------------------
@cli.group()
def agent() -> None:
    """Agents: login, logout, pause, unpause, release, list, show, create, delete."""


AGENT_COLUMNS = [("id", "id"), ("state", "state"), ("skills", "skills"), ("uri", "uri")]


@agent.command("list")
@pass_ctx
def agent_list(ctx: Context) -> None:
    """Every agent with its state."""
    run_list(ctx, "/v1/agents", columns=AGENT_COLUMNS)


@agent.command("show")
@click.argument("agent_id", required=False)
@pass_ctx
def agent_show(ctx: Context, agent_id: str | None) -> None:
    """One agent with its live state."""
    run(ctx, "GET", f"/v1/agents/{ctx.agent(agent_id)}")


@agent.command("create")
@click.argument("agent_id")
@click.option("--uri", help="the agent's SIP URI (audio)")
@click.option("--skill", "skills", multiple=True, required=True, help="a skill (repeat for more)")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="another field (chat_uri, wrapup_s, ...)")
@pass_ctx
def agent_create(ctx: Context, agent_id: str, uri: str | None, skills: tuple[str, ...], sets: tuple[str, ...]) -> None:
    """Create or replace an agent (admin)."""
    body = {"uri": uri, "skills": list(skills), **parse_sets(sets)}
    run(ctx, "PUT", f"/v1/agents/{agent_id}", json_body=body)


@agent.command("delete")
@click.argument("agent_id")
@pass_ctx
def agent_delete(ctx: Context, agent_id: str) -> None:
    """Delete an agent that is logged out (admin)."""
    ctx.api.call("DELETE", f"/v1/agents/{agent_id}")
    show(ctx, {"deleted": agent_id})


def _agent_action(action: str, doc: str) -> None:
    @agent.command(action, help=doc)
    @click.argument("agent_id", required=False)
    @pass_ctx
    def command(ctx: Context, agent_id: str | None) -> None:
        run(ctx, "POST", f"/v1/agents/{ctx.agent(agent_id)}/{action}")


_agent_action("login", "Log an agent in (it may get a waiting call at once).")
_agent_action("logout", "Log an agent out (after its call, if it is in one).")
_agent_action("unpause", "End an agent's pause.")
_agent_action("release", "Free an agent by force: its call is hung up (supervisor, admin).")


@agent.command("pause")
@click.argument("agent_id", required=False)
@click.option("--reason", required=True, help="the reason code, e.g. lunch")
@pass_ctx
def agent_pause(ctx: Context, agent_id: str | None, reason: str) -> None:
    """Pause an agent with a reason (after its call, if it is in one)."""
    run(ctx, "POST", f"/v1/agents/{ctx.agent(agent_id)}/pause", json_body={"reason": reason})


# -- flows ----------------------------------------------------------------------------------------
@cli.group()
def flow() -> None:
    """Flows (queues): list, show, create, update, delete."""


@flow.command("list")
@pass_ctx
def flow_list(ctx: Context) -> None:
    """Every flow."""
    run_list(ctx, "/v1/flows", columns=[("id", "id"), ("skill", "skill"), ("priority", "priority"),
                                          ("strategy", "strategy"), ("queue_uri", "queue_uri")])


@flow.command("show")
@click.argument("flow_id")
@pass_ctx
def flow_show(ctx: Context, flow_id: str) -> None:
    """One flow."""
    run(ctx, "GET", f"/v1/flows/{flow_id}")


@flow.command("create")
@click.argument("flow_id")
@click.option("--skill", required=True, help="the skill an agent needs to take its calls")
@click.option("--queue-uri", required=True, help="media played while waiting")
@click.option("--welcome-uri", help="media played first")
@click.option("--priority", type=int, help="0 is served first")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="another field (strategy, max_wait_s, ...)")
@pass_ctx
def flow_create(ctx: Context, flow_id: str, skill: str, queue_uri: str, welcome_uri: str | None,
                priority: int | None, sets: tuple[str, ...]) -> None:
    """Create or replace a flow (admin)."""
    body = {"skill": skill, "queue_uri": queue_uri, "welcome_uri": welcome_uri, "priority": priority,
            **parse_sets(sets)}
    run(ctx, "PUT", f"/v1/flows/{flow_id}", json_body={k: v for k, v in body.items() if v is not None})


@flow.command("update")
@click.argument("flow_id")
@click.option("--set", "sets", multiple=True, required=True, metavar="KEY=VALUE", help="a field to change")
@pass_ctx
def flow_update(ctx: Context, flow_id: str, sets: tuple[str, ...]) -> None:
    """Change some fields of a flow, keeping the others (admin)."""
    current = ctx.api.call("GET", f"/v1/flows/{flow_id}")
    body = {k: v for k, v in current.items() if k not in ("id", "created_at", "updated_at")}
    run(ctx, "PUT", f"/v1/flows/{flow_id}", json_body={**body, **parse_sets(sets)})


@flow.command("delete")
@click.argument("flow_id")
@pass_ctx
def flow_delete(ctx: Context, flow_id: str) -> None:
    """Delete a flow with no waiting calls (admin)."""
    ctx.api.call("DELETE", f"/v1/flows/{flow_id}")
    show(ctx, {"deleted": flow_id})


# -- live -----------------------------------------------------------------------------------------
@cli.group()
def queue() -> None:
    """Queues: the waiting calls of each flow."""


@queue.command("show")
@click.argument("flow_id", required=False)
@pass_ctx
def queue_show(ctx: Context, flow_id: str | None) -> None:
    """Every flow's queue, or one flow's."""
    queues = ctx.api.call("GET", "/v1/queues")
    if flow_id is not None:
        queues = [q for q in queues if q.get("flow_id") == flow_id]
        if not queues:
            raise ApiError(f"no flow {flow_id!r}")
    show(ctx, queues)


@cli.command()
@pass_ctx
def calls(ctx: Context) -> None:
    """Calls not yet ended."""
    run_list(ctx, "/v1/calls", columns=[("call_id", "call_id"), ("flow", "flow"), ("state", "state"),
                                          ("agent", "agent_id"), ("caller", "caller")])


@cli.command()
@pass_ctx
def stats(ctx: Context) -> None:
    """Counters and live figures."""
    run(ctx, "GET", "/v1/stats")


@cli.group()
def cdr() -> None:
    """Call detail records."""


CDR_COLUMNS = [("call_id", "call_id"), ("attempt", "attempt"), ("flow", "flow_id"), ("agent", "agent_id"),
               ("outcome", "outcome"), ("reason", "reason"), ("received_at", "received_at"), ("wait_ms", "wait_ms"),
               ("pickup_ms", "pickup_ms"), ("talk_ms", "talk_ms")]
CDR_PAGE = 200  # rows per request
CDR_OUTCOMES = ["answered", "abandoned", "rejected", "failed", "dissuaded", "overflowed", "not_connected"]


@cdr.command("list")
@click.option("--since", help="received at or after (ISO 8601; no zone = UTC)")
@click.option("--until", help="received before (ISO 8601; no zone = UTC)")
@click.option("--flow", "flow_id")
@click.option("--agent", "agent_id")
@click.option("--kind", type=click.Choice(["final", "attempt", "all"]), default="all", show_default=True,
              help="final: one row per call; attempt: each agent attempt that did not connect (call_type -2)")
@click.option("--outcome", type=click.Choice(CDR_OUTCOMES))
@click.option("--media", "media_type", type=click.Choice(["audio", "chat"]))
@click.option("--call", "call_id", help="every row of one call")
@click.option("--order", type=click.Choice(["desc", "asc"]), default="desc", show_default=True,
              help="by arrival time")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True,
              help="rows in all (fetched page by page)")
@pass_ctx
def cdr_list(ctx: Context, since: str | None, until: str | None, flow_id: str | None, agent_id: str | None,
             kind: str, outcome: str | None, media_type: str | None, call_id: str | None, order: str,
             limit: int) -> None:
    """CDRs with the api's filters, the newest first: final rows and attempt rows (attempt 1, 2, ...;
    pickup_ms is an attempt's ring time)."""
    params = {"since": since, "until": until, "flow_id": flow_id, "agent_id": agent_id,
              "kind": None if kind == "all" else kind, "outcome": outcome, "media_type": media_type,
              "call_id": call_id, "order": order, "limit": min(limit, CDR_PAGE)}
    run_list(ctx, "/v1/cdrs", columns=CDR_COLUMNS, params=params, most=limit)


@cli.group()
def events() -> None:
    """The live event feed."""


@events.command("tail")
@click.option("--type", "types", multiple=True, help="an event type, or a prefix like call.* (repeat for more)")
@click.option("--count", type=int, default=None, help="stop after this many events")
@click.option("--since-id", default=None, help="resume after this event id (Last-Event-ID)")
@pass_ctx
def events_tail(ctx: Context, types: tuple[str, ...], count: int | None, since_id: str | None) -> None:
    """Print events as they happen (one line each; --json: one JSON object per line)."""
    seen = 0
    for ev in ctx.api.events(list(types), since_id):
        if ctx.as_json:
            click.echo(json.dumps({"id": ev.get("id"), "type": ev.get("event"), "data": json.loads(ev["data"])}))
        else:
            click.echo(f"{ev.get('id', '-')}  {ev.get('event', 'message'):24}  {ev['data']}")
        if ev.get("event") == "dropped":
            raise ApiError("the feed dropped this client as too slow; resume with --since-id")
        seen += 1
        if count is not None and seen >= count:
            return


# -- keys and dead letters ------------------------------------------------------------------------
@cli.group()
def key() -> None:
    """API keys (admin): create, list, revoke."""


@key.command("create")
@click.option("--name", required=True)
@click.option("--role", type=click.Choice(["admin", "supervisor", "agent"]), required=True)
@click.option("--agent-id", help="the agent an agent key acts for")
@pass_ctx
def key_create(ctx: Context, name: str, role: str, agent_id: str | None) -> None:
    """Create a key; it is printed this once."""
    run(ctx, "POST", "/v1/keys", json_body={"name": name, "role": role, "agent_id": agent_id})


@key.command("list")
@pass_ctx
def key_list(ctx: Context) -> None:
    """Every key (never a secret)."""
    run_list(ctx, "/v1/keys", columns=[("id", "id"), ("name", "name"), ("role", "role"), ("agent", "agent_id"),
                                         ("last_used_at", "last_used_at"), ("revoked_at", "revoked_at")])


@key.command("revoke")
@click.argument("key_id")
@pass_ctx
def key_revoke(ctx: Context, key_id: str) -> None:
    """Revoke a key (and the tokens minted from it)."""
    run(ctx, "DELETE", f"/v1/keys/{key_id}")


@cli.group("dead-letters")
def dead_letters() -> None:
    """Entries the consumers could not handle (admin): list, replay."""


@dead_letters.command("list")
@click.option("--limit", type=int, default=100, show_default=True)
@pass_ctx
def dead_list(ctx: Context, limit: int) -> None:
    """The newest first."""
    run_list(ctx, "/v1/dead-letters", params={"limit": min(limit, 1000)}, most=limit,
             columns=[("id", "id"), ("stream", "stream"), ("type", "type"), ("error", "error")])


@dead_letters.command("replay")
@click.argument("dead_id")
@pass_ctx
def dead_replay(ctx: Context, dead_id: str) -> None:
    """Put the entry back on its stream and remove the dead letter."""
    run(ctx, "POST", f"/v1/dead-letters/{dead_id}/replay")


def main(argv: Sequence[str] | None = None) -> None:
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="callcenter", standalone_mode=False)
    except ApiError as exc:
        click.echo(f"callcenter: {exc}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
