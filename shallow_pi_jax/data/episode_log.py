"""The bad episodes of a data stream: skipped ones counted, fatal ones remembered for the error message.

Every reader (rlds.py, lerobot.py) reports into one EpisodeLog per stream; its checks run inside
tf.data's parallel maps, so the log is shared across threads.
"""
from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class EpisodeLog:
    """Counts and remembers skipped bad episodes; keeps the message of a fatal one."""

    def __init__(self):
        self._lock = threading.Lock()
        self.skipped: dict[str, int] = {}      # reason kind → episodes skipped
        self.skipped_ids: list[str] = []
        self.errors: list[str] = []           # fatal problems, in the order the checks ran

    def fail(self, message: str):
        with self._lock:
            self.errors.append(message)
        raise ValueError(message)

    def error_for(self, tf_message: str) -> str | None:
        """The recorded problem TF reports (checks run in parallel, so not necessarily the last one)."""
        for message in self.errors:
            if message in tf_message:
                return message
        return self.errors[0] if self.errors else None

    def skip(self, episode: str, kind: str, message: str):
        with self._lock:
            if episode in self.skipped_ids:
                return  # seen again in a later epoch: already counted
            self.skipped_ids.append(episode)
            self.skipped[kind] = self.skipped.get(kind, 0) + 1
        log.warning("skipping bad episode: %s", message)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped_ids)
