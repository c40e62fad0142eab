"""``python -m assetcache.emulator``: run the emulator until SIGINT/SIGTERM."""

from ._main import main

raise SystemExit(main())
