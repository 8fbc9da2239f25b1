"""A NATS cluster's configuration: each node's name and its routes to the others, authenticated.

Every node gets the same users and permissions (``nats_roles.server_authorization``) and the same
``cluster`` block. Routes log in as the ``route`` user with a password nats-server reads from its
environment, like the users' passwords: it is in no file and on no command line. nats-server takes a
route's credentials only from the route's URL and reads a variable only as a whole value, so each
route URL is a variable too (``LOGMESH_ROUTE_URL_<i>``, ``nats-route://route:<password>@host:port``).

``logmesh up --nats-nodes 3`` renders it for its embedded nodes; ``logmesh nats-config
--cluster-nodes 3`` renders it for a deployment of your own, one file for every node.
"""

from __future__ import annotations

from collections.abc import Sequence

from logmesh.common.nats_roles import secret_variable

CLUSTER_NAME = "logmesh"
ROUTE_USER = "route"
# The secret's name among ``logmesh up``'s (``secrets_store``) and its variable.
ROUTE_PASSWORD = "route-password"
ROUTE_PASSWORD_VARIABLE = secret_variable(ROUTE_PASSWORD)
SERVER_NAME_VARIABLE = "LOGMESH_NATS_SERVER_NAME"
DEPLOY_ROUTE_PORT = 6222


def server_name(node: int) -> str:
    """The name of node ``node`` (counted from 1): n1, n2, ..."""
    return f"n{node}"


def route_variable(node: int) -> str:
    return f"LOGMESH_ROUTE_URL_{node}"


def route_url(host: str, port: int, password: str | None) -> str:
    login = f"{ROUTE_USER}:{password}@" if password else ""
    return f"nats-route://{login}{host}:{port}"


def route_env(routes: Sequence[tuple[str, int]], password: str | None) -> dict[str, str]:
    """The variables the ``cluster`` block names: the route password and each route's URL."""
    env = {route_variable(i): route_url(host, port, password) for i, (host, port) in enumerate(routes, 1)}
    if password:
        env[ROUTE_PASSWORD_VARIABLE] = password
    return env


def cluster_block(listen: str, nodes: int, *, authenticated: bool = True) -> str:
    """The ``cluster`` block of a node that listens for routes on ``listen`` and solicits routes to
    every one of ``nodes`` nodes (a route to itself is recognised and dropped by nats-server)."""
    routes = ", ".join(f"${route_variable(i)}" for i in range(1, nodes + 1))
    lines = ["cluster {", f"  name: {CLUSTER_NAME}", f'  listen: "{listen}"']
    if authenticated:
        lines.append(f"  authorization {{ user: {ROUTE_USER}, password: ${ROUTE_PASSWORD_VARIABLE} }}")
    lines += [f"  routes = [{routes}]", "}"]
    return "\n".join(lines) + "\n"


def node_config(name: str, listen: str, nodes: int, *, authenticated: bool = True) -> str:
    """A node's own part of the configuration: its name and its cluster block."""
    return f"server_name: {name}\n" + cluster_block(listen, nodes, authenticated=authenticated)


DEPLOY_HEADER = f"""\
# A node of a {{nodes}}-node cluster: the same file on every node, which takes from its environment
#   {SERVER_NAME_VARIABLE}   this node's name (n1, n2, ...: unique in the cluster)
#   {ROUTE_PASSWORD_VARIABLE}     the route user's password (the same on every node; `logmesh secrets`)
#   {route_variable(1)} ...    each node's route URL:
#                              nats-route://{ROUTE_USER}:<route password>@<host>:{DEPLOY_ROUTE_PORT}
# and the users' passwords below. Run: nats-server -c nats-server.conf --jetstream --store_dir /data
"""


def deploy_cluster_config(nodes: int) -> str:
    """What ``logmesh nats-config --cluster-nodes N`` adds for a cluster of N machines."""
    return (
        DEPLOY_HEADER.format(nodes=nodes)
        + f"server_name: ${SERVER_NAME_VARIABLE}\n"
        + cluster_block(f"0.0.0.0:{DEPLOY_ROUTE_PORT}", nodes)
    )
