"""Starts one service process for the local runtime: ``python -m appliance.runtimes.launcher``.

supervisord runs this instead of the service's command. It loads the service's environment from a
0600 file (so secrets never appear in supervisord's config or in ``ps``), ends leftovers of a
previous incarnation of the same service, then ``exec``s the real command so supervisord watches
the service's own pid.
"""

from __future__ import annotations

import json
import os
import sys

from appliance.runtimes.procscan import MARKER_VAR, pids_with_marker, terminate


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[0] != "--env-file" or argv[2] != "--":
        print("usage: launcher --env-file FILE -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    with open(argv[1]) as fh:
        env = json.load(fh)
    command = argv[3:]
    os.environ.update(env)
    marker = os.environ.get(MARKER_VAR)
    if marker:
        leftovers = pids_with_marker(marker, exclude={os.getpid(), os.getppid()}, exact=True)
        if leftovers:
            print(f"launcher: ending {len(leftovers)} leftover process(es) of {marker}", flush=True)
            terminate(leftovers, grace=3.0)
    try:
        os.execvp(command[0], command)
    except OSError as err:
        print(f"launcher: cannot run {command[0]!r}: {err}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
