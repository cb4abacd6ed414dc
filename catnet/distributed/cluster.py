"""Finding Ray and joining its cluster, with catnet's kind of errors: Ray missing is a usage
error with the install line, an address that does not answer is a clear error within seconds
(ray.init itself retries an unreachable address for minutes)."""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import Iterator
from types import ModuleType

from catnet.errors import EXIT_USAGE, CatnetError

INSTALL_HINT = 'pip install "catnet[ray]"'
PROBE_SECONDS = 5.0  # a cluster's head answers a TCP connect at once; a wrong address never


def require_ray() -> ModuleType:
    """The ray module, or a CatnetError (exit 2) saying how to install it. Ray is imported
    here, lazily: the core install of catnet does not have it."""
    try:
        import ray
        import ray.data  # the ray[data] extra: pyarrow, pandas
    except ImportError as exc:
        raise CatnetError(
            f"this needs Ray Data, which is not installed ({exc})", EXIT_USAGE, hint=INSTALL_HINT
        ) from None
    return ray


def host_port(address: str) -> tuple[str, int] | None:
    """("10.0.0.5", 6379) from "10.0.0.5:6379" or "ray://10.0.0.5:10001"; None for "auto"
    and "local", which name no address to check."""
    if address in ("auto", "local"):
        return None
    rest = address.split("://", 1)[-1]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise CatnetError(
            f"--ray takes HOST:PORT, ray://HOST:PORT, auto or local; got {address!r}",
            hint="the address is the one `ray start --head` prints, e.g. 10.0.0.5:6379",
        )
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout: float = PROBE_SECONDS) -> None:
    """A TCP connect to the address's head node, so that a wrong address fails in seconds."""
    target = host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise CatnetError(
            f"cannot reach a Ray cluster at {address}: {reason}",
            hint="start one with `ray start --head`, or pass --ray local to run Ray on this machine",
        ) from None


def check_command_line() -> None:
    """Ray sends this process's command line to its head as UTF-8 and fails on a file name
    that is not (a Latin-1 `caf\xe9.jpg` typed as an argument). Such files inside a folder
    that is given are fine: say so, before Ray's own error."""
    for arg in sys.argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise CatnetError(
                f"Ray cannot run from a command line with a name that is not UTF-8: {shown}",
                hint="give the folder that holds it instead; files in it are read as they are",
            ) from None


@contextlib.contextmanager
def connected(address: str) -> Iterator[ModuleType]:
    """Ray connected to `address` (HOST:PORT, ray://HOST:PORT, auto = the running cluster this
    machine knows, local = a new one on this machine) for the block. A Ray already started in
    this process (ray.init by the caller) is used as it is and left running."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    check_reachable(address)
    check_command_line()
    try:
        ray.init(
            address=None if address == "local" else address,
            log_to_driver=False,  # catnet's workers print nothing; Ray's own chatter stays out
            configure_logging=False,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise CatnetError(
            f"could not join the Ray cluster at {address}: {str(exc).splitlines()[0]}",
            hint="`ray status` on the head node shows whether it runs; --ray local starts one here",
        ) from None
    try:
        yield ray
    finally:
        ray.shutdown()
