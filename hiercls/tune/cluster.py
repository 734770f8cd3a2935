"""The Ray cluster a search runs on: joining it and what it can run.

Before ``ray.init``: an explicit ``HOST:PORT`` is probed for a Ray GCS (:func:`check_reachable`: fails at
once, not after Ray's minutes of retries) and token authentication is turned on when a token is available
(:func:`enable_cluster_token`). After it: :func:`check_resources` refuses a per-trial request no live node
can host, and :func:`cluster_capacity` counts the trials the nodes run at once. Ray is imported only
inside the functions that query it.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Sequence
from pathlib import Path

__all__ = ["AUTH_MODE_VAR", "ResourceError", "check_reachable", "check_resources", "cluster_capacity",
           "cluster_token_source", "enable_cluster_token"]


class ResourceError(RuntimeError):
    """The cluster cannot run even one trial with the requested resources."""


def _live_nodes() -> list[tuple[float, float]]:
    """(CPUs, GPUs) of each live Ray node."""
    import ray  # Ray only when the cluster is queried

    return [(float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
            for n in ray.nodes() if n.get("Alive", n.get("alive", False))]


def cluster_capacity(cpus: float, gpus: float, nodes: Sequence[tuple[float, float]] | None = None) -> int:
    """How many trials of ``cpus`` CPUs and ``gpus`` GPUs the cluster runs at once (the default
    ``max_concurrent``): the sum over ``nodes`` (CPUs, GPUs; default Ray's live nodes, so an autoscaling
    cluster counts only those up now) of ``min(CPUs // cpus, GPUs // gpus)`` (GPU term only if
    ``gpus``), at least 1."""
    if nodes is None:
        nodes = _live_nodes()
    total = 0
    for node_cpus, node_gpus in nodes:
        fit = math.floor(node_cpus / cpus + 1e-9)
        if gpus > 0:
            fit = min(fit, math.floor(node_gpus / gpus + 1e-9))
        total += max(0, fit)
    return max(1, total)


def check_resources(cpus: float, gpus: float) -> None:
    """Fail at once when no node can host one trial (instead of trials PENDING forever).

    Raises:
        ResourceError: naming the request and what the nodes have.
    """
    per_node = _live_nodes()
    if not any(c >= cpus and g >= gpus for c, g in per_node):
        have = ", ".join(f"{c:g} CPU/{g:g} GPU" for c, g in per_node) or "no live nodes"
        hint = (" This machine (cluster) has no GPU: use --gpus-per-trial 0 to train on CPU."
                if gpus > 0 and all(g == 0 for _, g in per_node)
                else " Lower --cpus-per-trial/--gpus-per-trial or add a larger node.")
        raise ResourceError(
            f"no node can run a trial that needs {cpus:g} CPU and {gpus:g} GPU (nodes: {have}).{hint}"
        )


AUTH_MODE_VAR = "RAY_AUTH_MODE"


def _explicit_address(address: str | None) -> bool:
    """A ``HOST:PORT`` to join (not None/``local``: a new instance; not ``auto``: Ray's own lookup)."""
    return address not in (None, "local", "auto")


def cluster_token_source() -> str | None:
    """Where this process would read a Ray authentication token from: ``$RAY_AUTH_TOKEN``, the file in
    ``$RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token`` (Ray 2.60's order); None when there is none."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "$RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path and Path(path).expanduser().is_file():
        return path
    default = Path.home() / ".ray" / "auth_token"
    return str(default) if default.is_file() else None


def enable_cluster_token(address: str | None) -> str | None:
    """Set ``RAY_AUTH_MODE=token`` (this process and its children) when it is unset, ``address`` is an
    explicit ``HOST:PORT`` and a token is available (:func:`cluster_token_source`); returns a note saying
    so, else None. Ray 2.60's ``ray start`` enables tokens, but ``ray.init(address="HOST:PORT")`` uses
    one only with that variable set ("auto" finds it by itself)."""
    if not _explicit_address(address) or os.environ.get(AUTH_MODE_VAR) is not None:
        return None
    source = cluster_token_source()
    if source is None:
        return None
    os.environ[AUTH_MODE_VAR] = "token"
    try:  # Ray reads RAY_AUTH_MODE into its config when imported: refresh it, as Ray itself does
        from ray._raylet import Config

        Config.initialize("")
    except (ImportError, AttributeError):
        pass
    return f"joining {address} with token authentication (token from {source}; {AUTH_MODE_VAR}=token)"


def check_reachable(address: str | None, timeout: float = 10.0, handshake_timeout: float = 5.0) -> None:
    """Fail at once when nothing, or something that is not Ray, listens at an explicit ``HOST:PORT``
    (Ray itself retries for minutes). Ray's GCS speaks gRPC (HTTP/2): after the HTTP/2 client preface
    the server's first frame must be SETTINGS (type 0x4, reply byte 3); any other reply, a closed
    connection or ``handshake_timeout`` seconds of silence is another server. Skipped for ``ray://``
    and with ``RAY_USE_TLS`` set (the GCS then expects a TLS handshake first).

    Raises:
        ResourceError: the address is malformed, the TCP connection is refused or times out, or the
            server there does not speak HTTP/2.
    """
    if not _explicit_address(address) or address.startswith("ray://"):
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ResourceError(f"--address {address!r} is not HOST:PORT (or auto); e.g. 10.0.0.1:6379")
    try:
        connection = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    except OSError as err:
        raise ResourceError(
            f"could not join the Ray cluster at {address!r}: nothing answers there ({err}). Start it with "
            "`ray start --head --port=PORT` on that machine, or use --address auto on a cluster node."
        ) from err
    with connection:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true", "yes"):
            return
        reply, problem = b"", ""
        try:
            connection.settimeout(handshake_timeout)
            connection.sendall(HTTP2_PREFACE + HTTP2_EMPTY_SETTINGS)
            while len(reply) < 9:
                chunk = connection.recv(9 - len(reply))
                if not chunk:
                    problem = "it closed the connection"
                    break
                reply += chunk
        except TimeoutError:
            problem = f"no reply within {handshake_timeout:g} s"
        except OSError as err:
            problem = f"the connection failed: {err}"
    if len(reply) >= 9 and reply[3] == 0x04:
        return
    if not problem:
        shown = reply[:24].decode("ascii", "replace").replace("\r", " ").replace("\n", " ").strip()
        problem = f"it replied {shown!r}" if shown else "it replied with something else"
    raise ResourceError(
        f"could not join the Ray cluster at {address!r}: a server listens there, but it is not a Ray head "
        f"(Ray's GCS answers gRPC over HTTP/2; {problem}). Check the port: `ray start --head` prints the "
        "address to use (default port 6379), or use --address auto on a cluster node."
    )


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HTTP2_EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # length 0, type SETTINGS, stream 0


def connection_help(address: str, err: Exception) -> str:
    source = cluster_token_source()
    token = (
        f"this driver uses the token from {source} ({AUTH_MODE_VAR}={os.environ.get(AUTH_MODE_VAR)}); "
        "it must be the cluster's token" if source else
        "no token was found: copy the head node's ~/.ray/auth_token here or export RAY_AUTH_TOKEN, "
        f"and set {AUTH_MODE_VAR}=token"
    )
    return (
        f"could not join the Ray cluster at {address!r} ({err}). Check that `ray start --head` runs there "
        f"and the address is HOST:PORT of its GCS (or use --address auto on a cluster node); {token}."
    )
