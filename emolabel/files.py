"""Input files found: stdin's name, globs and object-store URIs expanded, plain-file tests, hashes.

Which files a run reads and what messages call them; reading them is inputs.py's.
"""

from __future__ import annotations

import os
from pathlib import Path

from emolabel.errors import InputError

STDIO = "-"


def display_name(path: str) -> str:
    return "<stdin>" if path == STDIO else text_name(path)


def text_name(path: str) -> str:
    """A file name as text: a name that is not UTF-8 (Python holds its bytes as surrogates, which
    a text column cannot) keeps them as backslash escapes, caf\\xe9.csv."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


GLOB_CHARS = "*?["


def is_uri(path: str) -> bool:
    return "://" in path


def expand_inputs(inputs: list[str] | str, folders: bool = False, absolute: bool = False) -> list[str]:
    """Expand globs (local or `scheme://` URIs) in file order; plain paths and URIs pass through.

    Names starting with _ or . (markers, hidden files) are left out of glob matches. `folders`: a
    folder may be given (an engine that reads folders whole); otherwise it is an error naming it.
    `absolute`: local paths made absolute (an engine's workers may have another working directory).
    """
    import glob as globlib

    if isinstance(inputs, str):
        inputs = [inputs]
    if not inputs:
        raise InputError("No input given: pass one or more files or globs.")
    out: list[str] = []
    globbed: dict[str, bool] = {}  # glob matches may overlap each other and named files: kept once
    for p in inputs:
        if p == STDIO:
            if len(inputs) > 1:
                raise InputError("stdin (-) cannot be one of several inputs; give files only.")
            return [p]
        if not any(c in p for c in GLOB_CHARS):
            if not is_uri(p) and not os.path.exists(p):
                if os.path.islink(p):
                    raise InputError(f"Input file {p} is a symbolic link to nothing (or a loop of links).")
                raise InputError(f"Input file {p} does not exist.")
            if not is_uri(p) and not folders and os.path.isdir(p):
                raise InputError(f"{p} is a folder; give files, or a glob such as '{p.rstrip('/')}/*.csv'.")
            out.append(os.path.abspath(p) if absolute and not is_uri(p) else p)
            continue
        found = [os.path.abspath(m) if absolute else m for m in globlib.glob(p, recursive=True)]
        matches = _glob_uri(p) if is_uri(p) else sorted(found)
        matches = [m for m in matches if not os.path.basename(m.rstrip("/")).startswith(("_", "."))]
        if not folders:
            matches = [m for m in matches if not os.path.isdir(m)]
        if not matches:
            raise InputError(f"No files match {p}.")
        out.extend(matches)
        globbed.update(dict.fromkeys(matches, True))
    seen: dict[str, str] = {}
    for p in out:  # a file given twice would be labelled twice, or (deduplicated) lose its second rows
        key = p if is_uri(p) else os.path.realpath(p)
        if key in seen and not globbed.get(p) and not globbed.get(seen[key]):
            raise InputError(f"{p} is given twice (also as {seen[key]}); give each input once.")
        seen.setdefault(key, p)
    return list(dict.fromkeys(seen.values()))


def _glob_uri(pattern: str) -> list[str]:
    """Expand a glob in an object-store URI by listing below its first glob-free folder.

    `*`, `?` and `[...]` match within one path segment, as a local glob; `**` is not supported.
    """
    from pathlib import PurePosixPath

    import pyarrow as pa
    import pyarrow.fs as pafs

    scheme, rest = pattern.split("://", 1)
    parts = rest.split("/")
    fixed = next(i for i, part in enumerate(parts) if any(c in part for c in GLOB_CHARS))
    base = "/".join(parts[:fixed])
    try:
        fs, base_path = pafs.FileSystem.from_uri(f"{scheme}://{base}")
    except (pa.ArrowException, ValueError, OSError) as e:
        raise InputError(f"Cannot list {scheme}://{base}: {e}") from None
    # `rest` and the listed paths are both relative to the filesystem root once the scheme is off
    # (s3://bucket/key lists as bucket/key); keep the pattern in that form.
    pat = (base_path.rstrip("/") + "/" + "/".join(parts[fixed:])) if base_path else "/".join(parts[fixed:])
    infos = fs.get_file_info(pafs.FileSelector(base_path, recursive=True, allow_not_found=True))
    want = PurePosixPath(pat)

    def matches(path: str) -> bool:
        p = PurePosixPath(path)
        return len(p.parts) == len(want.parts) and p.match(pat)

    return sorted(f"{scheme}://{i.path}" for i in infos if i.type == pafs.FileType.File and matches(i.path))


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a whole file, read in 1 MiB blocks (about 1 s per GB)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_regular_file(path: str) -> bool:
    """A plain file (not a pipe, FIFO, /dev/stdin or socket): one that can be read twice."""
    import stat

    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False
