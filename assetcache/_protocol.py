"""The Runware wire protocol, as pure functions: build a request, read an answer.

No I/O here. A request body is a list of parts (``bytes``, or a
:class:`Payload` whose base64 text is produced in chunks), so that a 200 MB
image is never held as one base64 string, the Content-Length is known in
advance, and a retry can produce the same body again.
"""

from __future__ import annotations

import base64
import json
import re
import sys
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

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
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
    return isinstance(value, str) and bool(_UUID.match(value))


def new_task_uuid() -> str:
    return str(uuid_mod.uuid4())


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
        if self.data is not None:
            view = memoryview(self.data)
            for i in range(0, len(view), _B64_CHUNK):
                yield base64.b64encode(view[i : i + _B64_CHUNK])
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
                yield base64.b64encode(block)
        if hasher.size != self.size or (
            self.expected_hash is not None and hasher.hexdigest() != self.expected_hash
        ):
            # Raised before the closing bytes: the request is cut short, so the
            # server never stores the wrong content under our key.
            raise SourceError(self.label, "changed while being uploaded; try again")


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
        cls = UnknownImage if says_unknown(code, parameter, message) else RejectedInput
    elif code and code.startswith("invalid") or status is not None and 400 <= status < 500:
        cls = RejectedInput
    else:
        cls = RemoteError
    return cls(text, code=code, parameter=parameter, task_uuid=task_uuid, status=status)


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
) -> dict[str, TaskResult | RemoteError]:
    """Per-task outcomes of one request, or raise a request-level error.

    Raises when the whole request failed (auth, credits, 429/5xx without
    per-task detail, unreadable body). Otherwise every task UUID gets a
    :class:`TaskResult` or a :class:`RemoteError`: results with a missing or
    malformed UUID, and tasks the answer does not mention, become a transient
    :class:`ProtocolError` (re-sent, never cached). Results for task UUIDs we
    did not send are ignored.
    """
    retry_after = parse_retry_after(headers.get("retry-after"))
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
                outcomes[tid] = err
            elif tid is None or obj.get("taskType") == "authentication":
                general = general or err
    data = doc.get("data")
    if isinstance(data, dict):
        data = [data]
    if isinstance(data, list):
        for item in data:
            if not isinstance(item, dict):
                continue
            tid = item.get("taskUUID")
            if (
                not isinstance(tid, str)
                or tid not in wanted
                or isinstance(outcomes.get(tid), TaskResult)
            ):
                continue
            image_uuid = item.get(uuid_field)
            if not is_uuid(image_uuid):
                outcomes[tid] = ProtocolError(
                    f"Runware answered without a valid {uuid_field} for task {tid}",
                    task_uuid=tid,
                    code="malformedResult",
                )
                continue
            url = item.get("imageURL") or item.get("mediaURL")
            outcomes[tid] = TaskResult(
                tid, str(image_uuid), url if isinstance(url, str) else None, item
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


#: ``use()``'s caller predicate: gets what ``fn`` raised or returned.
UnknownPredicate = Callable[[object], bool]
#: Top-level parameters that carry new bytes (uploads), not a stored image.
_UPLOAD_PARAMS = frozenset({"image", "media"})
_IMAGE_WORDS = ("image", "mask", "frame")
_PARAM_SPLIT = re.compile(r"[.\[\]]+")
#: Runware's wording for a UUID it does not hold (there is no dedicated code).
_UNKNOWN_WORDING = "previously uploaded"


# -- "the server does not know this UUID": the one rule --------------------------------


def rejects_uuid(obj: object, uuid: str | None = None, parameters: Collection[str] = ()) -> bool:
    """Whether ``obj`` (an exception, or a value such as an ``httpx.Response``) is
    Runware saying it does not know an image UUID it was given.

    ``parameters``: the task parameters the UUID went in (only a rejection of
    one of them counts). Exceptions are followed along their causes, so an
    SDK error wrapped in the caller's own still counts.

    >>> rejects_uuid(UnknownImage("...", code="invalidSeedImage", parameter="seedImage"))
    True
    """
    names = frozenset(_leaf(p).lower() for p in parameters)
    seen = 0
    while obj is not None and seen < 8:
        if _rejects_one(obj, uuid, names):
            return True
        if not isinstance(obj, BaseException):
            return False
        obj = obj.__cause__ or (None if obj.__suppress_context__ else obj.__context__)
        seen += 1
    return False


def _rejects_one(obj: object, uuid: str | None, names: frozenset[str]) -> bool:
    if isinstance(obj, RemoteError):
        if isinstance(obj, UnknownImage):
            return _named(obj.parameter, names)
        return says_unknown(obj.code, obj.parameter, obj.message, names)
    # The SDK and httpx are looked up, never imported: if their module is not
    # loaded, ``obj`` cannot be one of their objects.
    sdk = sys.modules.get("runware.errors")
    sdk_error = getattr(sdk, "RunwareError", None) if sdk is not None else None
    if isinstance(sdk_error, type) and isinstance(obj, sdk_error):
        return _sdk_says_unknown(obj, names)
    httpx = sys.modules.get("httpx")
    if httpx is not None:
        if isinstance(obj, httpx.HTTPStatusError):
            obj = obj.response
        if isinstance(obj, httpx.Response):
            return _response_says_unknown(obj, uuid, names)
    return False


def _leaf(parameter: str) -> str:
    """``inputs.seedImage`` -> ``seedImage``; ``ipAdapters[0].guideImage`` -> ``guideImage``."""
    parts = [p for p in _PARAM_SPLIT.split(parameter.strip()) if p and not p.isdigit()]
    return parts[-1] if parts else parameter.strip()


def _params(parameter: object) -> list[str]:
    if isinstance(parameter, str):
        return [p for p in parameter.split(",") if p.strip()]
    if isinstance(parameter, (list, tuple)):
        return [p for p in parameter if isinstance(p, str) and p.strip()]
    return []


def _named(parameter: object, names: frozenset[str]) -> bool:
    return not names or any(_leaf(p).lower() in names for p in _params(parameter))


def _names_image(parameter: str) -> bool:
    leaf = _leaf(parameter).lower()
    if parameter.strip().lower() in _UPLOAD_PARAMS:
        return False  # an upload's own input: bad bytes, not an unknown UUID
    return any(word in leaf for word in _IMAGE_WORDS)


def says_unknown(
    code: object, parameter: object, message: object, names: frozenset[str] = frozenset()
) -> bool:
    """A Runware error object: ``invalid<Param>`` on the image parameter it names."""
    if not isinstance(code, str) or not code.startswith("invalid"):
        return False
    params = _params(parameter)
    if names and not any(_leaf(p).lower() in names for p in params):
        return False
    wanted = code[len("invalid") :].lower()
    if any(_leaf(p).lower() == wanted and _names_image(p) for p in params):
        return True
    return isinstance(message, str) and _UNKNOWN_WORDING in message.lower()


def _sdk_says_unknown(exc: Any, names: frozenset[str]) -> bool:
    """runware-sdk's RunwareError: it maps every ``invalid*`` code to ``"validation"``
    and keeps the parameter (and HTTP status, when there was one)."""
    if getattr(exc, "code", None) != "validation":
        return False
    status = getattr(exc, "status_code", None)
    if status is not None and status != 400:
        return False
    parameter = getattr(exc, "parameter", None)
    params = _params(parameter)
    if names:
        return any(_leaf(p).lower() in names for p in params)
    if any(_names_image(p) for p in params):
        return True
    message = getattr(exc, "message", None) or (exc.args[0] if exc.args else "")
    return isinstance(message, str) and _UNKNOWN_WORDING in message.lower()


def _response_says_unknown(resp: Any, uuid: str | None, names: frozenset[str]) -> bool:
    try:
        doc = json.loads(resp.content)
    except Exception:  # unread stream, not JSON, nested too deep: not a Runware answer
        return False
    if not isinstance(doc, dict):
        return False
    errors = doc.get("errors")
    if isinstance(errors, dict):
        errors = [errors]
    if not isinstance(errors, list):
        return False
    tasks = _request_tasks(resp)
    for err in errors:
        if not isinstance(err, dict):
            continue
        if not says_unknown(err.get("code"), err.get("parameter"), err.get("message"), names):
            continue
        if uuid is None or tasks is None:
            return True
        task = tasks.get(str(err.get("taskUUID", "")).lower())
        held = None if task is None else _holds(task, _params(err.get("parameter")), uuid)
        if held is not False:  # unknown where it went: the wording decides
            return True
    return False


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
        leaf = _leaf(param)
        _collect(task, leaf, found, 0)
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
        return {v.lower() for v in value if isinstance(v, str)}
    return set()


def unknown_media(answer: object) -> bool:
    """A ``mediaStorage`` answer saying the UUID is not (or no longer) held."""
    return isinstance(answer, RemoteError) and answer.code == "invalidMedia"
