"""The one user-facing error type: its message is printed as a single line and the process exits with code 2."""


class TransferError(Exception):
    """A problem the user can fix (bad config, missing data, offline hub...). The message names the fix."""

    exit_code = 2


# A full disk, a quota, a file-size limit: errno values, and how Rust libraries (safetensors, tokenizers) word them.
_DISK_FULL = {28, 27, 122}  # ENOSPC, EFBIG, EDQUOT
_UNWRITABLE = {13, 20, 21, 30}  # EACCES, ENOTDIR, EISDIR, EROFS


def as_user_error(error: BaseException) -> "TransferError | None":
    """The user's fix for an environment fault (nowhere to write, no space left), else None (a bug)."""
    import re

    number = getattr(error, "errno", None)
    if number is None:
        found = re.search(r"os error (\d+)", str(error))
        number = int(found.group(1)) if found else None
    where = f" while writing {error.filename}" if getattr(error, "filename", None) else ""
    if number in _DISK_FULL:
        return TransferError(f"no space left on the disk (or a file-size limit reached){where}; free some space, or "
                             "point paths.output_dir and paths.cache_dir at a larger disk")
    if number in _UNWRITABLE and isinstance(error, OSError):
        return TransferError(f"cannot write {error.filename or 'a file'}: {error.strerror}; choose a folder you can "
                             "write (hydra.run.dir, paths.output_dir or paths.cache_dir)")
    return None
