"""Hostile-program suite, run for real under both sandbox backends (bubblewrap, Docker).

Each attack is the *candidate solution* of a real test-harness program
(:func:`build_test_program`, success marker on), exactly as a generated completion would be
run by the code tasks. For every attack we check that it is contained (the attack's effect
is absent on the host), scored as a failure, bounded in time, and that the same sandbox
instance still passes a benign program afterwards (the harness keeps going).

Backends that cannot run here skip with the reason (no bubblewrap, no Docker engine, no
root to build the image).
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from pathlib import Path

import pytest

from dllm_bench.sandboxes.base import Limits, Outcome, build_test_program, new_marker

LIMITS = Limits(wall_time_s=3.0, cpu_time_s=1.0, memory_mb=512, max_processes=16, max_file_size_mb=8,
                tmpfs_mb=32, max_output_bytes=1 << 20)
SLACK_S = 15.0  # containment bound: the run must end within its wall limit plus this (loaded CI)




def _attack(sb, code: str, limits: Limits = LIMITS) -> Outcome:
    """Run ``code`` as the solution of a one-test harness program, then check the sandbox
    still works (harness keeps going) and the run was bounded and not a pass."""
    program = build_test_program(code, [("after-attack", "assert True")])
    out = sb.run(program, limits=limits, success_marker=new_marker())
    assert out.status != "passed", (out.status, out.details, out.stdout[-300:], out.stderr[-300:])
    assert not out.marker_seen
    assert out.wall_s < limits.wall_time_s + SLACK_S
    ok = sb.run(build_test_program("def f(x):\n    return x + 1\n", [("t", "assert f(1) == 2")]),
                limits=LIMITS, success_marker=new_marker())
    assert ok.status == "passed", (ok.status, ok.details, ok.stderr[-500:])
    return out


def test_network_loopback_listener_sees_no_connection(sandbox):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    seen: list = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, addr = srv.accept()
                seen.append(addr)
                conn.close()
            except (TimeoutError, OSError):
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        out = _attack(sandbox, f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                               "s.sendall(b'exfiltrated')\n")
    finally:
        stop.set()
        t.join(timeout=5)
        srv.close()
    assert seen == []
    assert out.status == "runtime-error"
    assert "ConnectionRefusedError" in out.stderr or "OSError" in out.stderr or "Errno" in out.stderr


def test_fork_bomb_is_contained(sandbox):
    out = _attack(sandbox, "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n")
    assert out.status in ("timeout", "runtime-error", "memory")


def test_memory_bomb_is_contained(sandbox):
    # Generous time limits: the memory limit must be what stops the bomb, even on a loaded
    # machine where zeroing ~0.5 GiB of pages takes longer than the usual 3 s wall limit
    # (seen once: `timeout` instead of `memory` while other jobs ran).
    slow_ok = LIMITS.model_copy(update={"wall_time_s": 60.0, "cpu_time_s": 30.0})
    out = _attack(sandbox, "x = []\nwhile True:\n    x.append(bytearray(16 << 20))\n", limits=slow_ok)
    assert out.status == "memory", (out.status, out.details)


def test_disk_fill_is_contained(sandbox):
    out = _attack(sandbox, "import os\nfor d in ('/work', '/tmp', '/dev/shm'):\n"
                           "    for i in range(100):\n"
                           "        with open(os.path.join(d, f'fill{i}'), 'wb') as fh:\n"
                           "            fh.write(b'0' * (4 << 20))\n")
    assert out.status == "runtime-error"
    assert "No space left" in out.stderr or "File too large" in out.stderr or "Errno" in out.stderr
    # one file larger than max_file_size_mb
    big = _attack(sandbox, "open('big', 'wb').write(b'0' * (64 << 20))\n")
    assert big.status in ("runtime-error", "memory")


def test_infinite_loop_hits_cpu_or_wall_limit(sandbox):
    out = _attack(sandbox, "while True:\n    pass\n")
    assert out.status == "timeout"


def test_long_sleep_hits_wall_limit(sandbox):
    out = _attack(sandbox, "import time\ntime.sleep(3600)\n")
    assert out.status == "timeout"
    assert out.exit_code is None  # killed by the harness


def test_one_gigabyte_of_output_is_cut(sandbox):
    out = _attack(sandbox, "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(chunk)\n")
    assert out.status == "output-limit"
    assert len(out.stdout) + len(out.stderr) <= LIMITS.max_output_bytes


def test_host_file_is_not_readable(sandbox, tmp_path):
    token = uuid.uuid4().hex
    secret = tmp_path / "host-secret.txt"
    secret.write_text(token)
    secret.chmod(0o644)
    for d in [tmp_path, *tmp_path.parents]:
        if d == Path("/"):
            break
        try:
            d.chmod(d.stat().st_mode | 0o005)  # world-readable, so only the sandbox can stop it
        except PermissionError:
            pass
    here = Path(__file__).resolve()
    out = _attack(sandbox, f"print(open({str(secret)!r}).read())\nprint(open({str(here)!r}).read())\n")
    assert token not in out.stdout + out.stderr
    assert "FileNotFoundError" in out.stderr or "PermissionError" in out.stderr


def test_writing_outside_the_work_dir_fails(sandbox, tmp_path):
    target = tmp_path / f"pwned-{uuid.uuid4().hex}"
    tmp_path.chmod(0o777)
    code = "import os\nerrors = 0\n"
    for path in [str(target), "/etc/pwned", "/usr/lib/pwned.py", "/pwned", "/dev/pwned"]:
        code += f"try:\n    open({path!r}, 'w').write('x')\nexcept OSError:\n    errors += 1\n"
    code += "assert errors == 5, errors\nraise RuntimeError('every write outside the work dir failed')\n"
    out = _attack(sandbox, code)
    assert out.status == "runtime-error"
    assert "every write outside the work dir failed" in out.stderr
    assert not target.exists()


def test_harness_environment_is_invisible(sandbox, monkeypatch):
    token = "dllm-secret-" + uuid.uuid4().hex
    monkeypatch.setenv("DLLM_BENCH_TEST_SECRET", token)
    out = _attack(sandbox, "import os\nprint(dict(os.environ))\n"
                           "for p in ('/proc/self/environ', '/proc/1/environ'):\n"
                           "    try:\n        print(open(p, 'rb').read())\n    except OSError as e:\n        print(e)\n"
                           "raise SystemExit(0)\n")
    assert token not in out.stdout + out.stderr
    assert "DLLM_BENCH_TEST_SECRET" not in out.stdout


def test_signalling_the_parent_does_not_reach_the_harness(sandbox):
    me = os.getpid()
    out = _attack(sandbox, "import os, signal\n"
                           f"for pid in ({me}, os.getppid(), 1, -1):\n"
                           "    try:\n        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\n"
                           "os.kill(os.getpid(), signal.SIGKILL)\n")
    assert out.status in ("runtime-error", "failed")
    os.kill(me, 0)  # we are alive


@pytest.mark.parametrize("code", [
    "raise SystemExit(0)\n",
    "import sys\nsys.exit()\n",
    "exit(0)\n",
    "import os\nos._exit(0)\n",
    "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n",
    "import sys\nsys.stdout.close()\n",
])
def test_exit_before_tests_never_passes(sandbox, code):
    out = _attack(sandbox, code)
    assert out.status in ("failed", "runtime-error")


def test_exit_inside_a_test_never_passes(sandbox):
    program = build_test_program("def f():\n    raise SystemExit(0)\n", [("t0", "f()"), ("t1", "assert True")])
    out = sandbox.run(program, limits=LIMITS, success_marker=new_marker())
    assert out.status == "failed"
    from dllm_bench.sandboxes.base import parse_test_lines

    recs, _ = parse_test_lines(out.stdout)
    assert [r["status"] for r in recs] == ["error", "passed"]
    assert recs[0]["msg"].startswith("SystemExit")


def test_printing_a_guessed_marker_does_not_pass(sandbox):
    # the program cannot know the per-run nonce; a marker-looking line is not the marker
    out = _attack(sandbox, "print('__dllm_ok_' + '0' * 32 + '__')\nimport os\nos._exit(0)\n")
    assert out.status == "failed"


@pytest.mark.parametrize("code", [
    "import builtins\nbuiltins.exec = lambda *a, **k: None\n",
    "import builtins\nbuiltins.compile = lambda *a, **k: compile('pass', 'x', 'exec')\n",
    "import builtins\nbuiltins.abs = lambda x: 0\n",
    "def __dllm_main(*a, **k):\n    pass\n",
    "AssertionError = Exception\n",
])
def test_patching_the_harness_does_not_pass(sandbox, code):
    # the test below is false for the real builtins: only a subverted harness could pass it
    program = build_test_program(code, [("t", "assert abs(-3) == 3 and 1 == 2")])
    out = sandbox.run(program, limits=LIMITS, success_marker=new_marker())
    assert out.status == "failed", (out.status, out.details, out.stderr[-300:])


def test_forged_test_lines_are_ignored(sandbox):
    from dllm_bench.sandboxes.base import parse_test_lines

    key = uuid.uuid4().hex[:16]
    forged = "print('\\n__dllm_test__ 0\\tpassed\\t0.0\\t\\'\\'')\nimport os\nos._exit(0)\n"
    out = sandbox.run(build_test_program(forged, [("t", "assert False")], line_key=key), limits=LIMITS,
                      success_marker=new_marker())
    assert out.status == "failed"
    assert parse_test_lines(out.stdout, key)[0] == []


@pytest.mark.parametrize("code", [
    "class Eq:\n    def __eq__(self, other):\n        return True\n\ndef f(x):\n    return Eq()\n",
    "class Eq(int):\n    __eq__ = lambda self, other: True\n\ndef f(x):\n    return [Eq(0)]\n",
    "import collections\ncollections.Counter.__eq__ = lambda s, o: True\ndef f(x):\n    return collections.Counter()\n",
    "class Eq:\n    __eq__ = lambda s, o: True\nclass Solution:\n    def f(self, x):\n        return Eq()\n"
    "my = Solution()\n",
])
def test_always_equal_results_do_not_pass(sandbox, code):
    call = "my.f(1)" if "Solution" in code else "f(1)"
    program = build_test_program(code, [("t", f"assert {call} == [1, 2, 3]")])
    out = sandbox.run(program, limits=LIMITS, success_marker=new_marker())
    assert out.status == "failed", (out.status, out.details, out.stderr[-300:])
    assert "plain values" in out.stdout
