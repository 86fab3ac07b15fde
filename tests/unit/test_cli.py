"""Tests of onml CLI messages that need no running service."""

from __future__ import annotations

from click.testing import CliRunner

from clients.cli import cli


def test_predict_rejects_unreadable_png(tmp_path):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is text, not a PNG\n")

    result = CliRunner().invoke(cli, ["predict", "--png", str(not_an_image)])

    assert result.exit_code == 2
    assert "cannot read" in result.output
    assert "notes.png" in result.output
    assert "Traceback" not in result.output


def test_demo_stop_handlers_set_and_restore():
    import signal

    from clients import demo

    before = {signum: signal.getsignal(signum) for signum in demo.STOP_SIGNALS}
    previous = demo._set_stop_handlers(demo._raise_keyboard_interrupt)
    try:
        assert signal.getsignal(signal.SIGTERM) is demo._raise_keyboard_interrupt
        assert signal.getsignal(signal.SIGINT) is demo._raise_keyboard_interrupt
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    assert {signum: signal.getsignal(signum) for signum in demo.STOP_SIGNALS} == before


def test_bench_system_choices_match_modes():
    from benchmarks.modes import SYSTEM_CHOICES
    from clients.bench_cli import drain

    system_option = next(param for param in drain.params if param.name == "system")

    assert tuple(system_option.type.choices) == SYSTEM_CHOICES
