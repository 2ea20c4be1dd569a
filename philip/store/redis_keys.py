"""Key names of the Redis backends: plain for one server, hash-tagged for a Redis Cluster.

A Redis Cluster refuses a command (or script, or transaction) whose keys lie in different hash slots,
and hashes only the part of a key between the first "{" and the next "}" when there is one (the hash
tag). ``ClusterKeys`` makes every key's id part its tag: the record ``session/ses_1`` is
``philip:session:{ses_1}``, and the stream ``session:ses_1`` (streams are named "<family>:<id>") is
``philip:stream:session:{ses_1}``, so a session's record and its stream land in one slot (and on one
node) while different sessions spread over the cluster.

The two layouts name the same data differently, so switching a deployment between a single server and
a cluster starts from an empty store.
"""

from __future__ import annotations


class Keys:
    """Key names on a single Redis server (and Sentinel-managed ones): no hash tags, as ever."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def _id(self, part: str) -> str:
        return part

    def record(self, kind: str, record_id: str) -> str:
        return f"{self.prefix}{kind}:{self._id(record_id)}"

    def index(self, kind: str) -> str:
        return f"{self.prefix}idx:{self._id(kind)}"

    def blob(self, blob_id: str) -> str:
        return f"{self.prefix}blob:{self._id(blob_id)}"

    def stream(self, stream: str) -> str:
        family, sep, rest = stream.partition(":")
        return f"{self.prefix}stream:{family}:{self._id(rest)}" if sep else f"{self.prefix}stream:{self._id(stream)}"

    def queue(self, queue: str) -> str:
        return f"{self.prefix}queue:{self._id(queue)}"

    def counter(self, key: str) -> str:
        return f"{self.prefix}counter:{self._id(key)}"

    def lease(self, key: str) -> str:
        return f"{self.prefix}lease:{self._id(key)}"


class ClusterKeys(Keys):
    """Key names on a Redis Cluster: each key's id part is its hash tag (see the module docstring).

    An id holding "}" still gives one key one slot (Redis takes the tag up to the first "}"), and the same
    id gives the same tag in every family, so co-location holds for any id. A prefix holding a "{...}"
    would put every key in one slot: correct, but the cluster would then serve from a single node.
    """

    def _id(self, part: str) -> str:
        return "{" + part + "}"
