"""dispatcher: the call center's brain. Consumes sip-edge reports, applies each with one atomic
Lua step on Redis state (which also appends the resulting commands and events), and fires timers."""
