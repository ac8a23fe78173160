"""One error contract: core code raises EmolabelError; the CLI shows its message as is."""


class EmolabelError(Exception):
    """A problem the user can fix; the message says what, where, and how."""


class InputError(EmolabelError):
    """The input table cannot be read as asked (missing file, bad format, bad row)."""


class OutputError(EmolabelError):
    """The output cannot be written (exists, unwritable folder, disk full)."""


class ModelError(EmolabelError):
    """A model folder is missing, incomplete or inconsistent."""


class EmolabelWarning(UserWarning):
    """Something the run can go on with but the user should know (the CLI prints it as a warning)."""


class OptionError(EmolabelError):
    """Options that cannot go together, or do not fit the input (the CLI exits 2 for these)."""


class InputOptionError(OptionError, InputError):
    """An option that does not fit the input (a `text_column` it lacks, a `prefix` whose columns it
    already has): a misused option (exit 2), and an InputError for code that catches those."""


class OutputIsInputError(OptionError, OutputError):
    """An output path that is (or holds) one of the run's inputs: refused even with overwrite (exit 2)."""


def cli_words(text: str, flags: dict[str, str] | None = None) -> str:
    """Options named `field` in the library's words, as the CLI's --field; `flags` names the few whose
    flag is spelled otherwise (finetune's `teachers` is --teacher)."""
    import re

    def flag(m: re.Match[str]) -> str:
        return (flags or {}).get(m.group(1)) or "--" + m.group(1).replace("_", "-")

    return re.sub(r"`([a-z][a-z0-9_]*)`", flag, text)


def to_click(e: EmolabelError, flags: dict[str, str] | None = None) -> Exception:
    """The CLI's form of a library error: options named `field` in the library's words become
    --field (or what `flags` says), and an OptionError is a usage error (exit 2); every other error
    exits 1."""
    import click

    text = cli_words(str(e), flags)
    return click.UsageError(text) if isinstance(e, OptionError) else click.ClickException(text)
