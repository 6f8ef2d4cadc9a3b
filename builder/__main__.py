"""``python -m builder --kubeconfig PATH``: run the builder until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import os
import signal
import sys
from types import FrameType

from builder.app import Builder
from builder.build.executors.select import ExecutorRefused
from builder.build.toolchains import PinsInvalid
from builder.settings import SettingsError, parse_settings
from plugforge.grpc_auth import TokenFileError
from plugforge.signing import KeyFileError


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("PLUGFORGE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = parse_settings(sys.argv[1:] if argv is None else argv, os.environ)
    except SettingsError as e:
        print(f"builder: {e}", file=sys.stderr)
        return 2
    try:
        builder = Builder(settings)
    except (TokenFileError, KeyFileError, ExecutorRefused, PinsInvalid, OSError) as e:
        print(f"builder: {e}", file=sys.stderr)
        return 2

    def stop(signum: int, frame: FrameType | None) -> None:
        builder._stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logging.getLogger("builder").info("builder %s starting (state in %s)", settings.identity,
                                      settings.state_dir)
    builder.run()
    builder.controller.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
