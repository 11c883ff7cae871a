"""A command that gets SIGTERM stops what it started, as on Ctrl-C: the front door turns the signal
into an exit that runs the command's ``finally`` blocks (Python's default would die on the spot and
leave a service it started running in its own process group)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

COMMAND = """
import subprocess, sys, time
from conveyor.cli import stop_on_sigterm
stop_on_sigterm()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
try:
    print(child.pid, flush=True)  # inside the try: the signal the test sends after reading it finds the finally
    time.sleep(120)  # a command at work: a demo driving its service
finally:
    child.terminate()
    child.wait(10)
    print("stopped", flush=True)
"""


def test_a_terminated_command_runs_its_finally_blocks_and_stops_the_service_it_started() -> None:
    with subprocess.Popen([sys.executable, "-c", COMMAND], stdout=subprocess.PIPE, text=True) as command:
        assert command.stdout is not None
        service = int(command.stdout.readline())
        assert psutil.pid_exists(service)
        os.kill(command.pid, signal.SIGTERM)
        assert command.wait(30) == 128 + signal.SIGTERM
        assert command.stdout.read().strip() == "stopped"
    deadline = time.monotonic() + 10
    while psutil.pid_exists(service) and psutil.Process(service).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the service outlived the command"
        time.sleep(0.05)
