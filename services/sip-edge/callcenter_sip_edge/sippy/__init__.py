"""The edge's adaptation layer over sippy 2.5.0: the only package that knows sippy's private names.

`patches` (monkeypatches for sippy's defects, each naming its defect), `transport` (the UDP server,
the transaction manager, the stack's set-up and close) and `dialog` (UA creation, hang-up, the
re-INVITE without offer, dialog state tests), `reactor` (sippy's reactor driven from the asyncio
loop). Importing this package does not import sippy: it is imported when a stack starts, after the
patches.
"""
