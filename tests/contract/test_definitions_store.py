"""The definitions store's contract: it holds exactly what was put last, and says how many
entries a put changed."""

from __future__ import annotations

from core.definitions import ContextDef, DagDef, DagTask, Definitions, ParameterSetDef, TaskDef
from services.ports import Backplane
from tests.contract.harness import Contract, OnMemory, OnNats


def definitions(*task_ids: str, command: str = "echo hi") -> Definitions:
    return Definitions(
        tasks={t: TaskDef(id=t, command=command) for t in task_ids},
        dags={"nightly": DagDef(id="nightly", tasks=(DagTask(id=task_ids[0]),))},
        contexts={"prod": ContextDef(id="prod", variables={"ENV": "prod"})},
        parameter_sets={"eu": ParameterSetDef(id="eu", parameters={"REGION": "eu"})},
        sources={f"tasks/{t}": f"tasks/{t}.yaml" for t in task_ids},
    )


class DefinitionsStoreContract(Contract):
    async def test_round_trip_with_changes_and_deletions(self, bp: Backplane) -> None:
        store = bp.definitions
        assert await store.load() == Definitions()
        defs = definitions("extract", "load")
        assert await store.put(defs) == 5
        assert await store.load() == defs
        assert await store.put(defs) == 0  # nothing changed: nothing written

        smaller = definitions("extract", command="echo changed")
        assert await store.put(smaller) == 2  # one changed, one deleted
        assert await store.load() == smaller
        moved = Definitions(
            tasks=smaller.tasks,
            dags=smaller.dags,
            contexts=smaller.contexts,
            parameter_sets=smaller.parameter_sets,
            sources={"tasks/extract": "tasks/etl/extract.yaml"},
        )
        assert await store.put(moved) == 1  # the same task from another file
        assert await store.load() == moved
        assert await store.put(Definitions()) == 4
        assert await store.load() == Definitions()


class TestDefinitionsStoreOnMemory(OnMemory, DefinitionsStoreContract):
    pass


class TestDefinitionsStoreOnNats(OnNats, DefinitionsStoreContract):
    pass
