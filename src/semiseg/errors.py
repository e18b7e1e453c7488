"""User-facing errors: one line that names the file, key or value and how to fix it."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps


class ConfigError(ValueError):
    """A configuration value that cannot work."""


def exit_on_user_error(main: Callable) -> Callable:
    """Print user errors as one line and exit 2, instead of a traceback."""
    from semiseg.data.splits import SplitError

    @wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except (ConfigError, SplitError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper
