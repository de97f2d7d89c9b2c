"""Bad data files through a real command: exit code 2 and the one line users see."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefloop.cli import main


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n', "row 2: invalid UTF-8 at byte 16 of line 2"),
        (b'{"prompt": "ok"}\n{"prompt": \n', "row 2: invalid JSON: Expecting value (column 12)"),
        (b'{"prompt": "ok"}\n[1]\n', "row 2: expected a JSON object, got list"),
    ],
)
def test_bad_prompt_file_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, expected: str
) -> None:
    data = tmp_path / "prompts.jsonl"
    data.write_bytes(content)
    code = main(["generate", "--workspace", str(tmp_path / "ws"), "--prompts", str(data)])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"prefloop generate: error: {data}, {expected}\n"


def test_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.jsonl"
    code = main(["generate", "--workspace", str(tmp_path / "ws"), "--prompts", str(missing)])
    assert code == 2
    assert capsys.readouterr().err == f"prefloop generate: error: {missing}: no such file\n"
