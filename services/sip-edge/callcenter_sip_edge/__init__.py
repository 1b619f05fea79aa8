"""callcenter sip-edge: the signalling-only B2BUA that owns the SIP dialogs of every call.

Where things are (see the README's file map):
- `service` (asyncio: facts -> reports, commands -> stack), `sip_stack` (sippy on the same loop,
  public entry point `SipStack`), `facts` (`Fact`);
- in sippy's turns (`sippy/reactor.py`): `router` (admission of new INVITEs, out-of-dialog
  requests, commands by call id, shutdown) and one `call.Call` per call, whose rooms are `media`
  (media legs), `agent` (the agent leg and its phases), `forks` (ring-all, with the CANCEL of
  the losers), `whisper` (the flow-id message), `offers` (the caller's re-INVITE queue and
  relayed offers); `legs` holds the legs as data (and `Phase`), `sip_events` turns sippy's CCEvent* into named calls;
- pure helpers: `guard` (trusted networks, rate limit), `screening` (malformed datagrams),
  `sdp`, `gc_policy` (when the cycle collector runs);
- `sippy/`: everything that knows sippy's private names: `patches` (its defects, fixed at
  start-up), `transport` (UDP server, transaction manager, set-up and close), `dialog`,
  `reactor` (sippy's reactor on the asyncio loop: turns, timers, socket readers).
"""
