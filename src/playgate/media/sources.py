"""A video's own media (`source`): a folder of HLS/DASH files an admin points at, accepted only inside one of the
configured media roots (PLAYGATE_MEDIA_ROOTS), after every symbolic link is followed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from playgate.errors import Invalid
from playgate.media.clips import MASTER_PLAYLIST

MAX_SOURCE_CHARS = 1000


def check_source(text: str, roots: Sequence[Path]) -> str:
    """The real path of the folder `text` names, when it lies inside one of `roots` and holds a master playlist;
    Invalid (422, field `source`) otherwise, saying why."""
    if not roots:
        raise Invalid("No media roots are configured: set PLAYGATE_MEDIA_ROOTS to allow own media.", field="source")
    if len(text) > MAX_SOURCE_CHARS or "\x00" in text or not Path(text).is_absolute():
        raise Invalid("The source must be an absolute folder path.", field="source")
    try:
        real = Path(text).resolve(strict=True)
    except (OSError, RuntimeError):
        raise Invalid(f"No folder {text!r} on the server.", field="source") from None
    if not any(real.is_relative_to(root.resolve()) for root in roots):
        raise Invalid(f"{text!r} is outside the media roots (PLAYGATE_MEDIA_ROOTS).", field="source")
    if not real.is_dir() or not (real / MASTER_PLAYLIST).is_file():
        raise Invalid(f"{text!r} is not a folder with a {MASTER_PLAYLIST} in it.", field="source")
    return str(real)
