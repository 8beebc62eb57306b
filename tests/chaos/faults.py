"""The faults a scenario injects, each at a random moment while runs are open."""

from __future__ import annotations

import asyncio
import time

from services.embedded_nats import EmbeddedNats, EmbeddedNatsCluster
from services.nats.names import EVENTS_STREAM
from tests.chaos.harness import (
    Chaos,
    Fault,
    Role,
    attempts_moved_on,
    decisions_after,
    leader,
    progress_after,
    wait_for_agents,
    wall,
)
from tests.chaos.projection import catch_up, checkpoint, projector
from tests.waiting import eventually


async def kill_agent_mid_task(chaos: Chaos) -> Fault:
    """kill -9 of an agent that is running commands; a replacement agent starts at once."""

    async def busy_agent() -> tuple[Role, list[tuple[str, str, int]]] | None:
        candidates = [
            (role, chaos.observer.running_on(role.pid)) for role in chaos.roles.living("agent")
        ]
        candidates = [(role, keys) for role, keys in candidates if keys]
        return chaos.rng.choice(candidates) if candidates else None

    role, keys = await eventually(busy_agent, timeout=60, what="an agent running a task")
    at = time.monotonic()
    at_wall = chaos.roles.kill(role)
    chaos.roles.agent()
    await wait_for_agents(chaos, chaos.size.agents)
    return Fault(
        "agent kill -9",
        f"{role.label} running {len(keys)}",
        at,
        at_wall,
        attempts_moved_on(at, keys, role.pid),
    )


async def kill_leader_with_standby(chaos: Chaos) -> Fault:
    """kill -9 of the orchestrator holding the lease while a standby waits; a new standby is
    started at once. Returns once the standby has taken over."""
    role = await leader(chaos)
    at = time.monotonic()
    at_wall = chaos.roles.kill(role)
    chaos.roles.orchestrator()
    await leader(chaos, not_pid=role.pid)
    return Fault("leader kill -9, standby", role.label, at, at_wall, decisions_after(at, at_wall))


async def kill_lone_orchestrator(chaos: Chaos) -> Fault:
    """kill -9 of the only orchestrator, restarted after a random pause."""
    role = await leader(chaos)
    at = time.monotonic()
    at_wall = chaos.roles.kill(role)
    await chaos.pause(0.0, 2.0)
    chaos.roles.orchestrator()
    await leader(chaos, not_pid=role.pid)
    return Fault(
        "orchestrator kill -9, restart", role.label, at, at_wall, decisions_after(at, at_wall)
    )


async def restart_nats(chaos: Chaos) -> Fault:
    """The single server stopped (SIGTERM) or killed (SIGKILL), started again on the same port
    and store after a random pause."""
    server = chaos.nats
    assert isinstance(server, EmbeddedNats)
    how = chaos.rng.choice(["SIGTERM", "SIGKILL"])
    at = time.monotonic()
    at_wall = wall()
    await asyncio.to_thread(server.stop if how == "SIGTERM" else server.kill)
    await chaos.pause(0.2, 3.0)
    await asyncio.to_thread(server.start)
    back, back_wall = time.monotonic(), wall()
    # Recovery counts from the moment the server is back: the outage itself is our choice.
    return Fault(
        f"nats restart ({how})",
        f"down {back - at:.1f}s",
        at,
        at_wall,
        progress_after(back, back_wall),
    )


async def kill_cluster_node(chaos: Chaos) -> Fault:
    """kill -9 of one node of the three (half the time the event stream's leader), restarted
    after a random pause; returns once every stream has all three replicas current again (a
    second node lost before that would be two of three)."""
    cluster = chaos.nats
    assert isinstance(cluster, EmbeddedNatsCluster)
    leader_name = await stream_leader(chaos, EVENTS_STREAM)
    names = [cluster.server_name(i) for i in range(cluster.size)]
    if leader_name in names and chaos.rng.random() < 0.5:
        index, which = names.index(leader_name), "events leader"
    else:
        index, which = chaos.rng.randrange(cluster.size), "a node"
    at = time.monotonic()
    at_wall = wall()
    await asyncio.to_thread(cluster.kill_node, index)
    await chaos.pause(1.0, 4.0)
    await asyncio.to_thread(cluster.start_node, index)
    await replicas_current(chaos)
    return Fault(
        "cluster node kill -9",
        f"{names[index]} ({which})",
        at,
        at_wall,
        progress_after(at, at_wall),
    )


async def step_down_events_leader(chaos: Chaos) -> Fault:
    """A leader election of the event stream mid-run (the leader steps down)."""
    before = await stream_leader(chaos, EVENTS_STREAM)
    at = time.monotonic()
    at_wall = wall()
    nc = chaos.backplane.connection.nc
    await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{EVENTS_STREAM}", b"", timeout=10)

    async def elected() -> str | None:
        now = await stream_leader(chaos, EVENTS_STREAM)
        return now if now and now != before else None

    after = await eventually(elected, timeout=60, what="a new event stream leader")
    return Fault(
        "events leader step-down",
        f"{before} -> {after}",
        at,
        at_wall,
        progress_after(at, at_wall),
    )


async def stream_leader(chaos: Chaos, stream: str) -> str | None:
    info = await chaos.backplane.connection.js.stream_info(stream)
    return info.cluster.leader if info.cluster is not None else None


async def replicas_current(chaos: Chaos, timeout: float = 90.0) -> None:
    """Every stream and bucket has a leader and all its replicas current and online."""

    async def current() -> bool | None:
        for info in await chaos.backplane.connection.js.streams_info():
            cluster = info.cluster
            if cluster is None or cluster.leader is None:
                return None
            for peer in cluster.replicas or []:
                if not peer.current or peer.offline:
                    return None
        return True

    await eventually(current, timeout=timeout, what="every stream's replicas current")


async def kill_projector(chaos: Chaos) -> Fault:
    """kill -9 of the projector (mid-batch or idle, wherever it is), restarted after a random
    pause; half the time killed once more as soon as the restarted one has written its first
    batch (while it catches up), and restarted again. Returns once the store's checkpoint has
    reached the log's last sequence as of the (last) restart, and moved at least once since;
    the recovery is that catch-up, counted from the restart (a process start included)."""
    assert chaos.read_model_url is not None
    role = projector(chaos)
    if not role.alive:
        raise AssertionError(f"the projector exited by itself:\n{role.tail()}")
    kills = 2 if chaos.rng.random() < 0.5 else 1
    at = time.monotonic()
    at_wall = chaos.roles.kill(role)
    killed_at = await checkpoint(chaos)
    await chaos.pause(0.0, 1.5)
    role = chaos.roles.projector(chaos.read_model_url)
    if kills == 2:
        await wrote_past(chaos, killed_at, timeout=15.0)
        chaos.roles.kill(role)
        await chaos.pause(0.0, 1.0)
        chaos.roles.projector(chaos.read_model_url)
    # What the log held at the restart, and at least one event more: a store that had it all
    # already must still see the new process apply something to count as recovered.
    target = max(await chaos.backplane.events.last_seq(), await checkpoint(chaos) + 1)
    took = await catch_up(chaos, target)
    return Fault(
        "projector kill -9",
        f"{kills}x, checkpoint {killed_at} at the kill, caught up to {target}",
        at,
        at_wall,
        lambda _observer: took,
    )


async def wrote_past(chaos: Chaos, seq: int, timeout: float) -> None:
    """Until the store's checkpoint moves past `seq` (or `timeout` seconds passed)."""
    deadline = time.monotonic() + timeout
    while await checkpoint(chaos) <= seq and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
