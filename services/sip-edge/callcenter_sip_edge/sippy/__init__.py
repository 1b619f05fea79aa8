"""The edge's adaptation layer over sippy 2.5.0: the only package that knows sippy's private names.

`patches` (monkeypatches for sippy's defects, each naming its defect), `transport` (the UDP server,
the transaction manager, the stack's set-up and close) and `dialog` (UA creation, hang-up, the
re-INVITE without offer, dialog state tests). Importing this package does not import sippy: sippy
must be imported on the SIP thread (its reactor binds to the importing thread).
"""
