"""detlab's messages go through the ``detlab`` logger: one line each on stderr, quiet-able by a library user."""

from __future__ import annotations

import logging

from detlab.runfolder import find_checkpoint


def test_a_note_is_one_stderr_line_and_a_library_user_can_quiet_it(tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"")
    assert find_checkpoint(tmp_path) == tmp_path / "checkpoints" / "last.pt"
    out, err = capsys.readouterr()
    best = tmp_path / "checkpoints" / "best.pt"
    assert out == "" and err == (
        f"note: {best} not found (no evaluation picked a best yet); using {tmp_path / 'checkpoints' / 'last.pt'}\n"
    )
    logger = logging.getLogger("detlab")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        find_checkpoint(tmp_path)
        assert capsys.readouterr().err == ""
    finally:
        logger.setLevel(level)
    root_seen = []
    handler = logging.Handler()
    handler.emit = root_seen.append
    logging.getLogger().addHandler(handler)
    try:
        find_checkpoint(tmp_path)
    finally:
        logging.getLogger().removeHandler(handler)
    assert root_seen == [] and capsys.readouterr().err.count("\n") == 1  # printed once, not again by root
