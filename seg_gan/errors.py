"""One exception type for mistakes a user can fix (bad path, bad value, bad file).

`seg_gan.cli.main` prints these as a short message and exits with status 2, without a traceback.
"""


class UserError(Exception):
    """A bad input: the message names the path or value and what was expected."""


def find_user_error(error: BaseException | None) -> "UserError | None":
    """The UserError behind `error`, following the chain of causes (jsonargparse and Lightning wrap
    exceptions raised while they instantiate classes)."""
    while error is not None:
        if isinstance(error, UserError):
            return error
        error = error.__cause__ or error.__context__
    return None


def clean_message(error: BaseException) -> str:
    """The user-facing text of a `UserError`, also when a DataLoader worker re-raised it.

    PyTorch re-raises worker exceptions as the same type with the worker's traceback pasted into
    the message; the text after the last ``UserError: `` is the original message.
    """
    text = str(error)
    marker = "UserError: "
    return text.rsplit(marker, 1)[-1].strip() if "Original Traceback" in text else text


def require(condition: bool, message: str) -> None:
    """Raise UserError(message) unless `condition` holds: one line per checked option."""
    if not condition:
        raise UserError(message)
