"""The standalone state service, started the way a bot operator would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from inline_state import StateClient

from .support import RunningProcess, free_port


def state_service(*args: str) -> RunningProcess:
    """``python -m inline_state state-service`` on a free port."""
    return RunningProcess(
        lambda port: [
            sys.executable,
            "-m",
            "inline_state",
            "state-service",
            "--listen",
            f"127.0.0.1:{port}",
            *args,
        ]
    )


async def test_state_service_on_sqlite_survives_a_restart(tmp_path: Path) -> None:
    args = ("--store", f"sqlite:///{tmp_path / 'state.db'}", "--secret", "pw", "--bot-id", "b")
    service = state_service(*args).start()
    try:
        async with StateClient(
            f"http://127.0.0.1:{service.port}", secret="pw", channel="slack"
        ) as api:
            written = await api.set_user_data("U1:T1", {"name": "Ada"}, None)
    finally:
        service.stop()
    service = state_service(*args).start()
    try:
        async with StateClient(
            f"http://127.0.0.1:{service.port}", secret="pw", channel="slack"
        ) as api:
            read = await api.get_user_data("U1:T1")
    finally:
        service.stop()
    assert read.data == {"name": "Ada"}
    assert read.etag == written.etag


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--bot-id", "b"], "a secret is required"),
        (["--bot-id", "b", "--no-auth", "--listen", "0.0.0.0:1"], "loopback addresses only"),
        (["--bot-id", "b", "--no-auth", "--secret", "x"], "exclude each other"),
    ],
)
def test_refuses_to_start_without_auth(args: list[str], complaint: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "inline_state", "state-service", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert complaint in result.stderr


def test_no_auth_is_announced() -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "inline_state",
            "state-service",
            "--bot-id",
            "b",
            "--no-auth",
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        assert "WITHOUT AUTHENTICATION" in line
    finally:
        process.terminate()
        process.communicate(timeout=10)
