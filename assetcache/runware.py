"""Drop-in wrappers for Runware's official Python SDKs: local images anywhere, uploaded once.

:func:`wrap` takes an SDK client and an :class:`~assetcache.AsyncAssetCache`
and returns an object with the client's own methods, whose image parameters
accept local images (paths, bytes, file objects, PIL images, data URIs,
base64): each becomes a cached imageUUID (uploaded once per content), a UUID
Runware no longer holds is uploaded again alone and the task re-sent, and a
task that succeeds slides the window of every image it used. Everything the
wrapper does not change is the client's own (``wrapped.unwrapped`` is the
client itself).

``runware-sdk`` (1.8+, REST or WebSocket)::

    from runware import Runware
    from assetcache import AsyncAssetCache
    from assetcache.runware import wrap

    async with AsyncAssetCache() as cache:
        client = wrap(Runware(api_key=KEY), cache)
        images = await client.run({"taskType": "imageInference", "seedImage": "cat.png", ...})

``runware`` (the WebSocket SDK, 0.5)::

    from runware import IImageInference, Runware
    client = wrap(Runware(api_key=KEY), cache)
    await client.connect()
    images = await client.imageInference(IImageInference(seedImage="cat.png", ...))

Both SDKs install a package named ``runware``; which one a client comes from
is read from its class, and neither is ever imported here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from . import _taskmap
from ._errors import ConfigurationError

__all__ = ["RunwareSdkClient", "WebSocketSdkClient", "wrap"]

#: The WebSocket SDK's task methods that take images, and the task type each sends.
WEBSOCKET_METHODS: Mapping[str, str] = {
    "imageInference": "imageInference",
    "photoMaker": "photoMaker",
    "imageCaption": "imageCaption",
    "imageBackgroundRemoval": "imageBackgroundRemoval",
    "imageUpscale": "imageUpscale",
    "imageVectorize": "imageVectorize",
    "imageControlNetPreProcess": "imageControlNetPreProcess",
    "imageMasking": "imageMasking",
    "videoInference": "videoInference",
}

#: runware-sdk's task methods that take a params dict holding images.
SDK_METHODS = ("run",)


def _all_params() -> tuple[str, ...]:
    """Every mapped path of every task type: for a task whose type the SDK works
    out itself (from the model), so nothing here can know it in advance."""
    out: dict[str, None] = {}
    for paths in _taskmap.TASK_PARAMS.values():
        out.update(dict.fromkeys(paths))
    return tuple(out)


class _Wrapped:
    """The client's own surface, plus the cache on its image parameters."""

    def __init__(
        self,
        client: Any,
        cache: Any,
        extra_params: Mapping[str, Iterable[str]] | Iterable[str] | None,
        reuploads: int,
    ) -> None:
        self.unwrapped = client
        self.cache = cache
        self._extra = extra_params
        self._reuploads = reuploads

    def __getattr__(self, name: str) -> Any:
        return getattr(self.unwrapped, name)

    def __repr__(self) -> str:
        return f"<assetcache.runware {type(self).__name__} of {self.unwrapped!r}>"

    async def __aenter__(self) -> Any:
        enter = getattr(self.unwrapped, "__aenter__", None)
        if enter is not None:
            await enter()
        else:
            connect = getattr(self.unwrapped, "connect", None)
            if connect is not None:
                await connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        leave = getattr(self.unwrapped, "__aexit__", None)
        if leave is not None:
            await leave(*exc)
        else:
            disconnect = getattr(self.unwrapped, "disconnect", None)
            if disconnect is not None:
                await disconnect()

    def _paths(self, task_type: str | None) -> list[str]:
        if task_type is None:
            paths = list(_all_params())
            if self._extra:
                paths += [p for p in _taskmap.params_for(None, self._extra) if p not in paths]
            return paths
        return list(_taskmap.params_for(task_type, self._extra))

    async def _run(self, task: Any, send: Callable[[Any], Awaitable[Any]], paths: list[str]) -> Any:
        return await self.cache.run(task, send, extra_params=paths, reuploads=self._reuploads)


class RunwareSdkClient(_Wrapped):
    """A ``runware-sdk`` client whose ``run()`` takes local images."""

    async def run(self, params: Any, options: Any = None) -> Any:
        """The SDK's ``run(params, options)``: images in ``params`` become cached UUIDs."""
        if not isinstance(params, Mapping):
            raise ConfigurationError(f"run() takes the task as a dict, not {type(params).__name__}")
        kind = params.get("taskType")
        paths = self._paths(kind if isinstance(kind, str) else None)
        if isinstance(kind, str):
            paths = [p for p in paths if p not in _taskmap.TASK_PARAMS.get(kind, ())]
        client = self.unwrapped

        def send(task: Any) -> Awaitable[Any]:
            return client.run(task, options) if options is not None else client.run(task)

        return await self._run(dict(params), send, paths)


class WebSocketSdkClient(_Wrapped):
    """A ``runware`` (WebSocket SDK) client whose task methods take local images."""

    def __getattr__(self, name: str) -> Any:
        task_type = WEBSOCKET_METHODS.get(name)
        attr = getattr(self.unwrapped, name)
        if task_type is None or not callable(attr):
            return attr
        paths = self._paths(task_type)

        async def method(request: Any, *args: Any, **kwargs: Any) -> Any:
            def send(req: Any) -> Awaitable[Any]:
                return attr(req, *args, **kwargs)

            return await self._run(request, send, paths)

        method.__name__ = name
        method.__doc__ = f"The SDK's {name}(), with local images in its image parameters."
        return method


def flavour(client: Any) -> str | None:
    """``"runware-sdk"``, ``"runware"`` (the WebSocket SDK) or ``None``, from the class."""
    cls = type(client)
    module = getattr(cls, "__module__", "") or ""
    if module.split(".")[0] != "runware":
        return None
    if callable(getattr(client, "imageInference", None)):
        return "runware"
    if callable(getattr(client, "run", None)):
        return "runware-sdk"
    return None


def wrap(
    client: Any,
    cache: Any,
    *,
    extra_params: Mapping[str, Iterable[str]] | Iterable[str] | None = None,
    reuploads: int = 1,
) -> Any:
    """``client`` (a ``runware-sdk`` or ``runware`` SDK client) with the cache on its
    image parameters; ``cache`` is an :class:`~assetcache.AsyncAssetCache` (both
    SDKs are asyncio clients). ``extra_params`` adds image parameters for task
    types the map does not know yet; ``reuploads`` bounds healing per input."""
    from ._client import AsyncAssetCache

    if not isinstance(cache, AsyncAssetCache):
        raise ConfigurationError(
            "wrap() needs an AsyncAssetCache: both Runware SDKs are asyncio clients"
        )
    if isinstance(client, _Wrapped):
        raise ConfigurationError("this client is wrapped already")
    kind = flavour(client)
    if kind == "runware-sdk":
        return RunwareSdkClient(client, cache, extra_params, reuploads)
    if kind == "runware":
        return WebSocketSdkClient(client, cache, extra_params, reuploads)
    raise ConfigurationError(
        f"not a Runware SDK client: {type(client).__module__}.{type(client).__name__} "
        "(wrap() takes a runware-sdk Runware or a runware (WebSocket SDK) Runware)"
    )
