"""``python -m benchmarks.deterministic_outputs``'s arguments: a mistake is a one-line error
before any network is built (``--help`` once wrote minutes of outputs to a file named --help)."""

import pytest

from benchmarks import deterministic_outputs


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "expected one output path"),
        (["--mode"], "expected one output path"),
        (["--mode", "fast", "out.json"], "expected one output path"),
        (["--verbose"], "expected one output path"),
        (["a.json", "b.json"], "expected one output path"),
        (["--compare", "a.json"], "--compare takes two JSON files"),
    ],
)
def test_bad_arguments_are_one_line_errors(argv, message):
    with pytest.raises(SystemExit) as exit_info:
        deterministic_outputs.main(argv)
    text = str(exit_info.value.code)
    assert message in text and "usage:" in text and "\n" not in text


def test_help_prints_the_docstring(capsys):
    with pytest.raises(SystemExit) as exit_info:
        deterministic_outputs.main(["--help"])
    assert exit_info.value.code == 0
    assert "before/after comparisons" in capsys.readouterr().out
