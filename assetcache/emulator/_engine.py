"""Stored images, counters and the per-task semantics of the emulated API.

Nothing here knows about HTTP; :class:`Engine.run` takes the decoded task list
of one request and returns the ``data`` items and ``errors`` to answer with.
Callers hold :attr:`Engine.lock` around every call.

    >>> engine = Engine(retention_s=30 * 86400, keep_bytes=False, clock=Clock(frozen=True),
    ...                 url_root=lambda: "http://127.0.0.1:1")
    >>> data, errors = engine.run([{"taskType": "ping"}])
    >>> data
    [{'taskType': 'ping', 'pong': True}]
"""

from __future__ import annotations

import hashlib
import re
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from . import _state
from ._clock import Clock
from ._downscale import MAX_SIDE, Kept, keep
from ._generate import caption, output_uuid, png, task_seed
from ._media import EXTENSIONS, Media, MediaError, decode
from ._params import IMAGE_PARAMS, NEEDS_IMAGE, error_code, references

Json = dict[str, Any]

# Any UUID-shaped string names a stored image; taskUUIDs must be version 4.
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
_UUID4_RE = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", re.I
)

_DOCS = "https://runware.ai/docs/en"
_DOC_PAGES: dict[str, str] = {
    "authentication": "getting-started/how-to-connect",
    "imageUpload": "utilities/image-upload",
    "mediaStorage": "utilities/media-storage",
    "imageInference": "image-inference/api-reference",
    "upscale": "utilities/image-upscaling",
    "imageUpscale": "utilities/image-upscaling",
    "removeBackground": "utilities/image-background-removal",
    "imageBackgroundRemoval": "utilities/image-background-removal",
    "getResponse": "utilities/task-responses",
    "caption": "utilities/image-to-text",
    "imageCaption": "utilities/image-to-text",
    "controlNetPreprocess": "image-editing/controlnet-tools",
    "imageMasking": "image-editing/image-masking",
    "vectorize": "image-editing/vectorize",
    "videoInference": "video-inference/api-reference",
}

# What each consuming task answers with: the result's UUID and URL fields,
# or "text" for captions. Runware's generated outputs are stored like uploads
# ("a UUID v4 string of a previously uploaded or generated image").
_OUTPUTS: dict[str, tuple[str, str] | None] = {
    "imageInference": ("imageUUID", "imageURL"),
    "photoMaker": ("imageUUID", "imageURL"),
    "upscale": ("imageUUID", "imageURL"),
    "imageUpscale": ("imageUUID", "imageURL"),
    "removeBackground": ("imageUUID", "imageURL"),
    "imageBackgroundRemoval": ("imageUUID", "imageURL"),
    "vectorize": ("imageUUID", "imageURL"),
    "imageVectorize": ("imageUUID", "imageURL"),
    "controlNetPreprocess": ("guideImageUUID", "guideImageURL"),
    "imageControlNetPreProcess": ("guideImageUUID", "guideImageURL"),
    "imageMasking": ("maskImageUUID", "maskImageURL"),
    "videoInference": ("videoUUID", "videoURL"),
    "caption": None,
    "imageCaption": None,
}
_MULTI_RESULT = frozenset({"imageInference", "photoMaker", "videoInference"})

_MAX_RESULTS = 20


@dataclass(frozen=True)
class StoredImage:
    """One image held by the emulated server (a snapshot; mutating it changes nothing).

    ``data`` is None when ``keep_bytes=False``, for URL uploads (never fetched)
    and for images loaded from a state file (bytes are not persisted).
    ``size`` and ``sha256`` describe the bytes received; ``data``, ``format``,
    ``width`` and ``height`` what the server keeps: an image larger than
    ``max_side`` (2048 px) is kept downscaled (see ``_downscale``).
    ``width``/``height`` are None when unknown (no Pillow, URL uploads).
    """

    uuid: str
    format: str
    size: int
    sha256: str
    uploaded_at: float
    last_used_at: float
    data: bytes | None = None
    source_url: str | None = None
    width: int | None = None
    height: int | None = None
    #: "upload" (imageUpload / mediaStorage) or "generated" (a task's output).
    kind: str = "upload"


#: An upload decoded (and downscaled) ahead of the engine lock, or why it failed.
Staged = dict[int, "tuple[Media, Kept | None] | MediaError"]


@dataclass
class Counters:
    """Activity since start (or the last reset); see the package docstring for meanings."""

    upload_count: int = 0
    request_count: int = 0
    task_count: int = 0
    fault_count: int = 0
    delete_count: int = 0
    inference_count: int = 0
    generated_count: int = 0
    ws_connection_count: int = 0
    ws_message_count: int = 0
    ws_replayed_count: int = 0
    bytes_received: int = 0


class TaskError(Exception):
    """A task-level failure, reported in ``errors`` while other tasks may succeed."""

    def __init__(self, code: str, message: str, parameter: str) -> None:
        super().__init__(message)
        self.code, self.message, self.parameter = code, message, parameter


def error_item(
    code: str,
    message: str,
    parameter: str | None,
    task_type: str | None,
    task_uuid: str | None,
) -> Json:
    """An entry of the ``errors`` array, in the shape the real API uses."""
    page = _DOC_PAGES.get(task_type or "", "getting-started/introduction")
    anchor = f"#request-{parameter.lower()}" if parameter else ""
    return {
        "code": code,
        "message": message,
        "parameter": parameter,
        "taskType": task_type,
        "taskUUID": task_uuid,
        "documentation": f"{_DOCS}/{page}{anchor}",
    }


def _placeholder(task_uuid: str) -> Json:
    """A mediaStorage upload answer for media still processing (``mediaUUID`` "1")."""
    return {
        "taskType": "mediaStorage",
        "taskUUID": task_uuid,
        "operation": "upload",
        "mediaUUID": "1",
    }


def _invalid_reference(param: str) -> str:
    # Wording follows Runware's: a cached UUID that expired looks like bad input.
    return (
        f"Invalid value for {param} parameter. This parameter must be a UUID v4 string "
        "of a previously uploaded or generated image, a public URL, a data URI or a "
        "base64 encoded image."
    )


class Engine:
    """Image store + task processing for one emulated server."""

    def __init__(
        self,
        *,
        retention_s: float,
        keep_bytes: bool,
        clock: Clock,
        max_side: int | None = MAX_SIDE,
        url_root: Callable[[], str],
        state_path: Path | None = None,
    ) -> None:
        self.lock = threading.RLock()
        self.retention_s = retention_s
        # Content refused although its signature is fine, as the real service
        # refuses images it cannot decode (tests: server-side rejection).
        self.rejected_sha256: set[str] = set()
        self.keep_bytes = keep_bytes
        self.max_side = max_side
        self._staged: Staged = {}
        self.clock = clock
        self.state_path = state_path
        self.counters = Counters()
        self.uploads_by_sha256: Counter[str] = Counter()
        self._url_root = url_root
        self._images: dict[str, StoredImage] = {}
        self._seen_tasks: set[str] = set()
        # Results of deliveryMethod="async" tasks, handed out by getResponse.
        self._pending: dict[str, list[Json]] = {}
        self._dirty = False
        #: Answers of a mediaStorage upload that carry the "1" placeholder.
        self.media_placeholder = 0
        # taskUUID -> [placeholder answers left, the real result]
        self._processing: dict[str, tuple[int, Json]] = {}
        # Deleted image -> when it would have expired anyway (then the tombstone goes).
        self._deleted: dict[str, float] = {}
        self._seen_state: tuple[int, int, int] | None = None
        # Counters summed over every process that used the state file: the
        # file's totals as last read, and ours as of our last write.
        self.file_counters: dict[str, int] = {}
        self._saved_counters = Counters()
        if state_path is not None:
            self._load(state_path)

    # ------------------------------------------------------------------ store

    def live(self, image_uuid: str) -> StoredImage | None:
        """The stored image if it has not expired; expired ones are purged here."""
        key = image_uuid.lower()
        record = self._images.get(key)
        if record is None:
            return None
        if self.clock.now() >= record.last_used_at + self.retention_s:
            del self._images[key]
            self._dirty = True
            return None
        return record

    def live_images(self, kind: str = "upload") -> list[StoredImage]:
        """Every image of that kind still held, oldest first."""
        held = [
            r
            for r in list(self._images.values())
            if r.kind == kind and self.live(r.uuid) is not None
        ]
        return sorted(held, key=lambda r: r.uploaded_at)

    def remove(self, image_uuid: str) -> bool:
        """Delete an image; False if it was not (or no longer) held."""
        record = self.live(image_uuid)
        if record is None:
            return False
        del self._images[image_uuid.lower()]
        self._deleted[image_uuid.lower()] = record.last_used_at + self.retention_s
        self._dirty = True
        return True

    def receive(self, value: object) -> tuple[Media, Kept | None]:
        """Decode an upload and work out what is kept (no shared state: no lock needed)."""
        media = decode(value)
        if media.data is None:
            return media, None
        return media, keep(media.data, media.format, self.max_side)

    def stage(self, tasks: list[Any]) -> Staged:
        """Decode and downscale a request's uploads before taking the lock, so
        that one large image does not hold up every other request."""
        staged: Staged = {}
        for task in tasks:
            if not isinstance(task, dict):
                continue
            if task.get("taskType") == "imageUpload":
                value = task.get("image")
            elif task.get("taskType") == "mediaStorage" and task.get("operation") == "upload":
                value = task.get("media")
            else:
                continue
            try:
                staged[id(value)] = self.receive(value)
            except MediaError as exc:
                staged[id(value)] = exc
        return staged

    def _store(self, value: object) -> StoredImage:
        pre = self._staged.get(id(value))
        if isinstance(pre, MediaError):
            raise pre
        media, kept = pre if pre is not None else self.receive(value)
        digest = media.sha256  # a property that hashes: once per upload
        if digest in self.rejected_sha256:
            raise MediaError("the image could not be decoded")
        now = self.clock.now()
        record = StoredImage(
            uuid=str(uuid.uuid4()),
            format=kept.format if kept else media.format,
            size=media.size,
            sha256=digest,
            uploaded_at=now,
            last_used_at=now,
            data=(kept.data if kept else media.data) if self.keep_bytes else None,
            source_url=media.source_url,
            width=kept.width if kept else None,
            height=kept.height if kept else None,
        )
        self._images[record.uuid] = record
        self.counters.upload_count += 1
        self.uploads_by_sha256[record.sha256] += 1
        self._dirty = True
        return record

    def image_url(self, record: StoredImage) -> str:
        """Where GET serves the bytes; URL uploads get no extension (format unknown)."""
        ext = EXTENSIONS.get(record.format)
        suffix = f".{ext}" if ext else ""
        return f"{self._url_root()}/images/{record.uuid}{suffix}"

    # ------------------------------------------------------------ persistence

    def save_if_dirty(self) -> None:
        """Merge with the state file and write it, if anything persistent changed.

        Under the file's lock: what other processes wrote since we last looked
        is merged in first, so no process's uploads are lost (see ``_state``).
        """
        if self.state_path is None or not self._dirty:
            return
        with _state.locked(self.state_path):
            self._merge(_state.read(self.state_path))
            images = []
            for record in self._images.values():
                row = asdict(record)
                del row["data"]  # bytes stay in memory; metadata is what later runs need
                images.append(row)
            totals = self.persisted_counters()
            _state.write(
                self.state_path,
                {
                    "clock": self.clock.snapshot(),
                    "images": images,
                    "deleted": self._deleted,
                    "counters": totals,
                },
            )
            self.file_counters = totals
            self._saved_counters = replace(self.counters)
            self._seen_state = _state.signature(self.state_path)
        self._dirty = False

    def persisted_counters(self) -> dict[str, int]:
        """Counters over every process sharing the state file (this one's unsaved part too)."""
        mine, saved = vars(self.counters), vars(self._saved_counters)
        return {
            name: int(self.file_counters.get(name, 0)) + mine[name] - saved[name] for name in mine
        }

    def refresh(self) -> None:
        """Merge what other processes wrote, if the file changed since we last looked."""
        if self.state_path is None:
            return
        seen = _state.signature(self.state_path)
        if seen is not None and seen != self._seen_state:
            self._merge(_state.read(self.state_path))
            self._seen_state = seen

    def reset_counters(self) -> None:
        """Zero this process's counters (what is already in the state file stays)."""
        self.counters = Counters()
        self._saved_counters = Counters()
        self.uploads_by_sha256.clear()

    def save_counters(self) -> None:
        """Write the counters if they moved since the last write (e.g. when stopping)."""
        if self.counters != self._saved_counters:
            self._dirty = True
            self.save_if_dirty()

    def mark_dirty(self) -> None:
        """Force the next save_if_dirty to write (e.g. after the clock moved)."""
        self._dirty = True

    def _load(self, path: Path) -> None:
        if not path.parent.is_dir():
            return  # nothing to load; the folder is made on the first write
        with _state.locked(path):
            state = _state.read(path)
            if state is not None:
                self.clock.restore(state["clock"])
            self._merge(state)
            self._seen_state = _state.signature(path)

    def _merge(self, state: dict[str, Any] | None) -> None:
        """Add another writer's view: its images (unless deleted or expired here),
        its deletions, and its clock if it is ahead."""
        if state is None:
            return
        counters = state.get("counters")
        if isinstance(counters, dict):
            self.file_counters = {
                k: v for k, v in counters.items() if isinstance(v, int) and not isinstance(v, bool)
            }
        theirs = Clock(frozen=self.clock.frozen)
        theirs.restore(state["clock"])
        if theirs.now() > self.clock.now():
            self.clock.restore(state["clock"])
        now = self.clock.now()
        for key, until in state.get("deleted", {}).items():
            if isinstance(until, (int, float)) and until > now:
                self._deleted[key] = max(float(until), self._deleted.get(key, 0.0))
                self._images.pop(key, None)
        self._deleted = {k: v for k, v in self._deleted.items() if v > now}
        known = {f.name for f in fields(StoredImage)}
        for row in state["images"]:
            try:
                record = StoredImage(**{k: v for k, v in row.items() if k in known})
                float(record.last_used_at) + float(record.uploaded_at)
            except (TypeError, ValueError):
                raise _state.StateError(
                    self.state_path or "", "is corrupt (bad image record)"
                ) from None
            key = record.uuid.lower()
            if key in self._deleted or now >= record.last_used_at + self.retention_s:
                continue
            mine = self._images.get(key)
            if mine is None:
                self._images[key] = record
            elif record.last_used_at > mine.last_used_at:
                self._images[key] = replace(mine, last_used_at=record.last_used_at)

    # ------------------------------------------------------------------ tasks

    def run(self, tasks: list[Any], staged: Staged | None = None) -> tuple[list[Json], list[Json]]:
        """Process one request's tasks independently; return (data, errors).

        ``staged``: :meth:`stage` of the same ``tasks``, done outside the lock.
        """
        self._staged = staged or {}
        try:
            return self._run(tasks)
        finally:
            self._staged = {}

    def _run(self, tasks: list[Any]) -> tuple[list[Json], list[Json]]:
        data: list[Json] = []
        errors: list[Json] = []
        for task in tasks:
            self.counters.task_count += 1
            task_type = task.get("taskType") if isinstance(task, dict) else None
            task_uuid = task.get("taskUUID") if isinstance(task, dict) else None
            try:
                data.extend(self._run_one(task))
            except TaskError as exc:
                errors.append(
                    error_item(
                        exc.code,
                        exc.message,
                        exc.parameter,
                        task_type if isinstance(task_type, str) else None,
                        task_uuid if isinstance(task_uuid, str) else None,
                    )
                )
        return data, errors

    def _run_one(self, task: Any) -> list[Json]:
        if not isinstance(task, dict):
            raise TaskError("invalidTask", "Each task must be a JSON object.", "taskType")
        task_type = task.get("taskType")
        if not isinstance(task_type, str) or not task_type:
            raise TaskError("missingTaskType", "The taskType parameter is required.", "taskType")
        if task_type == "ping":
            item: Json = {"taskType": "ping", "pong": True}
            if isinstance(task.get("taskUUID"), str):
                item["taskUUID"] = task["taskUUID"]
            return [item]
        if task_type not in _OUTPUTS and task_type not in (
            "imageUpload",
            "mediaStorage",
            "getResponse",
        ):
            raise TaskError(
                "invalidTaskType",
                f"Invalid value for taskType parameter: {task_type!r} is not a supported "
                "task type.",
                "taskType",
            )
        task_uuid = task.get("taskUUID")
        if task_uuid is None:
            raise TaskError("missingTaskUUID", "The taskUUID parameter is required.", "taskUUID")
        if not isinstance(task_uuid, str) or not _UUID4_RE.match(task_uuid):
            raise TaskError(
                "invalidTaskUUID",
                "Invalid value for taskUUID parameter. This parameter must be a UUID v4 string.",
                "taskUUID",
            )
        if task_type == "getResponse":
            # Polls reuse the taskUUID of the task they ask about, by design.
            return self._get_response(task_uuid)
        if task_uuid.lower() in self._seen_tasks:
            raise TaskError(
                "conflictTaskUUID",
                f"A task with taskUUID {task_uuid} was already received. Every task must "
                "carry a new UUID v4.",
                "taskUUID",
            )
        if task_type == "imageUpload":
            results = self._image_upload(task, task_uuid)
        elif task_type == "mediaStorage":
            results = self._media_storage(task, task_uuid)
        else:
            results = self._consume(task, task_type, task_uuid)
        # Only accepted tasks claim their UUID, so a client may resend a task
        # that was rejected or never reached processing (e.g. a 503 fault).
        self._seen_tasks.add(task_uuid.lower())
        return results

    def _image_upload(self, task: Json, task_uuid: str) -> list[Json]:
        try:
            record = self._store(task.get("image"))
        except MediaError as exc:
            raise TaskError(
                "invalidImage", f"Invalid value for image parameter: {exc}.", "image"
            ) from None
        return [
            {
                "taskType": "imageUpload",
                "taskUUID": task_uuid,
                "imageUUID": record.uuid,
                "imageURL": self.image_url(record),
            }
        ]

    def _media_storage(self, task: Json, task_uuid: str) -> list[Json]:
        operation = task.get("operation")
        if operation == "upload":
            try:
                record = self._store(task.get("media"))
            except MediaError as exc:
                raise TaskError(
                    "invalidMedia", f"Invalid value for media parameter: {exc}.", "media"
                ) from None
            result: Json = {
                "taskType": "mediaStorage",
                "taskUUID": task_uuid,
                "operation": "upload",
                "mediaUUID": record.uuid,
                "mediaURL": self.image_url(record),
            }
            if self.media_placeholder:
                # Stored already (a client that re-sends uploads twice), but the
                # answer says "still processing"; getResponse hands out the result.
                self._processing[task_uuid.lower()] = (self.media_placeholder - 1, result)
                return [_placeholder(task_uuid)]
            return [result]
        if operation == "delete":
            media = task.get("media")
            if not isinstance(media, str) or not self.remove(media):
                raise TaskError(
                    "invalidMedia",
                    "Invalid value for media parameter. For the delete operation it must be "
                    "the mediaUUID of stored media that has not expired.",
                    "media",
                )
            self.counters.delete_count += 1
            return [
                {
                    "taskType": "mediaStorage",
                    "taskUUID": task_uuid,
                    "operation": "delete",
                    "mediaUUID": media.lower(),
                }
            ]
        raise TaskError(
            "invalidOperation",
            "Invalid value for operation parameter. Allowed values: upload, delete.",
            "operation",
        )

    def _consume(self, task: Json, task_type: str, task_uuid: str) -> list[Json]:
        used = self._check_references(task, task_type)
        count = task.get("numberResults", 1) if task_type in _MULTI_RESULT else 1
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= _MAX_RESULTS:
            raise TaskError(
                "invalidNumberResults",
                f"Invalid value for numberResults parameter. It must be an integer between 1 "
                f"and {_MAX_RESULTS}.",
                "numberResults",
            )
        # Only a task that is accepted counts as a use and slides the retention window.
        now = self.clock.now()
        for image_uuid in used:
            self._images[image_uuid] = replace(self._images[image_uuid], last_used_at=now)
            self._dirty = True
        self.counters.inference_count += 1
        results = [self._output(task, task_type, task_uuid, i) for i in range(count)]
        if task.get("deliveryMethod") == "async":
            # Like the real API: acknowledge now, hand results to getResponse.
            self._pending[task_uuid.lower()] = [{**r, "status": "success"} for r in results]
            return [{"taskType": task_type, "taskUUID": task_uuid}]
        return results

    def _check_references(self, task: Json, task_type: str) -> list[str]:
        """UUIDs of held images the task names, along the parameter map; raise
        ``invalid<Param>`` (naming the path) on the first one that is not held."""
        used: list[str] = []
        seen = False
        for path, value in references(task, task_type):
            seen = True
            if not isinstance(value, str) or not value.strip():
                raise TaskError(error_code(path), _invalid_reference(path), path)
            if _UUID_RE.match(value):
                if self.live(value) is None:
                    raise TaskError(error_code(path), _invalid_reference(path), path)
                used.append(value.lower())
            # Anything else is an inline image (URL, data URI, base64): nothing to look up.
        if not seen and task_type in NEEDS_IMAGE:
            required = IMAGE_PARAMS[task_type][0]
            raise TaskError(
                error_code(required),
                f"The {required} parameter is required for {task_type}.",
                required,
            )
        return used

    def _output(self, task: Json, task_type: str, task_uuid: str, index: int) -> Json:
        """One deterministic result; generated images are held and can be used as inputs."""
        item: Json = {"taskType": task_type, "taskUUID": task_uuid}
        fields_ = _OUTPUTS[task_type]
        if fields_ is None:
            item["text"] = caption(task)
            return item
        uuid_field, url_field = fields_
        new_uuid = output_uuid(task_uuid, index)
        if task_type == "videoInference":
            # Video is not generated: the result names a video the emulator does not serve.
            url = f"{self._url_root()}/videos/{new_uuid}.mp4"
            item.update({uuid_field: new_uuid, url_field: url})
            return item
        data = png(task_seed(task, index))
        now = self.clock.now()
        record = StoredImage(
            uuid=new_uuid,
            format="png",
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            uploaded_at=now,
            last_used_at=now,
            data=data,
            width=8,
            height=8,
            kind="generated",
        )
        self._images[new_uuid] = record
        self.counters.generated_count += 1
        self._dirty = True
        item.update({uuid_field: new_uuid, url_field: self.image_url(record)})
        if task.get("includeCost"):
            item["cost"] = 0
        return item

    def _get_response(self, task_uuid: str) -> list[Json]:
        processing = self._processing.get(task_uuid.lower())
        if processing is not None:
            left, result = processing
            if left > 0:
                self._processing[task_uuid.lower()] = (left - 1, result)
                return [_placeholder(task_uuid)]
            return [{**result, "status": "success"}]
        results = self._pending.get(task_uuid.lower())
        if results is None:
            raise TaskError(
                "taskFailedOrNotFound",
                f"No asynchronous task with taskUUID {task_uuid} is known.",
                "taskUUID",
            )
        # Cumulative, like the real endpoint: every poll returns all finished items.
        return [dict(r) for r in results]
