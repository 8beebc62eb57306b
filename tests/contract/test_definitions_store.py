"""The definitions store's contract: it holds exactly what was put last, and says how many
entries a put changed."""

from __future__ import annotations

import pytest

from core.definitions import ContextDef, DagDef, DagTask, Definitions, ParameterSetDef, TaskDef
from core.errors import Invalid
from services.ports import Backplane, DefinitionTooLarge
from tests.contract.harness import Contract, Harness, OnMemory, OnNats


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

    async def test_a_definition_too_large_for_the_server_writes_nothing(
        self, bp: Backplane, harness: Harness
    ) -> None:
        store = bp.definitions
        before = definitions("extract", "load")
        await store.put(before)
        limit = harness.max_payload
        huge = TaskDef(id="huge", command="echo " + "x" * (limit + limit // 10))
        after = Definitions(
            tasks={"extract": TaskDef(id="extract", command="echo changed"), "huge": huge},
            sources={"tasks/huge": "tasks/huge.yaml"},
        )
        with pytest.raises(DefinitionTooLarge) as caught:
            await store.put(after)
        assert isinstance(caught.value, Invalid)  # bad input: exit code 2
        message = str(caught.value)
        assert message.startswith("tasks/huge.yaml: definition is ")
        assert message.endswith(f"more than the server's limit of {limit >> 20} MiB")
        assert "\n" not in message
        assert await store.load() == before  # nothing changed, nothing deleted

    async def test_a_definition_just_under_the_limit_is_stored(
        self, bp: Backplane, harness: Harness
    ) -> None:
        big = TaskDef(id="big", command="echo " + "x" * (harness.max_payload - 1000))
        defs = Definitions(tasks={"big": big}, sources={"tasks/big": "tasks/big.yaml"})
        assert await bp.definitions.put(defs) == 1
        assert await bp.definitions.load() == defs


class TestDefinitionsStoreOnMemory(OnMemory, DefinitionsStoreContract):
    pass


class TestDefinitionsStoreOnNats(OnNats, DefinitionsStoreContract):
    pass
