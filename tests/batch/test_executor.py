"""The executor layer: calls on a local Ray (num_cpus=2) and in a local process pool, a failing
call isolated, a lost Ray worker replaced and its call run again, and workers that end with the
driver when it is killed."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from regtool.batch.executor import InlineExecutor, LocalExecutor, RayExecutor, run_all

ray = pytest.importorskip("ray")


def _collect(executor, calls):
    tickets = {executor.submit(fn, arg): k for k, (fn, arg) in enumerate(calls)}
    done = {}
    while len(done) < len(calls):
        for d in executor.wait():
            done[tickets[d.ticket]] = d
    return [done[k] for k in range(len(calls))]


@pytest.mark.parametrize("kind", ["inline", "local", "ray"])
def test_calls_run_and_a_failing_call_is_isolated(kind):
    if kind == "ray":
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        executor = RayExecutor(2, gl=False)
    else:
        executor = InlineExecutor() if kind == "inline" else LocalExecutor(2)
    try:
        calls = [(math.sqrt, 4.0), (math.sqrt, -1.0), (math.factorial, 5), (math.sqrt, 9.0)]
        done = _collect(executor, calls)
        assert [d.value for d in done] == [2.0, None, 120, 3.0]
        assert isinstance(done[1].error, ValueError) and "math domain" in str(done[1].error)
        assert all(d.error is None for k, d in enumerate(done) if k != 1)
        if kind != "inline":
            assert all(d.pid != os.getpid() for d in done if d.error is None)
        if kind == "ray":
            node = ray.get_runtime_context().get_node_id()
            assert {d.node for d in done} == {node}
        assert run_all(executor, math.sqrt, [1.0, 16.0, 25.0]) == [1.0, 4.0, 5.0]
        with pytest.raises(ValueError):
            run_all(executor, math.sqrt, [1.0, -2.0])
    finally:
        executor.close()
        if kind == "ray":
            ray.shutdown()


def test_a_lost_ray_worker_is_replaced_and_its_call_runs_again():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        executor = RayExecutor(2, gl=False, max_attempts=3)
        assert executor.wait_ready(timeout=120) == 2
        pids = {pid for _node, pid in executor.nodes.values()}
        assert len(pids) == 2
        tickets = [executor.submit(time.sleep, 4.0) for _ in range(2)]
        time.sleep(1.5)  # both calls running
        victim = sorted(pids)[0]
        os.kill(victim, signal.SIGKILL)
        done = {}
        while len(done) < 2:
            for d in executor.wait():
                done[d.ticket] = d
        assert all(done[t].error is None for t in tickets), [done[t].error for t in tickets]
        assert sorted(done[t].attempts for t in tickets) == [1, 2]
        assert victim not in {pid for _node, pid in executor.nodes.values()}
        executor.close()
    finally:
        ray.shutdown()


DRIVER = textwrap.dedent("""
    import sys, time
    from regtool.batch.executor import make_executor

    if __name__ == "__main__":
        executor = make_executor(sys.argv[1], 2, gl=False)
        pids = set()
        while len(pids) < 2:  # both workers up
            for _ in range(2):
                executor.submit(time.sleep, 0.3)
            while executor.pending:
                pids |= {d.pid for d in executor.wait()}
        for _ in range(2):
            executor.submit(time.sleep, 600)
        print(" ".join(map(str, sorted(pids))), flush=True)
        time.sleep(600)
""")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("kind", ["local", "ray"])
def test_workers_end_with_a_killed_driver(kind, tmp_path):
    """The driver is killed with SIGKILL (no clean-up runs): its workers end too."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, str(script), kind], stdout=subprocess.PIPE,
                                stderr=err, text=True)
    try:
        line = proc.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids), \
            (tmp_path / "stderr.txt").read_text()[-3000:]
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    alive = [p for p in pids if _alive(p)]
    for p in alive:  # leave nothing behind for the next tests
        os.kill(p, signal.SIGKILL)
    assert not alive, f"still running 60 s after the driver was killed: {alive}"
