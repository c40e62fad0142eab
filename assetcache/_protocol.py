"""The Runware wire protocol, as pure functions: build a request, read an answer.

No I/O here. A request body is a list of parts (``bytes``, or a
:class:`Payload` whose base64 text is produced in chunks), so that a 200 MB
image is never held as one base64 string, the Content-Length is known in
advance, and a retry can produce the same body again.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import time
import uuid as uuid_mod
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

from ._errors import (
    AuthenticationError,
    InsufficientCredits,
    ProtocolError,
    RateLimited,
    RejectedInput,
    RemoteError,
    ServerError,
    SourceError,
    UnknownImage,
)
from ._hashing import Hasher
from ._taskmap import match, names_of

#: Matched whole (``fullmatch``): ``$`` would also accept a final newline.
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
#: Raw bytes per base64 chunk: a multiple of 3, so chunks encode without padding.
_B64_CHUNK = 3 * (1 << 18)
#: Per-task codes worth re-sending (with a fresh taskUUID).
TRANSIENT_CODES = frozenset(
    {
        "rateLimitExceeded",
        "timeoutProvider",
        "uploadFailed",
        "conflictTaskUUID",
        "internalServerError",
        "serverError",
        "timeout",
        "serviceUnavailable",
    }
)


def is_uuid(value: object) -> bool:
    """A UUID in its 36-character text form, nothing before or after it."""
    return isinstance(value, str) and _UUID.fullmatch(value) is not None


def canonical_uuid(value: str) -> str:
    """The one spelling stored, compared and printed: lower case."""
    return value.lower()


def server_date(headers: dict[str, str] | Any) -> float | None:
    """The server's own time from an answer's ``Date`` header (epoch seconds)."""
    value = headers.get("date") if headers is not None else None
    if not isinstance(value, str) or not value.strip():
        return None
    import email.utils

    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return when.timestamp()


def new_task_uuid() -> str:
    return str(uuid_mod.uuid4())


def new_task_uuids(n: int) -> list[str]:
    """``n`` random (version 4) task UUIDs from one read of the system's
    randomness, not one system call each (a batch's request has dozens)."""
    raw = os.urandom(16 * n)
    return [str(uuid_mod.UUID(bytes=raw[i : i + 16], version=4)) for i in range(0, 16 * n, 16)]


@dataclass(slots=True)
class Payload:
    """The bytes of one upload, produced on demand.

    Exactly one of ``data`` (in memory), ``open`` (re-openable stream: a path
    or a spooled file) or ``url`` (sent as text, the server fetches it) is set.
    ``expected_hash`` makes the streamed bytes verify against the hash the
    cache key was made of: a file rewritten between hashing and sending
    aborts the request instead of caching a UUID for the wrong content.
    """

    label: str
    size: int
    media_type: str
    data: bytes | None = None
    open: Callable[[], IO[bytes]] | None = None
    url: str | None = None
    expected_hash: str | None = None

    def encoded_length(self) -> int:
        if self.url is not None:
            return len(json.dumps(self.url)) - 2
        return len(f"data:{self.media_type};base64,") + 4 * ((self.size + 2) // 3)

    def chunks(self) -> Iterator[bytes]:
        """The JSON string content (no quotes) of this image, in chunks."""
        if self.url is not None:
            yield json.dumps(self.url)[1:-1].encode()
            return
        yield f"data:{self.media_type};base64,".encode()
        b64encode = _b64encoder()
        if self.data is not None:
            view = memoryview(self.data)
            for i in range(0, len(view), _B64_CHUNK):
                yield b64encode(view[i : i + _B64_CHUNK])
            return
        assert self.open is not None
        hasher = Hasher()
        with self.open() as stream:
            while True:
                block = _read_exact(stream, _B64_CHUNK)
                if not block:
                    break
                hasher.update(block)
                if hasher.size > self.size:
                    break
                yield b64encode(block)
        if hasher.size != self.size or (
            self.expected_hash is not None and hasher.hexdigest() != self.expected_hash
        ):
            # Raised before the closing bytes: the request is cut short, so the
            # server never stores the wrong content under our key.
            raise SourceError(self.label, "changed while being uploaded; try again")


@functools.cache
def _b64encoder() -> Callable[[bytes | memoryview], bytes]:
    """pybase64's SIMD encoder (a batch's bodies are nearly all base64; the
    standard library's encodes some 20 times slower), else the standard one."""
    try:
        from pybase64 import b64encode
    except ImportError:  # a platform without its wheel, built without a compiler
        return base64.b64encode
    return b64encode


def _read_exact(stream: IO[bytes], n: int) -> bytes:
    parts = []
    while n > 0:
        block = stream.read(n)
        if not block:
            break
        parts.append(block)
        n -= len(block)
    return b"".join(parts)


@dataclass(slots=True)
class Task:
    """One upload task in a request."""

    task_uuid: str
    payload: Payload
    task_type: str = "imageUpload"

    def head(self) -> bytes:
        if self.task_type == "mediaStorage":
            return (
                '{"taskType": "mediaStorage", "taskUUID": "'
                + self.task_uuid
                + '", "operation": "upload", "media": "'
            ).encode()
        return (
            '{"taskType": "imageUpload", "taskUUID": "' + self.task_uuid + '", "image": "'
        ).encode()


_TAIL = b'"}'


def body_length(tasks: Sequence[Task]) -> int:
    if not tasks:
        return 2
    inner = sum(len(t.head()) + t.payload.encoded_length() + len(_TAIL) for t in tasks)
    return 2 + inner + 2 * (len(tasks) - 1)  # "[", "]" and ", " between tasks


def iter_body(tasks: Sequence[Task]) -> Iterator[bytes]:
    yield b"["
    for i, task in enumerate(tasks):
        if i:
            yield b", "
        yield task.head()
        yield from task.payload.chunks()
        yield _TAIL
    yield b"]"


def json_body(tasks: Sequence[dict[str, Any]]) -> bytes:
    return json.dumps(list(tasks)).encode()


# -- answers -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskResult:
    task_uuid: str
    image_uuid: str
    image_url: str | None
    raw: dict[str, Any]


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    import email.utils  # here: HTTP dates are rare, and the module is slow to import

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(
    attempt: int, retry_after: float | None, *, base: float, cap: float, jitter: float
) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based).

    Exponential with "equal jitter" (half fixed, half random, ``jitter`` in
    [0, 1)), so a herd of clients spreads out but none retries instantly;
    the server's ``Retry-After`` wins when it asks for longer.
    """
    exp = min(cap, base * (2**attempt))
    delay = exp / 2 + (exp / 2) * jitter
    if retry_after is not None:
        delay = max(delay, min(retry_after, max(cap, 60.0)))
    return delay


def error_from_object(
    obj: dict[str, Any], status: int | None, redact: Callable[[str], str]
) -> RemoteError:
    """Map one server error object to our exception class."""
    code = obj.get("code")
    code = code if isinstance(code, str) else None
    parameter = obj.get("parameter")
    if isinstance(parameter, list):
        parameter = ",".join(str(p) for p in parameter)
    elif parameter is not None and not isinstance(parameter, str):
        parameter = str(parameter)
    task_uuid = obj.get("taskUUID") if isinstance(obj.get("taskUUID"), str) else None
    message = obj.get("message")
    message = redact(message) if isinstance(message, str) else "no message"
    text = f"Runware rejected the request: {code or 'error'}"
    if parameter:
        text += f" on {parameter}"
    text += f": {message}"
    cls: type[RemoteError]
    if code == "invalidApiKey" or status == 401:
        cls = AuthenticationError
        text = "Runware rejected the API key (invalidApiKey); check RUNWARE_API_KEY"
    elif code == "insufficientCredits" or status == 402:
        cls = InsufficientCredits
    elif code == "rateLimitExceeded" or status == 429:
        cls = RateLimited
    elif code in TRANSIENT_CODES or (status is not None and status >= 500):
        cls = ServerError
    elif code and code.startswith("invalid") and parameter and parameter not in ("image", "media"):
        cls = UnknownImage if media_error(code, parameter, message) else RejectedInput
    elif code and code.startswith("invalid") or status is not None and 400 <= status < 500:
        cls = RejectedInput
    else:
        cls = RemoteError
    return cls(text, code=code, parameter=parameter, task_uuid=task_uuid, status=status)


class StillProcessing(ProtocolError):
    """A mediaStorage answer whose ``mediaUUID`` is the placeholder ``"1"``: the
    upload is stored but not ready. Poll ``getResponse`` for its taskUUID; never
    send it again (that would be a second upload)."""


#: The mediaUUID Runware answers while a mediaStorage upload is still processing.
PLACEHOLDER_UUID = "1"


def is_placeholder(item: dict[str, Any], uuid_field: str) -> bool:
    if uuid_field != "mediaUUID":
        return False
    value = item.get(uuid_field)
    return str(value).strip() == PLACEHOLDER_UUID or (
        value is None and item.get("status") in ("processing", "pending")
    )


def get_response_body(task_uuids: Sequence[str]) -> bytes:
    """One request polling ``getResponse`` for each taskUUID."""
    return json_body([{"taskType": "getResponse", "taskUUID": t} for t in task_uuids])


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (ServerError, RateLimited, ProtocolError)):
        return True
    return isinstance(exc, RemoteError) and exc.code in TRANSIENT_CODES


def parse_response(
    status: int,
    headers: dict[str, str],
    body: bytes,
    task_uuids: Sequence[str],
    redact: Callable[[str], str],
    uuid_field: str = "imageUUID",
    contents: dict[str, str] | None = None,
) -> dict[str, TaskResult | RemoteError]:
    """Per-task outcomes of one request, or raise a request-level error.

    Raises when the whole request failed (auth, credits, 429/5xx without
    per-task detail, unreadable body). Otherwise every task UUID gets a
    :class:`TaskResult` or a :class:`RemoteError`: results with a missing or
    malformed UUID, and tasks the answer does not mention, become a transient
    :class:`ProtocolError` (re-sent, never cached). Results for task UUIDs we
    did not send are ignored.

    Which answers can carry results (see ``README.md``, "How it decides"):
    a 2xx, or a 4xx that also carries per-task errors for tasks of this
    request (a batch where some tasks failed: the others' results stand).
    Never a 1xx/3xx (a redirect is not Runware's answer) or a 5xx. A task
    named in ``errors`` is failed even if ``data`` names it too; a task
    answered with two different UUIDs, or one UUID answered for tasks of
    different content (``contents``: task UUID -> content identity; by
    default every task is a different content), is a :class:`ProtocolError`
    for each task involved: none of them is cached.
    """
    retry_after = parse_retry_after(headers.get("retry-after"))
    if status < 200 or 300 <= status < 400:
        raise ProtocolError(
            f"unexpected answer from Runware (HTTP {status}); results in it are not trusted",
            status=status,
            retry_after=retry_after,
        )
    try:
        doc = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        # RecursionError: a body nested thousands deep ("[[[[...") is garbage, not a crash.
        doc = None
    if not isinstance(doc, dict):
        if status == 401:
            raise AuthenticationError(
                "Runware rejected the API key (HTTP 401); check RUNWARE_API_KEY", status=401
            )
        if status == 429:
            raise RateLimited("Runware rate limit (HTTP 429)", status=429, retry_after=retry_after)
        if status >= 500 or status == 408:
            raise ServerError(
                f"Runware server error (HTTP {status})", status=status, retry_after=retry_after
            )
        if status >= 400:
            raise RejectedInput(f"Runware refused the request (HTTP {status})", status=status)
        raise ProtocolError(
            f"unreadable answer from Runware (HTTP {status}, not a JSON object)", status=status
        )

    wanted = set(task_uuids)
    outcomes: dict[str, TaskResult | RemoteError] = {}
    general: RemoteError | None = None
    errors = doc.get("errors")
    if isinstance(errors, dict):
        errors = [errors]
    if isinstance(errors, list):
        for obj in errors:
            if not isinstance(obj, dict):
                continue
            err = error_from_object(obj, status if status >= 400 else None, redact)
            err.retry_after = retry_after  # type: ignore[attr-defined]
            tid = err.task_uuid
            if tid in wanted:
                outcomes.setdefault(tid, err)
            elif tid is None or obj.get("taskType") == "authentication":
                general = general or err
    failed_tasks = set(outcomes)
    carries = 200 <= status < 300 or (400 <= status < 500 and bool(failed_tasks))
    data = doc.get("data") if carries else None
    if isinstance(data, dict):
        data = [data]
    answered: dict[str, str] = {}  # task -> the UUID it was answered with
    if isinstance(data, list):
        for item in data:
            if not isinstance(item, dict):
                continue
            tid = item.get("taskUUID")
            if not isinstance(tid, str) or tid not in wanted or tid in failed_tasks:
                continue
            image_uuid = item.get(uuid_field)
            if is_placeholder(item, uuid_field):
                outcomes[tid] = StillProcessing(
                    f"Runware is still processing task {tid}", task_uuid=tid, code="processing"
                )
                continue
            if not is_uuid(image_uuid):
                outcomes[tid] = ProtocolError(
                    f"Runware answered without a valid {uuid_field} for task {tid}",
                    task_uuid=tid,
                    code="malformedResult",
                )
                failed_tasks.add(tid)
                continue
            image_uuid = canonical_uuid(str(image_uuid))
            seen = answered.get(tid)
            if seen is not None:
                if seen != image_uuid:
                    outcomes[tid] = ProtocolError(
                        f"Runware answered task {tid} with two different {uuid_field}s "
                        f"({seen} and {image_uuid}); neither is used",
                        task_uuid=tid,
                        code="conflictingResult",
                    )
                    failed_tasks.add(tid)
                continue
            answered[tid] = image_uuid
            url = item.get("imageURL") or item.get("mediaURL")
            outcomes[tid] = TaskResult(tid, image_uuid, url if isinstance(url, str) else None, item)

    by_uuid: dict[str, list[str]] = {}
    for tid, outcome in outcomes.items():
        if isinstance(outcome, TaskResult):
            by_uuid.setdefault(outcome.image_uuid, []).append(tid)
    for image_uuid, tids in by_uuid.items():
        if len({(contents or {}).get(t, t) for t in tids}) > 1:
            for tid in tids:
                outcomes[tid] = ProtocolError(
                    f"Runware answered {image_uuid} for {len(tids)} different images in one "
                    "request; it is not used for any of them",
                    task_uuid=tid,
                    code="duplicateResult",
                )

    if general is not None and not any(isinstance(v, TaskResult) for v in outcomes.values()):
        raise general
    if status >= 400 and not outcomes:
        if status == 429:
            raise RateLimited("Runware rate limit (HTTP 429)", status=429, retry_after=retry_after)
        if status >= 500 or status == 408:
            raise ServerError(
                f"Runware server error (HTTP {status})", status=status, retry_after=retry_after
            )
        raise RejectedInput(f"Runware refused the request (HTTP {status})", status=status)
    for tid in task_uuids:
        if tid not in outcomes:
            outcomes[tid] = general or ProtocolError(
                f"Runware's answer (HTTP {status}) has no result for task {tid}",
                task_uuid=tid,
                code="missingResult",
                retry_after=retry_after,
            )
    return outcomes


def media_gone(answer: object) -> bool:
    """A ``mediaStorage`` delete answer saying the UUID is not (or no longer) held."""
    return isinstance(answer, RemoteError) and answer.code == "invalidMedia"


def parse_task_response(
    status: int,
    headers: dict[str, str],
    body: bytes,
    task_uuids: Sequence[str],
    redact: Callable[[str], str],
) -> dict[str, list[dict[str, Any]] | RemoteError]:
    """Per-task outcomes of a request of any tasks: the ``data`` objects of each
    task that succeeded (all of them: ``numberResults`` may give several), or its
    error. Request-level failures raise, as in :func:`parse_response`."""
    outcomes = parse_response(status, headers, body, task_uuids, redact, uuid_field="taskUUID")
    items: dict[str, list[dict[str, Any]]] = {}
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        doc = None
    data = doc.get("data") if isinstance(doc, dict) else None
    if isinstance(data, dict):
        data = [data]
    for item in data if isinstance(data, list) else ():
        if isinstance(item, dict) and isinstance(item.get("taskUUID"), str):
            items.setdefault(item["taskUUID"], []).append(item)
    out: dict[str, list[dict[str, Any]] | RemoteError] = {}
    for tid, outcome in outcomes.items():
        if isinstance(outcome, TaskResult):
            out[tid] = items.get(tid, [outcome.raw])
        else:
            out[tid] = outcome
    return out


#: ``use()``'s caller predicate: gets what ``fn`` raised or returned.
UnknownPredicate = Callable[[object], bool]


def rejects_uuid(obj: object, uuid: str | None = None, parameters: Collection[str] = ()) -> bool:
    """Whether ``obj`` (an exception, or a value such as an ``httpx.Response``) is
    Runware saying it does not know an image UUID it was given (``use()``).

    ``parameters``: the task parameters the UUID went in (only a rejection of
    one of them counts). The rule itself is :func:`unknown_media`, shared with
    the task path.

    >>> rejects_uuid(UnknownImage("...", code="invalidSeedImage", parameter="seedImage"))
    True
    """
    known = [p for p in parameters if isinstance(p, str)]
    found = unknown_media(obj, uuid=uuid, known=known)
    if found is None:
        return False
    if not known or not found.parameters:
        return True
    leaves = {names_of(p)[-1].lower() for p in known if names_of(p)}
    return any(
        (bool(names_of(p)) and names_of(p)[-1].lower() in leaves) or bool(match(p, known))
        for p in found.parameters
    )


# -- "I no longer have this media": the one rule -------------------------------------
#
# Runware has no dedicated "expired" code: an upload it deleted is reported
# like bad input on the parameter that carried it (``invalidSeedImage`` on
# ``seedImage``), and the newer SDKs also expect ``mediaNotFound``,
# ``mediaExpired`` or any code ending in ``NotFound``/``Expired``. The SDKs
# wrap these: ``runware-sdk``'s ``RunwareError`` keeps only a category
# (``notFound``, ``validation``) and the parameter; the WebSocket SDK's
# ``RunwareAPIError`` keeps the raw error object. Their classes are recognised
# by name and module, never imported: both SDKs install a package named
# ``runware`` and cannot share an environment.

#: Words that mark a parameter as one that takes an image.
_MEDIA_WORDS = ("image", "mask", "frame", "reference", "guide")
#: An upload's own input: bad bytes there are not an unknown UUID.
_UPLOAD_INPUTS = frozenset({"image", "media"})
#: ``<thing>NotFound`` / ``<thing>Expired`` about something that is not media.
_NOT_MEDIA = (
    "task",
    "model",
    "lora",
    "vae",
    "embedding",
    "webhook",
    "account",
    "apikey",
    "token",
    "session",
    "user",
    "organization",
    "workspace",
    "environment",
    "app",
    "endpoint",
)
#: Runware's wording for a UUID it does not hold.
_UNKNOWN_WORDING = "previously uploaded"


@dataclass(frozen=True, slots=True)
class MediaRejection:
    """The server said it does not know an image it was given.

    ``parameters``: where, as the server named them (``referenceImages[2]``,
    ``inputs.seedImage``, ``guideImage``); empty when it did not say, in which
    case every image of the task is suspect. ``error`` is what carried it.
    """

    parameters: tuple[str, ...]
    code: str | None
    error: object


def _param_list(parameter: object) -> list[str]:
    if isinstance(parameter, str):
        return [p.strip() for p in parameter.split(",") if p.strip()]
    if isinstance(parameter, (list, tuple)):
        return [p.strip() for p in parameter if isinstance(p, str) and p.strip()]
    return []


def is_media_parameter(parameter: str, known: Sequence[str] = ()) -> bool:
    """Whether ``parameter`` takes an image: one of ``known`` (the places a task
    put its images), or a name such as ``seedImage``, ``regions[0].mask``."""
    if known and match(parameter, known):
        return True
    if parameter.strip().lower() in _UPLOAD_INPUTS:
        return False
    return any(word in step.lower() for step in names_of(parameter) for word in _MEDIA_WORDS)


def media_error(
    code: object, parameter: object, message: object = None, known: Sequence[str] = ()
) -> tuple[str, ...] | None:
    """The rule, on one raw Runware error object: ``None`` when it is not about
    an unknown image, else the image parameters it names (maybe none)."""
    if not isinstance(code, str) or not code:
        return None
    params = _param_list(parameter)
    low = code.lower()
    if low.endswith(("notfound", "expired")):
        stem = low[: -len("notfound")] if low.endswith("notfound") else low[: -len("expired")]
        if params:
            named = tuple(p for p in params if is_media_parameter(p, known))
            return named or None
        if stem.startswith(_NOT_MEDIA):
            return None
        return ()
    if not low.startswith("invalid") or low == "invalid":
        return None
    wanted = low[len("invalid") :]
    if not params:
        # ``invalidSeedImage`` with no parameter: the code names it.
        name = code[len("invalid")]
        guess = name.lower() + code[len("invalid") + 1 :]
        return (guess,) if is_media_parameter(guess, known) else None
    worded = isinstance(message, str) and _UNKNOWN_WORDING in message.lower()
    named = tuple(
        p
        for p in params
        if is_media_parameter(p, known) and (worded or wanted in (s.lower() for s in names_of(p)))
    )
    return named or None


def unknown_media(
    obj: object, *, uuid: str | None = None, known: Sequence[str] = ()
) -> MediaRejection | None:
    """Whether ``obj`` (raised or returned by whatever sent a task) is Runware
    saying it does not know an image it was given; which parameters, if it says.

    Reads this project's :class:`RemoteError`, ``runware-sdk``'s
    ``RunwareError``, the WebSocket SDK's ``RunwareAPIError`` (and its
    ``RunwareError``), an ``httpx``/``httpx2`` ``Response`` or
    ``HTTPStatusError`` whose JSON body holds such an error, and a decoded
    answer (``{"errors": [...]}``); exceptions are followed along their causes.
    With ``uuid``, a response whose request is known counts only where the
    rejected parameter held that UUID.

    >>> err = UnknownImage("gone", code="invalidSeedImage", parameter="seedImage")
    >>> unknown_media(err).parameters
    ('seedImage',)
    """
    seen = 0
    while obj is not None and seen < 8:
        found = _rejection_one(obj, uuid, known)
        if found is not None:
            return found
        if not isinstance(obj, BaseException):
            return None
        obj = obj.__cause__ or (None if obj.__suppress_context__ else obj.__context__)
        seen += 1
    return None


def _from(found: tuple[str, ...] | None, code: object, obj: object) -> MediaRejection | None:
    if found is None:
        return None
    return MediaRejection(found, code if isinstance(code, str) else None, obj)


def _rejection_one(obj: object, uuid: str | None, known: Sequence[str]) -> MediaRejection | None:
    if isinstance(obj, RemoteError):
        if obj.status == 402 or isinstance(obj, InsufficientCredits):
            return None
        return _from(media_error(obj.code, obj.parameter, obj.message, known), obj.code, obj)
    cls = type(obj)
    module = getattr(cls, "__module__", "") or ""
    root = module.split(".")[0]
    if root == "runware":
        return _sdk_rejection(obj, cls.__name__, known)
    from ._httpx import is_response, is_status_error  # both libraries, never imported

    status_error = is_status_error(obj)
    if root in ("httpx", "httpx2") or status_error or is_response(obj):
        named_error = status_error or cls.__name__ == "HTTPStatusError"
        response = getattr(obj, "response", None) if named_error else obj
        if response is not None and hasattr(response, "status_code"):
            return _response_rejection(response, obj, uuid, known)
        return None
    if isinstance(obj, dict) and "errors" in obj:
        return _errors_rejection(obj.get("errors"), obj, None, uuid, known)
    return None


def _sdk_rejection(obj: Any, name: str, known: Sequence[str]) -> MediaRejection | None:
    data = getattr(obj, "error_data", None)
    if name == "RunwareAPIError" and isinstance(data, dict):  # the WebSocket SDK
        code = data.get("code", getattr(obj, "code", None))
        found = media_error(code, data.get("parameter"), data.get("message"), known)
        return _from(found, code, obj)
    ierror = getattr(obj, "ierror", None)
    if ierror is not None:  # the WebSocket SDK's RunwareError(IError)
        code = getattr(ierror, "error_code", None)
        found = media_error(
            code, getattr(ierror, "parameter", None), getattr(ierror, "error_message", None), known
        )
        return _from(found, code, obj)
    if name != "RunwareError":
        return None
    # runware-sdk: the raw code is gone; ``notFound`` covers *NotFound/*Expired,
    # ``validation`` every ``invalid*`` (only an image parameter counts).
    code = getattr(obj, "code", None)
    status = getattr(obj, "status_code", None)
    if status is not None and status not in (400, 404, 410):
        return None
    params = _param_list(getattr(obj, "parameter", None))
    if code == "notFound":
        named = tuple(p for p in params if is_media_parameter(p, known))
        if params and not named:
            return None
        return MediaRejection(named, "notFound", obj)
    if code == "validation":
        named = tuple(p for p in params if is_media_parameter(p, known))
        return MediaRejection(named, "validation", obj) if named else None
    return None


def _response_rejection(
    response: Any, obj: object, uuid: str | None, known: Sequence[str]
) -> MediaRejection | None:
    status = getattr(response, "status_code", None)
    if status == 402 or (isinstance(status, int) and status < 400 and status != 200):
        return None
    try:
        doc = json.loads(response.content)
    except Exception:  # unread stream, not JSON, nested too deep: not a Runware answer
        return None
    if not isinstance(doc, dict):
        return None
    return _errors_rejection(doc.get("errors"), obj, _request_tasks(response), uuid, known)


def _errors_rejection(
    errors: object,
    obj: object,
    tasks: dict[str, dict[str, Any]] | None,
    uuid: str | None,
    known: Sequence[str],
) -> MediaRejection | None:
    if isinstance(errors, dict):
        errors = [errors]
    if not isinstance(errors, list):
        return None
    params: list[str] = []
    code: str | None = None
    hit = False
    unnamed = False
    for err in errors:
        if not isinstance(err, dict):
            continue
        found = media_error(err.get("code"), err.get("parameter"), err.get("message"), known)
        if found is None:
            continue
        if uuid is not None and tasks is not None:
            task = tasks.get(str(err.get("taskUUID", "")).lower())
            held = None if task is None else _holds(task, _param_list(err.get("parameter")), uuid)
            if held is False:
                continue
        hit = True
        code = code or (err.get("code") if isinstance(err.get("code"), str) else None)
        if found:
            params.extend(p for p in found if p not in params)
        else:
            unnamed = True
    if not hit:
        return None
    return MediaRejection(() if unnamed else tuple(params), code, obj)


def _request_tasks(resp: Any) -> dict[str, dict[str, Any]] | None:
    """The tasks of the request behind ``resp``, by taskUUID, when its body is known."""
    try:
        body = json.loads(resp.request.content)
    except Exception:  # no request attached, a streamed body, not JSON
        return None
    items = body if isinstance(body, list) else [body]
    return {str(t.get("taskUUID", "")).lower(): t for t in items if isinstance(t, dict)}


def _holds(task: dict[str, Any], params: list[str], uuid: str) -> bool | None:
    """Whether the rejected parameter of ``task`` held ``uuid`` (None: not found)."""
    found: list[object] = []
    for param in params:
        names = names_of(param)
        if names:
            _collect(task, names[-1], found, 0)
    if not found:
        return None
    wanted = uuid.lower()
    return any(wanted in _strings(value) for value in found)


def _collect(node: object, key: str, out: list[object], depth: int) -> None:
    if depth > 6:
        return
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                out.append(v)
            else:
                _collect(v, key, out, depth + 1)
    elif isinstance(node, list):
        for v in node:
            _collect(v, key, out, depth + 1)


def _strings(value: object) -> set[str]:
    if isinstance(value, str):
        return {value.lower()}
    if isinstance(value, list):
        out = set()
        for v in value:
            if isinstance(v, str):
                out.add(v.lower())
            elif isinstance(v, dict):
                out |= {x.lower() for x in v.values() if isinstance(x, str)}
        return out
    if isinstance(value, dict):
        return {x.lower() for x in value.values() if isinstance(x, str)}
    return set()
