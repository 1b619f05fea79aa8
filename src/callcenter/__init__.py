"""callcenter: an inbound call center (ACD) that runs on many machines at once.

The shared core lives here: settings, the event contract and its msgpack codec, the Redis stream
producer and consumer, Redis keys and the atomic Lua scripts with typed wrappers, and the SQL models.
The four services (sip-edge, dispatcher, cdr-writer, api) import this package, never one another.
"""

__version__ = "0.1.0"
