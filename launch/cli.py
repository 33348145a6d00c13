"""The one error path of every entry point in ``launch/``: bad input is one line, a bug is a traceback.

    @cli.entry_point
    def main(argv=None): ...
        parser = cli.parser(__doc__)      # adds --debug

    if __name__ == "__main__":
        sys.exit(cli.exit_status(main()))

A known error (``known_errors``: the project's error types for configs, data, checkpoints, tokenizers,
exports, imports and suites, plus ``UsageError`` for bad command-line values) prints exactly one line
``error: <message>`` to stderr and makes ``main`` return 2; any other exception is a bug and propagates with
its traceback. ``--debug`` (or ``BILINGUAL_DEBUG=1``) re-raises known errors too. Every process reports its
own error (nothing is gated on process 0), so a multi-host run fails loudly on each host. When one entry point
calls another in-process (the demo trains its tokenizer through ``launch.train_tokenizer``), only the outer
one reports.

gin files and bindings are parsed with ``parse_gin``, which turns gin's parse errors (unknown configurable or
parameter, bad syntax, missing file) into ``ConfigError`` naming the file and line.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import re
import sys
import tokenize

DEBUG_ENV = "BILINGUAL_DEBUG"
_active = 0  # entry points running in this process (the outermost one reports)


class UsageError(ValueError):
    """A command-line value that cannot be used (a missing path, a conflicting option); the message names it."""


def known_errors() -> tuple[type[BaseException], ...]:
    """The error types reported as one line (imported when needed: an entry point may not load them all)."""
    from bilingual.artifacts import CheckpointError
    from bilingual.config import ConfigError
    from bilingual.evaluation.suites import SuiteError
    from bilingual.export.hf_config import HFConfigError
    from bilingual.export.hf_export import ExportError
    from bilingual.export.hf_import import HFImportError
    from bilingual.export.hf_state import StateDictMismatch
    from bilingual.heads import HeadError
    from bilingual.rows import DataError
    from bilingual.tokenizer import TokenizerError

    return (UsageError, ConfigError, DataError, CheckpointError, TokenizerError, ExportError, HFImportError,
            HFConfigError, StateDictMismatch, SuiteError, HeadError)


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (gin's context lines joined, its function reprs dropped)."""
    text = re.sub(r" \(<function [^>]*>\)", "", str(err))
    return " ".join(part.strip() for part in text.splitlines() if part.strip()) or type(err).__name__


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser showing ``doc`` as written, with the ``--debug`` flag every entry point has."""
    result = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    result.add_argument("--debug", action="store_true",
                        help=f"show the full traceback of an input error (or set {DEBUG_ENV}=1)")
    return result


def entry_point(main):
    """Decorates ``main(argv=None)``: a known error prints ``error: <message>`` and returns 2 (see above)."""

    @functools.wraps(main)
    def wrapper(argv=None):
        global _active
        args = sys.argv[1:] if argv is None else list(argv)
        debug = "--debug" in args or os.environ.get(DEBUG_ENV, "") not in ("", "0")
        _active += 1
        try:
            return main(args)
        except Exception as err:
            if debug or _active > 1 or not isinstance(err, known_errors()):
                raise
            print(f"error: {one_line(err)}", file=sys.stderr, flush=True)
            return 2
        finally:
            _active -= 1

    return wrapper


def exit_status(result) -> int:
    """The process exit status for what an entry point returned (an int is the status, anything else 0)."""
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


class _QuietGinSearch(logging.Filter):
    """gin logs every include it looks up ('Path not found' at ERROR for each search-path miss it then finds,
    'system_path_file_exists' at INFO)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("Path not found:", "system_path_file_exists:"))


def _guard_gin_system_path_reader() -> None:
    """gin also looks an include up as a file inside an importable package (``resource_reader``): for
    ``include 'models/tiny.gin'`` it asks ``importlib`` for a package ``models``, and when a namespace package of
    that name happens to be importable (a ``models/`` directory on ``sys.path``, e.g. in the working directory)
    its spec has no origin and gin fails with ``TypeError`` instead of going on to our search path (seen in
    CI). Such a package holds no gin file of ours: the guarded check answers "not there"."""
    import gin.config
    from gin import resource_reader

    original = resource_reader.system_path_file_exists

    def exists(path) -> bool:
        try:
            return original(path)
        except TypeError:
            return False

    exists.guarded = True
    gin.config._FILE_READERS[:] = [(reader, exists if check is original else check)
                                   for reader, check in gin.config._FILE_READERS]


def parse_gin(gin_files, gin_bindings) -> None:
    """Parse files then bindings (later ones win); gin's parse errors become ``ConfigError`` naming the file
    (and gin's line, when it gives one)."""
    import gin

    from bilingual.config import ConfigError

    _guard_gin_system_path_reader()
    quiet = _QuietGinSearch()
    logging.getLogger().addFilter(quiet)
    source = None
    try:
        for source in gin_files:
            gin.parse_config_file(source)
        source = None
        gin.parse_config(list(gin_bindings))
    except tokenize.TokenError as err:  # an unclosed bracket: gin adds no location
        message, (line, _) = err.args
        raise ConfigError(f"gin file {source or '(bindings)'}, line {line}: {message}") from err
    except (ValueError, SyntaxError, OSError) as err:
        where = f"gin file {source}" if source else "gin bindings"
        raise ConfigError(f"{where}: {one_line(err)}") from err
    finally:
        logging.getLogger().removeFilter(quiet)
