"""KeptIds: which kept rows repeat an id kept before, exactly while few, in the table after."""

from __future__ import annotations

from workers.pipeline.fetch.repeats import SET_LIMIT, KeptIds


def test_repeats_are_found_within_a_batch_and_across_batches() -> None:
    kept = KeptIds()
    assert not kept and kept.holding(["a"]) == []
    assert kept.keep(["a", "b", "a", "c"]) == [2]
    assert kept.keep(["d", "b", "\ud800"]) == [1]  # a lone surrogate (JSON allows one) is an id like any other
    assert kept.holding(["x", "c", "\ud800", "y"]) == [1, 2]
    assert kept.keep([]) == [] and kept.holding([]) == []


def test_past_the_set_limit_the_table_still_knows_every_id_kept() -> None:
    kept = KeptIds()
    first = [f"id-{n}" for n in range(SET_LIMIT + 10)]
    assert kept.keep(first) == []
    assert kept._table is not None and kept._ids is None  # moved to the table
    assert kept.holding(first[::997]) == list(range(len(first[::997])))  # no id kept is ever forgotten
    assert kept.keep(["id-5", "new", "new"]) == [0, 2]
    # Another process decides the same: the slots come from CRC-32, not from hash().
    again = KeptIds()
    again.keep(first)
    probe = [f"other-{n}" for n in range(20_000)]
    assert again.holding(probe) == kept.holding(probe)
