"""The contract between the services: entry types, their codec, typed reports and commands.

- `codec`: the typed base class every report and command shares (encode/decode go through it).
- `commands`: one frozen dataclass per `command.*` type (dispatcher/api -> one sip-edge).
- `reports`: one frozen dataclass per `report.*` type (sip-edge -> dispatcher).
"""
