"""The run status vocabulary is the contract's (CONTRACT.md section 4): spelled here once,
in the one test that pins the words clients rely on."""

from __future__ import annotations

from app.core.run_status import ACTIVE, ALL, FINISHED, RunStatus

CONTRACT_WORDS = "queued running succeeded partial failed cancelled".split()  # section 4, and section 5 (cancelled)


def test_the_vocabulary_is_the_contracts() -> None:
    assert list(ALL) == CONTRACT_WORDS
    assert set(ACTIVE) | set(FINISHED) == set(ALL) and not set(ACTIVE) & set(FINISHED)
    assert ACTIVE == (RunStatus.QUEUED, RunStatus.RUNNING)


def test_a_finished_run_is_partial_exactly_when_it_rejected_records() -> None:
    assert RunStatus.finished_ok(rejected=0) == RunStatus.SUCCEEDED
    assert RunStatus.finished_ok(rejected=1) == RunStatus.PARTIAL


def test_members_are_plain_strings_to_json_and_sql() -> None:
    import orjson

    assert orjson.loads(orjson.dumps({"status": RunStatus.FAILED})) == {"status": CONTRACT_WORDS[4]}
    assert {CONTRACT_WORDS[0]: 1}[RunStatus.QUEUED] == 1
