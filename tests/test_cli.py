import unetpipe.cli.evaluate
from unetpipe.cli import main


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
