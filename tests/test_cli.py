from conftest import cli_options

import unetpipe.cli.evaluate
from unetpipe.cli import build_parser, main


def test_expected_error_is_one_line(tmp_path):
    log = tmp_path / "log.txt"
    assert main(["--log-file", str(log), "summary", str(tmp_path)]) == 1
    text = log.read_text()
    assert "no metrics yet" in text and "Traceback" not in text


def test_unexpected_error_keeps_its_traceback_in_the_log(tmp_path, monkeypatch):
    def broken(run_dir):
        raise TypeError("a bug")

    monkeypatch.setattr(unetpipe.cli.evaluate, "summary", broken)
    log = tmp_path / "log.txt"
    assert main(["--log-file", str(log), "summary", str(tmp_path)]) == 1
    text = log.read_text()
    assert "unexpected error in unetpipe summary" in text
    assert "Traceback" in text and "TypeError: a bug" in text


def test_every_option_of_every_command_has_help_text():
    missing = [name for name, action in cli_options(build_parser()) if not action.help]
    assert not missing, f"options without help text: {missing}"
