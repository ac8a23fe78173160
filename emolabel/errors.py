"""One error contract: core code raises EmolabelError; the CLI shows its message as is."""


class EmolabelError(Exception):
    """A problem the user can fix; the message says what, where, and how."""


class InputError(EmolabelError):
    """The input table cannot be read as asked (missing file, bad format, bad row)."""


class OutputError(EmolabelError):
    """The output cannot be written (exists, unwritable folder, disk full)."""


class ModelError(EmolabelError):
    """A model folder is missing, incomplete or inconsistent."""
