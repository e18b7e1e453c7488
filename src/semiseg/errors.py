"""User-facing errors: one line that names the file, key or value and how to fix it."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from functools import wraps


class ConfigError(ValueError):
    """A configuration value that cannot work."""


class NonFiniteError(ConfigError):
    """NaN or inf losses or weights: most often a learning rate too high for the batch."""


def exit_on_user_error(main: Callable) -> Callable:
    """Print user errors as one line and exit 2, instead of a traceback."""
    from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

    from semiseg.data.splits import SplitError

    @wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except (ConfigError, SplitError, FileNotFoundError) as err:
            print(f"error: {one_line(err)}", file=sys.stderr)
            sys.exit(2)
        except (MissingMandatoryValue, InterpolationToMissingValueError) as err:
            # a `???` left in the config, e.g. dataset=custom without dataset.root
            found = re.search(r"Missing mandatory value: (\S+)", str(err))
            key = found[1] if found else err.full_key
            print(f"error: {key} is required: give {key}=...", file=sys.stderr)
            sys.exit(2)

    return wrapper


def one_line(err: BaseException) -> str:
    """The message; for an error re-raised from a DataLoader worker (whose message carries the
    worker's traceback) the original message, which is its last line."""
    text = str(err).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        return last.partition(f"{type(err).__name__}: ")[2] or last
    return text
