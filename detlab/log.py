"""detlab's messages: one logger, ``detlab``, printing each record as today's one-line message on stderr.

Notes, warnings and skips go through ``logger`` (``from detlab.log import logger``); what a
command produces (tables, paths written) is printed to stdout. The handler writes to the
``sys.stderr`` of the moment, so redirection and test capture see every line.

Library use can quiet it::

    import logging
    logging.getLogger("detlab").setLevel(logging.WARNING)   # warnings and errors only
    logging.getLogger("detlab").disabled = True             # nothing
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("detlab")


class _StderrHandler(logging.Handler):
    """The message as is, one line, to the current ``sys.stderr``."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # a closed stream must not end a run
            self.handleError(record)


if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
    _handler = _StderrHandler()
    _handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    # Applications that configure the root logger would otherwise print every line twice.
    logger.propagate = False
