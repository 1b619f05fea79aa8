"""callcenter sip-edge: the signalling-only B2BUA that owns the SIP dialogs of every call.

`sip_stack.SipStack` is the public entry point (thread bridge + commands); `controller` holds the
per-call third-party call control state machine that runs on the SIP thread; `sippy_fixes`
patches the sippy 2.5.0 defects at start-up.
"""
