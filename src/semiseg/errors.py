"""User-facing errors: one line that names the file, key or value and how to fix it."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from functools import wraps


class ConfigError(ValueError):
    """A configuration value that cannot work."""


class FaultError(RuntimeError):
    """A fault outside the code that stops a run (a full disk): one line, exit status 1."""


class NonFiniteError(ConfigError):
    """NaN or inf losses or weights: most often a learning rate too high for the batch."""


def exit_on_user_error(main: Callable) -> Callable:
    """Print user errors as one line and exit 2 (faults: exit 1), instead of a traceback."""
    from hydra.errors import InstantiationException
    from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

    from semiseg.data.splits import SplitError

    user_errors = (ConfigError, SplitError, FileNotFoundError)

    @wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except user_errors as err:
            print(f"error: {one_line(err)}", file=sys.stderr)
            sys.exit(2)
        except InstantiationException as err:
            # Raised inside a `_target_` constructor (a weights file that does not match the
            # encoder, say): Hydra wraps it in three lines; the user needs the cause.
            if not isinstance(err.__cause__, user_errors):
                raise
            print(f"error: {one_line(err.__cause__)}", file=sys.stderr)
            sys.exit(2)
        except FaultError as err:
            print(f"error: {one_line(err)}", file=sys.stderr)
            sys.exit(1)
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
