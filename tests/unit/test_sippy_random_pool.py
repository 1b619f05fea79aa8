"""sippy's Via branches, Call-IDs and tags after the patch that takes their random bytes from a
pool read 4 KiB at a time (patches._random_tokens_from_a_pool): the same form as secrets.token_hex,
never the same bytes twice, and every sippy module that made them uses the pool.

The sippy part runs in a child process: importing sippy binds its reactor to the importing thread."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from callcenter_sip_edge.sippy.patches import RandomPool

CHILD = textwrap.dedent("""
    from callcenter_sip_edge.sippy import patches
    patches.apply_patches()
    import importlib
    for name in patches._TOKEN_MODULES:
        assert importlib.import_module(name).token_hex == patches.RANDOM_POOL.token_hex, name
    from sippy.SipCallId import SipCallId
    from sippy.SipVia import SipVia
    from sippy.SipFrom import SipFrom
    branches = set()
    for _ in range(600):   # over two pools' worth
        via = SipVia()
        via.genBranch()
        branches.add(via.getBranch())
    assert len(branches) == 600 and all(b.startswith("z9hG4bK") and len(b) == 39 for b in branches)
    ids = {SipCallId().body for _ in range(300)}
    assert len(ids) == 300 and all(len(i) == 32 for i in ids)
    f = SipFrom()
    f.genTag()
    assert len(f.getTag()) == 32
    from sippy.SipCSeq import SipCSeq
    assert importlib.import_module("sippy.SipCSeq").randbelow == patches.RANDOM_POOL.randbelow
    first = {SipCSeq.genRandCSeq() for _ in range(300)}
    assert len(first) > 290 and all(SipCSeq.initial_min <= c <= SipCSeq.initial_max - SipCSeq.initial_headroom
                                    for c in first)
    print("ok")
""")


def test_tokens_have_secrets_form_and_no_bytes_are_handed_out_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[int] = []
    real = os.urandom

    def counted(n: int) -> bytes:
        reads.append(n)
        return real(n)

    monkeypatch.setattr(os, "urandom", counted)
    pool = RandomPool()
    tokens = [pool.token_hex(16) for _ in range(RandomPool.SIZE // 16 * 3)]
    assert reads == [RandomPool.SIZE] * 3   # one read per 256 tokens of 16 bytes
    assert len(set(tokens)) == len(tokens) and all(len(t) == 32 and int(t, 16) >= 0 for t in tokens)
    assert len(pool.token_hex()) == 64 and len(pool.token_hex(4)) == 8   # secrets' default: 32 bytes
    assert len(pool.token_hex(5000)) == 10000   # larger than a pool: read at its own size
    assert reads[-1] == 5000


def test_randbelow_is_uniform_below_its_bound() -> None:
    pool = RandomPool()
    counts = [0] * 6
    for _ in range(6000):
        counts[pool.randbelow(6)] += 1   # 6 needs 3 bits: 6 and 7 are drawn again, never folded
    assert all(800 < c < 1200 for c in counts), counts   # 1,000 each; 6 sigma is about 180
    assert {pool.randbelow(1) for _ in range(20)} == {0}
    big = [pool.randbelow(2**31 - 1) for _ in range(2000)]
    assert all(0 <= v < 2**31 - 1 for v in big) and max(big) > 2**30 and len(set(big)) > 1990
    with pytest.raises(ValueError):
        pool.randbelow(0)


def test_sippy_makes_its_branches_call_ids_and_tags_from_the_pool() -> None:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("ok")
