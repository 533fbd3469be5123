"""The statistics slot between a worker and the main process: one record per writer, never a
torn copy for the reader (pure unit with real processes and threads, no JACK, no card).

Runs in the pytest process; the writers are a child process (as the worker is) and its threads.
"""

from __future__ import annotations

import multiprocessing
import threading

from cardbridge.engine.stats import LAYOUT, StatsSlot


def _write_both_records(path: str, rounds: int, started) -> None:
    """Two writer threads, one per record, each writing every value of its record with the same
    number, over and over: a torn copy is one whose values differ."""
    slot = StatsSlot(path)

    def write(record):
        for k in range(1, rounds + 1):
            record.begin()
            for i in range(len(record.keys)):
                record.values[i] = float(k)
            record.end()

    threads = [threading.Thread(target=write, args=(rec,)) for rec in (slot.stream, slot.worker)]
    for t in threads:
        t.start()
    started.set()
    for t in threads:
        t.join()


def test_a_reader_never_sees_a_record_half_written(tmp_path):
    slot = StatsSlot(str(tmp_path / "slot"), create=True)
    started = multiprocessing.get_context("fork").Event()
    writer = multiprocessing.get_context("fork").Process(
        target=_write_both_records, args=(slot.path, 20000, started))
    writer.start()
    try:
        started.wait(10)
        seen = 0
        while writer.is_alive() or seen == 0:
            for record in (slot.stream, slot.worker):
                copy = record.snapshot()
                if copy is None:
                    continue
                assert len(set(copy.values())) == 1, copy
                seen += 1
        assert seen > 0
    finally:
        writer.join(30)
    final = slot.snapshot()
    assert all(final[key] == 20000.0 for writer_keys in LAYOUT.values() for key in writer_keys)
    slot.close()


def test_records_of_two_writers_do_not_overlap(tmp_path):
    slot = StatsSlot(str(tmp_path / "slot"), create=True)
    slot.stream.set(**{key: 1.0 for key in LAYOUT["stream"]})
    slot.worker.set(**{key: 2.0 for key in LAYOUT["worker"]})
    snap = slot.snapshot()
    assert {snap[k] for k in LAYOUT["stream"]} == {1.0}
    assert {snap[k] for k in LAYOUT["worker"]} == {2.0}
    slot.close()
