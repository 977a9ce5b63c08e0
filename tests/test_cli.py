"""The `glmaas` command: keys and usage reports."""

from __future__ import annotations

import csv
import io
import json

import httpx

from tests.conftest import Server


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
