"""engine/threads.py: the decode thread count chosen by measurement. Driven by a model of step time per thread
count (no clock, no real threads): the tuner sees only the step durations it is given."""

from __future__ import annotations

from cohere_cli.engine.threads import ThreadTuner


class Machine:
    """Step seconds by thread count, changeable mid-run; runs each step at the count the tuner gives."""

    def __init__(self, times: dict[int, float], lost: float | None = None):
        self.times = times
        self.lost = lost  # threads x wall - the process's CPU time, in walls, reported with each step (or not)

    def run(self, tuner: ThreadTuner, steps: int) -> list[int]:
        used = []
        for _ in range(steps):
            used.append(tuner.threads)
            s = self.times[used[-1]]
            tuner.step(s, None if self.lost is None else (used[-1] - self.lost) * s)
        return used


def test_quiet_keeps_every_thread_and_probes_rarely():
    m = Machine({2: 0.010, 1: 0.018})
    tuner = ThreadTuner(2)
    used = m.run(tuner, 2000)
    assert tuner.current == 2 and tuner.threads == 2
    assert used.count(1) <= 0.01 * len(used) + 3 * 3  # probes back off: 16, 32, ... 512 steps apart


def test_a_busy_core_moves_decode_to_one_thread_and_back_when_it_ends():
    m = Machine({2: 0.060, 1: 0.018})  # another process on one core: two threads wait on each other
    tuner = ThreadTuner(2)
    used = m.run(tuner, 100)
    assert tuner.current == 1 and used[-50:].count(1) >= 47  # a probe of 2 now and then (backing off)
    assert used.index(1) <= ThreadTuner.FIRST  # the first probe finds it
    m.times = {2: 0.010, 1: 0.018}  # the other process ends
    used = m.run(tuner, 200)
    assert tuner.current == 2 and used[-50:].count(2) >= 47


def test_with_cpu_times_a_quiet_machine_is_never_probed_and_a_busy_one_is_found_as_fast():
    """Steps whose threads were on their cores the whole time (CPU time short of threads x wall by at most LOST
    walls) are no reason to try fewer threads; steps that lost CPU time count towards the probe as before."""
    m = Machine({2: 0.010, 1: 0.018}, lost=-0.1)  # quiet: OpenMP's spinning threads count (measured 1.0-1.1 x)
    tuner = ThreadTuner(2)
    assert set(m.run(tuner, 2000)) == {2}
    m = Machine({2: 0.060, 1: 0.018}, lost=0.52)  # one core kept busy (measured: a median of 0.74 x 2 threads)
    tuner = ThreadTuner(2)
    used = m.run(tuner, 100)
    assert used.index(1) <= ThreadTuner.FIRST and tuner.current == 1
    m.times, m.lost = {2: 0.010, 1: 0.018}, 0.0  # the other process ends: one thread (below the full count)
    used = m.run(tuner, 200)  # still probes upwards, whatever its CPU time
    assert tuner.current == 2 and used[-50:].count(2) == 50
    m.lost = 0.21  # just over the bar: contention again counts towards a probe
    used = m.run(tuner, ThreadTuner.FIRST + ThreadTuner.PROBE)
    assert used.count(1) == ThreadTuner.PROBE


def test_with_cpu_times_many_threads_with_a_core_taken_still_step_down():
    """With 8 threads and one core taken, the thread sharing it loses about half its time while the other 7 spin
    at each barrier: CPU is ~7.5 of 8 threads' time (a share of 0.94), which is contention all the same."""
    times = {n: 0.010 * 8 / n for n in range(1, 9)}
    times[8] = 0.050
    m = Machine(times, lost=0.5)
    tuner = ThreadTuner(8)
    m.run(tuner, 100)
    assert tuner.current == 7


def test_a_sudden_slowdown_probes_at_once():
    m = Machine({2: 0.010, 1: 0.018})
    tuner = ThreadTuner(2)
    m.run(tuner, 600)  # quiet long enough for the wait to grow to its maximum
    assert tuner.wait >= 256
    m.times = {2: 0.060, 1: 0.018}
    used = m.run(tuner, 10)
    assert used[-3:] == [1, 1, 1] and tuner.current == 1


def test_a_losing_probe_restores_the_count_and_one_thread_never_probes():
    m = Machine({2: 0.010, 1: 0.018})
    tuner = ThreadTuner(2)
    used = m.run(tuner, ThreadTuner.FIRST + ThreadTuner.PROBE + 1)
    assert used.count(1) == ThreadTuner.PROBE and used[-1] == 2 and tuner.wait == 2 * ThreadTuner.FIRST
    assert set(Machine({1: 0.018}).run(ThreadTuner(1), 1000)) == {1}


def test_many_cores_step_down_one_at_a_time():
    times = {n: 0.010 * 16 / n for n in range(1, 17)}
    times[16] = 0.050  # one core taken: 16 threads straggle, 15 do not
    m = Machine(times)
    tuner = ThreadTuner(16)
    m.run(tuner, 100)
    assert tuner.current == 15


def test_stream_generate_runs_only_its_decode_steps_at_the_tuned_count(tmp_path, monkeypatch):
    """The tuned count holds for the decode step alone: whatever the tuner chose, the caller's count is in force at
    every token handed out (and so after the generation ends or is stopped), and the tuner, with its choice and
    back-off, carries to the next generation."""
    import torch

    from cohere_cli.engine import generate
    from cohere_cli.engine.sampling import SamplingParams
    from cohere_cli.weights.checkpoint import load_model
    from factory_checkpoint import make_checkpoint

    class Tok:
        vocab_size, stop_ids = None, set()

        def stream_decoder(self):
            return type("D", (), {"step": lambda self, t: "", "flush": lambda self: ""})()

    make_checkpoint(tmp_path, tokenizer=False, vocab=384)
    model = load_model(tmp_path).model
    monkeypatch.setattr(ThreadTuner, "GAIN", 100.0)  # every probe wins: the count changes at each probe
    monkeypatch.setattr(generate, "_TUNERS", {})
    used: list[int] = []
    real = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: used.append(torch.get_num_threads()) or real(*a, **k))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gen = generate.stream_generate(model, Tok(), [1, 2, 3], SamplingParams(), 40, stop_ids=set())
        for i, _ in enumerate(gen):
            assert torch.get_num_threads() == 2
            if i == 30:
                break
        gen.close()
        assert set(used) == {1, 2} and torch.get_num_threads() == 2
        tuner = generate._TUNERS[2]
        for _ in generate.stream_generate(model, Tok(), [1, 2, 3], SamplingParams(), 5, stop_ids=set()):
            assert torch.get_num_threads() == 2
        assert generate._TUNERS[2] is tuner
    finally:
        torch.set_num_threads(before)
