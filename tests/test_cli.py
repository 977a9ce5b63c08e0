"""The `glmaas` command: every verb group answers, keys, usage reports, operator commands."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, Server, run_cli

VERB_GROUPS = (["serve"], ["keys", "create"], ["keys", "list"], ["keys", "revoke"], ["accounts", "create"],
               ["accounts", "topup"], ["accounts", "adjust"], ["accounts", "show"], ["accounts", "limits"],
               ["upstream-keys", "set"], ["upstream-keys", "list"], ["upstream-keys", "delete"],
               ["prices", "set"], ["prices", "list"], ["usage"], ["train"], ["generate"], ["experiment"],
               ["bench", "serve"])


def glmaas(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "glmaas", *args], check=False, capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def test_help_lists_every_verb_group() -> None:
    r = glmaas("--help")
    assert r.returncode == 0
    for group in ("serve", "accounts", "keys", "upstream-keys", "prices", "usage", "train", "generate", "experiment", "bench"):
        assert group in r.stdout


@pytest.mark.parametrize("command", VERB_GROUPS, ids=" ".join)
def test_every_subcommand_answers_help(command: list[str]) -> None:
    r = glmaas(*command, "--help")
    assert r.returncode == 0 and r.stdout.startswith(f"usage: glmaas {' '.join(command)}")


def test_an_unknown_command_is_refused_by_the_parser() -> None:
    r = glmaas("keys", "rotate")
    assert r.returncode == 2 and "invalid choice: 'rotate'" in r.stderr


def test_keys_commands_work_without_torch(tmp_path: Path) -> None:
    # A `torch` that cannot be imported, first on the path: the operator's commands must not need it.
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ImportError('torch is not installed here')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = run_cli("keys", "create", data_dir=tmp_path / "data", env=env).stdout
    assert out.strip().splitlines()[-1].count(".") == 1
    assert run_cli("usage", data_dir=tmp_path / "data", env=env).returncode == 0


def test_keys_create_prints_key_alone_on_last_line_and_list_hides_secret(mock_server: Server) -> None:
    out = mock_server.cli("keys", "create", "--name", "cli-test").stdout
    key = out.strip().splitlines()[-1]
    key_id, secret = key.split(".")
    assert len(key_id) == 32 and len(secret) == 32
    listing = mock_server.cli("keys", "list").stdout
    assert key_id in listing and secret not in listing
    keys = json.loads(mock_server.cli("keys", "list", "--format", "json").stdout)
    assert any(k["id"] == key_id and k["name"] == "cli-test" for k in keys)


def test_revoke_unknown_key_fails_clearly(mock_server: Server) -> None:
    r = mock_server.cli("keys", "revoke", "f" * 32, check=False)
    assert r.returncode == 1 and "no key" in r.stderr


def test_usage_totals_by_key_and_model(mock_server: Server) -> None:
    key = mock_server.create_key("--name", "usage-test")
    key_id = key.split(".")[0]
    told = {"prompt": 0, "completion": 0}
    for max_tokens in (3, 5):
        r = httpx.post(f"{mock_server.openai_url}/chat/completions",
                       headers={"Authorization": f"Bearer {key}"},
                       json={"model": "mock", "messages": [{"role": "user", "content": "hi"}],
                             "max_tokens": max_tokens})
        told["prompt"] += r.json()["usage"]["prompt_tokens"]
        told["completion"] += r.json()["usage"]["completion_tokens"]
    rows = json.loads(mock_server.cli("usage", "--format", "json").stdout)
    mine = [r for r in rows if r["key"] == key_id]
    assert len(mine) == 1
    assert (mine[0]["model"], mine[0]["requests"]) == ("mock", 2)
    assert (mine[0]["prompt_tokens"], mine[0]["completion_tokens"]) == (told["prompt"], told["completion"])
    table = list(csv.DictReader(io.StringIO(mock_server.cli("usage", "--format", "csv").stdout)))
    assert any(r["key"] == key_id and r["completion_tokens"] == "8" for r in table)
    assert key_id in mock_server.cli("usage").stdout


def test_operator_commands_end_to_end(mock_server: Server) -> None:
    mock_server.cli("accounts", "create", "cli-acme")
    assert "balance 3.250000" in mock_server.cli("accounts", "topup", "cli-acme", "3.25").stdout
    mock_server.cli("prices", "set", "tiny-context", "--input", "1", "--output", "2")
    key = mock_server.create_key("--account", "cli-acme", "--rpm", "50", "--tpm", "100000",
                                 "--concurrency", "2", "--expires", "2099-01-01")
    r = httpx.post(f"{mock_server.openai_url}/chat/completions", headers={"Authorization": f"Bearer {key}"},
                   json={"model": "tiny-context", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert r.status_code == 200 and r.headers["x-ratelimit-limit-requests"] == "50"
    shown = json.loads(mock_server.cli("accounts", "show", "cli-acme", "--format", "json").stdout)
    usage = r.json()["usage"]
    assert shown["balance_micro"] == 3_250_000 - usage["prompt_tokens"] * 1 - usage["completion_tokens"] * 2
    rows = list(csv.DictReader(io.StringIO(
        mock_server.cli("usage", "--by", "day,account", "--account", "cli-acme", "--format", "csv").stdout)))
    assert len(rows) == 1 and rows[0]["account"] == "cli-acme" and rows[0]["requests"] == "1"


def test_operator_commands_refuse_bad_input_clearly(mock_server: Server) -> None:
    for args in (["accounts", "topup", "nobody", "1"], ["accounts", "topup", "default", "1.2.3"],
                 ["accounts", "create", "bad name!"], ["usage", "--by", "colour"]):
        r = mock_server.cli(*args, check=False)
        assert r.returncode == 1 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


def test_limits_out_of_range_are_refused_by_the_cli(mock_server: Server) -> None:
    r = mock_server.cli("keys", "create", "--tpm", "10000000000", check=False)
    assert r.returncode == 1 and "tpm must be between 0 and" in r.stderr
