"""A local emulator of Runware's REST and WebSocket API, for tests and offline runs.

It plays the server: it imports nothing from the client half of ``assetcache``
(only the standard library), so a shared bug cannot make both sides agree.

Usage::

    from assetcache.emulator import Emulator

    with Emulator(api_key="k") as emu:        # real HTTP on 127.0.0.1, free port
        client = SomeClient(base_url=emu.base_url, api_key="k")
        uuid = client.upload(png_bytes)
        assert emu.holds(uuid) and emu.upload_count == 1
        emu.advance(days=31)                  # 30-day retention after last use
        assert not emu.holds(uuid)

Command line (blocks until SIGINT/SIGTERM)::

    python -m assetcache.emulator --port 8765 --api-key-env RUNWARE_API_KEY \\
        --state /tmp/emu.json --latency 0.05 --fault-rate 0.3

It prints ``listening on http://127.0.0.1:8765/v1`` and the WebSocket and
control URLs. If the ``--api-key-env``
variable (default RUNWARE_API_KEY) is set, only that key is accepted;
otherwise any non-empty key is.

Protocol (``POST <path>``, default ``/v1``; a JSON array of tasks)
--------------------------------------------------------------------
* Auth: ``Authorization: Bearer <key>`` or a leading
  ``{"taskType": "authentication", "apiKey": ...}`` task. Failure: HTTP 401
  with error ``invalidApiKey`` (the key is never echoed).
* Every task needs ``taskType`` and a UUID v4 ``taskUUID``; a taskUUID already
  *accepted* gives ``conflictTaskUUID`` (rejected or never-processed tasks do
  not claim theirs; ``getResponse`` and ``ping`` are exempt). So a retry after
  a ``drop_after`` fault that reuses its taskUUIDs meets a conflict.
* ``imageUpload`` (``image``) and ``mediaStorage`` ``upload`` (``media``) take a
  data URI, bare base64 or an http(s) URL (stored unfetched, format ``"url"``).
  Formats are sniffed from magic bytes: JPEG, PNG, WEBP, BMP, GIF; anything
  else, or a data URI whose declared image type contradicts the bytes, is
  ``invalidImage`` / ``invalidMedia``. (``application/octet-stream`` declares
  nothing and is sniffed, as the runware SDK's ``file_to_data_uri`` sends it.)
* What is kept: like Runware, at most ``max_side`` (2048) px on the longer
  side. A larger upload is kept downscaled (Lanczos, re-encoded in its format;
  GIF as PNG): ``image(uuid).data``/``width``/``height`` show what the server
  holds. Needs Pillow (optional, imported on first upload); without it images
  are kept as received and ``Emulator.downscales`` is False. ``max_side=0``
  (``--max-side 0``) keeps everything as received.
* ``mediaStorage`` ``delete`` with ``media=<uuid>``; unknown gives ``invalidMedia``.
* Consuming tasks (``imageInference``, upscale, background removal, caption,
  ControlNet preprocess, masking, vectorize, ``videoInference``): every
  parameter of :data:`IMAGE_PARAMS` (``_params.py``, the emulator's own map)
  is checked; a UUID that is not held gives ``invalid<Param>`` whose
  ``parameter`` is the path (``controlNet[0].guideImage``); an accepted task
  refreshes ``last_used_at`` of every image it names. Outputs are
  deterministic 8x8 PNGs served at their ``imageURL`` and held like uploads
  (``generated_images()``), so later tasks may take them; captions are text.
  With ``"deliveryMethod": "async"`` the answer is an acknowledgement and the
  results come from ``getResponse`` (what the runware SDK's ``run()`` does).
* ``media_placeholder=N``: mediaStorage uploads answer ``mediaUUID: "1"``
  (still processing) N times; ``getResponse`` then gives the result.
* ``ping`` answers ``{"taskType": "ping", "pong": true}``.
* Retention: an image is gone once ``clock() >= last_used_at + retention``.
* Tasks succeed or fail independently: all failed means HTTP 400 with
  ``{"errors": [...], "data": []}``; otherwise 200 with ``data`` (and
  ``errors`` if any). ``response_shape="object"`` sends a lone result bare.

Control endpoints (no auth; for scripts driving an emulator in another process)
--------------------------------------------------------------------------------
* ``GET /_emulator/status``: clock, counters (summed over every process of the
  state file) and every held image, what ``assetcache emulator-status`` prints.
* ``GET /_emulator/stats``: counters (``upload_count``, ``request_count``,
  ``task_count``, ``fault_count``, ``delete_count``, ``inference_count``,
  ``bytes_received``), ``clock``, ``images_held``, ``uploads_by_sha256``.
* ``POST /_emulator/advance`` with ``{"seconds": N}`` (``hours``/``days`` too):
  moves the clock; answers ``{"clock": <new now>}``.
* ``GET /images/<uuid>.<ext>``: the stored bytes, when ``keep_bytes`` is on.

Faults (per request, never per task)
------------------------------------
Taken first from the :meth:`Emulator.fail_next` FIFO, else with probability
``fault_rate`` from ``fault_kinds`` (seeded by ``seed``): ``"500"``,
``"503"``, ``"429"`` (``Retry-After: <retry_after>``), ``"drop"`` (hang up
after reading the body), ``"drop_after"`` (process and store, then hang up),
``"slow"`` (sleep ``slow_seconds`` first), ``"nonjson"``, ``"empty"``
(``{"data": []}``), ``"no_uuid"`` / ``"bad_uuid"`` (results without / with a
malformed imageUUID; nothing stored), ``"foreign_task"`` (stored, but results
carry a random taskUUID). Only ``drop_after`` and ``foreign_task`` (and
``slow``) store anything.

WebSocket (``ws_url``, same port and path; needs the ``websocket`` extra)
-----------------------------------------------------------------------
The first message carries an ``authentication`` task (``apiKey``, optional
``connectionSessionUUID``), answered ``{"data": [{"taskType":
"authentication", "connectionSessionUUID": ...}]}``. Then JSON arrays of
tasks; each result is a ``{"data": [item]}`` frame and each error an
``{"errors": [error]}`` frame, carrying its taskUUID. :meth:`Emulator.hang_up_next`
keeps a message's answers for the session and closes with 1001; a connection
that authenticates with that ``connectionSessionUUID`` receives them right
after its authentication answer. Without ``websockets`` the upgrade is
answered HTTP 501 naming the extra. REST faults do not apply to WebSocket.

Uplink
------
``uplink_mbps`` (``--uplink-mbps``) reads request bodies no faster than that
many Mbit/s, all connections sharing the one link, as a client's uplink would
carry them: what sending fewer bytes saves can then be measured on loopback.

State
-----
``state_path`` loads stored-image metadata and the clock at construction and,
after every change, merges with the file under a lock and rewrites it
atomically (``_state.py``): several processes may share one file at once and
none loses another's uploads; deletions travel as tombstones; the clock further
ahead wins; counters are summed (``persisted_counters()``). The file's clock
takes precedence over ``start_time``. Image bytes, seen taskUUIDs, sessions and
pending async results are per-process. A file that cannot be used raises
:class:`EmulatorStateError` (one line naming it).
"""

from ._emulator import Emulator, ResponseShape
from ._engine import StoredImage
from ._faults import FAULT_KINDS, TRANSIENT_FAULTS
from ._main import main
from ._params import IMAGE_PARAMS
from ._state import StateError as EmulatorStateError
from ._ws import AVAILABLE as WEBSOCKET_AVAILABLE

__all__ = [
    "FAULT_KINDS",
    "IMAGE_PARAMS",
    "TRANSIENT_FAULTS",
    "WEBSOCKET_AVAILABLE",
    "Emulator",
    "EmulatorStateError",
    "ResponseShape",
    "StoredImage",
    "main",
]
