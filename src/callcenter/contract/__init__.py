"""The contract between the services: what goes on each stream and how it is encoded.

- `types`: the entry-type registry (every type once, versioned; the Lua `EVENT_V` table).
- `codec`: encode/decode of stream entries (raw `data` bytes kept), the typed `Message` base.
- `commands`: one frozen dataclass per `command.*` type (dispatcher/api -> one sip-edge).
- `reports`: one frozen dataclass per `report.*` type (sip-edge -> dispatcher).
- `streams`: the streams, their consumer groups and the type families they carry.
"""
